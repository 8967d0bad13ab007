"""Consume the journal: parse each accepted payload, plan, run, record, mark done.

Started and stopped by the app (``cleanup_ctx``), or by a separate worker
process. Each worker is one *incarnation* (host, pid, random): it registers
itself in the store and keeps renewing that while it runs, and on start it
recovers what dead incarnations left (their target locks are released; their
interrupted remediations are re-checked by the runner). An entry is claimed
under a ``Lease`` that is renewed while it is decided, and marked done only after
its decisions are recorded; if the store fails meanwhile, the same entry is
retried with backoff. Each alert of a payload is decided on its own: an
unexpected error in one becomes that alert's recorded failure. An entry that
still fails as a whole (or keeps crashing the process) is handed back and, after
``max_attempts`` claims, parked: listed in the API, counted in
``receiver_journal_parked``, logged at error, retried on demand. ``Processor``
is also what ``receiver replay`` uses, so replay and the live path decide
identically.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from receiver.engine.doorbell import WorkerBell
from receiver.engine.processing import Processor, TraceRecords
from receiver.engine.runner import describe_error
from receiver.errors import InputError, StoreUnavailableError
from receiver.metrics import Metrics
from receiver.model import AlertTrace
from receiver.store.base import JournalEntry, Lease, Store

__all__ = ["Processor", "Worker", "consumer_name", "utc_now"]

log = structlog.get_logger("receiver.worker")

# The journal-depth gauges are refreshed at most this often (seconds) by the
# worker; every /metrics scrape refreshes them too. Counting the backlog after
# every entry made a long backlog slower to drain.
OBSERVE_EVERY = 1.0
# With a doorbell, an idle worker still looks at the journal this often
# (seconds): for leases that ran out, and as a safety net.
IDLE_RECHECK = 1.0


def consumer_name() -> str:
    """A name for this process as a journal consumer and lock owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"


def utc_now() -> datetime:
    """The default clock of a worker that was given none."""
    return datetime.now(UTC)


