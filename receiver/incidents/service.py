"""The incident service: group traces into incidents, store them, tick their clocks.

``create_app`` builds one with an ``IncidentStore``, the clock, the policy, the
rulebook (for severity re-evaluation), and optionally an ``Announcer`` (the sinks)
and an ``Escalator`` (PagerDuty's REST API). The worker's ``hand_over`` gives it
each payload's traces before it records the decision (``put``: waits while the
queue is full, returns what ends once they are folded, never raises); the ticker
(``run``) advances every watched incident's clocks; the API acknowledges,
mitigates, comments and publishes status updates.

Traces are queued (``queueing``), grouped by key (``grouping``, ``rules``) and
folded; effects are carried out by ``effects``.

Each change is read, applied (pure, ``lifecycle``) and written with the next
version; a version conflict (another replica) reads again. The effects that
contact someone are written with the change, as pending and claimed by the
writer for a lease (``IncidentStore``), carried out after the write (the claim
renewed meanwhile, or the sending cut off before it lapses:
``receiver.holding``), and removed in the same write as the timeline lines
saying what was sent. A crash between the write and that second write leaves
them pending: the ticker (``redeliver``, first thing each tick; on one SQLite
instance the first tick also takes a dead process's claims over at once) claims
those whose lease lapsed and carries them out, so a message may be sent twice,
never lost; its line says it was late. An effect that raises is tried again
later, at most ``EFFECT_ATTEMPTS`` times (a claim a crashed process held
counts as one), then given up with a "not delivered" line.

What was last written or read is kept (``known``): a group that keeps firing
is folded into it without reading and decoding it again, and
the version check on the write still catches anyone else's change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from receiver.errors import ReceiverError, StoreUnavailableError
from receiver.holding import ClaimHolder, ClaimLapsingError, ClaimLostError
from receiver.incidents.approvals import (
    ApprovalDecision,
    Approvals,
    decided,
    record_approvals,
)
from receiver.incidents.effects import (
    About,
    Announcer,
    Effect,
    EffectRunner,
    Escalator,
    decode_effect,
    encode_effect,
)
from receiver.incidents.grouping import linked
from receiver.incidents.known import KnownIncidents
from receiver.incidents.lifecycle import (
    Folding,
    acknowledge,
    advance,
    comment,
    message_sent,
    mitigate,
    observe,
    open_incident,
    resolve,
    status_published,
)
from receiver.incidents.model import Incident, evolve
from receiver.incidents.policy import IncidentPolicy
from receiver.incidents.queueing import FoldQueue, SinkNote
from receiver.incidents.records import from_record, to_record
from receiver.incidents.report import render_report
from receiver.incidents.rules import RuleView
from receiver.incidents.status import minute
from receiver.model import AlertTrace
from receiver.retrying import stop_if_cancelled
from receiver.rulebook.loader import Rulebook
from receiver.store.incidents_base import (
    ClaimedEffect,
    IncidentQuery,
    IncidentRecord,
    IncidentStore,
    Mark,
    PendingEffect,
)

log = structlog.get_logger("receiver.incidents")

ATTEMPTS = 5  # reads after a version conflict before giving up on a change
ACK_EVENTS = {"incident.acknowledged"}
STATUS_EVENTS = {"incident.status_update_published"}
# Tries of one effect (each claim, a crashed process's included) before the
# timeline says it was not delivered; the wait after a failed one doubles.
EFFECT_ATTEMPTS = 5
EFFECT_RETRY = timedelta(seconds=30)
# How long the writer (or a claimer) of an effect has to carry it out before
# another receiver may: the journal's lease in the app.
EFFECT_LEASE = timedelta(minutes=5)
REDELIVER_BATCH = 100  # pending effects claimed per tick


@dataclass
class _Batch:
    """Incidents being folded in memory: as read, as now, what to do after."""

    base: dict[str, Incident] = field(default_factory=dict)
    now: dict[str, Folding] = field(default_factory=dict)
    effects: dict[str, list[Effect]] = field(default_factory=dict)
    # When each of ``effects`` was asked (the time its trace was folded at).
    asked: dict[str, list[datetime]] = field(default_factory=dict)
    traces: dict[str, list[AlertTrace]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    # Loaded from what the service knew, not read from the store this batch.
    unread: set[str] = field(default_factory=set)
    # Keys another active incident holds: never added to a second one.
    taken: set[str] = field(default_factory=set)
    # Keys no incident held when looked up in this batch.
    unheld: set[str] = field(default_factory=set)

    def load(self, incident: Incident, *, unread: bool = False) -> None:
        if unread:
            self.unread.add(incident.id)
        self.base[incident.id] = incident
        self.now[incident.id] = Folding(incident)
        self.effects[incident.id] = []
        self.asked[incident.id] = []
        self.traces[incident.id] = []
        self.remember(incident.id, incident.keys)

    def remember(self, incident_id: str, keys: Sequence[str]) -> None:
        for key in keys:
            self.by_key.setdefault(key, incident_id)


def _marks(traces: Sequence[AlertTrace]) -> list[Mark]:
    """The fold marks of ``traces`` (those decided from a stored payload)."""
    return [(t.payload_id, t.alert.fingerprint) for t in traces if t.payload_id]


def _folded_before(
    trace: AlertTrace | SinkNote, again: set[Mark], seen: set[Mark], done: set[int]
) -> bool:
    """Whether a batch skips ``trace``: marked folded, or its twin came first.

    Marked: done (nothing to write). A second copy in the same batch (its
    payload decided twice): left for the batch's end, once its twin's write is
    in (if that write fails, both are folded again, and the next lookup sees
    the first one's mark).
    """
    if isinstance(trace, SinkNote) or not trace.payload_id:
        return False
    mark = (trace.payload_id, trace.alert.fingerprint)
    if mark in again:
        done.add(id(trace))
        return True
    if mark in seen:
        return True
    seen.add(mark)
    return False


class NotFoundError(ReceiverError):
    """No incident with that id."""


class ConflictError(ReceiverError):
    """The change could not be written after several version conflicts."""


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
        retry_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        effect_lease: timedelta = EFFECT_LEASE,
        renew_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self._lease = effect_lease
        # Claims on effects being carried out are renewed every third of the
        # lease (``renew_sleep`` waits in between; tests pass one on their
        # clock), and a send whose claim cannot be renewed is cut off before
        # it lapses: another receiver may claim and send it from then on.
        self._holder = ClaimHolder(
            clock,
            effect_lease,
            renew_sleep,
            events="incident_effect",
            logger="receiver.incidents",
        )
        # dry-run: nothing is contacted; messages and PagerDuty calls are only
        # recorded on the timeline as what would have been done.
        self._effects = EffectRunner(
            deliver=mode != "dry-run",
            announcer=announcer,
            escalator=escalator,
            on_breach=on_breach,
        )
        self._rules = RuleView(
            rulebook,
            policy,
            nobody_contacted="dry-run: nobody was contacted"
            if mode == "dry-run"
            else "",
        )
        self._clock = clock
        self._approvals = approvals
        self._lock = asyncio.Lock()
        # ``retry_sleep``: the wait before a batch the store failed is folded
        # again (tests pass one that does not wait).
        self._queue = FoldQueue(self.observe, max_pending, sleep=retry_sleep)
        self._known = KnownIncidents()
        self._reclaimed = False  # a dead process's claimed effects (first tick)

    @property
    def policy(self) -> IncidentPolicy:
        """The runbook's targets with the rule files' ``incidents:`` overrides."""
        return self._rules.policy

    def keys(self, trace: AlertTrace) -> list[str]:
        """Grouping keys; a rule's ``group_by`` labels come first when it has them."""
        return self._rules.keys(trace)

    # ------------------------------------------------------------ traces in

    async def put(self, traces: Sequence[AlertTrace]) -> asyncio.Future[None]:
        """Queue a payload's traces for folding (the worker's hand-over).

        Waits while the queue is full; returns a future that ends once they
        are folded, their marks written (``FoldQueue.put``). Never raises
        otherwise.
        """
        return await self._queue.put(traces)

    def sink_outcomes(self, trace: AlertTrace, lines: list[str]) -> None:
        """The sinks' outcomes for a trace (the dispatcher's callback).

        Queued behind the trace itself, so the incident exists by then.
        """
        if not lines or not trace.matches:
            return
        self._queue.note(SinkNote(trace, tuple(lines)))

    @property
    def waits(self) -> int:
        """Puts that had to wait for room (backpressure)."""
        return self._queue.waits

    async def drain(self) -> None:
        """Wait until every queued trace is folded in (tests, shutdown)."""
        await self._queue.drain()

    async def observe(
        self,
        traces: Sequence[AlertTrace | SinkNote],
        done: set[int] | None = None,
    ) -> list[Incident]:
        """Fold traces into their incidents; return each incident touched, once.

        Alert traces are folded in memory and each incident is written once at
        the end; PagerDuty traces (acknowledgments, links) are applied one by
        one after what came before them is written. ``done`` collects the
        ``id()`` of every trace whose fold is written (or needs none): when the
        store fails midway, the rest can be folded again, and only the rest.
        """
        done = set() if done is None else done
        touched: dict[str, Incident] = {}
        work = _Batch()
        # Folded already: a payload decided again after a crash (its traces
        # were folded, its decision not recorded). Nothing is folded twice.
        again = await self.store.folded(
            _marks([t for t in traces if not isinstance(t, SinkNote)])
        )
        seen: set[Mark] = set()
        for trace in traces:
            if _folded_before(trace, again, seen, done):
                continue
            if isinstance(trace, SinkNote):
                touched.update(await self._flush(work, done))
                work = _Batch()
                noted = await self._note_sinks(trace)
                if noted is not None:
                    touched[noted.id] = noted
                done.add(id(trace))
                continue
            if trace.alert.source == "pagerduty":
                touched.update(await self._flush(work, done))
                work = _Batch()
                found = await self._observe_one(trace)
                if found is not None:
                    touched[found.id] = found
                done.add(id(trace))
                continue
            if not trace.alert.actionable or not trace.matches:
                done.add(id(trace))
                continue
            keys = self.keys(trace)
            held = await self._route(work, keys)
            if held is not None and not work.now[held].active:
                # Resolved in this batch: write it, so a firing opens a new one.
                touched.update(await self._flush(work, done))
                work = _Batch()
                held = await self._route(work, keys)
            await self._fold_into(work, trace, keys, held, done)
        touched.update(await self._flush(work, done))
        return list(touched.values())

    async def _note_sinks(self, note: SinkNote) -> Incident | None:
        def add(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            what = f"Decision on {note.trace.alert.labels.get('alertname', '')}".strip()
            for line in note.lines:
                inc = message_sent(inc, now, f"{what}: {line}")
            return inc, []

        return await self._change_by_keys(self.keys(note.trace), add)

    async def _route(self, work: _Batch, keys: list[str]) -> str | None:
        """The incident ``find_first(keys)`` would find, with the batch's changes.

        The holder of the first of ``keys`` that is held, in this batch or in
        the store (loaded into the batch); None if no key is held. A later key
        held in the batch must not win over an earlier one held in the store.
        """
        end = next((i for i, k in enumerate(keys) if k in work.by_key), len(keys))
        ahead = [k for k in keys[:end] if k not in work.unheld]
        if ahead:
            known = self._known.holding(ahead)
            if known is not None:
                if known.id not in work.base:
                    work.load(known, unread=True)
                return known.id
            record = await self.store.find_first(ahead)
            if record is not None:
                if record.id not in work.base:
                    found = from_record(record)
                    self._known.remember(found)
                    work.load(found)
                return record.id
            work.unheld.update(ahead)
        return work.by_key[keys[end]] if end < len(keys) else None

    async def _fold_into(
        self,
        work: _Batch,
        trace: AlertTrace,
        keys: list[str],
        incident_id: str | None,
        done: set[int],
    ) -> None:
        if incident_id is None:
            # A new incident is created at once: that reserves its keys.
            opened = await self._fold(trace, keys, looked=True, done=done)
            done.add(id(trace))
            if opened is not None:
                work.load(opened)
                work.remember(opened.id, keys)
            return
        folding = work.now[incident_id]
        at = self._clock()
        effects = folding.observe(
            trace,
            at,
            self.policy,
            follows=self._rules.follows(),
            evidence=self._rules.evidence_rules(),
        )
        for key in keys:
            if work.by_key.get(key, incident_id) != incident_id:
                work.taken.add(key)  # another incident of this batch holds it
        free = await self._free(
            incident_id, folding.keys, keys, work.taken, work.unheld
        )
        folding.add_keys(free)
        work.effects[incident_id] += effects
        work.asked[incident_id] += [at] * len(effects)
        work.traces[incident_id].append(trace)
        work.remember(incident_id, free)

    async def _flush(self, work: _Batch, done: set[int]) -> dict[str, Incident]:
        written: dict[str, Incident] = {}
        quiet: list[AlertTrace] = []  # folded, changing nothing: marked apart
        for incident_id, base in work.base.items():
            folded = work.traces[incident_id]
            incident = work.now[incident_id].incident()
            if incident == base:
                if incident_id not in work.unread or await self._still(base):
                    written[incident_id] = base
                    quiet += folded
                    continue
            else:
                # ``evolve`` keeps the ledger index for the next batch's fold.
                incident = evolve(incident, version=base.version + 1)
                record = self._record(
                    incident, work.effects[incident_id], asked=work.asked[incident_id]
                )
                async with self._lock:
                    stored = await self.store.update(record, _marks(folded))
                if stored is not None:
                    done.update(id(t) for t in folded)
                    self._known.remember(incident)
                    written[incident_id] = await self._carry_out(
                        incident, work.effects[incident_id], record
                    )
                    continue
            # Someone else changed it meanwhile: fold these traces one by one.
            self._known.forget(incident_id)
            # Whoever changed it may have folded these very traces.
            already = await self.store.folded(_marks(folded))
            for trace in folded:
                if (trace.payload_id, trace.alert.fingerprint) in already:
                    done.add(id(trace))
                    continue
                found = await self._fold(trace, self.keys(trace), done=done)
                done.add(id(trace))
                if found is not None:
                    written[found.id] = found
        if quiet:
            # A resend that changed nothing now may change something later
            # (after a resolution): decided again, it must not be folded again.
            await self.store.mark_folded(_marks(quiet))
            done.update(id(t) for t in quiet)
        return written

    async def _still(self, incident: Incident) -> bool:
        """Whether the store still holds this version (a fold that changed nothing).

        Nothing to write proves nothing about an incident folded from memory:
        someone may have changed it since, and the traces folded into that
        change might have.
        """
        record = await self.store.get(incident.id)
        if record is None or record.version != incident.version:
            return False
        self._known.remember(incident)
        return True

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

            return await self._change_by_keys(keys, ack, folded=_marks([trace]))
        if event in STATUS_EVENTS:
            return await self._change_by_keys(
                keys,
                lambda inc, now: (
                    status_published(
                        inc, now, by=by, text="Status update published in PagerDuty"
                    ),
                    [],
                ),
                folded=_marks([trace]),
            )
        if not alert.actionable or not trace.matches:
            return None
        if alert.source == "pagerduty":
            if alert.status == "resolved":
                # The incident PagerDuty opened, found by its own key.
                record = await self.store.find_first(keys)
                if record is not None and record.id is not None:
                    lost = await self._resolve_lost(from_record(record), trace)
                    if lost is not None:
                        return lost
            known = await self._link_pagerduty(trace, keys)
            if known is not None:
                return known
        return await self._fold(trace, keys)

    async def _resolve_lost(
        self, tracked: Incident, trace: AlertTrace
    ) -> Incident | None:
        """PagerDuty resolved the incident of one that lost track: resolve it.

        It cannot resolve by itself (``lost_track``); PagerDuty's resolution
        of the PagerDuty incident linked to it (or that opened it) does. None
        for any other incident or event.
        """
        if not (tracked.lost_track and tracked.active):
            return None
        if trace.alert.status != "resolved":
            return None
        # The PagerDuty incident linked to it (or that opened it) only: one of
        # several PagerDuty incidents grouped into it resolving is not the
        # whole storm resolving.
        pd_id = trace.alert.refs.get("incident_id", "")
        if not (pd_id and tracked.pagerduty_id == pd_id):
            return None
        by = trace.alert.refs.get("agent", "") or "PagerDuty"
        return await self._change(
            tracked.id,
            lambda inc, now: resolve(
                inc,
                now,
                self.policy,
                by=by,
                why="resolved in PagerDuty (the receiver had lost track of this "
                "alert storm)",
            ),
            folded=_marks([trace]),
        )

    async def _link_pagerduty(
        self, trace: AlertTrace, keys: list[str]
    ) -> Incident | None:
        """A PagerDuty incident about an incident we already track: link it."""
        pd_id = trace.alert.refs.get("incident_id", "")
        for key in keys[1:]:
            record = await self.store.find(key)
            if record is None or record.id is None:
                continue
            tracked = from_record(record)
            fingerprint = trace.alert.fingerprint
            own = fingerprint in tracked.unlisted or any(
                a.fingerprint == fingerprint for a in tracked.alerts
            )
            if own or tracked.pagerduty_id == pd_id:
                lost = await self._resolve_lost(tracked, trace)
                if lost is not None:
                    return lost
            if own:
                # One of its own alerts (PagerDuty opened it): fold it in, so
                # PagerDuty's resolution resolves it.
                return None
            if tracked.pagerduty_id == pd_id:
                # Folded, changing nothing: marked all the same.
                await self.store.mark_folded(_marks([trace]))
                return tracked

            def link(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
                number = trace.alert.labels.get("incident_number", pd_id)
                inc = linked(inc, pd_id)
                return comment(
                    inc,
                    now,
                    by="PagerDuty",
                    text=f"PagerDuty incident #{number} linked",
                ), []

            return await self._change(record.id, link, folded=_marks([trace]))
        return None

    def _opener(
        self,
        trace: AlertTrace,
        keys: list[str],
        now: datetime,
        built: list[tuple[Incident, list[Effect], IncidentRecord]],
    ) -> Callable[[int], IncidentRecord]:
        """What the store calls with the day's next number (pure; any thread)."""
        policy, follows, evidence = (
            self.policy,
            self._rules.follows(),
            self._rules.evidence_rules(),
        )
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
            opened = replace(opened, version=1)
            record = self._record(opened, effects, now)
            built.append((opened, effects, record))
            return record

        return build

    async def _fold(
        self,
        trace: AlertTrace,
        keys: list[str],
        *,
        looked: bool = False,
        done: set[int] | None = None,
    ) -> Incident | None:
        """Fold one trace, writing at once; ``looked``: no key was found just now.

        Its fold mark goes with the write, or alone when nothing is written;
        it is added to ``done`` once written, before the write's effects are
        carried out (a slow sink must not hold the worker's record back).
        """
        marks = _marks([trace])
        for attempt in range(ATTEMPTS):
            if attempt and marks and await self.store.folded(marks):
                return None  # the write we lost to folded it
            async with self._lock:
                now = self._clock()
                record = (
                    await self.store.find_first(keys) if attempt or not looked else None
                )
                if record is None:
                    if trace.alert.status != "firing":
                        await self.store.mark_folded(marks)
                        return None
                    built: list[tuple[Incident, list[Effect], IncidentRecord]] = []
                    stored = await self.store.create_numbered(
                        now.date().isoformat(),
                        self._opener(trace, keys, now, built),
                        marks,
                    )
                    incident, effects, written = built[-1]
                else:
                    current = from_record(record)
                    self._known.remember(current)
                    incident, effects = observe(
                        current,
                        trace,
                        now,
                        self.policy,
                        follows=self._rules.follows(),
                        evidence=self._rules.evidence_rules(),
                    )
                    if incident == current:
                        await self.store.mark_folded(marks)
                        return current
                    free = await self._free(current.id, incident.keys, keys)
                    incident = replace(
                        incident,
                        keys=tuple(dict.fromkeys((*incident.keys, *free))),
                        version=current.version + 1,
                    )
                    written = self._record(incident, effects, now)
                    stored = await self.store.update(written, marks)
            if stored is not None:
                if done is not None:
                    done.add(id(trace))
                self._known.remember(incident)
                return await self._carry_out(incident, effects, written)
            self._known.forget(incident.id)
        raise ConflictError(f"incident for {keys[0]} kept changing under us")

    async def _free(
        self,
        incident_id: str,
        held: Sequence[str],
        keys: Sequence[str],
        taken: set[str] | None = None,
        unheld: set[str] | None = None,
    ) -> list[str]:
        """Those of ``keys`` the incident may take: not held by another one.

        A trace found its incident by its first key that is held; a later key
        of it may be held by another active incident (a rule's ``group_by``
        across two Alertmanager groups), which keeps it: the store would
        refuse the write. ``taken``: keys known held elsewhere (updated);
        ``unheld``: keys known held by none.
        """
        taken = set() if taken is None else taken
        free: list[str] = []
        for key in keys:
            if key in held or key in free:
                continue
            if unheld is not None and key in unheld and key not in taken:
                free.append(key)
                continue
            if key not in taken:
                record = await self.store.find(key)
                if record is None or record.id == incident_id:
                    free.append(key)
                    continue
                taken.add(key)
        return free

    # ------------------------------------------------------------ changes

    async def _change_by_keys(
        self,
        keys: list[str],
        change: Callable[[Incident, datetime], tuple[Incident, list[Effect]]],
        *,
        folded: Sequence[Mark] = (),
    ) -> Incident | None:
        for key in keys:
            record = await self.store.find(key)
            if record is not None:
                return await self._change(record.id, change, folded=folded)
        log.info("incident_not_found", keys=keys[:2])
        await self.store.mark_folded(folded)
        return None

    async def _change(
        self,
        incident_id: str,
        change: Callable[[Incident, datetime], tuple[Incident, list[Effect]]],
        *,
        written: Incident | None = None,
        folded: Sequence[Mark] = (),
        done: Sequence[ClaimedEffect] = (),
    ) -> Incident:
        """Read, change and write one incident; ``written``: as just written here.

        ``written`` saves the first read; if someone changed it since, the
        version check refuses the write and the next attempt reads.
        ``folded``: the marks of the trace this change folds (written with it);
        ``done``: pending effects it records as carried out (removed with it).
        """
        for _ in range(ATTEMPTS):
            async with self._lock:
                if written is not None:
                    current, written = written, None
                else:
                    record = await self.store.get(incident_id)
                    if record is None:
                        raise NotFoundError(f"no incident {incident_id!r}")
                    current = from_record(record)
                now = self._clock()
                incident, effects = change(current, now)
                if incident == current:
                    await self.store.mark_folded(folded)
                    await self.store.finish_effects(done)
                    return current
                incident = replace(incident, version=current.version + 1)
                sent = self._record(incident, effects, now)
                stored = await self.store.update(sent, folded, done=done)
            if stored is not None:
                self._known.remember(incident)
                return await self._carry_out(incident, effects, sent)
            self._known.forget(incident_id)
        raise ConflictError(f"incident {incident_id} kept changing under us")

    async def acknowledge(self, incident_id: str, *, by: str) -> Incident:
        """A person acknowledged through the API."""
        return (await self.acknowledge_again(incident_id, by=by))[0]

    async def acknowledge_again(
        self, incident_id: str, *, by: str
    ) -> tuple[Incident, bool]:
        """``acknowledge``, and whether it was acknowledged (or resolved) before.

        True: this call only added a line ("Acknowledged again", or a late
        acknowledgment of a resolved incident, which keeps no time).
        """
        before = False

        def change(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            nonlocal before
            # The last attempt's reading counts.
            before = inc.acknowledged_at is not None or not inc.active
            return acknowledge(inc, now, self.policy, by=by, via="the API")

        return await self._change(incident_id, change), before

    async def acknowledge_first(
        self, incident_id: str, *, by: str, via: str
    ) -> tuple[Incident, bool]:
        """A person acknowledges it, if nothing stopped the acknowledge clock yet.

        Whether this call acknowledged it: False, and the incident unchanged
        (not even an "again" line), once it is acknowledged, mitigated (the
        clock stopped then; a later acknowledgment would not move it, only be
        recorded) or resolved.
        """
        acknowledged = False

        def change(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            nonlocal acknowledged
            # The last attempt's reading counts.
            acknowledged = inc.awaiting_acknowledgment
            if not acknowledged:
                return inc, []
            return acknowledge(inc, now, self.policy, by=by, via=via)

        return await self._change(incident_id, change), acknowledged

    async def mitigate(self, incident_id: str, *, by: str, text: str) -> Incident:
        """A person marks the incident mitigated."""
        return (await self.mitigate_first(incident_id, by=by, text=text))[0]

    async def mitigate_first(
        self, incident_id: str, *, by: str, text: str
    ) -> tuple[Incident, bool]:
        """``mitigate``, and whether this call did (False: it was, or is resolved)."""
        mitigated = False

        def change(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            nonlocal mitigated
            mitigated = inc.active and inc.mitigated_at is None
            return mitigate(
                inc, now, self.policy, by=by, why=text or "marked by a person"
            )

        return await self._change(incident_id, change), mitigated

    async def resolve(self, incident_id: str, *, by: str, text: str) -> Incident:
        """A person resolves the incident (one that lost track cannot by itself)."""
        return (await self.resolve_open(incident_id, by=by, text=text))[0]

    async def resolve_open(
        self, incident_id: str, *, by: str, text: str
    ) -> tuple[Incident, bool]:
        """``resolve``, and whether this call resolved it (False: already was)."""
        resolved = False

        def change(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            nonlocal resolved
            resolved = inc.active  # the last attempt's reading counts
            return resolve(
                inc, now, self.policy, by=by, why=text or "resolved by a person"
            )

        return await self._change(incident_id, change), resolved

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

    async def tick(self) -> int:
        """Advance every watched incident to now; return how many changed.

        Pending effects whose claim lapsed (a crashed writer's, retries that
        are due) are carried out first.
        """
        await self.redeliver()
        changed = 0
        decisions: list[ApprovalDecision] = []
        if self._approvals is not None:
            try:
                decisions = decided(await self._approvals())
            except ReceiverError as exc:
                log.warning("approvals_not_read", error=str(exc))

        def step(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            inc = record_approvals(inc, decisions, now) if inc.active else inc
            return advance(inc, now, self.policy, self._rules.reevaluate)

        for incident_id in await self.store.watched():
            try:
                before = await self.store.get(incident_id)
                after = await self._change(incident_id, step)
            except StoreUnavailableError:
                raise  # the store is gone: the next tick tries them all again
            except Exception:  # one bad incident must not hold back the others
                log.exception("incident_tick_failed", incident=incident_id)
                continue
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
            stop_if_cancelled()
            await sleep(every)

    async def aclose(self) -> None:
        """Wait briefly for pending batches, then close the store."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.drain()
        await self.store.close()

    # ------------------------------------------------------------ effects

    def _record(
        self,
        incident: Incident,
        effects: Sequence[Effect],
        now: datetime | None = None,
        *,
        asked: Sequence[datetime] = (),
    ) -> IncidentRecord:
        """The stored form, with the effects that contact someone (pending).

        They are claimed by this process for a lease from ``now`` (read from
        the clock when not given and there is one). ``asked``: when each
        effect was asked, if not all at ``now`` (a batch folds its traces
        one after another: a promotion folded before a resolution was asked
        before it).
        """
        record = to_record(incident)
        durable = [
            (n, effect)
            for n, effect in enumerate(effects)
            if self._effects.durable(effect)
        ]
        if not durable:
            return record
        now = now or self._clock()
        until = now + self._lease
        return replace(
            record,
            effects=tuple(
                PendingEffect(
                    f"{incident.id}:{incident.version}:{n}",
                    encode_effect(
                        About.of(incident, asked[n] if n < len(asked) else now),
                        effect,
                    ),
                    until,
                )
                for n, effect in durable
            ),
        )

    async def _carry_out(
        self, incident: Incident, effects: Sequence[Effect], written: IncidentRecord
    ) -> Incident:
        """Carry out what the write of ``written`` asked, then record it.

        The pending effects written with it are this process's first claim;
        the others contact nobody (a dry-run's say what would have been done).
        Returns the incident as it now stands (with the lines, if written): a
        batch folding more into it must start from that version.
        """
        about = About.of(incident)
        lines: list[str] = []
        for effect in effects:
            if not self._effects.durable(effect):
                line = await self._effects.carry_out(about, effect)
                if line:
                    lines.append(line)
        claimed = [ClaimedEffect(e.id, incident.id, e.body, 1) for e in written.effects]
        noted = await self._deliver(
            incident.id,
            claimed,
            until=min((e.until for e in written.effects), default=None),
            written=incident,
            lines=lines,
        )
        return incident if noted is None else noted

    async def redeliver(self) -> int:
        """Carry out pending effects whose claim lapsed; return how many claimed.

        Left by a process that crashed (or was stopped) between an incident's
        write and its effects, or retries that are due. The first call also
        takes over what a previous process of a single-instance store held.
        """
        now = self._clock()
        if not self._reclaimed:
            reclaimed = await self.store.reclaim_effects(now)
            self._reclaimed = True
            if reclaimed:
                log.info("incident_effects_reclaimed", effects=reclaimed)
        claimed = await self.store.claim_effects(now, self._lease, REDELIVER_BATCH)
        by_incident: dict[str, list[ClaimedEffect]] = {}
        for effect in claimed:
            by_incident.setdefault(effect.incident_id, []).append(effect)
        for incident_id, effects in by_incident.items():
            log.info(
                "incident_effects_redelivered",
                incident=incident_id,
                effects=len(effects),
                attempts=[e.attempts for e in effects],
            )
            try:
                await self._deliver(incident_id, effects, until=now + self._lease)
            except StoreUnavailableError:
                raise  # the claims lapse; the next tick tries again
            except Exception:  # one incident's effects must not hold back others
                log.exception("incident_effects_failed", incident=incident_id)
                await self._drop_spent(incident_id, effects)
        return len(claimed)

    async def _drop_spent(
        self, incident_id: str, effects: Sequence[ClaimedEffect]
    ) -> None:
        """Remove effects past their last attempt whose incident cannot be written.

        Their "given up" line has nowhere to go (a record this receiver cannot
        read, a bug): kept, they would be claimed again every lease, forever.
        """
        spent = [e for e in effects if e.attempts > EFFECT_ATTEMPTS]
        if not spent:
            return
        log.error(
            "incident_effects_dropped",
            incident=incident_id,
            effects=[self._describe(e) for e in spent],
            reason="given up, and the incident cannot be written to say so",
        )
        with contextlib.suppress(StoreUnavailableError):  # claimed again later
            await self.store.finish_effects(spent)

    def _describe(self, claimed: ClaimedEffect) -> str:
        try:
            return self._effects.describe(decode_effect(claimed.body)[1])
        except ValueError:
            return claimed.id

    async def _deliver(
        self,
        incident_id: str,
        claimed: Sequence[ClaimedEffect],
        *,
        until: datetime | None,
        written: Incident | None = None,
        lines: Sequence[str] = (),
    ) -> Incident | None:
        """Carry out claimed effects; their lines and removal in one write.

        ``until``: when the claim on them lapses; from then on another
        receiver may have claimed them and be sending them, so the ones not
        tried yet are left to it (slow sinks, a long batch).
        ``lines``: of effects already carried out, written with theirs.
        Returns the incident after that write (None: nothing written).
        """
        current = written if written is not None else await self._current(incident_id)
        sent, done, carried = await self._attempt_all(claimed, until, current)
        sent = [*lines, *sent]
        if not done and not sent:
            return None

        def note(inc: Incident, now: datetime) -> tuple[Incident, list[Effect]]:
            for line in sent:
                inc = message_sent(inc, now, line)
            return inc, []

        try:
            return await self._change(incident_id, note, written=written, done=done)
        except (NotFoundError, ConflictError) as exc:
            log.warning(
                "incident_messages_not_recorded", incident=incident_id, error=str(exc)
            )
            # Gone: nowhere to write. Kept changing: those that reached a sink
            # are done (their lines lost, not them); the others stay claimed,
            # and once that lapses they are given up again, contacting nobody,
            # and their "not delivered" line is written then.
            gone = isinstance(exc, NotFoundError)
            await self.store.finish_effects(done if gone else carried)
        except ReceiverError as exc:
            # Still pending: sent again once the claim lapses (at least once).
            log.warning(
                "incident_messages_not_recorded", incident=incident_id, error=str(exc)
            )
        return None

    async def _current(self, incident_id: str) -> Incident | None:
        """The incident as stored, to judge what is still worth sending.

        None when it is gone or cannot be read (its effects are then carried
        out as before; writing their lines says what went wrong).
        """
        try:
            record = await self.store.get(incident_id)
            return from_record(record) if record is not None else None
        except StoreUnavailableError:
            raise  # the claims lapse; sent once the store answers
        except Exception:  # noqa: BLE001 (a damaged record: the write after reports it)
            return None

    async def _attempt_all(
        self,
        claimed: Sequence[ClaimedEffect],
        until: datetime | None,
        incident: Incident | None,
    ) -> tuple[list[str], list[ClaimedEffect], list[ClaimedEffect]]:
        """Attempt each: their lines, those finished, those that reached a sink."""
        sent: list[str] = []
        done: list[ClaimedEffect] = []
        carried: list[ClaimedEffect] = []
        for effect in claimed:
            outcome = await self._attempt(effect, until, incident)
            if outcome is None:
                continue  # left to another receiver
            line, reached, finished = outcome
            if finished:
                done.append(effect)
            if reached:
                carried.append(effect)
            if line:
                sent.append(line)
        return sent, done, carried

    async def _attempt(
        self,
        claimed: ClaimedEffect,
        until: datetime | None,
        incident: Incident | None,
    ) -> tuple[str, bool, bool] | None:
        """One attempt, or None to leave it to another receiver.

        The timeline line ("" for none), whether the effect was carried out
        (False: unreadable, stale, given up, or failed), and whether it is
        finished (False: handed back for a later attempt, which its line
        says). ``until``: when our claim lapses; ``incident``: as it stands
        (None: unknown), so that what was asked while it was open is not sent
        once it resolved.
        """
        if until is not None and self._clock() >= until:
            log.warning(
                "incident_effect_claim_lapsed",
                incident=claimed.incident_id,
                effect=claimed.id,
                attempt=claimed.attempts,
            )
            return None
        try:
            about, effect = decode_effect(claimed.body)
        except ValueError as exc:
            log.error(  # noqa: TRY400 (the reason is the message, no trace)
                "incident_effect_unreadable",
                incident=claimed.incident_id,
                error=str(exc),
            )
            return (
                f"An effect could not be read and was not carried out ({exc})",
                False,
                True,
            )
        what = self._effects.describe(effect)
        resolved = about.stale(incident) if incident is not None else None
        if resolved is not None:
            log.info(
                "incident_effect_stale",
                incident=claimed.incident_id,
                effect=what,
                asked_at=about.asked_at,
                resolved_at=resolved.isoformat(),
                detail="asked while the incident was open; it resolved first",
            )
            asked = about.asked()
            assert asked is not None  # noqa: S101 (stale says when it was asked)
            why = (
                f"asked at {minute(asked)} while the incident was open, still "
                f"undelivered when it resolved at {minute(resolved)}"
            )
            if claimed.attempts == 1:
                return f"{what}: not sent; {why}", False, True
            # An earlier attempt that was interrupted (not failed) may have
            # reached the sink: "not sent" would be a guess.
            tried = claimed.attempts - 1
            line = (
                f"{what}: not tried again after {tried} attempt"
                f"{'s' if tried > 1 else ''}, none confirmed (each failed or was "
                f"interrupted; an interrupted one may have been sent); {why}"
            )
            return line, False, True
        if claimed.attempts > EFFECT_ATTEMPTS:
            # Every earlier claim ended with its process (or was never done).
            log.error(
                "incident_effect_given_up",
                incident=claimed.incident_id,
                effect=what,
                attempts=claimed.attempts - 1,
            )
            # An interrupted attempt may have reached the sink: "not
            # delivered" would be a guess the SRE could act on.
            given_up = (
                f"{what}: given up after {claimed.attempts - 1} attempts, none "
                "confirmed (each failed or was interrupted; an interrupted one "
                "may have been sent)"
            )
            return given_up, False, True
        return await self._try(claimed, until, about, effect)

    async def _try(
        self,
        claimed: ClaimedEffect,
        until: datetime | None,
        about: About,
        effect: Effect,
    ) -> tuple[str, bool, bool] | None:
        """Carry the effect out while its claim holds (``_attempt``'s outcome)."""
        what = self._effects.describe(effect)
        try:
            if until is None:
                line = await self._effects.carry_out(about, effect)
            else:
                line = await self._holder.hold(
                    lambda at: self.store.renew_effect(claimed, at),
                    until,
                    lambda: self._effects.carry_out(about, effect),
                    incident=claimed.incident_id,
                    effect=claimed.id,
                    attempt=claimed.attempts,
                )
        except ClaimLostError:
            log.warning(
                "incident_effect_claim_lapsed",
                incident=claimed.incident_id,
                effect=claimed.id,
                attempt=claimed.attempts,
            )
            return None  # whoever claimed it since sends it (or the next tick)
        except ClaimLapsingError as exc:
            log.warning(
                "incident_effect_cut_off",
                incident=claimed.incident_id,
                effect=what,
                attempt=claimed.attempts,
                detail="its claim could not be renewed and was about to lapse",
            )
            return await self._failed(claimed, what, exc)
        except Exception as exc:  # one failed message must not stop the others
            log.exception(
                "incident_effect_failed",
                incident=claimed.incident_id,
                effect=what,
                attempt=claimed.attempts,
            )
            return await self._failed(claimed, what, exc)
        if line and claimed.attempts > 1:
            line += (
                f" (late: attempt {claimed.attempts}; an earlier one failed, or "
                "was interrupted (its receiver stopped, or could not renew its "
                "claim) and may have been sent too)"
            )
        return line, True, True

    async def _failed(
        self, claimed: ClaimedEffect, what: str, exc: Exception
    ) -> tuple[str, bool, bool] | None:
        """A failed attempt: its line; handed back for a later one, or given up.

        None when it cannot be handed back: another receiver claimed it since.

        A send cut off because its claim could not be renewed
        (``ClaimLapsingError``) may have reached the sink: its lines say so.
        """
        cut = isinstance(exc, ClaimLapsingError)
        if claimed.attempts >= EFFECT_ATTEMPTS:
            if cut:
                given_up = (
                    f"{what}: given up after {claimed.attempts} attempts, none "
                    "confirmed (the last was cut off as its claim could not be "
                    "renewed; it may have been sent)"
                )
                return given_up, False, True
            failed = (
                f"{what}: not delivered after {claimed.attempts} attempts "
                f"(last: {type(exc).__name__}; see the receiver's log)"
            )
            return failed, False, True
        wait = EFFECT_RETRY * 2 ** (claimed.attempts - 1)
        handed = True  # or, the store unavailable, it lapses instead
        with contextlib.suppress(StoreUnavailableError):
            handed = await self.store.retry_effect(claimed, self._clock() + wait)
        if not handed:
            # Another receiver claimed it since (this one was stopped past
            # the lease): it is theirs to send and to write about.
            log.warning(
                "incident_effect_claim_lapsed",
                incident=claimed.incident_id,
                effect=claimed.id,
                attempt=claimed.attempts,
            )
            return None
        # On the timeline now, not only once given up: the SRE reading it
        # sees that the message has not gone out yet, and why.
        why = (
            "cut off: its claim could not be renewed; it may have reached the sink"
            if cut
            else f"{type(exc).__name__}; see the receiver's log"
        )
        retrying = (
            f"{what}: failed (attempt {claimed.attempts} of {EFFECT_ATTEMPTS}: "
            f"{why}); trying again in {_spell(wait)}"
        )
        return retrying, False, False


def _spell(wait: timedelta) -> str:
    """A wait as the timeline says it: ``30 s``, ``2 min``."""
    seconds = int(wait.total_seconds())
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min"
