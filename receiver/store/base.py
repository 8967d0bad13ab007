"""The store contract: four small protocols and the handles they return.

``Journal`` (the edge appends payloads before answering 202; workers claim them
under a ``Lease`` they renew while deciding, complete them, or park them),
``DecisionLog`` (decision records; the API reads them), ``GuardState`` (the
runner's run-once keys, target locks, cooldowns, budgets, circuit breakers, the
pause switch and the liveness of each worker incarnation) and ``Approvals``.
``Store`` is all four plus ``ping``/``close``; each implementation (``sqlite``,
``redis``) is one class that passes ``tests/test_store_contract.py`` and the
model-based ``tests/test_store_model.py``.

Calls return handles, never sentinels: ``claim_key`` a ``ClaimOutcome``,
``reserve_budget`` a ``BudgetSlot`` that ``release_budget`` takes back,
``acquire_lock`` a fenced ``Lock``, ``claim`` a ``Lease``.

Clocks: every time that decides guard or journal state (lease and lock expiry,
claim expiry, cooldowns, budget windows, incarnation liveness) is a
timezone-aware UTC ``datetime`` passed in by the caller from its injected clock.
No implementation reads the wall clock to decide them. Redis keys also carry a
``PXAT`` expiry, only to collect garbage: it is never earlier than the caller's
deadline, and the caller's ``now`` is what every check compares against.
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
    # How long a claim (``Lease``) lasts from the caller's ``now``; the worker
    # renews it while it decides the entry. A lapsed lease (a dead or hung
    # consumer) lets another consumer take the entry over.
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


KeyStatus = Literal["running", "sending", "done", "failed"]


@dataclass(frozen=True)
class Claim:
    """Who holds an idempotency key, and how far its remediation got.

    ``running``: claimed, guards passing, nothing sent yet; ``sending``: the
    action is about to leave or has left; ``done``/``failed``: how it ended.
    ``intent`` is what ``mark_sending`` recorded the action would do (opaque
    JSON text the step executor wrote, e.g. the absolute replica count), so
    crash recovery can check whether it took effect.
    """

    key: str
    owner: str
    status: KeyStatus
    at: datetime
    detail: str = ""
    expires_at: datetime | None = None
    intent: str = ""


@dataclass(frozen=True)
class ClaimOutcome:
    """What ``claim_key`` did: ``won`` it (``holder`` is then our claim) or not.

    ``recovered`` is the claim of a dead incarnation that this call took over
    (its remediation was interrupted by a crash): the runner re-checks it.
    ``stopped`` says that incarnation is known to have stopped: it said so
    (``retire``), or the single-instance SQLite store declared it dead when a
    new one started (``recover``). False when it only stopped renewing its
    heartbeat: it may be alive and stalled, with its request still on its way,
    so an action it marked ``sending`` is re-checked but never run again.
    """

    won: bool
    holder: Claim
    recovered: Claim | None = None
    stopped: bool = False


@dataclass(frozen=True)
class Lock:
    """A held lock; ``token`` is a fencing token, larger for later holders."""

    name: str
    owner: str
    token: int
    expires_at: datetime | None = None


@dataclass(frozen=True)
class BudgetSlot:
    """One reserved run in a budget window; ``release_budget`` gives it back."""

    scope: str
    slot: str
    at: datetime
    used: int


@dataclass(frozen=True)
class Lease:
    """A claimed journal entry, held by ``consumer`` until ``expires_at``.

    The worker renews it while it decides the entry; once it lapses another
    consumer may claim the entry (crash recovery).
    """

    entry: JournalEntry
    consumer: str
    expires_at: datetime


@dataclass(frozen=True)
class ParkedEntry:
    """A journal entry set aside after too many attempts; retried on demand."""

    entry: JournalEntry
    reason: str
    parked_at: datetime

    def to_json(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {
            **self.entry.to_json(include_body=False),
            "attempts": self.entry.attempts,
            "reason": self.reason,
            "parked_at": iso(self.parked_at),
        }


@dataclass(frozen=True)
class Pause:
    """The global pause switch: who turned it on, when and why."""

    by: str
    at: datetime
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {
            "paused": True,
            "by": self.by,
            "at": iso(self.at),
            "reason": self.reason,
        }


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


class Journal(Protocol):
    """Accepted payloads, from the 202 until they are decided (or parked)."""

    async def append(self, entry: JournalEntry, states: Sequence[AlertState]) -> None:
        """Durably record a payload and its alerts' states.

        Raises ``StoreUnavailableError`` when it cannot.
        """
        ...

    async def claim(self, consumer: str, wait: float, now: datetime) -> Lease | None:
        """Take the next pending entry, or one whose lease lapsed before ``now``.

        Waits up to ``wait`` seconds for one. The lease runs until ``now`` plus
        the configured lease; ``entry.attempts`` counts claims so far.
        """
        ...

    async def renew(self, lease: Lease, now: datetime) -> Lease | None:
        """Extend a lease from ``now``; None when it is no longer ours."""
        ...

    async def release(self, lease: Lease, now: datetime, error: str) -> None:
        """Hand an entry back at once after a failed attempt (``error`` kept)."""
        ...

    async def complete(
        self, entry_id: str, traces: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record an entry's decisions and mark it done, atomically (once)."""
        ...

    async def park(self, lease: Lease, reason: str, now: datetime) -> None:
        """Set an entry aside: never claimed again until ``retry_parked``."""
        ...

    async def parked(self, limit: int = 100) -> list[ParkedEntry]:
        """Parked entries, newest first."""
        ...

    async def parked_count(self) -> int:
        """How many entries are parked."""
        ...

    async def retry_parked(self, entry_id: str, now: datetime) -> bool:
        """Put a parked entry back in the queue with fresh attempts."""
        ...

    async def payload(self, entry_id: str) -> JournalEntry | None:
        """One stored payload."""
        ...

    async def payloads(
        self, limit: int = 100, *, before: str | None = None
    ) -> list[JournalEntry]:
        """Stored payloads, newest first; with ``before``, those older than that id."""
        ...

    async def pending(self) -> tuple[int, datetime | None]:
        """Unfinished entries (not parked): how many, and the oldest's time."""
        ...

    async def prune(self, now: datetime) -> int:
        """Drop finished payloads and decisions past retention; return how many."""
        ...

    async def alert_state(self, fingerprint: str) -> AlertState | None:
        """The latest state recorded for a fingerprint."""
        ...

    async def seen(self, key: str, ttl: timedelta, now: datetime) -> bool:
        """Mark a delivery id seen until ``now + ttl``; True if it still was.

        Delivery de-duplication at the edge and in the sinks, not guard state;
        like every expiry, decided by the caller's clock (``now``).
        """
        ...


