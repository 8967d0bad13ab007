"""The sink outbox: durable, never dropping, at most once per decision and sink.

Real SQLite files and a real redis-server; the sinks are fakes of our own
``Sink`` interface that record what they were asked to send.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Ticking, never_answer_then_fail, passing
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from peers import run_redis

from receiver.errors import StoreUnavailableError
from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)
from receiver.retrying import RetryPolicy
from receiver.sinks import SinkDispatcher, SinkOutcome
from receiver.sinks.dispatch import row_id
from receiver.sinks.outbox import decode_trace, encode_trace
from receiver.sinks.pagerduty import event_dedup_key
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery
from receiver.store.outbox import RedisOutbox, SqliteOutbox

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)
FAST = RetryPolicy(multiplier=0.001, cap=0.01)


class Killed(BaseException):
    """Raised at a chosen point: the process dies there, nothing handles it."""


def trace(
    payload_id: str,
    fingerprint: str = "fp1",
    *,
    mode: str = "execute",
    decision: Decision = Decision.EXECUTED,
) -> AlertTrace:
    alert = Alert(
        source="alertmanager",
        fingerprint=fingerprint,
        status="firing",
        labels=freeze({"alertname": "SiemDown"}),
        starts_at=NOW,
        refs=freeze({"group_key": '{}:{alertname="SiemDown"}'}),
    )
    step = StepTrace(
        kind=StepKind.REMEDIATION,
        type="k8s.restart",
        target="deploy/siem",
        decision=decision,
        reason="done",
        request=freeze({"replicas": 2, "nested": {"a": [1, 2]}}),
    )
    match = MatchTrace(
        rule="siem", severity=Severity.P1, playbook="siem", steps=(step,)
    )
    return AlertTrace(
        alert=alert, matches=(match,), decided_at=NOW, payload_id=payload_id, mode=mode
    )


class Recording:
    """A sink of our interface that records each send (and may fail or die)."""

    def __init__(self, name: str = "hook", dedupe: str = "decision") -> None:
        self.name = name
        self.dedupe = dedupe
        self.sent: list[tuple[str, str]] = []  # (payload id, PagerDuty dedup key)
        self.fail: set[str] = set()  # payload ids whose next send raises
        self.die_before: set[str] = set()  # payload ids whose next send kills
        self.peak = 0
        self.outbox: SqliteOutbox | RedisOutbox | None = None

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        if trace.payload_id in self.die_before:
            self.die_before.discard(trace.payload_id)
            raise Killed
        if trace.payload_id in self.fail:
            self.fail.discard(trace.payload_id)
            msg = "sink bug"
            raise RuntimeError(msg)
        if self.outbox is not None:
            self.peak = max(self.peak, (await self.outbox.counts())[0])
        self.sent.append((trace.payload_id, event_dedup_key(trace)))
        return SinkOutcome(self.name, "sent", "ok", 1)

    async def aclose(self) -> None:
        pass


def make(
    sink: Recording,
    store: object,
    outbox: SqliteOutbox | RedisOutbox,
    clock: Ticking,
    **kw: object,
) -> SinkDispatcher:
    return SinkDispatcher(
        {sink.name: sink},
        store=store,  # type: ignore[arg-type]
        outbox=outbox,
        choose=lambda _t: [sink.name],
        clock=clock,
        retry=FAST,
        poll=0.01,
        lease=timedelta(seconds=30),
        **kw,  # type: ignore[arg-type]
    )


def hold(sink: Recording) -> asyncio.Event:
    """Make each of ``sink``'s sends wait for the returned gate."""
    gate = asyncio.Event()
    plain_send = sink.send

    async def held_send(t: AlertTrace) -> SinkOutcome:
        await gate.wait()
        return await plain_send(t)

    sink.send = held_send  # type: ignore[method-assign]
    return gate


async def die(d: SinkDispatcher) -> None:
    """Stop the delivery loops as a kill would: no hand-back, no cleanup."""
    # Closed too: asyncio.wait_for may swallow a cancel that meets its result.
    d._closed = True
    for task in d._loops:
        task.cancel()
    await asyncio.gather(*d._loops, return_exceptions=True)


def test_a_row_keeps_the_whole_trace():
    """What the outbox keeps decodes to the very trace that was decided."""
    t = trace("p1")
    assert decode_trace(encode_trace(t)) == t


