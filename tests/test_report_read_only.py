"""``receiver report`` only reads the store it is pointed at.

A SQLite store file holding an incident, closed: after a report of it, every
file in its folder holds the same bytes with the same times and nothing new
lies beside it, also when the file was written by an older receiver (no fold
marks table, which the incident store's schema would add) or copied in
rollback-journal mode (which the incident store would turn to WAL). A file a
live store holds open is read through its WAL, and neither the file nor its WAL
is written. A file without the incident tables, or no file at all, is left so.
On Redis nothing is written: every key dumps the same, and the server counts
no change to its data. The report is the incident's all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest
import redis.asyncio
from test_incident_reports import ROOT, cases, play

from receiver.cli import main
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore
from receiver.store.sqlite import SqliteStore

INCIDENT = "INC-2026-11-26-001"


def report(url: str) -> int:
    """``receiver report`` of the played incident in the store at ``url``."""
    return main(["report", INCIDENT, "--store", url, "--rules", str(ROOT / "rules")])


def stamp(path: Path) -> tuple[str, int]:
    """A file's bytes (their digest) and its modification time."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file in ``folder``, stamped."""
    return {p.name: stamp(p) for p in sorted(folder.iterdir())}


async def store_with_incident(db: Path) -> str:
    """A closed store file (the store's tables and an incident); its report."""
    await SqliteStore(str(db)).close()
    source, firing, resolved = cases()[0]
    return await play(source, firing, resolved, str(db))


def older(db: Path) -> None:
    """As a receiver from before fold marks left it: no ``incident_folded``."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TABLE incident_folded")


def rollback_journal(db: Path) -> None:
    """As a copy in rollback-journal mode leaves it (not WAL)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")


@pytest.mark.parametrize(
    "made",
    [None, older, rollback_journal],
    ids=["as-written", "older-receiver", "rollback-journal"],
)
def test_a_closed_store_file_is_left_byte_for_byte(tmp_path, capsys, made):
    """The file, its decision log, and nothing new beside them: unchanged."""
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "receiver.db"
    want = asyncio.run(store_with_incident(db))
    if made is not None:
        made(db)
    before = files(folder)
    assert set(before) == {db.name, f"{db.name}-decisions"}  # closed: no WAL left
    capsys.readouterr()
    assert report(f"sqlite:///{db}") == 0
    assert files(folder) == before, "a file was written, or one created beside it"
    assert capsys.readouterr().out == want


async def test_a_file_a_live_store_holds_open_is_read_and_not_written(tmp_path, capsys):
    """An incident only in the live store's WAL is read; file and WAL not written."""
    db = tmp_path / "receiver.db"
    live = SqliteStore(str(db))
    incidents = SqliteIncidentStore(str(db))
    try:
        await live.ping()
        assert await incidents.watched() == []  # open: the WAL is there from now
        source, firing, resolved = cases()[0]
        want = await play(source, firing, resolved, str(db))
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.stat().st_size > 0, "the incident is in the WAL, not checkpointed"
        before = {p.name: stamp(p) for p in (db, wal)}
        capsys.readouterr()
        assert await asyncio.to_thread(report, f"sqlite:///{db}") == 0
        assert {p.name: stamp(p) for p in (db, wal)} == before
        assert shm.exists()
        assert capsys.readouterr().out == want
        assert await incidents.get(INCIDENT) is not None  # the owner goes on
    finally:
        await incidents.close()
        await live.close()


def test_a_store_file_without_incident_tables_is_left_as_it_was(tmp_path, capsys):
    """No incident there (exit 1); the incident tables are not created."""
    db = tmp_path / "receiver.db"
    asyncio.run(SqliteStore(str(db)).close())
    before = files(tmp_path)
    assert report(f"sqlite:///{db}") == 1
    assert f"no incident {INCIDENT!r}" in capsys.readouterr().err
    assert files(tmp_path) == before


def test_a_missing_store_file_is_not_created(tmp_path, capsys):
    """A wrong path is said to be one (exit 2); no file or folder appears."""
    db = tmp_path / "nowhere" / "receiver.db"
    assert report(f"sqlite:///{db}") == 2
    assert "no such store file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


async def _keys(client: redis.asyncio.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key: its DUMP and its expiry (an absolute time, -1 for none)."""
    found = {}
    async for key in client.scan_iter(count=1000):
        found[key] = (await client.dump(key), await client.pexpiretime(key))
    return found


async def _changes(client: redis.asyncio.Redis) -> int:
    """Writes to the data since the server started (it never saves)."""
    info = await client.info("persistence")
    return int(info["rdb_changes_since_last_save"])


async def test_a_redis_store_is_not_written(redis_url, tmp_path, capsys):
    """Every key as it was, and the server counts no write to its data."""
    db = tmp_path / "played.db"
    want = await store_with_incident(db)
    played = SqliteIncidentStore(str(db))
    # The incident store's own prefix, as ``report --store`` reads it: this
    # module's Redis server is its own (``redis_url``).
    shared = RedisIncidentStore(redis_url)
    try:
        record = await played.get(INCIDENT)
        assert record is not None
        assert await shared.create(record) is not None
    finally:
        await shared.close()
        await played.close()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys, changes = await _keys(client), await _changes(client)
        capsys.readouterr()
        assert await asyncio.to_thread(report, redis_url) == 0
        assert await _changes(client) == changes, "a command wrote to Redis"
        assert await _keys(client) == keys
    finally:
        await client.aclose()
    assert capsys.readouterr().out == want
