"""Acting on one step: prepare, run or apply, verify -- failures become values.

Failure is a value: whatever a step or a verification raises (a step error, a
``ValueError`` from a template value, a ``UnicodeEncodeError``, a ``KeyError``, a
stray ``CancelledError``, a timeout) becomes a ``failed`` step with a readable,
secret-scrubbed reason, and everything the guards took is given back: the lock
released, unspent budget slots returned, the run-once key recorded ``failed``.
Only the store being unreachable (``StoreUnavailableError``) and the task itself
being cancelled leave the runner, so the worker can retry the entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from receiver.engine.guards import GuardKeeper, Held
from receiver.errors import StepError, StoreUnavailableError
from receiver.model import (
    Alert,
    Decision,
    Intent,
    RecheckResult,
    StepResult,
    StepTrace,
    freeze,
)
from receiver.retrying import cancel_and_wait, cancelling, stop_if_cancelled
from receiver.rulebook.steps import StepModel, Verify

log = structlog.get_logger("receiver.runner")


class Executor(Protocol):
    """Runs the rendered steps (and verifications) of one family.

    For remediations an executor may also have ``prepare(step, alert)``, which
    returns an ``Intent`` (or a ``StepResult`` when nothing needs doing, or
    None for a step type it does not prepare), ``apply(step, alert, intent)``,
    which does exactly the intent, and ``recheck(step, alert, intent)``, which
    returns a ``RecheckResult`` saying whether an interrupted ``apply`` took
    effect. See ``Preparing``.
    """

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run ``step`` for ``alert``; raise ``StepError`` on failure."""
        ...

    async def verify(self, check: Verify, step: StepModel, alert: Alert) -> StepResult:
        """Check that a remediation worked (``check`` is the step's ``verify``)."""
        ...


