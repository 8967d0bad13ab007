"""Wire formats in, ``Alert`` batches out: one module per source.

Called by the HTTP edge (after authentication) and, through ``body_alerts``,
by the worker and ``receiver replay``. Each module validates its payload with
pydantic (unknown fields tolerated) and turns it into frozen ``Alert`` objects,
one per alert, never per group.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from receiver.errors import InputError
from receiver.model import Alert, Source
from receiver.sources import alertmanager, events_v2, pagerduty
from receiver.sources.wire import parse_json

M = TypeVar("M", bound=BaseModel)

__all__ = ["body_alerts", "detect", "parse_json", "schema_errors", "validate"]


def schema_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``{"pointer", "detail"}`` with JSON-pointer paths."""
    out = []
    for err in exc.errors(include_url=False):
        pointer = "/" + "/".join(str(p) for p in err["loc"])
        out.append({"pointer": pointer, "detail": err["msg"]})
    return out


def validate(model: type[M], data: object, what: str) -> M:
    """Validate ``data`` against ``model`` or raise ``InputError`` with field paths."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = schema_errors(exc)
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(
            f"{what} payload does not match the schema: {first['pointer']}: "
            f"{first['detail']}{more}",
            errors=errors,
        ) from exc


def detect(data: object) -> Source:
    """Which of the three formats a decoded payload is."""
    if isinstance(data, dict):
        if "alerts" in data and ("version" in data or "groupKey" in data):
            return "alertmanager"
        if isinstance(data.get("event"), dict) and "event_type" in data["event"]:
            return "pagerduty"
        if "event_action" in data or "routing_key" in data:
            return "events_v2"
    raise InputError(
        "cannot tell the payload format: expected an Alertmanager webhook "
        "(alerts, version), a PagerDuty V3 webhook (event.event_type) or an "
        "Events API v2 request (routing_key, event_action)"
    )


def body_alerts(
    source: Source, body: bytes, now: datetime, *, alertname_from: str = "title"
) -> list[Alert]:
    """Parse a stored body of ``source`` into alerts: the one dispatch on source.

    The worker, replay, backtests and the replay API decide stored bodies
    through here (the edge's handlers each parse their own source).
    ``alertname_from``: the PagerDuty field used as alertname.
    """
    if source == "alertmanager":
        return alertmanager.from_body(body)
    try:
        data: object = json.loads(body)
    except ValueError as exc:
        raise InputError(f"stored payload is not JSON: {exc}") from exc
    if source == "pagerduty":
        return pagerduty.to_alerts(data, now, alertname_from=alertname_from)
    return events_v2.to_alerts(data, now, body=body)
