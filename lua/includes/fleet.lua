-- fleet_count(node_id, fleet): count the node against its fleet credential (`fleet`, the
-- fingerprint of a node token without `sub`; "" = none) before a registration or a
-- heartbeat that revives an offline record writes anything. Returns the fingerprint the
-- node is counted under now ("" when not counted: no fleet credential, or CFG.fleet_nodes
-- is 0, no limit), or false and the count when the credential already has CFG.fleet_nodes
-- live nodes. When the count is full, members left behind (their record gone or offline
-- without leaving, or moved to another credential) are dropped first: a look at the
-- members, PRUNE_BATCH of them per call (SSCAN), resumed by the next refusal from where
-- the last stopped (the cursor kept in {tag}:fleet:<fp>:pruned as "c<cursor>", for
-- liveness + node retention: refusals far apart still go round the set, instead of reading
-- its first batch again each time); once a look has gone round the whole set, none again
-- for a liveness interval (the mark "1").
-- So a call reads at most ~PRUNE_BATCH records (~0.5 ms of Redis; the whole set of 10,000
-- in one call was ~23 ms), and a refusal while the mark is "1" costs a SISMEMBER, a SCARD
-- and a GET. (Requires ctx.)
local PRUNE_BATCH = 256
local function fleet_count(node_id, fleet)
  local max = CFG.fleet_nodes
  if fleet == '' or max <= 0 then return '' end
  local fk = fleet_nodes(fleet)
  if redis.call('SISMEMBER', fk, node_id) == 1 then return fleet end
  local live = redis.call('SCARD', fk)
  if live >= max then
    local pk = P .. 'fleet:' .. fleet .. ':pruned'
    local mark = redis.call('GET', pk)
    if not mark or string.byte(mark, 1) == 99 then -- (99: "c", a look under way)
      local r = redis.call('SSCAN', fk, mark and string.sub(mark, 2) or '0', 'COUNT', PRUNE_BATCH)
      for _, m in ipairs(r[2]) do
        local h = redis.call('HMGET', node_key(m), 'state', 'fleet')
        if not h[1] or h[1] == 'offline' or h[2] ~= fleet then
          if redis.call('SREM', fk, m) == 1 then live = live - 1 end
        end
      end
      -- (a look under way keeps its cursor as long as a node record lasts offline: resumed
      -- by refusals however far apart, it goes round the set; then none for an interval)
      if r[1] == '0' then
        redis.call('SET', pk, '1', 'PX', CFGS.liveness)
      else
        redis.call('SET', pk, 'c' .. r[1], 'PX', CFGS.node_jobs_ttl)
      end
    end
  end
  if live >= max then return false, live end
  redis.call('SADD', fk, node_id)
  return fleet
end
