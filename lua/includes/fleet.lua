-- fleet_count(node_id, fleet): count the node against its fleet credential (`fleet`, the
-- fingerprint of a node token without `sub`; "" = none) before a registration or a
-- heartbeat that revives an offline record writes anything. Returns the fingerprint the
-- node is counted under now ("" when not counted: no fleet credential, or CFG.fleet_nodes
-- is 0, no limit), or false and the count when the credential already has CFG.fleet_nodes
-- live nodes. When the count is full, members left behind (their record gone or offline
-- without leaving, or moved to another credential) are dropped first, at most once per
-- liveness interval per credential ({tag}:fleet:<fp>:pruned): each refusal then costs a
-- SISMEMBER, a SCARD and a SET NX, not a read of every member (a full fleet's extra nodes
-- retry). (Requires ctx.)
local function fleet_count(node_id, fleet)
  local max = CFG.fleet_nodes
  if fleet == '' or max <= 0 then return '' end
  local fk = fleet_nodes(fleet)
  if redis.call('SISMEMBER', fk, node_id) == 1 then return fleet end
  local live = redis.call('SCARD', fk)
  if live >= max
      and redis.call('SET', P .. 'fleet:' .. fleet .. ':pruned', '1', 'PX', CFGS.liveness, 'NX') then
    for _, m in ipairs(redis.call('SMEMBERS', fk)) do
      local h = redis.call('HMGET', node_key(m), 'state', 'fleet')
      if not h[1] or h[1] == 'offline' or h[2] ~= fleet then
        redis.call('SREM', fk, m)
        live = live - 1
      end
    end
  end
  if live >= max then return false, live end
  redis.call('SADD', fk, node_id)
  return fleet
end
