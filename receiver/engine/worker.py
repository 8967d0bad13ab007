"""Consume the journal: parse each accepted payload, plan, run, record, mark done.

Started and stopped by the app (``cleanup_ctx``). An entry is marked done only
after its decisions are recorded; if the store fails meanwhile, the same entry is
retried with backoff, and after a crash it is claimed again (idempotency keys
make that safe). ``Processor`` is also what ``receiver replay`` uses, so replay
and the live path decide identically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, overload

import structlog

from receiver.engine.doorbell import WorkerBell
from receiver.engine.planner import CompiledPlaybooks, PlanContext, plan
from receiver.engine.runner import Runner
from receiver.errors import InputError, StoreUnavailableError
from receiver.metrics import Metrics
from receiver.model import Alert, AlertTrace, Decision, Source
from receiver.rulebook.loader import Rulebook
from receiver.sources import alertmanager, events_v2, pagerduty
from receiver.store.base import JournalEntry, Store

log = structlog.get_logger("receiver.worker")

# The journal-depth gauges are refreshed at most this often (seconds) by the
# worker; every /metrics scrape refreshes them too. Counting the backlog after
# every entry made a long backlog slower to drain.
OBSERVE_EVERY = 1.0
# With a doorbell, an idle worker still looks at the journal this often
# (seconds): for leases that ran out, and as a safety net.
IDLE_RECHECK = 1.0
# A payload's alerts are decided in chunks of this many, yielding in between.
YIELD_EVERY = 100

GUARD_PREFIXES = (
    ("cooldown", "cooldown"),
    ("budget", "budget"),
    ("lock", "lock"),
    ("circuit", "circuit_breaker"),
    ("alert resolved", "resolved"),
    ("superseded", "resolved"),
    ("already", "idempotency"),
    ("awaiting approval", "approval"),
    ("approval", "approval"),
    ("not firing long enough", "require_firing_for"),
    ("namespace", "namespace"),
    ("dry-run", "dry_run"),
    ("playbook forces dry-run", "dry_run"),
)


def guard_of(reason: str) -> str:
    """Which guard a skip reason comes from, for metrics."""
    for prefix, guard in GUARD_PREFIXES:
        if reason.startswith(prefix):
            return guard
    return "other"


class TraceRecords(Sequence[Mapping[str, Any]]):
    """Traces as JSON records, each built when the store reads it.

    A storm's records are then never all in memory at once next to the traces.
    """

    def __init__(self, traces: Sequence[AlertTrace]) -> None:
        self._traces = traces

    def __len__(self) -> int:
        return len(self._traces)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, Any]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        if isinstance(index, slice):
            return [t.to_json() for t in self._traces[index]]
        return self._traces[index].to_json()

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return (t.to_json() for t in self._traces)


def consumer_name() -> str:
    """A name for this process as a journal consumer and lock owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"


_NEWS = frozenset(
    {
        Decision.EXECUTED.value,
        Decision.FAILED.value,
        Decision.AWAITING_APPROVAL.value,
    }
)