# ------------------------------------------------------------------ property


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("restart"), st.booleans(), st.booleans()),
    ),
    min_size=1,
    max_size=12,
)


async def run_model(ops, outbox_at, tmp: Path) -> None:
    """Puts, sink failures and restarts; then everything drains.

    Model: every distinct decision (payload id) is sent once (twice at most
    if the receiver stopped meanwhile), or its row is parked; a repeated put
    of the same payload sends nothing more.
    """
    store = MemoryStore()
    clock = Ticking(NOW, step=timedelta(seconds=1))
    sink = Recording()
    d = make(sink, store, outbox_at(), clock, max_attempts=3)
    decided: set[str] = set()
    counter = itertools.count()
    for op, a, b in ops:
        if op == "put":
            payload = f"p{a}"
            if b:
                sink.fail.add(payload)  # its next send fails once
            await d.put([trace(payload)])
            decided.add(payload)
        else:
            if a:
                await d.drain()
            await (d.aclose(grace=0) if b else die(d))
            d = make(sink, store, outbox_at(), clock, max_attempts=3)
            next(counter)
    await d.drain()
    pending, parked = await d.counts()
    assert pending == 0
    sent = Counter(p for p, _ in sink.sent)
    # A stop between a sink's answer and the row's note sends it once more.
    most = 2 if next(counter) else 1
    assert all(1 <= n <= most for n in sent.values()), sent
    assert set(sent) | (set() if not parked else decided - set(sent)) == decided
    # Every unsent decision is parked; a row may also be parked after it was
    # sent, when stops kept interrupting it between the answer and the note
    # (which of the two happens depends on task scheduling).
    assert len(decided - set(sent)) <= parked <= len(decided)
    records = await store.decisions(DecisionQuery())
    recorded = {r["decision_payload_id"] for r in records}
    # A sent delivery lacks its record only if its row was parked before the
    # outcome was noted.
    assert len(set(sent) - recorded) <= parked, (set(sent) - recorded, parked)
    await d.aclose()
    await store.close()


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_outbox_matches_the_model_on_sqlite(ops, tmp_path):
    path = str(tmp_path / f"o{uuid.uuid4().hex}.db")  # a fresh file per example
    asyncio.run(run_model(ops, lambda: SqliteOutbox(path), tmp_path))


# ------------------------------------------------------------------ crashes


# Killed before the call takes effect; the others right after it.
BEFORE = ("put", "progress", "finish")


class Dying:
    """An outbox that kills the process once at a chosen operation."""

    def __init__(self, inner: SqliteOutbox | RedisOutbox, at: str) -> None:
        self.inner = inner
        self.at = at

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)
        if name != self.at:
            return method

        async def dying(*args: object, **kw: object) -> object:
            self.at = ""
            if name in BEFORE:
                raise Killed  # before it takes effect
            await method(*args, **kw)
            raise Killed  # after it took effect, before anything else

        return dying


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize(
    "point",
    [
        "put",  # before the row is written: the worker decides the entry again
        "claim",  # written and claimed, nothing sent
        "mark",  # keys marked as the row's own, nothing sent
        "send",  # the sink is being called when the process dies
        "progress",  # the sink answered, the row does not know yet
        "finish",  # the outcome is logged, the row not yet deleted (logged twice)
    ],
)
async def test_a_crash_at_each_point_loses_nothing(point, backend, tmp_path):
    """Each decision is sent at least once, and at most twice.

    Only a crash between the sink's answer and the row's note repeats it,
    with the same PagerDuty dedup_key.
    """
    with run_redis(tmp_path) as url:

        def fresh() -> SqliteOutbox | RedisOutbox:
            if backend == "redis":
                return RedisOutbox(url)
            return SqliteOutbox(str(tmp_path / "r.db"))

        store = MemoryStore()
        clock = Ticking(NOW, step=timedelta(seconds=1))
        sink = Recording()
        first = fresh()
        outbox = Dying(first, "" if point == "send" else point)
        if point == "send":
            sink.die_before.add("p1")
        d = make(sink, store, outbox, clock)  # type: ignore[arg-type]
        if point == "put":
            with pytest.raises(Killed):
                await d.put([trace("p1")])
            # The journal entry was not completed: the worker decides it
            # again and writes the same row.
            await d.put([trace("p1")])
        else:
            await d.put([trace("p1")])
            # The loop that meets the injected crash dies on Killed.
            await asyncio.wait(d._loops, return_when=asyncio.FIRST_COMPLETED)
        await die(d)
        await first.close()
        # The next start: its claims wait for the dead one's lease to lapse
        # (the clock ticks a second on each reading).
        d2 = make(sink, store, fresh(), clock)
        await d2.drain()
        assert await d2.counts() == (0, 0)
        payloads = [p for p, _ in sink.sent]
        expected = 2 if point == "progress" else 1
        assert payloads == ["p1"] * expected
        assert len({key for _, key in sink.sent}) == 1  # PagerDuty drops the repeat
        records = await store.decisions(DecisionQuery(payload_id="p1.sinks"))
        assert records, "the outcome reaches the decision log"
        # A redelivery of the same payload afterwards sends nothing new.
        await d2.put([trace("p1")])
        await d2.drain()
        assert [p for p, _ in sink.sent] == ["p1"] * expected
        await d2.aclose()
        await store.close()


