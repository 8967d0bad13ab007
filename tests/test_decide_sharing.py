"""Alerts decided alike share plans and traces, and decide as each on its own would."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from conftest import RUNBOOK_ALERTNAMES

from receiver.engine import runner as runner_module
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.metrics import Metrics
from receiver.model import Alert, AlertTrace, StepTrace, freeze
from receiver.rulebook import loader as loader_module
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.steps.catalog import builtin_registry

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALERTNAMES = (*RUNBOOK_ALERTNAMES, "NotInTheRunbook")
# Two rules for one alert (``continue``): an alert with two matches.
TWO_RULES = """
playbooks:
  look:
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
  act:
    diagnostics:
      - type: k8s.events
        namespace: "{labels.namespace}"
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    guards:
      require_firing_for: 5m
      namespaces: [prod]
rules:
  - name: first
    match: ['alertname="Down"']
    severity: P1
    status: any
    playbook: look
    continue: true
  - name: second
    match: ['alertname=~"Do.*"']
    severity: P2
    status: any
    playbook: act
"""


def _clock() -> datetime:
    return NOW


def _runbook() -> Rulebook:
    return load_rulebook([ROOT / "rules"], steps=builtin_registry())


def _storm(n: int, *, fired: timedelta = timedelta(hours=1)) -> list[Alert]:
    """A storm as the bench sends it: one workload, many instances."""
    return [
        Alert(
            "alertmanager",
            f"fp-{i}",
            "resolved" if i % 5 == 4 else "firing",
            freeze(
                {
                    "alertname": ALERTNAMES[i % len(ALERTNAMES)],
                    "namespace": "production" if i % 3 else "prod-eu",
                    "deployment": "sark",
                    "siem": "splunk",
                    "instance": f"10.0.0.{i}:8080",
                }
            ),
            starts_at=NOW - fired,
        )
        for i in range(n)
    ]


async def _decide(
    book: Rulebook,
    alerts: list[Alert],
    *,
    ctx: PlanContext | None = None,
    on_step: list[StepTrace] | None = None,
    metrics: Metrics | None = None,
) -> list[AlertTrace]:
    runner = Runner({}, _clock, on_step=None if on_step is None else on_step.append)
    processor = Processor(book, runner, _clock, ctx or PlanContext(), metrics=metrics)
    return await processor.decide(alerts, "payload-1", NOW)


async def test_shared_traces_equal_step_by_step_traces():
    """A storm decided with shared plans gives the traces stepping through gives."""
    book = _runbook()
    alerts = _storm(300) + _storm(40, fired=timedelta(seconds=70))
    for ctx in (PlanContext(), PlanContext(execute=True, namespaces=("production",))):
        seen: list[StepTrace] = []
        shared = await _decide(book, alerts, ctx=ctx)
        stepped = await _decide(book, alerts, ctx=ctx, on_step=seen)
        assert [t.to_json() for t in shared] == [t.to_json() for t in stepped]
        assert len(seen) == sum(len(m.steps) for t in stepped for m in t.matches)


async def test_alerts_decided_alike_share_one_match_trace():
    """Two alerts differing only in instance and fingerprint share their match."""
    traces = await _decide(_runbook(), _storm(121))
    first, again = traces[0], traces[120]  # same alertname, namespace and status
    assert first.alert.labels["alertname"] == again.alert.labels["alertname"]
    assert first.alert.fingerprint != again.alert.fingerprint
    assert first.matches
    assert first.matches[0] is again.matches[0]


async def test_a_plan_that_waits_on_firing_time_is_the_alerts_own():
    """Not firing long enough names each alert's own duration: nothing shared."""
    book = _runbook()
    alerts = [
        Alert(
            "alertmanager",
            f"fp-{seconds}",
            "firing",
            freeze(
                {
                    "alertname": "SarkApiDown",
                    "namespace": "production",
                    "deployment": "x",
                }
            ),
            starts_at=NOW - timedelta(seconds=seconds),
        )
        for seconds in (30, 90, 30)
    ]
    traces = await _decide(book, alerts)
    reasons = [
        s.reason
        for t in traces
        for s in t.matches[0].steps
        if s.guard == "require_firing_for"
    ]
    assert reasons == [
        "not firing long enough: 30s of the required 2m",
        "not firing long enough: 1m30s of the required 2m",
        "not firing long enough: 30s of the required 2m",
    ]


