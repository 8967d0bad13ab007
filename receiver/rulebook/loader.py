"""Load rule files from directories or files into a ``Rulebook``, or explain why not.

Every problem is reported at once with file, rule and field (``RuleError``), so
``receiver rules check`` can list them all. Test files (``*.test.yaml``) are skipped
here and read by ``receiver.rulebook.ruletest``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from receiver.errors import RuleError, RuleErrorDetail
from receiver.model import Alert, Severity
from receiver.rulebook.index import RuleIndex
from receiver.rulebook.matchers import Matcher, MatcherError, matches_all
from receiver.rulebook.schema import CompiledRule, Playbook, Rule
from receiver.rulebook.severity import resolve_severity

RULE_SUFFIXES = (".yaml", ".yml")
TEST_SUFFIXES = (".test.yaml", ".test.yml")


@dataclass(frozen=True)
class RuleMatch:
    """A rule that matched, with its severity and the reason for that severity."""

    rule: CompiledRule
    severity: Severity
    severity_reason: str
    playbook: Playbook


@dataclass(frozen=True)
class Rulebook:
    """All loaded rules and playbooks; ``match`` is pure."""

    rules: tuple[CompiledRule, ...]
    playbooks: dict[str, Playbook]
    files: tuple[str, ...] = ()
    index: RuleIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", RuleIndex(self.rules))

    def match(
        self, alert: Alert, now: datetime, *, linear: bool = False
    ) -> list[RuleMatch]:
        """Rules matching ``alert`` in order; first match wins unless ``continue``."""
        candidates = self.rules if linear else self.index.candidates(alert.labels)
        out: list[RuleMatch] = []
        for compiled in candidates:
            rule = compiled.rule
            if rule.status != "any" and rule.status != alert.status:
                continue
            if rule.sources is not None and alert.source not in rule.sources:
                continue
            if not matches_all(compiled.matchers, alert.labels):
                continue
            severity, reason = resolve_severity(rule.severity, alert, now)
            out.append(
                RuleMatch(compiled, severity, reason, self.playbooks[rule.playbook])
            )
            if not rule.continue_:
                break
        return out


def rule_files(paths: Iterable[Path | str]) -> list[Path]:
    """Rule files under ``paths`` (files or directories), in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.name.endswith(RULE_SUFFIXES)
                and not p.name.endswith(TEST_SUFFIXES)
            )
        else:
            found.append(path)
    return found


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _rule_name(raw: Any, loc: Sequence[int | str]) -> str | None:
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        try:
            name = raw["rules"][loc[1]].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            return f"#{loc[1]}"
        return str(name) if name else f"#{loc[1]}"
    return None


def _validation_details(
    file: str, raw: Any, exc: ValidationError, prefix: tuple[int | str, ...] = ()
) -> list[RuleErrorDetail]:
    details = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        rule = _rule_name(raw, loc)
        # Drop the discriminator tag pydantic inserts for step unions.
        cleaned = [
            p
            for i, p in enumerate(loc)
            if not (isinstance(p, str) and "." in p and i > 0)
            and not (i > 0 and loc[i - 1] == "severity")
        ]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = (
                "unknown field; check the spelling against the README's rule reference"
            )
        elif err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag", "?")
            expected = (err.get("ctx") or {}).get("expected_tags", "")
            message = f"unknown step type {tag!r}; expected one of {expected}"
        details.append(RuleErrorDetail(file, message, rule, _loc(cleaned)))
    return details


def load_rulebook(paths: Iterable[Path | str]) -> Rulebook:
    """Load and validate every rule file under ``paths``.

    Raises:
        RuleError: listing every problem found, each with file, rule and field.
    """
    files = rule_files(paths)
    errors: list[RuleErrorDetail] = []
    if not files:
        raise RuleError(
            [
                RuleErrorDetail(
                    ", ".join(map(str, paths)) or "<none>",
                    "no rule files (*.yaml, *.yml) found",
                )
            ]
        )
    playbooks: dict[str, Playbook] = {}
    playbook_files: dict[str, str] = {}
    compiled: list[CompiledRule] = []
    seen: dict[str, str] = {}
    for path in files:
        file = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            errors.append(RuleErrorDetail(file, f"cannot read: {exc.strerror}"))
            continue
        except yaml.YAMLError as exc:
            errors.append(RuleErrorDetail(file, f"invalid YAML: {exc}"))
            continue
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            errors.append(
                RuleErrorDetail(
                    file, "top level must be a mapping with 'playbooks' and/or 'rules'"
                )
            )
            continue
        unknown = sorted(set(raw) - {"playbooks", "rules"})
        for key in unknown:
            errors.append(
                RuleErrorDetail(
                    file,
                    "unknown top-level field; a rule file holds 'playbooks' and "
                    "'rules'",
                    None,
                    str(key),
                )
            )
        raw_playbooks = raw.get("playbooks") or {}
        raw_rules = raw.get("rules") or []
        if not isinstance(raw_playbooks, dict):
            errors.append(
                RuleErrorDetail(
                    file, "must be a mapping of name to playbook", None, "playbooks"
                )
            )
            raw_playbooks = {}
        if not isinstance(raw_rules, list):
            errors.append(
                RuleErrorDetail(file, "must be a list of rules", None, "rules")
            )
            raw_rules = []
        for name, body in raw_playbooks.items():
            try:
                playbook = Playbook.model_validate(body or {})
            except ValidationError as exc:
                errors.extend(
                    _validation_details(file, raw, exc, prefix=("playbooks", str(name)))
                )
                playbooks.setdefault(str(name), Playbook())
                playbook_files.setdefault(str(name), file)
                continue
            if name in playbooks:
                errors.append(
                    RuleErrorDetail(
                        file,
                        f"duplicate playbook {name!r} (first in {playbook_files[name]})",
                        None,
                        f"playbooks.{name}",
                    )
                )
                continue
            playbooks[str(name)] = playbook
            playbook_files[str(name)] = file
        for i, body in enumerate(raw_rules):
            try:
                rule = Rule.model_validate(body)
            except ValidationError as exc:
                errors.extend(_validation_details(file, raw, exc, prefix=("rules", i)))
                continue
            if rule.name in seen:
                errors.append(
                    RuleErrorDetail(
                        file,
                        f"duplicate rule name (first in {seen[rule.name]})",
                        rule.name,
                        f"rules[{i}].name",
                    )
                )
                continue
            seen[rule.name] = file
            matchers = []
            for j, text in enumerate(rule.match):
                try:
                    matchers.append(Matcher.parse(text))
                except MatcherError as exc:
                    errors.append(
                        RuleErrorDetail(
                            file, str(exc), rule.name, f"rules[{i}].match[{j}]"
                        )
                    )
            compiled.append(CompiledRule(len(compiled), rule, tuple(matchers), file))
    for item in compiled:
        if item.rule.playbook not in playbooks:
            known = ", ".join(sorted(playbooks)) or "none defined"
            errors.append(
                RuleErrorDetail(
                    item.file,
                    f"unknown playbook {item.rule.playbook!r} (known: {known})",
                    item.name,
                    "playbook",
                )
            )
    if errors:
        raise RuleError(errors)
    return Rulebook(tuple(compiled), playbooks, tuple(str(f) for f in files))
