"""Typed template slots: alert values are substituted only where a grammar says so.

A template is a string with placeholders ``{labels.NAME}``, ``{annotations.NAME}``,
``{alert.fingerprint}``, ``{alert.status}``, ``{alert.source}`` or, in a playbook
that declares ``params``, ``{params.NAME}``; every other brace is literal, so PromQL
selectors need no escaping. A label or annotation placeholder may name a default
for an alert that lacks the value or has it empty: ``{labels.deployment|sark}``.
Only step fields that declare a ``Slot`` take templates, and the slot's grammar is
checked twice:

- when the rules load (``check_slot_template``): every placeholder must sit where
  the grammar can fill it (a PromQL placeholder inside a quoted string, a URL
  placeholder in the host, path or query), and a template without placeholders
  must already be valid, and a default must fit where it stands;
- when a playbook is bound to a rule's parameters (``bind``): each literal
  parameter value must fit where it stands, and is escaped for it as an alert
  value would be;
- when a step is rendered for an alert (``render``): each substituted value must
  fit its slot, or ``SlotError`` says which label did not and why. The planner
  turns that into a skipped step; a value never changes what a step does.

Slot grammars (``GRAMMARS`` holds their descriptions for the docs):

- ``k8s_name``: DNS-1123 subdomain (lowercase alphanumerics, ``-`` and ``.``,
  at most 253 characters), full match;
- ``namespace``: DNS-1123 label (lowercase alphanumerics and ``-``, at most 63);
- ``label_selector``: each value is a Kubernetes label value;
- ``promql``: a value inside ``"..."`` or ``'...'`` is escaped for the string;
  after ``=~`` or ``!~`` it is regex-escaped first, so it matches only itself;
- ``redis_key`` / ``redis_key_part``: no glob characters (``*?[]`` and
  backslash), no ``:`` (it would change the key's structure), no whitespace or
  control characters, at most 128 characters; a ``redis_key_part`` field is one
  part as a whole;
- ``url``: a host value is a DNS name (the allowlist is checked when the step
  runs); a path value is one path segment (no ``/``, ``..``, ``?``, ``#``,
  whitespace or control characters) and is percent-encoded; a query value is
  percent-encoded.

A playbook may narrow a label further with ``labels: {NAME: {one_of: [...]}}``.
Nothing rendered here ever reaches a shell.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from receiver.errors import RenderError, SlotError
from receiver.model import Alert

# Groups: scope, name, default (``None`` when the placeholder names none).
PLACEHOLDER = re.compile(
    r"\{(labels|annotations|alert|params)\.([^{}\s|]*)(?:\|([^{}\s]*))?\}"
)
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ALERT_FIELDS = ("fingerprint", "status", "source")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
)
# ASCII digits only: ``\d`` would take any Unicode digit (Arabic-Indic five, say).
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_MAX_DURATION_DIGITS = 12
MAX_VALUE_CHARS = 1024
REDIS_KEY_PART_CHARS = 128
_REDIS_GLOB = "*?[]\\"

__all__ = [
    "GRAMMARS",
    "PLACEHOLDER",
    "BindError",
    "RenderError",
    "Slot",
    "SlotError",
    "SlotMarker",
    "TemplateError",
    "bind",
    "check_slot_template",
    "check_template",
    "format_duration",
    "parse_duration",
    "placeholders",
    "render",
]


class TemplateError(ValueError):
    """A template is not valid for its field (found when the rules load)."""


class BindError(TemplateError):
    """A rule's parameter value cannot fill a field of its playbook."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param

    def at(self, field: str) -> BindError:
        """The same error naming the field it was to fill."""
        return BindError(self.param, f"{field}: {self}")


class Slot(enum.StrEnum):
    """Where a rendered value goes, which decides its grammar."""

    K8S_NAME = "k8s_name"
    NAMESPACE = "namespace"
    LABEL_SELECTOR = "label_selector"
    PROMQL = "promql"
    REDIS_KEY = "redis_key"
    REDIS_KEY_PART = "redis_key_part"
    URL = "url"


