"""A receiver whose claim lapsed mid-batch leaves the rest to whoever claimed them.

A tick claims up to a hundred pending effects for one lease and carries them
out one after another. With slow sinks (an outage: every call waits for its
timeout) the lease lapses before the batch ends; another replica's tick then
claims the rest and sends them. The first receiver must not send them as
well: no crash, and the message would go out twice. The one it is sending
keeps its claim (renewed while it is on its way). Both incident stores (the
Redis one against a real redis-server); the clock advances on every read, and
the claim holder's waits end when the test moves it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from incident_helpers import (
    Alarm,
    Crash,
    HeldAnnouncer,
    RecordingAnnouncer,
    TickingClock,
    dies_before_recording,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.service import IncidentService
from receiver.store.incidents_base import (
    IncidentStore,
)

PAYLOADS = (
    "alertmanager/sark-siem-forwarding-down.firing.json",
    "alertmanager/sark-database-down.firing.json",
)


def _service(
    store: IncidentStore,
    clock: TickingClock,
    announcer: Any,
    alarm: Alarm | None = None,
) -> Any:
    book = rulebook()
    return IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="execute",
        renew_sleep=alarm or Alarm(clock),
    )


async def test_a_lapsed_claim_does_not_send_the_rest_of_its_batch(reopen_clocked):
    """The first sink call outlives the lease: each message goes out once."""
    clock = TickingClock()
    book = rulebook()
    stores = []
    for name in PAYLOADS:  # two receivers died before recording their messages
        stores.append(dies_before_recording(reopen_clocked(clock)))
        dying = _service(stores[-1], clock, RecordingAnnouncer())
        with contextlib.suppress(Crash):
            await dying.observe(
                await decide(book, "alertmanager", example(name), clock())
            )
    clock.jump(minutes=6)
    slow = HeldAnnouncer()
    alarm = Alarm(clock)
    first = _service(reopen_clocked(clock), clock, slow, alarm)
    other = RecordingAnnouncer()
    second = _service(reopen_clocked(clock), clock, other)
    try:
        ticking = asyncio.create_task(first.tick())
        await slow.started.wait()
        await alarm.asleep()
        for _ in range(3):  # the claims of the batch lapse meanwhile...
            await alarm.advance(minutes=2)  # ...but the one on its way's
        await second.tick()
        slow.release.set()
        await ticking
        titles = [
            m.incident_id for m in slow.messages + other.messages if m.kind == "opened"
        ]
        # The message whose call outlived the lease went out once (its claim
        # renewed while it was on its way); the other, claimed by the second
        # receiver, once too.
        assert len(titles) == 2
        assert sorted(titles.count(t) for t in set(titles)) == [1, 1]
    finally:
        await first.aclose()
        await second.aclose()
        for store in stores:
            await store.close()
