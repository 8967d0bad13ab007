"""The SQLite writer when the disk fails: nothing half-written, and it recovers.

The disk is simulated at our interface: the writer's connection is wrapped so
that chosen statements fail as SQLite fails them (``database or disk is full``,
``disk I/O error``), for as long as the test says. Every caller of a failed
transaction hears the store is unavailable (a 503 at the edge), nothing of it
stands, the journal's depth stays exact, and once the disk is back the next
transaction commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import StoreUnavailableError
from receiver.store.base import JournalEntry
from receiver.store.side import SideDatabase
from receiver.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def entry(n: int) -> JournalEntry:
    return JournalEntry(
        id=f"e{n:03d}",
        source="alertmanager",
        received_at=T0 + timedelta(seconds=n),
        body=b'{"n": %d}' % n,
    )


class FailingDisk:
    """The writer's connection, with statements that fail while told to."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # Statement (its first word) -> how many more times it fails, and how.
        self.fail: dict[str, tuple[int, str]] = {}

    def execute(self, sql: str, *args: Any) -> Any:
        word = sql.split(None, 1)[0].upper()
        times, why = self.fail.get(word, (0, ""))
        if times:
            self.fail[word] = (times - 1, why)
            raise sqlite3.OperationalError(why)
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "r.db"))
    yield s
    s._db.close()


def unfinished(path: str) -> int:
    with sqlite3.connect(path) as db:
        return int(
            db.execute(
                "SELECT count(*) FROM journal WHERE state IN ('pending', 'claimed')"
            ).fetchone()[0]
        )


async def test_a_commit_on_a_full_disk_fails_every_append_of_its_group(store):
    """Disk full at COMMIT: each append of the group is a 503; none stands."""
    real = store._db
    disk = FailingDisk(real)
    store._db = disk  # type: ignore[assignment]
    disk.fail["COMMIT"] = (1, "database or disk is full")
    results = await asyncio.gather(
        *(store.append(entry(n), []) for n in range(5)), return_exceptions=True
    )
    assert [type(r) for r in results] == [StoreUnavailableError] * 5
    assert (await store.pending())[0] == 0
    assert unfinished(store.path) == 0
    await store.append(entry(9), [])
    assert (await store.pending())[0] == 1 == unfinished(store.path)


async def test_a_rollback_that_fails_does_not_wedge_the_writer(store):
    """An I/O error at COMMIT, then at ROLLBACK: the disk comes back, so does the store.

    The transaction the failed ROLLBACK left open is rolled back before the
    next one begins; without that, every later write failed with ``cannot
    start a transaction within a transaction`` until the process restarted.
    """
    real = store._db
    disk = FailingDisk(real)
    store._db = disk  # type: ignore[assignment]
    disk.fail["COMMIT"] = (1, "disk I/O error")
    disk.fail["ROLLBACK"] = (1, "disk I/O error")
    with pytest.raises(StoreUnavailableError):
        await store.append(entry(1), [])
    # The disk is back.
    await store.append(entry(2), [])
    assert [e.id for e in await store.payloads()] == ["e002"]
    assert (await store.pending())[0] == 1 == unfinished(store.path)


async def test_a_claim_on_a_failing_disk_leaves_the_entry_pending(store):
    """A claim whose COMMIT fails claims nothing: the entry is claimed next time."""
    await store.append(entry(1), [])
    real = store._db
    disk = FailingDisk(real)
    store._db = disk  # type: ignore[assignment]
    disk.fail["COMMIT"] = (1, "disk I/O error")
    with pytest.raises(StoreUnavailableError):
        await store.claim_batch("w", 10, 0.0, T0)
    leases = await store.claim_batch("w", 10, 0.0, T0)
    assert [lease.entry.id for lease in leases] == ["e001"]
    assert leases[0].entry.attempts == 1


async def test_a_side_database_whose_commit_fails_recovers(tmp_path):
    """The outbox's and incidents' connection: a failed COMMIT is rolled back.

    Left open, the transaction made every later call fail with ``cannot start
    a transaction within a transaction`` (each delivery parked, each incident
    write lost) until the process restarted.
    """
    side = SideDatabase(
        str(tmp_path / "side.db"), "CREATE TABLE IF NOT EXISTS t (n INTEGER);", "test"
    )
    await side.run(lambda db: db.execute("INSERT INTO t VALUES (1)"))
    assert side._db is not None
    disk = FailingDisk(side._db)
    side._db = disk  # type: ignore[assignment]
    disk.fail["COMMIT"] = (1, "database or disk is full")
    with pytest.raises(StoreUnavailableError, match="disk is full"):
        await side.run(lambda db: db.execute("INSERT INTO t VALUES (2)"))
    await side.run(lambda db: db.execute("INSERT INTO t VALUES (3)"))
    rows = await side.run(
        lambda db: db.execute("SELECT n FROM t ORDER BY n").fetchall(), write=False
    )
    assert [r[0] for r in rows] == [1, 3]
    await side.close()


async def test_a_side_database_whose_rollback_fails_recovers(tmp_path):
    """A call that fails, then a ROLLBACK that fails: the next call still commits."""
    side = SideDatabase(
        str(tmp_path / "side.db"), "CREATE TABLE IF NOT EXISTS t (n INTEGER);", "test"
    )
    await side.run(lambda db: db.execute("INSERT INTO t VALUES (1)"))
    assert side._db is not None
    disk = FailingDisk(side._db)
    side._db = disk  # type: ignore[assignment]
    disk.fail["INSERT"] = (1, "disk I/O error")
    disk.fail["ROLLBACK"] = (1, "disk I/O error")
    with pytest.raises(StoreUnavailableError, match="disk I/O error"):
        await side.run(lambda db: db.execute("INSERT INTO t VALUES (2)"))
    await side.run(lambda db: db.execute("INSERT INTO t VALUES (3)"))
    rows = await side.run(
        lambda db: db.execute("SELECT n FROM t ORDER BY n").fetchall(), write=False
    )
    assert [r[0] for r in rows] == [1, 3]
    await side.close()
