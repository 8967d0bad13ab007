"""Diagnostics reuse outlives the process: kept in SQLite or Redis beside the store.

An unchanged alert occurrence decided by another process (the worker child, a
restarted receiver, a replica) reuses what the first one found, within the
window on the injected clock; a changed alert or an expired window runs again.
The caches are real (a SQLite file, a throwaway redis-server); only the
executors are ours, counting what runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio
import structlog
from conftest import bearer, full_settings, journal_drained
from incident_helpers import TickingClock, example, rulebook
from peers import free_port, run_redis
from test_modes import CountingExecutor, api_down

from receiver.app import create_app
from receiver.app_incidents import IncidentWiring
from receiver.engine.planner import PlanContext
from receiver.engine.reuse import DiagnosticsReuse, decode, encode
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.metrics import Metrics
from receiver.model import Decision, StepKind, StepTrace, freeze
from receiver.runtime import build_runtime
from receiver.store import SqliteStore
from receiver.store.diagnostics import (
    DiagnosticsCache,
    RedisDiagnosticsCache,
    SqliteDiagnosticsCache,
)

WINDOW = timedelta(minutes=10)
FAMILIES = ("k8s", "http", "prometheus", "redis", "changes")


def process(clock, executor, cache: DiagnosticsCache) -> Processor:
    """One receiver process: its own runner and in-memory copy, a shared cache."""
    runner = Runner(
        dict.fromkeys(FAMILIES, executor),
        clock,
        mode="diagnose",
        reuse=DiagnosticsReuse(WINDOW, clock, cache=cache),
    )
    return Processor(rulebook(), runner, clock, PlanContext(diagnose=True))


@pytest.fixture(params=["sqlite", "redis"])
async def caches(request, tmp_path) -> AsyncIterator[Callable[[], DiagnosticsCache]]:
    """Opens caches that share one place, as two processes would."""
    opened: list[DiagnosticsCache] = []
    if request.param == "sqlite":
        path = str(tmp_path / "receiver.db")

        def open_one() -> DiagnosticsCache:
            opened.append(SqliteDiagnosticsCache(path))
            return opened[-1]

        yield open_one
    else:
        with run_redis(tmp_path) as url:

            def open_one() -> DiagnosticsCache:
                opened.append(RedisDiagnosticsCache(url))
                return opened[-1]

            yield open_one
            for cache in opened:
                await cache.close()
            return
    for cache in opened:
        await cache.close()


def diagnostics(trace) -> list[StepTrace]:
    return [s for s in trace.matches[0].steps if s.kind is StepKind.DIAGNOSTIC]


async def test_another_process_reuses_an_unchanged_occurrence(caches):
    """A second process (or a restart) reuses the first one's diagnostics."""
    clock = TickingClock()
    first_runs, second_runs = CountingExecutor(), CountingExecutor()
    first_cache = caches()
    [first] = await process(clock, first_runs, first_cache).decide(api_down())
    assert first_runs.runs
    # Redis writes results behind; closing (a restart) writes what is left.
    await first_cache.close()
    [second] = await process(clock, second_runs, caches()).decide(api_down())
    assert second_runs.runs == [], "the second process ran diagnostics again"
    for was, now in zip(diagnostics(first), diagnostics(second), strict=True):
        assert now.reason.startswith("reused from ")
        assert now.reason.endswith(was.reason)
        assert (now.type, now.target, now.decision) == (
            was.type,
            was.target,
            Decision.EXECUTED,
        )


async def test_a_changed_alert_or_an_expired_window_runs_again(caches):
    """Content is part of the key; the window is judged on the injected clock."""
    clock = TickingClock()
    seed = CountingExecutor()
    await process(clock, seed, caches()).decide(api_down())
    changed = CountingExecutor()
    await process(clock, changed, caches()).decide(api_down(description="502s too"))
    assert len(changed.runs) == len(seed.runs)
    clock.jump(minutes=11)
    expired = CountingExecutor()
    await process(clock, expired, caches()).decide(api_down())
    assert len(expired.runs) == len(seed.runs)


async def test_an_unreachable_cache_runs_the_diagnostics():
    """With Redis down the diagnostics run, and nothing raises."""
    cache = RedisDiagnosticsCache(f"redis://127.0.0.1:{free_port()}/0")
    try:
        clock = TickingClock()
        executor = CountingExecutor()
        [trace] = await process(clock, executor, cache).decide(api_down())
        assert executor.runs
        assert {s.decision for s in diagnostics(trace)} == {Decision.EXECUTED}
    finally:
        await cache.close()


