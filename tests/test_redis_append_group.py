"""Redis appends arriving together go in one pipeline, each with its own outcome.

Real redis-servers of the tests' own. What is checked: many concurrent appends
all land, once each, in fewer round trips than appends; a Redis that lost its
scripts (SCRIPT FLUSH) still takes every append of a pipeline; a script error
for one append is that caller's alone; a Redis gone fails every waiting caller
as the store being down; an append whose caller gave up before it was sent is
not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio
import redis.exceptions
from peers import run_redis

from receiver.errors import StoreUnavailableError
from receiver.store.base import AlertState, JournalEntry
from receiver.store.redis import RedisStore

T0 = datetime(2026, 12, 7, 7, 30, tzinfo=UTC)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[str]:
    with run_redis(tmp_path) as url:
        yield url


def entry(n: int) -> JournalEntry:
    return JournalEntry(f"p-{n:04d}", "alertmanager", T0, b'{"alerts": []}')


def state(n: int) -> AlertState:
    return AlertState(f"fp-{n}", "firing", T0, T0)


class Counting:
    """Counts the pipelines and single commands the store's client sends."""

    def __init__(self, store: RedisStore) -> None:
        self.pipelines = 0
        self.sizes: list[int] = []
        client = store._redis
        make = client.pipeline

        def pipeline(*args: object, **kwargs: object) -> object:
            pipe = make(*args, **kwargs)  # type: ignore[arg-type]
            execute = pipe.execute

            async def counted(*a: object, **k: object) -> object:
                self.pipelines += 1
                self.sizes.append(len(pipe.command_stack))
                return await execute(*a, **k)  # type: ignore[arg-type]

            pipe.execute = counted  # type: ignore[method-assign]
            return pipe

        client.pipeline = pipeline  # type: ignore[method-assign]


async def journal_ids(url: str, prefix: str) -> list[str]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        rows = await client.xrange(f"{prefix}:journal")
        return sorted(fields["id"] for _, fields in rows)
    finally:
        await client.aclose()


async def test_concurrent_appends_share_pipelines_and_land_once(
    own_redis: str,
) -> None:
    store = RedisStore(own_redis, prefix="g")
    counting = Counting(store)
    try:
        await store.append(entry(0), [state(0)])  # alone: at once, no pipeline
        assert counting.pipelines == 0
        await asyncio.gather(
            *(store.append(entry(n), [state(n)]) for n in range(1, 201))
        )
        # Appending one again changes nothing (the script skips what it holds).
        await store.append(entry(7), [state(7)])
    finally:
        await store.close()
    assert await journal_ids(own_redis, "g") == [f"p-{n:04d}" for n in range(201)]
    assert counting.pipelines >= 1
    assert sum(counting.sizes) <= 200
    assert max(counting.sizes) > 1


async def test_a_redis_that_lost_its_scripts_takes_every_append(
    own_redis: str,
) -> None:
    store = RedisStore(own_redis, prefix="f")
    client = redis.asyncio.Redis.from_url(own_redis)
    try:
        await store.append(entry(0), [])  # the script is loaded now
        await client.script_flush()
        await asyncio.gather(
            *(store.append(entry(n), [state(n)]) for n in range(1, 50))
        )
    finally:
        await store.close()
        await client.aclose()
    assert await journal_ids(own_redis, "f") == [f"p-{n:04d}" for n in range(50)]


async def test_one_appends_error_is_its_own(own_redis: str) -> None:
    """A payload key of the wrong type fails that append only."""
    store = RedisStore(own_redis, prefix="e")
    client = redis.asyncio.Redis.from_url(own_redis)
    try:
        await store.append(entry(0), [])
        # The alert hash of payload 3's state is a list: its script fails.
        await client.rpush("e:alert:fp-3", "not a hash")
        outcomes = await asyncio.gather(
            *(store.append(entry(n), [state(n)]) for n in range(1, 8)),
            return_exceptions=True,
        )
    finally:
        await store.close()
        await client.aclose()
    failed = [n for n, o in zip(range(1, 8), outcomes, strict=True) if o is not None]
    assert failed == [3]
    assert isinstance(outcomes[2], redis.exceptions.ResponseError)
    # Payload 3's script failed part-way (the hash was written before the
    # state); every other one landed whole.
    ids = await journal_ids(own_redis, "e")
    assert {f"p-{n:04d}" for n in (0, 1, 2, 4, 5, 6, 7)} <= set(ids)


async def test_a_redis_gone_fails_every_waiting_caller_as_down(
    tmp_path: Path,
) -> None:
    with run_redis(tmp_path) as url:
        store = RedisStore(url, prefix="d", socket_timeout=1.0)
        await store.append(entry(0), [])
    # The server is gone now.
    try:
        outcomes = await asyncio.gather(
            *(store.append(entry(n), []) for n in range(1, 20)),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert all(isinstance(o, StoreUnavailableError) for o in outcomes), outcomes


async def test_an_append_given_up_before_it_was_sent_is_not_sent(
    own_redis: str,
) -> None:
    """Queued behind a pipeline on its way, its caller gone: it is never sent."""
    store = RedisStore(own_redis, prefix="c")
    queue = Noting()
    on_its_way, go_on = asyncio.Event(), asyncio.Event()
    send = store._send_batch

    async def held(batch: list) -> list[object]:
        on_its_way.set()
        await go_on.wait()
        return await send(batch)

    try:
        await store.append(entry(0), [])
        store._append_queue = queue
        store._send_batch = held  # type: ignore[method-assign]
        first = asyncio.ensure_future(store.append(entry(1), []))
        await on_its_way.wait()  # the first is taken from the queue, held
        queue.grew.clear()
        second = asyncio.ensure_future(store.append(entry(2), []))
        await queue.grew.wait()  # the second waits behind it
        second.cancel()
        go_on.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await store.append(entry(3), [])
    finally:
        await store.close()
    ids = await journal_ids(own_redis, "c")
    assert "p-0001" in ids
    assert "p-0003" in ids
    assert "p-0002" not in ids


class Noting(list):  # type: ignore[type-arg]
    """The store's queue of appends, telling when one is added."""

    def __init__(self) -> None:
        super().__init__()
        self.grew = asyncio.Event()

    def append(self, item: object) -> None:
        super().append(item)
        self.grew.set()
