"""Slots and their grammars' building blocks: placeholders, errors, value checks."""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
MAX_VALUE_CHARS = 1024
REDIS_KEY_PART_CHARS = 128
_REDIS_GLOB = "*?[]\\"


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
