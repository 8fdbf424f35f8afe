-- Reservation, dispatch and the job's terminal failure: assign() reserves a slot on the node
-- pick.lua chose and sends job_assign; dispatch() assigns, queues or fails; offer() hands
-- freed capacity to queued jobs; failover() re-dispatches an attempt that ended without a
-- result.
-- (Requires ctx, deliver, results, explain, pick.)

-- release_node(jid, nid, n): give back the reservation, exactly once. `n` (optional): the
-- node's conn, capacity_target, state, reserved and capacity, read by the caller in this
-- call (job_for); it saves the EXISTS and HGET here and is kept current for offer().
local function release_node(jid, nid, n)
  if not nid or nid == '' then return end
  local nk = node_key(nid)
  if redis.call('SREM', nk .. ':jobs', jid) ~= 1 then return end
  if n then
    if not n.conn then return end
  elseif redis.call('EXISTS', nk) == 0 then
    return
  end
  local reserved = redis.call('HINCRBY', nk, 'reserved', '-1')
  -- A capacity decrease waits for in-flight jobs (capacity never drops below reserved).
  local target
  if n then
    n.reserved, target = reserved, n.capacity_target
  else
    target = redis.call('HGET', nk, 'capacity_target')
  end
  if target then
    if reserved <= tonumber(target) then
      redis.call('HSET', nk, 'capacity', target)
      redis.call('HDEL', nk, 'capacity_target')
      if n then n.capacity, n.capacity_target = target, nil end
    else
      redis.call('HSET', nk, 'capacity', reserved)
      if n then n.capacity = reserved end
    end
  end
end

-- The fields submit() gives a new job's record (besides those its first dispatch writes:
-- state, attempt, node...), in the order they are written.
local CREATED_FIELDS = {'id', 'session', 'idx', 'pools', 'needs', 'pair', 'trace_id', 'turn_id',
  'turn_node', 'turn_prev', 'last_node', 'created_at', 'spec', 'tp', 'web_ms'}

-- save_fields(job, f): when the record of a job submit() created in this call was not
-- written yet, the flat field list `f` (about to be HSET, holding `state` and `attempt`)
-- becomes the whole record: the fields submit() set on `job` (CREATED_FIELDS, absent ones
-- left out) are appended to it; the caller sets its TTL. Returns whether it did.
local function save_fields(job, f)
  if not job.unsaved then return false end
  job.unsaved = nil
  local n = #f
  for _, k in ipairs(CREATED_FIELDS) do
    local v = job[k]
    if v then
      f[n + 1], f[n + 2] = k, v
      n = n + 2
    end
  end
  return true
end

-- unqueue(jid, job): leave every queue the job waits in.
local function unqueue(jid, job)
  for q in string.gmatch(job.queue or '', '[^,]+') do
    redis.call('LREM', P .. 'queue:' .. q, 1, jid)
  end
  job.queue = ''
end

