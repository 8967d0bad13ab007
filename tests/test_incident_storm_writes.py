"""A storm that opens an incident is written in a few writes, not one per alert.

The first alert of a batch opens the incident at once (that reserves its
keys); the announcement's timeline line is a second write. The rest of the
batch is folded in memory into the incident as it stands after that line and
written once: folded into the version before it, the batch's write conflicts
and every alert is folded and written again one by one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from incident_helpers import RecordingAnnouncer, TickingClock, example, rulebook
from incident_helpers import traces as decide

from receiver.incidents.service import IncidentService
from receiver.store.incidents_base import ClaimedEffect, IncidentRecord, Mark
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"
ALERTS = 200


class CountingStore(SqliteIncidentStore):
    """Counts the updates it is asked for."""

    updates = 0

    async def update(
        self,
        record: IncidentRecord,
        folded: Sequence[Mark] = (),
        *,
        done: Sequence[ClaimedEffect] = (),
    ) -> IncidentRecord | None:
        self.updates += 1
        return await super().update(record, folded, done=done)


def _storm(alerts: int) -> dict[str, Any]:
    payload = example(SIEM)
    first = payload["alerts"][0]
    payload["alerts"] = []
    for n in range(alerts):
        alert = copy.deepcopy(first)
        alert["labels"] = {**alert["labels"], "instance": f"node-{n}"}
        alert["fingerprint"] = f"{n:016x}"
        payload["alerts"].append(alert)
    return payload


async def test_a_storm_opening_an_incident_is_not_written_per_alert():
    """200 alerts, one new incident: a handful of writes, every alert folded."""
    clock = TickingClock()
    store = CountingStore(":memory:")
    book = rulebook()
    service = IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        announcer=RecordingAnnouncer(),
        mode="execute",
    )
    try:
        [incident] = await service.observe(
            await decide(book, "alertmanager", _storm(ALERTS), clock())
        )
        got = await service.get(incident.id)
        assert got is not None
        assert len(got.alerts) + len(got.unlisted) == ALERTS or got.lost_track
        assert store.updates <= 3
    finally:
        await service.aclose()
