r"""Alertmanager label matchers, parsed and evaluated exactly as Alertmanager does.

Mirrors ``pkg/labels`` of Alertmanager 0.25: ``name op value`` with ``=``, ``!=``,
``=~``, ``!~``; the value optionally double-quoted with ``\\"``, ``\\\\`` and ``\\n``
escapes (other backslashes stay literal); regexes are RE2 (Go's engine), fully
anchored; a missing label matches as the empty string. ``tests/test_matchers.py``
checks these semantics against ``amtool`` itself.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

_MATCHER_RE = re.compile(
    r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(=~|=|!=|!~)\s*(.*?)\s*$", re.DOTALL
)
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class MatcherError(ValueError):
    """A matcher string does not parse or its regex does not compile."""


class MatchType(enum.StrEnum):
    """The four Alertmanager matcher operators."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True)
class Matcher:
    """One compiled matcher; ``matches`` is the hot path."""

    name: str
    type: MatchType
    value: str
    _regex: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Parse ``name op value`` the way Alertmanager's ParseMatcher does."""
        found = _MATCHER_RE.match(text)
        if found is None:
            raise MatcherError(
                f'bad matcher format: {text!r}; expected name="value" with one of '
                "=, !=, =~, !~ and a label name like [a-zA-Z_][a-zA-Z0-9_]*"
            )
        name, op, raw = found.groups()
        return cls.new(name, MatchType(op), _unquote(raw))

    @classmethod
    def new(cls, name: str, type_: MatchType, value: str) -> Matcher:
        """Build a matcher, compiling a regex fully anchored as Alertmanager does."""
        regex = None
        if type_ in (MatchType.REGEX, MatchType.NOT_REGEX):
            try:
                regex = re2.compile(f"^(?:{value})$", _RE2_OPTIONS)
            except re2.error as exc:
                detail = exc.args[0] if exc.args else exc
                if isinstance(detail, bytes):
                    detail = detail.decode(errors="replace")
                raise MatcherError(f"invalid regex {value!r}: {detail}") from exc
        return cls(name, type_, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the label set satisfies this matcher (missing label is "")."""
        actual = labels.get(self.name, "")
        if self.type is MatchType.EQUAL:
            return actual == self.value
        if self.type is MatchType.NOT_EQUAL:
            return actual != self.value
        hit = self._regex.search(actual) is not None
        return hit if self.type is MatchType.REGEX else not hit

    def __str__(self) -> str:
        escaped = (
            self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        )
        return f'{self.name}{self.type.value}"{escaped}"'


def _unquote(raw: str) -> str:  # noqa: C901 (mirrors Alertmanager's loop)
    """Unescape a matcher value exactly as Alertmanager 0.25 does."""
    original = raw
    expect_trailing_quote = False
    if raw.startswith('"'):
        raw = raw[1:]
        expect_trailing_quote = True
    out: list[str] = []
    escaped = False
    last = len(raw) - 1
    for i, ch in enumerate(raw):
        if escaped:
            escaped = False
            if ch == "n":
                out.append("\n")
            elif ch in ('"', "\\"):
                out.append(ch)
            else:
                out.append("\\" + ch)
            continue
        if ch == "\\":
            if i < last:
                escaped = True
                continue
            out.append("\\")
        elif ch == '"':
            if not expect_trailing_quote or i < last:
                raise MatcherError(
                    f"matcher value contains unescaped double quote: {original}; "
                    'escape it as \\"'
                )
            expect_trailing_quote = False
        else:
            out.append(ch)
    if expect_trailing_quote:
        raise MatcherError(
            f"matcher value contains unescaped double quote: {original}; "
            "close the quoted value"
        )
    return "".join(out)


def matches_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """AND of all matchers, as Alertmanager's route matching does."""
    return all(m.matches(labels) for m in matchers)
