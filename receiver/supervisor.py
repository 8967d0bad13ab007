"""Run the worker as a child process of the edge: start it, restart it, stop it.

Used by ``receiver serve`` (role ``all`` on a file or Redis store): the edge
process accepts and journals, the child decides, so a storm of decisions never
slows a 202 and the two use both cores. Each child gets one end of a new doorbell
socket pair (``receiver.engine.doorbell``) as an inherited file descriptor. If it
exits for any reason other than our own stop, it is started again after a short
backoff (doubling up to ``MAX_BACKOFF``, reset once a child has run for a while);
the journal keeps everything it had not finished, and the new child takes it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog
from aiohttp import web

from receiver.retrying import Doubling, cancel_and_wait

log = structlog.get_logger("receiver.supervisor")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A child that ran this long (seconds) was healthy: the next restart is quick.
HEALTHY_AFTER = 30.0
STOP_GRACE = 30.0


class WorkerSupervisor:
    """Keeps one worker child process running while the edge runs."""

    def __init__(
        self, args: Sequence[str], connect: Callable[[], Awaitable[socket.socket]]
    ) -> None:
        # ``args``: the ``receiver serve`` options to pass on (rules, config,
        # mode); the role and the doorbell's descriptor are added here.
        # ``connect``: the worker's end of a new doorbell line, one per child
        # (``EdgeBell.new_line``).
        self._args = list(args)
        self._connect = connect
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return self._proc.pid if self._proc is not None else None

    def reload(self) -> None:
        """Pass a rules reload on to the worker child (SIGHUP), if it runs."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)

    def command(self, fd: int) -> list[str]:
        """The child's command line, its doorbell on descriptor ``fd``."""
        return [
            sys.executable,
            "-m",
            "receiver",
            "serve",
            *self._args,
            "--role",
            "worker",
            "--bell-fd",
            str(fd),
        ]

    async def start(self) -> None:
        """Start the child and keep it running."""
        self._task = asyncio.create_task(self._keep_running(), name="supervisor")

    async def _keep_running(self) -> None:
        waits = Doubling(first=FIRST_BACKOFF, cap=MAX_BACKOFF)
        while not self._stopping.is_set():
            started = time.monotonic()
            bell: socket.socket | None = None
            try:
                bell = await self._connect()
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command(bell.fileno()), pass_fds=(bell.fileno(),)
                )
            except OSError as exc:
                # No socket pair (out of descriptors), or fork or exec failed
                # (no memory, no process slots): the edge must not be left
                # without a worker, so try again later.
                wait = waits.failed()
                log.exception(
                    "worker_not_started",
                    error=f"{type(exc).__name__}: {exc}",
                    detail="the journal keeps what is accepted; trying again",
                    restart_in=wait,
                )
                await asyncio.sleep(wait)
                continue
            finally:
                # The child has its own copy (or none was made): with ours
                # closed, the edge hears end of file when the child is gone.
                if bell is not None:
                    bell.close()
            self.starts += 1
            log.info("worker_started", pid=self._proc.pid, starts=self.starts)
            code = await self._proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= HEALTHY_AFTER:
                waits.reset()
            wait = waits.failed()
            log.error(
                "worker_exited",
                pid=self._proc.pid,
                code=code,
                detail="the journal keeps its unfinished entries; a new worker "
                "takes them up",
                restart_in=wait,
            )
            await asyncio.sleep(wait)

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``STOP_GRACE``)."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            await cancel_and_wait(self._task)


def supervise(
    supervisor: WorkerSupervisor,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry: the worker child lives as long as the app."""

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await supervisor.start()
        yield
        await supervisor.stop()

    return lifecycle
