"""A new doorbell line cancelled (the supervisor stopping) leaves no socket open.

``EdgeBell.new_line`` makes the next worker's socket pair *before* detaching
the last line. Detaching now re-raises a cancellation of its caller (the
supervisor's task, cancelled by ``WorkerSupervisor.stop`` while it connects a
new child), so ``new_line`` ends there with both new sockets neither attached
nor returned: two descriptors left open, closed only by the garbage collector
(with a ResourceWarning).
"""

from __future__ import annotations

import asyncio
import socket

from receiver.engine import doorbell
from receiver.engine.doorbell import EdgeBell


async def test_a_cancelled_new_line_leaves_no_socket_open(monkeypatch):
    first_edge, first_worker = socket.socketpair()
    bell = EdgeBell(first_edge)
    bell.start()  # its reader task runs: detaching cancels it and waits for it
    made: list[socket.socket] = []
    real_socketpair = socket.socketpair

    def socketpair() -> tuple[socket.socket, socket.socket]:
        pair = real_socketpair()
        made.extend(pair)
        return pair

    monkeypatch.setattr(doorbell.socket, "socketpair", socketpair)
    task = asyncio.create_task(bell.new_line())
    # The supervisor is stopped while new_line waits for the old reader to
    # end: its cancel arrives as that reader ends.
    old_reader = bell._reader
    assert old_reader is not None
    old_reader.add_done_callback(lambda _: task.cancel())
    try:
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert [s.fileno() for s in made if s.fileno() != -1] == [], (
            "sockets made for the next worker left open"
        )
    finally:
        for s in (*made, first_worker):
            s.close()
        await bell.aclose()
