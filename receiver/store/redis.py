"""Redis store: the shared ``Store`` for several replicas of the receiver.

The HTTP edge appends payloads here, workers on every replica claim and complete
them, and the runner's guards (idempotency keys, locks, cooldowns, budgets,
circuits, approvals) live here so that replicas see one another. Built by
whatever wires the application (``create_app`` receives it); nothing here reads
settings or the environment.

Key layout (``P`` is the configured prefix; every name after it is the caller's)::

    P:journal              stream of unfinished entries: fields id, received_at;
                           consumer group ``workers``; an entry is XACKed and
                           XDELed when completed, so XLEN is the unfinished count
    P:payload:{id}         hash: source, received_at, headers (JSON), body,
                           stream (its stream id), attempts, done, state
                           (pending|claimed|done|parked), consumer, last_error,
                           parked_at; no TTL while unfinished, ``max_age`` once
                           completed
    P:leases               sorted set of claimed entry ids, score = lease end
                           (the caller's clock, ms); a lapsed one is reclaimed
                           with XCLAIM
    P:parked               sorted set of parked entry ids, score parked_at (ms)
    P:incarnations         sorted set of worker incarnations, score = alive
                           until (the caller's clock, ms)
    P:held:{incarnation}   set of lock names an incarnation took (recovery)
    P:pause                JSON Pause while the global pause is on
    P:payloads             sorted set of every stored id, score received_at (ms)
    P:finished             sorted set of completed ids, score received_at (ms)
    P:decisions            list of decision records, newest first, capped at
                           ``max_decisions``; each element is
                           "<decided_at as 13-digit epoch ms> <JSON record>"
                           so pruning by age never decodes JSON; TTL ``max_age``
    P:alert:{fingerprint}  hash: status, starts_at, updated_at; TTL ``max_age``
    P:seen:{key}           "1", SET NX PX ttl
    P:claim:{key}          JSON Claim with expires_ms and the intent recorded
                           by mark_sending; finishing keeps the TTL
    P:lock:{name}          "owner|token|expires_ms"
    P:fence                INCR counter for lock fencing tokens (never expires:
                           tokens must keep increasing)
    P:last-run:{scope}     "<ISO timestamp> <expires_ms>"
    P:budget:{scope}       sorted set of runs, score = the caller's ``now`` (ms),
                           member "<ms>:<random>" (the ``BudgetSlot``)
    P:circuit:{scope}      hash: failures, opened_at; TTL ``max_age``
    P:approval:{id}        hash: key, created_at, expires_at, request (JSON),
                           status, decided_by, decided_at; TTL until expires_at
                           plus a day
    P:approval-key:{key}   the approval id for an idempotency key, same TTL
    P:approvals            sorted set of approval ids, score created_at (ms)

Timestamps stored as values are ISO 8601 in UTC with microseconds (fixed width,
so they compare as strings in Lua); scores are epoch milliseconds. Every
multi-key change is one Lua script, so it is atomic. No command here enumerates
the keyspace: no KEYS, no SCAN, no FLUSH*.

Every expiry that decides something (leases, locks, run-once claims,
cooldowns, budget windows, incarnation liveness) is stored as the caller's time
and compared with the caller's ``now`` inside the scripts. Keys also get a
``PXAT`` to collect garbage, never earlier than the caller's deadline (and, if
the caller's clock lags Redis's, at least the full TTL in Redis's time). Only
delivery ids (``seen``) use a plain Redis TTL: no guard reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from receiver.errors import InputError, StoreUnavailableError
from receiver.model import Source
from receiver.store.base import (
    AlertState,
    Approval,
    BudgetSlot,
    Circuit,
    Claim,
    ClaimOutcome,
    DecisionPage,
    DecisionQuery,
    JournalEntry,
    Lease,
    Lock,
    ParkedEntry,
    Pause,
    Retention,
    decision_matches,
)

# How many decision records one ``decisions`` call reads at most, and per round
# trip: a filter that matches nothing must not read the whole log.
DECISION_SCAN = 20_000
DECISION_CHUNK = 1_000
# XAUTOCLAIM COUNT 1 looks at up to 10 pending entries per call; this bounds the
# calls one ``claim`` spends looking for an expired lease.
RECLAIM_CALLS = 10
# Pruning removes at most this many items per round trip.
PRUNE_BATCH = 1_000
APPROVALS_MAX = 1_000
# Connections to the store per process. Callers beyond it wait for one (up to
# the socket timeout) instead of failing at once: redis-py's default pool
# refuses the 101st concurrent command with "Too many connections", which under
# a burst of webhooks turned into 503s and retried, late decisions.
MAX_CONNECTIONS = 64
APPROVALS_PAGE = 100
_CURSOR = re.compile(r"[0-9a-f]{32}")
# Write refusals that mean "retry later", not "your request is wrong" (besides
# OOM and READONLY, which redis-py raises as their own classes).
_REFUSALS = ("MISCONF", "NOREPLICAS", "MASTERDOWN")

_APPEND = """
-- KEYS: journal, payload hash, payload index, then one alert hash per state
-- ARGV: id, source, received_at, received_ms, headers, body, state ttl ms,
--       then per state: status, starts_at ('' when unknown), updated_at
if redis.call('EXISTS', KEYS[2]) == 0 then
  local sid = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1],
                         'received_at', ARGV[3])
  redis.call('HSET', KEYS[2], 'source', ARGV[2], 'received_at', ARGV[3],
             'headers', ARGV[5], 'body', ARGV[6], 'stream', sid,
             'attempts', '0', 'done', '0', 'state', 'pending')
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
local written = 0
for i = 4, #KEYS do
  local at = 8 + (i - 4) * 3
  local status, starts, updated = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local old = redis.call('HMGET', KEYS[i], 'status', 'starts_at')
  local replace = true
  if old[1] then
    local old_starts = old[2] or ''
    -- fixed-width ISO strings order like the times; '' (unknown) is earliest
    if old_starts ~= starts then
      replace = starts > old_starts
    else
      replace = not (old[1] == 'resolved' and status == 'firing')
    end
  end
  if replace then
    redis.call('HSET', KEYS[i], 'status', status, 'starts_at', starts,
               'updated_at', updated)
    redis.call('PEXPIRE', KEYS[i], ARGV[7])
    written = written + 1
  end
