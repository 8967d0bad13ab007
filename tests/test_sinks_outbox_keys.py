"""A delivery whose lease lapsed finishes after another claim parked it, and back.

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

from receiver.store.outbox import RedisOutbox, SqliteOutbox

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


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("order", ["park_then_finish", "finish_then_park"])
async def test_two_holders_of_a_row_leave_no_phantom(backend, order, tmp_path):
    with run_redis(tmp_path) as url:
        path = str(tmp_path / "o.db")
        outbox = RedisOutbox(url) if backend == "redis" else SqliteOutbox(path)
        await outbox.put([("p1:0:fp", "owner", "{}", ["slack"])], NOW)
        stalled = await outbox.claim(NOW, LEASE)  # its lease lapses
        assert stalled is not None
        later = NOW + 2 * LEASE
        other = await outbox.claim(later, LEASE)
        assert other is not None
        assert other.id == stalled.id
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
