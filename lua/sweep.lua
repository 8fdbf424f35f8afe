--[[ sweep: handle every due deadline exactly once (run by every instance, ~every 200 ms).
Nodes whose liveness deadline passed (silent, or disconnected past their grace) are taken
offline: out of every pool, out of the liveness set, record expiring after retention.
Records whose retention ended leave the node index.
Input:
  KEYS[1] liveness zset {tag}:nodes:live   KEYS[2] node index {tag}:nodes:index
  KEYS[3] pools index   {tag}:pools
  Derived (same hash tag): {tag}:node:<id>, {tag}:node:<id>:pools, {tag}:pool:<name>
  ARGV[1] key prefix "{tag}:"   ARGV[2] batch: most nodes handled in one call
  ARGV[3] record retention ms
Output (JSON):
  {"offline":[{"node_id":id,"owner":inst,"conn":tok}...],"more":bool}
  more = the batch was full; call again soon.
]]
--!include time
--!include pools
--!include offline

local prefix, batch, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local offline = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
for _, node_id in ipairs(due) do
  local info = redis.call('HMGET', prefix .. 'node:' .. node_id, 'owner', 'conn', 'state')
  if info[3] then
    take_offline(prefix, node_id, now, retention, 'liveness_expired')
    offline[#offline + 1] = {node_id = node_id, owner = info[1], conn = info[2]}
  else
    -- the record expired while no instance swept (all were down): its pools set is gone
    -- too, so leave every pool by name
    for _, p in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      local pk = prefix .. 'pool:' .. p
      if redis.call('SREM', pk, node_id) == 1 and redis.call('SCARD', pk) == 0 then
        redis.call('SREM', KEYS[3], p)
      end
    end
    redis.call('ZREM', KEYS[1], node_id)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return cjson.encode({offline = offline, more = #due >= batch})
