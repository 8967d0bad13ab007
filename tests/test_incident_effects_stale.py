"""What was asked while an incident was open is not sent once it resolved.

A message or PagerDuty call that failed and waits for its retry (or was left
by a receiver that crashed) would otherwise reach people about an incident
already over: an escalation paging a manager after the all-clear. It is
finished instead, with a timeline line that says so; what the resolution
itself asks (its announcement) still goes. The clock advances on every read;
nothing sleeps.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from incident_helpers import (
    START,
    FailingAnnouncer,
    TickingClock,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.effects import About
from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


def _service(store: SqliteIncidentStore, clock: TickingClock, announcer: Any) -> Any:
    book = rulebook()
    return IncidentService(
        store, clock=clock, rulebook=lambda: book, announcer=announcer, mode="execute"
    )


async def test_a_message_retried_after_the_resolution_is_not_sent(tmp_path):
    """The opening message failed, resolved before its retry: the all-clear only."""
    clock = TickingClock()
    sink = FailingAnnouncer("opened")
    service = _service(SqliteIncidentStore(str(tmp_path / "s.db")), clock, sink)
    try:
        [incident] = await service.observe(
            await decide(rulebook(), "alertmanager", example(SIEM), clock())
        )
        assert sink.kinds() == ["opened"]  # failed: handed back for a retry
        sink.kind = "nothing fails from here on"
        await service.resolve(incident.id, by="jane", text="forwarder restarted")
        for _ in range(3):  # past every retry's backoff
            clock.jump(minutes=6)
            await service.tick()
        assert sink.kinds().count("opened") == 1  # never sent again
        assert "status_update" in sink.kinds()  # the resolution's own message
        got = await service.get(incident.id)
        [line] = [
            e.text
            for e in got.timeline
            if e.kind == "message_sent"
            and "(opened)" in e.text
            and "not sent" in e.text
        ]
        assert "while the incident was open" in line
        assert "resolved at" in line
        pending = await service.store.claim_effects(clock(), timedelta(1), 100)
        assert pending == []  # nothing left to send
    finally:
        await service.aclose()


async def test_a_message_retried_while_open_is_still_sent(tmp_path):
    """The same failure, the incident still open: the retry delivers it."""
    clock = TickingClock()
    sink = FailingAnnouncer("opened")
    service = _service(SqliteIncidentStore(str(tmp_path / "s.db")), clock, sink)
    try:
        await service.observe(
            await decide(rulebook(), "alertmanager", example(SIEM), clock())
        )
        sink.kind = "nothing fails from here on"
        clock.jump(minutes=6)
        await service.tick()
        assert sink.kinds().count("opened") == 2
    finally:
        await service.aclose()


async def test_the_resolution_announcement_itself_is_never_stale(tmp_path):
    """Asked by the resolving change (same instant): retried, it is still sent."""
    clock = TickingClock()
    sink = FailingAnnouncer("status_update")
    service = _service(SqliteIncidentStore(str(tmp_path / "s.db")), clock, sink)
    try:
        [incident] = await service.observe(
            await decide(rulebook(), "alertmanager", example(SIEM), clock())
        )
        await service.resolve(incident.id, by="jane", text="over")
        tried = sink.kinds().count("status_update")
        sink.kind = "nothing fails from here on"
        clock.jump(minutes=6)
        await service.tick()
        assert sink.kinds().count("status_update") == tried + 1
    finally:
        await service.aclose()


@pytest.mark.parametrize(
    ("asked", "stale"),
    [
        (START.isoformat(), True),  # asked before the resolution
        ((START + timedelta(minutes=1)).isoformat(), False),  # the same instant
        ((START + timedelta(hours=2)).isoformat(), False),  # after (post-mortem)
        ("", False),  # written before the time was kept: sent as before
        ("not a time", False),  # damaged: sent as before
        ("2026-11-26T10:00:00", False),  # no zone: cannot be compared
    ],
)
def test_stale_compares_when_asked_with_the_resolution(asked, stale):
    """Only what was asked strictly before the resolution, once resolved."""
    resolved_at = START + timedelta(minutes=1)
    about = About("INC-1", "", "P2", asked)
    incident: Any = SimpleNamespace(active=False, resolved_at=resolved_at)
    assert (about.stale(incident) == resolved_at) is stale
    incident.active = True  # reopened: nothing is stale
    assert about.stale(incident) is None
