"""A Redis store that may evict the receiver's keys is said at start, or refused.

Real redis-servers, one per setting: ``--maxmemory 10mb --maxmemory-policy
volatile-lru`` (it may evict), ``--maxmemory 10mb --maxmemory-policy
noeviction``, ``volatile-lru`` without a ``maxmemory`` (nothing is evicted),
and one with ``INFO`` renamed away, as some managed Redis do. Each app is
started as ``receiver serve`` starts it (``AppRunner.setup``), so a refusal is
the exception ``serve`` reports; ``receiver serve`` itself is run once, to see
that refusal as its one log line and exit 1.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import structlog
from aiohttp import web
from conftest import Ticking, full_settings
from peers import free_port, run_redis

from receiver.app import create_app
from receiver.cli import main
from receiver.engine.doorbell import WorkerBell
from receiver.errors import ConfigError
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store.base import Eviction
from receiver.store.eviction import check_eviction, risk
from receiver.store.redis import RedisStore

RULES = """
playbooks:
  noop: {}
rules:
  - name: first
    match: ['alertname="A"']
    playbook: noop
"""
TEN_MB = 10 * 1024 * 1024
OVERRIDE = "RECEIVER_STORE_ALLOW_EVICTION"


def _redis(factory: pytest.TempPathFactory, *args: str) -> Iterator[str]:
    with run_redis(factory.mktemp("redis"), args=args) as url:
        yield url


@pytest.fixture(scope="module")
def evicting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _redis(
        tmp_path_factory, "--maxmemory", "10mb", "--maxmemory-policy", "volatile-lru"
    )


@pytest.fixture(scope="module")
def noeviction(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _redis(
        tmp_path_factory, "--maxmemory", "10mb", "--maxmemory-policy", "noeviction"
    )


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _redis(tmp_path_factory, "--maxmemory-policy", "volatile-lru")


@pytest.fixture(scope="module")
def silent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _redis(tmp_path_factory, "--rename-command", "INFO", "")


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


def _app(
    url: str,
    rules: Path,
    store: RedisStore,
    *,
    mode: str = "dry-run",
    allow: bool = False,
    role: str = "all",
    worker_bell: WorkerBell | None = None,
) -> tuple[web.Application, Metrics]:
    metrics = Metrics()
    settings = full_settings(store=url, mode=mode, store_allow_eviction=allow)
    app = create_app(
        build_runtime(settings),
        rulebook=load_rulebook([rules], steps=builtin_registry()),
        store=store,
        clock=Ticking(),
        metrics=metrics,
        sinks={},
        role=role,  # type: ignore[arg-type]
        worker_bell=worker_bell,
    )
    return app, metrics


@contextlib.asynccontextmanager
async def _store(url: str) -> AsyncIterator[RedisStore]:
    """A store under a prefix of its own; its keys are removed after."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(url, prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        client = redis.asyncio.Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


