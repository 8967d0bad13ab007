"""Decide one payload: parse its alerts, plan, stand down, run, and record.

Each alert of a payload is decided on its own: an unexpected error in one becomes
that alert's recorded failure. ``Processor`` is what the worker runs for each
journal entry and what ``receiver replay`` uses, so replay and the live path
decide identically.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import overload

import structlog

from receiver.engine.planner import CompiledPlaybooks, Plan, PlanContext, plan
from receiver.engine.runner import Runner, describe_error
from receiver.errors import InputError, StoreUnavailableError
from receiver.logs import Summary
from receiver.metrics import Metrics
from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    JSONValue,
    MatchTrace,
    Source,
    StepKind,
    freeze,
    iso,
    json_object,
    json_strings,
)
from receiver.rulebook.loader import Rulebook
from receiver.sources import body_alerts
from receiver.store.base import DecisionQuery, JournalEntry, Store, compact_record

log = structlog.get_logger("receiver.worker")

# How long an acknowledgement is remembered for stand_down_when_acknowledged.
ACK_MEMORY = timedelta(days=7)
# How many recent decision records a dedup-key-only resolve of a grouped page
# looks through for the alerts of its group.
INHERIT_SCAN = 500
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def ack_scope(alert: Alert) -> str:
    """Where an alert's acknowledgement is remembered: its incident or dedup key."""
    key = (
        alert.refs.get("dedup_key")
        or alert.refs.get("incident_id")
        or alert.fingerprint
    )
    return f"ack:{alert.source}:{key}"


def _ack_scopes(alerts: Sequence[Alert]) -> list[str]:
    """Where the acknowledgements of the firing alerts among these are kept."""
    return [ack_scope(a) for a in alerts if a.status == "firing" and a.actionable]


def stand_down(planned: Plan, acknowledged_at: datetime) -> Plan:
    """Skip the remediations of playbooks that stand down once a human has it.

    A remediation the planner skipped already keeps its own reason (a
    namespace not allowed, a value refused, the alert resolved or not firing
    long enough): that is why it never runs, acknowledged or not.
    """
    matches = []
    for match in planned.matches:
        if not match.match.playbook.stand_down_when_acknowledged:
            matches.append(match)
            continue
        reason = (
            f"acknowledged by a human at {iso(acknowledged_at)}: the playbook "
            "stands down (stand_down_when_acknowledged)"
        )
        steps = tuple(
            replace(
                s,
                run=False,
                approval=False,
                trace=replace(
                    s.trace,
                    decision=Decision.SKIPPED,
                    reason=reason,
                    guard="acknowledged",
                ),
            )
            if s.trace.kind is StepKind.REMEDIATION
            and s.trace.decision is not Decision.SKIPPED
            else s
            for s in match.steps
        )
        matches.append(replace(match, steps=steps))
    return replace(planned, matches=tuple(matches))


# A payload's alerts are decided in chunks of this many, yielding in between.
YIELD_EVERY = 100
# Seconds between the info-level lines that sum up the payloads decided (one
# line per payload is at debug).
DECIDED_SUMMARY_EVERY = 1.0
# How long what was read ahead for a claimed batch (``Prepared``) stands in for
# reading it when an entry is decided; an entry decided later reads its own.
PREPARED_FOR = timedelta(milliseconds=250)


@dataclass
class Prepared:
    """What a claimed batch's entries would each read first, read in one go.

    ``acks``: the acknowledgements of the batch's firing alerts, shared by its
    entries (what one entry writes there, the next sees, as within a payload);
    ``alerts``: the parsed alerts of its Alertmanager bodies, by entry id
    (parsing those does not depend on the time). Used only until ``at`` +
    ``PREPARED_FOR`` on the processor's clock.
    """

    at: datetime
    acks: dict[str, datetime | None]
    alerts: dict[str, list[Alert]] = field(default_factory=dict)


class TraceRecords(Sequence[Mapping[str, JSONValue]]):
    """Traces as JSON records (long values by reference), built as the store reads.

    A storm's records are then never all in memory at once next to the traces.
    """

    def __init__(self, traces: Sequence[AlertTrace]) -> None:
        self._traces = traces

    def __len__(self) -> int:
        return len(self._traces)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, JSONValue]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, JSONValue]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> Mapping[str, JSONValue] | Sequence[Mapping[str, JSONValue]]:
        if isinstance(index, slice):
            return [compact_record(t.to_json()) for t in self._traces[index]]
        return compact_record(self._traces[index].to_json())

    def __iter__(self) -> Iterator[Mapping[str, JSONValue]]:
        return (compact_record(t.to_json()) for t in self._traces)


