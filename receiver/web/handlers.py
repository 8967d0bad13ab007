"""Request handlers: the three webhooks, the read API, replay and operations.

Built once in ``create_app`` with their dependencies; nothing past this module
sees raw dicts. A 202 means the payload is in the store's journal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from receiver.engine.worker import Processor
from receiver.errors import (
    ClientGoneError,
    ForbiddenError,
    InputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    StoreUnavailableError,
    TooManyRequestsError,
    UnsupportedMediaError,
)
from receiver.metrics import Metrics
from receiver.model import Alert, Source
from receiver.sinks.render import is_own_note
from receiver.sources import alertmanager, detect, events_v2, pagerduty, parse_json
from receiver.sources.caps import AlertCaps, check_caps
from receiver.sources.wire import parse_time
from receiver.store.base import AlertState, DecisionQuery, JournalEntry, Store, new_id
from receiver.web.auth import Authenticator, Scope
from receiver.web.openapi import MAX_LIMIT, spec

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
DEFAULT_LIMIT = 100
# Sources whose inline payloads may run with execute: the others prove their
# sender by a signature or a routing key an inline payload cannot carry.
INLINE_EXECUTE = frozenset({"alertmanager"})
# What a broken body raises while it is read: a bad gzip stream, bad chunking.
_READ_ERRORS = (HttpProcessingError, RequestPayloadError, ValueError)


@dataclass(frozen=True)
class EdgeLimits:
    """How much the edge reads, how long it waits, and what an alert may hold."""

    max_body_bytes: int = 5 * 1024 * 1024
    max_unauthenticated_body_bytes: int = 512 * 1024
    unauthenticated_body_reads: int = 32
    body_timeout: float = 10.0
    caps: AlertCaps = field(default_factory=AlertCaps)


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


# Seconds between the info-level lines that sum up the webhooks accepted (one
# line per request is at debug: at info it cost about 5 % of the edge's CPU).
ACCEPTED_SUMMARY_EVERY = 1.0


class _Accepted:
    """Webhooks accepted since the last summary line, and when it is due."""

    def __init__(self) -> None:
        self.due: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.payloads: dict[str, int] = {}
        self.alerts = 0
        self.first = ""
        self.last = ""

    def add(self, source: str, payload_id: str, alerts: int) -> None:
        self.payloads[source] = self.payloads.get(source, 0) + 1
        self.alerts += alerts
        self.first = self.first or payload_id
        self.last = payload_id
        if self.due is None:
            self.due = asyncio.get_running_loop().call_later(
                ACCEPTED_SUMMARY_EVERY, self.flush
            )

    def flush(self) -> None:
        """Log what was accepted since the last line (nothing if nothing was)."""
        if self.due is not None:
            self.due.cancel()
            self.due = None
        if not self.payloads:
            return
        log.info(
            "webhooks_accepted",
            payloads=self.payloads,
            alerts=self.alerts,
            first_payload_id=self.first,
            last_payload_id=self.last,
        )
        self._reset()


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
        alertname_from: str,
        limits: EdgeLimits | None = None,
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
        self._accepted = _Accepted()
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
        self._limits = limits or EdgeLimits()
        self._alertname_from = alertname_from
        # Bodies being read for senders not yet authenticated (PagerDuty, Events
        # v2): the one thing an anonymous client can make this process hold.
        self._unauthenticated = 0

    # ------------------------------------------------------------ helpers

    def _require(self, request: web.Request, scope: Scope) -> None:
        self._auth.require(request.headers.get("Authorization"), scope)

    async def _body(self, request: web.Request, *, authenticated: bool = True) -> bytes:
        """Read the JSON body within the cap and the body timeout.

        ``authenticated=False`` (the sender is proven only by the body) uses the
        tighter cap and one of the few slots for such reads: past them, 429.
        """
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise UnsupportedMediaError(
                f"Content-Type must be application/json, got {ctype[:60] or 'none'!r}"
            )
        limits = self._limits
        cap = (
            limits.max_body_bytes
            if authenticated
            else min(limits.max_body_bytes, limits.max_unauthenticated_body_bytes)
        )
        setting = (
            "RECEIVER_MAX_BODY_BYTES"
            if authenticated
            else "RECEIVER_MAX_UNAUTHENTICATED_BODY_BYTES"
        )
        length = request.content_length
        if length is not None and length > cap:
            raise PayloadTooLargeError(
                f"body of {length} bytes is over the {cap}-byte cap ({setting})"
            )
        if authenticated:
            return await self._read(request, cap, setting)
        if self._unauthenticated >= limits.unauthenticated_body_reads:
            raise TooManyRequestsError(
                f"{self._unauthenticated} unauthenticated bodies are being read "
                "already; retry shortly (RECEIVER_UNAUTHENTICATED_BODY_READS)"
            )
        self._unauthenticated += 1
        try:
            return await self._read(request, cap, setting)
        finally:
            self._unauthenticated -= 1

    async def _read(self, request: web.Request, cap: int, setting: str) -> bytes:
        chunks = []
        size = 0
        try:
            async with asyncio.timeout(self._limits.body_timeout):
                async for chunk in request.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > cap:
                        raise PayloadTooLargeError(
                            f"body is over the {cap}-byte cap ({setting})"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeoutError(
                f"the body did not arrive within {self._limits.body_timeout:g} s "
                f"({size} bytes read); send it at once (RECEIVER_BODY_TIMEOUT)"
            ) from None
        except ConnectionError:
            raise ClientGoneError(
                f"the client disconnected after {size} bytes of its body"
            ) from None
        except _READ_ERRORS as exc:
            raise InputError(
                f"the body could not be read: {_reason(exc)}; check "
                "Content-Encoding and Transfer-Encoding"
            ) from None
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
        check_caps(alerts, self._limits.caps)
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
        log.debug(
            "webhook_accepted", source=source, payload_id=entry.id, alerts=len(alerts)
        )
        self._accepted.add(source, entry.id, len(alerts))
        return entry

    def flush_accepted(self) -> None:
        """Log the webhooks accepted since the last summary line now (shutdown)."""
        self._accepted.flush()

    async def _start_of(self, alert: Alert, now: datetime) -> datetime | None:
        """Events v2 carry no start: a trigger starts now unless already firing."""
        state = await self._store.alert_state(alert.fingerprint)
        if state is not None and (
            state.status == "firing" or alert.status == "resolved"
        ):
            return state.starts_at
        return now

    async def _duplicate(self, source: Source, key: str) -> bool:
        if await self._store.seen(
            f"delivery:{source}:{key}", DELIVERY_TTL, self._clock()
        ):
            self._metrics.duplicates.labels(source).inc()
            log.info("duplicate_dropped", source=source, delivery=key)
            return True
        return False

    async def _admit(self, source: Source | Literal["change_events"]) -> None:
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
        self._require(request, "webhook")
        await self._admit("alertmanager")
        body = await self._body(request)
        if len(body) > PARSE_IN_THREAD:
            alerts = await asyncio.to_thread(alertmanager.from_body, body)
        else:
            alerts = alertmanager.from_body(body)
        truncated = int(alerts[0].refs.get("truncated_alerts", "0")) if alerts else 0
        if truncated:
            self._metrics.alerts_truncated.inc(truncated)
            log.warning(
                "alerts_truncated",
                truncated=truncated,
                received=len(alerts),
                group_key=alerts[0].refs.get("group_key", "")[:200],
                detail="Alertmanager left alerts of this group out of the webhook "
                "(max_alerts); those alerts are not decided",
            )
        entry = await self._accept("alertmanager", body, alerts, request.headers)
        return web.json_response(
            {"status": "accepted", "id": entry.id, "alerts": len(alerts)}, status=202
        )

    async def pagerduty(self, request: web.Request) -> web.Response:
        """POST /webhooks/pagerduty.

        A correctly signed delivery is always accepted: incident events become an
        alert, every other event (``service.*``, ``pagey.ping``, types added
        later) is stored and recorded as an event, never refused. The signature
        header is checked before the body is read, the HMAC after.
        """
        await self._admit("pagerduty")
        signatures = self._auth.signature_parts(
            request.headers.get("X-PagerDuty-Signature")
        )
        body = await self._body(request, authenticated=False)
        self._auth.check_signature(signatures, body)
        event = pagerduty.parse(parse_json(body))
        alerts = pagerduty.alerts_of(
            event, self._clock(), alertname_from=self._alertname_from
        )
        check_caps(alerts, self._limits.caps)
        delivery = request.headers.get("X-Webhook-Id") or event.id
        if delivery and await self._duplicate("pagerduty", delivery[:200]):
            return web.json_response(
                {"status": "duplicate", "alerts": 0, "event_type": event.event_type},
                status=202,
            )
        if alerts and is_own_note(alerts[0].annotations.get("note", "")):
            # PagerDuty echoes the note we posted as incident.annotated: no loop.
            log.info("own_note_ignored", incident=alerts[0].refs.get("incident_id"))
            return web.json_response(
                {
                    "status": "ignored",
                    "alerts": 0,
                    "event_type": event.event_type,
                    "reason": "a note this receiver posted",
                },
                status=202,
            )
        entry = await self._accept("pagerduty", body, alerts, request.headers)
        recorded = "alert" if alerts else "event"
        if not alerts:
            log.info(
                "pagerduty_event_recorded",
                event_type=event.event_type[:100],
                payload_id=entry.id,
            )
        return web.json_response(
            {
                "status": "accepted",
                "id": entry.id,
                "alerts": len(alerts),
                "event_type": event.event_type,
                "recorded_as": recorded,
            },
            status=202,
        )

    async def read_body(self, request: web.Request) -> bytes:
        """A body whose sender the body itself proves (change events' routing key).

        Read like ``/v2/enqueue``'s: refused before reading when no routing key
        is configured, shed (503 + Retry-After) while the journal is at its
        bound (the store is behind: a change event is one more write to it),
        then under the unauthenticated cap and count.
        """
        self._auth.routing_keys_open()
        await self._admit("change_events")
        return await self._body(request, authenticated=False)

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST /v2/enqueue (PagerDuty Events API v2; errors in its shape)."""
        self._auth.routing_keys_open()
        await self._admit("events_v2")
        body = await self._body(request, authenticated=False)
        data = parse_json(body)
        if isinstance(data, dict) and isinstance(data.get("routing_key"), str):
            self._auth.check_routing_key(data["routing_key"])
        parsed = events_v2.to_alerts(data, self._clock(), body=body)
        check_caps(parsed, self._limits.caps)
        dedup = parsed[0].refs["dedup_key"]
        # A resolve naming only the dedup key closes every alert its trigger
        # opened (a grouped page's each have a fingerprint): record their states.
        alerts = [a for raw in parsed for a in await self._processor.inherit(raw)]
        if data.get("event_action") == "trigger" and await self._all_open(alerts):
            # Same dedup_key, every alert already firing: PagerDuty would fold it
            # into the open incident; so do we. A resolve is never folded.
            # Nothing new is journaled, so the answer carries no journal id.
            self._metrics.duplicates.labels("events_v2").inc()
            return web.json_response(
                {
                    "status": "success",
                    "message": "Event processed (duplicate of the open alert)",
                    "dedup_key": dedup,
                },
                status=202,
            )
        entry = await self._accept(
            "events_v2", redact_routing_key(data, dedup), alerts, request.headers
        )
        return web.json_response(
            {
                "status": "success",
                "message": "Event processed",
                "dedup_key": dedup,
                "id": entry.id,
            },
            status=202,
        )

    async def _all_open(self, alerts: list[Alert]) -> bool:
        group = await self._store.alert_state(
            events_v2.group_fingerprint(alerts[0].refs["dedup_key"])
        )
        for alert in alerts:
            if alert.status != "firing":
                return False
            state = await self._store.alert_state(alert.fingerprint)
            if state is None or state.status != "firing":
                return False
            if (
                group is not None
                and group.status == "resolved"
                and group.updated_at >= state.updated_at
            ):
                return False  # resolved by dedup key since it fired
        return True

    # ------------------------------------------------------------ read API

    async def decisions(self, request: web.Request) -> web.Response:
        """GET /api/v1/decisions: one page, newest first, as stored."""
        self._require(request, "read")
        q = request.query
        since = parse_time(q["since"], "since") if "since" in q else None
        cursor = q.get("cursor")
        query = DecisionQuery(
            fingerprint=q.get("fingerprint"),
            rule=q.get("rule"),
            playbook=q.get("playbook"),
            decision=q.get("decision"),
            payload_id=q.get("payload_id"),
            since=since,
            limit=_limit(q),
            cursor=cursor or None,
        )
        page = await self._store.decision_page(query)
        # The records are stored JSON: answered as they are, never re-encoded.
        body = (
            '{"decisions": ['
            + ", ".join(page.records)
            + f'], "count": {len(page.records)}, "next_cursor": '
            + json.dumps(page.next_cursor)
            + "}"
        )
        return web.Response(text=body, content_type="application/json")

    async def payloads(self, request: web.Request) -> web.Response:
        """GET /api/v1/payloads: one page of stored payloads, newest first."""
        self._require(request, "read")
        limit = _limit(request.query)
        before = request.query.get("cursor") or None
        entries = await self._store.payloads(limit=limit + 1, before=before)
        more = len(entries) > limit
        entries = entries[:limit]
        return web.json_response(
            {
                "payloads": [e.to_json(include_body=False) for e in entries],
                "count": len(entries),
                "next_cursor": entries[-1].id if more and entries else None,
            }
        )

    async def payload(self, request: web.Request) -> web.Response:
        """GET /api/v1/payloads/{id}."""
        self._require(request, "read")
        payload_id = request.match_info["id"]
        entry = await self._store.payload(payload_id)
        if entry is None:
            raise NotFoundError(
                f"no such payload {payload_id[:80]!r}; GET /api/v1/payloads lists "
                "the stored ones"
            )
        return web.json_response(entry.to_json())

    async def replay(self, request: web.Request) -> web.Response:
        """POST /api/v1/replay: decide a stored or inline payload, dry-run."""
        self._require(request, "read")
        data = parse_json(await self._body(request))
        if not isinstance(data, dict):
            raise InputError('send {"payload_id": "..."} or {"payload": {...}}')
        execute = data.get("execute", False)
        if not isinstance(execute, bool):
            raise InputError(
                "execute must be true or false",
                errors=[{"pointer": "/execute", "detail": "not a boolean"}],
            )
        if execute:
            self._require(request, "replay")
        source, body = await self._replay_source(data, execute=execute)
        alerts = self._processor.alerts(source, body, self._clock())
        check_caps(alerts, self._limits.caps)
        if execute:
            if not self._execute:
                raise InputError(
                    "execute replay needs the service in execute mode "
                    "(receiver serve --execute); this one runs dry-run"
                )
            if source == "events_v2":
                body = redact_routing_key(json.loads(body), alerts[0].refs["dedup_key"])
            entry = await self._accept(
                source, body, alerts, {"x-receiver-replay": "execute"}
            )
            return web.json_response(
                {"status": "accepted", "id": entry.id, "execute": True}, status=202
            )
        traces = await self._processor.decide_dry_run(alerts)
        return web.json_response({"alerts": [t.to_json() for t in traces]})

    async def _replay_source(
        self, data: dict[str, Any], *, execute: bool
    ) -> tuple[Source, bytes]:
        """The source and body a replay request names (stored or inline)."""
        if "payload_id" in data:
            if not isinstance(data["payload_id"], str):
                raise InputError(
                    "payload_id must be a string",
                    errors=[{"pointer": "/payload_id", "detail": "not a string"}],
                )
            entry = await self._store.payload(data["payload_id"])
            if entry is None:
                raise NotFoundError(f"no such payload {data['payload_id'][:80]!r}")
            return entry.source, entry.body
        if isinstance(data.get("payload"), dict):
            source = detect(data["payload"])
            if execute and source not in INLINE_EXECUTE:
                raise ForbiddenError(
                    f"an inline {source} payload cannot run with execute: it "
                    "carries no proof of its sender (signature or routing key); "
                    "replay the stored payload by payload_id instead"
                )
            return source, json.dumps(data["payload"]).encode()
        raise InputError('send {"payload_id": "..."} or {"payload": {...}}')

    async def approvals(self, request: web.Request) -> web.Response:
        """GET /api/v1/approvals: one page, newest first."""
        self._require(request, "read")
        status = request.query.get("status")
        if status is not None and status not in APPROVAL_STATUSES:
            raise InputError(
                f"status must be one of {', '.join(APPROVAL_STATUSES)}",
                errors=[{"pointer": "/status", "detail": "unknown status"}],
            )
        limit = _limit(request.query)
        items = await self._store.approvals(
            status, limit=limit + 1, before=request.query.get("cursor") or None
        )
        more = len(items) > limit
        items = items[:limit]
        return web.json_response(
            {
                "approvals": [a.to_json() for a in items],
                "count": len(items),
                "next_cursor": items[-1].id if more and items else None,
            }
        )

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


APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired")


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise InputError(
            f"limit must be an integer from 1 to {MAX_LIMIT}",
            errors=[{"pointer": "/limit", "detail": "not an integer"}],
        )
    limit = int(raw)
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(
            f"limit must be between 1 and {MAX_LIMIT}, got {limit}",
            errors=[{"pointer": "/limit", "detail": "out of range"}],
        )
    return limit


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else None
    exc = cause if isinstance(cause, HttpProcessingError) else exc
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    return str(text).replace("\r", " ").replace("\n", " ")[:200] or type(exc).__name__


def redact_routing_key(data: Any, dedup: str) -> bytes:
    """An Events v2 body as journaled: routing key redacted, dedup key explicit.

    The routing key is a credential; the explicit dedup key makes the stored body
    decide the same way when it is replayed.
    """
    stored = dict(data)
    stored["routing_key"] = "<redacted>"
    stored["dedup_key"] = dedup
    return json.dumps(stored).encode()