@contextlib.asynccontextmanager
async def _started(app: web.Application) -> AsyncIterator[web.AppRunner]:
    """The app started as ``receiver serve`` starts it, and cleaned up after."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield runner
    finally:
        await runner.cleanup()


def _eviction_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if str(e["event"]).startswith("store_eviction")]


async def test_an_evicting_redis_is_one_error_line_in_dry_run(evicting, rules):
    """volatile-lru with a maxmemory: one error line says what, the risk and the fix."""
    async with _store(evicting) as store:
        app, metrics = _app(evicting, rules, store)
        with structlog.testing.capture_logs() as logs:
            async with _started(app):
                pass
    [line] = _eviction_lines(logs)
    assert line["event"] == "store_eviction_policy"
    assert line["log_level"] == "error"
    assert line["maxmemory_policy"] == "volatile-lru"
    assert line["maxmemory"] == TEN_MB
    detail = line["detail"]
    assert "maxmemory 10mb, maxmemory-policy volatile-lru" in detail
    assert "a remediation run twice" in detail
    assert "Set maxmemory-policy noeviction" in detail
    assert "a Redis of its own" in detail
    assert OVERRIDE in detail  # what --execute would need
    assert metrics.store_eviction._value.get() == 1


async def test_execute_mode_refuses_to_start_on_an_evicting_redis(evicting, rules):
    """In execute mode the start fails before anything runs or touches the store."""
    async with _store(evicting) as store:
        app, _ = _app(evicting, rules, store, mode="execute")
        runner = web.AppRunner(app)
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(ConfigError) as refused,
        ):
            await runner.setup()
        await runner.cleanup()
        client = redis.asyncio.Redis.from_url(evicting)
        try:
            # No worker registered, no consumer group made: nothing was written.
            assert [k async for k in client.scan_iter(match=f"{store._prefix}:*")] == []
        finally:
            await client.aclose()
    message = str(refused.value)
    assert message.startswith("refusing to run remediations (execute mode)")
    assert "maxmemory-policy volatile-lru" in message
    assert "Set maxmemory-policy noeviction" in message
    assert f"{OVERRIDE}=true" in message
    # The refusal is the one line (serve logs it as serve_failed), not two.
    assert _eviction_lines(logs) == []


async def test_the_override_lets_execute_mode_start_and_still_says_it(evicting, rules):
    """store.allow_eviction: execute mode starts; the error line is logged anyway."""
    async with _store(evicting) as store:
        app, _ = _app(evicting, rules, store, mode="execute", allow=True)
        with structlog.testing.capture_logs() as logs:
            async with _started(app):
                pass
    [line] = _eviction_lines(logs)
    assert line["log_level"] == "error"
    assert f"remediations run all the same: {OVERRIDE} is set" in line["detail"]


@pytest.mark.parametrize("role", ["edge", "worker"])
async def test_every_role_checks_its_store(evicting, rules, role):
    """A lone edge and a lone worker refuse in execute mode alike."""
    async with _store(evicting) as store:
        app, _ = _app(evicting, rules, store, mode="execute", role=role)
        runner = web.AppRunner(app)
        with pytest.raises(ConfigError, match="maxmemory-policy volatile-lru"):
            await runner.setup()
        await runner.cleanup()


async def test_a_supervised_worker_child_leaves_the_check_to_its_edge(evicting, rules):
    """A worker child (its edge checked the same store) starts without a word."""
    edge_end, worker_end = socket.socketpair()
    async with _store(evicting) as store:
        app, _ = _app(
            evicting,
            rules,
            store,
            mode="execute",
            role="worker",
            worker_bell=WorkerBell(worker_end),
        )
        with structlog.testing.capture_logs() as logs:
            async with _started(app):
                pass
    edge_end.close()
    worker_end.close()
    assert _eviction_lines(logs) == []


@pytest.mark.parametrize("server", ["noeviction", "unlimited"])
async def test_a_redis_that_cannot_evict_says_nothing(request, rules, server):
    """noeviction, or no maxmemory at all: execute mode starts, nothing is logged."""
    url = request.getfixturevalue(server)
    async with _store(url) as store:
        app, metrics = _app(url, rules, store, mode="execute")
        with structlog.testing.capture_logs() as logs:
            async with _started(app):
                pass
    assert _eviction_lines(logs) == []
    assert metrics.store_eviction._value.get() == 0


async def test_a_redis_that_refuses_info_does_not_block_the_start(silent, rules):
    """INFO renamed away: one warning saying so; execute mode starts all the same."""
    async with _store(silent) as store:
        app, metrics = _app(silent, rules, store, mode="execute")
        with structlog.testing.capture_logs() as logs:
            async with _started(app):
                pass
    [line] = _eviction_lines(logs)
    assert line["event"] == "store_eviction_unknown"
    assert line["log_level"] == "warning"
    assert "unknown command" in line["detail"]
    assert "noeviction" in line["detail"]
    assert math.isnan(metrics.store_eviction._value.get())


async def test_a_redis_out_of_reach_does_not_block_an_edge(rules):
    """INFO raising (nobody listens): the edge starts, with one warning."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore(url, prefix="unused", connect_timeout=0.5)
    app, _ = _app(url, rules, store, mode="execute", role="edge")
    try:
        with structlog.testing.capture_logs() as logs:
            async with _started(app):
                pass
    finally:
        await store.close()
    [line] = _eviction_lines(logs)
    assert line["event"] == "store_eviction_unknown"
    assert "is unreachable" in line["detail"]


