--[[ sweep: handle every due deadline exactly once (every instance calls it ~every 200 ms;
atomic removal from the due sets hands each deadline to one caller).
  1. nodes past their liveness deadline (silent, or disconnected past the grace): offline,
     out of every pool, their jobs failed over at once;
  2. jobs past their deadline: dispatched/accepted/running -> job_cancel to the old node and
     re-dispatch to a node that never had it (attempt + 1) or fail with JOB_TIMEOUT after
     max_attempts; queued -> NO_AVAILABLE_NODE. A listed job whose deadline moved to the
     future meanwhile (this call dispatched it) is left alone. A turn part whose node has
     finished a later part of its turn was merged into it: it ends FINISHED with an empty
     translation_result instead (dispatch.lua `failover`, `merged`);
  3. sessions whose audio paused for pause_ms: timeout cut (fires even if the instance that
     received the chunks is gone); audio an earlier cut held for lack of a free utterance
     index is cut again here, for that cut's reason when it was manual or close (held_cut,
     cut.lua), also on a session closed since (session_close left its clock armed);
  4. sessions whose reorder window is over: release held results, missing_result for
     indices that have no job.
Input:
  KEYS[1] {tag}:nodes:live  KEYS[2] {tag}:nodes:index  KEYS[3] {tag}:pools
  KEYS[4] {tag}:due:jobs    KEYS[5] {tag}:due:audio    KEYS[6] {tag}:due:reorder
  Derived (same hash tag): node, job, session, pool and queue keys of the due entries.
  ARGV[1..4] ctx   (CFG.batch bounds how many entries of each kind one call handles)
Output: [reply, blobs...]
  {"offline":[{"node_id","owner","conn"}...],"jobs":N,"cuts":N,"released":N,"more":bool,
   "out":[...]}   more = a batch was full, or the nodes' work budget ran out; call again
   at once.
]]
--!include ctx
--!include pools
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include offline
--!include groups
--!include submit
--!include cut

-- A session here gets its terminal messages through this instance's inbox (ctx.lua).
SELF_INBOX = true

local batch = CFG.batch

local offline, more = {}, false

-- Expired nodes are handled within a budget of pools left and jobs handled (NODE_WORK), not
-- only of nodes: after an outage longer than the liveness every node is due at once, each
-- in up to 4,160 pools with its jobs to fail over, and Redis answers nobody while this
-- runs. The first due node is always handled; the rest wait for the next call (`more`).
local NODE_WORK = 4096
local spent = 0
local all_pools = nil -- the pools index, read once per call (for records that expired)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW, 'LIMIT', 0, batch)
if #due >= batch then more = true end
for _, node_id in ipairs(due) do
  if spent >= NODE_WORK then
    more = true
    break
  end
  local info = redis.call('HMGET', node_key(node_id), 'owner', 'conn', 'state')
  if info[3] then
    spent = spent + 1 + take_offline(node_id, 'liveness_expired')
    offline[#offline + 1] = {node_id = node_id, owner = info[1], conn = info[2]}
  else
    -- the record expired while no instance swept (all were down): its pools set is gone
    -- too, so leave every pool by name (a pool emptied meanwhile is passed over)
    all_pools = all_pools or redis.call('SMEMBERS', KEYS[3])
    for _, p in ipairs(all_pools) do
      local pk = P .. 'pool:' .. p
      if redis.call('SREM', pk, node_id) == 1 and redis.call('SCARD', pk) == 0 then
        redis.call('SREM', KEYS[3], p)
      end
    end
    -- and jobs it still held are failed over; the orphaned set goes
    local jk = node_key(node_id) .. ':jobs'
    local held = redis.call('SMEMBERS', jk)
    spent = spent + 1 + #all_pools + #held
    for _, jid in ipairs(held) do
      local job = hgetall(job_key(jid))
      if job.id and job.node == node_id then
        failover(jid, job, 'NODE_UNAVAILABLE', 'node ' .. node_id .. ' expired', false)
      end
    end
    redis.call('DEL', jk)
    redis.call('ZREM', KEYS[1], node_id)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', NOW)

local jobs = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', NOW, 'LIMIT', 0, batch)
if #jobs >= batch then more = true end
for _, jid in ipairs(jobs) do
  -- The list was read before any of its jobs was handled, and handling one (or a node
  -- above) can give another a new deadline: a failover's offer() hands the freed node a
  -- queued job of this list. A job whose deadline is no longer due is not this sweep's.
  local at = redis.call('ZSCORE', KEYS[4], jid)
  if not (at and tonumber(at) > NOW) then
    redis.call('ZREM', KEYS[4], jid)
    local job = hgetall(job_key(jid))
    if job.state == 'QUEUED' then
      count('queue_timeout')
      count('refused:queue_timeout:' .. (string.match(job.queue or '', '^[^,]+') or ''))
      fail(jid, job, 'NO_AVAILABLE_NODE', 'no node had free capacity within ' .. CFG.queue_wait .. ' ms')
    elseif job.state == 'DISPATCHED' or job.state == 'ACCEPTED' or job.state == 'RUNNING' then
      failover(jid, job, 'JOB_TIMEOUT', 'no result within the deadline (attempt ' .. job.attempt .. ')', true)
    end
  end
end

local cuts = 0
local paused = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', NOW, 'LIMIT', 0, batch)
if #paused >= batch then more = true end
for _, sid in ipairs(paused) do
  redis.call('ZREM', KEYS[5], sid)
  local sess = hgetall(session_key(sid))
  -- a closed session is here only for the audio its closing cut held (held_cut = close)
  if sess.id and (sess.state == 'open' or sess.held_cut == 'close') then
    if cut(sid, sess, 'timeout') then cuts = cuts + 1 end
  end
end

local held = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', NOW, 'LIMIT', 0, batch)
if #held >= batch then more = true end
for _, sid in ipairs(held) do
  redis.call('ZREM', KEYS[6], sid)
  if redis.call('EXISTS', session_key(sid)) == 1 then release(sid, true) end
end

return finish({offline = offline, jobs = #jobs, cuts = cuts, released = #held, more = more})
