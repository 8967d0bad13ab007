"""``receiver backtest`` only reads the store it is pointed at.

A SQLite store file written by the real store and closed: after a backtest of
it, the file and every file beside it (its decision log; no ``-wal`` or
``-shm`` appears) hold the same bytes with the same times, also when the file
was copied without its decision log. A file a live store holds open is read
through its WAL (payloads not yet checkpointed count) and neither the file nor
its WAL is written. On Redis nothing is written: every key dumps the same, with
the same expiry, and the server counts no change to its data.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio

from receiver.cli import main
from receiver.store import SqliteStore
from receiver.store.base import JournalEntry, Store
from receiver.store.redis import RedisStore
from receiver.store.sqlite import decisions_path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
EXAMPLE = ROOT / "examples" / "alertmanager" / "sark-api-down.firing.json"
PAYLOADS = 3


async def fill(store: Store) -> None:
    """Journal ``PAYLOADS`` payloads an hour old; decide one, claim another."""
    start = datetime.now(UTC) - timedelta(hours=1)
    body = EXAMPLE.read_bytes()
    for n in range(PAYLOADS):
        entry = JournalEntry(
            f"e{n}", "alertmanager", start + timedelta(minutes=n), body
        )
        await store.append(entry, [])
    now = datetime.now(UTC)
    decided = await store.claim("worker-1", 0, now)
    assert decided is not None
    record = {
        "payload_id": decided.entry.id,
        "fingerprint": "fp-1",
        "decided_at": now.isoformat(),
        "matches": [],
    }
    await store.complete(decided.entry.id, [record])
    assert await store.claim("worker-1", 0, now) is not None


def backtest(*source: str) -> int:
    """``receiver backtest`` of ``source`` with the shipped rules, as JSON."""
    return main(["backtest", "--rules", str(RULES), *source, "--json"])


def replayed(out: str) -> tuple[int, int]:
    """The report's payloads and alerts."""
    report = json.loads(out)
    assert report["changed_alerts"] == 0
    return report["payloads"], report["alerts"]


def stamp(path: Path) -> tuple[str, int]:
    """A file's bytes (their digest) and its modification time."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file in ``folder``, stamped."""
    return {p.name: stamp(p) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("log", ["with-its-log", "copied-alone"])
def test_a_closed_store_file_is_left_byte_for_byte(tmp_path, capsys, monkeypatch, log):
    """The file, its decision log, and nothing new beside them: unchanged."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "receiver.db"
    asyncio.run(_filled(db))
    if log == "copied-alone":
        Path(decisions_path(str(db))).unlink()
    before = files(folder)
    assert set(before) <= {db.name, f"{db.name}-decisions"}  # closed: no WAL left
    assert backtest("--db", str(db)) == 0
    assert files(folder) == before, "a file was written, or one created beside it"
    assert replayed(capsys.readouterr().out) == (PAYLOADS, PAYLOADS)


async def _filled(db: Path) -> None:
    store = SqliteStore(str(db))
    try:
        await fill(store)
    finally:
        await store.close()


async def test_a_file_a_live_store_holds_open_is_read_and_not_written(
    tmp_path, capsys, monkeypatch
):
    """Payloads only in the live store's WAL are read; file and WAL are not written."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    db = tmp_path / "receiver.db"
    live = SqliteStore(str(db))
    try:
        await fill(live)
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.stat().st_size > 0, "the payloads are in the WAL, not checkpointed"
        before = {p.name: stamp(p) for p in (db, wal)}
        assert await asyncio.to_thread(backtest, "--db", str(db)) == 0
        after = {p.name: stamp(p) for p in (db, wal)}
        assert after == before, "the store file or its WAL was written"
        assert shm.exists()
        assert replayed(capsys.readouterr().out) == (PAYLOADS, PAYLOADS)
        # The owner goes on as before.
        later = JournalEntry("e9", "alertmanager", datetime.now(UTC), b"{}")
        await live.append(later, [])
        assert [e.id for e in await live.payloads(1)] == ["e9"]
    finally:
        await live.close()


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


async def test_a_redis_store_is_not_written(redis_url, capsys, monkeypatch):
    """Every key as it was, and the server counts no write to its data."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    # The store's own prefix, as ``backtest --store`` reads it: this module's
    # Redis server is its own (``redis_url``), no other test's keys are there.
    store = RedisStore(redis_url)
    try:
        await fill(store)
    finally:
        await store.close()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys, changes = await _keys(client), await _changes(client)
        assert any(k.startswith(b"receiver:payload:") for k in keys)
        assert await asyncio.to_thread(backtest, "--store", redis_url) == 0
        assert await _changes(client) == changes, "a command wrote to Redis"
        assert await _keys(client) == keys
    finally:
        await client.aclose()
    assert replayed(capsys.readouterr().out) == (PAYLOADS, PAYLOADS)
