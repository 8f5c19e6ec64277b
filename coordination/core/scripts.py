"""Lua scripts: each operation is one script, so a change and its event are one atomic step.

Every script receives the same KEYS (see ``Keyspace``): the session's own keys first, then the
index keys. ARGV[1..4] are the session id, the stream cap, the feed cap and the retention in ms;
the rest belong to the operation.
"""

from __future__ import annotations

import hashlib

from redis.exceptions import NoScriptError

PRELUDE = r"""
local SID = ARGV[1]
local STREAM_CAP = ARGV[2]
local FEED_CAP = ARGV[3]
local RETENTION = tonumber(ARGV[4])
local K_EVENTS, K_META, K_CLAIM, K_STATE, K_VERSIONS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_FEED, K_ACTIVITY, K_NAMES, K_OWNERS, K_ESC = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local K_AGENTS, K_SEEN = KEYS[11], KEYS[12]
local K_STATUS = {active=KEYS[13], waiting=KEYS[14], escalated=KEYS[15], human=KEYS[16], closed=KEYS[17]}
local K_STATS = KEYS[18]

local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function jstr(s)
  if s == nil or s == false or s == '' then return 'null' end
  return cjson.encode(s)
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

local function set_owner(new_owner)
  local old = meta('owner')
  if old == new_owner then return end
  if old ~= '' then redis.call('ZREM', K_OWNERS, old .. '\0' .. SID) end
  if new_owner ~= '' then redis.call('ZADD', K_OWNERS, 0, new_owner .. '\0' .. SID) end
  redis.call('HSET', K_META, 'owner', new_owner)
end

local function grant_claim(agent, ttl)
  local token = redis.call('HINCRBY', K_META, 'fence', 1)
  redis.call('HSET', K_CLAIM, 'agent', agent, 'token', token, 'expires', NOW + ttl)
  redis.call('PEXPIRE', K_CLAIM, ttl)
  set_owner(agent)
  return token
end

-- Appends the event to the session stream and the global feed, and keeps the index current.
-- ``old_status`` may be passed when the caller already read it. Expiry of the session's keys
-- slides with activity but is refreshed at most once a minute, to keep publishing cheap.
local function emit(etype, data, source, new_status, old_status)
  local id
  if source ~= nil and source ~= '' then
    id = redis.call('XADD', K_EVENTS, 'MAXLEN', '~', STREAM_CAP, '*', 't', etype, 'd', data, 'src', source)
    redis.call('XADD', K_FEED, 'MAXLEN', '~', FEED_CAP, '*', 's', SID, 'e', id, 't', etype, 'd', data, 'src', source)
  else
    id = redis.call('XADD', K_EVENTS, 'MAXLEN', '~', STREAM_CAP, '*', 't', etype, 'd', data)
    redis.call('XADD', K_FEED, 'MAXLEN', '~', FEED_CAP, '*', 's', SID, 'e', id, 't', etype, 'd', data)
  end
  local ms = tonumber(string.match(id, '^(%d+)'))
  local current = redis.call('HMGET', K_META, 'status', 'ttl_ms')
  old_status = old_status or current[1] or ''
  local status = new_status or old_status
  if status == '' then status = 'active' end
  if old_status == '' then
    redis.call('HSET', K_META, 'created', ms)
    redis.call('ZADD', K_NAMES, 0, SID)
  elseif old_status ~= status then
    redis.call('ZREM', K_STATUS[old_status], SID)
  end
  local refresh = ms - tonumber(current[2] or '0') > 60000
  if refresh then
    redis.call('HSET', K_META, 'status', status, 'last_id', id, 'last_type', etype, 'last_ms', ms, 'ttl_ms', ms)
    for _, key in ipairs({K_EVENTS, K_META, K_STATE, K_VERSIONS}) do
      redis.call('PEXPIRE', key, RETENTION)
    end
  else
    redis.call('HSET', K_META, 'status', status, 'last_id', id, 'last_type', etype, 'last_ms', ms)
  end
  redis.call('ZADD', K_STATUS[status], ms, SID)
  redis.call('ZADD', K_ACTIVITY, ms, SID)
  local minute = math.floor(ms / 60000)
  if redis.call('HINCRBY', K_STATS, minute, 1) == 1 then
    redis.call('HDEL', K_STATS, minute - 60)
    redis.call('PEXPIRE', K_STATS, 3600000)
  end
  return id
end
"""

