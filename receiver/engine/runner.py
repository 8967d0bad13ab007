"""Run planned steps through injected executors, behind the guards, and record it.

Executors (``receiver.steps``) are passed in by ``create_app`` or the CLI, keyed
by step family (``k8s``, ``redis``, ``http``, ``prometheus``); a family with no
executor is skipped with a reason, never guessed at. Diagnostics run directly;
remediations pass ``GuardKeeper`` first and are verified after.

Failure is a value: whatever a step or a verification raises (a step error, a
``ValueError`` from a template value, a ``UnicodeEncodeError``, a ``KeyError``, a
stray ``CancelledError``, a timeout) becomes a ``failed`` step with a readable,
secret-scrubbed reason, and everything the guards took is given back: the lock
released, unspent budget slots returned, the run-once key recorded ``failed``.
Only the store being unreachable (``StoreUnavailableError``) and the task itself
being cancelled leave the runner, so the worker can retry the entry.

Before an action leaves, its run-once key is marked ``sending`` together with the
action's intent: executors that have a ``prepare`` read the target first and
state the action in absolute terms (``Intent``), and their ``apply`` does exactly
that. After a crash, a key a dead incarnation left ``running`` never sent
anything, so the step runs; one left ``sending`` is re-checked, never blindly
re-run: the executor's ``recheck`` compares the target with the recorded intent.
Took effect: "executed, recovered after a crash" (then verified as usual). Did
not: the target is exactly as before, so the step runs once now, through the
last still-firing check and a fresh ``prepare`` -- but only when the holder is
known to have stopped (it retired, or SQLite's single instance declared it dead
on start). A holder that merely stopped renewing its heartbeat (a stalled
replica on Redis) may still be sending: ``failed``, not run again. Cannot tell:
``failed`` with "unknown whether it took effect", unless the step's own
verification passes now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from receiver.engine.guards import GuardKeeper, Held, Refusal, idempotency_key
from receiver.engine.planner import Plan, PlannedMatch, PlannedStep
from receiver.engine.reuse import DiagnosticsReuse, occurrence_key
from receiver.errors import StepError, StoreUnavailableError
from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    Intent,
    MatchTrace,
    RecheckResult,
    StepKind,
    StepResult,
    StepTrace,
    freeze,
)
from receiver.rulebook.steps import REGISTRY, StepModel

log = structlog.get_logger("receiver.runner")


class Executor(Protocol):
    """Runs the rendered steps (and verifications) of one family.

    For remediations an executor may also have ``prepare(step, alert)``, which
    returns an ``Intent`` (or a ``StepResult`` when nothing needs doing, or
    None for a step type it does not prepare), ``apply(step, alert, intent)``,
    which does exactly the intent, and ``recheck(step, alert, intent)``, which
    returns a ``RecheckResult`` saying whether an interrupted ``apply`` took
    effect. See ``Preparing``.
    """

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run ``step`` for ``alert``; raise ``StepError`` on failure."""
        ...

    async def verify(self, check: Any, step: StepModel, alert: Alert) -> StepResult:
        """Check that a remediation worked (``check`` is a Verify model)."""
        ...


