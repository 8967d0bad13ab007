"""The safety guards around every remediation, checked against the shared store.

Order matters and is the same for every step: circuit breaker, still firing,
approval, target lock, idempotency claim, cooldown, playbook and global budgets,
a last still-firing check, then the run; afterwards the outcome is recorded
(idempotency key finished, cooldown stamped, circuit fed, lock released). Every
"no" comes back as a reason a person can read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from receiver.model import Alert, iso
from receiver.rulebook.schema import Guards
from receiver.rulebook.templates import format_duration
from receiver.store.base import Approval, Claim, Lock, Store


@dataclass(frozen=True)
class GuardDefaults:
    """Settings-level defaults for guards a playbook does not declare."""

    cooldown: timedelta = timedelta(minutes=10)
    budget_max: int = 5
    budget_window: timedelta = timedelta(hours=1)
    global_budget_max: int = 30
    global_budget_window: timedelta = timedelta(hours=1)
    circuit_failures: int = 3
    circuit_cool_off: timedelta = timedelta(hours=1)
    lock_ttl: timedelta = timedelta(minutes=15)
    approval_ttl: timedelta = timedelta(hours=1)
    idempotency_ttl: timedelta = timedelta(days=7)


def idempotency_key(rule: str, index: int, step_type: str, alert: Alert) -> str:
    """Rule + step + fingerprint + startsAt: one occurrence, one run."""
    raw = f"{rule}|{index}:{step_type}|{alert.fingerprint}|{iso(alert.starts_at)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _at(ts: datetime) -> str:
    return iso(ts) or "?"


class FiringCheck(Protocol):
    """Asks the alert's source whether it still fires (None: could not tell)."""

    async def still_firing(self, alert: Alert) -> bool | None:
        """True, False, or None when unknown."""
        ...


