"""Incident effects survive a crash between the incident's write and their delivery.

An incident change and the messages it asks for (announcements, PagerDuty
status and escalation calls) are written together; a process killed (here: an
exception no handler catches, or its task cancelled) after the write and before
the messages went out leaves them pending, and the next receiver's tick sends
them, once, with a timeline line that says it was late. A message that keeps
failing is given up after a bounded number of attempts, and the timeline says
it was not delivered. Both incident stores; the clock advances on every read.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta
from typing import Any

import pytest
from incident_helpers import (
    Crash,
    CrashingAnnouncer,
    FailingAnnouncer,
    HeldAnnouncer,
    RecordingAnnouncer,
    TickingClock,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.service import IncidentService
from receiver.store.incidents_base import IncidentQuery, IncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"
# Past any claim a dead receiver held (the stores' default lease).
LAPSED = {"minutes": 6}


def _service(store: IncidentStore, clock: TickingClock, announcer: Any) -> Any:
    book = rulebook()
    return IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="diagnose",
    )


def _sent(incident: Any) -> list[str]:
    return [e.text for e in incident.timeline if e.kind == "message_sent"]


async def _open(service: Any, clock: TickingClock) -> Any:
    book = rulebook()
    return await service.observe(
        await decide(book, "alertmanager", example(SIEM), clock())
    )


async def test_a_crash_after_the_write_still_announces_the_incident(reopen_clocked):
    """Killed between the write and the announcement: the next receiver sends it.

    Before, the incident said it opened and nobody was ever told.
    """
    clock = TickingClock()
    dying = _service(reopen_clocked(clock), clock, CrashingAnnouncer())
    with pytest.raises(Crash):
        await _open(dying, clock)
    # The dead process closes nothing; its successor opens the store again.
    announcer = RecordingAnnouncer()
    service = _service(reopen_clocked(clock), clock, announcer)
    try:
        [listed], _ = await service.page(IncidentQuery())
        assert _sent(listed) == []  # written, not announced
        clock.jump(**LAPSED)
        await service.tick()
        assert announcer.kinds().count("opened") == 1
        got = await service.get(listed.id)
        [line] = [t for t in _sent(got) if "(opened)" in t]
        assert line.startswith("Message (opened) ")
        assert "recorded" in line
        assert "late" in line  # says it was carried out after an interruption
        # Done: later ticks do not send it again.
        clock.jump(**LAPSED)
        await service.tick()
        assert announcer.kinds().count("opened") == 1
    finally:
        await service.aclose()
        await dying.store.close()


async def test_a_cancelled_fold_leaves_its_announcement_pending(reopen_clocked):
    """A task cancelled while the announcement is on its way: sent again later."""
    clock = TickingClock()
    blocking = HeldAnnouncer()
    dying = _service(reopen_clocked(clock), clock, blocking)
    task = asyncio.create_task(_open(dying, clock))
    await blocking.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    announcer = RecordingAnnouncer()
    service = _service(reopen_clocked(clock), clock, announcer)
    try:
        clock.jump(**LAPSED)
        await service.tick()
        assert announcer.kinds().count("opened") == 1
    finally:
        await service.aclose()
        await dying.store.close()


async def test_a_replica_does_not_send_what_another_is_sending(reopen_clocked):
    """While one replica's claim holds, another's tick leaves the message alone."""
    clock = TickingClock()
    blocking = HeldAnnouncer()
    first = _service(reopen_clocked(clock), clock, blocking)
    other = RecordingAnnouncer()
    second = _service(reopen_clocked(clock), clock, other)
    try:
        task = asyncio.create_task(_open(first, clock))
        await blocking.started.wait()
        await second.tick()  # within the first one's lease
        assert "opened" not in other.kinds()
        blocking.release.set()
        [incident] = await task
        clock.jump(**LAPSED)
        await second.tick()  # done by the first: nothing left to send
        assert "opened" not in other.kinds()
        got = await second.get(incident.id)
        opened = [t for t in _sent(got) if "(opened)" in t]
        assert len(opened) == 1
        assert "late" not in opened[0]
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_message_that_keeps_failing_is_given_up_with_a_line(reopen_clocked):
    """Bounded retries, then "not delivered" on the timeline; never a loop."""
    clock = TickingClock()
    announcer = FailingAnnouncer()
    service = _service(reopen_clocked(clock), clock, announcer)
    try:
        [incident] = await _open(service, clock)
        for _ in range(12):
            clock.jump(**LAPSED)
            await service.tick()
        tries = announcer.kinds().count("opened")
        assert 1 < tries <= 5
        got = await service.get(incident.id)
        *retries, line = [t for t in _sent(got) if "(opened)" in t]
        assert "not delivered" in line
        assert f"{tries} attempts" in line
        # Each failed attempt said so when it failed, and when it would retry.
        assert len(retries) == tries - 1
        assert retries[0].endswith(
            "failed (attempt 1 of 5: RuntimeError; see the receiver's log); "
            "trying again in 30 s"
        )
        assert all("trying again in" in t for t in retries)
        for _ in range(3):
            clock.jump(hours=1)
            await service.tick()
        assert announcer.kinds().count("opened") == tries
    finally:
        await service.aclose()


async def test_a_message_that_kills_every_receiver_is_given_up(reopen_clocked):
    """A message whose sending kills the process each time is not tried forever."""
    clock = TickingClock()
    stores = []
    tries = 0
    for _ in range(10):
        store = reopen_clocked(clock)
        stores.append(store)
        announcer = CrashingAnnouncer()
        service = _service(store, clock, announcer)
        try:
            if tries == 0:
                await _open(service, clock)
            else:
                clock.jump(**LAPSED)
                await service.tick()
        except Crash:
            pass
        tries += announcer.kinds().count("opened")
    try:
        assert 1 < tries <= 5
        service = _service(reopen_clocked(clock), clock, RecordingAnnouncer())
        [listed], _ = await service.page(IncidentQuery())
        [line] = [t for t in _sent(listed) if "(opened)" in t]
        assert "given up after" in line  # each attempt may have reached the sink
    finally:
        await service.aclose()
        for store in stores:
            await store.close()


async def test_a_spent_effect_of_an_unwritable_incident_is_not_claimed_forever(
    tmp_path,
):
    """Its incident's record cannot be read (a bug): bounded tries, then dropped.

    Before, once given up its line could not be written, so it stayed pending
    and was claimed again every lease, forever.
    """
    clock = TickingClock()
    path = str(tmp_path / "incidents.db")
    store = SqliteIncidentStore(path, clock=clock)
    with contextlib.suppress(Crash):
        await _open(_service(store, clock, CrashingAnnouncer()), clock)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute('UPDATE incidents SET body = \'{"not": "an incident"}\'')
    store = SqliteIncidentStore(path, clock=clock)
    sink = RecordingAnnouncer()
    service = _service(store, clock, sink)
    try:
        for _ in range(8):
            clock.jump(**LAPSED)
            await service.tick()
        tries = sink.kinds().count("opened")
        assert tries <= 5
        clock.jump(**LAPSED)
        assert await store.claim_effects(clock(), timedelta(minutes=5), 10) == []
    finally:
        await service.aclose()
