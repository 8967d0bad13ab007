"""Status-update drafts in the runbook's status-page style.

``**Investigating** (Initial)``, ``**Identified** (Cause found)``, ``**Monitoring**
(Fix deployed)``, ``**Resolved** (Issue resolved)``, then two or three plain
sentences, what the receiver found, did and has pending, the next update time and
``Posted: YYYY-MM-DD HH:MM UTC``. A person edits and publishes it; publishing
(PagerDuty ``incident.status_update_published`` or the API) resets the cadence.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from receiver.incidents.model import Incident, State

if TYPE_CHECKING:
    from receiver.incidents.policy import IncidentPolicy

PHASES = {
    State.TRIGGERED: ("Investigating", "Initial"),
    State.ACKNOWLEDGED: ("Identified", "Cause found"),
    State.MITIGATED: ("Monitoring", "Fix deployed"),
    State.RESOLVED: ("Resolved", "Issue resolved"),
}
IMPACT = {
    "all_users": "All users may be affected.",
    "multiple_users": "Multiple users may be affected.",
    "single_user": "A single user may be affected.",
    "no_impact": "No user impact is expected.",
}


def minute(ts: datetime) -> str:
    """``2025-11-22 10:05 UTC``, as the runbook writes times."""
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def phase(incident: Incident) -> str:
    """The status-page word for the incident's state."""
    return PHASES[incident.state][0]


def _impact(incident: Incident) -> str:
    for ref in incident.alerts:
        sentence = IMPACT.get(ref.labels.get("impact", ""))
        if sentence:
            return sentence
    return "Some users may be affected."


def _lines(incident: Incident) -> tuple[list[str], list[str], list[str]]:
    found, done, pending = [], [], []
    for item in incident.ledger:
        what = f"{item.type} {item.target}".strip()
        if item.kind == "diagnostic" and item.decision == "executed":
            found.append(f"{what}: {item.reason}")
        elif item.kind == "remediation" and item.decision == "executed":
            done.append(what)
        elif item.kind == "remediation" and item.decision in (
            "dry_run",
            "awaiting_approval",
        ):
            pending.append(f"{what} ({item.decision.replace('_', ' ')})")
    return found[-3:], done[-3:], pending[-3:]


def draft(incident: Incident, now: datetime, policy: IncidentPolicy) -> str:
    """A status-page update for people to edit and publish."""
    word, why = PHASES[incident.state]
    title = incident.title.rstrip(".")
    sentence = {
        State.TRIGGERED: f"We are investigating {title}. {_impact(incident)}",
        State.ACKNOWLEDGED: f"We are working on {title}. {_impact(incident)}",
        State.MITIGATED: f"A fix for {title} is in place and we are monitoring "
        "for improvement.",
        State.RESOLVED: f"The issue has been resolved: {title}.",
    }[incident.state]
    found, done, pending = _lines(incident)
    lines = [f"**{word}** ({why})", sentence]
    if found:
        lines.append("What we found: " + "; ".join(found))
    if done:
        lines.append("What was done: " + "; ".join(done))
    if pending and incident.state is not State.RESOLVED:
        lines.append("Pending: " + "; ".join(pending))
    if incident.state is not State.RESOLVED:
        due = policy.next_update(incident.severity, incident.cadence_from)
        lines.append(f"Next update: {minute(due)}")
    lines.append(f"Posted: {minute(now)}")
    return "\n".join(lines)