# ARGV[5] type, [6] data JSON, [7] source, [8] presence agent id, [9] presence JSON,
# [10] strict close, [11] agent guard (refuse while a human controls the session)
PUBLISH = r"""
local etype = ARGV[5]
local m = redis.call('HMGET', K_META, 'status', 'controller')
if ARGV[11] == '1' and m[2] and m[2] ~= '' then
  return {0, 'human', m[2], meta('taken_ms')}
end
local status = m[1] or ''
local new_status = nil
if etype == 'session_closed' then
  if ARGV[10] == '1' and status == 'closed' then return {0, 'closed'} end
  new_status = 'closed'
  redis.call('DEL', K_CLAIM)
  redis.call('HDEL', K_META, 'controller', 'taken_ms', 'escalated_ms')
  set_owner('')
  redis.call('ZREM', K_ESC, SID)
elseif etype == 'escalated' then
  if status ~= 'human' then
    new_status = 'escalated'
    if redis.call('ZADD', K_ESC, 'NX', NOW, SID) == 1 then
      redis.call('HSET', K_META, 'escalated_ms', NOW)
    end
  end
elseif etype == 'handoff_ready' then
  new_status = next_status(status, 'waiting')
end
if ARGV[8] ~= '' then
  redis.call('HSET', K_AGENTS, ARGV[8], ARGV[9])
  redis.call('ZADD', K_SEEN, NOW, ARGV[8])
end
return {1, emit(etype, ARGV[6], ARGV[7], new_status, status)}
"""

# ARGV[5] agent, [6] ttl ms
CLAIM = r"""
local controller = meta('controller')
if controller ~= '' then return {0, 'human', controller} end
local status = meta('status')
if status == 'closed' then return {0, 'closed', ''} end
local holder = redis.call('HGET', K_CLAIM, 'agent')
if holder then return {0, 'claimed', holder} end
local ttl = tonumber(ARGV[6])
local token = grant_claim(ARGV[5], ttl)
local data = '{"agent_id":' .. jstr(ARGV[5]) .. ',"token":' .. token .. ',"ttl_ms":' .. ttl .. '}'
return {1, emit('handoff_claimed', data, ARGV[5], next_status(status, 'active')), token}
"""

# ARGV[5] agent id ('' = forced), [6] ttl ms
RENEW = r"""
local holder = redis.call('HGET', K_CLAIM, 'agent')
if not holder or holder ~= ARGV[5] then return {0, holder or ''} end
local ttl = tonumber(ARGV[6])
redis.call('HSET', K_CLAIM, 'expires', NOW + ttl)
redis.call('PEXPIRE', K_CLAIM, ttl)
return {1, redis.call('HGET', K_CLAIM, 'token'), NOW + ttl}
"""

