"""One incident the ticker cannot advance does not hold back the others.

The ticker visits every watched incident in turn; an incident whose change
keeps being refused (versions conflicting in a loop: another replica writes it
every time) or that raises must be logged and skipped, so the breaches of the
incidents after it are still noticed within the tick.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from conftest import never_answer_then_fail
from incident_helpers import TickingClock, example, rulebook, traces

from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"
API_DOWN = "alertmanager/sark-api-down.firing.json"


class ContendedStore(SqliteIncidentStore):
    """Every write of ``contended`` loses to someone else's."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.contended = ""

    async def update(self, record, folded=(), *, done=()):
        if record.id == self.contended:
            return None
        return await super().update(record, folded, done=done)


async def test_a_contended_incident_does_not_stop_the_tick():
    clock = TickingClock()
    book = rulebook()
    store = ContendedStore()
    breaches: list[tuple[str, str]] = []
    service = IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        on_breach=lambda sev, name: breaches.append((sev, name)),
    )
    try:
        [first] = await service.observe(
            await traces(book, "alertmanager", example(SIEM), clock())
        )
        [second] = await service.observe(
            await traces(book, "alertmanager", example(API_DOWN), clock())
        )
        assert first.id < second.id  # visited first
        store.contended = first.id
        clock.jump(hours=3)
        await service.tick()
        later = await service.get(second.id)
        assert any(k.startswith("acknowledge@") for k in later.breaches)
        assert breaches
        # Once the contention ends, the first is advanced on the next tick.
        store.contended = ""
        clock.jump(seconds=15)
        await service.tick()
        assert (await service.get(first.id)).breaches
    finally:
        await service.aclose()


async def test_an_incident_that_raises_does_not_stop_the_tick():
    clock = TickingClock()
    book = rulebook()
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        [first] = await service.observe(
            await traces(book, "alertmanager", example(SIEM), clock())
        )
        [second] = await service.observe(
            await traces(book, "alertmanager", example(API_DOWN), clock())
        )
        original = service._rules.reevaluate

        def reevaluate(ref, now):
            if ref.rule == first.alerts[0].rule:
                msg = "a rule bug"
                raise RuntimeError(msg)
            return original(ref, now)

        service._rules.reevaluate = reevaluate  # type: ignore[method-assign]
        clock.jump(hours=3)
        await service.tick()
        assert (await service.get(second.id)).breaches
        assert clock.now - timedelta(hours=3) > first.opened_at
    finally:
        await service.aclose()


async def test_the_ticker_stops_when_a_tick_swallows_its_cancel():
    """A store client that turns the cancel into an error of its own.

    The ticker logged the error, slept and ticked again: cancelled on shutdown,
    it never ended, and the shutdown that waited for it hung.
    """
    store = SqliteIncidentStore(":memory:")
    book = rulebook()
    service = IncidentService(store, clock=TickingClock(), rulebook=lambda: book)
    ticking = asyncio.Event()

    async def hanging_tick() -> int:
        await never_answer_then_fail(ticking)

    service.tick = hanging_tick  # type: ignore[method-assign]
    ticker = asyncio.create_task(service.run(0.001))
    await ticking.wait()
    ticker.cancel()
    done, _ = await asyncio.wait([ticker], timeout=10)
    assert done == {ticker}
    assert ticker.cancelled()
    await service.aclose()
