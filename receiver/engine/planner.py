"""Turn rule matches into step decisions: run, dry-run, or skip with a reason.

Pure: the checks here need only the alert, the rulebook, the mode and the clock's
reading. Checks that need shared state (idempotency, cooldown, budget, lock,
circuit breaker) belong to the runner, which reads the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from receiver.model import (
    Alert,
    Decision,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)
from receiver.rulebook.loader import Rulebook, RuleMatch
from receiver.rulebook.steps import StepModel
from receiver.rulebook.templates import RenderError, format_duration


@dataclass(frozen=True)
class PlanContext:
    """What the planner needs besides the alert: mode and allowlists."""

    execute: bool = False
    namespaces: tuple[str, ...] | None = None  # None: any namespace
    # Diagnose mode: read-only diagnostics run, remediations are only described.
    diagnose: bool = False


@dataclass(frozen=True)
class PlannedStep:
    """A step with its provisional decision; ``run`` means the runner decides."""

    trace: StepTrace
    step: StepModel | None = None
    run: bool = False
    approval: bool = False
    index: int = 0


@dataclass(frozen=True)
class PlannedMatch:
    """One rule match and its planned steps."""

    rule: str
    severity: Severity
    severity_reason: str
    playbook: str
    match: RuleMatch
    steps: tuple[PlannedStep, ...]


@dataclass(frozen=True)
class Plan:
    """Everything planned for one alert."""

    alert: Alert
    matches: tuple[PlannedMatch, ...]
    notes: tuple[str, ...] = field(default=())


def _trace(
    step: StepModel, decision: Decision, reason: str, guard: str = ""
) -> StepTrace:
    try:
        target = step.target()
        request = step.describe()
    except (NotImplementedError, TypeError, ValueError):
        target, request = "", {}
    return StepTrace(
        kind=step.kind,
        type=step.type_name(),
        target=target,
        decision=decision,
        reason=reason,
        request=freeze(request),
        name=step.name,
        guard=guard,
    )


def _plan_step(
    step: StepModel, alert: Alert, now: datetime, match: RuleMatch, ctx: PlanContext
) -> PlannedStep:
    try:
        rendered = step.rendered(alert, match.playbook.one_of)
    except RenderError as exc:
        return PlannedStep(
            StepTrace(
                kind=step.kind,
                type=step.type_name(),
                target="",
                decision=Decision.SKIPPED,
                reason=f"cannot fill in the step for this alert: {exc}",
                name=step.name,
                guard="template",
            )
        )
    action = rendered.summary()
    guards = match.playbook.guards
    namespace = getattr(rendered, "namespace", None)
    allowed = ctx.namespaces
    if guards.namespaces is not None:
        allowed = tuple(n for n in guards.namespaces if allowed is None or n in allowed)
    if namespace is not None and allowed is not None and namespace not in allowed:
        return PlannedStep(
            _trace(
                rendered,
                Decision.SKIPPED,
                f"namespace {namespace!r} is not allowed (allowlist: "
                f"{', '.join(allowed) or 'empty'})",
                "namespace",
            ),
            rendered,
        )
    if step.kind is StepKind.REMEDIATION:
        if alert.status != "firing":
            return PlannedStep(
                _trace(
                    rendered,
                    Decision.SKIPPED,
                    "alert resolved: remediations run only while an alert fires "
                    f"(would have: {action})",
                    "resolved",
                ),
                rendered,
            )
        need = guards.require_firing_for
        if need is not None and alert.firing_for(now) < need:
            return PlannedStep(
                _trace(
                    rendered,
                    Decision.SKIPPED,
                    f"not firing long enough: {format_duration(alert.firing_for(now))}"
                    f" of the required {format_duration(need)}",
                    "require_firing_for",
                ),
                rendered,
            )
    approval = getattr(rendered, "approval", "none") == "required"
    forced = guards.dry_run and step.kind is StepKind.REMEDIATION
    looks = ctx.diagnose and step.kind is StepKind.DIAGNOSTIC
    if not (ctx.execute or looks) or forced:
        why = "playbook forces dry-run" if ctx.execute else "dry-run mode"
        if ctx.diagnose:
            why = "diagnose mode"
        prefix = "would ask a human for approval, then " if approval else "would "
        return PlannedStep(
            _trace(rendered, Decision.DRY_RUN, f"{why}: {prefix}{action}"), rendered
        )
    return PlannedStep(
        _trace(rendered, Decision.DRY_RUN, f"planned: {action}"),
        rendered,
        run=True,
        approval=approval,
    )


def plan(
    alert: Alert,
    rulebook: Rulebook,
    now: datetime,
    ctx: PlanContext,
    *,
    matches: Sequence[RuleMatch] | None = None,
) -> Plan:
    """Match ``alert`` and decide, as far as is possible without state, each step."""
    if not alert.actionable:
        event = alert.labels.get("event_type") or alert.refs.get("event_action", "")
        return Plan(
            alert,
            (),
            (
                (
                    f"{event or 'event'} is recorded only; playbooks run on firing "
                    "and resolved events"
                ),
            ),
        )
    found = rulebook.match(alert, now) if matches is None else list(matches)
    planned = []
    for match in found:
        steps = [
            *match.playbook.diagnostics,
            *match.playbook.remediation,
        ]
        planned.append(
            PlannedMatch(
                rule=match.rule.name,
                severity=match.severity,
                severity_reason=match.severity_reason,
                playbook=match.rule.rule.playbook,
                match=match,
                steps=tuple(
                    replace(_plan_step(s, alert, now, match, ctx), index=i)
                    for i, s in enumerate(steps)
                ),
            )
        )
    notes: tuple[str, ...] = () if planned else ("no rule matched; nothing runs",)
    truncated = alert.refs.get("truncated_alerts")
    if truncated:
        notes += (
            (
                f"Alertmanager left {truncated} more alerts of this group out of "
                "the payload (max_alerts); they were not received and are not "
                "decided"
            ),
        )
    return Plan(alert, tuple(planned), notes)
