"""PagerDuty V3 webhooks into alerts.

``incident.triggered``, ``.reopened``, ``.escalated`` and ``.priority_updated`` are
firing; ``incident.resolved`` is resolved; ``incident.acknowledged`` and
``incident.annotated`` (and other incident events) are recorded but never run
playbooks. Labels (documented in the README): ``alertname`` (the incident title,
or the field named by settings), ``service``, ``service_id``, ``priority``,
``urgency``, ``incident_key``, ``incident_id``, ``incident_number``,
``incident_status``, ``event_type``, ``escalation_policy``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from receiver.model import Alert, Status, freeze
from receiver.sources.wire import Timestamp

FIRING = {
    "incident.triggered",
    "incident.reopened",
    "incident.escalated",
    "incident.priority_updated",
}
RESOLVED = {"incident.resolved"}


class Reference(BaseModel):
    """A PagerDuty ``*_reference`` object."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str = ""
    summary: str = ""
    html_url: str | None = None


class IncidentData(BaseModel):
    """``event.data`` for incident events (and the note for ``annotated``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str = ""
    type: str = ""
    number: int | None = None
    status: str = ""
    incident_key: str | None = None
    created_at: Timestamp | None = None
    title: str = ""
    html_url: str = ""
    urgency: str = ""
    service: Reference | None = None
    priority: Reference | None = None
    escalation_policy: Reference | None = None
    incident: Reference | None = None  # incident.annotated carries the note
    content: str = ""


class Event(BaseModel):
    """The ``event`` envelope of a V3 webhook."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    resource_type: str = ""
    occurred_at: Timestamp
    agent: Reference | None = None
    data: IncidentData = Field(default_factory=IncidentData)


class Webhook(BaseModel):
    """A PagerDuty V3 webhook body."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    event: Event


def to_alerts(
    data: Any, now: datetime, *, alertname_from: str = "title"
) -> list[Alert]:
    """Validate a V3 webhook body and return its single alert."""
    from receiver.sources import validate  # noqa: PLC0415 (avoid an import cycle)

    del now
    event = validate(Webhook, data, "PagerDuty webhook").event
    inc = event.data
    incident_id = inc.id if inc.type != "incident_note" else ""
    if inc.incident is not None and inc.incident.id:
        incident_id = inc.incident.id
    status: Status = "resolved" if event.event_type in RESOLVED else "firing"
    labels = {
        "event_type": event.event_type,
        "incident_id": incident_id,
        "incident_key": inc.incident_key or "",
        "incident_status": inc.status,
        "urgency": inc.urgency,
        "service": inc.service.summary if inc.service else "",
        "service_id": inc.service.id if inc.service else "",
        "priority": inc.priority.summary if inc.priority else "",
        "escalation_policy": (
            inc.escalation_policy.summary if inc.escalation_policy else ""
        ),
    }
    if inc.number is not None:
        labels["incident_number"] = str(inc.number)
    title = inc.title or (inc.incident.summary if inc.incident else "")
    labels["alertname"] = labels.get(alertname_from) or title
    labels = {k: v for k, v in labels.items() if v}
    annotations = {"summary": title} if title else {}
    if inc.type == "incident_note" and inc.content:
        annotations["note"] = inc.content[:2000]
    refs = {
        "incident_id": incident_id,
        "incident_url": inc.html_url
        or (inc.incident.html_url if inc.incident and inc.incident.html_url else ""),
        "webhook_event_id": event.id,
        "agent": event.agent.summary if event.agent else "",
    }
    started = inc.created_at or event.occurred_at
    return [
        Alert(
            source="pagerduty",
            fingerprint=f"pd-{incident_id or event.id}",
            status=status,
            labels=freeze(labels),
            annotations=freeze(annotations),
            starts_at=started.astimezone(UTC),
            ends_at=event.occurred_at.astimezone(UTC) if status == "resolved" else None,
            generator_url=refs["incident_url"],
            refs=freeze({k: v for k, v in refs.items() if v}),
            actionable=event.event_type in FIRING | RESOLVED,
        )
    ]
