"""Model-based test: both stores against a small in-memory reference model.

A Hypothesis ``RuleBasedStateMachine`` applies the same random operations to a
store (SQLite, or a real ``redis-server``) and to ``Model`` below, with a clock
that advances on every call (and jumps now and then, across leases, TTLs and
windows), and compares every answer: journal claims (one at a time and in
batches), batch completion and the records it keeps (the first completion's),
leases and renewal, release, parking and retry; run-once keys with their
sending mark and the recovery of a dead incarnation's claim; locks, renewal,
fencing and takeover; cooldowns (one and several at once); budget slots;
circuits; approvals; the pause switch.

Where the contract leaves a choice (which of several claimable entries comes
next), the model checks the store's choice is one it allows, then follows it.
``recover`` differs by design: SQLite serves one instance, so every other
incarnation is dead once a new one recovers; on Redis only those that stopped
renewing are.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import redis.asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from peers import run_redis

from receiver.store.base import (
    Approval,
    BudgetSlot,
    Circuit,
    DecisionQuery,
    JournalEntry,
    Lease,
    Lock,
    Pause,
    Retention,
    Store,
)
from receiver.store.redis import RedisStore
from receiver.store.sqlite import SqliteStore

T = TypeVar("T")
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
KEY_TTL = timedelta(seconds=90)
WINDOW = timedelta(seconds=60)
OWNERS = ("inc-a", "inc-b", "inc-c")
KEYS = ("k1", "k2", "k3")
NAMES = ("lock-1", "lock-2")
SCOPES = ("s1", "s2")
# Bounded so each store's run stays well under a minute in CI.
EXAMPLES = int(os.environ.get("RECEIVER_MODEL_EXAMPLES", "60"))


@dataclass
class MEntry:
    order: int
    received_at: datetime
    state: str = "pending"  # pending | claimed | done | parked
    consumer: str = ""
    lease_until: datetime | None = None
    attempts: int = 0


@dataclass
class MClaim:
    owner: str
    status: str
    expires: datetime
    intent: str = ""


@dataclass
class MLock:
    owner: str
    token: int
    expires: datetime


@dataclass
class Model:
    """The reference: plain dicts, the contract's rules and nothing else."""

    single_instance: bool
    entries: dict[str, MEntry] = field(default_factory=dict)
    claims: dict[str, MClaim] = field(default_factory=dict)
    locks: dict[str, MLock] = field(default_factory=dict)
    fence: int = 0
    alive: dict[str, datetime] = field(default_factory=dict)
    # Incarnations known to have stopped (retired, or declared by recover).
    stopped: set[str] = field(default_factory=set)
    last_run: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    budget: dict[str, dict[str, datetime]] = field(default_factory=dict)
    circuits: dict[str, Circuit] = field(default_factory=dict)
    approvals: dict[str, tuple[str, str]] = field(default_factory=dict)  # key->id,st
    pause: Pause | None = None
    # The tags of each entry's decision records: those of the first write
    # (``record_batch``, or the completion that finished it); a later one
    # records nothing.
    records: dict[str, list[str]] = field(default_factory=dict)

    def record(self, entry_id: str, tag: str) -> None:
        m = self.entries[entry_id]
        if m.state != "done" and entry_id not in self.records:
            self.records[entry_id] = [tag]

    def complete(self, entry_id: str, tag: str) -> None:
        self.record(entry_id, tag)
        self.entries[entry_id].state = "done"

    def dead(self, owner: str, now: datetime) -> bool:
        return owner in self.alive and self.alive[owner] < now

    def claimable(self, now: datetime) -> set[str]:
        return {
            i
            for i, e in self.entries.items()
            if e.state == "pending"
            or (
                e.state == "claimed"
                and e.lease_until is not None
                and e.lease_until < now
            )
        }


