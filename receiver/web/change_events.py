"""``POST /v2/change/enqueue``: PagerDuty Change Events, accepted and stored.

Deploy pipelines and tools that tell PagerDuty about changes (``pdpyras``'
``ChangeEventsAPISession``, CI integrations) can tell the receiver too. Each
change event is stored as a record under ``CHANGE_FINGERPRINT``; the
``changes.recent`` diagnostic lists those of an alert's service or namespace.
Errors on the Events API endpoints take PagerDuty's shape
(``{"status", "message", "errors"}``), which its clients read and show.

Registered by ``create_app``; the routing key is checked like ``/v2/enqueue``'s.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from receiver.errors import ClientGoneError, InputError, ReceiverError
from receiver.model import JSONObject, iso
from receiver.sources import parse_json, validate
from receiver.sources.wire import ZERO, Timestamp
from receiver.store.base import DecisionQuery, Store, new_id
from receiver.web.auth import Authenticator
from receiver.web.problems import DETAIL, error_response

log = structlog.get_logger("receiver.web")

# Every change event is a record of this fingerprint in the decision log.
CHANGE_FINGERPRINT = "change-events"
_MAX_DETAILS_BYTES = 16_384


class ChangePayload(BaseModel):
    """The ``payload`` of a change event."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    summary: str = Field(min_length=1, max_length=1024)
    source: str | None = Field(default=None, max_length=1024)
    timestamp: Timestamp | None = None
    custom_details: dict[str, JsonValue] | None = None


class Link(BaseModel):
    """A link attached to a change event."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    href: str = Field(min_length=1, max_length=2048)
    text: str | None = Field(default=None, max_length=1024)


class ChangeEvent(BaseModel):
    """A Change Events API request body."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    routing_key: str = Field(min_length=1)
    payload: ChangePayload
    links: list[Link] = Field(default_factory=list, max_length=50)


def change_record(event: ChangeEvent, record_id: str, now: datetime) -> JSONObject:
    """The stored form of a change event (never its routing key)."""
    p = event.payload
    details = p.custom_details or {}
    if len(json.dumps(details)) > _MAX_DETAILS_BYTES:
        details = {"note": f"custom_details over {_MAX_DETAILS_BYTES} bytes dropped"}
    # Go's zero time (a client's unset field) reads as absent: now.
    at = p.timestamp if p.timestamp and p.timestamp != ZERO else now
    return {
        "kind": "change_event",
        "fingerprint": CHANGE_FINGERPRINT,
        "payload_id": f"change:{record_id}",
        "decided_at": iso(now),
        "matches": [],
        "change": {
            "id": record_id,
            "summary": p.summary,
            "source": p.source or "",
            "timestamp": iso(at),
            "received_at": iso(now),
            "custom_details": details,
            "links": [link.model_dump(exclude_none=True) for link in event.links],
        },
    }


def change_reader(
    store: Store,
) -> Callable[[datetime, int], Awaitable[list[JSONObject]]]:
    """A reader of stored change events for the ``changes.recent`` executor."""

    async def read(since: datetime, limit: int) -> list[JSONObject]:
        return await store.decisions(
            DecisionQuery(fingerprint=CHANGE_FINGERPRINT, since=since, limit=limit)
        )

    return read


def events_api_error(exc: ReceiverError) -> web.Response:
    """A rejection in the Events API's own shape (what its clients parse)."""
    problem = error_response(exc)
    detail = str(exc)
    errors = [detail]
    if isinstance(exc, InputError) and exc.errors:
        errors = [f"{e['pointer']}: {e['detail']}" for e in exc.errors]
    status = "invalid event" if problem.status == 400 else (problem.reason or "error")
    message = "Event object is invalid" if problem.status == 400 else detail
    response = web.json_response(
        {"status": status.lower(), "message": message, "errors": errors},
        status=problem.status,
        headers={
            k: v
            for k, v in problem.headers.items()
            if k in ("Retry-After", "WWW-Authenticate")
        },
    )
    response[DETAIL] = detail
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def events_api_errors(handler: Handler) -> Handler:
    """Wrap an Events API handler so its errors take PagerDuty's shape."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ClientGoneError:
            raise  # nobody hears an answer; the edge logs it once
        except ReceiverError as exc:
            return events_api_error(exc)

    return wrapped


class ChangeEvents:
    """The change events endpoint and its dependencies."""

    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        clock: Callable[[], datetime],
        read_body: Callable[[web.Request], Awaitable[bytes]],
    ) -> None:
        self._store = store
        self._auth = auth
        self._clock = clock
        self._read_body = read_body

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST /v2/change/enqueue: store the change event, answer like PagerDuty."""
        body = await self._read_body(request)
        data = parse_json(body)
        if isinstance(data, dict) and isinstance(data.get("routing_key"), str):
            self._auth.check_routing_key(data["routing_key"])
        # A missing or non-string routing key fails the schema, naming it.
        event: ChangeEvent = validate(ChangeEvent, data, "Change Events API")
        now = self._clock()
        record_id = new_id()
        await self._store.record([change_record(event, record_id, now)])
        log.info(
            "change_event_stored",
            change_id=record_id,
            source=(event.payload.source or "")[:100],
        )
        return web.json_response(
            {"status": "success", "message": "Change event processed", "id": record_id},
            status=202,
        )
