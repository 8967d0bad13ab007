"""A Redis target saying "not now" to a redis.* step is transient, not a failure.

Busy with a script (BUSY), a replica cut off from its master (MASTERDOWN), a
cluster failing over (CLUSTERDOWN, TRYAGAIN), a blocking read cut short
(UNBLOCKED), loading its data (LOADING): the step is retried within its budget,
like an unreachable target, and fails as ``TransientStepError`` if the target
stays so, for a plain command and for one in a pipeline (where redis-py rewrites
the message). Read as the Redis stores read them (``receiver.redis_errors``).
BUSY and MASTERDOWN come from real redis-servers of the tests' own; the replies
a single Redis does not give come from a peer of ours that answers every command
with one error, and keeps the commands it refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
import redis.exceptions
from peers import free_port, run_redis
from test_redis_not_now import _until_busy

from receiver.errors import PermanentStepError, TransientStepError
from receiver.model import Alert, freeze
from receiver.steps.redis import RedisExecutor
from receiver.steps.redis.delete_keys import RedisDeleteKeys
from receiver.steps.redis.get import RedisGet
from receiver.steps.redis.info import RedisInfo

ALERT = Alert(
    source="alertmanager",
    fingerprint="f00d",
    status="firing",
    labels=freeze({"alertname": "SarkSiemForwardingDown"}),
)
pytestmark = pytest.mark.e2e
ATTEMPTS = 3
STEPS = {
    "a command": RedisInfo(redis="app", section="stats"),
    "a pipeline": RedisGet(redis="app", keys=["circuit:splunk:state"]),
    "a remediation": RedisDeleteKeys(redis="app", keys=["circuit:splunk:state"]),
}


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A redis-server of this test's own: its settings may be changed."""
    with run_redis(tmp_path) as url:
        yield url


async def test_a_target_busy_with_a_script_is_retried_then_transient(
    own_redis: str,
) -> None:
    """BUSY to a command, a pipeline and a remediation: tried again, then transient.

    It was a permanent failure at the first reply. Once the script is killed,
    the same executor runs the same steps (the key is deleted then, not before).
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    looping = redis.asyncio.Redis.from_url(own_redis)
    executor = RedisExecutor({"app": own_redis}, timeout=2.0, attempts=ATTEMPTS)
    script: asyncio.Task[object] | None = None
    try:
        await admin.set("circuit:splunk:state", "open")
        # Connected before: the pooled connection meets the BUSY replies.
        await executor.run(STEPS["a command"], ALERT)
        await admin.config_set("busy-reply-threshold", 10)  # milliseconds
        script = asyncio.create_task(looping.eval("while true do end", 0))
        await _until_busy(admin)
        for step in STEPS.values():
            with pytest.raises(TransientStepError) as raised:
                await executor.run(step, ALERT)
            assert "is busy or failing over" in str(raised.value)
            assert f"after {ATTEMPTS} tries" in str(raised.value)
        assert await admin.script_kill()
        with pytest.raises(redis.exceptions.ResponseError, match="killed"):
            await script
        assert await admin.get("circuit:splunk:state") == b"open"
        for step in STEPS.values():
            assert (await executor.run(step, ALERT)).ok
        assert await admin.exists("circuit:splunk:state") == 0
    finally:
        if script is not None:
            if not script.done():
                with contextlib.suppress(redis.exceptions.ResponseError):
                    await admin.script_kill()  # NOTBUSY if it ended meanwhile
            await asyncio.wait([script], timeout=10)
            if script.done() and not script.cancelled():
                script.exception()  # killed, as it was meant to end
        await executor.aclose()
        await looping.aclose()
        await admin.aclose()


async def test_a_replica_cut_off_from_its_master_is_transient(own_redis: str) -> None:
    """MASTERDOWN (replica-serve-stale-data no, its master unreachable).

    To the keys' reads and deletes; INFO a stale replica still answers.
    """
    admin = redis.asyncio.Redis.from_url(own_redis)
    executor = RedisExecutor({"app": own_redis}, timeout=2.0, attempts=ATTEMPTS)
    try:
        await admin.config_set("replica-serve-stale-data", "no")
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        for step in (STEPS["a pipeline"], STEPS["a remediation"]):
            with pytest.raises(TransientStepError, match="is busy or failing over"):
                await executor.run(step, ALERT)
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await executor.aclose()
        await admin.aclose()


class Refusing:
    """A Redis peer answering every command with one error reply.

    The connection's handshake (``HELLO 3``, ``CLIENT SETNAME``, ``CLIENT
    SETINFO``) is answered as Redis does; every other command is refused with
    ``reply`` and its name kept, in order.
    """

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.refused: list[str] = []

    async def _command(self, reader: asyncio.StreamReader) -> list[bytes] | None:
        header = await reader.readline()
        if not header:
            return None
        args = []
        for _ in range(int(header[1:])):
            size = int((await reader.readline())[1:])
            args.append((await reader.readexactly(size + 2))[:-2])
        return args

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while (args := await self._command(reader)) is not None:
                if args[0].upper() == b"HELLO":
                    writer.write(b"%1\r\n+proto\r\n:3\r\n")  # RESP3 it is
                elif args[0].upper() == b"CLIENT":
                    writer.write(b"+OK\r\n")
                else:
                    self.refused.append(args[0].decode().upper())
                    writer.write(f"-{self.reply}\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up mid-command
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Listen on a loopback port; yield its URL."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.close()
            await server.wait_closed()


@pytest.mark.parametrize(
    ("reply", "transient"),
    [
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("UNBLOCKED client unblocked via CLIENT UNBLOCK", True),
        ("LOADING Redis is loading the dataset in memory", True),
        # A request of ours that is wrong, however much it looks like the above.
        ("BUSYKEY Target key name already exists.", False),
        ("NOSCRIPT No matching script. Please use EVAL.", False),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ],
)
@pytest.mark.parametrize("how", STEPS)
async def test_what_each_reply_means_to_a_step(
    reply: str, transient: bool, how: str
) -> None:
    """Not now: every try is made, then transient; a wrong request: one, permanent.

    A remediation first digests its keys (DUMP): not now, it never sends the
    UNLINK; a refused DUMP only costs it the digests.
    """
    peer = Refusing(reply)
    async with peer.serving() as url:
        executor = RedisExecutor({"app": url}, timeout=2.0, attempts=ATTEMPTS)
        try:
            with pytest.raises(TransientStepError if transient else PermanentStepError):
                await executor.run(STEPS[how], ALERT)
        finally:
            await executor.aclose()
    first = {"a command": "INFO", "a pipeline": "TYPE", "a remediation": "DUMP"}[how]
    if transient:
        assert peer.refused == [first] * ATTEMPTS
    elif how == "a remediation":
        assert peer.refused == [first, "UNLINK"]
    else:
        assert peer.refused == [first]
