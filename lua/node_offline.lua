--[[ node_offline: a node's socket closed on this instance.
An orderly close (grace 0) takes the node offline at once and fails over its jobs. A
dropped socket (grace > 0) leaves every pool now, so no new job goes to it, but keeps the
record "disconnected" with its in-flight jobs until the grace ends: a reconnect within it
keeps the node id and the jobs (their results are accepted on the new connection);
otherwise the sweep takes it offline. A close from a connection that no longer owns the
node (replaced by a newer registration) changes nothing.
Input:
  KEYS[1..5] as in register.lua
  ARGV[1..4] ctx   ARGV[5] node id   ARGV[6] connection token of the closed socket
  ARGV[7] grace ms (0 = offline now)   ARGV[8] reason
Output: [reply, blobs...]
  {"status":"missing"} | {"status":"stale"} | {"status":"ok","state":"offline"|"disconnected"}
]]
--!include ctx
--!include args
--!include pools
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include offline

-- A session here gets its terminal messages through this instance's inbox (ctx.lua).
SELF_INBOX = true

local node_id = ARGV[5]
local cur = redis.call('HMGET', KEYS[1], 'conn', 'state')
if not cur[1] then return finish({status = 'missing'}) end
if cur[1] ~= ARGV[6] then return finish({status = 'stale'}) end
if cur[2] == 'offline' then return finish({status = 'ok', state = 'offline'}) end

local grace = int(7, 'grace ms', 0, math.huge)
if grace <= 0 then
  take_offline(node_id, ARGV[8])
  return finish({status = 'ok', state = 'offline'})
end
apply_pools(P, node_id, KEYS[2], KEYS[5], {})
redis.call('HSET', KEYS[1], 'state', 'disconnected', 'capsig', '', 'deadline', NOW + grace,
  'offline_reason', ARGV[8])
redis.call('ZADD', KEYS[3], NOW + grace, node_id)
return finish({status = 'ok', state = 'disconnected'})
