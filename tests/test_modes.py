"""Modes and diagnostics reuse: what runs in dry-run, diagnose and execute.

``diagnose`` runs read-only diagnostics and only describes remediations; the trace,
the note and the metrics say which mode decided. A diagnostic of an unchanged
alert occurrence is reused within ``diagnostics_reuse``, and runs again when the
alert changes or the window ends (on a ticking clock, nothing waits).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from conftest import full_settings
from incident_helpers import TickingClock, example, rulebook

from receiver.app import create_app
from receiver.app_incidents import IncidentWiring
from receiver.engine.planner import PlanContext
from receiver.engine.reuse import DiagnosticsReuse
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.errors import TransientStepError
from receiver.metrics import Metrics
from receiver.model import Alert, Decision, StepKind, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings
from receiver.sinks.render import render_note
from receiver.sources import alertmanager
from receiver.store import MemoryStore


class CountingExecutor:
    def __init__(self, fail: bool = False) -> None:
        self.runs: list[str] = []
        self.fail = fail

    async def run(self, step, alert) -> StepResult:
        self.runs.append(step.type_name())
        if self.fail:
            raise TransientStepError("boom")
        return StepResult(ok=True, reason="looked")

    async def verify(self, check, step, alert) -> StepResult:
        return StepResult(ok=True, reason="fine")


def processor(mode: str, clock, executor, reuse: timedelta = timedelta(0)):
    runner = Runner(
        dict.fromkeys(("k8s", "http", "prometheus", "redis", "changes"), executor),
        clock,
        mode=mode,
        reuse=DiagnosticsReuse(reuse, clock),
    )
    ctx = PlanContext(execute=mode == "execute", diagnose=mode == "diagnose")
    return Processor(rulebook(), runner, clock, ctx)


def api_down(**annotations: str) -> list[Alert]:
    body = json.dumps(example("alertmanager/sark-api-down.firing.json")).encode()
    alerts = alertmanager.from_body(body)
    if annotations:
        alerts = [
            replace(a, annotations=freeze({**a.annotations, **annotations}))
            for a in alerts
        ]
    return alerts


async def test_diagnose_runs_diagnostics_and_describes_remediations():
    """In diagnose mode every diagnostic runs; no remediation does."""
    clock = TickingClock()
    executor = CountingExecutor()
    [trace] = await processor("diagnose", clock, executor).decide(api_down())
    assert trace.mode == "diagnose"
    steps = trace.matches[0].steps
    diagnostics = [s for s in steps if s.kind is StepKind.DIAGNOSTIC]
    remediations = [s for s in steps if s.kind is StepKind.REMEDIATION]
    assert diagnostics
    assert {s.decision for s in diagnostics} == {Decision.EXECUTED}
    assert remediations
    for step in remediations:
        assert step.decision in (Decision.DRY_RUN, Decision.SKIPPED)
        if step.decision is Decision.DRY_RUN:
            assert step.reason.startswith("diagnose mode: would ")
    assert len(executor.runs) == len(diagnostics)
    assert "What would be done (diagnose mode):" in render_note(trace, 24_000)
    assert "mode diagnose" in render_note(trace, 24_000)


async def test_dry_run_contacts_nothing():
    """In dry-run mode no executor is called at all."""
    executor = CountingExecutor()
    [trace] = await processor("dry-run", TickingClock(), executor).decide(api_down())
    assert executor.runs == []
    assert trace.mode == "dry-run"


async def test_unchanged_occurrence_reuses_diagnostics_within_the_window():
    """A resend reuses; a changed alert or an expired window runs again."""
    clock = TickingClock()
    executor = CountingExecutor()
    proc = processor("diagnose", clock, executor, reuse=timedelta(minutes=10))
    await proc.decide(api_down())
    first = len(executor.runs)
    assert first > 0
    [again] = await proc.decide(api_down())
    assert len(executor.runs) == first, "a resend ran diagnostics again"
    reused = [s for s in again.matches[0].steps if s.kind is StepKind.DIAGNOSTIC]
    assert all(s.reason.startswith("reused from ") for s in reused)
    await proc.decide(api_down(description="now also 502s"))
    assert len(executor.runs) == 2 * first, "a changed alert must run again"
    clock.jump(minutes=11)
    await proc.decide(api_down())
    assert len(executor.runs) == 3 * first, "an expired window must run again"


async def test_failed_diagnostics_are_not_reused():
    """A diagnostic that failed runs again on the next resend."""
    clock = TickingClock()
    executor = CountingExecutor(fail=True)
    proc = processor("diagnose", clock, executor, reuse=timedelta(minutes=10))
    await proc.decide(api_down())
    first = len(executor.runs)
    await proc.decide(api_down())
    assert len(executor.runs) == 2 * first


@pytest.mark.parametrize("mode", ["dry-run", "diagnose", "execute"])
def test_settings_accept_the_three_modes(mode):
    """RECEIVER_MODE takes dry-run, diagnose and execute; dry-run is the default."""
    assert Settings(engine={"mode": mode}).engine.mode == mode
    assert Settings().engine.mode == "dry-run"


async def test_metrics_say_which_mode_decides(aiohttp_client, web_rules):
    """receiver_mode{mode="diagnose"} is 1 in a diagnose-mode app."""
    app = create_app(
        build_runtime(full_settings(mode="diagnose")),
        rulebook=load_rulebook([web_rules]),
        store=MemoryStore(),
        clock=TickingClock(),
        metrics=Metrics(),
        incidents=IncidentWiring(tick_every=None),
    )
    client = await aiohttp_client(app)
    text = await (await client.get("/metrics")).text()
    assert 'receiver_mode{mode="diagnose"} 1.0' in text
