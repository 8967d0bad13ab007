"""PagerDuty Events API v2 requests into alerts.

Anything that pages PagerDuty can page the receiver (Alertmanager
``pagerduty_configs``, Grafana, ...).

Labels: everything in ``custom_details`` that is a string (so senders can pass
real labels), the labels of Alertmanager's default ``firing`` text when it holds
exactly one alert, then ``severity``, ``source``, ``component``, ``group``,
``class`` and ``dedup_key``; ``alertname`` falls back to ``class``, then the
summary. ``trigger`` is firing, ``resolve`` resolved, ``acknowledge`` recorded only.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from receiver.model import Alert, freeze
from receiver.sources.wire import Timestamp

_AM_LABEL_LINE = re.compile(r"^ - ([a-zA-Z_][a-zA-Z0-9_]*) = (.*)$")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Keys of Alertmanager's default custom_details: text, not labels.
_AM_DETAIL_KEYS = frozenset({"firing", "resolved", "num_firing", "num_resolved"})


class Payload(BaseModel):
    """The ``payload`` object of a trigger event."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    summary: str = Field(min_length=1, max_length=1024)
    source: str = Field(min_length=1)
    severity: Literal["critical", "error", "warning", "info"]
    timestamp: Timestamp | None = None
    component: str | None = None
    group: str | None = None
    class_: str | None = Field(default=None, alias="class")
    custom_details: Any = None


class EnqueueRequest(BaseModel):
    """An Events API v2 request body."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    routing_key: str = Field(min_length=1)
    event_action: Literal["trigger", "acknowledge", "resolve"]
    dedup_key: str | None = Field(default=None, max_length=255)
    payload: Payload | None = None
    client: str | None = None
    client_url: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> EnqueueRequest:
        if self.event_action == "trigger" and self.payload is None:
            raise ValueError("payload is required for event_action trigger")
        if self.event_action != "trigger" and not self.dedup_key:
            raise ValueError(
                f"dedup_key is required for event_action {self.event_action}"
            )
        return self


def dedup_key_for(request: EnqueueRequest, body: bytes) -> str:
    """The request's dedup key, or a deterministic one from its body."""
    return request.dedup_key or hashlib.sha256(body).hexdigest()[:32]


def _am_labels(details: Any) -> dict[str, str]:
    if not isinstance(details, dict) or str(details.get("num_firing", "")) not in {
        "1",
        "0",
    }:
        return {}
    text = details.get("firing") or details.get("resolved") or ""
    if not isinstance(text, str) or "Labels:" not in text:
        return {}
    labels: dict[str, str] = {}
    in_labels = False
    for line in text.splitlines():
        if line.startswith("Labels:"):
            in_labels = True
            continue
        if in_labels:
            found = _AM_LABEL_LINE.match(line)
            if found is None:
                break
            labels[found.group(1)] = found.group(2)
    return labels


def to_alerts(data: Any, now: datetime, *, body: bytes = b"") -> list[Alert]:
    """Validate an Events v2 request and return its single alert."""
    from receiver.sources import validate  # noqa: PLC0415 (avoid an import cycle)

    req: EnqueueRequest = validate(EnqueueRequest, data, "Events API v2")
    dedup = dedup_key_for(req, body)
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    starts_at = None
    p = req.payload
    if p is not None:
        if isinstance(p.custom_details, dict):
            labels.update(
                {
                    k: v
                    for k, v in p.custom_details.items()
                    if isinstance(k, str)
                    and k not in _AM_DETAIL_KEYS
                    and k != "routing_key"
                    and isinstance(v, str)
                    and v
                    and "\n" not in v
                    and _LABEL_NAME.fullmatch(k)
                }
            )
        labels.update(_am_labels(p.custom_details))
        for key, value in (
            ("severity", p.severity),
            ("source", p.source),
            ("component", p.component),
            ("group", p.group),
            ("class", p.class_),
        ):
            if value:
                labels.setdefault(key, value)
        labels.setdefault("alertname", p.class_ or p.summary)
        annotations["summary"] = p.summary
        starts_at = p.timestamp.astimezone(UTC) if p.timestamp else None
    labels["dedup_key"] = dedup
    del now
    return [
        Alert(
            source="events_v2",
            fingerprint=hashlib.sha256(f"events_v2:{dedup}".encode()).hexdigest()[:16],
            status="resolved" if req.event_action == "resolve" else "firing",
            labels=freeze(labels),
            annotations=freeze(annotations),
            starts_at=starts_at,
            generator_url=req.client_url or "",
            refs=freeze({"dedup_key": dedup, "event_action": req.event_action}),
            actionable=req.event_action != "acknowledge",
        )
    ]