class Worker:
    """Bounded-concurrency consumer of the store's journal.

    ``consumer`` is this process's incarnation and must be the owner its
    ``GuardKeeper`` takes locks and claims as (``create_app`` passes the same
    name to both), so that recovery after a crash finds what it held.
    """

    def __init__(
        self,
        store: Store,
        processor: Processor,
        concurrency: int = 4,
        *,
        metrics: Metrics | None = None,
        consumer: str | None = None,
        clock: Callable[[], datetime] | None = None,
        prune_every: timedelta = timedelta(minutes=5),
        on_complete: Callable[[list[AlertTrace]], Awaitable[None] | None] | None = None,
        outbox: Callable[[list[AlertTrace]], Awaitable[None]] | None = None,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        bell: WorkerBell | None = None,
    ) -> None:
        # Rung by the edge process after each payload it journals: the worker
        # sleeps on it instead of polling the journal.
        self._bell = bell
        # Called with a payload's traces once they are recorded (the sinks,
        # the incidents); it never raises, and may return an awaitable that
        # waits for room downstream (backpressure), which the worker awaits.
        self._on_complete = on_complete
        # Awaited with a payload's traces *before* they are recorded (the sink
        # outbox): a crash in between decides the entry again, and the outbox
        # ignores the repeat, so nothing is lost between the two. It may wait
        # for room and raises StoreUnavailableError like the store.
        self._outbox = outbox
        self._store = store
        self._processor = processor
        self._concurrency = concurrency
        self._metrics = metrics
        # The incarnation: lock owner, claim owner and journal consumer prefix.
        self.consumer = consumer or consumer_name()
        self._prune = clock is not None
        self._clock = clock or utc_now
        self._prune_every = prune_every
        self._lease = lease
        self._alive_for = lease / 2
        self.max_attempts = max_attempts
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._observed = -OBSERVE_EVERY

    async def start(self) -> None:
        """Register this incarnation, recover dead ones, start consuming."""
        now = self._clock()
        await self._store.register(self.consumer, now, self._alive_for)
        released = await self._store.recover(self.consumer, now)
        if released:
            log.warning(
                "locks_recovered",
                detail="target locks of a stopped or crashed worker released",
                locks=released,
            )
        self._tasks = [
            asyncio.create_task(self._loop(i), name=f"receiver-worker-{i}")
            for i in range(self._concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        if self._prune:
            self._tasks.append(asyncio.create_task(self._prune_loop(), name="pruner"))

    async def stop(self) -> None:
        """Stop consuming; unfinished entries stay in the journal."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StoreUnavailableError):
            await self._store.retire(self.consumer, self._clock())

    async def _heartbeat(self) -> None:
        """Keep this incarnation alive in the store.

        It is declared alive for half a lease, renewed three times as often:
        after a crash it is known dead before any lease it held lapses, so
        whoever takes an entry over also takes over its claims.
        """
        while not self._stopping.is_set():
            await asyncio.sleep(max(self._alive_for.total_seconds() / 3, 0.02))
            try:
                await self._store.register(
                    self.consumer, self._clock(), self._alive_for
                )
            except StoreUnavailableError as exc:
                log.warning("heartbeat_failed", error=str(exc))

    async def _prune_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                dropped = await self._store.prune(self._clock())
                if dropped:
                    log.info("journal_pruned", dropped=dropped)
            except StoreUnavailableError as exc:
                log.warning("prune_failed", error=str(exc))
            await asyncio.sleep(self._prune_every.total_seconds())

    async def _loop(self, index: int) -> None:
        backoff = 0.5
        consumer = f"{self.consumer}/{index}"
        while not self._stopping.is_set():
            try:
                # One consumer name per task: a task completes what it claimed
                # before claiming again, which lets a store hand back entries
                # whose delivery was lost mid-call.
                lease = await self._claim(consumer)
            except StoreUnavailableError as exc:
                log.warning("journal_unavailable", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if lease is None:
                continue
            try:
                await self._attempt(lease, index)
            except Exception:  # the supervisor: a worker task never dies
                log.exception("entry_failed", payload_id=lease.entry.id)
                await asyncio.sleep(1.0)

    async def _claim(self, consumer: str) -> Lease | None:
        if self._bell is None:
            return await self._store.claim(consumer, 1.0, self._clock())
        # Armed before looking: a ring that arrives while the claim runs is
        # kept, so a payload journaled meanwhile is never slept through.
        self._bell.armed()
        lease = await self._store.claim(consumer, 0.0, self._clock())
        if lease is None:
            await self._bell.wait(IDLE_RECHECK)
        return lease

    async def _attempt(self, lease: Lease, index: int) -> None:
        """Decide one claimed entry; hand it back or park it if that fails."""
        entry = lease.entry
        if entry.attempts > self.max_attempts:
            await self._park(
                lease,
                f"claimed {entry.attempts - 1} times without finishing (the worker "
                "crashed, was stopped or hung while deciding it)",
            )
            return
        renewing = asyncio.create_task(self._renew(lease), name=f"lease-{entry.id}")
        try:
            await self._handle(entry, index)
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (handed back, then parked)
            error = self._processor.scrub(describe_error(exc))
            if entry.attempts >= self.max_attempts:
                await self._park(
                    lease, f"failed {entry.attempts} times; last error: {error}"
                )
            else:
                log.warning(
                    "entry_attempt_failed",
                    payload_id=entry.id,
                    attempts=entry.attempts,
                    error=error,
                )
                await self._store.release(lease, self._clock(), error)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _park(self, lease: Lease, reason: str) -> None:
        await self._store.park(lease, reason, self._clock())
        log.error(
            "entry_parked",
            payload_id=lease.entry.id,
            attempts=lease.entry.attempts,
            reason=reason,
            detail="set aside, not retried until POST /api/v1/parked/{id}/retry "
            "or `receiver replay --from`",
        )
        if self._metrics is not None:
            self._metrics.journal_parked.inc()

    async def _renew(self, lease: Lease) -> None:
        """Renew the lease every third of its length while the entry is decided."""
        current: Lease | None = lease
        while current is not None:
            await asyncio.sleep(max(self._lease.total_seconds() / 3, 0.05))
            try:
                current = await self._store.renew(current, self._clock())
            except StoreUnavailableError as exc:
                log.warning("lease_not_renewed", error=str(exc))
                continue
            if current is None:
                log.warning("lease_lost", payload_id=lease.entry.id)

    async def _handle(self, entry: JournalEntry, index: int) -> None:
        structlog.contextvars.bind_contextvars(payload_id=entry.id, worker=index)
        backoff = 0.5
        try:
            while True:
                try:
                    try:
                        traces = await self._processor.process(entry)
                    except InputError as exc:
                        # Accepted bodies were validated at the edge; one that no
                        # longer parses is recorded as such, not retried forever.
                        log.warning("payload_unprocessable", error=str(exc))
                        traces = []
                    if self._outbox is not None:
                        await self._outbox(traces)
                    await self._store.complete(entry.id, TraceRecords(traces))
                    if self._on_complete is not None:
                        handed = self._on_complete(traces)
                        if handed is not None:
                            # It may wait for room (the incident queue): this
                            # worker then claims nothing new, and the backlog
                            # stays in the journal, not in memory.
                            await handed
                    break
                except StoreUnavailableError as exc:
                    if self._stopping.is_set():
                        return
                    log.warning(
                        "decision_not_recorded", error=str(exc), retry_in=backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
            if self._metrics is not None:
                await self._observe()
        finally:
            structlog.contextvars.unbind_contextvars("payload_id", "worker")

    async def _observe(self) -> None:
        assert self._metrics is not None  # noqa: S101 (callers check)
        now = time.monotonic()
        if now - self._observed < OBSERVE_EVERY:
            return
        self._observed = now
        try:
            count, oldest = await self._store.pending()
            parked = await self._store.parked_count()
        except StoreUnavailableError:
            return
        self._metrics.journal_depth.set(count)
        self._metrics.journal_parked.set(parked)
        age = (self._clock() - oldest).total_seconds() if oldest else 0.0
        self._metrics.journal_oldest_age.set(max(age, 0.0))
