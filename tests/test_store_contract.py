"""The ``Store`` contract: one suite every implementation passes.

Each test runs against SQLite (a file in ``tmp_path``) and Redis (a throwaway
``redis-server`` for the session, or ``RECEIVER_TEST_REDIS_URL``, with a unique
key prefix per test). Every time that decides something is the caller's: a
``Tick`` clock that advances on every reading, or explicit instants where a test
is about one. Expiry never waits on a backend's own clock. The random-sequence
counterpart is ``tests/test_store_model.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from peers import free_port, run_redis

from receiver.engine.guards import GuardDefaults
from receiver.errors import StoreUnavailableError
from receiver.model import iso
from receiver.store.base import (
    FORGET_DEAD_AFTER,
    AlertState,
    Approval,
    Circuit,
    DecisionQuery,
    JournalEntry,
    Pause,
    Retention,
    Store,
)
from receiver.store.redis import RedisStore
from receiver.store.sqlite import SqliteStore

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Tick:
    """A clock that advances ``step`` on every reading."""

    def __init__(
        self, start: datetime = T0, step: timedelta = timedelta(milliseconds=1)
    ) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


async def claim(store: Store, consumer: str, wait: float = 1.0, now: datetime = T0):
    """The entry of a claim (or None)."""
    lease = await store.claim(consumer, wait, now)
    return None if lease is None else lease.entry


MakeStore = Callable[..., Store]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("RECEIVER_TEST_REDIS_URL")
    if url:
        yield url
        return
    with run_redis(tmp_path_factory.mktemp("redis")) as started:
        yield started


async def _forget_prefix(url: str, prefix: str) -> None:
    """Remove a test's keys (SCAN + UNLINK: a shared server keeps no litter)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        batch = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[MakeStore]:
    """Build stores of one backend; several calls in one test share their data."""
    stores: list[Store] = []
    url = ""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")

    def make(retention: Retention | None = None) -> Store:
        retention = retention or Retention()
        store: Store
        if request.param == "redis":
            store = RedisStore(url, prefix=prefix, retention=retention)
        else:
            store = SqliteStore(path=str(tmp_path / "state.db"), retention=retention)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
    if url:
        await _forget_prefix(url, prefix)


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


def journal_entry(
    n: int, *, at: datetime = T0, body: bytes | None = None
) -> JournalEntry:
    """Entry ``n``: ids sort like ``received_at`` (``at`` plus ``n`` seconds)."""
    return JournalEntry(
        id=f"e{n:04d}-{uuid.uuid4().hex[:8]}",
        source="alertmanager",
        received_at=at + timedelta(seconds=n),
        body=body if body is not None else b'{"n": %d}' % n,
        headers={"content-type": "application/json", "user-agent": f"test/{n}"},
    )


def trace(
    payload_id: str,
    tag: str,
    *,
    fingerprint: str = "fp-a",
    rule: str = "r1",
    playbook: str = "p1",
    decision: str = "run",
    at: datetime = T0,
) -> dict[str, Any]:
    return {
        "tag": tag,
        "fingerprint": fingerprint,
        "payload_id": payload_id,
        "decided_at": iso(at),
        "matches": [
            {
                "rule": rule,
                "playbook": playbook,
                "steps": [{"type": "k8s.pods", "decision": decision}],
            }
        ],
    }


def state(
    status: str, starts_at: datetime | None, updated_at: datetime, fp: str = "fp-1"
) -> AlertState:
    return AlertState(fp, status, starts_at, updated_at)  # type: ignore[arg-type]


# -- journal ----------------------------------------------------------------


async def test_append_then_claim_returns_the_entry_intact(store: Store) -> None:
    """A claimed entry carries the body bytes, headers, source and time as appended."""
    entry = journal_entry(1, body=b'{"alerts": []}\n\xff\x00binary')
    await store.append(entry, [])
    claimed = await claim(store, "c1", 1.0)
    assert claimed is not None
    assert claimed.id == entry.id
    assert claimed.body == entry.body
    assert dict(claimed.headers) == dict(entry.headers)
    assert claimed.source == entry.source
    assert claimed.received_at == entry.received_at
    assert claimed.attempts == 1


async def test_claim_waits_then_returns_none_on_an_empty_journal(
    store: Store,
) -> None:
    """With nothing to take, claim waits about ``wait`` seconds and returns None."""
    started = time.monotonic()
    assert await claim(store, "c1", 0.3) is None
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0