async def test_redis_writes_behind_and_answers_from_memory_meanwhile(tmp_path):
    """Remembered is recalled at once; another process sees it once written."""
    at = TickingClock()()
    with run_redis(tmp_path) as url:
        first, second = RedisDiagnosticsCache(url), RedisDiagnosticsCache(url)
        raw = redis.asyncio.Redis.from_url(url)
        try:
            await first.remember("k", at, '{"t": 1}', WINDOW)
            assert await first.recall("k") == (at, '{"t": 1}')
            await first.close()
            assert await second.recall("k") == (at, '{"t": 1}')
            ttl = await raw.pttl("receiver:diagnostic:k")
            assert 0 < ttl <= WINDOW.total_seconds() * 1000
        finally:
            await second.close()
            await raw.aclose()


async def test_a_redis_write_that_fails_is_logged_and_dropped():
    """Redis down: remember does not raise; the lost write is logged, once."""
    cache = RedisDiagnosticsCache(f"redis://127.0.0.1:{free_port()}/0")
    at = TickingClock()()
    with structlog.testing.capture_logs() as logs:
        await cache.remember("k", at, "{}", WINDOW)
        await cache.remember("j", at, "{}", WINDOW)
        assert await cache.recall("k") == (at, "{}")
        await cache.close()
    lost = [e for e in logs if e["event"] == "diagnostics_cache_unreachable"]
    assert [e["dropped"] for e in lost] == [2]
    assert "ConnectionError" in lost[0]["error"]


def test_a_step_trace_survives_the_round_trip():
    """What the cache keeps decodes to the same trace."""
    trace = StepTrace(
        kind=StepKind.DIAGNOSTIC,
        type="k8s.pods",
        target="deployment/api -n prod",
        decision=Decision.EXECUTED,
        reason="3 pods, 1 crash looping",
        request=freeze({"verb": "list", "labels": {"app": "api"}}),
        result=freeze({"pods": [{"name": "api-1", "restarts": 7}]}),
        name="pods",
    )
    again = decode(encode(trace))
    assert again.to_json() == json.loads(json.dumps(trace.to_json()))


async def test_a_restarted_receiver_reuses_diagnostics_from_its_store_file(
    aiohttp_client, tmp_path: Path
):
    """Two apps in turn on one SQLite file: the second runs no diagnostic again."""
    body = example("alertmanager/sark-api-down.firing.json")
    runs: list[CountingExecutor] = []
    for _ in range(2):
        executor = CountingExecutor()
        runs.append(executor)
        store = SqliteStore(str(tmp_path / "receiver.db"))
        app = create_app(
            build_runtime(full_settings(mode="diagnose", diagnostics_reuse="10m")),
            rulebook=rulebook(),
            store=store,
            clock=TickingClock(),
            metrics=Metrics(),
            executors=dict.fromkeys(FAMILIES, executor),
            incidents=IncidentWiring(tick_every=None),
        )
        client = await aiohttp_client(app)
        resp = await client.post("/webhooks/alertmanager", json=body, headers=bearer())
        assert resp.status == 202
        await journal_drained(store)
        await client.close()
    assert runs[0].runs, "the first receiver ran the diagnostics"
    assert runs[1].runs == [], "the restarted receiver ran them again"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"kind": "diagnostic"}',
        json.dumps(
            {
                "kind": "diagnostic",
                "type": "k8s.pods",
                "target": "t",
                "decision": "maybe",
                "reason": "r",
            }
        ),
        json.dumps(
            {
                "kind": "diagnostic",
                "type": "k8s.pods",
                "target": "t",
                "decision": "executed",
                "reason": "r",
                "result": ["not", "an", "object"],
            }
        ),
    ],
    ids=["text", "array", "missing", "decision", "result"],
)
async def test_a_damaged_cache_entry_is_not_reused(text, tmp_path):
    """An entry that does not decode is ignored: the diagnostic runs again."""
    cache = SqliteDiagnosticsCache(str(tmp_path / "receiver.db"))
    clock = TickingClock()
    try:
        await cache.remember("key", clock(), text, WINDOW)
        assert await cache.recall("key") is not None
        reuse = DiagnosticsReuse(WINDOW, clock, cache=cache)
        assert await reuse.get("key") is None
    finally:
        await cache.close()
