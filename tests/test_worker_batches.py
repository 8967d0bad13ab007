"""The worker takes the journal in batches and records decisions in groups.

A real store (SQLite; Redis where the replica takeover is the point), real
``Worker`` and ``Processor`` in dry-run, and a processor that can hold one entry
until released, to crash a worker in the middle of a batch. A crash is what
``kill -9`` leaves: the tasks are gone mid-flight, nothing is handed back,
nothing retired. The doorbell is a real socket pair.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import test_store_contract as contract
from aiohttp import web
from conftest import full_settings, journal_drained, never_answer_then_fail
from test_store_contract import _forget_prefix

from receiver.app import create_app
from receiver.engine import worker as worker_module
from receiver.engine.doorbell import EdgeBell, WorkerBell
from receiver.engine.planner import PlanContext
from receiver.engine.processing import Prepared
from receiver.engine.recording import Recorder
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor, Worker
from receiver.errors import StoreUnavailableError
from receiver.model import AlertTrace
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store.base import DecisionQuery, JournalEntry, Retention, Store
from receiver.store.redis import RedisStore
from receiver.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
redis_url = contract.redis_url  # the contract's redis-server fixture
RULES = """
playbooks:
  hook:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
rules:
  - {name: hook, match: ['alertname="Hook"'], playbook: hook}
"""


class Clock:
    """Advances a millisecond on every reading; ``advance`` moves it further."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


class GatedProcessor(Processor):
    """Counts what it decides; holds the entry ``gate_on`` until ``opened``."""

    def __init__(self, *args: Any, gate_on: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decided: Counter[str] = Counter()
        self.gate_on = gate_on
        self.holding = asyncio.Event()
        self.opened = asyncio.Event()
        self.changed = asyncio.Event()  # set whenever an entry is taken up

    async def process(
        self, entry: JournalEntry, prepared: Prepared | None = None
    ) -> list[AlertTrace]:
        self.decided[entry.id] += 1
        self.changed.set()
        if entry.id == self.gate_on:
            self.holding.set()
            await self.opened.wait()
        return await super().process(entry, prepared)


async def _until(check: Callable[[], bool], changed: asyncio.Event) -> None:
    """Wait until ``check()`` holds, looking again each time ``changed`` is set."""

    async def wait() -> None:
        while True:
            changed.clear()
            if check():
                return
            await changed.wait()

    await asyncio.wait_for(wait(), 10)


def _blocked_on_room(worker: Worker) -> asyncio.Event:
    """Set once the worker's task has to wait for room to hand an entry over."""
    blocked = asyncio.Event()
    room = worker._room_to_finish

    async def watched(alerts: int) -> None:
        if worker._finishing_alerts + alerts > worker_module.FINISH_ALERTS:
            blocked.set()
        await room(alerts)

    worker._room_to_finish = watched  # type: ignore[method-assign]
    return blocked


def _body(n: int) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "Hook", "service": f"s{n}"},
        "annotations": {},
        "startsAt": "2026-11-26T09:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"fp-{n}",
    }
    return json.dumps(
        {"version": "4", "status": "firing", "groupKey": "g", "alerts": [alert]}
    ).encode()


def _entry(n: int) -> JournalEntry:
    return JournalEntry(f"e{n:03d}", "alertmanager", T0, _body(n))


def _worker(
    tmp_path: Path,
    store: Store,
    clock: Clock,
    *,
    concurrency: int = 2,
    gate_on: str = "",
    lease: timedelta = LEASE,
    **kwargs: Any,
) -> Worker:
    (tmp_path / "rules.yaml").write_text(RULES)
    processor = GatedProcessor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        Runner({}, clock),
        clock,
        PlanContext(),
        store=store,
        gate_on=gate_on,
    )
    return Worker(store, processor, concurrency, clock=clock, lease=lease, **kwargs)


async def _crash(worker: Worker) -> None:
    """What ``kill -9`` leaves of a worker: its tasks stop where they are."""
    tasks = [*worker._tasks, *worker._finishing]
    worker._stopping.set()  # its loops end, whatever a client swallowed
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await worker._recorder.aclose()


async def _records_per_entry(store: Store) -> Counter[str]:
    records = await store.decisions(DecisionQuery(limit=10_000))
    return Counter(str(r["payload_id"]) for r in records)


