"""The Redis ``Store``: its parts together, and pruning, which spans them."""

from __future__ import annotations

from datetime import datetime

from receiver.store.redis.approvals import ApprovalOps
from receiver.store.redis.codec import (
    _members,
    _ms,
)
from receiver.store.redis.decisions import DecisionOps
from receiver.store.redis.guards import GuardOps
from receiver.store.redis.journal import JournalOps

# Pruning removes at most this many items per round trip.
PRUNE_BATCH = 1_000


class RedisStore(JournalOps, DecisionOps, GuardOps, ApprovalOps):
    """The Redis ``Store``; see the package docstring for the key layout."""

    async def prune(self, now: datetime) -> int:  # noqa: D102
        keep = self.retention
        cutoff = _ms(now - keep.max_age)
        dropped = 0
        with self._reachable("prune the journal"):
            # Only completed entries are in P:finished: unfinished ones stay.
            while True:
                ids = _members(
                    await self._redis.zrangebyscore(
                        self._finished, "-inf", f"({cutoff}", start=0, num=PRUNE_BATCH
                    )
                )
                if not ids:
                    break
                dropped += await self._drop_payloads(ids)
            excess = await self._redis.zcard(self._finished) - keep.max_payloads
            while excess > 0:
                batch = min(excess, PRUNE_BATCH)
                ids = _members(await self._redis.zrange(self._finished, 0, batch - 1))
                if not ids:
                    break
                dropped += await self._drop_payloads(ids)
                excess -= batch
            while True:
                trimmed, popped = await self._prune_decisions_script(
                    keys=[self._decisions],
                    args=[cutoff, keep.max_decisions, PRUNE_BATCH],
                )
                dropped += int(trimmed) + int(popped)
                if int(popped) < PRUNE_BATCH:
                    break
            await self._forget_expired_approvals(
                _members(await self._redis.zrange(self._approvals, 0, PRUNE_BATCH - 1))
            )
        return dropped
