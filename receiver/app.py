"""``create_app``: the aiohttp application with every dependency passed in.

Called by ``receiver serve`` and by tests. The store, the clock, the step
executors and the sinks are injected; the worker (and the sink dispatcher it feeds)
are started and stopped in ``cleanup_ctx``.

``role`` says which part of the service this process is: ``all`` (the edge and
the worker in one process: tests, tools, an in-memory store), ``edge`` (webhooks
and the API; journals, rings the worker's doorbell, sheds load at the journal's
bound, runs no playbook; serves the incident API without the incident ticker)
or ``worker`` (decides the journal and runs the incident ticker; serves only
the health and metrics routes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypedDict

import httpx
import structlog
from aiohttp import web

from receiver.app_incidents import (
    IncidentWiring,
    incident_store_for,
    install_incidents,
)
from receiver.engine.doorbell import EdgeBell, WorkerBell
from receiver.engine.guards import FiringCheck, GuardKeeper
from receiver.engine.reuse import DiagnosticsReuse
from receiver.engine.runner import Executor, Runner
from receiver.engine.worker import Processor, Worker, consumer_name
from receiver.errors import StoreUnavailableError
from receiver.metrics import WORKER_FAMILIES, Metrics
from receiver.retrying import cancel_and_wait, stop_if_cancelled
from receiver.rulebook.loader import Rulebook
from receiver.runtime import Runtime
from receiver.sinks import Sink, SinkDispatcher, playbook_sinks
from receiver.sinks.outbox import Outbox
from receiver.steps.changes import ChangesExecutor
from receiver.steps.http import warm_up
from receiver.store.base import Store
from receiver.store.diagnostics import cache_beside
from receiver.store.eviction import check_eviction
from receiver.store.outbox import outbox_beside
from receiver.web.admin import Admin
from receiver.web.approvals import ApprovalAPI, ApprovalDesk, OnCall
from receiver.web.auth import AUTHENTICATOR, Authenticator
from receiver.web.change_events import ChangeEvents, change_reader, events_api_errors
from receiver.web.console import Console
from receiver.web.handlers import Backpressure, Handlers
from receiver.web.problems import make_middleware
from receiver.web.reload import Reloader, step_types
from receiver.web.routing import Routes
from receiver.web.slack import SlackInteractions

log = structlog.get_logger("receiver")
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
PROCESSOR = web.AppKey("processor", Processor)
SINKS = web.AppKey("sinks", SinkDispatcher)
# The sink outbox this process reads and writes (the dispatcher's, where it runs).
OUTBOX = web.AppKey("outbox", Outbox)
Role = Literal["all", "edge", "worker"]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


async def expire_approvals(
    store: Store, clock: Callable[[], datetime], every: timedelta
) -> None:
    """Mark pending approvals past their expiry ``expired``, every ``every``.

    Expired approvals are then pruned with other finished state (``retention``).
    """
    while True:
        try:
            expired = await store.expire_approvals(clock())
        except StoreUnavailableError as exc:
            log.warning("approval_expiry_failed", error=str(exc))
        else:
            if expired:
                log.info("approvals_expired", count=expired)
        stop_if_cancelled()
        await asyncio.sleep(every.total_seconds())


def add_routes(app: web.Application, handlers: Handlers, role: Role = "all") -> None:
    """Every route of the service (the OpenAPI document lists the same).

    A worker process (role ``worker``) serves only health and metrics.
    """
    r = Routes(app.router)
    if role == "worker":
        r.add_get("/healthz", handlers.healthz)
        r.add_get("/readyz", handlers.readyz)
        r.add_get("/metrics", handlers.metrics)
        return
    r.add_post(
        "/webhooks/alertmanager", handlers.alertmanager, name="webhook:alertmanager"
    )
    r.add_post("/webhooks/pagerduty", handlers.pagerduty, name="webhook:pagerduty")
    r.add_post(
        "/v2/enqueue", events_api_errors(handlers.enqueue), name="webhook:events_v2"
    )
    r.add_get("/api/v1/decisions", handlers.decisions)
    r.add_get("/api/v1/payloads", handlers.payloads)
    r.add_get("/api/v1/payloads/{id}", handlers.payload)
    r.add_post("/api/v1/replay", handlers.replay)
    r.add_get("/api/v1/approvals", handlers.approvals)
    r.add_get("/healthz", handlers.healthz)
    r.add_get("/readyz", handlers.readyz)
    r.add_get("/metrics", handlers.metrics)
    r.add_get("/openapi.json", handlers.openapi)


def _add_operations(
    app: web.Application,
    handlers: Handlers,
    reloader: Reloader,
    *,
    store: Store,
    auth: Authenticator,
    clock: Callable[[], datetime],
) -> None:
    """Routes for change events and, with rule paths, ``POST /-/reload``."""
    changes = ChangeEvents(
        store=store, auth=auth, clock=clock, read_body=handlers.read_body
    )
    routes = Routes(app.router)
    routes.add_post(
        "/v2/change/enqueue",
        events_api_errors(changes.enqueue),
        name="webhook:change_events",
    )
    if reloader.paths:
        routes.add_post("/-/reload", reloader.handle)


def _flush_accepted(
    handlers: Handlers,
) -> Callable[[web.Application], Awaitable[None]]:
    """A shutdown hook logging the last summary of accepted webhooks."""

    async def flush(_app: web.Application) -> None:
        handlers.flush_accepted()

    return flush


class EdgeHooks(TypedDict, total=False):
    """What the edge's handlers need of a worker process."""

    on_journaled: Callable[[], None]
    worker_metrics: Callable[[], bytes]
    metrics_without: frozenset[str]
    worker_ready: Callable[[], bool]


