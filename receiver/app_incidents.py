"""Wire incidents into the application: their store, service, ticker, API, metric.

Called once from ``create_app``, which hands it only what the settings mean for
incidents: the incident store beside the main store (the same SQLite file or
the same Redis, with tables and keys of its own, ``incident_store_for``), the
announcer over the configured sinks and, with a PagerDuty API token, the
escalator (``Runtime.announcer``, ``Runtime.escalator``), the mode and the tick
interval. The service also gets the app's clock and the live rulebook (for
severity re-evaluation). The ticker is an asyncio task in ``cleanup_ctx``; it is
installed before the worker's context, so at shutdown the worker stops first and
the service then drains what it was handed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from aiohttp import web
from prometheus_client import Counter

from receiver.errors import ConfigError, InputError, RuleError
from receiver.incidents.effects import Announcer, Escalator
from receiver.incidents.policy import DEFAULT_POLICY, policy_from
from receiver.incidents.records import from_record
from receiver.incidents.report import render_report
from receiver.incidents.service import EFFECT_LEASE, IncidentService
from receiver.metrics import Metrics
from receiver.retrying import cancel_and_wait
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.settings import IncidentSettings, Mode, StoreSettings, load_settings
from receiver.steps.catalog import builtin_registry
from receiver.store import sqlite_file
from receiver.store.base import Store
from receiver.store.incidents_base import (
    IncidentReader,
    IncidentStore,
    marks_kept_for,
)
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentReader, SqliteIncidentStore
from receiver.store.sqlite import SqliteStore
from receiver.web.auth import Authenticator
from receiver.web.incidents import IncidentHandlers, register

INCIDENTS = web.AppKey("incidents", IncidentService)


@dataclass(frozen=True)
class IncidentWiring:
    """What tests (and embedders) may replace.

    ``tick_every``: seconds between ticks, ``"settings"`` for
    ``incident_tick_interval``, ``None`` for no ticker. ``sleep`` waits between
    ticks (``asyncio.sleep`` unless given).
    """

    store: IncidentStore | None = None
    announcer: Announcer | None = None
    escalator: Escalator | None = None
    tick_every: float | Literal["settings"] | None = "settings"
    sleep: Callable[[float], Awaitable[None]] | None = None

    def every(self, incidents: IncidentSettings) -> float | None:
        """Seconds between ticks (``None``: no ticker)."""
        if self.tick_every == "settings":
            return incidents.tick_interval.total_seconds()
        return self.tick_every


def incident_store_for(
    store: Store, where: StoreSettings, lease: timedelta = timedelta(minutes=5)
) -> IncidentStore:
    """The incident store beside the main store.

    ``lease``: the journal's; fold marks are kept three of them, past the time
    a payload folded by a worker that was killed takes to be decided again.
    On SQLite, the process that took the store's claims over (``reclaims``:
    one instance, the worker) takes over the incident effects a previous
    worker had claimed too, at its first tick (an edge's lapse with the lease:
    the edge may still be sending them).
    """
    keep = marks_kept_for(lease)
    if isinstance(store, SqliteStore):
        # Through the store's own writer: its writes join the journal's commits.
        return SqliteIncidentStore(
            store.path, keep_marks=keep, reclaim=store.reclaims, host=store
        )
    if where.is_redis:
        return RedisIncidentStore(where.url, keep_marks=keep)
    return SqliteIncidentStore(":memory:", keep_marks=keep)


def install_incidents(
    app: web.Application,
    *,
    store: Store,
    incidents: IncidentStore,
    announcer: Announcer | None,
    escalator: Escalator | None,
    mode: Mode,
    every: float | None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], datetime],
    lease: timedelta = EFFECT_LEASE,
    rulebook: Callable[[], Rulebook],
    auth: Authenticator,
    metrics: Metrics,
) -> IncidentService:
    """Build the service, add its routes and ticker; return it for ``hand_over``.

    ``store`` holds the approvals, ``incidents`` the incidents; ``every``:
    seconds between ticks, ``None`` for no ticker (an edge process);
    ``lease``: the journal's, for which a receiver claims an incident's
    pending effects (one that dies with some leaves them to another, or to
    its successor, once it lapses).
    """
    breaches = Counter(
        "receiver_incident_clock_breaches",
        "Incident clocks (acknowledge, mitigate, resolve) past their target.",
        ["severity", "clock"],
        registry=metrics.registry,
    )
    service = IncidentService(
        incidents,
        clock=clock,
        rulebook=rulebook,
        announcer=announcer,
        escalator=escalator,
        on_breach=lambda severity, name: breaches.labels(severity, name).inc(),
        approvals=store.approvals,
        mode=mode,
        effect_lease=lease,
    )
    register(app, IncidentHandlers(service, auth))
    app[INCIDENTS] = service

    async def ticker(_app: web.Application) -> AsyncIterator[None]:
        task = None
        if every is not None:
            task = asyncio.create_task(
                service.run(every, sleep or asyncio.sleep), name="incidents"
            )
        yield
        if task is not None:
            await cancel_and_wait(task)
        await service.aclose()
        for client in (announcer, escalator):
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()

    app.cleanup_ctx.append(ticker)
    return service


def incident_reader_at(url: str) -> IncidentReader:
    """Read the incidents of the store ``url`` names, writing nothing to it.

    For ``receiver report``, which may be pointed at a live service's store: a
    SQLite file is read by ``SqliteIncidentReader`` (never through the incident
    store, which writes to its file as it opens); the Redis incident store's
    ``get`` sends a GET only. ``sqlite://:memory:`` holds no incidents.

    Raises:
        ConfigError: the URL names no store.
        InputError: the SQLite file it names does not exist.
    """
    if url.startswith("sqlite://"):
        path = sqlite_file(url)
        if path is None:
            return SqliteIncidentStore(":memory:")
        if not path.is_file():
            raise InputError(
                f"{url}: no such store file (expected the file receiver serve "
                "keeps with store.url sqlite:///PATH)"
            )
        return SqliteIncidentReader(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisIncidentStore(url)
    raise ConfigError(
        f"unsupported store URL {url.split('://', 1)[0]!r}; use sqlite:///PATH "
        "or redis://HOST"
    )


async def print_report(
    incident_id: str,
    config: Path | None = None,
    store_url: str | None = None,
    rules: list[Path] | None = None,
) -> int:
    """``receiver report ID``: print the Markdown report; 1 if there is none."""
    settings = load_settings(config)
    store = incident_reader_at(store_url or settings.store.url)
    try:
        record = await store.get(incident_id)
        if record is None:
            sys.stderr.write(
                f"receiver: no incident {incident_id!r} in {store_url or 'the store'}"
                "; GET /api/v1/incidents lists them\n"
            )
            return 1
        try:
            policy = policy_from(
                load_rulebook(
                    rules or settings.engine.rules, steps=builtin_registry()
                ).incidents
            )
        except RuleError:
            sys.stderr.write(
                "receiver: rules do not load; the report uses the runbook's targets\n"
            )
            policy = DEFAULT_POLICY
        sys.stdout.write(render_report(from_record(record), policy, datetime.now(UTC)))
        return 0
    finally:
        await store.close()