async def test_claim_wakes_up_for_an_entry_appended_while_waiting(
    make_store: MakeStore,
) -> None:
    """A waiting claim returns an entry appended during the wait, not after it."""
    store = make_store()
    entry = journal_entry(1)
    waiting = asyncio.create_task(claim(store, "c1", 5.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await store.append(entry, [])
    claimed = await waiting
    assert claimed is not None
    assert claimed.id == entry.id
    assert time.monotonic() - started < 2.0


async def test_complete_drops_the_entry_from_pending(store: Store) -> None:
    """pending() counts unfinished entries and names the oldest one's time."""
    assert await store.pending() == (0, None)
    first, second = journal_entry(0), journal_entry(1)
    await store.append(first, [])
    await store.append(second, [])
    assert await store.pending() == (2, first.received_at)
    claimed = await claim(store, "c1", 1.0)
    assert claimed is not None
    assert claimed.id == first.id
    assert await store.pending() == (2, first.received_at)
    await store.complete(first.id, [])
    assert await store.pending() == (1, second.received_at)
    claimed = await claim(store, "c1", 1.0)
    assert claimed is not None
    assert claimed.id == second.id
    await store.complete(second.id, [])
    assert await store.pending() == (0, None)
    assert await claim(store, "c1", 0) is None


async def test_record_appends_decisions_of_no_entry(store: Store) -> None:
    """record() adds readable decision records and leaves the journal alone."""
    entry = journal_entry(0)
    await store.append(entry, [])
    await store.record([trace(f"{entry.id}.sinks", "sinks", fingerprint="fp-s")])
    found = await store.decisions(DecisionQuery(payload_id=f"{entry.id}.sinks"))
    assert [d["tag"] for d in found] == ["sinks"]
    assert await store.pending() == (1, entry.received_at)
    assert (await claim(store, "c1", 1.0)) is not None


async def test_decisions_are_newest_first_and_filtered(store: Store) -> None:
    """Every DecisionQuery filter selects the right records, newest first."""
    e1, e2 = journal_entry(1), journal_entry(2)
    later = T0 + timedelta(minutes=1)
    t1 = trace(e1.id, "e1-t1")
    t2 = trace(
        e2.id, "e2-t1", fingerprint="fp-b", rule="r2", playbook="p2", decision="skip"
    )
    t3 = trace(e2.id, "e2-t2", rule="r2", decision="dry-run", at=later)
    t2["decided_at"] = iso(later)
    for entry in (e1, e2):
        await store.append(entry, [])
        assert await claim(store, "c1", 1.0) is not None
    await store.complete(e1.id, [t1])
    await store.complete(e2.id, [t2, t3])

    async def tags(**filters: Any) -> list[str]:
        return [d["tag"] for d in await store.decisions(DecisionQuery(**filters))]

    assert await store.decisions(DecisionQuery()) == [t3, t2, t1]
    assert await tags(fingerprint="fp-a") == ["e2-t2", "e1-t1"]
    assert await tags(rule="r2") == ["e2-t2", "e2-t1"]
    assert await tags(playbook="p1") == ["e2-t2", "e1-t1"]
    assert await tags(decision="skip") == ["e2-t1"]
    assert await tags(payload_id=e1.id) == ["e1-t1"]
    assert await tags(since=T0 + timedelta(seconds=30)) == ["e2-t2", "e2-t1"]
    assert await tags(limit=1) == ["e2-t2"]
    assert await tags(fingerprint="fp-b", rule="r1") == []


async def test_payloads_are_listed_newest_first(store: Store) -> None:
    """payloads() lists stored entries newest first; payload() finds one by id."""
    entries = [journal_entry(n) for n in range(3)]
    for entry in entries:
        await store.append(entry, [])
    assert [p.id for p in await store.payloads()] == [e.id for e in reversed(entries)]
    assert [p.id for p in await store.payloads(limit=2)] == [
        entries[2].id,
        entries[1].id,
    ]
    found = await store.payload(entries[1].id)
    assert found is not None
    assert found.body == entries[1].body
    assert await store.payload("no-such-id") is None


async def test_an_abandoned_claim_is_handed_over_after_the_lease(
    make_store: MakeStore,
) -> None:
    """An entry claimed but never completed goes to another consumer after the lease.

    The lease ends by the caller's clock, not the backend's.
    """
    lease_len = timedelta(minutes=5)
    store = make_store(Retention(lease=lease_len))
    entry = journal_entry(1)
    await store.append(entry, [])
    first = await store.claim("dead", 1.0, T0)
    assert first is not None
    assert first.entry.attempts == 1
    assert first.expires_at == T0 + lease_len
    assert await store.claim("alive", 0, T0 + lease_len - timedelta(seconds=1)) is None
    second = await store.claim("alive", 0, T0 + lease_len + timedelta(seconds=1))
    assert second is not None
    assert second.entry.id == entry.id
    assert second.entry.body == entry.body
    assert second.entry.attempts == 2
    assert await store.renew(first, T0 + lease_len) is None, "the old lease is lost"
    await store.complete(entry.id, [])
    assert await store.pending() == (0, None)


async def test_a_renewed_lease_is_not_handed_over(make_store: MakeStore) -> None:
    """Renewing extends the lease from the caller's now; nobody else claims it."""
    lease_len = timedelta(minutes=5)
    store = make_store(Retention(lease=lease_len))
    await store.append(journal_entry(1), [])
    clock = Tick(step=timedelta(minutes=2))
    lease = await store.claim("busy", 1.0, clock())
    assert lease is not None
    for _ in range(5):  # 10 minutes of work, twice the lease
        lease = await store.renew(lease, clock())
        assert lease is not None
        assert await store.claim("other", 0, clock()) is None
    assert lease.expires_at > T0 + 2 * lease_len


async def test_release_hands_the_entry_back_and_park_sets_it_aside(
    store: Store,
) -> None:
    """A released entry is claimed again at once; a parked one only once retried."""
    entry = journal_entry(1)
    await store.append(entry, [])
    clock = Tick()
    lease = await store.claim("c1", 1.0, clock())
    assert lease is not None
    await store.release(lease, clock(), "RuntimeError: boom")
    again = await store.claim("c2", 0, clock())
    assert again is not None
    assert again.entry.attempts == 2
    await store.park(again, "failed 2 times; last error: boom", clock())
    assert await store.claim("c3", 0, clock()) is None
    assert await store.pending() == (0, None)
    (parked,) = await store.parked()
    assert parked.entry.id == entry.id
    assert parked.reason == "failed 2 times; last error: boom"
    assert await store.parked_count() == 1
    assert await store.retry_parked(entry.id, clock()) is True
    assert await store.retry_parked(entry.id, clock()) is False
    assert await store.parked_count() == 0
    retried = await store.claim("c4", 1.0, clock())
    assert retried is not None
    assert retried.entry.id == entry.id
    assert retried.entry.attempts == 1


async def test_concurrent_claimers_never_share_an_entry(store: Store) -> None:
    """Many concurrent claims over N entries deliver each entry exactly once."""
    entries = [journal_entry(n) for n in range(8)]
    for entry in entries:
        await store.append(entry, [])
    results = await asyncio.gather(*(claim(store, f"c{i}", 0.3) for i in range(12)))
    claimed = [r.id for r in results if r is not None]
    assert sorted(claimed) == sorted(e.id for e in entries)
    assert len(claimed) == len(set(claimed))


async def test_alert_state_follows_newer_state(store: Store) -> None:
    """A firing resend never un-resolves an occurrence; a later startsAt wins."""
    later = T0 + HOUR
    steps = [
        (state("firing", T0, T0), ("firing", T0)),
        (state("resolved", T0, T0 + timedelta(minutes=5)), ("resolved", T0)),
        (state("firing", T0, T0 + timedelta(minutes=6)), ("resolved", T0)),
        (state("firing", later, later), ("firing", later)),
        (state("resolved", None, later), ("firing", later)),
    ]
    assert await store.alert_state("fp-1") is None
    for n, (new, (status, starts_at)) in enumerate(steps):
        await store.append(journal_entry(n), [new])
        current = await store.alert_state("fp-1")
        assert current is not None
        assert (current.status, current.starts_at) == (status, starts_at), n
    current = await store.alert_state("fp-1")
    assert current == state("firing", later, later)


async def test_append_records_every_state_of_a_batch(store: Store) -> None:
    """One append records the state of each alert its payload carries."""
    await store.append(
        journal_entry(1),
        [state("firing", T0, T0, "fp-x"), state("resolved", None, T0, "fp-y")],
    )
    assert await store.alert_state("fp-x") == state("firing", T0, T0, "fp-x")
    assert await store.alert_state("fp-y") == state("resolved", None, T0, "fp-y")


# -- exactly once -------------------------------------------------------------


async def test_seen_reports_a_repeated_delivery(store: Store) -> None:
    """seen() is False the first time a key is marked and True afterwards."""
    clock = Tick()
    assert await store.seen("delivery-1", HOUR, clock()) is False
    assert await store.seen("delivery-1", HOUR, clock()) is True
    assert await store.seen("delivery-2", HOUR, clock()) is False


async def test_seen_expires_by_the_callers_clock(store: Store) -> None:
    """A delivery id is forgotten when the caller's clock passes its TTL.

    The instants are years away from the wall clock (and from Redis's): only
    the ``now`` passed in may decide.
    """
    clock = Tick(step=timedelta(minutes=1))
    assert await store.seen("resend", HOUR, clock()) is False
    assert await store.seen("resend", HOUR, clock()) is True  # 1 min later
    clock.now += HOUR
    assert await store.seen("resend", HOUR, clock()) is False  # expired: new
    assert await store.seen("resend", HOUR, clock()) is True
    # A reading far in the future of the wall clock: still the caller's.
    future = Tick(datetime(2999, 1, 1, tzinfo=UTC))
    assert await store.seen("later", HOUR, future()) is False
    assert await store.seen("later", HOUR, future()) is True


async def test_claim_key_is_won_exactly_once_under_concurrency(store: Store) -> None:
    """Of 20 concurrent claims on one key exactly one wins; the rest see its claim."""
    results = await asyncio.gather(
        *(store.claim_key("k", f"owner-{i}", T0, HOUR) for i in range(20))
    )
    winners = [i for i, r in enumerate(results) if r.won]
    assert len(winners) == 1
    for result in results:
        assert result.holder.key == "k"
        assert result.holder.owner == f"owner-{winners[0]}"
        assert result.holder.status == "running"
        assert result.holder.at == T0
        assert result.recovered is None


async def test_finish_key_records_the_end_and_release_key_frees_it(
    store: Store,
) -> None:
    """A finished claim reports its status and detail; a released key is free."""
    clock = Tick(step=timedelta(minutes=1))
    assert (await store.claim_key("k", "me", clock(), HOUR)).won
    finished_at = clock()
    assert await store.finish_key("k", "me", "done", "rolled back", finished_at)
    existing = await store.claim_key("k", "other", clock(), HOUR)
    assert not existing.won
    assert (existing.holder.owner, existing.holder.status) == ("me", "done")
    assert existing.holder.detail == "rolled back"
    assert existing.holder.at == finished_at
    await store.release_key("k", "me")  # finished: releasing changes nothing
    assert not (await store.claim_key("k", "other", clock(), HOUR)).won
    assert (await store.claim_key("k2", "me", clock(), HOUR)).won
    await store.release_key("k2", "someone-else")
    assert not (await store.claim_key("k2", "other", clock(), HOUR)).won
    await store.release_key("k2", "me")
    assert (await store.claim_key("k2", "other", clock(), HOUR)).won


async def test_a_claim_expires_by_the_callers_clock(store: Store) -> None:
    """A claim is free again once the caller's now passes its TTL."""
    assert (await store.claim_key("k", "a", T0, HOUR)).won
    assert not (await store.claim_key("k", "b", T0 + HOUR, HOUR)).won
    later = await store.claim_key("k", "b", T0 + HOUR + timedelta(seconds=1), HOUR)
    assert later.won
    assert later.holder.owner == "b"


async def test_mark_sending_and_a_dead_incarnations_claim_is_recovered(
    store: Store,
) -> None:
    """A dead incarnation's unfinished claim is taken over, with its sending mark."""
    clock = Tick()
    await store.register("dead", clock(), timedelta(minutes=1))
    await store.register("alive", clock(), timedelta(hours=2))
    assert (await store.claim_key("sent", "dead", clock(), HOUR)).won
    assert await store.mark_sending("sent", "dead", clock()) is True
    assert await store.mark_sending("sent", "alive", clock()) is False
    assert (await store.claim_key("unsent", "dead", clock(), HOUR)).won
    taken = await store.claim_key("sent", "alive", clock(), HOUR)
    assert not taken.won, "its incarnation is still alive"
    assert taken.holder.status == "sending"
    after = T0 + timedelta(minutes=5)
    sent = await store.claim_key("sent", "alive", after, HOUR)
    assert sent.won
    assert sent.recovered is not None
    assert (sent.recovered.owner, sent.recovered.status) == ("dead", "sending")
    unsent = await store.claim_key("unsent", "alive", after, HOUR)
    assert unsent.won
    assert unsent.recovered is not None
    assert unsent.recovered.status == "running"
    assert not await store.finish_key("sent", "dead", "failed", "stale", after)
    assert await store.finish_key("sent", "alive", "done", "", after)
    done = await store.claim_key("sent", "third", after + HOUR / 2, HOUR)
    assert not done.won, "a finished key is never recovered"


async def test_an_incarnation_never_takes_over_its_own_claim(store: Store) -> None:
    """Its heartbeat lapsed, it still asks: its claim is in flight, not an orphan."""
    clock = Tick()
    await store.register("slow", clock(), timedelta(seconds=1))
    assert (await store.claim_key("r", "slow", clock(), HOUR)).won
    assert (await store.claim_key("s", "slow", clock(), HOUR)).won
    assert await store.mark_sending("s", "slow", clock()) is True
    lapsed = T0 + timedelta(minutes=5)
    for key, status in (("r", "running"), ("s", "sending")):
        again = await store.claim_key(key, "slow", lapsed, HOUR)
        assert not again.won, f"its own {status} claim was taken over"
        assert (again.holder.owner, again.holder.status) == ("slow", status)
    other = await store.claim_key("r", "other", lapsed, HOUR)
    assert other.won, "to another incarnation it is dead"
    assert other.recovered is not None
    assert other.recovered.owner == "slow"
    assert await store.mark_sending("r", "slow", lapsed) is False, "fenced out"


async def test_an_incarnation_never_takes_over_its_own_lock(store: Store) -> None:
    """Heartbeat lapsed: its own other task waits; another incarnation takes it."""
    clock = Tick()
    await store.register("slow", clock(), timedelta(seconds=1))
    held = await store.acquire_lock("target:x", "slow", clock(), HOUR)
    assert held is not None
    lapsed = T0 + timedelta(minutes=5)
    assert await store.acquire_lock("target:x", "slow", lapsed, HOUR) is None
    taken = await store.acquire_lock("target:x", "other", lapsed, HOUR)
    assert taken is not None
    assert taken.token > held.token


async def test_mark_sending_records_the_intent_a_recovery_reads_back(
    store: Store,
) -> None:
    """The intent recorded with the sending mark comes back, exactly, on recovery."""
    clock = Tick()
    intent = '{"replicas": 6, "uid": "\u00e9\\x", "keys": ["a\\nb"]}'
    await store.register("dead", clock(), timedelta(minutes=1))
    assert (await store.claim_key("k", "dead", clock(), HOUR)).won
    assert await store.mark_sending("k", "dead", clock(), '{"old": 1}') is True
    assert await store.mark_sending("k", "dead", clock(), intent) is True
    assert await store.mark_sending("k", "other", clock(), "{}") is False
    after = T0 + timedelta(minutes=5)
    taken = await store.claim_key("k", "alive", after, HOUR)
    assert taken.won
    assert taken.recovered is not None
    assert taken.recovered.intent == intent
    assert (taken.holder.status, taken.holder.intent) == ("sending", intent), (
        "a taken-over sending mark stays, with its intent"
    )
    assert await store.mark_sending("k", "alive", after, intent) is True
    held = await store.claim_key("k", "late", after, HOUR)
    assert (held.won, held.holder.intent) == (False, intent)


async def test_a_taker_that_dies_too_leaves_the_sending_mark(store: Store) -> None:
    """Two crashes in a row: the second taker still hears "it was sent".

    The first taker dies while it re-checks the action (before it settles
    the key); the claim it leaves must not read "nothing was sent", or the
    next incarnation runs the action a second time.
    """
    clock = Tick(step=timedelta(seconds=1))
    await store.register("first", clock(), timedelta(seconds=5))
    assert (await store.claim_key("k", "first", clock(), HOUR)).won
    assert await store.mark_sending("k", "first", clock(), '{"n": 1}')
    clock.now += timedelta(minutes=1)
    await store.register("second", clock(), timedelta(seconds=5))
    taken = await store.claim_key("k", "second", clock(), HOUR)
    assert taken.won
    assert taken.recovered is not None
    assert taken.recovered.status == "sending"
    clock.now += timedelta(minutes=1)  # "second" dies too, mid re-check
    await store.register("third", clock(), HOUR)
    again = await store.claim_key("k", "third", clock(), HOUR)
    assert again.won
    assert again.recovered is not None
    assert (again.recovered.owner, again.recovered.status) == ("second", "sending")
    assert again.recovered.intent == '{"n": 1}'
    await store.release_key("k", "third")  # never frees a sent key
    assert not (await store.claim_key("k", "fourth", clock(), HOUR)).won


# -- guards -------------------------------------------------------------------


async def test_a_held_lock_cannot_be_taken(store: Store) -> None:
    """While held, a lock refuses a second owner and names its holder."""
    clock = Tick()
    assert await store.lock_holder("deploy/api", clock()) is None
    lock = await store.acquire_lock("deploy/api", "worker-a", clock(), HOUR)
    assert lock is not None
    assert (lock.name, lock.owner) == ("deploy/api", "worker-a")
    assert await store.acquire_lock("deploy/api", "worker-b", clock(), HOUR) is None
    assert await store.lock_holder("deploy/api", clock()) == "worker-a"
    other = await store.acquire_lock("deploy/web", "worker-b", clock(), HOUR)
    assert other is not None
    await store.release_lock(lock)
    assert await store.lock_holder("deploy/api", clock()) is None


async def test_a_stale_release_keeps_the_newer_holder(store: Store) -> None:
    """Fencing tokens increase, and releasing an old lock spares the new holder."""
    clock = Tick()
    first = await store.acquire_lock("l", "a", clock(), HOUR)
    assert first is not None
    await store.release_lock(first)
    second = await store.acquire_lock("l", "b", clock(), HOUR)
    assert second is not None
    assert second.token > first.token
    await store.release_lock(first)
    assert await store.lock_holder("l", clock()) == "b"
    await store.release_lock(second)
    assert await store.lock_holder("l", clock()) is None


async def test_a_lock_expires_by_the_callers_clock_unless_renewed(
    store: Store,
) -> None:
    """A lock is free once the caller's now passes its TTL; renewing extends it."""
    ttl = timedelta(minutes=1)
    first = await store.acquire_lock("l", "crashed", T0, ttl)
    assert first is not None
    assert await store.lock_holder("l", T0 + ttl) == "crashed"
    assert await store.lock_holder("l", T0 + ttl + timedelta(seconds=1)) is None
    second = await store.acquire_lock("l", "next", T0 + 2 * ttl, ttl)
    assert second is not None
    assert second.token > first.token
    assert await store.renew_lock(first, T0 + 2 * ttl, ttl) is None
    renewed = await store.renew_lock(second, T0 + 2 * ttl + ttl / 2, ttl)
    assert renewed is not None
    assert renewed.token == second.token
    later = T0 + 3 * ttl + timedelta(seconds=10)  # past the first TTL, not renewed's
    assert await store.acquire_lock("l", "third", later, ttl) is None
    assert await store.lock_holder("l", later) == "next"


async def test_recovery_releases_a_dead_incarnations_locks(store: Store) -> None:
    """After its incarnation stopped, recovery releases its lock."""
    clock = Tick()
    await store.register("old", clock(), timedelta(minutes=1))
    lock = await store.acquire_lock("target:x", "old", clock(), HOUR)
    assert lock is not None
    await store.retire("old", clock())
    await store.register("new", clock(), timedelta(minutes=1))
    released = await store.recover("new", clock())
    assert released == ["target:x"]
    assert await store.lock_holder("target:x", clock()) is None
    assert await store.acquire_lock("target:x", "new", clock(), HOUR) is not None


async def test_a_claim_left_days_ago_by_a_dead_incarnation_is_recovered(
    store: Store,
) -> None:
    """Every replica down for two days: the claim (7 days) is still taken over.

    Both stores forgot incarnations dead for a day, while their run-once claims
    last seven: a claim left by a crash then read as live, "already started ...
    not run again", for the rest of its week.
    """
    week = timedelta(days=7)
    await store.register("crashed", T0, timedelta(seconds=30))
    assert (await store.claim_key("k", "crashed", T0, week)).won
    # The next incarnation starts at once and finds the crashed one dead.
    start = T0 + timedelta(minutes=1)
    await store.register("next", start, timedelta(days=30))
    await store.recover("next", start)
    # Two days later: another start's recovery (Redis forgot the dead there,
    # after a day) and the prune (SQLite forgot them here).
    later = Tick(T0 + timedelta(days=2))
    await store.register("third", later(), timedelta(minutes=1))
    await store.recover("third", later())
    await store.prune(later())
    outcome = await store.claim_key("k", "next", later(), week)
    assert outcome.won, outcome.holder
    assert outcome.recovered is not None
    assert outcome.recovered.owner == "crashed"


async def test_a_crashed_claim_is_recovered_after_the_prune_two_days_on(
    store: Store,
) -> None:
    """The same, on a worker that runs on: its prune must not forget the dead.

    SQLite's prune forgot incarnations dead for a day: the next pass of the
    incarnation that had recovered the crash found the claim's owner unknown,
    so alive, and refused the occurrence.
    """
    week = timedelta(days=7)
    await store.register("crashed", T0, timedelta(seconds=30))
    assert (await store.claim_key("k", "crashed", T0, week)).won
    start = T0 + timedelta(minutes=1)
    await store.register("next", start, timedelta(days=30))
    await store.recover("next", start)
    later = T0 + timedelta(days=2)
    await store.prune(later)
    outcome = await store.claim_key("k", "next", later, week)
    assert outcome.won, outcome.holder


def test_stores_forget_the_dead_only_after_their_claims_lapse() -> None:
    """The horizon stays past the run-once claims' lifetime if either changes."""
    assert GuardDefaults().idempotency_ttl < FORGET_DEAD_AFTER


async def test_a_dead_incarnations_lock_is_taken_over(store: Store) -> None:
    """A lock whose owner stopped renewing is taken over without waiting its TTL."""
    await store.register("gone", T0, timedelta(seconds=30))
    assert await store.acquire_lock("l", "gone", T0, HOUR) is not None
    assert await store.acquire_lock("l", "me", T0 + timedelta(seconds=10), HOUR) is None
    taken = await store.acquire_lock("l", "me", T0 + timedelta(minutes=1), HOUR)
    assert taken is not None
    assert taken.owner == "me"


async def test_last_run_remembers_the_latest_run(store: Store) -> None:
    """last_run returns what set_last_run recorded, until its TTL (caller's now)."""
    assert await store.last_run("scope", T0) is None
    await store.set_last_run("scope", T0, HOUR)
    assert await store.last_run("scope", T0 + timedelta(minutes=1)) == T0
    await store.set_last_run("scope", T0 + HOUR, HOUR)
    assert await store.last_run("scope", T0 + HOUR) == T0 + HOUR
    assert await store.last_run("scope", T0 + 2 * HOUR + timedelta(seconds=1)) is None
    assert await store.last_run("other", T0) is None


async def test_budget_allows_limit_runs_per_window(store: Store) -> None:
    """reserve_budget counts up to ``limit`` in the caller's window, then refuses."""
    at = [T0 + timedelta(seconds=s) for s in range(4)]
    slots = [await store.reserve_budget("b", 3, HOUR, t) for t in at]
    assert [s.used if s else None for s in slots] == [1, 2, 3, None]
    # The window follows the caller's clock: T0 and T0+1s fall out of it here.
    later = await store.reserve_budget("b", 3, HOUR, T0 + HOUR + timedelta(seconds=1.5))
    assert later is not None
    assert later.used == 2
    other = await store.reserve_budget("other", 3, HOUR, T0)
    assert other is not None
    assert other.used == 1


async def test_release_budget_gives_back_exactly_that_slot(store: Store) -> None:
    """A released slot no longer counts, whatever the clock reads when released."""
    clock = Tick(step=timedelta(seconds=1))
    slots = [await store.reserve_budget("b", 3, HOUR, clock()) for _ in range(3)]
    assert all(slots)
    assert await store.reserve_budget("b", 3, HOUR, clock()) is None
    clock()  # time moves between reserving and releasing
    assert slots[1] is not None
    await store.release_budget(slots[1])
    await store.release_budget(slots[1])  # twice is harmless
    again = await store.reserve_budget("b", 3, HOUR, clock())
    assert again is not None
    assert again.used == 3
    assert await store.reserve_budget("b", 3, HOUR, clock()) is None


async def test_pause_is_on_until_turned_off(store: Store) -> None:
    """set_pause stores who paused, when and why; None turns it off."""
    assert await store.pause() is None
    await store.set_pause(Pause("alice", T0, "maintenance window"))
    assert await store.pause() == Pause("alice", T0, "maintenance window")
    await store.set_pause(None)
    assert await store.pause() is None


async def test_circuit_opens_at_the_threshold_and_a_success_resets_it(
    store: Store,
) -> None:
    """Failures count up, open the circuit once at the threshold; success resets."""

    async def outcome(ok: bool, at: datetime) -> Circuit:
        return await store.record_outcome("p", ok=ok, threshold=3, now=at)

    assert await store.circuit("p") == Circuit()
    at = [T0 + timedelta(minutes=m) for m in range(4)]
    assert await outcome(ok=False, at=at[0]) == Circuit(1, None)
    assert await outcome(ok=False, at=at[1]) == Circuit(2, None)
    assert await outcome(ok=False, at=at[2]) == Circuit(3, at[2])
    assert await outcome(ok=False, at=at[3]) == Circuit(4, at[2])
    assert await store.circuit("p") == Circuit(4, at[2])
    assert await outcome(ok=True, at=at[3]) == Circuit()
    assert await store.circuit("p") == Circuit()


async def test_reset_circuit_closes_it(store: Store) -> None:
    """reset_circuit forgets failures and the opening time."""
    for _ in range(2):
        await store.record_outcome("p", ok=False, threshold=2, now=T0)
    assert (await store.circuit("p")).opened_at == T0
    await store.reset_circuit("p")
    assert await store.circuit("p") == Circuit()
    failed = await store.record_outcome("p", ok=False, threshold=2, now=T0)
    assert failed == Circuit(1, None)


# -- approvals ----------------------------------------------------------------


def approval(key: str, created_at: datetime = T0) -> Approval:
    return Approval(
        id=uuid.uuid4().hex,
        key=key,
        created_at=created_at,
        expires_at=created_at + HOUR,
        request={"step": "k8s.rollout_undo", "args": [], "big": 12345678901234567},
    )


async def test_put_approval_is_idempotent_per_key(store: Store) -> None:
    """A second request for the same key returns the first one unchanged."""
    first = approval("k")
    assert await store.put_approval(first) == first
    again = await store.put_approval(approval("k", T0 + timedelta(minutes=1)))
    assert again == first
    assert await store.get_approval(first.id) == first
    assert await store.get_approval("no-such-id") is None
    assert [a.id for a in await store.approvals()] == [first.id]


async def test_decide_approval_only_from_pending(store: Store) -> None:
    """A pending approval is decided once; later decisions are refused."""
    pending = await store.put_approval(approval("k"))
    decided_at = T0 + timedelta(minutes=5)
    decided = await store.decide_approval(pending.id, "approved", "alice", decided_at)
    assert decided is not None
    assert (decided.status, decided.decided_by, decided.decided_at) == (
        "approved",
        "alice",
        decided_at,
    )
    assert dict(decided.request) == dict(pending.request)
    assert await store.decide_approval(pending.id, "rejected", "bob", T0 + HOUR) is None
    assert await store.get_approval(pending.id) == decided
    assert await store.decide_approval("no-such-id", "approved", "x", T0) is None


async def test_approvals_are_newest_first_and_filtered_by_status(
    store: Store,
) -> None:
    """approvals() lists newest first; a status argument keeps only that status."""
    a, b, c = (approval(k, T0 + timedelta(minutes=m)) for m, k in enumerate("abc"))
    for item in (a, b, c):
        await store.put_approval(item)
    await store.decide_approval(b.id, "rejected", "bob", T0 + HOUR)
    assert [x.id for x in await store.approvals()] == [c.id, b.id, a.id]
    assert [x.id for x in await store.approvals("pending")] == [c.id, a.id]
    assert [x.id for x in await store.approvals("rejected")] == [b.id]
    assert await store.approvals("approved") == []


# -- retention and lifecycle ----------------------------------------------------


async def test_prune_drops_old_finished_entries_and_keeps_unfinished(
    make_store: MakeStore,
) -> None:
    """prune() removes finished payloads and decisions past max_age, nothing else."""
    store = make_store(Retention(max_age=timedelta(days=1)))
    recent_time = T0 + timedelta(days=3)
    old, unfinished, recent = (
        journal_entry(0),
        journal_entry(1),
        journal_entry(2, at=recent_time),
    )
    for entry in (old, unfinished, recent):
        await store.append(entry, [])
        assert await claim(store, "c1", 1.0) is not None
    await store.complete(old.id, [trace(old.id, "old")])
    await store.complete(recent.id, [trace(recent.id, "recent", at=recent_time)])

    dropped = await store.prune(recent_time + HOUR)

    assert dropped >= 2  # the old payload and its decision
    assert await store.payload(old.id) is None
    assert await store.payload(unfinished.id) is not None
    assert await store.payload(recent.id) is not None
    assert await store.pending() == (1, unfinished.received_at)
    assert [d["tag"] for d in await store.decisions(DecisionQuery())] == ["recent"]
    await store.complete(unfinished.id, [])
    assert await store.prune(recent_time + HOUR) >= 1
    assert await store.payload(unfinished.id) is None


async def test_prune_keeps_at_most_max_payloads_finished_entries(
    make_store: MakeStore,
) -> None:
    """prune() drops the oldest finished payloads beyond max_payloads."""
    store = make_store(Retention(max_payloads=2))
    entries = [journal_entry(n) for n in range(4)]
    for entry in entries:
        await store.append(entry, [])
        assert await claim(store, "c1", 1.0) is not None
        await store.complete(entry.id, [])
    assert await store.prune(T0 + HOUR) >= 2
    assert [p.id for p in await store.payloads()] == [entries[3].id, entries[2].id]


async def test_ping_answers_true_when_reachable(store: Store) -> None:
    """ping() is True while the backend can take writes."""
    assert await store.ping() is True


# -- Redis only -----------------------------------------------------------------


async def test_redis_unreachable_turns_into_store_unavailable() -> None:
    """With no Redis listening, append raises StoreUnavailableError; ping is False."""
    store = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0, connect_timeout=1.0
    )
    try:
        assert await store.ping() is False
        unreachable = r"Redis at 127\.0\.0\.1:\d+ is unreachable"
        with pytest.raises(StoreUnavailableError, match=unreachable):
            await store.append(journal_entry(1), [])
    finally:
        await store.close()


async def test_redis_replicas_share_one_journal(redis_url: str) -> None:
    """An entry appended through one replica is claimed and completed by another."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    edge = RedisStore(redis_url, prefix=prefix)
    worker = RedisStore(redis_url, prefix=prefix)
    try:
        entry = journal_entry(1)
        await edge.append(entry, [state("firing", T0, T0)])
        claimed = await claim(worker, "replica-2", 1.0)
        assert claimed is not None
        assert claimed.id == entry.id
        await worker.complete(entry.id, [trace(entry.id, "t")])
        assert await edge.pending() == (0, None)
        assert [d["tag"] for d in await edge.decisions(DecisionQuery())] == ["t"]
        assert await edge.alert_state("fp-1") == state("firing", T0, T0)
    finally:
        await edge.close()
        await worker.close()
        await _forget_prefix(redis_url, prefix)


async def test_redis_claim_recovers_a_deleted_journal(redis_url: str) -> None:
    """If the journal stream is deleted by hand, claim recreates its group."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await store.append(journal_entry(1), [])
        await client.delete(f"{prefix}:journal")
        entry = journal_entry(2)
        await store.append(entry, [])
        claimed = await claim(store, "c1", 1.0)
        assert claimed is not None
        assert claimed.id == entry.id
    finally:
        await client.aclose()
        await store.close()
        await _forget_prefix(redis_url, prefix)


async def test_redis_keys_expire_unless_listed_as_permanent(redis_url: str) -> None:
    """Every key but the journal, its indexes and the fencing counter has a TTL."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        done, waiting = journal_entry(1), journal_entry(2)
        await store.append(done, [state("firing", T0, T0)])
        await store.append(waiting, [])
        assert await claim(store, "c1", 1.0) is not None
        await store.complete(done.id, [trace(done.id, "t")])
        await store.seen("d", HOUR, T0)
        await store.claim_key("k", "me", T0, HOUR)
        await store.finish_key("k", "me", "done", "", T0)
        await store.acquire_lock("l", "me", T0, HOUR)
        await store.set_last_run("s", T0, HOUR)
        await store.reserve_budget("b", 3, HOUR, T0)
        await store.record_outcome("c", ok=False, threshold=3, now=T0)
        await store.put_approval(approval("a"))
        ttls = {
            key.removeprefix(f"{prefix}:"): await client.pttl(key)
            async for key in client.scan_iter(match=f"{prefix}:*")
        }
        ttls.pop("leases", None)  # claimed entries: emptied as they finish
        permanent = {"journal", "payloads", "finished", "fence", "approvals"}
        permanent.add(f"payload:{waiting.id}")  # unfinished: kept until done
        assert {k for k, ttl in ttls.items() if ttl < 0} == permanent
        assert all(ttl > 0 for k, ttl in ttls.items() if k not in permanent)
        assert f"payload:{done.id}" in ttls
    finally:
        await client.aclose()
        await store.close()
        await _forget_prefix(redis_url, prefix)


async def test_redis_refusing_writes_turns_into_store_unavailable(
    tmp_path: Any,
) -> None:
    """A Redis out of memory makes append raise StoreUnavailableError (a 503)."""
    with run_redis(tmp_path) as url:
        client = redis.asyncio.Redis.from_url(url)
        store = RedisStore(url, prefix="oom")
        try:
            await store.append(journal_entry(1), [])
            await client.config_set("maxmemory", "1")
            with pytest.raises(StoreUnavailableError, match="refuses writes"):
                await store.append(journal_entry(2), [])
            assert await store.ping() is True
        finally:
            await client.aclose()
            await store.close()


async def test_a_stale_owner_cannot_finish_a_key_taken_over(store: Store) -> None:
    """finish_key is fenced: a presumed-dead owner never overwrites the new holder."""
    clock = Tick(step=timedelta(seconds=1))
    await store.register("stale", clock(), timedelta(seconds=2))
    await store.register("new", clock(), HOUR)
    assert (await store.claim_key("k", "stale", clock(), HOUR)).won
    assert await store.mark_sending("k", "stale", clock(), '{"n": 1}')
    clock.now += timedelta(minutes=1)  # "stale" stopped renewing: dead
    taken = await store.claim_key("k", "new", clock(), HOUR)
    assert taken.won
    assert taken.recovered is not None
    # The stale owner wakes up and reports its outcome: refused, not written.
    assert not await store.finish_key("k", "stale", "done", "late", clock())
    held = await store.claim_key("k", "third", clock(), HOUR)
    assert (held.holder.owner, held.holder.status) == ("new", "sending")
    assert await store.finish_key("k", "new", "failed", "re-checked", clock())
    # A finished key is final: finishing it again changes nothing.
    assert not await store.finish_key("k", "new", "done", "again", clock())
    final = await store.claim_key("k", "third", clock(), HOUR)
    assert (final.holder.status, final.holder.detail) == ("failed", "re-checked")


async def test_a_takeover_says_whether_the_holder_is_known_to_have_stopped(
    store: Store,
) -> None:
    """Retired: stopped. Heartbeat lapsed: dead, but not known to have stopped."""
    clock = Tick(step=timedelta(seconds=1))
    for owner in ("retired", "silent", "back"):
        await store.register(owner, clock(), timedelta(seconds=5))
        assert (await store.claim_key(f"k-{owner}", owner, clock(), HOUR)).won
        assert await store.mark_sending(f"k-{owner}", owner, clock())
    await store.retire("retired", clock())
    await store.retire("back", clock())
    clock.now += timedelta(minutes=1)
    await store.register("back", clock(), timedelta(seconds=5))  # alive again
    clock.now += timedelta(minutes=1)  # ... and silent since
    outcomes = {
        owner: await store.claim_key(f"k-{owner}", "new", clock(), HOUR)
        for owner in ("retired", "silent", "back")
    }
    assert all(o.won and o.recovered is not None for o in outcomes.values())
    assert outcomes["retired"].stopped is True
    assert outcomes["silent"].stopped is False
    assert outcomes["back"].stopped is False


async def test_sqlite_recover_declares_every_other_incarnation_stopped(
    tmp_path: Any,
) -> None:
    """One instance: a new incarnation's recover says the old one stopped."""
    store = SqliteStore(str(tmp_path / "state.db"))
    try:
        clock = Tick()
        await store.register("old", clock(), HOUR)
        assert (await store.claim_key("k", "old", clock(), HOUR)).won
        assert await store.mark_sending("k", "old", clock())
        await store.register("new", clock(), HOUR)
        await store.recover("new", clock())
        taken = await store.claim_key("k", "new", clock(), HOUR)
        assert taken.won
        assert taken.stopped is True
    finally:
        await store.close()
