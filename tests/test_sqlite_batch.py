"""SQLite group commit: a batch of calls in one transaction, savepoints only on failure.

Calls that queue while a transaction is on its way to disk run together in the
next one, without a savepoint each. When one of them fails, the batch runs again
with a savepoint per call: the failing call gets its own error and the others
stand, exactly as if each had had its own transaction. The alert states of a
batch are written with one read and one write per payload; a Hypothesis
property checks that this keeps each alert's newest state, as comparing the
states one at a time in order does.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.errors import StoreUnavailableError
from receiver.store.base import AlertState, JournalEntry, newer_state
from receiver.store.sqlite import STATE_READ_CHUNK, SqliteStore, connection
from receiver.store.sqlite.journal import _newest

T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def entry(n: int, entry_id: str | None = None) -> JournalEntry:
    return JournalEntry(
        id=entry_id or f"e{n:04d}",
        source="alertmanager",
        received_at=T0 + timedelta(seconds=n),
        body=b'{"n": %d}' % n,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "r.db"))
    yield s
    s._db.close()


def statements(store: SqliteStore) -> list[str]:
    """Every statement the writer connection runs from now on."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


async def test_a_batch_without_failures_runs_in_one_transaction_without_savepoints(
    store: SqliteStore,
) -> None:
    """20 concurrent appends: one BEGIN, COMMIT and state read, one savepoint."""
    seen = statements(store)
    await asyncio.gather(
        *(
            store.append(entry(n), [AlertState(f"fp{n}", "firing", T0, T0)])
            for n in range(20)
        )
    )
    store._db.set_trace_callback(None)
    assert sum(s.startswith("BEGIN") for s in seen) == 1
    assert sum(s == "COMMIT" for s in seen) == 1
    # The appends go as one group: one savepoint around it, not one each.
    assert [s for s in seen if s.startswith("SAVEPOINT")] == ["SAVEPOINT appends"]
    assert sum("FROM alert_state" in s for s in seen) == 1
    count, _ = await store.pending()
    assert count == 20
    for n in range(20):
        assert await store.alert_state(f"fp{n}") == AlertState(
            f"fp{n}", "firing", T0, T0
        )


async def test_a_failing_call_fails_alone_and_the_rest_of_its_batch_stands(
    store: SqliteStore,
) -> None:
    """A duplicate journal id and a broken statement fail; their batch mates commit."""
    await store.append(entry(0, "taken"), [])

    def broken(db: sqlite3.Connection) -> None:
        db.execute("UPDATE no_such_table SET x = 1")

    seen = statements(store)
    results = await asyncio.gather(
        store.append(entry(1), [AlertState("fp1", "firing", T0, T0)]),
        store.append(entry(2, "taken"), [AlertState("fp2", "firing", T0, T0)]),
        store._run(broken),
        store.append(entry(3), [AlertState("fp3", "firing", T0, T0)]),
        return_exceptions=True,
    )
    store._db.set_trace_callback(None)
    assert results[0] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    # An operational error is the store being unavailable, for that call only.
    assert isinstance(results[2], StoreUnavailableError)
    assert results[3] is None
    # One optimistic attempt rolled back, then one savepoint per call: the
    # three appends are one call (their group), which tries them together
    # once more, then each in a savepoint of its own.
    assert sum(s == "ROLLBACK" for s in seen) == 1
    assert sum(s == "SAVEPOINT call" for s in seen) == 2
    assert sum(s == "SAVEPOINT appends" for s in seen) == 1
    assert sum(s == "SAVEPOINT append" for s in seen) == 3
    assert sum(s == "COMMIT" for s in seen) == 1
    assert await store.payload("e0001") is not None
    assert await store.payload("e0003") is not None
    stored = await store.payload("taken")
    assert stored is not None
    assert stored.body == entry(0).body  # the duplicate did not overwrite it
    assert await store.alert_state("fp1") is not None
    assert await store.alert_state("fp2") is None  # rolled back with its append
    assert await store.alert_state("fp3") is not None


async def test_a_lone_failing_call_gets_its_error_and_leaves_nothing(
    store: SqliteStore,
) -> None:
    """A batch of one that fails is rolled back and not run a second time."""
    await store.append(entry(0, "taken"), [])
    seen = statements(store)
    with pytest.raises(sqlite3.IntegrityError):
        await store.append(entry(1, "taken"), [AlertState("fpx", "firing", T0, T0)])
    store._db.set_trace_callback(None)
    assert sum(s.startswith("INSERT INTO journal") for s in seen) == 1
    assert await store.alert_state("fpx") is None
    count, _ = await store.pending()
    assert count == 1


async def test_a_payload_with_more_alerts_than_one_read_takes_keeps_every_state(
    store: SqliteStore,
) -> None:
    """Fingerprints are read in chunks: each alert of a large payload is kept."""
    n = STATE_READ_CHUNK * 2 + 7
    first = [AlertState(f"fp{i}", "firing", T0, T0) for i in range(n)]
    await store.append(entry(0), first)
    later = T0 + timedelta(minutes=1)
    # Half resolve (same occurrence: a resolve wins), half fire again (same
    # occurrence, firing after resolve would not win, but these never resolved).
    second = [
        AlertState(f"fp{i}", "resolved" if i % 2 else "firing", T0, later)
        for i in range(n)
    ]
    await store.append(entry(1), second)
    for i in (0, 1, STATE_READ_CHUNK, n - 1):
        assert await store.alert_state(f"fp{i}") == second[i]


