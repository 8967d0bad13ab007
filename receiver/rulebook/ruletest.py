"""Rule unit tests, in the spirit of ``promtool test rules``.

A test file (``*.test.yaml``) may name the rule files it tests (``rule_files``,
relative to the test file, like promtool's), and lists cases: an alert (labels,
status, source, ``startsAt``, ``endsAt``), a time (``at``), and the matches
expected (rule, severity, playbook, and optionally the planned ``steps`` with
their decisions). ``receiver rules test`` runs them. Each case is checked on its
own: a schema error in one case fails that case, not the file. A failure says,
per field, what was expected and what came out.

Pure apart from reading the files; the step planner is passed in (the engine
sits above the rulebook), so planned decisions are the engine's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.errors import RuleError
from receiver.model import Alert, Severity, Source, freeze
from receiver.rulebook.loader import (
    TEST_SUFFIXES,
    Rulebook,
    load_rulebook,
    load_yaml,
    read_text,
    yaml_problem,
)
from receiver.rulebook.steps import StepRegistry


def _utc(at: datetime | None) -> datetime | None:
    """``at`` in UTC; a time without an offset is UTC (as replay's ``--at``).

    Never the local time zone: a test passes or fails alike on every machine.
    """
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class TestAlert(BaseModel):
    """An alert written out in a test case."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: Literal["firing", "resolved"] = "firing"
    source: Source = "alertmanager"
    startsAt: datetime | None = None  # noqa: N815 (Alertmanager's name)
    endsAt: datetime | None = None  # noqa: N815
    fingerprint: str = "test"

    def to_alert(self) -> Alert:
        """The core ``Alert``."""
        return Alert(
            source=self.source,
            fingerprint=self.fingerprint,
            status=self.status,
            labels=freeze(self.labels),
            annotations=freeze(self.annotations),
            starts_at=_utc(self.startsAt),
            ends_at=_utc(self.endsAt),
        )


StepDecision = Literal["dry_run", "skipped", "run"]


class ExpectedStep(BaseModel):
    """One planned step: its type, and optionally name, decision, reason text."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    name: str | None = None
    decision: StepDecision | None = None
    reason_contains: str | None = None


class Expected(BaseModel):
    """One expected match."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: str
    severity: Severity | None = None
    playbook: str | None = None
    steps: list[ExpectedStep] | None = None


class Case(BaseModel):
    """One test case."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    at: datetime | None = None
    execute: bool = Field(
        default=False, description="Plan as `receiver serve --execute` would."
    )
    alert: TestAlert
    expect: list[Expected]


class TestFile(BaseModel):
    """A test file; cases are validated one by one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rule_files: list[str] | None = None
    tests: list[object] = Field(min_length=1)


@dataclass(frozen=True)
class PlannedStepView:
    """What the planner decided for one step, as a test sees it."""

    type: str
    name: str
    decision: str
    reason: str


@dataclass(frozen=True)
class PlannedMatchView:
    """One match as a test sees it."""

    rule: str
    severity: str
    playbook: str
    steps: tuple[PlannedStepView, ...] = field(default=())


# (alert, rulebook, now, execute) -> the matches the engine would plan.
Planner = Callable[[Alert, Rulebook, datetime, bool], Sequence[PlannedMatchView]]


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case; ``problems`` says per field what differed."""

    file: str
    name: str
    ok: bool
    problems: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """The problems on one line."""
        return "; ".join(self.problems)


def test_files(paths: list[Path]) -> list[Path]:
    """Test files under ``paths``."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*")) if p.name.endswith(TEST_SUFFIXES)
            )
        elif path.name.endswith(TEST_SUFFIXES):
            found.append(path)
    return found


def matches_only(
    alert: Alert, rulebook: Rulebook, now: datetime, execute: bool
) -> list[PlannedMatchView]:
    """A planner that only matches (rule, severity, playbook); no steps."""
    del execute
    return [
        PlannedMatchView(m.rule.name, m.severity.value, m.rule.playbook)
        for m in rulebook.match(alert, now)
    ]


