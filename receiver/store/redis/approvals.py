"""The Redis store's approvals."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Literal, cast

from receiver.errors import StoreUnavailableError
from receiver.store.base import (
    Approval,
)
from receiver.store.redis.codec import (
    _hash,
    _iso,
    _members,
    _ms,
    _pairs,
    _parse,
    _str,
    _ttl_ms,
)
from receiver.store.redis.core import RedisCore

APPROVALS_MAX = 1_000
APPROVALS_PAGE = 100


class ApprovalOps(RedisCore):
    """Approvals waiting for a person."""

    # -- approvals ----------------------------------------------------------

    @staticmethod
    def _approval(approval_id: str, fields: Mapping[str, bytes]) -> Approval:
        return Approval(
            id=approval_id,
            key=_str(fields["key"]),
            created_at=datetime.fromisoformat(_str(fields["created_at"])),
            expires_at=datetime.fromisoformat(_str(fields["expires_at"])),
            request=json.loads(fields["request"]),
            status=cast(
                "Literal['pending', 'approved', 'rejected', 'expired']",
                _str(fields["status"]),
            ),
            decided_by=_str(fields.get("decided_by", b"")),
            decided_at=_parse(fields.get("decided_at")),
        )

    async def put_approval(self, approval: Approval) -> Approval:  # noqa: D102
        # Kept a day past its expiry so a late decision still finds it.
        ttl = max(approval.expires_at - approval.created_at, timedelta()) + timedelta(
            days=1
        )
        fields = {
            "key": approval.key,
            "created_at": _iso(approval.created_at),
            "expires_at": _iso(approval.expires_at),
            "request": json.dumps(dict(approval.request)),
            "status": approval.status,
            "decided_by": approval.decided_by,
            "decided_at": _iso(approval.decided_at) if approval.decided_at else "",
        }
        index = self._key("approval-key", approval.key)
        with self._reachable("store an approval"):
            for _ in range(3):
                stored = _str(
                    await self._put_approval_script(
                        keys=[
                            index,
                            self._key("approval", approval.id),
                            self._approvals,
                        ],
                        args=[
                            approval.id,
                            _ttl_ms(ttl),
                            _ms(approval.created_at),
                            *(x for kv in fields.items() for x in kv),
                        ],
                    )
                )
                if stored == approval.id:
                    return approval
                existing = await self.get_approval(stored)
                if existing is not None:
                    return existing
                # The index outlived its approval: drop it (if unchanged), retry.
                await self._delete_if_equal_script(keys=[index], args=[stored])
        raise StoreUnavailableError(
            f"Redis at {self._where}: approval index for {approval.key!r} keeps "
            "pointing at a missing approval"
        )

    async def get_approval(self, approval_id: str) -> Approval | None:  # noqa: D102
        with self._reachable("read an approval"):
            fields = _hash(
                await self._redis.hgetall(self._key("approval", approval_id))
            )
        return self._approval(approval_id, fields) if fields else None

    async def decide_approval(  # noqa: D102
        self,
        approval_id: str,
        status: Literal["approved", "rejected", "expired"],
        by: str,
        now: datetime,
    ) -> Approval | None:
        with self._reachable("decide an approval"):
            reply = await self._decide_approval_script(
                keys=[self._key("approval", approval_id)],
                args=[status, by, _iso(now)],
            )
        return self._approval(approval_id, _pairs(reply)) if reply else None

    async def approvals(  # noqa: D102
        self,
        status: str | None = None,
        *,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Approval]:
        found: list[Approval] = []
        with self._reachable("list approvals"):
            start = 0
            if before is not None:
                rank = await self._redis.zrevrank(self._approvals, before)
                if rank is None:
                    return []  # the cursor's approval expired and was dropped
                start = cast("int", rank) + 1
            while len(found) < limit and start < APPROVALS_MAX:
                ids = _members(
                    await self._redis.zrevrange(
                        self._approvals, start, start + APPROVALS_PAGE - 1
                    )
                )
                if not ids:
                    break
                start += len(ids)
                pipe = self._redis.pipeline(transaction=False)
                for approval_id in ids:
                    pipe.hgetall(self._key("approval", approval_id))
                replies = await pipe.execute()
                gone = [i for i, fields in zip(ids, replies, strict=True) if not fields]
                if gone:
                    await self._redis.zrem(self._approvals, *gone)
                    start -= len(gone)
                for approval_id, fields in zip(ids, replies, strict=True):
                    if not fields:
                        continue
                    approval = self._approval(approval_id, _hash(fields))
                    if status is None or approval.status == status:
                        found.append(approval)
        return found[:limit]

    async def expire_approvals(self, now: datetime) -> int:  # noqa: D102
        expired = 0
        with self._reachable("expire approvals"):
            ids = _members(
                await self._redis.zrangebyscore(
                    self._approvals, "-inf", "+inf", start=0, num=APPROVALS_MAX
                )
            )
            pipe = self._redis.pipeline(transaction=False)
            for approval_id in ids:
                pipe.hmget(self._key("approval", approval_id), "status", "expires_at")
            replies = await pipe.execute()
            for approval_id, (state, expires) in zip(ids, replies, strict=True):
                if state != b"pending" or expires is None:
                    continue
                if datetime.fromisoformat(_str(expires)) > now:
                    continue
                reply = await self._decide_approval_script(
                    keys=[self._key("approval", approval_id)],
                    args=["expired", "receiver", _iso(now)],
                )
                expired += 1 if reply else 0
        return expired

    async def _forget_expired_approvals(self, ids: Sequence[str]) -> None:
        """Drop index entries whose approval expired (approvals have TTLs)."""
        if not ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for approval_id in ids:
            pipe.exists(self._key("approval", approval_id))
        alive = await pipe.execute()
        gone = [i for i, n in zip(ids, alive, strict=True) if not n]
        if gone:
            await self._redis.zrem(self._approvals, *gone)
