"""A delivery that outlives its outbox claim is never made beside a second claim.

The dispatcher claims an outbox row for a lease and delivers it; once the
claim lapses, another worker (or replica) claims the row and delivers it
again. A sink slower than the lease (a 429 with a long Retry-After, per-read
timeouts on a trickling server, several attempts) whose renewals fail (the
store unavailable, a renewal refused because the row was taken) used to go
on delivering while the other worker delivered too: a duplicate message
caused by timing alone. Now the claim is renewed while the delivery runs
(``receiver.holding.ClaimHolder``), a delivery whose claim cannot be renewed
is cut off before it lapses (a failed attempt: handed back, retried, parked
after ``max_attempts``), and one whose claim was taken stops and writes
nothing. Both outbox stores, the Redis one against a real redis-server; the
clock advances on every read, and the holder's waits end when the test moves
the clock (``Alarm``): nothing sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import structlog
from incident_helpers import Alarm, TickingClock

from receiver.errors import StoreUnavailableError
from receiver.model import Alert, AlertTrace, MatchTrace, Severity, freeze
from receiver.retrying import RetryPolicy
from receiver.sinks import SinkDispatcher, SinkOutcome
from receiver.sinks.delivery import Deliverer
from receiver.sinks.webhook import WebhookSink
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery
from receiver.store.outbox import RedisOutbox, SqliteOutbox

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)
LEASE = timedelta(minutes=1)  # the dispatcher's: renewed every 20 s, cut off 10 s early
# Between attempts: at most 30 s (jittered), so a handed-back row is due
# again once the test moves the clock 31 s.
RETRY = RetryPolicy(multiplier=30.0, cap=30.0)

Outbox = SqliteOutbox | RedisOutbox


def trace(payload_id: str = "p1") -> AlertTrace:
    alert = Alert(
        source="alertmanager",
        fingerprint="fp1",
        status="firing",
        labels=freeze({"alertname": "SiemDown"}),
        starts_at=NOW,
    )
    match = MatchTrace(rule="siem", severity=Severity.P1, playbook="siem")
    return AlertTrace(
        alert=alert,
        matches=(match,),
        decided_at=NOW,
        payload_id=payload_id,
        mode="execute",
    )


@pytest.fixture(params=["sqlite", "redis"])
def reopen(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[[], Outbox]:
    """Opens the same outbox (both kinds) each time: one per worker."""
    if request.param == "sqlite":
        path = str(tmp_path / "outbox.db")
        return lambda: SqliteOutbox(path)
    url = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return lambda: RedisOutbox(url, prefix=prefix)


class Held:
    """A sink whose first send waits until released (a slow sink)."""

    name = "hook"
    dedupe = "decision"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        if not self.started.is_set():
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        self.sent.append(trace.payload_id)
        return SinkOutcome(self.name, "sent", "ok", 1)

    async def aclose(self) -> None:
        pass


class Unrenewable:
    """The outbox, except that renewing a claim fails: the store is unavailable."""

    def __init__(self, inner: Outbox) -> None:
        self.inner = inner
        self.renewals = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def extend(self, *_args: object, **_kw: object) -> bool:
        self.renewals += 1
        msg = "outbox down for renewals"
        raise StoreUnavailableError(msg)


def dispatcher(
    sink: Any, outbox: Any, store: MemoryStore, clock: TickingClock, alarm: Alarm
) -> SinkDispatcher:
    return SinkDispatcher(
        {sink.name: sink},
        store=store,
        outbox=outbox,
        choose=lambda _t: [sink.name],
        clock=clock,
        concurrency=1,
        lease=LEASE,
        retry=RETRY,
        # Idle loops wait for new rows, not for a poll that reads the clock.
        poll=3600.0,
        renew_sleep=alarm,
    )


async def sinks_records(store: MemoryStore, payload_id: str = "p1") -> list[Any]:
    return list(await store.decisions(DecisionQuery(payload_id=f"{payload_id}.sinks")))


async def test_a_delivery_slower_than_the_lease_keeps_its_row(reopen):
    """Held for 2 minutes (the lease is 1): no other claim gets it; sent once."""
    clock = TickingClock(NOW)
    alarm = Alarm(clock)
    store = MemoryStore()
    slow = Held()
    first = dispatcher(slow, reopen(), store, clock, alarm)
    other = reopen()
    try:
        await first.put([trace()])
        await slow.started.wait()
        await alarm.asleep()
        for _ in range(6):  # renewed each time the clock passes a third of it
            await alarm.advance(seconds=20)
        assert await other.claim(clock(), LEASE) is None  # the claim holds
        slow.release.set()
        await first.drain()
        assert slow.sent == ["p1"]
        assert len(await sinks_records(store)) == 1
        clock.jump(minutes=30)
        assert await other.claim(clock(), LEASE) is None  # done: nothing left
        assert await other.counts() == (0, 0)
    finally:
        await first.aclose()
        await other.close()
        await store.close()


async def test_a_delivery_whose_claim_cannot_be_renewed_is_cut_off(reopen):
    """Renewals fail: cut off before the claim lapses; delivered once, by another.

    The cut-off is a failed attempt: logged, handed back with the backoff,
    claimed and delivered by the other worker once that has passed.
    """
    clock = TickingClock(NOW)
    alarm = Alarm(clock)
    store = MemoryStore()
    slow = Held()
    outbox = Unrenewable(reopen())
    first = dispatcher(slow, outbox, store, clock, alarm)
    other = Held()
    other.started.set()  # the other worker's sink answers at once
    second = dispatcher(other, reopen(), store, clock, Alarm(clock))
    try:
        with structlog.testing.capture_logs() as logs:
            await first.put([trace()])
            await slow.started.wait()
            lapses = clock.now + LEASE  # the claim lapses before this
            await alarm.asleep()
            await alarm.advance(seconds=20)  # not renewed
            await alarm.advance(seconds=20)  # not renewed: next, the cut-off
            clock.jump(seconds=10)
            assert alarm.ring() == 1
            async with asyncio.timeout(10):  # fails, not hangs, if not cut off
                await slow.cancelled.wait()
            assert clock.now < lapses  # stopped while the claim still held
            await first.aclose()  # this worker stops; the row waits in the outbox
        assert outbox.renewals >= 2
        assert slow.sent == []
        events = [e["event"] for e in logs]
        assert "sink_delivery_cut_off" in events
        [retry] = [e for e in logs if e["event"] == "sink_delivery_retry"]
        assert retry["attempts"] == 1
        assert "ClaimLapsingError: cut off" in retry["error"]
        clock.jump(seconds=31)  # past the backoff
        await second.drain()
        assert other.sent == ["p1"]
        assert len(await sinks_records(store)) == 1
        assert await second.counts() == (0, 0)
    finally:
        await first.aclose()
        await second.aclose()
        await store.close()


async def test_a_delivery_cut_off_on_its_last_attempt_is_parked(reopen):
    """The cut-off is a failed attempt like any other: on the last one, parked."""
    clock = TickingClock(NOW)
    alarm = Alarm(clock)
    store = MemoryStore()
    slow = Held()
    first = SinkDispatcher(
        {slow.name: slow},
        store=store,
        outbox=Unrenewable(reopen()),  # type: ignore[arg-type]
        choose=lambda _t: [slow.name],
        clock=clock,
        concurrency=1,
        lease=LEASE,
        retry=RETRY,
        poll=3600.0,
        renew_sleep=alarm,
        max_attempts=1,
    )
    try:
        await first.put([trace()])
        await slow.started.wait()
        await alarm.asleep()
        await alarm.advance(seconds=20)
        await alarm.advance(seconds=20)
        clock.jump(seconds=10)
        assert alarm.ring() == 1
        async with asyncio.timeout(10):
            await slow.cancelled.wait()
        await first.drain()  # nothing pending: parked
        assert await first.counts() == (0, 1)
        looking = reopen()
        [parked] = await looking.parked(10)
        await looking.close()
        assert parked.reason.startswith("failed 1 times; last error: ")
        assert "cut off" in parked.reason
    finally:
        await first.aclose()
        await store.close()


async def test_a_delivery_whose_claim_was_taken_stops_and_writes_nothing(reopen):
    """Frozen past its lease (no renewal ran), it stops once it runs again.

    The other worker claimed and delivered the row meanwhile: the lease's limit
    for a process that does not run at all. The first one's send does not
    complete, and it neither hands the row back, parks it nor records it.
    """
    clock = TickingClock(NOW)
    alarm = Alarm(clock)
    store = MemoryStore()
    slow = Held()
    first = dispatcher(slow, reopen(), store, clock, alarm)
    other = Held()
    other.started.set()
    second = dispatcher(other, reopen(), store, clock, Alarm(clock))
    try:
        with structlog.testing.capture_logs() as logs:
            await first.put([trace()])
            await slow.started.wait()
            await alarm.asleep()
            clock.jump(seconds=61)  # no renewal ran: the claim lapsed
            await second.drain()  # claimed, delivered and finished by the other
            assert other.sent == ["p1"]
            assert alarm.ring() == 1
            async with asyncio.timeout(10):  # fails, not hangs, if it goes on
                await slow.cancelled.wait()
            await first.aclose()
        assert slow.sent == []
        events = [e["event"] for e in logs]
        assert "sink_delivery_claim_lost" in events
        assert "sink_delivery_retry" not in events
        assert "sink_delivery_parked" not in events
        assert len(await sinks_records(store)) == 1
        assert await second.counts() == (0, 0)
    finally:
        await first.aclose()
        await second.aclose()
        await store.close()


@pytest.mark.parametrize("renewals", ["kept", "failing"])
async def test_a_retry_after_longer_than_the_lease_sends_once(reopen, renewals):
    """The webhook asks to wait 10 minutes (the lease is 1): one 429, one 200.

    Renewed, the first worker waits the ten minutes out and sends. Not
    renewed, it is cut off while it waits, and the other worker sends.
    """
    clock = TickingClock(NOW)
    alarm = Alarm(clock)
    store = MemoryStore()
    answers = [httpx.Response(429, headers={"Retry-After": "600"})]
    seen: list[int] = []

    def webhook(_request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if answers else httpx.Response(200)
        seen.append(answer.status_code)
        return answer

    waiting, waited, cut = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def wait_out(_seconds: float) -> None:  # the test moves the clock
        waiting.set()
        try:
            await waited.wait()
        except asyncio.CancelledError:
            cut.set()
            raise

    def sink(sleep: Any) -> WebhookSink:
        return WebhookSink(
            Deliverer(
                httpx.AsyncClient(transport=httpx.MockTransport(webhook)),
                max_wait=900.0,
                sleep=sleep,
                clock=clock,
            ),
            urls=["http://hooks.test/decisions"],
        )

    outbox = reopen() if renewals == "kept" else Unrenewable(reopen())
    first = dispatcher(sink(wait_out), outbox, store, clock, alarm)
    second = dispatcher(sink(asyncio.sleep), reopen(), store, clock, Alarm(clock))
    other = reopen()
    try:
        await first.put([trace()])
        await waiting.wait()
        await alarm.asleep()
        if renewals == "kept":
            for _ in range(30):  # the ten minutes asked for, renewed on the way
                await alarm.advance(seconds=20)
            assert await other.claim(clock(), LEASE) is None
            waited.set()
            await first.drain()
        else:
            await alarm.advance(seconds=20)
            await alarm.advance(seconds=20)
            clock.jump(seconds=10)
            assert alarm.ring() == 1
            async with asyncio.timeout(10):
                await cut.wait()
            await first.aclose()
            clock.jump(seconds=31)
            await second.drain()
        assert seen == [429, 200]
        [record] = await sinks_records(store)
        assert [o["status"] for o in record["sinks"]] == ["sent"]
    finally:
        await first.aclose()
        await second.aclose()
        await other.close()
        await store.close()
