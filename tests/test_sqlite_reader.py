"""Reading a SQLite store file without writing to it (``SqliteReader``).

A file no process has open is read as immutable, creating nothing beside it;
a receiver that opens, writes and closes the file during such a read has the
read thrown away and made again, so what it returns is never the file as it
was before a write that went on under it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from conftest import stored_payloads

from receiver.store import SqliteStore
from receiver.store.base import JournalEntry
from receiver.store.sqlite.journal import read_payloads
from receiver.store.sqlite.reader import read_only


async def _append(db: Path, entry_id: str) -> None:
    """A receiver opens the file, journals a payload and closes it."""
    store = SqliteStore(str(db))
    try:
        await store.append(
            JournalEntry(entry_id, "alertmanager", datetime.now(UTC), b"{}"), []
        )
    finally:
        await store.close()


def test_a_file_written_during_a_read_is_read_again(tmp_path):
    """The first read, under which the file was written, does not count."""
    db = stored_payloads(tmp_path / "receiver.db", b"{}", 2)
    seen: list[list[str]] = []

    def read(conn: sqlite3.Connection) -> list[JournalEntry]:
        entries = read_payloads(conn, 100)
        if not seen:  # during the first read, a receiver comes and goes
            asyncio.run(_append(db, "e9"))
        seen.append([e.id for e in entries])
        return entries

    entries = read_only(db, read)
    assert seen == [["e001", "e000"], ["e9", "e001", "e000"]]
    assert [e.id for e in entries] == ["e9", "e001", "e000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        db.name,
        f"{db.name}-decisions",
    ]
