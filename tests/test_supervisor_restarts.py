"""The supervisor keeps a worker child running whatever starting one raises.

In process, at our interface: ``asyncio.create_subprocess_exec`` as the
supervisor calls it is replaced by a stand-in that fails (as ``fork`` does when
the host is out of processes or memory: ``OSError``) and then starts a
process that runs until told to exit.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import structlog

from receiver import supervisor as supervisor_module
from receiver.supervisor import WorkerSupervisor


class FakeProcess:
    """A child that runs until ``exit`` is called (or it is signalled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, _sig: int) -> None:
        self.exit(-15)

    def kill(self) -> None:
        self.exit(-9)


async def test_a_worker_that_cannot_be_started_is_tried_again(monkeypatch):
    """A failed spawn (EAGAIN) is logged and retried: the edge is never left alone."""
    monkeypatch.setattr(supervisor_module, "FIRST_BACKOFF", 0.0)
    attempts: list[int] = []
    started = asyncio.Event()
    procs: list[FakeProcess] = []

    async def spawn(*_args: Any, **_kwargs: Any) -> FakeProcess:
        attempts.append(1)
        if len(attempts) <= 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        proc = FakeProcess(1000 + len(attempts))
        procs.append(proc)
        started.set()
        return proc

    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", spawn)
    edge_end, worker_end = socket.socketpair()
    sup = WorkerSupervisor([], worker_end)
    with structlog.testing.capture_logs() as logs:
        await sup.start()
        await asyncio.wait_for(started.wait(), 10)
        assert sup.pid == procs[0].pid
        await sup.stop()
    edge_end.close()
    assert len(attempts) == 3
    failed = [e for e in logs if e["event"] == "worker_not_started"]
    assert len(failed) == 2
    assert failed[0]["log_level"] == "error"
    assert "Resource temporarily unavailable" in failed[0]["error"]


@pytest.mark.parametrize("code", [0, 1, 2, -9, 137])
async def test_a_worker_that_exits_with_any_code_is_started_again(monkeypatch, code):
    """Whatever the child's exit code, a new one is started (after the backoff)."""
    monkeypatch.setattr(supervisor_module, "FIRST_BACKOFF", 0.0)
    procs: list[FakeProcess] = []
    first, second = asyncio.Event(), asyncio.Event()

    async def spawn(*_args: Any, **_kwargs: Any) -> FakeProcess:
        proc = FakeProcess(2000 + len(procs))
        procs.append(proc)
        (first if len(procs) == 1 else second).set()
        return proc

    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", spawn)
    edge_end, worker_end = socket.socketpair()
    sup = WorkerSupervisor([], worker_end)
    with structlog.testing.capture_logs() as logs:
        await sup.start()
        await asyncio.wait_for(first.wait(), 10)
        procs[0].exit(code)
        await asyncio.wait_for(second.wait(), 10)
        await sup.stop()
    edge_end.close()
    exited = [e for e in logs if e["event"] == "worker_exited"]
    assert [e["code"] for e in exited] == [code]
    assert procs[1].returncode == -15  # stopped by us, not restarted again
    assert len(procs) == 2
