"""The rule file schema: playbooks (steps and guards) and rules (matchers, severity).

A playbook may declare ``params`` (typed, with defaults) that its step templates
use as ``{params.NAME}``; a rule binds them with ``with:`` and may name the bound
playbook with ``as:``. ``Playbook.bind`` makes the bound copy the planner runs.

Everything forbids unknown fields, so a typo fails at load time with file, rule and
field. Compiled forms (``CompiledRule``) carry parsed matchers for the index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import GenericAlias, new_class
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
)

from receiver.model import SOURCES, Severity, Source, StepKind
from receiver.rulebook.matchers import Matcher
from receiver.rulebook.severity import LabelSeverity, MatrixSeverity, SeveritySpec
from receiver.rulebook.steps import (
    Duration,
    StepModel,
    StepRegistry,
    template_fields,
)
from receiver.rulebook.templates import (
    PARAM_TYPES,
    BindError,
    Slot,
    bind,
    check_choice,
    check_param_value,
    params_used,
)

_M = TypeVar("_M", bound=BaseModel)
ParamType = Literal["k8s_name", "namespace", "label_value", "redis_key_part", "text"]


def _severity_kind(value: object) -> str | None:
    if isinstance(value, str | Severity):
        return "fixed"
    if isinstance(value, LabelSeverity) or (
        isinstance(value, dict) and "label" in value
    ):
        return "label"
    if isinstance(value, MatrixSeverity) or (
        isinstance(value, dict) and "matrix" in value
    ):
        return "matrix"
    return None


def _check_matcher(text: str) -> str:
    Matcher.parse(text)
    return text


MatcherText = Annotated[str, AfterValidator(_check_matcher)]

SeverityField = Annotated[
    Annotated[Severity, Tag("fixed")]
    | Annotated[LabelSeverity, Tag("label")]
    | Annotated[MatrixSeverity, Tag("matrix")],
    Discriminator(
        _severity_kind,
        custom_error_type="severity",
        custom_error_message=(
            "severity must be P0..P3, {label: NAME, map: {...}, default: P2}, "
            "or {matrix: impact_duration, impact_label: impact}"
        ),
    ),
]


class Budget(BaseModel):
    """At most ``max`` remediation runs per ``window``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max: int = Field(ge=1)
    window: Duration


class CircuitBreaker(BaseModel):
    """Stop remediating after ``failures`` consecutive failures, for ``cool_off``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    failures: int = Field(default=3, ge=1)
    cool_off: Duration = timedelta(hours=1)
    scope: Literal["target", "playbook"] = Field(
        default="target",
        description="Count failures per playbook and target (one bad target "
        "opens only its own circuit) or per playbook.",
    )


class Guards(BaseModel):
    """Safety limits for a playbook's remediations; unset fields use settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cooldown: Duration | None = Field(
        default=None, description="Minimum time between runs per playbook and target."
    )
    budget: Budget | None = None
    lock: bool = Field(default=True, description="One remediation per target at once.")
    circuit_breaker: CircuitBreaker | None = None
    require_firing_for: Duration | None = None
    dry_run: bool = Field(
        default=False,
        description="Force dry-run for this playbook (never forces execution).",
    )
    namespaces: list[str] | None = Field(
        default=None, description="Narrow the settings' namespace allowlist."
    )


class LabelGrammar(BaseModel):
    """What a playbook accepts for one label, beyond its slots' grammars."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    one_of: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=1,
        description="The only values a step may be filled with; others skip it.",
    )


LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]


class Param(BaseModel):
    """One playbook parameter: its type, its default, what it is for."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: ParamType = Field(
        description="The grammar a literal value must meet: k8s_name, namespace, "
        "label_value, redis_key_part or text (any text; each slot it fills "
        "still checks it)."
    )
    default: str | None = Field(
        default=None,
        description="Used when a rule does not pass the parameter: a literal or "
        "one placeholder such as {labels.namespace}; unset: every rule must pass it.",
    )
    description: str = ""

    @field_validator("default")
    @classmethod
    def _default_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if value is not None and kind in PARAM_TYPES:
            why = check_param_value(value, kind)
            if why is not None:
                raise ValueError(f"default {value!r} is not a {kind}: {why}")
        return value


