"""Run planned steps through injected executors and record the outcome.

Executors (``receiver.steps``) are passed in by ``create_app`` or the CLI, keyed
by step family (``k8s``, ``redis``, ``http``, ``prometheus``); a family with no
executor is skipped with a reason, never guessed at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from receiver.engine.planner import Plan, PlannedStep
from receiver.errors import StepError
from receiver.model import Alert, AlertTrace, Decision, MatchTrace, StepTrace, freeze
from receiver.rulebook.steps import StepModel


@dataclass(frozen=True)
class StepResult:
    """What an executor reports back."""

    ok: bool
    reason: str
    result: Mapping[str, Any] = field(default_factory=lambda: freeze({}))


class Executor(Protocol):
    """Runs the rendered steps of one family."""

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run ``step`` for ``alert``; raise ``StepError`` on failure."""
        ...


Clock = Callable[[], datetime]


class Runner:
    """Turns a plan into a trace, running steps whose decision is ``run``."""

    def __init__(
        self,
        executors: Mapping[str, Executor],
        clock: Clock,
        *,
        mode: str = "dry-run",
        on_step: Callable[[StepTrace], None] | None = None,
    ) -> None:
        self._executors = dict(executors)
        self._clock = clock
        self._mode = mode
        self._on_step = on_step

    async def run(self, plan: Plan, payload_id: str = "") -> AlertTrace:
        """Execute what the plan says may run and return the full trace."""
        matches = []
        for planned in plan.matches:
            steps = [await self._step(p, plan.alert) for p in planned.steps]
            matches.append(
                MatchTrace(
                    rule=planned.rule,
                    severity=planned.severity,
                    playbook=planned.playbook,
                    steps=tuple(steps),
                    notes=(f"severity: {planned.severity_reason}",),
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

    async def _step(self, planned: PlannedStep, alert: Alert) -> StepTrace:
        trace = planned.trace
        if planned.run and planned.step is not None:
            trace = await self._execute(planned, planned.step, alert)
        if self._on_step is not None:
            self._on_step(trace)
        return trace

    async def _execute(
        self, planned: PlannedStep, step: StepModel, alert: Alert
    ) -> StepTrace:
        trace = planned.trace
        action = step.summary()
        if planned.approval:
            return replace(
                trace,
                decision=Decision.AWAITING_APPROVAL,
                reason=f"awaiting approval by a human before: {action}",
            )
        executor = self._executors.get(step.family)
        if executor is None:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                reason=f"no {step.family} executor is configured in this receiver; "
                f"did not: {action}",
            )
        try:
            async with asyncio.timeout(step.timeout.total_seconds()):
                outcome = await executor.run(step, alert)
        except TimeoutError:
            return replace(
                trace,
                decision=Decision.FAILED,
                reason=f"timed out after {step.timeout.total_seconds():g}s: {action}",
            )
        except StepError as exc:
            return replace(trace, decision=Decision.FAILED, reason=f"{exc}")
        return replace(
            trace,
            decision=Decision.EXECUTED if outcome.ok else Decision.FAILED,
            reason=outcome.reason,
            result=freeze(dict(outcome.result)),
        )