class _Tally:
    """A payload's metrics, counted as its alerts are decided and sent once."""

    def __init__(self) -> None:
        self.alerts: Counter[tuple[str, str]] = Counter()
        self.unmatched: Counter[str] = Counter()
        self.rules: Counter[tuple[str, str]] = Counter()
        self.steps: Counter[tuple[str, str]] = Counter()
        self.guards: Counter[str] = Counter()
        self.decisions: Counter[str] = Counter()
        self.matched = 0

    def add(self, trace: AlertTrace) -> Counter[str]:
        """Count one alert's trace; return its step decisions."""
        decisions: Counter[str] = Counter()
        self.alerts[trace.alert.source, trace.alert.status] += 1
        if not trace.matches:
            self.unmatched[trace.alert.source] += 1
        else:
            self.matched += 1
        for match in trace.matches:
            self.rules[match.rule, match.severity.value] += 1
            for step in match.steps:
                decisions[step.decision.value] += 1
                self.steps[step.type, step.decision.value] += 1
                if step.decision in (Decision.SKIPPED, Decision.AWAITING_APPROVAL):
                    self.guards[guard_of(step.reason)] += 1
        self.decisions.update(decisions)
        return decisions

    def flush(self, m: Metrics) -> None:
        """Add the counts to the metrics: one call per label set, not per alert."""
        for (source, status), n in self.alerts.items():
            m.alerts.labels(source, status).inc(n)
        for source, n in self.unmatched.items():
            m.unmatched.labels(source).inc(n)
        for (rule, severity), n in self.rules.items():
            m.rule_matches.labels(rule, severity).inc(n)
        for (kind, decision), n in self.steps.items():
            m.steps.labels(kind, decision).inc(n)
        for guard, n in self.guards.items():
            m.guard_skips.labels(guard).inc(n)


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
    ) -> None:
        self.rulebook = rulebook
        self._runner = runner
        self._clock = clock
        self._ctx = ctx
        self._metrics = metrics
        self._alertname_from = pagerduty_alertname_from
        self._store = store
        self._compiled = CompiledPlaybooks()

    def alerts(self, source: Source, body: bytes, now: datetime) -> list[Alert]:
        """Parse a stored body of ``source`` into alerts."""
        if source == "alertmanager":
            return alertmanager.from_body(body)
        try:
            data: Any = json.loads(body)
        except ValueError as exc:
            raise InputError(f"stored payload is not JSON: {exc}") from exc
        if source == "pagerduty":
            return pagerduty.to_alerts(data, now, alertname_from=self._alertname_from)
        return events_v2.to_alerts(data, now, body=body)

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
        ctx = replace(self._ctx, execute=False)
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
    ) -> list[AlertTrace]:
        """Plan and run every alert; ``now`` fixes time for replay ``--at``."""
        traces = []
        tally = _Tally()
        for i, raw in enumerate(alerts):
            if i and i % YIELD_EVERY == 0:
                # A storm is decided in chunks: let the loop's other tasks run.
                await asyncio.sleep(0)
            alert = await self._with_start(raw)
            at = now or self._clock()
            planned = plan(
                alert, self.rulebook, at, ctx or self._ctx, compiled=self._compiled
            )
            trace = await (runner or self._runner).run(planned, payload_id)
            traces.append(trace)
            if not count:
                continue
            steps = tally.add(trace)
            # Steps that acted, failed or wait for a human make an alert news;
            # the rest is in the decision record and in the payload's line.
            emit = log.info if steps.keys() & _NEWS else log.debug
            emit(
                "alert_decided",
                fingerprint=alert.fingerprint,
                status=alert.status,
                source=alert.source,
                alertname=alert.labels.get("alertname", ""),
                rules=[m.rule for m in trace.matches],
                severity=[m.severity.value for m in trace.matches],
                steps=dict(steps),
                payload_id=payload_id,
            )
        if count:
            if self._metrics is not None:
                tally.flush(self._metrics)
            log.info(
                "payload_decided",
                payload_id=payload_id,
                alerts=len(traces),
                matched=tally.matched,
                steps=dict(tally.decisions),
            )
        return traces

    async def process(self, entry: JournalEntry) -> list[AlertTrace]:
        """Decide a journal entry."""
        alerts = self.alerts(entry.source, entry.body, self._clock())
        return await self.decide(alerts, entry.id)


class Worker:
    """Bounded-concurrency consumer of the store's journal."""

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
        on_complete: Callable[[list[AlertTrace]], None] | None = None,
        bell: WorkerBell | None = None,
    ) -> None:
        # Rung by the edge process after each payload it journals: the worker
        # sleeps on it instead of polling the journal.
        self._bell = bell
        # Called with a payload's traces once they are recorded (the sinks);
        # it must return at once and never raise.
        self._on_complete = on_complete
        self._store = store
        self._processor = processor
        self._concurrency = concurrency
        self._metrics = metrics
        self.consumer = consumer or consumer_name()
        self._clock = clock
        self._prune_every = prune_every
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._observed = -OBSERVE_EVERY

    async def start(self) -> None:
        """Start the consumer tasks and the pruner."""
        self._tasks = [
            asyncio.create_task(self._loop(i), name=f"receiver-worker-{i}")
            for i in range(self._concurrency)
        ]
        if self._clock is not None:
            self._tasks.append(asyncio.create_task(self._prune_loop(), name="pruner"))

    async def stop(self) -> None:
        """Stop consuming; unfinished entries stay in the journal."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _prune_loop(self) -> None:
        assert self._clock is not None  # noqa: S101 (start() checks)
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
        while not self._stopping.is_set():
            try:
                # One consumer name per task: a task completes what it claimed
                # before claiming again, which lets a store hand back entries
                # whose delivery was lost mid-call.
                entry = await self._claim(f"{self.consumer}/{index}")
            except StoreUnavailableError as exc:
                log.warning("journal_unavailable", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if entry is None:
                continue
            try:
                await self._handle(entry, index)
            except Exception:  # the supervisor: a worker task never dies
                # A bug in one entry must not stop the journal; the entry stays
                # unfinished and is claimed again after the lease.
                log.exception("entry_failed", payload_id=entry.id)
                await asyncio.sleep(1.0)

    async def _claim(self, consumer: str) -> JournalEntry | None:
        if self._bell is None:
            return await self._store.claim(consumer, wait=1.0)
        # Armed before looking: a ring that arrives while the claim runs is
        # kept, so a payload journalled meanwhile is never slept through.
        self._bell.armed()
        entry = await self._store.claim(consumer, wait=0.0)
        if entry is None:
            await self._bell.wait(IDLE_RECHECK)
        return entry

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
                    await self._store.complete(entry.id, TraceRecords(traces))
                    if self._on_complete is not None:
                        self._on_complete(traces)
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
        except StoreUnavailableError:
            return
        self._metrics.journal_depth.set(count)
        if self._clock is not None:
            age = (self._clock() - oldest).total_seconds() if oldest else 0.0
            self._metrics.journal_oldest_age.set(max(age, 0.0))
