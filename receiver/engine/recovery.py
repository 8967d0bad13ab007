"""Crash recovery: settle an action an interrupted attempt left ``sending``.

Before an action leaves, its run-once key is marked ``sending`` together with the
action's intent: executors that have a ``prepare`` read the target first and
state the action in absolute terms (``Intent``), and their ``apply`` does exactly
that. After a crash, a key a dead incarnation left ``running`` never sent
anything, so the step runs; one left ``sending`` is re-checked, never blindly
re-run: the executor's ``recheck`` compares the target with the recorded intent.
Took effect: "executed, recovered after a crash" (then verified as usual). Did
not: the target is exactly as before, so the step runs once now, through the
last still-firing check and a fresh ``prepare`` -- but only when the holder is
known to have stopped (it retired, or SQLite's single instance declared it dead
on start). A holder that merely stopped renewing its heartbeat (a stalled
replica on Redis) may still be sending: ``failed``, not run again. Cannot tell:
``failed`` with "unknown whether it took effect", unless the step's own
verification passes now.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime

from receiver.engine.acting import Acting, describe_error
from receiver.engine.guards import Held, Refusal
from receiver.engine.planner import PlannedMatch
from receiver.errors import StoreUnavailableError
from receiver.model import Alert, Decision, Intent, RecheckResult, StepKind, StepTrace
from receiver.retrying import cancelling
from receiver.rulebook.steps import StepModel


def _recovery_note(held: Held, before_effect: str) -> str:
    """What a run taking over a crashed attempt adds to its reason."""
    if before_effect:
        return f" ({before_effect}; run once now)"
    if held.recovered is not None:
        return (
            f" (an attempt by {held.recovered.owner}, interrupted by a crash before "
            "anything was sent, is run now)"
        )
    return ""


class Recovering(Acting):
    """Re-checks, and records, actions a crashed incarnation may have sent."""

    async def _settle_orphan(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        *,
        key: str,
        refusal: Refusal,
        now: datetime,
    ) -> StepTrace | None:
        """Re-check (never run) an action a dead incarnation left ``sending``."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        outcome = await keeper.store.claim_key(
            key, keeper.owner, now, keeper.defaults.idempotency_ttl
        )
        if not outcome.won:
            return None
        held = Held(
            key,
            keeper.owner,
            None,
            recovered=outcome.recovered,
            stopped=outcome.stopped,
        )
        if outcome.recovered is None or outcome.recovered.status != "sending":
            await keeper.store.release_key(key, keeper.owner)
            return None
        seen, verified = await self._recheck(step, alert, held)
        if seen.took_effect is False:
            return await self._not_rerun(
                trace,
                match,
                held,
                why=f"the attempt by {outcome.recovered.owner} was interrupted by a "
                f"crash before it took effect ({seen.reason}); not run again: "
                f"{refusal.reason}",
                guard=refusal.guard,
            )
        return await self._recovered(
            trace, step, alert, match, held=held, seen=seen, verified=verified
        )

    async def _after_crash(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
    ) -> StepTrace | str:
        """Settle a crashed attempt's ``sending`` mark before running again.

        Returns the final trace when it took effect (or cannot be told, or may
        not run again), else what the run's reason says about the attempt
        ("" when there was none).
        """
        recovered = held.recovered
        if recovered is None or recovered.status != "sending":
            return ""
        seen, verified = await self._recheck(step, alert, held)
        if seen.took_effect is not False:
            return await self._recovered(
                trace, step, alert, match, held=held, seen=seen, verified=verified
            )
        # The target is exactly as before the interrupted attempt: nothing of
        # it took effect, so this occurrence runs once now, if its holder is
        # known to have stopped. One that only went silent (its heartbeat
        # lapsed: another replica, stalled) may still be sending.
        if not held.stopped:
            return await self._not_rerun(
                trace,
                match,
                held,
                why=f"the attempt by {recovered.owner} had not taken effect "
                f"({seen.reason}); not run again (at most once): "
                f"{recovered.owner} stopped renewing its heartbeat but never "
                "said it stopped, so its request may still be on its way",
                guard=None,
            )
        return (
            f"the attempt by {recovered.owner} was interrupted by a crash "
            f"before it took effect ({seen.reason})"
        )

    async def _recheck(
        self, step: StepModel, alert: Alert, held: Held
    ) -> tuple[RecheckResult, bool]:
        """Ask the executor whether the interrupted action took effect.

        Also says whether the step's verification already ran for it.

        When it cannot tell and the step declares a verification, a passing
        verification now counts as "took effect" (the state the remediation
        wanted is there), a failing one leaves it unknown: never re-sent.
        """
        assert held.recovered is not None  # noqa: S101 (checked by the caller)
        intent = Intent.from_json(held.recovered.intent)
        recheck = getattr(self._executors[step.family], "recheck", None)
        if intent is None:
            seen = RecheckResult(None, "no intent was recorded before it was sent")
        elif recheck is None:
            seen = RecheckResult(
                None, f"{step.type_name()} has no re-check (intent: {intent.summary})"
            )
        else:
            try:
                async with (
                    self._renewing(held, self._lock_ttl(step)),
                    asyncio.timeout(step.timeout.total_seconds()),
                ):
                    seen = await recheck(step, alert, intent)
            except StoreUnavailableError:
                raise
            except asyncio.CancelledError as exc:
                if cancelling():  # this task itself, not a step's stray cancel
                    raise
                seen = RecheckResult(
                    None, f"the re-check failed: {describe_error(exc)}"
                )
            except Exception as exc:  # noqa: BLE001 (failure is a value)
                seen = RecheckResult(
                    None, f"the re-check failed: {describe_error(exc)}"
                )
        seen = RecheckResult(seen.took_effect, self._scrub(seen.reason))
        if seen.took_effect is not None or getattr(step, "verify", None) is None:
            return seen, False
        probe = StepTrace(
            kind=StepKind.REMEDIATION,
            type=step.type_name(),
            target="",
            decision=Decision.EXECUTED,
            reason="",
        )
        async with self._renewing(held, self._lock_ttl(step)):
            checked = await self._verify(probe, step, alert)
        said = checked.reason.removeprefix("; ")
        if checked.decision is Decision.EXECUTED:
            passed = RecheckResult(
                took_effect=True,
                reason=f"{seen.reason}; but its verification passes now: {said}",
            )
            return passed, True
        failed = RecheckResult(
            None, f"{seen.reason}; its verification does not pass either: {said}"
        )
        return failed, True

    async def _recovered(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        *,
        held: Held,
        seen: RecheckResult,
        verified: bool,
    ) -> StepTrace:
        """Record an interrupted action that took effect, or might have."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        assert held.recovered is not None  # noqa: S101 (checked by the caller)
        owner = held.recovered.owner
        if seen.took_effect:
            outcome = replace(
                trace,
                decision=Decision.EXECUTED,
                reason=f"executed, recovered after a crash of {owner}: {seen.reason}",
            )
            if not verified:
                async with self._renewing(held, self._lock_ttl(step)):
                    outcome = await self._verify(outcome, step, alert)
        else:
            outcome = replace(
                trace,
                decision=Decision.FAILED,
                reason=f"failed, interrupted by a crash of {owner} after the action "
                f"was sent; unknown whether it took effect ({seen.reason}); not "
                f"re-run (at most once): {step.summary()}",
            )
        await self._guards.finish(
            held,
            ok=outcome.decision is Decision.EXECUTED,
            detail=outcome.reason,
            playbook=match.playbook,
            target=trace.target,
            guards=match.match.playbook.guards,
            now=self._clock(),
            shared=match.source_playbook,
            count=bool(seen.took_effect),
        )
        return outcome

    async def _not_rerun(
        self,
        trace: StepTrace,
        match: PlannedMatch,
        held: Held,
        *,
        why: str,
        guard: str | None,
    ) -> StepTrace:
        """An interrupted action that did not take effect, and may not run now."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        reason = f"failed, {why}"
        await self._guards.finish(
            held,
            ok=False,
            detail=reason,
            playbook=match.playbook,
            target=trace.target,
            guards=match.match.playbook.guards,
            now=self._clock(),
            shared=match.source_playbook,
            count=False,
        )
        if guard is None:
            return replace(trace, decision=Decision.FAILED, reason=reason)
        return replace(trace, decision=Decision.SKIPPED, reason=reason, guard=guard)