async def test_a_backlog_is_claimed_in_batches_and_decided_once(tmp_path):
    """40 waiting payloads: a handful of claims, every payload recorded once."""
    store = SqliteStore(str(tmp_path / "state.db"))
    for n in range(40):
        await store.append(_entry(n), [])
    worker = _worker(tmp_path, store, Clock(), batch=8)
    await worker.start()
    try:
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(40)}
    full_claims = 40 // 8
    assert worker.claims - worker.empty_claims == full_claims
    writes, entries = worker.recorded
    assert entries == 40
    assert writes <= 40
    await store.close()


class GatedSqlite(SqliteStore):
    """Holds the first ``complete_batch`` until ``opened``; records every batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []
        self.writing = asyncio.Event()
        self.opened = asyncio.Event()

    async def complete_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
    ) -> None:
        self.batches.append([entry_id for entry_id, _ in done])
        self.writing.set()
        await self.opened.wait()
        await super().complete_batch(done)


async def test_the_recorder_writes_what_arrives_during_a_write_together(tmp_path):
    """Group commit: the first entry goes alone, the five behind it in one write."""
    store = GatedSqlite(str(tmp_path / "state.db"))
    for n in range(6):
        await store.append(_entry(n), [])
    recorder = Recorder(store, in_flight=1)
    first = asyncio.create_task(recorder.record("e000", []))
    await store.writing.wait()
    rest = [asyncio.create_task(recorder.record(f"e{n:03d}", [])) for n in range(1, 6)]
    await asyncio.sleep(0)  # the five are queued behind the write in flight
    store.opened.set()
    await asyncio.gather(first, *rest)
    assert store.batches == [["e000"], ["e001", "e002", "e003", "e004", "e005"]]
    assert (recorder.writes, recorder.entries) == (2, 6)
    assert await store.pending() == (0, None)
    await recorder.aclose()
    await store.close()


class OneBadRecord(SqliteStore):
    """Fails every write that holds entry ``e001`` (a bug in its records)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    async def record_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
    ) -> None:
        self.batches.append([entry_id for entry_id, _ in done])
        if any(entry_id == "e001" for entry_id, _ in done):
            raise ValueError("e001's records cannot be encoded")
        await super().record_batch(done)


async def test_one_entry_whose_records_fail_does_not_fail_its_batch_mates(tmp_path):
    """A bug in one entry's records: only it fails; the rest are written alone."""
    store = OneBadRecord(str(tmp_path / "state.db"))
    for n in range(3):
        await store.append(_entry(n), [])
    recorder = Recorder(store, in_flight=1, records_only=True)
    calls = [
        asyncio.create_task(
            recorder.record(f"e{n:03d}", [{"payload_id": f"e{n:03d}", "n": n}])
        )
        for n in range(3)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] is None
    assert store.batches == [["e000", "e001", "e002"], ["e000"], ["e001"], ["e002"]]
    assert await _records_per_entry(store) == {"e000": 1, "e002": 1}
    assert (recorder.writes, recorder.entries) == (2, 2)
    await recorder.aclose()
    await store.close()


class DownSqlite(OneBadRecord):
    """Its record writes find the store down."""

    async def record_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
    ) -> None:
        self.batches.append([entry_id for entry_id, _ in done])
        raise StoreUnavailableError("the store is down")


async def test_the_store_down_fails_the_whole_batch_at_once(tmp_path):
    """Not written again one by one: each caller retries with its backoff."""
    store = DownSqlite(str(tmp_path / "state.db"))
    recorder = Recorder(store, in_flight=1, records_only=True)
    calls = [
        asyncio.create_task(recorder.record(f"e{n:03d}", [{"n": n}])) for n in range(3)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, StoreUnavailableError) for o in outcomes)
    assert store.batches == [["e000", "e001", "e002"]]
    await recorder.aclose()
    await store.close()


