"""Hand finished decisions to the sinks through a durable outbox, and record outcomes.

``create_app`` gives the worker ``SinkDispatcher.put``, which it awaits right
before a payload's decisions are recorded (``store.complete``). ``put`` writes
one outbox row per trace (``receiver.sinks.outbox``) and returns; when the
outbox already holds ``max_pending`` deliveries it waits for room instead
(backpressure: the backlog stays in the journal, nothing is dropped). Written
before the journal entry is completed, a crash between the two re-decides the
entry and writes the same row again, which the outbox ignores: no delivery is
lost between the decision and the outbox.

``start`` runs ``concurrency`` delivery loops. Each claims a due row (for a
lease of a minute, renewed every third of it while the delivery runs:
``receiver.holding``; a worker killed mid-delivery leaves it to be claimed
again when the lease lapses; on SQLite, one instance alone, the next worker
hands such rows back as it starts), delivers it to each sink not yet done,
records each sink's outcome on the row as it finishes, writes the outcomes to
the decision log and deletes the row. A row that cannot be finished (storage
down, an unexpected error, a crash) is retried with the shared backoff
(``receiver.retrying``) and parked after ``max_attempts`` claims: kept in the
outbox, counted in ``receiver_sink_outbox_parked``, logged at error. A delivery
whose claim cannot be renewed (the outbox does not answer) is cut off a sixth
of the lease before the claim lapses, so no other worker delivers the row
beside it: a failed attempt like any other (``sink_delivery_cut_off``, then
retried or parked). One whose claim was taken meanwhile (this worker did not
run for a whole lease, and another claimed the row) stops and writes nothing of
it (``sink_delivery_claim_lost``). ``aclose`` (shutdown) gives deliveries in
flight a grace period, then hands them back to the outbox for the next start.

Which sinks: the playbook's ``sinks`` if it names them, else settings ``sinks``.
Only actionable, matched alerts are sent (acknowledgements and notes, our own
included, are not: that is what keeps our own ``incident.annotated`` echo from
looping).

Duplicates: before sending, the dispatcher marks keys in the outbox, owned by
the row. "occurrence" sinks (PagerDuty, Slack) post when an alert occurrence
(fingerprint, start, status) is first decided and again only when a
remediation reaches a new outcome (executed, failed, awaiting approval):
resends, redeliveries and replays that change nothing post nothing. "decision"
sinks (webhook) post once per decision record. A key another row owns is a
duplicate; a key this row owns (it crashed after marking) is still its own, so
a crash never turns a delivery into a "duplicate". A crash after a sink
answered but before the row noted it sends that sink's message again on the
next claim: PagerDuty events carry a deterministic ``dedup_key`` (PagerDuty
drops the repeat); a note, a Slack message or a webhook call can repeat once.

Dry-run (a trace decided in ``dry-run`` mode): nothing is contacted. Each sink
the trace would have gone to gets a ``skipped`` outcome saying so, recorded like
any other, under dedupe keys of its own (``dry:...``), so resends do not repeat
it and a later switch to ``diagnose`` still posts the occurrence.

Outcomes are written to the decision log as a follow-up record
(``{"record": "sinks", ...}``) under the id ``<payload id>.sinks``, so
``GET /api/v1/decisions?payload_id=<id>.sinks`` shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog

from receiver.errors import ReceiverError
from receiver.holding import ClaimHolder, ClaimLapsingError, ClaimLostError
from receiver.model import AlertTrace, Decision, StepKind, iso
from receiver.retrying import (
    Doubling,
    RetryPolicy,
    backoff,
    cancel_and_wait,
    stop_if_cancelled,
)
from receiver.rulebook.schema import Playbook
from receiver.sinks.delivery import Dedupe, SinkError, SinkOutcome
from receiver.sinks.outbox import Outbox, OutboxRow, decode_trace, encode_trace
from receiver.sinks.render import is_own_note

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

log = structlog.get_logger("receiver.sinks")

SINKS_SUFFIX = ".sinks"
_ACTING = (Decision.EXECUTED, Decision.FAILED, Decision.AWAITING_APPROVAL)
# Between outbox attempts of a row that could not be finished (the sinks
# themselves retry each HTTP call with ``Deliverer``'s policy).
OUTBOX_RETRY = RetryPolicy(multiplier=1.0, cap=60.0)


class Sink(Protocol):
    """Posts one decision trace somewhere people look."""

    name: str
    dedupe: Dedupe

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        """Deliver ``trace``; raise ``SinkError`` with a safe message on failure."""
        ...

    async def aclose(self) -> None:
        """Release what the sink holds."""
        ...


class SinkStore(Protocol):
    """The store operation the dispatcher needs (``receiver.store.Store``)."""

    async def record(self, records: Sequence[Mapping[str, JSONValue]]) -> None:
        """Append decision records that belong to no journal entry."""
        ...


def playbook_sinks(
    trace: AlertTrace, playbooks: Mapping[str, Playbook], default: Sequence[str]
) -> list[str]:
    """Sinks for a trace: each matched playbook's own, else the default, in order."""
    names: list[str] = []
    for match in trace.matches:
        playbook = playbooks.get(match.playbook)
        chosen = (
            playbook.sinks
            if playbook is not None and playbook.sinks is not None
            else default
        )
        names += [n for n in chosen if n not in names]
    return names