class Preparing(Protocol):
    """The optional half of an executor that makes crash recovery exact."""

    async def prepare(
        self, step: StepModel, alert: Alert
    ) -> Intent | StepResult | None:
        """Read the target and state the action in absolute terms."""
        ...

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Do exactly what ``intent`` says; raise ``StepError`` on failure."""
        ...

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """Whether an ``apply`` of ``intent`` that a crash interrupted took effect."""
        ...


Clock = Callable[[], datetime]
# Longest reason kept from an unexpected exception.
_REASON_MAX = 500


def describe_error(exc: BaseException) -> str:
    """A one-line, bounded description of an exception for a trace."""
    if isinstance(exc, StepError):
        text = str(exc)
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, asyncio.CancelledError):
        text = "cancelled inside the step (CancelledError)"
    else:
        detail = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


class Acting:
    """Runs one step through its executor and verifies it; failures are values."""

    _executors: dict[str, Executor]
    _clock: Clock
    _guards: GuardKeeper | None
    _scrub: Callable[[str], str]

    def _failed(self, trace: StepTrace, exc: BaseException, what: str) -> StepTrace:
        return replace(
            trace,
            decision=Decision.FAILED,
            reason=self._scrub(f"{what}{describe_error(exc)}"),
        )

    def _lock_ttl(self, step: StepModel) -> timedelta:
        verify = getattr(step, "verify", None)
        extra = verify.timeout if verify is not None else timedelta(0)
        return step.timeout + extra + timedelta(minutes=1)

    @contextlib.asynccontextmanager
    async def _renewing(self, held: Held, ttl: timedelta) -> AsyncIterator[None]:
        """Renew the target lock every third of its TTL while the body runs."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards

        async def renew() -> None:
            while True:
                await asyncio.sleep(max(ttl.total_seconds() / 3, 0.05))
                try:
                    await keeper.renew(held, self._clock(), ttl)
                except StoreUnavailableError as exc:
                    log.warning("lock_not_renewed", key=held.key, error=str(exc))
                except Exception:  # the next renewal may work; the step goes on
                    log.exception("lock_not_renewed", key=held.key)
                # Stopped while a renewal was in flight, whose client turned
                # the cancel into an error: the step's run must not wait for
                # this loop for ever.
                stop_if_cancelled()

        task = asyncio.create_task(renew(), name=f"renew-lock-{held.key}")
        try:
            yield
        finally:
            # The renewal's end is swallowed, not this run's cancellation.
            await cancel_and_wait(task)

    async def _prepare(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> Intent | StepTrace | None:
        """The executor's intent for ``step``, a decision without acting, or None.

        None: the executor does not prepare this step type (its ``run`` acts and
        no intent is recorded). A failure is a value: ``failed``, nothing sent.
        """
        prepare = getattr(self._executors[step.family], "prepare", None)
        if prepare is None:
            return None
        try:
            async with asyncio.timeout(step.timeout.total_seconds()):
                prepared: Intent | StepResult | None = await prepare(step, alert)
        except TimeoutError:
            return replace(
                trace,
                decision=Decision.FAILED,
                reason=f"timed out reading the target after "
                f"{step.timeout.total_seconds():g}s: {step.summary()}",
            )
        except StoreUnavailableError:
            raise
        except asyncio.CancelledError as exc:
            if cancelling():  # this task itself, not a step's stray cancel
                raise
            return self._failed(trace, exc, "")
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            return self._failed(trace, exc, "")
        if isinstance(prepared, StepResult):
            return replace(
                trace,
                decision=Decision.EXECUTED if prepared.ok else Decision.FAILED,
                reason=self._scrub(prepared.reason),
                result=freeze(dict(prepared.result)),
            )
        return prepared

    async def _verify(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> StepTrace:
        check = getattr(step, "verify", None)
        if check is None:
            return trace
        # The verify model names the family whose executor polls it.
        executor = self._executors.get(check.family)
        if executor is None:
            return replace(
                trace,
                decision=Decision.FAILED,
                reason=f"{trace.reason}; not verified: no executor for {check.type}",
            )
        try:
            async with asyncio.timeout(check.timeout.total_seconds() + 5):
                result = await executor.verify(check, step, alert)
        except StoreUnavailableError:
            raise
        except asyncio.CancelledError as exc:
            if cancelling():  # this task itself, not a step's stray cancel
                raise
            result = StepResult(
                ok=False, reason=f"verification failed: {describe_error(exc)}"
            )
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            result = StepResult(
                ok=False,
                reason=self._scrub(f"verification failed: {describe_error(exc)}"),
            )
        merged = {
            **dict(trace.result),
            "verification": {
                "ok": result.ok,
                "reason": result.reason,
                **dict(result.result),
            },
        }
        return replace(
            trace,
            decision=Decision.EXECUTED if result.ok else Decision.FAILED,
            reason=f"{trace.reason}; {result.reason}",
            result=freeze(merged),
        )

    async def _execute(
        self, trace: StepTrace, step: StepModel, alert: Alert
    ) -> StepTrace:
        return (await self._execute_changed(trace, step, alert))[0]

    async def _execute_changed(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        intent: Intent | None = None,
    ) -> tuple[StepTrace, bool]:
        """Run a step (``apply`` its intent if prepared); say if it changed anything."""
        action = step.summary()
        executor = self._executors.get(step.family)
        if executor is None:
            skipped = replace(
                trace,
                decision=Decision.SKIPPED,
                guard="executor",
                reason=f"no {step.family} executor is configured in this receiver; "
                f"did not: {action}",
            )
            return skipped, False
        try:
            async with asyncio.timeout(step.timeout.total_seconds()):
                if intent is not None:
                    preparing: Preparing = executor  # type: ignore[assignment]
                    outcome = await preparing.apply(step, alert, intent)
                else:
                    outcome = await executor.run(step, alert)
        except TimeoutError:
            timed_out = replace(
                trace,
                decision=Decision.FAILED,
                reason=self._scrub(
                    f"timed out after {step.timeout.total_seconds():g}s: {action}"
                ),
            )
            return timed_out, True
        except StoreUnavailableError:
            raise
        except asyncio.CancelledError as exc:
            if cancelling():  # this task itself, not a step's stray cancel
                raise
            return self._failed(trace, exc, ""), True
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            return self._failed(trace, exc, ""), True
        done = replace(
            trace,
            decision=Decision.EXECUTED if outcome.ok else Decision.FAILED,
            reason=self._scrub(outcome.reason),
            result=freeze(dict(outcome.result)),
        )
        return done, outcome.changed or not outcome.ok
