"""A Redis incident store that refuses writes (failover, maxmemory) drops nothing.

The fold queue retries "the store" (``ReceiverError``) with a backoff and
drops nothing; anything else is a bug, retried one trace at a time and then
dropped. A READONLY reply (a replica promoted during a failover) or OOM
reached the queue as a bare ``redis.exceptions.ResponseError``, so every trace
queued during the failover window was dropped; it is the store being down now,
as the main store reads it.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio
import redis.exceptions
from incident_helpers import TickingClock, example, rulebook, traces

from receiver.incidents.service import IncidentService
from receiver.store.incidents_base import IncidentQuery
from receiver.store.incidents_redis import RedisIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


async def test_a_redis_failover_window_drops_no_incident(
    redis_url: str,
) -> None:
    """READONLY for a few writes (a failover), then writable: the incident opens."""
    clock = TickingClock()
    book = rulebook()
    prefix = f"review2-{uuid.uuid4().hex[:10]}"
    store = RedisIncidentStore(redis_url, prefix=prefix)
    real_create = store._create
    refusals = [3]

    async def create(*args: Any, **kwargs: Any) -> Any:
        if refusals[0]:
            refusals[0] -= 1
            msg = "You can't write against a read only replica."
            raise redis.exceptions.ReadOnlyError(msg)
        return await real_create(*args, **kwargs)

    store._create = create  # type: ignore[method-assign]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    service = IncidentService(
        store, clock=clock, rulebook=lambda: book, retry_sleep=sleep
    )
    try:
        await service.put(await traces(book, "alertmanager", example(SIEM), clock()))
        await service.drain()
        page, _ = await service.page(IncidentQuery())
        assert len(page) == 1, (
            f"dropped during the failover window (retry waits: {waits})"
        )
    finally:
        await service.aclose()
        client = redis.asyncio.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.unlink(*keys)
        await client.aclose()