async def test_a_starting_worker_hands_back_what_a_killed_one_had_claimed(tmp_path):
    """On SQLite, the process that decides takes over the dead one's claims at once.

    Only rows still claimed: not one handed back for a retry's backoff, not a
    parked one, not one delivered. An edge beside a live worker hands nothing
    back. One instant: the lease (5 minutes) never lapses here.
    """
    path = str(tmp_path / "r.db")
    lease = timedelta(minutes=5)
    first = SqliteOutbox(path, reclaim=True)
    await first.put([(i, "owner", "{}", ["hook"]) for i in "abcd"], NOW)
    for expected in "abcd":
        row = await first.claim(NOW, lease)
        assert row is not None
        assert row.id == expected
    await first.release("b", NOW + timedelta(minutes=1))  # a retry's backoff
    await first.park("c", "gave up")
    await first.finish("d")
    await first.close()  # killed while delivering "a"

    edge = SqliteOutbox(path)  # reclaim=False: a worker may be delivering
    assert await edge.reclaim(NOW) == 0
    assert await edge.claim(NOW, lease) is None
    await edge.close()

    successor = SqliteOutbox(path, reclaim=True)
    assert await successor.reclaim(NOW) == 1
    row = await successor.claim(NOW, lease)
    assert row is not None
    assert row.id == "a"
    assert row.attempts == 2  # the dead claim counts: a killer row ends parked
    assert await successor.claim(NOW, lease) is None  # b waits, c is parked
    assert await successor.counts() == (2, 1)
    assert await successor.reclaim(NOW) == 1  # claimed again, by this process
    await successor.close()


async def test_an_outbox_written_by_an_older_version_gains_the_claim_column(tmp_path):
    """Its rows are kept and delivered; a lease it left lapses as before."""
    path = tmp_path / "r.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE sink_outbox (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
        "trace TEXT NOT NULL, sinks TEXT NOT NULL, attempts INTEGER NOT NULL "
        "DEFAULT 0, due TEXT NOT NULL, parked TEXT NOT NULL DEFAULT '');"
    )
    later = NOW + timedelta(minutes=5)
    old.executemany(
        "INSERT INTO sink_outbox (id, owner, trace, sinks, attempts, due) "
        "VALUES (?, 'o', '{}', '[\"hook\"]', ?, ?)",
        [("due", 0, NOW.isoformat()), ("leased", 1, later.isoformat())],
    )
    old.commit()
    old.close()
    outbox = SqliteOutbox(str(path), reclaim=True)
    # Which process claimed "leased" the old file cannot tell: it waits.
    assert await outbox.reclaim(NOW) == 0
    row = await outbox.claim(NOW, timedelta(minutes=5))
    assert row is not None
    assert row.id == "due"
    assert await outbox.claim(NOW, timedelta(minutes=5)) is None
    assert await outbox.reclaim(NOW) == 1  # claimed since: handed back
    assert await outbox.counts() == (2, 0)
    await outbox.close()


