"""Golden incident reports for the shipped examples; their shape against the runbook.

Each example incident is played on a ticking clock from 10:00: the firing payload
opens it, a person acknowledges at about 10:03, the ticker runs at 10:20 (the
matrix promotes, clocks breach where they do), the resolved payload (where the
example has one) resolves it at about 10:40, and the report is rendered. The
Markdown must equal ``tests/golden/reports/<example>.md``; regenerate after an
intended change with ``RECEIVER_UPDATE_GOLDEN=1`` and review the diff. Every
report's headings are exactly the runbook's Incident Report and Post-Mortem
template sections, in order. ``receiver report ID`` prints the same text.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from incident_helpers import (
    EXAMPLES,
    ROOT,
    START,
    TickingClock,
    example,
    rulebook,
    traces,
)

from receiver.cli import main
from receiver.incidents.report import render_report
from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore

GOLDEN = Path(__file__).resolve().parent / "golden" / "reports"
UPDATE = os.environ.get("RECEIVER_UPDATE_GOLDEN") == "1"
# The runbook's "Incident Report Template" then "Post-Mortem Template" headings;
# "Automation ledger" is the one section we add (under Response).
HEADINGS = [
    "# Incident Report: ",
    "## Executive Summary",
    "## Technical Details",
    "## Impact",
    "## Response",
    "### Automation ledger",
    "## Follow-up Actions",
    "## Attachments",
    "# Post-Mortem: ",
    "## Summary",
    "## Impact",
    "## Root Cause",
    "## Timeline",
    "## What Went Well",
    "## What Could Be Improved",
    "## Action Items",
    "## Lessons Learned",
    "## Follow-up",
]
FIELDS = [
    "**Incident ID:**",
    "**Date:**",
    "**Duration:**",
    "**Severity:**",
    "**Status:**",
    "**Root Cause:**",
    "**Affected Systems:**",
    "**Error Messages:**",
    "- **Users Affected:**",
    "- **Services Down:**",
    "- **Data Loss:**",
    "- **Revenue Impact:**",
    "**Detection Time:**",
    "**Response Time:**",
    "**Resolution Time:**",
    "**Mitigation:**",
]


def cases() -> list[tuple[str, str, str | None]]:
    found = []
    for path in sorted((EXAMPLES / "alertmanager").glob("*.firing.json")):
        done = path.with_name(path.name.replace(".firing.", ".resolved."))
        found.append(
            (
                "alertmanager",
                f"alertmanager/{path.name}",
                f"alertmanager/{done.name}" if done.exists() else None,
            )
        )
    found.append(
        (
            "pagerduty",
            "pagerduty/sark-api-down.triggered.json",
            "pagerduty/sark-api-down.resolved.json",
        )
    )
    found.append(
        (
            "events_v2",
            "events-v2/sark-siem-forwarding-down.trigger.json",
            "events-v2/sark-siem-forwarding-down.resolve.json",
        )
    )
    return found


async def play(source: str, firing: str, resolved: str | None, db: str) -> str:
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(db)
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        [incident] = await service.observe(
            await traces(book, source, example(firing), clock())
        )
        clock.to(START + timedelta(minutes=3))
        await service.acknowledge(incident.id, by="Jane Smith")
        clock.to(START + timedelta(minutes=20))
        await service.tick()
        if resolved is not None:
            clock.to(START + timedelta(minutes=40))
            await service.observe(
                await traces(book, source, example(resolved), clock())
            )
        final = await service.get(incident.id)
        assert final is not None
        return render_report(final, service.policy, clock())
    finally:
        await store.close()


@pytest.mark.parametrize(("source", "firing", "resolved"), cases(), ids=lambda v: v)
async def test_report_matches_golden(source, firing, resolved, tmp_path):
    """The example incident's report is exactly the reviewed golden file."""
    got = await play(source, firing, resolved, str(tmp_path / "r.db"))
    golden = GOLDEN / (Path(firing).name.removesuffix(".json") + ".md")
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(got)
    assert golden.exists(), "no golden report; run with RECEIVER_UPDATE_GOLDEN=1"
    assert got == golden.read_text(), (
        f"{golden.name} differs; if intended, regenerate with RECEIVER_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize(("source", "firing", "resolved"), cases(), ids=lambda v: v)
async def test_report_sections_follow_the_runbook_templates(
    source, firing, resolved, tmp_path
):
    """Headings and fields are the runbook templates', in order; placeholders marked."""
    text = await play(source, firing, resolved, str(tmp_path / "r.db"))
    headings = [line for line in text.splitlines() if line.startswith("#")]
    shapes = [h[: h.index(": ") + 2] if h.startswith("# ") else h for h in headings]
    assert shapes == HEADINGS
    positions = [text.index(field) for field in FIELDS]
    assert positions == sorted(positions)
    assert "_[To fill in: root cause]_" in text
    assert "| Action | Owner | Due Date | Status |" in text


async def test_resolved_unacknowledged_says_never_acknowledged(tmp_path):
    """Resolved before anyone acknowledged: the response time says so, not "not yet"."""
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(str(tmp_path / "r.db"))
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        firing = example("alertmanager/sark-api-down.firing.json")
        [incident] = await service.observe(
            await traces(book, "alertmanager", firing, clock())
        )
        clock.to(START + timedelta(minutes=12))
        resolved = example("alertmanager/sark-api-down.resolved.json")
        await service.observe(await traces(book, "alertmanager", resolved, clock()))
        final = await service.get(incident.id)
        assert final is not None
        assert final.acknowledged_at is None
        clock.to(START + timedelta(hours=3))
        text = render_report(final, service.policy, clock())
    finally:
        await store.close()
    [line] = [x for x in text.splitlines() if x.startswith("**Response Time:**")]
    assert line == "**Response Time:** never acknowledged (resolved after 12 minutes)"
    assert "not yet" not in text


async def test_a_remediation_not_run_for_a_resolved_alert_is_not_an_improvement(
    tmp_path,
):
    """Its alert resolved, the remediation is skipped: recovery, not a lesson.

    The report listed "Refused: ... alert resolved: remediations run only while
    an alert fires" under What Could Be Improved for every resolved incident.
    """
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(str(tmp_path / "r.db"))
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        firing = example("alertmanager/sark-policy-cache-corrupted.firing.json")
        clock.to(START + timedelta(hours=1))  # fired long enough: it would run
        [incident] = await service.observe(
            await traces(book, "alertmanager", firing, clock())
        )
        resolved = example("alertmanager/sark-policy-cache-corrupted.resolved.json")
        await service.observe(await traces(book, "alertmanager", resolved, clock()))
        final = await service.get(incident.id)
        assert final is not None
        assert any(
            i.decision == "skipped" and i.reason.startswith("alert resolved")
            for i in final.ledger
        )
        text = render_report(final, service.policy, clock())
    finally:
        await store.close()
    improve = text[text.index("## What Could Be Improved") : text.index("## Action")]
    assert "alert resolved" not in improve
    assert "Refused" not in improve


def test_cli_report_prints_the_stored_report(tmp_path, capsys):
    """``receiver report ID`` prints the report of an incident in the store."""
    db = tmp_path / "receiver.db"
    source, firing, resolved = cases()[0]
    want = asyncio.run(play(source, firing, resolved, str(db)))
    capsys.readouterr()
    code = main(
        [
            "report",
            "INC-2026-11-26-001",
            "--store",
            f"sqlite:///{db}",
            "--rules",
            str(ROOT / "rules"),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == want
    code = main(["report", "INC-none", "--store", f"sqlite:///{db}"])
    assert code == 1
    assert "no incident 'INC-none'" in capsys.readouterr().err


TEMPLATES = Path(__file__).resolve().parent / "golden" / "runbook-templates.md"
LABEL = re.compile(r"^(?:- )?\*\*([^*]+):\*\*|^- ([A-Z][\w/ -]+): ")


def template(name: str) -> str:
    """One of the runbook's templates (the fenced block under its heading)."""
    text = TEMPLATES.read_text()
    start = text.index("```markdown\n", text.index(f"## {name}")) + 12
    return text[start : text.index("\n```", start)]


def shape(markdown: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Headings (a title's text after ': ' dropped) and (section, field) labels."""
    headings: list[str] = []
    labels: list[tuple[str, str]] = []
    for line in markdown.splitlines():
        if line.startswith("#"):
            headings.append(line[: line.index(": ") + 2] if ": " in line else line)
        elif found := LABEL.match(line):
            labels.append((headings[-1], found.group(1) or found.group(2)))
    return headings, labels


@pytest.mark.parametrize(("source", "firing", "resolved"), cases(), ids=lambda v: v)
async def test_report_has_every_section_and_field_of_the_runbook_templates(
    source, firing, resolved, tmp_path
):
    """Each template's headings and labelled fields appear, in the runbook's order."""
    text = await play(source, firing, resolved, str(tmp_path / "r.db"))
    split = text.index("# Post-Mortem: ")
    for name, part in (
        ("Incident Report Template", text[:split]),
        ("Post-Mortem Template", text[split:]),
    ):
        want_headings, want_labels = shape(template(name))
        got_headings, got_labels = shape(part)
        # The one section we add: the automation ledger, under Response.
        got_headings = [h for h in got_headings if h != "### Automation ledger"]
        assert got_headings == want_headings, name
        kept = [label for label in got_labels if label in set(want_labels)]
        assert kept == want_labels, name


def test_docs_show_the_golden_report():
    """docs/incidents.md shows the golden report whole."""
    golden = (GOLDEN / "sark-auth-failures.firing.md").read_text()
    assert golden in (ROOT / "docs" / "incidents.md").read_text()


async def test_alert_text_cannot_make_markup_of_its_own(tmp_path):
    """Titles, labels, summaries and links from an alert stay text in the report.

    A Markdown viewer that renders HTML would run ``<img onerror>``; a newline
    would start a section of the alert's own; ``[x](javascript:...)`` would be
    a link. Each shows as the characters it is.
    """
    payload = example("alertmanager/sark-api-down.firing.json")
    alert = payload["alerts"][0]
    alert["labels"]["deployment"] = "sark<img src=x onerror=alert(1)>"
    alert["annotations"]["summary"] = (
        "down\n# Root Cause\nIt was [the intern](javascript:alert(1)) "
        "<script>alert(2)</script> | x"
    )
    alert["generatorURL"] = "javascript:alert(3)//<b>"
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(str(tmp_path / "r.db"))
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        [incident] = await service.observe(
            await traces(book, "alertmanager", payload, clock())
        )
        report = render_report(incident, service.policy, clock())
    finally:
        await store.close()
    # Outside the timeline's code block (where nothing is markup).
    lines, fenced = [], False
    for line in report.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    text = "\n".join(lines)
    assert "<img" not in text
    assert "<script" not in text
    assert "<b>" not in text
    assert "](javascript:" not in text
    # The alert's text is all there, as text.
    assert "&lt;img src=x onerror=alert(1)>" in text
    assert "[the intern]\\(javascript:alert(1))" in text
    # Only the template's own headings: none of the alert's.
    headings = [line for line in lines if line.startswith("#")]
    assert [h for h in headings if h == "## Root Cause"] == ["## Root Cause"]
    assert not any(line.startswith(("# Root Cause", "It was")) for line in lines)
