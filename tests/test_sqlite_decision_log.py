"""SQLite keeps the decision log in a file of its own, beside the store's.

Recording a worker's decisions then never holds the write lock the edge
journals under. The price is two commits per completion instead of one: the
records first, then the entry marked done. A crash between the two decides the
entry again, and the records written first stand (they tell what was done);
nothing is recorded twice. A file an older version wrote, decisions and all in
one file, is moved over when it is opened, and a move a crash cut short is
finished the next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_store_contract import Tick, journal_entry, trace

from receiver.errors import ConfigError, StoreUnavailableError
from receiver.store.base import DecisionQuery, Retention
from receiver.store.sqlite import STATE_READ_CHUNK, SqliteStore, decisions_path
from receiver.store.sqlite.schema import DECISION_SCHEMA, SCHEMA, insert_decisions

# Claims and pruning read a clock that moves on every reading.
now = Tick()


def _tags(records: list[Any]) -> list[str]:
    return sorted(str(r["tag"]) for r in records)


async def _recorded(store: SqliteStore, entry_id: str) -> list[str]:
    return _tags(await store.decisions(DecisionQuery(payload_id=entry_id)))


async def test_journaling_never_waits_for_the_decision_log(tmp_path: Path) -> None:
    """With the log's write lock held elsewhere, a payload is still journaled."""
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    holder = sqlite3.connect(decisions_path(path), isolation_level=None)
    try:
        entry = journal_entry(1)
        await store.append(entry, [])
        (lease,) = await store.claim_batch("c1", 1, 0, now())
        holder.execute("BEGIN IMMEDIATE")  # the log is being written elsewhere
        completing = asyncio.create_task(
            store.complete(entry.id, [trace(entry.id, "t")])
        )
        # The edge's write, and a claim, go through while the log is held.
        await asyncio.wait_for(store.append(journal_entry(2), []), 30)
        assert [x.entry.id for x in await store.claim_batch("c1", 1, 0, now())]
        assert not completing.done()
        holder.execute("COMMIT")
        await asyncio.wait_for(completing, 30)
        assert await _recorded(store, lease.entry.id) == ["t"]
    finally:
        holder.close()
        await store.close()


async def test_a_failure_between_the_two_commits_records_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records on disk, entry not done: deciding it again records nothing more."""
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        entry = journal_entry(1)
        await store.append(entry, [])
        await store.claim_batch("c1", 1, 0, now())

        def locked() -> None:
            raise sqlite3.OperationalError("database is locked")

        with monkeypatch.context() as patch:
            patch.setattr(store, "_begin", locked)  # the store's file, not the log's
            with pytest.raises(StoreUnavailableError, match="database is locked"):
                await store.complete(entry.id, [trace(entry.id, "first")])
        assert await _recorded(store, entry.id) == ["first"]
        assert (await store.pending())[0] == 1  # not done: it is decided again
        await store.complete(entry.id, [trace(entry.id, "again")])
        assert await _recorded(store, entry.id) == ["first"]
        assert (await store.pending())[0] == 0
        # And once done, a late completion (a lapsed lease) changes nothing.
        await store.complete(entry.id, [trace(entry.id, "late")])
        assert await _recorded(store, entry.id) == ["first"]
    finally:
        await store.close()


async def test_a_crash_between_the_two_commits_decides_again_and_records_once(
    tmp_path: Path,
) -> None:
    """The process dies after the log's commit: nothing is recorded twice.

    Reopened, the entry is claimed again, and completing it keeps the records
    written before the crash.
    """
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    entry = journal_entry(1)
    await store.append(entry, [])
    await store.claim_batch("c1", 1, 0, now())
    # What ``complete`` commits first, and then nothing more: the crash.
    await store._log.write(
        lambda db: insert_decisions(db, [(entry.id, trace(entry.id, "before"))])
    )
    await store.close()

    store = SqliteStore(path)
    try:
        (lease,) = await store.claim_batch("c2", 1, 0, now())
        assert lease.entry.id == entry.id
        await store.complete(entry.id, [trace(entry.id, "after")])
        assert await _recorded(store, entry.id) == ["before"]
        assert await store.pending() == (0, None)
    finally:
        await store.close()


async def test_a_late_completion_of_a_done_entry_records_nothing_after_pruning(
    tmp_path: Path,
) -> None:
    """Its records pruned, a done entry still gets none from a lapsed worker."""
    store = SqliteStore(
        str(tmp_path / "s.db"),
        retention=Retention(max_decisions=1, max_age=timedelta(days=3650)),
    )
    try:
        first, second = journal_entry(1), journal_entry(2)
        for entry in (first, second):
            await store.append(entry, [])
        await store.claim_batch("c1", 2, 0, now())
        await store.complete(first.id, [trace(first.id, "first")])
        await store.complete(second.id, [trace(second.id, "second")])
        await store.prune(now())
        assert await _recorded(store, first.id) == []  # pruned: one kept
        await store.complete(first.id, [trace(first.id, "late")])
        assert await _recorded(store, first.id) == []
    finally:
        await store.close()


def _old_file(path: str, records: int) -> None:
    """A store file as an older version wrote it: decisions in the same file."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA + DECISION_SCHEMA)
        db.execute("BEGIN")
        insert_decisions(
            db,
            [
                (f"p{n}", trace(f"p{n}", f"old-{n}", rule=f"rule-{n % 2}"))
                for n in range(records)
            ],
        )
        db.execute("COMMIT")
        db.execute("PRAGMA user_version=1")
    finally:
        db.close()