def _edge_hooks(bell: EdgeBell | None) -> EdgeHooks:
    """What the edge's handlers need of a worker process, if there is one."""
    if bell is None:
        return {}
    return {
        "on_journaled": bell.ring,
        "worker_metrics": lambda: bell.worker_metrics,
        "metrics_without": WORKER_FAMILIES,
        "worker_ready": lambda: bell.worker_ready,
    }


def _eviction_checked(
    store: Store, metrics: Metrics, *, execute: bool, allowed: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Say (or refuse, in execute mode) at start if the store may evict keys."""

    async def check(_app: web.Application) -> AsyncIterator[None]:
        eviction = await check_eviction(store, execute=execute, allowed=allowed)
        if eviction is not None:
            metrics.store_evicts(eviction.possible)
        yield

    return check


def _edge_lifecycle(
    store: Store,
    bell: EdgeBell | None,
    firing_check: FiringCheck | None,
    reloader: Reloader,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        if bell is not None:
            bell.start()
        reloader.listen()
        yield
        reloader.stop_listening()
        if bell is not None:
            await bell.aclose()
        close_check = getattr(firing_check, "aclose", None)
        if close_check is not None:
            await close_check()
        await store.close()

    return lifecycle


def create_app(  # noqa: C901, PLR0915 (the one place that wires everything)
    runtime: Runtime,
    *,
    rulebook: Rulebook,
    store: Store,
    clock: Callable[[], datetime] = utc_now,
    executors: Mapping[str, Executor] | None = None,
    metrics: Metrics | None = None,
    sinks: Mapping[str, Sink] | None = None,
    firing_check: FiringCheck | None = None,
    rule_paths: Sequence[Path] | None = None,
    incidents: IncidentWiring | None = None,
    role: Role = "all",
    edge_bell: EdgeBell | None = None,
    worker_bell: WorkerBell | None = None,
    backpressure: Backpressure | None = None,
    reload_worker: Callable[[], None] | None = None,
) -> web.Application:
    """Build the application; the worker starts with the app and stops with it.

    ``runtime`` is ``build_runtime(settings)``.
    ``sinks`` default to those settings configure (``runtime.sinks``); pass ``{}``
    for none. ``edge_bell`` (role ``edge``) wakes a worker process and brings
    its metrics; ``worker_bell`` (role ``worker``) is the other end.
    With ``rule_paths`` (what ``rulebook`` was loaded from), SIGHUP and
    ``POST /-/reload`` load them again; ``reload_worker`` then passes the
    reload on to a worker process.
    """
    settings = runtime.settings
    mode = settings.engine.mode
    metrics = metrics or Metrics()
    consumer = consumer_name()
    keeper = GuardKeeper(store, consumer, runtime.guards, firing_check=firing_check)
    scrub = runtime.scrub()
    # Kept beside the store: the worker child, a restart and replicas reuse it.
    reuse_for = settings.engine.diagnostics_reuse
    reuse = DiagnosticsReuse(
        reuse_for,
        clock,
        cache=cache_beside(store, settings.store.url)
        if reuse_for > timedelta(0)
        else None,
    )
    runner = Runner(
        # changes.recent reads this receiver's own store: always available.
        {"changes": ChangesExecutor(change_reader(store), clock), **(executors or {})},
        clock,
        mode=mode,
        guards=keeper,
        scrub=scrub,
        reuse=reuse,
    )
    metrics.mode.labels(mode).set(1)
    processor = Processor(
        rulebook,
        runner,
        clock,
        runtime.plan,
        metrics=metrics,
        pagerduty_alertname_from=runtime.alertname_from,
        store=store,
        scrub=scrub,
    )
    auth = Authenticator.from_settings(settings.auth, loopback=settings.loopback_only)
    handlers = Handlers(
        store=store,
        processor=processor,
        auth=auth,
        metrics=metrics,
        clock=clock,
        alertname_from=runtime.alertname_from,
        limits=runtime.limits,
        execute=mode == "execute",
        backpressure=backpressure or runtime.backpressure,
        **_edge_hooks(edge_bell),
    )
    app = web.Application(
        middlewares=[make_middleware(metrics)],
        client_max_size=runtime.limits.max_body_bytes + 1,
    )
    app[STORE] = store
    if worker_bell is None:
        # First of all that starts: an execute-mode refusal comes before any
        # worker, ticker or child. A supervised worker child's edge has just
        # checked the same store.
        app.cleanup_ctx.append(
            _eviction_checked(
                store,
                metrics,
                execute=mode == "execute",
                allowed=settings.store.allow_eviction,
            )
        )
    app.on_cleanup.append(lambda _app: reuse.aclose())
    app[AUTHENTICATOR] = auth
    app[METRICS] = metrics
    app[PROCESSOR] = processor
    reloader = Reloader(
        processor,
        rule_paths or [],
        metrics=metrics,
        auth=auth,
        clock=clock,
        on_reloaded=reload_worker,
    )
    # One outbox object per process: the dispatcher's (where it runs) and the
    # API's. Opened on first use; closing it twice is harmless.
    outbox = outbox_beside(store, settings.store.url)
    app[OUTBOX] = outbox
    app.on_cleanup.append(lambda _app: outbox.close())
    admin = Admin(store=store, auth=auth, metrics=metrics, clock=clock, outbox=outbox)
    add_routes(app, handlers, role)
    app.on_shutdown.append(_flush_accepted(handlers))
    console: Console | None = None
    if role != "worker":
        _add_operations(app, handlers, reloader, store=store, auth=auth, clock=clock)
        admin.routes(app.router)
        # One approval policy for the API, the console and Slack.
        client = httpx.AsyncClient(
            timeout=settings.pagerduty.oncall_timeout.total_seconds()
        )
        pd_token = settings.pagerduty.api_token
        desk = ApprovalDesk(
            store=store,
            processor=processor,
            clock=clock,
            on_call=OnCall(
                client,
                settings.pagerduty.api_url,
                pd_token.get_secret_value() if pd_token else None,
            ),
            on_journaled=edge_bell.ring if edge_bell is not None else None,
        )
        Routes(app.router).add_post(
            "/api/v1/approvals/{id}", ApprovalAPI(desk, auth).decide
        )
        SlackInteractions(
            slack=settings.slack, store=store, desk=desk, clock=clock, client=client
        ).attach(app)
        console = Console(
            store=store,
            auth=auth,
            desk=desk,
            processor=processor,
            admin=admin,
            clock=clock,
            defaults=runtime.guards,
            reloader=reloader,
            secrets=list(runtime.secrets),
        )
        console.attach(app)

    wiring = incidents or IncidentWiring()
    incident_service = install_incidents(
        app,
        store=store,
        incidents=wiring.store
        or incident_store_for(store, settings.store, settings.journal.lease),
        announcer=wiring.announcer or runtime.announcer(),
        escalator=wiring.escalator or runtime.escalator(),
        mode=mode,
        # The worker process runs the incident ticker; the edge only serves
        # the incident API over the same store.
        every=None if role == "edge" else wiring.every(settings.incidents),
        sleep=wiring.sleep,
        clock=clock,
        lease=settings.journal.lease,
        rulebook=lambda: processor.rulebook,
        auth=auth,
        metrics=metrics,
    )
    if console is not None:
        console.incidents = incident_service
    if role == "edge":
        app.cleanup_ctx.append(
            _edge_lifecycle(store, edge_bell, firing_check, reloader)
        )
        return app
    sinks = runtime.sinks() if sinks is None else sinks
    dispatcher = None
    if sinks or settings.sinks.default:
        dispatcher = SinkDispatcher(
            sinks,
            store=store,
            outbox=outbox,
            choose=lambda trace: playbook_sinks(
                trace, processor.rulebook.playbooks, settings.sinks.default
            ),
            clock=clock,
            scrub=scrub,
            on_outcome=lambda sink, outcome: metrics.sink_deliveries.labels(
                sink, outcome
            ).inc(),
            on_outcomes=incident_service.sink_outcomes,
            on_counts=metrics.sink_outbox,
        )
        app[SINKS] = dispatcher
    metrics.known(step_types=step_types(rulebook), sinks=sinks)
    worker = Worker(
        store,
        processor,
        settings.engine.workers,
        metrics=metrics,
        consumer=consumer,
        clock=clock,
        hand_over=incident_service.put,
        outbox=dispatcher.put if dispatcher is not None else None,
        lease=settings.journal.lease,
        max_attempts=settings.journal.max_attempts,
        bell=worker_bell,
        prune_every=settings.retention.prune_interval,
    )

    async def close_after_worker() -> None:
        """The bell, the sink dispatcher, the executors and the store, in turn."""
        if worker_bell is not None:
            await worker_bell.aclose()
        if dispatcher is not None:
            await dispatcher.aclose()
        for executor in (executors or {}).values():
            close = getattr(executor, "aclose", None)
            if close is not None:
                await close()
        close_check = getattr(firing_check, "aclose", None)
        if close_check is not None:
            await close_check()
        await store.close()

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        if settings.engine.paused and await store.pause() is None:
            await admin.switch(
                paused=True, by="settings", reason="started with paused: true"
            )
        metrics.paused.set(1 if await store.pause() else 0)
        if worker_bell is not None:
            worker_bell.start(lambda: metrics.render(only=WORKER_FAMILIES))
        await warm_up()
        await worker.start()
        if dispatcher is not None:
            dispatcher.start()  # also what an earlier run left in the outbox
        reloader.listen()
        sweeper = asyncio.create_task(
            expire_approvals(store, clock, settings.guards.approval_sweep),
            name="approval-expiry",
        )
        yield
        await cancel_and_wait(sweeper)
        reloader.stop_listening()
        # A task of the worker died of a bug earlier: its stop raises that once
        # it has handed back and retired. The rest is closed all the same (a
        # cancellation, the grace running out, still ends the cleanup at once).
        error: Exception | None = None
        try:
            await worker.stop()
        except Exception as exc:  # noqa: BLE001 (raised below, once all is closed)
            error = exc
        await close_after_worker()
        if error is not None:
            raise error

    app.cleanup_ctx.append(lifecycle)
    return app
