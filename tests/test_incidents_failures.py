"""Incidents when things break: sinks that raise, a store that goes away, restarts.

Nothing that fails around an incident may lose it, stop the other messages, or
stop the ticker; a restarted receiver carries on with the incidents on disk.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import journal_drained
from incident_helpers import (
    RecordingAnnouncer,
    TickingClock,
    example,
    rulebook,
    traces,
)

from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor, Worker
from receiver.errors import StoreUnavailableError
from receiver.incidents.model import Incident, State, evolve
from receiver.incidents.service import IncidentService
from receiver.model import AlertTrace, Severity
from receiver.store import SqliteStore
from receiver.store.base import DecisionQuery, JournalEntry
from receiver.store.incidents_base import IncidentQuery
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"
API_DOWN = "alertmanager/sark-api-down.firing.json"


class ExplodingAnnouncer(RecordingAnnouncer):
    async def announce(self, message):
        if message.kind == "opened":
            msg = "sink bug"
            raise RuntimeError(msg)
        return await super().announce(message)


class FlakyStore(SqliteIncidentStore):
    def __init__(self) -> None:
        super().__init__(":memory:")
        self.down = False

    async def find_first(self, keys):
        if self.down:
            msg = "incident store unreachable"
            raise StoreUnavailableError(msg)
        return await super().find_first(keys)

    async def watched(self):
        if self.down:
            msg = "incident store unreachable"
            raise StoreUnavailableError(msg)
        return await super().watched()


async def test_a_sink_that_raises_loses_nothing():
    """An announcer bug is logged, retried a few times, then on the timeline.

    The incident is kept and its other messages go out meanwhile.
    """
    clock = TickingClock()
    book = rulebook()
    announcer = ExplodingAnnouncer()
    service = IncidentService(
        SqliteIncidentStore(":memory:"),
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="diagnose",
    )
    try:
        [incident] = await service.observe(
            await traces(book, "alertmanager", example(SIEM), clock())
        )
        got = await service.get(incident.id)
        assert got.state is State.TRIGGERED
        [first] = [e.text for e in got.timeline if e.kind == "message_sent"]
        assert "(opened)" in first
        assert first.endswith("trying again in 30 s")
        clock.jump(minutes=20)
        await service.tick()
        assert "escalation" in announcer.kinds()
        for _ in range(5):
            clock.jump(minutes=10)
            await service.tick()
        got = await service.get(incident.id)
        failed = [
            e.text
            for e in got.timeline
            if e.kind == "message_sent"
            and "(opened)" in e.text
            and "trying again" not in e.text
        ]
        assert len(failed) == 1
        assert failed[0].endswith(
            ": not delivered after 5 attempts (last: RuntimeError; see the "
            "receiver's log)"
        )
    finally:
        await service.aclose()


async def test_a_store_outage_delays_a_batch_and_drops_none():
    """While the store is down the batch waits; once it answers, it is folded.

    Before, the whole batch was logged and dropped: the incident never opened.
    """
    clock = TickingClock()
    book = rulebook()
    store = FlakyStore()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        store.down = len(waits) < 3  # down for two retries, then back

    service = IncidentService(
        store, clock=clock, rulebook=lambda: book, retry_sleep=sleep
    )
    try:
        store.down = True
        await service.put(await traces(book, "alertmanager", example(SIEM), clock()))
        await service.drain()
        page, _ = await service.page(IncidentQuery())
        assert len(page) == 1
        assert waits == [0.5, 1.0, 2.0]  # doubling while the store is down
    finally:
        await service.aclose()


class FailsOneUpdate(SqliteIncidentStore):
    """The write of one incident fails once; every other write goes through."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.failing = ""

    async def update(self, record, folded=(), *, done=()):
        if record.id == self.failing:
            self.failing = ""
            msg = "incident store unreachable"
            raise StoreUnavailableError(msg)
        return await super().update(record, folded, done=done)


