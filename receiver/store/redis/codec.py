"""Conversions between Python values and what the Redis store keeps."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.model import JSONValue


def _iso(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 (microseconds always present)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(value: bytes | str | None) -> datetime | None:
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return datetime.fromisoformat(text)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _ttl_ms(ttl: timedelta) -> int:
    """A PX argument: at least 1 ms (Redis rejects 0)."""
    return max(1, int(ttl.total_seconds() * 1000))


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    """A flat HGETALL reply (from a script) as a dict."""
    return {_str(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _hash(reply: Mapping[bytes | str, bytes | str]) -> dict[str, bytes]:
    """An HGETALL reply with text keys and bytes values."""
    return {_str(k): v.encode() if isinstance(v, str) else v for k, v in reply.items()}


def _members(reply: Iterable[object]) -> list[str]:
    """A sorted-set range reply (members only, never scores) as text."""
    return [_str(m) for m in reply if isinstance(m, bytes | str)]


def _digest(line: bytes) -> str:
    """A decision line's identity, for cursors."""
    return hashlib.blake2b(line, digest_size=16).hexdigest()


def _record_time(record: Mapping[str, JSONValue]) -> int:
    """When a decision was made (epoch ms), for pruning by age."""
    decided = record.get("decided_at")
    if isinstance(decided, str):
        with contextlib.suppress(ValueError):
            return _ms(datetime.fromisoformat(decided))
    return int(time.time() * 1000)
