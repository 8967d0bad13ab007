"""The incident service's queue: traces wait here until one task folds them.

``IncidentService.put`` (the worker's callback) and ``sink_outcomes`` (the
dispatcher's) queue here; one background task hands the queue to the service's
``observe`` in batches, so an alert storm into one group costs a few writes, not
one per alert. ``put`` waits while the queue is full, which is the backpressure
the worker feels.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from receiver.model import AlertTrace

log = structlog.get_logger("receiver.incidents")

BATCH = 1000  # traces folded per round before the incidents are written


@dataclass(frozen=True)
class SinkNote:
    """What the sinks did with one trace, for its incident's timeline."""

    trace: AlertTrace
    lines: tuple[str, ...]


Fold = Callable[[Sequence[AlertTrace | SinkNote]], Awaitable[object]]


class FoldQueue:
    """Traces and sink notes in arrival order, folded by one task at a time."""

    def __init__(self, fold: Fold, max_pending: int) -> None:
        self._fold = fold
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self._queue: list[AlertTrace | SinkNote] = []
        self._room = asyncio.Event()  # set when the queue has room again
        self.waits = 0  # puts that had to wait for room (backpressure)
        self._consumer: asyncio.Task[None] | None = None

    async def put(self, traces: Sequence[AlertTrace]) -> None:
        """Queue a payload's traces for the folding task (the worker's callback).

        Waits while ``max_pending`` traces are queued: the worker waiting here
        claims nothing new, so a backlog stays in the journal (where the edge
        sees it and pushes back), not in memory. Nothing handed over is
        dropped: a put cancelled while waiting (shutdown) queues its traces
        anyway, for ``aclose`` to drain. Never raises otherwise.
        One task folds whatever has queued up, writing each incident once per
        batch: an alert storm into one group costs a few writes, not one per
        alert.
        """
        if not traces:
            return
        if len(self._queue) >= self._max_pending:
            self.waits += 1
            log.info(
                "incident_queue_full",
                queued=len(self._queue),
                max_pending=self._max_pending,
                detail="the worker waits until the incident folding catches up",
            )
        while len(self._queue) >= self._max_pending:
            self._start_consumer()
            self._room.clear()
            try:
                await self._room.wait()
            except asyncio.CancelledError:
                self._queue.extend(traces)
                self._start_consumer()
                raise
        self._queue.extend(traces)
        self._start_consumer()

    def _start_consumer(self) -> None:
        if self._consumer is None or self._consumer.done():
            # A fresh context: the worker's bound log fields (payload id) are
            # not this task's, which folds many payloads.
            self._consumer = asyncio.get_running_loop().create_task(
                self._consume(), name="incident-fold", context=contextvars.Context()
            )
            self._pending.add(self._consumer)
            self._consumer.add_done_callback(self._pending.discard)

    def note(self, note: SinkNote) -> None:
        """Queue what the sinks did with a trace, behind the trace itself."""
        # Never dropped, and not bounded here: sink outcomes follow traces the
        # worker handed over through ``put``, which is bounded.
        self._queue.append(note)
        self._start_consumer()

    async def _consume(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
            self._room.set()
            try:
                await self._fold(batch)
            except Exception:  # a background task must not die silently
                log.exception("incident_update_failed", traces=len(batch))

    async def drain(self) -> None:
        """Wait until every queued trace is folded in (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
