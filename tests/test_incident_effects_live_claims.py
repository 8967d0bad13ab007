"""The worker's start takes over only the effects a dead process had claimed.

On SQLite the worker (``reclaims``) makes claimed effects due at its first
tick, for a process that died holding them. Two processes are alive while it
does so: the worker itself, which may already be folding (and announcing) what
its journal handed back, and the edge process beside it, which announces what
people do through the API. Neither of their claims is a dead one's: taking
them over sends the same message twice with no crash at all. The clock
advances on every read; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

from incident_helpers import (
    HeldAnnouncer,
    RecordingAnnouncer,
    TickingClock,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


def _service(store: SqliteIncidentStore, clock: TickingClock, announcer: Any) -> Any:
    book = rulebook()
    return IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="diagnose",
    )


async def _open(service: Any, clock: TickingClock) -> Any:
    book = rulebook()
    return await service.observe(
        await decide(book, "alertmanager", example(SIEM), clock())
    )


async def test_the_worker_first_tick_leaves_its_own_announcement_alone(tmp_path):
    """A fold announcing when the first tick runs: the incident is announced once."""
    clock = TickingClock()
    held = HeldAnnouncer("opened")
    worker = _service(
        SqliteIncidentStore(str(tmp_path / "s.db"), reclaim=True), clock, held
    )
    try:
        folding = asyncio.create_task(_open(worker, clock))
        await held.started.wait()
        await worker.tick()  # the ticker starts beside the fold
        held.release.set()
        await folding
        assert held.kinds().count("opened") == 1
    finally:
        await worker.aclose()


async def test_a_restarted_worker_leaves_the_edge_announcement_alone(tmp_path):
    """The edge resolving (its sink slow) while a worker starts: announced once."""
    path = str(tmp_path / "s.db")
    clock = TickingClock()
    first = _service(SqliteIncidentStore(path, reclaim=True), clock, None)
    [incident] = await _open(first, clock)
    await first.aclose()
    held = HeldAnnouncer("status_update")
    edge = _service(SqliteIncidentStore(path, reclaim=False), clock, held)
    worker_sink = RecordingAnnouncer()
    worker = _service(SqliteIncidentStore(path, reclaim=True), clock, worker_sink)
    try:
        resolving = asyncio.create_task(edge.resolve(incident.id, by="sre", text=""))
        await held.started.wait()
        await worker.tick()  # the new worker's first tick
        held.release.set()
        await resolving
        sent = held.kinds() + worker_sink.kinds()
        assert sent.count("status_update") == 1
    finally:
        await edge.aclose()
        await worker.aclose()
