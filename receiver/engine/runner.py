"""Run planned steps through injected executors, behind the guards, and record it.

Executors (``receiver.steps``) are passed in by ``create_app`` or the CLI, keyed
by step family (``k8s``, ``redis``, ``http``, ``prometheus``); a family with no
executor is skipped with a reason, never guessed at. Diagnostics run directly;
remediations pass ``GuardKeeper`` first and are verified after.

Failure is a value: whatever a step or a verification raises (a step error, a
``ValueError`` from a template value, a ``UnicodeEncodeError``, a ``KeyError``, a
stray ``CancelledError``, a timeout) becomes a ``failed`` step with a readable,
secret-scrubbed reason, and everything the guards took is given back: the lock
released, unspent budget slots returned, the run-once key recorded ``failed``.
Only the store being unreachable (``StoreUnavailableError``) and the task itself
being cancelled leave the runner, so the worker can retry the entry.

Running a step and verifying it is ``receiver.engine.acting``; settling an
action a crashed attempt left half done is ``receiver.engine.recovery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

import structlog

from receiver.engine.acting import (
    Clock,
    Executor,
    Preparing,
    describe_error,
)
from receiver.engine.guards import GuardKeeper, Held, Refusal, idempotency_key
from receiver.engine.planner import Plan, PlannedMatch, PlannedStep
from receiver.engine.recovery import Recovering, _recovery_note
from receiver.engine.reuse import DiagnosticsReuse, occurrence_key
from receiver.errors import StoreUnavailableError
from receiver.kept import Kept
from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    Intent,
    JSONObject,
    MatchTrace,
    StepKind,
    StepTrace,
)
from receiver.retrying import cancelling
from receiver.rulebook.steps import StepModel

__all__ = ["Clock", "Executor", "Preparing", "Runner", "describe_error"]

log = structlog.get_logger("receiver.runner")


_NEWS = frozenset({Decision.EXECUTED, Decision.FAILED, Decision.AWAITING_APPROVAL})
# Match traces kept for plans that run nothing, before the runner starts over.
SETTLED_TRACES = 4096


def _same(text: str) -> str:
    return text


def _match_trace(planned: PlannedMatch, steps: tuple[StepTrace, ...]) -> MatchTrace:
    playbook = planned.match.playbook
    return MatchTrace(
        rule=planned.rule,
        severity=planned.severity,
        playbook=planned.playbook,
        steps=steps,
        notes=(f"severity: {planned.severity_reason}",),
        description=playbook.description,
        runbook_url=playbook.runbook_url,
        escalate_to=playbook.escalate_to,
    )


def _debug_enabled() -> bool:
    """Whether debug lines are kept (they are not built otherwise)."""
    check = getattr(log, "is_enabled_for", None)
    return True if check is None else bool(check(logging.DEBUG))


class Runner(Recovering):
    """Turns a plan into a trace, running steps whose decision is ``run``."""

    def __init__(
        self,
        executors: Mapping[str, Executor],
        clock: Clock,
        *,
        mode: str = "dry-run",
        guards: GuardKeeper | None = None,
        on_step: Callable[[StepTrace], None] | None = None,
        scrub: Callable[[str], str] = _same,
        reuse: DiagnosticsReuse | None = None,
    ) -> None:
        self._reuse = reuse
        self._executors = dict(executors)
        self._clock = clock
        self._mode = mode
        self._guards = guards
        self._on_step = on_step
        self._scrub = scrub
        self._settled_traces: Kept[int, tuple[PlannedMatch, MatchTrace]] = Kept(
            SETTLED_TRACES
        )

    @property
    def mode(self) -> str:
        """``execute`` or ``dry-run``, as recorded in traces."""
        return self._mode

    async def run(
        self,
        plan: Plan,
        payload_id: str = "",
        now: datetime | None = None,
        *,
        debug: bool | None = None,
    ) -> AlertTrace:
        """Execute what the plan says may run and return the full trace.

        ``now`` is the one reading of the clock the checks of this decision
        pass use (read here when not given; a step reads the clock again as
        it takes its claim, lock, cooldown and budget); so is ``debug``, whether debug
        lines are kept (a pass reads it once: most steps of a storm are decided
        by the plan alone, and their line is a debug line).
        """
        at = now or self._clock()
        matches = []
        if debug is None:
            debug = _debug_enabled()
        for planned in plan.matches:
            settled = self._settled(planned, plan.alert, debug=debug)
            if settled is None:
                steps = [
                    await self._step(p, plan.alert, planned, payload_id, at)
                    for p in planned.steps
                ]
                settled = _match_trace(planned, tuple(steps))
            matches.append(settled)
        return AlertTrace(
            alert=plan.alert,
            matches=tuple(matches),
            decided_at=self._clock(),
            payload_id=payload_id,
            mode=self._mode,
            notes=plan.notes,
        )

    def _settled(
        self, planned: PlannedMatch, alert: Alert, *, debug: bool
    ) -> MatchTrace | None:
        """The match's trace when its plan runs nothing (None: steps run).

        Alerts planned alike share their planned steps (``CompiledPlaybook``);
        they share this trace too, so a storm's decisions are not one new
        trace object per step and alert.
        """
        if self._on_step is not None:
            return None
        news = False
        for p in planned.steps:
            if p.run:
                return None
            news = news or p.trace.decision in _NEWS
        if debug or news:
            for p in planned.steps:
                self._log_step(p.trace, alert, planned)
        found = self._settled_traces.get(id(planned))
        if found is not None and found[0] is planned:
            return found[1]
        trace = _match_trace(planned, tuple(p.trace for p in planned.steps))
        # The plan is kept with it, so its id is not reused meanwhile.
        self._settled_traces.keep(id(planned), (planned, trace))
        return trace

    async def _step(
        self,
        planned: PlannedStep,
        alert: Alert,
        match: PlannedMatch,
        payload_id: str,
        now: datetime,
    ) -> StepTrace:
        trace = planned.trace
        if planned.run and planned.step is not None:
            try:
                if planned.step.kind is StepKind.REMEDIATION:
                    trace = await self._remediate(
                        planned, planned.step, alert, match, payload_id, now=now
                    )
                else:
                    trace = await self._diagnose(trace, planned, alert, match)
            except StoreUnavailableError:
                raise
            except asyncio.CancelledError as exc:
                if cancelling():  # this task itself, not a step's stray cancel
                    raise
                trace = self._failed(trace, exc, "")
            except Exception as exc:  # noqa: BLE001 (failure is a value)
                trace = self._failed(trace, exc, "")
        if self._on_step is not None:
            self._on_step(trace)
        self._log_step(trace, alert, match)
        return trace

    @staticmethod
    def _log_step(trace: StepTrace, alert: Alert, match: PlannedMatch) -> None:
        # Steps that acted (or wait for a human) are news; a dry-run or a skip is
        # in the decision record, and logging it at info drowns an alert storm.
        emit = log.info if trace.decision in _NEWS else log.debug
        emit(
            "step_finished",
            step=trace.type,
            target=trace.target,
            decision=trace.decision.value,
            reason=trace.reason,
            guard=trace.guard,
            rule=match.rule,
            fingerprint=alert.fingerprint,
        )

    async def _diagnose(
        self,
        trace: StepTrace,
        planned: PlannedStep,
        alert: Alert,
        match: PlannedMatch,
    ) -> StepTrace:
        """Run a diagnostic, or reuse its result for an unchanged occurrence."""
        assert planned.step is not None  # noqa: S101 (the caller checked)
        key = occurrence_key(
            match.rule, planned.index, alert, f"{trace.type} {trace.target}"
        )
        reused = await self._reuse.get(key) if self._reuse is not None else None
        if reused is not None:
            return reused
        trace = await self._execute(trace, planned.step, alert)
        if self._reuse is not None:
            await self._reuse.put(key, trace)
        return trace

    async def _remediate(
        self,
        planned: PlannedStep,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        payload_id: str,
        *,
        now: datetime,
    ) -> StepTrace:
        trace = planned.trace
        action = step.summary()
        if self._guards is None:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="store",
                reason=f"no state store to guard remediations; did not: {action}",
            )
        if step.family not in self._executors:
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="executor",
                reason=f"no {step.family} executor is configured in this receiver; "
                f"did not: {action}",
            )
        keeper = self._guards
        guards = match.match.playbook.guards
        playbook = match.playbook
        target = trace.target
        key = idempotency_key(match.rule, planned.index, step.type_name(), alert)
        try:
            await keeper.check_paused()
            await keeper.check_circuit(playbook, target, guards, now)
            await keeper.check_firing(alert)
            if planned.approval:
                request: JSONObject = {
                    "rule": match.rule,
                    "playbook": playbook,
                    "step": step.type_name(),
                    "target": target,
                    "action": action,
                    "fingerprint": alert.fingerprint,
                    "alertname": alert.labels.get("alertname", ""),
                    "payload_id": payload_id,
                    "destructive": bool(getattr(step, "destructive", False)),
                }
                await keeper.check_approval(key, request, now)
            # A reading of its own: the pass's may be long past (its earlier
            # steps ran first), and a lock taken then would be born expired,
            # a budget slot stamped before slots that other passes took since.
            held = await keeper.enter(
                key=key,
                playbook=playbook,
                target=target,
                guards=guards,
                now=self._clock(),
                lock_ttl=self._lock_ttl(step),
                shared=match.source_playbook,
            )
        except Refusal as refusal:
            if refusal.guard == "resolved":
                # No later delivery of this occurrence will ever run it: settle
                # an action a crashed incarnation may have sent for it now.
                settled = await self._settle_orphan(
                    trace, step, alert, match, key=key, refusal=refusal, now=now
                )
                if settled is not None:
                    return settled
            decision = (
                Decision.AWAITING_APPROVAL if refusal.awaiting else Decision.SKIPPED
            )
            return replace(
                trace, decision=decision, reason=refusal.reason, guard=refusal.guard
            )
        return await self._run_held(trace, step, alert, match, held)

    async def _run_held(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
    ) -> StepTrace:
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        guards = match.match.playbook.guards
        before_effect = await self._after_crash(trace, step, alert, match, held)
        if isinstance(before_effect, StepTrace):
            return before_effect
        note = _recovery_note(held, before_effect)
        try:
            refused = await self._last_check(trace, alert, match, held, before_effect)
            if refused is not None:
                return refused
            prepared = await self._prepare(trace, step, alert)
            if isinstance(prepared, StepTrace):
                return await self._decided(prepared, match, held, note)
            intent_text = prepared.to_json() if prepared is not None else ""
            marked = await keeper.store.mark_sending(
                held.key, held.owner, self._clock(), intent_text
            )
        except BaseException:
            # The store went away (or the task is stopped) before anything was
            # sent: give back the claim, the budget slots and the lock, so the
            # entry decided again runs the step instead of reading "already
            # started by <this worker>: not run again".
            with contextlib.suppress(StoreUnavailableError):
                await keeper.abandon(held)
            raise
        if not marked:
            # Another worker took the claim over (this one looked dead to it).
            await keeper.abandon(held)
            return replace(
                trace,
                decision=Decision.SKIPPED,
                guard="idempotency",
                reason="not run: another worker took over its run-once claim "
                "(this one was presumed dead); nothing was sent",
            )
        outcome, changed = await self._act(trace, step, alert, held, prepared)
        if not changed:
            await keeper.finish(
                held,
                ok=True,
                detail=outcome.reason,
                playbook=match.playbook,
                target=trace.target,
                guards=guards,
                now=self._clock(),
                shared=match.source_playbook,
                count=False,
            )
            return replace(outcome, decision=Decision.SKIPPED, guard="already_done")
        ok = outcome.decision is Decision.EXECUTED
        await keeper.finish(
            held,
            ok=ok,
            detail=outcome.reason,
            playbook=match.playbook,
            target=trace.target,
            guards=guards,
            now=self._clock(),
            shared=match.source_playbook,
        )
        return replace(outcome, reason=f"{outcome.reason}{note}") if note else outcome

    async def _decided(
        self, prepared: StepTrace, match: PlannedMatch, held: Held, note: str
    ) -> StepTrace:
        """Record a step ``prepare`` decided without acting (no-op or failure)."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        changed = prepared.decision is not Decision.EXECUTED
        await self._guards.finish(
            held,
            ok=not changed,
            detail=prepared.reason,
            playbook=match.playbook,
            target=prepared.target,
            guards=match.match.playbook.guards,
            now=self._clock(),
            shared=match.source_playbook,
            count=changed,
        )
        if changed:
            return replace(
                prepared, reason=f"{prepared.reason} (nothing was sent){note}"
            )
        return replace(prepared, decision=Decision.SKIPPED, guard="already_done")

    async def _last_check(
        self,
        trace: StepTrace,
        alert: Alert,
        match: PlannedMatch,
        held: Held,
        before_effect: str,
    ) -> StepTrace | None:
        """Ask the alert's source right before acting; a "no" ends the run."""
        assert self._guards is not None  # noqa: S101 (checked by the caller)
        keeper = self._guards
        try:
            await keeper.check_firing(alert, ask_source=True)
        except Refusal as refusal:
            if before_effect:
                return await self._not_rerun(
                    trace,
                    match,
                    held,
                    why=f"{before_effect}; not run again: {refusal.reason}",
                    guard=refusal.guard,
                )
            await keeper.abandon(held)
            return replace(
                trace,
                decision=Decision.SKIPPED,
                reason=refusal.reason,
                guard=refusal.guard,
            )
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            failed = self._failed(trace, exc, "last check before acting failed: ")
            if before_effect:
                return await self._not_rerun(
                    trace,
                    match,
                    held,
                    why=f"{before_effect}; not run again: {failed.reason}",
                    guard=None,
                )
            await keeper.abandon(held)
            note = _recovery_note(held, before_effect)
            return replace(failed, reason=f"{failed.reason} (nothing was sent){note}")
        return None

    async def _act(
        self,
        trace: StepTrace,
        step: StepModel,
        alert: Alert,
        held: Held,
        intent: Intent | None,
    ) -> tuple[StepTrace, bool]:
        """Run and verify a step while renewing its lock; failures are values."""
        try:
            async with self._renewing(held, self._lock_ttl(step)):
                outcome, changed = await self._execute_changed(
                    trace, step, alert, intent
                )
                if changed and outcome.decision is Decision.EXECUTED:
                    outcome = await self._verify(outcome, step, alert)
        except asyncio.CancelledError as exc:
            if cancelling():  # this task itself, not a step's stray cancel
                raise  # shutdown: the key stays "sending", recovery re-checks it
            return self._failed(trace, exc, ""), True
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (failure is a value)
            return self._failed(trace, exc, ""), True
        return outcome, changed