async def test_after_a_kill_the_next_worker_delivers_without_waiting_for_the_lease(
    tmp_path,
):
    """Killed mid-delivery; its successor sends the row long before the lease lapses.

    The clock moves a millisecond a reading: the 30 s lease would take tens of
    thousands of readings (over a minute here) to lapse.
    """
    path = str(tmp_path / "r.db")
    store = MemoryStore()
    clock = Ticking(NOW)
    sink = Recording()
    sink.die_before.add("p1")  # killed while the sink is being called
    d = make(sink, store, SqliteOutbox(path, reclaim=True), clock)
    await d.put([trace("p1")])
    await asyncio.wait(d._loops, return_when=asyncio.FIRST_COMPLETED)
    await die(d)
    await d._outbox.close()
    d2 = make(sink, store, SqliteOutbox(path, reclaim=True), clock)
    async with asyncio.timeout(20):
        await d2.drain()
    assert [p for p, _ in sink.sent] == ["p1"]
    records = await store.decisions(DecisionQuery(payload_id="p1.sinks"))
    assert records, "the outcome reaches the decision log"
    await d2.aclose()
    await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_parked_deliveries_are_listed_and_retried(backend, tmp_path):
    """Listed newest payload first with why and what is left; a retry is due now."""
    with run_redis(tmp_path) as url:
        outbox = (
            RedisOutbox(url)
            if backend == "redis"
            else SqliteOutbox(str(tmp_path / "r.db"))
        )
        lease = timedelta(minutes=5)
        await outbox.put(
            [(f"p{i}.0", "owner", f"trace {i}", ["slack", "hook"]) for i in range(3)],
            NOW,
        )
        for _ in range(3):
            assert await outbox.claim(NOW, lease) is not None
        await outbox.progress("p0.0", "slack", '{"status": "sent"}')
        await outbox.park("p0.0", "failed 5 times; last error: Boom")
        await outbox.park("p2.0", "claimed 5 times without finishing")
        assert await outbox.retry_parked("p1.0", NOW) is False  # claimed, not parked
        listed = await outbox.parked(10)
        assert [(p.id, p.reason, p.attempts) for p in listed] == [
            ("p2.0", "claimed 5 times without finishing", 1),
            ("p0.0", "failed 5 times; last error: Boom", 1),
        ]
        assert listed[1].done == {"slack": '{"status": "sent"}'}
        assert (listed[1].trace, listed[1].sinks) == ("trace 0", ("slack", "hook"))
        assert [p.id for p in await outbox.parked(1)] == ["p2.0"]
        assert await outbox.retry_parked("p0.0", NOW) is True
        assert await outbox.retry_parked("p0.0", NOW) is False  # no longer parked
        assert await outbox.retry_parked("nope", NOW) is False
        assert await outbox.counts() == (2, 1)
        row = await outbox.claim(NOW, lease)
        assert row is not None
        assert (row.id, row.attempts) == ("p0.0", 1)  # attempts from zero again
        assert row.done == {"slack": '{"status": "sent"}'}  # slack is not sent twice
        await outbox.close()


class Renewals:
    """The outbox, counting the claim renewals that go through it."""

    def __init__(self, inner: SqliteOutbox | RedisOutbox, wanted: int) -> None:
        self.inner = inner
        self.count = 0
        self.wanted = wanted
        self.enough = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def extend(
        self, row_id: str, until: datetime, *, claim: int | None = None
    ) -> bool:
        renewed = await self.inner.extend(row_id, until, claim=claim)
        self.count += 1
        if self.count >= self.wanted:
            self.enough.set()
        return renewed


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_slow_delivery_keeps_its_row_past_the_lease(backend, tmp_path):
    """Renewed while the sink is slow: the row is never free for another claim.

    The clock moves a second a reading, and ten seconds (a third of the lease)
    between renewals; forty renewals take it far past the 30 s lease the row
    was first claimed for.
    """
    with run_redis(tmp_path) as url:
        outbox = (
            RedisOutbox(url)
            if backend == "redis"
            else SqliteOutbox(str(tmp_path / "r.db"), reclaim=True)
        )
        spy = Renewals(outbox, wanted=40)
        store = MemoryStore()
        clock = Ticking(NOW, step=timedelta(seconds=1))
        sink = Recording()
        gate = hold(sink)
        d = make(sink, store, spy, clock, concurrency=1, renew_sleep=passing(clock))  # type: ignore[arg-type]
        await d.put([trace("p1")])
        async with asyncio.timeout(20):
            await spy.enough.wait()
        assert clock.now > NOW + timedelta(seconds=30)
        assert await outbox.claim(clock(), timedelta(seconds=30)) is None
        gate.set()
        await d.drain()
        assert [p for p, _ in sink.sent] == ["p1"]
        await d.aclose()
        await store.close()