end
return written
"""

_COMPLETE = """
-- KEYS: payload hash, journal, decisions, payload index, finished index, leases,
--       parked
-- ARGV: group, max decisions, ttl ms, entry id, then the records
if redis.call('HGET', KEYS[1], 'done') == '1' then return 0 end
for i = 5, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
if #ARGV >= 5 then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
redis.call('ZREM', KEYS[6], ARGV[4])
redis.call('ZREM', KEYS[7], ARGV[4])
local sid = redis.call('HGET', KEYS[1], 'stream')
if sid then
  redis.call('XACK', KEYS[2], ARGV[1], sid)
  redis.call('XDEL', KEYS[2], sid)
  redis.call('HSET', KEYS[1], 'done', '1', 'state', 'done')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  local score = redis.call('ZSCORE', KEYS[4], ARGV[4])
  if score then redis.call('ZADD', KEYS[5], score, ARGV[4]) end
end
return 1
"""

_PRUNE_DECISIONS = """
-- KEYS: decisions; ARGV: cutoff ms, max decisions, max pops
local dropped = 0
local size = redis.call('LLEN', KEYS[1])
local keep = tonumber(ARGV[2])
if size > keep then
  redis.call('LTRIM', KEYS[1], 0, keep - 1)
  dropped = size - keep
end
local cutoff = tonumber(ARGV[1])
local pops = 0
while pops < tonumber(ARGV[3]) do
  local tail = redis.call('LINDEX', KEYS[1], -1)
  if not tail or tonumber(string.sub(tail, 1, 13)) >= cutoff then break end
  redis.call('RPOP', KEYS[1])
  pops = pops + 1
end
return {dropped, pops}
"""

_GC = """
local function gc_at(expires, now)
  local t = redis.call('TIME')
  local here = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return math.max(expires, here + (expires - now))
end
"""

_DELIVER = """
-- KEYS: journal, payload hash, leases; ARGV: group, stream id, consumer,
--       lease end ms, entry id
local state = redis.call('HGET', KEYS[2], 'state')
if redis.call('EXISTS', KEYS[2]) == 0 or state == 'done' or state == 'parked' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  return false
end
if state == 'claimed' and redis.call('HGET', KEYS[2], 'consumer') ~= ARGV[3] then
  return false  -- someone else's lease: never taken this way