Person = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Approvers(BaseModel):
    """Who may approve a playbook's remediations from Slack.

    A person may approve when named in ``people``, in one of ``groups``, or on
    call right now for ``pagerduty_schedule``. Steps marked ``destructive`` (or
    every step, with ``two_person``) need two different approvers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    people: list[Person] = Field(
        default_factory=list,
        description="Approver names (as mapped from Slack users, e.g. emails).",
    )
    groups: dict[LabelName, list[Person]] = Field(
        default_factory=dict, description="Named groups of approver names."
    )
    pagerduty_schedule: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9]{1,20}$",
        description="PagerDuty schedule ID whose current on-call may approve.",
    )
    schedule_name: str = Field(
        default="", description="The schedule's name, shown in refusals."
    )
    two_person: bool = Field(
        default=False, description="Every step needs two different approvers."
    )


class Playbook(BaseModel):
    """Named diagnostics and remediations with their guards."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    runbook_url: str = ""
    escalate_to: str = ""
    labels: dict[LabelName, LabelGrammar] = Field(
        default_factory=dict,
        description="Narrow labels used in templates, e.g. siem: {one_of: [...]}.",
    )
    params: dict[LabelName, Param] = Field(
        default_factory=dict,
        description="Parameters the steps use as {params.NAME}; rules bind them "
        "with `with:`.",
    )
    # The step union of a registry: ``playbook_model`` fills these in.
    diagnostics: list[StepModel] = Field(default_factory=list)
    remediation: list[StepModel] = Field(default_factory=list)
    guards: Guards = Field(default_factory=Guards)
    sinks: list[str] | None = None
    stand_down_when_acknowledged: bool = Field(
        default=False,
        description="Once a human acknowledges the alert (PagerDuty or Events v2 "
        "acknowledge), skip its remediations; diagnostics still run.",
    )
    approvers: Approvers | None = Field(
        default=None,
        description="Who may approve from Slack; unset: nobody may from Slack.",
    )
    evidence: bool = Field(
        default=False,
        description="Keep what the diagnostics found with the incident: hashed "
        "(sha256) on its timeline, never pruned, exported with its report.",
    )
    pagerduty_follows_outcomes: bool = Field(
        default=False,
        description="Acknowledge the PagerDuty incident when a remediation runs, "
        "resolve it once one verified and the alerts resolved.",
    )

    @property
    def one_of(self) -> dict[str, list[str]]:
        """Label name -> the values the playbook's steps may be filled with."""
        return {name: spec.one_of for name, spec in self.labels.items()}

    def choice_problems(self) -> list[tuple[str, str]]:
        """``(field, message)`` for each ``one_of`` value that cannot fill a slot.

        A listed value must be valid wherever its label is substituted, or the
        playbook could never run with it; the loader reports these.
        """
        problems: dict[tuple[str, str], None] = {}
        for label, spec in self.labels.items():
            for where, slot, text in self._templates():
                for choice in spec.one_of:
                    why = check_choice(choice, text, slot, label)
                    if why is not None:
                        problems[
                            (f"labels.{label}.one_of", f"{why} (it fills {where})")
                        ] = None
        return list(problems)

    def param_problems(self) -> list[tuple[str, str]]:
        """``(field, message)`` for each parameter used but not declared, or unused."""
        problems: list[tuple[str, str]] = []
        used: set[str] = set()
        for where, _slot, text in self._templates():
            for name in params_used(text):
                used.add(name)
                if name not in self.params:
                    declared = ", ".join(sorted(self.params)) or "none"
                    problems.append(
                        (
                            where,
                            (
                                f"{{params.{name}}} names no declared parameter "
                                f"(declared: {declared}); add it under params"
                            ),
                        )
                    )
        problems += [
            (f"params.{name}", "parameter is never used by a step; remove it")
            for name in self.params
            if name not in used
        ]
        return problems

    def binding(
        self, given: Mapping[str, str]
    ) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The parameter values for ``given`` (defaults filled in), and problems.

        Problems are ``(param, message)`` pairs for the rule's ``with``: unknown
        names, missing values, values outside the parameter's type.
        """
        values: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        declared = ", ".join(sorted(self.params)) or "none"
        problems += [
            (name, f"unknown parameter (this playbook declares: {declared})")
            for name in given
            if name not in self.params
        ]
        for name, param in self.params.items():
            value = given.get(name, param.default)
            if value is None:
                problems.append((name, "missing: the parameter has no default"))
                continue
            why = check_param_value(value, param.type) if name in given else None
            if why is not None:
                problems.append((name, f"{value!r} is not a {param.type}: {why}"))
                continue
            values[name] = value
        return values, problems

    def bind(self, values: Mapping[str, str]) -> Playbook:
        """This playbook with ``{params.NAME}`` replaced in every step template.

        Raises:
            BindError: a value cannot fill a field it is used in; it names the
                parameter, and its message the field (``diagnostics[2].namespace``).
        """
        if not self.params:
            return self
        groups: dict[str, list[StepModel]] = {}
        for group in ("diagnostics", "remediation"):
            steps: list[StepModel] = []
            for i, step in enumerate(getattr(self, group)):
                bound = _bind_model(step, values, f"{group}[{i}]")
                check = getattr(bound, "verify", None)
                if isinstance(check, BaseModel):
                    verify = _bind_model(check, values, f"{group}[{i}].verify")
                    bound = bound.model_copy(update={"verify": verify})
                steps.append(bound)
            groups[group] = steps
        return self.model_copy(update={**groups, "params": {}})

    def _templates(self) -> list[tuple[str, Slot, str]]:
        """Every template of the playbook's steps: (where, slot, text)."""
        found: list[tuple[str, Slot, str]] = []
        for group in ("diagnostics", "remediation"):
            for i, step in enumerate(getattr(self, group)):
                models: list[tuple[str, BaseModel]] = [(f"{group}[{i}]", step)]
                check = getattr(step, "verify", None)
                if isinstance(check, BaseModel):
                    models.append((f"{group}[{i}].verify", check))
                for where, model in models:
                    for field, slot in template_fields(type(model)).items():
                        value = getattr(model, field)
                        texts = value if isinstance(value, list) else [value]
                        found += [(f"{where}.{field}", slot, t) for t in texts if t]
        return found

    @field_validator("diagnostics")
    @classmethod
    def _only_diagnostics(cls, steps: list[StepModel]) -> list[StepModel]:
        for i, step in enumerate(steps):
            if step.kind is not StepKind.DIAGNOSTIC:
                raise ValueError(
                    f"step {i} ({step.type_name()}) changes things; "
                    "list it under remediation"
                )
        return steps

    @field_validator("remediation")
    @classmethod
    def _only_remediations(cls, steps: list[StepModel]) -> list[StepModel]:
        for i, step in enumerate(steps):
            if step.kind is not StepKind.REMEDIATION:
                raise ValueError(
                    f"step {i} ({step.type_name()}) only reads; "
                    "list it under diagnostics"
                )
        return steps


