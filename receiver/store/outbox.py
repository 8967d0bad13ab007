"""The sink outbox beside the main store (``receiver.sinks.outbox``).

Deliveries to sinks wait here until they are done, so a restart, a crash or a
backlog never loses one:

- SQLite: tables ``sink_outbox`` (one row per delivery: trace JSON, sinks,
  attempts, when it is next due, why it was parked), ``sink_outbox_done`` (the
  sinks finished per row) and ``sink_outbox_seen`` (duplicate keys and the row
  that owns them) in the same file, a connection of their own.
- Redis: ``P:outbox:row:{id}`` (hash), ``P:outbox:done:{id}`` (hash),
  ``P:outbox:due`` (sorted set of row ids by due time, in milliseconds),
  ``P:outbox:parked`` (hash id -> reason), ``P:outbox:seen:{key}`` (owner, with
  a Redis TTL).

A claim pushes the row's due time one lease ahead: a worker that dies with it
leaves it to be claimed again when the lease lapses. Each claim is numbered: a
holder whose lease lapsed (and whose row someone else claimed since) can no
longer hand it back, renew or park it, so it cannot move the new holder's
lease or set its delivery aside. On SQLite, one instance
alone, the process that decides hands every claimed row back when it starts
(``reclaim``), as it does the journal's claims: a delivery a killed worker was
making goes out as soon as its successor runs, not a lease later. Unreachable
storage raises ``StoreUnavailableError``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions

from receiver.errors import StoreUnavailableError
from receiver.store.side import SideDatabase
from receiver.store.sqlite import SqliteStore

T = TypeVar("T")


@dataclass(frozen=True)
class OutboxRow:
    """One delivery claimed from the outbox (``receiver.sinks.outbox.OutboxRow``)."""

    id: str
    owner: str
    trace: str
    sinks: tuple[str, ...]
    done: dict[str, str]
    attempts: int
    # Which claim of the row this is (counted from 1, never reset): handing the
    # row back, renewing or parking it acts only while it is still this claim.
    claim: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class ParkedRow(OutboxRow):
    """A delivery set aside (``receiver.sinks.outbox.ParkedDelivery``)."""

    reason: str


SCHEMA = """
CREATE TABLE IF NOT EXISTS sink_outbox (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    trace TEXT NOT NULL,
    sinks TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due TEXT NOT NULL,
    parked TEXT NOT NULL DEFAULT '',
    claimed INTEGER NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sink_outbox_due ON sink_outbox(parked, due);
CREATE TABLE IF NOT EXISTS sink_outbox_done (
    id TEXT NOT NULL,
    sink TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (id, sink)
);
CREATE TABLE IF NOT EXISTS sink_outbox_seen (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sink_outbox_seen_until ON sink_outbox_seen(until);
"""


def _stamp(ts: datetime) -> str:
    # Fixed width ISO (microseconds, UTC): compares correctly as text.
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a file of an older version lacks."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(sink_outbox)")}
    for col in ("claimed", "claims"):
        if cols and col not in cols:
            db.execute(
                f"ALTER TABLE sink_outbox ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0"
            )


class SqliteOutbox:
    """The outbox in SQLite, beside the SQLite store.

    ``reclaim``: this process decides for the store's one instance (the store
    was opened to take a previous process's claims over), so ``reclaim`` may
    hand back rows claimed before it started: whoever claimed them is gone.
    """

    def __init__(self, path: str, *, reclaim: bool = False) -> None:
        self.path = path
        self._reclaim = reclaim
        self._side = SideDatabase(path, SCHEMA, "sink outbox", migrate=_migrate)
        self._run = self._side.run

    async def put(  # noqa: D102
        self, rows: Sequence[tuple[str, str, str, Sequence[str]]], now: datetime
    ) -> int:
        def run(db: sqlite3.Connection) -> int:
            added = 0
            for row_id, owner, trace, sinks in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO sink_outbox(id, owner, trace, sinks, due) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (row_id, owner, trace, json.dumps(list(sinks)), _stamp(now)),
                )
                added += cur.rowcount
            return added

        return await self._run(run)

    async def claim(self, now: datetime, lease: timedelta) -> OutboxRow | None:  # noqa: D102
        def run(db: sqlite3.Connection) -> OutboxRow | None:
            row = db.execute(
                "SELECT id, owner, trace, sinks, attempts, claims FROM sink_outbox "
                "WHERE parked = '' AND due <= ? ORDER BY due, id LIMIT 1",
                (_stamp(now),),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE sink_outbox SET due = ?, attempts = attempts + 1, "
                "claimed = 1, claims = claims + 1 WHERE id = ?",
                (_stamp(now + lease), row[0]),
            )
            done = dict(
                db.execute(
                    "SELECT sink, outcome FROM sink_outbox_done WHERE id = ?",
                    (row[0],),
                ).fetchall()
            )
            return OutboxRow(
                row[0],
                row[1],
                row[2],
                tuple(json.loads(row[3])),
                done,
                row[4] + 1,
                claim=row[5] + 1,
            )

        return await self._run(run)

    async def progress(self, row_id: str, sink: str, outcome: str) -> None:  # noqa: D102
        def run(db: sqlite3.Connection) -> None:
            # Not for a row already gone (finished by whoever claimed it after
            # this holder's lease lapsed): nothing would ever delete it.
            db.execute(
                "INSERT OR REPLACE INTO sink_outbox_done(id, sink, outcome) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM sink_outbox WHERE id = ?)",
                (row_id, sink, outcome, row_id),
            )

        await self._run(run)

    async def finish(self, row_id: str) -> None:  # noqa: D102
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM sink_outbox WHERE id = ?", (row_id,))
            db.execute("DELETE FROM sink_outbox_done WHERE id = ?", (row_id,))

        await self._run(run)

    async def release(  # noqa: D102
        self, row_id: str, due: datetime, *, claim: int | None = None
    ) -> bool:
        # These three act only while the row is still the caller's claim
        # (``claim`` None: regardless).
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE sink_outbox SET due = ?, claimed = 0 WHERE id = ? "
                "AND (? IS NULL OR claims = ?)",
                (_stamp(due), row_id, claim, claim),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def park(  # noqa: D102
        self, row_id: str, reason: str, *, claim: int | None = None
    ) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE sink_outbox SET parked = ?, claimed = 0 WHERE id = ? "
                "AND (? IS NULL OR claims = ?)",
                (reason or "parked", row_id, claim, claim),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def extend(  # noqa: D102
        self, row_id: str, until: datetime, *, claim: int | None = None
    ) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE sink_outbox SET due = ? "
                "WHERE id = ? AND claimed = 1 AND parked = '' "
                "AND (? IS NULL OR claims = ?)",
                (_stamp(until), row_id, claim, claim),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def reclaim(self, now: datetime) -> int:  # noqa: D102
        if not self._reclaim:
            return 0

        def run(db: sqlite3.Connection) -> int:
            # Still claimed: neither delivered, handed back nor parked by the
            # process that claimed it, which is gone. Its claim still counts
            # as an attempt (a delivery that kills the worker ends parked).
            return int(
                db.execute(
                    "UPDATE sink_outbox SET due = ?, claimed = 0 "
                    "WHERE claimed = 1 AND parked = ''",
                    (_stamp(now),),
                ).rowcount
            )

        return await self._run(run)

    async def parked(self, limit: int) -> list[ParkedRow]:  # noqa: D102
        def run(db: sqlite3.Connection) -> list[ParkedRow]:
            rows = db.execute(
                "SELECT id, owner, trace, sinks, attempts, parked FROM sink_outbox "
                "WHERE parked != '' ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                ParkedRow(
                    row_id,
                    owner,
                    trace,
                    tuple(json.loads(sinks)),
                    dict(
                        db.execute(
                            "SELECT sink, outcome FROM sink_outbox_done WHERE id = ?",
                            (row_id,),
                        ).fetchall()
                    ),
                    attempts,
                    reason,
                )
                for row_id, owner, trace, sinks, attempts, reason in rows
            ]

        return await self._run(run, write=False)

    async def retry_parked(self, row_id: str, now: datetime) -> bool:  # noqa: D102
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE sink_outbox SET parked = '', attempts = 0, due = ?, "
                "claimed = 0 WHERE id = ? AND parked != ''",
                (_stamp(now), row_id),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def counts(self) -> tuple[int, int]:  # noqa: D102
        def run(db: sqlite3.Connection) -> tuple[int, int]:
            pending, parked = db.execute(
                "SELECT COALESCE(SUM(parked = ''), 0), COALESCE(SUM(parked != ''), 0) "
                "FROM sink_outbox"
            ).fetchone()
            return int(pending), int(parked)

        return await self._run(run)

    async def mark(self, key: str, owner: str, ttl: timedelta, now: datetime) -> bool:  # noqa: D102
        def run(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM sink_outbox_seen WHERE until < ?", (_stamp(now),))
            row = db.execute(
                "SELECT owner FROM sink_outbox_seen WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                return bool(row[0] == owner)
            db.execute(
                "INSERT INTO sink_outbox_seen(key, owner, until) VALUES (?, ?, ?)",
                (key, owner, _stamp(now + ttl)),
            )
            return True

        return await self._run(run)

    async def close(self) -> None:  # noqa: D102
        await self._side.close()


# Claim the first due row: push it a lease ahead, count the attempt, and read
# it and its finished sinks in the same step (read afterwards, another holder
# could have deleted it meanwhile).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #ids == 0 then return false end
local id = ids[1]
redis.call('ZADD', KEYS[1], ARGV[2], id)
local row = ARGV[3] .. id
if redis.call('EXISTS', row) == 0 then
  redis.call('ZREM', KEYS[1], id)
  return false
end
redis.call('HINCRBY', row, 'attempts', 1)
redis.call('HINCRBY', row, 'claims', 1)
return {id, redis.call('HGETALL', row), redis.call('HGETALL', ARGV[4] .. id)}
"""

# Move a row's due time (hand back, renew) only while it is the caller's claim
# (ARGV[3] = '' : regardless) and still due or in flight (not parked/finished);
# 1 if it was moved.
_MOVE = """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'claims') ~= ARGV[3] then
  return 0
end
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2])
return 1
"""

# Add a row unless it exists (due or parked): a repeat of a delivery is ignored.
_PUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'trace', ARGV[3], 'sinks', ARGV[4],
  'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
"""


# Note a sink's outcome, only while the row exists (a holder whose lease lapsed
# may note it after another finished the row: nothing would delete the hash).
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# Set a row aside, only while it exists (not one another holder finished) and
# is the caller's claim (ARGV[3] = '': regardless).
_PARK = """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'claims') ~= ARGV[3] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

# Back from parked: due now, attempts from zero (the row's hash must still exist).
_RETRY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A hash from the flat list ``HGETALL`` gives a script."""
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _fields(
    row_id: str, row: Mapping[Any, Any], done: Mapping[Any, Any]
) -> tuple[str, str, str, tuple[str, ...], dict[str, str], int]:
    """An ``OutboxRow``'s fields from a row's hash and its done hash (Redis)."""
    return (
        row_id,
        str(row["owner"]),
        str(row["trace"]),
        tuple(json.loads(row["sinks"])),
        {str(k): str(v) for k, v in done.items()},
        int(row["attempts"]),
    )


class RedisOutbox:
    """The outbox in Redis, shared by replicas."""

    def __init__(self, url: str, prefix: str = "receiver") -> None:
        self._redis = redis.asyncio.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._due = f"{prefix}:outbox:due"
        self._parked = f"{prefix}:outbox:parked"
        self._claim = self._redis.register_script(_CLAIM)
        self._put = self._redis.register_script(_PUT)
        self._retry = self._redis.register_script(_RETRY)
        self._progress = self._redis.register_script(_PROGRESS)
        self._park = self._redis.register_script(_PARK)
        self._move = self._redis.register_script(_MOVE)

    def _row(self, row_id: str) -> str:
        return f"{self._prefix}:outbox:row:{row_id}"

    def _done(self, row_id: str) -> str:
        return f"{self._prefix}:outbox:done:{row_id}"

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except redis.exceptions.RedisError as exc:
            msg = f"Redis sink outbox: {type(exc).__name__}"
            raise StoreUnavailableError(msg) from exc

    async def put(  # noqa: D102
        self, rows: Sequence[tuple[str, str, str, Sequence[str]]], now: datetime
    ) -> int:
        added = 0
        for row_id, owner, trace, sinks in rows:
            args: list[str | int] = [
                row_id,
                owner,
                trace,
                json.dumps(list(sinks)),
                _ms(now),
            ]

            async def one(row_id: str = row_id, args: list[str | int] = args) -> int:
                return int(
                    await self._put(keys=[self._row(row_id), self._due], args=args)
                )

            added += await self._call(one)
        return added

    async def claim(self, now: datetime, lease: timedelta) -> OutboxRow | None:  # noqa: D102
        async def run() -> OutboxRow | None:
            got = await self._claim(
                keys=[self._due],
                args=[
                    _ms(now),
                    _ms(now + lease),
                    f"{self._prefix}:outbox:row:",
                    f"{self._prefix}:outbox:done:",
                ],
            )
            if not got:
                return None
            row_id, row, done = got
            fields = _pairs(row)
            return OutboxRow(
                *_fields(str(row_id), fields, _pairs(done)),
                claim=int(fields["claims"]),
            )

        result: OutboxRow | None = await self._call(run)
        return result

    async def progress(self, row_id: str, sink: str, outcome: str) -> None:  # noqa: D102
        async def run() -> None:
            await self._progress(
                keys=[self._row(row_id), self._done(row_id)], args=[sink, outcome]
            )

        await self._call(run)

    async def finish(self, row_id: str) -> None:  # noqa: D102
        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._due, row_id)
                pipe.delete(self._row(row_id), self._done(row_id))
                # Parked meanwhile by whoever claimed it after this holder's
                # lease lapsed: gone now, so no longer counted as parked.
                pipe.hdel(self._parked, row_id)
                await pipe.execute()

        await self._call(run)

    async def _move_due(self, row_id: str, due: datetime, claim: int | None) -> bool:
        async def run() -> bool:
            return bool(
                await self._move(
                    keys=[self._due, self._row(row_id)],
                    args=[_ms(due), row_id, "" if claim is None else str(claim)],
                )
            )

        return await self._call(run)

    async def release(  # noqa: D102
        self, row_id: str, due: datetime, *, claim: int | None = None
    ) -> bool:
        return await self._move_due(row_id, due, claim)

    async def park(  # noqa: D102
        self, row_id: str, reason: str, *, claim: int | None = None
    ) -> bool:
        async def run() -> bool:
            return bool(
                await self._park(
                    keys=[self._row(row_id), self._due, self._parked],
                    args=[
                        row_id,
                        reason or "parked",
                        "" if claim is None else str(claim),
                    ],
                )
            )

        return await self._call(run)

    async def extend(  # noqa: D102
        self, row_id: str, until: datetime, *, claim: int | None = None
    ) -> bool:
        # Only while it is in the due set: not once finished or parked. (A row
        # handed back for a backoff is, but its delivery has stopped renewing.)
        return await self._move_due(row_id, until, claim)

    async def reclaim(self, now: datetime) -> int:  # noqa: D102, ARG002 (nothing to do)
        # Replicas share the outbox: a row another replica claimed may be on
        # its way. A claim a dead replica held lapses with its lease.
        return 0

    async def parked(self, limit: int) -> list[ParkedRow]:  # noqa: D102
        async def run() -> list[ParkedRow]:
            # Parked rows are few (each was logged at error): read them all.
            reasons = {
                str(k): str(v)
                for k, v in (await self._redis.hgetall(self._parked)).items()
            }
            ids = sorted(reasons, reverse=True)[:limit]
            async with self._redis.pipeline(transaction=False) as pipe:
                for row_id in ids:
                    pipe.hgetall(self._row(row_id))
                    pipe.hgetall(self._done(row_id))
                got = await pipe.execute()
            out = []
            for row_id, row, done in zip(ids, got[::2], got[1::2], strict=True):
                if not row:  # finished or gone meanwhile
                    continue
                out.append(ParkedRow(*_fields(row_id, row, done), reasons[row_id]))
            return out

        result: list[ParkedRow] = await self._call(run)
        return result

    async def retry_parked(self, row_id: str, now: datetime) -> bool:  # noqa: D102
        async def run() -> int:
            return int(
                await self._retry(
                    keys=[self._parked, self._due, self._row(row_id)],
                    args=[row_id, _ms(now)],
                )
            )

        return bool(await self._call(run))

    async def counts(self) -> tuple[int, int]:  # noqa: D102
        async def run() -> tuple[int, int]:
            return int(await self._redis.zcard(self._due)), int(
                await self._redis.hlen(self._parked)
            )

        result: tuple[int, int] = await self._call(run)
        return result

    async def mark(self, key: str, owner: str, ttl: timedelta, now: datetime) -> bool:  # noqa: D102, ARG002 (Redis keeps the TTL)
        name = f"{self._prefix}:outbox:seen:{key}"
        px = max(int(ttl.total_seconds() * 1000), 1)

        async def run() -> bool:
            if await self._redis.set(name, owner, nx=True, px=px):
                return True
            return bool(await self._redis.get(name) == owner)

        result: bool = await self._call(run)
        return result

    async def close(self) -> None:  # noqa: D102
        await self._redis.aclose()


def outbox_beside(store: object, url: str) -> SqliteOutbox | RedisOutbox:
    """The outbox beside the main store (same file or same Redis)."""
    if isinstance(store, SqliteStore):
        return SqliteOutbox(store.path, reclaim=store.reclaims)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisOutbox(url)
    return SqliteOutbox(":memory:")
