"""SQLite ``IncidentStore``: own tables, own connection, beside the SQLite store.

Opened on the same file as ``SqliteStore`` (``sqlite:///receiver.db``). The
service opens it with the store as its ``host``: its writes are calls of the
store writer's next transaction (group commit with the claims and done-marks,
one write lock and one fsync; measured: about a tenth less worker CPU per
payload than a connection of its own waiting for that lock between them), and
its reads go to the store's reader. Alone (no host, or in memory) it opens a
connection of its own and runs calls in ``asyncio.to_thread`` under a lock.
Either way each write is atomic, and reads (``get``, ``find``, ``find_first``,
``page``, ``watched``) are single statements outside a transaction, so they
never take the file's write lock the journal waits for.
A write returns the record it was given, with its ``seq``: nothing is read back.
Pending effects live in ``incident_effects`` (one row each: the incident, the
effect's JSON, when it is next claimable, attempts so far, whether a claim is
in flight and, if so, which process holds it), written in the write's
transaction; a file of an older receiver gets the table, empty, when it is
opened.
Bodies are encoded and decoded with msgspec (compact JSON, several times
cheaper than the json module for an incident's timeline and ledger).

``SqliteIncidentReader`` reads the same tables without writing to the file:
``receiver report``, which may be pointed at a live service's file or a copy.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from receiver.errors import InputError
from receiver.model import freeze
from receiver.store.incidents_base import (
    KEEP_MARKS,
    ClaimedEffect,
    IncidentQuery,
    IncidentRecord,
    Mark,
)
from receiver.store.side import Host, SideDatabase
from receiver.store.sqlite.reader import read_only

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    watch INTEGER NOT NULL,
    keys TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_watch ON incidents(watch);
CREATE TABLE IF NOT EXISTS incident_keys (
    key TEXT PRIMARY KEY, id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incident_numbers (
    day TEXT PRIMARY KEY, last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS incident_folded (
    payload_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (payload_id, fingerprint)
);
CREATE INDEX IF NOT EXISTS incident_folded_at ON incident_folded(at);
CREATE TABLE IF NOT EXISTS incident_effects (
    id TEXT PRIMARY KEY,
    incident TEXT NOT NULL,
    body TEXT NOT NULL,
    due REAL NOT NULL,
    attempts INTEGER NOT NULL,
    claimed INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS incident_effects_due ON incident_effects(due);
"""

LOOKUP_CHUNK = 500  # payload ids per lookup statement


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def _encode(value: object) -> str:
    return _ENCODER.encode(value).decode()