class Preparing(Protocol):
    """The optional half of an executor that makes crash recovery exact."""

    async def prepare(
        self, step: StepModel, alert: Alert
    ) -> Intent | StepResult | None:
        """Read the target and state the action in absolute terms."""
        ...

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Do exactly what ``intent`` says; raise ``StepError`` on failure."""
        ...

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """Whether an ``apply`` of ``intent`` that a crash interrupted took effect."""
        ...


Clock = Callable[[], datetime]
_NEWS = frozenset({Decision.EXECUTED, Decision.FAILED, Decision.AWAITING_APPROVAL})
# Longest reason kept from an unexpected exception.
_REASON_MAX = 500


def _same(text: str) -> str:
    return text


def describe_error(exc: BaseException) -> str:
    """A one-line, bounded description of an exception for a trace."""
    if isinstance(exc, StepError):
        text = str(exc)
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, asyncio.CancelledError):
        text = "cancelled inside the step (CancelledError)"
    else:
        detail = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


def _cancelled_from_outside() -> bool:
    """Whether this task itself is being cancelled (not a step's stray cancel)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _recovery_note(held: Held, before_effect: str) -> str:
    """What a run taking over a crashed attempt adds to its reason."""
    if before_effect:
        return f" ({before_effect}; run once now)"
    if held.recovered is not None:
        return (
            f" (an attempt by {held.recovered.owner}, interrupted by a crash before "
            "anything was sent, is run now)"
        )
    return ""


class Runner:
    """Turns a plan into a trace, running steps whose decision is ``run``."""

    def __init__(
        self,
        executors: Mapping[str, Executor],
        clock: Clock,
        *,
        mode: str = "dry-run",
        guards: GuardKeeper | None = None,
        on_step: Callable[[StepTrace], None] | None = None,
        scrub: Callable[[str], str] = _same,
        reuse: DiagnosticsReuse | None = None,
    ) -> None:
        self._reuse = reuse
        self._executors = dict(executors)
        self._clock = clock
        self._mode = mode
        self._guards = guards
        self._on_step = on_step
        self._scrub = scrub

    @property
    def mode(self) -> str:
        """``execute`` or ``dry-run``, as recorded in traces."""
        return self._mode

    async def run(
        self, plan: Plan, payload_id: str = "", now: datetime | None = None
    ) -> AlertTrace:
        """Execute what the plan says may run and return the full trace.

        ``now`` is the one reading of the clock every guard of this decision
        pass uses (read here when not given).
        """
        at = now or self._clock()
        matches = []
        for planned in plan.matches:
            steps = [
                await self._step(p, plan.alert, planned, payload_id, at)
                for p in planned.steps
            ]
            matches.append(
                MatchTrace(
                    rule=planned.rule,
                    severity=planned.severity,
                    playbook=planned.playbook,
                    steps=tuple(steps),
                    notes=(f"severity: {planned.severity_reason}",),
                    description=planned.match.playbook.description,
                    runbook_url=planned.match.playbook.runbook_url,
                    escalate_to=planned.match.playbook.escalate_to,
                )
            )
        return AlertTrace(
            alert=plan.alert,
            matches=tuple(matches),
            decided_at=self._clock(),
            payload_id=payload_id,
            mode=self._mode,
            notes=plan.notes,
        )

    def _failed(self, trace: StepTrace, exc: BaseException, what: str) -> StepTrace:
        return replace(
            trace,
            decision=Decision.FAILED,
            reason=self._scrub(f"{what}{describe_error(exc)}"),
        )

    async def _step(
        self,
        planned: PlannedStep,
        alert: Alert,
        match: PlannedMatch,
        payload_id: str,
        now: datetime,
    ) -> StepTrace:
        trace = planned.trace
        if planned.run and planned.step is not None:
            try:
                if planned.step.kind is StepKind.REMEDIATION:
                    trace = await self._remediate(
                        planned, planned.step, alert, match, payload_id, now=now
                    )
                else:
                    trace = await self._diagnose(trace, planned, alert, match)
            except StoreUnavailableError:
                raise
            except asyncio.CancelledError as exc:
                if _cancelled_from_outside():
                    raise
                trace = self._failed(trace, exc, "")
            except Exception as exc:  # noqa: BLE001 (failure is a value)
                trace = self._failed(trace, exc, "")
        if self._on_step is not None:
            self._on_step(trace)
        # Steps that acted (or wait for a human) are news; a dry-run or a skip is
        # in the decision record, and logging it at info drowns an alert storm.
        emit = log.info if trace.decision in _NEWS else log.debug
        emit(
            "step_finished",
            step=trace.type,
            target=trace.target,
            decision=trace.decision.value,
            reason=trace.reason,
            guard=trace.guard,
            rule=match.rule,
            fingerprint=alert.fingerprint,
        )
        return trace

    async def _diagnose(
        self,
        trace: StepTrace,
        planned: PlannedStep,
        alert: Alert,
        match: PlannedMatch,
    ) -> StepTrace:
        """Run a diagnostic, or reuse its result for an unchanged occurrence."""
        assert planned.step is not None  # noqa: S101 (the caller checked)
        key = occurrence_key(
            match.rule, planned.index, alert, f"{trace.type} {trace.target}"
        )
        reused = await self._reuse.get(key) if self._reuse is not None else None
        if reused is not None:
            return reused
        trace = await self._execute(trace, planned.step, alert)
        if self._reuse is not None:
            await self._reuse.put(key, trace)
        return trace

    async def _remediate(
        self,
        planned: PlannedStep,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        payload_id: str,
        *,
        now: datetime,
    ) -> StepTrace:
        trace = planned.trace
        action = step.summary()
        if self._guards is None:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="store",
                reason=f"no state store to guard remediations; did not: {action}",
            )
        if step.family not in self._executors:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="executor",
                reason=f"no {step.family} executor is configured in this receiver; "
                f"did not: {action}",
            )
        keeper = self._guards
        guards = match.match.playbook.guards
        playbook = match.playbook
        target = trace.target
        key = idempotency_key(match.rule, planned.index, step.type_name(), alert)
        try:
            await keeper.check_paused()
            await keeper.check_circuit(playbook, target, guards, now)
            await keeper.check_firing(alert)
            if planned.approval:
                request = {
                    "rule": match.rule,
                    "playbook": playbook,
                    "step": step.type_name(),
                    "target": target,
                    "action": action,
                    "fingerprint": alert.fingerprint,
                    "alertname": alert.labels.get("alertname", ""),
                    "payload_id": payload_id,
                    "destructive": bool(getattr(step, "destructive", False)),
                }
                await keeper.check_approval(key, request, now)
            held = await keeper.enter(
                key=key,
                playbook=playbook,
                target=target,
                guards=guards,
                now=now,
                lock_ttl=self._lock_ttl(step),
            )
        except Refusal as refusal:
            if refusal.guard == "resolved":
                # No later delivery of this occurrence will ever run it: settle
                # an action a crashed incarnation may have sent for it now.
                settled = await self._settle_orphan(
                    trace, step, alert, match, key=key, refusal=refusal, now=now
                )
                if settled is not None:
                    return settled
            decision = (
                Decision.AWAITING_APPROVAL if refusal.awaiting else Decision.SKIPPED
            )
            return replace(
                trace, decision=decision, reason=refusal.reason, guard=refusal.guard
            )
        return await self._run_held(trace, step, alert, match, held)

    async def _settle_orphan(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        *,
        key: str,
        refusal: Refusal,
        now: datetime,
    ) -> StepTrace | None:
        """Re-check (never run) an action a dead incarnation left ``sending``."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        outcome = await keeper.store.claim_key(
            key, keeper.owner, now, keeper.defaults.idempotency_ttl
        )
        if not outcome.won:
            return None
        held = Held(
            key,
            keeper.owner,
            None,
            recovered=outcome.recovered,
            stopped=outcome.stopped,
        )
        if outcome.recovered is None or outcome.recovered.status != "sending":
            await keeper.store.release_key(key, keeper.owner)
            return None
        seen, verified = await self._recheck(step, alert, held)
        if seen.took_effect is False:
            return await self._not_rerun(
                trace,
                match,
                held,
                why=f"the attempt by {outcome.recovered.owner} was interrupted by a "
                f"crash before it took effect ({seen.reason}); not run again: "
                f"{refusal.reason}",
                guard=refusal.guard,
            )
        return await self._recovered(
            trace, step, alert, match, held=held, seen=seen, verified=verified
        )

    def _lock_ttl(self, step: StepModel) -> timedelta:
        verify = getattr(step, "verify", None)
        extra = verify.timeout if verify is not None else timedelta(0)
        return step.timeout + extra + timedelta(minutes=1)

    @contextlib.asynccontextmanager
    async def _renewing(self, held: Held, ttl: timedelta) -> AsyncIterator[None]:
        """Renew the target lock every third of its TTL while the body runs."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards

        async def renew() -> None:
            while True:
                await asyncio.sleep(max(ttl.total_seconds() / 3, 0.05))
                try:
                    await keeper.renew(held, self._clock(), ttl)
                except StoreUnavailableError as exc:
                    log.warning("lock_not_renewed", key=held.key, error=str(exc))

        task = asyncio.create_task(renew(), name=f"renew-lock-{held.key}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_held(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
    ) -> StepTrace:
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        guards = match.match.playbook.guards
        before_effect = await self._after_crash(trace, step, alert, match, held)
        if isinstance(before_effect, StepTrace):
            return before_effect
        note = _recovery_note(held, before_effect)
        refused = await self._last_check(trace, alert, match, held, before_effect)
        if refused is not None:
            return refused
        prepared = await self._prepare(trace, step, alert)
        if isinstance(prepared, StepTrace):
            return await self._decided(prepared, match, held, note)
        intent_text = prepared.to_json() if prepared is not None else ""
        if not await keeper.store.mark_sending(
            held.key, held.owner, self._clock(), intent_text
        ):
            # Another worker took the claim over (this one looked dead to it).
            await keeper.abandon(held)
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="idempotency",
                reason="not run: another worker took over its run-once claim "
                "(this one was presumed dead); nothing was sent",
            )
        outcome, changed = await self._act(trace, step, alert, held, prepared)
        if not changed:
            await keeper.finish(
                held,
                ok=True,
                detail=outcome.reason,
                playbook=match.playbook,
                target=trace.target,
                guards=guards,
                now=self._clock(),
                count=False,
            )
            return replace(outcome, decision=Decision.SKIPPED, guard="already_done")
        ok = outcome.decision is Decision.EXECUTED
        await keeper.finish(
            held,
            ok=ok,
            detail=outcome.reason,
            playbook=match.playbook,
            target=trace.target,
            guards=guards,
            now=self._clock(),
        )
        return replace(outcome, reason=f"{outcome.reason}{note}") if note else outcome

    async def _after_crash(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
    ) -> StepTrace | str:
        """Settle a crashed attempt's ``sending`` mark before running again.

        Returns the final trace when it took effect (or cannot be told, or may
        not run again), else what the run's reason says about the attempt
        ("" when there was none).
        """
        recovered = held.recovered
        if recovered is None or recovered.status != "sending":
            return ""
        seen, verified = await self._recheck(step, alert, held)
        if seen.took_effect is not False:
            return await self._recovered(
                trace, step, alert, match, held=held, seen=seen, verified=verified
            )
        # The target is exactly as before the interrupted attempt: nothing of
        # it took effect, so this occurrence runs once now, if its holder is
        # known to have stopped. One that only went silent (its heartbeat
        # lapsed: another replica, stalled) may still be sending.
        if not held.stopped:
            return await self._not_rerun(
                trace,
                match,
                held,
                why=f"the attempt by {recovered.owner} had not taken effect "
                f"({seen.reason}); not run again (at most once): "
                f"{recovered.owner} stopped renewing its heartbeat but never "
                "said it stopped, so its request may still be on its way",
                guard=None,
            )
        return (
            f"the attempt by {recovered.owner} was interrupted by a crash "
            f"before it took effect ({seen.reason})"
        )

    async def _decided(
        self, prepared: StepTrace, match: PlannedMatch, held: Held, note: str
    ) -> StepTrace:
        """Record a step ``prepare`` decided without acting (no-op or failure)."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        changed = prepared.decision is not Decision.EXECUTED
        await self._guards.finish(
            held,
            ok=not changed,
            detail=prepared.reason,
            playbook=match.playbook,
            target=prepared.target,
            guards=match.match.playbook.guards,
            now=self._clock(),
            count=changed,
        )
        if changed:
            return replace(
                prepared, reason=f"{prepared.reason} (nothing was sent){note}"
            )
        return replace(prepared, decision=Decision.SKIPPED, guard="already_done")

    async def _last_check(
        self,
        trace: StepTrace,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
        before_effect: str,
    ) -> StepTrace | None:
        """Ask the alert's source right before acting; a "no" ends the run."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        try:
            await keeper.check_firing(alert, ask_source=True)
        except Refusal as refusal:
            if before_effect:
                return await self._not_rerun(
                    trace,
                    match,
                    held,
                    why=f"{before_effect}; not run again: {refusal.reason}",
                    guard=refusal.guard,
                )
            await keeper.abandon(held)
            return replace(
                trace,
                decision=Decision.SKIPPED,
                reason=refusal.reason,
                guard=refusal.guard,
            )
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            failed = self._failed(trace, exc, "last check before acting failed: ")
            if before_effect:
                return await self._not_rerun(
                    trace,
                    match,
                    held,
                    why=f"{before_effect}; not run again: {failed.reason}",
                    guard=None,
                )
            await keeper.abandon(held)
            note = _recovery_note(held, before_effect)
            return replace(failed, reason=f"{failed.reason} (nothing was sent){note}")
        return None

    async def _act(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        held: Held,
        intent: Intent | None,
    ) -> tuple[StepTrace, bool]:
        """Run and verify a step while renewing its lock; failures are values."""
        try:
            async with self._renewing(held, self._lock_ttl(step)):
                outcome, changed = await self._execute_changed(
                    trace, step, alert, intent
                )
                if changed and outcome.decision is Decision.EXECUTED:
                    outcome = await self._verify(outcome, step, alert)
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise  # shutdown: the key stays "sending", recovery re-checks it
            return self._failed(trace, exc, ""), True
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            return self._failed(trace, exc, ""), True
        return outcome, changed

    async def _prepare(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> Intent | StepTrace | None:
        """The executor's intent for ``step``, a decision without acting, or None.

        None: the executor does not prepare this step type (its ``run`` acts and
        no intent is recorded). A failure is a value: ``failed``, nothing sent.
        """
        prepare = getattr(self._executors[step.family], "prepare", None)
        if prepare is None:
            return None
        try:
            async with asyncio.timeout(step.timeout.total_seconds()):
                prepared: Intent | StepResult | None = await prepare(step, alert)
        except TimeoutError:
            return replace(
                trace,
                decision=Decision.FAILED,
                reason=f"timed out reading the target after "
                f"{step.timeout.total_seconds():g}s: {step.summary()}",
            )
        except StoreUnavailableError:
            raise
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise
            return self._failed(trace, exc, "")
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            return self._failed(trace, exc, "")
        if isinstance(prepared, StepResult):
            return replace(
                trace,
                decision=Decision.EXECUTED if prepared.ok else Decision.FAILED,
                reason=self._scrub(prepared.reason),
                result=freeze(dict(prepared.result)),
            )
        return prepared

    async def _recheck(
        self, step: StepModel, alert: Alert, held: Held
    ) -> tuple[RecheckResult, bool]:
        """Ask the executor whether the interrupted action took effect.

        Also says whether the step's verification already ran for it.

        When it cannot tell and the step declares a verification, a passing
        verification now counts as "took effect" (the state the remediation
        wanted is there), a failing one leaves it unknown: never re-sent.
        """
        assert held.recovered is not None  # noqa: S101 (checked by the caller)
        intent = Intent.from_json(held.recovered.intent)
        recheck = getattr(self._executors[step.family], "recheck", None)
        if intent is None:
            seen = RecheckResult(None, "no intent was recorded before it was sent")
        elif recheck is None:
            seen = RecheckResult(
                None, f"{step.type_name()} has no re-check (intent: {intent.summary})"
            )
        else:
            try:
                async with (
                    self._renewing(held, self._lock_ttl(step)),
                    asyncio.timeout(step.timeout.total_seconds()),
                ):
                    seen = await recheck(step, alert, intent)
            except StoreUnavailableError:
                raise
            except asyncio.CancelledError as exc:
                if _cancelled_from_outside():
                    raise
                seen = RecheckResult(
                    None, f"the re-check failed: {describe_error(exc)}"
                )
            except Exception as exc:  # noqa: BLE001 (failure is a value)
                seen = RecheckResult(
                    None, f"the re-check failed: {describe_error(exc)}"
                )
        seen = RecheckResult(seen.took_effect, self._scrub(seen.reason))
        if seen.took_effect is not None or getattr(step, "verify", None) is None:
            return seen, False
        probe = StepTrace(
            kind=StepKind.REMEDIATION,
            type=step.type_name(),
            target="",
            decision=Decision.EXECUTED,
            reason="",
        )
        async with self._renewing(held, self._lock_ttl(step)):
            checked = await self._verify(probe, step, alert)
        said = checked.reason.removeprefix("; ")
        if checked.decision is Decision.EXECUTED:
            passed = RecheckResult(
                took_effect=True,
                reason=f"{seen.reason}; but its verification passes now: {said}",
            )
            return passed, True
        failed = RecheckResult(
            None, f"{seen.reason}; its verification does not pass either: {said}"
        )
        return failed, True

    async def _recovered(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        *,
        held: Held,
        seen: RecheckResult,
        verified: bool,
    ) -> StepTrace:
        """Record an interrupted action that took effect, or might have."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        assert held.recovered is not None  # noqa: S101 (checked by the caller)
        owner = held.recovered.owner
        if seen.took_effect:
            outcome = replace(
                trace,
                decision=Decision.EXECUTED,
                reason=f"executed, recovered after a crash of {owner}: {seen.reason}",
            )
            if not verified:
                async with self._renewing(held, self._lock_ttl(step)):
                    outcome = await self._verify(outcome, step, alert)
        else:
            outcome = replace(
                trace,
                decision=Decision.FAILED,
                reason=f"failed, interrupted by a crash of {owner} after the action "
                f"was sent; unknown whether it took effect ({seen.reason}); not "
                f"re-run (at most once): {step.summary()}",
            )
        await self._guards.finish(
            held,
            ok=outcome.decision is Decision.EXECUTED,
            detail=outcome.reason,
            playbook=match.playbook,
            target=trace.target,
            guards=match.match.playbook.guards,
            now=self._clock(),
            count=bool(seen.took_effect),
        )
        return outcome

    async def _not_rerun(
        self,
        trace: StepTrace,
        match: PlannedMatch,
        held: Held,
        *,
        why: str,
        guard: str | None,
    ) -> StepTrace:
        """An interrupted action that did not take effect, and may not run now."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        reason = f"failed, {why}"
        await self._guards.finish(
            held,
            ok=False,
            detail=reason,
            playbook=match.playbook,
            target=trace.target,
            guards=match.match.playbook.guards,
            now=self._clock(),
            count=False,
        )
        if guard is None:
            return replace(trace, decision=Decision.FAILED, reason=reason)
        return replace(trace, decision=Decision.SKIPPED, reason=reason, guard=guard)

    async def _verify(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> StepTrace:
        check = getattr(step, "verify", None)
        if check is None:
            return trace
        executor = self._executors.get(REGISTRY.verify_family(check.type))
        if executor is None:
            return replace(
                trace,
                decision=Decision.FAILED,
                reason=f"{trace.reason}; not verified: no executor for {check.type}",
            )
        try:
            async with asyncio.timeout(check.timeout.total_seconds() + 5):
                result = await executor.verify(check, step, alert)
        except StoreUnavailableError:
            raise
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise
            result = StepResult(
                ok=False, reason=f"verification failed: {describe_error(exc)}"
            )
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            result = StepResult(
                ok=False,
                reason=self._scrub(f"verification failed: {describe_error(exc)}"),
            )
        merged = {
            **dict(trace.result),
            "verification": {
                "ok": result.ok,
                "reason": result.reason,
                **dict(result.result),
            },
        }
        return replace(
            trace,
            decision=Decision.EXECUTED if result.ok else Decision.FAILED,
            reason=f"{trace.reason}; {result.reason}",
            result=freeze(merged),
        )

    async def _execute(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> StepTrace:
        return (await self._execute_changed(trace, step, alert))[0]

    async def _execute_changed(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        intent: Intent | None = None,
    ) -> tuple[StepTrace, bool]:
        """Run a step (``apply`` its intent if prepared); say if it changed anything."""
        action = step.summary()
        executor = self._executors.get(step.family)
        if executor is None:
            skipped = replace(
                trace,
                decision=Decision.SKIPPED,
                guard="executor",
                reason=f"no {step.family} executor is configured in this receiver; "
                f"did not: {action}",
            )
            return skipped, False
        try:
            async with asyncio.timeout(step.timeout.total_seconds()):
                if intent is not None:
                    preparing: Preparing = executor  # type: ignore[assignment]
                    outcome = await preparing.apply(step, alert, intent)
                else:
                    outcome = await executor.run(step, alert)
        except TimeoutError:
            timed_out = replace(
                trace,
                decision=Decision.FAILED,
                reason=self._scrub(
                    f"timed out after {step.timeout.total_seconds():g}s: {action}"
                ),
            )
            return timed_out, True
        except StoreUnavailableError:
            raise
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise
            return self._failed(trace, exc, ""), True
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            return self._failed(trace, exc, ""), True
        done = replace(
            trace,
            decision=Decision.EXECUTED if outcome.ok else Decision.FAILED,
            reason=self._scrub(outcome.reason),
            result=freeze(dict(outcome.result)),
        )
        return done, outcome.changed or not outcome.ok
