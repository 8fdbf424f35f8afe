-- Where a job gets its node: the node choice (turn affinity, session affinity, then
-- power-of-k-choices over the eligible members of the job's candidate pools) and the
-- eligibility test every choice and offer applies (load). It reads Redis, but for
-- servable()'s remembered "none" (unservable_key): the reservation is dispatch.lua's
-- assign().
-- A job record carries: pools (csv of "primary" or "primary|secondary" pool names, in order
-- of preference: tenant pool first), needs (csv of service types), tried (csv of nodes
-- that had an attempt), turn_node (node holding the turn's audio, if any), turn_prev (the
-- turn's earlier part, when it had no node yet as this part was cut: turn_node_of).
-- (Requires ctx, explain.)

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

-- The earliest down-mark (ms) a load() call found in the way, since servable() reset it:
-- when a pool can serve nothing only for marks, no longer than that.
local DOWN_UNTIL = nil

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
  local reserved, cap = (n[2] or 0) + 0, (n[3] or 0) + 0
  local verdict
  if n[1] ~= 'ready' then
    verdict = n[1] or 'gone'
  elseif (n[5] or 0) + 0 < NOW then
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
      if down and down + 0 > NOW then
        verdict = 'down-' .. svc
        if not DOWN_UNTIL or down + 0 < DOWN_UNTIL then DOWN_UNTIL = down + 0 end
        break
      end
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

-- unservable_known(job): did servable() find, less than its answer's life ago, that no
-- member of the job's candidate pools can serve it (unservable_key)? An answer whose time
-- ran out (a down-mark ended) is deleted. Read once per call (kept on `job`, not saved).
local function unservable_known(job)
  if job.unservable_read ~= nil then return job.unservable_read end
  local field = (job.pools or '') .. '#' .. (job.needs or '')
  local known = redis.call('HGET', unservable_key(), field)
  local yes = known ~= nil and known ~= false and known + 0 > NOW
  if known and not yes then redis.call('HDEL', unservable_key(), field) end
  job.unservable_read = yes
  return yes
end

-- servable(job): could any candidate node ever take this job (eligible but for room)?
-- Waiting only makes sense then. Stops at the first one found. It reads the candidate
-- pools whole (an HMGET per member until one is found): a sample could not tell "no node
-- can ever serve" (fail at once, with the caller's code) from "none of those looked at".
-- A "none" is remembered for UNSERVABLE_MS, or until the earliest down-mark in the way
-- ends (unservable_key): while a service is down fleet-wide, a job costs pick's sample and
-- one HGET (unservable_known: pick skips its wide look too) instead of an HMGET per member. Only a job that tried no node writes it (a tried node is out of
-- that job's answer, not of another's); any job may read it (tried nodes only take away).
local UNSERVABLE_MS = 1000
local function servable(job)
  if unservable_known(job) then return false end
  local field = (job.pools or '') .. '#' .. (job.needs or '')
  DOWN_UNTIL = nil
  for entry in string.gmatch(job.pools or '', '[^,]+') do
    local pool, second = split_entry(entry)
    for _, nid in ipairs(redis.call('SMEMBERS', P .. 'pool:' .. pool)) do
      if load(nid, job, false)
          and (not second or redis.call('SISMEMBER', P .. 'pool:' .. second, nid) == 1) then
        return true
      end
    end
  end
  if (job.tried or '') == '' then
    local until_ms = NOW + UNSERVABLE_MS
    if DOWN_UNTIL and DOWN_UNTIL < until_ms then until_ms = DOWN_UNTIL end
    redis.call('HSET', unservable_key(), field, dec(until_ms))
    -- The hash lives UNSERVABLE_MS from its first field, not from its last: renewed by every
    -- write, a client inventing a new language pair each second (each refused at once, the
    -- index settled) kept it alive for ever, one field a pair (robustness audit).
    redis.call('PEXPIRE', unservable_key(), UNSERVABLE_MS, 'NX')
  end
  return false
end

-- turn_node_of(job): the node of the job's turn ('' if none), or false while the turn's
-- earlier part (turn_prev) still waits for a node: this part then waits behind it, and
-- follows it to the node it gets (PROTOCOL: the jobs of one turn go to one node).
local function turn_node_of(job)
  local t = job.turn_node
  if t and t ~= '' then return t end
  if not job.turn_prev or job.turn_prev == '' then return '' end
  local prev = redis.call('HMGET', job_key(job.turn_prev), 'state', 'node')
  if prev[1] == 'QUEUED' or prev[1] == 'CREATED' then return false end
  return prev[2] or ''
end

-- pick(job, why): a node with room (and the candidate pool it was chosen from, when a pool
-- look chose it), or nil. Turn affinity (the turn's node while it lives:
-- when it is merely full the job waits for it), then session affinity, then
-- power-of-k-choices among eligible members of the first pool that has any. Every node
-- looked at is recorded in `why` (see explain).
local function pick(job, why)
  local turn = turn_node_of(job)
  if turn == false then
    explain_wait(why, job.turn_prev)
    return nil
  end
  if turn ~= '' then
    segment(why, 'turn')
    if serves(turn, job) then
      if load(turn, job, true, why) then return turn end
      if load(turn, job, false) then return nil end
    else
      explain(why, turn, 'notpool')
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
      -- (the wide look finds nothing where no member can serve at all: not taken then)
      if round == 2 and unservable_known(job) then return nil end
      local want = round == 1 and CFG.sample or 256
      segment(why, (second and (pool .. '+' .. second) or pool) .. (round == 2 and '(wide)' or ''))
      local members, seen
      -- (looked at in a random order: SMEMBERS and a positive count are in the set's order)
      if size <= want then
        members = redis.call('SMEMBERS', pk)
      elseif round == 1 then
        -- A negative count may repeat a member but picks in O(want); a positive count
        -- close to the set's size copies the whole set first (~18 µs of Redis per job).
        -- Its members are drawn one by one at random: in a random order already, and so
        -- are their first occurrences (a repeat is passed over below).
        members = redis.call('SRANDMEMBER', pk, -want)
        seen = {}
      else
        members = redis.call('SRANDMEMBER', pk, want)
      end
      if not seen then
        for k = #members, 2, -1 do
          local r = random(k)
          members[k], members[r] = members[r], members[k]
        end
      end
      local best, found = nil, 0
      for _, nid in ipairs(members) do
        if not (seen and seen[nid]) then -- (a member drawn again was looked at already)
          if seen then seen[nid] = true end
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
      end
      if best then return best[1], pool end
      if size <= want then break end
    end
  end
  return nil
end
