"""The batch half of the journal contract: ``claim_batch`` and ``complete_batch``.

Both stores, as in ``tests/test_store_contract.py`` (whose fixtures and helpers
this reuses): a batch is chosen by the rules of a single claim, each entry under its
own lease; entries of a batch the claimer never completed (it crashed
in the middle) are claimed again, and none of the completed ones is decided or
recorded twice.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import test_store_contract as contract
from test_store_contract import (
    T0,
    MakeStore,
    Tick,
    _forget_prefix,
    journal_entry,
    trace,
)

from receiver.store.base import DecisionQuery, Retention, Store
from receiver.store.redis import RedisStore
from receiver.store.sqlite import SqliteStore

LEASE = timedelta(minutes=5)
# The contract's fixtures: each test runs on SQLite and on Redis.
make_store = contract.make_store
store = contract.store
redis_url = contract.redis_url


async def test_a_batch_takes_the_oldest_entries_each_under_a_lease(
    store: Store,
) -> None:
    """claim_batch takes up to ``limit`` entries, oldest first, then the rest."""
    entries = [journal_entry(n) for n in range(5)]
    for entry in entries:
        await store.append(entry, [])
    first = await store.claim_batch("c1", 3, 1.0, T0)
    assert [lease.entry.id for lease in first] == [e.id for e in entries[:3]]
    assert all(lease.consumer == "c1" for lease in first)
    assert all(lease.entry.attempts == 1 for lease in first)
    assert all(lease.expires_at == T0 + Retention().lease for lease in first)
    assert first[1].entry.body == entries[1].body
    second = await store.claim_batch("c2", 3, 1.0, T0)
    assert [lease.entry.id for lease in second] == [e.id for e in entries[3:]]
    assert await store.claim_batch("c3", 3, 0, T0) == []
    assert await store.pending() == (5, entries[0].received_at)


async def test_a_batch_waits_for_the_first_entry(store: Store) -> None:
    """An empty journal: claim_batch waits for an append, then returns it."""
    waiting = asyncio.create_task(store.claim_batch("c1", 8, 5.0, T0))
    await asyncio.sleep(0)
    entry = journal_entry(1)
    await store.append(entry, [])
    leases = await waiting
    assert [lease.entry.id for lease in leases] == [entry.id]


async def test_a_batch_mixes_lapsed_leases_and_new_entries_oldest_first(
    store: Store,
) -> None:
    """Entries whose lease lapsed come back in a batch beside pending ones."""
    entries = [journal_entry(n) for n in range(4)]
    for entry in entries[:2]:
        await store.append(entry, [])
    dead = await store.claim_batch("dead", 2, 1.0, T0)
    assert len(dead) == 2
    for entry in entries[2:]:
        await store.append(entry, [])
    after = T0 + Retention().lease + timedelta(seconds=1)
    leases = await store.claim_batch("alive", 10, 0, after)
    assert sorted(lease.entry.id for lease in leases) == sorted(e.id for e in entries)
    attempts = {lease.entry.id: lease.entry.attempts for lease in leases}
    assert attempts == {
        entries[0].id: 2,
        entries[1].id: 2,
        entries[2].id: 1,
        entries[3].id: 1,
    }
    for lease in dead:
        assert await store.renew(lease, after) is None, "the old lease is lost"


async def test_concurrent_batches_never_share_an_entry(store: Store) -> None:
    """Concurrent batch claims over N entries deliver each entry exactly once."""
    entries = [journal_entry(n) for n in range(20)]
    for entry in entries:
        await store.append(entry, [])
    batches = await asyncio.gather(
        *(store.claim_batch(f"c{i}", 3, 0.3, T0) for i in range(10))
    )
    claimed = [lease.entry.id for batch in batches for lease in batch]
    assert sorted(claimed) == sorted(e.id for e in entries)


async def test_records_written_before_the_completion_stand(store: Store) -> None:
    """record_batch writes records, marking nothing done; the completion adds none.

    What the worker does: records as soon as an entry is decided, the done-mark
    once its incidents are folded. Decided again (a crash in between), its
    records are not written twice, neither by a second record_batch nor by
    a completion that carries records; a done entry gets none.
    """
    entries = [journal_entry(n) for n in range(3)]
    for entry in entries:
        await store.append(entry, [])
    await store.claim_batch("c1", 3, 1.0, T0)
    first, second, third = (e.id for e in entries)
    await store.record_batch(
        [(first, [trace(first, "a0"), trace(first, "a1")]), (second, [])]
    )
    assert await store.pending() == (3, entries[0].received_at)  # none done
    await store.record_batch([(first, [trace(first, "a-again")])])
    await store.complete_batch(
        [(first, [trace(first, "a-done")]), (second, [trace(second, "b0")])]
    )
    await store.complete(third, [trace(third, "c0")])
    await store.record_batch([(third, [trace(third, "c-late")])])
    assert await store.pending() == (0, None)
    tags = sorted(d["tag"] for d in await store.decisions(DecisionQuery()))
    assert tags == ["a0", "a1", "b0", "c0"]


async def test_records_retention_dropped_are_written_again_by_the_next_attempt(
    store: Store,
) -> None:
    """An unfinished entry whose records were pruned records its next decision.

    Parked after its records were written, retried once they were past
    ``max_age``: decided again, its new records are written (by record_batch or
    by a completion that carries them), so the entry is not done with none.
    One whose records are still kept gets no second set. Redis's "recorded"
    mark outlived the records and the retried entries were done with none.
    """
    later = T0 + Retention().max_age + timedelta(hours=1)
    old, also_old, recent = (journal_entry(n) for n in range(3))
    for entry in (old, also_old, recent):
        await store.append(entry, [])
    leases = await store.claim_batch("c1", 3, 0, T0)
    await store.record_batch(
        [
            (old.id, [trace(old.id, "old", at=T0)]),
            (also_old.id, [trace(also_old.id, "also-old", at=T0)]),
            (recent.id, [trace(recent.id, "recent", at=later)]),
        ]
    )
    for lease in leases:
        await store.park(lease, "the worker crashed while folding it", T0)
    await store.prune(later)  # the records decided at T0 are past max_age
    for entry in (old, also_old, recent):
        assert await store.retry_parked(entry.id, later)
    await store.claim_batch("c2", 3, 0, later)
    await store.record_batch(
        [
            (old.id, [trace(old.id, "old-again", at=later)]),
            (recent.id, [trace(recent.id, "recent-again", at=later)]),
        ]
    )
    await store.complete_batch(
        [
            (old.id, ()),
            (also_old.id, [trace(also_old.id, "also-old-done", at=later)]),
            (recent.id, ()),
        ]
    )
    assert await store.pending() == (0, None)
    tags = {
        entry.id: [
            d["tag"] for d in await store.decisions(DecisionQuery(payload_id=entry.id))
        ]
        for entry in (old, also_old, recent)
    }
    assert tags == {
        old.id: ["old-again"],
        also_old.id: ["also-old-done"],
        recent.id: ["recent"],
    }


async def test_complete_batch_records_each_entry_once(store: Store) -> None:
    """complete_batch marks every entry done with its records; repeats are skipped."""
    entries = [journal_entry(n) for n in range(3)]
    for entry in entries:
        await store.append(entry, [])
    leases = await store.claim_batch("c1", 3, 1.0, T0)
    assert len(leases) == 3
    await store.complete(entries[0].id, [trace(entries[0].id, "a0")])
    await store.complete_batch(
        [
            (entries[0].id, [trace(entries[0].id, "a0-again")]),
            (entries[1].id, [trace(entries[1].id, "b0"), trace(entries[1].id, "b1")]),
            (entries[2].id, []),
            (entries[1].id, [trace(entries[1].id, "b-twice")]),
        ]
    )
    assert await store.pending() == (0, None)
    tags = sorted(d["tag"] for d in await store.decisions(DecisionQuery()))
    assert tags == ["a0", "b0", "b1"]
    await store.complete_batch([])
    assert await store.claim_batch("c2", 3, 0, T0) == []


async def test_a_batch_left_half_done_is_claimed_again_without_doubles(
    make_store: MakeStore,
) -> None:
    """A claimer dies mid-batch: the rest is re-claimed, the done part never.

    The late completion of the dead claimer (it was only slow) records nothing
    twice either.
    """
    store = make_store(Retention(lease=LEASE))
    entries = [journal_entry(n) for n in range(5)]
    for entry in entries:
        await store.append(entry, [])
    batch = await store.claim_batch("dead", 5, 1.0, T0)
    assert len(batch) == 5
    done = [(e.id, [trace(e.id, f"first-{e.id}")]) for e in entries[:2]]
    await store.complete_batch(done)
    before_lapse = T0 + LEASE - timedelta(seconds=1)
    assert await store.claim_batch("alive", 10, 0, before_lapse) == []
    after = T0 + LEASE + timedelta(seconds=1)
    again = await store.claim_batch("alive", 10, 0, after)
    assert [lease.entry.id for lease in again] == [e.id for e in entries[2:]]
    assert all(lease.entry.attempts == 2 for lease in again)
    await store.complete_batch(
        [(lease.entry.id, [trace(lease.entry.id, "second")]) for lease in again]
    )
    await store.complete_batch(  # the dead claimer's late write
        [(lease.entry.id, [trace(lease.entry.id, "late")]) for lease in batch]
    )
    records = await store.decisions(DecisionQuery(limit=100))
    assert sorted(d["payload_id"] for d in records) == sorted(e.id for e in entries)
    assert not [d for d in records if d["tag"] == "late"]
    assert await store.pending() == (0, None)


async def test_sqlite_reopened_hands_back_a_crashed_batch_at_once(
    tmp_path: object,
) -> None:
    """SQLite serves one instance: reopening reclaims a dead process's batch now."""
    path = str(tmp_path) + "/state.db"
    crashed = SqliteStore(path=path)
    entries = [journal_entry(n) for n in range(4)]
    for entry in entries:
        await crashed.append(entry, [])
    batch = await crashed.claim_batch("dead/0", 4, 1.0, T0)
    await crashed.complete(batch[0].entry.id, [trace(batch[0].entry.id, "t")])
    await crashed.close()  # the process is gone; its leases run for minutes yet
    store = SqliteStore(path=path)
    try:
        again = await store.claim_batch("new/0", 10, 0, T0)
        assert [lease.entry.id for lease in again] == [e.id for e in entries[1:]]
    finally:
        await store.close()