def _decode(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except msgspec.DecodeError:
        # Written by an older receiver with the json module (NaN, Infinity).
        return json.loads(text)


def _record(row: sqlite3.Row) -> IncidentRecord:
    return IncidentRecord(
        id=row["id"],
        keys=tuple(_decode(row["keys"])),
        state=row["state"],
        severity=row["severity"],
        opened_at=datetime.fromisoformat(row["opened_at"]),
        version=row["version"],
        watch=bool(row["watch"]),
        body=freeze(_decode(row["body"])),
        seq=row["seq"],
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Add the claim's holder to an effects table that lacks it ("": not known)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(incident_effects)")}
    if cols and "owner" not in cols:
        db.execute(
            "ALTER TABLE incident_effects ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
        )


def _stamp(ts: datetime) -> str:
    # Fixed width ISO (microseconds, UTC): compares correctly as text.
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


class SqliteIncidentStore:
    """Incidents in SQLite.

    ``reclaim``: this process decides for the store's one instance (as the
    SQLite store's ``reclaims``): ``reclaim_effects`` may make effects a
    previous such process had claimed due at once. Its claims are marked with
    a token of its own; the claims of a process that does not decide (an edge
    beside a live worker), or of this one, are never taken over that way:
    they are alive, or lapse with their lease.
    """

    def __init__(
        self,
        path: str,
        *,
        keep_marks: timedelta = KEEP_MARKS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        reclaim: bool = False,
        host: Host | None = None,
    ) -> None:
        self.path = path
        self._side = SideDatabase(
            path, SCHEMA, "incident store", rows=True, migrate=_migrate, host=host
        )
        self._run = self._side.run
        self._keep_marks = keep_marks.total_seconds()
        self._clock = clock
        self._reclaim = reclaim
        # Who holds a claim: "" for a process that does not decide.
        self._owner = uuid.uuid4().hex if reclaim else ""

    def _pend(self, db: sqlite3.Connection, record: IncidentRecord) -> None:
        """Write the record's effects in the caller's transaction, claimed."""
        if record.effects:
            db.executemany(
                "INSERT OR REPLACE INTO incident_effects"
                "(id, incident, body, due, attempts, claimed, owner) "
                "VALUES (?, ?, ?, ?, 1, 1, ?)",
                [
                    (e.id, record.id, e.body, e.until.timestamp(), self._owner)
                    for e in record.effects
                ],
            )

    @staticmethod
    def _done(db: sqlite3.Connection, done: Sequence[ClaimedEffect]) -> None:
        db.executemany(
            "DELETE FROM incident_effects WHERE id = ? AND attempts = ?",
            [(e.id, e.attempts) for e in done],
        )

    async def claim_effects(  # noqa: D102
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[ClaimedEffect]:
        def run(db: sqlite3.Connection) -> list[ClaimedEffect]:
            rows = db.execute(
                "SELECT id, incident, body, attempts FROM incident_effects "
                "WHERE due <= ? ORDER BY due, rowid LIMIT ?",
                (now.timestamp(), limit),
            ).fetchall()
            db.executemany(
                "UPDATE incident_effects SET due = ?, attempts = attempts + 1, "
                "claimed = 1, owner = ? WHERE id = ?",
                [((now + lease).timestamp(), self._owner, r["id"]) for r in rows],
            )
            return [
                ClaimedEffect(r["id"], r["incident"], r["body"], r["attempts"] + 1)
                for r in rows
            ]

        return await self._run(run)

    async def renew_effect(self, effect: ClaimedEffect, until: datetime) -> bool:  # noqa: D102
        def run(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE incident_effects SET due = ? "
                    "WHERE id = ? AND attempts = ? AND claimed = 1",
                    (until.timestamp(), effect.id, effect.attempts),
                ).rowcount
                == 1
            )

        return await self._run(run)

    async def retry_effect(self, effect: ClaimedEffect, due: datetime) -> bool:  # noqa: D102
        def run(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE incident_effects SET due = ?, claimed = 0 "
                    "WHERE id = ? AND attempts = ?",
                    (due.timestamp(), effect.id, effect.attempts),
                ).rowcount
                == 1
            )

        return await self._run(run)

    async def finish_effects(self, effects: Sequence[ClaimedEffect]) -> None:  # noqa: D102
        if effects:
            await self._run(lambda db: self._done(db, effects))

    async def reclaim_effects(self, now: datetime) -> int:  # noqa: D102
        if not self._reclaim:
            return 0

        def run(db: sqlite3.Connection) -> int:
            # Claimed by an earlier deciding process and never finished nor
            # handed back: it is gone. Its claim still counts as an attempt.
            # This process's own claims and an edge's ("") are alive.
            return int(
                db.execute(
                    "UPDATE incident_effects SET due = ?, claimed = 0 "
                    "WHERE claimed = 1 AND owner NOT IN ('', ?)",
                    (now.timestamp(), self._owner),
                ).rowcount
            )

        return await self._run(run)

    def _mark(self, db: sqlite3.Connection, folded: Sequence[Mark], now: float) -> None:
        """Write ``folded`` in the caller's transaction; forget the old ones.

        A mark written again is kept from its last writing; marks older than
        ``keep_marks`` go at the next write.
        """
        if not folded:
            return
        db.executemany(
            "INSERT OR REPLACE INTO incident_folded(payload_id, fingerprint, at) "
            "VALUES (?, ?, ?)",
            [(payload, fingerprint, now) for payload, fingerprint in folded],
        )
        db.execute(
            "DELETE FROM incident_folded WHERE at < ?", (now - self._keep_marks,)
        )

    def _now(self) -> float:
        return self._clock().timestamp()

    async def mark_folded(self, folded: Sequence[Mark]) -> None:  # noqa: D102
        if folded:
            now = self._now()
            await self._run(lambda db: self._mark(db, folded, now))

    async def folded(self, marks: Sequence[Mark]) -> set[Mark]:  # noqa: D102
        wanted = set(marks)
        payloads = sorted({payload for payload, _ in wanted})
        if not payloads:
            return set()

        def run(db: sqlite3.Connection) -> set[Mark]:
            found: set[Mark] = set()
            for at in range(0, len(payloads), LOOKUP_CHUNK):
                chunk = payloads[at : at + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))  # placeholders only
                rows = db.execute(
                    "SELECT payload_id, fingerprint FROM incident_folded "  # noqa: S608
                    f"WHERE payload_id IN ({marks})",
                    chunk,
                ).fetchall()
                found.update((r[0], r[1]) for r in rows)
            return found & wanted

        return await self._run(run, write=False)

    async def next_number(self, day: str) -> int:  # noqa: D102
        def run(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO incident_numbers(day, last) VALUES (?, 1) "
                "ON CONFLICT(day) DO UPDATE SET last = last + 1",
                (day,),
            )
            row = db.execute(
                "SELECT last FROM incident_numbers WHERE day = ?", (day,)
            ).fetchone()
            return int(row[0])

        return await self._run(run)

    @staticmethod
    def _values(record: IncidentRecord) -> tuple[object, ...]:
        return (
            record.state,
            record.severity,
            _stamp(record.opened_at),
            record.version,
            int(record.watch),
            _encode(list(record.keys)),
            _encode(dict(record.body)),
        )

    async def create_numbered(  # noqa: D102
        self,
        day: str,
        build: Callable[[int], IncidentRecord],
        folded: Sequence[Mark] = (),
    ) -> IncidentRecord | None:
        now = self._now()

        def run(db: sqlite3.Connection) -> IncidentRecord | None:
            row = db.execute(
                "SELECT last FROM incident_numbers WHERE day = ?", (day,)
            ).fetchone()
            number = (int(row[0]) if row else 0) + 1
            created = self._insert(db, build(number), folded, now)
            if created is not None:
                db.execute(
                    "INSERT INTO incident_numbers(day, last) VALUES (?, ?) "
                    "ON CONFLICT(day) DO UPDATE SET last = excluded.last",
                    (day, number),
                )
            return created

        return await self._run(run)

    async def create(  # noqa: D102
        self, record: IncidentRecord, folded: Sequence[Mark] = ()
    ) -> IncidentRecord | None:
        now = self._now()
        return await self._run(lambda db: self._insert(db, record, folded, now))

    def _insert(
        self,
        db: sqlite3.Connection,
        record: IncidentRecord,
        folded: Sequence[Mark],
        now: float,
    ) -> IncidentRecord | None:
        if db.execute("SELECT 1 FROM incidents WHERE id = ?", (record.id,)).fetchone():
            return None
        if record.active:
            for key in record.keys:
                if db.execute(
                    "SELECT 1 FROM incident_keys WHERE key = ?", (key,)
                ).fetchone():
                    return None
        cur = db.execute(
            "INSERT INTO incidents(id, state, severity, opened_at, version, "
            "watch, keys, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, *self._values(record)),
        )
        if record.active:
            db.executemany(
                "INSERT INTO incident_keys(key, id) VALUES (?, ?)",
                [(k, record.id) for k in record.keys],
            )
        seq = cur.lastrowid or 0
        self._mark(db, folded, now)
        self._pend(db, record)
        return replace(record, seq=seq, effects=())

    async def update(  # noqa: D102
        self,
        record: IncidentRecord,
        folded: Sequence[Mark] = (),
        *,
        done: Sequence[ClaimedEffect] = (),
    ) -> IncidentRecord | None:
        now = self._now()

        def run(db: sqlite3.Connection) -> IncidentRecord | None:
            row = db.execute(
                "SELECT version, seq FROM incidents WHERE id = ?", (record.id,)
            ).fetchone()
            if row is None or row["version"] != record.version - 1:
                return None
            if record.active:
                for key in record.keys:
                    held = db.execute(
                        "SELECT id FROM incident_keys WHERE key = ?", (key,)
                    ).fetchone()
                    if held is not None and held[0] != record.id:
                        return None
            db.execute("DELETE FROM incident_keys WHERE id = ?", (record.id,))
            if record.active:
                db.executemany(
                    "INSERT INTO incident_keys(key, id) VALUES (?, ?)",
                    [(k, record.id) for k in record.keys],
                )
            db.execute(
                "UPDATE incidents SET state = ?, severity = ?, opened_at = ?, "
                "version = ?, watch = ?, keys = ?, body = ? WHERE id = ?",
                (*self._values(record), record.id),
            )
            self._mark(db, folded, now)
            self._done(db, done)
            self._pend(db, record)
            return replace(record, seq=row["seq"], effects=())

        return await self._run(run)

    async def get(self, incident_id: str) -> IncidentRecord | None:  # noqa: D102
        def run(db: sqlite3.Connection) -> IncidentRecord | None:
            row = db.execute(
                "SELECT * FROM incidents WHERE id = ?", (incident_id,)
            ).fetchone()
            return _record(row) if row else None

        return await self._run(run, write=False)

    async def find(self, key: str) -> IncidentRecord | None:  # noqa: D102
        return await self.find_first([key])

    async def find_first(self, keys: Sequence[str]) -> IncidentRecord | None:  # noqa: D102
        def run(db: sqlite3.Connection) -> IncidentRecord | None:
            for key in keys:
                row = db.execute(
                    "SELECT i.* FROM incident_keys k JOIN incidents i "
                    "ON i.id = k.id WHERE k.key = ?",
                    (key,),
                ).fetchone()
                if row is not None:
                    return _record(row)
            return None

        # One thread hop for every key.
        return await self._run(run, write=False)

    async def page(  # noqa: D102
        self, query: IncidentQuery
    ) -> tuple[list[IncidentRecord], int | None]:
        def run(db: sqlite3.Connection) -> tuple[list[IncidentRecord], int | None]:
            where, args = ["1 = 1"], []  # type: tuple[list[str], list[object]]
            if query.state is not None:
                where.append("state = ?")
                args.append(query.state)
            if query.severity is not None:
                where.append("severity = ?")
                args.append(query.severity)
            if query.since is not None:
                where.append("opened_at >= ?")
                args.append(_stamp(query.since))
            if query.before is not None:
                where.append("seq < ?")
                args.append(query.before)
            rows = db.execute(
                f"SELECT * FROM incidents WHERE {' AND '.join(where)} "  # noqa: S608 (fixed fragments, values bound)
                "ORDER BY seq DESC LIMIT ?",
                (*args, query.limit + 1),
            ).fetchall()
            records = [_record(r) for r in rows[: query.limit]]
            more = len(rows) > query.limit
            return records, records[-1].seq if more and records else None

        return await self._run(run, write=False)

    async def watched(self) -> list[str]:  # noqa: D102
        def run(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT id FROM incidents WHERE watch = 1 ORDER BY seq"
            ).fetchall()
            return [r[0] for r in rows]

        return await self._run(run, write=False)

    async def close(self) -> None:  # noqa: D102
        await self._side.close()


