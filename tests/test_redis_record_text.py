"""The Redis store keeps decision records in the JSON text the SQLite store writes.

``record_text`` (msgspec: compact UTF-8, several times cheaper than
``json.dumps``) on both stores: the same record reads back the same, and the
line in the decisions list is its time and exactly that text.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio

from receiver.store.base import JournalEntry
from receiver.store.records import record_text
from receiver.store.redis import RedisStore
from receiver.store.redis.codec import _record_time

AT = datetime(2026, 12, 7, 7, 40, tzinfo=UTC)
RECORD = {
    "fingerprint": "fp-1",
    "payload_id": "p-1",
    "decided_at": "2026-12-07T07:40:00+00:00",
    "labels": {"alertname": "Überlast", "team": "équipe 🚨"},
    "matches": [],
}


async def test_a_record_is_stored_as_record_text(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="rt")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await store.append(JournalEntry("p-1", "alertmanager", AT, b"{}"), [])
        await store.record_batch([("p-1", [RECORD])])
        lines = await client.lrange("rt:decisions", 0, -1)
    finally:
        await store.close()
        await client.aclose()
    want = f"{_record_time(RECORD):013d} {record_text(RECORD)}"
    assert [line.decode() for line in lines] == [want]
    assert "Überlast" in want  # UTF-8, not \\u escapes
