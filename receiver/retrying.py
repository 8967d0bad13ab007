"""The one retry and polling policy: bounded, jittered, typed errors only.

Every step executor, sink and verification retries and polls through here, on
tenacity:

- ``retrying(policy)``: an ``AsyncRetrying`` that retries what ``policy.on``
  accepts (``TransientStepError`` by default) up to ``policy.attempts`` times with
  full-jitter exponential backoff capped at ``policy.cap`` seconds.
- ``backoff(policy, attempt)``: the same delay for the loops that must do
  something between tries (a write re-reads its object first, so a destructive
  step is only repeated after the target was checked again).
- ``poll_until(probe, timeout, interval, clock)``: call ``probe`` until it says
  done or the timeout passes, with the injected clock deciding.
- ``transient_status(status)``: the one rule for HTTP answers worth retrying
  (429 and 5xx).
- ``Doubling``: the waits of a loop that never gives up (a delivery loop while
  its store is down, the supervisor restarting a worker): doubled after each
  failure up to a cap, back to the first after a success.
- ``stop_if_cancelled()``: such a loop calls it after catching an error, so a
  cancellation a client turned into an error of its own still stops it.
- ``cancel_and_wait(*tasks)``: how a shutdown stops its background tasks: the
  tasks' own ends are swallowed, a cancellation of the shutdown itself is not.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from receiver.errors import TransientStepError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Wait = Callable[[RetryCallState], float]


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientStepError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry, and which errors qualify."""

    attempts: int = 3
    multiplier: float = 0.2  # seconds; the first retry waits up to this
    cap: float = 2.0  # seconds; no single wait is longer
    on: Callable[[BaseException], bool] = field(default=_is_transient)


def transient_status(status: int) -> bool:
    """Whether an HTTP answer is worth retrying: 429 (slow down) or a 5xx."""
    return status == 429 or status >= 500


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    wait: Wait | None = None,
) -> AsyncRetrying:
    """Retry ``policy.on`` errors with jittered backoff; the last one is re-raised.

    ``wait`` replaces the backoff (a sink honouring ``Retry-After`` falls back
    to ``policy_wait(policy)`` itself).
    """
    return AsyncRetrying(
        retry=retry_if_exception(policy.on),
        stop=stop_after_attempt(policy.attempts),
        wait=wait or policy_wait(policy),
        sleep=sleep,
        reraise=True,
    )


def policy_wait(policy: RetryPolicy) -> Wait:
    """The policy's backoff as a tenacity wait."""
    return wait_random_exponential(multiplier=policy.multiplier, max=policy.cap)


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """A jittered, capped exponential delay after try ``attempt`` (0-based)."""
    ceiling = min(policy.multiplier * 2**attempt, policy.cap)
    return random.uniform(0, ceiling)  # noqa: S311 (jitter, not a secret)


@dataclass
class Doubling:
    """Waits for a loop that keeps trying: ``first``, doubled per failure to ``cap``.

    ``current`` is the wait the loop is at; ``failed()`` returns it and doubles
    the next one; ``reset()`` after a success starts again from ``first``.
    """

    first: float = 0.5
    cap: float = 10.0
    current: float = field(init=False)

    def __post_init__(self) -> None:
        """Start at ``first``."""
        self.current = self.first

    def failed(self) -> float:
        """The wait before the next try; the one after that is twice as long."""
        wait = self.current
        self.current = min(self.current * 2, self.cap)
        return wait

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``first`` again."""
        self.current = self.first


@dataclass(frozen=True)
class Polled(Generic[T]):
    """How polling ended: whether the probe said done, its last answer, polls."""

    done: bool
    last: T
    polls: int


async def poll_until(
    probe: Callable[[], Awaitable[tuple[bool, T]]],
    timeout: timedelta,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    *,
    transient: Callable[[TransientStepError], T],
    sleep: Sleep = asyncio.sleep,
) -> Polled[T]:
    """Call ``probe`` until it answers done or ``timeout`` has passed on ``clock``.

    The probe is called at least once; a ``TransientStepError`` it raises counts
    as a not-done answer described by ``transient(exc)``, so a flaky read during
    a rollout does not end the wait.
    """
    deadline = clock() + timeout.total_seconds()
    polls = 0
    while True:
        polls += 1
        try:
            done, last = await probe()
        except TransientStepError as exc:
            done, last = False, transient(exc)
        if done:
            return Polled(done=True, last=last, polls=polls)
        if clock() >= deadline:
            return Polled(done=False, last=last, polls=polls)
        await sleep(interval)


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was cancelled and is still running.

    Some clients turn a cancellation into an error of their own (redis-py's
    asyncio client at times raises ``ConnectionError`` in its place): a loop
    that logs errors and goes on would then outlive its cancellation for ever,
    and whoever waits for it on shutdown would hang. Such a loop calls this
    after catching an error.
    """
    if cancelling():
        raise asyncio.CancelledError


def cancelling() -> bool:
    """Whether this task itself is being cancelled (a request not yet withdrawn).

    Not a stray ``CancelledError`` some awaited thing raised: the task's own
    count of cancel requests, which ``asyncio.timeout`` and aiohttp's timeouts
    take back when they turn theirs into a ``TimeoutError``.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    Their ``CancelledError`` is swallowed: it is how they were asked to end.
    A cancellation of the task calling this is not: if it is being cancelled
    (``cancelling()``) once they have all ended, ``CancelledError`` is raised,
    whether its cancel reached it as a ``CancelledError`` from the task it was
    waiting for or was lost on the way (that task swallowed its own cancel and
    returned, or turned it into an error of its own). Otherwise the first
    error a task ended with other than ``CancelledError`` is re-raised, after
    the others were waited for too.

    A shutdown that is itself cancelled (a ``wait_for`` around it timed out)
    thus stops instead of going on as if nothing had happened.
    """
    for task in tasks:
        task.cancel()
    error: Exception | None = None
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass  # the task's own end, or ours passed on to it: told apart below
        except Exception as exc:  # noqa: BLE001 (re-raised below unless cancelled)
            error = error or exc
    if cancelling():
        raise asyncio.CancelledError from error
    if error is not None:
        raise error
