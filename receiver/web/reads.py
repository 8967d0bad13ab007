"""The read API (decisions, payloads, approvals), replay, and operations."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import structlog
from aiohttp import web

from receiver.errors import ForbiddenError, InputError, NotFoundError
from receiver.model import Decision, Source
from receiver.sources import detect, parse_json
from receiver.sources.caps import check_caps
from receiver.sources.wire import parse_time
from receiver.store.base import DecisionQuery
from receiver.web.edge import DEFAULT_LIMIT, INLINE_EXECUTE, Edge, redact_routing_key
from receiver.web.openapi import MAX_LIMIT, spec
from receiver.web.problems import known_params

log = structlog.get_logger("receiver.web")


class Reads(Edge):
    """The read API, replay, health, readiness, metrics and the OpenAPI spec."""

    async def decisions(self, request: web.Request) -> web.Response:
        """GET /api/v1/decisions: one page, newest first, as stored."""
        self._require(request, "read")
        known_params(request, *DECISION_PARAMS)
        q = request.query
        since = parse_time(q["since"], "since") if "since" in q else None
        cursor = q.get("cursor")
        decision = q.get("decision")
        if decision is not None and decision not in DECISIONS:
            raise InputError(
                f"decision must be one of {', '.join(DECISIONS)} (got "
                f"{decision[:40]!r})",
                errors=[{"pointer": "/decision", "detail": "unknown decision"}],
            )
        query = DecisionQuery(
            fingerprint=q.get("fingerprint"),
            rule=q.get("rule"),
            playbook=q.get("playbook"),
            decision=decision,
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
        known_params(request, "limit", "cursor")
        limit = _limit(request.query)
        before = _id_cursor(request.query)
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
        self, data: dict[str, object], *, execute: bool
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
        known_params(request, "status", "limit", "cursor")
        status = request.query.get("status")
        if status is not None and status not in APPROVAL_STATUSES:
            raise InputError(
                f"status must be one of {', '.join(APPROVAL_STATUSES)}",
                errors=[{"pointer": "/status", "detail": "unknown status"}],
            )
        limit = _limit(request.query)
        items = await self._store.approvals(
            status, limit=limit + 1, before=_id_cursor(request.query)
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
        """GET /readyz: rules loaded and the store reachable.

        On Redis, ``store_eviction`` says whether it may evict the receiver's
        keys, as it says now. That never makes the receiver not ready: out of
        its load balancer, the edge would turn webhooks away, not keep them safer.
        """
        rules = len(self._processor.rulebook.rules)
        store_ok = await self._store.ping()
        worker_ok = self._worker_ready is None or self._worker_ready()
        ready = bool(rules) and store_ok and worker_ok
        body: dict[str, object] = {
            "status": "ready" if ready else "not ready",
            "rules": rules,
            "store": "ok" if store_ok else "unreachable",
        }
        eviction = await self._store.eviction() if store_ok else None
        if eviction is not None:
            self._metrics.store_evicts(eviction.possible)
            body["store_eviction"] = eviction.to_json()
        if self._worker_ready is not None:
            body["worker"] = "ok" if worker_ok else "starting"
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text format."""
        count, oldest = await self._store.pending()
        self._metrics.journal_depth.set(count)
        age = (self._clock() - oldest).total_seconds() if oldest else 0.0
        self._metrics.journal_oldest_age.set(max(age, 0.0))
        eviction = await self._store.eviction()
        if eviction is not None:
            self._metrics.store_evicts(eviction.possible)
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
DECISIONS = tuple(d.value for d in Decision)
DECISION_PARAMS = (
    "fingerprint",
    "rule",
    "playbook",
    "decision",
    "payload_id",
    "since",
    "limit",
    "cursor",
)
# The payload and approval lists page by the id of the last record returned, a
# ``new_id``: 13 hex digits of milliseconds, then 12 random ones.
_ID_CURSOR = re.compile(r"[0-9a-f]{25}")


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


def _id_cursor(query: Mapping[str, str]) -> str | None:
    """The ``cursor`` of a list paged by id, as issued (a ``next_cursor``), or None.

    A cursor of any other shape was never issued: a 400, not an empty page. One
    shaped like an id but naming no record (pruned since) still ends the list:
    it cannot be told from one issued.
    """
    cursor = query.get("cursor") or None
    if cursor is not None and not _ID_CURSOR.fullmatch(cursor):
        raise InputError(
            f"cursor {cursor[:40]!r} is not a next_cursor this receiver issued; "
            "pass next_cursor from the previous page, or omit cursor for the "
            "newest page",
            errors=[
                {
                    "pointer": "/cursor",
                    "detail": "not a next_cursor this receiver issued",
                }
            ],
        )
    return cursor
