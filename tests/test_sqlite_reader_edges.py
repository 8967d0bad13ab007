"""The read-only store reader where reads go wrong: links, torn reads, a lone WAL.

1. A store file named through a symbolic link, held open by a live store: its
   ``-wal`` lies beside the link's target, not beside the link, so the reader
   takes the file for closed, reads it as immutable (no WAL, no locks) and
   accepts the stale answer: payloads only in the WAL are missing.
2. An immutable read under which another process rewrites the file can fail
   (``database disk image is malformed``) instead of returning a torn answer;
   ``read_only`` only retries a read that *returned*, so the error escapes
   although the file was written during the read (the case it promises to
   read again).
3. A store file with a ``-wal`` and no ``-shm`` (a copy of a live store's
   files without the ``-shm``, or a crash's leftovers with the ``-shm``
   removed): no process has it open, yet the read-only read creates ``-shm``
   beside it and leaves it there.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from receiver.store import SqliteStore
from receiver.store.base import JournalEntry
from receiver.store.sqlite.journal import read_payloads
from receiver.store.sqlite.reader import SqliteReader, read_only


def _entry(entry_id: str, body: bytes = b"{}") -> JournalEntry:
    return JournalEntry(
        entry_id, "alertmanager", datetime.now(UTC) - timedelta(minutes=1), body
    )


async def test_a_live_store_named_through_a_symlink_is_read_with_its_wal(tmp_path):
    """The payload only in the live store's WAL is read; through a link too."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "receiver.db"
    first = SqliteStore(str(db))
    await first.append(_entry("e0"), [])
    await first.close()
    link = tmp_path / "receiver.db"  # e.g. /var/lib/receiver/receiver.db -> volume
    link.symlink_to(db)

    live = SqliteStore(str(db))
    try:
        await live.append(_entry("e1"), [])
        assert Path(f"{db}-wal").stat().st_size > 0  # e1 is in the WAL only
        assert [e.id for e in await SqliteReader(db).payloads()] == ["e1", "e0"]
        # Through the link: read as a closed file, the WAL ignored.
        assert [e.id for e in await SqliteReader(link).payloads()] == ["e1", "e0"]
    finally:
        await live.close()


def _filled(db: Path, count: int) -> None:
    async def fill() -> None:
        store = SqliteStore(str(db))
        try:
            for i in range(count):
                await store.append(_entry(f"e{i:04d}", b"x" * 3000), [])
        finally:
            await store.close()

    asyncio.run(fill())


def test_a_read_broken_by_a_write_during_it_is_read_again(tmp_path):
    """A process rewrites the file mid-read: the read is made again, not failed."""
    db = tmp_path / "receiver.db"
    _filled(db, 300)
    assert not Path(f"{db}-wal").exists()  # closed: read as immutable
    reads = 0

    def read(conn: sqlite3.Connection) -> list[str]:
        nonlocal reads
        reads += 1
        seen = 0

        def during(entry_id: str) -> str:
            # A few rows into the first read, another process deletes a third
            # of the journal, vacuums and closes: the file is rewritten.
            nonlocal seen
            seen += 1
            if reads == 1 and seen == 5:
                other = sqlite3.connect(str(db), isolation_level=None)
                try:
                    other.execute("DELETE FROM journal WHERE rowid % 3 = 0")
                    other.execute("VACUUM")
                finally:
                    other.close()
            return entry_id

        conn.create_function("during", 1, during)
        rows = conn.execute(
            "SELECT during(id) FROM journal ORDER BY rowid DESC"
        ).fetchall()
        return [r[0] for r in rows]

    ids = read_only(db, read)  # raised DatabaseError: disk image is malformed
    assert reads == 2
    assert len(ids) == 200
    assert not Path(f"{db}-wal").exists()
    assert not Path(f"{db}-shm").exists()


def test_a_wal_copied_without_its_shm_gets_no_shm_beside_it(tmp_path):
    """Nothing is created beside a file no process has open, -wal or not."""
    live_dir, copy_dir = tmp_path / "live", tmp_path / "copy"
    live_dir.mkdir()
    copy_dir.mkdir()
    live = live_dir / "receiver.db"

    async def copy_while_live() -> None:
        store = SqliteStore(str(live))
        try:
            await store.append(_entry("e0"), [])
            # A backup of the live store's files that leaves out the -shm
            # (it holds nothing a reader needs).
            shutil.copy(live, copy_dir / "receiver.db")
            shutil.copy(f"{live}-wal", copy_dir / "receiver.db-wal")
        finally:
            await store.close()

    asyncio.run(copy_while_live())
    db = copy_dir / "receiver.db"
    before = sorted(p.name for p in copy_dir.iterdir())
    assert before == ["receiver.db", "receiver.db-wal"]
    assert [e.id for e in read_only(db, lambda c: read_payloads(c, 10))] == ["e0"]
    assert sorted(p.name for p in copy_dir.iterdir()) == before, "-shm created"
