"""Redis ``IncidentStore``: own keys and client, for receivers running as replicas.

Key layout (``P`` is the prefix, ``receiver`` by default, as the Redis store's)::

    P:incident:{id}          JSON of the record (filter columns + body)
    P:incident-key:{key}     id of the active incident holding ``key``
    P:incidents              sorted set of ids, score = seq (creation order)
    P:incidents:seq          INCR counter for seq
    P:incidents:watch        set of ids the ticker still visits
    P:incident-number:{day}  INCR counter for ``INC-<day>-NNN`` ids
    P:incidents:folded       sorted set of fold marks (``payload:fingerprint``),
                             score = when last written (ms, the receiver's clock)
    P:incident-effect:{eid}  hash of a pending effect: incident, body (JSON),
                             attempts (claims so far), claimed (1 in flight)
    P:incidents:effects      sorted set of pending effect ids, score = when
                             claimable (ms): a claim pushes it a lease ahead

Pending effects are written by the same script as the write they belong to
(claimed by the writer) and removed by the one that records them on the
timeline (``update(done=...)``); data written by an older receiver has none.

``create`` and ``update`` are each one Lua script (atomic across replicas) that
returns the record as stored; ``find_first`` is one script too (each key's
holder and its record), so each is one round trip. No
command enumerates the keyspace. Listing walks the sorted set from the cursor
down and filters, reading at most a bounded number of records per page.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

import msgspec
import redis.asyncio
import redis.exceptions

from receiver.errors import StoreUnavailableError
from receiver.model import JSONValue, freeze, iso, json_object
from receiver.redis_errors import outage
from receiver.store.incidents_base import (
    KEEP_MARKS,
    ClaimedEffect,
    IncidentQuery,
    IncidentRecord,
    Mark,
)

T = TypeVar("T")

# The record is stored as the JSON text the receiver sent with its ``seq`` put
# in front, never decoded and encoded again by cjson, which writes an empty list
# as an empty object (``"breaches": {}``) that the incident could not be read
# back from. The text never has a ``seq`` of its own (``_encode``).
#
# Fold marks, written by the scripts below with the write they belong to.
# KEYS[m]: the marks' sorted set; ARGV[first..]: the marks; ``now`` and
# ``keep`` in ms: each mark is scored when written, and those older than
# ``keep`` are forgotten.
_MARK_FN = """
local function mark(m, first, now, keep)
  local n = #ARGV
  if first > n then return end
  for i = first, n do
    redis.call('ZADD', KEYS[m], now, ARGV[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[m], '-inf', '(' .. (now - keep))
end
"""

# Pending effects, written and removed by the scripts below with the write
# they belong to. KEYS[z]: their sorted set; ``prefix``: their hashes' key
# prefix; ARGV[first..]: ``count`` triples (id, body, claimed until ms)
# written, or pairs (id, attempts) removed while that is still their latest
# claim. Each returns the index after its arguments.
_EFFECT_FN = """
local function pend(z, prefix, incident, first, count)
  for i = first, first + 3 * count - 1, 3 do
    redis.call('HSET', prefix .. ARGV[i], 'incident', incident,
      'body', ARGV[i + 1], 'attempts', 1, 'claimed', 1)
    redis.call('ZADD', KEYS[z], ARGV[i + 2], ARGV[i])
  end
  return first + 3 * count
end
local function done(z, prefix, first, count)
  for i = first, first + 2 * count - 1, 2 do
    if redis.call('HGET', prefix .. ARGV[i], 'attempts') == ARGV[i + 1] then
      redis.call('DEL', prefix .. ARGV[i])
      redis.call('ZREM', KEYS[z], ARGV[i])
    end
  end
  return first + 2 * count
end
"""

# KEYS: record, zset, seq, watch, marks, effects; ARGV: id, json, active,
# watch, prefix, key count, now ms, keep ms, effect prefix, effect count,
# keys..., effects (id, body, until)..., marks...
# Returns the record as stored (with its seq), or 0 if the id or a key is taken:
# the caller needs no second round trip to read it back.
_CREATE = (
    _MARK_FN
    + _EFFECT_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local last = 10 + tonumber(ARGV[6])
if ARGV[3] == '1' then
  for i = 11, last do
    if redis.call('EXISTS', ARGV[5] .. ARGV[i]) == 1 then return 0 end
  end
end
local seq = redis.call('INCR', KEYS[3])
local raw = '{"seq":' .. string.format('%d', seq) .. ',' .. string.sub(ARGV[2], 2)
redis.call('SET', KEYS[1], raw)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if ARGV[4] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
if ARGV[3] == '1' then
  for i = 11, last do redis.call('SET', ARGV[5] .. ARGV[i], ARGV[1]) end
end
local after = pend(6, ARGV[9], ARGV[1], last + 1, tonumber(ARGV[10]))
mark(5, after, tonumber(ARGV[7]), tonumber(ARGV[8]))
return raw
"""
)

