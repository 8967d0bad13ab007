"""The incident service's queue: traces wait here until one task folds them.

``IncidentService.put`` (the worker's callback) and ``sink_outcomes`` (the
dispatcher's) queue here; one background task hands the queue to the service's
``observe`` in batches, so an alert storm into one group costs a few writes, not
one per alert. ``put`` waits while the queue is full, which is the backpressure
the worker feels.

Nothing queued is dropped for a store that fails: the fold says which traces it
wrote (``done``), and the rest go back to the head of the queue, folded again
after a backoff (so nothing is folded twice: a resend would count twice, a
fire-then-resolve could open a phantom incident). A fold that raises anything
else (a bug) is retried one trace at a time, and only a trace that raises on
its own is dropped, logged.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from receiver.errors import ReceiverError
from receiver.model import AlertTrace
from receiver.retrying import Doubling, stop_if_cancelled

log = structlog.get_logger("receiver.incidents")

BATCH = 1000  # traces folded per round before the incidents are written


@dataclass(frozen=True)
class SinkNote:
    """What the sinks did with one trace, for its incident's timeline."""

    trace: AlertTrace
    lines: tuple[str, ...]


# Folds the traces; adds the id() of each one whose fold is written to the set.
Fold = Callable[[Sequence[AlertTrace | SinkNote], set[int]], Awaitable[object]]


class FoldQueue:
    """Traces and sink notes in arrival order, folded by one task at a time."""

    def __init__(
        self,
        fold: Fold,
        max_pending: int,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fold = fold
        self._max_pending = max_pending
        self._sleep = sleep
        # Items at the head of the queue to fold one at a time (after a bug).
        self._isolate = 0
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
        waits = Doubling(first=0.5, cap=30.0)
        while self._queue:
            size = 1 if self._isolate else BATCH
            batch, self._queue = self._queue[:size], self._queue[size:]
            self._room.set()
            done: set[int] = set()
            try:
                await self._fold(batch, done)
            except ReceiverError as exc:  # the store: the rest, again, later
                left = [t for t in batch if id(t) not in done]
                self._queue[:0] = left
                wait = waits.failed()
                log.warning(
                    "incident_update_failed",
                    error=str(exc),
                    traces=len(left),
                    retry_in=wait,
                    detail="folded again once the store answers; nothing dropped",
                )
                stop_if_cancelled()
                await self._sleep(wait)
                continue
            except Exception:  # a bug: a background task must not die silently
                left = [t for t in batch if id(t) not in done]
                if self._isolate:
                    # Kept if the error was a cancellation in disguise.
                    self._queue[:0] = left
                    stop_if_cancelled()
                    del self._queue[: len(left)]
                    self._isolate -= 1
                    log.exception("incident_trace_dropped", traces=len(left))
                    continue
                # Back first: a cancellation turned into this error (shutdown)
                # must not take the rest of the batch with it.
                self._queue[:0] = left
                self._isolate = len(left)
                stop_if_cancelled()
                log.exception(
                    "incident_update_failed",
                    traces=len(left),
                    detail="folding them again one by one; only a trace that "
                    "fails on its own is dropped",
                )
                continue
            if self._isolate:
                self._isolate -= 1
            waits.reset()

    async def drain(self) -> None:
        """Wait until every queued trace is folded in (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
