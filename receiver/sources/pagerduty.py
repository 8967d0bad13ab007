"""PagerDuty V3 webhooks into alerts (incident events) or recorded events (the rest).

A correctly signed delivery is never refused for its content: PagerDuty treats a
4xx as permanent and disables a subscription that keeps failing, which would also
drop its ``incident.triggered`` deliveries. So only the envelope (``event.id``,
``event.event_type``) is required; every other field may be missing, ``null``
(PagerDuty documents ``"summary": null`` references) or of a type this receiver
does not know, and is then simply not used.

Incident events (``event_type`` ``incident.*``) become one alert for the incident:
``incident.triggered``, ``.reopened``, ``.escalated`` and ``.priority_updated`` are
firing; ``incident.resolved`` is resolved; ``incident.acknowledged`` is recorded as
acknowledged; the other incident events (notes, custom fields, tasks, responders,
...) are recorded but never run playbooks. Everything else (``service.*``,
``pagey.ping``, event types added later) is a recorded *event*, not an alert: it is
stored and listed, but not decided and not counted as an alert.

Labels (documented in docs/getting-started.md): ``alertname`` (the incident
title, or the field named by settings), ``service``, ``service_id``,
``priority``, ``urgency``, ``incident_key``, ``incident_id``,
``incident_number``, ``incident_status``, ``event_type``, ``escalation_policy``.

For the same reason the per-alert caps never refuse such a delivery: its alert
is small by construction (a dozen labels, two annotations), and a value longer
than a label may be (a long title in a script of three bytes a character) is
cut to ``LABEL_BYTES`` (``SUMMARY_BYTES`` for the summary), ending in ``…``.
The worker reads the stored body through this same function, so it decides
the alert the edge accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from receiver.model import Alert, Status, freeze
from receiver.sources.wire import Timestamp

M = TypeVar("M", bound=BaseModel)

# The bounds values are cut to (the default per-alert caps for labels and
# annotations, in UTF-8 bytes).
LABEL_BYTES = 1024
SUMMARY_BYTES = 16 * 1024
_MORE = "…"

FIRING = {
    "incident.triggered",
    "incident.reopened",
    "incident.escalated",
    "incident.priority_updated",
}
RESOLVED = {"incident.resolved"}
ACKNOWLEDGED = {"incident.acknowledged"}


def _text(value: object) -> object:
    """``null`` (documented for some references) reads as the empty string."""
    return "" if value is None else value


NullableStr = Annotated[str, BeforeValidator(_text)]


def _or_none(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """A value that does not parse is treated as absent, never as an error."""
    try:
        return handler(value)
    except ValidationError:
        return None


# Out of range (``Timestamp``) reads as absent too: a signed delivery is kept.
LenientTime = Annotated[Timestamp | None, WrapValidator(_or_none)]


class Reference(BaseModel):
    """A PagerDuty ``*_reference`` object (``summary`` may be ``null``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: NullableStr = ""
    summary: NullableStr = ""
    html_url: str | None = None


class IncidentData(BaseModel):
    """``event.data`` for incident events (and the note for ``annotated``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: NullableStr = ""
    type: NullableStr = ""
    number: int | None = None
    status: NullableStr = ""
    incident_key: str | None = None
    created_at: Timestamp | None = None
    title: NullableStr = ""
    html_url: NullableStr = ""
    urgency: NullableStr = ""
    service: Reference | None = None
    priority: Reference | None = None
    escalation_policy: Reference | None = None
    incident: Reference | None = None  # the incident, for notes, tasks, fields, ...
    content: NullableStr = ""


class Event(BaseModel):
    """The ``event`` envelope of a V3 webhook; ``data`` is read separately."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    resource_type: NullableStr = ""
    occurred_at: LenientTime = None
    agent: Annotated[Reference | None, WrapValidator(_or_none)] = None
    data: object = None

    @property
    def is_incident(self) -> bool:
        """Whether the event is about an incident (and so becomes an alert)."""
        return self.event_type.startswith("incident.")


class Webhook(BaseModel):
    """A PagerDuty V3 webhook body."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    event: Event


def _lenient(model: type[M], data: object) -> M:
    """``data`` as ``model`` where it fits; what does not fit is left out."""
    if not isinstance(data, dict):
        return model()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        kept = {k: v for k, v in data.items() if k not in bad}
        try:
            return model.model_validate(kept)
        except ValidationError:
            return model()


def parse(data: object) -> Event:
    """The envelope of a decoded V3 webhook body (``InputError`` if it is none)."""
    from receiver.sources import validate  # noqa: PLC0415 (avoid an import cycle)

    webhook = validate(Webhook, data, "PagerDuty webhook")
    return webhook.event


def _incident_ref(data: object, inc: IncidentData) -> Reference | None:
    if inc.incident is not None and inc.incident.id:
        return inc.incident
    # incident.role.assigned carries the incident inside each assignment.
    assignments = (
        data.get("incident_role_assignments") if isinstance(data, dict) else None
    )
    if isinstance(assignments, list):
        for item in assignments:
            if isinstance(item, dict):
                ref: Reference = _lenient(Reference, item.get("incident"))
                if ref.id:
                    return ref
    return None


def to_alerts(
    data: object, now: datetime, *, alertname_from: str = "title"
) -> list[Alert]:
    """Validate a V3 webhook body: one alert for an incident event, else none."""
    return alerts_of(parse(data), now, alertname_from=alertname_from)


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes: whole characters, then ``…``."""
    if len(text) <= limit // 4 or len(text.encode("utf-8", "replace")) <= limit:
        return text
    room = limit - len(_MORE.encode())
    kept = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
    return kept + _MORE


def alerts_of(
    event: Event, now: datetime, *, alertname_from: str = "title"
) -> list[Alert]:
    """The alert an incident event is about; none for other events."""
    if not event.is_incident:
        return []
    inc: IncidentData = _lenient(IncidentData, event.data)
    ref = _incident_ref(event.data, inc)
    incident_id = inc.id if inc.type in ("incident", "") else ""
    if ref is not None:
        incident_id = ref.id
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
    title = inc.title or (ref.summary if ref else "")
    labels["alertname"] = labels.get(alertname_from) or title
    labels = {k: cut(v, LABEL_BYTES) for k, v in labels.items() if v}
    annotations = {"summary": cut(title, SUMMARY_BYTES)} if title else {}
    if inc.type == "incident_note" and inc.content:
        annotations["note"] = inc.content[:2000]
    occurred = (event.occurred_at or now).astimezone(UTC)
    refs = {
        "incident_id": incident_id,
        "incident_url": inc.html_url
        or (ref.html_url if ref is not None and ref.html_url else ""),
        "webhook_event_id": event.id,
        "agent": event.agent.summary if event.agent else "",
    }
    if event.event_type in ACKNOWLEDGED:
        refs["state"] = "acknowledged"
    started = inc.created_at.astimezone(UTC) if inc.created_at else occurred
    return [
        Alert(
            source="pagerduty",
            fingerprint=f"pd-{incident_id or event.id}",
            status=status,
            labels=freeze(labels),
            annotations=freeze(annotations),
            starts_at=started,
            ends_at=occurred if status == "resolved" else None,
            generator_url=refs["incident_url"],
            refs=freeze({k: v for k, v in refs.items() if v}),
            actionable=event.event_type in FIRING | RESOLVED,
        )
    ]
