"""A swallowed cancel or an odd error in the recorder and the runner's lock renewal."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from guard_helpers import HOUR, T0, Clock

from receiver.engine.guards import GuardDefaults, GuardKeeper, Held
from receiver.engine.recording import Recorder
from receiver.engine.runner import Runner
from receiver.model import Alert, StepResult
from receiver.store.base import Store


class _SwallowingStore:
    """A store whose first write hangs and swallows its cancel, then succeeds.

    The client retried the command on a fresh connection and it went through;
    the next write hangs for ever (the store went away meanwhile).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.first_started = asyncio.Event()

    async def complete_batch(self, done: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return  # swallowed: the write "succeeded" after a retry
            return
        await asyncio.Event().wait()  # a write that never answers


async def test_recorder_stops_after_a_cancel_swallowed_by_a_write_that_succeeds():
    """Closing cancels the flusher once: it must not go on to the next batch.

    A client that swallows the cancel and returns normally (redis-py's retry on
    a new connection) left the flusher writing the next batch, which can hang,
    and the worker's stop never finished.
    """
    store = _SwallowingStore()
    recorder = Recorder(store, limit=1, in_flight=1)  # type: ignore[arg-type]
    # Tasks start in order: e2 is queued before the flusher takes e1 alone.
    first = asyncio.create_task(recorder.record("e1", []))
    second = asyncio.create_task(recorder.record("e2", []))
    await store.first_started.wait()
    assert [entry for entry, _, _ in recorder._queue] == ["e2"]
    closing = asyncio.create_task(recorder.aclose())
    finished, _ = await asyncio.wait([closing], timeout=2)
    for t in (first, second, closing, *recorder._flushers):
        t.cancel()
    await asyncio.gather(first, second, closing, return_exceptions=True)
    assert store.calls == 1, "the flusher wrote another batch after its cancel"
    assert closing in finished, "aclose hung on the flusher's next write"


class _Executor:
    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def run(self, step: Any, alert: Alert) -> StepResult:
        await self.gate.wait()
        return StepResult(ok=True, reason="done")

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        return StepResult(ok=True, reason="verified")


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


async def test_lock_renewal_survives_one_unexpected_error(store: Store) -> None:
    """One renewal failing with an error that is not StoreUnavailableError.

    acting.py's renew loop catches only StoreUnavailableError: any other error
    (a Redis error reply that is not a refusal, a sqlite3.DatabaseError) ends
    the renewal task silently, so the target lock lapses while the step still
    runs (another worker can then act on the same target), and the error is
    re-raised by ``_renewing``'s finally, replacing the step's outcome.
    """
    keeper = GuardKeeper(
        store, "worker-1", GuardDefaults(global_budget_max=1000, cooldown=timedelta(0))
    )
    runner = Runner(
        {"http": _Executor(asyncio.Event())}, Clock(), mode="execute", guards=keeper
    )
    lock = await store.acquire_lock("target:x", "worker-1", T0, HOUR)
    assert lock is not None
    held = Held("key", "worker-1", lock)
    calls = 0
    real = store.renew_lock
    renewed_again = asyncio.Event()

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("unexpected error reply")
        renewed_again.set()
        return await real(*args, **kwargs)

    store.renew_lock = flaky  # type: ignore[method-assign]
    raised: BaseException | None = None
    try:
        async with asyncio.timeout(5):
            async with runner._renewing(held, timedelta(milliseconds=150)):
                # The step runs until the lock was renewed after the error.
                await renewed_again.wait()
    except Exception as exc:  # noqa: BLE001
        raised = exc
    assert calls > 1, "the lock was renewed once and never again while the step ran"
    assert raised is None, (
        f"the renewal's error replaced the step's outcome: {raised!r}"
    )
