"""The PromQL grammar: values go inside quoted strings, regex-escaped after ``=~``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from receiver.rulebook.templates.slots import (
    TemplateError,
    _Hole,
)

# ----------------------------------------------------------------- PromQL


_QUOTE_META = frozenset("\\.+*?()|[]{}^$")


def quote_meta(value: str) -> str:
    """Escape every RE2 metacharacter, as Go's ``regexp.QuoteMeta`` does."""
    return "".join(f"\\{ch}" if ch in _QUOTE_META else ch for ch in value)


def promql_string(value: str, quote_char: str = '"') -> str:
    """``value`` escaped for a PromQL string between ``quote_char`` quotes."""
    out = []
    for ch in value:
        if ch in ("\\", quote_char):
            out.append(f"\\{ch}")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _comment_end(text: str, i: int, starts: Mapping[int, re.Match[str]]) -> int:
    """Where a ``#`` comment starting at ``i`` ends; refuse placeholders in it."""
    end = text.find("\n", i)
    end = len(text) if end < 0 else end
    inside = [m for start, m in starts.items() if i <= start < end]
    if inside:
        raise TemplateError(
            f"{inside[0].group(0)} is in a comment; in PromQL an alert value "
            'may only fill a label value, e.g. {job="{labels.job}"}'
        )
    return end


def _escape_end(i: int, starts: Mapping[int, re.Match[str]]) -> int:
    """Where a backslash escape at ``i`` ends; refuse a placeholder it escapes."""
    escaped = starts.get(i + 1)
    if escaped is not None:
        raise TemplateError(
            f"{escaped.group(0)} follows a backslash, which would escape its first "
            "character; the value is escaped for its string already: write "
            '{job="{labels.job}"}'
        )
    return i + 2


def _promql_holes(text: str, found: list[re.Match[str]]) -> list[_Hole]:
    """Whether each placeholder sits in a string or a regex; refuse elsewhere."""
    holes: list[_Hole] = []
    starts = {m.start(): m for m in found}
    quote_char = ""
    regex = False
    i = 0
    while i < len(text):
        match = starts.get(i)
        if match is not None:
            if not quote_char:
                raise TemplateError(
                    f"{match.group(0)} is outside a quoted string; in PromQL an alert "
                    'value may only fill a label value, e.g. {job="{labels.job}"}'
                )
            if quote_char == "`":
                raise TemplateError(
                    f"{match.group(0)} is inside a `raw` string, which cannot escape "
                    "a value; use double quotes"
                )
            holes.append(
                {
                    (True, '"'): _Hole.PROMQL_REGEX,
                    (False, '"'): _Hole.PROMQL_STRING,
                    (True, "'"): _Hole.PROMQL_REGEX_SINGLE,
                    (False, "'"): _Hole.PROMQL_STRING_SINGLE,
                }[regex, quote_char]
            )
            i = match.end()
            continue
        ch = text[i]
        if quote_char:
            if ch == "\\" and quote_char != "`":
                i = _escape_end(i, starts)
                continue
            if ch == quote_char:
                quote_char = ""
        elif ch in "\"'`":
            quote_char = ch
            before = text[:i].rstrip()
            regex = before.endswith(("=~", "!~"))
        elif ch == "#":
            i = _comment_end(text, i, starts)
            continue
        i += 1
    return holes


def _promql_insert(value: str, hole: _Hole) -> str:
    if hole in (_Hole.PROMQL_REGEX, _Hole.PROMQL_REGEX_SINGLE):
        value = quote_meta(value)
    single = hole in (_Hole.PROMQL_STRING_SINGLE, _Hole.PROMQL_REGEX_SINGLE)
    return promql_string(value, "'" if single else '"')


def _promql_refuse(_value: str, _hole: _Hole) -> str | None:
    return None  # every value is escaped into its string


def _promql_whole(_text: str) -> str | None:
    return None
