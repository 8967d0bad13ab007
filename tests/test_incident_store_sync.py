"""Fold writes commit without waiting for the disk; every other write waits.

A write that folds traces carries their marks, and the worker marks their
payloads done afterwards with a durable commit on the same file (one
write-ahead log for every connection): that commit puts the fold on disk too,
and a power cut before it decides the payloads again. So a fold does not pay
an fsync of its own (a burst that opens 500 incidents paid 500). A person's
change or the ticker's has no such commit behind it: durable on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from receiver.store.incidents_base import IncidentRecord
from receiver.store.incidents_sqlite import SqliteIncidentStore

AT = datetime(2026, 11, 26, 10, tzinfo=UTC)


def _record(version: int, key: str = "am:g") -> IncidentRecord:
    return IncidentRecord(
        id="INC-2026-11-26-001",
        keys=(key,),
        state="triggered",
        severity="P1",
        opened_at=AT,
        version=version,
        watch=True,
    )


class Traced:
    """The statements the store's connection runs, by call."""

    def __init__(self, store: SqliteIncidentStore) -> None:
        self.lines: list[str] = []
        store._side._open().set_trace_callback(self.lines.append)

    def take(self) -> list[str]:
        lines = [line.strip() for line in self.lines]
        self.lines.clear()
        return lines


def _synchronous(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PRAGMA synchronous")]


async def test_fold_writes_are_not_synced_and_the_rest_are(tmp_path: Path) -> None:
    store = SqliteIncidentStore(str(tmp_path / "receiver.db"))
    try:
        traced = Traced(store)
        marks = [("0190a0000001", "fp-1")]
        assert await store.create_numbered("2026-11-26", lambda _n: _record(1), marks)
        created = traced.take()
        assert _synchronous(created) == [
            "PRAGMA synchronous=NORMAL",
            "PRAGMA synchronous=FULL",
        ]
        # NORMAL around the transaction itself, FULL again before the next.
        begin = created.index("BEGIN IMMEDIATE")
        assert created.index("PRAGMA synchronous=NORMAL") < begin
        assert created.index("PRAGMA synchronous=FULL") > created.index("COMMIT")
        assert await store.update(_record(2), marks)
        assert _synchronous(traced.take()) == [
            "PRAGMA synchronous=NORMAL",
            "PRAGMA synchronous=FULL",
        ]
        await store.mark_folded([("0190a0000002", "fp-2")])
        assert _synchronous(traced.take()) == [
            "PRAGMA synchronous=NORMAL",
            "PRAGMA synchronous=FULL",
        ]
        # A person's change, the ticker's: no marks, durable on its own.
        assert await store.update(_record(3))
        assert _synchronous(traced.take()) == []
        assert await store.folded(marks) == set(marks)
    finally:
        await store.close()


async def test_a_failed_fold_write_leaves_the_connection_durable(
    tmp_path: Path,
) -> None:
    store = SqliteIncidentStore(str(tmp_path / "receiver.db"))
    try:
        traced = Traced(store)
        assert await store.update(_record(5), [("p", "f")]) is None  # no such one
        assert _synchronous(traced.take())[-1] == "PRAGMA synchronous=FULL"
        assert await store.create(_record(1))
        assert _synchronous(traced.take()) == []
    finally:
        await store.close()
