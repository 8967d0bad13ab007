"""A message whose sending outlives its claim is never sent beside a second claim.

A receiver claims each pending message for a lease (the journal's) and sends
it; once that claim lapses, another receiver's tick (or its own) claims the
message and sends it again. A sink slower than the lease (its timeouts and
retries, a Retry-After longer than the lease, several sinks in turn) used to
let both send it at once: a duplicate page caused by timing alone, no crash.
Now the claim is renewed while the message is on its way, and a send whose
claim cannot be renewed is cut off before it lapses (a failed attempt, tried
again). Both incident stores, the Redis one against a real redis-server; the
clock advances on every read, and the claim holder's waits end when the test
moves the clock (``Alarm``): nothing sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from incident_helpers import (
    Alarm,
    HeldAnnouncer,
    RecordingAnnouncer,
    TickingClock,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.errors import StoreUnavailableError
from receiver.incidents.effects import Announcer
from receiver.incidents.service import EFFECT_LEASE, IncidentService
from receiver.sinks.announce import SinkAnnouncer
from receiver.sinks.delivery import Deliverer
from receiver.store.incidents_base import ClaimedEffect, IncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


def _service(
    store: IncidentStore,
    clock: TickingClock,
    announcer: Announcer,
    alarm: Alarm | None = None,
) -> IncidentService:
    book = rulebook()
    return IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="execute",
        renew_sleep=alarm or Alarm(clock),
    )


async def _open(service: IncidentService, clock: TickingClock) -> Any:
    book = rulebook()
    return await service.observe(
        await decide(book, "alertmanager", example(SIEM), clock())
    )


async def _timeline(service: IncidentService, incident_id: str) -> list[str]:
    incident = await service.get(incident_id)
    assert incident is not None
    return [entry.text for entry in incident.timeline]


async def test_a_send_slower_than_the_lease_keeps_its_claim(reopen_clocked):
    """Held for 8 minutes (the lease is 5): nobody else claims it; sent once."""
    clock = TickingClock()
    alarm = Alarm(clock)
    slow = HeldAnnouncer()
    first = _service(reopen_clocked(clock), clock, slow, alarm)
    other = RecordingAnnouncer()
    second = _service(reopen_clocked(clock), clock, other)
    try:
        opening = asyncio.create_task(_open(first, clock))
        await slow.started.wait()
        await alarm.asleep()
        for _ in range(4):  # renewed each time the clock passes a third of it
            await alarm.advance(minutes=2)
        assert await second.redeliver() == 0  # the claim holds: nothing to claim
        slow.release.set()
        [incident] = await opening
        assert slow.kinds() == ["opened"]
        assert other.kinds() == []
        [line] = [t for t in await _timeline(first, incident.id) if "(opened)" in t]
        assert line.endswith(": recorded")  # sent once, on time: not "late"
        clock.jump(minutes=30)
        assert await second.redeliver() == 0  # done: nothing left pending
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_send_whose_claim_cannot_be_renewed_is_cut_off(reopen_clocked):
    """The store refuses renewals: the send stops before the claim lapses.

    It is a failed attempt on the timeline, tried again later by whoever claims
    it (here the other receiver): the message is sent once, late.
    """
    clock = TickingClock()
    alarm = Alarm(clock)
    store = reopen_clocked(clock)

    async def unavailable(_effect: ClaimedEffect, _until: object) -> bool:
        msg = "store down for renewals"
        raise StoreUnavailableError(msg)

    store.renew_effect = unavailable  # type: ignore[method-assign]
    slow = HeldAnnouncer()
    first = _service(store, clock, slow, alarm)
    other = RecordingAnnouncer()
    second = _service(reopen_clocked(clock), clock, other)
    try:
        opening = asyncio.create_task(_open(first, clock))
        await slow.started.wait()
        claimed_by = clock.now + EFFECT_LEASE  # the claim lapses before this
        await alarm.asleep()
        await alarm.advance(minutes=2)  # not renewed
        await alarm.advance(minutes=2)  # not renewed: next, the cut-off
        clock.jump(seconds=30)
        assert alarm.ring() == 1
        async with asyncio.timeout(10):  # fails, not hangs, if it is not cut off
            await slow.cancelled.wait()
        assert clock.now < claimed_by  # stopped while the claim still held
        [incident] = await opening
        assert slow.kinds() == []
        assert await second.redeliver() == 0  # handed back: due in 30 s
        clock.jump(seconds=30)
        assert await second.redeliver() == 1
        assert other.kinds() == ["opened"]
        lines = [t for t in await _timeline(second, incident.id) if "(opened)" in t]
        assert len(lines) == 2
        assert lines[0].endswith(
            "failed (attempt 1 of 5: cut off: its claim could not be renewed; "
            "it may have reached the sink); trying again in 30 s"
        )
        assert "recorded (late: attempt 2;" in lines[1]
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_send_whose_claim_was_taken_stops(reopen_clocked):
    """Frozen past its lease (no renewal ran), it stops as soon as it runs again.

    The other receiver claimed and sent the message meanwhile: that is the
    lease's limit for a process that does not run at all. The first one's
    send does not complete, and it writes nothing of it.
    """
    clock = TickingClock()
    alarm = Alarm(clock)
    slow = HeldAnnouncer()
    first = _service(reopen_clocked(clock), clock, slow, alarm)
    other = RecordingAnnouncer()
    second = _service(reopen_clocked(clock), clock, other)
    try:
        opening = asyncio.create_task(_open(first, clock))
        await slow.started.wait()
        await alarm.asleep()
        clock.jump(minutes=6)  # no renewal ran: the claim lapsed
        assert await second.redeliver() == 1
        assert alarm.ring() == 1
        async with asyncio.timeout(10):  # fails, not hangs, if it goes on
            await slow.cancelled.wait()
        [incident] = await opening
        assert slow.kinds() == []
        assert other.kinds() == ["opened"]
        lines = [t for t in await _timeline(second, incident.id) if "(opened)" in t]
        assert len(lines) == 1
        assert "late: attempt 2" in lines[0]
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_retry_after_longer_than_the_lease_sends_once(reopen_clocked):
    """The webhook asks to wait 10 minutes (the lease is 5): one message, one 200."""
    clock = TickingClock()
    alarm = Alarm(clock)
    answers = [httpx.Response(429, headers={"Retry-After": "600"})]
    seen: list[int] = []

    def webhook(_request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if answers else httpx.Response(200)
        seen.append(answer.status_code)
        return answer

    waiting, waited = asyncio.Event(), asyncio.Event()
    waits: list[float] = []

    async def wait_out(seconds: float) -> None:  # the test moves the clock
        waits.append(seconds)
        waiting.set()
        await waited.wait()

    announcer = SinkAnnouncer(
        Deliverer(
            httpx.AsyncClient(transport=httpx.MockTransport(webhook)),
            max_wait=900.0,
            sleep=wait_out,
            clock=clock,
        ),
        webhook_urls=["http://hooks.test/incidents"],
    )
    first = _service(reopen_clocked(clock), clock, announcer, alarm)
    other = RecordingAnnouncer()
    second = _service(reopen_clocked(clock), clock, other)
    try:
        opening = asyncio.create_task(_open(first, clock))
        await waiting.wait()
        await alarm.asleep()
        for _ in range(5):  # the ten minutes asked for, renewed on the way
            await alarm.advance(minutes=2)
        assert await second.redeliver() == 0
        waited.set()
        [incident] = await opening
        assert waits == [600.0]
        assert seen == [429, 200]
        assert other.kinds() == []
        [line] = [t for t in await _timeline(first, incident.id) if "(opened)" in t]
        assert line.endswith(": webhook: sent")
    finally:
        await first.aclose()
        await second.aclose()
        await announcer.aclose()
