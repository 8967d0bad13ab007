"""The Redis store's connection, key names, error mapping and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Self

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from receiver.errors import StoreUnavailableError
from receiver.redis_errors import outage
from receiver.store.base import (
    Eviction,
    Retention,
)
from receiver.store.redis.scripts import (
    _ACQUIRE_LOCK,
    _APPEND,
    _CLAIM,
    _CLAIM_KEY,
    _COMPLETE,
    _DECIDE_APPROVAL,
    _DELETE_IF_EQUAL,
    _FINISH_KEY,
    _MARK_SENDING,
    _PARK,
    _PRUNE_DECISIONS,
    _PUT_APPROVAL,
    _RECORD,
    _RECORD_OUTCOME,
    _RELEASE_KEY,
    _RELEASE_LOCK,
    _RENEW,
    _RENEW_LOCK,
    _RESERVE_BUDGET,
    _RETRY_PARKED,
    _SEEN,
    _SET_LAST_RUN,
)

# An append waiting to be sent: its script keys and arguments, and its caller.
_Append = tuple[list[str], list[str | bytes | int], "asyncio.Future[None]"]

# Connections to the store per process. Callers beyond it wait for one (up to
# the socket timeout) instead of failing at once: redis-py's default pool
# refuses the 101st concurrent command with "Too many connections", which under
# a burst of webhooks turned into 503s and retried, late decisions.
MAX_CONNECTIONS = 64
APPROVALS_PAGE = 100
# Characters of a Redis error kept in an unknown ``Eviction`` (it is logged).
INFO_ERROR = 300
_CURSOR = re.compile(r"[0-9a-f]{32}")


class RedisCore:
    """Connection, key names and scripts shared by the store's parts."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "receiver",
        retention: Retention | None = None,
        consumer_group: str = "workers",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=30,
            # One quick reconnect for a pooled connection a Redis restart broke;
            # never on timeouts, where the command may already have run.
            retry=Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=0.5),
                retries=1,
                supported_errors=(redis.exceptions.ConnectionError,),
            ),
        )
        client = redis.asyncio.Redis.from_pool(pool)
        self._setup(client, prefix, retention, consumer_group, socket_timeout)
        self._owns_client = True

    @classmethod
    def from_client(
        cls,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "receiver",
        retention: Retention | None = None,
        consumer_group: str = "workers",
        socket_timeout: float = 5.0,
    ) -> Self:
        """A store on an existing client (bytes responses); the caller closes it.

        ``socket_timeout`` must match the client's: blocking reads are cut into
        pieces shorter than it.
        """
        store = cls.__new__(cls)
        store._setup(client, prefix, retention, consumer_group, socket_timeout)  # noqa: SLF001 (own class)
        store._owns_client = False  # noqa: SLF001 (own class)
        return store

    def _setup(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        retention: Retention | None,
        group: str,
        socket_timeout: float,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        # Appends waiting for the next pipeline (``JournalOps.append``).
        self._append_queue: list[_Append] = []
        self._append_flusher: asyncio.Task[None] | None = None
        self.retention = retention or Retention()
        self._group = group
        self._group_ready = False
        # A blocking read must answer before the socket timeout fires.
        self._block_chunk = max(0.05, min(socket_timeout - 1.0, socket_timeout / 2))
        kwargs = client.connection_pool.connection_kwargs
        self._where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._journal = self._key("journal")
        self._payloads = self._key("payloads")
        self._finished = self._key("finished")
        self._decisions = self._key("decisions")
        self._approvals = self._key("approvals")
        self._leases = self._key("leases")
        self._parked = self._key("parked")
        self._incarnations = self._key("incarnations")
        script = client.register_script
        self._append_script = script(_APPEND)
        self._claim_script = script(_CLAIM)
        self._renew_script = script(_RENEW)
        self._park_script = script(_PARK)
        self._retry_parked_script = script(_RETRY_PARKED)
        self._mark_sending_script = script(_MARK_SENDING)
        self._release_key_script = script(_RELEASE_KEY)
        self._renew_lock_script = script(_RENEW_LOCK)
        self._release_lock_script = script(_RELEASE_LOCK)
        self._set_last_run_script = script(_SET_LAST_RUN)
        self._complete_script = script(_COMPLETE)
        self._record_script = script(_RECORD)
        self._prune_decisions_script = script(_PRUNE_DECISIONS)
        self._claim_key_script = script(_CLAIM_KEY)
        self._finish_key_script = script(_FINISH_KEY)
        self._acquire_lock_script = script(_ACQUIRE_LOCK)
        self._delete_if_equal_script = script(_DELETE_IF_EQUAL)
        self._reserve_budget_script = script(_RESERVE_BUDGET)
        self._record_outcome_script = script(_RECORD_OUTCOME)
        self._put_approval_script = script(_PUT_APPROVAL)
        self._decide_approval_script = script(_DECIDE_APPROVAL)
        self._seen_script = script(_SEEN)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    @contextlib.contextmanager
    def _reachable(self, action: str) -> Iterator[None]:
        """Turn "Redis cannot take this now" into ``StoreUnavailableError``."""
        try:
            yield
        except redis.exceptions.RedisError as exc:
            why = outage(exc)
            if why is None:
                raise
            raise StoreUnavailableError(
                f"Redis at {self._where} {why}, cannot {action}: {exc}"
            ) from exc

    async def _ensure_group(self, *, again: bool = False) -> None:
        if self._group_ready and not again:
            return
        try:
            await self._redis.xgroup_create(
                self._journal, self._group, id="0", mkstream=True
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> bool:  # noqa: D102
        try:
            return bool(await self._redis.ping())
        except redis.exceptions.RedisError as exc:
            if outage(exc) is None:
                raise
            return False

    async def eviction(self) -> Eviction:
        """``maxmemory`` and ``maxmemory_policy`` as ``INFO memory`` gives them.

        ``INFO``, not ``CONFIG GET``: managed Redis often refuses ``CONFIG``.
        An error (unreachable, ``INFO`` renamed or not allowed) or a reply
        without the fields is an ``unknown`` ``Eviction``, never raised.
        """
        try:
            info = await self._redis.info("memory")
        except redis.exceptions.RedisError as exc:
            why = outage(exc) or "answers INFO memory with an error"
            return Eviction(self._where, unknown=f"Redis {why}: {exc}"[:INFO_ERROR])
        policy, maxmemory = info.get("maxmemory_policy"), info.get("maxmemory")
        if not isinstance(policy, str) or not isinstance(maxmemory, int):
            return Eviction(
                self._where,
                unknown="the INFO memory reply has no maxmemory_policy and "
                "maxmemory to read",
            )
        return Eviction(self._where, policy=policy, maxmemory=maxmemory)

    async def close(self) -> None:  # noqa: D102
        if self._owns_client:
            await self._redis.aclose()