def _tables(path: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()


async def test_an_older_file_has_its_decisions_moved_to_the_log(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "s.db")
    _old_file(path, 5)
    store = SqliteStore(path)
    try:
        assert _tags(await store.decisions(DecisionQuery(limit=50))) == [
            f"old-{n}" for n in range(5)
        ]
        # The tag index came along: a filter finds them.
        assert _tags(await store.decisions(DecisionQuery(rule="rule-1"))) == [
            "old-1",
            "old-3",
        ]
        await store.record([{**trace("p9", "new"), "payload_id": "p9"}])
        newest = await store.decisions(DecisionQuery(limit=1))
        assert [r["tag"] for r in newest] == ["new"]  # numbered after the old ones
    finally:
        await store.close()
    assert not {"decisions", "decision_index"} & _tables(path)
    assert {"decisions", "decision_index"} <= _tables(decisions_path(path))
    store = SqliteStore(path)  # opened again: nothing moved twice
    try:
        assert len(await store.decisions(DecisionQuery(limit=50))) == 6
    finally:
        await store.close()


async def test_a_move_cut_short_is_finished_without_copies(tmp_path: Path) -> None:
    """Copied, then a crash before the old tables were dropped: no copies.

    Opened again, each record is in the log once.
    """
    path = str(tmp_path / "s.db")
    _old_file(path, 4)
    # Half of them already copied, as a crashed move leaves them.
    log = sqlite3.connect(decisions_path(path), isolation_level=None)
    try:
        log.execute("PRAGMA journal_mode=WAL")
        log.executescript(DECISION_SCHEMA)
        log.execute(f"ATTACH DATABASE '{path}' AS old")
        log.execute("INSERT INTO decisions SELECT * FROM old.decisions WHERE seq <= 2")
    finally:
        log.close()
    store = SqliteStore(path)
    try:
        assert _tags(await store.decisions(DecisionQuery(limit=50))) == [
            f"old-{n}" for n in range(4)
        ]
        assert len(await store.decisions(DecisionQuery(rule="rule-0"))) == 2
    finally:
        await store.close()


async def test_two_processes_opening_an_older_file_move_it_once(
    tmp_path: Path,
) -> None:
    """The edge and its worker open the file at once: one moves, none fails."""
    path = str(tmp_path / "s.db")
    _old_file(path, 50)
    opened = await asyncio.gather(
        *(asyncio.to_thread(SqliteStore, path, reclaim=False) for _ in range(4))
    )
    try:
        for store in opened:
            assert len(await store.decisions(DecisionQuery(limit=100))) == 50
            assert len(await store.decisions(DecisionQuery(rule="rule-0"))) == 25
    finally:
        for store in opened:
            await store.close()
    assert "decisions" not in _tables(path)


@pytest.mark.parametrize("which", ["store", "decision log"])
def test_a_file_that_cannot_be_opened_is_named(tmp_path: Path, which: str) -> None:
    """Not a traceback: a ConfigError (``serve`` logs it in one line) naming it."""
    path = str(tmp_path / "s.db")
    blocked = path if which == "store" else decisions_path(path)
    Path(blocked).mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match=f"cannot open {blocked}: unable to open"):
        SqliteStore(path)


async def test_a_batch_larger_than_a_read_is_recorded_once_each(
    tmp_path: Path,
) -> None:
    """More entries than one read holds: each is recorded once, done once."""
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        n = STATE_READ_CHUNK * 2 + 3
        entries = [journal_entry(i) for i in range(n)]
        for entry in entries:
            await store.append(entry, [])
        await store.claim_batch("c1", n, 0, now())
        ids = [e.id for e in entries]
        # The last of the batch done before, the one past a chunk recorded before.
        await store.complete(ids[-1], [trace(ids[-1], "before")])
        await store._log.write(
            lambda db: insert_decisions(
                db, [(ids[STATE_READ_CHUNK], trace(ids[STATE_READ_CHUNK], "before"))]
            )
        )
        await store.complete_batch([(i, [trace(i, "batch")]) for i in ids])
        assert await store.pending() == (0, None)
        page = await store.decisions(DecisionQuery(limit=n + 10))
        assert len(page) == n
        tags = {str(r["payload_id"]): str(r["tag"]) for r in page}
        assert tags[ids[-1]] == tags[ids[STATE_READ_CHUNK]] == "before"
        assert tags[ids[0]] == tags[ids[STATE_READ_CHUNK + 1]] == "batch"
    finally:
        await store.close()


