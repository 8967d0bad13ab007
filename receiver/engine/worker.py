"""Consume the journal: parse each accepted payload, plan, run, record, mark done.

Started and stopped by the app (``cleanup_ctx``), or by a separate worker
process. Each worker is one *incarnation* (host, pid, random): it registers
itself in the store and keeps renewing that while it runs, and on start it
recovers what dead incarnations left (their target locks are released; their
interrupted remediations are re-checked by the runner). Entries are claimed in
batches (up to ``batch`` at once, one store call, each under its own ``Lease``)
into a small buffer the worker's tasks take from one by one, and what those
entries would each read first (their acknowledgements) is read for the batch in
one call (``Processor.prepare``); every lease is renewed until its entry is
finished. Once a task has decided an entry it hands
the recording to a task of its own and decides the next: the records of entries
decided close together are then written together (``Recorder``, group commit),
first (a decision is visible as soon as it is made), and an entry is marked done
only after its decisions are recorded (if the store fails meanwhile, the write
is retried with backoff) and its traces were handed over and folded into the
incidents (``hand_over``), again in batches: a crash before the
done-mark decides it again, and nothing downstream takes it twice (the sink
outbox and the incidents each skip what they already have). What waits to be recorded
is bounded (``FINISH_ALERTS``). Each alert of a payload is decided on its own: an
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
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from receiver.engine.doorbell import WorkerBell
from receiver.engine.processing import Prepared, Processor, TraceRecords
from receiver.engine.recording import Recorder
from receiver.engine.runner import describe_error
from receiver.errors import InputError, StoreUnavailableError
from receiver.metrics import Metrics
from receiver.model import AlertTrace
from receiver.retrying import cancel_and_wait
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
# Entries taken per claim: one store call (and, on SQLite, one transaction)
# instead of one per entry. Claimed entries wait in the worker's buffer, leased
# to it, until a task is free: a bound on what one replica holds back from the
# others.
CLAIM_BATCH = 64
# Decided alerts that may wait in memory to be recorded: past this, deciding
# waits for the writes (an entry bigger than this still goes, alone).
FINISH_ALERTS = 5000


_Stage = asyncio.Future[None]


async def _after(stage: _Stage | None) -> None:
    """Wait until the entry decided before passed a stage (at once if it has)."""
    if stage is not None and not stage.done():
        # Shielded: a task stopped while waiting leaves the stage to its owner.
        await asyncio.shield(stage)


def _passed(stage: _Stage) -> None:
    if not stage.done():
        stage.set_result(None)


def consumer_name() -> str:
    """A name for this process as a journal consumer and lock owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"


def utc_now() -> datetime:
    """The default clock of a worker that was given none."""
    return datetime.now(UTC)