# ARGV[5] owner required ('' = forced), [6] by
RELEASE = r"""
local holder = redis.call('HGET', K_CLAIM, 'agent')
if not holder then return {0, 'not_claimed', ''} end
if ARGV[5] ~= '' and holder ~= ARGV[5] then return {0, 'not_owner', holder} end
local token = redis.call('HGET', K_CLAIM, 'token')
redis.call('DEL', K_CLAIM)
set_owner('')
local forced = 'false'
if ARGV[5] == '' then forced = 'true' end
local data = '{"agent_id":' .. jstr(holder) .. ',"token":' .. token .. ',"forced":' .. forced .. ',"by":' .. jstr(ARGV[6]) .. '}'
local source = ARGV[6]
if source == '' then source = holder end
return {1, emit('handoff_released', data, source, next_status(meta('status'), 'waiting')), holder}
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
redis.call('ZREM', K_ESC, SID)
redis.call('HDEL', K_META, 'escalated_ms')
local data = '{"from_agent":' .. jstr(holder) .. ',"to_agent":' .. jstr(ARGV[5]) .. ',"token":' .. token .. ',"ttl_ms":' .. ttl .. ',"by":' .. jstr(ARGV[7]) .. '}'
local source = ARGV[7]
if source == '' then source = ARGV[5] end
return {1, emit('handoff_reassigned', data, source, 'active'), token}
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
redis.call('HSET', K_META, 'controller', ARGV[5], 'taken_ms', NOW)
redis.call('HDEL', K_META, 'escalated_ms')
set_owner(ARGV[5])
redis.call('ZREM', K_ESC, SID)
local data = '{"supervisor":' .. jstr(ARGV[5]) .. ',"previous_owner":' .. jstr(holder) .. ',"reason":' .. ARGV[6] .. ',"by":' .. jstr(ARGV[5]) .. '}'
emit('human_takeover', data, ARGV[5], 'human')
return {1, ARGV[5], tostring(NOW)}
"""

# ARGV[5] to agent ('' = back to the queue), [6] ttl ms, [7] by, [8] '1'..expected controller or '0'
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
local data = '{"from":' .. jstr(controller) .. ',"to_agent":' .. jstr(ARGV[5]) .. ',"token":' .. token .. ',"by":' .. jstr(by) .. '}'
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
    else
      redis.call('HSET', K_STATE, key, value)
    end
    local version = redis.call('HINCRBY', K_VERSIONS, key, 1)
    local data = '{"key":' .. cjson.encode(key) .. ',"old":' .. (old or 'null') .. ',"new":' .. new .. ',"version":' .. version .. tail .. ',"by":' .. jstr(ARGV[5]) .. '}'
    emit('state_changed', data, ARGV[5], nil)
    if redis.call('PTTL', K_STATE) == -1 then
      -- a state hash created between two expiry refreshes must not outlive its session
      redis.call('PEXPIRE', K_STATE, RETENTION)
      redis.call('PEXPIRE', K_VERSIONS, RETENTION)
    end
    table.insert(result, key)
    table.insert(result, version)
  end
end
return result
"""

CLEAR_SESSION = r"""
local owner = meta('owner')
if owner ~= '' then redis.call('ZREM', K_OWNERS, owner .. '\0' .. SID) end
for _, key in pairs(K_STATUS) do redis.call('ZREM', key, SID) end
redis.call('ZREM', K_ACTIVITY, SID)
redis.call('ZREM', K_NAMES, SID)
redis.call('ZREM', K_ESC, SID)
return redis.call('DEL', K_EVENTS, K_META, K_CLAIM, K_STATE, K_VERSIONS)
"""

# Index keys only. KEYS: agents, seen. ARGV: agent id, load JSON or '', now-independent.
HEARTBEAT = r"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local record = {}
if raw then record = cjson.decode(raw) end
record['agent_id'] = ARGV[1]
if ARGV[2] ~= '' then record['load'] = cjson.decode(ARGV[2]) end
record['heartbeat_ms'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
"""


class Script:
    """A Lua script run by SHA, loaded on first use or after a server restart."""

    def __init__(self, name: str, body: str, prelude: bool = True) -> None:
        self.name = name
        self.source = (PRELUDE + body) if prelude else body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client, keys: list[str], args: list) -> object:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


publish_script = Script("publish", PUBLISH)
claim_script = Script("claim", CLAIM)
renew_script = Script("renew", RENEW)
release_script = Script("release", RELEASE)
reassign_script = Script("reassign", REASSIGN)
takeover_script = Script("takeover", TAKEOVER)
handback_script = Script("handback", HANDBACK)
update_state_script = Script("update_state", UPDATE_STATE)
clear_session_script = Script("clear_session", CLEAR_SESSION)
heartbeat_script = Script("heartbeat", HEARTBEAT, prelude=False)
