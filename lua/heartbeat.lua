--[[ heartbeat: a registered node is alive, reports load and maybe new capabilities; its
free capacity is offered to queued jobs.
Input:
  KEYS[1..5] as in register.lua (node hash, node pools, liveness, node index, pools index)
  ARGV[1..4] ctx    ARGV[5] node id   ARGV[6] connection token (must own the node)
  ARGV[7] capability signature (pools are recomputed only when it changed)
  ARGV[8] a: load field/value pairs (always stored)   ARGV[9] c: capability pairs
  ARGV[10] the connection's fleet credential (its fingerprint; "" = none): where a revived
           offline record is counted, as register counts it
  ARGV[11 ..] 2a load values, then 2c capability values, then the pool names
Output: [reply, blobs...]
  {"status":"missing"}             no record (expired or Redis wiped): register again
  {"status":"stale","owner":inst}  another connection owns the node; nothing changed
  {"status":"limit","live":N}  the record is offline and its fleet credential has
                      CFG.fleet_nodes live nodes (fleet.lua): not revived; nothing written
                      but the removal of members left behind and fleet:<fp>:pruned
  {"status":"ok","state":s,"changed":bool,"revived":bool,"out":[...]}
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
--!include fleet

-- A session here gets its terminal messages through this instance's inbox (ctx.lua).
SELF_INBOX = true

local node_id = ARGV[5]
local cur = redis.call('HMGET', KEYS[1], 'conn', 'owner', 'state', 'capsig', 'fleet', 'deadline')
if not cur[1] then return finish({status = 'missing'}) end
if cur[1] ~= ARGV[6] then return finish({status = 'stale', owner = cur[2]}) end

local liveness = CFG.liveness
local a = int(8, 'load pairs', 0, (#ARGV - 10) / 2)
local c = int(9, 'capability pairs', 0, (#ARGV - 10) / 2 - a)
local load_fields = {'last_hb', NOW, 'deadline', NOW + liveness}
for i = 11, 10 + 2 * a do load_fields[#load_fields + 1] = ARGV[i] end
local state, revived = cur[3], false
if state == 'offline' or state == 'disconnected' then
  -- an offline record left its credential's count (offline.lua): it must find a place,
  -- under the credential of the connection it comes back on (the record's may be "": one
  -- registered while the limit was 0 counts from now on)
  if state == 'offline' then
    local counted, live = fleet_count(node_id, ARGV[10])
    if not counted then return finish({status = 'limit', live = live}) end
    if counted ~= (cur[5] or '') then -- (the limit was turned on or off since it registered)
      load_fields[#load_fields + 1] = 'fleet'
      load_fields[#load_fields + 1] = counted
    end
  end
  state, revived = 'ready', true
  if redis.call('HGET', KEYS[1], 'drain') == '1' then state = 'draining' end
  load_fields[#load_fields + 1] = 'state'
  load_fields[#load_fields + 1] = state
end
redis.call('HSET', KEYS[1], unpack(load_fields))

local changed = cur[4] ~= ARGV[7]
if changed then
  local caps = {'capsig', ARGV[7]}
  local first = 11 + 2 * a
  for i = first, first + 2 * c - 1 do caps[#caps + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(caps))
  local pools = {}
  for i = first + 2 * c, #ARGV do pools[#pools + 1] = ARGV[i] end
  apply_pools(P, node_id, KEYS[2], KEYS[5], pools)
end

-- (a node past its liveness deadline was unservable to pick's load(): 'stale')
if changed or revived or (cur[6] or 0) + 0 < NOW then servable_again() end
keep_alive(node_id, KEYS)
return finish({status = 'ok', state = state, changed = changed, revived = revived})
