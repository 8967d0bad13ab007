"""``build_runtime``: what the settings mean to each part of the receiver.

``receiver serve``, ``receiver replay``, ``receiver backtest``, ``create_app``
and the tests' app factories all start here, so a setting (the namespace
allowlist, the guard defaults, the PagerDuty alertname label) means the same in
each. Each part gets only its group: the executors their families' groups, the
sinks ``sinks``/``pagerduty``/``slack``, the store ``store`` and ``retention``.
Building a ``Runtime`` opens nothing; its methods make the clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import httpx

from receiver.engine.guards import GuardDefaults
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Executor, Runner
from receiver.engine.worker import Processor
from receiver.retrying import Sleep
from receiver.rulebook.loader import Rulebook
from receiver.settings import Settings
from receiver.sinks import Sink, build_sinks, scrubber
from receiver.sinks.announce import (
    PagerDutyEscalator,
    SinkAnnouncer,
    build_announcer,
    build_escalator,
)
from receiver.sources.alertmanager_api import AlertmanagerApi
from receiver.sources.caps import AlertCaps
from receiver.steps import build_executors
from receiver.store import Retention, open_store
from receiver.store.base import Store
from receiver.web.handlers import Backpressure, EdgeLimits


@dataclass(frozen=True)
class Runtime:
    """Settings turned into the values the engine, store and edge are built with."""

    settings: Settings
    plan: PlanContext
    guards: GuardDefaults
    retention: Retention
    limits: EdgeLimits
    backpressure: Backpressure
    secrets: tuple[str, ...]

    @property
    def alertname_from(self) -> str:
        """The PagerDuty label used as alertname."""
        return self.settings.pagerduty.alertname_from

    def scrub(self) -> Callable[[str], str]:
        """A function masking every configured secret."""
        return scrubber(self.secrets)

    def executors(self) -> dict[str, Executor]:
        """One executor per step family the settings configure."""
        return dict(build_executors(self.settings))

    def sinks(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> dict[str, Sink]:
        """Every sink the settings configure, by name."""
        s = self.settings
        return build_sinks(
            s.sinks,
            s.pagerduty,
            s.slack,
            secrets=self.secrets,
            transport=transport,
            sleep=sleep,
        )

    def announcer(self) -> SinkAnnouncer | None:
        """What posts incident news to the sinks the settings name, if any."""
        s = self.settings
        return build_announcer(s.sinks, s.pagerduty, s.slack, secrets=self.secrets)

    def escalator(self) -> PagerDutyEscalator | None:
        """What escalates incidents in PagerDuty (with an API token and From)."""
        s = self.settings
        return build_escalator(s.sinks, s.pagerduty, secrets=self.secrets)

    def open_store(self, url: str | None = None, *, reclaim: bool = True) -> Store:
        """The state store (``url`` overrides the setting, e.g. ``--store``)."""
        return open_store(
            url or self.settings.store.url, self.retention, reclaim=reclaim
        )

    def firing_check(self) -> AlertmanagerApi | None:
        """The Alertmanager client asked before remediating, if one is set."""
        url = self.settings.alertmanager.url
        if not url:
            return None
        return AlertmanagerApi(
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0)), url
        )

    def replayer(self, rulebook: Rulebook, clock: Callable[[], datetime]) -> Processor:
        """A processor that decides offline: nothing runs, the allowlist holds."""
        return Processor(
            rulebook,
            Runner({}, clock, scrub=self.scrub()),
            clock,
            replace(self.plan, execute=False, diagnose=False),
            pagerduty_alertname_from=self.alertname_from,
            scrub=self.scrub(),
        )


def build_runtime(settings: Settings) -> Runtime:
    """The runtime ``settings`` describe."""
    mode = settings.engine.mode
    guards, edge = settings.guards, settings.edge
    return Runtime(
        settings=settings,
        plan=PlanContext(
            execute=mode == "execute",
            diagnose=mode == "diagnose",
            namespaces=tuple(guards.namespaces)
            if guards.namespaces is not None
            else None,
        ),
        guards=GuardDefaults(
            cooldown=guards.cooldown,
            budget_max=guards.budget_max,
            budget_window=guards.budget_window,
            global_budget_max=guards.global_budget_max,
            global_budget_window=guards.global_budget_window,
            circuit_failures=guards.circuit_failures,
            circuit_cool_off=guards.circuit_cool_off,
            approval_ttl=guards.approval_ttl,
        ),
        retention=Retention(
            max_age=settings.retention.max_age,
            max_payloads=settings.retention.payloads,
            max_decisions=settings.retention.decisions,
            lease=settings.journal.lease,
        ),
        limits=EdgeLimits(
            max_body_bytes=edge.max_body_bytes,
            max_unauthenticated_body_bytes=edge.max_unauthenticated_body_bytes,
            unauthenticated_body_reads=edge.unauthenticated_body_reads,
            body_timeout=edge.body_timeout.total_seconds(),
            caps=AlertCaps(
                max_labels=edge.max_labels,
                max_annotations=edge.max_annotations,
                max_label_value_bytes=edge.max_label_value_bytes,
                max_annotation_value_bytes=edge.max_annotation_value_bytes,
                max_alert_bytes=edge.max_alert_bytes,
            ),
        ),
        backpressure=Backpressure(
            max_depth=settings.journal.max_depth,
            max_age=settings.journal.max_age.total_seconds(),
            shed_pause=settings.journal.shed_pause.total_seconds(),
        ),
        secrets=tuple(settings.secret_values()),
    )
