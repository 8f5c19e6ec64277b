"""Lua scripts: each operation is one script, so a change and its event are one atomic step.

On one server every session script receives the same KEYS (see ``Keyspace``): the session's
own keys first, then the global index keys, so the event, its feed entry and the index change
are one step. On Redis Cluster the session's keys and the global keys live on different slots;
there the script gets only the session's keys and returns the global writes, which
``APPLY_INDEX`` then runs on the index slot (two steps, see ``SessionScript``).
ARGV[1..4] are the session id, the stream cap, the feed cap and the retention in ms; the rest
belong to the operation.
"""

from __future__ import annotations

import hashlib

from redis.exceptions import NoScriptError

from .keys import Keyspace

# A session script's KEYS start with the session's own keys (``SessionKeys.all()``).
SESSION_KEY_COUNT = 10

# Operation ids (issue 17): each session script's last ARGV is an operation id ('' = none).
# Its first outcome is kept in the session's ``ops`` hash; a retry with the same id (after a
# lost answer: ours, redis-py's cluster retry, or the caller's ``idempotency_key``) returns
# that outcome without acting again. The hash is bounded: it moves to ``ops_prev`` (dropping
# the generation before) when it is OP_WINDOW_MS old or holds OP_CAP ids, so an id is
# remembered for at least OP_WINDOW_MS and at least OP_CAP later operations of the session,
# and for at most 2 * OP_WINDOW_MS (a session whose retention is shorter: the retention,
# at least a second, in place of OP_WINDOW_MS).
OP_WINDOW_MS = 600_000
OP_CAP = 1000


def lua_key_table(keys: str, offset: int) -> str:
    """A Lua table constructor naming the global keys: ``{feed=KEYS[8], ...}`` for a script
    whose global keys follow ``offset`` others in ``keys``. Generated from
    ``Keyspace.GLOBAL_KEY_NAMES``, the order of ``Keyspace.global_keys()``."""
    fields = (
        f"[{name!r}]={keys}[{offset + i}]" for i, name in enumerate(Keyspace.GLOBAL_KEY_NAMES, 1)
    )
    return "{" + ", ".join(fields) + "}"


# How a script reaches the global keys. On one server they follow the session's keys in KEYS
# and are written in the same atomic step. The table naming them is generated from
# ``Keyspace.GLOBAL_KEY_NAMES`` (``lua_key_table``), so Python and Lua cannot disagree on the
# order. As a Redis 7 function the table is built once per namespace and kept (``G_CACHE``).
SINGLE_SERVER_KEYS = (
    r"""
local SPLIT = false
local G = {}
local OPS = nil
local G_CACHE, G_CACHED = {}, 0
local function bind(KEYS)
  local g = G_CACHE[KEYS[@G1@]]
  if g == nil then
    g = """
    + lua_key_table("KEYS", SESSION_KEY_COUNT)
    + r"""
    if G_CACHED >= 64 then G_CACHE, G_CACHED = {}, 0 end
    G_CACHE[KEYS[@G1@]], G_CACHED = g, G_CACHED + 1
  end
  G = g
end
local function idx(cmd, name, ...) return redis.call(cmd, G[name], ...) end
"""
).replace("@G1@", str(SESSION_KEY_COUNT + 1))

# On Redis Cluster a script may only touch one slot, so a session script gets only its own
# keys and returns the global writes for APPLY_INDEX to run on the index slot. The session's
# place in the indexes is not sent as deltas (two clients' second steps may arrive in either
# order) but as one absolute SYNC record read from the session's meta at the end of the script.
# The approvals queue is forwarded as plain ZADD/ZREM, applied in outbox order; readers still
# check each entry against the session's record (``SessionIndex.pending_approvals``), since an
# outbox trimmed at 1,000 entries (the index slot away that long) drops its oldest.
CLUSTER_KEYS = r"""
local SPLIT = true
local G = {}
local OPS = {}
local function bind(KEYS) OPS = {} end
local function idx(cmd, name, ...)
  if name == 'feed' or name == 'agents' or name == 'seen' or name == 'approvals' then
    table.insert(OPS, {cmd, name, ...})
  end
end
"""

