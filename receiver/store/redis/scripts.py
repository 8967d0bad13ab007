"""The Lua scripts: every multi-key change is one script, so it is atomic."""

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

_STANDING = """
-- Whether the records _RECORD wrote for an entry are still in the decisions
-- list: ``recorded`` is the last line it pushed (retention drops the oldest
-- first, so that line goes last). The search only runs for an entry decided
-- again.
local function standing(decisions, recorded)
  if not recorded then return false end
  return redis.call('LPOS', decisions, recorded) ~= false
end
"""

_COMPLETE = (
    _STANDING
    + """
-- KEYS: journal, decisions, payload index, finished index, leases, parked,
--       then one payload hash per entry
-- ARGV: group, max decisions, ttl ms, then per entry: its id, how many
--       records, the records
-- An entry already done is skipped; one whose records _RECORD wrote gets no
-- second set while they are kept. Returns how many entries were completed.
local at, pushed, completed = 4, false, 0
for k = 7, #KEYS do
  local hash, id, n = KEYS[k], ARGV[at], tonumber(ARGV[at + 1])
  local first = at + 2
  at = first + n
  local state = redis.call('HMGET', hash, 'done', 'recorded')
  if state[1] ~= '1' then
    if n > 0 and not standing(KEYS[2], state[2]) then
      for i = first, at - 1 do redis.call('LPUSH', KEYS[2], ARGV[i]) end
      pushed = true
    end
    redis.call('ZREM', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
    local sid = redis.call('HGET', hash, 'stream')
    if sid then
      redis.call('XACK', KEYS[1], ARGV[1], sid)
      redis.call('XDEL', KEYS[1], sid)
      redis.call('HSET', hash, 'done', '1', 'state', 'done')
      redis.call('HDEL', hash, 'recorded')  -- done: never looked at again
      redis.call('PEXPIRE', hash, ARGV[3])
      local score = redis.call('ZSCORE', KEYS[3], id)
      if score then redis.call('ZADD', KEYS[4], score, id) end
    end
    completed = completed + 1
  end
end
if pushed then
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return completed
"""
)

_RECORD = (
    _STANDING
    + """
-- KEYS: decisions, then one payload hash per entry
-- ARGV: max decisions, ttl ms, then per entry: how many records (at least
--       one), the records
-- The records of entries neither done nor with records standing (an entry
-- gone from the journal counts as done), each marked recorded with its last
-- line: records retention dropped before the entry was done are written again
-- by its next attempt, as SQLite's log writes them. Returns how many were
-- written.
local at, pushed, written = 3, false, 0
for k = 2, #KEYS do
  local hash, n = KEYS[k], tonumber(ARGV[at])
  local first = at + 1
  at = first + n
  local state = redis.call('HMGET', hash, 'done', 'recorded', 'stream')
  if state[3] and state[1] ~= '1' and not standing(KEYS[1], state[2]) then
    for i = first, at - 1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
    pushed = true
    redis.call('HSET', hash, 'recorded', ARGV[at - 1])
    written = written + 1
  end
end
if pushed then
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return written
"""
)

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

_CLAIM = """
-- KEYS: journal, leases
-- ARGV: group, consumer, now ms, lease end ms, payload key prefix, limit
-- Up to ``limit`` entries in one round trip (idle workers woken by an append
-- mostly find nothing, so the empty claim must be cheap), in this order:
-- 1. entries delivered to this consumer whose reply never arrived (Redis
--    went away mid-call): taken back at once rather than after their lease;
-- 2. entries whose lease lapsed before now (the caller's clock);
-- 3. the next undelivered entries. Reading and leasing are one step: a crash
--    between them cannot leave an entry delivered but unleased.
-- Returns {newest stream id, entry, entry, ...}, each entry its payload hash
-- plus '__id'. With no entry, an XREAD after that id wakes for any entry
-- appended since this script ran ('0-0': look again at once).
-- (Payload keys are built here from the message: like the other multi-key
-- scripts, this needs one Redis, not a cluster.)
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[5]
local limit = tonumber(ARGV[6])
local out = {''}
local taken = {}

local function lease(hash, id)
  redis.call('HSET', hash, 'state', 'claimed', 'consumer', consumer)
  redis.call('HINCRBY', hash, 'attempts', 1)
  redis.call('ZADD', KEYS[2], ARGV[4], id)
  local fields = redis.call('HGETALL', hash)
  table.insert(fields, '__id')
  table.insert(fields, id)
  table.insert(out, fields)
  taken[id] = true
end

local function full() return #out > limit end

local function entry_id(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then return fields[i + 1] end
  end
  return ''
end

-- A payload gone, done or parked: its stream entry is dropped.
local function finished(hash, state)
  return redis.call('EXISTS', hash) == 0 or state == 'done' or state == 'parked'
end

local mine = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit,
                        'STREAMS', KEYS[1], '0')
for _, message in ipairs(mine and mine[1] and mine[1][2] or {}) do
  -- An entry trimmed from the stream but still pending comes back without
  -- fields.
  if message[2] and #message[2] > 0 then
    local sid, id = message[1], entry_id(message[2])
    local hash = prefix .. id
    local state = redis.call('HGET', hash, 'state')
    if finished(hash, state) then
      redis.call('XACK', KEYS[1], group, sid)
      redis.call('XDEL', KEYS[1], sid)
    elseif state ~= 'claimed' or redis.call('HGET', hash, 'consumer') == consumer
    then
      lease(hash, id)
    end  -- else someone else's lease: never taken this way
  end
end

local dropped = 0
while not full() and dropped < 10 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3],
                         'LIMIT', 0, limit + 1 - #out)
  if #due == 0 then break end
  local progress = false
  for _, id in ipairs(due) do
    if full() then break end
    if not taken[id] then
      local hash = prefix .. id
      progress = true
      if redis.call('HGET', hash, 'state') ~= 'claimed' then
        redis.call('ZREM', KEYS[2], id)
        dropped = dropped + 1
      else
        local sid = redis.call('HGET', hash, 'stream')
        if sid then redis.call('XCLAIM', KEYS[1], group, consumer, 0, sid) end
        lease(hash, id)
      end
    end
  end
  if not progress then break end
end

dropped = 0
while not full() do
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer,
                           'COUNT', limit + 1 - #out, 'STREAMS', KEYS[1], '>')
  if not reply then
    if #out == 1 then
      local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
      out[1] = newest[1] and newest[1][1] or '0-0'
    end
    return out
  end
  for _, message in ipairs(reply[1][2]) do
    local sid, id = message[1], entry_id(message[2])
    local hash = prefix .. id
    if finished(hash, redis.call('HGET', hash, 'state')) then
      redis.call('XACK', KEYS[1], group, sid)
      redis.call('XDEL', KEYS[1], sid)
      dropped = dropped + 1
    else
      lease(hash, id)
    end
  end
  if dropped >= 10 then break end
end
-- Full, or ten finished entries dropped and maybe more undelivered: with
-- nothing taken, look again at once.
out[1] = '0-0'
return out
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
-- Slots taken at a later reading count too: a caller whose reading is older
-- (its pass began first, or its clock runs behind) must not overspend.
local used = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
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
