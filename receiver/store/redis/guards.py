"""The Redis store's guards, shared by every replica."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from receiver.store.base import (
    FORGET_DEAD_AFTER,
    BudgetSlot,
    Circuit,
    Claim,
    ClaimOutcome,
    Lock,
    Pause,
)
from receiver.store.redis.codec import (
    _hash,
    _iso,
    _members,
    _ms,
    _parse,
    _str,
    _ttl_ms,
)
from receiver.store.redis.core import RedisCore


class GuardOps(RedisCore):
    """Delivery ids, incarnations, run-once keys, locks, budgets, pause, circuits."""

    # -- delivery ids -------------------------------------------------------

    async def seen(self, key: str, ttl: timedelta, now: datetime) -> bool:  # noqa: D102
        with self._reachable("record a delivery id"):
            return bool(
                await self._seen_script(
                    keys=[self._key("seen", key)], args=[_ms(now), _ms(now + ttl)]
                )
            )

    # -- incarnations ---------------------------------------------------------

    async def register(  # noqa: D102
        self, incarnation: str, now: datetime, ttl: timedelta
    ) -> None:
        with self._reachable("register an incarnation"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._incarnations, {incarnation: _ms(now + ttl)})
                pipe.zrem(self._incarnations, f"{incarnation}|stopped")
                await pipe.execute()

    async def retire(self, incarnation: str, now: datetime) -> None:  # noqa: D102
        with self._reachable("retire an incarnation"):
            # Dead from ``now``, and known to have stopped (the ``|stopped``
            # member, which a later ``register`` removes).
            at = _ms(now) - 1
            await self._redis.zadd(
                self._incarnations, {incarnation: at, f"{incarnation}|stopped": at}
            )

    async def recover(self, incarnation: str, now: datetime) -> list[str]:  # noqa: D102
        released: list[str] = []
        with self._reachable("recover a dead incarnation's locks"):
            dead = _members(
                await self._redis.zrangebyscore(
                    self._incarnations, "-inf", f"({_ms(now)}", start=0, num=1000
                )
            )
            for owner in dead:
                if owner == incarnation or owner.endswith("|stopped"):
                    continue
                held = self._key("held", owner)
                names = sorted(_members(list(await self._redis.smembers(held))))
                for name in names:
                    if await self._release_lock_script(
                        keys=[self._key("lock", name)], args=[owner, ""]
                    ):
                        released.append(name)  # noqa: PERF401 (awaits in between)
                await self._redis.delete(held)
            # Forget incarnations dead for longer than any run-once claim
            # lives: a claim whose owner is forgotten reads as live.
            await self._redis.zremrangebyscore(
                self._incarnations, "-inf", f"({_ms(now - FORGET_DEAD_AFTER)}"
            )
        return sorted(released)

    # -- run-once keys ----------------------------------------------------------

    @staticmethod
    def _claim(raw: bytes | str) -> Claim:
        data = json.loads(raw)
        expires = data.get("expires_ms")
        return Claim(
            key=data["key"],
            owner=data["owner"],
            status=data["status"],
            at=datetime.fromisoformat(data["at"]),
            detail=data.get("detail", ""),
            expires_at=(
                datetime.fromtimestamp(int(expires) / 1000, UTC) if expires else None
            ),
            intent=data.get("intent", ""),
        )

    async def claim_key(  # noqa: D102
        self, key: str, owner: str, now: datetime, ttl: timedelta
    ) -> ClaimOutcome:
        expires = _ms(now + ttl)
        claim = {
            "key": key,
            "owner": owner,
            "status": "running",
            "at": _iso(now),
            "detail": "",
            "expires_ms": str(expires),
        }
        raw = json.dumps(claim)
        with self._reachable("claim an idempotency key"):
            won, other, *rest = await self._claim_key_script(
                keys=[self._key("claim", key), self._incarnations],
                args=[raw, _ms(now), expires, owner],
            )
        if not int(won):
            return ClaimOutcome(won=False, holder=self._claim(other))
        stopped, mine = rest
        return ClaimOutcome(
            won=True,
            holder=self._claim(mine),
            recovered=self._claim(other) if other else None,
            stopped=bool(int(stopped)),
        )

    async def mark_sending(  # noqa: D102
        self, key: str, owner: str, now: datetime, intent: str = ""
    ) -> bool:
        with self._reachable("mark a remediation as sending"):
            return bool(
                await self._mark_sending_script(
                    keys=[self._key("claim", key)], args=[owner, _iso(now), intent]
                )
            )

    async def finish_key(  # noqa: D102
        self,
        key: str,
        owner: str,
        status: Literal["done", "failed"],
        detail: str,
        now: datetime,
    ) -> bool:
        with self._reachable("finish an idempotency key"):
            return bool(
                await self._finish_key_script(
                    keys=[self._key("claim", key)],
                    args=[status, detail, _iso(now), owner],
                )
            )

    async def release_key(self, key: str, owner: str) -> None:  # noqa: D102
        with self._reachable("release an idempotency key"):
            await self._release_key_script(keys=[self._key("claim", key)], args=[owner])

    # -- guards -------------------------------------------------------------

    async def acquire_lock(  # noqa: D102
        self, name: str, owner: str, now: datetime, ttl: timedelta
    ) -> Lock | None:
        expires = _ms(now + ttl)
        with self._reachable("take a lock"):
            token = await self._acquire_lock_script(
                keys=[
                    self._key("lock", name),
                    self._key("fence"),
                    self._incarnations,
                    self._key("held", owner),
                ],
                args=[owner, _ms(now), expires, name],
            )
        return None if token is None else Lock(name, owner, int(token), now + ttl)

    async def renew_lock(  # noqa: D102
        self, lock: Lock, now: datetime, ttl: timedelta
    ) -> Lock | None:
        with self._reachable("renew a lock"):
            ok = await self._renew_lock_script(
                keys=[self._key("lock", lock.name), self._key("held", lock.owner)],
                args=[lock.owner, lock.token, _ms(now), _ms(now + ttl)],
            )
        return Lock(lock.name, lock.owner, lock.token, now + ttl) if ok else None

    async def lock_holder(self, name: str, now: datetime) -> str | None:  # noqa: D102
        with self._reachable("read a lock"):
            value = await self._redis.get(self._key("lock", name))
        if value is None:
            return None
        owner, _, rest = _str(value).rpartition("|")
        if "|" in owner:  # "owner|token|expires_ms"
            owner = owner.rpartition("|")[0]
            if int(rest) < _ms(now):
                return None
        return owner

    async def release_lock(self, lock: Lock) -> None:  # noqa: D102
        with self._reachable("release a lock"):
            await self._release_lock_script(
                keys=[self._key("lock", lock.name)], args=[lock.owner, lock.token]
            )

    async def last_run(self, scope: str, now: datetime) -> datetime | None:  # noqa: D102
        with self._reachable("read a cooldown"):
            value = await self._redis.get(self._key("last-run", scope))
        if value is None:
            return None
        at, _, expires = _str(value).partition(" ")
        if expires and int(expires) < _ms(now):
            return None
        return _parse(at)

    async def last_runs(  # noqa: D102
        self, scopes: Sequence[str], now: datetime
    ) -> dict[str, datetime | None]:
        wanted = list(dict.fromkeys(scopes))
        if not wanted:
            return {}
        with self._reachable("read cooldowns"):
            values = await self._redis.mget([self._key("last-run", s) for s in wanted])
        found: dict[str, datetime | None] = {}
        for scope, value in zip(wanted, values, strict=True):
            found[scope] = None
            if value is not None:
                at, _, expires = _str(value).partition(" ")
                if not expires or int(expires) >= _ms(now):
                    found[scope] = _parse(at)
        return found

    async def set_last_run(self, scope: str, at: datetime, ttl: timedelta) -> None:  # noqa: D102
        expires = _ms(at + ttl)
        with self._reachable("record a cooldown"):
            await self._set_last_run_script(
                keys=[self._key("last-run", scope)],
                args=[f"{_iso(at)} {expires}", _ms(at), expires],
            )

    async def reserve_budget(  # noqa: D102
        self, scope: str, limit: int, window: timedelta, now: datetime
    ) -> BudgetSlot | None:
        now_ms = _ms(now)
        member = f"{now_ms}:{uuid.uuid4().hex}"
        with self._reachable("reserve a budget slot"):
            count = await self._reserve_budget_script(
                keys=[self._key("budget", scope)],
                args=[now_ms, _ms(now - window), limit, member, _ms(now + window)],
            )
        if count is None:
            return None
        return BudgetSlot(scope, member, now, int(count))

    async def release_budget(self, slot: BudgetSlot) -> None:  # noqa: D102
        with self._reachable("release a budget slot"):
            await self._redis.zrem(self._key("budget", slot.scope), slot.slot)

    async def pause(self) -> Pause | None:  # noqa: D102
        with self._reachable("read the pause switch"):
            raw = await self._redis.get(self._key("pause"))
        if raw is None:
            return None
        data = json.loads(raw)
        return Pause(data["by"], datetime.fromisoformat(data["at"]), data["reason"])

    async def set_pause(self, pause: Pause | None) -> None:  # noqa: D102
        with self._reachable("set the pause switch"):
            if pause is None:
                await self._redis.delete(self._key("pause"))
                return
            await self._redis.set(
                self._key("pause"),
                json.dumps(
                    {"by": pause.by, "at": _iso(pause.at), "reason": pause.reason}
                ),
            )

    async def circuit(self, scope: str) -> Circuit:  # noqa: D102
        with self._reachable("read a circuit"):
            fields = _hash(await self._redis.hgetall(self._key("circuit", scope)))
        return Circuit(
            failures=int(fields.get("failures", b"0")),
            opened_at=_parse(fields.get("opened_at")),
        )

    async def record_outcome(  # noqa: D102
        self, scope: str, ok: bool, threshold: int, now: datetime
    ) -> Circuit:
        with self._reachable("record an outcome"):
            failures, opened = await self._record_outcome_script(
                keys=[self._key("circuit", scope)],
                args=[
                    "1" if ok else "0",
                    threshold,
                    _iso(now),
                    _ttl_ms(self.retention.max_age),
                ],
            )
        return Circuit(failures=int(failures), opened_at=_parse(opened))

    async def reset_circuit(self, scope: str) -> None:  # noqa: D102
        with self._reachable("reset a circuit"):
            await self._redis.delete(self._key("circuit", scope))