# The helpers every session script shares. ``setup(KEYS, ARGV)`` binds one call's keys and
# arguments; as a Redis 7 function library the helpers are defined once, when it is loaded,
# instead of on every call (EVALSHA runs the whole text each time: ~8 us of a ~44 us publish
# on the benchmark machine, INFO commandstats). TIME is asked only when a script needs the
# clock (``now()``), since most publishes do not (the stream id gives the event's time).
PRELUDE = r"""
local SID, STREAM_CAP, FEED_CAP, RETENTION
local K_EVENTS, K_META, K_CLAIM, K_STATE, K_VERSIONS, K_APPROVALS, K_RUNS
local K_OPS, K_OPS_PREV, K_OUTBOX, OP
local STATUSES = {'active', 'waiting', 'escalated', 'human', 'closed'}
local CLEARED_ID, NOW_MS, NOW_CLOCK

local function setup(KEYS, ARGV)
  SID, STREAM_CAP, FEED_CAP, RETENTION = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
  K_EVENTS, K_META, K_CLAIM, K_STATE, K_VERSIONS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  K_APPROVALS, K_RUNS = KEYS[6], KEYS[7]
  K_OPS, K_OPS_PREV, K_OUTBOX = KEYS[8], KEYS[9], KEYS[10]
  OP = ARGV[#ARGV]
  CLEARED_ID, NOW_MS, NOW_CLOCK = nil, nil, nil
  bind(KEYS)
end

-- The first outcome of this call's operation id, if it ran before (see OP_WINDOW_MS).
local function op_seen()
  if OP == '' then return nil end
  local raw = redis.call('HGET', K_OPS, OP) or redis.call('HGET', K_OPS_PREV, OP)
  if raw then return cjson.decode(raw) end
  return nil
end

local function op_done(result)
  if OP == '' then return result end
  -- a session kept for less than the window keeps its ids about as long as itself
  local window = math.min(@WINDOW@, math.max(1000, RETENTION))
  local ttl = redis.call('PTTL', K_OPS)
  if ttl >= 0 and (ttl < window or redis.call('HLEN', K_OPS) >= @CAP@) then
    redis.call('RENAME', K_OPS, K_OPS_PREV)
    ttl = -2
  end
  redis.call('HSET', K_OPS, OP, cjson.encode(result))
  if ttl < 0 then redis.call('PEXPIRE', K_OPS, 2 * window) end
  return result
end

local function now()
  if NOW_MS == nil then
    local clock = redis.call('TIME')
    NOW_MS = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    NOW_CLOCK = clock
  end
  return NOW_MS
end

-- A string as JSON. Ids of plain characters, the usual case, need no escaping and skip
-- cjson (~1 us a call, measured with FCALL micro-benchmarks on Redis 7.0). Anything else,
-- including a value of another type read from a stored record (a number, a table, cjson's
-- null: string.find would raise on the last two), is cjson's as before.
local function jstr(s)
  if s == nil or s == false or s == '' then return 'null' end
  if type(s) == 'string' and string.find(s, '^[%w_.:@-]+$') then return '"' .. s .. '"' end
  return cjson.encode(s)
end

-- Numbers handed to redis.call are formatted with sprintf('%.14g') on every call (~0.7 us
-- each, the same micro-benchmarks), so the hot path passes strings: the event's time as the
-- stream id's digits, '1' for increments, and the minute's bucket name cached between calls.
local MINUTE_LO, MINUTE_HI, MINUTE = 0, -1, ''
local function minute_of(ms)
  if ms < MINUTE_LO or ms > MINUTE_HI then
    local m = math.floor(ms / 60000)
    MINUTE_LO, MINUTE_HI, MINUTE = m * 60000, m * 60000 + 59999, string.format('%d', m)
  end
  return MINUTE
end

local function meta(field)
  local v = redis.call('HGET', K_META, field)
  if v == false then return '' end
  return v
end

-- Escalated and human-controlled sessions keep their status until a person resolves them.
local function next_status(current, wanted)
  if current == 'human' or current == 'escalated' then return current end
  return wanted
end

-- The owners index for an owner change; true when it changed. ``old``: the owner as the
-- caller already read it from meta (else it is read here).
local function move_owner(new_owner, old)
  if old == nil then old = meta('owner') end
  if old == new_owner then return false end
  if old ~= '' then idx('ZREM', 'owners', old .. '\0' .. SID) end
  if new_owner ~= '' then idx('ZADD', 'owners', 0, new_owner .. '\0' .. SID) end
  return true
end

local function set_owner(new_owner, old)
  if move_owner(new_owner, old) then redis.call('HSET', K_META, 'owner', new_owner) end
end

local function grant_claim(agent, ttl, old_owner)
  local token = redis.call('HINCRBY', K_META, 'fence', 1)
  redis.call('HSET', K_CLAIM, 'agent', agent, 'token', token, 'expires', now() + ttl)
  redis.call('PEXPIRE', K_CLAIM, ttl)
  set_owner(agent, old_owner)
  return token
end

local function bump_stats(minute)
  if SPLIT then
    table.insert(OPS, {'STAT', 'stats', tonumber(minute)})
  elseif redis.call('HINCRBY', G.stats, minute, '1') == 1 then
    redis.call('HDEL', G.stats, minute - 60)
    redis.call('PEXPIRE', G.stats, 3600000)
  end
end

-- Appends the event to the session stream and the global feed, and keeps the index current.
-- ``old_status`` may be passed when the caller already read it. Expiry of the session's keys
-- slides with activity, refreshed at most once a second (see ``refresh``).
local function count(field)
  if SPLIT then
    table.insert(OPS, {'COUNT', field})
  else
    redis.call('HINCRBY', G.counters, field, '1')
  end
end

-- ``owner``: a new owner for meta, written with the event's fields (one HSET, not two).
local function emit(etype, data, source, new_status, old_status, ttl_ms, owner)
  local id
  if source ~= nil and source ~= '' then
    id = redis.call('XADD', K_EVENTS, 'MAXLEN', '~', STREAM_CAP, '*', 't', etype, 'd', data, 'src', source)
    idx('XADD', 'feed', 'MAXLEN', '~', FEED_CAP, '*', 's', SID, 'e', id, 't', etype, 'd', data, 'src', source)
  else
    id = redis.call('XADD', K_EVENTS, 'MAXLEN', '~', STREAM_CAP, '*', 't', etype, 'd', data)
    idx('XADD', 'feed', 'MAXLEN', '~', FEED_CAP, '*', 's', SID, 'e', id, 't', etype, 'd', data)
  end
  local ms_text = string.match(id, '^(%d+)')
  local ms = tonumber(ms_text)
  if ttl_ms == nil then
    local current = redis.call('HMGET', K_META, 'status', 'ttl_ms')
    old_status, ttl_ms = old_status or current[1] or '', current[2]
  end
  local status = new_status or old_status
  if status == '' then status = 'active' end
  if old_status == '' then
    redis.call('HSET', K_META, 'created', ms)
    idx('ZADD', 'names', 0, SID)
    -- a session that expired and starts again may still be listed under its old status
    for _, st in ipairs(STATUSES) do
      if st ~= status then idx('ZREM', 'status:' .. st, SID) end
    end
  elseif old_status ~= status then
    idx('ZREM', 'status:' .. old_status, SID)
  end
  -- sliding expiry, exact to within a second (or a tenth of a shorter retention): keys
  -- are refreshed when the last refresh is that old, not on every event
  local refresh = ms - tonumber(ttl_ms or '0') >= math.min(1000, RETENTION / 10)
  local fields = {'HSET', K_META, 'status', status, 'last_id', id, 'last_type', etype, 'last_ms', ms_text}
  if owner ~= nil then
    fields[#fields + 1], fields[#fields + 2] = 'owner', owner
  end
  if refresh then
    fields[#fields + 1], fields[#fields + 2] = 'ttl_ms', ms_text
    redis.call(unpack(fields))
    for _, key in ipairs({K_EVENTS, K_META, K_STATE, K_VERSIONS, K_APPROVALS, K_RUNS}) do
      redis.call('PEXPIRE', key, RETENTION)
    end
  else
    redis.call(unpack(fields))
  end
  idx('ZADD', 'status:' .. status, ms_text, SID)
  idx('ZADD', 'activity', ms_text, SID)
  bump_stats(minute_of(ms))
  count('events:' .. etype)
  return id
end
""".replace("@WINDOW@", str(OP_WINDOW_MS)).replace("@CAP@", str(OP_CAP))

