"""A delivery whose lease lapsed finishes after another claim parked it, and back.

And a holder whose lease lapsed can no longer move or park what the next
holder claimed: its hand-back, renewal and parking act on its own claim only.

Two holders of one row (a stalled replica whose lease lapsed, and the one that
claimed it next) must leave no phantom behind on either store: no parked entry
for a row that is gone (it would count in ``receiver_sink_outbox_parked``
forever), no outcome of a deleted row.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio
from peers import run_redis

from receiver.store.outbox import OutboxRow, RedisOutbox, SqliteOutbox

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)
LEASE = timedelta(minutes=1)


async def leftovers(backend: str, url: str, path: str) -> list[str]:
    """Outbox state that belongs to no row."""
    if backend == "redis":
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        keys = sorted([k async for k in client.scan_iter(match="receiver:outbox:*")])
        keys = [k for k in keys if not k.startswith("receiver:outbox:seen:")]
        parked = await client.hgetall("receiver:outbox:parked")
        await client.aclose()
        return [*keys, *(f"parked:{k}" for k in parked)]
    db = sqlite3.connect(path)
    rows = db.execute("SELECT id, sink FROM sink_outbox_done").fetchall()
    rows += db.execute("SELECT id, parked FROM sink_outbox").fetchall()
    db.close()
    return [f"{a}:{b}" for a, b in rows]


async def two_holders(
    outbox: RedisOutbox | SqliteOutbox,
) -> tuple[OutboxRow, OutboxRow, datetime]:
    """One row claimed twice: a holder whose lease lapsed, and the next one."""
    await outbox.put([("p1:0:fp", "owner", "{}", ["slack"])], NOW)
    stalled = await outbox.claim(NOW, LEASE)  # its lease lapses
    assert stalled is not None
    later = NOW + 2 * LEASE
    other = await outbox.claim(later, LEASE)
    assert other is not None
    assert other.id == stalled.id
    return stalled, other, later


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("order", ["park_then_finish", "finish_then_park"])
async def test_two_holders_of_a_row_leave_no_phantom(backend, order, tmp_path):
    with run_redis(tmp_path) as url:
        path = str(tmp_path / "o.db")
        outbox = RedisOutbox(url) if backend == "redis" else SqliteOutbox(path)
        stalled, other, later = await two_holders(outbox)
        if order == "park_then_finish":
            # The next holder gives up on it; the stalled one then finishes.
            await outbox.park(other.id, "claimed 5 times without finishing")
            await outbox.progress(stalled.id, "slack", '{"status": "sent"}')
            await outbox.finish(stalled.id)
        else:
            # The next holder delivers it; the stalled one then notes and parks.
            await outbox.finish(other.id)
            await outbox.progress(stalled.id, "slack", '{"status": "sent"}')
            await outbox.park(stalled.id, "failed 5 times")
        assert await outbox.counts() == (0, 0)
        assert await outbox.parked(10) == []
        assert await outbox.retry_parked(stalled.id, later) is False
        assert await outbox.claim(later + LEASE * 10, LEASE) is None
        await outbox.close()
        assert await leftovers(backend, url, path) == []


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("act", ["release", "extend", "park"])
async def test_a_lapsed_holder_cannot_touch_the_next_claim(backend, act, tmp_path):
    """The stalled holder hands back, renews or parks: the next claim stands.

    Before claims were numbered, its hand-back made the row due at once (a
    third replica claimed it while the second still delivered), its renewal
    moved the second's lease, its parking set aside a delivery in flight.
    """
    with run_redis(tmp_path) as url:
        path = str(tmp_path / "o.db")
        outbox = RedisOutbox(url) if backend == "redis" else SqliteOutbox(path)
        stalled, other, later = await two_holders(outbox)
        assert other.claim == stalled.claim + 1
        # Each says it did nothing: the stalled holder's delivery stops.
        if act == "release":
            assert not await outbox.release(stalled.id, later, claim=stalled.claim)
        elif act == "extend":
            # Moved back (to a due time already past): a renewal of old.
            assert not await outbox.extend(stalled.id, later, claim=stalled.claim)
        else:
            assert not await outbox.park(
                stalled.id, "failed 5 times", claim=stalled.claim
            )
        # The second holder's lease holds: nobody else claims the row.
        assert await outbox.claim(later + LEASE / 2, LEASE) is None
        assert await outbox.counts() == (1, 0)
        # Its own claim still acts.
        assert await outbox.extend(other.id, later + LEASE, claim=other.claim)
        assert await outbox.release(other.id, later, claim=other.claim)
        third = await outbox.claim(later + LEASE / 2, LEASE)
        assert third is not None
        assert third.claim == other.claim + 1
        assert await outbox.park(third.id, "failed 5 times", claim=third.claim)
        assert await outbox.counts() == (0, 1)
        # Parked, or finished: no longer claimed, so not renewed.
        assert not await outbox.extend(third.id, later + LEASE, claim=third.claim)
        await outbox.finish(third.id)
        assert not await outbox.extend(third.id, later + LEASE, claim=third.claim)
        await outbox.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_lapsed_claim_nobody_took_is_still_renewed(backend, tmp_path):
    """A renewal that comes after the lease lapsed succeeds if nobody claimed it."""
    with run_redis(tmp_path) as url:
        path = str(tmp_path / "o.db")
        outbox = RedisOutbox(url) if backend == "redis" else SqliteOutbox(path)
        await outbox.put([("p1:0:fp", "owner", "{}", ["slack"])], NOW)
        row = await outbox.claim(NOW, LEASE)
        assert row is not None
        late = NOW + 2 * LEASE
        assert await outbox.extend(row.id, late + LEASE, claim=row.claim)
        assert await outbox.claim(late, LEASE) is None  # the renewal holds it
        await outbox.close()


async def test_an_outbox_file_of_an_older_version_numbers_its_claims(tmp_path):
    """A file without the claims column gets it; its waiting rows are claimed."""
    path = str(tmp_path / "o.db")
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE sink_outbox (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
        "trace TEXT NOT NULL, sinks TEXT NOT NULL, attempts INTEGER NOT NULL "
        "DEFAULT 0, due TEXT NOT NULL, parked TEXT NOT NULL DEFAULT '', "
        "claimed INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "INSERT INTO sink_outbox(id, owner, trace, sinks, attempts, due) "
        "VALUES ('p1:0:fp', 'owner', '{}', '[\"slack\"]', 2, '2026-11-26')"
    )
    db.commit()
    db.close()
    outbox = SqliteOutbox(path)
    row = await outbox.claim(NOW, LEASE)
    assert row is not None
    assert (row.attempts, row.claim) == (3, 1)
    await outbox.release(row.id, NOW, claim=row.claim)
    assert (await outbox.claim(NOW, LEASE)) is not None
    await outbox.close()