class Failing:
    """The outbox, whose hand-back or renewal raises (``error``) ``wanted`` times."""

    def __init__(
        self, inner: SqliteOutbox, at: str, error: Exception, wanted: int
    ) -> None:
        self.inner = inner
        self.at = at
        self.error = error
        self.calls = 0
        self.wanted = wanted
        self.failed = asyncio.Event()  # set after ``wanted`` failed calls

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)
        if name != self.at or self.failed.is_set():
            return method

        async def failing(*_args: object, **_kw: object) -> object:
            self.calls += 1
            if self.calls >= self.wanted:
                self.failed.set()
            raise self.error

        return failing


@pytest.mark.parametrize("at", ["reclaim", "extend"])
@pytest.mark.parametrize(
    "error", [StoreUnavailableError("outbox down"), RuntimeError("outbox bug")]
)
async def test_a_failing_hand_back_or_renewal_stops_no_delivery(at, error, tmp_path):
    """Store down or a bug there, once: logged; the rows are still delivered, once.

    A renewal that fails is tried again a third of the lease later; only a
    claim that cannot be renewed until it is about to lapse cuts its delivery
    off (``test_sinks_outbox_slow``).
    """
    outbox = Failing(SqliteOutbox(str(tmp_path / "r.db"), reclaim=True), at, error, 1)
    store = MemoryStore()
    sink = Recording()
    gate = hold(sink)
    clock = Ticking(NOW)
    # One delivery at a time: two holders jumping the one clock in turn could
    # each find the other's jump had taken it past its cut-off point.
    d = make(sink, store, outbox, clock, concurrency=1, renew_sleep=passing(clock))  # type: ignore[arg-type]
    await d.put([trace("p1"), trace("p2", "fp2")])
    async with asyncio.timeout(20):
        await outbox.failed.wait()
        gate.set()
        await d.drain()
    assert sorted(p for p, _ in sink.sent) == ["p1", "p2"]
    assert await d.counts() == (0, 0)
    await d.aclose()
    await store.close()


# ------------------------------------------------------------------ backlog


async def test_more_than_a_thousand_pending_are_all_delivered(tmp_path):
    """Past max_pending, put waits for room: 1500 deliveries, none dropped."""
    store = MemoryStore()
    sink = Recording()
    outbox = SqliteOutbox(str(tmp_path / "r.db"))
    sink.outbox = outbox
    d = make(sink, store, outbox, Ticking(NOW), max_pending=1000)
    for i in range(1500):  # one payload after another, as a worker hands them
        await d.put([trace(f"p{i}", f"fp{i}")])
    await d.drain()
    assert sorted(p for p, _ in sink.sent) == sorted(f"p{i}" for i in range(1500))
    assert sink.peak <= 1000 + 1  # bounded by max_pending (+ the payload that fit)
    assert await d.counts() == (0, 0)
    await d.aclose()
    await store.close()


async def test_shutdown_with_deliveries_pending_keeps_them_for_the_next_start(
    tmp_path,
):
    """Rows not yet delivered when the receiver stops are delivered after a start."""
    with run_redis(tmp_path) as url:
        store = MemoryStore()
        clock = Ticking(NOW)
        stuck = Recording()
        gate = asyncio.Event()
        started = asyncio.Event()

        async def slow_send(t: AlertTrace) -> SinkOutcome:
            started.set()
            await gate.wait()
            return SinkOutcome("hook", "sent", "ok", 1)

        stuck.send = slow_send  # type: ignore[method-assign]
        d = make(stuck, store, RedisOutbox(url), clock, concurrency=1)
        await d.put([trace(f"p{i}", f"fp{i}") for i in range(20)])
        await started.wait()
        await d.aclose(grace=0)
        sink = Recording()
        d2 = make(sink, store, RedisOutbox(url), clock)
        await d2.drain()
        assert sorted(p for p, _ in sink.sent) == sorted(f"p{i}" for i in range(20))
        await d2.aclose()
        await store.close()


