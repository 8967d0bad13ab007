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
        self, record: IncidentRecord, folded: Sequence[Mark] = ()
    ) -> IncidentRecord | None:
        """Replace an incident if its version is the next one; else None."""
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