class _Hole(enum.StrEnum):
    """Where inside a field a placeholder sits (for grammars with several)."""

    WHOLE = "whole"
    PROMQL_STRING = "promql_string"
    PROMQL_REGEX = "promql_regex"
    PROMQL_STRING_SINGLE = "promql_string_single"  # between '...'
    PROMQL_REGEX_SINGLE = "promql_regex_single"
    URL_HOST = "url_host"
    URL_PATH = "url_path"
    URL_QUERY = "url_query"


@dataclass(frozen=True)
class Grammar:
    """A slot's grammar: what it takes, and how values are checked and inserted.

    ``refuse(value, hole)`` says why a value cannot fill a hole (or ``None``);
    ``insert`` escapes an accepted value; ``whole`` checks the rendered field;
    ``holes`` places each placeholder of a template (load time).
    """

    slot: Slot
    takes: str
    doc: str
    refuse: Callable[[str, _Hole], str | None]
    insert: Callable[[str, _Hole], str]
    whole: Callable[[str], str | None]
    holes: Callable[[str, list[re.Match[str]]], list[_Hole]]
    # What each kind of hole takes, when it differs from ``takes``.
    hole_takes: Mapping[_Hole, str] | None = None

    def noun(self, hole: _Hole) -> str:
        """What a hole takes, for messages."""
        return (self.hole_takes or {}).get(hole, self.takes)


@dataclass(frozen=True)
class SlotMarker:
    """``Annotated`` metadata naming a step field's slot.

    The field then takes templates, and pydantic checks them against the slot's
    grammar when the rules load (``check_slot_template``).
    """

    slot: Slot

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate the field as usual, then check its template for the slot."""
        slot = self.slot
        return core_schema.no_info_after_validator_function(
            lambda text: check_slot_template(text, slot), handler(source)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Name the slot and its grammar in the rule schema (``x-template-slot``)."""
        found = handler(schema)
        found["x-template-slot"] = self.slot.value
        found["x-template-grammar"] = GRAMMARS[self.slot].doc
        return found


# ----------------------------------------------------------------- value checks


def _bad_char(value: str, allowed: Callable[[str], bool]) -> str | None:
    for ch in value:
        if not allowed(ch):
            return f"it contains {_describe_char(ch)}"
    return None


def _describe_char(ch: str) -> str:
    if ch.isspace():
        return f"whitespace ({ch!r})"
    if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
        return f"a control or invalid character ({ch!r})"
    return repr(ch)


