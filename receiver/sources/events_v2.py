"""PagerDuty Events API v2 requests into alerts.

Anything that pages PagerDuty can page the receiver (Alertmanager
``pagerduty_configs``, Grafana, ...).

Alertmanager's ``pagerduty_configs`` send one event per *group*; its default
``custom_details`` list every alert of the group (``firing`` and ``resolved``, the
``pagerduty.default.instances`` template). Each listed alert becomes an alert of
its own, with its own labels, annotations and status, decided on its own.

Labels of other requests: everything in ``custom_details`` that is a string (so
senders can pass real labels), then ``severity``, ``source``, ``component``,
``group``, ``class`` and ``dedup_key``; ``alertname`` falls back to ``class``,
then the summary. ``trigger`` is firing, ``resolve`` resolved, ``acknowledge``
recorded as acknowledged. A resolve or acknowledge with only a dedup key inherits
the labels of the trigger it closes (looked up by the worker).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from receiver.model import Alert, Status, freeze
from receiver.sources.wire import ZERO, Timestamp

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
    custom_details: object = None


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


@dataclass(frozen=True)
class Instance:
    """One alert of Alertmanager's default ``firing``/``resolved`` detail text."""

    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generator_url: str = ""


_BLOCK = re.compile(
    r"(?P<labels>.*?)"
    r"(?:^Annotations:\n(?P<annotations>.*?))?"
    r"(?:^Source: ?(?P<source>.*))?\Z",
    re.MULTILINE | re.DOTALL,
)


def _pairs(text: str, *, multiline: bool) -> dict[str, str]:
    """`` - name = value`` lines; with ``multiline``, other lines continue a value."""
    pairs: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        found = _AM_LABEL_LINE.match(line)
        if found is not None:
            last = found.group(1)
            pairs[last] = found.group(2)
        elif multiline and last:
            pairs[last] += "\n" + line
    return pairs


def _parse_instances(text: str, status: Status) -> list[Instance]:
    """Alertmanager's ``pagerduty.default.instances`` text, one block per alert.

    Each block is ``Labels:`` then `` - name = value`` lines, ``Annotations:`` and
    its lines (a value may run over several lines), then ``Source: <url>``.
    """
    out = []
    for block in re.split(r"^Labels:\n", text, flags=re.MULTILINE)[1:]:
        found = _BLOCK.match(block)
        if found is None:
            continue
        labels = _pairs(found.group("labels"), multiline=False)
        if labels:
            annotations = _pairs(found.group("annotations") or "", multiline=True)
            source = (found.group("source") or "").strip()
            out.append(Instance(status, freeze(labels), freeze(annotations), source))
    return out


def am_instances(details: object) -> list[Instance]:
    """Every alert Alertmanager's default ``custom_details`` lists, firing first.

    Empty when the details are not Alertmanager's default (a custom template, or
    the ``error`` Alertmanager puts there when an event is over 512 KB).
    """
    if not isinstance(details, dict):
        return []
    found: list[Instance] = []
    for key, status in (("firing", "firing"), ("resolved", "resolved")):
        text = details.get(key)
        if isinstance(text, str) and "Labels:" in text:
            found.extend(_parse_instances(text, status))  # type: ignore[arg-type]
    return found


def _fingerprint(dedup: str, labels: Mapping[str, str] | None = None) -> str:
    """The dedup key's fingerprint, or one alert's within the dedup key's group."""
    text = f"events_v2:{dedup}"
    if labels is not None:
        text += "".join(f"\x00{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def group_fingerprint(dedup: str) -> str:
    """The fingerprint of an event that names no alert of its group (dedup only)."""
    return _fingerprint(dedup)


def _group_labels(p: Payload) -> dict[str, str]:
    labels: dict[str, str] = {}
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
    return labels


def _with_payload_fields(labels: dict[str, str], p: Payload) -> dict[str, str]:
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
    return labels


def to_alerts(data: object, now: datetime, *, body: bytes = b"") -> list[Alert]:
    """Validate an Events v2 request and return its alerts.

    Alertmanager's grouped pages give one alert per listed instance; any other
    request is one alert. A resolve or acknowledge that carries only a dedup key
    is one alert labelled with the dedup key alone, marked
    ``refs["labels_from"] = "trigger"``: the worker gives it the labels of the
    trigger it closes.
    """
    from receiver.sources import validate  # noqa: PLC0415 (avoid an import cycle)

    del now
    req: EnqueueRequest = validate(EnqueueRequest, data, "Events API v2")
    dedup = dedup_key_for(req, body)
    refs = {"dedup_key": dedup, "event_action": req.event_action}
    if req.event_action == "acknowledge":
        refs["state"] = "acknowledged"
    p = req.payload
    status: Status = "resolved" if req.event_action == "resolve" else "firing"
    actionable = req.event_action != "acknowledge"
    if p is None:
        return [
            Alert(
                source="events_v2",
                fingerprint=_fingerprint(dedup),
                status=status,
                labels=freeze({"dedup_key": dedup}),
                generator_url=req.client_url or "",
                refs=freeze({**refs, "labels_from": "trigger"}),
                actionable=actionable,
            )
        ]
    # Go's zero time (a client's unset field) reads as absent, as no time at all.
    starts_at = p.timestamp if p.timestamp and p.timestamp != ZERO else None
    instances = am_instances(p.custom_details)
    if not instances:
        labels = _with_payload_fields(_group_labels(p), p)
        labels["dedup_key"] = dedup
        return [
            Alert(
                source="events_v2",
                fingerprint=_fingerprint(dedup),
                status=status,
                labels=freeze(labels),
                annotations=freeze({"summary": p.summary}),
                starts_at=starts_at,
                generator_url=req.client_url or "",
                refs=freeze(refs),
                actionable=actionable,
            )
        ]
    alerts = []
    for instance in instances:
        labels = _with_payload_fields(dict(instance.labels), p)
        labels["dedup_key"] = dedup
        annotations = {"summary": p.summary, **instance.annotations}
        alerts.append(
            Alert(
                source="events_v2",
                fingerprint=_fingerprint(dedup, instance.labels),
                # A resolve closes every listed alert; a trigger lists the
                # group's resolved alerts next to the firing ones.
                status="resolved" if status == "resolved" else instance.status,
                labels=freeze(labels),
                annotations=freeze(annotations),
                starts_at=starts_at,
                generator_url=instance.generator_url or req.client_url or "",
                refs=freeze({**refs, "group_size": str(len(instances))}),
                actionable=actionable,
            )
        )
    return alerts
