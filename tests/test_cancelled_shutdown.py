"""A shutdown that is itself cancelled stops: ``cancel_and_wait`` and its users.

Stopping cancels background tasks and waits for them; the ``CancelledError``
they end with is theirs and is swallowed. The task doing the stopping may be
cancelled too while it waits (``asyncio.wait_for`` around a worker's shutdown,
timing out): its cancel is passed on to the task it waits for, and comes back
as that task's end, or not at all when a store client swallowed it. It must
still reach the stopping task's caller, not be swallowed with the others.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Ticking

from receiver.engine.doorbell import WorkerBell
from receiver.engine.planner import PlanContext
from receiver.engine.recording import Recorder
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor, Worker
from receiver.retrying import cancel_and_wait
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.sqlite import SqliteStore


class Stubborn:
    """A wait that swallows every cancel until released, then ends as told.

    As a store client does that retries its command on a new connection
    after a cancel: ``end`` None returns, an exception is raised (``Cancelled
    Error`` at last, or an error of the client's own in its place).
    """

    def __init__(self, end: BaseException | None = None) -> None:
        self.end = end
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()  # set at each cancel it swallowed
        self.cancels = 0
        self.release = asyncio.Event()

    async def wait(self, *_args: object) -> Any:
        self.started.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancels += 1
                self.cancelled.set()
        if self.end is not None:
            raise self.end
        return []


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fail_when_cancelled(started: asyncio.Event) -> None:
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise RuntimeError("boom") from None


# ----------------------------------------------------------- cancel_and_wait


async def test_tasks_that_end_by_their_cancel_are_waited_for_and_swallowed():
    """Nobody cancels the caller: it returns once every task has ended."""
    tasks = [asyncio.create_task(_forever()) for _ in range(3)]
    await cancel_and_wait(*tasks)
    assert all(t.cancelled() for t in tasks)


async def _at_once() -> None:
    """A task that ends as soon as it runs."""


async def test_a_task_that_already_ended_is_fine():
    """One ended before (returned or failed and was looked at): nothing raised."""
    done = asyncio.create_task(_at_once())
    await done
    await cancel_and_wait(done, asyncio.create_task(_forever()))


@pytest.mark.parametrize(
    "end",
    [None, asyncio.CancelledError(), RuntimeError("the client's own error")],
    ids=["returns", "cancelled", "error"],
)
async def test_the_callers_cancel_while_it_waits_is_raised(end):
    """The caller is cancelled while a task it stops ends late, in any way.

    Its cancel is passed on to that task; whether that task then returns (it
    swallowed it), ends cancelled or raises an error of its own, the caller
    is cancelled, not returned to as if nothing had happened.
    """
    stubborn = Stubborn(end)
    task = asyncio.create_task(stubborn.wait())
    await stubborn.started.wait()
    stopping = asyncio.create_task(cancel_and_wait(task))
    await stubborn.cancelled.wait()  # cancelled by the helper, which now waits
    stubborn.cancelled.clear()
    stopping.cancel()
    await stubborn.cancelled.wait()  # the caller's cancel, passed on
    stubborn.release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()
    assert task.done()
    assert stubborn.cancels == 2


async def test_a_cancel_pending_when_the_tasks_had_ended_is_raised():
    """The tasks had ended already: the caller's pending cancel still stops it.

    Awaiting a finished task does not give way to the event loop, so the
    cancel would only be noticed at the caller's next wait, after whatever it
    did meanwhile.
    """
    done = asyncio.create_task(_at_once())
    await done
    went_on = False

    async def stopping() -> None:
        nonlocal went_on
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # requested while it runs: not delivered yet
        await cancel_and_wait(done)
        went_on = True

    task = asyncio.create_task(stopping())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not went_on


async def test_a_task_error_is_raised_after_the_others_ended():
    """A task ending with an error of its own: raised once all have ended."""
    failing_started = asyncio.Event()
    slow = Stubborn()
    failing = asyncio.create_task(_fail_when_cancelled(failing_started))
    slow_task = asyncio.create_task(slow.wait())
    other = asyncio.create_task(_forever())
    await failing_started.wait()
    await slow.started.wait()
    stopping = asyncio.create_task(cancel_and_wait(failing, slow_task, other))
    slow_ended_first: list[bool] = []
    stopping.add_done_callback(lambda _: slow_ended_first.append(slow_task.done()))
    await slow.cancelled.wait()
    slow.release.set()
    with pytest.raises(RuntimeError, match="boom"):
        await stopping
    assert slow_ended_first == [True]
    assert other.cancelled()


async def test_the_callers_cancel_is_raised_after_every_task_ended():
    """Cancelled while waiting for the first of several: the rest are waited for.

    Each was cancelled already; none is left running behind the caller.
    """
    first, second = Stubborn(), Stubborn()
    tasks = [asyncio.create_task(s.wait()) for s in (first, second)]
    await first.started.wait()
    await second.started.wait()
    stopping = asyncio.create_task(cancel_and_wait(*tasks))
    await first.cancelled.wait()
    stopping.cancel()
    first.release.set()
    await tasks[0]
    ended_before: list[bool] = []
    stopping.add_done_callback(lambda _: ended_before.append(tasks[1].done()))
    second.release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert ended_before == [True]


# ----------------------------------------------------------------- its users


class _Writes:
    def __init__(self, write: Stubborn) -> None:
        self.complete_batch = write.wait


async def test_a_cancelled_recorder_close_is_cancelled():
    """``Recorder.aclose`` cancelled while its flusher's write swallows cancels.

    The write went through after all (the client retried it); before, the
    close swallowed its own cancel with the flusher's and returned normally.
    Whoever still waits is cancelled all the same.
    """
    write = Stubborn()
    recorder = Recorder(_Writes(write), limit=1, in_flight=1)  # type: ignore[arg-type]
    first = asyncio.create_task(recorder.record("e1", []))
    second = asyncio.create_task(recorder.record("e2", []))
    await write.started.wait()
    closing = asyncio.create_task(recorder.aclose())
    await write.cancelled.wait()
    write.cancelled.clear()
    closing.cancel()
    await write.cancelled.wait()
    write.release.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    # A bound, not a wait: both end at once.
    ended, _ = await asyncio.wait([first, second], timeout=10)
    assert ended == {first, second}, "a caller was left waiting for ever"
    assert first.result() is None  # its write went through
    assert second.cancelled()


async def test_a_cancelled_bell_close_is_cancelled_and_closes_its_end():
    """``WorkerBell.aclose`` cancelled while one of its tasks ends late.

    The cancel reaches the caller (before, it returned normally); the socket
    is closed all the same.
    """
    ours, theirs = socket.socketpair()
    bell = WorkerBell(ours)
    late = Stubborn()
    bell._tasks = [asyncio.create_task(late.wait())]
    await late.started.wait()
    closing = asyncio.create_task(bell.aclose())
    await late.cancelled.wait()
    closing.cancel()
    late.release.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert ours.fileno() == -1, "the worker's end was left open"
    theirs.close()


RULES = """
playbooks:
  hook:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
rules:
  - {name: hook, match: ['alertname="Hook"'], playbook: hook}
"""


class _StubbornClaims(SqliteStore):
    """A journal whose claim hangs, swallowing its cancels, then finds nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claim = Stubborn()
        self.retired = False

    async def claim_batch(self, *args: Any, **kwargs: Any) -> Any:
        return await self.claim.wait()

    async def retire(self, *args: Any, **kwargs: Any) -> None:
        self.retired = True
        await super().retire(*args, **kwargs)


async def test_a_worker_stop_that_times_out_raises_timeout(tmp_path: Path):
    """``Worker.stop`` under a timeout that passes while a claim hangs.

    The claim's client swallows the cancels (the stop's, then the timeout's
    passed on) and answers late. Before, the stop went on as if nothing had
    happened (retired the worker, returned normally), and the timeout around
    it never raised: the worker process's bounded shutdown was not bounded.
    """
    (tmp_path / "rules.yaml").write_text(RULES)
    clock = Ticking()
    store = _StubbornClaims(str(tmp_path / "state.db"))
    processor = Processor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        Runner({}, clock),
        clock,
        PlanContext(),
        store=store,
    )
    worker = Worker(store, processor, 1, clock=clock, lease=timedelta(minutes=5))
    await worker.start()
    await store.claim.started.wait()
    deadline: asyncio.Future[asyncio.Timeout] = (
        asyncio.get_running_loop().create_future()
    )

    async def bounded_stop() -> None:
        async with asyncio.timeout(None) as timeout:
            deadline.set_result(timeout)
            await worker.stop()

    stopping = asyncio.create_task(bounded_stop())
    timeout = await deadline
    await store.claim.cancelled.wait()  # the stop cancelled the claiming task
    store.claim.cancelled.clear()
    timeout.reschedule(asyncio.get_running_loop().time())  # it passes now
    await store.claim.cancelled.wait()  # ... and cancels the stop
    store.claim.release.set()
    with pytest.raises(TimeoutError):
        await stopping
    assert not store.retired, "the cancelled stop went on to retire the worker"
    await store.close()
