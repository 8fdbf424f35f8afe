--[[ register: a node connects (or reconnects) and announces its capabilities.
Input:
  KEYS[1] node hash {tag}:node:<id>      KEYS[2] node's pools set {tag}:node:<id>:pools
  KEYS[3] liveness zset {tag}:nodes:live  KEYS[4] node index zset {tag}:nodes:index
  KEYS[5] pools index set {tag}:pools
  Derived (same hash tag): {tag}:pool:<name> joined/left, queues and jobs served by offer();
  {tag}:fleet:<fp>:nodes of ARGV[10] and of the credential the node had before;
  the caller's presence, listing and inbox group when missing (deliver.lua present()).
  ARGV[1..4] ctx (prefix, instance, config JSON, seed; see includes/ctx.lua)
  ARGV[5] node id   ARGV[6] claim: "mint" (minted by the caller: must be unused),
          "replace" (may take the id from a live connection: the credential proves it is
          this node) or "reconnect" (only if no live connection holds it: fleet token)
  ARGV[7] connection token: unique per socket, ever (fences heartbeats, closes, results)
  ARGV[8] capability signature
  ARGV[9] epoch floor: the highest epoch of the id's live connection on the caller's
          instance (0: none); the new epoch is above it, above the record's and at least
          the Redis clock in ms (epoch.lua)
  ARGV[10] fleet credential: the fingerprint of the node token without `sub` that registers
          ("" = none: a token bound to this node id, or no auth); the node is counted in
          {tag}:fleet:<fp>:nodes while it is not offline (fleet.lua), at most
          CFG.fleet_nodes of them (0: no limit, nothing counted; the record's `fleet` says
          where it is counted)
  ARGV[11] n: node-hash field/value pairs in ARGV[12 .. 11+2n]; then the pool names
Output: [reply, blobs...]  reply.out = messages to deliver (queued jobs handed to the node)
  {"status":"taken"}  the minted id exists; mint another
  {"status":"conflict","owner":inst}  "reconnect" of an id a live connection holds: refused,
                      nothing changed (the holder keeps its node and its jobs)
  {"status":"limit","live":N}  a node new to its fleet credential's count, which already
                      holds CFG.fleet_nodes live nodes: refused; nothing written but the
                      removal of members left behind and fleet:<fp>:pruned (fleet.lua)
  {"status":"foreign"}  "reconnect" or "replace" of an id whose record (live, disconnected or
                      offline) is another tenant's (or public, for a tenant's credential, and
                      the reverse): refused, nothing changed. A fleet token proves a tenant,
                      not a node; a token bound to the id proves the id within its tenant
                      (tenants may name nodes alike). Neither may inherit another tenant's
                      jobs (answering them into its sessions), their audio, or the
                      job_assigns waiting in an inbox for that id
  {"status":"ok","epoch":N,"state":"ready"|"draining","added":N,"removed":N,
   "replaced_conn":tok?,"replaced_owner":inst?}   a live older connection was replaced
   epoch: grows with every registration (commit order), whatever the floor: the caller's
   instance keeps the binding of the latest one live when replies come back out of order
]]
--!include ctx
--!include args
--!include pools
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include liveness
--!include epoch
--!include fleet

local node_id = ARGV[5]
local claim = ARGV[6]
if claim ~= 'mint' and claim ~= 'replace' and claim ~= 'reconnect' then
  return redis.error_reply('ERR register: bad claim ' .. tostring(claim))
end
if claim == 'mint' and redis.call('EXISTS', KEYS[1]) == 1 then
  return finish({status = 'taken'})
end
local liveness = CFG.liveness
local floor = int(9, 'epoch floor', 0, 2 ^ 53)
local fleet = ARGV[10]
local n = int(11, 'field pairs', 0, (#ARGV - 11) / 2)
local prev = redis.call('HMGET', KEYS[1], 'conn', 'owner', 'state', 'tenant', 'fleet')
if claim ~= 'mint' and prev[1] then
  local tenant = ''
  for i = 12, 11 + 2 * n, 2 do
    if ARGV[i] == 'tenant' then tenant = ARGV[i + 1] end
  end
  if (prev[4] or '') ~= tenant then return finish({status = 'foreign'}) end
end
local reply = {status = 'ok'}
if prev[1] and prev[1] ~= ARGV[7] and prev[3] ~= 'offline' and prev[3] ~= 'disconnected' then
  -- Held by another connection. It is live while its instance is: a connection of a
  -- killed instance holds nothing (its node reconnects within the presence TTL).
  if claim == 'reconnect' and prev[2] and redis.call('EXISTS', P .. 'instance:' .. prev[2]) == 1 then
    return finish({status = 'conflict', owner = prev[2]})
  end
  reply.replaced_conn = prev[1]
  reply.replaced_owner = prev[2]
end
-- A node new to its fleet credential's count needs a place in it (the last refusal: only
-- writes follow).
local counted, live = fleet_count(node_id, fleet)
if not counted then return finish({status = 'limit', live = live}) end
fleet = counted -- what the record says it is counted in ('' when not counted)
-- An operator drain outlives reconnects: it is its own field, state follows it.
local state = 'ready'
if redis.call('HGET', KEYS[1], 'drain') == '1' then state = 'draining' end

present() -- peers reach the node through us from now on
local fields = {'id', node_id, 'conn', ARGV[7], 'owner', ME, 'state', state,
  'registered_at', NOW, 'last_hb', NOW, 'deadline', NOW + liveness, 'capsig', ARGV[8],
  'fleet', fleet}
for i = 12, 11 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if prev[5] and prev[5] ~= '' and prev[5] ~= fleet then
  redis.call('SREM', fleet_nodes(prev[5]), node_id)
end
-- Reservations are the active-job set (heals a record that expired or was wiped); a
-- lower capacity takes effect as in-flight jobs finish, never below what is reserved.
local reserved = redis.call('SCARD', KEYS[1] .. ':jobs')
local capacity = tonumber(redis.call('HGET', KEYS[1], 'capacity') or '0')
redis.call('HSET', KEYS[1], 'reserved', reserved)
if reserved > capacity then
  redis.call('HSET', KEYS[1], 'capacity', reserved, 'capacity_target', capacity)
else
  redis.call('HDEL', KEYS[1], 'capacity_target')
end
redis.call('HDEL', KEYS[1], 'offline_at', 'offline_reason')
reply.epoch = epoch_after(redis.call('HGET', KEYS[1], 'epoch'), floor)
redis.call('HSET', KEYS[1], 'epoch', reply.epoch)
reply.state = state

local pools = {}
for i = 12 + 2 * n, #ARGV do pools[#pools + 1] = ARGV[i] end
reply.added, reply.removed = apply_pools(P, node_id, KEYS[2], KEYS[5], pools)
servable_again()

keep_alive(node_id, KEYS)
return finish(reply)