# How a session script's body runs on one server: once per operation id.
SINGLE_SERVER_CALL = """setup(KEYS, ARGV)
local seen = op_seen()
if seen then return seen end
return op_done((function()
@BODY@
end)())
"""


def _once(body: str) -> str:
    return SINGLE_SERVER_CALL.replace("@BODY@", body)


# Cluster mode: the script's body runs as a function, then the global writes are returned.
CLUSTER_EPILOGUE = r"""
local result = op_seen()
if result == nil then
  result = body()
  if #OPS > 0 or CLEARED_ID ~= nil then
    local m = redis.call('HMGET', K_META, 'status', 'owner', 'escalated_ms', 'last_ms', 'last_id')
    if m[5] then
      table.insert(OPS, {'SYNC', SID, m[5], m[1] or '', m[2] or '', m[3] or '', m[4] or ''})
    elseif CLEARED_ID ~= nil and CLEARED_ID ~= '' then
      table.insert(OPS, {'SYNC', SID, CLEARED_ID, '', '', '', ''})
    elseif CLEARED_ID ~= nil then
      -- the session's keys had already expired (prune): nothing to order against
      table.insert(OPS, {'DROP', SID})
    end
    -- The index writes wait in the session's outbox (same slot, same atomic step) until a
    -- client reports them applied on the index slot: a lost answer, a failed second step or
    -- a failover of the index slot's primary leaves them here for the next call to apply.
    -- Entries are numbered "<epoch>-<n>"; APPLY_INDEX applies each number once. An outbox
    -- keeps its numbering until it expires (a retention after the session's last write or
    -- clear); a new one's epoch is the server's time in microseconds. (Versions before deleted
    -- the outbox on a clear, and an epoch in ms opened again in the clear's millisecond
    -- restarted below what the index had applied; APPLY_INDEX scales their epochs.)
    now()
    local epoch = NOW_CLOCK[1] .. string.format('%06d', tonumber(NOW_CLOCK[2]))
    if redis.call('HSETNX', K_OUTBOX, 'e', epoch) == 1 then
      redis.call('HSET', K_OUTBOX, 'lo', 1)
    end
    local n = redis.call('HINCRBY', K_OUTBOX, 'n', 1)
    redis.call('HSET', K_OUTBOX, n, cjson.encode(OPS))
    if CLEARED_ID == '' then
      -- prune of a session whose keys had expired: its outbox is kept only until the DROP is
      -- applied and for a margin past any clock skew, not a whole retention (prune is there
      -- to reclaim memory; the index's record of it goes when the outbox has expired)
      redis.call('PEXPIRE', K_OUTBOX, math.min(RETENTION, @WINDOW@))
    else
      redis.call('PEXPIRE', K_OUTBOX, RETENTION)
    end
  end
  op_done(result)
end
-- ARGV[#ARGV - 1]: the newest entry this process saw applied ('' = none): drop it and older
local box = redis.call('HMGET', K_OUTBOX, 'e', 'lo', 'n')
if not box[1] then return {result, ''} end
local lo, n = tonumber(box[2]), tonumber(box[3])
local ack_e, ack_n = string.match(ARGV[#ARGV - 1], '^(%d+)-(%d+)$')
if ack_e == box[1] then
  ack_n = math.min(tonumber(ack_n), n)
  for i = lo, ack_n do redis.call('HDEL', K_OUTBOX, i) end
  if ack_n >= lo then lo = ack_n + 1 end
  redis.call('HSET', K_OUTBOX, 'lo', lo)
  -- All applied: the hash stays (it expires with the session), so its epoch and count go on.
  -- Deleted, the next entry opened a new epoch, and one opened in the same millisecond
  -- restarted at 1: APPLY_INDEX skipped it as already applied, leaving the index stale.
  if lo > n then return {result, ''} end
end
if n - lo >= 1000 then
  -- the index slot has been away for 1,000 changes of this session: keep the newest
  for i = lo, n - 1000 do redis.call('HDEL', K_OUTBOX, i) end
  lo = n - 999
  redis.call('HSET', K_OUTBOX, 'lo', lo)
  -- What went is feed entries and counts, and maybe the queue entry of an approval (one
  -- ZADD, never repeated: the approval would wait unseen). The oldest kept entry queues every
  -- approval still pending again, first; readers drop any decided since.
  local requeue = {}
  local approvals = redis.call('HGETALL', K_APPROVALS)
  for i = 1, #approvals, 2 do
    local ok, rec = pcall(cjson.decode, approvals[i + 1])
    if ok and type(rec) == 'table' and rec.status == 'pending' then
      -- a record written around the core may hold anything: a score must be a finite number
      -- (cjson refuses to encode inf and NaN, and the write would fail after it was made)
      local at = tonumber(rec.requested_ms) or 0
      if at ~= at or at == math.huge or at == -math.huge then at = 0 end
      table.insert(requeue, {'ZADD', 'approvals', at, SID .. '\0' .. approvals[i]})
    end
  end
  if #requeue > 0 then
    local kept = redis.call('HGET', K_OUTBOX, lo)
    if kept then
      for _, op in ipairs(cjson.decode(kept)) do table.insert(requeue, op) end
    end
    redis.call('HSET', K_OUTBOX, lo, cjson.encode(requeue))
  end
end
local pending = {}
for i = lo, n do
  local entry = redis.call('HGET', K_OUTBOX, i)
  if entry then
    table.insert(pending, box[1] .. '-' .. i)
    table.insert(pending, entry)
  end
end
return {result, pending}
""".replace("@WINDOW@", str(OP_WINDOW_MS))