class HeldSqlite(SqliteStore):
    """Holds every ``complete_batch`` until released; counts those in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.started = asyncio.Condition()
        self.release = asyncio.Event()

    async def complete_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
    ) -> None:
        async with self.started:
            self.batches.append([entry_id for entry_id, _ in done])
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.started.notify_all()
        try:
            await self.release.wait()
            await super().complete_batch(done)
        finally:
            self.in_flight -= 1

    async def until(self, batches: int) -> None:
        """Wait until ``batches`` writes started (10 s at most: then it fails)."""
        async with self.started:
            await asyncio.wait_for(
                self.started.wait_for(lambda: len(self.batches) >= batches), 10
            )


async def test_the_recorder_has_two_writes_on_their_way_then_groups_the_rest(
    tmp_path,
):
    """A second write starts while the first waits; what comes later waits for one.

    The entries decided while both are on their way go together in the write
    after; each entry is written once, and every caller hears back.
    """
    store = HeldSqlite(str(tmp_path / "state.db"))
    for n in range(9):
        await store.append(_entry(n), [])
    recorder = Recorder(store)
    calls = [asyncio.create_task(recorder.record("e000", []))]
    await store.until(1)
    calls += [asyncio.create_task(recorder.record(f"e{n:03d}", [])) for n in (1, 2)]
    await store.until(2)
    # Decided while both are on their way: they wait for one to finish.
    calls += [asyncio.create_task(recorder.record(f"e{n:03d}", [])) for n in (3, 4)]
    store.release.set()
    await asyncio.gather(*calls)
    assert store.batches == [["e000"], ["e001", "e002"], ["e003", "e004"]]
    assert store.most_in_flight == 2
    assert (recorder.writes, recorder.entries) == (3, 5)
    assert (await store.pending())[0] == 4  # e005..e008, never recorded
    await recorder.aclose()
    await store.close()


class RenewCounting(SqliteStore):
    """Counts lease renewals on their way at once; the first one can fail."""

    def __init__(self, *args: Any, fail_first: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.most_in_flight = 0
        self.renewed: Counter[str] = Counter()
        self.fail_first = fail_first
        self.changed = asyncio.Event()

    async def renew(self, lease: Any, now: datetime) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fail_first:
                self.fail_first = False
                raise RuntimeError("a renewal that broke")
            renewed = await super().renew(lease, now)
            self.renewed[lease.entry.id] += 1
            return renewed
        finally:
            self.in_flight -= 1
            self.changed.set()


@pytest.mark.parametrize("fail_first", [False, True])
async def test_held_leases_are_renewed_together(tmp_path, fail_first):
    """A claim's worth of held leases is renewed at once, not one after another.

    One entry is held undecided, the rest of its batch waits in the buffer:
    all eight leases are renewed in each round, on their way together (on
    SQLite, one transaction). A renewal that fails unexpectedly is logged and
    the others still go.
    """
    store = RenewCounting(str(tmp_path / "state.db"), fail_first=fail_first)
    for n in range(8):
        await store.append(_entry(n), [])
    worker = _worker(
        tmp_path,
        store,
        Clock(),
        concurrency=1,
        gate_on="e000",
        batch=8,
        lease=timedelta(seconds=0.15),
    )
    await worker.start()
    try:
        await asyncio.wait_for(worker._processor.holding.wait(), 10)
        ids = {f"e{n:03d}" for n in range(8)}
        # Two rounds: every held lease renewed twice (the first may have failed).
        await _until(lambda: all(store.renewed[i] >= 2 for i in ids), store.changed)
        assert store.most_in_flight == 8
        assert set(worker._held) == ids
        worker._processor.opened.set()
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    assert await _records_per_entry(store) == dict.fromkeys(sorted(ids), 1)
    await store.close()


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_an_entry_recorded_as_the_last_write_ends_is_written(tmp_path, in_flight):
    """A write that has just ended does not count as one on its way.

    Each caller resumes before the write that answered it has been put away;
    the next entry must still start a write of its own.
    """
    store = SqliteStore(str(tmp_path / "state.db"))
    for n in range(6):
        await store.append(_entry(n), [])
    recorder = Recorder(store, in_flight=in_flight)
    # Awaited in this task (a timeout, not a task of its own): it resumes the
    # moment its entry is answered.
    async with asyncio.timeout(10):
        for n in range(3):
            await recorder.record(f"e{n:03d}", [])
        # Two on their way at once, then one more as soon as they are answered.
        second = asyncio.create_task(recorder.record("e004", []))
        await recorder.record("e003", [])
        await second
        await recorder.record("e005", [])
    assert await store.pending() == (0, None)
    await recorder.aclose()
    await store.close()


async def test_a_failed_write_fails_every_entry_of_its_batch(tmp_path):
    """A store error in a group write reaches each caller; nothing is recorded."""
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.append(_entry(0), [])
    recorder = Recorder(store)
    await store.close()
    with pytest.raises(Exception, match=r"closed|cannot"):
        await recorder.record("e000", [{"fingerprint": "fp"}])
    assert (recorder.writes, recorder.entries) == (0, 0)
    await recorder.aclose()


async def test_a_crash_in_the_middle_of_a_batch_loses_and_doubles_nothing_sqlite(
    tmp_path,
):
    """SQLite: a restart decides the rest of a crashed batch; the done part stays."""
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    for n in range(6):
        await store.append(_entry(n), [])
    crashed = _worker(tmp_path, store, Clock(), concurrency=1, gate_on="e002", batch=6)
    await crashed.start()
    await crashed._processor.holding.wait()
    await _crash(crashed)
    await store.close()
    assert await _records_after_restart(tmp_path, SqliteStore(path), crashed)


async def _records_after_restart(
    tmp_path: Path, store: Store, crashed: Worker, clock: Clock | None = None
) -> bool:
    recorded_before = set(await _records_per_entry(store))
    worker = _worker(tmp_path, store, clock or Clock(), batch=6)
    await worker.start()
    try:
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    before = crashed._processor.decided
    after = worker._processor.decided
    # The crashed worker decided the first three (the third never finished);
    # whatever of them it had recorded is not decided again, the rest is.
    assert before == {"e000": 1, "e001": 1, "e002": 1}
    assert set(after) >= {f"e{n:03d}" for n in range(2, 6)}
    assert not set(after) & recorded_before
    assert set(after) | recorded_before == {f"e{n:03d}" for n in range(6)}
    assert all(n == 1 for n in after.values())
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(6)}
    await store.close()
    return True


async def test_a_crash_in_the_middle_of_a_batch_loses_and_doubles_nothing_redis(
    tmp_path, redis_url
):
    """Redis: another replica takes the crashed batch's rest once its leases lapse."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix, retention=Retention(lease=LEASE))
    for n in range(6):
        await store.append(_entry(n), [])
    crashed = _worker(tmp_path, store, Clock(), concurrency=1, gate_on="e002", batch=6)
    await crashed.start()
    await crashed._processor.holding.wait()
    await _crash(crashed)
    await store.close()
    later = Clock()
    later.now += LEASE * 2  # the crashed replica's leases have lapsed
    replica = RedisStore(redis_url, prefix=prefix, retention=Retention(lease=LEASE))
    try:
        assert await _records_after_restart(tmp_path, replica, crashed, later)
    finally:
        await _forget_prefix(redis_url, prefix)


