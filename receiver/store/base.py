"""The ``Store`` protocol: a journal of accepted payloads and a log of decisions.

The edge calls ``append`` before answering 202; the worker calls ``claim`` and
``complete``; the API reads ``payloads`` and ``decisions``. Every implementation
passes ``tests/test_store_contract.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from receiver.model import Source, iso


def new_id() -> str:
    """A time-ordered unique id (ms timestamp + randomness), sortable as text."""
    return f"{time.time_ns() // 1_000_000:013x}{os.urandom(6).hex()}"


@dataclass(frozen=True)
class JournalEntry:
    """One accepted payload, as received (headers redacted)."""

    id: str
    source: Source
    received_at: datetime
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    replay: bool = False

    def to_json(self, *, include_body: bool = True) -> dict[str, Any]:
        """JSON form for the API."""
        import json  # noqa: PLC0415 (only the API needs it)

        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "received_at": self.received_at.isoformat(),
            "headers": dict(self.headers),
        }
        if include_body:
            try:
                out["payload"] = json.loads(self.body)
            except ValueError:
                out["payload"] = self.body.decode("utf-8", errors="replace")
        return out


@dataclass(frozen=True)
class DecisionQuery:
    """Filters for reading decisions, newest first."""

    fingerprint: str | None = None
    rule: str | None = None
    playbook: str | None = None
    decision: str | None = None
    payload_id: str | None = None
    since: datetime | None = None
    limit: int = 100


def decision_matches(record: Mapping[str, Any], query: DecisionQuery) -> bool:
    """Whether a stored trace record passes ``query``'s filters."""
    matches: Sequence[Mapping[str, Any]] = record.get("matches", [])
    steps = [s for m in matches for s in m.get("steps", [])]
    checks = (
        not query.fingerprint or record.get("fingerprint") == query.fingerprint,
        not query.payload_id or record.get("payload_id") == query.payload_id,
        not query.since or record.get("decided_at", "") >= (iso(query.since) or ""),
        not query.rule or any(m.get("rule") == query.rule for m in matches),
        not query.playbook or any(m.get("playbook") == query.playbook for m in matches),
        not query.decision or any(s.get("decision") == query.decision for s in steps),
    )
    return all(checks)


class Store(Protocol):
    """Journal and decision log."""

    async def append(self, entry: JournalEntry) -> None:
        """Durably record an accepted payload; raise StoreUnavailableError if not."""
        ...

    async def claim(self, timeout: float) -> JournalEntry | None:
        """Take the next unfinished entry, waiting up to ``timeout`` seconds."""
        ...

    async def complete(
        self, entry_id: str, traces: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record an entry's decisions and mark it done."""
        ...

    async def payload(self, entry_id: str) -> JournalEntry | None:
        """One stored payload."""
        ...

    async def payloads(self, limit: int = 100) -> list[JournalEntry]:
        """Stored payloads, newest first."""
        ...

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        """Decision records, newest first, filtered."""
        ...

    async def pending(self) -> int:
        """How many entries are accepted but not yet done."""
        ...

    async def ping(self) -> bool:
        """Whether the store can take writes now."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
