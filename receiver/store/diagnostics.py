"""Diagnostic results kept for reuse across processes and restarts.

``receiver.engine.reuse.DiagnosticsReuse`` keeps what a diagnostic found for an
unchanged alert occurrence; without a shared place every process (the worker
child, a restarted receiver, each replica) ran the diagnostics again. These
caches sit beside the main store, like the incident store:

- SQLite: table ``diagnostics_reuse`` in the same file, a connection of its own
  (calls in ``asyncio.to_thread`` under a lock). Rows past their window are
  deleted when a new one is written (an index on ``until``).
- Redis: ``P:diagnostic:{key}`` holding ``{"at": ..., "trace": ...}``, with a
  Redis TTL of the window to collect it. Whether a result is still fresh is
  decided by the caller on its own clock (``at`` is the caller's time). Results
  are written behind (``RedisDiagnosticsCache``), not waited for.

The key is a sha256 of the occurrence and the alert's content, so a changed
alert is simply another key. A cache that cannot be reached raises
``StoreUnavailableError``; the caller treats that as "not cached".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import redis.asyncio
import redis.exceptions
import structlog

from receiver.errors import StoreUnavailableError
from receiver.store.side import SideDatabase
from receiver.store.sqlite import SqliteStore

T = TypeVar("T")

log = structlog.get_logger("receiver.store")

CLOSE_WAIT = 5.0  # seconds ``close`` waits for results not yet written

SCHEMA = """
CREATE TABLE IF NOT EXISTS diagnostics_reuse (
    key TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    until TEXT NOT NULL,
    trace TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS diagnostics_reuse_until ON diagnostics_reuse(until);
"""


class DiagnosticsCache(Protocol):
    """Where diagnostic results wait for a resend of the same occurrence."""

    async def recall(self, key: str) -> tuple[datetime, str] | None:
        """When the result under ``key`` was taken and its JSON, or None."""
        ...

    async def remember(
        self, key: str, at: datetime, trace: str, window: timedelta
    ) -> None:
        """Keep ``trace`` (JSON) taken ``at`` for ``window``."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


def _stamp(ts: datetime) -> str:
    # Fixed width ISO (microseconds, UTC): compares correctly as text.
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


class SqliteDiagnosticsCache:
    """Diagnostic results in SQLite, beside the SQLite store."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._side = SideDatabase(path, SCHEMA, "diagnostics cache")
        self._run = self._side.run

    async def recall(self, key: str) -> tuple[datetime, str] | None:  # noqa: D102
        def run(db: sqlite3.Connection) -> tuple[datetime, str] | None:
            row = db.execute(
                "SELECT at, trace FROM diagnostics_reuse WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else (datetime.fromisoformat(row[0]), row[1])

        return await self._run(run, write=False)

    async def remember(  # noqa: D102
        self, key: str, at: datetime, trace: str, window: timedelta
    ) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM diagnostics_reuse WHERE until < ?", (_stamp(at),))
            db.execute(
                "INSERT INTO diagnostics_reuse(key, at, until, trace) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "at = excluded.at, until = excluded.until, trace = excluded.trace",
                (key, _stamp(at), _stamp(at + window), trace),
            )

        await self._run(run)

    async def close(self) -> None:  # noqa: D102
        await self._side.close()


class RedisDiagnosticsCache:
    """Diagnostic results in Redis, shared by replicas.

    ``remember`` does not wait for Redis: the result is written behind, in one
    pipeline for whatever was remembered meanwhile, so a decision does not wait
    one more round trip for a cache. Until written, this instance's ``recall``
    answers from what it holds; other processes see it once written, and
    ``close`` writes what is left first. A write that fails is logged and
    dropped (a resend then runs the diagnostic again).
    """

    def __init__(self, url: str, prefix: str = "receiver") -> None:
        self._redis = redis.asyncio.Redis.from_url(url)
        self._prefix = prefix
        self._unwritten: dict[str, tuple[str, int]] = {}  # key -> (value, ttl ms)
        self._writer: asyncio.Task[None] | None = None

    def _key(self, key: str) -> str:
        return f"{self._prefix}:diagnostic:{key}"

    async def recall(self, key: str) -> tuple[datetime, str] | None:  # noqa: D102
        held = self._unwritten.get(self._key(key))
        if held is not None:
            raw: bytes | str | None = held[0]
        else:
            try:
                raw = await self._redis.get(self._key(key))
            except redis.exceptions.RedisError as exc:
                msg = f"Redis diagnostics cache: {type(exc).__name__}"
                raise StoreUnavailableError(msg) from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
            return datetime.fromisoformat(value["at"]), str(value["trace"])
        except (ValueError, KeyError, TypeError):
            return None  # not ours or damaged: run the diagnostic again

    async def remember(  # noqa: D102
        self, key: str, at: datetime, trace: str, window: timedelta
    ) -> None:
        value = json.dumps({"at": _stamp(at), "trace": trace})
        ttl = max(int(window.total_seconds() * 1000), 1)
        self._unwritten[self._key(key)] = (value, ttl)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="diagnostics-cache")

    async def _write(self) -> None:
        while self._unwritten:
            batch = dict(self._unwritten)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for name, (value, ttl) in batch.items():
                        pipe.set(name, value, px=ttl)
                    await pipe.execute()
            except redis.exceptions.RedisError as exc:
                log.warning(
                    "diagnostics_cache_unreachable",
                    error=f"Redis diagnostics cache: {type(exc).__name__}",
                    dropped=len(batch),
                )
            for name, held in batch.items():
                if self._unwritten.get(name) is held:
                    del self._unwritten[name]

    async def close(self) -> None:  # noqa: D102
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await self._writer
        await self._redis.aclose()


def cache_beside(store: object, url: str) -> DiagnosticsCache:
    """The diagnostics cache beside the main store (same file or same Redis)."""
    path = store.path if isinstance(store, SqliteStore) else None
    if path is not None:
        return SqliteDiagnosticsCache(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisDiagnosticsCache(url)
    return SqliteDiagnosticsCache(":memory:")


def cache_at(url: str) -> DiagnosticsCache:
    """The diagnostics cache for a store URL (``sqlite:///PATH`` or Redis)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisDiagnosticsCache(url)
    path = url.removeprefix("sqlite://")
    if path in ("", ":memory:", "/:memory:"):
        return SqliteDiagnosticsCache(":memory:")
    return SqliteDiagnosticsCache(path.removeprefix("/") or "receiver.db")
