"""Load rule files from directories or files into a ``Rulebook``, or explain why not.

Every problem is reported at once with file, rule and field (``RuleError``), so
``receiver rules check`` can list them all. Playbooks with ``params`` are bound
here, once per rule binding (``with:``), into the playbooks the rulebook runs.
Test files (``*.test.yaml``) are skipped here and read by
``receiver.rulebook.ruletest``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TypeAlias

import yaml
from pydantic import ValidationError

from receiver.errors import RuleError, RuleErrorDetail
from receiver.kept import Kept
from receiver.model import Alert, Severity
from receiver.rulebook.incidents import IncidentConfig
from receiver.rulebook.index import RuleIndex
from receiver.rulebook.matchers import Matcher, matches_all
from receiver.rulebook.schema import CompiledRule, Playbook, Rule, playbook_model
from receiver.rulebook.severity import resolve_severity
from receiver.rulebook.steps import NO_STEPS, StepRegistry
from receiver.rulebook.templates import BindError

RULE_SUFFIXES = (".yaml", ".yml")
# Rule matches a rulebook keeps for reuse before it starts over.
KEPT_MATCHES = 4096
# An earlier rule's binding: playbook, values, description (``as:``), rule name.
_Bound = tuple[str, dict[str, str], str | None, str]
TEST_SUFFIXES = (".test.yaml", ".test.yml")
# A rule file's top level as YAML gave it, before validation.
Raw: TypeAlias = "Mapping[object, object]"
# Bounds on one rule (or rule test) file, so a hostile one is refused quickly:
# its size, how deep it nests and how many values it holds once its aliases
# are expanded (a "billion laughs" is a few lines of anchors).
MAX_FILE_BYTES = 4 << 20
MAX_DEPTH = 64
MAX_NODES = 1_000_000
_MERGE = "tag:yaml.org,2002:merge"


class YAMLRefused(yaml.YAMLError):
    """A YAML document over a bound, or with a duplicate key; says how to fix it."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                line = event.start_mark.line + 1
                raise YAMLRefused(
                    f"nests too deeply: deeper than {MAX_DEPTH} levels (line {line}); "
                    "flatten it"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[object, object]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[type, object], int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get((type(key), key))
                except TypeError:
                    continue  # an unhashable key: the constructor refuses it
                if first is not None:
                    raise YAMLRefused(
                        f"duplicate key {key!r} (line {line}, first on line "
                        f"{first}); YAML would keep only the last, so remove one"
                    )
                seen[type(key), key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document too big or too deep once its aliases are expanded."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if not finished:
            if key in size:
                continue
            if key in depth:  # still being walked: it contains itself
                raise YAMLRefused(
                    f"an alias refers to a value that contains it (line "
                    f"{node.start_mark.line + 1}); write the value out"
                )
            depth[key] = 0
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
            continue
        children = _children(node)
        size[key] = 1 + sum(size[id(c)] for c in children)
        depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[key] > MAX_NODES:
            raise YAMLRefused(
                f"expands to more than {MAX_NODES:,} values (aliases repeat what "
                "their anchor names); write the rules out or split the file"
            )
        if depth[key] > MAX_DEPTH:
            raise YAMLRefused(
                f"nests too deeply: deeper than {MAX_DEPTH} levels once its "
                f"aliases are expanded (line {node.start_mark.line + 1}); flatten it"
            )


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong with a YAML document and where, on one line.

    PyYAML's own message spans several lines, names the text ``<unicode
    string>`` and quotes the offending line, which in a settings file may hold
    a secret. This says the line and column, what the parser expected, and
    where the construct it was in began. A refusal of the bounded loader (a
    duplicate key, too deep, too big) says what and where, quoting at most a key.
    """
    if isinstance(exc, YAMLRefused):
        return str(exc)
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "not valid YAML"
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    what = exc.problem or exc.context or "not valid YAML"
    began = exc.context_mark
    if exc.problem and exc.context and began is not None and began != mark:
        what += (
            f" ({exc.context} that began on line {began.line + 1}, "
            f"column {began.column + 1})"
        )
    elif exc.problem and exc.context:
        what = f"{exc.context}: {what}"
    if "'\\t'" in what:
        what += "; indent with spaces, YAML allows no tabs there"
    return f"{where}{what}"


def load_yaml(text: str) -> object:
    """One YAML document, parsed safely within the bounds above.

    Raises:
        yaml.YAMLError: the text is not YAML, or is over a bound or repeats a
            key (``YAMLRefused``, whose message says how to fix it).
    """
    if len(text) > MAX_FILE_BYTES:
        raise YAMLRefused(
            f"is larger than {MAX_FILE_BYTES >> 20} MiB; split it into several files"
        )
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """A rule file's text, read within ``MAX_FILE_BYTES``.

    Raises:
        OSError: it cannot be read.
        YAMLRefused: it is too large or not UTF-8.
    """
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YAMLRefused(
            f"is larger than {MAX_FILE_BYTES >> 20} MiB; split it into several files"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YAMLRefused(
            f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None


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
    incidents: IncidentConfig | None = None
    # The step types the rules were validated against (none: built by hand).
    steps: StepRegistry = NO_STEPS
    index: RuleIndex = field(init=False, repr=False)
    # Matches made so far, by rule and severity: alerts matched alike share one.
    _matches: Kept[tuple[int, Severity, str], RuleMatch] = field(
        default_factory=lambda: Kept(KEPT_MATCHES),
        init=False,
        repr=False,
        compare=False,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", RuleIndex(self.rules))

    def _match(
        self, compiled: CompiledRule, severity: Severity, reason: str
    ) -> RuleMatch:
        key = (compiled.order, severity, reason)
        found = self._matches.get(key)
        if found is None or found.rule is not compiled:
            found = RuleMatch(
                compiled, severity, reason, self.playbooks[compiled.playbook]
            )
            self._matches.keep(key, found)
        return found

    def match(
        self, alert: Alert, now: datetime, *, linear: bool = False
    ) -> list[RuleMatch]:
        """Rules matching ``alert`` in order; first match wins unless ``continue``."""
        candidates = self.rules if linear else self.index.candidates(alert.labels)
        out: list[RuleMatch] = []
        for compiled in candidates:
            rule = compiled.rule
            if rule.status not in ("any", alert.status):
                continue
            if rule.sources is not None and alert.source not in rule.sources:
                continue
            if not matches_all(compiled.matchers, alert.labels):
                continue
            severity, reason = resolve_severity(rule.severity, alert, now)
            out.append(self._match(compiled, severity, reason))
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
                # Hidden entries: a mounted ConfigMap keeps a timestamped copy
                # of every file in a hidden folder beside the visible links.
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif not path.name.endswith(TEST_SUFFIXES):
            found.append(path)
    return found


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _rule_name(raw: Raw, loc: Sequence[int | str]) -> str | None:
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        rules = raw.get("rules")
        body = rules[index] if isinstance(rules, list) and index < len(rules) else None
        name = body.get("name") if isinstance(body, dict) else None
        return str(name) if name else f"#{index}"
    return None


def _validation_details(
    file: str,
    raw: Raw,
    exc: ValidationError,
    prefix: tuple[int | str, ...] = (),
    steps: StepRegistry = NO_STEPS,
) -> list[RuleErrorDetail]:
    details = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        rule = _rule_name(raw, loc)
        # Drop the discriminator tag pydantic inserts for step unions.
        # Drop the union tags pydantic inserts into locations: the step type
        # after a step's list index (or after ``verify``), the severity form.
        cleaned = [
            p
            for i, p in enumerate(loc)
            if not (i > 0 and isinstance(loc[i - 1], int) and p in steps.steps)
            and not (i > 0 and loc[i - 1] == "verify" and p in steps.verifies)
            and not (i > 0 and loc[i - 1] == "severity")
        ]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = (
                "unknown field; check the spelling against the rule reference "
                "(docs/rules.md)"
            )
        elif err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag", "?")
            expected = (err.get("ctx") or {}).get("expected_tags", "")
            message = f"unknown step type {tag!r}; expected one of {expected}"
        details.append(RuleErrorDetail(file, message, rule, _loc(cleaned)))
    return details


class _Loader:
    """Accumulates playbooks, rules and every error across files."""

    def __init__(self, steps: StepRegistry) -> None:
        self.steps = steps
        self.playbook_model = playbook_model(steps)
        self.errors: list[RuleErrorDetail] = []
        # As written (params unbound), then bound per rule in ``bind_playbooks``.
        self.playbooks: dict[str, Playbook] = {}
        self.bound: dict[str, Playbook] = {}
        self.playbook_files: dict[str, str] = {}
        self.compiled: list[CompiledRule] = []
        self.seen: dict[str, str] = {}
        self.playbook_errors: dict[str, range] = {}
        self.incidents: IncidentConfig | None = None
        self.incidents_file = ""

    def error(
        self, file: str, message: str, rule: str | None = None, field: str | None = None
    ) -> None:
        self.errors.append(RuleErrorDetail(file, message, rule, field))

    def read(self, path: Path) -> Raw | None:
        try:
            text = read_text(path)
        except OSError as exc:
            self.error(str(path), f"cannot read: {exc.strerror or exc}")
            return None
        except YAMLRefused as exc:
            self.error(str(path), str(exc))
            return None
        return self.parse(str(path), text)

    def parse(self, file: str, text: str) -> Raw | None:
        try:
            raw: object = load_yaml(text)
        except YAMLRefused as exc:
            self.error(file, str(exc))
            return None
        except yaml.YAMLError as exc:
            self.error(file, f"invalid YAML: {yaml_problem(exc)}")
            return None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            self.error(file, "top level must be a mapping with 'playbooks' and 'rules'")
            return None
        for key in sorted(set(raw) - {"playbooks", "rules", "incidents"}, key=str):
            self.error(
                file,
                "unknown top-level field; a rule file holds 'playbooks', 'rules' "
                "and 'incidents'",
                None,
                str(key),
            )
        return raw

    def load_file(self, path: Path, text: str | None = None) -> None:
        raw = self.read(path) if text is None else self.parse(str(path), text)
        if raw is None:
            return
        file = str(path)
        playbooks = raw.get("playbooks")
        rules = raw.get("rules")
        playbooks = {} if playbooks is None else playbooks
        rules = [] if rules is None else rules
        if not isinstance(playbooks, dict):
            self.error(file, "must be a mapping of name to playbook", None, "playbooks")
            playbooks = {}
        if not isinstance(rules, list):
            self.error(file, "must be a list of rules", None, "rules")
            rules = []
        if raw.get("incidents") is not None:
            self.add_incidents(file, raw)
        for name, body in playbooks.items():
            self.add_playbook(file, raw, str(name), body)
        for i, body in enumerate(rules):
            self.add_rule(file, raw, i, body)

    def add_incidents(self, file: str, raw: Raw) -> None:
        try:
            config = IncidentConfig.model_validate(raw["incidents"])
        except ValidationError as exc:
            self.errors.extend(
                _validation_details(file, raw, exc, prefix=("incidents",))
            )
            config = None
        if self.incidents_file:
            self.error(
                file,
                f"incidents is already set in {self.incidents_file}; keep one "
                "incidents section across the rule files",
                None,
                "incidents",
            )
            return
        self.incidents_file = file
        self.incidents = config

    def add_playbook(self, file: str, raw: Raw, name: str, body: object) -> None:
        if name in self.playbook_files:
            first = self.playbook_files[name]
            self.error(
                file,
                f"duplicate playbook (first in {first})",
                None,
                f"playbooks.{name}",
            )
            return
        self.playbook_files[name] = file
        start = len(self.errors)
        # Keep the name known so rules using it report only their own errors.
        self.playbooks[name] = self.playbook_model()
        try:
            playbook = self.playbook_model.model_validate(body or {})
        except ValidationError as exc:
            prefix = ("playbooks", name)
            self.errors.extend(
                _validation_details(file, raw, exc, prefix=prefix, steps=self.steps)
            )
        else:
            for field, message in [
                *playbook.choice_problems(),
                *playbook.param_problems(),
            ]:
                self.error(file, message, None, f"playbooks.{name}.{field}")
            if len(self.errors) == start:
                self.playbooks[name] = playbook
        if len(self.errors) > start:
            self.playbook_errors[name] = range(start, len(self.errors))

    def add_rule(self, file: str, raw: Raw, index: int, body: object) -> None:
        try:
            rule = Rule.model_validate(body)
        except ValidationError as exc:
            prefix = ("rules", index)
            self.errors.extend(_validation_details(file, raw, exc, prefix=prefix))
            return
        if rule.name in self.seen:
            self.error(
                file,
                f"duplicate rule name (first in {self.seen[rule.name]})",
                rule.name,
                f"rules[{index}].name",
            )
            return
        self.seen[rule.name] = file
        matchers = tuple(Matcher.parse(text) for text in rule.match)
        self.compiled.append(CompiledRule(len(self.compiled), rule, matchers, file))

    def check_references(self) -> None:
        # A broken playbook is reported under the rules that use it, too.
        for name, indices in self.playbook_errors.items():
            users = [c.name for c in self.compiled if c.rule.playbook == name]
            for i in indices:
                if users:
                    self.errors[i] = replace(self.errors[i], rule=", ".join(users))
        known = ", ".join(sorted(self.playbooks)) or "none defined"
        for item in self.compiled:
            if item.rule.playbook not in self.playbooks:
                self.error(
                    item.file,
                    f"unknown playbook {item.rule.playbook!r} (known: {known})",
                    item.name,
                    f"rules[{item.order}].playbook",
                )

    def bind_playbooks(self) -> None:
        """Bind each rule's playbook to its ``with:`` values under its name.

        A playbook no rule uses is kept under its own name, bound to its
        defaults when every parameter has one.
        """
        bindings: dict[str, _Bound] = {}
        for item in self.compiled:
            if item.rule.playbook in self.playbooks:
                self.bind_rule(item, bindings)
        self.bind_unused()
        # ``one_of`` values meet the labels a parameter brought into a template
        # only once it is bound.
        reported: set[tuple[str, str]] = set()
        for name, playbook in self.bound.items():
            source = bindings[name][0] if name in bindings else name
            if not self.playbooks[source].params:
                continue
            for where, message in playbook.choice_problems():
                if (where, message) not in reported:
                    reported.add((where, message))
                    users = [c.name for c in self.compiled if c.playbook == name]
                    self.error(
                        self.playbook_files[source],
                        message,
                        ", ".join(users) or None,
                        f"playbooks.{source}.{where}",
                    )

    def bind_unused(self) -> None:
        """Playbooks no rule binds: under their own name, on their defaults."""
        for name, playbook in self.playbooks.items():
            if name in self.bound or name in self.playbook_errors:
                continue
            values, problems = playbook.binding({})
            if problems:
                continue
            try:
                self.bound[name] = playbook.bind(values)
            except BindError as exc:
                file = self.playbook_files[name]
                self.error(
                    file,
                    f"its default cannot fill {exc}",
                    None,
                    f"playbooks.{name}.params.{exc.param}",
                )

    def bind_rule(self, item: CompiledRule, bindings: dict[str, _Bound]) -> None:
        """Bind one rule's playbook; ``bindings`` holds earlier rules' bindings."""
        playbook = item.rule.playbook
        if playbook in self.playbook_errors:
            return
        where = f"rules[{item.order}]"
        values, problems = self.playbooks[playbook].binding(item.rule.with_)
        for param, message in problems:
            self.error(item.file, message, item.name, f"{where}.with.{param}")
        if problems:
            return
        name = item.playbook
        described = item.rule.as_.description if item.rule.as_ else None
        earlier = bindings.get(name)
        conflict = self.binding_conflict(name, (playbook, values, described), earlier)
        if conflict is not None:
            why, field = conflict
        elif earlier is not None:
            return
        else:
            try:
                bound = self.playbooks[playbook].bind(values)
            except BindError as exc:
                why = f"cannot fill playbooks.{playbook}.{exc}"
                field = f"with.{exc.param}"
            else:
                if described is not None:
                    bound = bound.model_copy(update={"description": described})
                self.bound[name] = bound
                bindings[name] = (playbook, values, described, item.name)
                return
        self.error(item.file, why, item.name, f"{where}.{field}")

    def binding_conflict(
        self,
        name: str,
        binding: tuple[str, dict[str, str], str | None],
        earlier: _Bound | None,
    ) -> tuple[str, str] | None:
        """``(message, field)`` when ``name`` cannot be this binding, else None."""
        if name != binding[0] and name in self.playbooks:
            return f"{name!r} is already a playbook's name; pick another", "as"
        if earlier is None:
            return None
        if earlier[:2] != binding[:2]:
            return (
                f"rule {earlier[3]} runs {name!r} with other values; name this "
                "binding with `as:`"
            ), "with"
        if earlier[2] != binding[2]:
            return (
                f"rule {earlier[3]} describes {name!r} otherwise; give both rules "
                "the same `as:` (a YAML anchor repeats it) or another name"
            ), "as.description"
        return None


def load_rulebook(
    paths: Iterable[Path | str],
    texts: Mapping[str, str] | None = None,
    *,
    steps: StepRegistry,
) -> Rulebook:
    """Load and validate every rule file under ``paths``.

    ``steps`` holds the step types the rules may use (the composition root
    builds it: ``receiver.steps.catalog``); the rulebook keeps it, so a reload
    validates against the same types.

    ``texts`` gives files by name and content instead of from disk (the
    console's candidate rules): a name that is also under ``paths`` replaces
    that file, and the rest are added. Errors name them as given.

    Raises:
        RuleError: listing every problem found, each with file, rule and field.
    """
    paths = list(paths)
    texts = dict(texts or {})
    files = [f for f in rule_files(paths) if str(f) not in texts] + [
        Path(name) for name in texts
    ]
    if not files:
        where = ", ".join(map(str, paths)) or "<none>"
        raise RuleError([RuleErrorDetail(where, "no rule files (*.yaml, *.yml) found")])
    loader = _Loader(steps)
    for path in files:
        loader.load_file(path, texts.get(str(path)))
    loader.check_references()
    loader.bind_playbooks()
    if loader.errors:
        raise RuleError(loader.errors)
    return Rulebook(
        tuple(loader.compiled),
        loader.bound,
        tuple(str(f) for f in files),
        loader.incidents,
        steps,
    )
