"""What was asked while an incident was open is not sent once it resolved.

A message or PagerDuty call that failed and waits for its retry (or was left
by a receiver that crashed) would otherwise reach people about an incident
already over: an escalation paging a manager after the all-clear. It is
finished instead, with a timeline line that says so; what the resolution
itself asks (its announcement) still goes. The clock advances on every read;
nothing sleeps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from incident_helpers import (
    START,
    Crash,
    CrashingAnnouncer,
    FailingAnnouncer,
    RecordingAnnouncer,
    TickingClock,
    example,
    resolved,
    rulebook,
)
from incident_helpers import traces as decide

from receiver.incidents.effects import About, Announce, decode_effect, encode_effect
from receiver.incidents.service import IncidentService
from receiver.model import Severity
from receiver.store.incidents_base import IncidentQuery
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
            and "not tried again" in e.text
        ]
        assert "after 1 attempt, none confirmed" in line
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


def test_the_time_asked_is_beside_what_the_version_before_reads():
    """The version before read "about" field by field and refused a new key.

    During a rolling upgrade (or a rollback) it would have dropped every
    pending message this version wrote as unreadable.
    """
    about = About("INC-1", "PD1", "P2", START.isoformat())
    text = encode_effect(about, Announce("escalation", "t", "x", "oncall"))
    body = json.loads(text)
    assert set(body["about"]) == {"incident_id", "pagerduty_id", "severity"}
    assert decode_effect(text)[0] == about
    # What the version before wrote still reads, not asked at any known time.
    del body["asked_at"]
    assert decode_effect(json.dumps(body))[0] == replace(about, asked_at="")


async def test_a_batch_dates_each_effect_when_its_trace_was_folded(tmp_path):
    """A promotion and the resolution folded in one batch: the promotion is stale.

    Every effect of a batch was dated when the batch was written, after the
    resolution folded later in it: the promotion's message went out beside the
    all-clear (and, had it failed, was retried after it).
    """
    clock = TickingClock()
    sink = FailingAnnouncer("none")
    service = _service(SqliteIncidentStore(str(tmp_path / "s.db")), clock, sink)
    try:
        fired = await decide(rulebook(), "alertmanager", example(SIEM), clock())
        [incident] = await service.observe(fired)
        worse = [
            replace(
                t, matches=tuple(replace(m, severity=Severity.P0) for m in t.matches)
            )
            for t in fired
        ]
        gone = await decide(
            rulebook(), "alertmanager", resolved(example(SIEM), clock()), clock()
        )
        [after] = await service.observe([*worse, *gone])  # one batch
        assert not after.active
        sink.kind = "nothing fails from here on"
        for _ in range(3):
            clock.jump(minutes=6)
            await service.tick()
        # Not even tried: the write that asked for it also resolved it.
        assert sink.kinds().count("promoted") == 0, sink.kinds()
        assert "status_update" in sink.kinds()  # the all-clear
        got = await service.get(incident.id)
        [line] = [e.text for e in got.timeline if "(promoted)" in e.text]
        assert ": not sent; asked at" in line
    finally:
        await service.aclose()


async def test_a_record_the_store_cannot_read_does_not_stop_the_retry(tmp_path):
    """Judging staleness reads the incident; a damaged read sends as before."""
    clock = TickingClock()
    sink = FailingAnnouncer("opened")
    store = SqliteIncidentStore(str(tmp_path / "s.db"))
    service = _service(store, clock, sink)
    try:
        await service.observe(
            await decide(rulebook(), "alertmanager", example(SIEM), clock())
        )
        sink.kind = "nothing fails from here on"
        real_get = store.get

        async def damaged(incident_id: str) -> Any:
            msg = "damaged record"
            raise ValueError(msg)

        store.get = damaged  # type: ignore[method-assign]
        clock.jump(minutes=6)
        await service.tick()
        store.get = real_get  # type: ignore[method-assign]
        assert sink.kinds().count("opened") == 2, sink.kinds()
    finally:
        await service.aclose()


async def test_stale_after_an_interrupted_attempt_does_not_say_not_sent(tmp_path):
    """The first attempt reached the sink and the receiver died: maybe sent."""
    clock = TickingClock()
    path = str(tmp_path / "s.db")
    crashing = CrashingAnnouncer("opened")
    dying = _service(SqliteIncidentStore(path), clock, crashing)
    service = None
    try:
        with pytest.raises(Crash):
            await dying.observe(
                await decide(rulebook(), "alertmanager", example(SIEM), clock())
            )
        assert crashing.kinds() == ["opened"]
        service = _service(SqliteIncidentStore(path), clock, FailingAnnouncer("none"))
        [record], _ = await service.store.page(IncidentQuery())
        await service.resolve(record.id, by="jane", text="over")
        clock.jump(minutes=6)
        await service.tick()
        got = await service.get(record.id)
        [line] = [e.text for e in got.timeline if "(opened)" in e.text]
        assert "not sent" not in line
        assert "an interrupted one may have been sent" in line
    finally:
        if service is not None:
            await service.aclose()
        await dying.store.close()


@pytest.mark.parametrize(
    ("mode", "said"),
    [("dry-run", True), ("diagnose", False), ("execute", False)],
)
async def test_an_escalation_line_says_when_nobody_was_contacted(tmp_path, mode, said):
    """In dry-run, "Escalated to VP Eng" alone read as if the VP was paged."""
    clock = TickingClock()
    book = rulebook()
    service = IncidentService(
        SqliteIncidentStore(str(tmp_path / "s.db")),
        clock=clock,
        rulebook=lambda: book,
        announcer=RecordingAnnouncer(),
        mode=mode,
    )
    try:
        [incident] = await service.observe(
            await decide(
                book,
                "alertmanager",
                example("alertmanager/sark-api-down.firing.json"),
                clock(),
            )
        )
        await service.tick()  # the matrix: P0 escalates at once
        got = await service.get(incident.id)
        [line] = [e.text for e in got.timeline if e.kind == "escalated"]
        assert line.startswith("Escalated to Engineering Manager, VP Eng: ")
        assert line.endswith("(dry-run: nobody was contacted)") is said
    finally:
        await service.aclose()
