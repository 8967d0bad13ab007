"""Prometheus collectors for one app instance (own registry, no globals).

Built by ``create_app``; incremented by the edge, the worker, the runner and the
sink dispatcher. Besides the ``receiver_*`` metrics the registry carries the
standard ``process_*`` and ``python_*`` collectors, and ``receiver_build_info``.
The exposition has no ``*_created`` series (Prometheus' own exporters drop them
too), and the label values known at start are pre-initialised at zero so that
``rate()`` and ``increase()`` work from the first scrape.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from receiver import __version__
from receiver.model import SOURCES, Decision

STATUSES = ("firing", "resolved", "acknowledged")
WEBHOOK_SOURCES = (*SOURCES, "change_events")
WEBHOOK_OUTCOMES = (
    "accepted",
    "bad_request",
    "unauthorized",
    "forbidden",
    "too_large",
    "unsupported_media",
    "unavailable",
)
# The ``guard`` of every refusal (engine/guards.py, planner, runner).
GUARDS = (
    "paused",
    "circuit_breaker",
    "resolved",
    "silenced",
    "inhibited",
    "approval",
    "lock",
    "idempotency",
    "cooldown",
    "budget",
    "require_firing_for",
    "namespace",
    "template",
    "executor",
    "already_done",
    "store",
    "acknowledged",
)
SINK_OUTCOMES = ("sent", "skipped", "failed")
# receiver_request_duration_seconds' buckets (upper bounds; +Inf follows).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _BeforeCollect:
    """Registered first: brings tallies kept outside the metrics in before a read.

    The edge counts what every request adds in plain numbers (a metric child
    takes a lock per ``inc`` and walks its buckets per ``observe``) and adds
    them to the metrics here, whenever the registry is collected.
    """

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for callback in self.callbacks:
            callback()
        return iter(())


class Metrics:
    """The receiver's metrics, all prefixed ``receiver_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._before = _BeforeCollect()
        r.register(self._before)
        self.webhooks = Counter(
            "receiver_webhooks",
            "Webhook requests by source and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "receiver_alerts",
            "Alerts received by source and status.",
            ["source", "status"],
            registry=r,
        )
        self.rule_matches = Counter(
            "receiver_rule_matches",
            "Rule matches by rule and severity.",
            ["rule", "severity"],
            registry=r,
        )
        self.steps = Counter(
            "receiver_steps",
            "Step decisions by step type and decision.",
            ["type", "decision"],
            registry=r,
        )
        self.events_recorded = Counter(
            "receiver_events_recorded",
            "Deliveries stored and recorded as events, not alerts (PagerDuty "
            "service.*, pagey.ping, event types this receiver does not know).",
            ["source"],
            registry=r,
        )
        self.alerts_truncated = Counter(
            "receiver_alerts_truncated",
            "Alerts Alertmanager left out of webhooks (truncatedAlerts, max_alerts).",
            registry=r,
        )
        self.unmatched = Counter(
            "receiver_alerts_unmatched",
            "Alerts no rule matched, by source.",
            ["source"],
            registry=r,
        )
        self.request_duration = Histogram(
            "receiver_request_duration_seconds",
            "HTTP request duration by route.",
            ["route", "method", "status"],
            registry=r,
            buckets=REQUEST_BUCKETS,
        )
        self.journal_depth = Gauge(
            "receiver_journal_depth",
            "Accepted payloads not yet processed.",
            registry=r,
        )
        self.journal_oldest_age = Gauge(
            "receiver_journal_oldest_age_seconds",
            "Age of the oldest accepted payload not yet processed.",
            registry=r,
        )
        self.journal_parked = Gauge(
            "receiver_journal_parked",
            "Journal entries parked after too many failed attempts (see "
            "GET /api/v1/parked).",
            registry=r,
        )
        self.paused = Gauge(
            "receiver_paused",
            "1 while remediations are paused (POST /api/v1/pause), else 0.",
            registry=r,
        )
        self.store_eviction = Gauge(
            "receiver_store_eviction_possible",
            "1 while the store's Redis may evict keys (maxmemory set, "
            "maxmemory-policy not noeviction), so locks and claims can vanish; "
            "0 when it cannot (or the store is SQLite); NaN when Redis would "
            "not say. Read at start and at each scrape.",
            registry=r,
        )
        self.guard_skips = Counter(
            "receiver_guard_skips",
            "Steps skipped or held, by the guard that said no.",
            ["guard"],
            registry=r,
        )
        self.duplicates = Counter(
            "receiver_duplicate_deliveries",
            "Redeliveries recognised and dropped, by source.",
            ["source"],
            registry=r,
        )
        self.store_errors = Counter(
            "receiver_store_unavailable",
            "Payloads refused with 503 because the store was unavailable.",
            registry=r,
        )
        self.shed = Counter(
            "receiver_webhooks_shed",
            "Webhooks refused with 503 because the journal was at its bound "
            "(depth or age); the sender retries them.",
            ["source", "bound"],
            registry=r,
        )
        self.mode = Gauge(
            "receiver_mode",
            "1 for the mode decisions are made in (dry-run, diagnose, execute).",
            ["mode"],
            registry=r,
        )
        self.rules_loaded = Gauge(
            "receiver_rules_loaded", "Rules currently loaded.", registry=r
        )
        self.reload_ok = Gauge(
            "receiver_config_last_reload_successful",
            "Whether the last rules (re)load succeeded (1) or kept the old rules (0).",
            registry=r,
        )
        self.reload_time = Gauge(
            "receiver_config_last_reload_success_timestamp_seconds",
            "When the rules were last loaded successfully (Unix time).",
            registry=r,
        )
        # The same three as the worker process sees them: it is the one that
        # decides, and it loads the rule files on its own (at its start, and on
        # the SIGHUP a successful reload passes on), so it can disagree.
        self.worker_rules_loaded = Gauge(
            "receiver_worker_rules_loaded",
            "Rules the worker (which decides) has loaded.",
            registry=r,
        )
        self.worker_reload_ok = Gauge(
            "receiver_worker_config_last_reload_successful",
            "Whether the worker's last rules (re)load succeeded (1) or kept its "
            "old rules (0).",
            registry=r,
        )
        self.worker_reload_time = Gauge(
            "receiver_worker_config_last_reload_success_timestamp_seconds",
            "When the worker last loaded the rules successfully (Unix time).",
            registry=r,
        )
        self.sink_deliveries = Counter(
            "receiver_sink_deliveries",
            "Sink deliveries by sink and outcome (sent, skipped, failed).",
            ["sink", "outcome"],
            registry=r,
        )
        self.sink_outbox_pending = Gauge(
            "receiver_sink_outbox_pending",
            "Sink deliveries waiting in the outbox or in flight.",
            registry=r,
        )
        self.sink_outbox_parked = Gauge(
            "receiver_sink_outbox_parked",
            "Sink deliveries parked after too many failed attempts (kept in the "
            "outbox, not retried).",
            registry=r,
        )
        self.build_info = Gauge(
            "receiver_build_info",
            "Always 1; the labels say which build runs.",
            ["version", "python_version", "python_implementation"],
            registry=r,
        )
        self.build_info.labels(
            __version__, platform.python_version(), platform.python_implementation()
        ).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._initialise()

    def _initialise(self) -> None:
        """Every label value known before the first event, at zero."""
        for source in WEBHOOK_SOURCES:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhooks.labels(source, outcome)
        for source in SOURCES:
            for status in STATUSES:
                self.alerts.labels(source, status)
            self.unmatched.labels(source)
            self.duplicates.labels(source)
            self.events_recorded.labels(source)
        for guard in GUARDS:
            self.guard_skips.labels(guard)

    def before_collect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a flush of tallies) each time the metrics are read."""
        self._before.callbacks.append(callback)

    @staticmethod
    def add_observations(child: Histogram, buckets: list[int], total: float) -> None:
        """Add observations to a histogram child at once, as ``observe`` would.

        ``buckets``: how many fell in each bucket (the first whose bound they are
        within, +Inf last); ``total``: their sum. prometheus_client keeps both
        as values of the child.
        """
        for value, count in zip(child._buckets, buckets, strict=True):  # noqa: SLF001
            if count:
                value.inc(count)
        child._sum.inc(total)  # noqa: SLF001

    def known(
        self,
        *,
        step_types: Iterable[str],
        sinks: Iterable[str],
        rules: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Pre-initialise step types, sinks and (rule, fixed severity) pairs."""
        for rule, severity in rules:
            self.rule_matches.labels(rule, severity)
        for step_type in step_types:
            for decision in Decision:
                self.steps.labels(step_type, decision.value)
        for sink in sinks:
            for outcome in SINK_OUTCOMES:
                self.sink_deliveries.labels(sink, outcome)

    def rules_load_succeeded(self, rules: int, at: float) -> None:
        """This process loaded ``rules`` rules at ``at`` (Unix time)."""
        for count, ok, when in (
            (self.rules_loaded, self.reload_ok, self.reload_time),
            (self.worker_rules_loaded, self.worker_reload_ok, self.worker_reload_time),
        ):
            count.set(rules)
            ok.set(1)
            when.set(at)

    def rules_load_failed(self) -> None:
        """This process failed to load the rules and keeps its current ones."""
        self.reload_ok.set(0)
        self.worker_reload_ok.set(0)

    def store_evicts(self, possible: bool | None) -> None:
        """Set ``receiver_store_eviction_possible`` (None: Redis would not say)."""
        self.store_eviction.set(math.nan if possible is None else int(possible))

    def sink_outbox(self, pending: int, parked: int) -> None:
        """The sink outbox's rows now: waiting or in flight, and parked."""
        self.sink_outbox_pending.set(pending)
        self.sink_outbox_parked.set(parked)

    def render(
        self,
        *,
        only: frozenset[str] | None = None,
        without: frozenset[str] = frozenset(),
    ) -> bytes:
        """Prometheus text exposition of the collectors (or of some families)."""
        return generate_latest(_Families(self.registry, only, without))


# What the worker counts: with the worker in its own process, the edge shows
# these families from the worker's reports and the rest from its own.
WORKER_FAMILIES = frozenset(
    {
        "receiver_alerts",
        "receiver_rule_matches",
        "receiver_steps",
        "receiver_alerts_unmatched",
        "receiver_guard_skips",
        "receiver_events_recorded",
        # Sinks are fed by the worker's completed payloads.
        "receiver_sink_deliveries",
        "receiver_sink_outbox_pending",
        "receiver_sink_outbox_parked",
        # The rules the worker decides by (the edge keeps its own three).
        "receiver_worker_rules_loaded",
        "receiver_worker_config_last_reload_successful",
        "receiver_worker_config_last_reload_success_timestamp_seconds",
    }
)


class _Families:
    """A view of a registry: some families only, never ``*_created`` samples."""

    def __init__(
        self,
        registry: CollectorRegistry,
        only: frozenset[str] | None,
        without: frozenset[str],
    ) -> None:
        self._registry = registry
        self._only = only
        self._without = without

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.name in self._without:
                continue
            if self._only is None or family.name in self._only:
                family.samples = [
                    s for s in family.samples if not s.name.endswith("_created")
                ]
                yield family
