"""The incident service: group traces into incidents, store them, tick their clocks.

``create_app`` builds one with an ``IncidentStore``, the clock, the policy, the
rulebook (for severity re-evaluation), and optionally an ``Announcer`` (the sinks)
and an ``Escalator`` (PagerDuty's REST API). The worker's ``on_complete`` hands it
each payload's traces (``put``: waits while the queue is full, never raises); the ticker
(``run``) advances every watched incident's clocks; the API acknowledges,
mitigates, comments and publishes status updates.

Grouping keys: ``am:<group key>`` for Alertmanager, ``ev2:<dedup key>`` for
Events v2, ``pd:<incident id>`` for PagerDuty, else ``fp:<fingerprint>``; an
Alertmanager group and an Events v2 dedup key also hold ``pdkey:<incident key>``
(the key PagerDuty knows the incident by), which is how PagerDuty webhooks about
that incident (acknowledged, status update published) find it.

Each change is read, applied (pure, ``lifecycle``) and written with the next
version; a version conflict (another replica) reads again. Effects are carried
out after the write, so a crash between the two loses a message rather than
sending it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import structlog

from receiver.errors import ReceiverError
from receiver.incidents.lifecycle import (
    Announce,
    ApprovalDecision,
    CountBreach,
    Effect,
    PagerDutyEscalate,
    PagerDutyStatus,
    acknowledge,
    advance,
    comment,
    message_sent,
    mitigate,
    observe,
    open_incident,
    record_approvals,
    status_published,
)
from receiver.incidents.model import AlertRef, Incident
from receiver.incidents.policy import IncidentPolicy, policy_from
from receiver.incidents.report import render_report
from receiver.model import Alert, AlertTrace, Severity, freeze
from receiver.rulebook.loader import Rulebook
from receiver.rulebook.schema import CompiledRule
from receiver.rulebook.severity import resolve_severity
from receiver.store.incidents_base import IncidentQuery, IncidentRecord, IncidentStore

log = structlog.get_logger("receiver.incidents")

ATTEMPTS = 5  # reads after a version conflict before giving up on a change
BATCH = 1000  # traces folded per round before the incidents are written
ACK_EVENTS = {"incident.acknowledged"}
STATUS_EVENTS = {"incident.status_update_published"}


@dataclass(frozen=True)
class Message:
    """An announcement for the sinks: what the runbook asks to tell people."""

    kind: str
    title: str
    text: str
    contact: str
    incident_id: str
    pagerduty_id: str
    severity: str


class Announcer(Protocol):
    """Delivers messages through the configured sinks (``sinks.announce``)."""

    async def announce(self, message: Message) -> list[str]:
        """Deliver; return one outcome line per sink. Never raises."""
        ...


class Escalator(Protocol):
    """Escalates a PagerDuty incident (``sinks.pagerduty_escalation``)."""

    async def escalate(self, incident_id: str, level: int, priority: str) -> str:
        """Raise the escalation level and set the priority; return the outcome."""
        ...

    async def set_status(self, incident_id: str, status: str) -> str:
        """Acknowledge or resolve the PagerDuty incident; return the outcome."""
        ...


@dataclass(frozen=True)
class SinkNote:
    """What the sinks did with one trace, for its incident's timeline."""

    trace: AlertTrace
    lines: tuple[str, ...]


@dataclass
class _Batch:
    """Incidents being folded in memory: as read, as now, what to do after."""

    base: dict[str, Incident] = field(default_factory=dict)
    now: dict[str, Incident] = field(default_factory=dict)
    effects: dict[str, list[Effect]] = field(default_factory=dict)
    traces: dict[str, list[AlertTrace]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)

    def load(self, incident: Incident) -> None:
        self.base[incident.id] = incident
        self.now[incident.id] = incident
        self.effects[incident.id] = []
        self.traces[incident.id] = []
        self.remember(incident.id, incident.keys)

    def remember(self, incident_id: str, keys: Sequence[str]) -> None:
        for key in keys:
            self.by_key.setdefault(key, incident_id)