def _control(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")


def _common(value: str) -> str | None:
    """Checks every slot makes: length, and text that can be encoded at all."""
    if len(value) > MAX_VALUE_CHARS:
        return f"it is longer than {MAX_VALUE_CHARS} characters"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        return "it is not valid Unicode text (it holds a lone surrogate)"
    return None


def _whole_only(_text: str, found: list[re.Match[str]]) -> list[_Hole]:
    return [_Hole.WHOLE] * len(found)


def _no_escape(value: str, _hole: _Hole) -> str:
    return value


def _k8s_chars(allowed: str) -> Callable[[str, _Hole], str | None]:
    def refuse(value: str, _hole: _Hole) -> str | None:
        return _bad_char(value, lambda ch: ch in allowed)

    return refuse


_K8S_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-."
_K8S_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


def _k8s_name_whole(text: str) -> str | None:
    if len(text) > 253 or not DNS1123_SUBDOMAIN.fullmatch(text):
        return (
            f"{text!r} is not a DNS-1123 subdomain (lowercase alphanumerics, '-' "
            "and '.', starting and ending alphanumeric, at most 253 characters)"
        )
    return None


def _namespace_whole(text: str) -> str | None:
    if len(text) > 63 or not DNS1123_LABEL.fullmatch(text):
        return (
            f"{text!r} is not a DNS-1123 label (lowercase alphanumerics and '-', "
            "starting and ending alphanumeric, at most 63 characters)"
        )
    return None


def _label_value(value: str, _hole: _Hole) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        found = _bad_char(
            value, lambda ch: ch.isascii() and (ch.isalnum() or ch in "-_.")
        )
        return found or (
            "a label value starts and ends alphanumeric and has at most 63 characters"
        )
    return None


def _redis_part(value: str, _hole: _Hole) -> str | None:
    for ch in value:
        if ch in _REDIS_GLOB:
            return (
                f"it contains the glob character {ch!r}, which could widen a key "
                "or a pattern"
            )
        if ch == ":":
            return "it contains ':', which would change the key's structure"
        if _control(ch):
            return f"it contains {_describe_char(ch)}"
    if len(value) > REDIS_KEY_PART_CHARS:
        return f"it is longer than {REDIS_KEY_PART_CHARS} characters"
    return None


def _redis_key_whole(text: str) -> str | None:
    if len(text.encode("utf-8", "surrogatepass")) > 4096:
        return "the key would be longer than 4096 bytes"
    return None


def _redis_part_whole(text: str) -> str | None:
    if not text:
        return "it is empty"
    return _redis_part(text, _Hole.WHOLE)


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
                i += 2
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


# ----------------------------------------------------------------- URLs


def _netloc_parts(netloc: str) -> tuple[str, str, str]:
    """``user:pass@host:port`` as (user info, host, port)."""
    userinfo, _, hostport = netloc.rpartition("@")
    if hostport.startswith("["):
        host, _, port = hostport.partition("]")
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    else:
        host, port = hostport, ""
    return userinfo, host, port


def _url_holes(text: str, found: list[re.Match[str]]) -> list[_Hole]:
    """Place each placeholder in the host, path or query of a URL; refuse others."""
    if not text.lower().startswith(("http://", "https://")):
        raise TemplateError(
            "a URL must start with http:// or https:// (an alert value "
            "may not choose the scheme)"
        )
    sample = text
    sentinels = []
    for i, match in reversed(list(enumerate(found))):
        sentinel = f"zslot{i}z"
        sentinels.append(sentinel)
        sample = sample[: match.start()] + sentinel + sample[match.end() :]
    sentinels.reverse()
    try:
        parts = urlsplit(sample)
    except ValueError as exc:
        raise TemplateError(f"not a valid URL: {exc}") from exc
    userinfo, host, port = _netloc_parts(parts.netloc)
    holes = []
    for sentinel, match in zip(sentinels, found, strict=True):
        if sentinel in host:
            holes.append(_Hole.URL_HOST)
        elif sentinel in userinfo or sentinel in port:
            raise TemplateError(
                f"{match.group(0)} is in the user info or port of the URL; an alert "
                "value may fill only its host, path or query"
            )
        elif sentinel in parts.path:
            holes.append(_Hole.URL_PATH)
        elif sentinel in parts.query:
            holes.append(_Hole.URL_QUERY)
        else:
            raise TemplateError(
                f"{match.group(0)} is in the URL's fragment, which is never sent; "
                "an alert value may fill only its host, path or query"
            )
    return holes


def _url_refuse(value: str, hole: _Hole) -> str | None:
    if hole is _Hole.URL_HOST:
        return _bad_char(
            value, lambda ch: ch.isascii() and (ch.isalnum() or ch in "-.")
        )
    if hole is _Hole.URL_PATH:
        for ch in value:
            if ch in "/\\?#":
                return f"it contains {ch!r}"
            if _control(ch):
                return f"it contains {_describe_char(ch)}"
        if ".." in value:
            return "it contains '..'"
        if value == ".":
            return "'.' would name the current path segment"
    return None  # query values are percent-encoded whole


def _url_insert(value: str, hole: _Hole) -> str:
    if hole is _Hole.URL_HOST:
        return value
    return quote(value, safe="")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and bool(_HOSTNAME.fullmatch(host))
    return True


def _url_whole(text: str) -> str | None:
    bad = _bad_char(text, lambda ch: not _control(ch))
    if bad:
        return f"the URL would contain {bad.removeprefix('it contains ')}"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        return f"{text!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{text!r} is not an http or https URL"
    if not _valid_host(parts.hostname or ""):
        return f"{parts.hostname or ''!r} is not a valid host name"
    return None


# ----------------------------------------------------------------- the table


GRAMMARS: dict[Slot, Grammar] = {
    Slot.K8S_NAME: Grammar(
        Slot.K8S_NAME,
        "a Kubernetes name",
        "DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 "
        "characters (the whole field, full match)",
        _k8s_chars(_K8S_NAME_CHARS),
        _no_escape,
        _k8s_name_whole,
        _whole_only,
    ),
    Slot.NAMESPACE: Grammar(
        Slot.NAMESPACE,
        "a Kubernetes namespace",
        "DNS-1123 label: lowercase alphanumerics and `-`, at most 63 characters "
        "(the whole field, full match)",
        _k8s_chars(_K8S_LABEL_CHARS),
        _no_escape,
        _namespace_whole,
        _whole_only,
    ),
    Slot.LABEL_SELECTOR: Grammar(
        Slot.LABEL_SELECTOR,
        "a Kubernetes label value",
        "each value is a Kubernetes label value: alphanumerics, `-`, `_`, `.`, "
        "at most 63 characters",
        _label_value,
        _no_escape,
        lambda _text: None,
        _whole_only,
    ),
    Slot.PROMQL: Grammar(
        Slot.PROMQL,
        "a PromQL string",
        "placeholders only inside quoted strings; a value is escaped for the string, "
        "and after `=~` or `!~` regex-escaped first (it matches only itself)",
        _promql_refuse,
        _promql_insert,
        _promql_whole,
        _promql_holes,
        {
            _Hole.PROMQL_REGEX: "a PromQL regex literal",
            _Hole.PROMQL_REGEX_SINGLE: "a PromQL regex literal",
        },
    ),
    Slot.REDIS_KEY: Grammar(
        Slot.REDIS_KEY,
        "a Redis key part",
        "each value is a Redis key part: no `*?[]\\`, no `:`, no whitespace or "
        "control characters, at most 128 characters",
        _redis_part,
        _no_escape,
        _redis_key_whole,
        _whole_only,
    ),
    Slot.REDIS_KEY_PART: Grammar(
        Slot.REDIS_KEY_PART,
        "a Redis key part",
        "the whole field is one Redis key part: no `*?[]\\`, no `:`, no whitespace "
        "or control characters, at most 128 characters",
        _redis_part,
        _no_escape,
        _redis_part_whole,
        _whole_only,
    ),
    Slot.URL: Grammar(
        Slot.URL,
        "a URL value",
        "an http(s) URL; placeholders only in the host (a DNS name; the allowlist "
        "decides), a path segment (no `/`, `..`, `?`, `#`, whitespace or control "
        "characters; percent-encoded) or the query (percent-encoded)",
        _url_refuse,
        _url_insert,
        _url_whole,
        _url_holes,
        {
            _Hole.URL_HOST: "a host name",
            _Hole.URL_PATH: "a URL path segment",
            _Hole.URL_QUERY: "a URL query value",
        },
    ),
}


# ----------------------------------------------------------------- load time


def check_template(text: str) -> str:
    """Validate placeholder names and defaults at load time; return ``text``."""
    for found in PLACEHOLDER.finditer(text):
        scope, name, default = found.groups()
        if scope == "alert":
            if name not in _ALERT_FIELDS:
                raise TemplateError(
                    f"unknown placeholder {found.group(0)!r}; "
                    f"alert fields are {', '.join(_ALERT_FIELDS)}"
                )
        elif not _NAME.fullmatch(name):
            raise TemplateError(
                f"bad placeholder {found.group(0)!r}; use {{{scope}.NAME}} with a "
                "name like [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if default is None:
            continue
        if scope not in ("labels", "annotations"):
            raise TemplateError(
                f"{found.group(0)!r}: only a label or annotation placeholder "
                "takes a default (a parameter's default goes in params)"
            )
        if not default:
            raise TemplateError(
                f"{found.group(0)!r} names an empty default; drop the '|' to skip "
                "the step when the value is missing"
            )
    return text


@functools.lru_cache(maxsize=4096)
def _placed(text: str, slot: Slot) -> tuple[tuple[re.Match[str], _Hole], ...]:
    found = list(PLACEHOLDER.finditer(text))
    holes = GRAMMARS[slot].holes(text, found)
    return tuple(zip(found, holes, strict=True))


def check_slot_template(text: str, slot: Slot) -> str:
    """Check a template for its slot when the rules load; return it unchanged.

    Placeholders must be known and sit where the grammar can fill them; the
    literal text must be valid for the slot (filled with a harmless sample value
    where there are placeholders).

    Raises:
        TemplateError: saying what is wrong and how to write it.
    """
    check_template(text)
    grammar = GRAMMARS[slot]
    placed = _placed(text, slot)
    for match, hole in placed:
        default = match.group(3)
        if default is None:
            continue
        why = _common(default) or grammar.refuse(default, hole)
        if why is not None:
            raise TemplateError(
                f"the default {default!r} of {match.group(0)} is not "
                f"{grammar.noun(hole)}: {why}"
            )
    sample = PLACEHOLDER.sub("a", text)
    why = grammar.whole(sample)
    if why is not None:
        if placed:
            raise TemplateError(
                f"this template can never be {grammar.takes} (with 'a' for each "
                f"placeholder: {why})"
            )
        raise TemplateError(f"not {grammar.takes}: {why}")
    return text


def check_choice(value: str, text: str, slot: Slot, label: str) -> str | None:
    """Why a ``one_of`` value of ``label`` cannot fill its placeholders in ``text``."""
    grammar = GRAMMARS[slot]
    for match, hole in _placed(text, slot):
        if match.group(1) == "labels" and match.group(2) == label:
            why = _common(value) or grammar.refuse(value, hole)
            if why is not None:
                return f"{value!r} is not {grammar.noun(hole)}: {why}"
    return None


# A parameter's type: the grammar a literal value (or a placeholder's default)
# must meet wherever it is used, checked where a rule binds it.
PARAM_TYPES: dict[str, Callable[[str], str | None]] = {
    "k8s_name": _k8s_name_whole,
    "namespace": _namespace_whole,
    "label_value": lambda value: _label_value(value, _Hole.WHOLE),
    "redis_key_part": _redis_part_whole,
    "text": lambda _value: None,
}


def check_param_value(value: str, kind: str) -> str | None:
    """Why ``value`` is not a valid value of a parameter of type ``kind``.

    A placeholder value is checked by its default (if any); the alert value it
    stands for is checked by each slot when the step is rendered.
    """
    check = PARAM_TYPES[kind]
    found = PLACEHOLDER.fullmatch(value)
    if found is not None:
        if found.group(1) == "params":
            return "a parameter value cannot name another parameter"
        try:
            check_template(value)
        except TemplateError as exc:
            return str(exc)
        default = found.group(3)
        why = None if default is None else _common(default) or check(default)
        return None if why is None else f"its default: {why}"
    if PLACEHOLDER.search(value):
        return (
            "a value is either a literal or one whole placeholder such as "
            "{labels.namespace}"
        )
    return _common(value) or check(value)


def is_template_value(value: str) -> bool:
    """Whether a parameter value is one whole placeholder (else a literal)."""
    found = PLACEHOLDER.fullmatch(value)
    return found is not None and found.group(1) != "params"


def bind(text: str, slot: Slot, values: Mapping[str, str]) -> str:
    """Replace each ``{params.NAME}`` in ``text`` with its bound value.

    A value that is one placeholder (``{labels.namespace}``, with or without a
    default) is inserted as it stands and filled per alert later. A literal
    value must fit where it stands, like an alert value, and is escaped for it
    (quoted in PromQL, percent-encoded in a URL path). The result is checked
    for the slot again.

    Raises:
        TemplateError: a value does not fit its place, or a parameter is unbound.
    """
    grammar = GRAMMARS[slot]
    out = []
    pos = 0
    for match, hole in _placed(text, slot):
        if match.group(1) != "params":
            continue
        name = match.group(2)
        if name not in values:
            raise BindError(name, f"{match.group(0)} names no declared parameter")
        value = values[name]
        if not is_template_value(value):
            if PLACEHOLDER.search(value):
                raise BindError(
                    name,
                    "a value is either a literal or one whole placeholder such as "
                    "{labels.namespace}",
                )
            why = _common(value) or grammar.refuse(value, hole)
            if why is not None:
                raise BindError(name, f"{value!r} is not {grammar.noun(hole)}: {why}")
            value = grammar.insert(value, hole)
        out.append(text[pos : match.start()])
        out.append(value)
        pos = match.end()
    out.append(text[pos:])
    bound = "".join(out)
    try:
        return check_slot_template(bound, slot)
    except TemplateError as exc:
        names = params_used(text)
        raise BindError(names[0] if names else "", str(exc)) from exc


def params_used(text: str) -> list[str]:
    """The parameter names a template uses, in order."""
    return [m.group(2) for m in PLACEHOLDER.finditer(text) if m.group(1) == "params"]


def placeholders(text: str) -> list[str]:
    """The placeholders a template uses, in order."""
    return [m.group(0) for m in PLACEHOLDER.finditer(text)]


# ----------------------------------------------------------------- render time


_SOURCE = {"labels": "label", "annotations": "annotation", "alert": "alert field"}


def _lookup(alert: Alert, scope: str, name: str, default: str | None) -> str:
    if scope == "alert":
        return str(getattr(alert, name))
    if scope == "params":
        # ``bind`` replaced every parameter when the rules loaded.
        raise RenderError(f"parameter {{params.{name}}} was never bound")
    source: Mapping[str, str] = alert.labels if scope == "labels" else alert.annotations
    value = source.get(name)
    if value is None or value == "":
        if default is not None:
            return default
        raise RenderError(f"alert has no {scope[:-1]} {name!r} for {{{scope}.{name}}}")
    return value


def render(
    text: str,
    alert: Alert,
    slot: Slot,
    one_of: Mapping[str, Iterable[str]] | None = None,
) -> str:
    """Substitute alert fields into ``text``, each checked against its slot.

    ``one_of`` narrows labels to listed values (a playbook's ``labels``).

    Raises:
        RenderError: a placeholder names a field the alert does not have.
        SlotError: a value is outside the slot's grammar (or its ``one_of``).
    """
    grammar = GRAMMARS[slot]
    out = []
    pos = 0
    used: list[tuple[str, str, str]] = []
    for match, hole in _placed(text, slot):
        scope, name = match.group(1), match.group(2)
        value = _lookup(alert, scope, name, match.group(3))
        source = _SOURCE[scope]
        choices = (one_of or {}).get(name) if scope == "labels" else None
        if choices is not None and value not in set(choices):
            raise SlotError(
                source=source,
                name=name,
                value=value,
                grammar=f"one of {', '.join(choices)}",
                why=f"the playbook's labels.{name}.one_of allows only these",
            )
        why = _common(value) or grammar.refuse(value, hole)
        if why is not None:
            raise SlotError(
                source=source,
                name=name,
                value=value,
                grammar=grammar.noun(hole),
                why=why,
            )
        out.append(text[pos : match.start()])
        out.append(grammar.insert(value, hole))
        used.append((source, name, value))
        pos = match.end()
    out.append(text[pos:])
    rendered = "".join(out)
    why = grammar.whole(rendered)
    if why is not None:
        source, name, value = used[0] if used else ("template", "", text)
        raise SlotError(
            source=source, name=name, value=value, grammar=grammar.takes, why=why
        )
    return rendered


# ----------------------------------------------------------------- durations


def parse_duration(value: str | float | timedelta) -> timedelta:
    """Parse a Prometheus-style duration (``90s``, ``5m``, ``1h30m``) or seconds.

    Raises:
        ValueError: not a duration, negative, or too large to represent (so rule
            and settings validation report it with its location).
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (isinstance(value, float) and math.isnan(value)) or value < 0:
            raise ValueError("duration must be a non-negative number of seconds")
        try:
            return timedelta(seconds=value)
        except OverflowError as exc:
            raise ValueError(_too_large(value)) from exc
    text = str(value).strip()
    pos = 0
    total = timedelta(0)
    try:
        for found in _DURATION.finditer(text):
            if found.start() != pos:
                break
            digits = found.group(1)
            if len(digits) > _MAX_DURATION_DIGITS:
                raise ValueError(_too_large(value))
            total += int(digits) * _DURATION_UNITS[found.group(2)]
            pos = found.end()
    except OverflowError as exc:
        raise ValueError(_too_large(value)) from exc
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}; use ASCII digits with a unit, e.g. 30s, "
            "5m, 2h or 1h30m"
        )
    return total


def _too_large(value: object) -> str:
    return (
        f"duration {str(value)[:40]!r} is too large; the most is "
        f"{timedelta.max.days} days"
    )


def format_duration(value: timedelta) -> str:
    """Short human form of a duration (``2h``, ``1h30m``, ``45s``)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