async def test_dry_run_rows_contact_nothing_and_are_recorded_as_withheld(tmp_path):
    store = MemoryStore()
    sink = Recording()
    d = make(sink, store, SqliteOutbox(str(tmp_path / "r.db")), Ticking(NOW))
    await d.put([trace("d1", mode="dry-run")])
    await d.drain()
    assert sink.sent == []
    (record,) = await store.decisions(DecisionQuery(payload_id="d1.sinks"))
    assert [o["status"] for o in record["sinks"]] == ["skipped"]
    await d.aclose()
    await store.close()


async def test_a_sink_that_keeps_failing_is_parked_and_counted(tmp_path):
    store = MemoryStore()
    sink = Recording()
    counts: list[tuple[int, int]] = []
    d = make(
        sink,
        store,
        SqliteOutbox(str(tmp_path / "r.db")),
        Ticking(NOW, step=timedelta(seconds=1)),
        max_attempts=3,
        on_counts=lambda pending, parked: counts.append((pending, parked)),
    )

    async def broken(t: AlertTrace) -> SinkOutcome:
        msg = "always"
        raise RuntimeError(msg)

    sink.send = broken  # type: ignore[method-assign]
    await d.put([trace("p1")])
    await d.drain()
    assert await d.counts() == (0, 1)
    assert counts[-1] == (0, 1)
    assert row_id(trace("p1"), 0) == "p1:0:fp1"
    await d.aclose()
    await store.close()


def _damaged(**change: object) -> str:
    """A kept trace with one field of one step, match or alert made wrong."""
    data = json.loads(encode_trace(trace("p1")))
    for path, value in change.items():
        *parents, name = path.split("__")
        node = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[name] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        _damaged(matches__0__severity="P9"),
        _damaged(matches__0__steps__0__request=[1, 2]),
        _damaged(matches__0__steps__0__decision="maybe"),
        _damaged(alert__source="carrier-pigeon"),
        _damaged(alert__labels={"alertname": 7}),
    ],
    ids=["text", "empty", "severity", "request", "decision", "source", "label"],
)
async def test_a_damaged_row_is_parked_and_never_sent(text, tmp_path):
    """A row whose trace does not decode is set aside; no sink is contacted."""
    with pytest.raises(ValueError, match="validation error"):
        decode_trace(text)
    store = MemoryStore()
    sink = Recording()
    outbox = SqliteOutbox(str(tmp_path / "r.db"))
    d = make(sink, store, outbox, Ticking(NOW))
    await outbox.put([("p1:0:fp1", "owner", text, ("hook",))], NOW)
    await d.drain()
    assert sink.sent == []
    assert await d.counts() == (0, 1)
    await d.aclose()
    await store.close()


class Swallowing:
    """The outbox, whose renewal hangs and turns its cancellation into an error.

    As redis-py's asyncio client does at times (a ``ConnectionError`` where the
    ``CancelledError`` was): the renewal loop must stop all the same.
    """

    def __init__(self, inner: SqliteOutbox) -> None:
        self.inner = inner
        self.renewing = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def extend(self, *_args: object, **_kw: object) -> bool:
        await never_answer_then_fail(self.renewing)


async def test_a_renewal_whose_client_swallows_the_cancel_still_stops(tmp_path):
    """The delivery ends while a renewal is in flight: the renewal stops too.

    Before, the renewal caught the client's error, logged it and renewed again:
    the delivery loop waited for it for ever, shutdown handed the row back
    after its grace, and the event loop's teardown hung (seen in CI). The
    delivery is not kept waiting for the renewal's answer either.
    """
    outbox = Swallowing(SqliteOutbox(str(tmp_path / "r.db")))
    store = MemoryStore()
    sink = Recording()
    gate = hold(sink)
    clock = Ticking(NOW)
    d = make(sink, store, outbox, clock, renew_sleep=passing(clock))  # type: ignore[arg-type]
    await d.put([trace("p1")])
    async with asyncio.timeout(20):
        await outbox.renewing.wait()
        gate.set()
        await d.drain()
        await d.aclose(grace=20)
    assert [p for p, _ in sink.sent] == ["p1"]
    renewals = [t for t in asyncio.all_tasks() if "renew" in t.get_name()]
    assert all(t.done() for t in renewals)
    await store.close()
