"""The incident service's queue: traces wait here until one task folds them.

``IncidentService.put`` (the worker's callback) and ``sink_outcomes`` (the
dispatcher's) queue here; one background task hands the queue to the service's
``observe`` in batches, so an alert storm into one group costs a few writes, not
one per alert. ``put`` waits while the queue is full, which is the backpressure
the worker feels, and returns a future that ends once every trace it queued is
folded and its fold mark written: the worker records its decision only then,
so a crash before that decides the payload again, and the marks keep its
traces from being folded twice. A put whose caller stops waiting (shutdown)
takes back those of its traces not being folded yet: the payload is decided
again by the next worker, which folds them.

Nothing queued is dropped for a store that fails: the fold says which traces it
wrote (``done``), and the rest go back to the head of the queue, folded again
after a backoff (so nothing is folded twice: a resend would count twice, a
fire-then-resolve could open a phantom incident). A fold that raises anything
else (a bug) is retried one trace at a time, and only a trace that raises on
its own is dropped, logged (its put's future ends: a bug must not hold the
worker's decisions back).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Sequence
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


class _Put:
    """One put's traces not folded yet, and the future that ends with the last."""

    __slots__ = ("folded", "left")

    def __init__(self, left: int) -> None:
        self.left = left
        self.folded: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _Done(set[int]):
    """The ``done`` set a fold fills: each trace added ends its share of its put.

    Settled as the fold goes (a trace's incident write and mark are in), not
    when the whole batch is folded: the effects carried out after a write (a
    message to a sink) must not hold the worker's decisions back.
    """

    def __init__(self, settle: Callable[[int], None]) -> None:
        super().__init__()
        self._settle = settle

    def add(self, element: int) -> None:
        if element not in self:
            super().add(element)
            self._settle(element)

    def update(self, *others: Iterable[int]) -> None:
        for other in others:
            for element in other:
                self.add(element)


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
        self._isolating = 0  # 1 while an isolated item is being folded
        self._pending: set[asyncio.Task[None]] = set()
        self._queue: list[AlertTrace | SinkNote] = []
        # The put each queued or in-flight trace came with, by id().
        self._puts: dict[int, _Put] = {}
        self._room = asyncio.Event()  # set when the queue has room again
        self.waits = 0  # puts that had to wait for room (backpressure)
        self._consumer: asyncio.Task[None] | None = None

    async def put(self, traces: Sequence[AlertTrace]) -> asyncio.Future[None]:
        """Queue a payload's traces for the folding task (the worker's callback).

        Waits while ``max_pending`` traces are queued: the worker waiting here
        claims nothing new, so a backlog stays in the journal (where the edge
        sees it and pushes back), not in memory. Returns a future that ends
        once every trace is folded (or dropped as a bug); cancelling it takes
        back the traces not being folded yet. A put cancelled while it waits
        for room queues nothing. Never raises otherwise.
        One task folds whatever has queued up, writing each incident once per
        batch: an alert storm into one group costs a few writes, not one per
        alert.
        """
        put = _Put(len(traces))
        if not traces:
            put.folded.set_result(None)
            return put.folded
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
            await self._room.wait()
        for trace in traces:
            self._puts[id(trace)] = put
        put.folded.add_done_callback(lambda f: self._withdraw(f, traces))
        self._queue.extend(traces)
        self._start_consumer()
        return put.folded

    def _withdraw(
        self, folded: asyncio.Future[None], traces: Sequence[AlertTrace]
    ) -> None:
        """A put given up on (cancelled): its traces still queued leave the queue."""
        if not folded.cancelled():
            return
        ids = {id(t) for t in traces if self._puts.get(id(t)) is not None}
        if not ids:
            return
        # The isolated item being folded (if any) counts in ``_isolate`` but
        # has left the queue already.
        head = self._queue[: self._isolate - self._isolating]
        self._queue = [t for t in self._queue if id(t) not in ids]
        # Traces being isolated one by one that left take their turn with them.
        self._isolate -= sum(1 for t in head if id(t) in ids)
        for one in ids:
            self._puts.pop(one, None)
        self._room.set()

    def _left(
        self, batch: list[AlertTrace | SinkNote], done: set[int]
    ) -> list[AlertTrace | SinkNote]:
        """What a failed fold left to fold again: not done, and not taken back."""
        return [
            t
            for t in batch
            if id(t) not in done and (isinstance(t, SinkNote) or id(t) in self._puts)
        ]

    def _settle(self, trace_id: int) -> None:
        """One trace is folded (or dropped): its put may be over."""
        put = self._puts.pop(trace_id, None)
        if put is None:
            return
        put.left -= 1
        if put.left <= 0 and not put.folded.done():
            put.folded.set_result(None)

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
            self._isolating = 1 if self._isolate else 0
            batch, self._queue = self._queue[:size], self._queue[size:]
            self._room.set()
            done = _Done(self._settle)
            try:
                try:
                    await self._fold(batch, done)
                finally:
                    self._isolating = 0
                # Everything folded (a fold that returns left none out).
                done.update(id(t) for t in batch)
            except ReceiverError as exc:  # the store: the rest, again, later
                left = self._left(batch, done)
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
                left = self._left(batch, done)
                if self._isolate:
                    # Kept if the error was a cancellation in disguise.
                    self._queue[:0] = left
                    stop_if_cancelled()
                    del self._queue[: len(left)]
                    self._isolate -= 1
                    log.exception("incident_trace_dropped", traces=len(left))
                    done.update(id(t) for t in left)  # its put is over all the same
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
