"""A small SQLite database beside the main store, for one concern each.

The diagnostics cache, the sink outbox and the incident store keep their tables
in the main store's file (or in memory). Each opens its own connection on first
use (a process that never needs the concern never touches the file), runs its
statements in a thread under one lock, and turns any ``sqlite3.Error`` into a
``StoreUnavailableError`` that names the concern and the file. Like the main
store's writer, it waits for another connection's write lock in short pauses
(``begin_immediate``), not in SQLite's sleeps of milliseconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from receiver.errors import StoreUnavailableError

T = TypeVar("T")
# Seconds a writer waits for another connection's write lock before giving up.
BUSY_TIMEOUT = 30.0
# Its first and longest pause between tries (seconds). SQLite's own busy
# handler sleeps 1, 2, 5, 10, ... up to 100 ms between tries: an edge whose
# worker process was committing lost tens of milliseconds to a lock held for
# one fsync, and the two processes took turns badly.
BUSY_FIRST_PAUSE = 0.0001
BUSY_MAX_PAUSE = 0.001


def begin_immediate(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, trying again in short pauses while another connection writes.

    The write lock is held for one transaction (one fsync) of the other
    connection at a time; tries a tenth of a millisecond apart, growing to a
    millisecond, take it soon after it is free, for a few microseconds of
    CPU a try. ``database is locked`` only after ``BUSY_TIMEOUT``. The
    connection's own busy timeout must be 0, or SQLite sleeps first.
    """
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


class SideDatabase:
    """One lazily opened connection, its schema, and transactions in a thread."""

    def __init__(
        self, path: str, schema: str, what: str, *, rows: bool = False
    ) -> None:
        self.path = path
        self._schema = schema
        self._what = what
        self._rows = rows  # rows as ``sqlite3.Row`` (by name) instead of tuples
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._closed:
            msg = "closed"
            raise sqlite3.ProgrammingError(msg)
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            if self._rows:
                db.row_factory = sqlite3.Row
            if self.path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(self._schema)
            self._db = db
        return self._db

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            db = self._open()
            # A write waits for the lock itself; a read (rarely held up, in WAL
            # mode) keeps SQLite's own wait.
            db.execute("PRAGMA busy_timeout=0")
            try:
                begin_immediate(db)
            finally:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000:.0f}")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._open())

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True
    ) -> T:
        """``fn`` in a thread: in one transaction, or (``write=False``) as is."""
        try:
            return await asyncio.to_thread(self._tx if write else self._read, fn)
        except sqlite3.Error as exc:
            msg = f"SQLite {self._what} {self.path}: {exc}"
            raise StoreUnavailableError(msg) from exc

    async def close(self) -> None:
        """Close the connection; a later call fails as the store being down."""

        def close() -> None:
            # Under the lock: a query still running in its thread (its task
            # was cancelled, the thread was not) finishes first. Closing under
            # it crashes the process.
            with self._lock:
                self._closed = True
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(close)