def _is_trigger_of(record: Mapping[str, JSONValue], dedup: str) -> bool:
    refs = json_object(record.get("refs"))
    return (
        record.get("source") == "events_v2"
        and refs.get("dedup_key") == dedup
        and refs.get("labels_from") != "trigger"
        and bool(record.get("labels"))
    )


_HELD = frozenset({Decision.SKIPPED.value, Decision.AWAITING_APPROVAL.value})
_NEWS = frozenset(
    {
        Decision.EXECUTED.value,
        Decision.FAILED.value,
        Decision.AWAITING_APPROVAL.value,
    }
)


def _debug_enabled() -> bool:
    """Whether debug lines are kept (they are not built otherwise)."""
    check = getattr(log, "is_enabled_for", None)
    return True if check is None else bool(check(logging.DEBUG))


class _MatchCounts:
    """One match trace and how many alerts of the payload share it."""

    __slots__ = ("decisions", "match", "times")

    def __init__(self, match: MatchTrace) -> None:
        self.match = match  # kept: its id is the key, and is not reused
        self.times = 0
        # A StrEnum's str() is its value, at a quarter of ``.value``'s cost.
        decisions: dict[str, int] = {}
        for step in match.steps:
            decision = str(step.decision)
            decisions[decision] = decisions.get(decision, 0) + 1
        self.decisions = decisions


class _Tally:
    """A payload's metrics, counted as its alerts are decided and sent once.

    Alerts decided alike share their match traces; each distinct one is
    counted once and multiplied, not step by step for every alert.
    """

    def __init__(self) -> None:
        self.alerts: Counter[tuple[str, str]] = Counter()
        self.unmatched: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.matched = 0
        self._matches: dict[int, _MatchCounts] = {}

    def _count(self, match: MatchTrace) -> _MatchCounts:
        found = self._matches.get(id(match))
        if found is None or found.match is not match:
            found = self._matches[id(match)] = _MatchCounts(match)
        found.times += 1
        return found

    def add(self, trace: AlertTrace) -> Mapping[str, int]:
        """Count one alert's trace; return its step decisions."""
        if not trace.alert.actionable:
            # Recorded, not decided: an acknowledge counts as acknowledged, the
            # rest (notes, custom fields, ...) as events; never as firing or
            # unmatched.
            if trace.alert.state == "acknowledged":
                self.alerts[trace.alert.source, "acknowledged"] += 1
            else:
                self.events[trace.alert.source] += 1
            return {}
        self.alerts[trace.alert.source, trace.alert.status] += 1
        matches = trace.matches
        if not matches:
            self.unmatched[trace.alert.source] += 1
            return {}
        self.matched += 1
        if len(matches) == 1:
            return self._count(matches[0]).decisions
        decisions: dict[str, int] = {}
        for match in matches:
            for decision, n in self._count(match).decisions.items():
                decisions[decision] = decisions.get(decision, 0) + n
        return decisions

    @property
    def counted(self) -> Iterable[_MatchCounts]:
        """Each distinct match trace, with how many alerts share it."""
        return self._matches.values()

    @property
    def decisions(self) -> dict[str, int]:
        """Step decisions of the payload: how many of each (in the order first seen)."""
        out: dict[str, int] = {}
        for counts in self._matches.values():
            for decision, n in counts.decisions.items():
                out[decision] = out.get(decision, 0) + n * counts.times
        return out