end
redis.call('HSET', KEYS[2], 'state', 'claimed', 'consumer', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return redis.call('HGETALL', KEYS[2])
"""

_READ_NEW = """
-- KEYS: journal, leases; ARGV: group, consumer, lease end ms, payload key prefix
-- Reading and leasing are one step: a crash between them cannot leave an
-- entry delivered but unleased. (The payload key is built here from the
-- message: like the other multi-key scripts, this needs one Redis, not a
-- cluster.)
for _ = 1, 10 do
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
                           'STREAMS', KEYS[1], '>')
  if not reply then return false end
  local message = reply[1][2][1]
  local sid, fields, id = message[1], message[2], ''
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then id = fields[i + 1] end
  end
  local hash = ARGV[4] .. id
  local state = redis.call('HGET', hash, 'state')
  if redis.call('EXISTS', hash) == 0 or state == 'done' or state == 'parked' then
    redis.call('XACK', KEYS[1], ARGV[1], sid)
    redis.call('XDEL', KEYS[1], sid)
  else
    redis.call('HSET', hash, 'state', 'claimed', 'consumer', ARGV[2])
    redis.call('HINCRBY', hash, 'attempts', 1)
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    local out = redis.call('HGETALL', hash)
    table.insert(out, '__id')
    table.insert(out, id)
    return out
  end
end
return false
"""

_TAKEOVER = """
-- KEYS: journal, leases, payload hash
-- ARGV: group, consumer, now ms, lease end ms, entry id
local score = redis.call('ZSCORE', KEYS[2], ARGV[5])
if not score or tonumber(score) >= tonumber(ARGV[3]) then return false end
if redis.call('HGET', KEYS[3], 'state') ~= 'claimed' then
  redis.call('ZREM', KEYS[2], ARGV[5])
  return false
end
local sid = redis.call('HGET', KEYS[3], 'stream')
if sid then redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, sid) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[3], 'consumer', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'attempts', 1)
return redis.call('HGETALL', KEYS[3])
"""

_RENEW = """
-- KEYS: leases, payload hash; ARGV: entry id, consumer, lease end ms, error
-- (ARGV[4] present: a release, the lease ends at once and the error is kept)
if redis.call('HGET', KEYS[2], 'state') ~= 'claimed' then return 0 end
if redis.call('HGET', KEYS[2], 'consumer') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
if ARGV[4] then
  redis.call('HSET', KEYS[2], 'last_error', ARGV[4], 'consumer', '')
end
return 1
"""

_PARK = """
-- KEYS: journal, payload hash, leases, parked
-- ARGV: group, entry id, reason, parked_at ISO, parked_at ms
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'claimed' and state ~= 'pending' then return 0 end
local sid = redis.call('HGET', KEYS[2], 'stream')
if sid then
  redis.call('XACK', KEYS[1], ARGV[1], sid)
  redis.call('XDEL', KEYS[1], sid)
end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'parked', 'last_error', ARGV[3],
           'parked_at', ARGV[4], 'consumer', '')
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
return 1
"""

_RETRY_PARKED = """
-- KEYS: journal, payload hash, parked; ARGV: entry id
if redis.call('HGET', KEYS[2], 'state') ~= 'parked' then return 0 end
local sid = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'received_at',
                       redis.call('HGET', KEYS[2], 'received_at'))
redis.call('HSET', KEYS[2], 'state', 'pending', 'attempts', '0', 'stream', sid,
           'parked_at', '')
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

_CLAIM_KEY = (
    _GC
    + """
-- KEYS: claim, incarnations; ARGV: claim JSON, now ms, expires ms, owner
local raw = redis.call('GET', KEYS[1])
local recovered = ''
if raw then
  local c = cjson.decode(raw)
  local live = tonumber(c['expires_ms'] or '9e18') >= tonumber(ARGV[2])
  local orphan = false
  -- Our own incarnation is alive (it is asking): its claim is another task's
  -- in flight, never an orphan, even if its heartbeat lapsed under load.
  if c['owner'] ~= ARGV[4] and (c['status'] == 'running'
                                or c['status'] == 'sending') then
    local score = redis.call('ZSCORE', KEYS[2], c['owner'])
    orphan = score ~= false and tonumber(score) < tonumber(ARGV[2])
  end
  if live and not orphan then return {0, raw} end
  if orphan then recovered = raw end
end
local mine = ARGV[1]
local stopped = 0
if recovered ~= '' then
  local c = cjson.decode(recovered)
  -- Known to have stopped (retire): not merely a heartbeat that lapsed.
  if redis.call('ZSCORE', KEYS[2], c['owner'] .. '|stopped') then stopped = 1 end
  if c['status'] == 'sending' then
    -- The "sending" mark stays, with its intent: should this holder die too,
    -- the next one re-checks it again instead of sending a second time.
    local m = cjson.decode(ARGV[1])
    m['status'] = 'sending'
    m['intent'] = c['intent'] or ''
    mine = cjson.encode(m)
  end
end
redis.call('SET', KEYS[1], mine, 'PXAT',
           gc_at(tonumber(ARGV[3]), tonumber(ARGV[2])))
return {1, recovered, stopped, mine}
"""
)