# Cluster mode, second step, on the index slot. KEYS: the global keys, then the applied-state
# hash. ARGV[1]: the session id; then pairs of an outbox entry's number and its operations
# (JSON), oldest first. Each number is applied once (the 4th item of ``APPLIED[sid]``), so a
# re-sent or re-read entry changes nothing.
APPLY_INDEX = (
    "local G = "
    + lua_key_table("KEYS", 0)
    + f"\nlocal APPLIED = KEYS[{len(Keyspace.GLOBAL_KEY_NAMES) + 1}]"
    + r"""
local STATUSES = {'active', 'waiting', 'escalated', 'human', 'closed'}

-- An event id's or an outbox entry's time in microseconds. Outbox epochs are in microseconds;
-- event ids, and the epochs of outboxes opened by versions before that, are in milliseconds
-- (below 1e14: a millisecond count reaches it in the year 5138, a microsecond count passed it
-- in 1973), so an outbox opened by an older process during a rolling upgrade still sorts by
-- its time.
local function micros(t)
  t = tonumber(t)
  if t < 1e14 then return t * 1000 end
  return t
end

local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not bm then return true end
  am, as, bm, bs = micros(am), tonumber(as), micros(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

-- Moves the session to where its meta said it was as of event ``v``, unless a newer record
-- was applied already.
local function sync(sid, v, status, owner, esc_ms, last_ms)
  local raw = redis.call('HGET', APPLIED, sid)
  local prev_status, prev_owner = '', ''
  if raw then
    local prev = cjson.decode(raw)
    -- a clear (status '') carries the id of the session's last event, which the record it
    -- replaces may carry too: it wins a tie. A record after a clear always wins: the session
    -- was written again, and its stream started afresh, so its ids may sort at or below the
    -- cleared one's (in the clear's millisecond, or after a failover to a server whose clock
    -- is behind); entries arrive in outbox order, so this one is the later.
    if status == '' then
      if newer(prev[1], v) then return end
    elseif prev[2] ~= '' and not newer(v, prev[1]) then
      return
    end
    prev_status, prev_owner = prev[2], prev[3]
  end
  if prev_owner ~= '' and prev_owner ~= owner then
    redis.call('ZREM', G.owners, prev_owner .. '\0' .. sid)
  end
  if status == '' then
    for _, s in ipairs(STATUSES) do redis.call('ZREM', G['status:' .. s], sid) end
    redis.call('ZREM', G.activity, sid)
    redis.call('ZREM', G.names, sid)
    redis.call('ZREM', G.esc, sid)
  else
    if prev_status ~= '' and prev_status ~= status then
      redis.call('ZREM', G['status:' .. prev_status], sid)
    end
    redis.call('ZADD', G['status:' .. status], last_ms, sid)
    if owner ~= '' then redis.call('ZADD', G.owners, 0, owner .. '\0' .. sid) end
    if esc_ms ~= '' then
      redis.call('ZADD', G.esc, 'NX', esc_ms, sid)
    else
      redis.call('ZREM', G.esc, sid)
    end
    redis.call('ZADD', G.activity, last_ms, sid)
    redis.call('ZADD', G.names, 0, sid)
  end
  redis.call('HSET', APPLIED, sid, cjson.encode({v, status, owner, raw and cjson.decode(raw)[4] or ''}))
end

local function apply(op)
  local cmd = op[1]
  if cmd == 'SYNC' then
    sync(op[2], op[3], op[4], op[5], op[6], op[7])
  elseif cmd == 'DROP' then
    local raw = redis.call('HGET', APPLIED, op[2])
    if raw then
      local prev = cjson.decode(raw)
      if prev[3] ~= '' then redis.call('ZREM', G.owners, prev[3] .. '\0' .. op[2]) end
    end
    for _, s in ipairs(STATUSES) do redis.call('ZREM', G['status:' .. s], op[2]) end
    for _, name in ipairs({'activity', 'names', 'esc'}) do redis.call('ZREM', G[name], op[2]) end
    redis.call('HDEL', APPLIED, op[2])
  elseif cmd == 'COUNT' then
    redis.call('HINCRBY', G.counters, op[2], 1)
  elseif cmd == 'STAT' then
    if redis.call('HINCRBY', G.stats, op[3], 1) == 1 then
      redis.call('HDEL', G.stats, op[3] - 60)
      redis.call('PEXPIRE', G.stats, 3600000)
    end
  else
    redis.call(cmd, G[op[2]], unpack(op, 3))
  end
end

-- The session's record ends with the number of the last outbox entry applied.
local function record(sid)
  local raw = redis.call('HGET', APPLIED, sid)
  if raw then return cjson.decode(raw) end
  return nil
end
local sid = ARGV[1]
local rec = record(sid)
local last = (rec and rec[4]) or ''
local before = last
for i = 2, #ARGV, 2 do
  if newer(ARGV[i], last) then
    for _, op in ipairs(cjson.decode(ARGV[i + 1])) do apply(op) end
    last = ARGV[i]
  end
end
if last ~= before then
  rec = record(sid) or {'0-0', '', ''}
  rec[4] = last
  redis.call('HSET', APPLIED, sid, cjson.encode(rec))
end
return last
"""
)