def _schema_problems(exc: ValidationError) -> tuple[str, ...]:
    return tuple(
        f"{'.'.join(str(p) for p in e['loc']) or '<case>'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def _compare_steps(
    where: str, want: list[ExpectedStep], got: tuple[PlannedStepView, ...]
) -> list[str]:
    problems = []
    if len(want) != len(got):
        problems.append(
            f"{where} steps: expected {len(want)} "
            f"({', '.join(s.type for s in want) or 'none'}), got {len(got)} "
            f"({', '.join(s.type for s in got) or 'none'})"
        )
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        label = f"{where} step {i + 1} ({g.type}{f' {g.name!r}' if g.name else ''})"
        for name in ("type", "name", "decision"):
            expected = getattr(w, name)
            if expected is not None and expected != getattr(g, name):
                problems.append(
                    f"{label} {name}: expected {expected}, got {getattr(g, name)}"
                )
        if w.reason_contains is not None and w.reason_contains not in g.reason:
            problems.append(
                f"{label} reason: expected it to contain {w.reason_contains!r}, "
                f"got {g.reason!r}"
            )
    return problems


def compare(want: list[Expected], got: Sequence[PlannedMatchView]) -> list[str]:
    """Per-field differences between expected and planned matches."""
    problems = []
    if len(want) != len(got):
        problems.append(
            f"matches: expected {len(want)} "
            f"({', '.join(w.rule for w in want) or 'none'}), got {len(got)} "
            f"({', '.join(g.rule for g in got) or 'none'})"
        )
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        where = f"match {i + 1}"
        for name in ("rule", "severity", "playbook"):
            expected = getattr(w, name)
            if expected is not None and str(expected) != getattr(g, name):
                problems.append(
                    f"{where} {name}: expected {expected}, got {getattr(g, name)}"
                )
        if w.steps is not None:
            problems.extend(_compare_steps(where, w.steps, g.steps))
    return problems


def _rulebook_for(
    path: Path, parsed: TestFile, default: Rulebook | None, steps: StepRegistry
) -> Rulebook | str:
    """The rulebook a test file tests, or why there is none."""
    if parsed.rule_files is None:
        if default is None:
            return (
                "no rules to test: name them in the file (rule_files: [...]) or "
                "pass rule files or directories"
            )
        return default
    try:
        return load_rulebook([path.parent / f for f in parsed.rule_files], steps=steps)
    except RuleError as exc:
        return "rule_files do not load: " + "; ".join(str(d) for d in exc.details)


def run_file(
    path: Path,
    rulebook: Rulebook | None,
    planner: Planner = matches_only,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    steps: StepRegistry,
) -> list[CaseResult]:
    """Run every case in one test file; each case passes or fails on its own.

    A file naming its own ``rule_files`` loads them with the step types of
    ``steps``.
    """
    name = str(path)
    try:
        data = load_yaml(read_text(path))
        parsed = TestFile.model_validate(data)
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
        return [CaseResult(name, "<file>", ok=False, problems=(problem,))]
    except yaml.YAMLError as exc:
        problem = f"invalid YAML: {yaml_problem(exc)}"
        return [CaseResult(name, "<file>", ok=False, problems=(problem,))]
    except ValidationError as exc:
        return [CaseResult(name, "<file>", ok=False, problems=_schema_problems(exc))]
    book = _rulebook_for(path, parsed, rulebook, steps)
    if isinstance(book, str):
        return [CaseResult(name, "<file>", ok=False, problems=(book,))]
    results = []
    for index, raw in enumerate(parsed.tests):
        label = (
            str(raw.get("name"))
            if isinstance(raw, dict) and raw.get("name")
            else f"<case {index + 1}>"
        )
        try:
            case = Case.model_validate(raw)
        except ValidationError as exc:
            results.append(
                CaseResult(name, label, ok=False, problems=_schema_problems(exc))
            )
            continue
        at = _utc(case.at) or now()
        got = planner(case.alert.to_alert(), book, at, case.execute)
        problems = tuple(compare(case.expect, got))
        results.append(CaseResult(name, label, ok=not problems, problems=problems))
    return results


def dumps(results: list[CaseResult]) -> str:
    """JSON summary for machines."""
    return json.dumps(
        [
            {"file": r.file, "name": r.name, "ok": r.ok, "problems": list(r.problems)}
            for r in results
        ],
        indent=2,
    )