_SEEN = (
    _GC
    + """
-- KEYS: seen; ARGV: now ms, expires ms (the caller's clock decides, not the TTL)
local kept = tonumber(redis.call('GET', KEYS[1]) or '')
if kept and kept >= tonumber(ARGV[1]) then return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT',
           gc_at(tonumber(ARGV[2]), tonumber(ARGV[1])))
return 0
"""
)

_MARK_SENDING = """
-- KEYS: claim; ARGV: owner, at, intent (JSON text, kept as a string field)
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local claim = cjson.decode(raw)
if claim['owner'] ~= ARGV[1] then return 0 end
if claim['status'] ~= 'running' and claim['status'] ~= 'sending' then return 0 end
claim['status'] = 'sending'
claim['at'] = ARGV[2]
claim['intent'] = ARGV[3]
redis.call('SET', KEYS[1], cjson.encode(claim), 'XX', 'KEEPTTL')
return 1
"""

_FINISH_KEY = """
-- only string fields: cjson round-trips them exactly
-- KEYS: claim; ARGV: status, detail, at, owner (fenced: only its unfinished claim)
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local claim = cjson.decode(raw)
if claim['owner'] ~= ARGV[4] then return 0 end
if claim['status'] ~= 'running' and claim['status'] ~= 'sending' then return 0 end
claim['status'] = ARGV[1]
claim['detail'] = ARGV[2]
claim['at'] = ARGV[3]
redis.call('SET', KEYS[1], cjson.encode(claim), 'XX', 'KEEPTTL')
return 1
"""

_RELEASE_KEY = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local claim = cjson.decode(raw)
if claim['owner'] ~= ARGV[1] or claim['status'] ~= 'running' then return 0 end
return redis.call('DEL', KEYS[1])
"""

_LOCK_VALUE = """
local function parse(v)
  local owner, token, expires = string.match(v, '^(.*)|(%d+)|(%d+)$')
  if owner then return owner, token, tonumber(expires) end
  owner, token = string.match(v, '^(.*)|(%d+)$')
  return owner, token, 9e18
end
"""

_ACQUIRE_LOCK = (
    _GC
    + _LOCK_VALUE
    + """
-- KEYS: lock, fence counter, incarnations, the owner's held set
-- ARGV: owner, now ms, expires ms, lock name
local v = redis.call('GET', KEYS[1])
if v then
  local owner, _, expires = parse(v)
  local score = redis.call('ZSCORE', KEYS[3], owner)
  -- Never dead to itself: its lock is held by another of its tasks.
  local dead = owner ~= ARGV[1] and score ~= false
               and tonumber(score) < tonumber(ARGV[2])
  if expires >= tonumber(ARGV[2]) and not dead then return false end
end
local token = redis.call('INCR', KEYS[2])
local at = gc_at(tonumber(ARGV[3]), tonumber(ARGV[2]))
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token .. '|' .. ARGV[3], 'PXAT', at)
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('PEXPIREAT', KEYS[4], at)
return token
"""
)

_RENEW_LOCK = (
    _GC
    + _LOCK_VALUE
    + """
-- KEYS: lock, held set; ARGV: owner, token, now ms, expires ms
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local owner, token = parse(v)
if owner ~= ARGV[1] or token ~= ARGV[2] then return 0 end
local at = gc_at(tonumber(ARGV[4]), tonumber(ARGV[3]))
redis.call('SET', KEYS[1], owner .. '|' .. token .. '|' .. ARGV[4], 'PXAT', at)
redis.call('PEXPIREAT', KEYS[2], at)
return 1
"""
)

_RELEASE_LOCK = (
    _LOCK_VALUE
    + """
