--[[ instance_beat: an instance renews its presence, and takes over the inbox of at most one
instance whose presence expired (a crash or kill -9) — unless the caller's own presence had
expired too (Redis away or restarted: every presence has; peers get one beat to return). Atomic: exactly one instance wins a
dead inbox. Each pending entry is re-resolved against its target's record: re-addressed to
the owner's current connection (returned here when that is the caller, XADDed to the
owner's inbox when another live instance owns it) or dropped when the target has no live
owner (state keeps it recoverable). Session messages are dropped: terminal ones are in the
result log for resume, UI hints are stale. Then the dead inbox is deleted.
Input:
  KEYS[1] {tag}:instance:<me>  presence string (PX presence_ttl)
  KEYS[2] {tag}:instances      zset instance id -> presence expiry ms (the listing)
  KEYS[3] {tag}:inbox:<me>     this instance's inbox stream (consumer group created here)
  Derived: {tag}:instance:<dead>, {tag}:inbox:<dead>, {tag}:taken:<id> (tombstone, 1 h:
           SET by every call of a takeover, from its first batch on: `lost <ms>` when the
           batch had entries, else `0` (NX); SET `lost <ms>` XX by deliver() when it drops a
           message for a taken-over instance; DEL by <id>'s own beat: `0` at once, a loss
           once a beat acknowledges it, ARGV[7]), node/session records, other inboxes.
  ARGV[1..4] ctx   ARGV[5] started_at ms (shown in /api/v1/instances)
  ARGV[6] "leave" at the end of a graceful shutdown: presence deleted and marked expired,
          so a peer takes the inbox over at its next beat instead of after the TTL
  ARGV[7] the tombstone an earlier beat reported (`tomb`) and the caller has acted on
          (closed its connections), or "": deleted if it still says exactly that
Output: [reply, blobs...]
  {"took_over":id?,"rerouted":N,"dropped":N,"more":bool,"lapsed":bool,"tomb":s?} | {"left":true}
  lapsed = while this instance was alive its presence had expired and that cost messages
           (its tombstone says a loss: a takeover of inbox entries, or a delivery dropped
           after a takeover): close its sockets, then acknowledge `tomb` (ARGV[7]). Until
           then every beat says so again: a beat whose reply was lost does not take the
           signal with it
]]
--!include ctx
--!include deliver

if ARGV[6] == 'leave' then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[2], 0, ME)
  return finish({left = true, rerouted = 0, dropped = 0, more = false})
end
-- Presence that lapsed while this instance was alive (stalled, partitioned, Redis away
-- longer than the TTL): a peer may have taken its inbox over and messages for its
-- connections were lost meanwhile. The caller then closes its sockets (clients resume,
-- nodes re-register) rather than carry on with holes.
-- Lapsed = the tombstone taken:<us> says `lost <ms>`: a peer's takeover deleted entries of
-- our inbox, or a peer's script dropped a message for one of our connections after we were
-- taken over. A takeover of an empty inbox leaves `0` (nothing lost yet); an expired
-- presence that cost no message (Redis unreachable for a while, restarted, wiped; peers
-- kept XADDing to our inbox while we were listed) is not a lapse. (Any other value, as an
-- earlier version wrote, counts as lost.) A loss stays until a beat acknowledges it
-- (ARGV[7]): deleted by the beat that found it, it went for good with that beat's reply
-- when the reply was lost (lifecycle audit). The time in it tells a later loss from the
-- one acknowledged.
local tomb = redis.call('GET', P .. 'taken:' .. ME) or nil
if tomb == '0' or (tomb ~= nil and tomb == ARGV[7]) then
  redis.call('DEL', P .. 'taken:' .. ME)
  tomb = nil
end
local lapsed = tomb ~= nil
-- Our own presence had expired too (Redis was away, or restarted from disk: PX expiries
-- are absolute): every peer's has, and they beat within one beat interval. This beat
-- takes nobody over, so that coming back from an outage is not a round of takeovers.
-- Present = the value our own beat wrote (started_at): a presence present() re-created
-- (value: a time) for a connection bound since the outage does not count.
local was_present = redis.call('GET', KEYS[1]) == ARGV[5]
redis.call('SET', KEYS[1], ARGV[5], 'PX', CFG.presence_ttl)
redis.call('ZADD', KEYS[2], NOW + CFG.presence_ttl, ME)
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], 'g', '$', 'MKSTREAM')
end

local reply = {rerouted = 0, dropped = 0, more = false, lapsed = lapsed, tomb = tomb}
local dead = was_present and redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', NOW, 'LIMIT', 0, 1)[1]
if dead and dead ~= ME and redis.call('EXISTS', P .. 'instance:' .. dead) == 0 then
  local inbox = P .. 'inbox:' .. dead
  -- The tombstone first, at every batch: the entries this call deletes are lost to the dead
  -- instance's connections (`lost`), and if it was only stalled and beats before the last
  -- batch (the takeover then stops: its presence is back), it must still learn it was taken
  -- over. An empty inbox loses nothing: `0` (NX: never over `lost`), which a later drop
  -- for one of its connections (deliver(): it is unlisted from here on) turns into `lost`.
  local entries = redis.call('XRANGE', inbox, '-', '+', 'COUNT', CFG.takeover_batch)
  if #entries > 0 then
    redis.call('SET', P .. 'taken:' .. dead, 'lost ' .. NOWS, 'PX', TOMBSTONE_MS)
  else
    redis.call('SET', P .. 'taken:' .. dead, '0', 'NX', 'PX', TOMBSTONE_MS)
  end
  for _, e in ipairs(entries) do
    local f = {}
    for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
    local ok, env = pcall(cmsgpack.unpack, f.env or '')
    local owner = nil
    -- Only node messages are re-routed: a session's terminal messages are in its result
    -- log (resume resends them; the writer drops their old numbers) and its UI hints are
    -- stale by now.
    if ok and type(env) == 'table' and env.k == 'node' and env.id then
      owner = redis.call('HGET', P .. env.k .. ':' .. env.id, 'owner')
      -- a job message only while the job is still this node's (not failed over meanwhile)
      if env.job and env.job ~= '' then
        local j = redis.call('HMGET', job_key(env.job), 'node', 'state')
        if j[1] ~= env.id or (j[2] ~= 'DISPATCHED' and j[2] ~= 'ACCEPTED' and j[2] ~= 'RUNNING') then
          owner = nil
        end
      end
    end
    if owner and owner ~= dead then
      local seq = env.seq
      if seq == 0 then seq = nil end
      deliver(env.k, env.id, env.msg, f.audio, seq, env.tp, env.job)
      reply.rerouted = reply.rerouted + 1
    else
      reply.dropped = reply.dropped + 1
    end
    redis.call('XDEL', inbox, e[1])
  end
  if #entries >= CFG.takeover_batch then
    reply.more = true
  else
    redis.call('DEL', inbox)
    redis.call('ZREM', KEYS[2], dead)
    reply.took_over = dead
  end
end
return finish(reply)
