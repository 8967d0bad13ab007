"""Rule unit tests, in the spirit of ``promtool test rules``.

A test file (``*.test.yaml``) lists cases: an alert (labels, status, source,
startsAt) or a payload file, a time (``at``), and the matches expected (rule,
severity, playbook, in order). ``receiver rules test`` runs them; pure apart
from reading the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.model import Alert, Severity, Source, freeze
from receiver.rulebook.loader import TEST_SUFFIXES, Rulebook


class TestAlert(BaseModel):
    """An alert written out in a test case."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: Literal["firing", "resolved"] = "firing"
    source: Source = "alertmanager"
    startsAt: datetime | None = None  # noqa: N815 (Alertmanager's name)
    fingerprint: str = "test"

    def to_alert(self) -> Alert:
        """The core ``Alert``."""
        return Alert(
            source=self.source,
            fingerprint=self.fingerprint,
            status=self.status,
            labels=freeze(self.labels),
            annotations=freeze(self.annotations),
            starts_at=self.startsAt.astimezone(UTC) if self.startsAt else None,
        )


class Expected(BaseModel):
    """One expected match."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: str
    severity: Severity | None = None
    playbook: str | None = None


class Case(BaseModel):
    """One test case."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    at: datetime | None = None
    alert: TestAlert
    expect: list[Expected]


class TestFile(BaseModel):
    """A test file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tests: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case."""

    file: str
    name: str
    ok: bool
    message: str = ""


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


def _fmt(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no match"
    return ", ".join(
        f"{i['rule']} ({i.get('severity') or '?'}, {i.get('playbook') or '?'})"
        for i in items
    )


def run_file(path: Path, rulebook: Rulebook) -> list[CaseResult]:
    """Run every case in one test file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        parsed = TestFile.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        return [CaseResult(str(path), "<file>", ok=False, message=str(exc))]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        return [CaseResult(str(path), "<file>", ok=False, message=problems)]
    results = []
    for case in parsed.tests:
        alert = case.alert.to_alert()
        now = case.at.astimezone(UTC) if case.at else datetime.now(UTC)
        got = [
            {
                "rule": m.rule.name,
                "severity": m.severity.value,
                "playbook": m.rule.rule.playbook,
            }
            for m in rulebook.match(alert, now)
        ]
        want = [e.model_dump(exclude_none=True) for e in case.expect]
        trimmed = [{k: g[k] for k in w} for g, w in zip(got, want, strict=False)]
        ok = len(got) == len(want) and trimmed == [
            {k: str(v) for k, v in w.items()} for w in want
        ]
        message = "" if ok else f"expected {_fmt(want)}; got {_fmt(got)}"
        results.append(CaseResult(str(path), case.name, ok=ok, message=message))
    return results


def dumps(results: list[CaseResult]) -> str:
    """JSON summary for machines."""
    return json.dumps(
        [
            {"file": r.file, "name": r.name, "ok": r.ok, "message": r.message}
            for r in results
        ],
        indent=2,
    )
