"""Alertmanager webhook payloads (version 4) into alerts.

Tolerates fields newer Alertmanagers add (``notification_reason``,
``routeLabels``); ``endsAt`` of ``0001-01-01T00:00:00Z`` means "not ended".
``truncatedAlerts`` (Alertmanager's ``max_alerts``) is kept in each alert's
``refs`` so the edge can warn and the trace can say that alerts of the group
were left out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.model import Alert, freeze
from receiver.sources.wire import Timestamp, parse_json

_ZERO_YEAR = 1


class AmAlert(BaseModel):
    """One alert of a webhook payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: Timestamp  # noqa: N815 (wire name)
    endsAt: Timestamp | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = Field(min_length=1)


class AmWebhook(BaseModel):
    """The Alertmanager webhook body."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    version: str = "4"
    receiver: str = ""
    status: Literal["firing", "resolved"]
    alerts: list[AmAlert]
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    groupKey: str = ""  # noqa: N815
    truncatedAlerts: int = 0  # noqa: N815


def _ts(value: datetime | None) -> datetime | None:
    if value is None or value.year == _ZERO_YEAR:
        return None
    return value


def from_body(body: bytes) -> list[Alert]:
    """Parse and validate a raw webhook body in one pass (the hot path).

    Pydantic's own JSON parser validates without building Python dicts first;
    only a body that fails takes the slower path, for the detailed error.
    """
    try:
        payload = AmWebhook.model_validate_json(body)
    except ValidationError:
        return to_alerts(parse_json(body), datetime.now(UTC))
    return _alerts(payload)


def to_alerts(data: object, now: datetime) -> list[Alert]:
    """Validate a decoded webhook body and return one alert per entry."""
    from receiver.sources import validate  # noqa: PLC0415 (avoid an import cycle)

    del now
    payload = validate(AmWebhook, data, "Alertmanager webhook")
    return _alerts(payload)


def _alerts(payload: AmWebhook) -> list[Alert]:
    refs = {"receiver": payload.receiver, "group_key": payload.groupKey}
    if payload.externalURL:
        refs["alertmanager_url"] = payload.externalURL
    if payload.truncatedAlerts > 0:
        refs["truncated_alerts"] = str(payload.truncatedAlerts)
    return [
        Alert(
            source="alertmanager",
            fingerprint=a.fingerprint,
            status=a.status,
            labels=freeze(a.labels),
            annotations=freeze(a.annotations),
            starts_at=_ts(a.startsAt),
            ends_at=_ts(a.endsAt),
            generator_url=a.generatorURL,
            refs=freeze(refs),
        )
        for a in payload.alerts
    ]
