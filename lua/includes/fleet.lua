-- fleet_count(node_id, fleet): count the node against its fleet credential (`fleet`, the
-- fingerprint of a node token without `sub`; "" = none, not counted) before a registration
-- or a heartbeat that revives an offline record writes anything. True when the node is
-- counted now (it was, or there was a place: it is added); false and the count when the
-- credential already has CFG.fleet_nodes live nodes (0 = no limit). Members that went
-- offline, lost their record or moved to another credential without leaving are dropped
-- first, only when the count is full: the usual check is one SISMEMBER and one SCARD.
-- (Requires ctx.)
local function fleet_count(node_id, fleet)
  if fleet == '' then return true end
  local fk = fleet_nodes(fleet)
  if redis.call('SISMEMBER', fk, node_id) == 1 then return true end
  local max = CFG.fleet_nodes
  if max > 0 then
    local live = redis.call('SCARD', fk)
    if live >= max then
      for _, m in ipairs(redis.call('SMEMBERS', fk)) do
        local h = redis.call('HMGET', node_key(m), 'state', 'fleet')
        if not h[1] or h[1] == 'offline' or h[2] ~= fleet then
          redis.call('SREM', fk, m)
          live = live - 1
        end
      end
    end
    if live >= max then return false, live end
  end
  redis.call('SADD', fk, node_id)
  return true
end