async def test_a_stopping_worker_hands_back_what_it_never_started(tmp_path):
    """A clean stop releases buffered entries at once: another worker takes them."""
    store = SqliteStore(str(tmp_path / "state.db"))
    for n in range(5):
        await store.append(_entry(n), [])
    first = _worker(tmp_path, store, Clock(), concurrency=1, gate_on="e000", batch=5)
    await first.start()
    await first._processor.holding.wait()
    await first.stop()
    clock = Clock()  # no lease has lapsed: only the released entries are free
    leases = await store.claim_batch("next", 10, 0, clock())
    assert [lease.entry.id for lease in leases] == [f"e{n:03d}" for n in range(1, 5)]
    assert all(lease.entry.attempts == 2 for lease in leases)
    await store.close()


class PruneFailsOnce(SqliteStore):
    """The first ``prune`` fails with a bug of ours, not the store down."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pruned = asyncio.Event()
        self.retired = False
        self.closed = False

    async def prune(self, now: datetime) -> int:
        if not self.pruned.is_set():
            self.pruned.set()
            raise RuntimeError("a bug in prune")
        return await super().prune(now)

    async def retire(self, *args: Any, **kwargs: Any) -> None:
        self.retired = True
        await super().retire(*args, **kwargs)

    async def close(self) -> None:
        self.closed = True
        await super().close()


async def test_a_stop_after_a_task_died_hands_back_retires_then_raises(tmp_path):
    """The pruner died of a bug: the stop still releases and retires, then raises.

    It raised the pruner's error before anything else: the buffered entries
    waited out their lease and the incarnation was never retired.
    """
    store = PruneFailsOnce(str(tmp_path / "state.db"))
    for n in range(5):
        await store.append(_entry(n), [])
    first = _worker(tmp_path, store, Clock(), concurrency=1, gate_on="e000", batch=5)
    await first.start()
    await first._processor.holding.wait()
    await store.pruned.wait()
    [pruner] = [t for t in first._tasks if t.get_name() == "pruner"]
    assert pruner.done(), "the pruner died before the stop"
    with pytest.raises(RuntimeError, match="a bug in prune"):
        await first.stop()
    assert store.retired
    clock = Clock()  # no lease has lapsed: only the released entries are free
    leases = await store.claim_batch("next", 10, 0, clock())
    assert [lease.entry.id for lease in leases] == [f"e{n:03d}" for n in range(1, 5)]
    await store.close()


async def test_the_app_closes_what_it_holds_after_its_worker_stop_raised(tmp_path):
    """The worker's pruner died of a bug: the app's shutdown still closes the rest.

    ``Worker.stop`` raises that error once it has handed back and retired;
    the app's cleanup let it skip the bell, the sink dispatcher, the executors
    and the store, which was never closed. The error still reaches aiohttp.
    """
    (tmp_path / "rules.yaml").write_text(RULES)
    store = PruneFailsOnce(str(tmp_path / "state.db"))
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        store=store,
        clock=Clock(),
        sinks={},
    )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await store.pruned.wait()
    with pytest.raises(RuntimeError, match="a bug in prune"):
        await runner.cleanup()
    assert store.retired
    assert store.closed, "the store was left open"


async def test_a_ring_wakes_one_waiting_task():
    """Three tasks wait on the worker's bell: each ring wakes exactly one."""
    edge_end, worker_end = socket.socketpair()
    edge, bell = EdgeBell(edge_end), WorkerBell(worker_end)
    bell.start(lambda: b"", every=3600)
    waiters = [asyncio.create_task(bell.wait(30)) for _ in range(3)]
    await asyncio.sleep(0)  # all three are waiting
    try:
        for woken in (1, 2, 3):
            edge.ring()
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1
            waiters = [w for w in waiters if w not in done]
            assert bell.wakeups == woken
    finally:
        await bell.aclose()
        await edge.aclose()


