"""The one retry and polling policy: what is retried, how often, how long to poll."""

from __future__ import annotations

from datetime import timedelta

import pytest

from receiver.errors import PermanentStepError, TransientStepError
from receiver.retrying import (
    Doubling,
    RetryPolicy,
    backoff,
    poll_until,
    retrying,
    transient_status,
)


class Ticking:
    """A monotonic clock that advances ``step`` seconds on every read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def no_sleep(_seconds: float) -> None:
    return None


class Failing:
    """A call that always raises ``error``, counting how often it ran."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def retried(self, policy: RetryPolicy, sleep=no_sleep) -> None:
        async for attempt in retrying(policy, sleep=sleep):
            with attempt:
                self.calls += 1
                raise self.error


@pytest.mark.parametrize(
    ("status", "transient"),
    [(200, False), (404, False), (409, False), (429, True), (500, True), (503, True)],
)
def test_transient_statuses_are_429_and_5xx(status, transient):
    """One rule for HTTP answers: slow down (429) and server errors are retried."""
    assert transient_status(status) is transient


async def test_transient_errors_are_retried_up_to_the_attempts():
    """A transient error is tried `attempts` times, then re-raised as it was."""
    with pytest.raises(TransientStepError, match="flaky"):
        await (failing := Failing(TransientStepError("flaky"))).retried(
            RetryPolicy(attempts=3)
        )
    assert failing.calls == 3


async def test_permanent_errors_are_not_retried():
    """A permanent error ends the retries at once."""
    with pytest.raises(PermanentStepError):
        await (failing := Failing(PermanentStepError("no"))).retried(
            RetryPolicy(attempts=5)
        )
    assert failing.calls == 1


async def test_a_policy_chooses_which_errors_qualify():
    """`on` narrows retries (e.g. to errors that never reached the server)."""
    policy = RetryPolicy(attempts=4, on=lambda exc: isinstance(exc, ConnectionError))
    with pytest.raises(TransientStepError):
        await (failing := Failing(TransientStepError("may have arrived"))).retried(
            policy
        )
    assert failing.calls == 1


async def test_waits_grow_and_stay_under_the_cap():
    """The backoff between tries is jittered, exponential and capped."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(attempts=6, multiplier=0.5, cap=1.0)
    with pytest.raises(TransientStepError):
        await Failing(TransientStepError("down")).retried(policy, sleep)
    assert len(waits) == 5
    assert all(0 <= w <= 1.0 for w in waits)
    for attempt in range(8):
        assert 0 <= backoff(policy, attempt) <= min(0.5 * 2**attempt, 1.0)


async def test_polling_stops_when_the_probe_says_done():
    """The probe's last answer and the number of polls are reported."""
    answers = iter([(False, "1 of 3"), (False, "2 of 3"), (True, "3 of 3")])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def probe() -> tuple[bool, str]:
        return next(answers)

    polled = await poll_until(
        probe, timedelta(minutes=5), 2.0, Ticking(1.0), transient=str, sleep=sleep
    )
    assert (polled.done, polled.last, polled.polls) == (True, "3 of 3", 3)
    assert slept == [2.0, 2.0]


async def test_polling_gives_up_when_the_clock_passes_the_timeout():
    """With a clock ticking 10 s a read, a 30 s timeout allows a few polls only."""

    async def probe() -> tuple[bool, str]:
        return False, "not yet"

    polled = await poll_until(
        probe, timedelta(seconds=30), 1.0, Ticking(10.0), transient=str, sleep=no_sleep
    )
    assert not polled.done
    assert polled.last == "not yet"
    assert polled.polls == 3


async def test_a_transient_failure_is_a_poll_that_did_not_succeed():
    """A flaky read during the wait is described, and polling goes on."""
    answers: list[Exception | tuple[bool, str]] = [
        TransientStepError("HTTP 503"),
        (True, "ready"),
    ]

    async def probe() -> tuple[bool, str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    seen: list[str] = []

    def describe(exc: TransientStepError) -> str:
        seen.append(str(exc))
        return str(exc)

    polled = await poll_until(
        probe,
        timedelta(seconds=60),
        1.0,
        Ticking(1.0),
        transient=describe,
        sleep=no_sleep,
    )
    assert polled.done
    assert seen == ["HTTP 503"]


async def test_a_permanent_failure_ends_polling():
    """Only transient errors are absorbed; a permanent one propagates."""

    async def probe() -> tuple[bool, str]:
        raise PermanentStepError("forbidden")

    with pytest.raises(PermanentStepError):
        await poll_until(
            probe,
            timedelta(seconds=60),
            1.0,
            Ticking(1.0),
            transient=str,
            sleep=no_sleep,
        )


def test_a_loop_that_keeps_trying_doubles_its_wait_to_the_cap_and_resets():
    """Doubling: first, twice, ... capped; a success starts again from first."""
    waits = Doubling(first=0.5, cap=3.0)
    assert [waits.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert waits.current == 3.0
    waits.reset()
    assert waits.failed() == 0.5
    assert waits.current == 1.0
