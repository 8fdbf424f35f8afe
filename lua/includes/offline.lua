-- take_offline(node_id, reason): leave every pool, the liveness set and the count of its
-- fleet credential, fail over every job the node holds (with job_cancel, in case a silent
-- node is still connected somewhere), and let the record expire after the retention time.
-- Returns the pools left and jobs handled (the sweep's budget counts them).
-- (Requires ctx, pools, dispatch.)
local function take_offline(node_id, reason)
  local nk = node_key(node_id)
  local _, left = apply_pools(P, node_id, nk .. ':pools', P .. 'pools', {})
  redis.call('HSET', nk, 'state', 'offline', 'offline_at', NOW, 'offline_reason', reason,
    'capsig', '', 'deadline', 0)
  redis.call('ZREM', P .. 'nodes:live', node_id)
  local fleet = redis.call('HGET', nk, 'fleet')
  if fleet and fleet ~= '' then redis.call('SREM', fleet_nodes(fleet), node_id) end
  redis.call('ZADD', P .. 'nodes:index', NOW + CFG.node_retention, node_id)
  local jobs = redis.call('SMEMBERS', nk .. ':jobs')
  for _, jid in ipairs(jobs) do
    local job = hgetall(job_key(jid))
    if job.id then
      -- cancel too: a silent node may still be connected (to another instance) and working
      failover(jid, job, 'NODE_UNAVAILABLE', 'node ' .. node_id .. ' went offline', true)
    else
      release_node(jid, node_id)
    end
  end
  redis.call('PEXPIRE', nk, CFG.node_retention)
  return left + #jobs
end