async def test_redis_gives_a_consumer_back_a_batch_whose_reply_was_lost(
    redis_url: str,
) -> None:
    """Redis: the same consumer claiming again gets its unfinished batch at once.

    (Its previous claim's reply never arrived; nothing waits for the lease.)
    """
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    try:
        entries = [journal_entry(n) for n in range(4)]
        for entry in entries:
            await store.append(entry, [])
        lost = await store.claim_batch("inc/0", 3, 1.0, T0)
        await store.complete(lost[0].entry.id, [])
        clock = Tick()
        again = await store.claim_batch("inc/0", 3, 0, clock())
        ids = [lease.entry.id for lease in again]
        assert ids == [entries[1].id, entries[2].id, entries[3].id]
        attempts = [lease.entry.attempts for lease in again]
        assert attempts == [2, 2, 1]
        assert await store.claim_batch("other", 3, 0, clock()) == []
        await store.complete_batch([(i, []) for i in ids])
        assert await store.pending() == (0, None)
    finally:
        await store.close()
        await _forget_prefix(redis_url, prefix)


async def test_last_runs_reads_several_cooldowns_at_once(store: Store) -> None:
    """last_runs answers as last_run would for each scope, expired and unknown too."""
    hour = timedelta(hours=1)
    await store.set_last_run("a", T0, hour)
    await store.set_last_run("b", T0 - 2 * hour, hour)  # expired by T0
    await store.set_last_run("c", T0 + timedelta(minutes=1), hour)
    scopes = ["a", "b", "c", "never", "a"]
    found = await store.last_runs(scopes, T0 + timedelta(minutes=2))
    assert found == {"a": T0, "b": None, "c": T0 + timedelta(minutes=1), "never": None}
    for scope in scopes:
        assert found[scope] == await store.last_run(scope, T0 + timedelta(minutes=2))
    assert await store.last_runs([], T0) == {}
    assert await store.last_runs(["a"], T0 + 2 * hour) == {"a": None}
