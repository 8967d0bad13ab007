"""The safety guards around every remediation, checked against the shared store.

Order matters and is the same for every step: the global pause, circuit breaker
(per playbook and target by default), still firing (the journal), approval,
target lock, run-once claim, cooldown, playbook and global budgets; then, right
before acting, the last check with the alert's source (still firing, not
silenced, not inhibited). Afterwards the outcome is recorded (key finished,
cooldown stamped, circuit fed, lock released). Every "no" is a ``Refusal``
naming its guard and a reason a person can read; metrics read the guard, never
the sentence. What ``enter`` takes comes back as handles (``Held``) that
``abandon`` and ``finish`` give back exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from receiver.errors import ReceiverError
from receiver.model import Alert, JSONValue, SourceView, iso
from receiver.rulebook.schema import Guards
from receiver.rulebook.templates import format_duration
from receiver.settings import GuardSettings
from receiver.store.base import Approval, BudgetSlot, Claim, Lock, Store, new_id

log = structlog.get_logger("receiver.guards")
_SETTINGS = GuardSettings()


@dataclass(frozen=True)
class GuardDefaults:
    """Settings-level defaults for guards a playbook does not declare.

    The defaults are the settings' own (``GuardSettings``), stated once.
    """

    cooldown: timedelta = _SETTINGS.cooldown
    budget_max: int = _SETTINGS.budget_max
    budget_window: timedelta = _SETTINGS.budget_window
    global_budget_max: int = _SETTINGS.global_budget_max
    global_budget_window: timedelta = _SETTINGS.global_budget_window
    circuit_failures: int = _SETTINGS.circuit_failures
    circuit_cool_off: timedelta = _SETTINGS.circuit_cool_off
    lock_ttl: timedelta = timedelta(minutes=15)
    approval_ttl: timedelta = _SETTINGS.approval_ttl
    idempotency_ttl: timedelta = timedelta(days=7)


def idempotency_key(rule: str, index: int, step_type: str, alert: Alert) -> str:
    """Rule + step + fingerprint + startsAt: one occurrence, one run."""
    raw = f"{rule}|{index}:{step_type}|{alert.fingerprint}|{iso(alert.starts_at)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _at(ts: datetime) -> str:
    return iso(ts) or "?"


class FiringCheck(Protocol):
    """Asks the alert's source about it right before acting."""

    async def look(self, alert: Alert) -> SourceView:
        """Whether it still fires, and any silence or inhibition on it."""
        ...


class Refusal(Exception):  # noqa: N818 (a control-flow outcome, not a failure)
    """A guard said no: ``guard`` names it, ``reason`` says why to a person.

    ``awaiting`` marks a step held for a human's approval.
    """

    def __init__(self, *, guard: str, reason: str, awaiting: bool = False) -> None:
        super().__init__(reason)
        self.guard = guard
        self.reason = reason
        self.awaiting = awaiting


@dataclass
class Held:
    """What a pass through the guards holds until the run ends."""

    key: str
    owner: str
    lock: Lock | None
    budgets: list[BudgetSlot] = field(default_factory=list)
    # A claim a dead incarnation left behind, taken over by this pass, and
    # whether that incarnation is known to have stopped (not just silent).
    recovered: Claim | None = None
    stopped: bool = False
    # Set once ``abandon`` handed the run-once claim back (it may fail after).
    key_returned: bool = False


