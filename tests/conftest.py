"""Shared test fixtures: an app under test, and fresh logging per test.

The app under test has an in-memory store, a tiny rulebook, a fixed clock and every
credential set. Whether a missing peer binary skips a test (local runs) or fails
it (CI sets ``RECEIVER_REQUIRE_E2E=1``) is decided in one place:
``peers.skip_or_fail``.

``make unit`` runs the suite in several processes (pytest-xdist), so tests keep
to what is their own: a Redis is a ``redis-server`` started on a free port for
the module (``redis_url``), or keys under a random prefix on a shared one; every
peer listens on ``peers.free_port()``, never on a fixed port; files go under
``tmp_path``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis.asyncio
import structlog
from peers import run_redis
from pydantic import SecretStr

from receiver.app import create_app
from receiver.errors import StoreUnavailableError
from receiver.logs import Summary
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings, flat_keys, groups
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import JournalEntry, Store
from receiver.store.incidents_base import IncidentStore
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore
from receiver.store.redis import RedisStore
from receiver.store.sqlite import SqliteStore

# ---------------------------------------------------------------- app under test

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
# The alertnames the runbook rules (rules/) decide.
RUNBOOK_ALERTNAMES = (
    "SarkApiDown",
    "SarkHighLatency",
    "SarkAuthFailures",
    "SarkDatabaseDown",
    "SarkSiemForwardingDown",
    "SarkFailedLoginSpike",
    "SarkPolicyCacheCorrupted",
)


class Ticking:
    """A clock from ``start`` that advances ``step`` on every reading.

    Apps under test get one: guards and stores never see a frozen time.
    """

    def __init__(
        self, start: datetime = NOW, step: timedelta = timedelta(milliseconds=1)
    ) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def passing(clock: Ticking) -> Callable[[float], Awaitable[None]]:
    """A sleep on ``clock``: the time passes at once (the clock jumps).

    For the claim holders (``renew_sleep``) where the test only needs time to
    pass while a delivery is held, not to stop it at a chosen point (``Alarm``).
    The holder runs it as a task beside the delivery, so the delivery still
    gets its turn between two renewals.
    """

    async def sleep(seconds: float) -> None:
        clock.now += timedelta(seconds=seconds)

    return sleep


TOKEN = "tok-3b9f0d2c"
OTHER_TOKEN = "tok-second-71aa"
ADMIN_TOKEN = "tok-admin-4c2e"
APPROVE_TOKEN = "tok-approve-9b31"
BASIC_USER = "am"
BASIC_PASSWORD = "pw-8c1e"
PD_SECRET = "pd-secret-old-0e5b"
PD_SECRET_NEW = "pd-secret-new-9d47"
ROUTING_KEY = "rk-4d2f6a8b0c1e3f5a7b9d1e3f5a7b9d1e"
MAX_BODY = 4096
SECRETS = (
    TOKEN,
    OTHER_TOKEN,
    ADMIN_TOKEN,
    APPROVE_TOKEN,
    BASIC_PASSWORD,
    PD_SECRET,
    PD_SECRET_NEW,
    ROUTING_KEY,
)

WEB_RULES = """
playbooks:
  noop: {}
  pods:
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
rules:
  - name: crashloop
    match: ['alertname="KubePodCrashLooping"', 'namespace=~"prod.*"']
    severity: P1
    playbook: pods
  - name: pd-triggered
    match: ['event_type="incident.triggered"']
    sources: [pagerduty]
    severity: P2
    playbook: noop
  - name: pd-any
    match: ['incident_id=~".+"']
    sources: [pagerduty]
    status: any
    severity: P3
    playbook: noop
  - name: enqueue
    match: ['alertname="DiskFull"']
    sources: [events_v2]
    severity: P2
    playbook: noop
