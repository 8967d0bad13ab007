"""SQLite store: the embedded default, durable in one file, for one instance.

WAL journal mode with ``synchronous=FULL``: a payload is on disk before the 202.
One connection guarded by a lock and driven through ``asyncio.to_thread``, with
group commit: calls that arrive while a transaction is on its way to disk wait,
then run together in the next one, each in its own savepoint (so each stays
atomic and fails alone), and every caller hears back only after that COMMIT.
Under load one fsync then serves many requests instead of one. Being
single-instance, opening the store hands entries a previous (crashed) process had
claimed back to the queue at once; within a process, claims older than the lease
are reclaimed too. Several replicas need the Redis store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from receiver.errors import InputError, StoreUnavailableError
from receiver.model import iso
from receiver.store.base import (
    AlertState,
    Approval,
    BudgetSlot,
    Circuit,
    Claim,
    ClaimOutcome,
    DecisionPage,
    DecisionQuery,
    JournalEntry,
    KeyStatus,
    Lease,
    Lock,
    ParkedEntry,
    Pause,
    Retention,
    newer_state,
)

T = TypeVar("T")
_Call = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    consumer TEXT,
    claimed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at TEXT,
    lease_until REAL,
    last_error TEXT NOT NULL DEFAULT '',
    parked_at TEXT
);
CREATE INDEX IF NOT EXISTS journal_state ON journal(state, id);
-- (state, rowid): the next entry to claim, in arrival order, without a sort
CREATE INDEX IF NOT EXISTS journal_queue ON journal(state);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_fp ON decisions(fingerprint, seq);
CREATE INDEX IF NOT EXISTS decisions_payload ON decisions(payload_id);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions(decided_at);
-- What the API filters on inside a record (rule, playbook, step decision), one
-- row per distinct value, kept by triggers so no writer has to know.
CREATE TABLE IF NOT EXISTS decision_index (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (kind, value, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS decision_index_seq ON decision_index(seq);
CREATE TRIGGER IF NOT EXISTS decisions_tag AFTER INSERT ON decisions BEGIN
{TAG_INSERTS}
END;
CREATE TRIGGER IF NOT EXISTS decisions_untag AFTER DELETE ON decisions BEGIN
    DELETE FROM decision_index WHERE seq = OLD.seq;
END;
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    starts_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    expires_at REAL NOT NULL,
    intent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS claims_owner ON claims(owner, status);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS locks_owner ON locks(owner);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS last_run (
    scope TEXT PRIMARY KEY, at TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS incarnations (
    id TEXT PRIMARY KEY, alive_until REAL NOT NULL, stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS budget_scope ON budget(scope, at);
CREATE TABLE IF NOT EXISTS circuit (
    scope TEXT PRIMARY KEY, failures INTEGER NOT NULL, opened_at TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT NOT NULL DEFAULT '',
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS approvals_listed ON approvals(created_at, id);
CREATE INDEX IF NOT EXISTS approvals_expiry ON approvals(status, expires_at);
"""


def _tag_inserts(record: str, seq: str) -> str:
    """SQL filing a record's rules, playbooks and step decisions under ``seq``."""
    # A record SQLite cannot parse (NaN) is filed under nothing, never refused.
    doc = f"CASE WHEN json_valid({record}) THEN {record} ELSE '{{}}' END"
    matches = f"json_each({doc}, '$.matches') AS m"
    insert = "INSERT OR IGNORE INTO decision_index (kind, value, seq)"
    rule = (
        f"{insert} SELECT 'rule', json_extract(m.value, '$.rule'), {seq} "  # noqa: S608 (fixed fragments)
        f"FROM {matches} WHERE json_type(m.value, '$.rule') = 'text';"
    )
    playbook = (
        f"{insert} SELECT 'playbook', json_extract(m.value, '$.playbook'), {seq} "  # noqa: S608
        f"FROM {matches} WHERE json_type(m.value, '$.playbook') = 'text';"
    )
    decision = (
        f"{insert} SELECT 'decision', json_extract(st.value, '$.decision'), {seq} "  # noqa: S608
        f"FROM {matches}, json_each(m.value, '$.steps') AS st "
        "WHERE json_type(st.value, '$.decision') = 'text';"
    )
    return f"{rule}\n{playbook}\n{decision}"


SCHEMA = SCHEMA.replace("{TAG_INSERTS}", _tag_inserts("NEW.record", "NEW.seq"))
# Bumped when an index must be filled for rows written before it existed.
SCHEMA_VERSION = 1
TAG_KINDS = ("rule", "playbook", "decision")
# Fingerprints per read of alert_state (under SQLite's bound on parameters).
STATE_READ_CHUNK = 500


