"""Consume the journal: parse each accepted payload, plan, run, record, mark done.

Started and stopped by the app (``cleanup_ctx``); ``Processor`` is also what
``receiver replay`` uses, so replay and the live path decide identically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from receiver.engine.planner import PlanContext, plan
from receiver.engine.runner import Runner
from receiver.errors import InputError
from receiver.metrics import Metrics
from receiver.model import Alert, AlertTrace, Source
from receiver.rulebook.loader import Rulebook
from receiver.sources import alertmanager, events_v2, pagerduty
from receiver.store.base import JournalEntry, Store

log = structlog.get_logger("receiver.worker")


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
    ) -> None:
        self.rulebook = rulebook
        self._runner = runner
        self._clock = clock
        self._ctx = ctx
        self._metrics = metrics
        self._alertname_from = pagerduty_alertname_from

    def alerts(self, source: Source, body: bytes, now: datetime) -> list[Alert]:
        """Parse a stored body of ``source`` into alerts."""
        try:
            data: Any = json.loads(body)
        except ValueError as exc:
            raise InputError(f"stored payload is not JSON: {exc}") from exc
        if source == "alertmanager":
            return alertmanager.to_alerts(data, now)
        if source == "pagerduty":
            return pagerduty.to_alerts(data, now, alertname_from=self._alertname_from)
        return events_v2.to_alerts(data, now, body=body)

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
        for alert in alerts:
            at = now or self._clock()
            trace = await (runner or self._runner).run(
                plan(alert, self.rulebook, at, ctx or self._ctx), payload_id
            )
            traces.append(trace)
            if not count:
                continue
            self._count(trace)
            log.info(
                "alert_decided",
                fingerprint=alert.fingerprint,
                status=alert.status,
                source=alert.source,
                alertname=alert.labels.get("alertname", ""),
                rules=[m.rule for m in trace.matches],
                payload_id=payload_id,
            )
        return traces

    def _count(self, trace: AlertTrace) -> None:
        m = self._metrics
        if m is None:
            return
        m.alerts.labels(trace.alert.source, trace.alert.status).inc()
        if not trace.matches:
            m.unmatched.labels(trace.alert.source).inc()
        for match in trace.matches:
            m.rule_matches.labels(match.rule, match.severity.value).inc()
            for step in match.steps:
                m.steps.labels(step.type, step.decision.value).inc()

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
    ) -> None:
        self._store = store
        self._processor = processor
        self._concurrency = concurrency
        self._metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Start the consumer tasks."""
        self._tasks = [
            asyncio.create_task(self._loop(i), name=f"receiver-worker-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Stop consuming; unfinished entries stay in the journal."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, index: int) -> None:
        while not self._stopping.is_set():
            entry = await self._store.claim(timeout=1.0)
            if entry is None:
                continue
            structlog.contextvars.bind_contextvars(payload_id=entry.id, worker=index)
            try:
                traces = await self._processor.process(entry)
            except InputError as exc:
                # Accepted bodies were validated at the edge; a stored body that no
                # longer parses is recorded, not retried forever.
                log.warning("payload_unprocessable", error=str(exc))
                traces = []
            await self._store.complete(entry.id, [t.to_json() for t in traces])
            if self._metrics is not None:
                self._metrics.journal_depth.set(await self._store.pending())
            structlog.contextvars.unbind_contextvars("payload_id", "worker")
