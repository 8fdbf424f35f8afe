--[[ node_offline: a node's socket closed on this instance.
An orderly close (grace 0) takes the node offline at once. A dropped socket (grace > 0)
leaves every pool now, so no new job goes to it, but keeps the record "disconnected" until
the grace ends: a reconnect within it keeps the node id and its in-flight jobs; otherwise
the sweep takes it offline. A close from a connection that no longer owns the node (it was
replaced by a newer registration) changes nothing.
Input:
  KEYS[1] node hash  KEYS[2] node's pools set  KEYS[3] liveness zset  KEYS[4] node index
  KEYS[5] pools index  (derived pool keys as in register.lua)
  ARGV[1] key prefix "{tag}:"   ARGV[2] node id   ARGV[3] connection token of the closed socket
  ARGV[4] grace ms (0 = offline now)   ARGV[5] record retention ms   ARGV[6] reason
Output (JSON):
  {"status":"missing"} | {"status":"stale"} | {"status":"ok","state":"offline"|"disconnected"}
]]
--!include time
--!include pools
--!include offline

local prefix, node_id = ARGV[1], ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 'conn', 'state')
if not cur[1] then return cjson.encode({status = 'missing'}) end
if cur[1] ~= ARGV[3] then return cjson.encode({status = 'stale'}) end
if cur[2] == 'offline' then return cjson.encode({status = 'ok', state = 'offline'}) end

local now = now_ms()
local grace, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
if grace <= 0 then
  take_offline(prefix, node_id, now, retention, ARGV[6])
  return cjson.encode({status = 'ok', state = 'offline'})
end
apply_pools(prefix, node_id, KEYS[2], KEYS[5], {})
redis.call('HSET', KEYS[1], 'state', 'disconnected', 'capsig', '', 'deadline', now + grace,
  'offline_reason', ARGV[6])
redis.call('ZADD', KEYS[3], now + grace, node_id)
return cjson.encode({status = 'ok', state = 'disconnected'})