async def test_the_edge_gone_wakes_every_waiting_task():
    """End of file on the bell wakes all waiters (the worker is to stop)."""
    edge_end, worker_end = socket.socketpair()
    bell = WorkerBell(worker_end)
    bell.start(lambda: b"", every=3600)
    waiters = [asyncio.create_task(bell.wait(30)) for _ in range(3)]
    await asyncio.sleep(0)
    edge_end.close()
    await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert bell.edge_gone.is_set()
    await bell.wait(30)  # returns at once from now on
    await bell.aclose()


async def test_a_rung_worker_claims_without_looking_in_vain(tmp_path):
    """Payloads arriving one by one: each ring is one claim that finds it.

    Four tasks share one claimer; a worker that took all there was waits for
    the next ring instead of looking again.
    """
    store = SqliteStore(str(tmp_path / "state.db"))
    edge_end, worker_end = socket.socketpair()
    edge, bell = EdgeBell(edge_end), WorkerBell(worker_end)
    bell.start(lambda: b"", every=3600)
    worker = _worker(tmp_path, store, Clock(), concurrency=4, bell=bell)
    await worker.start()
    try:
        for n in range(20):
            await store.append(_entry(n), [])
            edge.ring()
            await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
        await bell.aclose()
        await edge.aclose()
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(20)}
    assert worker.claims - worker.empty_claims == 20
    # The first look at an empty journal, and one per idle re-check at most.
    assert worker.empty_claims <= 3
    await store.close()


async def test_entries_decided_while_a_write_is_on_its_way_are_written_together(
    tmp_path,
):
    """One task decides on while a record is written; the records go together."""
    store = GatedSqlite(str(tmp_path / "state.db"))
    for n in range(6):
        await store.append(_entry(n), [])
    worker = _worker(tmp_path, store, Clock(), concurrency=1, batch=6)
    await worker.start()
    try:
        await store.writing.wait()
        processor = worker._processor
        # The task decides the other five while the first write is held.
        await _until(lambda: len(processor.decided) == 6, processor.changed)
        assert len(store.batches) == 1  # the first write is still held
        store.opened.set()
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    # The first write holds what was decided when it began; the rest go in one.
    assert len(store.batches) <= 2
    assert [e for batch in store.batches for e in batch] == [
        f"e{n:03d}" for n in range(6)
    ]
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(6)}
    await store.close()


