"""Hand finished decisions to the sinks in the background, and record the outcomes.

``create_app`` gives the worker ``SinkDispatcher.submit``, which it calls right after
a payload's decisions are recorded (``store.complete``). ``submit`` never blocks and
never raises: each trace becomes a task in a bounded set, at most ``concurrency``
deliver at once, and what does not fit is dropped with a log line. ``aclose``
(application shutdown) waits a grace period for deliveries in flight.

Which sinks: the playbook's ``sinks`` if it names them, else settings ``sinks``.
Only actionable, matched alerts are sent (acknowledgements and notes, our own
included, are not: that is what keeps our own ``incident.annotated`` echo from
looping).

Duplicates: before sending, the dispatcher marks keys with ``store.seen``.
"occurrence" sinks (PagerDuty, Slack) post when an alert occurrence (fingerprint,
start, status) is first decided and again only when a remediation reaches a new
outcome (executed, failed, awaiting approval): resends, redeliveries and replays
that change nothing post nothing. "decision" sinks (webhook) post once per
decision record. A key is marked before sending: at most once, never twice.

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
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog

from receiver.errors import ReceiverError
from receiver.model import AlertTrace, Decision, StepKind, iso
from receiver.rulebook.schema import Playbook
from receiver.sinks.delivery import Dedupe, SinkError, SinkOutcome
from receiver.sinks.render import is_own_note

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

log = structlog.get_logger("receiver.sinks")

SINKS_SUFFIX = ".sinks"
_ACTING = (Decision.EXECUTED, Decision.FAILED, Decision.AWAITING_APPROVAL)


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
    """The two store operations the dispatcher needs (``receiver.store.Store``)."""

    async def seen(self, key: str, ttl: timedelta, now: datetime) -> bool:
        """Mark ``key`` until ``now + ttl``; True if it still was marked."""
        ...

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
    """Bounded background delivery of decision traces to sinks."""

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        *,
        store: SinkStore,
        choose: Callable[[AlertTrace], Sequence[str]],
        clock: Callable[[], datetime],
        concurrency: int = 4,
        max_pending: int = 1000,
        dedupe_ttl: timedelta = timedelta(days=7),
        scrub: Callable[[str], str] = lambda text: text,
        on_outcome: Callable[[str, str], None] | None = None,
        on_outcomes: Callable[[AlertTrace, list[str]], None] | None = None,
    ) -> None:
        # Told (sink, status) of every delivery attempt's outcome (the metrics).
        self._on_outcome = on_outcome
        # Told each trace's outcome lines (the incident timeline); must not raise.
        self._on_outcomes = on_outcomes
        self._sinks = dict(sinks)
        self._store = store
        self._choose = choose
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._max_pending = max_pending
        self._ttl = dedupe_ttl
        self._scrub = scrub
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(self, traces: Sequence[AlertTrace]) -> None:
        """Queue the traces of one payload for delivery; never blocks or raises."""
        for trace in traces:
            why = wanted(trace)
            if why:
                log.debug(
                    "sinks_not_needed", fingerprint=trace.alert.fingerprint, why=why
                )
                continue
            if self._closed or len(self._pending) >= self._max_pending:
                log.warning(
                    "sink_dropped",
                    fingerprint=trace.alert.fingerprint,
                    payload_id=trace.payload_id,
                    pending=len(self._pending),
                    why="shutting down" if self._closed else "too many pending",
                )
                continue
            task = asyncio.get_running_loop().create_task(
                self._deliver(trace), name=f"sinks-{trace.payload_id}"
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight."""
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until every queued delivery has finished (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _deliver(self, trace: AlertTrace) -> None:
        async with self._slots:
            try:
                outcomes = await asyncio.gather(
                    *(self._one(name, trace) for name in self._choose(trace))
                )
                await self._record(trace, [o for o in outcomes if o is not None])
            except Exception as exc:  # noqa: BLE001 (a background task must not die silently)
                # No traceback: its text could carry a URL with a token in it.
                log.error(  # noqa: TRY400
                    "sink_dispatch_failed",
                    error=self._scrub(f"{exc.__class__.__name__}: {exc}"),
                    fingerprint=trace.alert.fingerprint,
                    payload_id=trace.payload_id,
                )

    async def _one(self, name: str, trace: AlertTrace) -> SinkOutcome | None:
        outcome = await self._attempt(name, trace)
        if outcome is not None and self._on_outcome is not None:
            self._on_outcome(outcome.sink, outcome.status)
        return outcome

    async def _attempt(self, name: str, trace: AlertTrace) -> SinkOutcome | None:
        sink = self._sinks.get(name)
        if sink is None:
            return SinkOutcome(
                name,
                "skipped",
                f"sink {name} is not configured in this receiver (see "
                "docs/steps-and-sinks.md)",
            )
        try:
            now = self._clock()
            fresh = [
                not await self._store.seen(k, self._ttl, now)
                for k in dedupe_keys(sink, trace)
            ]
        except ReceiverError as exc:
            return SinkOutcome(name, "failed", f"cannot check for duplicates: {exc}")
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
        try:
            await self._store.record([record])
        except ReceiverError as exc:
            log.warning(
                "sink_outcomes_not_recorded",
                payload_id=trace.payload_id,
                error=self._scrub(str(exc)),
            )

    async def aclose(self, grace: float = 10.0) -> None:
        """Stop taking traces, give deliveries ``grace`` seconds, close the sinks."""
        self._closed = True
        if self._pending:
            _done, late = await asyncio.wait(list(self._pending), timeout=grace)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if late:
                log.warning("sink_deliveries_abandoned", count=len(late))
            self._pending.clear()
        for sink in self._sinks.values():
            await sink.aclose()
