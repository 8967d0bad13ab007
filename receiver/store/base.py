"""The ``Store`` protocol: the payload journal, the decision log, and guard state.

The edge calls ``append`` before answering 202 (with the alert states the payload
carries, so a resolve cancels pending remediations at once); workers call
``claim`` and ``complete``; the runner calls the idempotency, lock, cooldown,
budget, circuit and approval operations; the API reads payloads and decisions.
Every implementation (``sqlite``, ``redis``) passes ``tests/test_store_contract.py``.

All times are timezone-aware UTC ``datetime`` values passed in by the caller
(the injected clock), never read from the system inside an implementation, except
where a backend's own expiry (Redis TTLs) is the point.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from receiver.model import Source, iso


def new_id() -> str:
    """A time-ordered unique id (ms timestamp + randomness), sortable as text."""
    return f"{time.time_ns() // 1_000_000:013x}{os.urandom(6).hex()}"


@dataclass(frozen=True)
class Retention:
    """How long and how much finished state is kept before pruning."""

    max_age: timedelta = timedelta(days=7)
    max_payloads: int = 100_000
    max_decisions: int = 200_000
    # An entry claimed longer ago than this by a consumer that never completed
    # it is handed to another consumer (crash recovery).
    lease: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class JournalEntry:
    """One accepted payload, as received (headers redacted)."""

    id: str
    source: Source
    received_at: datetime
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0

    def to_json(self, *, include_body: bool = True) -> dict[str, Any]:
        """JSON form for the API."""
        import json  # noqa: PLC0415 (only the API needs it)

        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "received_at": iso(self.received_at),
            "headers": dict(self.headers),
        }
        if include_body:
            try:
                out["payload"] = json.loads(self.body)
            except ValueError:
                out["payload"] = self.body.decode("utf-8", errors="replace")
        return out


@dataclass(frozen=True)
class AlertState:
    """The latest known state of one alert fingerprint."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    starts_at: datetime | None
    updated_at: datetime


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
    # Opaque: the ``next_cursor`` of the previous page; records older than it.
    cursor: str | None = None


@dataclass(frozen=True)
class DecisionPage:
    """One page of decision records, newest first, as stored JSON text.

    Kept as text so the API answers without decoding and re-encoding them;
    ``next_cursor`` is None on the last page.
    """

    records: list[str]
    next_cursor: str | None = None

    def items(self) -> list[dict[str, Any]]:
        """The records decoded."""
        import json  # noqa: PLC0415 (only callers that decode need it)

        return [json.loads(r) for r in self.records]


# A label or annotation value at least this long is stored once per record, under
# ``labels``/``annotations``; the steps that rendered it refer to it by name.
LONG_VALUE = 64
_COMPACTED_MATCH_FIELDS = ("description", "notes")