def _decision_sql(query: DecisionQuery) -> tuple[str, list[Any]]:
    """The SQL for one page of ``query``: every filter on an index."""
    joins: list[str] = []
    where: list[str] = []
    args: list[Any] = []
    order = "d.seq"
    for kind in TAG_KINDS:
        value = getattr(query, kind)
        if value:
            alias = f"t_{kind}"
            joins.append(
                f"JOIN decision_index {alias} ON {alias}.seq = d.seq "
                f"AND {alias}.kind = '{kind}' AND {alias}.value = ?"
            )
            args.append(value)
            if order == "d.seq":
                order = f"{alias}.seq"  # walk the first tag's index, newest first
    if query.fingerprint:
        where.append("d.fingerprint = ?")
        args.append(query.fingerprint)
    if query.payload_id:
        where.append("d.payload_id = ?")
        args.append(query.payload_id)
    if query.since:
        since = iso(query.since) or ""
        # Walk only from the first record decided since then (an index search),
        # not the whole log newest first.
        where.append(
            "d.decided_at >= ? AND d.seq >= "
            "(SELECT coalesce(min(seq), 1 << 62) FROM decisions "
            "INDEXED BY decisions_time WHERE decided_at >= ?)"
        )
        args += [since, since]
    if query.cursor is not None:
        if not query.cursor.isdigit() or len(query.cursor) > 18:
            raise InputError(
                f"cursor {query.cursor[:40]!r} is not one this receiver issued; "
                "pass next_cursor from the previous page"
            )
        where.append(f"{order} < ?")
        args.append(int(query.cursor))
    sql = (
        f"SELECT d.seq, d.record FROM decisions d {' '.join(joins)} "  # noqa: S608 (fixed fragments)
        f"WHERE {' AND '.join(where) or '1=1'} ORDER BY {order} DESC LIMIT ?"
    )
    args.append(query.limit + 1)
    return sql, args


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _epoch(value: datetime) -> float:
    return value.timestamp()


