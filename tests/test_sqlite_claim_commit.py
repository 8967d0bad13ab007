"""SQLite commits a transaction of claims alone without waiting for the disk.

A claim lost to a power cut costs nothing: opening the store hands every claim
back. So a transaction whose calls are all claims commits with
``synchronous=NORMAL`` (the write lock the edge process waits for is held for
less), and any other call in the same transaction makes it wait for the disk
as every write does. The connection is back to ``synchronous=FULL`` after each,
whatever happened in it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from test_store_contract import T0, journal_entry, trace

from receiver.errors import StoreUnavailableError
from receiver.store.sqlite import SqliteStore

FULL = 2


def _watch(store: SqliteStore) -> list[str]:
    """The statements the writer connection runs, from now on."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def _synchronous(store: SqliteStore) -> int:
    return int(store._db.execute("PRAGMA synchronous").fetchone()[0])


async def test_a_claim_alone_commits_without_waiting_for_the_disk(
    tmp_path: Path,
) -> None:
    store = SqliteStore(path=str(tmp_path / "s.db"))
    try:
        entry = journal_entry(1)
        seen = _watch(store)
        await store.append(entry, [])
        assert "PRAGMA synchronous=NORMAL" not in seen
        seen.clear()
        leases = await store.claim_batch("c1", 4, 0, T0)
        assert [lease.entry.id for lease in leases] == [entry.id]
        begin = seen.index("BEGIN IMMEDIATE")
        assert seen[begin - 1] == "PRAGMA synchronous=NORMAL"
        assert seen[seen.index("COMMIT") + 1] == "PRAGMA synchronous=FULL"
        seen.clear()
        await store.complete_batch([(entry.id, [trace(entry.id, "t")])])
        assert "PRAGMA synchronous=NORMAL" not in seen
        assert _synchronous(store) == FULL
    finally:
        await store.close()


async def test_a_claim_sharing_a_transaction_waits_for_the_disk(
    tmp_path: Path,
) -> None:
    """A claim grouped with a durable write commits as durably as that write."""
    store = SqliteStore(path=str(tmp_path / "s.db"))
    try:
        first, second = journal_entry(1), journal_entry(2)
        await store.append(first, [])
        (lease,) = await store.claim_batch("c1", 1, 0, T0)
        await store.append(second, [])
        seen = _watch(store)
        claimed, _ = await asyncio.gather(
            store.claim_batch("c1", 1, 0, T0),
            store.release(lease, T0, "handed back"),
        )
        assert [lease.entry.id for lease in claimed] == [second.id]
        assert seen.count("BEGIN IMMEDIATE") == 1  # one transaction for both
        assert "PRAGMA synchronous=NORMAL" not in seen
        assert _synchronous(store) == FULL
    finally:
        await store.close()


async def test_a_failed_claim_leaves_the_connection_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(path=str(tmp_path / "s.db"))
    try:
        await store.append(journal_entry(1), [])

        def busy() -> None:
            raise sqlite3.OperationalError("database is locked")

        with monkeypatch.context() as patch:
            patch.setattr(store, "_begin", busy)
            with pytest.raises(StoreUnavailableError, match="database is locked"):
                await store.claim_batch("c1", 1, 0, T0)
        assert _synchronous(store) == FULL
        assert len(await store.claim_batch("c1", 1, 0, T0)) == 1
    finally:
        await store.close()