class StoreMachine(RuleBasedStateMachine):
    """One store and the model, driven by the same operations."""

    make_store: Callable[[], Store]
    single_instance: bool

    leases = Bundle("leases")
    locks = Bundle("locks")
    slots = Bundle("slots")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = self.make_store()
        self.model = Model(self.single_instance)
        self.now = T0
        self.appended = 0
        self.lined = 0  # places in line given out (appends, Redis requeues)
        self.consumers = 0
        self.completions = 0

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def tick(self) -> datetime:
        """The clock: one second later on every call."""
        self.now += timedelta(seconds=1)
        return self.now

    @rule(seconds=st.integers(min_value=1, max_value=120))
    def jump(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    # -- journal ----------------------------------------------------------------

    @rule()
    def append(self) -> None:
        entry_id = f"e{self.appended:03d}"
        received_at = self.tick()
        self.model.entries[entry_id] = MEntry(self.lined, received_at)
        self.appended += 1
        self.lined += 1
        body = b'{"n": %d}' % self.appended
        self.run(
            self.store.append(
                JournalEntry(entry_id, "alertmanager", received_at, body), []
            )
        )

    @rule(target=leases)
    def claim(self) -> Lease | None:
        now = self.tick()
        self.consumers += 1
        consumer = f"c{self.consumers}"
        allowed = self.model.claimable(now)
        lease = self.run(self.store.claim(consumer, 0, now))
        if lease is None:
            assert allowed == set()
            return None
        entry_id = lease.entry.id
        assert entry_id in allowed, (entry_id, allowed)
        m = self.model.entries[entry_id]
        m.state, m.consumer, m.lease_until = "claimed", consumer, now + LEASE
        m.attempts += 1
        assert lease.entry.attempts == m.attempts
        assert lease.expires_at == now + LEASE
        return lease

    @rule(target=leases, limit=st.integers(min_value=1, max_value=4))
    def claim_batch(self, limit: int) -> Any:
        now = self.tick()
        self.consumers += 1
        consumer = f"c{self.consumers}"
        allowed = self.model.claimable(now)
        leases = self.run(self.store.claim_batch(consumer, limit, 0, now))
        ids = [lease.entry.id for lease in leases]
        assert len(ids) == len(set(ids)) == min(limit, len(allowed)), (ids, allowed)
        assert set(ids) <= allowed, (ids, allowed)
        for lease in leases:
            m = self.model.entries[lease.entry.id]
            m.state, m.consumer, m.lease_until = "claimed", consumer, now + LEASE
            m.attempts += 1
            assert lease.entry.attempts == m.attempts
            assert lease.expires_at == now + LEASE
        return multiple(*leases)

    def record(self, entry_id: str) -> dict[str, Any]:
        """A decision record of ``entry_id``, tagged with this completion."""
        self.completions += 1
        return {
            "payload_id": entry_id,
            "fingerprint": "fp",
            "decided_at": self.now.isoformat(),
            "tag": f"{entry_id}/{self.completions}",
            "matches": [],
        }

    def recorded(self, entry_id: str) -> list[str]:
        page = self.run(
            self.store.decision_page(DecisionQuery(payload_id=entry_id, limit=10))
        )
        return sorted(str(r["tag"]) for r in page.items())

    @rule(batch=st.lists(consumes(leases), max_size=4))
    def complete_batch(self, batch: list[Lease | None]) -> None:
        done = [
            (lease.entry.id, [self.record(lease.entry.id)])
            for lease in batch
            if lease is not None
        ]
        self.run(self.store.complete_batch(done))
        for entry_id, (record,) in done:
            self.model.complete(entry_id, str(record["tag"]))
        for entry_id, _ in done:
            assert self.recorded(entry_id) == self.model.records[entry_id]

    @rule(lease=leases)
    def record_batch(self, lease: Lease | None) -> None:
        """The records as soon as decided; the entry is completed later."""
        if lease is None:
            return
        entry_id = lease.entry.id
        record = self.record(entry_id)
        self.run(self.store.record_batch([(entry_id, [record])]))
        self.model.record(entry_id, str(record["tag"]))
        assert self.recorded(entry_id) == self.model.records.get(entry_id, [])

    @rule(data=st.data())
    def complete_late(self, data: st.DataObject) -> None:
        """A worker whose lease lapsed completes an entry another one finished."""
        done = sorted(i for i, e in self.model.entries.items() if e.state == "done")
        if not done:
            return
        entry_id = data.draw(st.sampled_from(done))
        record = self.record(entry_id)
        self.run(self.store.complete_batch([(entry_id, [record])]))
        self.model.complete(entry_id, str(record["tag"]))
        assert self.recorded(entry_id) == self.model.records[entry_id]

    @rule(target=leases, lease=consumes(leases))
    def renew(self, lease: Lease | None) -> Lease | None:
        if lease is None:
            return None
        now = self.tick()
        m = self.model.entries[lease.entry.id]
        mine = m.state == "claimed" and m.consumer == lease.consumer
        renewed = self.run(self.store.renew(lease, now))
        assert (renewed is not None) == mine
        if renewed is None:
            return None
        m.lease_until = now + LEASE
        assert renewed.expires_at == m.lease_until
        return renewed

    @rule(lease=consumes(leases))
    def release(self, lease: Lease | None) -> None:
        if lease is None:
            return
        m = self.model.entries[lease.entry.id]
        self.run(self.store.release(lease, self.tick(), "boom"))
        if m.state == "claimed" and m.consumer == lease.consumer:
            m.state, m.consumer, m.lease_until = "pending", "", None

    @rule(lease=consumes(leases))
    def complete(self, lease: Lease | None) -> None:
        if lease is None:
            return
        entry_id = lease.entry.id
        record = self.record(entry_id)
        self.run(self.store.complete(entry_id, [record]))
        self.model.complete(entry_id, str(record["tag"]))
        assert self.recorded(entry_id) == self.model.records[entry_id]

    @rule(lease=consumes(leases))
    def park(self, lease: Lease | None) -> None:
        if lease is None:
            return
        m = self.model.entries[lease.entry.id]
        self.run(self.store.park(lease, "failed", self.tick()))
        if m.state in ("claimed", "pending"):
            m.state, m.consumer, m.lease_until = "parked", "", None

    @rule(data=st.data())
    def retry_parked(self, data: st.DataObject) -> None:
        ids = sorted(self.model.entries) or ["none"]
        parked = [
            i for i, e in sorted(self.model.entries.items()) if e.state == "parked"
        ]
        # Mostly a parked one when there is one: a retry that changes something.
        if parked and data.draw(st.integers(0, 3)):
            ids = parked
        entry_id = data.draw(st.sampled_from(ids))
        m = self.model.entries.get(entry_id)
        expected = m is not None and m.state == "parked"
        assert self.run(self.store.retry_parked(entry_id, self.tick())) == expected
        if m is not None and expected:
            m.state, m.attempts = "pending", 0
            if not self.model.single_instance:
                # Redis queues a retried entry again at the end of its stream;
                # SQLite keeps its place in line.
                m.order, self.lined = self.lined, self.lined + 1

    @invariant()
    def journal_counts(self) -> None:
        if not hasattr(self, "store"):
            return
        count, oldest = self.run(self.store.pending())
        unfinished = [
            e for e in self.model.entries.values() if e.state in ("pending", "claimed")
        ]
        assert count == len(unfinished)
        # The time of the first unfinished entry in line.
        first = min(unfinished, key=lambda e: e.order, default=None)
        assert oldest == (None if first is None else first.received_at)
        parked = {p.entry.id for p in self.run(self.store.parked(1000))}
        assert parked == {
            i for i, e in self.model.entries.items() if e.state == "parked"
        }
        assert self.run(self.store.parked_count()) == len(parked)

    # -- incarnations -------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), seconds=st.integers(10, 200))
    def register(self, owner: str, seconds: int) -> None:
        now = self.tick()
        self.model.alive[owner] = now + timedelta(seconds=seconds)
        self.model.stopped.discard(owner)
        self.run(self.store.register(owner, now, timedelta(seconds=seconds)))

    @rule(owner=st.sampled_from(OWNERS))
    def retire(self, owner: str) -> None:
        now = self.tick()
        self.model.alive[owner] = now - timedelta(seconds=1)
        self.model.stopped.add(owner)
        self.run(self.store.retire(owner, now))

    @rule(owner=st.sampled_from(OWNERS))
    def recover(self, owner: str) -> None:
        now = self.tick()
        m = self.model
        if m.single_instance:
            others = {lk.owner for lk in m.locks.values()} | {
                c.owner for c in m.claims.values() if c.status in ("running", "sending")
            }
            for other in (others | set(m.alive)) - {owner}:
                if other not in m.alive or m.alive[other] >= now - timedelta(seconds=1):
                    m.alive[other] = now - timedelta(seconds=1)
                m.stopped.add(other)
            gone = sorted(n for n, lk in m.locks.items() if lk.owner != owner)
        else:
            dead = {o for o, until in m.alive.items() if until < now and o != owner}
            gone = sorted(n for n, lk in m.locks.items() if lk.owner in dead)
        for name in gone:
            del m.locks[name]
        assert self.run(self.store.recover(owner, now)) == gone

    # -- run-once keys ------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS))
    def claim_key(self, key: str, owner: str) -> None:
        now = self.tick()
        outcome = self.run(self.store.claim_key(key, owner, now, KEY_TTL))
        held = self.model.claims.get(key)
        orphan = (
            held is not None
            and held.owner != owner  # never dead to itself: it is asking
            and held.status in ("running", "sending")
            and self.model.dead(held.owner, now)
        )
        if held is not None and held.expires >= now and not orphan:
            assert not outcome.won
            assert (
                outcome.holder.owner,
                outcome.holder.status,
                outcome.holder.intent,
            ) == (held.owner, held.status, held.intent)
            return
        assert outcome.won
        assert outcome.holder.owner == owner
        if orphan:
            assert held is not None
            assert outcome.recovered is not None
            assert (
                outcome.recovered.owner,
                outcome.recovered.status,
                outcome.recovered.intent,
            ) == (held.owner, held.status, held.intent)
        else:
            assert outcome.recovered is None
        known = orphan and held is not None and held.owner in self.model.stopped
        assert outcome.stopped == known, (held, self.model.stopped)
        if orphan and held is not None and held.status == "sending":
            # The sending mark and its intent stay, now the taker's.
            self.model.claims[key] = MClaim(
                owner, "sending", now + KEY_TTL, held.intent
            )
        else:
            self.model.claims[key] = MClaim(owner, "running", now + KEY_TTL)
        mine = self.model.claims[key]
        assert (outcome.holder.status, outcome.holder.intent) == (
            mine.status,
            mine.intent,
        )

    @rule(
        key=st.sampled_from(KEYS),
        owner=st.sampled_from(OWNERS),
        intent=st.sampled_from(("", '{"replicas": 6}', '{"uid": "\u00e9-1"}')),
    )
    def mark_sending(self, key: str, owner: str, intent: str) -> None:
        held = self.model.claims.get(key)
        expected = (
            held is not None
            and held.owner == owner
            and held.status in ("running", "sending")
        )
        got = self.run(self.store.mark_sending(key, owner, self.tick(), intent))
        assert got == expected
        if expected and held is not None:
            held.status = "sending"
            held.intent = intent

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), ok=st.booleans())
    def finish_key(self, key: str, owner: str, ok: bool) -> None:
        status = "done" if ok else "failed"
        held = self.model.claims.get(key)
        expected = (
            held is not None
            and held.owner == owner
            and held.status in ("running", "sending")
        )
        got = self.run(self.store.finish_key(key, owner, status, "d", self.tick()))
        assert got == expected, (held, owner)
        if expected and held is not None:
            held.status = status

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS))
    def release_key(self, key: str, owner: str) -> None:
        self.run(self.store.release_key(key, owner))
        held = self.model.claims.get(key)
        if held is not None and held.owner == owner and held.status == "running":
            del self.model.claims[key]

    # -- locks --------------------------------------------------------------------

    @rule(
        target=locks,
        name=st.sampled_from(NAMES),
        owner=st.sampled_from(OWNERS),
        seconds=st.integers(5, 90),
    )
    def acquire_lock(self, name: str, owner: str, seconds: int) -> Lock | None:
        now = self.tick()
        ttl = timedelta(seconds=seconds)
        lock = self.run(self.store.acquire_lock(name, owner, now, ttl))
        held = self.model.locks.get(name)
        free = (
            held is None
            or held.expires < now
            or (held.owner != owner and self.model.dead(held.owner, now))
        )
        assert (lock is not None) == free, (held, now)
        if lock is None:
            return None
        self.model.fence += 1
        assert lock.token == self.model.fence
        self.model.locks[name] = MLock(owner, lock.token, now + ttl)
        return lock

    @rule(target=locks, lock=consumes(locks), seconds=st.integers(5, 90))
    def renew_lock(self, lock: Lock | None, seconds: int) -> Lock | None:
        if lock is None:
            return None
        now = self.tick()
        held = self.model.locks.get(lock.name)
        renewed = self.run(self.store.renew_lock(lock, now, timedelta(seconds=seconds)))
        expected = held is not None and held.token == lock.token
        assert (renewed is not None) == expected
        if held is not None and expected:
            held.expires = now + timedelta(seconds=seconds)
        return renewed

    @rule(lock=consumes(locks))
    def release_lock(self, lock: Lock | None) -> None:
        if lock is None:
            return
        self.run(self.store.release_lock(lock))
        held = self.model.locks.get(lock.name)
        if held is not None and held.token == lock.token:
            del self.model.locks[lock.name]

    @rule(name=st.sampled_from(NAMES))
    def lock_holder(self, name: str) -> None:
        now = self.tick()
        held = self.model.locks.get(name)
        expected = held.owner if held is not None and held.expires >= now else None
        assert self.run(self.store.lock_holder(name, now)) == expected

    # -- cooldowns, budgets, circuits ---------------------------------------------

    @rule(scope=st.sampled_from(SCOPES), seconds=st.integers(5, 90))
    def set_last_run(self, scope: str, seconds: int) -> None:
        now = self.tick()
        ttl = timedelta(seconds=seconds)
        self.run(self.store.set_last_run(scope, now, ttl))
        self.model.last_run[scope] = (now, now + ttl)

    @rule(scope=st.sampled_from(SCOPES))
    def last_run(self, scope: str) -> None:
        now = self.tick()
        at, until = self.model.last_run.get(scope, (None, None))
        expected = at if until is not None and until >= now else None
        assert self.run(self.store.last_run(scope, now)) == expected

    @rule(scopes=st.lists(st.sampled_from((*SCOPES, "s-none")), max_size=4))
    def last_runs(self, scopes: list[str]) -> None:
        now = self.tick()
        expected = {}
        for scope in scopes:
            at, until = self.model.last_run.get(scope, (None, None))
            expected[scope] = at if until is not None and until >= now else None
        assert self.run(self.store.last_runs(scopes, now)) == expected

    @rule(target=slots, scope=st.sampled_from(SCOPES), limit=st.integers(1, 3))
    def reserve_budget(self, scope: str, limit: int) -> BudgetSlot | None:
        now = self.tick()
        taken = self.model.budget.setdefault(scope, {})
        used = [s for s, at in taken.items() if now - WINDOW < at <= now]
        slot = self.run(self.store.reserve_budget(scope, limit, WINDOW, now))
        if len(used) >= limit:
            assert slot is None
            return None
        assert slot is not None
        assert slot.used == len(used) + 1
        taken[slot.slot] = now
        return slot

    @rule(slot=consumes(slots))
    def release_budget(self, slot: BudgetSlot | None) -> None:
        if slot is None:
            return
        self.run(self.store.release_budget(slot))
        self.model.budget.get(slot.scope, {}).pop(slot.slot, None)

    @rule(scope=st.sampled_from(SCOPES), ok=st.booleans(), threshold=st.integers(1, 3))
    def record_outcome(self, scope: str, ok: bool, threshold: int) -> None:
        now = self.tick()
        got = self.run(self.store.record_outcome(scope, ok, threshold, now))
        old = self.model.circuits.get(scope, Circuit())
        if ok:
            new = Circuit()
        else:
            opened = old.opened_at
            if opened is None and old.failures + 1 >= threshold:
                opened = now
            new = Circuit(old.failures + 1, opened)
        self.model.circuits[scope] = new
        assert got == new
        assert self.run(self.store.circuit(scope)) == new

    # -- approvals and pause ------------------------------------------------------

    @rule(key=st.sampled_from(KEYS))
    def put_approval(self, key: str) -> None:
        now = self.tick()
        approval = Approval(uuid.uuid4().hex, key, now, now + WINDOW, {"k": key})
        stored = self.run(self.store.put_approval(approval))
        if key in self.model.approvals:
            assert stored.id == self.model.approvals[key][0]
        else:
            assert stored.id == approval.id
            self.model.approvals[key] = (approval.id, "pending")
        assert stored.status == self.model.approvals[key][1]

    @rule(key=st.sampled_from(KEYS), approve=st.booleans())
    def decide_approval(self, key: str, approve: bool) -> None:
        if key not in self.model.approvals:
            return
        approval_id, status = self.model.approvals[key]
        new = "approved" if approve else "rejected"
        got = self.run(
            self.store.decide_approval(approval_id, new, "alice", self.tick())
        )
        if status == "pending":
            assert got is not None
            assert got.status == new
            self.model.approvals[key] = (approval_id, new)
        else:
            assert got is None

    @rule(on=st.booleans())
    def pause(self, on: bool) -> None:
        pause = Pause("bob", self.tick(), "drill") if on else None
        self.run(self.store.set_pause(pause))
        self.model.pause = pause
        assert self.run(self.store.pause()) == pause