class Refusal(Exception):  # noqa: N818 (a control-flow outcome, not a failure)
    """A guard said no; ``reason`` says why, ``awaiting`` marks approvals."""

    def __init__(self, reason: str, *, awaiting: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.awaiting = awaiting


@dataclass
class Held:
    """What a successful pass through the guards holds until the run ends."""

    key: str
    lock: Lock | None
    budgets: list[str]


class GuardKeeper:
    """Applies the guards for one store, owner and set of defaults."""

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

    def cool_off(self, guards: Guards) -> tuple[int, timedelta]:
        """Circuit threshold and cool-off for a playbook."""
        if guards.circuit_breaker is not None:
            return guards.circuit_breaker.failures, guards.circuit_breaker.cool_off
        return self.defaults.circuit_failures, self.defaults.circuit_cool_off

    async def check_circuit(self, playbook: str, guards: Guards, now: datetime) -> None:
        """Refuse while the playbook's circuit is open."""
        _threshold, cool = self.cool_off(guards)
        circuit = await self.store.circuit(f"playbook:{playbook}")
        if circuit.opened_at is None:
            return
        if now - circuit.opened_at < cool:
            raise Refusal(
                f"circuit open since {_at(circuit.opened_at)} after "
                f"{circuit.failures} consecutive failed or unverified remediations "
                f"of playbook {playbook!r}; closes at {_at(circuit.opened_at + cool)}"
            )
        await self.store.reset_circuit(f"playbook:{playbook}")

    async def check_firing(self, alert: Alert, *, ask_source: bool = False) -> None:
        """Refuse when the journal says the alert resolved or was superseded.

        With ``ask_source`` (the last check before acting) also ask Alertmanager,
        when one is configured, for alerts that came from it.
        """
        await self._check_journal(alert)
        if (
            ask_source
            and self.firing_check is not None
            and alert.source == ("alertmanager")
        ):
            firing = await self.firing_check.still_firing(alert)
            if firing is False:
                raise Refusal(
                    "alert resolved: Alertmanager no longer lists it firing "
                    "(its resolve notification has not arrived yet)"
                )

    async def _check_journal(self, alert: Alert) -> None:
        state = await self.store.alert_state(alert.fingerprint)
        if state is None:
            return
        if alert.starts_at and state.starts_at and state.starts_at > alert.starts_at:
            raise Refusal(
                "superseded: a newer occurrence of this alert started at "
                f"{_at(state.starts_at)}"
            )
        if state.status == "resolved":
            raise Refusal(
                f"alert resolved (resolve received {_at(state.updated_at)}) before "
                "the remediation ran"
            )

    async def check_approval(
        self, key: str, request: Mapping[str, object], now: datetime
    ) -> Approval:
        """Refuse until a human approved; create the request the first time."""
        from receiver.store.base import new_id  # noqa: PLC0415

        approval = await self.store.put_approval(
            Approval(
                id=new_id(),
                key=key,
                created_at=now,
                expires_at=now + self.defaults.approval_ttl,
                request=request,
            )
        )
        if approval.status == "pending" and now >= approval.expires_at:
            await self.store.decide_approval(approval.id, "expired", "receiver", now)
            raise Refusal(
                f"approval {approval.id} expired at {_at(approval.expires_at)}"
            )
        if approval.status == "pending":
            raise Refusal(
                f"awaiting approval {approval.id}: POST /api/v1/approvals/"
                f'{approval.id} with {{"decision": "approve"}} before '
                f"{_at(approval.expires_at)}",
                awaiting=True,
            )
        if approval.status != "approved":
            raise Refusal(
                f"approval {approval.id} {approval.status}"
                + (f" by {approval.decided_by}" if approval.decided_by else "")
            )
        return approval

    async def check_cooldown(
        self, playbook: str, target: str, guards: Guards, now: datetime
    ) -> None:
        """Refuse inside the cooldown after the last run on this target."""
        cooldown = (
            guards.cooldown if guards.cooldown is not None else self.defaults.cooldown
        )
        if cooldown <= timedelta(0):
            return
        last = await self.store.last_run(f"cooldown:{playbook}:{target}")
        if last is not None and now < last + cooldown:
            raise Refusal(
                f"cooldown active until {_at(last + cooldown)} (last run on {target} "
                f"at {_at(last)}, cooldown {format_duration(cooldown)})"
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
    ) -> Held:
        """Take the lock, the idempotency claim and the budget slots, or refuse."""
        lock = None
        if guards.lock:
            lock = await self.store.acquire_lock(
                f"target:{target}", self.owner, lock_ttl
            )
            if lock is None:
                holder = (
                    await self.store.lock_holder(f"target:{target}") or "another run"
                )
                raise Refusal(f"lock on {target} held by {holder}")
        held = Held(key, lock, [])
        try:
            await self._claim(key, now)
        except BaseException:
            await self.abandon(held, now, claimed=False)
            raise
        try:
            await self.check_cooldown(playbook, target, guards, now)
            await self._budgets(held, playbook, guards, now)
        except BaseException:
            await self.abandon(held, now)
            raise
        return held

    async def _claim(self, key: str, now: datetime) -> None:
        claim = await self.store.claim_key(
            key, self.owner, now, self.defaults.idempotency_ttl
        )
        if claim is not None:
            raise Refusal(_already(claim))

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
            used = await self.store.reserve_budget(scope, cap, span, now)
            if used is None:
                raise Refusal(f"budget {cap}/{format_duration(span)} spent for {what}")
            held.budgets.append(scope)

    async def abandon(self, held: Held, now: datetime, *, claimed: bool = True) -> None:
        """Give back what ``enter`` took when the run did not happen."""
        for scope in held.budgets:
            await self.store.release_budget(scope, now)
        if claimed:
            await self.store.release_key(held.key)
        if held.lock is not None:
            await self.store.release_lock(held.lock)

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
    ) -> None:
        """Record the outcome and release the lock."""
        try:
            await self.store.finish_key(
                held.key, "done" if ok else "failed", detail, now
            )
            cooldown = (
                guards.cooldown
                if guards.cooldown is not None
                else self.defaults.cooldown
            )
            if cooldown > timedelta(0):
                await self.store.set_last_run(
                    f"cooldown:{playbook}:{target}", now, cooldown
                )
            threshold, _cool = self.cool_off(guards)
            await self.store.record_outcome(f"playbook:{playbook}", ok, threshold, now)
        finally:
            if held.lock is not None:
                await self.store.release_lock(held.lock)


def _already(claim: Claim) -> str:
    if claim.status == "running":
        return (
            f"already started by {claim.owner} at {_at(claim.at)} (at most once: "
            "not run again)"
        )
    return f"already done by {claim.owner} at {_at(claim.at)} ({claim.status})"
