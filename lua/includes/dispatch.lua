-- Node choice, reservation and the job's terminal failure.
-- A job record carries: pools (csv of "primary" or "primary|secondary" pool names, in order
-- of preference: tenant pool first), needs (csv of service types), tried (csv of nodes
-- that had an attempt), turn_node (node holding the turn's audio, if any).
-- (Requires ctx, deliver, results.)

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

-- The routing explanation (`route:<attempt>` on the job; docs/redis-keys.md "Job routing
-- explanation"): a compact string built while choosing, one table.concat, no cjson:
--   seg>node=verdict:reserved/capacity,node=verdict...|seg>...
-- The chosen node is named in front of it (assign), so its entry keeps its verdict `ok`
-- (the reader marks it chosen: no rewrite here). `why` holds one short string per entry
-- in its array part; nil when CFG.explain is off (then nothing is built).
-- bench/explain-micro.sh measures what this costs per dispatch.
local ROUTE_MAX = 32 -- node entries per attempt at most; beyond, ",+N" says how many more

local function explainer()
  if CFG.explain == 0 then return nil end
  return {k = 0, n = 0, more = 0, sep = '', label = '', ok = {}}
end

-- segment(why, label): start the entries of one candidate pool (or turn / affinity).
local function segment(why, label)
  if not why then return end
  why.k = why.k + 1
  why[why.k] = (why.k > 1 and '|' or '') .. label .. '>'
  why.sep, why.label = '', label
end

-- explain(why, nid, verdict, reserved, cap): one node looked at.
local function explain(why, nid, verdict, reserved, cap)
  if not why then return end
  if why.n >= ROUTE_MAX then
    why.more = why.more + 1
    return
  end
  why.n, why.k = why.n + 1, why.k + 1
  local entry = reserved and (nid .. '=' .. verdict .. ':' .. reserved .. '/' .. cap)
    or (nid .. '=' .. verdict)
  why[why.k] = why.sep .. entry
  why.sep = ','
  if verdict == 'ok' then why.ok[nid] = {why.label, entry} end
end

-- route_compact(why, nid): the explanation as a record that finishes on this attempt keeps
-- it (ctx.lua compact_route: the chosen node's entry in its segment, the others counted),
-- built from the entries while they are at hand, so the result needs no pattern matching
-- over the whole text. nil when off or when the node's entry was not recorded.
local function route_compact(why, nid)
  local e = why and why.ok[nid]
  if not e then return nil end
  local others = why.n + why.more - 1
  if others > 0 then return string.format('- - %s>%s,+%d', e[1], e[2], others) end
  return '- - ' .. e[1] .. '>' .. e[2]
end

-- route_text(why): the explanation as one string ("" when off).
local function route_text(why)
  if not why then return '' end
  if why.more > 0 then
    why.k = why.k + 1
    why[why.k] = ',+' .. why.more
  end
  return table.concat(why, '', 1, why.k)
end

-- Fields of the job table that are not fields of its record.
local NOT_RECORD = {unsaved = true, sess_set = true, fresh_audio = true, own_audio = true,
  ui_json = true}

-- save_fields(job, f): when the record of a job submit() created in this call was not
-- written yet, the flat field list `f` (about to be HSET) becomes the whole record: `job`
-- takes f's values, then f lists every field of `job`; the caller sets its TTL. Returns
-- whether it did.
local function save_fields(job, f)
  if not job.unsaved then return false end
  job.unsaved = nil
  for i = 1, #f, 2 do job[f[i]] = f[i + 1] end
  local n = 0
  for k, v in pairs(job) do
    if not NOT_RECORD[k] then
      f[n + 1], f[n + 2] = k, v
      n = n + 2
    end
  end
  return true
end

-- load_fields(needs_csv) -> the node fields load() reads for a job needing those services,
-- the services, and each as ",svc," (to find in ",<node services>,"). Kept in DERIVED
-- (a job's `needs` is one of a few pipelines).
local function load_fields(csv)
  local name = 'load:' .. csv
  local d = DERIVED[name]
  if d then return d[1], d[2], d[3] end
  -- supports_ack, owner and conn are what assign and deliver need of the chosen node.
  local fields = {'state', 'reserved', 'capacity', 'services', 'deadline', 'supports_ack',
    'owner', 'conn'}
  local needs, needles = {}, {}
  for svc in string.gmatch(csv, '[^,]+') do
    needs[#needs + 1] = svc
    needles[#needles + 1] = ',' .. svc .. ','
    fields[#fields + 1] = 'down:' .. svc
  end
  derive(name, {fields, needs, needles})
  return fields, needs, needles
end

-- load(nid, job, need_room, why): the node's load ratio if it may take `job`, else nil.
-- One HMGET reads everything it needs, the down-marks of the job's services included.
-- With `why`, the verdict is recorded (ok, full, draining, offline, stale, tried,
-- nocap, nosvc-<type>, down-<type>) with the node's reserved/capacity.
local function load(nid, job, need_room, why)
  if csv_has(job.tried, nid) then
    explain(why, nid, 'tried')
    return nil
  end
  local fields, needs, needles = load_fields(job.needs or '')
  local nk = node_key(nid)
  local n = redis.call('HMGET', nk, unpack(fields))
  NODE_ACK[nid] = n[6]
  OWNERS[nk] = {n[7], n[8]}
  local reserved, cap = tonumber(n[2] or '0'), tonumber(n[3] or '0')
  local verdict
  if n[1] ~= 'ready' then
    verdict = n[1] or 'gone'
  elseif tonumber(n[5] or '0') < NOW then
    verdict = 'stale'
  elseif cap <= 0 then
    verdict = 'nocap'
  elseif need_room and reserved >= cap then
    verdict = 'full'
  else
    local offered = ',' .. (n[4] or '') .. ','
    for i, svc in ipairs(needs) do
      if not string.find(offered, needles[i], 1, true) then verdict = 'nosvc-' .. svc break end
      local down = n[8 + i]
      if down and tonumber(down) > NOW then verdict = 'down-' .. svc break end
    end
  end
  -- (the fields as read: formatting numbers back into strings costs more than the rest)
  explain(why, nid, verdict or 'ok', n[2] or '0', n[3] or '0')
  if verdict then return nil end
  return reserved / cap
end

-- split_entry("a|b") -> "a", "b": a pool entry and, for two-way jobs, its reverse pool.
local function split_entry(entry)
  local bar = string.find(entry, '|', 1, true)
  if bar then return string.sub(entry, 1, bar - 1), string.sub(entry, bar + 1) end
  return entry, nil
end

-- serves(nid, job): is the node a member of one of the job's pools (and, for two-way
-- jobs, of that entry's reverse pool)?
local function serves(nid, job)
  for entry in string.gmatch(job.pools or '', '[^,]+') do
    local pool, second = split_entry(entry)
    if redis.call('SISMEMBER', P .. 'pool:' .. pool, nid) == 1
        and (not second or redis.call('SISMEMBER', P .. 'pool:' .. second, nid) == 1) then
      return true
    end
  end
  return false
end

-- servable(job): could any candidate node ever take this job (eligible but for room)?
-- Waiting only makes sense then. Stops at the first one found.
local function servable(job)
  for entry in string.gmatch(job.pools or '', '[^,]+') do
    local pool, second = split_entry(entry)
    for _, nid in ipairs(redis.call('SMEMBERS', P .. 'pool:' .. pool)) do
      if load(nid, job, false)
          and (not second or redis.call('SISMEMBER', P .. 'pool:' .. second, nid) == 1) then
        return true
      end
    end
  end
  return false
end

-- unqueue(jid, job): leave every queue the job waits in.
local function unqueue(jid, job)
  for q in string.gmatch(job.queue or '', '[^,]+') do
    redis.call('LREM', P .. 'queue:' .. q, 1, jid)
  end
  job.queue = ''
end

-- pick(job, why): a node with room, or nil. Turn affinity (the turn's node while it lives:
-- when it is merely full the job waits for it), then session affinity, then
-- power-of-k-choices among eligible members of the first pool that has any. Every node
-- looked at is recorded in `why` (see explain).
local function pick(job, why)
  if job.turn_node and job.turn_node ~= '' then
    segment(why, 'turn')
    if serves(job.turn_node, job) then
      if load(job.turn_node, job, true, why) then return job.turn_node end
      if load(job.turn_node, job, false) then return nil end
    else
      explain(why, job.turn_node, 'notpool')
    end
  end
  if CFG.affinity == 1 and job.last_node and job.last_node ~= '' and serves(job.last_node, job) then
    segment(why, 'affinity')
    if load(job.last_node, job, true, why) then return job.last_node end
  end
  for entry in string.gmatch(job.pools or '', '[^,]+') do
    local pool, second = split_entry(entry)
    local pk = P .. 'pool:' .. pool
    local size = redis.call('SCARD', pk)
    -- Power-of-k-choices: look at a random sample, stop at `choices` eligible nodes and
    -- take the least loaded. Only when the sample has none, look wider (bounded).
    for round = 1, 2 do
      local want = round == 1 and CFG.sample or 256
      segment(why, (second and (pool .. '+' .. second) or pool) .. (round == 2 and '(wide)' or ''))
      local members
      if size <= want then
        members = redis.call('SMEMBERS', pk)
      elseif round == 1 then
        -- A negative count may repeat a member but picks in O(want); a positive count
        -- close to the set's size copies the whole set first (~18 µs of Redis per job).
        local seen = {}
        members = {}
        for _, m in ipairs(redis.call('SRANDMEMBER', pk, -want)) do
          if not seen[m] then
            seen[m] = true
            members[#members + 1] = m
          end
        end
      else
        members = redis.call('SRANDMEMBER', pk, want)
      end
      local best, found = nil, 0
      local order = {}
      for k = 1, #members do order[k] = k end
      for k = #order, 2, -1 do
        local r = random(k)
        order[k], order[r] = order[r], order[k]
      end
      for _, k in ipairs(order) do
        local nid = members[k]
        if not second or redis.call('SISMEMBER', P .. 'pool:' .. second, nid) == 1 then
          local l = load(nid, job, true, why)
          if l then
            found = found + 1
            if not best or l < best[2] then best = {nid, l} end
            if found >= CFG.choices then break end
          end
        else
          explain(why, nid, 'notrev')
        end
      end
      if best then return best[1] end
      if size <= want then break end
    end
  end
  return nil
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
    .. string.sub(message or '', 1, 160))
  redis.call('LTRIM', P .. 'failures', 0, 49)
  redis.call('PEXPIRE', P .. 'failures', CFG.job_ttl)
  count('failed:' .. code)
  ui_event(job, 'ERROR', 'error', code)
  settle(job.session, job.idx, error_msg(job, code, message))
end

-- assign(jid, job, nid, why, compact): reserve a slot on nid and send job_assign (attempt
-- + 1). `why`: the routing explanation text of this choice ("" when off); written in the
-- same HSET as route:<attempt> = "<dispatched_ms> <node> <why>", after the explanation of an
-- earlier wait in the queues when there was one. `compact` (optional): its compact form
-- (route_compact), kept as `rc` for a first attempt that did not wait.
local function assign(jid, job, nid, why, compact)
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
  LAT.dispatch[#LAT.dispatch + 1] = NOW - tonumber(job.created_at or NOW)
  LAT.pool[#LAT.pool + 1] = string.match(job.pools or '', '^[^,|]+') or ''
  local sk = session_key(job.session)
  if job.turn_id and job.turn_id ~= '' and redis.call('HGET', sk, 'turn_id') == job.turn_id then
    redis.call('HSET', sk, 'turn_node', nid)
  end
  if job.sess_set then
    if nid ~= job.last_node then
      local n = #job.sess_set
      job.sess_set[n + 1], job.sess_set[n + 2] = 'last_node', nid
    end
  elseif fresh or redis.call('EXISTS', sk) == 1 then
    redis.call('HSET', sk, 'last_node', nid)
  end
  -- the spec is a JSON object with members (submit put the ids in it): attempt_id goes in
  -- front as text, without encoding a table
  local msg = '{"attempt_id":' .. attempt .. ',' .. string.sub(job.spec, 2)
  local audio = fresh and job.fresh_audio or redis.call('GET', jk .. ':audio') or ''
  deliver('node', nid, msg, audio, nil, job.tp, jid, fresh and job.own_audio)
  ui_events_ok(job, 'DISPATCHED')
end

-- dispatch(jid, job, code, message): assign now, or wait in the candidate pools' queues, or fail
-- at once with `code` when no node can ever serve it.
local function dispatch(jid, job, code, message)
  local why = explainer()
  local nid = pick(job, why)
  local text = route_text(why)
  if nid then
    assign(jid, job, nid, text, route_compact(why, nid))
    return 'dispatched'
  end
  local rk = 'route:' .. (tonumber(job.attempt or '0') + 1)
  if not servable(job) then
    if why then
      if job.unsaved then
        job[rk] = NOW .. ' - ' .. text .. '|none>' -- end_job keeps route:<n> of `job`
      else
        redis.call('HSET', job_key(jid), rk, NOW .. ' - ' .. text .. '|none>')
      end
    end
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
      fail(jid, job, 'NO_AVAILABLE_NODE', 'every node is busy and the queue is full')
      return 'failed'
    end
    queues[#queues + 1] = q
  end
  for _, q in ipairs(queues) do redis.call('RPUSH', P .. 'queue:' .. q, jid) end
  job.queue = table.concat(queues, ',')
  local deadline = NOW + CFG.queue_wait
  local f = {'state', 'QUEUED', 'queue', job.queue, 'queued_at', NOW, 'deadline', deadline,
    'node', ''}
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
-- few signatures: each is split once (kept in DERIVED, bounded like load_fields).
local function node_pools(capsig)
  local name = 'pools:' .. (capsig or '')
  local pools = DERIVED[name]
  if pools then return pools end
  pools = {}
  for p in string.gmatch(string.match(capsig or '', '^[^|]*|[^|]*|(.*)$') or '', '%S+') do
    pools[#pools + 1] = p
  end
  derive(name, pools)
  return pools
end

-- offer(nid, known): hand the node's free capacity to jobs waiting in its pools' queues.
-- `known` (optional): the node's state, reserved, capacity and capsig as they are now
-- (read in this call: release_node keeps them current), saving their HMGET.
local function offer(nid, known)
  local n = known and {known.state, known.reserved, known.capacity, known.capsig}
    or redis.call('HMGET', node_key(nid), 'state', 'reserved', 'capacity', 'capsig')
  if n[1] ~= 'ready' then return end
  local room = tonumber(n[3] or '0') - tonumber(n[2] or '0')
  if room <= 0 then return end
  local pools = node_pools(n[4])
  -- One EXISTS over every queue: when nothing waits (the common case) that is one command
  -- instead of one LRANGE per pool.
  local qks = {}
  for i, pool in ipairs(pools) do qks[i] = P .. 'queue:' .. pool end
  if #qks == 0 or redis.call('EXISTS', unpack(qks)) == 0 then return end
  for _, pool in ipairs(pools) do
    local qk = P .. 'queue:' .. pool
    for _, jid in ipairs(redis.call('LRANGE', qk, 0, CFG.scan - 1)) do
      local job = hgetall(job_key(jid))
      if job.state ~= 'QUEUED' then
        redis.call('LREM', qk, 1, jid) -- stale entry
      else
        local ok = load(nid, job, true) ~= nil and serves(nid, job)
        if ok and job.turn_node and job.turn_node ~= '' and job.turn_node ~= nid
            and load(job.turn_node, job, false) and serves(job.turn_node, job) then
          ok = false -- its turn's node is alive: it waits for that one
        end
        if ok then
          local why = ''
          if CFG.explain ~= 0 then
            why = 'offer>' .. nid .. '=ok:' .. (tonumber(n[3]) - room) .. '/' .. n[3]
          end
          assign(jid, job, nid, why)
          room = room - 1
          if room <= 0 then return end
        end
      end
    end
  end
end

-- failover(jid, job, code, cancel): the current attempt is over without a result. Release,
-- cancel it on the old node (best-effort), and re-dispatch to a node that never had it,
-- or fail the utterance when attempts are used up.
local function failover(jid, job, code, message, cancel)
  local old = job.node
  release_node(jid, old)
  redis.call('ZREM', P .. 'due:jobs', jid)
  if old and old ~= '' then
    if cancel then
      deliver('node', old, cjson.encode({type = 'job_cancel', job_id = jid,
        trace_id = job.trace_id, reason = string.lower(code)}))
    end
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