# ARGV[5] type, [6] data JSON, [7] source, [8] presence agent id, [9] presence JSON,
# [10] strict close, [11] agent guard (refuse while a human controls the session),
# [12] escalation queue ('' = the default queue)
PUBLISH = r"""
local etype = ARGV[5]
local m = redis.call('HMGET', K_META, 'status', 'controller', 'ttl_ms')
if ARGV[11] == '1' and m[2] and m[2] ~= '' then
  return {0, 'human', m[2], meta('taken_ms')}
end
local status = m[1] or ''
local new_status = nil
if etype == 'session_closed' then
  if ARGV[10] == '1' and status == 'closed' then return {0, 'closed'} end
  new_status = 'closed'
  redis.call('DEL', K_CLAIM)
  redis.call('HDEL', K_META, 'controller', 'taken_ms', 'escalated_ms', 'esc_queue', 'esc_pending')
  set_owner('')
  idx('ZREM', 'esc', SID)
elseif etype == 'escalated' then
  if status ~= 'human' then
    new_status = 'escalated'
    redis.call('HDEL', K_META, 'esc_pending')
    -- the queue keeps the time of the first escalation
    if redis.call('HSETNX', K_META, 'escalated_ms', now()) == 1 then
      idx('ZADD', 'esc', 'NX', now(), SID)
      if ARGV[12] ~= '' then redis.call('HSET', K_META, 'esc_queue', ARGV[12]) end
    end
  end
elseif etype == 'handoff_ready' then
  new_status = next_status(status, 'waiting')
end
if ARGV[8] ~= '' then
  idx('HSET', 'agents', ARGV[8], ARGV[9])
  idx('ZADD', 'seen', now(), ARGV[8])
end
return {1, emit(etype, ARGV[6], ARGV[7], new_status, status, m[3] or false)}
"""

# ARGV[5] agent, [6] ttl ms
CLAIM = r"""
local holder = redis.call('HGET', K_CLAIM, 'agent')
local m = redis.call('HMGET', K_META, 'controller', 'status', 'owner', 'ttl_ms')
local controller, status = m[1] or '', m[2] or ''
if controller ~= '' or status == 'closed' or holder then
  count('claims:lost')
  if controller ~= '' then return {0, 'human', controller} end
  if status == 'closed' then return {0, 'closed', ''} end
  return {0, 'claimed', holder}
end
count('claims:won')
local token = redis.call('HINCRBY', K_META, 'fence', '1')
local token_text = string.format('%d', token)
local data = '{"agent_id":' .. jstr(ARGV[5]) .. ',"token":' .. token_text .. ',"ttl_ms":' .. ARGV[6] .. '}'
move_owner(ARGV[5], m[3] or '')
local id = emit('handoff_claimed', data, ARGV[5], next_status(status, 'active'), status, m[4] or false, ARGV[5])
-- the event's time spares asking the server's clock
local expires = string.format('%d', tonumber(string.match(id, '^(%d+)')) + tonumber(ARGV[6]))
redis.call('HSET', K_CLAIM, 'agent', ARGV[5], 'token', token_text, 'expires', expires)
redis.call('PEXPIRE', K_CLAIM, ARGV[6])
return {1, id, token}
"""

# ARGV[5] agent id ('' = forced), [6] ttl ms
RENEW = r"""
local holder = redis.call('HGET', K_CLAIM, 'agent')
if not holder or holder ~= ARGV[5] then return {0, holder or ''} end
local ttl = tonumber(ARGV[6])
redis.call('HSET', K_CLAIM, 'expires', now() + ttl)
redis.call('PEXPIRE', K_CLAIM, ttl)
local token = redis.call('HGET', K_CLAIM, 'token')
if meta('esc_pending') == holder then
  -- an escalated session reassigned to this agent: it takes the session up now, so the
  -- escalation leaves the queue (see REASSIGN)
  redis.call('HDEL', K_META, 'esc_pending', 'escalated_ms', 'esc_queue')
  idx('ZREM', 'esc', SID)
  local data = '{"agent_id":' .. jstr(holder) .. ',"token":' .. token .. ',"ttl_ms":' .. ttl .. ',"reassigned":true}'
  emit('handoff_claimed', data, holder, 'active')
end
return {1, token, now() + ttl}
"""

# ARGV[5] owner required ('' = forced), [6] by
RELEASE = r"""
local claim = redis.call('HMGET', K_CLAIM, 'agent', 'token')
local holder = claim[1]
if not holder then return {0, 'not_claimed', ''} end
if ARGV[5] ~= '' and holder ~= ARGV[5] then return {0, 'not_owner', holder} end
local token = claim[2]
redis.call('DEL', K_CLAIM)
local m = redis.call('HMGET', K_META, 'owner', 'status', 'ttl_ms')
move_owner('', m[1] or '')
local forced = 'false'
if ARGV[5] == '' then forced = 'true' end
local data = '{"agent_id":' .. jstr(holder) .. ',"token":' .. token .. ',"forced":' .. forced .. ',"by":' .. jstr(ARGV[6]) .. '}'
local source = ARGV[6]
if source == '' then source = holder end
local status = m[2] or ''
return {1, emit('handoff_released', data, source, next_status(status, 'waiting'), status, m[3] or false, ''), holder}
"""