class ApprovalView(Protocol):
    """What the incident service reads of an approval (``store.base.Approval``)."""

    @property
    def id(self) -> str: ...  # noqa: D102
    @property
    def status(self) -> str: ...  # noqa: D102
    @property
    def decided_by(self) -> str: ...  # noqa: D102
    @property
    def decided_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def request(self) -> Mapping[str, Any]: ...  # noqa: D102


Approvals = Callable[[], Awaitable[Sequence[ApprovalView]]]


def decided(approvals: Sequence[ApprovalView]) -> list[ApprovalDecision]:
    """The decided approvals, in the incident model's terms."""
    return [
        ApprovalDecision(
            a.id,
            a.status,
            a.decided_by,
            a.decided_at,
            str(a.request.get("rule", "")),
            str(a.request.get("step", "")),
            str(a.request.get("target", "")),
            str(a.request.get("fingerprint", "")),
        )
        for a in approvals
        if a.status != "pending"
    ]


class NotFoundError(ReceiverError):
    """No incident with that id."""


class ConflictError(ReceiverError):
    """The change could not be written after several version conflicts."""


def pagerduty_key(key: str) -> str:
    """The incident key PagerDuty gets from Alertmanager for a group key.

    Alertmanager's ``pagerduty_configs`` send sha256(group key) as the dedup key
    (the same function as ``receiver.sinks.render.alertmanager_dedup_key``).
    """
    return hashlib.sha256(key.encode()).hexdigest()


def keys_of(alert: Alert) -> list[str]:
    """The grouping keys an alert belongs under, the primary one first."""
    refs = alert.refs
    if alert.source == "pagerduty":
        keys = [f"pd:{refs.get('incident_id') or alert.fingerprint}"]
        if alert.labels.get("incident_key"):
            keys.append(f"pdkey:{alert.labels['incident_key']}")
        return keys
    if alert.source == "alertmanager" and refs.get("group_key"):
        return [f"am:{refs['group_key']}", f"pdkey:{pagerduty_key(refs['group_key'])}"]
    if alert.source == "events_v2" and refs.get("dedup_key"):
        return [f"ev2:{refs['dedup_key']}", f"pdkey:{refs['dedup_key']}"]
    return [f"fp:{alert.fingerprint}"]


def linked(incident: Incident, pagerduty_id: str) -> Incident:
    """The incident linked to a PagerDuty incident (its id becomes a key too)."""
    if not pagerduty_id or incident.pagerduty_id:
        return incident
    return replace(
        incident,
        pagerduty_id=pagerduty_id,
        keys=tuple(dict.fromkeys((*incident.keys, f"pd:{pagerduty_id}"))),
    )


def to_record(incident: Incident) -> IncidentRecord:
    """The stored form."""
    return IncidentRecord(
        id=incident.id,
        keys=incident.keys,
        state=incident.state.value,
        severity=incident.severity.value,
        opened_at=incident.opened_at,
        version=incident.version,
        watch=incident.active or not incident.post_mortem_reminded,
        body=freeze(incident.to_json()),
    )


def from_record(record: IncidentRecord) -> Incident:
    """The incident a stored record holds."""
    return replace(Incident.from_json(record.body), version=record.version)