-- fail(jid, job, code, message): terminal FAILED; the utterance gets its error.
local function fail(jid, job, code, message)
  unqueue(jid, job)
  redis.call('ZREM', P .. 'due:jobs', jid)
  local extra = {'failure', code, 'failure_message', message}
  if CFG.explain ~= 0 and job.node and job.node ~= '' then
    extra[5], extra[6] = 'end:' .. job.attempt, NOW .. ' failed ' .. code
  end
  end_job(jid, job, 'FAILED', extra)
  -- The cell's recent failures (the dashboard's list): bounded, expires with the jobs.
  redis.call('LPUSH', P .. 'failures', NOW .. ' ' .. jid .. ' ' .. code .. ' '
    .. utf8_cut(message or '', 160))
  redis.call('LTRIM', P .. 'failures', 0, 49)
  redis.call('PEXPIRE', P .. 'failures', CFG.job_ttl)
  count('failed:' .. code)
  -- (neither reaches another lifetime of the job's session id)
  if job_session(job) then
    ui_event(job, 'ERROR', 'error', code)
    settle(job.session, job.idx, error_msg(job, code, message))
  end
end

-- assign(jid, job, nid, why, compact): reserve a slot on nid and send job_assign (attempt
-- + 1). `why`: the routing explanation text of this choice ("" when off); written in the
-- same HSET as route:<attempt> = "<dispatched_ms> <node> <why>", after the explanation of an
-- earlier wait in the queues when there was one. `compact` (optional): its compact form
-- (route_compact), kept as `rc` for a first attempt that did not wait. `pool` (optional): the
-- pool the node was chosen from (pick's, or the queue an offer took the job from).
local function assign(jid, job, nid, why, compact, pool)
  local jk = job_key(jid)
  -- A job submit() created in this call (CREATED): its record, audio and their TTLs were
  -- just written and its session exists, so 5 commands are not needed.
  local fresh = job.state == 'CREATED'
  if not fresh then unqueue(jid, job) end -- (a fresh job waits in no queue: no `queue` field)
  -- reserved counts the node's set of jobs (DESIGN §1): only the first job of an idle node
  -- creates the set and gives it its TTL; heartbeats refresh it (keep_alive).
  local reserved = redis.call('HINCRBY', node_key(nid), 'reserved', '1')
  redis.call('SADD', node_key(nid) .. ':jobs', jid)
  if reserved == 1 then redis.call('PEXPIRE', node_key(nid) .. ':jobs', CFGS.node_jobs_ttl) end
  local attempt = fresh and '1' or dec(redis.call('HINCRBY', jk, 'attempt', '1'))
  local acks = (NODE_ACK[nid] or redis.call('HGET', node_key(nid), 'supports_ack')) == '1'
  local deadline = dec(NOW + (acks and CFG.ack_timeout or CFG.run_timeout))
  local f = {'state', 'DISPATCHED', 'node', nid, 'dispatched_at', NOWS, 'deadline', deadline,
    'attempt', attempt}
  if not fresh then f[#f + 1], f[#f + 2] = 'queue', '' end
  if why and why ~= '' then
    local rk = 'route:' .. attempt
    local waited = job[rk] and string.match(job[rk], '^%S+ %S+ (.*)$')
    local n = #f
    f[n + 1] = rk
    f[n + 2] = NOWS .. ' ' .. nid .. ' ' .. (waited and (waited .. '|') or '') .. why
    job[rk] = f[n + 2]
    if compact and attempt == '1' and not waited then
      f[n + 3], f[n + 4] = 'rc', compact
      job.rc = compact
    end
  end
  local created = save_fields(job, f)
  redis.call('HSET', jk, unpack(f))
  redis.call('ZADD', P .. 'due:jobs', deadline, jid)
  if created then
    redis.call('PEXPIRE', jk, CFGS.job_ttl)
  elseif not fresh then
    redis.call('PEXPIRE', jk, CFGS.job_ttl)
    redis.call('PEXPIRE', jk .. ':audio', CFGS.job_ttl)
  end
  job.state, job.node, job.attempt, job.dispatched_at = 'DISPATCHED', nid, attempt, NOWS
  count('dispatched')
  LAT.dispatch[#LAT.dispatch + 1] = math.max(0, NOW - (job.created_at or NOW))
  -- The pool the job is served from: the one the node was chosen from, else (a turn's or
  -- the session's node) its first candidate pool the node is in (a tenant's job a public
  -- node takes counts under the public pool, not the tenant's).
  local served = pool or string.match(job.pools or '', '^[^,|]+') or ''
  if not pool and string.find(job.pools or '', ',', 1, true) then
    for entry in string.gmatch(job.pools, '[^,]+') do
      local p = split_entry(entry)
      if redis.call('SISMEMBER', P .. 'pool:' .. p, nid) == 1 then
        served = p
        break
      end
    end
  end
  LAT.pool[#LAT.pool + 1] = served
  local sk = session_key(job.session)
  -- (a fresh job's session is the one that created it; a later attempt's may be gone, or
  -- another lifetime under the same id: job_session, one lookup deliver reuses)
  local mine = fresh or job_session(job)
  if mine and job.turn_id and job.turn_id ~= ''
      and redis.call('HGET', sk, 'turn_id') == job.turn_id then
    redis.call('HSET', sk, 'turn_node', nid)
  end
  if job.sess_set then
    if nid ~= job.last_node then
      local n = #job.sess_set
      job.sess_set[n + 1], job.sess_set[n + 2] = 'last_node', nid
    end
  elseif mine then
    redis.call('HSET', sk, 'last_node', nid)
  end
  -- the spec is a JSON object with members (submit put the ids in it): attempt_id goes in
  -- front as text, without encoding a table
  local msg = '{"attempt_id":' .. attempt .. ',' .. string.sub(job.spec, 2)
  local audio = fresh and job.fresh_audio or redis.call('GET', jk .. ':audio') or ''
  deliver('node', nid, msg, audio, nil, job.tp, jid, fresh and job.own_audio)
  ui_events_ok(job, 'DISPATCHED', mine)
end

-- dispatch(jid, job, code, message): assign now, or wait in the candidate pools' queues, or fail
-- at once with `code` when no node can ever serve it.
local function dispatch(jid, job, code, message)
  local why = explainer()
  local nid, pool = pick(job, why)
  local text = route_text(why)
  if nid then
    assign(jid, job, nid, text, route_compact(why, nid), pool)
    return 'dispatched'
  end
  local rk = 'route:' .. (tonumber(job.attempt or '0') + 1)
  if not servable(job) then
    -- Kept in `job` only: fail() -> end_job rewrites the whole record from `job` (an HSET
    -- here would be deleted with the record), keeping route:<attempt + 1>.
    if why then job[rk] = NOWS .. ' - ' .. text .. '|none>' end
    fail(jid, job, code or 'NO_AVAILABLE_NODE',
      message or ('no node serves ' .. (job.pair or 'this language pair')))
    return 'failed'
  end
  -- Wait in the queue of every candidate pool, so whichever pool frees first serves it
  -- (a non-strict tenant job is also taken by public nodes).
  local queues = {}
  for entry in string.gmatch(job.pools, '[^,]+') do
    local q = split_entry(entry)
    if redis.call('LLEN', P .. 'queue:' .. q) >= CFG.queue_max then
      count('refused:queue_full:' .. q)
      -- Explained like the unservable case (in `job` only, for end_job): the nodes looked
      -- at, then the `queue_full` step naming the full queue.
      if why then job[rk] = NOWS .. ' - ' .. text .. '|queue_full>' .. q end
      fail(jid, job, 'NO_AVAILABLE_NODE', 'every node is busy and the queue is full')
      return 'failed'
    end
    queues[#queues + 1] = q
  end
  for _, q in ipairs(queues) do redis.call('RPUSH', P .. 'queue:' .. q, jid) end
  job.queue = table.concat(queues, ',')
  local deadline = NOW + CFG.queue_wait
  local f = {'state', 'QUEUED', 'queue', job.queue, 'queued_at', NOW, 'deadline', deadline,
    'node', '', 'attempt', job.attempt}
  if why then
    job[rk] = NOW .. ' - ' .. text .. '|queued@' .. NOW .. '>' .. table.concat(queues, ',')
    local n = #f
    f[n + 1], f[n + 2] = rk, job[rk]
  end
  local created = save_fields(job, f)
  redis.call('HSET', job_key(jid), unpack(f))
  if created then redis.call('PEXPIRE', job_key(jid), CFG.job_ttl) end
  redis.call('ZADD', P .. 'due:jobs', deadline, jid)
  job.state = 'QUEUED'
  count('queued')
  return 'queued'
end

-- node_pools(capsig): the pools a node is in, read from its capability signature (its
-- last part: the pool names, space-separated; register and heartbeat write it with the
-- pools set, take_offline and node_offline empty both), saving an SMEMBERS. Nodes share a
-- few signatures: each is split once (kept in DERIVED, bounded like load_fields), unless
-- it is longer than SIG_CACHE_MAX: a node in thousands of pools has a signature of
-- ~160 KB and lists of ~1 MB, and 256 such kept for the library's life pinned ~0.3 GB of
-- Lua heap that no key's TTL or eviction frees (Redis key audit). Such a node's lists are
-- built again for each call that needs them.
local SIG_CACHE_MAX = 4096
local function node_pools(capsig)
  capsig = capsig or ''
  local keep = #capsig <= SIG_CACHE_MAX
  local name = keep and ('pools:' .. capsig)
  local pools = keep and DERIVED[name]
  if pools then return pools end
  pools = {}
  for p in string.gmatch(string.match(capsig, '^[^|]*|[^|]*|(.*)$') or '', '%S+') do
    pools[#pools + 1] = p
  end
  if keep then derive(name, pools) end
  return pools
end

-- queue_keys(capsig): the keys of the queues of the node's pools (node_pools), built once
-- per key prefix and signature (kept in DERIVED.queues, by prefix then signature: no key
-- name is built for the lookup), for at most QUEUE_KEYS_MAX pairs: a bound of its own, so
-- it never takes the places of the lists derive() keeps.
local QUEUE_KEYS_MAX = 256
local function queue_keys(capsig)
  capsig = capsig or ''
  local all = DERIVED.queues
  local mine = all and all[P]
  local ks = mine and mine[capsig]
  if ks then return ks end
  ks = {}
  for i, pool in ipairs(node_pools(capsig)) do ks[i] = P .. 'queue:' .. pool end
  if #capsig > SIG_CACHE_MAX then return ks end -- (as in node_pools)
  DERIVED.nq = (DERIVED.nq or 0) + 1
  if DERIVED.nq <= QUEUE_KEYS_MAX then
    if not all then
      all = {}
      DERIVED.queues = all
    end
    if not mine then
      mine = {}
      all[P] = mine
    end
    mine[capsig] = ks
  end
  return ks
end

-- EXISTS_CHUNK: how many queue keys one EXISTS asks about (offer). Lua's unpack cannot pass
-- more than ~8,000 values (LUAI_MAXCSTACK), and a node's pools are bounded by the gateway
-- (4,160 pools), not by this script.
local EXISTS_CHUNK = 256

-- offer(nid, known): hand the node's free capacity to jobs waiting in its pools' queues.
-- `known` (optional): the node's state, reserved, capacity and capsig as they are now
-- (read in this call: release_node keeps them current), saving their HMGET.
local function offer(nid, known)
  local n = known and {known.state, known.reserved, known.capacity, known.capsig}
    or redis.call('HMGET', node_key(nid), 'state', 'reserved', 'capacity', 'capsig')
  if n[1] ~= 'ready' then return end
  local room = (n[3] or 0) - (n[2] or 0)
  if room <= 0 then return end
  -- One EXISTS per EXISTS_CHUNK of the node's queues: when nothing waits (the common case)
  -- that is one command for the usual node's few dozen pools, instead of one LRANGE per
  -- pool; and only the queues of a chunk where something waits are read.
  local ks = queue_keys(n[4])
  for c = 1, #ks, EXISTS_CHUNK do
    local to = math.min(#ks, c + EXISTS_CHUNK - 1)
    if redis.call('EXISTS', unpack(ks, c, to)) > 0 then
      for i = c, to do
        local qk = ks[i]
        for _, jid in ipairs(redis.call('LRANGE', qk, 0, CFG.scan - 1)) do
          local job = hgetall(job_key(jid))
          if job.state ~= 'QUEUED' then
            redis.call('LREM', qk, 1, jid) -- stale entry
          else
            local ok = load(nid, job, true) ~= nil and serves(nid, job)
            local turn = ok and turn_node_of(job)
            if turn == false then
              ok = false -- its turn's earlier part waits for a node: it waits behind it
            elseif ok and turn ~= '' and turn ~= nid
                and load(turn, job, false) and serves(turn, job) then
              ok = false -- its turn's node is alive: it waits for that one
            end
            if ok then
              local why = ''
              if CFG.explain ~= 0 then
                why = 'offer>' .. nid .. '=ok:' .. (tonumber(n[3]) - room) .. '/' .. n[3]
              end
              assign(jid, job, nid, why, nil, string.sub(qk, #P + 7)) -- (P .. 'queue:' .. pool)
              room = room - 1
              if room <= 0 then return end
            end
          end
        end
      end
    end
  end
end

-- cancel_on(nid, jid, job, code): tell node nid to stop the job's attempt (best-effort;
-- `reason` is the code in lower case).
local function cancel_on(nid, jid, job, code)
  deliver('node', nid, cjson.encode({type = 'job_cancel', job_id = jid,
    trace_id = job.trace_id, reason = string.lower(code)}))
end

-- merged(job): has the node this turn part is on finished a later part of the turn (the
-- parts after it, at the next indices, on that node, up to MERGE_LOOK of them)? PROTOCOL:
-- "a node may send no result for a job it merged into a later one; the job then ends by
-- timeout rules". Failed over at its deadline, the part ran again on another node, alone:
-- a second, partial translation of the phrase, or (a node waiting for the rest of the turn)
-- JOB_TIMEOUT after max_attempts, ~90 s later (protocol audit). Asked only at the deadline:
-- a node that goes before it may have had the part still in flight (run beside the later,
-- shorter one), and that is failed over as before.
local MERGE_LOOK = 16
local function merged(job)
  if (job.turn_id or '') == '' or (job.node or '') == '' or not job.session then return false end
  local jobs = session_key(job.session) .. ':jobs'
  local idx = tonumber(job.idx or '')
  if not idx then return false end
  for i = idx + 1, idx + MERGE_LOOK do
    local later = redis.call('HGET', jobs, dec(i))
    if not later then return false end
    local l = redis.call('HMGET', job_key(later), 'state', 'node', 'turn_id')
    if l[2] ~= job.node or l[3] ~= job.turn_id then return false end
    if l[1] == 'FINISHED' then return true end
    -- (a later part still on that node, merged too or still running: look past it)
  end
  return false
end

-- The empty translation_result of a merged part (a node's empty result, as the instance
-- writes it: keys sorted, the four texts present), after the header job_result writes.
local MERGED_BODY = '"extra":{"reason":"NO_TEXT_ASSIGNED"},"text_asr":"","text_translated":"",'
  .. '"tts_audio":"","tts_format":"opus","type":"translation_result"}'

-- end_merged(jid, job, cancel): the merged part ends as its node would have ended it with an
-- empty result: its reservation released, FINISHED, its index settled, the freed slot
-- offered; with `cancel`, a job_cancel to the node (best-effort: one that did not merge it
-- stops working on a slot given back).
local function end_merged(jid, job, cancel)
  job.id = job.id or jid
  local nid = job.node
  if cancel then cancel_on(nid, jid, job, 'JOB_TIMEOUT') end
  release_node(jid, nid)
  redis.call('ZREM', P .. 'due:jobs', jid)
  end_job(jid, job, 'FINISHED', {'merged', '1'})
  count('finished')
  count('merged')
  if job_session(job) then
    local ids = {session_id = job.session, utterance_index = tonumber(job.idx), job_id = jid,
      trace_id = job.trace_id}
    settle(job.session, job.idx, result_head(ids, '') .. ',' .. MERGED_BODY)
  end
  offer(nid)
end

-- failover(jid, job, code, message, cancel): the current attempt is over without a result.
-- Release, cancel it on the old node (best-effort), and re-dispatch to a node that never
-- had it, or fail the utterance when attempts are used up; at its deadline, a turn part
-- its node merged into a later one (merged) ends empty instead.
local function failover(jid, job, code, message, cancel)
  if code == 'JOB_TIMEOUT' and merged(job) then
    end_merged(jid, job, cancel)
    return
  end
  local old = job.node
  release_node(jid, old)
  redis.call('ZREM', P .. 'due:jobs', jid)
  if old and old ~= '' then
    if cancel then cancel_on(old, jid, job, code) end
    job.tried = (job.tried and job.tried ~= '') and (job.tried .. ',' .. old) or old
    if CFG.explain ~= 0 then
      -- kept in `job` too: a job that fails in this same call is rewritten from it (end_job)
      local ek = 'end:' .. job.attempt
      job[ek] = NOWS .. ' failover ' .. code
      redis.call('HSET', job_key(jid), 'tried', job.tried, 'node', '', ek, job[ek])
    else
      redis.call('HSET', job_key(jid), 'tried', job.tried, 'node', '')
    end
    job.node = ''
    job.failovers = redis.call('HINCRBY', job_key(jid), 'failovers', 1)
    count('failover')
  end
  if tonumber(job.attempt or '0') >= CFG.max_attempts then
    fail(jid, job, code, message)
  else
    dispatch(jid, job, code, message)
  end
  if old and old ~= '' then offer(old) end
end
