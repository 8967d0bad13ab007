"""The Redis store's journal: payloads in, leases out, completions recorded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal, cast

import redis.asyncio
import redis.exceptions

from receiver.model import JSONValue, Source
from receiver.store.base import (
    AlertState,
    JournalEntry,
    Lease,
    ParkedEntry,
)
from receiver.store.records import record_text
from receiver.store.redis.codec import (
    _hash,
    _iso,
    _members,
    _ms,
    _pairs,
    _parse,
    _record_time,
    _str,
    _ttl_ms,
)
from receiver.store.redis.core import RedisCore, _Append

# Appends sent in one pipeline at most (``JournalOps.append``).
APPEND_GROUP = 64


class JournalOps(RedisCore):
    """The journal: append, claim, lease, park and complete payloads."""

    async def append(self, entry: JournalEntry, states: Sequence[AlertState]) -> None:  # noqa: D102
        args: list[str | bytes | int] = [
            entry.id,
            entry.source,
            _iso(entry.received_at),
            _ms(entry.received_at),
            json.dumps(dict(entry.headers)),
            entry.body,
            _ttl_ms(self.retention.max_age),
        ]
        for state in states:
            starts = _iso(state.starts_at) if state.starts_at else ""
            args += [state.status, starts, _iso(state.updated_at)]
        keys = [
            self._journal,
            self._key("payload", entry.id),
            self._payloads,
            *(self._key("alert", s.fingerprint) for s in states),
        ]
        with self._reachable("journal the payload"):
            await self._ensure_group()
            await self._grouped(keys, args)

    async def _grouped(self, keys: list[str], args: list[str | bytes | int]) -> None:
        """Send an append with those queued beside it; return once Redis ran it.

        Group commit for Redis: appends that arrive while a pipeline is on its
        way wait for the next one, which carries all of them (up to
        ``APPEND_GROUP``): one round trip, one connection taken from the pool,
        instead of one each. Each is still its own script call, atomic on its
        own, and its caller hears its own outcome. A lone append goes at once.
        """
        loop = asyncio.get_running_loop()
        flusher = self._append_flusher
        if flusher is not None and flusher.get_loop() is not loop:
            # Moved to another event loop (tests do): the old queue is gone.
            self._append_queue, flusher = [], None
        future: asyncio.Future[None] = loop.create_future()
        self._append_queue.append((keys, args, future))
        if flusher is None or flusher.done():
            self._append_flusher = asyncio.create_task(self._send_appends())
        await future

    async def _send_appends(self) -> None:
        while self._append_queue:
            batch = [
                a for a in self._append_queue[:APPEND_GROUP] if not a[2].cancelled()
            ]
            del self._append_queue[:APPEND_GROUP]
            if not batch:
                continue
            try:
                outcomes = await self._send_batch(batch)
            except Exception as exc:  # noqa: BLE001 (each caller gets it)
                outcomes = [exc] * len(batch)
            except BaseException:
                for _, _, future in batch:
                    future.cancel()
                raise
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(None)

    async def _send_batch(self, batch: list[_Append]) -> list[object]:
        """Run each append's script: alone, or many in one pipeline."""
        if len(batch) == 1:
            keys, args, _ = batch[0]
            return [await self._append_script(keys=keys, args=args)]
        pipe = self._redis.pipeline(transaction=False)
        sha = self._append_script.sha
        for keys, args, _ in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        outcomes: list[object] = await pipe.execute(raise_on_error=False)
        for i, outcome in enumerate(outcomes):
            # A Redis that lost its scripts (restarted, flushed): those go
            # again through the script object, which loads it. Appending twice
            # is appending once (the script skips a payload it holds).
            if isinstance(outcome, redis.exceptions.NoScriptError):
                keys, args, _ = batch[i]
                try:
                    outcomes[i] = await self._append_script(keys=keys, args=args)
                except redis.exceptions.RedisError as exc:
                    outcomes[i] = exc
        return outcomes

    async def claim(  # noqa: D102
        self, consumer: str, wait: float, now: datetime
    ) -> Lease | None:
        leases = await self.claim_batch(consumer, 1, wait, now)
        return leases[0] if leases else None

    async def claim_batch(  # noqa: D102
        self, consumer: str, limit: int, wait: float, now: datetime
    ) -> list[Lease]:
        deadline = time.monotonic() + max(wait, 0.0)
        until = now + self.retention.lease
        with self._reachable("claim journal entries"):
            await self._ensure_group()
            recreated = False
            while True:
                try:
                    entries = await self._claim_next(
                        consumer, max(limit, 1), now, until, deadline
                    )
                except redis.exceptions.ResponseError as exc:
                    # The stream or group was deleted under us: recreate it once.
                    if "NOGROUP" not in str(exc) or recreated:
                        raise
                    await self._ensure_group(again=True)
                    recreated = True
                    continue
                return [Lease(entry, consumer, until) for entry in entries]

    async def _claim_next(
        self,
        consumer: str,
        limit: int,
        now: datetime,
        until: datetime,
        deadline: float,
    ) -> list[JournalEntry]:
        """Claim entries (one script, one round trip), waiting until ``deadline``."""
        while True:
            reply = await self._claim_script(
                keys=[self._journal, self._leases],
                args=[
                    self._group,
                    consumer,
                    _ms(now),
                    _ms(until),
                    self._key("payload", ""),
                    limit,
                ],
            )
            last, *taken = reply
            if taken:
                entries = []
                for raw in taken:
                    fields = _pairs(raw)
                    entries.append(self._entry(_str(fields.pop("__id")), fields))
                return entries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Wake up when something is appended after the script looked (the
            # newest id it saw), or after a short while to look for lapsed
            # leases again.
            block = max(1, int(min(remaining, self._block_chunk, 0.25) * 1000))
            await self._redis.xread({self._journal: last}, count=1, block=block)

    @staticmethod
    def _entry(entry_id: str, fields: Mapping[str, bytes]) -> JournalEntry:
        return JournalEntry(
            id=entry_id,
            source=cast("Source", _str(fields["source"])),
            received_at=datetime.fromisoformat(_str(fields["received_at"])),
            body=bytes(fields["body"]),
            headers=json.loads(fields["headers"]),
            attempts=int(fields.get("attempts", b"0")),
        )

    async def renew(self, lease: Lease, now: datetime) -> Lease | None:  # noqa: D102
        until = now + self.retention.lease
        with self._reachable("renew a lease"):
            ok = await self._renew_script(
                keys=[self._leases, self._key("payload", lease.entry.id)],
                args=[lease.entry.id, lease.consumer, _ms(until)],
            )
        return Lease(lease.entry, lease.consumer, until) if ok else None

    async def release(  # noqa: D102
        self, lease: Lease, now: datetime, error: str
    ) -> None:
        # The lease ends at once: the next claim takes the entry over.
        with self._reachable("release a lease"):
            await self._renew_script(
                keys=[self._leases, self._key("payload", lease.entry.id)],
                args=[lease.entry.id, lease.consumer, 0, error[:2000]],
            )
        del now

    async def park(  # noqa: D102
        self, lease: Lease, reason: str, now: datetime
    ) -> None:
        with self._reachable("park a journal entry"):
            await self._park_script(
                keys=[
                    self._journal,
                    self._key("payload", lease.entry.id),
                    self._leases,
                    self._parked,
                ],
                args=[self._group, lease.entry.id, reason[:2000], _iso(now), _ms(now)],
            )

    async def parked(self, limit: int = 100) -> list[ParkedEntry]:  # noqa: D102
        if limit <= 0:
            return []
        with self._reachable("list parked entries"):
            ids = _members(await self._redis.zrevrange(self._parked, 0, limit - 1))
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.hgetall(self._key("payload", entry_id))
            replies = await pipe.execute()
        out = []
        for entry_id, raw in zip(ids, replies, strict=True):
            fields = _hash(raw)
            if not fields:
                continue
            out.append(
                ParkedEntry(
                    self._entry(entry_id, fields),
                    _str(fields.get("last_error", b"")),
                    datetime.fromisoformat(_str(fields["parked_at"])),
                )
            )
        return out

    async def parked_count(self) -> int:  # noqa: D102
        with self._reachable("count parked entries"):
            return int(await self._redis.zcard(self._parked))

    async def retry_parked(self, entry_id: str, now: datetime) -> bool:  # noqa: D102
        del now
        with self._reachable("retry a parked entry"):
            await self._ensure_group()
            done = await self._retry_parked_script(
                keys=[self._journal, self._key("payload", entry_id), self._parked],
                args=[entry_id],
            )
        return bool(done)

    async def complete(  # noqa: D102
        self, entry_id: str, traces: Sequence[Mapping[str, JSONValue]]
    ) -> None:
        await self.complete_batch([(entry_id, traces)])

    async def complete_batch(  # noqa: D102
        self, done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]]
    ) -> None:
        keys = [
            self._journal,
            self._decisions,
            self._payloads,
            self._finished,
            self._leases,
            self._parked,
        ]
        args: list[str | int] = [
            self._group,
            self.retention.max_decisions,
            _ttl_ms(self.retention.max_age),
        ]
        ids: set[str] = set()
        for entry_id, traces in done:
            if entry_id in ids:
                continue  # once, as the script would skip it anyway
            ids.add(entry_id)
            keys.append(self._key("payload", entry_id))
            args += [entry_id, len(traces), *_records(traces)]
        if not ids:
            return
        with self._reachable("complete journal entries"):
            await self._ensure_group()
            await self._complete_script(keys=keys, args=args)

    async def record_batch(  # noqa: D102
        self, done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]]
    ) -> None:
        keys = [self._decisions]
        args: list[str | int] = [
            self.retention.max_decisions,
            _ttl_ms(self.retention.max_age),
        ]
        ids: set[str] = set()
        for entry_id, traces in done:
            if entry_id in ids or not traces:
                continue  # once, as the script would skip it anyway
            ids.add(entry_id)
            keys.append(self._key("payload", entry_id))
            args += [len(traces), *_records(traces)]
        if not ids:
            return
        with self._reachable("record decisions"):
            await self._record_script(keys=keys, args=args)

    async def payload(self, entry_id: str) -> JournalEntry | None:  # noqa: D102
        with self._reachable("read a payload"):
            fields = await self._redis.hgetall(self._key("payload", entry_id))
        return self._entry(entry_id, _hash(fields)) if fields else None

    async def payloads(  # noqa: D102
        self, limit: int = 100, *, before: str | None = None
    ) -> list[JournalEntry]:
        if limit <= 0:
            return []
        with self._reachable("list payloads"):
            start = 0
            if before is not None:
                rank = await self._redis.zrevrank(self._payloads, before)
                if rank is None:
                    return []  # the cursor's payload was pruned
                start = cast("int", rank) + 1
            ids = _members(
                await self._redis.zrevrange(self._payloads, start, start + limit - 1)
            )
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.hgetall(self._key("payload", entry_id))
            replies = await pipe.execute()
        return [
            self._entry(entry_id, _hash(fields))
            for entry_id, fields in zip(ids, replies, strict=True)
            if fields
        ]

    async def pending(self) -> tuple[int, datetime | None]:  # noqa: D102
        with self._reachable("count unfinished entries"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.xlen(self._journal)
            pipe.xrange(self._journal, count=1)
            count, first = await pipe.execute()
        oldest = _parse(first[0][1].get(b"received_at")) if first else None
        return int(count), oldest

    async def _drop_payloads(self, ids: Sequence[str]) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._finished, *ids)
        pipe.zrem(self._payloads, *ids)
        pipe.delete(*(self._key("payload", i) for i in ids))
        removed, _, _ = await pipe.execute()
        return int(removed)

    async def alert_state(self, fingerprint: str) -> AlertState | None:  # noqa: D102
        with self._reachable("read alert state"):
            fields = _hash(await self._redis.hgetall(self._key("alert", fingerprint)))
        if not fields:
            return None
        return AlertState(
            fingerprint=fingerprint,
            status=cast("Literal['firing', 'resolved']", _str(fields["status"])),
            starts_at=_parse(fields.get("starts_at")),
            updated_at=datetime.fromisoformat(_str(fields["updated_at"])),
        )


def _records(traces: Sequence[Mapping[str, JSONValue]]) -> list[str]:
    """Decision records as the decisions list keeps them: time, then the JSON.

    The JSON as the SQLite store writes it (``record_text``: compact UTF-8,
    several times cheaper than ``json.dumps``, a NaN written as null).
    """
    return [f"{_record_time(t):013d} {record_text(t)}" for t in traces]