"""


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str = BASIC_USER, password: str = BASIC_PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def pd_signature(body: bytes, *secrets: str) -> str:
    """An ``X-PagerDuty-Signature`` value with one ``v1=`` entry per secret."""
    return ",".join(
        "v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets
    )


def flat_settings(**values: Any) -> Settings:
    """``Settings`` from flat names (``kube_mode=...``, as the variables are named).

    The tests' shorthand; a group may also be given whole (``kube={...}``).
    """
    nested: dict[str, dict[str, Any]] = {}
    names = flat_keys()
    for key, value in values.items():
        if key in groups() and isinstance(value, dict):
            nested.setdefault(key, {}).update(value)
            continue
        group, field = names[key]
        nested.setdefault(group, {})[field] = value
    return Settings(**nested)


def full_settings(**overrides: Any) -> Settings:
    """Settings with every credential configured (tests may override any field)."""
    values: dict[str, Any] = {
        "host": "0.0.0.0",  # noqa: S104 (never bound: tests use the in-process client)
        "auth_tokens": [SecretStr(TOKEN), SecretStr(OTHER_TOKEN)],
        "admin_tokens": [SecretStr(ADMIN_TOKEN)],
        "approve_tokens": [SecretStr(APPROVE_TOKEN)],
        "basic_auth": SecretStr(f"{BASIC_USER}:{BASIC_PASSWORD}"),
        "pagerduty_secrets": [SecretStr(PD_SECRET), SecretStr(PD_SECRET_NEW)],
        "routing_keys": [SecretStr(ROUTING_KEY)],
        "max_body_bytes": MAX_BODY,
        "workers": 2,
    }
    values.update(overrides)
    return flat_settings(**values)


@pytest.fixture
def web_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(WEB_RULES, encoding="utf-8")
    return path


@pytest.fixture
def make_client(aiohttp_client: Any, web_rules: Path) -> Callable[..., Awaitable[Any]]:
    """Build an app from ``Settings`` and return its test client.

    The client carries ``.store`` and ``.metrics`` for assertions.
    """

    async def factory(
        settings: Settings | None = None, extra_routes: list[Any] | None = None
    ) -> Any:
        store = MemoryStore()
        metrics = Metrics()
        app = create_app(
            build_runtime(settings or full_settings()),
            rulebook=load_rulebook([web_rules], steps=builtin_registry()),
            store=store,
            clock=Ticking(),
            metrics=metrics,
        )
        for method, path, handler in extra_routes or []:
            app.router.add_route(method, path, handler)
        client = await aiohttp_client(app)
        client.store = store
        client.metrics = metrics
        return client

    return factory


async def wait_for_decisions(
    client: Any,
    params: dict[str, str],
    *,
    count: int = 1,
    headers: dict[str, str] | None = None,
    attempts: int = 200,
) -> list[dict[str, Any]]:
    """Poll ``GET /api/v1/decisions`` until ``count`` records match (bounded)."""
    found: list[dict[str, Any]] = []
    for _ in range(attempts):
        resp = await client.get(
            "/api/v1/decisions", params=params, headers=headers or bearer()
        )
        assert resp.status == 200, await resp.text()
        found = (await resp.json())["decisions"]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    pytest.fail(f"only {len(found)} of {count} decisions for {params} after polling")


def summary_contexts(monkeypatch: Any) -> tuple[list[dict[str, Any]], asyncio.Event]:
    """Record the log context each ``receiver.logs.Summary`` line is flushed in.

    Returns the contexts seen and an event set at the first flush (which then
    logs nothing).
    """
    seen: list[dict[str, Any]] = []
    flushed = asyncio.Event()

    def flush(_summary: Summary) -> None:
        seen.append(structlog.contextvars.get_contextvars())
        flushed.set()

    monkeypatch.setattr(Summary, "flush", flush)
    return seen, flushed


# The store calls that change the journal: each wakes whoever waits for it to drain.
_JOURNAL_WRITES = (
    "append",
    "claim",
    "claim_batch",
    "release",
    "complete",
    "complete_batch",
    "park",
    "retry_parked",
)


def _journal_changes(store: Any) -> asyncio.Event:
    """An event set after each journal write made through ``store`` (hooked once).

    The app's worker calls the very store object the test holds, so wrapping
    its methods on the instance sees every write the worker makes.
    """
    changed = getattr(store, "_test_journal_changed", None)
    if changed is not None:
        return changed
    changed = asyncio.Event()

    def hook(name: str) -> None:
        method = getattr(store, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            finally:
                changed.set()

        setattr(store, name, wrapped)

    for name in _JOURNAL_WRITES:
        hook(name)
    store._test_journal_changed = changed
    return changed


async def park_entry(
    store: Any, entry_id: str, fingerprint: str, at: datetime, reason: str
) -> None:
    """Journal a one-alert Alertmanager payload as ``entry_id`` and park it."""
    body = (
        b'{"version": "4", "status": "firing", "groupKey": "g", "alerts": '
        b'[{"status": "firing", "labels": {"alertname": "X"}, '
        b'"startsAt": "2026-11-26T09:00:00Z", "fingerprint": "'
        + fingerprint.encode()
        + b'"}]}'
    )
    await store.append(JournalEntry(entry_id, "alertmanager", at, body), [])
    lease = await store.claim("crashed", 1.0, at)
    assert lease is not None
    await store.park(lease, reason, at)


async def never_answer_then_fail(started: asyncio.Event) -> NoReturn:
    """A store call that never answers; cancelled, it raises its own error.

    As redis-py's asyncio client does at times: a ``ConnectionError`` where
    the ``CancelledError`` was (here ``StoreUnavailableError``, as the stores
    raise it). ``started`` is set once the call is waiting.
    """
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise StoreUnavailableError("connection lost") from None
    raise AssertionError  # never reached: the wait ends only by cancellation


def stored_payloads(db: Path, body: bytes, count: int) -> Path:
    """A SQLite store at ``db`` journaling ``count`` copies of ``body``, an hour old.

    For the offline commands (``backtest``, ``replay``); called outside any
    event loop.
    """

    async def fill() -> None:
        store = SqliteStore(str(db))
        start = datetime.now(UTC) - timedelta(hours=1)
        for i in range(count):
            entry = JournalEntry(
                f"e{i:03d}", "alertmanager", start + timedelta(minutes=i), body
            )
            await store.append(entry, [])
        await store.close()

    asyncio.run(fill())
    return db


async def journal_drained(store: Any, *, timeout: float = 10.0) -> None:
    """Wait until the app's worker has decided every journaled entry.

    Woken by the worker's own journal writes, not by polling: the journal is
    read again after each one, until nothing is left or ``timeout`` passes
    with entries still undecided.
    """
    changed = _journal_changes(store)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        changed.clear()
        if await store.pending() == (0, None):
            return
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            await asyncio.wait_for(changed.wait(), left)
        except TimeoutError:
            break
    pytest.fail(f"journal not drained in {timeout} s: {await store.pending()}")


def _test_logging() -> None:
    """The defaults of structlog, with plain tracebacks.

    The default console renderer draws tracebacks with rich when it is
    installed (a development dependency here, not the service's): about half a
    second of CPU per ``log.exception``, which made tests that log exceptions in
    a loop slow enough to miss their timeouts on a loaded machine.
    """
    structlog.reset_defaults()
    processors = list(structlog.get_config()["processors"])
    processors[-1] = structlog.dev.ConsoleRenderer(
        exception_formatter=structlog.dev.plain_traceback
    )
    structlog.configure(processors=processors)


_test_logging()


@pytest.fixture(autouse=True)
def _fresh_logging():
    """Each test starts with structlog's defaults (the CLI configures it globally).

    The CLI's configuration caches each module logger on first use, bound to
    the stdout of that moment (a test's captured, later closed, stream): those
    caches are dropped too.
    """
    yield
    _test_logging()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
    logging.captureWarnings(False)  # noqa: FBT003
    for name, module in list(sys.modules.items()):
        proxy = getattr(module, "log", None) if name.startswith("receiver") else None
        if isinstance(proxy, structlog._config.BoundLoggerLazyProxy):
            vars(proxy).pop("bind", None)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def reopen_incidents(
    request: pytest.FixtureRequest, tmp_path: Any
) -> Callable[[], IncidentStore]:
    """Opens the same incident store (both kinds) each time it is called.

    A new store object on the same file or keys: a restart, nothing in memory.
    """
    if request.param == "sqlite":
        path = str(tmp_path / "incidents.db")
        return lambda: SqliteIncidentStore(path)
    url = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return lambda: RedisIncidentStore(url, prefix=prefix)


@pytest.fixture(params=["sqlite", "redis"])
def reopen_clocked(
    request: pytest.FixtureRequest, tmp_path: Any
) -> Callable[[Callable[[], datetime]], IncidentStore]:
    """``reopen_incidents`` on a clock of the test's: the stores' marks read it."""
    if request.param == "sqlite":
        path = str(tmp_path / "incidents.db")
        return lambda clock: SqliteIncidentStore(path, clock=clock)
    url = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return lambda clock: RedisIncidentStore(url, prefix=prefix, clock=clock)


@pytest.fixture(params=["sqlite", "redis"])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[Store]:
    """Each test on both stores; on Redis, keys of its own, removed after."""
    made: Store
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        made = RedisStore(url, prefix=prefix)
    else:
        made = SqliteStore(str(tmp_path / "state.db"))
    yield made
    await made.close()
    if url:
        client = redis.asyncio.Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


async def refusal(resp: Any) -> str:
    """Why a console page refused (its ``role=alert`` paragraph): HTML, not JSON."""
    assert resp.content_type == "text/html", resp.content_type
    text = await resp.text()
    found = re.search(r"<p role=alert>(.*?)</p>", text, re.DOTALL)
    assert found, text[:2000]
    return html.unescape(found.group(1))
