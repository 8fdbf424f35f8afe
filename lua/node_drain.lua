--[[ node_drain: an operator drains (or undrains) one node. A draining node keeps its pools
and finishes its jobs but receives no new ones; it is told with node_control
{"command":"drain"}. Undrain makes it ready again and offers it queued jobs.
Input:
  KEYS[1] node hash
  Derived: the node's pools, queues and jobs (offer on undrain).
  ARGV[1..4] ctx   ARGV[5] node id   ARGV[6] drain | undrain
Output: [reply, blobs...]
  {"status":"ok","state":s} | {"status":"missing"} | {"status":"offline"}
]]
--!include ctx
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch

local node_id = ARGV[5]
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return finish({status = 'missing'}) end
if state == 'offline' or state == 'disconnected' then return finish({status = 'offline'}) end
-- (the drain flag outlives reconnects: register and heartbeat keep a drained node draining)
if ARGV[6] == 'drain' then
  redis.call('HSET', KEYS[1], 'state', 'draining', 'drain', '1')
  deliver('node', node_id, cjson.encode({type = 'node_control', command = 'drain', reason = 'operator'}))
  state = 'draining'
else
  redis.call('HSET', KEYS[1], 'state', 'ready')
  redis.call('HDEL', KEYS[1], 'drain')
  state = 'ready'
  servable_again()
  offer(node_id)
end
return finish({status = 'ok', state = state})
