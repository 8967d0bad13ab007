"""The same traces folded twice are folded once, however the lookup misses them.

``observe`` looks the batch's marks up once, before folding. Two ways the
same (payload id, fingerprint) still gets folded twice:

1. Both copies in one batch: a payload decided twice in one process (its
   lease lapsed while its traces waited in the queue, e.g. a store outage
   longer than the lease: the worker claims the entry again and decides it
   again) puts its traces twice; neither is marked at the lookup.
2. Two processes folding the same payload (the stopping worker's in-flight
   fold, or a lease that lapsed, against the next worker's lookup): both
   look up before either writes. The loser's write conflicts on the version,
   and the conflict fallback (``_flush`` -> ``_fold`` one by one) folds the
   trace again without looking at the marks the winner just wrote.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from incident_helpers import TickingClock, example, rulebook, traces

from receiver.incidents.service import IncidentService
from receiver.model import AlertTrace
from receiver.store.incidents_base import IncidentQuery
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


async def decided(payload_id: str, clock: TickingClock) -> list[AlertTrace]:
    found = await traces(rulebook(), "alertmanager", example(SIEM), clock())
    return [replace(t, payload_id=payload_id) for t in found]


async def ledger_times(service: IncidentService) -> set[int]:
    [incident] = (await service.page(IncidentQuery(limit=10)))[0]
    return {item.times for item in incident.ledger}


async def test_one_payload_put_twice_into_one_batch_folds_once() -> None:
    clock = TickingClock()
    book = rulebook()
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        first = await service.put(await decided("0190a0000001", clock))
        # The same entry decided again (its lease lapsed) before the fold ran.
        again = await service.put(await decided("0190a0000001", clock))
        await asyncio.wait_for(asyncio.gather(first, again), 10)
        assert await ledger_times(service) == {1}, "one payload counted twice"
    finally:
        await service.aclose()


class HeldStore(SqliteIncidentStore):
    """Updates wait at a gate (the first process's in-flight write)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def update(self, record, folded=(), *, done=()):
        self.entered.set()
        await self.gate.wait()
        return await super().update(record, folded, done=done)


async def test_a_fold_that_loses_the_race_to_the_same_payload_folds_nothing(
    tmp_path,
) -> None:
    clock = TickingClock()
    book = rulebook()
    path = str(tmp_path / "incidents.db")
    held = HeldStore(path)
    stopping = IncidentService(held, clock=clock, rulebook=lambda: book)
    following = IncidentService(
        SqliteIncidentStore(path), clock=clock, rulebook=lambda: book
    )
    try:
        await stopping.observe(await decided("0190a0000001", clock))
        assert await ledger_times(stopping) == {1}
        held.gate.clear()
        held.entered.clear()
        # Process A folds payload 2; its write is in flight.
        in_flight = asyncio.create_task(
            stopping.observe(await decided("0190a0000002", clock))
        )
        await held.entered.wait()
        # Process B decides payload 2 again and folds it (its lookup found
        # no mark: A's write is not in yet).
        await following.observe(await decided("0190a0000002", clock))
        assert await ledger_times(following) == {2}
        held.gate.set()
        await asyncio.wait_for(in_flight, 10)
        assert await ledger_times(following) == {2}, "payload 2 folded twice"
    finally:
        held.gate.set()
        await stopping.aclose()
        await following.aclose()
