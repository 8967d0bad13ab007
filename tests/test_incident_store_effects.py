"""Both incident stores keep pending effects beside the incident, atomically.

Effects are written only with a write that succeeds, claimed by the writer;
claimable by anyone once that claim lapses (one attempt more each time), never
while it holds; renewed, handed back, or removed by ``update(done=...)`` or
``finish_effects`` only for the latest claim. SQLite files and Redis data of
an older receiver (no effects table or keys) open with nothing pending. Times
are the caller's.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from receiver.store.incidents_base import (
    ClaimedEffect,
    IncidentRecord,
    IncidentStore,
    PendingEffect,
)
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


def _record(version: int = 1, *effects: PendingEffect) -> IncidentRecord:
    return IncidentRecord(
        id="INC-1",
        keys=("am:g",),
        state="triggered",
        severity="P1",
        opened_at=T0,
        version=version,
        watch=True,
        body={"id": "INC-1"},
        effects=effects,
    )


def _effect(n: int, version: int = 1) -> PendingEffect:
    return PendingEffect(f"INC-1:{version}:{n}", f'{{"n":{n}}}', T0 + LEASE)


@pytest.fixture(params=["sqlite", "redis"])
async def opened(
    request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[Callable[..., IncidentStore]]:
    """Opens the same store (both kinds) on each call; all closed after."""
    made: list[IncidentStore] = []
    if request.param == "sqlite":
        path = str(tmp_path / "incidents.db")

        def sqlite(*, reclaim: bool = False) -> IncidentStore:
            made.append(SqliteIncidentStore(path, reclaim=reclaim))
            return made[-1]

        yield sqlite
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:8]}"

        def redis(*, reclaim: bool = False) -> IncidentStore:
            del reclaim  # replicas: nothing is taken over at start
            made.append(RedisIncidentStore(url, prefix=prefix))
            return made[-1]

        yield redis
    for store in made:
        await store.close()


async def test_effects_are_written_with_the_incident_and_claimed_by_the_writer(
    opened,
):
    """Not claimable while the writer's claim holds; claimable after, attempt 2."""
    store = opened()
    assert await store.create(_record(1, _effect(0), _effect(1))) is not None
    assert await store.claim_effects(T0 + LEASE - timedelta(seconds=1), LEASE, 10) == []
    got = await store.claim_effects(T0 + LEASE, LEASE, 10)
    assert [(e.id, e.incident_id, e.body, e.attempts) for e in got] == [
        ("INC-1:1:0", "INC-1", '{"n":0}', 2),
        ("INC-1:1:1", "INC-1", '{"n":1}', 2),
    ]
    # Claimed again for a lease: not claimable by a second replica meanwhile.
    assert await opened().claim_effects(T0 + LEASE, LEASE, 10) == []


async def test_a_refused_write_writes_no_effects(opened):
    """A version conflict or a taken key writes nothing pending."""
    store = opened()
    assert await store.create(_record(1)) is not None
    assert await store.update(_record(3, _effect(0, 3))) is None  # not the next
    assert await store.create(replace(_record(1, _effect(0)), id="INC-2")) is None
    assert await store.claim_effects(T0 + 10 * LEASE, LEASE, 10) == []


async def test_done_effects_go_with_the_write_that_records_them(opened):
    """``update(done=...)`` removes them atomically, only for the latest claim."""
    store = opened()
    await store.create(_record(1, _effect(0), _effect(1)))
    [first, second] = await store.claim_effects(T0 + LEASE, LEASE, 10)
    # A stale claim (an older attempt number) removes nothing.
    stale = replace(second, attempts=1)
    assert await store.update(_record(2), done=[first, stale]) is not None
    [left] = await store.claim_effects(T0 + 3 * LEASE, LEASE, 10)
    assert (left.id, left.attempts) == (second.id, 3)
    await store.finish_effects([left])
    assert await store.claim_effects(T0 + 10 * LEASE, LEASE, 10) == []


async def test_a_retry_waits_until_due_and_only_for_its_claim(opened):
    """``retry_effect`` moves the due time of the caller's claim, not another's."""
    store = opened()
    await store.create(_record(1, _effect(0)))
    [claimed] = await store.claim_effects(T0 + LEASE, LEASE, 10)
    assert await store.retry_effect(claimed, T0 + LEASE + timedelta(seconds=30))
    assert (
        await store.claim_effects(T0 + LEASE + timedelta(seconds=29), LEASE, 10) == []
    )
    [again] = await store.claim_effects(T0 + LEASE + timedelta(seconds=30), LEASE, 10)
    assert again.attempts == 3
    # The older claim's hand-back no longer moves the newer one's lease.
    assert not await store.retry_effect(claimed, T0 + LEASE + timedelta(seconds=31))
    later = T0 + LEASE + timedelta(seconds=31)
    assert await store.claim_effects(later, LEASE, 10) == []


