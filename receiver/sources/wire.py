"""What every wire format shares: strict JSON decoding and timestamps in range.

Called by each source module and by the edge (``?since=``). JSON is decoded by
pydantic-core's parser, which bounds nesting (200 levels) and number size and
refuses NaN, Infinity and lone UTF-16 surrogates; a number past a float's
range (``1e400``, which the parser reads as infinity) is refused too. Every
refusal is an ``InputError`` that says where the body broke, and for a lone
surrogate or a number too large which field holds it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic_core
from pydantic import AfterValidator

from receiver.errors import InputError

# The range a timestamp of an alert may fall in, once converted to UTC.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# Alertmanager's "no time" (Go's zero time.Time), kept as is; sources map it to None.
ZERO = datetime(1, 1, 1, tzinfo=UTC)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_POSITION = re.compile(r" at line (\d+) column (\d+)$")
# What a JSON number past a float's range looks like: an exponent of three
# digits or more, or 309 digits in a row. Anything it finds (also in a string)
# only makes ``parse_json`` look at the decoded values.
_HUGE = re.compile(rb'(?<![\w."+-])-?\d+(?:\.\d*)?[eE]\+?0*\d{3}|\d{309}')
_NUMBER_TOO_LARGE = (
    "holds a number too large to use (past a 64-bit float's range); "
    "send a finite number"
)


def to_utc(value: datetime) -> datetime:
    """A timestamp as aware UTC, refused outside 1970..2200 (Go's zero time kept).

    A time without an offset is taken as UTC.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "timestamp out of range: with its offset it falls outside the years "
            "1..9999; send an RFC 3339 time between 1970 and 2200"
        ) from None
    if utc == ZERO:
        return utc
    if not EARLIEST <= utc < LATEST:
        raise ValueError(
            f"timestamp {utc.isoformat()} is out of range; send an RFC 3339 time "
            "between 1970 and 2200"
        )
    return utc


Timestamp = Annotated[datetime, AfterValidator(to_utc)]


def parse_time(text: str, what: str) -> datetime:
    """An RFC 3339 / ISO 8601 query parameter as aware UTC, or ``InputError``."""
    try:
        value = datetime.fromisoformat(text)
        utc = to_utc(value)
    except ValueError as exc:
        raise InputError(
            f"{what}: {exc}"
            if "range" in str(exc)
            else f"{what} must be an ISO "
            f"8601 time such as 2024-05-06T07:00:00Z, got {text[:40]!r}"
        ) from None
    if utc == ZERO:
        raise InputError(f"{what} must be a time between 1970 and 2200")
    return utc


def parse_json(body: bytes) -> Any:
    """Decode JSON or raise ``InputError`` saying where (and why) it broke."""
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise _json_error(body, str(exc)) from None
    if may_overflow(body):
        pointer = _infinite_pointer(data)
        if pointer is not None:
            raise InputError(
                f"{pointer or '/'}: {_NUMBER_TOO_LARGE}",
                errors=[{"pointer": pointer or "/", "detail": _NUMBER_TOO_LARGE}],
            )
    return data


def may_overflow(body: bytes) -> bool:
    """Whether ``body`` may hold a number a float reads as infinity (``1e400``).

    A cheap look at the text; False proves there is none.
    """
    return _HUGE.search(body) is not None


def _infinite_pointer(data: object) -> str | None:
    """The JSON pointer of the first number decoded as infinity, if any."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float):
            if math.isinf(item):
                return path
        elif isinstance(item, dict):
            stack.extend((f"{path}/{_escape(k)}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(item))
    return None


def _json_error(body: bytes, message: str) -> InputError:
    where = _POSITION.search(message)
    reason = _POSITION.sub("", message)
    at = f" at line {where.group(1)} column {where.group(2)}" if where else ""
    if "surrogate" in reason or "hex escape" in reason:
        pointer = _surrogate_pointer(body)
        if pointer is not None:
            detail = (
                "holds a lone UTF-16 surrogate escape (such as \\ud800), which is "
                "not a Unicode character; send valid Unicode"
            )
            return InputError(
                f"{pointer or '/'}: {detail}",
                errors=[{"pointer": pointer or "/", "detail": detail}],
            )
        return InputError(f"body holds a lone UTF-16 surrogate escape{at}")
    if reason == "invalid unicode code point":
        return InputError(f"body is not UTF-8: invalid byte sequence{at}")
    if reason == "recursion limit exceeded":
        return InputError(f"body nests JSON deeper than 200 levels{at}")
    if reason == "number out of range":
        return InputError(f"body holds a number too large to use{at}")
    return InputError(f"body is not valid JSON: {reason}{at}")


def _surrogate_pointer(body: bytes) -> str | None:
    """The JSON pointer of the first value or key holding a lone surrogate."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, value in item.items():
                child = f"{path}/{_escape(key)}"
                if _SURROGATE.search(key):
                    return child
                stack.append((child, value))
        elif isinstance(item, list):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(item))
    return None


def _escape(key: str) -> str:
    clean = _SURROGATE.sub("\ufffd", key)
    return clean.replace("~", "~0").replace("/", "~1")
