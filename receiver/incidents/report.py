"""The runbook's Incident Report and Post-Mortem templates, filled from an incident.

Every section of both templates appears in the runbook's order. What the receiver
knows (times, durations, clocks against targets, affected systems from labels,
the timeline, the automation ledger: what was done, refused and why, or would
have been done in dry-run) is filled in; what only people know is a clearly
marked placeholder, ``_[To fill in: ...]_``. Pure: the caller passes ``now``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from receiver.incidents.clocks import Clock, clocks
from receiver.incidents.model import Incident, State
from receiver.incidents.policy import IncidentPolicy, describe
from receiver.incidents.status import IMPACT, minute

PLACEHOLDER = "_[To fill in: {}]_"
FENCE = "`" * 3
SAFE_FENCE = "'" * 3
DECISION_WORDS = {
    "executed": "done",
    "failed": "failed",
    "dry_run": "would have run (dry-run)",
    "skipped": "refused",
    "awaiting_approval": "waiting for approval",
}


def todo(what: str) -> str:
    """A marked placeholder for what only people know."""
    return PLACEHOLDER.format(what)


def human(delta: timedelta) -> str:
    """``55 minutes``, ``3h 10m``, ``2d 4h``, as the runbook writes durations."""
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


# What could turn an alert's text into markup: an HTML tag, comment or autolink
# (``<`` before a letter, ``/``, ``!`` or ``?``) and an inline link or image
# (``](``). A ``<`` before anything else (``< 0.2``) is only a character.
_TAG = re.compile(r"<(?=[A-Za-z/!?])")


def md(text: str) -> str:
    """Alert or person text as inert Markdown, on one line.

    Titles, labels, summaries, targets and reasons come from alerts: a newline
    could start a heading of their own, ``<img onerror=...>`` run in a viewer
    that renders HTML, ``[x](javascript:...)`` make a link. Each shows as the
    characters it is; what cannot make markup (``[5m]``, ``< 0.2``) is left as
    written, so the report reads the same raw.
    """
    line = " ".join(text.split())
    return _TAG.sub("&lt;", line).replace("](", "]\\(")


def _cell(text: str) -> str:
    return md(text).replace("|", "\\|")[:240]


def _labels(incident: Incident, *names: str) -> list[str]:
    found: list[str] = []
    for ref in incident.alerts:
        for name in names:
            value = md(ref.labels.get(name, ""))
            if value and value not in found:
                found.append(value)
    return found


def _affected(incident: Incident) -> str:
    parts = []
    for ref in incident.alerts:
        labels = ref.labels
        what = labels.get("deployment") or labels.get("service") or labels.get("job")
        where = labels.get("namespace")
        text = f"{what} ({where})" if what and where else what or where or ""
        text = md(text)
        if text and text not in parts:
            parts.append(text)
    return ", ".join(parts) or todo("affected systems")


def _users(incident: Incident) -> str:
    for ref in incident.alerts:
        impact = ref.labels.get("impact", "")
        if impact in IMPACT:
            return f"{impact} (alert label `impact`); " + todo("number or percentage")
    return todo("number or percentage")


def _took(start: datetime, end: datetime | None, now: datetime) -> str:
    if end is None:
        return f"not yet ({human(now - start)} so far)"
    return human(end - start)


def _response(incident: Incident, clock: Clock, now: datetime) -> str:
    """Time to acknowledgment; an incident resolved unacknowledged says so.

    ``clock``: the acknowledge clock. When a mitigation stopped it first, the
    line says so beside the (late, or missing) acknowledgment.
    """
    opened, end = incident.opened_at, incident.resolved_at
    ack = incident.acknowledged_at
    if ack is None and end is not None:
        return f"never acknowledged (resolved after {human(end - opened)})"
    took = _took(opened, ack, now) + " (to acknowledgment"
    if clock.stopped is not None and clock.stopped_by != "acknowledgment":
        took += (
            f"; the {clock.stopped_by} had stopped the acknowledge clock after "
            f"{human(clock.elapsed(now))}"
        )
    return took + ")"


def _clock_rows(incident: Incident, policy: IncidentPolicy, now: datetime) -> list[str]:
    rows = [
        f"| Clock | Target ({incident.severity}) | Took | Target met |",
        "|-------|--------|------|------------|",
    ]
    for clock in clocks(incident, policy):
        if clock.stopped is None and incident.state is State.RESOLVED:
            continue
        took = human(clock.elapsed(now)) + ("" if clock.stopped else " so far")
        met = (
            "no (breach)"
            if clock.breached(now)
            else ("yes" if clock.stopped else "running")
        )
        # A clock that stopped before a promotion keeps its severity's target.
        target = describe(clock.target)
        if clock.severity is not incident.severity:
            target += f" ({clock.severity})"
        rows.append(f"| {clock.name} | {target} | {took} | {met} |")
    return rows


def _ledger_rows(incident: Incident) -> list[str]:
    if not incident.ledger:
        return ["No automation ran for this incident (no rule matched a step)."]
    rows = [
        "| Step | Target | Outcome | Mode | Times | Why |",
        "|------|--------|---------|------|-------|-----|",
    ]
    for item in incident.ledger:
        outcome = DECISION_WORDS.get(item.decision, item.decision)
        rows.append(
            f"| {item.kind} `{item.type}` | {_cell(item.target) or '-'} | {outcome} "
            f"| {item.mode} | {item.times} | {_cell(item.reason)} |"
        )
    return rows


def _mitigation(incident: Incident) -> str:
    done = [
        md(f"{i.type} {i.target}".strip())
        for i in incident.ledger
        if i.kind == "remediation" and i.decision == "executed"
    ]
    marks = [e for e in incident.timeline if e.kind == "mitigated"]
    parts = []
    if done:
        parts.append("automated: " + "; ".join(done))
    if marks:
        parts.append(md(f"{marks[0].text} (by {marks[0].by})"))
    return "; ".join(parts) or todo("actions taken by people")


def _timeline(incident: Incident) -> list[str]:
    # One line per entry; nothing a person typed can close the code block.
    lines = []
    for e in incident.timeline:
        by = f" ({e.by})" if e.by != "receiver" else ""
        line = " ".join(f"{minute(e.at)} - {e.text}{by}".split())
        lines.append(line.replace(FENCE, SAFE_FENCE))
    return lines


def _went_well(incident: Incident, policy: IncidentPolicy, now: datetime) -> list[str]:
    out = [
        f"{clock.name.capitalize()} within target "
        f"({human(clock.elapsed(now))} of {describe(clock.target)})"
        for clock in clocks(incident, policy)
        if clock.stopped is not None and not clock.breached(now)
    ]
    out += [
        f"Verified remediation: {e.text.removeprefix('Remediated and verified: ')}"
        for e in incident.timeline
        if e.kind == "remediation" and e.text.startswith("Remediated and verified")
    ]
    return out


# A remediation not run because its alert had resolved (the resolve
# notification itself, or a resolve that came first) is how recovery looks,
# not something to improve.
_RECOVERED = "alert resolved"


def _improve(incident: Incident) -> list[str]:
    out = [e.text for e in incident.timeline if e.kind == "breach"]
    out += [
        f"Refused: {i.type} {i.target}: {i.reason}".strip()
        for i in incident.ledger
        if i.kind == "remediation"
        and i.decision in ("skipped", "failed")
        and not i.reason.startswith(_RECOVERED)
    ]
    return out


def _numbered(items: Iterable[str], placeholder: str) -> list[str]:
    lines = [f"{n}. {text}" for n, text in enumerate(items, 1)]
    lines.append(f"{len(lines) + 1}. {todo(placeholder)}")
    return lines


def _evidence(incident: Incident) -> list[str]:
    if not incident.evidence:
        return []
    return [
        (
            f"- Evidence ({len(incident.evidence)} items, full content at "
            f"`GET /api/v1/incidents/{incident.id}/evidence`):"
        ),
        *(
            f"  - {minute(e.at)} `{e.type}` {md(e.target)}: sha256 `{e.sha256}`"
            for e in incident.evidence
        ),
    ]


def render_report(incident: Incident, policy: IncidentPolicy, now: datetime) -> str:
    """The Incident Report, then the Post-Mortem, as one Markdown document."""
    opened = incident.opened_at
    end = incident.resolved_at
    duration = human(incident.duration(now)) + ("" if end else " so far")
    status = incident.state.value.capitalize()
    summaries = _labels(incident, "alertname")
    errors = [md(r.summary) for r in incident.alerts if r.summary]
    links = [md(r.link) for r in incident.alerts]
    title = md(incident.title)
    mitigated = incident.mitigated_at
    due = end + policy.post_mortem_due if end else None
    window = (
        f"{opened.strftime('%H:%M')} - {end.strftime('%H:%M') if end else 'now'} UTC"
    )
    summary = (
        f"On {opened.date().isoformat()} at {opened.strftime('%H:%M')} UTC, "
        f"{title.rstrip('.')} ({', '.join(summaries) or 'an alert'}); "
        f"severity {incident.severity}, "
        + (
            f"resolved after {duration}."
            if end
            else f"{status.lower()}, open for {duration}."
        )
    )
    lines = [
        f"# Incident Report: {title}",
        "",
        f"**Incident ID:** {incident.id}",
        f"**Date:** {opened.date().isoformat()}",
        f"**Duration:** {duration}",
        f"**Severity:** {incident.severity}",
        f"**Status:** {status}",
        "",
        "## Executive Summary",
        summary + " " + todo("what it meant for users, in one sentence"),
        "",
        "## Technical Details",
        f"**Root Cause:** {todo('root cause')}",
        f"**Affected Systems:** {_affected(incident)}",
        "**Error Messages:** "
        + ("; ".join(dict.fromkeys(errors)) if errors else todo("key error messages")),
        "",
        "## Impact",
        f"- **Users Affected:** {_users(incident)}",
        "- **Services Down:** "
        + (", ".join(_labels(incident, "service", "deployment")) or todo("services")),
        f"- **Data Loss:** {todo('Yes/No - if yes, details')}",
        f"- **Revenue Impact:** {todo('estimate')}",
        "",
        "## Response",
        f"**Detection Time:** {minute(opened)}",
        f"**Response Time:** {_response(incident, clocks(incident, policy)[0], now)}",
        f"**Resolution Time:** {_took(opened, end, now)}",
        f"**Mitigation:** {_mitigation(incident)}"
        + (f" (mitigated {minute(mitigated)})" if mitigated else ""),
        "",
        *_clock_rows(incident, policy, now),
        "",
        "### Automation ledger",
        "What the receiver did, refused and why, or would have done in dry-run.",
        "",
        *_ledger_rows(incident),
        "",
        "## Follow-up Actions",
        f"- {todo('action, owner, due date')}",
        f"- Post-mortem due by {minute(due)}"
        if due
        else "- Post-mortem due 48h after resolution",
        "",
        "## Attachments",
        "- Post-mortem document: below",
        f"- Incident log: `GET /api/v1/incidents/{incident.id}`",
        *_evidence(incident),
        "- Metrics/graphs: "
        + (", ".join(u for u in dict.fromkeys(links) if u) or todo("links")),
        "",
        "---",
        "",
        f"# Post-Mortem: {title} - {opened.date().isoformat()}",
        "",
        "## Summary",
        summary,
        "",
        "## Impact",
        f"- **Duration:** {duration} ({window})",
        f"- **Users Affected:** {_users(incident)}",
        f"- **Requests Failed:** {todo('number')}",
        f"- **Revenue Impact:** {todo('estimate')}",
        f"- **Severity:** {incident.severity}",
        "",
        "## Root Cause",
        todo("root cause and contributing factors"),
        "",
        "## Timeline",
        "```",
        *_timeline(incident),
        "```",
        "",
        "## What Went Well",
        *_numbered(map(md, _went_well(incident, policy, now)), "what else went well"),
        "",
        "## What Could Be Improved",
        *_numbered(map(md, _improve(incident)), "what else could be improved"),
        "",
        "## Action Items",
        "| Action | Owner | Due Date | Status |",
        "|--------|-------|----------|--------|",
        f"| {todo('action')} | {todo('owner')} | {todo('date')} | TODO |",
        "",
        "## Lessons Learned",
        f"1. {todo('lessons learned')}",
        "",
        "## Follow-up",
        f"- {todo('follow-up work')}",
        "",
    ]
    return "\n".join(lines)
