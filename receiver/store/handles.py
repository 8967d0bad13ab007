"""The values the store contract takes and returns: entries, leases, claims, locks.

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
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from receiver.model import JSONObject, JSONValue, Source, iso
from receiver.settings import JournalSettings, RetentionSettings


class _SystemHex:
    """The system's random bytes as hex, taken from the kernel in blocks.

    ``os.urandom`` gives the GIL up around its system call: on the event loop's
    thread, with the SQLite writer thread waiting for the GIL, every id cost a
    hand-over of the GIL and a wait to take it back. One call per ``BLOCK`` ids
    instead. A child forked from a process holding a block forgets it (its
    parent goes on using it) and takes a block of its own; the lock keeps
    threads from taking the same digits.
    """

    BLOCK = 512

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0
        self._forks_watched = False

    def take(self, digits: int) -> str:
        """``digits`` (even) hex digits no other call in any process gets."""
        with self._lock:
            at = self._at
            if at + digits > len(self._hex):
                if not self._forks_watched:
                    # At first use, not at import; once per instance.
                    os.register_at_fork(after_in_child=self.forget)
                    self._forks_watched = True
                self._hex = os.urandom(self.BLOCK * digits // 2).hex()
                at = 0
            self._at = at + digits
            return self._hex[at : at + digits]

    def forget(self) -> None:
        """Drop the digits not yet taken (a forked child's copy of its parent's)."""
        self._lock = threading.Lock()  # the parent's may have been held at fork
        self._hex, self._at = "", 0


_RANDOM = _SystemHex()


def new_id() -> str:
    """A time-ordered unique id (ms timestamp + randomness), sortable as text."""
    return f"{time.time_ns() // 1_000_000:013x}{_RANDOM.take(12)}"


_RETENTION = RetentionSettings()
_JOURNAL = JournalSettings()


@dataclass(frozen=True)
class Retention:
    """How long and how much finished state is kept before pruning.

    The defaults are the settings' own (``RetentionSettings``, ``JournalSettings``).
    """

    max_age: timedelta = _RETENTION.max_age
    max_payloads: int = _RETENTION.payloads
    max_decisions: int = _RETENTION.decisions
    # How long a claim (``Lease``) lasts from the caller's ``now``; the worker
    # renews it while it decides the entry. A lapsed lease (a dead or hung
    # consumer) lets another consumer take the entry over.
    lease: timedelta = _JOURNAL.lease


@dataclass(frozen=True)
class JournalEntry:
    """One accepted payload, as received (headers redacted)."""

    id: str
    source: Source
    received_at: datetime
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0

    def to_json(self, *, include_body: bool = True) -> dict[str, object]:
        """JSON form for the API."""
        import json  # noqa: PLC0415 (only the API needs it)

        out: dict[str, object] = {
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

    def items(self) -> list[JSONObject]:
        """The records decoded."""
        import json  # noqa: PLC0415 (only callers that decode need it)

        return [json.loads(r) for r in self.records]


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

    def to_json(self) -> dict[str, object]:
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

    def to_json(self) -> dict[str, object]:
        """JSON form for the API."""
        return {
            "paused": True,
            "by": self.by,
            "at": iso(self.at),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Eviction:
    """What the store's Redis does with keys once it reaches its memory limit.

    Read from ``INFO memory`` (managed Redis often refuses ``CONFIG``):
    ``policy`` is its ``maxmemory_policy`` and ``maxmemory`` its limit in bytes
    (0: none). When Redis would not say, both are None and ``unknown`` says
    why. ``where`` names the server (host:port or socket path), never its
    credentials.
    """

    where: str
    policy: str | None = None
    maxmemory: int | None = None
    unknown: str | None = None

    @property
    def possible(self) -> bool | None:
        """Whether Redis may drop keys on its own; None when it would not say.

        Only with a limit and a policy other than ``noeviction``: without a
        limit Redis never evicts, whatever the policy says.
        """
        if self.policy is None or self.maxmemory is None:
            return None
        return self.maxmemory > 0 and self.policy != "noeviction"

    def to_json(self) -> dict[str, object]:
        """JSON form for ``GET /readyz`` (the server is not named)."""
        return {
            "possible": self.possible,
            "maxmemory_policy": self.policy,
            "maxmemory": self.maxmemory,
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
    request: Mapping[str, JSONValue]
    status: Literal["pending", "approved", "rejected", "expired"] = "pending"
    decided_by: str = ""
    decided_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
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
