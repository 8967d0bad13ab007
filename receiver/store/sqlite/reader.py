"""A SQLite store file's payloads, read without writing to it: ``receiver backtest``.

The store's own connection (``SqliteConnection``) writes as it opens: it applies
the schema (and migrates an older file), counts the journal again under the
write lock, and opens the decision log beside the file, creating it if it is
missing. A backtest may be pointed at a live service's file, or a copy of one,
so ``SqliteReader`` opens the file read-only (``mode=ro``) and does none of
that; it reads with the store's own query (``read_payloads``).

Read-only is not enough on its own: SQLite creates the ``-wal`` and ``-shm``
files of a WAL database when they are missing, and a read-only connection
cannot remove them after. They are missing beside a file no process has open
(the last connection to close removes them), whose every page is then in the
file itself: such a file is read as immutable (no WAL, no locks, nothing
created), and that read stands only if nothing opened and wrote the file
meanwhile (no ``-wal`` then, and the file the same size and time). Otherwise,
and whenever a ``-wal`` is there (a live service's store), the file is read
through its WAL under SQLite's locks, as any reader of it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from receiver.store.base import JournalEntry
from receiver.store.sqlite.connection import BUSY_TIMEOUT
from receiver.store.sqlite.journal import read_payloads

T = TypeVar("T")
# Immutable reads tried before reading under the locks: each fails only when
# a process wrote the file during it.
IMMUTABLE_TRIES = 3


class SqliteReader:
    """The payloads of the store file ``path``; writes nothing (``PayloadReader``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def payloads(self, limit: int = 100) -> list[JournalEntry]:
        """The newest ``limit`` stored payloads, newest first."""
        return await asyncio.to_thread(
            read_only, self.path, lambda db: read_payloads(db, limit)
        )

    async def close(self) -> None:
        """Nothing to release: each read opens and closes its own connection."""


def store_file_problem(
    path: Path, tables: tuple[str, ...] = ("journal",)
) -> str | None:
    """Why ``path`` is not a receiver's store file (None if it is); writes nothing.

    A store file holds at least one of ``tables`` (the journal; the report
    also takes a file of incident tables alone).
    """
    if not path.exists():
        return "no such database file"
    if not path.is_file():
        return "not a file"
    marks = ", ".join("?" for _ in tables)
    try:
        found = read_only(
            path,
            lambda db: db.execute(
                f"SELECT 1 FROM sqlite_master WHERE type='table' AND name IN ({marks})",  # noqa: S608 (placeholders only)
                tables,
            ).fetchone(),
        )
    except sqlite3.Error as exc:
        return f"not a SQLite database ({exc})"
    if found:
        return None
    return "holds no receiver tables (no " + ", no ".join(tables) + ")"


def read_only(path: Path, read: Callable[[sqlite3.Connection], T]) -> T:
    """``read`` on a read-only connection to ``path`` that creates no file beside it.

    Immutable while no ``-wal`` or ``-journal`` lies beside the file, and only
    if the file is the same after the read as before; else under the locks.
    """
    # The file itself: its -wal and -shm lie beside the link's target.
    path = path.resolve()
    for _ in range(IMMUTABLE_TRIES):
        if _in_use(path):
            break
        before = _stamp(path)
        try:
            value = _read(path, read, immutable=True)
        except sqlite3.DatabaseError:
            if _in_use(path) or _stamp(path) != before:
                continue  # torn by a write during it: read again
            raise
        if not _in_use(path) and _stamp(path) == before:
            return value
    wal = Path(f"{path}-wal")
    if wal.exists() and not Path(f"{path}-shm").exists():
        # No process has it open (a live one keeps -shm): read a private copy
        # rather than create -shm beside it.
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / "store.db"
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, f"{copy}-wal")
            return _read(copy, read, immutable=False)
    return _read(path, read, immutable=False)


def _in_use(path: Path) -> bool:
    """Whether changes may lie beside the file: a process has it open, or crashed."""
    return any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-journal"))


def _stamp(path: Path) -> tuple[int, int, int]:
    """What a write to the file changes: its inode, size and modification time."""
    found = path.stat()
    return found.st_ino, found.st_size, found.st_mtime_ns


def _read(path: Path, read: Callable[[sqlite3.Connection], T], *, immutable: bool) -> T:
    uri = path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)) as db:
        db.row_factory = sqlite3.Row
        return read(db)