class IncidentService:
    """Incidents from traces, clocks on a ticker, changes from people."""

    def __init__(
        self,
        store: IncidentStore,
        *,
        clock: Callable[[], datetime],
        rulebook: Callable[[], Rulebook],
        policy: IncidentPolicy | None = None,
        announcer: Announcer | None = None,
        escalator: Escalator | None = None,
        on_breach: Callable[[str, str], None] | None = None,
        approvals: Approvals | None = None,
        max_pending: int = 100_000,
        mode: str = "dry-run",
    ) -> None:
        self.store = store
        # dry-run: nothing is contacted; messages and PagerDuty calls are only
        # recorded on the timeline as what would have been done.
        self._deliver = mode != "dry-run"
        self._fixed_policy = policy
        self._policy_of: tuple[Rulebook, IncidentPolicy] | None = None
        self._clock = clock
        self._rulebook = rulebook
        self._announcer = announcer
        self._escalator = escalator
        self._on_breach = on_breach
        self._approvals = approvals
        self._flags_of: tuple[Rulebook, frozenset[str], frozenset[str]] | None = None
        self._rules_of: tuple[Rulebook, dict[str, CompiledRule]] | None = None
        self._max_pending = max_pending
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self._queue: list[AlertTrace | SinkNote] = []
        self._room = asyncio.Event()  # set when the queue has room again
        self.waits = 0  # puts that had to wait for room (backpressure)
        self._consumer: asyncio.Task[None] | None = None

    @property
    def policy(self) -> IncidentPolicy:
        """The runbook's targets with the rule files' ``incidents:`` overrides."""
        if self._fixed_policy is not None:
            return self._fixed_policy
        book = self._rulebook()
        if self._policy_of is None or self._policy_of[0] is not book:
            self._policy_of = (book, policy_from(book.incidents))
        return self._policy_of[1]

    def _flags(self) -> tuple[frozenset[str], frozenset[str]]:
        """Rules whose playbook lets outcomes drive PagerDuty; keeps evidence."""
        book = self._rulebook()
        if self._flags_of is None or self._flags_of[0] is not book:
            playbooks = [(c.name, book.playbooks.get(c.playbook)) for c in book.rules]
            follows = frozenset(
                n for n, p in playbooks if p and p.pagerduty_follows_outcomes
            )
            evidence = frozenset(n for n, p in playbooks if p and p.evidence)
            self._flags_of = (book, follows, evidence)
        return self._flags_of[1], self._flags_of[2]

    def _rule_named(self, name: str) -> CompiledRule | None:
        """The loaded rule called ``name`` (an index per rulebook, not a scan)."""
        book = self._rulebook()
        if self._rules_of is None or self._rules_of[0] is not book:
            self._rules_of = (book, {c.name: c for c in book.rules})
        return self._rules_of[1].get(name)

    def follows(self) -> frozenset[str]:
        """Rules whose playbook lets verified outcomes drive PagerDuty."""
        return self._flags()[0]

    def evidence_rules(self) -> frozenset[str]:
        """Rules whose playbook keeps its diagnostics as evidence."""
        return self._flags()[1]

    def keys(self, trace: AlertTrace) -> list[str]:
        """Grouping keys; a rule's ``group_by`` labels come first when it has them."""
        keys = keys_of(trace.alert)
        if not trace.matches:
            return keys
        name = trace.matches[0].rule
        rule = self._rule_named(name)
        group_by = rule.rule.group_by if rule is not None else None
        if group_by:
            values = ",".join(f"{k}={trace.alert.labels.get(k, '')}" for k in group_by)
            keys.insert(0, f"rule:{name}:{values}")
        return keys

    # ------------------------------------------------------------ traces in

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

    def sink_outcomes(self, trace: AlertTrace, lines: list[str]) -> None:
        """The sinks' outcomes for a trace (the dispatcher's callback).

        Queued behind the trace itself, so the incident exists by then.
        """
        if not lines or not trace.matches:
            return
        # Never dropped, and not bounded here: sink outcomes follow traces the
        # worker handed over through ``put``, which is bounded.
        self._queue.append(SinkNote(trace, tuple(lines)))
        self._start_consumer()

    async def _consume(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
            self._room.set()
            try:
                await self.observe(batch)
            except Exception:  # a background task must not die silently
                log.exception("incident_update_failed", traces=len(batch))

    async def drain(self) -> None:
        """Wait until every queued trace is folded in (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def observe(self, traces: Sequence[AlertTrace | SinkNote]) -> list[Incident]:
        """Fold traces into their incidents; return each incident touched, once.

        Alert traces are folded in memory and each incident is written once at
        the end; PagerDuty traces (acknowledgments, links) are applied one by
        one after what came before them is written.
        """
        touched: dict[str, Incident] = {}
        work = _Batch()
        for trace in traces:
            if isinstance(trace, SinkNote):
                touched.update(await self._flush(work))
                work = _Batch()
                noted = await self._note_sinks(trace)
                if noted is not None:
                    touched[noted.id] = noted
                continue
            if trace.alert.source == "pagerduty":
                touched.update(await self._flush(work))
                work = _Batch()
                found = await self._observe_one(trace)
                if found is not None:
                    touched[found.id] = found
                continue
            if not trace.alert.actionable or not trace.matches:
                continue
            keys = self.keys(trace)
            held = next((work.by_key[k] for k in keys if k in work.by_key), None)
            if held is not None and not work.now[held].active:
                # Resolved in this batch: write it, so a firing opens a new one.
                touched.update(await self._flush(work))
                work = _Batch()
            await self._fold_into(work, trace)
        touched.update(await self._flush(work))
        return list(touched.values())

    async def _note_sinks(self, note: SinkNote) -> Incident | None:
        def add(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            what = f"Decision on {note.trace.alert.labels.get('alertname', '')}".strip()
            for line in note.lines:
                inc = message_sent(inc, now, f"{what}: {line}")
            return inc, []

        return await self._change_by_keys(self.keys(note.trace), add)

    async def _fold_into(self, work: _Batch, trace: AlertTrace) -> None:
        keys = self.keys(trace)
        incident_id = next((work.by_key[k] for k in keys if k in work.by_key), None)
        if incident_id is None:
            for key in keys:
                record = await self.store.find(key)
                if record is not None:
                    incident_id = record.id
                    if incident_id not in work.base:
                        work.load(from_record(record))
                    break
        if incident_id is None:
            # A new incident is created at once: that reserves its keys.
            opened = await self._fold(trace, keys, looked=True)
            if opened is not None:
                work.load(opened)
                work.remember(opened.id, keys)
            return
        current = work.now[incident_id]
        incident, effects = observe(
            current,
            trace,
            self._clock(),
            self.policy,
            follows=self.follows(),
            evidence=self.evidence_rules(),
        )
        work.now[incident_id] = replace(
            incident, keys=tuple(dict.fromkeys((*incident.keys, *keys)))
        )
        work.effects[incident_id] += effects
        work.traces[incident_id].append(trace)
        work.remember(incident_id, keys)

    async def _flush(self, work: _Batch) -> dict[str, Incident]:
        written: dict[str, Incident] = {}
        for incident_id, base in work.base.items():
            incident = work.now[incident_id]
            if incident == base:
                written[incident_id] = base
                continue
            incident = replace(incident, version=base.version + 1)
            async with self._lock:
                stored = await self.store.update(to_record(incident))
            if stored is not None:
                await self._carry_out(incident, work.effects[incident_id])
                written[incident_id] = incident
                continue
            # Someone else changed it meanwhile: fold these traces one by one.
            for trace in work.traces[incident_id]:
                found = await self._fold(trace, self.keys(trace))
                if found is not None:
                    written[found.id] = found
        return written

    async def _observe_one(self, trace: AlertTrace) -> Incident | None:
        alert = trace.alert
        event = (
            alert.labels.get("event_type", "") if alert.source == "pagerduty" else ""
        )
        keys = self.keys(trace)
        by = alert.refs.get("agent", "") or "PagerDuty"
        pd_id = alert.refs.get("incident_id", "")
        if event in ACK_EVENTS:

            def ack(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
                inc = linked(inc, pd_id)
                return acknowledge(
                    inc, now, self.policy, by=by, via="PagerDuty incident.acknowledged"
                )

            return await self._change_by_keys(keys, ack)
        if event in STATUS_EVENTS:
            return await self._change_by_keys(
                keys,
                lambda inc, now: (
                    status_published(
                        inc, now, by=by, text="Status update published in PagerDuty"
                    ),
                    [],
                ),
            )
        if not alert.actionable or not trace.matches:
            return None
        if alert.source == "pagerduty":
            known = await self._link_pagerduty(trace, keys)
            if known is not None:
                return known
        return await self._fold(trace, keys)

    async def _link_pagerduty(
        self, trace: AlertTrace, keys: list[str]
    ) -> Incident | None:
        """A PagerDuty incident about an incident we already track: link it."""
        pd_id = trace.alert.refs.get("incident_id", "")
        for key in keys[1:]:
            record = await self.store.find(key)
            if record is None or record.id is None:
                continue
            if from_record(record).pagerduty_id == pd_id:
                return from_record(record)

            def link(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
                number = trace.alert.labels.get("incident_number", pd_id)
                inc = linked(inc, pd_id)
                return comment(
                    inc,
                    now,
                    by="PagerDuty",
                    text=f"PagerDuty incident #{number} linked",
                ), []

            return await self._change(record.id, link)
        return None

    def _opener(
        self,
        trace: AlertTrace,
        keys: list[str],
        now: datetime,
        built: list[tuple[Incident, list[Effect]]],
    ) -> Callable[[int], IncidentRecord]:
        """What the store calls with the day's next number (pure; any thread)."""
        policy, follows, evidence = self.policy, self.follows(), self.evidence_rules()
        day = now.date().isoformat()

        def build(number: int) -> IncidentRecord:
            opened, effects = open_incident(
                f"INC-{day}-{number:03d}",
                keys,
                trace,
                now,
                policy,
                follows=follows,
                evidence=evidence,
            )
            built.append((replace(opened, version=1), effects))
            return to_record(built[-1][0])

        return build

    async def _fold(
        self, trace: AlertTrace, keys: list[str], *, looked: bool = False
    ) -> Incident | None:
        """Fold one trace, writing at once; ``looked``: no key was found just now."""
        for attempt in range(ATTEMPTS):
            async with self._lock:
                now = self._clock()
                record = None
                for key in keys if attempt or not looked else ():
                    record = await self.store.find(key)
                    if record is not None:
                        break
                if record is None:
                    if trace.alert.status != "firing":
                        return None
                    built: list[tuple[Incident, list[Effect]]] = []
                    stored = await self.store.create_numbered(
                        now.date().isoformat(), self._opener(trace, keys, now, built)
                    )
                    incident, effects = built[-1]
                else:
                    current = from_record(record)
                    incident, effects = observe(
                        current,
                        trace,
                        now,
                        self.policy,
                        follows=self.follows(),
                        evidence=self.evidence_rules(),
                    )
                    if incident == current:
                        return current
                    incident = replace(
                        incident,
                        keys=tuple(dict.fromkeys((*incident.keys, *keys))),
                        version=current.version + 1,
                    )
                    stored = await self.store.update(to_record(incident))
            if stored is not None:
                await self._carry_out(incident, effects)
                return incident
        raise ConflictError(f"incident for {keys[0]} kept changing under us")

    # ------------------------------------------------------------ changes

    async def _change_by_keys(
        self,
        keys: list[str],
        change: Callable[[Incident, datetime], tuple[Incident, list[Effect]]],
    ) -> Incident | None:
        for key in keys:
            record = await self.store.find(key)
            if record is not None:
                return await self._change(record.id, change)
        log.info("incident_not_found", keys=keys[:2])
        return None

    async def _change(
        self,
        incident_id: str,
        change: Callable[[Incident, datetime], tuple[Incident, list[Effect]]],
    ) -> Incident:
        for _ in range(ATTEMPTS):
            async with self._lock:
                record = await self.store.get(incident_id)
                if record is None:
                    raise NotFoundError(f"no incident {incident_id!r}")
                current = from_record(record)
                incident, effects = change(current, self._clock())
                if incident == current:
                    return current
                incident = replace(incident, version=current.version + 1)
                stored = await self.store.update(to_record(incident))
            if stored is not None:
                await self._carry_out(incident, effects)
                return incident
        raise ConflictError(f"incident {incident_id} kept changing under us")

    async def acknowledge(self, incident_id: str, *, by: str) -> Incident:
        """A person acknowledged through the API."""
        return await self._change(
            incident_id,
            lambda inc, now: acknowledge(inc, now, self.policy, by=by, via="the API"),
        )

    async def mitigate(self, incident_id: str, *, by: str, text: str) -> Incident:
        """A person marks the incident mitigated."""
        return await self._change(
            incident_id,
            lambda inc, now: mitigate(
                inc, now, self.policy, by=by, why=text or "marked by a person"
            ),
        )

    async def comment(self, incident_id: str, *, by: str, text: str) -> Incident:
        """A person's comment on the timeline."""
        return await self._change(
            incident_id, lambda inc, now: (comment(inc, now, by=by, text=text), [])
        )

    async def status_update(self, incident_id: str, *, by: str, text: str) -> Incident:
        """A person published a status update: the cadence restarts."""
        return await self._change(
            incident_id,
            lambda inc, now: (status_published(inc, now, by=by, text=text), []),
        )

    # ------------------------------------------------------------ reads

    async def get(self, incident_id: str) -> Incident | None:
        """The incident, or None."""
        record = await self.store.get(incident_id)
        return from_record(record) if record is not None else None

    async def page(self, query: IncidentQuery) -> tuple[list[Incident], int | None]:
        """Incidents matching ``query``, newest first, and the next cursor."""
        records, cursor = await self.store.page(query)
        return [from_record(r) for r in records], cursor

    async def report(self, incident_id: str) -> str:
        """The Markdown report."""
        incident = await self.get(incident_id)
        if incident is None:
            raise NotFoundError(f"no incident {incident_id!r}")
        return render_report(incident, self.policy, self._clock())

    # ------------------------------------------------------------ the ticker

    def reevaluate(self, ref: AlertRef, now: datetime) -> Severity | None:
        """The alert's severity now, by its rule (the matrix ages with the alert)."""
        rule = self._rule_named(ref.rule)
        if rule is None:
            return None
        alert = Alert(
            source="alertmanager" if ref.source == "alertmanager" else "events_v2",
            fingerprint=ref.fingerprint,
            status="firing",
            labels=ref.labels,
            starts_at=ref.starts_at,
        )
        return resolve_severity(rule.severity, alert, now)[0]

    async def tick(self) -> int:
        """Advance every watched incident to now; return how many changed."""
        changed = 0
        decisions: list[ApprovalDecision] = []
        if self._approvals is not None:
            try:
                decisions = decided(await self._approvals())
            except ReceiverError as exc:
                log.warning("approvals_not_read", error=str(exc))

        def step(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            inc = record_approvals(inc, decisions, now) if inc.active else inc
            return advance(inc, now, self.policy, self.reevaluate)

        for incident_id in await self.store.watched():
            before = await self.store.get(incident_id)
            after = await self._change(incident_id, step)
            if before is None or after.version != before.version:
                changed += 1
        return changed

    async def run(
        self,
        every: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """The ticker: ``tick`` every ``every`` seconds until cancelled."""
        while True:
            try:
                await self.tick()
            except ReceiverError as exc:
                log.warning("incident_tick_failed", error=str(exc))
            except Exception:  # the ticker must outlive one bad incident
                log.exception("incident_tick_failed")
            await sleep(every)

    async def aclose(self) -> None:
        """Wait briefly for pending batches, then close the store."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.drain()
        await self.store.close()

    # ------------------------------------------------------------ effects

    async def _carry_out(self, incident: Incident, effects: list[Effect]) -> None:
        sent: list[str] = []
        for effect in effects:
            try:
                line = await self._one(incident, effect)
            except Exception:  # one failed message must not stop the others
                log.exception("incident_effect_failed", incident=incident.id)
                line = f"{type(effect).__name__}: failed (see the receiver's log)"
            if line:
                sent.append(line)
        if not sent:
            return

        def note(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            for line in sent:
                inc = message_sent(inc, now, line)
            return inc, []

        try:
            await self._change(incident.id, note)
        except ReceiverError as exc:
            log.warning("incident_messages_not_recorded", error=str(exc))

    async def _one(self, incident: Incident, effect: Effect) -> str:
        """Carry out one effect; return a line for the timeline ("" for none)."""
        if isinstance(effect, CountBreach):
            log.info(
                "incident_clock_breached",
                incident=incident.id,
                severity=effect.severity.value,
                clock=effect.clock,
            )
            if self._on_breach is not None:
                self._on_breach(effect.severity.value, effect.clock)
            return ""
        if isinstance(effect, Announce):
            return await self._announce(incident, effect)
        if isinstance(effect, PagerDutyStatus):
            return await self._pagerduty_status(incident, effect)
        return await self._escalate(incident, effect)

    async def _announce(self, incident: Incident, effect: Announce) -> str:
        if not self._deliver:
            log.info(
                "incident_announcement_not_delivered",
                incident=incident.id,
                kind=effect.kind,
                mode="dry-run",
                why="dry-run: nothing is contacted",
            )
            if self._announcer is None:
                return ""
            return (
                f"Message ({effect.kind}) {effect.title!r}: not delivered "
                "(dry-run; would have posted to the configured sinks)"
            )
        if self._announcer is None:
            return ""
        message = Message(
            effect.kind,
            effect.title,
            effect.text,
            effect.contact,
            incident.id,
            incident.pagerduty_id,
            incident.severity.value,
        )
        outcomes = await self._announcer.announce(message)
        log.info(
            "incident_announced",
            incident=incident.id,
            kind=effect.kind,
            outcomes=outcomes,
        )
        if not outcomes:
            return ""
        return f"Message ({effect.kind}) {effect.title!r}: " + "; ".join(outcomes)

    async def _pagerduty_status(
        self, incident: Incident, effect: PagerDutyStatus
    ) -> str:
        if not self._deliver:
            return self._withheld(
                incident, effect.incident_id, f"PagerDuty {effect.status}"
            )
        outcome = "no PagerDuty API token configured"
        if self._escalator is not None:
            outcome = await self._escalator.set_status(
                effect.incident_id, effect.status
            )
        log.info(
            "incident_pagerduty_updated",
            incident=incident.id,
            pagerduty_id=effect.incident_id,
            status=effect.status,
            outcome=outcome,
        )
        return f"PagerDuty {effect.status}: {outcome}" if self._escalator else ""

    async def _escalate(self, incident: Incident, effect: PagerDutyEscalate) -> str:
        if not self._deliver:
            return self._withheld(
                incident,
                effect.incident_id,
                f"PagerDuty escalation (level {effect.level}, "
                f"priority {effect.priority.value})",
            )
        outcome = "no PagerDuty API token configured"
        if self._escalator is not None:
            outcome = await self._escalator.escalate(
                effect.incident_id, effect.level, effect.priority.value
            )
        log.info(
            "incident_escalated",
            incident=incident.id,
            pagerduty_id=effect.incident_id,
            outcome=outcome,
        )
        return f"PagerDuty escalation: {outcome}" if self._escalator else ""

    def _withheld(self, incident: Incident, pagerduty_id: str, what: str) -> str:
        """A PagerDuty REST call dry-run does not make: logged and on the timeline."""
        log.info(
            "incident_pagerduty_not_called",
            incident=incident.id,
            pagerduty_id=pagerduty_id,
            action=what,
            mode="dry-run",
            why="dry-run: nothing is contacted",
        )
        if self._escalator is None:
            return ""
        return f"{what}: not called (dry-run; would have called the REST API)"