def playbook_model(steps: StepRegistry) -> type[Playbook]:
    """``Playbook`` whose steps validate against the step types of ``steps``.

    The same class for the same registry, so playbooks loaded with one registry
    compare equal. A ``Playbook`` itself holds no step types: its steps are
    only ever validated through this model.
    """
    # list[<the registry's union>], built at run time: the union is a value.
    many = GenericAlias(list, (steps.union,))

    def fill(namespace: dict[str, object]) -> None:
        namespace["__module__"] = __name__
        namespace["__doc__"] = Playbook.__doc__
        namespace["__annotations__"] = {"diagnostics": many, "remediation": many}
        namespace["diagnostics"] = Field(default_factory=list)
        namespace["remediation"] = Field(default_factory=list)

    def build() -> type:
        return new_class("Playbook", (Playbook,), exec_body=fill)

    return steps.derived("playbook", build, Playbook)


def _bind_model(model: _M, values: Mapping[str, str], where: str) -> _M:
    """``model`` with its template fields bound (``where`` names it in errors)."""
    update: dict[str, str | list[str]] = {}
    for field, slot in template_fields(type(model)).items():
        value = getattr(model, field)
        try:
            if isinstance(value, list):
                update[field] = [bind(t, slot, values) for t in value]
            elif isinstance(value, str):
                update[field] = bind(value, slot, values)
        except BindError as exc:
            raise exc.at(f"{where}.{field}") from exc
    return model.model_copy(update=update) if update else model


class Binding(BaseModel):
    """What a rule calls the playbook it binds (``as:``), and how it describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    description: str | None = Field(
        default=None,
        description="Replaces the playbook's description in traces, notes and "
        "reports for this binding.",
    )


def _binding_by_name(value: object) -> object:
    """``as: NAME`` is short for ``as: {name: NAME}``."""
    if isinstance(value, str):
        return {"name": value}
    if value is None or isinstance(value, dict | Binding):
        return value
    raise ValueError("write a name, or {name: NAME, description: TEXT}")


class Rule(BaseModel):
    """Matchers, status and sources select alerts; severity and playbook decide."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str = Field(min_length=1)
    description: str = ""
    match: list[MatcherText] = Field(default_factory=list)
    status: Literal["firing", "resolved", "any"] = "firing"
    sources: list[Source] | None = None
    severity: SeverityField = Severity.P2
    playbook: str
    with_: dict[LabelName, str] = Field(
        default_factory=dict,
        alias="with",
        description="Values for the playbook's params (a literal or one "
        "placeholder such as {labels.namespace}).",
    )
    as_: Annotated[Binding | None, BeforeValidator(_binding_by_name)] = Field(
        default=None,
        alias="as",
        description="Name of the bound playbook in decisions, guards, approvals "
        "and sinks (default: the playbook's name), or {name, description}; a "
        "cooldown per target is shared by every binding of the playbook. Rules "
        "binding a playbook differently need different names.",
    )
    continue_: bool = Field(default=False, alias="continue")
    group_by: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Labels whose values group this rule's alerts into one "
        "incident (default: the Alertmanager group, PagerDuty incident or "
        "Events v2 dedup key).",
    )

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[Source] | None) -> list[Source] | None:
        if value is not None and not value:
            raise ValueError(f"sources must not be empty; use any of {list(SOURCES)}")
        return value


class RuleFile(BaseModel):
    """One YAML rule file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    playbooks: dict[str, Playbook] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class CompiledRule:
    """A rule with parsed matchers and its position in evaluation order."""

    order: int
    rule: Rule
    matchers: tuple[Matcher, ...]
    file: str

    @property
    def playbook(self) -> str:
        """The name of the (bound) playbook this rule runs."""
        return self.rule.as_.name if self.rule.as_ else self.rule.playbook

    @property
    def name(self) -> str:
        """The rule name."""
        return self.rule.name

    @property
    def severity(self) -> SeveritySpec:
        """The rule's severity spec."""
        return self.rule.severity