# ARGV[5] to agent, [6] ttl ms, [7] by, [8] '1'..expected owner or '0'
REASSIGN = r"""
local controller = meta('controller')
if controller ~= '' then return {0, 'human', controller} end
local status = meta('status')
if status == 'closed' then return {0, 'closed', ''} end
local holder = redis.call('HGET', K_CLAIM, 'agent') or ''
if string.sub(ARGV[8], 1, 1) == '1' and string.sub(ARGV[8], 2) ~= holder then
  return {0, 'changed', holder}
end
local ttl = tonumber(ARGV[6])
local token = grant_claim(ARGV[5], ttl)
local new_status, kept = 'active', ''
if status == 'escalated' then
  -- the escalation stays queued until the new agent takes the session up (its first renew):
  -- an agent that never comes does not leave the session orphaned outside the queue
  redis.call('HSET', K_META, 'esc_pending', ARGV[5])
  new_status, kept = 'escalated', ',"escalation_kept":true'
else
  idx('ZREM', 'esc', SID)
  redis.call('HDEL', K_META, 'escalated_ms', 'esc_queue', 'esc_pending')
end
local data = '{"from_agent":' .. jstr(holder) .. ',"to_agent":' .. jstr(ARGV[5]) .. ',"token":' .. token .. ',"ttl_ms":' .. ttl .. ',"by":' .. jstr(ARGV[7]) .. kept .. '}'
local source = ARGV[7]
if source == '' then source = ARGV[5] end
return {1, emit('handoff_reassigned', data, source, new_status), token}
"""

# ARGV[5] supervisor, [6] reason JSON
TAKEOVER = r"""
local controller = meta('controller')
if controller ~= '' then
  if controller == ARGV[5] then return {2, controller, meta('taken_ms')} end
  return {0, controller, meta('taken_ms')}
end
if meta('status') == 'closed' then return {-1, '', ''} end
local holder = redis.call('HGET', K_CLAIM, 'agent') or ''
redis.call('DEL', K_CLAIM)
redis.call('HSET', K_META, 'controller', ARGV[5], 'taken_ms', now())
redis.call('HDEL', K_META, 'escalated_ms', 'esc_queue', 'esc_pending')
set_owner(ARGV[5])
idx('ZREM', 'esc', SID)
local data = '{"supervisor":' .. jstr(ARGV[5]) .. ',"previous_owner":' .. jstr(holder) .. ',"reason":' .. ARGV[6] .. ',"by":' .. jstr(ARGV[5]) .. '}'
emit('human_takeover', data, ARGV[5], 'human')
return {1, ARGV[5], tostring(now())}
"""

# ARGV[5] to agent ('' = back to the queue), [6] ttl ms, [7] by, [8] '1'..expected controller or '0',
# [9] resolution JSON ('' = none: the event then has no "resolution" field, as before)
HANDBACK = r"""
local controller = meta('controller')
if controller == '' then return {0, 'not_human', ''} end
if string.sub(ARGV[8], 1, 1) == '1' and string.sub(ARGV[8], 2) ~= controller then
  return {0, 'changed', controller}
end
redis.call('HDEL', K_META, 'controller', 'taken_ms')
local token = 'null'
local status = 'waiting'
if ARGV[5] ~= '' then
  token = grant_claim(ARGV[5], tonumber(ARGV[6]))
  status = 'active'
else
  set_owner('')
end
local by = ARGV[7]
if by == '' then by = controller end
local resolution = ''
if ARGV[9] ~= nil and ARGV[9] ~= '' then resolution = ',"resolution":' .. ARGV[9] end
local data = '{"from":' .. jstr(controller) .. ',"to_agent":' .. jstr(ARGV[5]) .. ',"token":' .. token .. ',"by":' .. jstr(by) .. resolution .. '}'
return {1, emit('human_handback', data, by, status), token}
"""

# ARGV[5] source, [6] count, then (key, value JSON or '' to delete, expected version or '') triples
UPDATE_STATE = r"""
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  local key, expected = ARGV[7 + i * 3], ARGV[9 + i * 3]
  if expected ~= '' then
    local current = tonumber(redis.call('HGET', K_VERSIONS, key) or '0')
    local stale = current ~= tonumber(expected)
    if tonumber(expected) == 0 then
      -- 0 means "the key must not exist" (a deleted key keeps its version number)
      stale = redis.call('HEXISTS', K_STATE, key) == 1
    end
    if stale then
      return {0, key, current, redis.call('HGET', K_STATE, key) or ''}
    end
  end
end
local result = {1}
local created = false
for i = 0, n - 1 do
  local key, value = ARGV[7 + i * 3], ARGV[8 + i * 3]
  local old = redis.call('HGET', K_STATE, key)
  if value ~= '' or old then
    local new = value
    local tail = ''
    if value == '' then
      redis.call('HDEL', K_STATE, key)
      new = 'null'
      tail = ',"deleted":true'
    elseif redis.call('HSET', K_STATE, key, value) == 1 then
      created = true
    end
    local version = redis.call('HINCRBY', K_VERSIONS, key, '1')
    if version == 1 then created = true end
    local data = '{"key":' .. (jstr(key)) .. ',"old":' .. (old or 'null') .. ',"new":' .. new .. ',"version":' .. string.format('%d', version) .. tail .. ',"by":' .. jstr(ARGV[5]) .. '}'
    emit('state_changed', data, ARGV[5], nil)
    table.insert(result, key)
    table.insert(result, version)
  end
end
if created and redis.call('PTTL', K_STATE) == -1 then
  -- a state hash created between two expiry refreshes must not outlive its session (only a
  -- new field can have created one: a rewrite of a known key spares the PTTL)
  redis.call('PEXPIRE', K_STATE, RETENTION)
  redis.call('PEXPIRE', K_VERSIONS, RETENTION)
end
return result
"""

