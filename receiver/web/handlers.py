"""Request handlers: the three webhooks, the read API, replay and operations.

Built once in ``create_app`` with their dependencies; nothing past this module
sees raw dicts. A 202 means the payload is in the store's journal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from aiohttp import web

from receiver.engine.worker import Processor
from receiver.errors import (
    InputError,
    OverloadedError,
    PayloadTooLargeError,
    StoreUnavailableError,
    UnsupportedMediaError,
)
from receiver.metrics import Metrics
from receiver.model import Alert, Source
from receiver.sinks.render import is_own_note
from receiver.sources import alertmanager, detect, events_v2, pagerduty, parse_json
from receiver.store.base import AlertState, DecisionQuery, JournalEntry, Store, new_id
from receiver.web.auth import Authenticator
from receiver.web.openapi import spec

log = structlog.get_logger("receiver.web")

# Headers worth keeping with a payload; everything else (Authorization,
# signatures, cookies) is dropped before the journal sees it.
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "x-webhook-id",
    "x-request-id",
    "x-receiver-approval",
    "x-receiver-replay",
)
DELIVERY_TTL = timedelta(days=2)
SHED_RETRY_AFTER = 5  # seconds, in the 503's Retry-After
# Bodies larger than this (bytes) are parsed in a thread: a 5 MB storm takes
# hundreds of milliseconds to validate, and /healthz must not wait for it.
PARSE_IN_THREAD = 256 * 1024


@dataclass(frozen=True)
class Backpressure:
    """The journal's bound: webhooks get 503 + Retry-After while it is reached."""

    max_depth: int = 20_000
    max_age: float = 60.0  # seconds the oldest waiting payload may wait
    # Below the bound the journal is counted at most this often (seconds);
    # payloads accepted in between are added to the last count.
    recount: float = 1.0
    # At the bound it is counted again this often before refusing more.
    recount_at_bound: float = 0.05


