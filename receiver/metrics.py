"""Prometheus collectors for one app instance (own registry, no globals).

Built by ``create_app``; incremented by the edge, the worker and the runner.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


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
        self.rules_loaded = Gauge(
            "receiver_rules_loaded", "Rules currently loaded.", registry=r
        )

    def render(self) -> bytes:
        """Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
