"""Operator endpoints: the global pause switch and parked journal entries.

Built in ``create_app`` next to ``Handlers``, with the same authenticator.

- ``GET /api/v1/pause``; ``POST /api/v1/pause`` with ``{"reason"}`` stops
  every remediation (diagnostics and notes go on); ``DELETE /api/v1/pause`` or
  ``POST`` with ``{"paused": false}`` resumes. Each switch is audited: a
  decision record (``payload_id`` ``admin.pause.<id>``) says who, when and why;
  "who" is the credential's identity (as for approvals), never a field.
- ``GET /api/v1/parked`` lists entries set aside after too many attempts;
  ``POST /api/v1/parked/{id}/retry`` puts one back in the queue.
- ``GET /api/v1/sinks/parked`` lists sink deliveries set aside after too many
  attempts (a PagerDuty note, a Slack message or a webhook call that never
  went out), with why and which sinks are left;
  ``POST /api/v1/sinks/parked/{id}/retry`` makes one due again with fresh
  attempts: the worker's dispatcher sends it within a poll (a second).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from receiver.errors import InputError
from receiver.metrics import Metrics
from receiver.model import iso
from receiver.sinks.outbox import Outbox, ParkedDelivery, decode_trace
from receiver.sources import parse_json
from receiver.store.base import Pause, Store, new_id
from receiver.web.approvals import identify, read_body
from receiver.web.auth import Authenticator, require_scope
from receiver.web.problems import known_params
from receiver.web.routing import Routes

if TYPE_CHECKING:
    from collections.abc import Mapping

    from receiver.model import JSONObject, JSONValue
    from receiver.web.openapi_schemas import Operations

log = structlog.get_logger("receiver.admin")

# Bodies here are a few fields; anything bigger is a mistake.
MAX_BODY = 16 * 1024
_TEXT_MAX = 500
_NO_BY = (
    '"by" is not accepted: who switched is who the credential says (a personal '
    "token from RECEIVER_APPROVER_TOKENS names its person; with basic "
    "credentials, the user name)"
)


def _text(data: Mapping[str, JSONValue], name: str, default: str = "") -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise InputError(f'"{name}" must be a string')
    return " ".join(value.split())[:_TEXT_MAX]


class Admin:
    """Pause and parked-entry handlers."""

    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        metrics: Metrics,
        clock: Callable[[], datetime],
        outbox: Outbox,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._auth = auth
        self._metrics = metrics
        self._clock = clock

    def routes(self, router: web.UrlDispatcher) -> None:
        """Register every route of this module."""
        r = Routes(router)
        r.add_get("/api/v1/pause", self.get_pause)
        r.add_post("/api/v1/pause", self.post_pause)
        r.add_delete("/api/v1/pause", self.delete_pause)
        r.add_get("/api/v1/parked", self.parked)
        r.add_post("/api/v1/parked/{id}/retry", self.retry)
        r.add_get("/api/v1/sinks/parked", self.parked_deliveries)
        r.add_post("/api/v1/sinks/parked/{id}/retry", self.retry_delivery)

    async def _json(self, request: web.Request) -> JSONObject:
        body = await read_body(request, MAX_BODY)
        if not body.strip():
            return {}
        data = parse_json(body)
        if not isinstance(data, dict):
            raise InputError('send a JSON object, e.g. {"reason": "..."}')
        return data

    async def get_pause(self, request: web.Request) -> web.Response:
        """GET /api/v1/pause."""
        require_scope(request, "read")
        pause = await self._store.pause()
        self._metrics.paused.set(1 if pause else 0)
        return web.json_response(pause.to_json() if pause else {"paused": False})

    async def post_pause(self, request: web.Request) -> web.Response:
        """POST /api/v1/pause: pause (or, with ``"paused": false``, resume)."""
        require_scope(request, "admin")
        data = await self._json(request)
        paused = data.get("paused", True)
        if not isinstance(paused, bool):
            raise InputError('"paused" must be true or false')
        if "by" in data:
            raise InputError(_NO_BY, errors=[{"pointer": "/by", "detail": "remove it"}])
        by = identify(self._auth, request.headers.get("Authorization")).name
        reason = _text(data, "reason")
        return await self.switch(paused=paused, by=by, reason=reason)

    async def delete_pause(self, request: web.Request) -> web.Response:
        """DELETE /api/v1/pause: resume remediations."""
        require_scope(request, "admin")
        if "by" in request.query:
            raise InputError(_NO_BY)
        by = identify(self._auth, request.headers.get("Authorization")).name
        reason = " ".join(request.query.get("reason", "").split())[:_TEXT_MAX]
        return await self.switch(paused=False, by=by, reason=reason)

    async def switch(self, *, paused: bool, by: str, reason: str) -> web.Response:
        """Set the pause and audit it in the decision log."""
        now = self._clock()
        before = await self._store.pause()
        pause = Pause(by, now, reason) if paused else None
        await self._store.set_pause(pause)
        event = "paused" if paused else "resumed"
        await self._store.record(
            [
                {
                    "payload_id": f"admin.pause.{new_id()}",
                    "fingerprint": "",
                    "decided_at": iso(now),
                    "event": event,
                    "by": by,
                    "reason": reason,
                    "was_paused": before is not None,
                    "matches": [],
                    "notes": [
                        f"remediations {event} by {by}"
                        + (f": {reason}" if reason else "")
                    ],
                }
            ]
        )
        self._metrics.paused.set(1 if paused else 0)
        log.warning("remediations_switched", switch=event, by=by, reason=reason)
        return web.json_response(pause.to_json() if pause else {"paused": False})

    async def parked(self, request: web.Request) -> web.Response:
        """GET /api/v1/parked."""
        require_scope(request, "read")
        known_params(request, "limit")
        items = await self._store.parked(_limit(request))
        count = await self._store.parked_count()
        self._metrics.journal_parked.set(count)
        return web.json_response(
            {"parked": [p.to_json() for p in items], "count": count}
        )

    async def retry(self, request: web.Request) -> web.Response:
        """POST /api/v1/parked/{id}/retry: back in the queue, attempts reset."""
        require_scope(request, "admin")
        entry_id = request.match_info["id"]
        by = identify(self._auth, request.headers.get("Authorization")).name
        if not await self.requeue_entry(entry_id, by):
            raise web.HTTPNotFound(text=f"no parked entry {entry_id!r}")
        return web.json_response({"status": "queued", "id": entry_id}, status=202)

    async def requeue_entry(self, entry_id: str, by: str) -> bool:
        """Put a parked journal entry back in the queue; False if none."""
        if not await self._store.retry_parked(entry_id, self._clock()):
            return False
        log.info("parked_entry_retried", payload_id=entry_id, by=by)
        self._metrics.journal_parked.set(await self._store.parked_count())
        return True

    async def parked_deliveries(self, request: web.Request) -> web.Response:
        """GET /api/v1/sinks/parked."""
        require_scope(request, "read")
        known_params(request, "limit")
        items, count = await self.deliveries_parked(_limit(request))
        return web.json_response({"parked": items, "count": count})

    async def retry_delivery(self, request: web.Request) -> web.Response:
        """POST /api/v1/sinks/parked/{id}/retry: due now, attempts reset."""
        require_scope(request, "admin")
        row_id = request.match_info["id"]
        by = identify(self._auth, request.headers.get("Authorization")).name
        if not await self.requeue_delivery(row_id, by):
            raise web.HTTPNotFound(
                text=f"no parked sink delivery {row_id!r} (GET /api/v1/sinks/parked "
                "lists them)"
            )
        return web.json_response({"status": "queued", "id": row_id}, status=202)

    async def deliveries_parked(self, limit: int) -> tuple[list[JSONObject], int]:
        """Up to ``limit`` parked sink deliveries (as the API shows them), and all."""
        items = await self._outbox.parked(limit)
        pending, parked = await self._outbox.counts()
        self._metrics.sink_outbox(pending, parked)
        return [_delivery_json(p) for p in items], parked

    async def requeue_delivery(self, row_id: str, by: str) -> bool:
        """Make a parked delivery due now with fresh attempts; False if none."""
        if not await self._outbox.retry_parked(row_id, self._clock()):
            return False
        log.info("sink_delivery_retried", row=row_id, by=by)
        self._metrics.sink_outbox(*await self._outbox.counts())
        return True


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError as exc:
        raise InputError("limit must be a number between 1 and 1000") from exc
    if not 1 <= limit <= 1000:
        raise InputError("limit must be between 1 and 1000")
    return limit


def _outcome(sink: str, text: str) -> JSONValue:
    if not text:
        return {"sink": sink, "status": "duplicate", "detail": "sent before"}
    try:
        value: JSONValue = json.loads(text)
    except ValueError:
        return {"sink": sink, "status": "unknown", "detail": "unreadable outcome"}
    return value


def _delivery_json(row: ParkedDelivery) -> JSONObject:
    """What an operator needs to decide on a parked delivery (no trace body)."""
    out: JSONObject = {
        "id": row.id,
        "reason": row.reason,
        "attempts": row.attempts,
        "sinks": list(row.sinks),
        "left": [s for s in row.sinks if s not in row.done],
        "done": [_outcome(s, row.done[s]) for s in row.sinks if s in row.done],
    }
    try:
        trace = decode_trace(row.trace)
    except (ValueError, KeyError, TypeError) as exc:
        out["trace"] = f"damaged: {exc.__class__.__name__} (retrying parks it again)"
        return out
    out |= {
        "payload_id": trace.payload_id,
        "fingerprint": trace.alert.fingerprint,
        "alertname": trace.alert.labels.get("alertname", ""),
        "decided_at": iso(trace.decided_at),
        "mode": trace.mode,
        "rules": [m.rule for m in trace.matches],
    }
    return out


def admin_paths() -> Operations:
    """The OpenAPI paths of this module's routes."""
    ok: JSONObject = {
        "description": "OK",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    problem: JSONObject = {
        "description": "Rejected; the body says what to fix.",
        "content": {
            "application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}
            }
        },
    }
    errors: JSONObject = {"400": problem, "401": problem, "403": problem}
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    entry_id: JSONObject = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    limit: JSONObject = {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "How many to list, 1 to 1000 (default 100).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    }
    return {
        "/api/v1/pause": {
            "get": {
                "summary": "Whether remediations are paused, by whom and why",
                "security": security,
                "responses": {"200": ok, **errors},
            },
            "post": {
                "summary": 'Pause every remediation: {"reason"}; '
                '{"paused": false} resumes. Who is the credential\'s identity '
                '(a "by" field is refused). Audited in the decision log.',
                "security": security,
                "responses": {"200": ok, **errors},
            },
            "delete": {
                "summary": "Resume remediations (?reason=; who is the "
                "credential's identity). Audited.",
                "security": security,
                "responses": {"200": ok, **errors},
            },
        },
        "/api/v1/parked": {
            "get": {
                "summary": "Journal entries parked after too many attempts",
                "security": security,
                "parameters": [limit],
                "responses": {"200": ok, **errors},
            }
        },
        "/api/v1/parked/{id}/retry": {
            "post": {
                "summary": "Put a parked entry back in the queue",
                "security": security,
                "parameters": [entry_id],
                "responses": {"202": ok, "404": problem, **errors},
            }
        },
        "/api/v1/sinks/parked": {
            "get": {
                "summary": "Sink deliveries parked after too many attempts: why, "
                "and which sinks are left",
                "security": security,
                "parameters": [limit],
                "responses": {"200": ok, **errors},
            }
        },
        "/api/v1/sinks/parked/{id}/retry": {
            "post": {
                "summary": "Make a parked sink delivery due again, attempts reset",
                "security": security,
                "parameters": [entry_id],
                "responses": {"202": ok, "404": problem, **errors},
            }
        },
    }