async def test_a_large_payload_reads_every_stored_state_it_is_compared_with(
    store: SqliteStore,
) -> None:
    """Where the stored state must win, it does in every chunk of the read.

    Resolved alerts sent again as firing, same occurrence: a firing resend
    never un-resolves. A state a chunked read missed would look new, and the
    firing would be written over the resolve.
    """
    n = STATE_READ_CHUNK * 2 + 7
    resolved = [AlertState(f"fp{i}", "resolved", T0, T0) for i in range(n)]
    await store.append(entry(0), resolved)
    later = T0 + timedelta(minutes=1)
    await store.append(
        entry(1), [AlertState(f"fp{i}", "firing", T0, later) for i in range(n)]
    )
    for i in (0, STATE_READ_CHUNK - 1, STATE_READ_CHUNK, 2 * STATE_READ_CHUNK, n - 1):
        assert await store.alert_state(f"fp{i}") == resolved[i]


STARTS = [None, T0, T0 + timedelta(minutes=5)]
states = st.builds(
    AlertState,
    fingerprint=st.sampled_from(["a", "b", "c"]),
    status=st.sampled_from(["firing", "resolved"]),
    starts_at=st.sampled_from(STARTS),
    updated_at=st.sampled_from([T0, T0 + timedelta(minutes=1)]),
)


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.lists(states, max_size=6), min_size=1, max_size=6))
def test_batched_states_equal_one_at_a_time_in_order(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[list[AlertState]]
) -> None:
    """One batch leaves each alert the state one-at-a-time ``newer_state`` does."""
    expected: dict[str, AlertState] = {}
    for payload in payloads:
        for state in payload:
            if newer_state(expected.get(state.fingerprint), state):
                expected[state.fingerprint] = state

    async def run() -> dict[str, AlertState | None]:
        store = SqliteStore(str(tmp_path_factory.mktemp("batch") / "r.db"))
        try:
            await asyncio.gather(
                *(store.append(entry(n), p) for n, p in enumerate(payloads))
            )
            return {fp: await store.alert_state(fp) for fp in "abc"}
        finally:
            store._db.close()

    got = asyncio.run(run())
    assert got == {fp: expected.get(fp) for fp in "abc"}


ZONED = [None, T0, T0.astimezone(timezone(timedelta(hours=2))), T0 + timedelta(1)]
zoned_states = st.builds(
    AlertState,
    fingerprint=st.sampled_from(["a", "b"]),
    status=st.sampled_from(["firing", "resolved"]),
    starts_at=st.sampled_from(ZONED),
    updated_at=st.just(T0),
)


@given(
    known=st.dictionaries(st.sampled_from(["a", "b"]), zoned_states),
    states=st.lists(zoned_states, max_size=8),
)
def test_the_inlined_comparison_is_newer_state(
    known: dict[str, AlertState], states: list[AlertState]
) -> None:
    """``_newest`` keeps what ``newer_state`` one at a time keeps (zones, no start)."""
    expected: dict[str, AlertState | None] = dict(known)
    changed: dict[str, AlertState] = {}
    for state in states:
        if newer_state(expected.get(state.fingerprint), state):
            expected[state.fingerprint] = changed[state.fingerprint] = state
    latest: dict[str, AlertState | None] = dict(known)
    assert _newest(latest, states) == changed
    assert latest == expected


@pytest.fixture
def other_writer(store: SqliteStore) -> Iterator[sqlite3.Connection]:
    """Another connection to the same file holding the write lock (a worker process)."""
    other = sqlite3.connect(store.path, check_same_thread=False, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    yield other
    other.close()


async def test_an_append_waits_in_short_pauses_for_another_writer_then_commits(
    store: SqliteStore,
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer tries again while another holds the lock, first pause 0.1 ms."""
    pauses: list[float] = []
    real_sleep = connection.time.sleep

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            other_writer.execute("COMMIT")  # the other process's commit ends
        real_sleep(seconds)

    monkeypatch.setattr(connection.time, "sleep", sleep)
    await store.append(entry(1), [])
    assert pauses == [0.0001, 0.0002, 0.0004]
    assert [e.id for e in await store.payloads()] == ["e0001"]


async def test_an_append_fails_with_store_unavailable_when_the_lock_stays_held(
    store: SqliteStore,
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past BUSY_TIMEOUT the append fails (503 at the edge) and leaves nothing."""
    del other_writer
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.005)
    with pytest.raises(StoreUnavailableError, match="database is locked"):
        await store.append(entry(1), [])
    assert not store._db.in_transaction


async def test_appends_that_find_the_lock_held_past_the_timeout_all_fail(
    store: SqliteStore,
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group whose BEGIN fails: every append in it gets the store's error."""
    del other_writer
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.005)
    results = await asyncio.gather(
        store.append(entry(1), []), store.append(entry(2), []), return_exceptions=True
    )
    assert [type(r) for r in results] == [StoreUnavailableError] * 2


async def test_an_append_cancelled_before_its_group_is_written_is_left_out(
    store: SqliteStore,
    other_writer: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled while the writer waits for the lock: not journaled; its mate is."""
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(store.append(entry(1), []))
    second = asyncio.create_task(store.append(entry(2), []))
    cancelled = threading.Event()
    first.add_done_callback(lambda _: cancelled.set())
    real_sleep = connection.time.sleep

    def sleep(seconds: float) -> None:
        if not cancelled.is_set():
            loop.call_soon_threadsafe(first.cancel)
            assert cancelled.wait(5)
            other_writer.execute("COMMIT")  # the lock is free from here on
        real_sleep(seconds)

    monkeypatch.setattr(connection.time, "sleep", sleep)
    await second
    assert first.cancelled()
    assert [e.id for e in await store.payloads()] == ["e0002"]