# ARGV[5] '1': only if the session has expired (prune, which checked that before: a session
# written again since is left alone, and -1 says so); else the number of keys deleted
CLEAR_SESSION = r"""
if ARGV[5] == '1' and redis.call('EXISTS', K_META) == 1 then return -1 end
CLEARED_ID = meta('last_id')
local owner = meta('owner')
if owner ~= '' then idx('ZREM', 'owners', owner .. '\0' .. SID) end
for _, s in ipairs(STATUSES) do idx('ZREM', 'status:' .. s, SID) end
idx('ZREM', 'activity', SID)
idx('ZREM', 'names', SID)
idx('ZREM', 'esc', SID)
for _, aid in ipairs(redis.call('HKEYS', K_APPROVALS)) do idx('ZREM', 'approvals', SID .. '\0' .. aid) end
-- The operation ids' outcomes stay (they expire within 2 x the op window): deleted, a retry
-- across this clear (an answer lost before it) would act a second time: a publish fed twice,
-- an earlier clear clearing what was written since.
return redis.call('DEL', K_EVENTS, K_META, K_CLAIM, K_STATE, K_VERSIONS, K_APPROVALS, K_RUNS)
"""

# An approval record is JSON written by cjson here. Values given as JSON text (args, reason,
# message, edited args) are kept as strings (``*_json``) so their numbers are never re-encoded.
# ARGV[5] approval id, [6] action, [7] args JSON, [8] reason JSON, [9] agent id, [10] expires in
# ms ('' = never), [11] source
REQUEST_APPROVAL = r"""
local aid = ARGV[5]
local existing = redis.call('HGET', K_APPROVALS, aid)
if existing then return {2, existing} end
local status = meta('status')
if status == 'closed' then return {0, 'closed'} end
local expires_ms = nil
local expires_at = 'null'
if ARGV[10] ~= '' then
  expires_ms = now() + tonumber(ARGV[10])
  expires_at = string.format('%.3f', expires_ms / 1000)
end
local data = '{"approval_id":' .. jstr(aid) .. ',"action":' .. jstr(ARGV[6]) .. ',"args":' .. ARGV[7] .. ',"reason":' .. ARGV[8] .. ',"agent_id":' .. jstr(ARGV[9]) .. ',"expires_at":' .. expires_at .. '}'
local event_id = emit('approval_requested', data, ARGV[11], nil, status)
local agent = nil
if ARGV[9] ~= '' then agent = ARGV[9] end
local record = cjson.encode({id=aid, action=ARGV[6], args_json=ARGV[7], reason_json=ARGV[8],
  agent_id=agent, requested_ms=now(), expires_ms=expires_ms, status='pending',
  request_event_id=event_id})
redis.call('HSET', K_APPROVALS, aid, record)
redis.call('HINCRBY', K_META, 'approvals_pending', 1)
if redis.call('PTTL', K_APPROVALS) == -1 then
  -- created between two expiry refreshes: it must not outlive its session
  redis.call('PEXPIRE', K_APPROVALS, RETENTION)
end
idx('ZADD', 'approvals', now(), SID .. '\0' .. aid)
return {1, record}
"""

# ARGV[5] approval id, [6] '1' approve, '0' reject, 'x' only expire it if its time has passed,
# [7] by, [8] message JSON, [9] edited args JSON ('' = none), [10] the dashboard's signature
# ('' = unsigned; see signing.py).
# Returns {1, record} decided now, {3, record} expired now, {2, record} still pending ('x'),
# {0, 'decided', record} decided (or expired) before, {0, 'unknown', ''}.
DECIDE_APPROVAL = r"""
local aid = ARGV[5]
local raw = redis.call('HGET', K_APPROVALS, aid)
if not raw then return {0, 'unknown', ''} end
local rec = cjson.decode(raw)
if rec.status ~= 'pending' then return {0, 'decided', raw} end
local expired = type(rec.expires_ms) == 'number' and now() >= rec.expires_ms
if ARGV[6] == 'x' and not expired then return {2, raw} end
local data
local source = ''
if expired then
  rec.status = 'expired'
  data = '{"approval_id":' .. jstr(aid) .. ',"approved":false,"expired":true,"by":null,"message":null,"args":null,"action":' .. jstr(rec.action) .. '}'
else
  local approved = ARGV[6] == '1'
  rec.status = approved and 'approved' or 'rejected'
  rec.decided_by = ARGV[7]
  rec.message_json = ARGV[8]
  local args = 'null'
  if ARGV[9] ~= '' then
    rec.decided_args_json = ARGV[9]
    args = ARGV[9]
  end
  source = ARGV[7]
  local signed = ''
  if ARGV[10] ~= '' then
    rec.signature = ARGV[10]
    signed = ',"signature":' .. jstr(ARGV[10])
  end
  data = '{"approval_id":' .. jstr(aid) .. ',"approved":' .. tostring(approved) .. ',"by":' .. jstr(ARGV[7]) .. ',"message":' .. ARGV[8] .. ',"args":' .. args .. ',"action":' .. jstr(rec.action) .. signed .. '}'
end
rec.decided_ms = now()
rec.decision_event_id = emit('approval_decided', data, source, nil)
local record = cjson.encode(rec)
redis.call('HSET', K_APPROVALS, aid, record)
if (tonumber(meta('approvals_pending')) or 0) > 0 then
  redis.call('HINCRBY', K_META, 'approvals_pending', -1)
end
idx('ZREM', 'approvals', SID .. '\0' .. aid)
if expired then return {3, record} end
return {1, record}
"""

# Saved runs (``SessionKeys.runs``): no event, the session's expiry. ARGV[5] 'set', 'claim' or
# 'del'; [6] name; [7] the value (set) or the claimant's record (claim). A claim is taken once.
RUNS = r"""
local op, name = ARGV[5], ARGV[6]
if op == 'del' then return redis.call('HDEL', K_RUNS, name, name .. '#claim') end
local done
if op == 'set' then
  redis.call('HSET', K_RUNS, name, ARGV[7])
  redis.call('HDEL', K_RUNS, name .. '#claim')
  done = 1
else
  if redis.call('HEXISTS', K_RUNS, name) == 0 then return -1 end
  done = redis.call('HSETNX', K_RUNS, name .. '#claim', ARGV[7])
end
redis.call('PEXPIRE', K_RUNS, RETENTION)
return done
"""

