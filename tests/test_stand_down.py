"""An acknowledged alert's playbook stands down without hiding why a step never ran.

``stand_down_when_acknowledged`` skips the remediations the planner would run;
one the planner already skipped (a namespace outside the allowlist, a value
refused by its slot's grammar, the alert not firing long enough) keeps that
reason in the trace: it is the one that holds whether anyone acknowledged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from receiver.engine.planner import PlanContext, plan
from receiver.engine.processing import stand_down
from receiver.model import Alert, Decision, StepKind, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry

NOW = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
PACK = """\
playbooks:
  restart:
    stand_down_when_acknowledged: true
    guards:
      require_firing_for: 5m
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
rules:
  - name: down
    match: ['alertname="Down"']
    playbook: restart
"""


def _alert(namespace: str, deployment: str, fired: timedelta) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint="0123abcd",
        status="firing",
        labels=freeze(
            {"alertname": "Down", "namespace": namespace, "deployment": deployment}
        ),
        annotations=freeze({}),
        starts_at=NOW - fired,
    )


def _remediation_reason(tmp_path: Path, alert: Alert) -> tuple[str, str]:
    (tmp_path / "pack.yaml").write_text(PACK, encoding="utf-8")
    book = load_rulebook([tmp_path], steps=builtin_registry())
    ctx = PlanContext(namespaces=("production",))
    planned = stand_down(plan(alert, book, NOW, ctx), NOW - timedelta(minutes=1))
    [match] = planned.matches
    [step] = [s for s in match.steps if s.trace.kind is StepKind.REMEDIATION]
    assert step.trace.decision is Decision.SKIPPED
    assert not step.run
    return step.trace.reason, step.trace.guard


def test_a_runnable_remediation_stands_down(tmp_path):
    reason, guard = _remediation_reason(
        tmp_path, _alert("production", "api", timedelta(hours=1))
    )
    assert reason.startswith("acknowledged by a human at ")
    assert guard == "acknowledged"


def test_a_namespace_outside_the_allowlist_keeps_its_reason(tmp_path):
    reason, guard = _remediation_reason(
        tmp_path, _alert("kube-system", "coredns", timedelta(hours=1))
    )
    assert "namespace 'kube-system' is not allowed" in reason
    assert guard != "acknowledged"


def test_a_refused_value_keeps_its_reason(tmp_path):
    reason, _ = _remediation_reason(
        tmp_path, _alert("production", "api?watch=1", timedelta(hours=1))
    )
    assert "contains '?'" in reason


def test_not_firing_long_enough_keeps_its_reason(tmp_path):
    reason, _ = _remediation_reason(
        tmp_path, _alert("production", "api", timedelta(minutes=2))
    )
    assert "not firing long enough" in reason