async def test_a_batch_the_store_failed_midway_folds_the_rest_once():
    """Two incidents in one batch, the second's write fails: each folded once.

    The first was written before the failure: folding the whole batch again
    would count its resend twice; dropping it would lose the second's.
    """
    clock = TickingClock()
    book = rulebook()
    store = FailsOneUpdate()

    async def sleep(_seconds: float) -> None:
        return None

    service = IncidentService(
        store, clock=clock, rulebook=lambda: book, retry_sleep=sleep
    )
    try:
        siem = await traces(book, "alertmanager", example(SIEM), clock())
        api = await traces(book, "alertmanager", example(API_DOWN), clock())
        first, second = await service.observe([*siem, *api])
        store.failing = second.id
        # Resent, both in one batch: each ledger line counted once more.
        await service.put(await traces(book, "alertmanager", example(SIEM), clock()))
        await service.put(
            await traces(book, "alertmanager", example(API_DOWN), clock())
        )
        await service.drain()
        assert store.failing == ""  # the failure happened
        for incident in (first, second):
            got = await service.get(incident.id)
            assert got.ledger
            assert {item.times for item in got.ledger} == {2}, incident.id
    finally:
        await service.aclose()


class RaisesOn(SqliteIncidentStore):
    """A bug: any fold that looks up ``poison``'s keys raises."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.poison = ""

    async def find_first(self, keys):
        if self.poison and any(self.poison in k for k in keys):
            msg = "a bug"
            raise RuntimeError(msg)
        return await super().find_first(keys)


async def test_a_trace_that_raises_is_dropped_alone():
    """A bug on one trace: the rest of its batch is folded, one by one."""
    clock = TickingClock()
    book = rulebook()
    store = RaisesOn()
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        siem = await traces(book, "alertmanager", example(SIEM), clock())
        api = await traces(book, "alertmanager", example(API_DOWN), clock())
        store.poison = service.keys(siem[0])[0]
        await service.put(siem)
        await service.put(api)
        await service.drain()
        page, _ = await service.page(IncidentQuery())
        assert len(page) == 1
        assert page[0].title != ""
    finally:
        await service.aclose()


async def test_the_ticker_outlives_a_store_outage():
    """``run`` keeps ticking through StoreUnavailableError until cancelled."""
    clock = TickingClock()
    book = rulebook()
    store = FlakyStore()
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    ticks = 0

    async def sleep(_seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        store.down = ticks < 3
        if ticks >= 5:
            raise asyncio.CancelledError

    store.down = True
    with pytest.raises(asyncio.CancelledError):
        await service.run(15.0, sleep=sleep)
    assert ticks == 5
    await service.aclose()


async def test_incidents_survive_a_restart(tmp_path):
    """A second service on the same SQLite file carries on: clocks, ids, drafts."""
    db = str(tmp_path / "receiver.db")
    clock = TickingClock()
    book = rulebook()
    first = IncidentService(SqliteIncidentStore(db), clock=clock, rulebook=lambda: book)
    [incident] = await first.observe(
        await traces(book, "alertmanager", example(SIEM), clock())
    )
    await first.aclose()
    announcer = RecordingAnnouncer()
    second = IncidentService(
        SqliteIncidentStore(db),
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="diagnose",
    )
    try:
        clock.jump(hours=1, minutes=1)
        await second.tick()
        got = await second.get(incident.id)
        assert got.drafts == 1
        assert "acknowledge@P1" in got.breaches
        [again] = await second.observe(
            await traces(book, "alertmanager", example(SIEM), clock())
        )
        assert again.id == incident.id
    finally:
        await second.aclose()


async def test_closing_while_cancelled_queries_still_run_does_not_crash(tmp_path):
    """A query whose task was cancelled finishes before the connection closes."""
    for i in range(30):
        store = SqliteIncidentStore(str(tmp_path / f"c{i}.db"))
        tasks = [asyncio.ensure_future(store.watched()) for _ in range(20)]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await store.close()
        with pytest.raises(StoreUnavailableError):
            await store.watched()


class Handing:
    """A hand-over whose e1 waits for room, and whose e1 and e2 folds wait."""

    def __init__(self) -> None:
        self.handed: list[str] = []
        self.folds: dict[str, asyncio.Future[None]] = {}
        self.e1_waits = asyncio.Event()
        self.room = asyncio.Event()
        self.e2_handed = asyncio.Event()

    async def hand_over(self, done: list[AlertTrace]) -> asyncio.Future[None]:
        payload = done[0].payload_id
        if payload == "e1":
            self.e1_waits.set()
            await self.room.wait()
        self.handed.append(payload)
        folded = self.folds[payload] = asyncio.get_running_loop().create_future()
        if payload == "e2":
            self.e2_handed.set()
        elif payload != "e1":
            folded.set_result(None)
        return folded


def recording(store: SqliteStore, watched: tuple[str, ...]) -> dict[str, asyncio.Event]:
    """An event per watched entry, set once the store writes its record."""
    recorded = {e: asyncio.Event() for e in watched}
    complete_batch = store.complete_batch

    async def written(done: Any) -> None:
        await complete_batch(done)
        for entry_id, _ in done:
            if entry_id in recorded:
                recorded[entry_id].set()

    store.complete_batch = written  # type: ignore[method-assign]
    return recorded


async def test_the_worker_records_an_entry_only_once_its_traces_are_folded(tmp_path):
    """The hand-over comes before the record; waiting there holds the worker back.

    A hand-over that waits for room (a full incident queue) holds back the
    next entry's hand-over (they go in the order decided); once every slot of
    the worker holds an entry waiting so, it claims nothing. An entry handed
    over is marked done only once its traces are folded: a crash before that
    decides it again. Its decision records are written meanwhile (visible as
    soon as decided; decided again, it writes none).
    """
    clock = TickingClock()
    book = rulebook()
    store = SqliteStore(str(tmp_path / "state.db"))
    processor = Processor(
        book,
        Runner({}, clock, mode="dry-run"),
        clock,
        PlanContext(execute=False, namespaces=None),
        store=store,
    )
    handing = Handing()
    # One task, one entry per claim: two slots, so two entries in hand at most.
    worker = Worker(
        store, processor, 1, clock=clock, hand_over=handing.hand_over, batch=1
    )
    body = json.dumps(example(SIEM)).encode()
    for entry_id in ("e1", "e2", "e3", "e4"):
        await store.append(JournalEntry(entry_id, "alertmanager", clock(), body), [])
    recorded = recording(store, ("e1", "e2"))
    no_slot = asyncio.Event()  # the task looks for a slot and finds none
    free_slot = worker._free_slot

    async def slot() -> int:
        if all(worker._slots):
            no_slot.set()
        return await free_slot()

    worker._free_slot = slot  # type: ignore[method-assign]
    await worker.start()
    try:
        await asyncio.wait_for(handing.e1_waits.wait(), 10)
        await asyncio.wait_for(no_slot.wait(), 10)  # e2 is decided meanwhile
        assert handing.handed == []  # e2 waits for e1's hand-over
        handing.room.set()
        await asyncio.wait_for(handing.e2_handed.wait(), 10)
        assert handing.handed == ["e1", "e2"]
        # Handed over, not folded yet: neither is recorded.
        assert not recorded["e1"].is_set()
        assert not recorded["e2"].is_set()
        handing.folds["e2"].set_result(None)
        await asyncio.wait_for(recorded["e2"].wait(), 10)
        assert not recorded["e1"].is_set()  # still waiting for its fold
        # Its records were written before e2's (in the order decided).
        assert await store.decisions(DecisionQuery(payload_id="e1")) != []
        assert not recorded["e1"].is_set()
        handing.folds["e1"].set_result(None)
        await journal_drained(store)
    finally:
        await worker.stop()
        await store.close()
    assert handing.handed == ["e1", "e2", "e3", "e4"]


def test_evolving_an_incident_is_replace_and_refuses_what_is_no_field():
    at = datetime(2026, 11, 26, tzinfo=UTC)
    incident = Incident("INC-1", ("k",), "t", Severity.P1, State.TRIGGERED, at, at)
    changed = evolve(incident, drafts=2, keys=("k", "j"))
    assert changed == replace(incident, drafts=2, keys=("k", "j"))
    assert incident.drafts == 0  # the original is untouched
    with pytest.raises(TypeError, match="draft"):
        evolve(incident, draft=2)
