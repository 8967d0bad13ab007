"""Run planned steps through injected executors, behind the guards, and record it.

Executors (``receiver.steps``) are passed in by ``create_app`` or the CLI, keyed
by step family (``k8s``, ``redis``, ``http``, ``prometheus``); a family with no
executor is skipped with a reason, never guessed at. Diagnostics run directly;
remediations pass ``GuardKeeper`` first and are verified after. A failing step is
a ``failed`` decision in the trace, never an exception out of the runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from receiver.engine.guards import GuardKeeper, Held, Refusal, idempotency_key
from receiver.engine.planner import Plan, PlannedMatch, PlannedStep
from receiver.engine.reuse import DiagnosticsReuse, occurrence_key
from receiver.errors import StepError
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
    """Runs the rendered steps (and verifications) of one family."""

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
        reuse: DiagnosticsReuse | None = None,
    ) -> None:
        self._reuse = reuse
        self._executors = dict(executors)
        self._clock = clock
        self._mode = mode
        self._guards = guards
        self._on_step = on_step

    async def run(self, plan: Plan, payload_id: str = "") -> AlertTrace:
        """Execute what the plan says may run and return the full trace."""
        matches = []
        for planned in plan.matches:
            steps = [
                await self._step(p, plan.alert, planned, payload_id)
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

    async def _step(
        self, planned: PlannedStep, alert: Alert, match: PlannedMatch, payload_id: str
    ) -> StepTrace:
        trace = planned.trace
        if planned.run and planned.step is not None:
            if planned.step.kind is StepKind.REMEDIATION:
                trace = await self._remediate(
                    planned, planned.step, alert, match, payload_id
                )
            else:
                key = occurrence_key(match.rule, planned.index, alert)
                reused = self._reuse.get(key) if self._reuse is not None else None
                trace = reused or await self._execute(trace, planned.step, alert)
                if self._reuse is not None and reused is None:
                    self._reuse.put(key, trace)
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
    ) -> StepTrace:
        trace = planned.trace
        action = step.summary()
        if self._guards is None:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                reason=f"no state store to guard remediations; did not: {action}",
            )
        if step.family not in self._executors:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                reason=f"no {step.family} executor is configured in this receiver; "
                f"did not: {action}",
            )
        keeper = self._guards
        guards = match.match.playbook.guards
        playbook = match.playbook
        target = trace.target
        key = idempotency_key(match.rule, planned.index, step.type_name(), alert)
        now = self._clock()
        try:
            await keeper.check_circuit(playbook, guards, now)
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
            return replace(trace, decision=decision, reason=refusal.reason)
        return await self._run_held(trace, step, alert, match, held)

    def _lock_ttl(self, step: StepModel) -> timedelta:
        verify = getattr(step, "verify", None)
        extra = verify.timeout if verify is not None else timedelta(0)
        return step.timeout + extra + timedelta(minutes=1)

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
        try:
            await keeper.check_firing(alert, ask_source=True)
        except Refusal as refusal:
            await keeper.abandon(held, self._clock())
            return replace(trace, decision=Decision.SKIPPED, reason=refusal.reason)
        outcome, changed = await self._execute_changed(trace, step, alert)
        if not changed:
            await keeper.abandon(held, self._clock())
            return replace(outcome, decision=Decision.SKIPPED)
        if outcome.decision is Decision.EXECUTED:
            outcome = await self._verify(outcome, step, alert)
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
        except (TimeoutError, StepError) as exc:
            result = StepResult(
                ok=False, reason=f"verification failed: {exc or 'timed out'}"
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
        """Run a step; also say whether it changed anything."""
        action = step.summary()
        executor = self._executors.get(step.family)
        if executor is None:
            skipped = replace(
                trace,
                decision=Decision.SKIPPED,
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
                reason=f"timed out after {step.timeout.total_seconds():g}s: {action}",
            )
            return timed_out, True
        except StepError as exc:
            return replace(trace, decision=Decision.FAILED, reason=f"{exc}"), True
        done = replace(
            trace,
            decision=Decision.EXECUTED if outcome.ok else Decision.FAILED,
            reason=outcome.reason,
            result=freeze(dict(outcome.result)),
        )
        return done, outcome.changed or not outcome.ok