class DecisionLog(Protocol):
    """Decision records: traces of decided alerts, sink outcomes, audit events."""

    async def record(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append decision records that belong to no journal entry.

        Sink outcomes and pause/unpause audit records are recorded this way,
        under their own ``payload_id``.
        """
        ...

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        """Decision records, newest first, filtered (one page, decoded)."""
        ...

    async def decision_page(self, query: DecisionQuery) -> DecisionPage:
        """One page of decision records for the API, never blocking the journal."""
        ...


class GuardState(Protocol):
    """The runner's guard state, shared by every replica."""

    async def register(self, incarnation: str, now: datetime, ttl: timedelta) -> None:
        """Say ``incarnation`` (one process's run) is alive until ``now + ttl``."""
        ...

    async def retire(self, incarnation: str, now: datetime) -> None:
        """Mark an incarnation dead and known to have stopped (a clean stop).

        A later ``register`` of the same incarnation makes it alive again.
        """
        ...

    async def recover(self, incarnation: str, now: datetime) -> list[str]:
        """Release the locks of dead incarnations; return the locks released.

        The SQLite store serves one instance, so every other incarnation is
        dead once a new one recovers; on Redis an incarnation is dead when it
        stopped renewing (``register``) before ``now``.
        """
        ...

    async def claim_key(
        self, key: str, owner: str, now: datetime, ttl: timedelta
    ) -> ClaimOutcome:
        """Claim a run-once key atomically.

        A claim left ``running`` or ``sending`` by a dead incarnation is taken
        over (``recovered`` names it, ``stopped`` says whether that incarnation
        is known to have stopped); a ``sending`` one stays ``sending`` with its
        intent (now ours), so a crash of this holder too is re-checked again,
        never read as "nothing was sent". An expired claim is free again.
        """
        ...

    async def mark_sending(
        self, key: str, owner: str, now: datetime, intent: str = ""
    ) -> bool:
        """Record that the action is about to leave, and its ``intent``.

        ``intent`` (JSON text, kept until the key expires) replaces any intent
        recorded before. False if the key is not our unfinished claim.
        """
        ...

    async def finish_key(
        self,
        key: str,
        owner: str,
        status: Literal["done", "failed"],
        detail: str,
        now: datetime,
    ) -> bool:
        """Record how ``owner``'s claimed key's remediation ended.

        Fenced: False, and nothing written, when the key is not ``owner``'s
        unfinished claim (another incarnation took it over, or it ended).
        """
        ...

    async def release_key(self, key: str, owner: str) -> None:
        """Drop our claim that never sent anything (a guard said no after it)."""
        ...

    async def acquire_lock(
        self, name: str, owner: str, now: datetime, ttl: timedelta
    ) -> Lock | None:
        """Take a lock if free, expired, or held by a dead incarnation."""
        ...

    async def renew_lock(
        self, lock: Lock, now: datetime, ttl: timedelta
    ) -> Lock | None:
        """Extend a held lock; None if it is no longer held with this token."""
        ...

    async def lock_holder(self, name: str, now: datetime) -> str | None:
        """Who holds a lock at ``now``, if anyone."""
        ...

    async def release_lock(self, lock: Lock) -> None:
        """Release a lock, only if still held with the same token."""
        ...

    async def last_run(self, scope: str, now: datetime) -> datetime | None:
        """When a remediation last ran in ``scope``, if within its cooldown."""
        ...

    async def set_last_run(self, scope: str, at: datetime, ttl: timedelta) -> None:
        """Record a run in ``scope`` at ``at``, remembered until ``at + ttl``."""
        ...

    async def reserve_budget(
        self, scope: str, limit: int, window: timedelta, now: datetime
    ) -> BudgetSlot | None:
        """Atomically take a slot if fewer than ``limit`` runs are in the window."""
        ...

    async def release_budget(self, slot: BudgetSlot) -> None:
        """Give back exactly this slot (the run did not happen)."""
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

    async def pause(self) -> Pause | None:
        """The global pause, if on."""
        ...

    async def set_pause(self, pause: Pause | None) -> None:
        """Turn the global pause on (a ``Pause``) or off (None)."""
        ...


class Approvals(Protocol):
    """Remediations waiting for a human."""

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


class Store(Journal, DecisionLog, GuardState, Approvals, Protocol):
    """Everything the receiver keeps; see the module docstring."""

    async def ping(self) -> bool:
        """Whether the store can take writes now."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
