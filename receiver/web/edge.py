"""The edge every webhook passes: admission, bounded body reads, the journal.

The shared half of the request handlers: their dependencies, the backpressure
bound, reading a body within the edge's limits and journaling an accepted
payload (a 202 means the payload is in the store's journal).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Literal

import structlog
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from receiver.engine.worker import Processor
from receiver.errors import (
    ClientGoneError,
    InputError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    StoreUnavailableError,
    TooManyRequestsError,
    UnsupportedMediaError,
)
from receiver.logs import Summary
from receiver.metrics import Metrics
from receiver.model import Alert, Source
from receiver.sources.alertmanager import AdmittedAlert
from receiver.sources.caps import AlertCaps, check_caps
from receiver.store.base import AlertState, JournalEntry, Store, new_id
from receiver.web.auth import Authenticator, Scope

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
    # A refused webhook's 503 is held this long (seconds, no CPU) before it is
    # sent: a sender that retries at once, ignoring Retry-After, then cannot keep
    # the edge busy refusing while the worker catches up.
    shed_pause: float = 0.1


# Seconds between the info-level lines that sum up the webhooks accepted (one
# line per request is at debug: at info it cost about 5 % of the edge's CPU).
ACCEPTED_SUMMARY_EVERY = 1.0


class _Load:
    """What the edge knows of the journal's backlog, kept cheap to ask."""

    def __init__(self) -> None:
        self.depth = 0
        self.oldest: datetime | None = None
        self.counted_at = -1e9
        self.counted_over = False
        self.shed = 0
        self.logged_at = -1e9
        # Requests admitted and not journaled (nor refused) yet: counted with
        # the backlog, so a burst admitted at once cannot carry it past the
        # bound before any of it is journaled. Each leaves when it journals
        # or when its request ends (its task is done).
        self.admitted: set[asyncio.Task[object]] = set()


class Edge:
    """The handlers' dependencies and what every webhook goes through."""

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
        self._accepted = Summary(log, "webhooks_accepted", ACCEPTED_SUMMARY_EVERY)
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
        chunks: list[bytes] = []
        content = request.content
        try:
            if content.is_eof():
                # The whole body came with the headers (most webhooks do): taken
                # as it is, with no timer and no trip through the event loop.
                chunks.append(content.read_nowait())
                if len(chunks[0]) > cap:
                    raise PayloadTooLargeError(
                        f"body is over the {cap}-byte cap ({setting})"
                    )
            else:
                await self._read_chunks(content, cap, setting, chunks)
        except TimeoutError:
            size = sum(map(len, chunks))
            raise RequestTimeoutError(
                f"the body did not arrive within {self._limits.body_timeout:g} s "
                f"({size} bytes read); send it at once (RECEIVER_BODY_TIMEOUT)"
            ) from None
        except ConnectionError:
            size = sum(map(len, chunks))
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

    async def _read_chunks(
        self, content: StreamReader, cap: int, setting: str, chunks: list[bytes]
    ) -> None:
        """Read the body as it arrives, into ``chunks``, within the cap and time."""
        size = 0
        async with asyncio.timeout(self._limits.body_timeout):
            async for chunk in content.iter_chunked(65536):
                size += len(chunk)
                if size > cap:
                    raise PayloadTooLargeError(
                        f"body is over the {cap}-byte cap ({setting})"
                    )
                chunks.append(chunk)

    async def _accept(
        self,
        source: Source,
        body: bytes,
        alerts: list[Alert],
        headers: Mapping[str, str],
    ) -> JournalEntry:
        check_caps(alerts, self._limits.caps)
        now = self._clock()
        states = [
            AlertState(a.fingerprint, a.status, a.starts_at or now, now)
            if a.source != "events_v2" or a.starts_at is not None
            else AlertState(a.fingerprint, a.status, await self._start_of(a, now), now)
            for a in alerts
            if a.actionable
        ]
        return await self._journal(
            source, body, states, alerts=len(alerts), headers=headers, now=now
        )

    async def _journal(
        self,
        source: Source,
        body: bytes,
        states: list[AlertState],
        *,
        alerts: int,
        headers: Mapping[str, str],
        now: datetime,
    ) -> JournalEntry:
        """Journal a checked payload and its alerts' states: the 202 may follow."""
        entry = JournalEntry(
            id=new_id(),
            source=source,
            received_at=now,
            body=body,
            headers=kept_headers(headers),
        )
        try:
            await self._store.append(entry, states)
        except StoreUnavailableError:
            self._metrics.store_errors.inc()
            raise
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._load.admitted.discard(task)
        self._load.depth += 1
        if self._load.oldest is None:
            self._load.oldest = now
        if self._on_journaled is not None:
            self._on_journaled()
        log.debug("webhook_accepted", source=source, payload_id=entry.id, alerts=alerts)
        self._accepted.add(entry.id, payloads={source: 1}, alerts=alerts)
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
            task = asyncio.current_task()
            if task is not None and task not in load.admitted:
                load.admitted.add(task)
                task.add_done_callback(load.admitted.discard)
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
        if bound.shed_pause > 0:
            await asyncio.sleep(bound.shed_pause)
        raise OverloadedError(
            f"the receiver is behind ({load.depth} payloads waiting to be decided, "
            f"bound: {over}); retry in {SHED_RETRY_AFTER}s",
            retry_after=SHED_RETRY_AFTER,
        )

    def _over(self) -> str | None:
        """Which bound the last known backlog is at, if any."""
        load, bound = self._load, self._bound
        if load.depth + len(load.admitted) >= bound.max_depth:
            return "depth"
        if load.oldest is not None and load.depth > 0:
            age = (self._clock() - load.oldest).total_seconds()
            if age >= bound.max_age:
                return "age"
        return None


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``KEPT_HEADERS`` of a payload (the last of a repeated one), by name."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        # A request's: six case-insensitive lookups, not a copy of every header.
        kept = {}
        for name in KEPT_HEADERS:
            values = headers.getall(name, None)
            if values:
                kept[name] = values[-1]
        return kept
    lowered = {k.lower(): v for k, v in headers.items()}
    return {k: lowered[k] for k in KEPT_HEADERS if k in lowered}


# An alert's state is built for every alert of every webhook: filled in as the
# frozen dataclass's __init__ would, in half its time (its fields checked here).
_STATE_FIELDS = ("fingerprint", "status", "starts_at", "updated_at")
assert tuple(f.name for f in fields(AlertState)) == _STATE_FIELDS  # noqa: S101


def alert_states(
    alerts: Sequence[AdmittedAlert], starts: Sequence[datetime | None], now: datetime
) -> list[AlertState]:
    """``AlertState(a.fingerprint, a.status, start or now, now)`` for each alert."""
    states = []
    new = object.__new__
    for alert, start in zip(alerts, starts, strict=True):
        state = new(AlertState)
        fill = state.__dict__
        fill["fingerprint"] = alert.fingerprint
        fill["status"] = alert.status
        fill["starts_at"] = start or now
        fill["updated_at"] = now
        states.append(state)
    return states


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else None
    exc = cause if isinstance(cause, HttpProcessingError) else exc
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    return str(text).replace("\r", " ").replace("\n", " ")[:200] or type(exc).__name__


def redact_routing_key(data: Mapping[str, object], dedup: str) -> bytes:
    """An Events v2 body as journaled: routing key redacted, dedup key explicit.

    The routing key is a credential; the explicit dedup key makes the stored body
    decide the same way when it is replayed.
    """
    stored = dict(data)
    stored["routing_key"] = "<redacted>"
    stored["dedup_key"] = dedup
    return json.dumps(stored).encode()
