"""Both incident stores behave like one reference model (a Hypothesis state machine).

The same random sequence of creates, updates, lookups, listings with filters and
cursors, and id numbering runs against ``SqliteIncidentStore`` and
``RedisIncidentStore`` (a throwaway redis-server) and a dictionary model; every
answer must agree. Timestamps come from a clock that advances on every read.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from peers import run_redis

from receiver.store.incidents_base import IncidentQuery, IncidentRecord
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore
from receiver.store.sqlite import SqliteStore

IDS = st.sampled_from(["INC-a", "INC-b", "INC-c", "INC-d"])
KEYS = st.lists(st.sampled_from(["am:g1", "am:g2", "pdkey:x", "fp:1"]), max_size=3)
STATES = st.sampled_from(["triggered", "acknowledged", "mitigated", "resolved"])
SEVERITIES = st.sampled_from(["P0", "P1", "P2", "P3"])
# Fold marks: a few payloads and fingerprints, so that marks repeat; few kept,
# so that the oldest are forgotten often.
MARK = st.tuples(
    st.sampled_from(["0190aa", "0190ab", "0190ac"]),
    st.sampled_from(["fp1", "fp2", "pd-x:y"]),
)
MARKS = st.lists(MARK, max_size=4)
# Marks are kept this long after their last writing; each write that carries
# marks comes this many seconds after the last (often past the keep).
KEEP = timedelta(seconds=300)
LATER = st.sampled_from([0, 1, 120, 299, 300, 301, 900])


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=7)
        return self.now


@dataclass
class Model:
    records: dict[str, IncidentRecord] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    numbers: dict[str, int] = field(default_factory=dict)
    # Each mark's latest writing; the stores' clock for marks.
    marks: dict[tuple[str, str], datetime] = field(default_factory=dict)
    now: datetime = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

    def mark(self, marks: list[tuple[str, str]]) -> None:
        """A write with marks: each written now, those older than KEEP forgotten."""
        if not marks:
            return
        for one in marks:
            self.marks[one] = self.now
        self.marks = {m: at for m, at in self.marks.items() if at >= self.now - KEEP}

    def folded(self, marks: list[tuple[str, str]]) -> set[tuple[str, str]]:
        return set(self.marks) & set(marks)

    def create(
        self, record: IncidentRecord, marks: list[tuple[str, str]] = ()
    ) -> IncidentRecord | None:
        if record.id in self.records:
            return None
        if record.active and any(k in self.held for k in record.keys):
            return None
        self.mark(list(marks))
        self.seq += 1
        stored = replace(record, seq=self.seq)
        self.records[record.id] = stored
        if record.active:
            self.held.update(dict.fromkeys(record.keys, record.id))
        return stored

    def update(
        self, record: IncidentRecord, marks: list[tuple[str, str]] = ()
    ) -> IncidentRecord | None:
        old = self.records.get(record.id)
        if old is None or old.version != record.version - 1:
            return None
        if record.active and any(
            self.held.get(k, record.id) != record.id for k in record.keys
        ):
            return None
        self.mark(list(marks))
        self.held = {k: v for k, v in self.held.items() if v != record.id}
        if record.active:
            self.held.update(dict.fromkeys(record.keys, record.id))
        stored = replace(record, seq=old.seq)
        self.records[record.id] = stored
        return stored

    def page(self, query: IncidentQuery) -> list[str]:
        ordered = sorted(self.records.values(), key=lambda r: -r.seq)
        return [r.id for r in ordered if query.matches(r)]


def comparable(record: IncidentRecord | None) -> object:
    if record is None:
        return None
    return (
        record.id,
        tuple(sorted(record.keys)),
        record.state,
        record.severity,
        record.opened_at,
        record.version,
        record.watch,
        dict(record.body),
        record.seq,
    )


class IncidentStoreMachine(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.model = Model()
        # The SQLite store's own file hosting the incident tables (as the
        # service opens it): its writes join the store's group commit.
        self.folder = tempfile.TemporaryDirectory()
        self.host = SqliteStore(f"{self.folder.name}/receiver.db")
        self.stores = [
            SqliteIncidentStore(":memory:", keep_marks=KEEP, clock=self.marks_now),
            SqliteIncidentStore(
                self.host.path, keep_marks=KEEP, clock=self.marks_now, host=self.host
            ),
            RedisIncidentStore(
                self.redis_url,
                prefix=f"t{uuid.uuid4().hex[:8]}",
                keep_marks=KEEP,
                clock=self.marks_now,
            ),
        ]

    def marks_now(self) -> datetime:
        """The time both stores and the model write marks at (one per rule)."""
        return self.model.now

    def later(self, seconds: int) -> None:
        self.model.now += timedelta(seconds=seconds)

    def run(self, method: str, *args: object) -> list[object]:
        async def both() -> list[object]:
            return [await getattr(s, method)(*args) for s in self.stores]

        return self.loop.run_until_complete(both())

    def teardown(self) -> None:
        self.run("close")
        self.loop.run_until_complete(self.host.close())
        self.loop.close()
        self.folder.cleanup()

    @initialize()
    def start(self) -> None:
        self.model = Model()

    def _record(self, incident_id, keys, state, severity, version, watch):  # noqa: PLR0917
        return IncidentRecord(
            id=incident_id,
            keys=tuple(dict.fromkeys(keys)),
            state=state,
            severity=severity,
            opened_at=self.clock(),
            version=version,
            watch=watch,
            body={"id": incident_id, "title": "t", "n": version, "at": "x"},
        )

    @rule(
        incident_id=IDS,
        keys=KEYS,
        state=STATES,
        severity=SEVERITIES,
        watch=st.booleans(),
        marks=MARKS,
        later=LATER,
    )
    def create(self, incident_id, keys, state, severity, watch, marks, later) -> None:  # noqa: PLR0917
        self.later(later)
        record = self._record(incident_id, keys, state, severity, 1, watch)
        want = self.model.create(record, marks)
        for got in self.run("create", record, marks):
            assert comparable(got) == comparable(want)

    @precondition(lambda self: self.model.records)
    @rule(
        data=st.data(),
        keys=KEYS,
        state=STATES,
        severity=SEVERITIES,
        watch=st.booleans(),
        bump=st.sampled_from([0, 1, 1, 1, 2]),
        marks=MARKS,
        later=LATER,
    )
    def update(self, data, keys, state, severity, watch, bump, marks, later) -> None:  # noqa: PLR0917
        self.later(later)
        incident_id = data.draw(st.sampled_from(sorted(self.model.records)))
        old = self.model.records[incident_id]
        record = self._record(
            incident_id, keys, state, severity, old.version + bump, watch
        )
        want = self.model.update(record, marks)
        for got in self.run("update", record, marks):
            assert comparable(got) == comparable(want)

    @rule(marks=MARKS, later=LATER)
    def mark_folded(self, marks, later) -> None:
        self.later(later)
        self.model.mark(marks)
        self.run("mark_folded", marks)

    @rule(marks=st.lists(MARK, max_size=6))
    def folded(self, marks) -> None:
        want = self.model.folded(marks)
        for got in self.run("folded", marks):
            assert got == want

    @rule(incident_id=IDS)
    def get(self, incident_id) -> None:
        want = self.model.records.get(incident_id)
        for got in self.run("get", incident_id):
            assert comparable(got) == comparable(want)

    @rule(key=st.sampled_from(["am:g1", "am:g2", "pdkey:x", "fp:1", "none"]))
    def find(self, key) -> None:
        held = self.model.held.get(key)
        want = self.model.records[held] if held else None
        for got in self.run("find", key):
            assert comparable(got) == comparable(want)

    @rule(
        keys=st.lists(
            st.sampled_from(["am:g1", "am:g2", "pdkey:x", "fp:1", "none"]),
            max_size=3,
        )
    )
    def find_first(self, keys) -> None:
        want = next(
            (
                self.model.records[self.model.held[k]]
                for k in keys
                if self.model.held.get(k)
            ),
            None,
        )
        for got in self.run("find_first", keys):
            assert comparable(got) == comparable(want)

    @rule(
        day=st.sampled_from(["2026-11-26", "2026-11-27"]),
        keys=KEYS,
        state=STATES,
        marks=MARKS,
        later=LATER,
    )
    def create_numbered(self, day, keys, state, marks, later) -> None:
        self.later(later)
        # Only where it succeeds: on a taken key SQLite gives the number back
        # and Redis leaves a gap (test_create_numbered_with_a_taken_key).
        taken = self.model.numbers.get(day, 0) + 1
        record = self._record(
            f"INC-{day}-{taken:03d}", keys, state, "P1", 1, watch=True
        )
        free = record.id not in self.model.records and not (
            record.active and any(k in self.model.held for k in record.keys)
        )
        if not free:
            return
        want = self.model.create(record, marks)
        self.model.numbers[day] = taken
        for got in self.run(
            "create_numbered",
            day,
            lambda n: replace(record, id=f"INC-{day}-{n:03d}"),
            marks,
        ):
            assert comparable(got) == comparable(want)

    @rule(day=st.sampled_from(["2026-11-26", "2026-11-27"]))
    def number(self, day) -> None:
        self.model.numbers[day] = self.model.numbers.get(day, 0) + 1
        want = [self.model.numbers[day]] * len(self.stores)
        assert self.run("next_number", day) == want

    @rule(
        state=st.none() | STATES,
        severity=st.none() | SEVERITIES,
        since_back=st.none() | st.integers(0, 60),
        limit=st.integers(1, 3),
    )
    def page(self, state, severity, since_back, limit) -> None:
        since = None
        if since_back is not None:
            since = self.clock() - timedelta(seconds=since_back)
        query = IncidentQuery(state=state, severity=severity, since=since, limit=limit)
        want = self.model.page(query)
        for store in self.stores:
            seen: list[str] = []
            cursor = None
            for _ in range(20):
                records, cursor = self.loop.run_until_complete(
                    store.page(replace(query, before=cursor))
                )
                assert len(records) <= limit
                seen += [r.id for r in records]
                if cursor is None:
                    break
            assert seen == want, type(store).__name__

    @invariant()
    def watched_agree(self) -> None:
        want = sorted(i for i, r in self.model.records.items() if r.watch)
        for got in self.run("watched"):
            assert sorted(got) == want


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with run_redis(tmp_path_factory.mktemp("incident-redis")) as url:
        yield url


def test_incident_stores_agree_with_the_model(redis_url):
    """SQLite and Redis incident stores answer every call as the model does.

    Fold marks too: written only with a write that succeeds, each kept for
    ``KEEP`` after its last writing (forgotten at a later write).
    """
    IncidentStoreMachine.redis_url = redis_url
    runner = IncidentStoreMachine.TestCase
    runner.settings = settings(
        max_examples=60,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    runner().runTest()


async def test_create_numbered_with_a_taken_key(redis_url):
    """A taken key creates nothing; SQLite reuses the number, Redis skips it."""
    base = IncidentRecord(
        id="x",
        keys=("am:g",),
        state="triggered",
        severity="P1",
        opened_at=datetime(2026, 11, 26, 10, tzinfo=UTC),
        version=1,
        watch=True,
    )

    def build(n: int) -> IncidentRecord:
        return replace(base, id=f"INC-2026-11-26-{n:03d}")

    for store, after in (
        (SqliteIncidentStore(":memory:"), "INC-2026-11-26-002"),
        (
            RedisIncidentStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}"),
            "INC-2026-11-26-003",
        ),
    ):
        try:
            first = await store.create_numbered("2026-11-26", build)
            assert first is not None
            assert first.id == "INC-2026-11-26-001"
            assert await store.create_numbered("2026-11-26", build) is None
            done = replace(first, state="resolved", version=2)
            assert await store.update(done) is not None
            second = await store.create_numbered("2026-11-26", build)
            assert second is not None
            assert second.id == after
        finally:
            await store.close()
