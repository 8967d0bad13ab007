"""A PagerDuty-opened incident resolves when PagerDuty resolves it.

The incident PagerDuty's ``incident.triggered`` opened holds its alert
(``pd-<id>``); ``incident.resolved`` for the same PagerDuty incident (with its
``incident_key``, as PagerDuty sends it) resolves that alert and so the incident.
An incident our own alerts opened only links PagerDuty's (its alerts are ours).
"""

from __future__ import annotations

from incident_helpers import TickingClock, example, rulebook, traces

from receiver.incidents.model import State
from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore

TRIGGERED = "pagerduty/sark-api-down.triggered.json"
RESOLVED = "pagerduty/sark-api-down.resolved.json"
SYNTHETIC = "events-v2/synthetic-sark-api-down.trigger.json"


async def test_pagerduty_resolution_resolves_the_incident_it_opened():
    clock = TickingClock()
    book = rulebook()
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        [opened] = await service.observe(
            await traces(book, "pagerduty", example(TRIGGERED), clock())
        )
        assert opened.state is State.TRIGGERED
        assert "pdkey:sark-api-down" in opened.keys
        await service.observe(
            await traces(book, "pagerduty", example(RESOLVED), clock())
        )
        final = await service.get(opened.id)
        assert final.state is State.RESOLVED
        assert [a.status for a in final.alerts] == ["resolved"]
        # Fired again afterwards: a new incident, as for any group.
        [again] = await service.observe(
            await traces(book, "pagerduty", example(TRIGGERED), clock())
        )
        assert again.id != opened.id
        assert again.state is State.TRIGGERED
    finally:
        await service.aclose()


async def test_pagerduty_resolution_only_links_an_events_v2_incident():
    """PagerDuty's incident about our Events v2 group: linked, not resolved."""
    clock = TickingClock()
    book = rulebook()
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        trigger = example(SYNTHETIC)
        [ours] = await service.observe(
            await traces(book, "events_v2", trigger, clock())
        )
        assert "pdkey:sark-api-down" in ours.keys
        await service.observe(
            await traces(book, "pagerduty", example(TRIGGERED), clock())
        )
        await service.observe(
            await traces(book, "pagerduty", example(RESOLVED), clock())
        )
        linked = await service.get(ours.id)
        assert linked.pagerduty_id == "Q3VHZ4K2N8WX1R"
        assert linked.state is State.TRIGGERED
        assert {a.source for a in linked.alerts} == {"events_v2"}
    finally:
        await service.aclose()