async def test_a_renewal_moves_only_the_latest_claim_in_flight(opened):
    """``renew_effect`` keeps the caller's claim; not one taken, handed back, done."""
    store = opened()
    await store.create(_record(1, _effect(0)))
    writers = ClaimedEffect("INC-1:1:0", "INC-1", '{"n":0}', 1)
    assert await store.renew_effect(writers, T0 + 2 * LEASE)
    assert (
        await opened().claim_effects(T0 + 2 * LEASE - timedelta(seconds=1), LEASE, 10)
        == []
    )
    # Lapsed, not claimed by anyone since: still the writer's to renew.
    assert await store.renew_effect(writers, T0 + 3 * LEASE)
    [taken] = await opened().claim_effects(T0 + 3 * LEASE, LEASE, 10)
    assert taken.attempts == 2
    # Claimed by another since: the writer's renewal moves nothing.
    assert not await store.renew_effect(writers, T0 + 10 * LEASE)
    [again] = await store.claim_effects(T0 + 4 * LEASE, LEASE, 10)
    assert again.attempts == 3
    assert await store.retry_effect(again, T0 + 5 * LEASE)
    assert not await store.renew_effect(again, T0 + 10 * LEASE)  # handed back
    [last] = await store.claim_effects(T0 + 5 * LEASE, LEASE, 10)
    await store.finish_effects([last])
    assert not await store.renew_effect(last, T0 + 10 * LEASE)  # done
    assert await store.claim_effects(T0 + 20 * LEASE, LEASE, 10) == []


async def test_reclaim_takes_a_dead_process_claims_on_one_sqlite_instance(opened):
    """SQLite with ``reclaim``: a dead worker's claims due at once; Redis: none."""
    await opened(reclaim=True).create(_record(1, _effect(0)))
    successor = opened(reclaim=True)
    reclaimed = await successor.reclaim_effects(T0)
    got = await successor.claim_effects(T0, LEASE, 10)
    if isinstance(successor, SqliteIncidentStore):
        assert reclaimed == 1
        assert [e.attempts for e in got] == [2]
    else:
        assert reclaimed == 0
        assert got == []


async def test_an_older_sqlite_file_opens_with_nothing_pending(tmp_path):
    """A file written before effects were kept gets the table, empty."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE incidents (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL, severity TEXT NOT NULL, opened_at TEXT NOT NULL,
            version INTEGER NOT NULL, watch INTEGER NOT NULL, keys TEXT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE TABLE incident_keys (key TEXT PRIMARY KEY, id TEXT NOT NULL);
        CREATE TABLE incident_numbers (day TEXT PRIMARY KEY, last INTEGER NOT NULL);
        INSERT INTO incidents(id, state, severity, opened_at, version, watch,
            keys, body)
        VALUES ('INC-1', 'triggered', 'P1', '2026-11-26T10:00:00.000000+00:00',
            1, 1, '["am:g"]', '{"id":"INC-1"}');
        INSERT INTO incident_keys VALUES ('am:g', 'INC-1');
        """
    )
    db.commit()
    db.close()
    store = SqliteIncidentStore(str(path), reclaim=True)
    try:
        assert await store.reclaim_effects(T0) == 0
        assert await store.claim_effects(T0 + 10 * LEASE, LEASE, 10) == []
        assert await store.update(_record(2, _effect(0, 2))) is not None
        [got] = await store.claim_effects(T0 + LEASE, LEASE, 10)
        assert got.id == "INC-1:2:0"
    finally:
        await store.close()


async def test_older_redis_data_has_nothing_pending(redis_url):
    """Incidents written by an older receiver (no effect keys) claim nothing."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisIncidentStore(redis_url, prefix=prefix)
    try:
        assert await store.create(_record(1)) is not None  # no effects: old shape
        assert await store.claim_effects(T0 + 10 * LEASE, LEASE, 10) == []
        assert await store.update(_record(2, _effect(0, 2))) is not None
        [got] = await store.claim_effects(T0 + LEASE, LEASE, 10)
        assert got.id == "INC-1:2:0"
    finally:
        await store.close()


async def test_reclaim_leaves_live_claims_alone(tmp_path):
    """Its own claims and an edge's (not deciding) are not taken over; they lapse."""
    path = str(tmp_path / "incidents.db")
    worker = SqliteIncidentStore(path, reclaim=True)
    edge = SqliteIncidentStore(path)
    try:
        await worker.create(_record(1, _effect(0)))
        await edge.update(_record(2, _effect(0, 2)))
        assert await worker.reclaim_effects(T0) == 0
        assert await worker.claim_effects(T0, LEASE, 10) == []
        got = await worker.claim_effects(T0 + LEASE, LEASE, 10)
        assert sorted(e.id for e in got) == ["INC-1:1:0", "INC-1:2:0"]
    finally:
        await worker.close()
        await edge.close()


async def test_an_effects_table_without_claim_holders_is_brought_up_to_date(
    tmp_path,
):
    """A file whose effects table predates the holder column opens and claims."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE incident_effects (
            id TEXT PRIMARY KEY, incident TEXT NOT NULL, body TEXT NOT NULL,
            due REAL NOT NULL, attempts INTEGER NOT NULL, claimed INTEGER NOT NULL
        );
        """
    )
    db.execute(
        "INSERT INTO incident_effects VALUES ('INC-1:1:0', 'INC-1', '{}', ?, 1, 1)",
        ((T0 + LEASE).timestamp(),),
    )
    db.commit()
    db.close()
    store = SqliteIncidentStore(str(path), reclaim=True)
    try:
        assert await store.reclaim_effects(T0) == 0  # holder unknown: it lapses
        [got] = await store.claim_effects(T0 + LEASE, LEASE, 10)
        assert (got.id, got.attempts) == ("INC-1:1:0", 2)
    finally:
        await store.close()