def _log_order(path: str) -> list[str]:
    """The payload ids of the decision log's records, in the order written."""
    with contextlib.closing(sqlite3.connect(decisions_path(path))) as db:
        rows = db.execute("SELECT payload_id FROM decisions ORDER BY seq")
        return [r[0] for r in rows]


class _FirstReadHeld(SqliteStore):
    """Holds the first completion's look at which entries are done."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.looks = 0
        self.second_looked = asyncio.Event()
        self.release = asyncio.Event()

    async def _read(self, fn: Any) -> Any:
        if getattr(fn, "__name__", "") != "done_before":
            return await super()._read(fn)
        self.looks += 1
        if self.looks == 1:
            await self.release.wait()
            return await super()._read(fn)
        try:
            return await super()._read(fn)
        finally:
            self.second_looked.set()


async def test_batches_write_their_records_in_the_order_they_came(
    tmp_path: Path,
) -> None:
    """Two completions at once: the first's records come first, though it is slower.

    The second is ready first (its look at the journal returns before the
    first's), and waits for its turn: the log keeps decisions in the order they
    were decided.
    """
    path = str(tmp_path / "s.db")
    store = _FirstReadHeld(path)
    try:
        first, second = journal_entry(1), journal_entry(2)
        for entry in (first, second):
            await store.append(entry, [])
        await store.claim_batch("c1", 2, 0, now())
        one = asyncio.create_task(store.complete(first.id, [trace(first.id, "a")]))
        two = asyncio.create_task(store.complete(second.id, [trace(second.id, "b")]))
        await asyncio.wait_for(store.second_looked.wait(), 30)
        assert _log_order(path) == []  # the second waits for the first's turn
        store.release.set()
        await asyncio.wait_for(asyncio.gather(one, two), 30)
        assert _log_order(path) == [first.id, second.id]
        assert await store.pending() == (0, None)
    finally:
        await store.close()


async def test_a_batch_that_fails_before_its_records_does_not_hold_the_next(
    tmp_path: Path,
) -> None:
    """A record that cannot be written fails its batch alone; the next is written."""
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        first, second = journal_entry(1), journal_entry(2)
        for entry in (first, second):
            await store.append(entry, [])
        await store.claim_batch("c1", 2, 0, now())
        broken = {**trace(first.id, "a"), "detail": object()}  # not JSON
        one = asyncio.create_task(store.complete(first.id, [broken]))
        two = asyncio.create_task(store.complete(second.id, [trace(second.id, "b")]))
        with pytest.raises(TypeError):
            await asyncio.wait_for(one, 30)
        await asyncio.wait_for(two, 30)
        assert await _recorded(store, first.id) == []
        assert await _recorded(store, second.id) == ["b"]
        assert (await store.pending())[0] == 1  # the first is decided again
    finally:
        await store.close()


async def test_the_next_batch_records_while_a_done_mark_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's done-marks wait for the store's file; the next batch's records don't.

    With the store's write lock held elsewhere, the first completion has its
    records written and waits to mark its entry done; the second still writes
    its records meanwhile. Both finish once the lock is let go.
    """
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    holder = sqlite3.connect(path, isolation_level=None)
    logged = [asyncio.Event(), asyncio.Event()]  # each batch's records committed
    submitted = 0
    submit = store._log.submit

    def watched(fn: Any) -> Any:
        nonlocal submitted
        written = submit(fn)
        event = logged[submitted]
        submitted += 1

        async def wait() -> Any:
            try:
                return await written
            finally:
                event.set()

        return wait()

    monkeypatch.setattr(store._log, "submit", watched)
    try:
        first, second = journal_entry(1), journal_entry(2)
        for entry in (first, second):
            await store.append(entry, [])
        await store.claim_batch("c1", 2, 0, now())
        holder.execute("BEGIN IMMEDIATE")  # the store's file is written elsewhere
        one = asyncio.create_task(store.complete(first.id, [trace(first.id, "a")]))
        two = asyncio.create_task(store.complete(second.id, [trace(second.id, "b")]))
        await asyncio.wait_for(logged[1].wait(), 30)
        assert _log_order(path) == [first.id, second.id]
        assert not one.done()  # its done-mark waits for the lock
        assert not two.done()
        holder.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(one, two), 30)
        assert await store.pending() == (0, None)
    finally:
        holder.close()
        await store.close()