class SqliteIncidentReader:
    """The incidents of the store file ``path``; writes nothing (``IncidentReader``).

    ``SqliteIncidentStore`` writes as it opens: it turns the file to WAL mode
    (creating ``-wal`` and ``-shm`` beside it) and runs the schema, which
    creates what a file of an older receiver lacks. This reads through the
    backtest's ``read_only`` instead. A file without the incident tables holds
    no incidents.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def get(self, incident_id: str) -> IncidentRecord | None:  # noqa: D102
        def run(db: sqlite3.Connection) -> IncidentRecord | None:
            if not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='incidents'"
            ).fetchone():
                return None
            row = db.execute(
                "SELECT * FROM incidents WHERE id = ?", (incident_id,)
            ).fetchone()
            return _record(row) if row else None

        try:
            return await asyncio.to_thread(read_only, self.path, run)
        except (sqlite3.DatabaseError, ValueError) as exc:
            # Past the check that it is a store: a damaged file, or a record
            # this receiver cannot read.
            msg = (
                f"{self.path}: the incident {incident_id!r} cannot be read from "
                f"this store file ({exc}); is it damaged? (sqlite3 {self.path} "
                "'PRAGMA integrity_check' tells)"
            )
            raise InputError(msg) from exc

    async def close(self) -> None:
        """Nothing to release: each read opens and closes its own connection."""
