--[[ heartbeat: a registered node says it is alive, reports load and maybe new capabilities.
Input:
  KEYS[1] node hash  KEYS[2] node's pools set  KEYS[3] liveness zset  KEYS[4] node index
  KEYS[5] pools index  (as in register.lua; derived pool keys likewise)
  ARGV[1] key prefix "{tag}:"     ARGV[2] node id
  ARGV[3] connection token (must be the node's current one)
  ARGV[4] liveness ms             ARGV[5] record retention ms
  ARGV[6] capability signature    (pools are recomputed only when it changed)
  ARGV[7] a: load field/value pairs that follow (always stored)
  ARGV[8] c: capability field/value pairs that follow the load fields (stored on change)
  ARGV[9 ..] 2a load values, then 2c capability values, then the pool names
Output (JSON):
  {"status":"missing"}                 no record (expired or Redis wiped): register again
  {"status":"stale","owner":inst}      another connection owns the node; nothing changed
  {"status":"ok","state":s,"changed":bool,"revived":bool}
]]
--!include time
--!include pools

local prefix, node_id = ARGV[1], ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 'conn', 'owner', 'state', 'capsig')
if not cur[1] then return cjson.encode({status = 'missing'}) end
if cur[1] ~= ARGV[3] then return cjson.encode({status = 'stale', owner = cur[2]}) end

local now = now_ms()
local liveness, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
local a, c = tonumber(ARGV[7]), tonumber(ARGV[8])
local load = {'last_hb', now, 'deadline', now + liveness}
for i = 9, 8 + 2 * a do load[#load + 1] = ARGV[i] end
local state, revived = cur[3], false
if state == 'offline' or state == 'disconnected' then
  state, revived = 'ready', true
  load[#load + 1] = 'state'
  load[#load + 1] = 'ready'
end
redis.call('HSET', KEYS[1], unpack(load))

local changed = cur[4] ~= ARGV[6]
if changed then
  local caps = {'capsig', ARGV[6]}
  local first = 9 + 2 * a
  for i = first, first + 2 * c - 1 do caps[#caps + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(caps))
  local pools = {}
  for i = first + 2 * c, #ARGV do pools[#pools + 1] = ARGV[i] end
  apply_pools(prefix, node_id, KEYS[2], KEYS[5], pools)
end

redis.call('ZADD', KEYS[3], now + liveness, node_id)
redis.call('ZADD', KEYS[4], now + liveness + retention, node_id)
redis.call('PEXPIRE', KEYS[1], liveness + retention)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], liveness + retention) end
return cjson.encode({status = 'ok', state = state, changed = changed, revived = revived})