def compact_record(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """A decision record with long alert values written once, not once per step.

    Every templated step repeats the values it rendered (target, reason, the
    request it sent): a 1 KiB label in ten steps is stored ten times. Here each
    occurrence inside a match's steps becomes ``{labels.NAME}`` (or
    ``{annotations.NAME}``), the placeholder it was rendered from, and the
    record says so with ``"values_by_reference": true``. Short values and
    records without long values are returned as they are.
    """
    long_values = sorted(
        (
            (value, f"{{{where}.{name}}}")
            for where in ("labels", "annotations")
            for name, value in (record.get(where) or {}).items()
            if isinstance(value, str) and len(value) >= LONG_VALUE
        ),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    if not long_values or not record.get("matches"):
        return record

    def swap(item: Any) -> Any:
        if isinstance(item, str):
            for value, ref in long_values:
                if value in item:
                    item = item.replace(value, ref)
            return item
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    matches = [
        {
            **match,
            "steps": swap(match.get("steps", [])),
            **{k: swap(match[k]) for k in _COMPACTED_MATCH_FIELDS if k in match},
        }
        for match in record["matches"]
    ]
    out = dict(record)
    out["matches"] = matches
    out["values_by_reference"] = True
    return out


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


def newer_state(old: AlertState | None, new: AlertState) -> bool:
    """Whether ``new`` should replace ``old``.

    A later occurrence (later ``starts_at``) always wins; for the same occurrence
    a resolve wins and a firing resend never un-resolves it.
    """
    if old is None:
        return True
    old_start = old.starts_at or datetime.min.replace(tzinfo=new.updated_at.tzinfo)
    new_start = new.starts_at or datetime.min.replace(tzinfo=new.updated_at.tzinfo)
    if new_start != old_start:
        return new_start > old_start
    return not (old.status == "resolved" and new.status == "firing")


@dataclass(frozen=True)
class Claim:
    """Who holds an idempotency key, and how it ended."""

    key: str
    owner: str
    status: Literal["running", "done", "failed"]
    at: datetime
    detail: str = ""


@dataclass(frozen=True)
class Lock:
    """A held lock; ``token`` is a fencing token, larger for later holders."""

    name: str
    owner: str
    token: int


@dataclass(frozen=True)
class Circuit:
    """A playbook's circuit-breaker state."""

    failures: int = 0
    opened_at: datetime | None = None


@dataclass(frozen=True)
class Approval:
    """A remediation waiting for a human."""

    id: str
    key: str
    created_at: datetime
    expires_at: datetime
    request: Mapping[str, Any]
    status: Literal["pending", "approved", "rejected", "expired"] = "pending"
    decided_by: str = ""
    decided_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {
            "id": self.id,
            "key": self.key,
            "status": self.status,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "decided_by": self.decided_by,
            "decided_at": iso(self.decided_at),
            "request": dict(self.request),
        }


class Store(Protocol):
    """Journal, decision log and guard state; see the module docstring."""

    # -- journal ------------------------------------------------------------

    async def append(self, entry: JournalEntry, states: Sequence[AlertState]) -> None:
        """Durably record a payload and its alerts' states.

        Raises ``StoreUnavailableError`` when it cannot.
        """
        ...

    async def claim(self, consumer: str, wait: float) -> JournalEntry | None:
        """Take the next unfinished entry, or one a dead consumer left behind.

        Waits up to ``wait`` seconds.
        """
        ...

    async def complete(
        self, entry_id: str, traces: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record an entry's decisions and mark it done, atomically."""
        ...

    async def record(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append decision records that belong to no journal entry.

        Sink outcomes are recorded this way, under their own ``payload_id``.
        """
        ...

    async def payload(self, entry_id: str) -> JournalEntry | None:
        """One stored payload."""
        ...

    async def payloads(
        self, limit: int = 100, *, before: str | None = None
    ) -> list[JournalEntry]:
        """Stored payloads, newest first; with ``before``, those older than that id."""
        ...

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        """Decision records, newest first, filtered (one page, decoded)."""
        ...

    async def decision_page(self, query: DecisionQuery) -> DecisionPage:
        """One page of decision records for the API, never blocking the journal."""
        ...

    async def pending(self) -> tuple[int, datetime | None]:
        """Unfinished entries: how many, and when the oldest was received."""
        ...

    async def prune(self, now: datetime) -> int:
        """Drop finished payloads and decisions past retention; return how many."""
        ...

    async def alert_state(self, fingerprint: str) -> AlertState | None:
        """The latest state recorded for a fingerprint."""
        ...

    # -- exactly once ---------------------------------------------------------

    async def seen(self, key: str, ttl: timedelta) -> bool:
        """Mark a delivery id seen; True if it had been seen already."""
        ...

    async def claim_key(
        self, key: str, owner: str, now: datetime, ttl: timedelta
    ) -> Claim | None:
        """Claim an idempotency key atomically; return the existing claim if taken."""
        ...

    async def finish_key(
        self, key: str, status: Literal["done", "failed"], detail: str, now: datetime
    ) -> None:
        """Record how a claimed key's remediation ended."""
        ...

    async def release_key(self, key: str) -> None:
        """Drop a claim that never ran (a guard said no after claiming)."""
        ...

    # -- guards -------------------------------------------------------------

    async def acquire_lock(self, name: str, owner: str, ttl: timedelta) -> Lock | None:
        """Take a lock if free; None if someone holds it."""
        ...

    async def lock_holder(self, name: str) -> str | None:
        """Who holds a lock, if anyone."""
        ...

    async def release_lock(self, lock: Lock) -> None:
        """Release a lock, only if still held with the same token."""
        ...

    async def last_run(self, scope: str) -> datetime | None:
        """When a remediation last ran in ``scope`` (cooldown)."""
        ...

    async def set_last_run(self, scope: str, at: datetime, ttl: timedelta) -> None:
        """Record a run in ``scope`` for cooldowns."""
        ...

    async def reserve_budget(
        self, scope: str, limit: int, window: timedelta, now: datetime
    ) -> int | None:
        """Atomically take a slot if fewer than ``limit`` runs are in the window.

        Returns the count including this one, or None when spent.
        """
        ...

    async def release_budget(self, scope: str, now: datetime) -> None:
        """Give back a slot taken at ``now`` (the run did not happen)."""
        ...

    async def circuit(self, scope: str) -> Circuit:
        """A circuit breaker's state."""
        ...

    async def record_outcome(
        self, scope: str, ok: bool, threshold: int, now: datetime
    ) -> Circuit:
        """Count a success (resets) or failure (opens at ``threshold``)."""
        ...

    async def reset_circuit(self, scope: str) -> None:
        """Close a circuit after its cool-off."""
        ...

    # -- approvals ----------------------------------------------------------

    async def put_approval(self, approval: Approval) -> Approval:
        """Store an approval request (idempotent per key: returns the existing)."""
        ...

    async def get_approval(self, approval_id: str) -> Approval | None:
        """One approval."""
        ...

    async def decide_approval(
        self,
        approval_id: str,
        status: Literal["approved", "rejected", "expired"],
        by: str,
        now: datetime,
    ) -> Approval | None:
        """Move a pending approval to a final status; None if not pending."""
        ...

    async def approvals(
        self,
        status: str | None = None,
        *,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Approval]:
        """Approvals, newest first; with ``before``, those older than that id."""
        ...

    async def expire_approvals(self, now: datetime) -> int:
        """Mark pending approvals past their expiry ``expired``; return how many."""
        ...

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> bool:
        """Whether the store can take writes now."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
