"""An incident PagerDuty opened, that lost track of a storm: PagerDuty resolves it.

The timeline says such an incident is closed by a person or by resolving its
linked PagerDuty incident. Only the resolution of a PagerDuty incident linked
to one we opened did: for an incident PagerDuty opened (its alert one of the
incident's own) the resolution was folded like any alert, and ``lost_track``
kept it from resolving: it stayed open for ever.
"""

from __future__ import annotations

from incident_helpers import TickingClock, example, rulebook, traces

from receiver.incidents.model import State, evolve
from receiver.incidents.records import to_record
from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore


async def test_pagerduty_resolves_the_incident_it_opened_that_lost_track() -> None:
    """PagerDuty opened it, a storm made it lose track; PD's resolution resolves it."""
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(":memory:")
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        [opened] = await service.observe(
            await traces(
                book,
                "pagerduty",
                example("pagerduty/sark-api-down.triggered.json"),
                clock(),
            )
        )
        assert opened.pagerduty_id
        lost = evolve(opened, lost_track=True, version=opened.version + 1)
        assert await store.update(to_record(lost)) is not None
        await service.observe(
            await traces(
                book,
                "pagerduty",
                example("pagerduty/sark-api-down.resolved.json"),
                clock(),
            )
        )
        final = await service.get(opened.id)
        assert final is not None
        assert final.state is State.RESOLVED, [e.text for e in final.timeline]
    finally:
        await service.aclose()
