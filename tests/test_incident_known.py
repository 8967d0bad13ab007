"""Folding into incidents the service already knows: fewer reads, the same results.

A group that keeps firing is folded into the incident as the service last wrote
it, without reading it back; a change someone else made meanwhile (another
service on the same store: a replica, the edge's API) is caught by the version
check and folded again from what the store holds. The SQLite incident store's
reads take no write lock and its writes read nothing back.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid

import pytest
from incident_helpers import TickingClock, example, rulebook, traces
from peers import run_redis

from receiver.incidents.known import KnownIncidents
from receiver.incidents.lifecycle import observe
from receiver.incidents.model import State, evolve
from receiver.incidents.policy import DEFAULT_POLICY
from receiver.incidents.service import IncidentService
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore

LATENCY = "alertmanager/sark-high-latency.firing.json"


class CountingStore(SqliteIncidentStore):
    """Counts the lookups and reads the service makes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.lookups = 0
        self.reads = 0

    async def find_first(self, keys):
        self.lookups += 1
        return await super().find_first(keys)

    async def get(self, incident_id):
        self.reads += 1
        return await super().get(incident_id)


async def test_a_group_that_keeps_firing_is_folded_without_reading_it_again(tmp_path):
    """One lookup for the first batch; later batches fold into what was written."""
    clock = TickingClock()
    book = rulebook()
    store = CountingStore(str(tmp_path / "r.db"))
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        batch = await traces(book, "alertmanager", example(LATENCY), clock())
        for _ in range(5):
            [incident] = await service.observe(batch)
        assert store.lookups == 1
        assert store.reads == 0
        stored = await service.get(incident.id)
        assert stored == incident
        assert stored.version == 5
        assert {i.times for i in stored.ledger} == {5}
    finally:
        await service.aclose()


async def test_a_change_made_elsewhere_is_caught_and_folded_again(tmp_path):
    """Another service's acknowledgment meanwhile: kept, and the trace folded on top."""
    clock = TickingClock()
    book = rulebook()
    path = str(tmp_path / "r.db")
    worker = IncidentService(
        SqliteIncidentStore(path), clock=clock, rulebook=lambda: book
    )
    edge = IncidentService(
        SqliteIncidentStore(path), clock=clock, rulebook=lambda: book
    )
    try:
        batch = await traces(book, "alertmanager", example(LATENCY), clock())
        [opened] = await worker.observe(batch)
        await edge.acknowledge(opened.id, by="alice")
        [folded] = await worker.observe(batch)
        assert folded.state is State.ACKNOWLEDGED
        assert [e.kind for e in folded.timeline].count("acknowledged") == 1
        assert {i.times for i in folded.ledger} == {2}
        assert await worker.get(opened.id) == folded
    finally:
        await worker.aclose()
        await edge.aclose()


async def test_a_fold_that_changes_nothing_is_checked_against_the_store(tmp_path):
    """Nothing to write is concluded only once the store holds what was folded."""
    clock = TickingClock()
    book = rulebook()
    store = CountingStore(str(tmp_path / "r.db"))
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        batch = await traces(book, "alertmanager", example(LATENCY), clock())
        [opened] = await service.observe(batch)
        # A trace without matches changes nothing: the incident is not touched.
        unmatched = [t.__class__(**{**t.__dict__, "matches": ()}) for t in batch]
        assert await service.observe(unmatched) == []
        # A match without steps folds, changes nothing, and is verified.
        bare = [
            t.__class__(
                **{
                    **t.__dict__,
                    "matches": tuple(
                        m.__class__(**{**m.__dict__, "steps": ()}) for m in t.matches
                    ),
                }
            )
            for t in batch
        ]
        [same] = await service.observe(bare)
        assert same == opened
        assert store.reads == 1
    finally:
        await service.aclose()


def test_known_incidents_answer_by_the_first_key_only():
    """A later key may belong to another incident in the store: not a hit."""
    known = KnownIncidents(keep=2)
    clock = TickingClock()
    book = rulebook()
    batch = asyncio.run(traces(book, "alertmanager", example(LATENCY), clock()))
    from receiver.incidents.lifecycle import open_incident  # noqa: PLC0415

    a, _ = open_incident("INC-a", ["k1", "k2"], batch[0], clock(), DEFAULT_POLICY)
    known.remember(a)
    assert known.holding(["k1", "x"]) == a
    assert known.holding(["x", "k2"]) is None
    assert known.holding([]) is None
    b, _ = open_incident("INC-b", ["k3"], batch[0], clock(), DEFAULT_POLICY)
    c, _ = open_incident("INC-c", ["k4"], batch[0], clock(), DEFAULT_POLICY)
    known.remember(b)
    known.holding(["k1"])  # a used more recently than b
    known.remember(c)
    assert len(known) == 2
    assert known.holding(["k3"]) is None  # b, least recently used, dropped
    assert known.holding(["k1"]) == a
    resolved = evolve(a, state=State.RESOLVED)
    known.remember(resolved)
    assert known.holding(["k1"]) is None
    assert known.get("INC-a") is None
    known.remember(c)
    known.forget("INC-c")
    assert known.holding(["k4"]) is None


