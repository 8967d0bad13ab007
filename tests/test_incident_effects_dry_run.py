"""What a dry-run receiver asks is never sent, not even by a later one that executes.

In dry-run nothing is contacted: a message is only a timeline line saying what
would have been sent. A receiver switched to ``mode: execute`` and restarted on
the same store must not find, and send, messages the dry-run one asked for and
was interrupted before recording. The clock advances on every read.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from incident_helpers import (
    Crash,
    RecordingAnnouncer,
    TickingClock,
    dies_before_recording,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.service import IncidentService
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


def _service(store: SqliteIncidentStore, clock: TickingClock, mode: str) -> Any:
    book = rulebook()
    announcer = RecordingAnnouncer()
    service = IncidentService(
        store, clock=clock, rulebook=lambda: book, announcer=announcer, mode=mode
    )
    return service, announcer


async def test_a_dry_run_message_is_not_sent_after_a_restart_in_execute(tmp_path):
    """Dry-run interrupted after the write; restarted executing: nobody contacted."""
    path = str(tmp_path / "s.db")
    clock = TickingClock()
    dry, dry_sink = _service(
        dies_before_recording(SqliteIncidentStore(path)), clock, "dry-run"
    )
    book = rulebook()
    # Dies on a write recording effects as done, had it any pending.
    with contextlib.suppress(Crash):
        await dry.observe(await decide(book, "alertmanager", example(SIEM), clock()))
    assert dry_sink.kinds() == []
    live_store = SqliteIncidentStore(path, reclaim=True)
    live, live_sink = _service(live_store, clock, "execute")
    try:
        clock.jump(minutes=6)  # past any claim the dead one held
        await live.tick()
        # Its own tick may escalate the incident; the dry-run's messages are
        # not its to send.
        assert "opened" not in live_sink.kinds()
    finally:
        await live.aclose()
        await dry.store.close()


async def test_dry_run_still_says_what_would_have_been_sent(tmp_path):
    """The dry-run line is on the timeline at once, and nothing is left pending."""
    clock = TickingClock()
    store = SqliteIncidentStore(str(tmp_path / "s.db"))
    service, sink = _service(store, clock, "dry-run")
    book = rulebook()
    try:
        [incident] = await service.observe(
            await decide(book, "alertmanager", example(SIEM), clock())
        )
        got = await service.get(incident.id)
        lines = [e.text for e in got.timeline if e.kind == "message_sent"]
        assert any("(opened)" in t and "dry-run" in t for t in lines)
        assert sink.kinds() == []
        clock.jump(hours=1)
        assert await store.claim_effects(clock(), timedelta(minutes=5), 100) == []
    finally:
        await service.aclose()
