-- apply_pools(prefix, node_id, pools_key, index_key, wanted) -> added, removed
-- Make the node's pool membership equal to `wanted` (a list of pool names) by the
-- difference against its pools set: only pools that change are touched. A pool that
-- becomes empty leaves the pools index, so nothing outlives its last member.
local function apply_pools(prefix, node_id, pools_key, index_key, wanted)
  local want = {}
  for _, p in ipairs(wanted) do want[p] = true end
  local had = {}
  local added, removed = 0, 0
  for _, p in ipairs(redis.call('SMEMBERS', pools_key)) do
    had[p] = true
    if not want[p] then
      local pk = prefix .. 'pool:' .. p
      redis.call('SREM', pk, node_id)
      if redis.call('SCARD', pk) == 0 then redis.call('SREM', index_key, p) end
      redis.call('SREM', pools_key, p)
      removed = removed + 1
    end
  end
  for _, p in ipairs(wanted) do
    if not had[p] then
      redis.call('SADD', prefix .. 'pool:' .. p, node_id)
      redis.call('SADD', index_key, p)
      redis.call('SADD', pools_key, p)
      added = added + 1
    end
  end
  return added, removed
end
