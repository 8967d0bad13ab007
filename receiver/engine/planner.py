"""Turn rule matches into step decisions: run, dry-run, or skip with a reason.

Pure: the checks here need only the alert, the rulebook, the mode and the clock's
reading. Checks that need shared state (idempotency, cooldown, budget, lock,
circuit breaker) belong to the runner, which reads the store.

Playbooks are compiled once (``CompiledPlaybooks``): each step knows which alert
fields its templates read, and a step rendered for one set of those values (the
rendered model, its target, the exact request, or why it cannot be filled in)
is kept and reused for every alert with the same values. Rendering is a pure
function of those values, so deciding a storm of alerts that share their
namespace and workload is a lookup per step, not a model copy and validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from receiver.kept import Kept
from receiver.model import (
    Alert,
    Decision,
    JSONValue,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)
from receiver.rulebook.loader import Rulebook, RuleMatch
from receiver.rulebook.schema import Playbook
from receiver.rulebook.steps import StepModel
from receiver.rulebook.templates import PLACEHOLDER, RenderError, format_duration

# Renderings kept per step; a step keyed on a value unique to each alert (its
# fingerprint) starts over when full, so memory stays bounded.
RENDER_CACHE = 4096
_EMPTY: Mapping[str, JSONValue] = freeze({})


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

    @property
    def source_playbook(self) -> str:
        """The playbook ``playbook`` was bound from (itself, without ``as:``)."""
        return self.match.rule.rule.playbook


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


@dataclass(frozen=True)
class Rendering:
    """A step filled in for some alert values, with what traces show of it."""

    step: StepModel | None  # None: it could not be filled in
    error: str = ""
    target: str = ""
    request: Mapping[str, JSONValue] = field(default_factory=lambda: freeze({}))
    action: str = ""
    namespace: str | None = None
    approval: bool = False

    def trace(
        self, step: CompiledStep, decision: Decision, reason: str, guard: str = ""
    ) -> StepTrace:
        """This rendering's trace with ``decision``, ``reason`` and ``guard``."""
        return StepTrace(
            step.kind,
            step.type,
            self.target,
            decision,
            reason,
            self.request,
            _EMPTY,
            step.name,
            guard,
        )


