"""The worker's hand-over: a put's future ends once its traces are folded.

The worker records a decision (marks its payload done) only after that future
ends, so the incidents never lose a trace to a crash: until then the payload
is decided again. These tests hold the fold at each point it can stop and
check the future against it: the incident write held, the store failing (the
traces are folded again after a backoff), a trace dropped as a bug, the
effects of a write (a message to a sink) that take long, and a put given up
on (shutdown), whose queued traces leave the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from incident_helpers import RecordingAnnouncer, TickingClock, traces
from test_incidents import STORM_RULES

from receiver.errors import StoreUnavailableError
from receiver.incidents.effects import Message
from receiver.incidents.service import IncidentService
from receiver.model import AlertTrace
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_base import IncidentQuery, Mark
from receiver.store.incidents_sqlite import SqliteIncidentStore


def body(fingerprints: list[str], group: str = "g-storm") -> dict:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "r",
        "groupKey": group,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "Storm",
                    "team": "sre",
                    "group": group,
                    "pod": fp,
                },
                "annotations": {"summary": "Storm"},
                "startsAt": "2026-11-26T09:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": fp,
            }
            for fp in fingerprints
        ],
    }


@pytest.fixture
def book(tmp_path: Path) -> Rulebook:
    (tmp_path / "rules.yaml").write_text(STORM_RULES)
    return load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry())


async def decided(
    book: Rulebook, clock: TickingClock, fingerprints: list[str], payload_id: str
) -> list[AlertTrace]:
    batch = await traces(book, "alertmanager", body(fingerprints), clock())
    return [replace(t, payload_id=payload_id) for t in batch]


class HeldStore(SqliteIncidentStore):
    """Incident writes wait at a gate; ``fail`` makes the next ones fail."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = 0
        self.bug = ""

    async def _held(self) -> None:
        self.entered.set()
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            msg = "incident store unreachable"
            raise StoreUnavailableError(msg)

    async def update(self, record, folded=(), *, done=()):
        await self._held()
        if self.bug and any(self.bug in fp for _, fp in folded):
            msg = "a bug"
            raise RuntimeError(msg)
        return await super().update(record, folded, done=done)

    async def create_numbered(self, day, build, folded=()):
        await self._held()
        return await super().create_numbered(day, build, folded)

    async def mark_folded(self, folded: list[Mark]) -> None:
        await self._held()
        await super().mark_folded(folded)


def service_on(
    store: SqliteIncidentStore,
    book: Rulebook,
    clock: TickingClock,
    *,
    announcer: RecordingAnnouncer | None = None,
    retry_sleep: Callable[[float], Awaitable[None]] | None = None,
) -> IncidentService:
    async def no_wait(_seconds: float) -> None:
        return None

    return IncidentService(
        store,
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="diagnose",
        retry_sleep=retry_sleep or no_wait,
    )


@contextlib.asynccontextmanager
async def held(
    book: Rulebook,
    retry_sleep: Callable[[float], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[TickingClock, HeldStore, IncidentService]]:
    """A service whose first incident is open (``p0``), its store's writes held."""
    clock = TickingClock()
    store = HeldStore()
    service = service_on(store, book, clock, retry_sleep=retry_sleep)
    try:
        await service.put(await decided(book, clock, ["fp-0"], "p0"))
        await service.drain()
        store.gate.clear()
        store.entered.clear()
        yield clock, store, service
    finally:
        store.gate.set()
        await service.aclose()


async def fingerprints(service: IncidentService) -> set[str]:
    page, _ = await service.page(IncidentQuery())
    return {a.fingerprint for incident in page for a in incident.alerts}


async def test_the_future_ends_once_the_write_is_in(book) -> None:
    async with held(book) as (clock, store, service):
        folded = await service.put(await decided(book, clock, ["fp-1"], "p1"))
        await store.entered.wait()  # the write is under way, held
        assert not folded.done()
        store.gate.set()
        await asyncio.wait_for(folded, 10)
        assert "fp-1" in await fingerprints(service)


async def test_a_store_failure_holds_the_future_until_the_fold_is_written(
    book,
) -> None:
    waits: list[float] = []
    backing_off = asyncio.Event()
    resume = asyncio.Event()

    async def retry_sleep(seconds: float) -> None:
        waits.append(seconds)
        backing_off.set()
        await resume.wait()

    async with held(book, retry_sleep) as (clock, store, service):
        store.fail = 1
        folded = await service.put(await decided(book, clock, ["fp-1"], "p1"))
        store.gate.set()
        await backing_off.wait()  # the write failed; folded again after this
        assert not folded.done()
        resume.set()
        await asyncio.wait_for(folded, 10)
        assert waits, "the failed write was retried after a backoff"
        assert "fp-1" in await fingerprints(service)


async def test_a_trace_dropped_as_a_bug_ends_its_put(book) -> None:
    """A bug must not hold the worker's decisions back for ever."""
    async with held(book) as (clock, store, service):
        store.gate.set()
        store.bug = "poison"
        folded = await service.put(
            await decided(book, clock, ["fp-1", "poison-2"], "p1")
        )
        await asyncio.wait_for(folded, 10)  # the poison trace was dropped
        assert "fp-1" in await fingerprints(service)
        assert "poison-2" not in await fingerprints(service)


class SlowAnnouncer(RecordingAnnouncer):
    """Announcing waits at a gate (a sink that takes its time)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def announce(self, message: Message) -> list[str]:
        self.entered.set()
        await self.gate.wait()
        return await super().announce(message)


async def test_the_effects_of_a_write_do_not_hold_the_future(book) -> None:
    clock = TickingClock()
    announcer = SlowAnnouncer()
    service = service_on(
        SqliteIncidentStore(":memory:"), book, clock, announcer=announcer
    )
    try:
        folded = await service.put(await decided(book, clock, ["fp-0"], "p0"))
        await announcer.entered.wait()  # the incident opened: announcing
        await asyncio.wait_for(folded, 10)
        assert not announcer.messages  # still announcing
        announcer.gate.set()
        await service.drain()
        assert announcer.kinds() == ["opened"]
    finally:
        announcer.gate.set()
        await service.aclose()


async def test_a_put_given_up_on_takes_its_queued_traces_back(book) -> None:
    """Shutdown: the payload is decided again by the next worker, which folds it."""
    async with held(book) as (clock, store, service):
        in_flight = await service.put(await decided(book, clock, ["fp-1"], "p1"))
        await store.entered.wait()  # p1 is being written; p2 and p3 queue behind
        queued = await service.put(await decided(book, clock, ["fp-2"], "p2"))
        kept = await service.put(await decided(book, clock, ["fp-3"], "p3"))
        queued.cancel()
        store.gate.set()
        await asyncio.wait_for(in_flight, 10)
        await asyncio.wait_for(kept, 10)
        await service.drain()
        assert await fingerprints(service) == {"fp-0", "fp-1", "fp-3"}
