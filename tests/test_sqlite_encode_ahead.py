"""SQLite's ``complete_batch`` encodes a batch's records before its transaction.

Every microsecond the worker spends encoding records inside the decision log's
transaction holds its write lock for longer. Up to ``ENCODE_AHEAD`` records
are encoded before the lock is taken; a bigger batch (a storm) is encoded as it is
written, so its records are never all in memory at once. Both ways must store
the same rows and fail the same way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_store_contract import T0, journal_entry, trace

from receiver.store.sqlite import SqliteStore, decisions_path
from receiver.store.sqlite import journal as sqlite_journal
from receiver.store.sqlite import schema as sqlite_schema

# The streamed path: any batch is bigger than this.
STREAMED = 0


async def _claimed(path: Path, count: int) -> tuple[SqliteStore, list[str]]:
    store = SqliteStore(path=str(path))
    entries = [journal_entry(n) for n in range(count)]
    for entry in entries:
        await store.append(entry, [])
    leases = await store.claim_batch("c1", count, 1.0, T0)
    assert len(leases) == count
    return store, [e.id for e in entries]


def _batch(ids: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Records with every tag kind, an entry of none, and an entry given twice."""
    return [
        (ids[0], [trace(ids[0], "a0", rule="r-a", playbook="p-a", decision="run")]),
        (
            ids[1],
            [
                trace(ids[1], "b0", fingerprint="fp-b0", decision="skip"),
                trace(ids[1], "b1", fingerprint="fp-b1", rule="r-b"),
            ],
        ),
        (ids[2], []),
        (ids[1], [trace(ids[1], "b-twice")]),  # a repeat: skipped
    ]


def _rows(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    db = sqlite3.connect(decisions_path(str(path)))
    try:
        decisions = db.execute(
            "SELECT seq, payload_id, fingerprint, decided_at, record FROM decisions "
            "ORDER BY seq"
        ).fetchall()
        first = decisions[0][0] if decisions else 0
        index = db.execute(
            "SELECT kind, value, seq - ? FROM decision_index ORDER BY seq, kind, value",
            (first,),
        ).fetchall()
        return [d[1:] for d in decisions], index
    finally:
        db.close()


@pytest.mark.parametrize("ahead", [sqlite_journal.ENCODE_AHEAD, STREAMED])
async def test_records_are_encoded_outside_the_write_lock_up_to_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    """Encoded before the transaction up to the bound, inside it above (a storm)."""
    monkeypatch.setattr(sqlite_journal, "ENCODE_AHEAD", ahead)
    store, ids = await _claimed(tmp_path / "s.db", 3)
    held: list[bool] = []
    encode = sqlite_journal.encode_decision

    def watched(payload_id: str, record: Any) -> Any:
        held.append(store._log._lock.locked())
        return encode(payload_id, record)

    # Both names it is called by: ahead of the batch, and as a storm is written.
    monkeypatch.setattr(sqlite_journal, "encode_decision", watched)
    monkeypatch.setattr(sqlite_schema, "encode_decision", watched)
    try:
        await store.complete_batch(_batch(ids))
    finally:
        await store.close()
    # Only what is written (the repeat of an entry is not): before the lock up
    # to the bound, under it as it is written above.
    assert held == [not ahead] * 3


async def test_both_ways_store_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same decisions, same tags, same skipped repeats, whichever way they went."""
    got = []
    for ahead in (sqlite_journal.ENCODE_AHEAD, STREAMED):
        monkeypatch.setattr(sqlite_journal, "ENCODE_AHEAD", ahead)
        path = tmp_path / f"{ahead}.db"
        store, ids = await _claimed(path, 3)
        try:
            await store.complete(ids[0], [trace(ids[0], "done-before")])
            # Ids differ between the two stores: compare with them renamed.
            await store.complete_batch(_batch(ids))
            assert await store.pending() == (0, None)
        finally:
            await store.close()
        decisions, index = _rows(path)
        names = {entry_id: f"entry-{n}" for n, entry_id in enumerate(ids)}
        renamed = [
            (
                names[payload_id],
                fingerprint,
                decided_at,
                record.replace(payload_id, names[payload_id]),
            )
            for payload_id, fingerprint, decided_at, record in decisions
        ]
        got.append((renamed, index))
    assert got[0] == got[1]
    tags = [row[3] for row in got[0][0]]
    assert ['"tag":"done-before"' in t for t in tags] == [True, False, False]
    assert ['"tag":"b0"' in t for t in tags] == [False, True, False]
    assert ("decision", "skip", 1) in got[0][1]


@pytest.mark.parametrize("ahead", [sqlite_journal.ENCODE_AHEAD, STREAMED])
async def test_a_record_that_cannot_be_encoded_fails_the_batch_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    """The caller gets the encoder's error; no entry of the batch is recorded."""
    monkeypatch.setattr(sqlite_journal, "ENCODE_AHEAD", ahead)
    path = tmp_path / "s.db"
    store, ids = await _claimed(path, 2)
    broken = trace(ids[1], "broken")
    broken["matches"][0]["steps"][0]["detail"] = object()
    try:
        with pytest.raises(TypeError):
            await store.complete_batch(
                [(ids[0], [trace(ids[0], "fine")]), (ids[1], [broken])]
            )
        assert await store.pending() == (2, T0)
        assert _rows(path) == ([], [])
        # The batch without the broken record still goes in afterwards.
        await store.complete_batch([(ids[0], [trace(ids[0], "fine")])])
        assert await store.pending() == (1, journal_entry(1).received_at)
    finally:
        await store.close()
