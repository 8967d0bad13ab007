"""A worker child whose one cleanup step fails logs it and exits 1 (no traceback).

aiohttp raises the error of a cleanup that failed once as itself, and only
two or more together as ``CleanupError``. ``stop_within`` catches
``TimeoutError`` and ``CleanupError`` only: a single step that fails (within
the grace or not) raises straight out of it, so the worker child ends with a
traceback (or, for a ``ReceiverError`` such as ``StoreUnavailableError``, with
``serve_failed: cannot start: ...``) instead of ``worker_stop_failed`` and
``os._exit(1)``, as two failing steps get.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from receiver.cli.serving import stop_within
from receiver.errors import StoreUnavailableError


async def _runner(*steps) -> web.AppRunner:
    app = web.Application()
    app.cleanup_ctx.extend(steps)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    return runner


async def _fine(_app: web.Application) -> AsyncIterator[None]:
    yield


async def _store_gone(_app: web.Application) -> AsyncIterator[None]:
    yield
    msg = "SQLite store receiver.db cannot be written: disk I/O error"
    raise StoreUnavailableError(msg)


async def test_one_step_that_fails_is_a_failed_stop_too() -> None:
    runner = await _runner(_fine, _store_gone)
    with structlog.testing.capture_logs() as logs:
        # Raised StoreUnavailableError out of stop_within.
        assert await stop_within(runner, 10) is False
    [line] = logs
    assert line["event"] == "worker_stop_failed"
    assert "disk I/O error" in line["errors"][0]
