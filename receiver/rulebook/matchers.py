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
from typing import Protocol

import re2

from receiver.kept import Kept

# Go's ``\s`` is ASCII ``[\t\n\f\r ]``; Python's would also take \v, \xa0, \u2028...
_MATCHER_RE = re.compile(
    r"^[\t\n\f\r ]*([a-zA-Z_:][a-zA-Z0-9_:]*)[\t\n\f\r ]*(=~|=|!=|!~)"
    r"[\t\n\f\r ]*(.*?)[\t\n\f\r ]*$",
    re.DOTALL,
)
# What Go's strings.TrimSpace strips (unicode.IsSpace); str.strip() would also
# strip \x1c-\x1f, which Go keeps.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Regex results kept per matcher (by label value) before it starts over.
SEEN_VALUES = 1024
RE2_OPTIONS = re2.Options()
RE2_OPTIONS.log_errors = False


class MatcherError(ValueError):
    """A matcher string does not parse or its regex does not compile."""


class MatchType(enum.StrEnum):
    """The four Alertmanager matcher operators."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


class _Regex(Protocol):
    """What a compiled RE2 pattern is used for here (google-re2 has no types)."""

    def search(self, text: str, /) -> object | None:
        """The first match in ``text``, or None."""
        ...


@dataclass(frozen=True)
class Matcher:
    """One compiled matcher; ``matches`` is the hot path."""

    name: str
    type: MatchType
    value: str
    _regex: _Regex | None = field(default=None, compare=False, repr=False)
    # Regex results by label value: a storm repeats its values (alertname,
    # namespace), and RE2 through its Python binding costs tens of
    # microseconds a search for patterns such as ``(?i).*\bsplunk\b.*``.
    _seen: Kept[str, bool] = field(
        default_factory=lambda: Kept(SEEN_VALUES), compare=False, repr=False, hash=False
    )

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Parse one item of a ``matchers:`` list the way Alertmanager's config does.

        Alertmanager runs each item through ParseMatchers (optional ``{...}``,
        comma-separated, surrounding whitespace trimmed); an item that holds
        more or less than one matcher is refused rather than split silently.
        """
        tokens = _split_matchers(text)
        if len(tokens) != 1:
            raise MatcherError(
                f"{text!r} holds {len(tokens)} matchers; put exactly one matcher in "
                'each list item (quote values that contain commas: name="a,b")'
            )
        return cls._parse_one(tokens[0])

    @classmethod
    def _parse_one(cls, text: str) -> Matcher:
        """Parse ``name op value`` the way Alertmanager's ParseMatcher does."""
        found = _MATCHER_RE.match(text)
        if found is None:
            raise MatcherError(
                f'bad matcher format: {text!r}; expected name="value" with one of '
                "=, !=, =~, !~ and a label name like [a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        name, op, raw = found.groups()
        return cls.new(name, MatchType(op), _unquote(raw))

    @classmethod
    def new(cls, name: str, type_: MatchType, value: str) -> Matcher:
        """Build a matcher, compiling a regex fully anchored as Alertmanager does."""
        regex = None
        if type_ in (MatchType.REGEX, MatchType.NOT_REGEX):
            if _has_any_byte_escape(value):
                raise MatcherError(
                    f"invalid regex {value!r}: invalid escape sequence \\C "
                    "(Go's regexp, which Alertmanager uses, has no any-byte escape)"
                )
            try:
                regex = re2.compile(f"^(?:{value})$", RE2_OPTIONS)
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
        seen = self._seen
        hit = seen.get(actual)
        if hit is None:
            hit = seen.keep(actual, self._search(actual))
        return hit if self.type is MatchType.REGEX else not hit

    def _search(self, actual: str) -> bool:
        regex = self._regex
        assert regex is not None  # noqa: S101 (``new`` compiles one for =~ and !~)
        try:
            return regex.search(actual) is not None
        except UnicodeEncodeError:
            # A lone surrogate (JSON allows "\ud800") cannot reach RE2 as UTF-8.
            # Go's JSON decoder, and so Alertmanager, reads it as U+FFFD.
            return regex.search(as_go_reads_it(actual)) is not None

    def __str__(self) -> str:
        escaped = (
            self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        )
        return f'{self.name}{self.type.value}"{escaped}"'


def as_go_reads_it(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD, as Go decodes JSON."""
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)


def _split_matchers(text: str) -> list[str]:
    """Tokens of Alertmanager 0.25's ParseMatchers, before each is parsed."""
    text = text.removeprefix("{").removesuffix("}")
    tokens: list[str] = []
    token: list[str] = []
    inside_quotes = False
    escaped = False
    for ch in text:
        if ch == ",":
            if not inside_quotes:
                tokens.append("".join(token))
                token = []
                continue
        elif ch == '"':
            if not escaped:
                inside_quotes = not inside_quotes
            else:
                escaped = False
        elif ch == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(ch)
    last = "".join(token).strip(_GO_SPACE)
    if last:
        tokens.append(last)
    return tokens


def _has_any_byte_escape(pattern: str) -> bool:
    r"""Whether ``pattern`` uses ``\C``, which RE2 accepts and Go rejects."""
    i = 0
    while i < len(pattern):
        if pattern[i] != "\\":
            i += 1
            continue
        nxt = pattern[i + 1 : i + 2]
        if nxt == "C":
            return True
        if nxt == "Q":  # \Q...\E is literal text
            end = pattern.find("\\E", i + 2)
            if end == -1:
                return False
            i = end + 2
            continue
        i += 2
    return False


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
    for m in matchers:  # noqa: SIM110 (all() over a generator costs more)
        if not m.matches(labels):
            return False
    return True
