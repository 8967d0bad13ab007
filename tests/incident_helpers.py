"""Helpers for the incident tests: an advancing clock, real traces, recorders.

Traces are decided by the real rule pack (``rules/``) in dry-run from the shipped
example payloads, so the incident code sees exactly what the worker hands it.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.incidents.effects import Message
from receiver.model import AlertTrace
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_base import (
    ClaimedEffect,
    IncidentRecord,
    IncidentStore,
    Mark,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


class TickingClock:
    """A clock that advances ``step`` on every read; ``jump`` moves it further."""

    def __init__(self, start: datetime = START, step: timedelta = timedelta(seconds=1)):
        self.now = start
        self.step = step
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        now = self.now
        self.now += self.step
        return now

    def jump(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def to(self, when: datetime) -> None:
        assert when >= self.now, "the clock never goes back"
        self.now = when


def rulebook() -> Rulebook:
    return load_rulebook([ROOT / "rules"], steps=builtin_registry())


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


async def traces(
    book: Rulebook, source: str, payload: dict[str, Any], now: datetime
) -> list[AlertTrace]:
    processor = Processor(
        book,
        Runner({}, lambda: now, mode="dry-run"),
        lambda: now,
        PlanContext(execute=False, namespaces=None),
    )
    body = json.dumps(payload).encode()
    return await processor.decide_dry_run(
        processor.alerts(source, body, now),
        now=now,  # type: ignore[arg-type]
    )


def resolved(payload: dict[str, Any], at: datetime) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    out["status"] = "resolved"
    for alert in out["alerts"]:
        alert["status"] = "resolved"
        alert["endsAt"] = at.isoformat().replace("+00:00", "Z")
    return out


@dataclass
class RecordingAnnouncer:
    messages: list[Message] = field(default_factory=list)

    async def announce(self, message: Message) -> list[str]:
        self.messages.append(message)
        return ["recorded"]

    def kinds(self) -> list[str]:
        return [m.kind for m in self.messages]


@dataclass
class RecordingEscalator:
    calls: list[tuple[str, int, str]] = field(default_factory=list)

    async def escalate(self, incident_id: str, level: int, priority: str) -> str:
        self.calls.append((incident_id, level, priority))
        return "escalated"

    async def set_status(self, incident_id: str, status: str) -> str:
        self.calls.append((incident_id, 0, status))
        return status


class Crash(BaseException):
    """The process dies here: no ``except Exception`` in the service catches it."""


class CrashingAnnouncer(RecordingAnnouncer):
    """Dies on the first message of ``kind`` (after recording that it was asked)."""

    def __init__(self, kind: str = "opened") -> None:
        super().__init__()
        self.kind = kind

    async def announce(self, message: Message) -> list[str]:
        if message.kind == self.kind:
            self.messages.append(message)
            raise Crash
        return await super().announce(message)


class FailingAnnouncer(RecordingAnnouncer):
    """Raises (a bug, not a crash) on every message of ``kind``."""

    def __init__(self, kind: str = "opened") -> None:
        super().__init__()
        self.kind = kind

    async def announce(self, message: Message) -> list[str]:
        self.messages.append(message)
        if message.kind == self.kind:
            msg = "sink bug"
            raise RuntimeError(msg)
        return ["recorded"]


class HeldAnnouncer(RecordingAnnouncer):
    """Holds the first message of ``kind`` until released (a slow sink).

    ``cancelled`` is set if the send is stopped while held (nothing recorded).
    """

    def __init__(self, kind: str = "opened") -> None:
        super().__init__()
        self.kind = kind
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def announce(self, message: Message) -> list[str]:
        if message.kind == self.kind and not self.started.is_set():
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return await super().announce(message)


class Alarm:
    """A sleep on a ``TickingClock``: a wait ends when the test rings past its end.

    The incident service's ``renew_sleep``: time passes for the claims it
    holds only when the test moves the clock and rings. ``asleep`` waits for
    the next wait to start (the holder checked or renewed, and sleeps again).
    """

    def __init__(self, clock: TickingClock) -> None:
        self.clock = clock
        self._waits: list[tuple[datetime, asyncio.Future[None]]] = []
        self._started: asyncio.Queue[float] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        wait = (
            self.clock.now + timedelta(seconds=seconds),
            asyncio.get_running_loop().create_future(),
        )
        self._waits.append(wait)
        self._started.put_nowait(seconds)
        try:
            await wait[1]
        finally:
            self._waits.remove(wait)

    async def asleep(self) -> float:
        """Wait for the next wait to start; how long it is (seconds)."""
        return await self._started.get()

    def ring(self) -> int:
        """End every wait the clock has reached; how many."""
        rung = 0
        for end, done in self._waits:
            if end <= self.clock.now and not done.done():
                done.set_result(None)
                rung += 1
        return rung

    async def advance(self, **delta: float) -> None:
        """Move the clock on and ring; return once the holder sleeps again."""
        assert self._started.empty(), "a wait started that the test did not see"
        self.clock.jump(**delta)
        assert self.ring(), "nothing was waiting for that long"
        await self.asleep()


def dies_before_recording(store: IncidentStore) -> IncidentStore:
    """The store, except that the write recording carried-out effects kills us."""
    update = store.update

    async def dying(
        record: IncidentRecord,
        folded: Sequence[Mark] = (),
        *,
        done: Sequence[ClaimedEffect] = (),
    ) -> IncidentRecord | None:
        if done:
            raise Crash
        return await update(record, folded, done=done)

    store.update = dying  # type: ignore[method-assign]
    return store
