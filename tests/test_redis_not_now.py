"""Redis saying "not now" is the store down for now, not a bug of ours.

Busy with a script (BUSY), a replica cut off from its master (MASTERDOWN), a
blocking read cut short by a failover (UNBLOCKED), a write refusal inside a
pipeline: each is ``StoreUnavailableError`` from both Redis stores (the caller
retries later, the edge answers 503), and ``ping`` says not ready instead of
raising. Real redis-servers of the tests' own (their settings are changed
here), except for the cluster-only replies, read from the very exception
redis-py's parser makes of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio
import redis.exceptions
from peers import free_port, run_redis
from redis._parsers.base import BaseParser

from receiver.errors import StoreUnavailableError
from receiver.redis_errors import outage
from receiver.store.base import JournalEntry
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.redis import RedisStore

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
NOT_NOW = "is busy or failing over"
WRITES = "refuses writes"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A redis-server of this test's own: its settings may be changed."""
    with run_redis(tmp_path) as url:
        yield url


async def _until_busy(client: redis.asyncio.Redis) -> None:
    """Until the server answers BUSY (a PING waits while the script is young)."""
    async with asyncio.timeout(20):
        while True:
            try:
                await client.ping()
            except redis.exceptions.ResponseError as exc:
                refused = exc
                break
    assert str(refused).startswith("BUSY ")


async def test_a_redis_busy_with_a_script_is_down_for_now(own_redis: str) -> None:
    """A script past busy-reply-threshold: both stores say "not now", then work.

    BUSY came as a bare ``ResponseError``: read as a bug of ours, not as the
    store down for now, and ``ping`` raised instead of saying not ready.
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    looping = redis.asyncio.Redis.from_url(own_redis)
    store = RedisStore(own_redis, prefix="busy")
    incidents = RedisIncidentStore(own_redis, prefix="busy-incidents")
    script: asyncio.Task[object] | None = None
    try:
        # Connected before: the pooled connections meet the BUSY replies.
        assert await store.alert_state("fp-1") is None
        assert await incidents.get("INC-1") is None
        await admin.config_set("busy-reply-threshold", 10)  # milliseconds
        script = asyncio.create_task(looping.eval("while true do end", 0))
        await _until_busy(admin)
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await store.alert_state("fp-1")  # a plain command
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await store.pending()  # a transaction (MULTI/EXEC)
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await store.append(JournalEntry("e1", "alertmanager", T0, b"{}"), [])
        assert await store.ping() is False
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await incidents.next_number("2026-11-26")
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await incidents.get("INC-1")
        assert await admin.script_kill()
        with pytest.raises(redis.exceptions.ResponseError, match="killed"):
            await script
        # Down for now, not for good: the same stores answer again.
        assert await store.ping() is True
        assert await store.alert_state("fp-1") is None
        assert await incidents.get("INC-1") is None
    finally:
        if script is not None and not script.done():
            with contextlib.suppress(redis.exceptions.ResponseError):
                await admin.script_kill()  # NOTBUSY if it ended meanwhile
            await asyncio.wait([script], timeout=10)
        await incidents.close()
        await store.close()
        await looping.aclose()
        await admin.aclose()


async def test_a_replica_cut_off_from_its_master_is_down_for_now(
    own_redis: str,
) -> None:
    """MASTERDOWN (replica-serve-stale-data no, the master unreachable).

    redis-py raises ``MasterDownError`` with the code cut from its message, so
    the "MASTERDOWN" prefix the refusals listed never matched: read as a bug.
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    store = RedisStore(own_redis, prefix="stale")
    incidents = RedisIncidentStore(own_redis, prefix="stale-incidents")
    try:
        await admin.config_set("replica-serve-stale-data", "no")
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await store.alert_state("fp-1")
        assert await store.ping() is False
        with pytest.raises(StoreUnavailableError, match=NOT_NOW):
            await incidents.get("INC-1")
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await incidents.close()
        await store.close()
        await admin.aclose()


