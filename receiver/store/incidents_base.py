"""``IncidentStore``: where incidents live, behind a small protocol of its own.

Implementations: ``incidents_sqlite.SqliteIncidentStore`` (its own tables and
connection, in the same file as the SQLite store) and
``incidents_redis.RedisIncidentStore`` (its own keys and client). The store keeps
each incident as an opaque JSON body plus the few columns it filters on; it never
imports ``receiver.incidents``. ``receiver.incidents.service`` is the caller.

Rules every implementation keeps (``tests/test_incident_store.py`` checks both
against one reference model):

- ``create`` refuses an id that exists, or a key an active incident holds.
- ``update`` succeeds only if ``record.version`` is the stored version plus one
  (optimistic concurrency across replicas); a resolved record releases its keys.
- ``find(key)`` returns the active incident holding ``key``; ``find_first(keys)``
  what the first of ``keys`` that finds one finds (one round trip on Redis).
- ``page`` lists newest first (by creation order), filtered by state, severity
  and opened-since, ``limit`` at a time; the cursor is the last ``seq`` returned.
- ``watched`` lists ids the ticker must still visit (``record.watch``).
- Fold marks: ``create``, ``create_numbered`` and ``update`` write the marks
  given with them (which traces, by payload id and fingerprint, the write
  folds in) in the same atomic write, only if the write succeeds;
  ``mark_folded`` writes marks alone; ``folded`` says which of some marks
  were written. A mark is kept for ``keep_marks`` after it was last
  written (by the store's clock), then forgotten at a later mark write.
- Pending effects (what a change asks to be told or done: announcements,
  PagerDuty calls): ``create``, ``create_numbered`` and ``update`` write the
  record's ``effects`` beside it in the same atomic write, only if the write
  succeeds, each claimed by the writer until its ``until`` (its first
  attempt); ``update(done=...)`` removes effects in the same write (the
  timeline line saying what was sent, and the effect no longer pending).
  ``claim_effects`` claims those whose lease lapsed (a writer that died, or a
  retry that is due), counting an attempt each time; ``renew_effect`` moves
  the lapse of a claim still being carried out, ``retry_effect`` hands one
  back for later and ``finish_effects`` removes some, all three only while the
  caller's claim is the latest. ``reclaim_effects`` (SQLite, one instance, at
  start) makes the effects a previous deciding process claimed due at once
  (never a live edge's, nor this process's own). Every time is the caller's
  (its injected clock). A store written by an older receiver holds no
  pending effects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from receiver.model import JSONValue, freeze

# (payload id, alert fingerprint): one trace whose fold an incident write holds.
# A payload decided again after a crash (its traces were folded, its decision
# not recorded yet) folds nothing twice: the service skips traces marked so.
Mark = tuple[str, str]

# How long a mark is kept: past the time a payload folded but not recorded
# (its worker killed) takes to be decided again, a journal lease or less.
LEASES_KEPT = 3


def marks_kept_for(lease: timedelta) -> timedelta:
    """How long fold marks are kept with this journal lease (three leases)."""
    return LEASES_KEPT * lease


KEEP_MARKS = marks_kept_for(timedelta(minutes=5))  # the default lease


@dataclass(frozen=True)
class PendingEffect:
    """An effect written with an incident change, opaque to the store.

    ``id``: unique per incident version (``<incident>:<version>:<n>``);
    ``body``: the effect as JSON text (``receiver.incidents.effects``);
    ``until``: the writer's claim on it lapses then.
    """

    id: str
    body: str
    until: datetime


@dataclass(frozen=True)
class ClaimedEffect:
    """A pending effect claimed by ``claim_effects``.

    ``attempts`` counts claims, this one included (the writer's own is the
    first); it is also the claim's token: ``retry_effect`` and
    ``finish_effects`` act only while it is still the latest claim.
    """

    id: str
    incident_id: str
    body: str
    attempts: int


@dataclass(frozen=True)
class IncidentRecord:
    """One incident as stored: filter columns and the full JSON body."""

    id: str
    keys: tuple[str, ...]
    state: str
    severity: str
    opened_at: datetime
    version: int
    watch: bool
    body: Mapping[str, JSONValue] = field(default_factory=lambda: freeze({}))
    seq: int = 0  # creation order, set by the store
    # Written beside this version in the same write (claimed by the writer);
    # never read back with the record.
    effects: tuple[PendingEffect, ...] = ()

    @property
    def active(self) -> bool:
        """Not resolved."""
        return self.state != "resolved"


@dataclass(frozen=True)
class IncidentQuery:
    """Filters and a cursor for listing incidents."""

    state: str | None = None
    severity: str | None = None
    since: datetime | None = None
    limit: int = 50
    before: int | None = None  # cursor: only records with seq below this

    def matches(self, record: IncidentRecord) -> bool:
        """Whether ``record`` passes the filters (not the cursor)."""
        return (
            (self.state is None or record.state == self.state)
            and (self.severity is None or record.severity == self.severity)
            and (self.since is None or record.opened_at >= self.since)
        )


class IncidentReader(Protocol):
    """Incidents, read and nothing else: what ``receiver report`` reads.

    ``incidents_sqlite.SqliteIncidentReader`` writes nothing to the file it
    reads; an ``IncidentStore`` is one too (the Redis one's ``get`` is a GET).
    """

    async def get(self, incident_id: str) -> IncidentRecord | None:
        """The incident, or None."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class IncidentStore(Protocol):
    """Persistence for incidents (see the module docstring for the rules)."""

    async def next_number(self, day: str) -> int:
        """1, 2, 3... per ``day`` (``YYYY-MM-DD``), for ``INC-<day>-NNN`` ids."""
        ...

    async def create(
        self, record: IncidentRecord, folded: Sequence[Mark] = ()
    ) -> IncidentRecord | None:
        """Store a new incident; None if the id exists or a key is taken."""
        ...

    async def create_numbered(
        self,
        day: str,
        build: Callable[[int], IncidentRecord],
        folded: Sequence[Mark] = (),
    ) -> IncidentRecord | None:
        """``next_number(day)`` and ``create(build(number))`` at once, if it can.

        None if a key is taken (the number is then not used up where the store
        can avoid it). ``build`` must be pure: it may run in another thread.
        """
        ...

    async def update(
        self,
        record: IncidentRecord,
        folded: Sequence[Mark] = (),
        *,
        done: Sequence[ClaimedEffect] = (),
    ) -> IncidentRecord | None:
        """Replace an incident if its version is the next one; else None.

        ``done``: pending effects removed in the same write (each only while
        the given claim is its latest).
        """
        ...

    async def claim_effects(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[ClaimedEffect]:
        """Claim up to ``limit`` effects due by ``now`` for ``lease``, oldest first."""
        ...

    async def renew_effect(self, effect: ClaimedEffect, until: datetime) -> bool:
        """Keep a claimed effect until ``until``; False if it is not ours now.

        Only while ``effect`` is its latest claim and not handed back: once
        another claim was made (its lease lapsed), or it was handed back,
        reclaimed or finished, nothing changes.
        """
        ...

    async def retry_effect(self, effect: ClaimedEffect, due: datetime) -> bool:
        """Hand a claimed effect back: claimable again at ``due``.

        False (nothing changed) if ``effect`` is not its latest claim now.
        """
        ...

    async def finish_effects(self, effects: Sequence[ClaimedEffect]) -> None:
        """Remove claimed effects (carried out, or given up)."""
        ...

    async def reclaim_effects(self, now: datetime) -> int:
        """Make effects claimed by a previous process due at ``now`` (how many).

        Only where this process is known to be the store's one instance (the
        SQLite store opened to take a previous process's claims over); else 0.
        Only that previous deciding process's claims: an edge process beside
        it, and this process itself, may be carrying theirs out right now.
        """
        ...

    async def mark_folded(self, folded: Sequence[Mark]) -> None:
        """Write fold marks alone (traces folded with no incident write)."""
        ...

    async def folded(self, marks: Sequence[Mark]) -> set[Mark]:
        """Those of ``marks`` that were written (and not forgotten yet)."""
        ...

    async def get(self, incident_id: str) -> IncidentRecord | None:
        """The incident, or None."""
        ...

    async def find(self, key: str) -> IncidentRecord | None:
        """The active incident holding ``key``, or None."""
        ...

    async def find_first(self, keys: Sequence[str]) -> IncidentRecord | None:
        """``find`` of each key in turn: the first active incident, or None."""
        ...

    async def page(
        self, query: IncidentQuery
    ) -> tuple[list[IncidentRecord], int | None]:
        """Matching incidents, newest first, and the cursor for the next page."""
        ...

    async def watched(self) -> list[str]:
        """Ids of incidents the ticker still has to visit."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
