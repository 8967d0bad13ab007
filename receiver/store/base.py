"""The store contract: four small protocols and the handles they return.

``Journal`` (the edge appends payloads before answering 202; workers claim them
under a ``Lease`` they renew while deciding, complete them, or park them),
``DecisionLog`` (decision records; the API reads them), ``GuardState`` (the
runner's run-once keys, target locks, cooldowns, budgets, circuit breakers, the
pause switch and the liveness of each worker incarnation) and ``Approvals``.
``Store`` is all four plus ``ping``, ``eviction`` (whether the server may drop
keys on its own) and ``close``; each implementation (``sqlite``, ``redis``) is
one class that passes ``tests/test_store_contract.py`` and the model-based
``tests/test_store_model.py``.

The values (``receiver.store.handles``) and the decision-record helpers
(``receiver.store.records``) are re-exported here, where callers import them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

from receiver.store.handles import (
    AlertState,
    Approval,
    BudgetSlot,
    Circuit,
    Claim,
    ClaimOutcome,
    DecisionPage,
    DecisionQuery,
    Eviction,
    JournalEntry,
    KeyStatus,
    Lease,
    Lock,
    ParkedEntry,
    Pause,
    Retention,
    new_id,
    newer_state,
)
from receiver.store.records import LONG_VALUE, compact_record, decision_matches

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

# A worker incarnation dead this long is forgotten. Longer than a run-once
# claim lives (``GuardDefaults.idempotency_ttl``, 7 days): a claim whose owner
# is forgotten reads as live, so it could not be taken over after a crash.
FORGET_DEAD_AFTER = timedelta(days=8)

__all__ = [
    "FORGET_DEAD_AFTER",
    "LONG_VALUE",
    "AlertState",
    "Approval",
    "Approvals",
    "BudgetSlot",
    "Circuit",
    "Claim",
    "ClaimOutcome",
    "DecisionLog",
    "DecisionPage",
    "DecisionQuery",
    "Eviction",
    "GuardState",
    "Journal",
    "JournalEntry",
    "KeyStatus",
    "Lease",
    "Lock",
    "ParkedEntry",
    "Pause",
    "PayloadReader",
    "Retention",
    "Store",
    "compact_record",
    "decision_matches",
    "new_id",
    "newer_state",
]


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

    async def claim_batch(
        self, consumer: str, limit: int, wait: float, now: datetime
    ) -> list[Lease]:
        """Take up to ``limit`` entries at once, each under its own lease.

        Chosen by ``claim``'s rules (pending entries oldest first, lapsed
        leases, and on Redis entries delivered to ``consumer`` whose reply was
        lost), in one transaction or script; as many as there are, up to
        ``limit``. Waits up to ``wait`` seconds for the first; empty when there
        was none. A consumer completes, releases or parks everything it
        claimed before it claims again.
        """
        ...

    async def renew(self, lease: Lease, now: datetime) -> Lease | None:
        """Extend a lease from ``now``; None when it is no longer ours."""
        ...

    async def release(self, lease: Lease, now: datetime, error: str) -> None:
        """Hand an entry back at once after a failed attempt (``error`` kept)."""
        ...

    async def complete(
        self, entry_id: str, traces: Sequence[Mapping[str, JSONValue]]
    ) -> None:
        """Record an entry's decisions and mark it done, once.

        An entry already done, or whose decisions are already recorded (a
        worker crashed between the two, or its lease ran out), gets no second
        set of records: the first stands.
        """
        ...

    async def complete_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]]
    ) -> None:
        """``complete`` for several entries (id, traces) in one go.

        On ``StoreUnavailableError`` none of them is marked done (their records
        may stand: completing them again records nothing more). An entry
        already done is skipped, as ``complete`` skips it. Calls may overlap
        (the worker has two on their way); the decisions are listed in the
        order they were decided all the same.
        """
        ...

    async def record_batch(
        self, done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]]
    ) -> None:
        """Write several entries' decision records (id, traces), marking none done.

        What the worker writes as soon as an entry is decided, before its
        incidents are folded; ``complete_batch`` then marks it done. An entry
        already done, or with records already, gets none (the first stand),
        as in ``complete_batch``, which in turn writes no second set after
        this. Records retention dropped before the entry was done no longer
        stand: its next attempt writes its own (a parked entry retried late).
        On ``StoreUnavailableError`` some may stand; writing them again
        records nothing more. Ordered with ``complete_batch``'s records.
        """
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
        """Unfinished entries (not parked): how many, and the oldest's time.

        The oldest is the first of them in line: the earliest to arrive (on
        Redis, a retried parked entry is in line again at the end). Cheap
        enough to ask while shedding: neither store counts the backlog row by
        row.
        """
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

    async def record(self, records: Sequence[Mapping[str, JSONValue]]) -> None:
        """Append decision records that belong to no journal entry.

        Sink outcomes and pause/unpause audit records are recorded this way,
        under their own ``payload_id``.
        """
        ...

    async def decisions(self, query: DecisionQuery) -> list[JSONObject]:
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

    async def last_runs(
        self, scopes: Sequence[str], now: datetime
    ) -> dict[str, datetime | None]:
        """``last_run`` for several scopes in one read (every scope a key)."""
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


class PayloadReader(Protocol):
    """Stored payloads, read and nothing else: what ``receiver backtest`` reads.

    ``open_reader`` opens one that writes nothing to the store it reads; a
    ``Store`` is one too (the console's backtest reads the service's own).
    """

    async def payloads(self, limit: int = 100) -> list[JournalEntry]:
        """The newest ``limit`` stored payloads, newest first."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Store(Journal, DecisionLog, GuardState, Approvals, Protocol):
    """Everything the receiver keeps; see the module docstring."""

    async def ping(self) -> bool:
        """Whether the store can take writes now."""
        ...

    async def eviction(self) -> Eviction | None:
        """Whether the store's server may drop keys on its own, as it says now.

        None for a store nothing evicts from (SQLite). Never raises for a
        server that will not say: the ``Eviction`` is then ``unknown``.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