# Index keys only. KEYS: agents, seen. ARGV: agent id, load JSON or '', now-independent.
HEARTBEAT = r"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local record = {}
if raw then
  -- anyone holding REDIS_URL can write this record: one that is not a JSON object is replaced
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then record = decoded end
end
record['agent_id'] = ARGV[1]
if ARGV[2] ~= '' then record['load'] = cjson.decode(ARGV[2]) end
record['heartbeat_ms'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
"""


class Script:
    """A Lua script run by SHA (EVALSHA), sent whole (EVAL) only when the server answers
    NOSCRIPT (first use, or after a restart or SCRIPT FLUSH).

    Why not redis-py's ``register_script``: its ``Script`` calls EVALSHA through the client's
    ``execute_command``, whose retry policy (redis-py 6: three retries on a connection error
    or timeout) sends the script again when an answer is lost, although it may have run: a
    publish stored twice. Here the only re-send is after NOSCRIPT, which says the script did
    not run; on one server the call also skips redis-py's per-command wrapper (``calls.py``)."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client, keys: list[str], args: list) -> object:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


class SessionScript(Script):
    """A session operation. On one server it gets the session's keys and the global keys and
    runs as a Redis 7 function (``function``, from ``LIBRARY``) or, where functions are not
    available, by SHA; on Redis Cluster (``cluster``) only the session's keys, and it returns
    ``[result, ops]`` where ``ops`` (JSON, or '' when nothing changed) is what
    ``apply_index_script`` must apply."""

    def __init__(self, name: str, body: str) -> None:
        super().__init__(name, SINGLE_SERVER_KEYS + PRELUDE + _once(body))
        self.body = body
        self.function = ""  # set by FunctionLibrary
        self.cluster = Script(
            f"{name} (cluster)",
            CLUSTER_KEYS
            + PRELUDE
            + "setup(KEYS, ARGV)\nlocal function body()\n"
            + body
            + "\nend\n"
            + CLUSTER_EPILOGUE,
        )


class FunctionLibrary:
    """The single-server session scripts as one Redis 7 function library: the helpers are
    defined once when it is loaded. Its name carries a hash of its text, so processes of
    different versions each find their own functions on a shared server."""

    def __init__(self, scripts: list[SessionScript]) -> None:
        code = SINGLE_SERVER_KEYS + PRELUDE
        for script in scripts:
            # The body is a function of the library, defined once at load (not a closure made
            # on every call); without an operation id nothing is looked up or kept.
            code += (
                f"local function body_{script.name}(KEYS, ARGV)\n{script.body}\nend\n"
                f"redis.register_function('@NAME@_{script.name}', function(KEYS, ARGV)\n"
                "  setup(KEYS, ARGV)\n"
                f"  if OP == '' then return body_{script.name}(KEYS, ARGV) end\n"
                "  local seen = op_seen()\n"
                "  if seen then return seen end\n"
                f"  return op_done(body_{script.name}(KEYS, ARGV))\n"
                "end)\n"
            )
        self.name = "coord_" + hashlib.sha1(code.encode()).hexdigest()[:16]
        self.source = f"#!lua name={self.name}\n" + code.replace("@NAME@", self.name)
        for script in scripts:
            script.function = f"{self.name}_{script.name}"


publish_script = SessionScript("publish", PUBLISH)
claim_script = SessionScript("claim", CLAIM)
renew_script = SessionScript("renew", RENEW)
release_script = SessionScript("release", RELEASE)
reassign_script = SessionScript("reassign", REASSIGN)
takeover_script = SessionScript("takeover", TAKEOVER)
handback_script = SessionScript("handback", HANDBACK)
update_state_script = SessionScript("update_state", UPDATE_STATE)
clear_session_script = SessionScript("clear_session", CLEAR_SESSION)
request_approval_script = SessionScript("request_approval", REQUEST_APPROVAL)
decide_approval_script = SessionScript("decide_approval", DECIDE_APPROVAL)
runs_script = SessionScript("runs", RUNS)
LIBRARY = FunctionLibrary(
    [
        publish_script,
        claim_script,
        renew_script,
        release_script,
        reassign_script,
        takeover_script,
        handback_script,
        update_state_script,
        clear_session_script,
        request_approval_script,
        decide_approval_script,
        runs_script,
    ]
)
heartbeat_script = Script("heartbeat", HEARTBEAT)
apply_index_script = Script("apply_index", APPLY_INDEX)
# Cluster mode: drop a session's outbox entries up to ARGV[1] ("<epoch>-<n>", applied). The
# hash itself stays, holding only its numbering, until it expires with the session's
# retention: deleted, the next outbox opened a new epoch from the server's clock, and a clock
# behind the old epoch (a failover, a step back) numbered every entry below what the index had
# applied, so all of them were skipped.
outbox_ack_script = Script(
    "outbox_ack",
    r"""
local box = redis.call('HMGET', KEYS[1], 'e', 'lo', 'n')
local e, n = string.match(ARGV[1], '^(%d+)-(%d+)$')
if not box[1] or e ~= box[1] then return 0 end
n = math.min(tonumber(n), tonumber(box[3]))
for i = tonumber(box[2]), n do redis.call('HDEL', KEYS[1], i) end
if n >= tonumber(box[2]) then redis.call('HSET', KEYS[1], 'lo', n + 1) end
return 1
""",
)
# Reads several hashes of one session (one slot) atomically; a Cluster pipeline cannot MULTI.
read_hashes_script = Script(
    "read_hashes",
    """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
""",
)