async def test_a_reply_without_the_fields_is_unknown(evicting, monkeypatch):
    """An INFO memory reply that lacks maxmemory_policy is unknown, not safe."""
    async with _store(evicting) as store:

        async def info(section: str) -> dict[str, object]:
            assert section == "memory"
            return {"used_memory": 1024, "maxmemory": TEN_MB}

        monkeypatch.setattr(store._redis, "info", info)
        with structlog.testing.capture_logs() as logs:
            eviction = await check_eviction(store, execute=True, allowed=False)
    assert eviction is not None
    assert eviction.possible is None
    assert "no maxmemory_policy" in (eviction.unknown or "")
    assert [e["event"] for e in logs] == ["store_eviction_unknown"]


async def test_readyz_and_metrics_say_it_as_redis_says_it_now(
    aiohttp_client, evicting, rules
):
    """/readyz details and the gauge follow Redis; readiness does not depend on it."""
    async with _store(evicting) as store:
        app, _ = _app(evicting, rules, store)
        client = await aiohttp_client(app)
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["store_eviction"] == {
            "possible": True,
            "maxmemory_policy": "volatile-lru",
            "maxmemory": TEN_MB,
        }
        admin = redis.asyncio.Redis.from_url(evicting)
        try:
            await admin.config_set("maxmemory-policy", "noeviction")
            ready = await client.get("/readyz")
            scrape = await client.get("/metrics")
        finally:
            await admin.config_set("maxmemory-policy", "volatile-lru")
            await admin.aclose()
        assert (await ready.json())["store_eviction"]["possible"] is False
        assert "receiver_store_eviction_possible 0.0" in await scrape.text()
        await client.close()


async def test_readyz_on_sqlite_has_no_eviction(make_client):
    """A SQLite store evicts nothing: /readyz does not speak of it."""
    client = await make_client()
    body = await (await client.get("/readyz")).json()
    assert "store_eviction" not in body


@pytest.mark.parametrize(
    ("policy", "maxmemory", "possible"),
    [
        ("volatile-lru", TEN_MB, True),
        ("allkeys-lfu", TEN_MB, True),
        ("noeviction", TEN_MB, False),
        ("volatile-lru", 0, False),
        (None, TEN_MB, None),
        ("allkeys-lru", None, None),
    ],
)
def test_when_eviction_is_possible(policy, maxmemory, possible):
    """Only a limit and a policy other than noeviction evict; missing is unknown."""
    assert Eviction("r:1", policy, maxmemory).possible is possible


def test_an_allkeys_policy_names_the_journal():
    """allkeys-* drops keys without an expiry too: the journal is named."""
    said = risk(Eviction("r:1", "allkeys-lru", 3 * 1024**3))
    assert "maxmemory 3gb, maxmemory-policy allkeys-lru" in said
    assert "the journal" in said
    odd = risk(Eviction("r:1", "volatile-ttl", 1000))
    assert "maxmemory 1000 bytes" in odd
    assert "keys with an expiry" in odd


def test_serve_in_execute_mode_is_one_line_and_exit_1(evicting, rules, tmp_path):
    """``receiver serve --execute``: one serve_failed line naming the fix; exit 1.

    The default role on Redis runs the worker as a child: the edge refuses
    before it starts one.
    """
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver",
            "serve",
            "--execute",
            "--port",
            str(free_port()),
            "--rules",
            str(rules),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **os.environ,
            "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_STORE": evicting,
        },
        check=False,
    )
    assert done.returncode == 1, done.stderr
    [entry] = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert entry["event"] == "serve_failed"
    assert "maxmemory-policy volatile-lru" in entry["error"]
    assert f"{OVERRIDE}=true" in entry["error"]


# Each command and its exit code: a report of an incident the store has not
# got is 1, which says the store was read.
READING = {
    "backtest": (["backtest", "--rules", "{rules}", "--store", "{url}", "--json"], 0),
    "report": (
        ["report", "INC-2026-01-01-001", "--store", "{url}", "--rules", "{rules}"],
        1,
    ),
}


@pytest.mark.parametrize("name", READING)
def test_reading_commands_do_not_speak_of_eviction(
    evicting, rules, capsys, monkeypatch, name
):
    """``backtest`` and ``report`` only read the store: no eviction line."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    command, code = READING[name]
    args = [a.format(rules=rules, url=evicting) for a in command]
    with structlog.testing.capture_logs() as logs:
        assert main(args) == code
    out = capsys.readouterr()
    assert "eviction" not in out.out + out.err
    assert _eviction_lines(logs) == []
