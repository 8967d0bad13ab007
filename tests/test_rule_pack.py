"""The runbook rule pack (``rules/``) and its examples hold together.

``rules check`` and ``rules test`` pass, every runbook alert has firing and
resolved example payloads, every rule is exercised by a rule unit test, resolved
alerts never remediate, and the playbooks the runbook says must change nothing
have no remediation steps.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from receiver.cli import main
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.model import AlertTrace, Decision, Severity, StepKind
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.rulebook.templates import PLACEHOLDER
from receiver.sources import detect, parse_json
from receiver.steps.catalog import builtin_registry

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
EXAMPLES = ROOT / "examples"
SOURCES = ("alertmanager", "pagerduty", "events-v2")
AT = datetime(2026, 11, 26, 10, 20, tzinfo=UTC)

# The runbook's alerts: alertname -> (severity, playbook). None: from the matrix.
RUNBOOK: dict[str, tuple[Severity | None, str]] = {
    "SarkApiDown": (Severity.P0, "api-down"),
    "SarkHighLatency": (Severity.P1, "high-latency"),
    "SarkAuthFailures": (None, "auth-failures"),
    "SarkDatabaseDown": (Severity.P0, "database-outage"),
    "SarkSiemForwardingDown": (Severity.P1, "siem-down"),
    "SarkFailedLoginSpike": (Severity.P0, "security-incident"),
    "SarkPolicyCacheCorrupted": (Severity.P2, "policy-cache"),
}
# Playbooks that, per the runbook, gather evidence and leave changes to people.
HANDS_OFF = ("security-incident", "database-outage")


@pytest.fixture(scope="module")
def rulebook() -> Rulebook:
    return load_rulebook([RULES], steps=builtin_registry())


def kebab(alertname: str) -> str:
    """SarkApiDown -> sark-api-down, the examples' file naming."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", alertname).lower()


def example_files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (EXAMPLES / d).glob("*.json"))


async def decide(rulebook: Rulebook, path: Path, *, execute: bool) -> list[AlertTrace]:
    """Decide one example as the service would, in execute mode if asked."""

    def clock() -> datetime:
        return AT

    processor = Processor(
        rulebook, Runner({}, clock), clock, PlanContext(execute=execute)
    )
    body = path.read_bytes()
    alerts = processor.alerts(detect(parse_json(body)), body, AT)
    return await processor.decide(alerts, now=AT)


def test_rules_check_passes(capsys):
    """`receiver rules check rules` accepts the rule pack."""
    assert main(["rules", "check", str(RULES)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_rule_unit_tests_pass(capsys):
    """`receiver rules test rules` runs the pack's unit tests and all pass."""
    code = main(["rules", "test", str(RULES)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.rstrip().endswith(" 0 failed"), out


def test_every_rule_has_a_unit_test(rulebook):
    """Each rule of the pack is the expected match of at least one rule test."""
    tested = set()
    for path in sorted(RULES.rglob("*.test.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            tested.update(e["rule"] for e in case["expect"])
    untested = sorted({r.name for r in rulebook.rules} - tested)
    assert not untested, f"rules without a unit test: {untested}"


@pytest.mark.parametrize("alertname", sorted(RUNBOOK))
async def test_runbook_alert_gets_its_severity_and_playbook(rulebook, alertname):
    """The firing example of each runbook alert gets its runbook level and playbook."""
    severity, playbook = RUNBOOK[alertname]
    example = EXAMPLES / "alertmanager" / f"{kebab(alertname)}.firing.json"
    traces = await decide(rulebook, example, execute=False)
    assert traces
    for trace in traces:
        assert trace.alert.labels["alertname"] == alertname
        [match] = trace.matches
        assert match.playbook == playbook
        if severity is None:
            # multiple_users x 20 minutes in the matrix
            assert match.severity is Severity.P1
            assert "impact multiple_users x duration 5-30 minutes" in match.notes[0]
        else:
            assert match.severity is severity


@pytest.mark.parametrize("alertname", sorted(RUNBOOK))
def test_runbook_alert_has_firing_and_resolved_examples(alertname):
    """Every runbook alertname appears in a firing and a resolved example."""
    seen: dict[str, set[str]] = {"firing": set(), "resolved": set()}
    for path in sorted((EXAMPLES / "alertmanager").glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        for alert in payload["alerts"]:
            seen[alert["status"]].add(alert["labels"]["alertname"])
    assert alertname in seen["firing"], f"no firing example for {alertname}"
    assert alertname in seen["resolved"], f"no resolved example for {alertname}"


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.name)
async def test_example_matches_a_rule_or_is_recorded_only(rulebook, example):
    """Every actionable example alert matches a rule; the rest say why not."""
    for trace in await decide(rulebook, example, execute=False):
        if trace.alert.actionable:
            assert trace.matches, f"{example.name}: no rule matched"
        else:
            assert not trace.matches
            assert any("recorded only" in n for n in trace.notes), trace.notes


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.name)
async def test_resolved_examples_never_remediate(rulebook, example):
    """Even in execute mode, a resolved alert's remediations are skipped."""
    for trace in await decide(rulebook, example, execute=True):
        if trace.alert.status != "resolved":
            continue
        for match in trace.matches:
            for step in match.steps:
                if step.kind is StepKind.REMEDIATION:
                    assert step.decision is Decision.SKIPPED, step
                    assert step.reason.startswith("alert resolved"), step.reason


@pytest.mark.parametrize("name", HANDS_OFF)
def test_hands_off_playbooks_change_nothing(rulebook, name):
    """The security-incident and database-outage playbooks have no remediation."""
    playbook = rulebook.playbooks[name]
    assert playbook.diagnostics, f"{name} should still gather diagnostics"
    assert playbook.remediation == []


def test_security_incident_escalates_to_security_team(rulebook):
    """Playbook 6 names security-team and says to page it."""
    playbook = rulebook.playbooks["security-incident"]
    assert playbook.escalate_to == "security-team"
    assert "page security" in playbook.description.lower()


def test_every_remediating_playbook_has_guards(rulebook):
    """A playbook that changes things sets a cooldown, a budget and a breaker."""
    for name, playbook in rulebook.playbooks.items():
        if not playbook.remediation:
            continue
        guards = playbook.guards
        assert guards.cooldown is not None, name
        assert guards.budget is not None, name
        assert guards.circuit_breaker is not None, name


async def test_steps_render_every_placeholder(rulebook):
    """No step of a matched example keeps an unrendered {labels.X} placeholder."""
    example = EXAMPLES / "alertmanager" / "sark-api-down.firing.json"
    traces = await decide(rulebook, example, execute=False)
    for trace in traces:
        for match in trace.matches:
            for step in match.steps:
                text = json.dumps(step.to_json())
                assert not PLACEHOLDER.search(text), text
