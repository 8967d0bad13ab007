"""The SQLite store's files, their connections and group commit.

Two files (``SqliteFile`` each): the store's own, and the decision log beside it
(``DecisionLog``), so the worker recording decisions never holds the write lock
the edge journals under. WAL journal mode with ``synchronous=FULL``: a payload
is on disk before the 202. Per file, one writer connection guarded by a lock
and driven through ``asyncio.to_thread``, with
group commit: calls that arrive while a transaction is on its way to disk wait,
then run together in the next one (each in a savepoint of its own only if one
of them fails, so each stays atomic and fails alone), and every caller hears
back only after that COMMIT. Under load one fsync then serves many requests
instead of one. Being single-instance, opening the store hands entries a
previous (crashed) process had claimed back to the queue at once; within a
process, an entry whose lease ran out is taken again by the next claim. So a
transaction of claims alone need not wait for the disk (``_run``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

from receiver.errors import ConfigError, StoreUnavailableError
from receiver.store.base import Retention
from receiver.store.sqlite.schema import (
    COUNT_UNFINISHED,
    DECISION_SCHEMA,
    SCHEMA,
    SCHEMA_VERSION,
    _tag_inserts,
)

T = TypeVar("T")
# Seconds a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT = 30.0
# Its first and longest pause between tries (seconds). SQLite's own busy
# handler sleeps 1, 2, 5, 10, ... up to 100 ms between tries: an edge whose
# worker process was committing lost tens of milliseconds to a lock held for
# one fsync, and the two processes took turns badly.
BUSY_FIRST_PAUSE = 0.0001
BUSY_MAX_PAUSE = 0.001
_Fn = Callable[[sqlite3.Connection], object]
# A call's outcome: its value, or the exception its caller gets instead.
_Outcome = tuple[object, Exception | None]
# A queued call: its function, its future, and whether its commit must be on
# disk before it is answered (``_run``).
_Call = tuple[_Fn, "asyncio.Future[object]", bool]


class SqliteFile:
    """One database file: a writer connection with group commit, a reader beside it."""

    def __init__(self, path: str, schema: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30
            )
        except sqlite3.Error as exc:
            raise self._cannot_open(exc) from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._prepare()
            self._db.executescript(schema)
            self._opened()
            # From here on the writer waits for the lock itself (``_begin``).
            self._db.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error as exc:
            self._db.close()
            raise self._cannot_open(exc) from exc
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

    def _cannot_open(self, exc: sqlite3.Error) -> ConfigError:
        return ConfigError(
            f"the SQLite store cannot open {self.path}: {exc}; check that it is a "
            "database file this user can write, in a directory it can write"
        )

    def _prepare(self) -> None:
        """Before the schema is applied (a file of an older version: migrate)."""

    def _opened(self) -> None:
        """After the schema is applied, before the first transaction."""

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

    # ------------------------------------------------ concerns beside the store
    # The incident store keeps its tables in this file and writes through this
    # writer (``SideDatabase`` with a host): its writes join the store's group
    # commit instead of taking the file's write lock on a connection of their
    # own, and its reads go to the reader.

    async def add_tables(
        self, schema: str, before: Callable[[sqlite3.Connection], None] | None = None
    ) -> None:
        """Apply another concern's schema (``CREATE ... IF NOT EXISTS``) to this file.

        ``before``: run first (bringing that concern's older tables up to date).
        Waits for the write lock as a connection of its own would.
        """

        def run() -> None:
            with self._lock:
                db = self._db
                if db.in_transaction:
                    db.execute("ROLLBACK")  # as ``_begin``: left by a failed one
                db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
                try:
                    if before is not None:
                        before(db)
                    db.executescript(schema)
                finally:
                    db.execute("PRAGMA busy_timeout=0")

        try:
            await asyncio.to_thread(run)
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc) from exc

    async def write_beside(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in the writer's next transaction (group commit, on disk)."""
        return await self._run(fn)

    async def read_beside(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the read connection (the writer's, in memory)."""
        return await self._read(fn)

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailableError:
        error = StoreUnavailableError(
            f"SQLite store {self.path} cannot be written: {exc}"
        )
        error.__cause__ = exc
        return error

    async def _run(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> T:
        """Run ``fn`` in the next transaction; its value once that is committed.

        ``durable=False``: what ``fn`` writes may be lost to a power cut (never
        to a crash of the process) and costs nothing if it is, as a claim of
        the journal: opening the store hands every claim back. A transaction
        whose calls are all of that kind commits without waiting for the disk
        (``synchronous=NORMAL``), so the write lock the other process waits
        for is held for less; the next durable commit, of either process,
        puts it on disk with its own. One durable call makes the whole
        transaction durable.
        """
        # The future holds what ``fn`` returned: a T.
        return cast("T", await self._submit(fn, durable=durable))

    def _submit(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> asyncio.Future[object]:
        """Queue ``fn`` for the next transaction now; its future (see ``_run``).

        Calls queued one after another run in that order.
        """
        loop = asyncio.get_running_loop()
        if self._flusher is not None and self._flusher.get_loop() is not loop:
            # The store moved to another event loop (tests do this): whatever
            # was queued on the old one can never be answered.
            self._queue, self._flusher = [], None
        future: asyncio.Future[object] = loop.create_future()
        self._queue.append((fn, future, durable))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        """Run queued calls, a batch per transaction, until the queue is empty."""
        while self._queue:
            batch = [c for c in self._queue if not c[1].cancelled()]
            self._queue = []
            if not batch:
                continue
            try:
                outcomes = await asyncio.to_thread(
                    self._transaction,
                    [fn for fn, _, _ in batch],
                    durable=any(durable for _, _, durable in batch),
                )
            except BaseException as exc:  # cancelled, or the thread failed
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future, _), (value, error) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)

    def _transaction(
        self, fns: Sequence[_Fn], *, durable: bool = True
    ) -> list[_Outcome]:
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
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._begin()
                outcomes, failure = self._all_or_nothing(fns)
                if failure is not None:
                    self._abort()
                    if len(fns) == 1:
                        return [(None, self._error_of(failure))]
                    self._begin()
                    outcomes = [self._in_savepoint(fn) for fn in fns]
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # BEGIN, a savepoint or COMMIT failed: nothing of the batch stands.
                self._abort()
                error = self._unavailable(exc)
                return [(None, error) for _ in fns]
            except BaseException:
                self._abort()
                raise
            finally:
                if not durable:
                    db.execute("PRAGMA synchronous=FULL")
        return outcomes

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, trying again in short pauses while another process writes.

        The write lock is held for one transaction (one fsync) of the other
        process at a time; tries a tenth of a millisecond apart, growing to a
        millisecond, take it soon after it is free, for a few microseconds of
        CPU a try. ``database is locked`` only after ``BUSY_TIMEOUT``.
        """
        db = self._db
        if db.in_transaction:
            # Left open by a ROLLBACK that failed (``_abort``, a disk error):
            # rolled back now, or this batch fails as the store being down,
            # never every batch after it ("within a transaction").
            db.execute("ROLLBACK")
        pause, deadline = BUSY_FIRST_PAUSE, 0.0
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                deadline = deadline or now + BUSY_TIMEOUT
                if now >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, BUSY_MAX_PAUSE)
            else:
                return

    def _all_or_nothing(
        self, fns: Sequence[_Fn]
    ) -> tuple[list[_Outcome], Exception | None]:
        """Run every call in the open transaction, up to the first that fails."""
        outcomes: list[_Outcome] = []
        for fn in fns:
            try:
                outcomes.append((self._call(fn), None))
            except Exception as exc:  # noqa: BLE001 (the batch runs again, or the caller gets it)
                return outcomes, exc
        return outcomes, None

    def _error_of(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.OperationalError):
            return self._unavailable(exc)
        return exc

    def _in_savepoint(self, fn: _Fn) -> _Outcome:
        db = self._db
        db.execute("SAVEPOINT call")
        try:
            value = self._call(fn)
        except Exception as exc:  # noqa: BLE001 (handed to its caller)
            db.execute("ROLLBACK TO call")
            db.execute("RELEASE call")
            return (None, self._error_of(exc))
        db.execute("RELEASE call")
        return (value, None)

    def _call(self, fn: _Fn) -> object:
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


class DecisionLog(SqliteFile):
    """The decision log in a file of its own, beside the store's (``decisions_path``).

    Its own write lock: the worker records decisions without holding the lock
    the edge waits for to journal a payload.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, DECISION_SCHEMA)

    def _opened(self) -> None:
        self.fill_indexes()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in the log's next transaction (group commit), once committed."""
        return await self._run(fn)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        """``write``, queued now: awaited, what ``fn`` returned once committed.

        Writes submitted one after another run in that order.
        """
        return cast("Awaitable[T]", self._submit(fn))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the log's read connection."""
        return await self._read(fn)

    def fill_indexes(self, *, again: bool = False) -> None:
        """Fill the tag index from the records (once per schema version, or again)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION and not again:
            return
        # Opened, the writer waits for the lock in ``_begin``; this one script
        # waits in SQLite's own handler (another process may be filling too).
        (waits,) = self._db.execute("PRAGMA busy_timeout").fetchone()
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        try:
            with contextlib.closing(self._db.cursor()) as cur:
                cur.executescript(
                    "BEGIN IMMEDIATE;\nDELETE FROM decision_index;\n"
                    + "\n".join(
                        stmt.replace(
                            " FROM json_each(", " FROM decisions AS d, json_each("
                        )
                        for stmt in _tag_inserts("d.record", "d.seq").split("\n")
                    )
                    + f"\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;"
                )
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(waits)}")


def decisions_path(path: str) -> str:
    """The decision log's file for the store's file ``path``: ``PATH-decisions``."""
    return path if path == ":memory:" else f"{path}-decisions"


class SqliteConnection(SqliteFile):
    """The store's file (journal, guards, claims, ...), and the decision log."""

    def __init__(
        self, path: str, *, retention: Retention | None = None, reclaim: bool = True
    ) -> None:
        self.retention = retention or Retention()
        self._reclaim = reclaim
        super().__init__(path, SCHEMA)
        try:
            self._log = DecisionLog(decisions_path(path))
            self._move_decisions()
        except BaseException:
            self._db.close()
            raise

    @property
    def reclaims(self) -> bool:
        """Whether this process took a previous one's claims over when it opened.

        It decides for the store's one instance: what another process of this
        store had claimed and not finished, that process is gone.
        """
        return self._reclaim

    def _prepare(self) -> None:
        self._migrate()

    def _opened(self) -> None:
        # Single instance: whatever a previous process had claimed is ours now.
        # Only the process that decides (not an edge beside a live worker
        # process, ``reclaim=False``) may hand claims back. The journal's
        # depth is counted again, under the write lock: a version that did
        # not keep it may have written the file.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._reclaim:
                self._db.execute(
                    "UPDATE journal SET state='pending', consumer=NULL, "
                    "lease_until=NULL WHERE state='claimed'"
                )
            self._db.execute(COUNT_UNFINISHED)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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

    def _move_decisions(self) -> None:
        """Move the decisions a file of an older version holds into the decision log.

        One transaction per file: the records are copied (a copy a crash cut
        short is completed the next time; a record copied before is skipped by
        its ``seq``), the log's tag index is filled again, and only then are
        the old tables dropped. Two processes opening the file at once (the
        edge and its worker) each look for the old tables under the write
        locks, so one of them moves and the other finds nothing left.
        """
        db = self._db
        if self.path == ":memory:" or not self._has_old_decisions():
            return
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        try:
            db.execute("ATTACH DATABASE ? AS log", (self._log.path,))
            try:
                db.execute("BEGIN IMMEDIATE")  # both files' write locks
                try:
                    moved = self._has_old_decisions()
                    if moved:
                        db.execute(
                            "INSERT OR IGNORE INTO log.decisions (seq, payload_id, "
                            "fingerprint, decided_at, record) SELECT seq, "
                            "payload_id, fingerprint, decided_at, record "
                            "FROM main.decisions"
                        )
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                db.execute("DETACH DATABASE log")
            if not moved:
                return
            self._log.fill_indexes(again=True)
            db.executescript(
                "BEGIN IMMEDIATE;\nDROP TRIGGER IF EXISTS decisions_untag;\n"
                "DROP TABLE IF EXISTS decision_index;\n"
                "DROP TABLE IF EXISTS decisions;\nCOMMIT;"
            )
        finally:
            db.execute("PRAGMA busy_timeout=0")

    def _has_old_decisions(self) -> bool:
        """Whether the store's file still holds a decisions table (older version)."""
        found = self._db.execute(
            "SELECT 1 FROM main.sqlite_master WHERE type='table' AND name='decisions'"
        ).fetchone()
        return found is not None

    async def ping(self) -> bool:  # noqa: D102
        return await super().ping() and await self._log.ping()

    async def eviction(self) -> None:
        """Nothing: a SQLite file keeps what is written until the store drops it."""

    async def close(self) -> None:  # noqa: D102
        await self._log.close()
        await super().close()