async def test_a_write_refused_inside_a_pipeline_is_down_for_now(
    own_redis: str,
) -> None:
    """NOREPLICAS for a command queued in a MULTI/EXEC pipeline.

    redis-py rewrites the message of an error in a pipeline ("Command # 1
    (...) of pipeline caused error: ('NOREPLICAS ...',)"), so the refusal,
    read by the message's first word, was a bug there.
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    store = RedisStore(own_redis, prefix="noreplicas")
    try:
        await admin.config_set("min-replicas-to-write", 1)
        with pytest.raises(StoreUnavailableError, match=WRITES):
            await store.register("worker-1", T0, timedelta(minutes=1))
        with pytest.raises(StoreUnavailableError, match=WRITES):
            await store.record([{"payload_id": "p1", "decided_at": T0.isoformat()}])
    finally:
        await admin.config_set("min-replicas-to-write", 0)
        await store.close()
        await admin.aclose()


async def test_a_blocking_read_cut_short_by_a_failover_is_down_for_now(
    own_redis: str,
) -> None:
    """UNBLOCKED: the server became a replica while a client waited on XREAD.

    The store's claim waits on XREAD in short pieces; the exception is taken
    from a client that waits for good, so the test does not race those pieces.
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    waiting = redis.asyncio.Redis.from_url(own_redis)
    try:
        read = asyncio.create_task(waiting.xread({"journal": "$"}, block=0))
        async with asyncio.timeout(20):
            while (await admin.info("clients"))["blocked_clients"] < 1:
                pass
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        with pytest.raises(redis.exceptions.ResponseError) as raised:
            await read
        assert str(raised.value).startswith("UNBLOCKED ")
        assert outage(raised.value) == NOT_NOW
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await waiting.aclose()
        await admin.aclose()


def _in_pipeline(exc: redis.exceptions.ResponseError) -> Exception:
    """The same error as redis-py raises it for a command in a pipeline."""
    pipe = redis.asyncio.client.Pipeline(None, None, None, None)  # type: ignore[arg-type]
    pipe.annotate_exception(exc, 1, ("XLEN", "receiver:journal"))
    return exc


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        # A cluster failing over or resharding (not one Redis, as the stores
        # need, but what a cluster-mode endpoint answers meanwhile).
        ("CLUSTERDOWN The cluster is down", NOT_NOW),
        ("TRYAGAIN Multiple keys request during rehashing of slot", NOT_NOW),
        ("UNBLOCKED client unblocked via CLIENT UNBLOCK", NOT_NOW),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL", NOT_NOW),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data", NOT_NOW),
        ("MISCONF Redis is configured to save RDB snapshots, but it's", WRITES),
        ("NOREPLICAS Not enough good replicas to write.", WRITES),
        ("READONLY You can't write against a read only replica.", WRITES),
        ("OOM command not allowed when used memory > 'maxmemory'.", WRITES),
        ("LOADING Redis is loading the dataset in memory", "is unreachable"),
        # Bugs of ours, however much they look like the above.
        ("BUSYGROUP Consumer Group name already exists", None),
        ("BUSYKEY Target key name already exists.", None),
        ("NOSCRIPT No matching script. Please use EVAL.", None),
        ("ERR unknown command 'BUSY'", None),
        (
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            None,
        ),
    ],
)
@pytest.mark.parametrize("where", ["alone", "in a pipeline"])
def test_what_each_error_reply_means(reply: str, why: str | None, where: str) -> None:
    """Each reply as redis-py's parser raises it, alone and in a pipeline."""
    exc = BaseParser.parse_error(reply)
    if where == "in a pipeline" and isinstance(exc, redis.exceptions.ResponseError):
        exc = _in_pipeline(exc)
    assert outage(exc) == why


async def test_a_wrong_password_says_so(own_redis: str) -> None:
    """Refused credentials are down for now (retried), and said as they are.

    redis-py raises them as a ConnectionError: they read "is unreachable",
    and a wrong or rotated password sent the operator to check a server that
    was up.
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    wrong = own_redis.replace("redis://", "redis://:not-the-password@")
    store = RedisStore(wrong, prefix="wrongpass")
    incidents = RedisIncidentStore(wrong, prefix="wrongpass")
    try:
        await admin.config_set("requirepass", "the-password")
        with pytest.raises(StoreUnavailableError, match="refuses the credentials"):
            await store.register("worker-1", T0, timedelta(minutes=1))
        with pytest.raises(StoreUnavailableError, match="refuses the credentials"):
            await incidents.watched()
    finally:
        with contextlib.suppress(redis.exceptions.RedisError):
            await admin.execute_command("AUTH", "the-password")
            await admin.config_set("requirepass", "")
        await store.close()
        await incidents.close()
        await admin.aclose()
