"""Compiled playbooks decide exactly as compiling afresh does, and stay bounded."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import RUNBOOK_ALERTNAMES

from receiver.engine import planner
from receiver.engine.planner import CompiledPlaybooks, PlanContext, plan
from receiver.model import Alert, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALERTNAMES = RUNBOOK_ALERTNAMES


def _alerts(n: int, *, fired: tuple[float, ...] = (0,)) -> list[Alert]:
    rng = random.Random(7)  # noqa: S311 (seeded on purpose)
    out = []
    for i in range(n):
        labels = {
            "alertname": rng.choice(ALERTNAMES),
            "namespace": rng.choice(["production", "prod-eu", "Bad_NS", ""]),
            "deployment": rng.choice(["sark", "sark-api", "x" * 300, ""]),
            "siem": rng.choice(["splunk", "datadog", "other"]),
            "impact": rng.choice(["high", "low"]),
        }
        out.append(
            Alert(
                "alertmanager",
                f"fp-{i}",
                rng.choice(["firing", "resolved"]),
                freeze({k: v for k, v in labels.items() if v or rng.random() < 0.5}),
                starts_at=NOW - timedelta(seconds=rng.choice(fired)),
            )
        )
    return out


def test_compiled_plans_equal_fresh_plans():
    """Reusing renderings across alerts gives the plan compiling afresh gives."""
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    for ctx in (PlanContext(), PlanContext(execute=True, namespaces=("production",))):
        for alert in _alerts(600):
            shared = plan(alert, book, NOW, ctx, compiled=compiled)
            fresh = plan(alert, book, NOW, ctx)
            assert [
                [(p.trace, p.step, p.run, p.approval, p.index) for p in m.steps]
                for m in shared.matches
            ] == [
                [(p.trace, p.step, p.run, p.approval, p.index) for p in m.steps]
                for m in fresh.matches
            ]
            assert shared.notes == fresh.notes


def test_playbook_plans_equal_fresh_plans_whatever_the_firing_time():
    """Plans shared by alerts planned alike equal plans made afresh for each."""
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    contexts = (
        PlanContext(),
        PlanContext(execute=True),
        PlanContext(execute=True, namespaces=("production",)),
        PlanContext(diagnose=True),
    )
    for ctx in contexts:
        # Around the runbook's requirements (2m, 5m, 10m) to the fraction of a
        # second: young alerts share plans by whole seconds fired.
        fired = (0, 0.4, 45, 45.9, 119.5, 119.999, 120, 150, 299.2, 301, 599.7, 700)
        for alert in _alerts(500, fired=(*fired, 86400)):
            shared = plan(alert, book, NOW, ctx, compiled=compiled)
            fresh = plan(alert, book, NOW, ctx)
            assert [m.steps for m in shared.matches] == [m.steps for m in fresh.matches]
            assert shared.notes == fresh.notes


def test_alerts_planned_alike_share_their_planned_steps():
    """Same template values, status, mode and severity: one planned match."""
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    labels = {"alertname": "SarkHighLatency", "namespace": "production"}
    one, two = (
        plan(
            Alert(
                "alertmanager",
                fp,
                "firing",
                freeze({**labels, "instance": fp}),
                starts_at=NOW - timedelta(hours=1),
            ),
            book,
            NOW,
            PlanContext(),
            compiled=compiled,
        )
        for fp in ("a", "b")
    )
    assert one.matches[0] is two.matches[0]
    assert one.matches[0].steps is two.matches[0].steps


def test_young_alerts_share_plans_by_whole_seconds_fired():
    """Not firing long enough: alike for the same second, apart for the next."""
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    labels = {"alertname": "SarkHighLatency", "namespace": "production"}

    def planned(fp: str, fired: float) -> tuple[object, ...]:
        alert = Alert(
            "alertmanager",
            fp,
            "firing",
            freeze({**labels, "instance": fp}),
            starts_at=NOW - timedelta(seconds=fired),
        )
        return plan(alert, book, NOW, PlanContext(), compiled=compiled).matches[0].steps

    one, two, three = planned("a", 65.1), planned("b", 65.8), planned("c", 66.2)
    assert one is two
    assert three is not one
    reasons = {p.trace.reason for p in one} | {p.trace.reason for p in three}
    assert "not firing long enough: 1m5s of the required 10m" in reasons
    assert "not firing long enough: 1m6s of the required 10m" in reasons


def test_playbook_plans_stay_bounded(monkeypatch):
    """A playbook keeps at most RENDER_CACHE plans, however many values arrive."""
    monkeypatch.setattr(planner, "RENDER_CACHE", 8)
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    for i in range(50):
        alert = Alert(
            "alertmanager",
            "fp",
            "firing",
            freeze({"alertname": "SarkHighLatency", "namespace": f"n{i}"}),
        )
        planned = plan(alert, book, NOW, PlanContext(), compiled=compiled)
        playbook = compiled.playbook(planned.matches[0].match.playbook)
        assert len(playbook._planned) <= 8


def test_a_step_reads_only_its_template_fields():
    """A compiled step keys its renderings on the alert fields its templates use."""
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    fields = {
        f
        for playbook in book.playbooks.values()
        for step in (*playbook.diagnostics, *playbook.remediation)
        for f in compiled.step(step).fields
    }
    assert ("labels", "namespace") in fields
    assert all(scope in {"labels", "annotations", "alert"} for scope, _ in fields)


def test_renderings_stay_bounded(monkeypatch):
    """A step keyed on a per-alert value keeps at most RENDER_CACHE renderings."""
    monkeypatch.setattr(planner, "RENDER_CACHE", 8)
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    compiled = CompiledPlaybooks()
    step = next(
        s
        for p in book.playbooks.values()
        for s in (*p.diagnostics, *p.remediation)
        if ("labels", "namespace") in compiled.step(s).fields
    )
    one = compiled.step(step)
    for i in range(50):
        one.render(
            Alert("alertmanager", "fp", "firing", freeze({"namespace": f"n{i}"}))
        )
        assert len(one._renderings) <= 8