-- KEYS: lock; ARGV: owner, token ('' for any token of this owner)
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local owner, token = parse(v)
if owner ~= ARGV[1] or (ARGV[2] ~= '' and token ~= ARGV[2]) then return 0 end
return redis.call('DEL', KEYS[1])
"""
)

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SET_LAST_RUN = (
    _GC
    + """
-- KEYS: last-run; ARGV: value, at ms, expires ms
redis.call('SET', KEYS[1], ARGV[1], 'PXAT',
           gc_at(tonumber(ARGV[3]), tonumber(ARGV[2])))
return 1
"""
)

_RESERVE_BUDGET = (
    _GC
    + """
-- KEYS: budget; ARGV: now ms, window start ms, limit, member, window end ms
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local used = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], ARGV[1])
if used >= tonumber(ARGV[3]) then return false end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
local at = gc_at(tonumber(ARGV[5]), tonumber(ARGV[1]))
redis.call('PEXPIREAT', KEYS[1], at)
return used + 1
"""
)

_RECORD_OUTCOME = """
-- KEYS: circuit; ARGV: ok ('1' or '0'), threshold, now, ttl ms
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  return {0, ''}
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if not opened and failures >= tonumber(ARGV[2]) then
  opened = ARGV[3]
  redis.call('HSET', KEYS[1], 'opened_at', opened)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {failures, opened or ''}
"""

_PUT_APPROVAL = """
-- KEYS: key index, approval hash, approvals index
-- ARGV: id, ttl ms, created ms, then field/value pairs
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return ARGV[1]
"""

_DECIDE_APPROVAL = """
-- KEYS: approval hash; ARGV: status, by, at
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_by', ARGV[2],
           'decided_at', ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""