def _fields(value: object) -> Iterator[tuple[str, str]]:
    """Every ``{scope.name}`` a dumped step model's strings refer to."""
    if isinstance(value, str):
        for found in PLACEHOLDER.finditer(value):
            yield found.group(1), found.group(2)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _fields(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _fields(item)


def _field_values(fields: Sequence[tuple[str, str]], alert: Alert) -> list[str | None]:
    """The values of ``fields`` (scope, name) in ``alert``: what a plan reads."""
    out: list[str | None] = []
    for scope, name in fields:
        if scope == "labels":
            out.append(alert.labels.get(name))
        elif scope == "annotations":
            out.append(alert.annotations.get(name))
        else:
            out.append(str(getattr(alert, name, None)))
    return out


class CompiledStep:
    """One playbook step, compiled: the alert fields it reads, its renderings."""

    def __init__(
        self, step: StepModel, one_of: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.step = step
        # The playbook's label choices (``labels.<name>.one_of``): fixed for a
        # step, which belongs to one playbook.
        self.one_of = one_of
        self.kind = step.kind
        self.remediation = step.kind is StepKind.REMEDIATION
        self.type = step.type_name()
        self.name = step.name
        self.fields = tuple(sorted(set(_fields(step.model_dump()))))
        self._renderings: Kept[tuple[str | None, ...], Rendering] = Kept(RENDER_CACHE)

    def _key(self, alert: Alert) -> tuple[str | None, ...]:
        return tuple(_field_values(self.fields, alert))

    def render(self, alert: Alert) -> Rendering:
        """The step filled in for ``alert`` (computed once per distinct values)."""
        key = self._key(alert)
        found = self._renderings.get(key)
        if found is None:
            found = self._renderings.keep(key, self._render(alert))
        return found

    def _render(self, alert: Alert) -> Rendering:
        try:
            rendered = self.step.rendered(alert, self.one_of)
        except RenderError as exc:
            return Rendering(None, error=str(exc))
        trace = _trace(rendered, Decision.DRY_RUN, "")
        return Rendering(
            rendered,
            target=trace.target,
            request=trace.request,
            action=rendered.summary(),
            namespace=getattr(rendered, "namespace", None),
            approval=getattr(rendered, "approval", "none") == "required",
        )


# Marks the key of a plan made for an alert not firing long enough yet.
_YOUNG = object()


class CompiledPlaybook:
    """A playbook's steps, compiled, and its planned steps per alert values.

    What a step is planned as depends on the alert only through the fields its
    templates read, the alert's status and (for a remediation of a playbook
    that requires firing for a while) whether it fired long enough, and if
    not, for how many seconds (its reason says). Steps
    planned for one set of those (and one ``PlanContext``) are kept and reused
    as they are: they are frozen, so alerts may share them.
    """

    def __init__(self, playbook: Playbook, steps: tuple[CompiledStep, ...]) -> None:
        self.playbook = playbook
        self.steps = steps
        self.fields = tuple(sorted({f for s in steps for f in s.fields}))
        self._need = playbook.guards.require_firing_for
        # Only then does the clock's reading change a plan.
        self._timed = self._need is not None and any(s.remediation for s in steps)
        self._planned: Kept[tuple[object, ...], tuple[PlannedStep, ...]] = Kept(
            RENDER_CACHE
        )
        self._matches: Kept[tuple[int, int], PlannedMatch] = Kept(RENDER_CACHE)

    def _values(self, alert: Alert) -> list[str | None]:
        return _field_values(self.fields, alert)

    def plan(
        self, alert: Alert, now: datetime, match: RuleMatch, ctx: PlanContext
    ) -> tuple[PlannedStep, ...]:
        """The steps planned for ``alert`` (computed once per distinct inputs)."""
        key: tuple[object, ...] = (ctx, alert.status, *self._values(alert))
        if self._timed and alert.status == "firing" and self._need is not None:
            fired = alert.firing_for(now)
            if fired < self._need:
                # Its remediations' reason names how long it fired, to the
                # second: shared by alerts as young to the second (a storm of
                # new alerts; the first notifications of any alert).
                key = (_YOUNG, int(fired.total_seconds()), *key)
        found = self._planned.get(key)
        if found is None:
            found = self._planned.keep(key, self._plan(alert, now, match, ctx))
        return found

    def planned(
        self, alert: Alert, now: datetime, match: RuleMatch, ctx: PlanContext
    ) -> PlannedMatch:
        """``match`` with its steps planned for ``alert`` (shared when alike)."""
        steps = self.plan(alert, now, match, ctx)
        key = (id(match), id(steps))
        found = self._matches.get(key)
        if found is None or found.match is not match or found.steps is not steps:
            found = PlannedMatch(
                rule=match.rule.name,
                severity=match.severity,
                severity_reason=match.severity_reason,
                playbook=match.rule.playbook,
                match=match,
                steps=steps,
            )
            # It holds both, so neither id is reused while it is kept.
            self._matches.keep(key, found)
        return found

    def _plan(
        self, alert: Alert, now: datetime, match: RuleMatch, ctx: PlanContext
    ) -> tuple[PlannedStep, ...]:
        return tuple(
            _plan_step(s, alert, now, match, ctx, index=i)
            for i, s in enumerate(self.steps)
        )


class CompiledPlaybooks:
    """Compiled steps and playbooks, built on first use for the rulebook's life."""

    def __init__(self) -> None:
        # Keyed by identity; the step itself is kept, so an id is never reused.
        self._steps: dict[int, CompiledStep] = {}
        self._playbooks: dict[int, CompiledPlaybook] = {}

    def step(
        self, step: StepModel, one_of: Mapping[str, Sequence[str]] | None = None
    ) -> CompiledStep:
        """The compiled form of ``step`` (filled in with ``one_of`` choices)."""
        found = self._steps.get(id(step))
        if found is None or found.step is not step or found.one_of != one_of:
            found = self._steps[id(step)] = CompiledStep(step, one_of)
        return found

    def playbook(self, playbook: Playbook) -> CompiledPlaybook:
        """The compiled form of ``playbook`` (kept, like its steps, by identity)."""
        found = self._playbooks.get(id(playbook))
        if found is None or found.playbook is not playbook:
            one_of = playbook.one_of
            steps = tuple(
                self.step(s, one_of)
                for s in (*playbook.diagnostics, *playbook.remediation)
            )
            found = self._playbooks[id(playbook)] = CompiledPlaybook(playbook, steps)
        return found


def _plan_step(
    compiled: CompiledStep,
    alert: Alert,
    now: datetime,
    match: RuleMatch,
    ctx: PlanContext,
    *,
    index: int,
) -> PlannedStep:
    rendering = compiled.render(alert)
    rendered = rendering.step
    if rendered is None:
        return PlannedStep(
            rendering.trace(
                compiled,
                Decision.SKIPPED,
                f"cannot fill in the step for this alert: {rendering.error}",
                "template",
            ),
            index=index,
        )
    action = rendering.action
    guards = match.playbook.guards
    namespace = rendering.namespace
    allowed = ctx.namespaces
    if guards.namespaces is not None:
        allowed = tuple(n for n in guards.namespaces if allowed is None or n in allowed)
    if namespace is not None and allowed is not None and namespace not in allowed:
        return PlannedStep(
            rendering.trace(
                compiled,
                Decision.SKIPPED,
                f"namespace {namespace!r} is not allowed (allowlist: "
                f"{', '.join(allowed) or 'empty'})",
                "namespace",
            ),
            rendered,
            index=index,
        )
    if compiled.remediation:
        if alert.status != "firing":
            return PlannedStep(
                rendering.trace(
                    compiled,
                    Decision.SKIPPED,
                    "alert resolved: remediations run only while an alert fires "
                    f"(would have: {action})",
                    "resolved",
                ),
                rendered,
                index=index,
            )
        need = guards.require_firing_for
        if need is not None and alert.firing_for(now) < need:
            return PlannedStep(
                rendering.trace(
                    compiled,
                    Decision.SKIPPED,
                    f"not firing long enough: {format_duration(alert.firing_for(now))}"
                    f" of the required {format_duration(need)}",
                    "require_firing_for",
                ),
                rendered,
                index=index,
            )
    approval = rendering.approval
    forced = guards.dry_run and compiled.remediation
    looks = ctx.diagnose and compiled.kind is StepKind.DIAGNOSTIC
    if not (ctx.execute or looks) or forced:
        why = "playbook forces dry-run" if ctx.execute else "dry-run mode"
        if ctx.diagnose:
            why = "diagnose mode"
        prefix = "would ask a human for approval, then " if approval else "would "
        return PlannedStep(
            rendering.trace(compiled, Decision.DRY_RUN, f"{why}: {prefix}{action}"),
            rendered,
            index=index,
        )
    return PlannedStep(
        rendering.trace(compiled, Decision.DRY_RUN, f"planned: {action}"),
        rendered,
        run=True,
        approval=approval,
        index=index,
    )


def plan(
    alert: Alert,
    rulebook: Rulebook,
    now: datetime,
    ctx: PlanContext,
    *,
    matches: Sequence[RuleMatch] | None = None,
    compiled: CompiledPlaybooks | None = None,
) -> Plan:
    """Match ``alert`` and decide, as far as is possible without state, each step.

    ``compiled`` keeps compiled playbooks between calls (the worker passes one
    for its rulebook's life); without it each call compiles afresh.
    """
    compiled = compiled or CompiledPlaybooks()
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
    planned = tuple(
        compiled.playbook(match.playbook).planned(alert, now, match, ctx)
        for match in found
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
    return Plan(alert, planned, notes)