class GuardKeeper:
    """Applies the guards for one store, owner (incarnation) and defaults."""

    def __init__(
        self,
        store: Store,
        owner: str,
        defaults: GuardDefaults,
        *,
        firing_check: FiringCheck | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.defaults = defaults
        self.firing_check = firing_check
        # Passes whose hand-back failed (the store went down meanwhile), by
        # key: their claim still reads "started by <this owner>", so no later
        # pass of this worker could run the occurrence until a restart.
        # Handed back before the next pass takes anything.
        self._owed: dict[str, Held] = {}
        # One settling at a time: the worker's passes share this keeper, and
        # two handing back one owed pass would release its parts twice; a
        # pass that finds a settling under way waits for it (the claim it is
        # about to take may be the one being handed back).
        self._settling = asyncio.Lock()

    def cool_off(self, guards: Guards) -> tuple[int, timedelta]:
        """Circuit threshold and cool-off for a playbook."""
        if guards.circuit_breaker is not None:
            return guards.circuit_breaker.failures, guards.circuit_breaker.cool_off
        return self.defaults.circuit_failures, self.defaults.circuit_cool_off

    @staticmethod
    def circuit_scope(playbook: str, target: str, guards: Guards) -> str:
        """The circuit a run counts in: per playbook and target unless told."""
        breaker = guards.circuit_breaker
        if breaker is not None and breaker.scope == "playbook":
            return f"playbook:{playbook}"
        return f"playbook:{playbook}:target:{target}"

    async def check_paused(self) -> None:
        """Refuse every remediation while the global pause is on."""
        pause = await self.store.pause()
        if pause is not None:
            why = f": {pause.reason}" if pause.reason else ""
            raise Refusal(
                guard="paused",
                reason=f"remediations paused by {pause.by} at {_at(pause.at)}{why}",
            )

    async def check_circuit(
        self, playbook: str, target: str, guards: Guards, now: datetime
    ) -> None:
        """Refuse while the circuit of this playbook (and target) is open."""
        _threshold, cool = self.cool_off(guards)
        scope = self.circuit_scope(playbook, target, guards)
        circuit = await self.store.circuit(scope)
        if circuit.opened_at is None:
            return
        if now - circuit.opened_at < cool:
            where = f"playbook {playbook!r}"
            if scope.endswith(f":target:{target}"):
                where += f" on {target}"
            raise Refusal(
                guard="circuit_breaker",
                reason=f"circuit open since {_at(circuit.opened_at)} after "
                f"{circuit.failures} consecutive failed or unverified remediations "
                f"of {where}; closes at {_at(circuit.opened_at + cool)}",
            )
        await self.store.reset_circuit(scope)

    async def check_firing(self, alert: Alert, *, ask_source: bool = False) -> None:
        """Refuse when the journal says the alert resolved or was superseded.

        With ``ask_source`` (the last check before acting) also ask Alertmanager,
        when one is configured, for alerts that came from it: resolved,
        silenced or inhibited there means hands off.
        """
        await self._check_journal(alert)
        if (
            not ask_source
            or self.firing_check is None
            or alert.source != "alertmanager"
        ):
            return
        view = await self.firing_check.look(alert)
        if view.firing is False:
            raise Refusal(
                guard="resolved",
                reason="alert resolved: Alertmanager no longer lists it firing "
                "(its resolve notification has not arrived yet)",
            )
        if view.silences:
            said = "; ".join(
                f"silence {s.id} by {s.author or 'unknown'}"
                + (f': "{s.comment}"' if s.comment else "")
                for s in view.silences
            )
            raise Refusal(guard="silenced", reason=f"silenced in Alertmanager: {said}")
        if view.inhibited_by:
            raise Refusal(
                guard="inhibited",
                reason="inhibited in Alertmanager by alert "
                + ", ".join(view.inhibited_by),
            )

    async def _check_journal(self, alert: Alert) -> None:
        state = await self.store.alert_state(alert.fingerprint)
        if state is None:
            return
        if alert.starts_at and state.starts_at and state.starts_at > alert.starts_at:
            raise Refusal(
                guard="resolved",
                reason="superseded: a newer occurrence of this alert started at "
                f"{_at(state.starts_at)}",
            )
        if state.status == "resolved":
            raise Refusal(
                guard="resolved",
                reason=f"alert resolved (resolve received {_at(state.updated_at)}) "
                "before the remediation ran",
            )

    async def check_approval(
        self, key: str, request: Mapping[str, JSONValue], now: datetime
    ) -> Approval:
        """Refuse until a human approved; create the request the first time."""
        approvals = self.store
        approval = await approvals.put_approval(
            Approval(
                id=new_id(),
                key=key,
                created_at=now,
                expires_at=now + self.defaults.approval_ttl,
                request=request,
            )
        )
        if approval.status == "pending" and now >= approval.expires_at:
            await approvals.decide_approval(approval.id, "expired", "receiver", now)
            raise Refusal(
                guard="approval",
                reason=f"approval {approval.id} expired at {_at(approval.expires_at)}",
            )
        if approval.status == "pending":
            raise Refusal(
                guard="approval",
                reason=f"awaiting approval {approval.id}: POST /api/v1/approvals/"
                f'{approval.id} with {{"decision": "approve"}} before '
                f"{_at(approval.expires_at)}",
                awaiting=True,
            )
        if approval.status != "approved":
            raise Refusal(
                guard="approval",
                reason=f"approval {approval.id} {approval.status}"
                + (f" by {approval.decided_by}" if approval.decided_by else ""),
            )
        return approval

    def _cooldown(self, guards: Guards) -> timedelta:
        return (
            guards.cooldown if guards.cooldown is not None else self.defaults.cooldown
        )

    @staticmethod
    def cooldown_keys(playbook: str, target: str, shared: str = "") -> list[str]:
        """The cooldown keys a run of ``playbook`` on ``target`` stamps and heeds.

        Its own, and, for a binding of another playbook under a name of its
        own (``as:``), the one that playbook's bindings share: the runbook
        binds ``api-down`` three ways, each of which may roll back the same
        Deployment for one outage (an Alertmanager alert, its PagerDuty page),
        and a rollback done twice goes back to the bad revision. Stamping its
        own key too keeps a receiver of the version before, which heeds only
        that one, held during a rolling upgrade.
        """
        own = f"cooldown:{playbook}:{target}"
        if not shared or shared == playbook:
            return [own]
        # The shared key first: a crash between the two writes leaves the one
        # every binding heeds stamped.
        return [f"cooldown:{shared}:{target}", own]

    @classmethod
    async def last_run(
        cls,
        store: Store,
        playbook: str,
        target: str,
        now: datetime,
        shared: str = "",
    ) -> datetime | None:
        """The last run a cooldown of ``playbook`` on ``target`` counts from.

        (The console's guards page reads it too, with the store alone.)
        """
        runs = [
            await store.last_run(key, now)
            for key in cls.cooldown_keys(playbook, target, shared)
        ]
        return max((r for r in runs if r is not None), default=None)

    async def check_cooldown(
        self,
        playbook: str,
        target: str,
        guards: Guards,
        now: datetime,
        *,
        shared: str = "",
    ) -> None:
        """Refuse inside the cooldown after the last run on this target.

        ``shared``: the playbook ``playbook`` is a binding of (see
        ``cooldown_keys``).
        """
        cooldown = self._cooldown(guards)
        if cooldown <= timedelta(0):
            return
        last = await self.last_run(self.store, playbook, target, now, shared)
        if last is not None and now < last + cooldown:
            raise Refusal(
                guard="cooldown",
                reason=f"cooldown active until {_at(last + cooldown)} (last run on "
                f"{target} at {_at(last)}, cooldown {format_duration(cooldown)})",
            )

    async def enter(
        self,
        *,
        key: str,
        playbook: str,
        target: str,
        guards: Guards,
        now: datetime,
        lock_ttl: timedelta,
        shared: str = "",
    ) -> Held:
        """Take the run-once claim, the lock and the budget slots, or refuse.

        ``shared``: the playbook ``playbook`` is a binding of, whose
        bindings share a cooldown per target (``cooldown_keys``).

        The claim comes first: a second run of the same occurrence hears
        "already started/done" (and whether its action was sent), never a lock
        refusal that would not say.
        """
        await self.settle()
        outcome = await self.store.claim_key(
            key, self.owner, now, self.defaults.idempotency_ttl
        )
        if not outcome.won:
            raise Refusal(guard="idempotency", reason=_already(outcome.holder))
        held = Held(
            key,
            self.owner,
            None,
            recovered=outcome.recovered,
            stopped=outcome.stopped,
        )
        try:
            if guards.lock:
                await self._lock(held, target, now, lock_ttl)
            if held.recovered is None or held.recovered.status != "sending":
                # A re-check after a crash is not a new run: it spends nothing.
                await self.check_cooldown(playbook, target, guards, now, shared=shared)
                await self._budgets(held, playbook, guards, now)
        except BaseException:
            await self.abandon(held)
            raise
        return held

    async def _lock(
        self, held: Held, target: str, now: datetime, ttl: timedelta
    ) -> None:
        name = f"target:{target}"
        held.lock = await self.store.acquire_lock(name, self.owner, now, ttl)
        if held.lock is None:
            holder = await self.store.lock_holder(name, now) or "another run"
            raise Refusal(
                guard="lock",
                reason=f"lock on {target} held by {holder} (not run: nothing was sent)",
            )

    async def _budgets(
        self, held: Held, playbook: str, guards: Guards, now: datetime
    ) -> None:
        limit = guards.budget.max if guards.budget else self.defaults.budget_max
        window = guards.budget.window if guards.budget else self.defaults.budget_window
        scopes = [
            (f"budget:playbook:{playbook}", limit, window, f"playbook {playbook!r}"),
            (
                "budget:global",
                self.defaults.global_budget_max,
                self.defaults.global_budget_window,
                "all playbooks",
            ),
        ]
        for scope, cap, span, what in scopes:
            slot = await self.store.reserve_budget(scope, cap, span, now)
            if slot is None:
                raise Refusal(
                    guard="budget",
                    reason=f"budget {cap}/{format_duration(span)} spent for {what}",
                )
            held.budgets.append(slot)

    async def abandon(self, held: Held) -> None:
        """Give back exactly what ``enter`` took: the run did not happen.

        If the store fails meanwhile, what is left is owed: handed back by
        ``settle`` before this keeper's next pass (the error still raises).
        """
        try:
            await self._give_back(held)
        except BaseException:
            self._owed[held.key] = held
            raise
        self._owed.pop(held.key, None)

    async def _give_back(self, held: Held) -> None:
        # Part by part, each dropped from ``held`` once given back: a retry
        # after a failure gives back only the rest.
        while held.budgets:
            await self.store.release_budget(held.budgets[0])
            held.budgets.pop(0)
        if not held.key_returned:
            if held.recovered is not None and held.recovered.status == "sending":
                # A crashed run's action may have left: keep that mark (now
                # ours) so nothing ever runs it blindly again.
                await self.store.mark_sending(
                    held.key, held.owner, held.recovered.at, held.recovered.intent
                )
            else:
                await self.store.release_key(held.key, held.owner)
            held.key_returned = True
        if held.lock is not None:
            await self.store.release_lock(held.lock)
            held.lock = None

    @property
    def owed(self) -> int:
        """Passes whose claim, lock or budget slots are still to be handed back."""
        return len(self._owed)

    async def settle(self) -> None:
        """Hand back what earlier passes could not; never raises for an outage."""
        if not self._owed and not self._settling.locked():
            return
        async with self._settling:
            for held in list(self._owed.values()):
                try:
                    await self.abandon(held)
                except ReceiverError as exc:
                    log.warning(
                        "guard_hand_back_pending",
                        key=held.key,
                        owed=len(self._owed),
                        error=str(exc),
                        detail="handed back before this worker's next remediation",
                    )
                    return
                log.info("guard_hand_back_done", key=held.key)

    async def renew(self, held: Held, now: datetime, ttl: timedelta) -> None:
        """Keep the target lock while the run and its verification go on."""
        if held.lock is not None:
            renewed = await self.store.renew_lock(held.lock, now, ttl)
            if renewed is not None:
                held.lock = renewed

    async def finish(
        self,
        held: Held,
        *,
        ok: bool,
        detail: str,
        playbook: str,
        target: str,
        guards: Guards,
        now: datetime,
        count: bool = True,
        shared: str = "",
    ) -> None:
        """Record the outcome and release the lock.

        ``count=False`` (the target was already as wanted) records the key but
        gives the budget slots back and leaves cooldown and circuit alone.
        ``shared``: as for ``enter``.
        """
        try:
            if not await self.store.finish_key(
                held.key, held.owner, "done" if ok else "failed", detail, now
            ):
                # Another incarnation took the claim over (this one looked
                # dead to it): its record of the key stands, not ours.
                log.warning(
                    "run_once_key_taken_over",
                    key=held.key,
                    owner=held.owner,
                    outcome="done" if ok else "failed",
                )
            if not count:
                for slot in held.budgets:
                    await self.store.release_budget(slot)
                held.budgets.clear()
                return
            cooldown = self._cooldown(guards)
            if cooldown > timedelta(0):
                for name in self.cooldown_keys(playbook, target, shared):
                    await self.store.set_last_run(name, now, cooldown)
            threshold, _cool = self.cool_off(guards)
            await self.store.record_outcome(
                self.circuit_scope(playbook, target, guards), ok, threshold, now
            )
        finally:
            if held.lock is not None:
                await self.store.release_lock(held.lock)


def _already(claim: Claim) -> str:
    if claim.status == "running":
        return (
            f"already started by {claim.owner} at {_at(claim.at)}: guards passed, "
            "nothing sent yet (at most once: not run again)"
        )
    if claim.status == "sending":
        return (
            f"already started by {claim.owner} at {_at(claim.at)}: the action was "
            "sent (at most once: not run again)"
        )
    return f"already done by {claim.owner} at {_at(claim.at)} ({claim.status})"
