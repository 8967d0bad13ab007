"""Request handlers: the three webhooks, the read API, replay and operations.

Built once in ``create_app`` with their dependencies; nothing past this module
sees raw dicts. A 202 means the payload is in the store's journal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from receiver.engine.worker import Processor
from receiver.errors import InputError, PayloadTooLargeError, UnsupportedMediaError
from receiver.metrics import Metrics
from receiver.model import Source
from receiver.sources import alertmanager, detect, events_v2, pagerduty, parse_json
from receiver.store.base import DecisionQuery, JournalEntry, Store, new_id
from receiver.web.auth import Authenticator
from receiver.web.openapi import spec

log = structlog.get_logger("receiver.web")

# Headers worth keeping with a payload; everything else (Authorization,
# signatures, cookies) is dropped before the journal sees it.
KEPT_HEADERS = ("content-type", "user-agent", "x-webhook-id", "x-request-id")


class Handlers:
    """Every route's handler, sharing the app's dependencies."""

    def __init__(
        self,
        *,
        store: Store,
        processor: Processor,
        auth: Authenticator,
        metrics: Metrics,
        clock: Callable[[], datetime],
        max_body_bytes: int,
        alertname_from: str,
    ) -> None:
        self._store = store
        self._processor = processor
        self._auth = auth
        self._metrics = metrics
        self._clock = clock
        self._max = max_body_bytes
        self._alertname_from = alertname_from

    # ------------------------------------------------------------ helpers

    async def _body(self, request: web.Request) -> bytes:
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise UnsupportedMediaError(
                f"Content-Type must be application/json, got {ctype or 'none'!r}"
            )
        length = request.content_length
        if length is not None and length > self._max:
            raise PayloadTooLargeError(
                f"body of {length} bytes is over the {self._max}-byte cap "
                "(RECEIVER_MAX_BODY_BYTES)"
            )
        chunks = []
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max:
                raise PayloadTooLargeError(
                    f"body is over the {self._max}-byte cap (RECEIVER_MAX_BODY_BYTES)"
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise InputError("empty body; send the webhook JSON")
        return body

    async def _accept(
        self, request: web.Request, source: Source, body: bytes, count: int
    ) -> JournalEntry:
        headers = {k.lower(): v for k, v in request.headers.items()}
        entry = JournalEntry(
            id=new_id(),
            source=source,
            received_at=self._clock(),
            body=body,
            headers={k: headers[k] for k in KEPT_HEADERS if k in headers},
        )
        await self._store.append(entry)
        self._metrics.journal_depth.set(await self._store.pending())
        log.info("webhook_accepted", source=source, payload_id=entry.id, alerts=count)
        return entry

    # ------------------------------------------------------------ webhooks

    async def alertmanager(self, request: web.Request) -> web.Response:
        """POST /webhooks/alertmanager."""
        self._auth.check_header(request.headers.get("Authorization"))
        body = await self._body(request)
        alerts = alertmanager.to_alerts(parse_json(body), self._clock())
        entry = await self._accept(request, "alertmanager", body, len(alerts))
        return web.json_response(
            {"status": "accepted", "id": entry.id, "alerts": len(alerts)}, status=202
        )

    async def pagerduty(self, request: web.Request) -> web.Response:
        """POST /webhooks/pagerduty."""
        body = await self._body(request)
        self._auth.check_signature(request.headers.get("X-PagerDuty-Signature"), body)
        alerts = pagerduty.to_alerts(
            parse_json(body), self._clock(), alertname_from=self._alertname_from
        )
        entry = await self._accept(request, "pagerduty", body, len(alerts))
        return web.json_response(
            {
                "status": "accepted",
                "id": entry.id,
                "alerts": len(alerts),
                "event_type": alerts[0].labels.get("event_type", ""),
            },
            status=202,
        )

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST /v2/enqueue (PagerDuty Events API v2 shape)."""
        body = await self._body(request)
        data = parse_json(body)
        if isinstance(data, dict) and isinstance(data.get("routing_key"), str):
            self._auth.check_routing_key(data["routing_key"])
        alerts = events_v2.to_alerts(data, self._clock(), body=body)
        entry = await self._accept(request, "events_v2", body, len(alerts))
        return web.json_response(
            {
                "status": "success",
                "message": "Event processed",
                "dedup_key": alerts[0].refs["dedup_key"],
                "id": entry.id,
            },
            status=202,
        )

    # ------------------------------------------------------------ read API

    async def decisions(self, request: web.Request) -> web.Response:
        """GET /api/v1/decisions."""
        self._auth.check_header(request.headers.get("Authorization"))
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            since = datetime.fromisoformat(q["since"]) if "since" in q else None
        except ValueError as exc:
            raise InputError(
                f"bad query parameter: {exc}; limit is an integer, since an "
                "ISO 8601 time"
            ) from exc
        if not 1 <= limit <= 1000:
            raise InputError("limit must be between 1 and 1000")
        query = DecisionQuery(
            fingerprint=q.get("fingerprint"),
            rule=q.get("rule"),
            playbook=q.get("playbook"),
            decision=q.get("decision"),
            payload_id=q.get("payload_id"),
            since=since,
            limit=limit,
        )
        items = await self._store.decisions(query)
        return web.json_response({"decisions": items, "count": len(items)})

    async def payloads(self, request: web.Request) -> web.Response:
        """GET /api/v1/payloads."""
        self._auth.check_header(request.headers.get("Authorization"))
        entries = await self._store.payloads(limit=100)
        return web.json_response(
            {"payloads": [e.to_json(include_body=False) for e in entries]}
        )

    async def payload(self, request: web.Request) -> web.Response:
        """GET /api/v1/payloads/{id}."""
        self._auth.check_header(request.headers.get("Authorization"))
        entry = await self._store.payload(request.match_info["id"])
        if entry is None:
            raise web.HTTPNotFound(text=f"no payload {request.match_info['id']!r}")
        return web.json_response(entry.to_json())

    async def replay(self, request: web.Request) -> web.Response:
        """POST /api/v1/replay: decide a stored or inline payload, dry-run."""
        self._auth.check_header(request.headers.get("Authorization"))
        data = parse_json(await self._body(request))
        if not isinstance(data, dict):
            raise InputError('send {"payload_id": "..."} or {"payload": {...}}')
        if "payload_id" in data:
            entry = await self._store.payload(str(data["payload_id"]))
            if entry is None:
                raise InputError(f"no stored payload {data['payload_id']!r}")
            source, body = entry.source, entry.body
        elif isinstance(data.get("payload"), dict):
            source = detect(data["payload"])
            body = json.dumps(data["payload"]).encode()
        else:
            raise InputError('send {"payload_id": "..."} or {"payload": {...}}')
        alerts = self._processor.alerts(source, body, self._clock())
        traces = await self._processor.decide_dry_run(alerts)
        return web.json_response({"alerts": [t.to_json() for t in traces]})

    # ------------------------------------------------------------ operations

    async def healthz(self, _request: web.Request) -> web.Response:
        """GET /healthz: the process is alive."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """GET /readyz: rules loaded and the store reachable."""
        rules = len(self._processor.rulebook.rules)
        store_ok = await self._store.ping()
        body: dict[str, Any] = {
            "status": "ready" if rules and store_ok else "not ready",
            "rules": rules,
            "store": "ok" if store_ok else "unreachable",
        }
        return web.json_response(body, status=200 if rules and store_ok else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text format."""
        self._metrics.journal_depth.set(await self._store.pending())
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def openapi(self, _request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.json_response(spec())
