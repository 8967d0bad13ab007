"""The SQLite incident store on the store's own file writes through its writer.

As the service opens it (``incident_store_for``): no connection of its own, so
its writes join the journal's transactions (one write lock, one fsync) instead
of waiting for the lock between them; its reads go to the store's reader.
The incident store's state machine (``test_incident_store.py``) runs it beside
the stand-alone one against the same model.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from receiver.app_incidents import incident_store_for
from receiver.errors import StoreUnavailableError
from receiver.settings import Settings
from receiver.store.base import JournalEntry
from receiver.store.incidents_base import IncidentRecord
from receiver.store.incidents_sqlite import SqliteIncidentStore
from receiver.store.sqlite import SqliteStore

AT = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)


def record(incident_id: str, version: int = 1) -> IncidentRecord:
    return IncidentRecord(
        id=incident_id,
        keys=(f"k-{incident_id}",),
        state="triggered",
        severity="P2",
        opened_at=AT,
        version=version,
        watch=True,
        body={"id": incident_id, "n": version},
    )


def commits(store: SqliteStore) -> list[list[str]]:
    """Statements of the store's writer, transaction by transaction (growing)."""
    seen: list[list[str]] = [[]]

    def trace(statement: str) -> None:
        seen[-1].append(statement)
        if statement == "COMMIT":
            seen.append([])

    store._db.set_trace_callback(trace)
    return seen


async def test_the_service_opens_it_on_the_stores_writer(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "receiver.db"))
    incidents = incident_store_for(store, Settings().store)
    assert isinstance(incidents, SqliteIncidentStore)
    seen = commits(store)
    try:
        assert await incidents.create(record("INC-1")) is not None
        assert await incidents.get("INC-1") is not None
    finally:
        await incidents.close()
        await store.close()
    # Its insert ran on the store's writer connection, in a transaction of its.
    assert any("INSERT INTO incidents" in s for batch in seen for s in batch), (
        "the incident write did not go through the store's writer"
    )


async def test_its_writes_share_a_commit_with_the_journals(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "receiver.db"))
    incidents = SqliteIncidentStore(store.path, host=store)
    await incidents.create(record("INC-0"))  # its tables, before the trace
    seen = commits(store)
    entry = JournalEntry("p-1", "alertmanager", AT, b'{"alerts": []}')
    try:
        # Queued together: one transaction, one COMMIT (one fsync) for both.
        await asyncio.gather(
            store.append(entry, []), incidents.update(record("INC-0", 2))
        )
    finally:
        await incidents.close()
        await store.close()
    together = [
        batch
        for batch in seen
        if any("UPDATE incidents" in s for s in batch)
        and any("journal" in s for s in batch)
    ]
    assert together, seen


async def test_a_failing_incident_write_fails_alone(tmp_path: Path) -> None:
    """Its error is its own: the journal's call in the same transaction stands."""
    store = SqliteStore(str(tmp_path / "receiver.db"))
    incidents = SqliteIncidentStore(store.path, host=store)
    await incidents.create(record("INC-0"))
    seen = commits(store)
    entry = JournalEntry("p-1", "alertmanager", AT, b'{"alerts": []}')

    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    try:
        appended, failed = await asyncio.gather(
            store.append(entry, []),
            incidents._run(broken),
            return_exceptions=True,
        )
        assert appended is None
        assert isinstance(failed, StoreUnavailableError)
        assert "no_such_table" in str(failed)
    finally:
        await incidents.close()
        await store.close()
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT id FROM journal").fetchall() == [("p-1",)]
    # The batch was run again, each call on its own, after the failure.
    assert any("SAVEPOINT" in s for batch in seen for s in batch), seen


async def test_closing_it_leaves_the_store_open(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "receiver.db"))
    incidents = SqliteIncidentStore(store.path, host=store)
    await incidents.create(record("INC-1"))
    await incidents.close()
    try:
        with pytest.raises(StoreUnavailableError, match="incident store"):
            await incidents.get("INC-1")
        entry = JournalEntry("p-1", "alertmanager", AT, b'{"alerts": []}')
        await store.append(entry, [])  # the store still writes
        again = SqliteIncidentStore(store.path, host=store)
        assert await again.get("INC-1") is not None
    finally:
        await store.close()


async def test_its_tables_are_added_to_an_existing_store_file(tmp_path: Path) -> None:
    path = str(tmp_path / "receiver.db")
    first = SqliteStore(path)
    await first.close()
    store = SqliteStore(path)
    incidents = SqliteIncidentStore(path, host=store)
    try:
        assert await incidents.get("INC-9") is None  # a read adds the tables too
        assert await incidents.create(record("INC-9")) is not None
    finally:
        await incidents.close()
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM incidents").fetchone() == (1,)