def _machine(make: Callable[[], Store], single: bool) -> type[StoreMachine]:
    return type(
        "Machine",
        (StoreMachine,),
        {"make_store": staticmethod(make), "single_instance": single},
    )


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_sqlite_store_follows_the_model() -> None:
    """SQLite answers every random operation as the reference model does."""
    make = lambda: SqliteStore(":memory:", retention=Retention(lease=LEASE))  # noqa: E731
    run_state_machine_as_test(_machine(make, single=True), settings=SETTINGS)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("RECEIVER_TEST_REDIS_URL")
    if url:
        yield url
        return
    with run_redis(tmp_path_factory.mktemp("redis-model")) as started:
        yield started


def test_redis_store_follows_the_model(redis_url: str) -> None:
    """A real redis-server answers every random operation as the model does."""
    prefixes: list[str] = []

    def make() -> Store:
        prefix = f"model-{uuid.uuid4().hex[:12]}"
        prefixes.append(prefix)
        return RedisStore(redis_url, prefix=prefix, retention=Retention(lease=LEASE))

    try:
        run_state_machine_as_test(_machine(make, single=False), settings=SETTINGS)
    finally:
        asyncio.run(_forget(redis_url, prefixes))


async def _forget(url: str, prefixes: list[str]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        for prefix in prefixes:
            batch = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            if batch:
                await client.unlink(*batch)
    finally:
        await client.aclose()