async def test_what_waits_to_be_recorded_is_bounded(tmp_path, monkeypatch):
    """Past the bound of decided alerts not yet recorded, deciding waits."""
    monkeypatch.setattr(worker_module, "FINISH_ALERTS", 2)
    store = GatedSqlite(str(tmp_path / "state.db"))
    for n in range(6):
        await store.append(_entry(n), [])
    worker = _worker(tmp_path, store, Clock(), concurrency=1, batch=6)
    blocked = _blocked_on_room(worker)
    await worker.start()
    try:
        await store.writing.wait()
        await asyncio.wait_for(blocked.wait(), 10)
        # e000 is being written and e001 waits to be; e002 is decided and
        # waits for room; nothing after it is decided.
        assert sorted(worker._processor.decided) == ["e000", "e001", "e002"]
        assert worker._finishing_alerts == 2
        store.opened.set()
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(6)}
    assert worker._finishing_alerts == 0
    await store.close()


class ParkingSqlite(SqliteStore):
    """Sets ``parked`` when an entry is parked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parked = asyncio.Event()

    async def park(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().park(*args, **kwargs)
        self.parked.set()
        return result


async def test_an_error_while_recording_hands_the_entry_back_then_parks_it(
    tmp_path,
):
    """An unexpected error after deciding is the entry's failure, not a lost one.

    Its decision records are written as it is decided (what was done is
    told), once: the second attempt's stand behind the first's.
    """
    store = ParkingSqlite(str(tmp_path / "state.db"))
    await store.append(_entry(0), [])
    calls = 0

    async def outbox(traces: list[AlertTrace]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("outbox exploded")

    clock = Clock()
    worker = _worker(tmp_path, store, clock, outbox=outbox, max_attempts=2)
    await worker.start()
    try:
        await asyncio.wait_for(store.parked.wait(), 10)
    finally:
        await worker.stop()
    assert await store.parked_count() == 1
    assert calls == 2
    assert worker._processor.decided == {"e000": 2}
    assert await _records_per_entry(store) == {"e000": 1}
    await store.close()


async def test_the_outbox_sees_entries_in_the_order_they_were_decided(tmp_path):
    """An outbox that waits for room on one entry is not overtaken by the next."""
    store = SqliteStore(str(tmp_path / "state.db"))
    for n in range(4):
        await store.append(_entry(n), [])
    seen: list[str] = []
    waiting = asyncio.Event()
    room = asyncio.Event()

    async def outbox(traces: list[AlertTrace]) -> None:
        seen.append(traces[0].payload_id)
        if traces[0].payload_id == "e000":
            waiting.set()
            await room.wait()

    worker = _worker(tmp_path, store, Clock(), concurrency=1, outbox=outbox, batch=4)
    await worker.start()
    try:
        await asyncio.wait_for(waiting.wait(), 10)
        processor = worker._processor  # the task decides on meanwhile
        await _until(lambda: len(processor.decided) == 4, processor.changed)
        assert seen == ["e000"]
        room.set()
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    assert seen == ["e000", "e001", "e002", "e003"]
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(4)}
    await store.close()


class FlakySqlite(SqliteStore):
    """``complete_batch`` fails as the store being down the first ``fails`` times."""

    def __init__(self, *args: Any, fails: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fails = fails
        self.tries = 0
        self.written = asyncio.Event()

    async def complete_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
    ) -> None:
        self.tries += 1
        if self.tries <= self.fails:
            msg = "SQLite store cannot be written: disk I/O error"
            raise StoreUnavailableError(msg)
        await super().complete_batch(done)
        self.written.set()


async def test_a_store_down_while_recording_retries_the_write_not_the_decision(
    tmp_path, monkeypatch
):
    """The decision is kept and written once the store is back; decided once."""
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def no_pause(delay: float, *args: Any) -> Any:
        """The backoff's pauses noted and not waited out (a turn of the loop).

        The heartbeat's and the renewer's minute-long pauses are kept.
        """
        if delay >= 5:
            return await sleep(delay, *args)
        pauses.append(delay)
        return await sleep(0, *args)

    monkeypatch.setattr(asyncio, "sleep", no_pause)
    store = FlakySqlite(str(tmp_path / "state.db"), fails=2)
    await store.append(_entry(0), [])
    worker = _worker(tmp_path, store, Clock())
    await worker.start()
    try:
        await asyncio.wait_for(store.written.wait(), 10)
    finally:
        await worker.stop()
    assert store.tries == 3
    assert [p for p in pauses if p] == [0.5, 1.0]  # backing off, then written
    assert worker._processor.decided == {"e000": 1}
    assert await _records_per_entry(store) == {"e000": 1}
    assert await store.pending() == (0, None)
    await store.close()


class BrokenClaim(SqliteStore):
    """``claim_batch`` fails the first time with an error that is not 'unavailable'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tries = 0

    async def claim_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.tries += 1
        if self.tries == 1:
            msg = "file is not a database"  # as sqlite3 says of a damaged file
            raise sqlite3.DatabaseError(msg)
        return await super().claim_batch(*args, **kwargs)


