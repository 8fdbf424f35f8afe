--[[ register: a node connects (or reconnects) and announces its capabilities.
Input:
  KEYS[1] node hash            {tag}:node:<id>
  KEYS[2] node's pools set     {tag}:node:<id>:pools
  KEYS[3] liveness deadlines   {tag}:nodes:live   (zset node id -> deadline ms)
  KEYS[4] node index           {tag}:nodes:index  (zset node id -> record expiry ms)
  KEYS[5] pools index          {tag}:pools        (set of pool names)
  Derived (same hash tag, built from ARGV[1]): {tag}:pool:<name> for each pool joined/left.
  ARGV[1] key prefix "{tag}:"
  ARGV[2] node id
  ARGV[3] "1" when the id was minted by the caller (it must then be unused), else "0"
  ARGV[4] connection token: unique per socket, ever (fences heartbeats and closes)
  ARGV[5] owner instance id
  ARGV[6] liveness ms        ARGV[7] record retention ms after offline
  ARGV[8] capability signature
  ARGV[9] n: number of node-hash field/value pairs in ARGV[10 .. 9+2n]
  ARGV[10+2n ..] pool names the node belongs to
Output (JSON):
  {"status":"taken"}  minted id already exists; mint another
  {"status":"ok","epoch":N,"state":"ready"|"draining","added":N,"removed":N,
   "replaced_conn":tok?,"replaced_owner":inst?}  a live older connection was replaced
]]
--!include time
--!include pools

local prefix, node_id = ARGV[1], ARGV[2]
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return cjson.encode({status = 'taken'})
end
local now = now_ms()
local liveness, retention = tonumber(ARGV[6]), tonumber(ARGV[7])
local prev = redis.call('HMGET', KEYS[1], 'conn', 'owner', 'state')
local reply = {status = 'ok'}
if prev[1] and prev[1] ~= ARGV[4] and prev[3] ~= 'offline' and prev[3] ~= 'disconnected' then
  reply.replaced_conn = prev[1]
  reply.replaced_owner = prev[2]
end
local state = 'ready'
if prev[3] == 'draining' then state = 'draining' end

local n = tonumber(ARGV[9])
local fields = {'id', node_id, 'conn', ARGV[4], 'owner', ARGV[5], 'state', state,
  'registered_at', now, 'last_hb', now, 'deadline', now + liveness, 'capsig', ARGV[8]}
for i = 10, 9 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSETNX', KEYS[1], 'reserved', 0)
redis.call('HDEL', KEYS[1], 'offline_at', 'offline_reason')
reply.epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
reply.state = state

local pools = {}
for i = 10 + 2 * n, #ARGV do pools[#pools + 1] = ARGV[i] end
reply.added, reply.removed = apply_pools(prefix, node_id, KEYS[2], KEYS[5], pools)

redis.call('ZADD', KEYS[3], now + liveness, node_id)
redis.call('ZADD', KEYS[4], now + liveness + retention, node_id)
redis.call('PEXPIRE', KEYS[1], liveness + retention)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], liveness + retention) end
return cjson.encode(reply)