DRY_RUN_DETAIL = "dry-run: not posted (nothing is contacted in dry-run mode)"


def dedupe_keys(sink: Sink, trace: AlertTrace) -> list[str]:
    """The ``store.seen`` keys that make a delivery new or a duplicate."""
    alert = trace.alert
    # What dry-run withheld must not count as posted once the mode changes.
    prefix = "dry:sink" if trace.mode == "dry-run" else "sink"
    if sink.dedupe == "decision":
        return [f"{prefix}:{sink.name}:{trace.payload_id}:{alert.fingerprint}"]
    base = (
        f"{prefix}:{sink.name}:{alert.fingerprint}:{iso(alert.starts_at)}"
        f":{alert.status}"
    )
    keys = [base]
    for match in trace.matches:
        for index, step in enumerate(match.steps):
            if step.kind is StepKind.REMEDIATION and step.decision in _ACTING:
                keys.append(f"{base}:{match.rule}:{index}:{step.decision.value}")
    return keys


def row_id(trace: AlertTrace, index: int) -> str:
    """The outbox row of a payload's ``index``-th trace: the same on a re-decision."""
    return f"{trace.payload_id}:{index}:{trace.alert.fingerprint}"


def wanted(trace: AlertTrace) -> str:
    """Why a trace goes to no sink, or ``""`` if it should be sent."""
    note = trace.alert.annotations.get("note", "")
    if note and is_own_note(note):
        return "our own PagerDuty note"
    if not trace.alert.actionable:
        return "event is recorded only"
    if not trace.matches:
        return "no rule matched"
    return ""