async def test_a_claim_that_breaks_does_not_stop_the_worker(tmp_path, monkeypatch):
    """An unexpected error from a claim is logged and tried again, not fatal.

    Before, it ended the worker task that claimed: with every task ended,
    nothing more was decided.
    """
    sleep = asyncio.sleep

    async def no_pause(delay: float, *args: Any) -> Any:
        return await sleep(delay if delay >= 5 else 0, *args)

    monkeypatch.setattr(asyncio, "sleep", no_pause)
    store = BrokenClaim(str(tmp_path / "state.db"))
    await store.append(_entry(0), [])
    worker = _worker(tmp_path, store, Clock(), concurrency=1)
    await worker.start()
    try:
        await journal_drained(store, timeout=5.0)
    finally:
        await worker.stop()
    assert store.tries >= 2
    assert worker._processor.decided == {"e000": 1}
    await store.close()


class FailingPrepare(GatedProcessor):
    """Reading ahead for a batch fails with ``error`` (None: it does not fail)."""

    def __init__(self, *args: Any, error: Exception | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error = error

    async def prepare(self, entries: Sequence[JournalEntry]) -> Prepared | None:
        if self.error is None:
            return await super().prepare(entries)
        raise self.error


@pytest.mark.parametrize(
    "error",
    [StoreUnavailableError("SQLite store cannot be read"), RuntimeError("a bug"), None],
)
async def test_a_batch_that_cannot_be_read_ahead_is_decided_entry_by_entry(
    tmp_path, error
):
    """A failed read-ahead costs nothing but the read: each entry reads its own.

    With none failing, the body that does not parse is left out of the read.

    An entry whose body no longer parses is recorded as unprocessable, the
    others of its batch are decided as usual.
    """
    store = SqliteStore(str(tmp_path / "state.db"))
    for n in range(3):
        await store.append(_entry(n), [])
    await store.append(JournalEntry("e003", "alertmanager", T0, b"{not json"), [])
    (tmp_path / "rules.yaml").write_text(RULES)
    clock = Clock()
    processor = FailingPrepare(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        Runner({}, clock),
        clock,
        PlanContext(),
        store=store,
        error=error,
    )
    worker = Worker(store, processor, 2, clock=clock, lease=LEASE, batch=4)
    await worker.start()
    try:
        await journal_drained(store, timeout=20.0)
    finally:
        await worker.stop()
    assert processor.decided == {f"e{n:03d}": 1 for n in range(4)}
    assert await _records_per_entry(store) == {f"e{n:03d}": 1 for n in range(3)}
    assert await store.parked_count() == 0
    await store.close()


class SwallowingSqlite(SqliteStore):
    """``complete_batch`` hangs; cancelled, it raises the store's own error.

    As redis-py's asyncio client does at times (a ``ConnectionError`` where
    the ``CancelledError`` was).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0
        self.writing = asyncio.Event()

    async def complete_batch(self, done: Any) -> None:
        self.writes += 1
        await never_answer_then_fail(self.writing)


async def test_a_recorder_whose_store_swallows_the_cancel_stops_writing(tmp_path):
    """Closed while a write hangs: the flusher stops, the next batch is not written.

    It went on to the next batch (which hung again): the worker's stop never
    finished.
    """
    store = SwallowingSqlite(str(tmp_path / "state.db"))
    recorder = Recorder(store, limit=1, in_flight=1)
    first = asyncio.create_task(recorder.record("e000", []))
    second = asyncio.create_task(recorder.record("e001", []))
    await store.writing.wait()
    async with asyncio.timeout(10):
        await recorder.aclose()
    assert store.writes == 1
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], StoreUnavailableError)
    assert isinstance(results[1], asyncio.CancelledError)
    await store.close()