async def test_metrics_count_every_step_of_every_alert():
    """Per-payload metrics equal a count of every step of every trace."""
    book = load_rulebook([], {"two.yaml": TWO_RULES}, steps=builtin_registry())
    alerts = [
        Alert(
            "alertmanager",
            f"fp-{i}",
            "firing" if i % 4 else "resolved",
            freeze(
                {
                    "alertname": ("Down", "Dot", "Other")[i % 3],
                    "namespace": ("prod", "dev", "Bad_NS")[i % 3 if i % 2 else 0],
                    "deployment": "web",
                }
            ),
            starts_at=NOW - timedelta(minutes=i % 9),
        )
        for i in range(120)
    ]
    metrics = Metrics()
    traces = await _decide(book, alerts, metrics=metrics)
    steps: Counter[tuple[str, str]] = Counter()
    guards: Counter[str] = Counter()
    rules: Counter[tuple[str, str]] = Counter()
    for trace in traces:
        for match in trace.matches:
            rules[match.rule, match.severity.value] += 1
            for step in match.steps:
                steps[step.type, step.decision.value] += 1
                if step.guard:
                    guards[step.guard] += 1
    assert any(len(t.matches) == 2 for t in traces)
    assert len(guards) >= 3
    sample = metrics.registry.get_sample_value
    for (kind, decision), n in steps.items():
        assert sample("receiver_steps_total", {"type": kind, "decision": decision}) == n
    for (rule, severity), n in rules.items():
        assert (
            sample("receiver_rule_matches_total", {"rule": rule, "severity": severity})
            == n
        )
    for guard, n in guards.items():
        assert sample("receiver_guard_skips_total", {"guard": guard}) == n
    unmatched = sum(not t.matches for t in traces)
    assert sample("receiver_alerts_unmatched_total", {"source": "alertmanager"}) == (
        unmatched
    )


async def test_step_lines_are_logged_only_when_debug_is_on():
    """Debug on: one step_finished line per step; at info: none per alert or payload."""
    book = _runbook()
    alerts = _storm(30)
    with structlog.testing.capture_logs() as logs:
        traces = await _decide(book, alerts)
    events = Counter(line["event"] for line in logs)
    assert events["step_finished"] == sum(
        len(m.steps) for t in traces for m in t.matches
    )
    assert events["alert_decided"] == len(alerts)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    with structlog.testing.capture_logs() as logs:
        await _decide(book, alerts)
    # The payload is counted in the once-a-second summary, not logged alone.
    assert logs == []


async def test_settled_match_traces_stay_bounded(monkeypatch):
    """The runner keeps at most SETTLED_TRACES shared match traces."""
    monkeypatch.setattr(runner_module, "SETTLED_TRACES", 4)
    runner = Runner({}, _clock)
    processor = Processor(_runbook(), runner, _clock, PlanContext())
    alerts = [
        Alert(
            "alertmanager",
            f"fp-{i}",
            "firing",
            freeze({"alertname": "SarkHighLatency", "namespace": f"ns-{i}"}),
            starts_at=NOW - timedelta(hours=1),
        )
        for i in range(20)
    ]
    traces = await processor.decide(alerts, "p", NOW)
    assert len({id(t.matches[0]) for t in traces}) == 20
    assert len(runner._settled_traces) <= 4


def test_rule_matches_are_shared_and_stay_bounded(monkeypatch):
    """Alerts matched alike share one RuleMatch; at most KEPT_MATCHES are kept."""
    monkeypatch.setattr(loader_module, "KEPT_MATCHES", 4)
    book = _runbook()
    alerts = _storm(2 * len(ALERTNAMES))
    first = book.match(alerts[1], NOW)
    assert first
    assert first[0] is book.match(alerts[1], NOW)[0]
    for i in range(30):
        labels = {"alertname": "SarkAuthFailures", "impact": "high"}
        alert = Alert(
            "alertmanager",
            "fp",
            "firing",
            freeze(labels),
            starts_at=NOW - timedelta(seconds=i),
        )
        (match,) = book.match(alert, NOW)
        assert f"(firing {i}s)" in match.severity_reason
        assert len(book._matches) <= 4