class SinkDispatcher:
    """Durable, bounded delivery of decision traces to sinks through the outbox."""

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        *,
        store: SinkStore,
        outbox: Outbox,
        choose: Callable[[AlertTrace], Sequence[str]],
        clock: Callable[[], datetime],
        concurrency: int = 4,
        max_pending: int = 1000,
        max_attempts: int = 5,
        lease: timedelta = timedelta(minutes=1),
        renew_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry: RetryPolicy = OUTBOX_RETRY,
        poll: float = 1.0,
        dedupe_ttl: timedelta = timedelta(days=7),
        scrub: Callable[[str], str] = lambda text: text,
        on_outcome: Callable[[str, str], None] | None = None,
        on_outcomes: Callable[[AlertTrace, list[str]], None] | None = None,
        on_counts: Callable[[int, int], None] | None = None,
    ) -> None:
        # Told (sink, status) of every delivery attempt's outcome (the metrics).
        self._on_outcome = on_outcome
        # Told each trace's outcome lines (the incident timeline); must not raise.
        self._on_outcomes = on_outcomes
        # Told (pending, parked) rows after each change (the metrics).
        self._on_counts = on_counts
        self._sinks = dict(sinks)
        self._store = store
        self._outbox = outbox
        self._choose = choose
        self._clock = clock
        self._concurrency = concurrency
        self._max_pending = max_pending
        self.max_attempts = max_attempts
        self._lease = lease
        # A claim is renewed every third of the lease while its delivery runs
        # (``renew_sleep`` waits in between; tests pass one on their clock): a
        # slow delivery keeps its row, and a dead worker's row is claimed again
        # within one lease. A delivery whose claim cannot be renewed is cut
        # off a sixth of the lease before it lapses: from then on another
        # worker may claim the row and deliver it.
        self._holder = ClaimHolder(
            clock, lease, renew_sleep, events="sink_outbox", logger="receiver.sinks"
        )
        self._retry = retry
        self._poll = poll
        self._ttl = dedupe_ttl
        self._scrub = scrub
        self._loops: list[asyncio.Task[None]] = []
        self._reclaiming: asyncio.Task[None] | None = None
        self._closed = False
        # Set when rows are added (wakes idle loops).
        self._work = asyncio.Event()
        # Replaced by a fresh one, after being set, whenever a row finishes,
        # parks or is handed back (wakes ``drain`` and a waiting ``put``).
        self._changed = asyncio.Event()

    async def put(self, traces: Sequence[AlertTrace]) -> None:
        """Write the traces of one payload to the outbox; waits while it is full.

        Raises ``ReceiverError`` (``StoreUnavailableError``) if the outbox cannot
        be written: the worker then retries before completing the entry.
        """
        rows: list[tuple[str, str, str, Sequence[str]]] = []
        for index, trace in enumerate(traces):
            why = wanted(trace)
            if why:
                log.debug(
                    "sinks_not_needed", fingerprint=trace.alert.fingerprint, why=why
                )
                continue
            names = list(self._choose(trace))
            if names:
                rows.append(
                    (row_id(trace, index), uuid.uuid4().hex, encode_trace(trace), names)
                )
        if not rows:
            return
        self.start()
        while True:
            changed = self._changed
            pending, _parked = await self._outbox.counts()
            if pending < self._max_pending:
                break
            log.info("sink_outbox_full", pending=pending, limit=self._max_pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._poll)
        await self._outbox.put(rows, self._clock())
        self._work.set()

    def start(self) -> None:
        """Start the delivery loops (also rows left by an earlier run)."""
        if self._loops or self._closed:
            return
        loop = asyncio.get_running_loop()
        # First, rows a stopped process had claimed are handed back (where the
        # outbox can tell nobody else is delivering them): the loops' first
        # claims find them due, not a lease later.
        self._reclaiming = loop.create_task(self._reclaim(), name="sink-outbox-reclaim")
        self._loops = [
            loop.create_task(self._loop(self._reclaiming), name=f"sink-outbox-{i}")
            for i in range(self._concurrency)
        ]

    async def _reclaim(self) -> None:
        """Hand back what a stopped process had claimed; never raises."""
        try:
            count = await self._outbox.reclaim(self._clock())
        except ReceiverError as exc:
            log.warning(
                "sink_outbox_reclaim_failed",
                error=str(exc),
                detail="deliveries a stopped worker had claimed go out once "
                "their lease lapses",
            )
            return
        except Exception:  # the loops start regardless
            log.exception("sink_outbox_reclaim_failed")
            return
        if count:
            log.warning(
                "sink_outbox_reclaimed",
                rows=count,
                detail="deliveries a stopped worker had claimed and not finished "
                "are made now",
            )

    async def drain(self) -> None:
        """Wait until the outbox holds nothing but parked rows (tests, tools)."""
        self.start()
        while True:
            changed = self._changed
            pending, _parked = await self._outbox.counts()
            if not pending:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._poll)

    async def counts(self) -> tuple[int, int]:
        """Deliveries waiting or in flight, and parked ones (outbox rows)."""
        return await self._outbox.counts()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _loop(self, first: asyncio.Task[None]) -> None:
        await asyncio.wait([first])  # the hand-back; never raises
        waits = Doubling(first=0.5, cap=10.0)
        while not self._closed:
            stop_if_cancelled()
            self._work.clear()
            try:
                now = self._clock()
                row = await self._outbox.claim(now, self._lease)
            except ReceiverError as exc:
                wait = waits.failed()
                log.warning("sink_outbox_unavailable", error=str(exc), retry_in=wait)
                await asyncio.sleep(wait)
                continue
            except Exception:  # the supervisor: a delivery loop never dies
                wait = waits.failed()
                log.exception("sink_outbox_claim_failed", retry_in=wait)
                await asyncio.sleep(wait)
                continue
            waits.reset()
            if row is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), self._poll)
                continue
            try:
                await self._attempt_row(row, now + self._lease)
            except Exception:  # the supervisor: a delivery loop never dies
                log.exception("sink_outbox_loop_failed", row=row.id)
                await asyncio.sleep(waits.current)
            self._notify()
            await self._observe()

    async def _attempt_row(self, row: OutboxRow, until: datetime) -> None:
        """Deliver ``row``, claimed until ``until``, while that claim holds."""
        if row.attempts > self.max_attempts:
            await self._park(
                row,
                f"claimed {row.attempts - 1} times without finishing (the receiver "
                "crashed, was stopped or hung while delivering it)",
            )
            return
        try:
            await self._holder.hold(
                lambda at: self._outbox.extend(row.id, at, claim=row.claim),
                until,
                lambda: self._deliver(row),
                row=row.id,
                attempts=row.attempts,
            )
        except ClaimLostError:
            # Or too little of the claim was left to start: nothing started.
            self._lost(row)
        except asyncio.CancelledError:
            # Shutdown: hand it back, due at once, for the next start.
            with contextlib.suppress(ReceiverError):
                await self._outbox.release(row.id, self._clock(), claim=row.claim)
            raise
        except Exception as exc:  # noqa: BLE001 (retried, then parked)
            if isinstance(exc, ClaimLapsingError):
                log.warning(
                    "sink_delivery_cut_off",
                    row=row.id,
                    attempts=row.attempts,
                    sinks=[s for s in row.sinks if s not in row.done],
                    detail="its claim could not be renewed and was about to "
                    "lapse; it may have reached the sink",
                )
            error = self._scrub(f"{exc.__class__.__name__}: {exc}")
            if row.attempts >= self.max_attempts:
                await self._park(
                    row, f"failed {row.attempts} times; last error: {error}"
                )
                return
            wait = backoff(self._retry, row.attempts - 1)
            if not await self._outbox.release(
                row.id, self._clock() + timedelta(seconds=wait), claim=row.claim
            ):
                self._lost(row)
                return
            log.warning(
                "sink_delivery_retry",
                row=row.id,
                attempts=row.attempts,
                error=error,
                retry_in=wait,
            )

    def _lost(self, row: OutboxRow) -> None:
        """Log that the claim on ``row`` was found taken (or the row gone)."""
        # Another worker claimed the row since (this one did not run, or could
        # not renew, for a whole lease), or finished it: it is theirs to
        # deliver and to record, and this one writes nothing of its attempt.
        log.warning(
            "sink_delivery_claim_lost",
            row=row.id,
            attempts=row.attempts,
            detail="stopped; left to whoever claimed the row since",
        )

    async def _park(self, row: OutboxRow, reason: str) -> None:
        if not await self._outbox.park(row.id, reason, claim=row.claim):
            self._lost(row)
            return
        log.error(
            "sink_delivery_parked",
            row=row.id,
            attempts=row.attempts,
            sinks=[s for s in row.sinks if s not in row.done],
            reason=reason,
            detail="kept in the sink outbox, not retried; see "
            "receiver_sink_outbox_parked",
        )

    async def _observe(self) -> None:
        if self._on_counts is None:
            return
        try:
            pending, parked = await self._outbox.counts()
        except ReceiverError:
            return
        self._on_counts(pending, parked)

    async def _deliver(self, row: OutboxRow) -> None:
        try:
            trace = decode_trace(row.trace)
        except (ValueError, KeyError, TypeError) as exc:
            await self._park(row, f"damaged outbox row: {exc.__class__.__name__}")
            return
        todo = [name for name in row.sinks if name not in row.done]
        # Every sink runs to its end before the row is retried: one that fails
        # must not leave a sibling still sending (and noting its outcome) while
        # the retry contacts it again.
        results = await asyncio.gather(
            *(self._one(row, n, trace) for n in todo), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # A dying process's own exceptions before a sink's error.
            raise next((e for e in errors if not isinstance(e, Exception)), errors[0])
        fresh = [r for r in results if not isinstance(r, BaseException)]
        finished = dict(row.done) | {
            name: json.dumps(o.to_json()) if o is not None else ""
            for name, o in zip(todo, fresh, strict=True)
        }
        outcomes = [
            SinkOutcome(**json.loads(finished[name]))
            for name in row.sinks
            if finished.get(name)
        ]
        await self._record(trace, outcomes)
        await self._outbox.finish(row.id)

    async def _one(
        self, row: OutboxRow, name: str, trace: AlertTrace
    ) -> SinkOutcome | None:
        outcome = await self._attempt(row, name, trace)
        await self._outbox.progress(
            row.id, name, json.dumps(outcome.to_json()) if outcome is not None else ""
        )
        if outcome is not None and self._on_outcome is not None:
            self._on_outcome(outcome.sink, outcome.status)
        return outcome

    async def _attempt(
        self, row: OutboxRow, name: str, trace: AlertTrace
    ) -> SinkOutcome | None:
        sink = self._sinks.get(name)
        if sink is None:
            return SinkOutcome(
                name,
                "skipped",
                f"sink {name} is not configured in this receiver (see "
                "docs/operations.md, Sinks)",
            )
        # Raises ReceiverError when the outbox is unreachable: the row is retried.
        now = self._clock()
        fresh = [
            await self._outbox.mark(k, row.owner, self._ttl, now)
            for k in dedupe_keys(sink, trace)
        ]
        if not any(fresh):
            log.debug("sink_duplicate", sink=name, fingerprint=trace.alert.fingerprint)
            return None
        if trace.mode == "dry-run":
            log.info(
                "sink_not_posted",
                sink=name,
                why="dry-run",
                fingerprint=trace.alert.fingerprint,
                payload_id=trace.payload_id,
            )
            return SinkOutcome(name, "skipped", DRY_RUN_DETAIL)
        try:
            outcome = await sink.send(trace)
        except SinkError as exc:
            outcome = SinkOutcome(name, "failed", self._scrub(str(exc)), exc.attempts)
        except httpx.HTTPError as exc:
            outcome = SinkOutcome(name, "failed", f"{exc.__class__.__name__}")
        outcome = SinkOutcome(
            outcome.sink, outcome.status, self._scrub(outcome.detail), outcome.attempts
        )
        log.info(
            "sink_finished",
            sink=name,
            status=outcome.status,
            detail=outcome.detail,
            attempts=outcome.attempts,
            fingerprint=trace.alert.fingerprint,
            payload_id=trace.payload_id,
        )
        return outcome

    async def _record(self, trace: AlertTrace, outcomes: list[SinkOutcome]) -> None:
        if not outcomes:
            return
        if self._on_outcomes is not None:
            self._on_outcomes(
                trace, [f"{o.sink}: {o.status}: {o.detail}" for o in outcomes]
            )
        record_id = f"{trace.payload_id}{SINKS_SUFFIX}"
        record: JSONObject = {
            "record": "sinks",
            "payload_id": record_id,
            "decision_payload_id": trace.payload_id,
            "fingerprint": trace.alert.fingerprint,
            "status": trace.alert.status,
            "labels": dict(trace.alert.labels),
            "decided_at": iso(self._clock()),
            "sinks": [o.to_json() for o in outcomes],
            "matches": [],
        }
        # Raises ReceiverError if the log is unreachable: the row is retried
        # (the sinks it finished are not contacted again).
        await self._store.record([record])

    async def aclose(self, grace: float = 10.0) -> None:
        """Stop claiming, give deliveries ``grace`` seconds, hand back the rest."""
        self._closed = True
        self._work.set()
        if self._loops:
            _done, late = await asyncio.wait(self._loops, timeout=grace)
            await cancel_and_wait(*late)
            if late:
                log.warning(
                    "sink_deliveries_handed_back",
                    count=len(late),
                    detail="still in the sink outbox; delivered after the next start",
                )
            self._loops = []
        if self._reclaiming is not None:
            await asyncio.wait([self._reclaiming], timeout=grace)
            self._reclaiming.cancel()  # a no-op once it is done
        for sink in self._sinks.values():
            await sink.aclose()
        await self._outbox.close()