def test_a_repeated_fold_keeps_the_ledger_index_in_step():
    """The ledger index kept with an incident matches its ledger after each fold."""
    clock = TickingClock()
    book = rulebook()
    batch = asyncio.run(traces(book, "alertmanager", example(LATENCY), clock()))
    from receiver.incidents.lifecycle import open_incident  # noqa: PLC0415
    from receiver.incidents.model import ledger_index  # noqa: PLC0415

    incident, _ = open_incident("INC-a", ["k"], batch[0], clock(), DEFAULT_POLICY)
    for _ in range(3):
        incident, _ = observe(incident, batch[0], clock(), DEFAULT_POLICY)
        assert ledger_index(incident) == {i.key(): i for i in incident.ledger}
    assert {i.times for i in incident.ledger} == {4}


async def test_sqlite_reads_take_no_write_lock(tmp_path):
    """A lookup answers while another connection holds the file's write lock."""
    path = str(tmp_path / "r.db")
    clock = TickingClock()
    book = rulebook()
    service = IncidentService(
        SqliteIncidentStore(path), clock=clock, rulebook=lambda: book
    )
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        batch = await traces(book, "alertmanager", example(LATENCY), clock())
        [opened] = await service.observe(batch)
        reader = SqliteIncidentStore(path)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with asyncio.timeout(5):
                found = await reader.find_first(["nope", *opened.keys])
                assert found is not None
                assert found.id == opened.id
                assert await reader.watched() == [opened.id]
        finally:
            other.execute("ROLLBACK")
            await reader.close()
    finally:
        other.close()
        await service.aclose()


async def test_sqlite_reads_bodies_written_by_the_json_module(tmp_path):
    """A body an older receiver wrote with ``json.dumps`` (NaN included) still reads."""
    path = str(tmp_path / "r.db")
    store = SqliteIncidentStore(path)
    try:
        await store.watched()  # creates the tables
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(
            "INSERT INTO incidents(id, state, severity, opened_at, version, watch, "
            "keys, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "INC-old",
                "triggered",
                "P2",
                "2026-11-26T10:00:00.000000+00:00",
                3,
                1,
                json.dumps(["k"]),
                json.dumps({"id": "INC-old", "ratio": float("nan")}),
            ),
        )
        db.execute("INSERT INTO incident_keys(key, id) VALUES ('k', 'INC-old')")
        db.close()
        record = await store.find("k")
        assert record is not None
        assert record.version == 3
        assert record.body["id"] == "INC-old"
    finally:
        await store.close()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with run_redis(tmp_path_factory.mktemp("known-redis")) as url:
        yield url


async def test_redis_incidents_read_back_after_their_writes(redis_url):
    """A Redis incident (empty lists and all) reads back after create and update.

    The scripts once re-encoded records with cjson, which wrote ``[]`` as
    ``{}``: every later lookup, tick and API read of the incident failed.
    """
    clock = TickingClock()
    book = rulebook()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    worker = IncidentService(
        RedisIncidentStore(redis_url, prefix=prefix), clock=clock, rulebook=lambda: book
    )
    other = IncidentService(
        RedisIncidentStore(redis_url, prefix=prefix), clock=clock, rulebook=lambda: book
    )
    try:
        batch = await traces(book, "alertmanager", example(LATENCY), clock())
        [opened] = await worker.observe(batch)
        assert opened.breaches == frozenset()
        assert await worker.get(opened.id) == opened
        [again] = await worker.observe(batch)
        assert await other.get(opened.id) == again
        # A service that knows nothing of it reads it from the store.
        [third] = await other.observe(batch)
        assert third.version == again.version + 1
        assert {i.times for i in third.ledger} == {3}
        assert await other.tick() >= 0
    finally:
        await worker.aclose()
        await other.aclose()


def test_an_empty_object_stored_for_a_list_reads_as_empty():
    """Records cjson wrote (``"breaches": {}``) still read."""
    clock = TickingClock()
    book = rulebook()
    batch = asyncio.run(traces(book, "alertmanager", example(LATENCY), clock()))
    from receiver.incidents.lifecycle import open_incident  # noqa: PLC0415
    from receiver.incidents.model import Incident  # noqa: PLC0415

    incident, _ = open_incident("INC-a", ["k"], batch[0], clock(), DEFAULT_POLICY)
    raw = incident.to_json()
    for name in ("breaches", "escalations", "evidence", "contacts"):
        assert raw[name] == []
        raw[name] = {}
    assert Incident.from_json(raw) == incident