class SqliteStore:
    """The SQLite ``Store``."""

    def __init__(
        self, path: str, *, retention: Retention | None = None, reclaim: bool = True
    ) -> None:
        self.path = path
        self.retention = retention or Retention()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.executescript(SCHEMA)
        self._fill_indexes()
        # Single instance: whatever a previous process had claimed is ours now.
        # Only the process that decides (not an edge beside a live worker
        # process, ``reclaim=False``) may hand claims back.
        if reclaim:
            self._db.execute(
                "UPDATE journal SET state='pending', consumer=NULL, "
                "lease_until=NULL WHERE state='claimed'"
            )
        self._lock = threading.Lock()
        self._wakeup = asyncio.Event()
        # Group commit: calls queued while a batch is in its transaction.
        self._queue: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None
        # API reads go through their own connection and thread (WAL lets them
        # run beside the writer), so a slow query never delays a 202. An
        # in-memory database cannot be shared: it reads through the writer.
        self._reader: sqlite3.Connection | None = None
        self._read_thread: concurrent.futures.ThreadPoolExecutor | None = None
        if path != ":memory:":
            self._reader = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA query_only=1")
            self._read_thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sqlite-read"
            )

    def _fill_indexes(self) -> None:
        """Fill indexes added after rows were written (once per schema version)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        with contextlib.closing(self._db.cursor()) as cur:
            cur.executescript(
                "BEGIN IMMEDIATE;\nDELETE FROM decision_index;\n"
                + "\n".join(
                    stmt.replace(" FROM json_each(", " FROM decisions AS d, json_each(")
                    for stmt in _tag_inserts("d.record", "d.seq").split("\n")
                )
                + f"\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;"
            )

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the read connection (or the writer's, in memory)."""
        if self._reader is None or self._read_thread is None:
            return await self._run(fn)
        reader = self._reader
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._read_thread, fn, reader)
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def _migrate(self) -> None:
        """Add the columns a store file written by an older version lacks."""
        for table, columns in (
            (
                "journal",
                (
                    ("lease_until", "REAL"),
                    ("last_error", "TEXT NOT NULL DEFAULT ''"),
                    ("parked_at", "TEXT"),
                ),
            ),
            ("claims", (("intent", "TEXT NOT NULL DEFAULT ''"),)),
            ("incarnations", (("stopped", "INTEGER NOT NULL DEFAULT 0"),)),
        ):
            cols = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if not cols:
                continue
            for name, kind in columns:
                if name not in cols:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailableError:
        error = StoreUnavailableError(
            f"SQLite store {self.path} cannot be written: {exc}"
        )
        error.__cause__ = exc
        return error

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._flusher is not None and self._flusher.get_loop() is not loop:
            # The store moved to another event loop (tests do this): whatever
            # was queued on the old one can never be answered.
            self._queue, self._flusher = [], None
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        result: T = await future
        return result

    async def _flush(self) -> None:
        """Run queued calls, a batch per transaction, until the queue is empty."""
        while self._queue:
            batch = [c for c in self._queue if not c[1].cancelled()]
            self._queue = []
            if not batch:
                continue
            try:
                outcomes = await asyncio.to_thread(
                    self._transaction, [fn for fn, _ in batch]
                )
            except BaseException as exc:  # cancelled, or the thread failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _transaction(
        self, fns: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        """One transaction for the batch; results only once committed.

        Optimistic: the calls run one after another with no savepoint each (two
        statements fewer per call). Only if one of them fails is the
        transaction rolled back and the batch run again, each call in its own
        savepoint, so the failing call rolls back alone and gets its own error
        while the others stand. Every call is a function of the database alone,
        so running it again is running it once.
        """
        db = self._db
        with self._lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                outcomes, failure = self._all_or_nothing(fns)
                if failure is not None:
                    self._abort()
                    if len(fns) == 1:
                        return [(False, self._error_of(failure))]
                    db.execute("BEGIN IMMEDIATE")
                    outcomes = [self._in_savepoint(fn) for fn in fns]
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # BEGIN, a savepoint or COMMIT failed: nothing of the batch stands.
                self._abort()
                error = self._unavailable(exc)
                return [(False, error) for _ in fns]
            except BaseException:
                self._abort()
                raise
        return outcomes

    def _all_or_nothing(
        self, fns: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> tuple[list[tuple[bool, Any]], Exception | None]:
        """Run every call in the open transaction, up to the first that fails."""
        outcomes: list[tuple[bool, Any]] = []
        for fn in fns:
            try:
                outcomes.append((True, self._call(fn)))
            except Exception as exc:  # noqa: BLE001 (the batch runs again, or the caller gets it)
                return outcomes, exc
        return outcomes, None

    def _error_of(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.OperationalError):
            return self._unavailable(exc)
        return exc

    def _in_savepoint(
        self, fn: Callable[[sqlite3.Connection], Any]
    ) -> tuple[bool, Any]:
        db = self._db
        db.execute("SAVEPOINT call")
        try:
            value = self._call(fn)
        except Exception as exc:  # noqa: BLE001 (handed to its caller)
            db.execute("ROLLBACK TO call")
            db.execute("RELEASE call")
            return (False, self._error_of(exc))
        db.execute("RELEASE call")
        return (True, value)

    def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        value = fn(self._db)
        if isinstance(value, sqlite3.Cursor):
            # Closed here, under the lock (its rowcount stays readable): a
            # cursor let go of on the event loop's thread resets its cached
            # statement there, racing the next transaction (SQLITE_MISUSE in
            # bulk).
            value.close()
        return value

    def _abort(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    # -- journal ------------------------------------------------------------

    async def append(  # noqa: D102
        self, entry: JournalEntry, states: Sequence[AlertState]
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO journal (id, source, received_at, body, headers) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    entry.id,
                    entry.source,
                    entry.received_at.isoformat(),
                    entry.body,
                    json.dumps(dict(entry.headers)),
                ),
            )
            if states:
                self._put_states(db, states)

        await self._run(write)
        self._wakeup.set()

    @classmethod
    def _put_states(cls, db: sqlite3.Connection, states: Sequence[AlertState]) -> None:
        """Keep each alert's newest state: one read and one write per payload.

        The same outcome as comparing and writing the states one by one, in
        order (a later state of the same alert is compared with the earlier).
        """
        latest: dict[str, AlertState | None] = {}
        fingerprints = list(dict.fromkeys(s.fingerprint for s in states))
        for start in range(0, len(fingerprints), STATE_READ_CHUNK):
            chunk = fingerprints[start : start + STATE_READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                f"SELECT * FROM alert_state WHERE fingerprint IN ({marks})",  # noqa: S608 (placeholders only)
                chunk,
            ):
                latest[row["fingerprint"]] = cls._state_of(row)
        changed: dict[str, AlertState] = {}
        for state in states:
            if newer_state(latest.get(state.fingerprint), state):
                latest[state.fingerprint] = changed[state.fingerprint] = state
        db.executemany(
            "INSERT OR REPLACE INTO alert_state VALUES (?, ?, ?, ?)",
            [
                (
                    s.fingerprint,
                    s.status,
                    s.starts_at.isoformat() if s.starts_at else None,
                    s.updated_at.isoformat(),
                )
                for s in changed.values()
            ],
        )

    @classmethod
    def _state(cls, db: sqlite3.Connection, fingerprint: str) -> AlertState | None:
        row = db.execute(
            "SELECT * FROM alert_state WHERE fingerprint=?", (fingerprint,)
        ).fetchone()
        return None if row is None else cls._state_of(row)

    @staticmethod
    def _state_of(row: sqlite3.Row) -> AlertState:
        return AlertState(
            row["fingerprint"],
            row["status"],
            _ts(row["starts_at"]),
            datetime.fromisoformat(row["updated_at"]),
        )

    async def alert_state(self, fingerprint: str) -> AlertState | None:  # noqa: D102
        return await self._run(lambda db: self._state(db, fingerprint))

    @staticmethod
    def _entry(row: sqlite3.Row) -> JournalEntry:
        return JournalEntry(
            id=row["id"],
            source=row["source"],
            received_at=datetime.fromisoformat(row["received_at"]),
            body=bytes(row["body"]),
            headers=json.loads(row["headers"]),
            attempts=row["attempts"],
        )

    async def claim(  # noqa: D102
        self, consumer: str, wait: float, now: datetime
    ) -> Lease | None:
        deadline = time.monotonic() + wait
        lease = self.retention.lease
        until = now + lease

        def take(db: sqlite3.Connection) -> JournalEntry | None:
            # The earlier of (first pending, first lapsed lease), each one
            # search of journal_queue: an OR here sorted the whole backlog.
            row = db.execute(
                "UPDATE journal SET state='claimed', consumer=?, claimed_at=?, "
                "lease_until=?, attempts=attempts+1 WHERE rowid = (SELECT r FROM ("
                "SELECT r FROM (SELECT rowid AS r FROM journal WHERE "
                "state='pending' ORDER BY rowid LIMIT 1) UNION ALL "
                "SELECT r FROM (SELECT rowid AS r FROM journal WHERE "
                "state='claimed' AND lease_until < ? ORDER BY rowid LIMIT 1)"
                ") ORDER BY r LIMIT 1) RETURNING *",
                (consumer, _epoch(now), _epoch(until), _epoch(now)),
            ).fetchone()
            return self._entry(row) if row is not None else None

        while True:
            self._wakeup.clear()
            entry = await self._run(take)
            if entry is not None:
                return Lease(entry, consumer, until)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), min(remaining, 0.25))

    async def renew(self, lease: Lease, now: datetime) -> Lease | None:  # noqa: D102
        until = now + self.retention.lease

        def write(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE journal SET lease_until=? WHERE id=? AND state='claimed' "
                "AND consumer=?",
                (_epoch(until), lease.entry.id, lease.consumer),
            )
            return cur.rowcount == 1

        renewed = await self._run(write)
        return Lease(lease.entry, lease.consumer, until) if renewed else None

    async def release(  # noqa: D102
        self, lease: Lease, now: datetime, error: str
    ) -> None:
        del now
        await self._run(
            lambda db: db.execute(
                "UPDATE journal SET state='pending', consumer=NULL, lease_until=NULL, "
                "last_error=? WHERE id=? AND state='claimed' AND consumer=?",
                (error[:2000], lease.entry.id, lease.consumer),
            )
        )
        self._wakeup.set()

    async def park(  # noqa: D102
        self, lease: Lease, reason: str, now: datetime
    ) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE journal SET state='parked', consumer=NULL, lease_until=NULL, "
                "last_error=?, parked_at=? WHERE id=? AND state IN "
                "('claimed', 'pending')",
                (reason[:2000], now.isoformat(), lease.entry.id),
            )
        )

    async def parked(self, limit: int = 100) -> list[ParkedEntry]:  # noqa: D102
        def read(db: sqlite3.Connection) -> list[ParkedEntry]:
            rows = db.execute(
                "SELECT * FROM journal WHERE state='parked' ORDER BY parked_at DESC, "
                "rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                ParkedEntry(
                    self._entry(r),
                    r["last_error"],
                    datetime.fromisoformat(r["parked_at"]),
                )
                for r in rows
            ]

        return await self._run(read)

    async def parked_count(self) -> int:  # noqa: D102
        return int(
            await self._run(
                lambda db: db.execute(
                    "SELECT count(*) FROM journal WHERE state='parked'"
                ).fetchone()[0]
            )
        )

    async def retry_parked(self, entry_id: str, now: datetime) -> bool:  # noqa: D102
        del now
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE journal SET state='pending', attempts=0, parked_at=NULL "
                "WHERE id=? AND state='parked'",
                (entry_id,),
            )
        )
        self._wakeup.set()
        return bool(cur.rowcount == 1)

    async def complete(  # noqa: D102
        self, entry_id: str, traces: Sequence[Mapping[str, Any]]
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            done = datetime.now(UTC).isoformat()  # bookkeeping only, never compared
            row = db.execute(
                "SELECT state FROM journal WHERE id=?", (entry_id,)
            ).fetchone()
            if row is not None and row[0] == "done":
                return  # completed by another worker after a lease ran out
            db.executemany(
                "INSERT INTO decisions (payload_id, fingerprint, decided_at, record) "
                "VALUES (?, ?, ?, ?)",
                # A generator: a storm's records are encoded one at a time,
                # never all held at once.
                (
                    (
                        entry_id,
                        str(t.get("fingerprint", "")),
                        str(t.get("decided_at", "")),
                        json.dumps(t),
                    )
                    for t in traces
                ),
            )
            db.execute(
                "UPDATE journal SET state='done', done_at=?, lease_until=NULL "
                "WHERE id=?",
                (done, entry_id),
            )

        await self._run(write)

    async def record(self, records: Sequence[Mapping[str, Any]]) -> None:  # noqa: D102
        rows = [
            (
                str(r.get("payload_id", "")),
                str(r.get("fingerprint", "")),
                str(r.get("decided_at", "")),
                json.dumps(r),
            )
            for r in records
        ]
        await self._run(
            lambda db: db.executemany(
                "INSERT INTO decisions (payload_id, fingerprint, decided_at, record) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )
        )

    async def payload(self, entry_id: str) -> JournalEntry | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> JournalEntry | None:
            row = db.execute("SELECT * FROM journal WHERE id=?", (entry_id,)).fetchone()
            return self._entry(row) if row is not None else None

        return await self._run(read)

    async def payloads(  # noqa: D102
        self, limit: int = 100, *, before: str | None = None
    ) -> list[JournalEntry]:
        def read(db: sqlite3.Connection) -> list[JournalEntry]:
            if before is None:
                rows = db.execute(
                    "SELECT * FROM journal ORDER BY rowid DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM journal WHERE rowid < (SELECT rowid FROM journal "
                    "WHERE id=?) ORDER BY rowid DESC LIMIT ?",
                    (before, limit),
                ).fetchall()
            return [self._entry(r) for r in rows]

        return await self._read(read)

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:  # noqa: D102
        return (await self.decision_page(query)).items()

    async def decision_page(self, query: DecisionQuery) -> DecisionPage:  # noqa: D102
        sql, args = _decision_sql(query)

        def read(db: sqlite3.Connection) -> DecisionPage:
            rows = db.execute(sql, args).fetchall()
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            return DecisionPage(
                [r[1] for r in rows], str(rows[-1][0]) if more and rows else None
            )

        return await self._read(read)

    async def pending(self) -> tuple[int, datetime | None]:  # noqa: D102
        def read(db: sqlite3.Connection) -> tuple[int, datetime | None]:
            row = db.execute(
                "SELECT count(*), min(received_at) FROM journal "
                "WHERE state IN ('pending', 'claimed')"
            ).fetchone()
            return int(row[0]), _ts(row[1])

        return await self._run(read)

    async def prune(self, now: datetime) -> int:  # noqa: D102
        keep = self.retention

        def write(db: sqlite3.Connection) -> int:
            cutoff = (now - keep.max_age).isoformat()
            dropped = db.execute(
                "DELETE FROM journal WHERE state='done' AND (received_at < ? OR id IN "
                "(SELECT id FROM journal WHERE state='done' ORDER BY id DESC "
                "LIMIT -1 OFFSET ?))",
                (cutoff, keep.max_payloads),
            ).rowcount
            dropped += db.execute(
                "DELETE FROM decisions WHERE decided_at < ? OR seq IN (SELECT seq FROM "
                "decisions ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                (iso(now - keep.max_age), keep.max_decisions),
            ).rowcount
            at = _epoch(now)
            for table in ("claims", "locks", "last_run"):
                db.execute(f"DELETE FROM {table} WHERE expires_at < ?", (at,))  # noqa: S608
            db.execute("DELETE FROM seen WHERE expires_at < ?", (at,))
            db.execute("DELETE FROM incarnations WHERE alive_until < ?", (at - 86400,))
            db.execute(
                "DELETE FROM budget WHERE at < ?",
                (_epoch(now) - 31 * 86400,),
            )
            db.execute(
                "DELETE FROM approvals WHERE status != 'pending' AND created_at < ?",
                (cutoff,),
            )
            return int(dropped)

        return await self._run(write)

    # -- delivery ids -------------------------------------------------------

    async def seen(self, key: str, ttl: timedelta, now: datetime) -> bool:  # noqa: D102
        at = _epoch(now)

        def write(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM seen WHERE key=? AND expires_at < ?", (key, at))
            cur = db.execute(
                "INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, _epoch(now + ttl))
            )
            return cur.rowcount == 0

        return await self._run(write)

    # -- incarnations ---------------------------------------------------------

    @staticmethod
    def _dead(db: sqlite3.Connection, owner: str, now: float) -> bool:
        """Whether ``owner`` is an incarnation that was not alive at ``now``."""
        row = db.execute(
            "SELECT alive_until FROM incarnations WHERE id=?", (owner,)
        ).fetchone()
        return row is not None and row[0] < now

    @staticmethod
    def _stopped(db: sqlite3.Connection, owner: str) -> bool:
        """Whether ``owner`` said it stopped, or a new incarnation declared it."""
        row = db.execute(
            "SELECT stopped FROM incarnations WHERE id=?", (owner,)
        ).fetchone()
        return row is not None and bool(row[0])

    async def register(  # noqa: D102
        self, incarnation: str, now: datetime, ttl: timedelta
    ) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO incarnations (id, alive_until, stopped) "
                "VALUES (?, ?, 0)",
                (incarnation, _epoch(now + ttl)),
            )
        )

    async def retire(self, incarnation: str, now: datetime) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO incarnations (id, alive_until, stopped) "
                "VALUES (?, ?, 1)",
                (incarnation, _epoch(now) - 1),
            )
        )

    async def recover(self, incarnation: str, now: datetime) -> list[str]:  # noqa: D102
        dead_at = _epoch(now) - 1

        def write(db: sqlite3.Connection) -> list[str]:
            # One instance: every other owner of a lock or an unfinished claim
            # is a previous (crashed or stopped) incarnation.
            db.execute(
                "INSERT OR REPLACE INTO incarnations (id, alive_until, stopped) "
                "SELECT DISTINCT owner, ?, 1 FROM (SELECT owner FROM locks UNION "
                "SELECT owner FROM claims WHERE status IN ('running', 'sending')) "
                "WHERE owner != ?",
                (dead_at, incarnation),
            )
            db.execute(
                "UPDATE incarnations SET alive_until=MIN(alive_until, ?), stopped=1 "
                "WHERE id != ?",
                (dead_at, incarnation),
            )
            rows = db.execute(
                "DELETE FROM locks WHERE owner != ? RETURNING name", (incarnation,)
            ).fetchall()
            return sorted(str(r[0]) for r in rows)

        return await self._run(write)

    # -- run-once keys ----------------------------------------------------------

    @staticmethod
    def _claim(row: sqlite3.Row) -> Claim:
        return Claim(
            row["key"],
            row["owner"],
            row["status"],
            datetime.fromisoformat(row["at"]),
            row["detail"],
            datetime.fromtimestamp(row["expires_at"], UTC),
            row["intent"],
        )

    async def claim_key(  # noqa: D102
        self, key: str, owner: str, now: datetime, ttl: timedelta
    ) -> ClaimOutcome:
        at = _epoch(now)

        def write(db: sqlite3.Connection) -> ClaimOutcome:
            row = db.execute("SELECT * FROM claims WHERE key=?", (key,)).fetchone()
            recovered = None
            if row is not None:
                existing = self._claim(row)
                # Our own incarnation is alive (it is asking): a claim it holds
                # is another task's in flight, never an orphan, even if its
                # heartbeat lapsed under load.
                orphan = (
                    existing.owner != owner
                    and existing.status in ("running", "sending")
                    and self._dead(db, existing.owner, at)
                )
                if row["expires_at"] >= at and not orphan:
                    return ClaimOutcome(won=False, holder=existing)
                recovered = existing if orphan else None
            # A taken-over "sending" mark stays (with its intent): should this
            # holder die too before it settles it, the next one re-checks it
            # again instead of reading "nothing was sent" and sending twice.
            sent = recovered is not None and recovered.status == "sending"
            status: KeyStatus = "sending" if sent else "running"
            intent = recovered.intent if recovered is not None and sent else ""
            mine = Claim(key, owner, status, now, "", now + ttl, intent)
            db.execute(
                "INSERT OR REPLACE INTO claims (key, owner, status, at, detail, "
                "expires_at, intent) VALUES (?, ?, ?, ?, '', ?, ?)",
                (key, owner, status, now.isoformat(), _epoch(now + ttl), intent),
            )
            stopped = recovered is not None and self._stopped(db, recovered.owner)
            return ClaimOutcome(
                won=True, holder=mine, recovered=recovered, stopped=stopped
            )

        return await self._run(write)

    async def mark_sending(  # noqa: D102
        self, key: str, owner: str, now: datetime, intent: str = ""
    ) -> bool:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE claims SET status='sending', at=?, intent=? WHERE key=? "
                "AND owner=? AND status IN ('running', 'sending')",
                (now.isoformat(), intent, key, owner),
            )
        )
        return bool(cur.rowcount == 1)

    async def finish_key(  # noqa: D102
        self,
        key: str,
        owner: str,
        status: Literal["done", "failed"],
        detail: str,
        now: datetime,
    ) -> bool:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE claims SET status=?, detail=?, at=? WHERE key=? AND owner=? "
                "AND status IN ('running', 'sending')",
                (status, detail[:500], now.isoformat(), key, owner),
            )
        )
        return bool(cur.rowcount == 1)

    async def release_key(self, key: str, owner: str) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "DELETE FROM claims WHERE key=? AND owner=? AND status='running'",
                (key, owner),
            )
        )

    # -- guards -------------------------------------------------------------

    async def acquire_lock(  # noqa: D102
        self, name: str, owner: str, now: datetime, ttl: timedelta
    ) -> Lock | None:
        at = _epoch(now)

        def write(db: sqlite3.Connection) -> Lock | None:
            row = db.execute(
                "SELECT owner, expires_at FROM locks WHERE name=?", (name,)
            ).fetchone()
            # Never dead to itself: a lock of the asking incarnation is held by
            # another of its tasks, even if its heartbeat lapsed under load.
            dead = row is not None and row[0] != owner and self._dead(db, row[0], at)
            if row is not None and row[1] >= at and not dead:
                return None
            db.execute("DELETE FROM locks WHERE name=?", (name,))
            token = db.execute(
                "INSERT INTO counters VALUES ('fence', 1) ON CONFLICT(name) DO UPDATE "
                "SET value=value+1 RETURNING value"
            ).fetchone()[0]
            db.execute(
                "INSERT INTO locks VALUES (?, ?, ?, ?)",
                (name, owner, token, _epoch(now + ttl)),
            )
            return Lock(name, owner, int(token), now + ttl)

        return await self._run(write)

    async def renew_lock(  # noqa: D102
        self, lock: Lock, now: datetime, ttl: timedelta
    ) -> Lock | None:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE locks SET expires_at=? WHERE name=? AND token=?",
                (_epoch(now + ttl), lock.name, lock.token),
            )
        )
        if cur.rowcount != 1:
            return None
        return Lock(lock.name, lock.owner, lock.token, now + ttl)

    async def lock_holder(self, name: str, now: datetime) -> str | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT owner FROM locks WHERE name=? AND expires_at >= ?",
                (name, _epoch(now)),
            ).fetchone()
            return str(row[0]) if row else None

        return await self._run(read)

    async def release_lock(self, lock: Lock) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "DELETE FROM locks WHERE name=? AND token=?", (lock.name, lock.token)
            )
        )

    async def last_run(self, scope: str, now: datetime) -> datetime | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> datetime | None:
            row = db.execute(
                "SELECT at FROM last_run WHERE scope=? AND expires_at >= ?",
                (scope, _epoch(now)),
            ).fetchone()
            return _ts(row[0]) if row else None

        return await self._run(read)

    async def set_last_run(  # noqa: D102
        self, scope: str, at: datetime, ttl: timedelta
    ) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO last_run VALUES (?, ?, ?)",
                (scope, at.isoformat(), _epoch(at + ttl)),
            )
        )

    async def reserve_budget(  # noqa: D102
        self, scope: str, limit: int, window: timedelta, now: datetime
    ) -> BudgetSlot | None:
        def write(db: sqlite3.Connection) -> BudgetSlot | None:
            start = _epoch(now - window)
            used = db.execute(
                "SELECT count(*) FROM budget WHERE scope=? AND at > ? AND at <= ?",
                (scope, start, _epoch(now)),
            ).fetchone()[0]
            if used >= limit:
                return None
            slot = db.execute(
                "INSERT INTO budget (scope, at) VALUES (?, ?) RETURNING id",
                (scope, _epoch(now)),
            ).fetchone()[0]
            return BudgetSlot(scope, str(slot), now, int(used) + 1)

        return await self._run(write)

    async def release_budget(self, slot: BudgetSlot) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "DELETE FROM budget WHERE id=? AND scope=?",
                (int(slot.slot), slot.scope),
            )
        )

    async def circuit(self, scope: str) -> Circuit:  # noqa: D102
        def read(db: sqlite3.Connection) -> Circuit:
            row = db.execute("SELECT * FROM circuit WHERE scope=?", (scope,)).fetchone()
            if row is None:
                return Circuit()
            return Circuit(row["failures"], _ts(row["opened_at"]))

        return await self._run(read)

    async def record_outcome(  # noqa: D102
        self, scope: str, ok: bool, threshold: int, now: datetime
    ) -> Circuit:
        def write(db: sqlite3.Connection) -> Circuit:
            if ok:
                db.execute(
                    "INSERT OR REPLACE INTO circuit VALUES (?, 0, NULL)", (scope,)
                )
                return Circuit()
            row = db.execute("SELECT * FROM circuit WHERE scope=?", (scope,)).fetchone()
            failures = (row["failures"] if row else 0) + 1
            opened = _ts(row["opened_at"]) if row else None
            if opened is None and failures >= threshold:
                opened = now
            db.execute(
                "INSERT OR REPLACE INTO circuit VALUES (?, ?, ?)",
                (scope, failures, opened.isoformat() if opened else None),
            )
            return Circuit(failures, opened)

        return await self._run(write)

    async def reset_circuit(self, scope: str) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute("DELETE FROM circuit WHERE scope=?", (scope,))
        )

    async def pause(self) -> Pause | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> Pause | None:
            row = db.execute("SELECT value FROM settings WHERE name='pause'").fetchone()
            if row is None:
                return None
            data = json.loads(row[0])
            return Pause(data["by"], datetime.fromisoformat(data["at"]), data["reason"])

        return await self._run(read)

    async def set_pause(self, pause: Pause | None) -> None:  # noqa: D102
        if pause is None:
            await self._run(
                lambda db: db.execute("DELETE FROM settings WHERE name='pause'")
            )
            return
        value = json.dumps(
            {"by": pause.by, "at": pause.at.isoformat(), "reason": pause.reason}
        )
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO settings VALUES ('pause', ?)", (value,)
            )
        )

    # -- approvals ----------------------------------------------------------

    @staticmethod
    def _approval(row: sqlite3.Row) -> Approval:
        return Approval(
            id=row["id"],
            key=row["key"],
            created_at=datetime.fromisoformat(row["created_at"]),
            expires_at=datetime.fromisoformat(row["expires_at"]),
            request=json.loads(row["request"]),
            status=row["status"],
            decided_by=row["decided_by"],
            decided_at=_ts(row["decided_at"]),
        )

    async def put_approval(self, approval: Approval) -> Approval:  # noqa: D102
        def write(db: sqlite3.Connection) -> Approval:
            db.execute(
                "INSERT OR IGNORE INTO approvals (id, key, created_at, expires_at, "
                "request, status) VALUES (?, ?, ?, ?, ?, 'pending')",
                (
                    approval.id,
                    approval.key,
                    approval.created_at.isoformat(),
                    approval.expires_at.isoformat(),
                    json.dumps(dict(approval.request)),
                ),
            )
            row = db.execute(
                "SELECT * FROM approvals WHERE key=?", (approval.key,)
            ).fetchone()
            return self._approval(row)

        return await self._run(write)

    async def get_approval(self, approval_id: str) -> Approval | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> Approval | None:
            row = db.execute(
                "SELECT * FROM approvals WHERE id=?", (approval_id,)
            ).fetchone()
            return self._approval(row) if row else None

        return await self._run(read)

    async def decide_approval(  # noqa: D102
        self,
        approval_id: str,
        status: Literal["approved", "rejected", "expired"],
        by: str,
        now: datetime,
    ) -> Approval | None:
        def write(db: sqlite3.Connection) -> Approval | None:
            row = db.execute(
                "UPDATE approvals SET status=?, decided_by=?, decided_at=? "
                "WHERE id=? AND status='pending' RETURNING *",
                (status, by, now.isoformat(), approval_id),
            ).fetchone()
            return self._approval(row) if row else None

        return await self._run(write)

    async def approvals(  # noqa: D102
        self,
        status: str | None = None,
        *,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Approval]:
        where, args = ["1=1"], []
        if status:
            where.append("status=?")
            args.append(status)
        if before is not None:
            where.append(
                "(created_at, id) < (SELECT created_at, id FROM approvals WHERE id=?)"
            )
            args.append(before)
        sql = (
            f"SELECT * FROM approvals WHERE {' AND '.join(where)} "  # noqa: S608 (fixed fragments)
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )

        def read(db: sqlite3.Connection) -> list[Approval]:
            rows = db.execute(sql, (*args, limit)).fetchall()
            return [self._approval(r) for r in rows]

        return await self._read(read)

    async def expire_approvals(self, now: datetime) -> int:  # noqa: D102
        def write(db: sqlite3.Connection) -> int:
            return int(
                db.execute(
                    "UPDATE approvals SET status='expired', decided_by='receiver', "
                    "decided_at=? WHERE status='pending' AND expires_at <= ?",
                    (now.isoformat(), now.isoformat()),
                ).rowcount
            )

        return await self._run(write)

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> bool:  # noqa: D102
        try:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
        except StoreUnavailableError:
            return False
        return True

    async def close(self) -> None:  # noqa: D102
        def close() -> None:
            with self._lock:
                self._db.close()

        if self._read_thread is not None and self._reader is not None:
            reader = self._reader
            await asyncio.get_running_loop().run_in_executor(
                self._read_thread, reader.close
            )
            self._read_thread.shutdown(wait=False)
            self._reader, self._read_thread = None, None

        await asyncio.to_thread(close)
