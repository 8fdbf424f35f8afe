-- keep_alive(node_id, keys): a registration or heartbeat moves the node's liveness deadline
-- (KEYS[3]) and record expiry (KEYS[4]) forward and refreshes the TTLs of its record, its
-- pools set and its active-job set, then offers its free capacity to queued jobs.
-- (Requires ctx, dispatch; `keys` are the KEYS of register/heartbeat.)
local function keep_alive(node_id, keys)
  local liveness, retention = CFG.liveness, CFG.node_retention
  redis.call('ZADD', keys[3], NOW + liveness, node_id)
  redis.call('ZADD', keys[4], NOW + liveness + retention, node_id)
  redis.call('PEXPIRE', keys[1], liveness + retention)
  for _, k in ipairs({keys[2], keys[1] .. ':jobs'}) do
    if redis.call('EXISTS', k) == 1 then redis.call('PEXPIRE', k, liveness + retention) end
  end
  offer(node_id)
end