# KEYS: record, watch, marks, effects; ARGV: id, json, active, watch, prefix,
# version, key count, now ms, keep ms, effect prefix, effect count, done
# count, keys..., effects (id, body, until)..., done (id, attempts)..., marks...
# Returns the record as stored, or 0 on a version conflict or a taken key.
_UPDATE = (
    _MARK_FN
    + _EFFECT_FN
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local old = cjson.decode(raw)
if tonumber(old['version']) ~= tonumber(ARGV[6]) - 1 then return 0 end
local last = 12 + tonumber(ARGV[7])
if ARGV[3] == '1' then
  for i = 13, last do
    local held = redis.call('GET', ARGV[5] .. ARGV[i])
    if held and held ~= ARGV[1] then return 0 end
  end
end
for _, k in ipairs(old['keys']) do
  if redis.call('GET', ARGV[5] .. k) == ARGV[1] then redis.call('DEL', ARGV[5] .. k) end
end
local seq = string.format('%d', old['seq'])
local stored = '{"seq":' .. seq .. ',' .. string.sub(ARGV[2], 2)
redis.call('SET', KEYS[1], stored)
if ARGV[3] == '1' then
  for i = 13, last do redis.call('SET', ARGV[5] .. ARGV[i], ARGV[1]) end
end
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
local after = pend(4, ARGV[10], ARGV[1], last + 1, tonumber(ARGV[11]))
after = done(4, ARGV[10], after, tonumber(ARGV[12]))
mark(3, after, tonumber(ARGV[8]), tonumber(ARGV[9]))
return stored
"""
)

# KEYS: marks; ARGV: now ms, keep ms, marks...
_MARK = (
    _MARK_FN
    + """
mark(1, 3, tonumber(ARGV[1]), tonumber(ARGV[2]))
return 1
"""
)

# KEYS: the keys' holders, in order; ARGV: the record key's prefix. The records
# of the keys that are held, in order (the caller takes the first active one):
# one round trip for the lookups and the reads.
_FIND = """
local found = {}
for i = 1, #KEYS do
  local held = redis.call('GET', KEYS[i])
  if held then
    local raw = redis.call('GET', ARGV[1] .. held)
    if raw then found[#found + 1] = raw end
  end
end
return found
"""

# KEYS: effects; ARGV: now ms, claimed until ms, effect prefix, limit. Claims
# the due effects (a lease ahead, one more attempt) and returns each as
# {id, incident, body, attempts}.
_CLAIM_EFFECTS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],
  'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local row = ARGV[3] .. id
  if redis.call('EXISTS', row) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    local n = redis.call('HINCRBY', row, 'attempts', 1)
    redis.call('HSET', row, 'claimed', 1)
    out[#out + 1] = {id, redis.call('HGET', row, 'incident'),
      redis.call('HGET', row, 'body'), n}
  end
end
return out
"""

# KEYS: effects, the effect's hash; ARGV: id, attempts, until ms. Only while
# that claim is still its latest and in flight (not handed back); 1 if so.
_RENEW_EFFECT = """
if redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[2], 'claimed') ~= '1' then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""

# KEYS: effects, the effect's hash; ARGV: id, attempts, due ms. Only while
# that claim is still its latest; 1 if so.
_RETRY_EFFECT = """
if redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'claimed', 0)
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""

# KEYS: effects; ARGV: effect prefix, (id, attempts)...
_FINISH_EFFECTS = (
    _EFFECT_FN
    + """
done(1, ARGV[1], 2, (#ARGV - 1) / 2)
return 1
"""
)

PAGE_SCAN = 200  # records read per round while filtering a page


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def _encode(record: IncidentRecord) -> str:
    # msgspec: several times cheaper than json.dumps for a long timeline.
    return _ENCODER.encode(
        {
            "id": record.id,
            "keys": list(record.keys),
            "state": record.state,
            "severity": record.severity,
            "opened_at": iso(record.opened_at),
            "opened_ms": int(record.opened_at.timestamp() * 1000),
            "version": record.version,
            "watch": record.watch,
            "body": dict(record.body),
        },
    ).decode()


def _whole(value: JSONValue) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"not a whole number: {value!r}"
        raise TypeError(msg)
    return int(value)


def _loads(raw: bytes | str) -> JSONValue:
    try:
        return cast("JSONValue", _DECODER.decode(raw))
    except msgspec.DecodeError:
        # Written by an older receiver with the json module (NaN, Infinity).
        return cast("JSONValue", json.loads(raw))


def _decode(raw: bytes | str) -> IncidentRecord:
    data = json_object(_loads(raw))
    keys = data.get("keys")
    return IncidentRecord(
        id=str(data["id"]),
        # cjson turns an empty list into an empty object: both mean no keys.
        keys=tuple(str(k) for k in keys) if isinstance(keys, list) else (),
        state=str(data["state"]),
        severity=str(data["severity"]),
        opened_at=datetime.fromisoformat(str(data["opened_at"])),
        version=_whole(data["version"]),
        watch=bool(data["watch"]),
        body=freeze(json_object(data.get("body"))),
        seq=_whole(data.get("seq", 0)),
    )


def _members(marks: Sequence[Mark]) -> list[str]:
    """Marks as the sorted set's members (a payload id holds no colon)."""
    return [f"{payload}:{fingerprint}" for payload, fingerprint in marks]


def _bodies(record: IncidentRecord) -> list[str]:
    """The record's pending effects as the scripts' (id, body, until) triples."""
    return [part for e in record.effects for part in (e.id, e.body, str(_ms(e.until)))]


def _claims(effects: Sequence[ClaimedEffect]) -> list[str]:
    """Claimed effects as the scripts' (id, attempts) pairs."""
    return [part for e in effects for part in (e.id, str(e.attempts))]


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored(reply: object) -> IncidentRecord | None:
    """What a write script returned: the record as stored, or 0 if refused."""
    return _decode(reply) if isinstance(reply, bytes | str) else None


class RedisIncidentStore:
    """Incidents in Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "receiver",
        socket_timeout: float = 5.0,
        keep_marks: timedelta = KEEP_MARKS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=2.0
        )
        self._p = prefix
        self._keep_marks = str(int(keep_marks.total_seconds() * 1000))
        self._clock = clock
        self._claim_effects = self._redis.register_script(_CLAIM_EFFECTS)
        self._renew_effect = self._redis.register_script(_RENEW_EFFECT)
        self._retry_effect = self._redis.register_script(_RETRY_EFFECT)
        self._finish_effects = self._redis.register_script(_FINISH_EFFECTS)
        self._create = self._redis.register_script(_CREATE)
        self._update = self._redis.register_script(_UPDATE)
        self._mark = self._redis.register_script(_MARK)
        self._find = self._redis.register_script(_FIND)

    def _k(self, *parts: str) -> str:
        return ":".join((self._p, *parts))

    async def _call(self, what: str, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except redis.exceptions.RedisError as exc:
            # Down for now as the main store reads it (a failover's READONLY
            # too): not a bug that would drop the traces being folded.
            why = outage(exc)
            if why is None:
                raise
            raise StoreUnavailableError(
                f"Redis incident store {why}: {what}: {exc}"
            ) from exc

    async def next_number(self, day: str) -> int:  # noqa: D102
        return int(
            await self._call(
                "next_number", self._redis.incr(self._k("incident-number", day))
            )
        )

    def _args(self, record: IncidentRecord) -> list[str]:
        return [
            record.id,
            _encode(record),
            "1" if record.active else "0",
            "1" if record.watch else "0",
            self._k("incident-key") + ":",
        ]

    def _marks(self) -> list[str]:
        return [self._k("incidents", "folded")]

    def _when(self) -> list[str]:
        """Now and how long marks are kept, in ms (the scripts' arguments)."""
        return [str(int(self._clock().timestamp() * 1000)), self._keep_marks]

    def _effects(self) -> str:
        return self._k("incidents", "effects")

    def _effect(self, effect_id: str = "") -> str:
        return self._k("incident-effect", effect_id)

    async def claim_effects(  # noqa: D102
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[ClaimedEffect]:
        got = await self._call(
            "claim_effects",
            self._claim_effects(
                keys=[self._effects()],
                args=[
                    str(_ms(now)),
                    str(_ms(now + lease)),
                    self._effect(),
                    str(limit),
                ],
            ),
        )
        return [
            ClaimedEffect(_text(i), _text(incident), _text(body), int(n))
            for i, incident, body, n in cast("list[list[bytes | int]]", got)
        ]

    async def renew_effect(self, effect: ClaimedEffect, until: datetime) -> bool:  # noqa: D102
        renewed = await self._call(
            "renew_effect",
            self._renew_effect(
                keys=[self._effects(), self._effect(effect.id)],
                args=[effect.id, str(effect.attempts), str(_ms(until))],
            ),
        )
        return int(cast("int", renewed)) == 1

    async def retry_effect(self, effect: ClaimedEffect, due: datetime) -> bool:  # noqa: D102
        handed = await self._call(
            "retry_effect",
            self._retry_effect(
                keys=[self._effects(), self._effect(effect.id)],
                args=[
                    effect.id,
                    str(effect.attempts),
                    str(_ms(due)),
                ],
            ),
        )
        return int(cast("int", handed)) == 1

    async def finish_effects(self, effects: Sequence[ClaimedEffect]) -> None:  # noqa: D102
        if effects:
            await self._call(
                "finish_effects",
                self._finish_effects(
                    keys=[self._effects()],
                    args=[self._effect(), *_claims(effects)],
                ),
            )

    async def reclaim_effects(self, now: datetime) -> int:  # noqa: D102, ARG002 (nothing to do)
        # Replicas share the effects: one another replica claimed may be on
        # its way. A claim a dead replica held lapses with its lease.
        return 0

    async def create(  # noqa: D102
        self, record: IncidentRecord, folded: Sequence[Mark] = ()
    ) -> IncidentRecord | None:
        stored = await self._call(
            "create",
            self._create(
                keys=[
                    self._k("incident", record.id),
                    self._k("incidents"),
                    self._k("incidents", "seq"),
                    self._k("incidents", "watch"),
                    *self._marks(),
                    self._effects(),
                ],
                args=[
                    *self._args(record),
                    str(len(record.keys)),
                    *self._when(),
                    self._effect(),
                    str(len(record.effects)),
                    *record.keys,
                    *_bodies(record),
                    *_members(folded),
                ],
            ),
        )
        return _stored(stored)

    async def create_numbered(  # noqa: D102
        self,
        day: str,
        build: Callable[[int], IncidentRecord],
        folded: Sequence[Mark] = (),
    ) -> IncidentRecord | None:
        # Two round trips; a number lost to a taken key leaves a gap, never a
        # duplicate.
        return await self.create(build(await self.next_number(day)), folded)

    async def update(  # noqa: D102
        self,
        record: IncidentRecord,
        folded: Sequence[Mark] = (),
        *,
        done: Sequence[ClaimedEffect] = (),
    ) -> IncidentRecord | None:
        stored = await self._call(
            "update",
            self._update(
                keys=[
                    self._k("incident", record.id),
                    self._k("incidents", "watch"),
                    *self._marks(),
                    self._effects(),
                ],
                args=[
                    *self._args(record),
                    str(record.version),
                    str(len(record.keys)),
                    *self._when(),
                    self._effect(),
                    str(len(record.effects)),
                    str(len(done)),
                    *record.keys,
                    *_bodies(record),
                    *_claims(done),
                    *_members(folded),
                ],
            ),
        )
        return _stored(stored)

    async def mark_folded(self, folded: Sequence[Mark]) -> None:  # noqa: D102
        if folded:
            await self._call(
                "mark_folded",
                self._mark(keys=self._marks(), args=[*self._when(), *_members(folded)]),
            )

    async def folded(self, marks: Sequence[Mark]) -> set[Mark]:  # noqa: D102
        wanted = list(dict.fromkeys(marks))
        if not wanted:
            return set()
        scores = await self._call(
            "folded",
            self._redis.zmscore(self._k("incidents", "folded"), _members(wanted)),
        )
        return {m for m, score in zip(wanted, scores, strict=True) if score is not None}

    async def get(self, incident_id: str) -> IncidentRecord | None:  # noqa: D102
        raw = await self._call("get", self._redis.get(self._k("incident", incident_id)))
        return _decode(raw) if raw else None

    async def find(self, key: str) -> IncidentRecord | None:  # noqa: D102
        return await self.find_first([key])

    async def find_first(self, keys: Sequence[str]) -> IncidentRecord | None:  # noqa: D102
        if not keys:
            return None
        raws = await self._call(
            "find",
            self._find(
                keys=[self._k("incident-key", key) for key in keys],
                args=[self._k("incident") + ":"],
            ),
        )
        for raw in cast("list[bytes]", raws):
            record = _decode(raw)
            if record.active:
                return record
        return None

    async def page(  # noqa: D102
        self, query: IncidentQuery
    ) -> tuple[list[IncidentRecord], int | None]:
        found: list[IncidentRecord] = []
        top: float | str = f"({query.before}" if query.before is not None else "+inf"
        while True:
            batch = cast(
                "list[tuple[bytes, float]]",
                await self._call(
                    "page",
                    self._redis.zrevrangebyscore(
                        self._k("incidents"),
                        top,
                        "-inf",
                        start=0,
                        num=PAGE_SCAN,
                        withscores=True,
                    ),
                ),
            )
            if not batch:
                return found, None
            raws = await self._call(
                "page",
                self._redis.mget([self._k("incident", m.decode()) for m, _ in batch]),
            )
            for raw in raws:
                if not raw:
                    continue
                record = _decode(raw)
                if not query.matches(record):
                    continue
                if len(found) == query.limit:
                    return found, found[-1].seq
                found.append(record)
            top = f"({int(batch[-1][1])}"

    async def watched(self) -> list[str]:  # noqa: D102
        ids = await self._call(
            "watched", self._redis.smembers(self._k("incidents", "watch"))
        )
        return sorted(i.decode() if isinstance(i, bytes) else i for i in ids)

    async def close(self) -> None:  # noqa: D102
        await self._redis.aclose()