class _Counts:
    """Decided payloads' counts, added to the metrics whenever they are read.

    A metric child takes a lock and a label lookup per ``inc``: six to ten of
    them a payload. Here a payload adds plain numbers (``Metrics.before_collect``
    adds them up at each read); the label sets are the metrics' own, so what is
    held is bounded by them.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # By (the metric's attribute on ``Metrics``, its label values).
        self._held: dict[tuple[str, tuple[str, ...]], int] = {}
        metrics.before_collect(self.flush)

    def add(self, tally: _Tally) -> None:
        """Count one payload's tally: one pass over its distinct match traces."""
        held = self._held
        get = held.get
        key: tuple[str, tuple[str, ...]]
        for labels, n in tally.alerts.items():
            key = ("alerts", labels)
            held[key] = get(key, 0) + n
        for source, n in tally.unmatched.items():
            key = ("unmatched", (source,))
            held[key] = get(key, 0) + n
        for source, n in tally.events.items():
            key = ("events_recorded", (source,))
            held[key] = get(key, 0) + n
        for counts in tally.counted:
            times = counts.times
            match = counts.match
            key = ("rule_matches", (match.rule, str(match.severity)))
            held[key] = get(key, 0) + times
            for step in match.steps:
                decision = str(step.decision)
                key = ("steps", (step.type, decision))
                held[key] = get(key, 0) + times
                if step.guard and decision in _HELD:
                    key = ("guard_skips", (step.guard,))
                    held[key] = get(key, 0) + times

    def flush(self) -> None:
        """Add the counts to the metrics: one call per label set."""
        for (name, labels), n in self._held.items():
            getattr(self.metrics, name).labels(*labels).inc(n)
        self._held.clear()