def _iso(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 (microseconds always present)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(value: bytes | str | None) -> datetime | None:
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return datetime.fromisoformat(text)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _ttl_ms(ttl: timedelta) -> int:
    """A PX argument: at least 1 ms (Redis rejects 0)."""
    return max(1, int(ttl.total_seconds() * 1000))


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    """A flat HGETALL reply (from a script) as a dict."""
    return {_str(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _hash(reply: Mapping[bytes | str, bytes | str]) -> dict[str, bytes]:
    """An HGETALL reply with text keys and bytes values."""
    return {_str(k): v.encode() if isinstance(v, str) else v for k, v in reply.items()}


def _members(reply: Sequence[Any]) -> list[str]:
    """A sorted-set range reply (members only) as text."""
    return [_str(m) for m in reply]


def _digest(line: bytes) -> str:
    """A decision line's identity, for cursors."""
    return hashlib.blake2b(line, digest_size=16).hexdigest()


def _unfiltered(query: DecisionQuery) -> bool:
    return not (
        query.fingerprint
        or query.payload_id
        or query.since
        or query.rule
        or query.playbook
        or query.decision
    )


class _Picker:
    """Which stored decision lines a page takes: after the cursor, filtered."""

    def __init__(self, query: DecisionQuery) -> None:
        self.query = query
        self.seeking = query.cursor
        self.plain = _unfiltered(query)
        self.needles = _needles(query)
        self.last = b""

    def __call__(self, raw: bytes) -> str | None:
        """The record's JSON text if the page takes it, else None."""
        if self.seeking is not None:
            if _digest(raw) == self.seeking:
                self.seeking = None
            return None
        # Decode only lines holding every filtered value: a read must not spend
        # the event loop decoding the whole list.
        if not all(n in raw for n in self.needles):
            return None
        text = raw[14:].decode()
        if not self.plain and not decision_matches(json.loads(text), self.query):
            return None
        return text


def _needles(query: DecisionQuery) -> list[bytes]:
    """Bytes a stored line must contain to pass ``query``.

    Records are compact, ASCII-escaped JSON, as ``complete`` and ``record`` write
    them, so a filtered value appears exactly like this in a matching line.
    """
    fields = (
        ("fingerprint", query.fingerprint),
        ("payload_id", query.payload_id),
        ("rule", query.rule),
        ("playbook", query.playbook),
        ("decision", query.decision),
    )
    return [f'"{name}":{json.dumps(value)}'.encode() for name, value in fields if value]


def _record_time(record: Mapping[str, Any]) -> int:
    """When a decision was made (epoch ms), for pruning by age."""
    decided = record.get("decided_at")
    if isinstance(decided, str):
        with contextlib.suppress(ValueError):
            return _ms(datetime.fromisoformat(decided))
    return int(time.time() * 1000)


def _first_message(reply: Any) -> tuple[bytes, dict[bytes, bytes] | None] | None:
    """The one message of an XREADGROUP COUNT 1 reply (RESP2 list or RESP3 map)."""
    if not reply:
        return None
    streams = list(reply.values()) if isinstance(reply, dict) else [r[1] for r in reply]
    for messages in streams:
        for stream_id, fields in messages:
            return stream_id, fields
    return None


class RedisStore:
    """The Redis ``Store``; see the module docstring for the key layout."""

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
    ) -> RedisStore:
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
        self._deliver_script = script(_DELIVER)
        self._read_new_script = script(_READ_NEW)
        self._takeover_script = script(_TAKEOVER)
        self._renew_script = script(_RENEW)
        self._park_script = script(_PARK)
        self._retry_parked_script = script(_RETRY_PARKED)
        self._mark_sending_script = script(_MARK_SENDING)
        self._release_key_script = script(_RELEASE_KEY)
        self._renew_lock_script = script(_RENEW_LOCK)
        self._release_lock_script = script(_RELEASE_LOCK)
        self._set_last_run_script = script(_SET_LAST_RUN)
        self._complete_script = script(_COMPLETE)
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
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        ) as exc:
            raise StoreUnavailableError(
                f"Redis at {self._where} is unreachable, cannot {action}: {exc}"
            ) from exc
        except redis.exceptions.ResponseError as exc:
            refused = isinstance(
                exc, redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError
            ) or str(exc).startswith(_REFUSALS)
            if not refused:
                raise
            raise StoreUnavailableError(
                f"Redis at {self._where} refuses writes, cannot {action}: {exc}"
            ) from exc

    # -- journal ------------------------------------------------------------

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
            await self._append_script(keys=keys, args=args)

    async def claim(  # noqa: D102
        self, consumer: str, wait: float, now: datetime
    ) -> Lease | None:
        deadline = time.monotonic() + max(wait, 0.0)
        until = now + self.retention.lease
        with self._reachable("claim a journal entry"):
            await self._ensure_group()
            recreated = False
            while True:
                try:
                    entry = await self._own_pending(consumer, until)
                    if entry is None:
                        entry = await self._reclaim(consumer, now, until)
                    if entry is None:
                        entry = await self._read_new(consumer, until, deadline)
                        if entry is None:
                            return None
                except redis.exceptions.ResponseError as exc:
                    # The stream or group was deleted under us: recreate it once.
                    if "NOGROUP" not in str(exc) or recreated:
                        raise
                    await self._ensure_group(again=True)
                    recreated = True
                    continue
                return Lease(entry, consumer, until)

    async def _own_pending(self, consumer: str, until: datetime) -> JournalEntry | None:
        """An entry delivered to this consumer but never completed.

        A consumer claims one entry at a time and completes it before claiming
        again, so anything still pending under its name was delivered by a reply
        that never arrived (Redis went away mid-call). Take it back at once
        rather than waiting out the lease.
        """
        reply = await self._redis.xreadgroup(
            self._group, consumer, {self._journal: "0"}, count=1
        )
        message = _first_message(reply)
        # An entry trimmed from the stream but still pending comes back empty.
        if message is None or message[1] is None or not message[1]:
            return None
        return await self._deliver(consumer, until, *message)

    async def _reclaim(
        self, consumer: str, now: datetime, until: datetime
    ) -> JournalEntry | None:
        """Take over an entry whose lease lapsed before ``now`` (caller's clock)."""
        for _ in range(RECLAIM_CALLS):
            due = _members(
                await self._redis.zrangebyscore(
                    self._leases, "-inf", f"({_ms(now)}", start=0, num=1
                )
            )
            if not due:
                return None
            reply = await self._takeover_script(
                keys=[self._journal, self._leases, self._key("payload", due[0])],
                args=[self._group, consumer, _ms(now), _ms(until), due[0]],
            )
            if reply:
                return self._entry(due[0], _pairs(reply))
        return None

    async def _read_new(
        self, consumer: str, until: datetime, deadline: float
    ) -> JournalEntry | None:
        """Read and lease the next undelivered entry, waiting until ``deadline``."""
        while True:
            reply = await self._read_new_script(
                keys=[self._journal, self._leases],
                args=[self._group, consumer, _ms(until), self._key("payload", "")],
            )
            if reply:
                fields = _pairs(reply)
                return self._entry(_str(fields.pop("__id")), fields)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Wake up when something is appended (or after a short while: an
            # entry appended between the script and this wait is read then).
            block = max(1, int(min(remaining, self._block_chunk, 0.25) * 1000))
            await self._redis.xread({self._journal: "$"}, count=1, block=block)

    async def _deliver(
        self,
        consumer: str,
        until: datetime,
        stream_id: bytes,
        fields: dict[bytes, bytes] | None,
    ) -> JournalEntry | None:
        """Load a delivered entry, start its lease and count the attempt."""
        entry_id = _str(fields.get(b"id", b"")) if fields else ""
        reply = await self._deliver_script(
            keys=[self._journal, self._key("payload", entry_id), self._leases],
            args=[self._group, stream_id, consumer, _ms(until), entry_id],
        )
        # No payload (deleted by hand), or finished: the script dropped it.
        return self._entry(entry_id, _pairs(reply)) if reply else None

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
        self, entry_id: str, traces: Sequence[Mapping[str, Any]]
    ) -> None:
        records = [
            f"{_record_time(t):013d} {json.dumps(t, separators=(',', ':'))}"
            for t in traces
        ]
        keys = [
            self._key("payload", entry_id),
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
            entry_id,
            *records,
        ]
        with self._reachable("complete a journal entry"):
            await self._ensure_group()
            await self._complete_script(keys=keys, args=args)

    async def record(self, records: Sequence[Mapping[str, Any]]) -> None:  # noqa: D102
        if not records:
            return
        lines = [
            f"{_record_time(r):013d} {json.dumps(r, separators=(',', ':'))}"
            for r in records
        ]
        with self._reachable("record decisions"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self._decisions, *lines)
                pipe.ltrim(self._decisions, 0, self.retention.max_decisions - 1)
                pipe.pexpire(self._decisions, _ttl_ms(self.retention.max_age))
                await pipe.execute()

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

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:  # noqa: D102
        return (await self.decision_page(query)).items()

    async def decision_page(self, query: DecisionQuery) -> DecisionPage:
        """Scan the newest ``DECISION_SCAN`` records in chunks (each one command).

        The cursor is a digest of the last record returned: new records arrive
        at the head, so the next page starts just after that record wherever
        it now is. A cursor whose record was pruned ends the listing.
        """
        if query.cursor is not None and not _CURSOR.fullmatch(query.cursor):
            raise InputError(
                f"cursor {query.cursor[:40]!r} is not one this receiver issued; "
                "pass next_cursor from the previous page"
            )
        out: list[str] = []
        if query.limit <= 0:
            return DecisionPage(out)
        pick = _Picker(query)
        with self._reachable("read decisions"):
            for start in range(0, DECISION_SCAN, DECISION_CHUNK):
                chunk = await self._redis.lrange(
                    self._decisions, start, start + DECISION_CHUNK - 1
                )
                for item in chunk:
                    raw = item.encode() if isinstance(item, str) else item
                    text = pick(raw)
                    if text is None:
                        continue
                    if len(out) == query.limit:
                        return DecisionPage(out, _digest(pick.last))
                    out.append(text)
                    pick.last = raw
                if len(chunk) < DECISION_CHUNK:
                    break
        return DecisionPage(out)

    async def pending(self) -> tuple[int, datetime | None]:  # noqa: D102
        with self._reachable("count unfinished entries"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.xlen(self._journal)
            pipe.xrange(self._journal, count=1)
            count, first = await pipe.execute()
        oldest = _parse(first[0][1].get(b"received_at")) if first else None
        return int(count), oldest

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
            # Forget incarnations dead for a day: their claims have been
            # recovered or have expired by then.
            await self._redis.zremrangebyscore(
                self._incarnations, "-inf", f"({_ms(now) - 86_400_000}"
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

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> bool:  # noqa: D102
        try:
            return bool(await self._redis.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False

    async def close(self) -> None:  # noqa: D102
        if self._owns_client:
            await self._redis.aclose()
