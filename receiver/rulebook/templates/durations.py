"""Durations as rules write them (``90s``, ``1h30m``) and as traces show them."""

from __future__ import annotations

import math
import re
from datetime import timedelta

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