class Processor:
    """Decides every alert of one payload."""

    def __init__(
        self,
        rulebook: Rulebook,
        runner: Runner,
        clock: Callable[[], datetime],
        ctx: PlanContext,
        *,
        metrics: Metrics | None = None,
        pagerduty_alertname_from: str = "title",
        store: Store | None = None,
        scrub: Callable[[str], str] = str,
    ) -> None:
        self.scrub = scrub
        self.rulebook = rulebook
        self._runner = runner
        self._clock = clock
        self._ctx = ctx
        self._metrics = metrics
        self._alertname_from = pagerduty_alertname_from
        self._store = store
        self._compiled = CompiledPlaybooks()
        # The metrics' counts, made on the first payload decided with metrics.
        self._counts: _Counts | None = None
        # At info, one line about once a second sums up the payloads decided.
        self._decided = Summary(log, "payloads_decided", DECIDED_SUMMARY_EVERY)

    @property
    def namespaces(self) -> tuple[str, ...] | None:
        """The namespace allowlist the planner applies (backtests reuse it)."""
        return self._ctx.namespaces

    @property
    def alertname_from(self) -> str:
        """Where a PagerDuty event's alertname comes from (backtests reuse it)."""
        return self._alertname_from

    def alerts(self, source: Source, body: bytes, now: datetime) -> list[Alert]:
        """Parse a stored body of ``source`` into alerts."""
        return body_alerts(source, body, now, alertname_from=self._alertname_from)

    async def _with_start(self, alert: Alert) -> Alert:
        """Give alerts without startsAt (Events v2) the start the journal saw."""
        if alert.starts_at is not None or self._store is None:
            return alert
        state = await self._store.alert_state(alert.fingerprint)
        if state is None or state.starts_at is None:
            return alert
        return replace(alert, starts_at=state.starts_at)

    async def decide_dry_run(
        self, alerts: list[Alert], now: datetime | None = None
    ) -> list[AlertTrace]:
        """Decide without running anything, whatever the service mode."""
        runner = Runner({}, self._clock, mode="dry-run")
        ctx = replace(self._ctx, execute=False, diagnose=False)
        return await self.decide(alerts, now=now, runner=runner, ctx=ctx, count=False)

    async def decide(
        self,
        alerts: list[Alert],
        payload_id: str = "",
        now: datetime | None = None,
        *,
        runner: Runner | None = None,
        ctx: PlanContext | None = None,
        count: bool = True,
        acks: dict[str, datetime | None] | None = None,
        source: str = "",
    ) -> list[AlertTrace]:
        """Plan and run every alert; ``now`` fixes time for replay ``--at``.

        ``acks``: acknowledgements read ahead (``prepare``); what it lacks is
        read here. ``source``: the payload's (the summary counts payloads per
        source, as the edge's does); the alerts' own when not given.
        """
        traces = []
        tally = _Tally()
        at = now or self._clock()  # one reading for the whole pass
        decided = 0
        acks = await self._ack_times(alerts, at, acks)
        # Read once per pass: most alerts of a storm log only at debug.
        debug = _debug_enabled()
        for given in alerts:
            for raw in (
                await self.inherit(given) if self._store is not None else (given,)
            ):
                if decided and decided % YIELD_EVERY == 0:
                    # A storm is decided in chunks: let the loop's other tasks run.
                    await asyncio.sleep(0)
                decided += 1
                trace = await self._decide_one(
                    raw,
                    payload_id,
                    at,
                    runner=runner,
                    ctx=ctx,
                    tally=tally if count else None,
                    acks=acks,
                    debug=debug,
                )
                traces.append(trace)
        if count:
            if self._metrics is not None:
                counts = self._counts
                if counts is None or counts.metrics is not self._metrics:
                    counts = self._counts = _Counts(self._metrics)
                counts.add(tally)
            steps = tally.decisions
            if debug:
                log.debug(
                    "payload_decided",
                    payload_id=payload_id,
                    alerts=len(traces),
                    matched=tally.matched,
                    steps=steps,
                )
            source = source or (alerts[0].source if alerts else "unknown")
            self._decided.add(
                payload_id,
                payloads={source: 1},
                alerts=len(traces),
                matched=tally.matched,
                steps=steps,
            )
        return traces

    def flush_decided(self) -> None:
        """Log the payloads decided since the last summary line now (shutdown)."""
        self._decided.flush()

    async def _decide_one(
        self,
        raw: Alert,
        payload_id: str,
        at: datetime,
        *,
        runner: Runner | None,
        ctx: PlanContext | None,
        tally: _Tally | None,
        acks: dict[str, datetime | None],
        debug: bool,
    ) -> AlertTrace:
        # Without a store there is nothing to look up (no awaits per alert).
        stored = self._store is not None
        alert = await self._with_start(raw) if stored else raw
        try:
            planned = plan(
                alert, self.rulebook, at, ctx or self._ctx, compiled=self._compiled
            )
            if stored:
                acknowledged = await self._acknowledged(
                    alert, at, record=tally is not None, acks=acks
                )
                if acknowledged is not None:
                    planned = stand_down(planned, acknowledged)
            trace = await (runner or self._runner).run(
                planned, payload_id, at, debug=debug
            )
        except StoreUnavailableError:
            raise
        except Exception as exc:
            log.exception("alert_not_decided", fingerprint=alert.fingerprint)
            why = "failed: could not decide this alert: " + self.scrub(
                describe_error(exc)
            )
            trace = AlertTrace(
                alert=alert,
                matches=(),
                decided_at=self._clock(),
                payload_id=payload_id,
                mode=(runner or self._runner).mode,
                notes=(why,),
            )
        if tally is None:
            return trace
        steps = tally.add(trace)
        # Steps that acted, failed or wait for a human make an alert news;
        # the rest is in the decision record and in the payload's line.
        news = not _NEWS.isdisjoint(steps)
        if not news and not debug:
            return trace
        (log.info if news else log.debug)(
            "alert_decided",
            fingerprint=alert.fingerprint,
            status=alert.state,
            source=alert.source,
            alertname=alert.labels.get("alertname", ""),
            rules=[m.rule for m in trace.matches],
            severity=[m.severity.value for m in trace.matches],
            steps=dict(steps),
            payload_id=payload_id,
        )
        return trace

    async def _ack_times(
        self,
        alerts: list[Alert],
        now: datetime,
        known: dict[str, datetime | None] | None = None,
    ) -> dict[str, datetime | None]:
        """The acknowledgements of a payload's firing alerts: one store read.

        One read per alert was, for a storm, thousands of round trips (on
        SQLite, transactions) before the first decision was recorded. With
        ``known`` (read ahead for a batch), only what it lacks is read, into it.
        """
        acks = {} if known is None else known
        if self._store is None:
            return acks
        scopes = [s for s in _ack_scopes(alerts) if s not in acks]
        if scopes:
            acks.update(await self._store.last_runs(scopes, now))
        return acks

    async def prepare(self, entries: Sequence[JournalEntry]) -> Prepared | None:
        """Read ahead for a claimed batch: its acknowledgements, in one store call.

        Each entry would otherwise make that read itself (on SQLite, a hop to
        the read thread; on Redis, a round trip) just before it is decided.
        None when there is nothing to gain (no store, a single entry); an entry
        that does not parse is left to ``process`` to refuse.
        """
        if self._store is None or len(entries) < 2:
            return None
        now = self._clock()
        alerts: dict[str, list[Alert]] = {}
        scopes: list[str] = []
        for entry in entries:
            try:
                parsed = self.alerts(entry.source, entry.body, now)
            except InputError:
                continue
            if entry.source == "alertmanager":
                alerts[entry.id] = parsed
            scopes += _ack_scopes(parsed)
        acks = await self._store.last_runs(list(dict.fromkeys(scopes)), now)
        return Prepared(now, acks, alerts)

    async def _acknowledged(
        self,
        alert: Alert,
        now: datetime,
        *,
        record: bool,
        acks: dict[str, datetime | None],
    ) -> datetime | None:
        """Remember acknowledgements; for a firing alert, when it was acknowledged.

        An acknowledgement counts only for an alert that is firing, and holds
        until the incident or dedup key is resolved or unacknowledged (or for
        ``ACK_MEMORY`` when neither ever arrives). ``acks`` holds what the pass
        read up front; what the pass writes is written there too, so a later
        alert of the same payload sees it, as if read one by one.
        """
        if self._store is None:
            return None
        scope = ack_scope(alert)
        if record and alert.state == "acknowledged":
            state = await self._store.alert_state(alert.fingerprint)
            if state is not None and state.status == "firing":
                await self._store.set_last_run(scope, now, ACK_MEMORY)
                acks[scope] = now
            return None
        closes = alert.refs.get("event_action") == "resolve" or alert.labels.get(
            "event_type"
        ) in ("incident.resolved", "incident.unacknowledged")
        if record and closes:
            await self._store.set_last_run(scope, _NEVER, ACK_MEMORY)
            acks[scope] = None
            return None
        if alert.status != "firing" or not alert.actionable:
            return None
        if scope in acks:
            at = acks[scope]
        else:  # an alert that took its trigger's fingerprint (inherit)
            at = await self._store.last_run(scope, now)
        return at if at is not None and at != _NEVER else None

    async def inherit(self, alert: Alert) -> list[Alert]:
        """A resolve or acknowledge naming only a dedup key takes its trigger's labels.

        The trigger's decision records say which labels (and so which rule) the
        alert had; a grouped page's alerts each have a fingerprint of their own.
        """
        if alert.refs.get("labels_from") != "trigger" or self._store is None:
            return [alert]
        dedup = alert.refs.get("dedup_key", "")
        found: dict[str, Mapping[str, JSONValue]] = {}
        for record in await self._store.decisions(
            DecisionQuery(fingerprint=alert.fingerprint, limit=20)
        ):
            if _is_trigger_of(record, dedup):
                found[alert.fingerprint] = record
                break
        if not found:
            for record in await self._store.decisions(
                DecisionQuery(limit=INHERIT_SCAN)
            ):
                if _is_trigger_of(record, dedup):
                    found.setdefault(str(record.get("fingerprint", "")), record)
        if not found:
            return [alert]
        return [
            replace(
                alert,
                fingerprint=fingerprint,
                labels=freeze(
                    {**json_strings(record.get("labels")), "dedup_key": dedup}
                ),
                annotations=freeze(json_strings(record.get("annotations"))),
            )
            for fingerprint, record in found.items()
        ]

    async def process(
        self, entry: JournalEntry, prepared: Prepared | None = None
    ) -> list[AlertTrace]:
        """Decide a journal entry, with one clock reading for the pass.

        ``prepared``: what was read ahead for its batch, used while fresh.
        """
        now = self._clock()
        acks = None
        alerts = None
        # Fresh only within PREPARED_FOR after it was read: a clock stepped back
        # makes it look younger than it is, and it is read again then too.
        if prepared is not None and timedelta(0) <= now - prepared.at <= PREPARED_FOR:
            acks = prepared.acks
            alerts = prepared.alerts.pop(entry.id, None)
        if alerts is None:
            alerts = self.alerts(entry.source, entry.body, now)
        if not alerts and self._metrics is not None:
            # A PagerDuty event that is not about an incident: stored, listed
            # with the payloads, and counted here; nothing to decide.
            self._metrics.events_recorded.labels(entry.source).inc()
        return await self.decide(alerts, entry.id, now, acks=acks, source=entry.source)