# Takes a payload's traces (the incidents): returns once they are queued, with
# an awaitable that ends once they are folded in (or None: nothing to wait for).
HandOver = Callable[[list[AlertTrace]], Awaitable[Awaitable[None] | None]]


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
        hand_over: HandOver | None = None,
        outbox: Callable[[list[AlertTrace]], Awaitable[None]] | None = None,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        bell: WorkerBell | None = None,
        batch: int = CLAIM_BATCH,
    ) -> None:
        # Rung by the edge process after each payload it journals: the worker
        # sleeps on it instead of polling the journal.
        self._bell = bell
        # Awaited with a payload's traces before they are recorded (the
        # incidents): it returns once they are queued (waiting for room there
        # is the backpressure the worker feels), with what ends once they are
        # folded, which the worker awaits before it records. Never raises.
        self._hand_over = hand_over
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
        self._batch = max(batch, 1)
        # Records as soon as decided; done-marks once folded (``_finish``).
        self._records = Recorder(store, limit=4 * self._batch, records_only=True)
        self._recorder = Recorder(store, limit=4 * self._batch)
        # Claimed entries no task has started yet, taken in order.
        self._buffer: deque[Lease] = deque()
        # One task claims at a time (and waits on the bell); the others wait
        # for the buffer to fill.
        self._claiming = asyncio.Lock()
        # Every claimed, unfinished lease, by entry id: the renewer keeps them.
        self._held: dict[str, Lease] = {}
        # Claims are made as consumer ``{incarnation}/{slot}``; a slot claims
        # again only once every entry it claimed is finished, so a store may
        # hand a slot back what it delivered to it but lost on the way. Three
        # per task: an entry holds its slot until marked done, after its
        # records, the outbox and the fold (with two, sustained decided/s on
        # Redis fell from 974 to 654 when the done-mark became a write of its
        # own; with three, 909; bench/RESULTS.md round eighteen).
        self._slots = [0] * (3 * concurrency)
        self._slot_of: dict[str, int] = {}
        self._slot_freed = asyncio.Event()
        # What was read ahead for each claimed entry's batch, until it is decided.
        self._prepared: dict[str, Prepared] = {}
        # The last decided entry's stages: outbox passed, handed over.
        self._outboxed: _Stage | None = None
        self._handed: _Stage | None = None
        # Decided entries being recorded, each with its number of alerts.
        self._finishing: dict[asyncio.Task[None], int] = {}
        self._finishing_alerts = 0
        self._finish_room = asyncio.Event()
        # For the bench and the logs: claim calls, and those that found nothing.
        self.claims = 0
        self.empty_claims = 0
        self._drained = False

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
        self._tasks.append(asyncio.create_task(self._renewer(), name="lease-renewer"))
        if self._prune:
            self._tasks.append(asyncio.create_task(self._prune_loop(), name="pruner"))

    async def stop(self) -> None:
        """Stop consuming; unfinished entries stay in the journal.

        The error a background task died of earlier (a bug, not the store
        down) is raised only after the unstarted entries are handed back, the
        incarnation retired and the decided flushed. A cancellation of the
        stop itself is raised at once: a bounded shutdown stays bounded.
        """
        self._stopping.set()
        error: Exception | None = None
        try:
            await cancel_and_wait(*self._tasks, *self._finishing)
        except Exception as exc:  # noqa: BLE001 (raised below, once handed back)
            error = exc
        await self._records.aclose()
        await self._recorder.aclose()
        # Claimed but never started: handed back now, not after their lease.
        with contextlib.suppress(StoreUnavailableError):
            while self._buffer:
                lease = self._buffer.popleft()
                await self._store.release(
                    lease, self._clock(), "handed back unstarted by a stopping worker"
                )
        with contextlib.suppress(StoreUnavailableError):
            await self._store.retire(self.consumer, self._clock())
        self._processor.flush_decided()
        if error is not None:
            raise error

    @property
    def recorded(self) -> tuple[int, int]:
        """Store writes that completed entries so far, and how many entries."""
        return self._recorder.writes, self._recorder.entries

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
            # Not a plain sleep: a stop whose cancellation the store's client
            # swallowed mid-prune (seen on Redis) still ends this loop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self._prune_every.total_seconds()
                )

    async def _loop(self, index: int) -> None:
        while not self._stopping.is_set():
            lease = await self._next()
            if lease is None:
                continue
            handed = False
            try:
                handed = await self._attempt(lease, index)
            except Exception:  # the supervisor: a worker task never dies
                log.exception("entry_failed", payload_id=lease.entry.id)
                await asyncio.sleep(1.0)
            finally:
                if not handed:
                    self._finished(lease)

    async def _next(self) -> Lease | None:
        """The next claimed entry: from the buffer, else from a new claim."""
        async with self._claiming:
            if not self._buffer:
                self._buffer.extend(await self._claim_with_backoff())
            return self._buffer.popleft() if self._buffer else None

    async def _claim_with_backoff(self) -> list[Lease]:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                return await self._claim()
            except StoreUnavailableError as exc:
                log.warning("journal_unavailable", error=str(exc), retry_in=backoff)
            except Exception:  # a worker task never dies (a corrupt file, a bug)
                log.exception("journal_claim_failed", retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
        return []

    async def _claim(self) -> list[Lease]:
        slot = await self._free_slot()
        consumer = f"{self.consumer}/{slot}"
        if self._bell is None:
            leases = await self._store.claim_batch(
                consumer, self._batch, 1.0, self._clock()
            )
        else:
            if self._drained:
                # The last claim took all there was, with the bell armed
                # before it: whatever was journaled since has rung.
                self._drained = False
                await self._bell.wait(IDLE_RECHECK)
            # Armed before looking: a ring that arrives while the claim runs
            # is kept, so a payload journaled meanwhile is never slept through.
            self._bell.armed()
            leases = await self._store.claim_batch(
                consumer, self._batch, 0.0, self._clock()
            )
            self._drained = len(leases) < self._batch
        self.claims += 1
        if not leases:
            self.empty_claims += 1
        for lease in leases:
            self._held[lease.entry.id] = lease
            self._slot_of[lease.entry.id] = slot
            self._slots[slot] += 1
        prepared = await self._prepare(leases)
        if prepared is not None:
            for lease in leases:
                self._prepared[lease.entry.id] = prepared
        return leases

    async def _prepare(self, leases: list[Lease]) -> Prepared | None:
        """Read ahead what the batch's entries need (a failure: each reads its own)."""
        try:
            return await self._processor.prepare([lease.entry for lease in leases])
        except StoreUnavailableError:
            return None
        except Exception:  # the claim stands: each entry is decided as it comes
            log.exception("batch_not_prepared")
            return None

    async def _free_slot(self) -> int:
        while True:
            for slot, held in enumerate(self._slots):
                if held == 0:
                    return slot
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _finished(self, lease: Lease) -> None:
        """The entry was completed, handed back, parked or abandoned."""
        entry_id = lease.entry.id
        self._held.pop(entry_id, None)
        self._prepared.pop(entry_id, None)
        slot = self._slot_of.pop(entry_id, None)
        if slot is not None:
            self._slots[slot] -= 1
            if self._slots[slot] == 0:
                self._slot_freed.set()

    async def _attempt(self, lease: Lease, index: int) -> bool:
        """Decide one claimed entry, then hand it to a task that records it.

        Returns whether it was handed over (that task finishes the lease);
        otherwise it was parked or handed back here.
        """
        entry = lease.entry
        if entry.attempts > self.max_attempts:
            await self._park(
                lease,
                f"claimed {entry.attempts - 1} times without finishing (the worker "
                "crashed, was stopped or hung while deciding it)",
            )
            return False
        try:
            traces = await self._decide(entry, index)
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (handed back, then parked)
            await self._failed(lease, exc)
            return False
        if traces is None:
            return False  # stopping: the entry stays claimed, as after a crash
        await self._room_to_finish(len(traces))
        # Entries pass their traces on in the order they were decided: each
        # waits for the one before (only ever when that one has to wait).
        loop = asyncio.get_running_loop()
        before = (self._outboxed, self._handed)
        self._outboxed, self._handed = loop.create_future(), loop.create_future()
        structlog.contextvars.bind_contextvars(payload_id=entry.id, worker=index)
        try:
            # The context (the payload's log fields) is the task's own copy.
            task = asyncio.create_task(
                self._finish(lease, traces, before, (self._outboxed, self._handed)),
                name=f"record-{entry.id}",
            )
        finally:
            structlog.contextvars.unbind_contextvars("payload_id", "worker")
        self._finishing[task] = len(traces)
        self._finishing_alerts += len(traces)
        task.add_done_callback(self._finish_done)
        return True

    async def _failed(self, lease: Lease, exc: Exception) -> None:
        """Hand an entry that failed as a whole back, or park it at the limit."""
        entry = lease.entry
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
            await self._store.release(
                self._held.get(entry.id, lease), self._clock(), error
            )

    async def _room_to_finish(self, alerts: int) -> None:
        """Wait while decided alerts waiting to be recorded are over the bound.

        Deciding goes on while earlier entries are written (so their writes go
        together); the bound keeps what waits in memory small.
        """
        while self._finishing and self._finishing_alerts + alerts > FINISH_ALERTS:
            self._finish_room.clear()
            await self._finish_room.wait()

    def _finish_done(self, task: asyncio.Task[None]) -> None:
        self._finishing_alerts -= self._finishing.pop(task, 0)
        self._finish_room.set()

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

    async def _renewer(self) -> None:
        """Renew every held lease each third of its length (buffered ones too).

        A claim's worth at once: on SQLite they share one transaction (group
        commit), on Redis the round trips overlap. One by one, the hundreds a
        busy worker holds took a durable transaction each, every round.
        """
        while not self._stopping.is_set():
            await asyncio.sleep(max(self._lease.total_seconds() / 3, 0.05))
            held = list(self._held.items())
            for start in range(0, len(held), self._batch):
                chunk = held[start : start + self._batch]
                outcomes = await asyncio.gather(
                    *(self._store.renew(lease, self._clock()) for _, lease in chunk),
                    return_exceptions=True,
                )
                for (entry_id, _), renewed in zip(chunk, outcomes, strict=True):
                    self._renewed(entry_id, renewed)

    def _renewed(self, entry_id: str, renewed: Lease | BaseException | None) -> None:
        if isinstance(renewed, StoreUnavailableError):
            log.warning("lease_not_renewed", error=str(renewed))
            return
        if isinstance(renewed, Exception):  # the others are still renewed
            log.error(
                "lease_not_renewed",
                payload_id=entry_id,
                error=self._processor.scrub(describe_error(renewed)),
                exc_info=renewed,
            )
            return
        if isinstance(renewed, BaseException):
            raise renewed
        if entry_id not in self._held:
            return  # finished meanwhile
        if renewed is None:
            log.warning("lease_lost", payload_id=entry_id)
            del self._held[entry_id]
        else:
            self._held[entry_id] = renewed

    async def _decide(self, entry: JournalEntry, index: int) -> list[AlertTrace] | None:
        """An entry's traces; None if the worker stops while the store is down."""
        structlog.contextvars.bind_contextvars(payload_id=entry.id, worker=index)
        backoff = 0.5
        try:
            while True:
                try:
                    return await self._processor.process(
                        entry, self._prepared.pop(entry.id, None)
                    )
                except InputError as exc:
                    # Accepted bodies were validated at the edge; one that no
                    # longer parses is recorded as such, not retried forever.
                    log.warning("payload_unprocessable", error=str(exc))
                    return []
                except StoreUnavailableError as exc:
                    if self._stopping.is_set():
                        return None
                    log.warning("entry_not_decided", error=str(exc), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            structlog.contextvars.unbind_contextvars("payload_id", "worker")

    async def _finish(
        self,
        lease: Lease,
        traces: list[AlertTrace],
        before: tuple[_Stage | None, _Stage | None],
        mine: tuple[_Stage, _Stage],
    ) -> None:
        """Record a decided entry, pass it on, mark it done.

        Runs as a task of its own, so the worker decides the next entry
        meanwhile and the records of entries decided close together are written
        together. The outbox and the hand-over (``hand_over``) see the entries
        in the order they were decided: ``before`` are the stages of the entry
        decided just before, ``mine`` this entry's, done once it passed them
        (or failed). Its decision records are written first (a decision is
        visible as soon as it is made); the entry is marked done only once
        the outbox took its traces and the incidents folded them: a crash
        before that decides it again, and none of them takes it twice
        (records stand as first written). An unexpected error hands the entry
        back (it is decided again). The records are not written beside the
        fold: on SQLite the writer thread, waiting for the GIL after each row
        while the fold holds it, took 1.9 s to record a 5,000-alert storm
        instead of 1.0 s.
        """
        entry = lease.entry
        outboxed, handed_over = mine
        folded: Awaitable[None] | None = None
        written = False
        backoff = 0.5
        try:
            while True:
                try:
                    if not written:
                        await self._records.record(entry.id, TraceRecords(traces))
                        written = True
                    folded = await self._pass_on(traces, before, mine) or folded
                    if folded is not None:
                        await folded
                        folded = None
                    # The records are written: the done-mark alone.
                    await self._recorder.record(entry.id, ())
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
        except Exception as exc:  # noqa: BLE001 (handed back, then parked)
            try:
                await self._failed(lease, exc)
            except Exception:  # a finishing task never dies silently
                log.exception("entry_failed", payload_id=entry.id)
        finally:
            _passed(outboxed)
            _passed(handed_over)
            self._finished(lease)

    async def _pass_on(
        self,
        traces: list[AlertTrace],
        before: tuple[_Stage | None, _Stage | None],
        mine: tuple[_Stage, _Stage],
    ) -> Awaitable[None] | None:
        """The outbox, then the hand-over, each in turn; what ends once folded.

        A stage passed on an earlier try is not passed again (None then).
        """
        outboxed, handed_over = mine
        folded = None
        if self._outbox is not None and not outboxed.done():
            await _after(before[0])
            await self._outbox(traces)
        _passed(outboxed)
        if self._hand_over is not None and not handed_over.done():
            await _after(before[1])
            # It may wait for room (the incident queue): the entry's slot
            # stays taken, so this worker soon claims nothing new and the
            # backlog stays in the journal.
            folded = await self._hand_over(traces)
        _passed(handed_over)
        return folded

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