class _Load:
    """What the edge knows of the journal's backlog, kept cheap to ask."""

    def __init__(self) -> None:
        self.depth = 0
        self.oldest: datetime | None = None
        self.counted_at = -1e9
        self.counted_over = False
        self.shed = 0
        self.logged_at = -1e9


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
        execute: bool = False,
        backpressure: Backpressure | None = None,
        on_journaled: Callable[[], None] | None = None,
        worker_metrics: Callable[[], bytes] | None = None,
        metrics_without: frozenset[str] = frozenset(),
        worker_ready: Callable[[], bool] | None = None,
    ) -> None:
        # Whether the worker process is up (None: it runs in this process).
        self._worker_ready = worker_ready
        self._execute = execute
        self._bound = backpressure or Backpressure()
        self._load = _Load()
        # Wakes the worker process (its doorbell) after each journaled payload.
        self._on_journaled = on_journaled
        # The worker process's own metrics, shown after the edge's.
        self._worker_metrics = worker_metrics
        self._metrics_without = metrics_without
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
        self,
        source: Source,
        body: bytes,
        alerts: list[Alert],
        headers: Mapping[str, str],
    ) -> JournalEntry:
        now = self._clock()
        kept = {k.lower(): v for k, v in headers.items()}
        entry = JournalEntry(
            id=new_id(),
            source=source,
            received_at=now,
            body=body,
            headers={k: kept[k] for k in KEPT_HEADERS if k in kept},
        )
        states = [
            AlertState(a.fingerprint, a.status, a.starts_at or now, now)
            if a.source != "events_v2" or a.starts_at is not None
            else AlertState(a.fingerprint, a.status, await self._start_of(a, now), now)
            for a in alerts
            if a.actionable
        ]
        try:
            await self._store.append(entry, states)
        except StoreUnavailableError:
            self._metrics.store_errors.inc()
            raise
        self._load.depth += 1
        if self._load.oldest is None:
            self._load.oldest = now
        if self._on_journaled is not None:
            self._on_journaled()
        log.info(
            "webhook_accepted", source=source, payload_id=entry.id, alerts=len(alerts)
        )
        return entry

    async def _start_of(self, alert: Alert, now: datetime) -> datetime | None:
        """Events v2 carry no start: a trigger starts now unless already firing."""
        state = await self._store.alert_state(alert.fingerprint)
        if state is not None and (
            state.status == "firing" or alert.status == "resolved"
        ):
            return state.starts_at
        return now

    async def _duplicate(self, source: Source, key: str) -> bool:
        if await self._store.seen(f"delivery:{source}:{key}", DELIVERY_TTL):
            self._metrics.duplicates.labels(source).inc()
            log.info("duplicate_dropped", source=source, delivery=key)
            return True
        return False

    async def _admit(self, source: Source) -> None:
        """Refuse (503 + Retry-After) while the journal is at its bound."""
        load, bound = self._load, self._bound
        now = time.monotonic()
        over = self._over()
        since = now - load.counted_at
        # Shed only on a count: when the estimate (the last count plus what was
        # accepted since) reaches the bound, count again, unless the last count
        # itself was at the bound a moment ago.
        stale = not load.counted_over or since >= bound.recount_at_bound
        if since >= bound.recount or (over and stale):
            load.counted_at = now
            load.depth, load.oldest = await self._store.pending()
            over = self._over()
            load.counted_over = over is not None
        if over is None:
            return
        load.shed += 1
        self._metrics.shed.labels(source, over).inc()
        if now - load.logged_at >= 1.0:
            # One line a second while shedding, with the count since the last.
            log.warning(
                "webhooks_shed",
                bound=over,
                depth=load.depth,
                max_depth=bound.max_depth,
                shed=load.shed,
            )
            load.logged_at, load.shed = now, 0
        raise OverloadedError(
            f"the receiver is behind ({load.depth} payloads waiting to be decided, "
            f"bound: {over}); retry in {SHED_RETRY_AFTER}s",
            retry_after=SHED_RETRY_AFTER,
        )

    def _over(self) -> str | None:
        """Which bound the last known backlog is at, if any."""
        load, bound = self._load, self._bound
        if load.depth >= bound.max_depth:
            return "depth"
        if load.oldest is not None and load.depth > 0:
            age = (self._clock() - load.oldest).total_seconds()
            if age >= bound.max_age:
                return "age"
        return None

    # ------------------------------------------------------------ webhooks

    async def alertmanager(self, request: web.Request) -> web.Response:
        """POST /webhooks/alertmanager."""
        self._auth.check_header(request.headers.get("Authorization"))
        await self._admit("alertmanager")
        body = await self._body(request)
        if len(body) > PARSE_IN_THREAD:
            alerts = await asyncio.to_thread(alertmanager.from_body, body)
        else:
            alerts = alertmanager.from_body(body)
        entry = await self._accept("alertmanager", body, alerts, request.headers)
        return web.json_response(
            {"status": "accepted", "id": entry.id, "alerts": len(alerts)}, status=202
        )

    async def pagerduty(self, request: web.Request) -> web.Response:
        """POST /webhooks/pagerduty."""
        await self._admit("pagerduty")
        body = await self._body(request)
        self._auth.check_signature(request.headers.get("X-PagerDuty-Signature"), body)
        alerts = pagerduty.to_alerts(
            parse_json(body), self._clock(), alertname_from=self._alertname_from
        )
        delivery = request.headers.get("X-Webhook-Id") or alerts[0].refs.get(
            "webhook_event_id", ""
        )
        if delivery and await self._duplicate("pagerduty", delivery):
            return web.json_response(
                {"status": "duplicate", "id": None, "alerts": 0}, status=202
            )
        if is_own_note(alerts[0].annotations.get("note", "")):
            # PagerDuty echoes the note we posted as incident.annotated: no loop.
            log.info("own_note_ignored", incident=alerts[0].refs.get("incident_id"))
            return web.json_response(
                {
                    "status": "ignored",
                    "id": None,
                    "alerts": 0,
                    "reason": "a note this receiver posted",
                },
                status=202,
            )
        entry = await self._accept("pagerduty", body, alerts, request.headers)
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
        await self._admit("events_v2")
        body = await self._body(request)
        data = parse_json(body)
        if isinstance(data, dict) and isinstance(data.get("routing_key"), str):
            self._auth.check_routing_key(data["routing_key"])
        alerts = events_v2.to_alerts(data, self._clock(), body=body)
        alert = alerts[0]
        dedup = alert.refs["dedup_key"]
        state = await self._store.alert_state(alert.fingerprint)
        if state is not None and state.status == alert.status and alert.actionable:
            # Same dedup_key and same action as the current state: PagerDuty would
            # fold it into the open incident; so do we.
            self._metrics.duplicates.labels("events_v2").inc()
            return web.json_response(
                {
                    "status": "success",
                    "message": "Event processed (duplicate of the open alert)",
                    "dedup_key": dedup,
                    "id": None,
                },
                status=202,
            )
        # The routing key is a credential: journal the request without it, with
        # the dedup key made explicit so the stored body decides the same way.
        stored = dict(data)
        stored["routing_key"] = "<redacted>"
        stored["dedup_key"] = dedup
        entry = await self._accept(
            "events_v2", json.dumps(stored).encode(), alerts, request.headers
        )
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
            if since is not None and since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
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
        if data.get("execute") is True:
            if not self._execute:
                raise InputError(
                    "execute replay needs the service in execute mode "
                    "(receiver serve --execute); this one runs dry-run"
                )
            entry = await self._accept(
                source, body, alerts, {"x-receiver-replay": "execute"}
            )
            return web.json_response(
                {"status": "accepted", "id": entry.id, "execute": True}, status=202
            )
        traces = await self._processor.decide_dry_run(alerts)
        return web.json_response({"alerts": [t.to_json() for t in traces]})

    async def approvals(self, request: web.Request) -> web.Response:
        """GET /api/v1/approvals."""
        self._auth.check_header(request.headers.get("Authorization"))
        items = await self._store.approvals(request.query.get("status"))
        return web.json_response({"approvals": [a.to_json() for a in items]})

    async def decide_approval(self, request: web.Request) -> web.Response:
        """POST /api/v1/approvals/{id}: approve or reject a waiting remediation."""
        self._auth.check_header(request.headers.get("Authorization"))
        data = parse_json(await self._body(request))
        decision = data.get("decision") if isinstance(data, dict) else None
        if decision not in ("approve", "reject"):
            raise InputError(
                'send {"decision": "approve"} or {"decision": "reject"}, '
                'optionally with "by": "<who>"'
            )
        by = str(data.get("by") or "api")[:100]
        approval_id = request.match_info["id"]
        now = self._clock()
        current = await self._store.get_approval(approval_id)
        if current is None:
            raise web.HTTPNotFound(text=f"no approval {approval_id!r}")
        if current.status == "pending" and now >= current.expires_at:
            await self._store.decide_approval(approval_id, "expired", "receiver", now)
            raise InputError(f"approval {approval_id} expired at {current.expires_at}")
        status: Literal["approved", "rejected"] = (
            "approved" if decision == "approve" else "rejected"
        )
        decided = await self._store.decide_approval(approval_id, status, by, now)
        if decided is None:
            raise InputError(f"approval {approval_id} is already {current.status}")
        log.info("approval_decided", approval=approval_id, status=status, by=by)
        if status == "approved":
            # Decide the alert again: idempotency keeps done steps done, and the
            # approved step now passes its guard.
            entry = await self._store.payload(
                str(decided.request.get("payload_id", ""))
            )
            if entry is not None:
                alerts = self._processor.alerts(entry.source, entry.body, now)
                await self._accept(
                    entry.source,
                    entry.body,
                    alerts,
                    {"x-receiver-approval": approval_id},
                )
        return web.json_response(decided.to_json())

    # ------------------------------------------------------------ operations

    async def healthz(self, _request: web.Request) -> web.Response:
        """GET /healthz: the process is alive."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """GET /readyz: rules loaded and the store reachable."""
        rules = len(self._processor.rulebook.rules)
        store_ok = await self._store.ping()
        worker_ok = self._worker_ready is None or self._worker_ready()
        ready = bool(rules) and store_ok and worker_ok
        body: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "rules": rules,
            "store": "ok" if store_ok else "unreachable",
        }
        if self._worker_ready is not None:
            body["worker"] = "ok" if worker_ok else "starting"
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text format."""
        count, oldest = await self._store.pending()
        self._metrics.journal_depth.set(count)
        age = (self._clock() - oldest).total_seconds() if oldest else 0.0
        self._metrics.journal_oldest_age.set(max(age, 0.0))
        if self._worker_metrics is not None:
            # The worker runs in another process: what it counts in gauges
            # here is read from the store.
            self._metrics.journal_parked.set(await self._store.parked_count())
            self._metrics.paused.set(1 if await self._store.pause() else 0)
        body = self._metrics.render(without=self._metrics_without)
        if self._worker_metrics is not None:
            body += self._worker_metrics()
        return web.Response(
            body=body,
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def openapi(self, _request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.json_response(spec())
