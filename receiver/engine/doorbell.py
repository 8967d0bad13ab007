"""The line between the edge and its worker process: wake-ups one way, metrics back.

``receiver serve`` (role ``all``) runs the worker in a child process and hands it
one end of a Unix socket pair. The edge rings after every payload it journals (one
byte, never blocking: while earlier bytes are unread the worker is awake anyway,
so a full buffer loses nothing); the worker waits on the bell instead of polling
the journal. Back the other way the worker sends its own metrics (the families it
counts: alerts, matches, steps, guards) as length-prefixed frames, so the edge's
``/metrics`` shows the whole service. End of file on either side means the other
process is gone: the worker then stops, and the edge's supervisor starts a new one,
on a new socket pair (``EdgeBell.new_line``): a worker killed in the middle of a
metrics frame leaves nothing behind that the next one's frames would be read into.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Callable

import structlog

from receiver.retrying import cancel_and_wait

log = structlog.get_logger("receiver.doorbell")

_FRAME = struct.Struct("!I")
# A metrics frame larger than this is not ours: the line is dropped.
MAX_FRAME = 8 << 20


class EdgeBell:
    """The edge's end: ring the worker, keep the worker's latest metrics."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock: socket.socket | None = None
        self.worker_metrics = b""
        self._reader: asyncio.Task[None] | None = None
        self._started = False
        self._pending = False
        if sock is not None:
            self._attach(sock)

    @property
    def worker_ready(self) -> bool:
        """Whether a worker has reported since this edge started."""
        return bool(self.worker_metrics)

    async def new_line(self) -> socket.socket:
        """A new socket pair for the next worker; returns the worker's end.

        The edge's end replaces the last one (closed, with whatever part of a
        frame a killed worker left in it): frames are never read across two
        workers. The caller closes its copy of the worker's end once the child
        has its own, so the edge hears end of file when the child is gone.
        """
        await self._detach()  # re-raises a cancel of the caller: nothing made yet
        edge_end, worker_end = socket.socketpair()
        self._attach(edge_end)
        return worker_end

    def _attach(self, sock: socket.socket) -> None:
        sock.settimeout(0.0)  # non-blocking
        self._sock = sock
        if self._started:
            self._start_reading()

    def _start_reading(self) -> None:
        if self._sock is not None and self._reader is None:
            self._reader = asyncio.create_task(
                self._read(self._sock), name="doorbell-metrics"
            )

    async def _detach(self) -> None:
        reader, sock = self._reader, self._sock
        self._reader = self._sock = None
        try:
            if reader is not None:
                await cancel_and_wait(reader)
        finally:
            if sock is not None:
                sock.close()

    def ring(self) -> None:
        """Wake the worker, once per turn of the event loop however many ring.

        Every payload of one group commit is journaled in the same turn; one
        byte, sent right after, wakes the worker for all of them (never blocks:
        a full buffer means it is awake anyway).
        """
        if self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._pending = False
        if self._sock is None:  # between two workers: the next one looks anyway
            return
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            self._sock.send(b"\x01")

    def start(self) -> None:
        """Read the worker's metrics frames in the background."""
        self._started = True
        self._start_reading()

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(buffer)
                if size > MAX_FRAME:
                    return
                if len(buffer) < _FRAME.size + size:
                    break
                self.worker_metrics = buffer[_FRAME.size : _FRAME.size + size]
                buffer = buffer[_FRAME.size + size :]

    async def aclose(self) -> None:
        """Stop reading and close this end."""
        self._started = False
        await self._detach()


class WorkerBell:
    """The worker's end: wait for rings, send metrics, notice the edge is gone.

    A ring wakes one waiting task, not all: the one woken claims a batch, and
    the others, had they woken too, would have found the journal empty. A ring
    with nobody waiting is kept until the next ``wait`` or ``armed``.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(0.0)  # non-blocking
        self._sock = sock
        self._rung = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.edge_gone = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Rings heard and tasks woken (for the bench and the tests).
        self.rings = 0
        self.wakeups = 0

    def start(self, metrics: Callable[[], bytes], every: float = 1.0) -> None:
        """Listen for rings; send ``metrics()`` every ``every`` seconds."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="doorbell-listen"),
            asyncio.create_task(self._report(metrics, every), name="doorbell-report"),
        ]

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await loop.sock_recv(self._sock, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                self.edge_gone.set()
                while self._waiters:
                    self._wake_one()
                return
            self.rings += 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.wakeups += 1
                waiter.set_result(None)
                return
        self._rung = True

    async def _report(self, metrics: Callable[[], bytes], every: float) -> None:
        loop = asyncio.get_running_loop()
        while not self.edge_gone.is_set():
            text = metrics()
            try:
                await loop.sock_sendall(self._sock, _FRAME.pack(len(text)) + text)
            except OSError:
                return
            await asyncio.sleep(every)

    def armed(self) -> None:
        """Forget rings so far: call before looking at the journal."""
        self._rung = False

    async def wait(self, timeout: float) -> None:
        """Until a ring wakes this task (or ``timeout`` seconds, a safety net)."""
        if self._rung or self.edge_gone.is_set():
            self._rung = False
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def aclose(self) -> None:
        """Stop listening and close this end."""
        try:
            await cancel_and_wait(*self._tasks)
        finally:
            self._sock.close()
