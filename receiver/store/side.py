"""A small SQLite database beside the main store, for one concern each.

The diagnostics cache, the sink outbox and the incident store keep their tables
in the main store's file (or in memory). Each opens its own connection on first
use (a process that never needs the concern never touches the file), runs its
statements in a thread under one lock, and turns any ``sqlite3.Error`` into a
``StoreUnavailableError`` that names the concern and the file.

Given a ``host`` (the SQLite store's own file), a concern opens no connection:
its tables are added to the host's file on first use, its writes join the
host's transactions (group commit: one write lock and one fsync with the
journal's claims and done-marks, where a connection of its own waited for the
lock between them), and its reads go to the host's reader. Rows are then
``sqlite3.Row`` whatever ``rows`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from receiver.errors import StoreUnavailableError

T = TypeVar("T")


class Host(Protocol):
    """A database file with a writer of its own that others may write through."""

    async def add_tables(
        self, schema: str, before: Callable[[sqlite3.Connection], None] | None = None
    ) -> None:
        """Apply ``schema`` (after ``before``) to the file."""
        ...

    async def write_beside(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one of the writer's transactions; its value once committed."""
        ...

    async def read_beside(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on a connection that reads."""
        ...


class SideDatabase:
    """One lazily opened connection, its schema, and transactions in a thread."""

    def __init__(
        self,
        path: str,
        schema: str,
        what: str,
        *,
        rows: bool = False,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        host: Host | None = None,
    ) -> None:
        self.path = path
        self._host = host
        self._tables = False  # the host's file holds this concern's tables
        self._schema = schema
        # Run once the connection is open, before the schema: brings tables a
        # file of an older version holds up to date (their CREATE is skipped).
        self._migrate = migrate
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
            try:
                if self._migrate is not None:
                    self._migrate(db)
                db.executescript(self._schema)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            db = self._open()
            if db.in_transaction:
                # Left open by a ROLLBACK that failed (a disk error): rolled
                # back now, or this call fails, never every call after it.
                db.execute("ROLLBACK")
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT, which may leave the transaction
                # open; the caller hears the first error, not the rollback's.
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            return result

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._open())

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True
    ) -> T:
        """``fn`` in a thread: in one transaction, or (``write=False``) as is."""
        if self._host is not None:
            return await self._beside(self._host, fn, write=write)
        try:
            return await asyncio.to_thread(self._tx if write else self._read, fn)
        except sqlite3.Error as exc:
            msg = f"SQLite {self._what} {self.path}: {exc}"
            raise StoreUnavailableError(msg) from exc

    async def _beside(
        self, host: Host, fn: Callable[[sqlite3.Connection], T], *, write: bool
    ) -> T:
        """``run`` through the host's connections."""
        try:
            if self._closed:
                msg = "closed"
                raise sqlite3.ProgrammingError(msg)
            if not self._tables:
                await host.add_tables(self._schema, self._migrate)
                self._tables = True
            if write:
                return await host.write_beside(fn)
            return await host.read_beside(fn)
        except sqlite3.Error as exc:
            msg = f"SQLite {self._what} {self.path}: {exc}"
            raise StoreUnavailableError(msg) from exc

    async def close(self) -> None:
        """Close the connection; a later call fails as the store being down.

        With a host, its connections stay open (the store closes them).
        """
        if self._host is not None:
            self._closed = True
            return

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
