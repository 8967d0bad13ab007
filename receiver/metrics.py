"""Prometheus collectors for one app instance (own registry, no globals).

Built by ``create_app``; incremented by the edge, the worker and the runner.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric


class Metrics:
    """The receiver's metrics, all prefixed ``receiver_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
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

    def render(
        self,
        *,
        only: frozenset[str] | None = None,
        without: frozenset[str] = frozenset(),
    ) -> bytes:
        """Prometheus text exposition of the collectors (or of some families)."""
        if only is None and not without:
            return generate_latest(self.registry)
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
    }
)


class _Families:
    """A view of a registry with some metric families only."""

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
                yield family
