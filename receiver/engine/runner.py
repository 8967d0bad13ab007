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

Before an action leaves, its run-once key is marked ``sending``. After a crash, a
key a dead incarnation left ``running`` never sent anything, so the step runs;
one left ``sending`` is re-checked, never blindly re-run: executors that list the
step type in ``rechecks`` (their run finds "already as wanted" and returns
``changed=False``) are asked again, the rest are recorded as interrupted.
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
from receiver.errors import StepError, StoreUnavailableError
from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    StepKind,
    StepResult,
    StepTrace,
    freeze,
)
from receiver.rulebook.steps import StepModel

log = structlog.get_logger("receiver.runner")


class Executor(Protocol):
    """Runs the rendered steps (and verifications) of one family.

    An executor may also carry ``rechecks``: the step types whose ``run`` is a
    safe re-check (it returns ``changed=False`` when the target is already as
    wanted), which crash recovery may call again.
    """

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run ``step`` for ``alert``; raise ``StepError`` on failure."""
        ...

    async def verify(self, check: Any, step: StepModel, alert: Alert) -> StepResult:
        """Check that a remediation worked (``check`` is a Verify model)."""
        ...


Clock = Callable[[], datetime]
_NEWS = frozenset({Decision.EXECUTED, Decision.FAILED, Decision.AWAITING_APPROVAL})
_VERIFY_FAMILY = {
    "k8s.rollout_status": "k8s",
    "k8s.pods_ready": "k8s",
    "prometheus.query": "prometheus",
    "http.get": "http",
}
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
    ) -> None:
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
                    trace = await self._execute(trace, planned.step, alert)
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
            decision = (
                Decision.AWAITING_APPROVAL if refusal.awaiting else Decision.SKIPPED
            )
            return replace(
                trace, decision=decision, reason=refusal.reason, guard=refusal.guard
            )
        return await self._run_held(trace, step, alert, match, held)

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
        recovered = held.recovered
        if recovered is not None and recovered.status == "sending":
            return await self._recheck(trace, step, alert, match, held)
        note = ""
        if recovered is not None:
            note = (
                f" (an attempt by {recovered.owner}, interrupted by a crash before "
                "anything was sent, is run now)"
            )
        try:
            await keeper.check_firing(alert, ask_source=True)
        except Refusal as refusal:
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
            await keeper.abandon(held)
            failed = self._failed(trace, exc, "last check before acting failed: ")
            return replace(failed, reason=f"{failed.reason} (nothing was sent){note}")
        if not await keeper.store.mark_sending(held.key, held.owner, self._clock()):
            # Another worker took the claim over (this one looked dead to it).
            await keeper.abandon(held)
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="idempotency",
                reason="not run: another worker took over its run-once claim "
                "(this one was presumed dead); nothing was sent",
            )
        outcome, changed = await self._act(trace, step, alert, held)
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

    async def _act(
        self, trace: StepTrace, step: StepModel, alert: Alert, held: Held
    ) -> tuple[StepTrace, bool]:
        """Run and verify a step while renewing its lock; failures are values."""
        try:
            async with self._renewing(held, self._lock_ttl(step)):
                outcome, changed = await self._execute_changed(trace, step, alert)
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

    async def _recheck(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
    ) -> StepTrace:
        """Decide an action a crash interrupted after it was marked ``sending``."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        assert held.recovered is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        guards = match.match.playbook.guards
        owner = held.recovered.owner
        executor = self._executors[step.family]
        rechecks: frozenset[str] = getattr(executor, "rechecks", frozenset())
        if step.type_name() not in rechecks:
            reason = (
                f"interrupted by a crash of {owner} after the action was sent, "
                "before its outcome was recorded; whether it took effect is "
                f"unknown and it is not re-run (at most once): {step.summary()}"
            )
            await keeper.finish(
                held,
                ok=False,
                detail=reason,
                playbook=match.playbook,
                target=trace.target,
                guards=guards,
                now=self._clock(),
                count=False,
            )
            return replace(trace, decision=Decision.FAILED, reason=reason)
        try:
            async with self._renewing(held, self._lock_ttl(step)):
                outcome, changed = await self._execute_changed(trace, step, alert)
        except asyncio.CancelledError as exc:
            if _cancelled_from_outside():
                raise
            outcome, changed = self._failed(trace, exc, ""), True
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            outcome, changed = self._failed(trace, exc, ""), True
        if outcome.decision is Decision.EXECUTED and not changed:
            outcome = replace(
                outcome,
                decision=Decision.EXECUTED,
                reason=f"executed, recovered after a crash of {owner}: the target "
                f"was already as wanted ({outcome.reason})",
            )
        elif outcome.decision is Decision.EXECUTED:
            outcome = await self._verify(outcome, step, alert)
            outcome = replace(
                outcome,
                reason=f"the attempt of {owner} was interrupted by a crash before "
                f"it took effect; re-checked and run now: {outcome.reason}",
            )
        else:
            outcome = replace(
                outcome,
                reason=f"failed, interrupted by a crash of {owner}; the re-check "
                f"failed: {outcome.reason}",
            )
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
        return outcome

    async def _verify(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> StepTrace:
        check = getattr(step, "verify", None)
        if check is None:
            return trace
        executor = self._executors.get(_VERIFY_FAMILY.get(check.type, ""))
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
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> tuple[StepTrace, bool]:
        """Run a step; also say whether it changed anything (or may have)."""
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
