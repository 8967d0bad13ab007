"""Step parameter templates: only alert fields are substituted, then validated.

A template is a string with placeholders ``{labels.NAME}``, ``{annotations.NAME}``,
``{alert.fingerprint}``, ``{alert.status}`` or ``{alert.source}``; every other brace
is literal, so PromQL selectors need no escaping. What a field holds decides how a
substituted value is checked: a Kubernetes name must be DNS-1123, a PromQL value is
escaped for a double-quoted string, a Redis key may not carry glob characters.
Nothing rendered here ever reaches a shell.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from receiver.model import Alert

PLACEHOLDER = re.compile(r"\{(labels|annotations|alert)\.([^{}\s]*)\}")
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ALERT_FIELDS = ("fingerprint", "status", "source")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


class TemplateError(ValueError):
    """A template refers to something other than an alert field."""


class RenderError(ValueError):
    """A template could not be rendered for this alert (missing or unsafe value)."""


class Slot(enum.StrEnum):
    """Where a rendered value goes, which decides how it is validated."""

    TEXT = "text"
    K8S_NAME = "k8s_name"  # DNS-1123 subdomain, e.g. a Deployment or Pod name
    NAMESPACE = "namespace"  # DNS-1123 label
    LABEL_SELECTOR = "label_selector"
    PROMQL = "promql"  # substituted values escaped for a "..." string
    REDIS_KEY = "redis_key"  # no glob characters from alert values
    URL = "url"  # host checked against the allowlist when the step runs


@dataclass(frozen=True)
class SlotMarker:
    """Annotated metadata naming a field's slot."""

    slot: Slot


def check_template(text: str) -> str:
    """Validate placeholders at load time; return the template unchanged."""
    for found in PLACEHOLDER.finditer(text):
        scope, name = found.groups()
        if scope == "alert":
            if name not in _ALERT_FIELDS:
                raise TemplateError(
                    f"unknown placeholder {found.group(0)!r}; "
                    f"alert fields are {', '.join(_ALERT_FIELDS)}"
                )
        elif not _NAME.match(name):
            raise TemplateError(
                f"bad placeholder {found.group(0)!r}; use {{{scope}.NAME}} with a "
                "label name like [a-zA-Z_][a-zA-Z0-9_]*"
            )
    return text


def placeholders(text: str) -> list[str]:
    """The placeholders a template uses, in order."""
    return [m.group(0) for m in PLACEHOLDER.finditer(text)]


def _lookup(alert: Alert, scope: str, name: str) -> str:
    if scope == "alert":
        return str(getattr(alert, name))
    source: Mapping[str, str] = alert.labels if scope == "labels" else alert.annotations
    value = source.get(name)
    if value is None or value == "":
        raise RenderError(f"alert has no {scope[:-1]} {name!r} for {{{scope}.{name}}}")
    return value


def _escape_promql(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(text: str, alert: Alert, slot: Slot) -> str:
    """Substitute alert fields and validate the result for ``slot``."""

    def substitute(found: re.Match[str]) -> str:
        value = _lookup(alert, found.group(1), found.group(2))
        if slot is Slot.PROMQL:
            return _escape_promql(value)
        if slot is Slot.REDIS_KEY and any(c in value for c in "*?[]\\"):
            raise RenderError(
                f"value {value!r} for {found.group(0)} contains glob characters; "
                "alert values may not widen a Redis key"
            )
        if slot is Slot.LABEL_SELECTOR and any(c in value for c in ",=!() "):
            raise RenderError(
                f"value {value!r} for {found.group(0)} would change the selector"
            )
        return value

    out = PLACEHOLDER.sub(substitute, text)
    if slot is Slot.K8S_NAME and (len(out) > 253 or not DNS1123_SUBDOMAIN.match(out)):
        raise RenderError(
            f"{out!r} is not a valid Kubernetes name (DNS-1123: lowercase "
            "alphanumerics, '-' and '.', at most 253 characters)"
        )
    if slot is Slot.NAMESPACE and (len(out) > 63 or not DNS1123_LABEL.match(out)):
        raise RenderError(
            f"{out!r} is not a valid namespace (DNS-1123 label: lowercase "
            "alphanumerics and '-', at most 63 characters)"
        )
    return out


def parse_duration(value: str | float | timedelta) -> timedelta:
    """Parse a Prometheus-style duration (``90s``, ``5m``, ``1h30m``) or seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("duration must not be negative")
        return timedelta(seconds=value)
    text = str(value).strip()
    pos = 0
    total = timedelta(0)
    for found in _DURATION.finditer(text):
        if found.start() != pos:
            break
        total += int(found.group(1)) * _DURATION_UNITS[found.group(2)]
        pos = found.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}; use a number with a unit, e.g. 30s, 5m, "
            "2h or 1h30m"
        )
    return total


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
