"""A side database (incidents, outbox, diagnostics cache) beside another writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.errors import StoreUnavailableError
from receiver.store import side
from receiver.store.side import SideDatabase

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER NOT NULL);"


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "side.db")


@pytest.fixture
async def database(path: str) -> SideDatabase:
    database = SideDatabase(path, SCHEMA, "test concern")
    await database.run(lambda db: db.execute("INSERT INTO t VALUES (0)"))
    return database


@pytest.fixture
def other_writer(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection (another process) holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    yield other
    if other.in_transaction:
        other.execute("ROLLBACK")
    other.close()


def _rows(database: SideDatabase) -> object:
    return database.run(
        lambda db: [r[0] for r in db.execute("SELECT x FROM t ORDER BY x")],
        write=False,
    )


async def test_a_write_waits_in_short_pauses_for_another_writer(
    database: SideDatabase,
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tries 0.1 ms apart, doubling: not SQLite's own sleeps of 1, 2, 5 ms."""
    pauses: list[float] = []
    real_sleep = side.time.sleep

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            other_writer.execute("COMMIT")  # the other writer's commit ends
        real_sleep(seconds)

    monkeypatch.setattr(side.time, "sleep", sleep)
    await database.run(lambda db: db.execute("INSERT INTO t VALUES (1)"))
    assert pauses == [0.0001, 0.0002, 0.0004]
    assert await _rows(database) == [0, 1]


async def test_reads_go_on_while_another_connection_writes(
    database: SideDatabase, other_writer: sqlite3.Connection
) -> None:
    """WAL: a read does not wait for the write lock."""
    other_writer.execute("INSERT INTO t VALUES (5)")  # not committed: not seen
    assert await _rows(database) == [0]


async def test_a_write_fails_naming_the_concern_when_the_lock_stays_held(
    database: SideDatabase,
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past BUSY_TIMEOUT: the store's error, naming the concern; nothing written."""
    monkeypatch.setattr(side, "BUSY_TIMEOUT", 0.005)
    locked = r"test concern .*: database is locked"
    with pytest.raises(StoreUnavailableError, match=locked):
        await database.run(lambda db: db.execute("INSERT INTO t VALUES (1)"))
    other_writer.execute("ROLLBACK")
    await database.run(lambda db: db.execute("INSERT INTO t VALUES (2)"))
    assert await _rows(database) == [0, 2]
