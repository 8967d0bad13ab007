"""The supervisor keeps a worker child running whatever starting one raises.

Each child gets a doorbell line of its own: what a killed one left half-sent is
never read into the next one's metrics.

In process, at our interface: ``asyncio.create_subprocess_exec`` as the
supervisor calls it is replaced by a stand-in that fails (as ``fork`` does when
the host is out of processes or memory: ``OSError``) and then starts a
process that runs until told to exit.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

import pytest
import structlog

from receiver import supervisor as supervisor_module
from receiver.engine.doorbell import EdgeBell
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
    edge = EdgeBell()
    sup = WorkerSupervisor([], edge.new_line)
    with structlog.testing.capture_logs() as logs:
        await sup.start()
        await asyncio.wait_for(started.wait(), 10)
        assert sup.pid == procs[0].pid
        await sup.stop()
    await edge.aclose()
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
    edge = EdgeBell()
    sup = WorkerSupervisor([], edge.new_line)
    with structlog.testing.capture_logs() as logs:
        await sup.start()
        await asyncio.wait_for(first.wait(), 10)
        procs[0].exit(code)
        await asyncio.wait_for(second.wait(), 10)
        await sup.stop()
    await edge.aclose()
    exited = [e for e in logs if e["event"] == "worker_exited"]
    assert [e["code"] for e in exited] == [code]
    assert procs[1].returncode == -15  # stopped by us, not restarted again
    assert len(procs) == 2


async def test_each_worker_gets_a_line_of_its_own(monkeypatch):
    """A worker killed mid-frame: the next one's metrics are read whole.

    On one shared line, the half frame the first child left was read together
    with the second child's frame: the edge showed garbage or, with a length
    past the cap, stopped reading worker metrics for good.
    """
    monkeypatch.setattr(supervisor_module, "FIRST_BACKOFF", 0.0)
    procs: list[FakeProcess] = []
    frame = b"receiver_alerts_total 7\n"
    second_reader: asyncio.Future[asyncio.Task[None]] = (
        asyncio.get_running_loop().create_future()
    )

    async def spawn(*_args: Any, pass_fds: tuple[int, ...], **_kw: Any) -> FakeProcess:
        # The child's own copy of its end, as a real child inherits it.
        [fd] = pass_fds
        child = socket.socket(fileno=os.dup(fd))
        proc = FakeProcess(3000 + len(procs))
        procs.append(proc)
        if len(procs) == 1:
            # Killed in the middle of a frame: its length and half its text.
            child.sendall(struct.pack("!I", len(frame)) + frame[:5])
            child.close()
            proc.exit(-9)
        else:
            child.sendall(struct.pack("!I", len(frame)) + frame)
            child.close()
            assert edge._reader is not None
            second_reader.set_result(edge._reader)
        return proc

    edge = EdgeBell()
    edge.start()
    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", spawn)
    sup = WorkerSupervisor([], edge.new_line)
    await sup.start()
    reader = await asyncio.wait_for(second_reader, 10)
    await asyncio.wait_for(reader, 10)
    # The second child sent its frame and closed: its line's reader is done.
    assert edge.worker_metrics == frame
    assert len(procs) == 2
    await sup.stop()
    await edge.aclose()


async def test_the_edge_hears_a_worker_gone():
    """The supervisor keeps no copy of the worker's end: the edge hears it close."""
    edge = EdgeBell()
    edge.start()
    worker_end = await edge.new_line()
    child = socket.socket(fileno=os.dup(worker_end.fileno()))
    worker_end.close()  # what the supervisor does once the child has its copy
    reader = edge._reader
    assert reader is not None
    child.close()  # the child dies
    await asyncio.wait_for(reader, 10)
    await edge.aclose()


async def test_a_doorbell_line_that_cannot_be_made_is_tried_again(monkeypatch):
    """Out of descriptors for the socket pair: logged and retried, as a spawn is."""
    monkeypatch.setattr(supervisor_module, "FIRST_BACKOFF", 0.0)
    edge = EdgeBell()
    lines = 0

    async def connect() -> socket.socket:
        nonlocal lines
        lines += 1
        if lines == 1:
            raise OSError(24, "Too many open files")
        return await edge.new_line()

    started = asyncio.Event()

    async def spawn(*_args: Any, **_kwargs: Any) -> FakeProcess:
        started.set()
        return FakeProcess(4000)

    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", spawn)
    sup = WorkerSupervisor([], connect)
    with structlog.testing.capture_logs() as logs:
        await sup.start()
        await asyncio.wait_for(started.wait(), 10)
        await sup.stop()
    await edge.aclose()
    assert lines == 2
    [failed] = [e for e in logs if e["event"] == "worker_not_started"]
    assert "Too many open files" in failed["error"]
