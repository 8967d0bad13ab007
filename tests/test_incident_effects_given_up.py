"""A message given up after interrupted attempts is not said to be undelivered.

An attempt is interrupted when its receiver dies after the sink answered and
before the write that records it: the message was sent, and nobody knows. The
line that gives it up must not tell the SRE it was never delivered. The clock
advances on every read; nothing sleeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from incident_helpers import (
    Crash,
    FailingAnnouncer,
    RecordingAnnouncer,
    TickingClock,
    dies_before_recording,
    example,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.service import IncidentService
from receiver.store.incidents_base import (
    ClaimedEffect,
    IncidentQuery,
    IncidentRecord,
    Mark,
)
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


def _service(store: SqliteIncidentStore, clock: TickingClock, announcer: Any) -> Any:
    book = rulebook()
    return IncidentService(
        store, clock=clock, rulebook=lambda: book, announcer=announcer, mode="execute"
    )


async def test_a_message_sent_by_interrupted_attempts_is_not_called_undelivered(
    tmp_path,
):
    """Sent five times, each receiver killed before recording: no "not delivered"."""
    path = str(tmp_path / "s.db")
    clock = TickingClock()
    sink = RecordingAnnouncer()
    book = rulebook()
    dead: list[SqliteIncidentStore] = []
    for n in range(5):
        dead.append(dies_before_recording(SqliteIncidentStore(path, reclaim=True)))
        dying = _service(dead[-1], clock, sink)
        with contextlib.suppress(Crash):
            if n == 0:
                await dying.observe(
                    await decide(book, "alertmanager", example(SIEM), clock())
                )
            else:
                await dying.redeliver()
        clock.jump(minutes=6)
    assert sink.kinds().count("opened") == 5
    service = _service(SqliteIncidentStore(path, reclaim=True), clock, sink)
    try:
        await service.redeliver()
        assert sink.kinds().count("opened") == 5  # given up: not sent again
        [listed], _ = await service.page(IncidentQuery())
        [line] = [
            e.text
            for e in listed.timeline
            if e.kind == "message_sent" and "(opened)" in e.text
        ]
        assert "not delivered" not in line
        assert "given up after 5 attempts" in line
        assert "may have been sent" in line
    finally:
        await service.aclose()
        for store in dead:
            await store.close()


class Contended(SqliteIncidentStore):
    """While ``contended``, the write recording effects always loses a race."""

    contended = False

    async def update(
        self,
        record: IncidentRecord,
        folded: Sequence[Mark] = (),
        *,
        done: Sequence[ClaimedEffect] = (),
    ) -> IncidentRecord | None:
        if done and self.contended:
            return None  # as if another writer changed the incident first
        return await super().update(record, folded, done=done)


async def test_a_given_up_line_lost_to_conflicts_is_written_later(tmp_path):
    """Never delivered, its line refused by version conflicts: the SRE still learns."""
    clock = TickingClock()
    store = Contended(str(tmp_path / "s.db"))
    sink = FailingAnnouncer()
    service = _service(store, clock, sink)
    book = rulebook()
    try:
        store.contended = True
        [incident] = await service.observe(
            await decide(book, "alertmanager", example(SIEM), clock())
        )
        for _ in range(6):
            clock.jump(minutes=6)
            await service.tick()
        tries = sink.kinds().count("opened")
        assert tries == 5
        store.contended = False
        for _ in range(2):
            clock.jump(minutes=6)
            await service.tick()
        assert sink.kinds().count("opened") == tries  # not sent again
        got = await service.get(incident.id)
        lines = [
            e.text
            for e in got.timeline
            if e.kind == "message_sent"
            and "(opened)" in e.text
            and "trying again" not in e.text  # each failed attempt's own line
        ]
        assert len(lines) == 1
        assert "given up" in lines[0] or "not delivered" in lines[0]
    finally:
        await service.aclose()
