"""A worker child whose cleanup outlives its grace says so, and nothing else.

Cut short at the grace, aiohttp cancels the cleanup steps still running; with
stops that never swallow their own cancellation, two steps cut short reach
aiohttp as two errors, which it raises together as ``CleanupError``. That is
the grace running out, logged as ``worker_stop_timed_out`` (the child then
exits 1), not a crash with a traceback. Steps that fail (one or several) are
``worker_stop_failed``, exit 1, no traceback either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from receiver.cli.serving import stop_within
from receiver.errors import StoreUnavailableError
from receiver.retrying import cancel_and_wait


async def _runner(*steps) -> web.AppRunner:
    app = web.Application()
    app.cleanup_ctx.extend(steps)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    return runner


async def _stops_a_task(_app: web.Application) -> AsyncIterator[None]:
    child = asyncio.create_task(asyncio.Event().wait())
    yield
    await cancel_and_wait(child)


async def _hangs(_app: web.Application) -> AsyncIterator[None]:
    yield
    await asyncio.Event().wait()  # never ends: the grace cuts it short


async def _breaks(_app: web.Application) -> AsyncIterator[None]:
    yield
    msg = "a bug in a cleanup step"
    raise RuntimeError(msg)


async def test_two_steps_cut_short_are_the_grace_running_out() -> None:
    # Cleanup runs in reverse: the hang first, then the step that stops a task.
    runner = await _runner(_stops_a_task, _hangs)
    with structlog.testing.capture_logs() as logs:
        assert await stop_within(runner, 0.05) is False
    assert [e["event"] for e in logs] == ["worker_stop_timed_out"]


async def test_a_clean_stop_is_true() -> None:
    runner = await _runner(_stops_a_task)
    with structlog.testing.capture_logs() as logs:
        assert await stop_within(runner, 10) is True
    assert logs == []


async def test_steps_that_fail_are_a_failed_stop() -> None:
    async def also_breaks(app: web.Application) -> AsyncIterator[None]:
        async for _ in _breaks(app):
            yield

    runner = await _runner(_breaks, also_breaks)
    with structlog.testing.capture_logs() as logs:
        assert await stop_within(runner, 10) is False
    [line] = logs
    assert line["event"] == "worker_stop_failed"
    assert all("a bug in a cleanup step" in e for e in line["errors"])


async def _fine(_app: web.Application) -> AsyncIterator[None]:
    yield


async def _store_gone(_app: web.Application) -> AsyncIterator[None]:
    yield
    msg = "SQLite store receiver.db cannot be written: disk I/O error"
    raise StoreUnavailableError(msg)


async def test_one_step_that_fails_is_a_failed_stop_too() -> None:
    """Aiohttp raises one failed step as itself (two as ``CleanupError``)."""
    runner = await _runner(_fine, _store_gone)
    with structlog.testing.capture_logs() as logs:
        assert await stop_within(runner, 10) is False
    [line] = logs
    assert line["event"] == "worker_stop_failed"
    assert "disk I/O error" in line["errors"][0]
