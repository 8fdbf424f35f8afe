-- take_offline(prefix, node_id, now, retention_ms, reason)
-- Leave every pool, leave the liveness set, mark the record offline and let it expire
-- after the retention time. (Requires includes/pools.lua.)
local function take_offline(prefix, node_id, now, retention_ms, reason)
  local nk = prefix .. 'node:' .. node_id
  apply_pools(prefix, node_id, nk .. ':pools', prefix .. 'pools', {})
  redis.call('HSET', nk, 'state', 'offline', 'offline_at', now, 'offline_reason', reason,
    'capsig', '', 'deadline', 0)
  redis.call('ZREM', prefix .. 'nodes:live', node_id)
  redis.call('ZADD', prefix .. 'nodes:index', now + retention_ms, node_id)
  redis.call('PEXPIRE', nk, retention_ms)
end
