-- The call context every script shares (ARGV[1..4]); op-specific arguments start at ARGV[5].
--   ARGV[1] key prefix "{tag}:"  (every derived key shares the cell's hash tag)
--   ARGV[2] calling instance id  (messages for its own connections are returned to it)
--   ARGV[3] configuration        (timings and limits: the numbers of CFG_NAMES below, each a
--                                 little-endian double; src/store/mod.rs script_config)
--   ARGV[4] "<seed> <traceparent>": a random seed (Redis' Lua PRNG repeats its sequence
--           after a restart) and the W3C traceparent of the caller's span ("" if none),
--           carried into job records and deliveries so one utterance is one trace
-- The scripts are one Redis Functions library (src/store/scripts.rs): this file and every
-- include are loaded once (FUNCTION LOAD), their closures and constant tables created
-- once, not on every call. While the library loads, Redis offers no global but `redis`
-- (no string, math, table, pairs...): top-level code here only declares. What belongs to
-- one call lives in the locals below, set by begin() before a script's body runs (Redis
-- runs one function at a time, to the end).
local KEYS, ARGV
local P, ME       -- ARGV[1], ARGV[2]
local CFG         -- ARGV[3] unpacked: CFG.liveness, CFG.batch, ... (never written by scripts)
local CFGS        -- the same as decimal text (see NOWS), plus node_jobs_ttl (liveness +
                  -- node_retention): what PEXPIRE and friends take
local TP          -- the caller's traceparent ('' if none)
local NOW         -- ms, Redis clock (TIME), fixed for the call
local NOWS        -- NOW as decimal text, for redis.call arguments and concatenations: a Lua
                  -- number passed to redis.call is formatted with "%.17g" (glibc's
                  -- printf_fp, ~0.5 µs; 4.7 % of Redis' CPU with ~25 per job), one
                  -- concatenated with "%.14g"
local OUT         -- messages for connections: {k=kind, id=, owner=, conn=, m=n, blob=n?,
                  --   seq=n?, tp=traceparent?, job=job id?}
local BLOBS       -- the messages' JSON bodies (m) and binary payloads (blob: job audio),
                  -- returned after the packed reply, so no body is copied into it
local EV          -- transitions this call made, by name (metrics): submitted, dispatched, ...
local LAT         -- {dispatch=, e2e=, pool=}: ms from job creation to dispatch / to result
                  -- (never below 0: Redis' clock may go back, e.g. a failover to a replica
                  -- whose clock is behind); pool[i]: the primary pool of the job of dispatch[i]
local OWNERS      -- delivery targets' {owner, conn, session nonce}, by key: looked up once
                  -- per call by deliver(), or filled from a record the script read anyway
local NODE_ACK    -- supports_ack of the nodes pick's load() read in this call
local SELF_INBOX  -- true in the background scripts (sweep, heartbeat, node_offline): a
                  -- terminal message for a session connected to the caller goes to the
                  -- caller's own inbox, committed with the change, not in the reply, which
                  -- may be lost (deliver.lua). Set by those scripts; false otherwise.
local SEED        -- ARGV[4]'s seed, until random() first seeds Lua's PRNG with it (most calls
                  -- draw no random number: seeding every call cost ~1 % of a job)

-- One struct.unpack (~2 µs) instead of decoding a JSON object (~20 µs); and only when the
-- configuration differs from the previous call's (an interned string: the comparison is
-- one pointer comparison).
local CFG_NAMES = {'liveness', 'node_retention', 'batch', 'max_attempts', 'queue_wait',
  'queue_max', 'scan', 'ack_timeout', 'run_timeout', 'job_ttl', 'choices', 'sample', 'affinity',
  'mna_ms', 'mna_per_min', 'explain', 'session_ttl', 'pause', 'max_duration', 'max_bytes', 'playback_grace',
  'reorder', 'max_ahead', 'retention', 'group_window', 'min_cut', 'presence_ttl', 'inbox_max',
  'takeover_batch', 'cluster', 'fleet_nodes'}
local CFG_RAW = nil
-- Lists the scripts derive from the configuration (field lists...), by name: built once
-- per configuration instead of on every call (emptied when the configuration changes).
local DERIVED = {}

-- derive(name, v): keep `v` in DERIVED under `name`, while it holds fewer than 256 such
-- entries (what scripts derive from values in Redis, such as node signatures, is not bounded
-- by the configuration). Returns v.
local function derive(name, v)
  DERIVED.n = (DERIVED.n or 0) + 1
  if DERIVED.n <= 256 then DERIVED[name] = v end
  return v
end

-- Lua's collector starts a cycle when its heap reaches GC_PAUSE % of what the last cycle
-- left alive (Lua's default: 200 %). Every cycle marks the whole library (its closures,
-- constant tables, DERIVED), so a cycle per library-size of garbage cost 5.5 % of a job's
-- instructions (callgrind: luaC_step); at 1000 % it is 3.5 %, most of it freeing the
-- garbage, and the heap (INFO memory used_memory_vm_functions, ~0.27 MB after a cycle)
-- may reach ~2.7 MB between cycles instead of ~0.5. Set on the first call: while the
-- library loads, `collectgarbage` is not there.
local GC_PAUSE = 1000
local GC_SET = false

-- begin(keys, args): the context of one call, before its body runs.
local function begin(keys, args)
  KEYS, ARGV = keys, args
  if not GC_SET then
    collectgarbage('setpause', GC_PAUSE)
    GC_SET = true
  end
  P, ME = args[1], args[2]
  local raw = args[3]
  if raw ~= CFG_RAW then
    if type(raw) ~= 'string' or #raw ~= 8 * #CFG_NAMES then
      error({err = 'ERR bad argument ARGV[3] (configuration): ' .. #(raw or '') .. ' bytes, want '
        .. 8 * #CFG_NAMES})
    end
    local v = {struct.unpack('<' .. string.rep('d', #CFG_NAMES), raw)}
    CFG, CFGS = {}, {}
    for i, name in ipairs(CFG_NAMES) do
      CFG[name] = v[i]
      CFGS[name] = string.format('%d', v[i])
    end
    CFGS.node_jobs_ttl = string.format('%d', CFG.liveness + CFG.node_retention)
    CFG_RAW = raw
    DERIVED = {}
  end
  -- "<seed> <traceparent>": the seed is applied by random() when a call first needs it
  local a4 = args[4] or ''
  local sp = string.find(a4, ' ', 1, true)
  SEED = sp and string.sub(a4, 1, sp - 1) or a4
  SELF_INBOX = false
  TP = sp and string.sub(a4, sp + 1) or ''
  -- On a Redis Cluster whose slot of this cell is being moved (MIGRATING), a script fails
  -- at the first key it touches that is not here, and Redis keeps the writes made before
  -- it: a reservation without its job, a deadline removed but not acted on. Touching a key
  -- that never exists first makes such a call fail before any write (the caller gets
  -- SCHEDULER_DEPENDENCY_DOWN; docs/scaling.md: move tenants to a new cell instead).
  -- Two keys: a call whose declared keys had all moved is sent on (ASK) to the importing
  -- node, which serves it (ASKING) with the rest of the cell still on the source; there a
  -- single missing key is no error, but a multi-key access with a missing key is (TRYAGAIN).
  if CFG.cluster ~= 0 then redis.call('EXISTS', P .. 'slot-guard', P .. 'slot-guard:2') end
  local t = redis.call('TIME')
  NOW = t[1] * 1000 + math.floor(t[2] / 1000)
  NOWS = string.format('%d', NOW)
  OUT, BLOBS, EV, OWNERS, NODE_ACK = {}, {}, {}, {}, {}
  LAT = {dispatch = {}, e2e = {}, pool = {}}
end

-- random(k): math.random(k), the PRNG seeded with this call's seed first.
local function random(k)
  if SEED then
    math.randomseed(tonumber(SEED) or 1)
    SEED = nil
  end
  return math.random(k)
end

local function count(name)
  EV[name] = (EV[name] or 0) + 1
end

local function hgetall(key)
  local r = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
  return h
end

-- hmget(key, fields): only the named fields of a hash, as a table (absent ones left out).
-- On the per-job paths this replaces HGETALL: a session record has ~40 fields (spec,
-- utterance-group context, resume hash...), a job record ~20; every field read is a Lua
-- string to intern and a table slot to fill (the redis-server profile: luaS_newlstr ~9 %,
-- table building ~8 %, GC ~10 % of Redis CPU).
local function hmget(key, fields)
  local r = redis.call('HMGET', key, unpack(fields))
  local h = {}
  for i = 1, #fields do
    if r[i] then h[fields[i]] = r[i] end
  end
  return h
end

-- nonempty(v): v, or nil when it is nil or "".
local function nonempty(v)
  if v == '' then return nil end
  return v
end

-- utf8_cut(s, n): s cut to at most n bytes, never inside a UTF-8 character (a reader
-- decoding it as text must not fail on half a character).
local function utf8_cut(s, n)
  if #s <= n then return s end
  local i = n + 1 -- the first byte left out; while it continues a character, leave out
  -- that character's earlier bytes too
  while i > 1 and string.byte(s, i) >= 128 and string.byte(s, i) < 192 do i = i - 1 end
  return string.sub(s, 1, i - 1)
end

-- csv_has("a,b,c", "b") -> true
local function csv_has(csv, item)
  if not csv or csv == '' then return false end
  return string.find(',' .. csv .. ',', ',' .. item .. ',', 1, true) ~= nil
end

local function node_key(id) return P .. 'node:' .. id end
-- The live sessions a credential subject (`sub`, `<tenant>/<sub>` with a tenant) opened:
-- sid -> expiry (ms), for the per-subject limit (session_open); refreshed with the
-- session's TTLs, removed by session_close.
local function subject_sessions(sub) return P .. 'subject:' .. sub .. ':sessions' end
-- The live nodes (not offline) registered with one fleet credential (a node token without
-- `sub`), by the credential's fingerprint: a set of node ids, for the per-credential limit
-- (register); a node leaves it when it goes offline (offline.lua) or registers with another
-- credential. Owned by the node records (no TTL), bounded by the limit.
local function fleet_nodes(fp) return P .. 'fleet:' .. fp .. ':nodes' end
local function job_key(id) return P .. 'job:' .. id end
-- The candidate pools and services no node could serve when servable() last read them
-- whole (pick.lua): a hash, field `<pools>#<needs>` -> until (ms). Deleted whenever a node
-- may have become able to serve (servable_again); what expires by time (a down-mark) ends
-- an entry by its `until`.
local function unservable_key() return P .. 'unservable' end
-- servable_again(): a node may serve what it could not (it registered, came back, was
-- refreshed while stale, changed its capabilities, was undrained): forget every cached
-- "no node can serve".
local function servable_again() redis.call('DEL', unservable_key()) end
local function session_key(id) return P .. 'session:' .. id end

-- dec(v): a whole number as decimal text for a command's argument or a message, the
-- small ones looked up, not formatted.
local SMALL = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12', '13',
  '14', '15', '16'}
local function dec(v) return v and (SMALL[v] or string.format('%d', v)) end
-- A number the scripts wrote is read back by arithmetic: `NOW - (x or 0)`, or `(x or 0) + 0`
-- where it is compared. Lua converts the text once; tonumber() converts it twice (its
-- lua_isnumber, then lua_tonumber: ~190 ns against ~90 here), so it is kept for text from
-- outside (ARGV) and for what may not be a number.

-- The reply: MessagePack of {r = `r`, out = deliveries, ev = transition counts, lat =
-- latencies}, then the blobs (message bodies, audio) as further bulk strings, so no body is
-- escaped into it. cmsgpack packs a table in C without scanning strings for escapes, and a
-- number as an integer (cjson formatted each with "%.14g", ~1.5 µs, and the instance
-- scanned the JSON back; issue 14, round 12). The script's own reply `r` is nested, not
-- merged: the instance decodes it without buffering the other keys first. (The scripts'
-- headers write their `r` in JSON notation: "Output: [reply, blobs...] {"status":...}".)
local function finish(r)
  local reply = {cmsgpack.pack({r = r, out = OUT, ev = EV, lat = LAT})}
  for _, b in ipairs(BLOBS) do reply[#reply + 1] = b end
  return reply
end

-- A payload the instance staged in a key for this call (Store::run_staged), so that it never
-- becomes a Lua string: {key = the stage key, own = the caller holds it too (its reply need
-- not carry it), taken = set once the call renamed it where it belongs}.
local function staged(key, own)
  return key and {key = key, own = own} or nil
end

-- finish_staged(r, stage): finish(r), first deleting the staged payload if the call did not
-- take it (refused, duplicate, stale): nothing staged outlives the call that was to take it.
local function finish_staged(r, stage)
  if stage and not stage.taken then redis.call('DEL', stage.key) end
  return finish(r)
end

-- body_key(sid, idx): where a result logged in two parts keeps its body (results.lua).
local function body_key(sid, idx)
  return session_key(sid) .. ':body:' .. idx
end

-- trim(sid, cursor): results delivered longer than CFG.retention ago leave the log (with
-- their idempotency entries); an index below the cursor stays refused by submit. At most
-- TRIM_PAGE a call, in one command per key: returns whether it took a full page (more may
-- be due: gated_trim then trims again at the next call). A page of 256 entries with three
-- commands each let a session logging more than one page per trim interval (a client
-- skipping max_index_ahead indices at a time, each gap given its missing_result, or a
-- session over ~20 results a second) grow its log without bound (Redis key audit).
local TRIM_PAGE = 1024
local function trim(sid, cursor)
  local sk = session_key(sid)
  local old = redis.call('ZRANGEBYSCORE', sk .. ':rtime', '-inf', dec(NOW - CFG.retention), 'LIMIT',
    '0', dec(TRIM_PAGE))
  local gone, bodies = {}, {}
  for _, idx in ipairs(old) do
    if tonumber(idx) < cursor then
      gone[#gone + 1] = idx
      bodies[#bodies + 1] = body_key(sid, idx)
    end
  end
  if #gone == 0 then return false end
  redis.call('HDEL', sk .. ':results', unpack(gone))
  redis.call('HDEL', sk .. ':jobs', unpack(gone))
  redis.call('ZREM', sk .. ':rtime', unpack(gone))
  redis.call('DEL', unpack(bodies))
  -- (a page of entries it may not take yet, at or past the cursor, is no reason to look
  -- again at every call: only a page it took whole is)
  return #gone == TRIM_PAGE
end

-- touch_session(sid, sess): activity keeps every key of a session alive for
-- CFG.session_ttl. The TTLs are refreshed when the last refresh (`ttl_at`, read from
-- `sess` when the caller has the record) is an eighth of it old; keys created in
-- between get their own TTL when they are created.
-- `extra` (optional): a flat list of further session fields and values, written in the
-- same HSET. Without them, a `sess` whose last_active is under a second old needs no write.
local function touch_session(sid, sess, extra)
  local sk = session_key(sid)
  local f = {'last_active', NOWS}
  for _, v in ipairs(extra or {}) do f[#f + 1] = v end
  if sess and NOW - (sess.ttl_at or 0) < CFG.session_ttl / 8 then
    -- last_active is for operators: to the second is enough (one HSET less per utterance)
    if #f > 2 or not sess.last_active or NOW - sess.last_active >= 1000 then
      redis.call('HSET', sk, unpack(f))
    end
    return
  end
  f[#f + 1], f[#f + 2] = 'ttl_at', NOWS
  redis.call('HSET', sk, unpack(f))
  for _, k in ipairs({sk, sk .. ':jobs', sk .. ':results', sk .. ':pending', sk .. ':audio', sk .. ':rtime'}) do
    redis.call('PEXPIRE', k, CFGS.session_ttl)
  end
  local h = redis.call('HMGET', sk, 'sub', 'state', 'next_deliver')
  -- A session that only keeps alive (no results to trim at) still sheds old results here,
  -- so no logged result outlives its body's TTL (results.lua).
  trim(sid, tonumber(h[3] or '0'))
  if h[1] and h[1] ~= '' and h[2] == 'open' then
    local zk = subject_sessions(h[1])
    if redis.call('ZADD', zk, 'XX', 'CH', NOW + CFG.session_ttl, sid) == 1 then
      redis.call('PEXPIRE', zk, CFG.session_ttl)
    end
  end
end

-- session_read(sid, fields): the named fields of the session record (`fields` must hold
-- id, owner, conn and nonce); its owner is remembered for deliver() and its nonce for
-- job_session(), saving that lookup.
local function session_read(sid, fields)
  local sk = session_key(sid)
  local sess = hmget(sk, fields)
  if sess.id then OWNERS[sk] = {sess.owner or false, sess.conn or false, sess.nonce or false} end
  return sess
end

-- session_for(sid, conn, fields): the session record (only `fields` when given; see
-- session_read) if `conn` owns it, else nil and a reason.
local function session_for(sid, conn, fields)
  local sess = fields and session_read(sid, fields) or hgetall(session_key(sid))
  if not sess.id then return nil, 'missing' end
  if sess.conn ~= conn then return nil, 'stale' end
  return sess
end

-- job_for(jid, attempt, nid, conn, fields, nfields): fencing of everything a node says
-- about a job: the job's current attempt, on the node it was given to, from the connection
-- that owns that node now. Returns the job (only `fields` when given, else the whole
-- record) and, when `nfields` is given (it must hold conn), those fields of the node
-- read in the same HMGET as the connection check; or nil and why it is stale.
local function job_for(jid, attempt, nid, conn, fields, nfields)
  local job = fields and hmget(job_key(jid), fields) or hgetall(job_key(jid))
  if not job.state then return nil, 'unknown_job' end
  if attempt and job.attempt ~= attempt then return nil, 'stale_attempt' end
  if job.node ~= nid then return nil, 'wrong_node' end
  local node
  if nfields then
    node = hmget(node_key(nid), nfields)
    if node.conn ~= conn then return nil, 'stale_connection' end
  elseif redis.call('HGET', node_key(nid), 'conn') ~= conn then
    return nil, 'stale_connection'
  end
  if job.state ~= 'DISPATCHED' and job.state ~= 'ACCEPTED' and job.state ~= 'RUNNING' then
    return nil, 'not_running'
  end
  return job, node
end

-- end_job(jid, job, state, extra): the job ends in `state` (FINISHED or FAILED). Its record is
-- rewritten with only what inspection, fencing and the invariants read (KEPT_FIELDS, empty
-- values left out, the routing explanation route:<n>/end:<n> when jobs.explain is on, plus
-- `extra`, a flat list of field, value): what only dispatch needed (the job_assign `spec`,
-- trace context, queue, deadline) goes, and so does `id` (the key names the job; readers
-- add it back), and the record becomes a small listpack (~250 bytes instead of ~2.3-3 KB;
-- issue 14). `job` must be current.
local KEPT_FIELDS = {'session', 'idx', 'attempt', 'node', 'tried', 'failovers', 'trace_id',
  'turn_id', 'created_at', 'dispatched_at'}

-- A hash whose values are all at most `hash-max-listpack-value` bytes (Redis' default: 64)
-- is kept as one listpack; one longer value turns it into a hashtable of ~1 KB, and a
-- listpack over 256 bytes takes jemalloc's next size class (320). The explanation of a job
-- that finished on its first attempt without waiting in a queue (the common case) is
-- therefore kept as the chosen node's entry alone, in the segment that chose it, the other
-- entries counted: "- - <label>><node>=ok:<reserved>/<capacity>,+N". Its time and node
-- ("- -") are the record's dispatched_at and node. A job that failed over, waited or failed
-- keeps its explanation whole.
local function compact_route(v, nid)
  local steps = string.match(v, '^%S+ %S+ (.*)$')
  if not steps then return v end
  local needle, at = nid .. '=ok', nil
  local from = 1
  while true do
    local i = string.find(steps, needle, from, true)
    if not i then break end
    local before = i > 1 and string.sub(steps, i - 1, i - 1) or ''
    if before == '>' or before == ',' then at = i end
    from = i + 1
  end
  if not at then return v end
  local stop = string.find(steps, '[,|]', at) or (#steps + 1)
  local entry = string.sub(steps, at, stop - 1)
  local head = string.sub(steps, 1, at - 1)
  local label = string.match(head, '([^|]*)>[^>]*$') or ''
  local entries = 0
  for _ in string.gmatch(steps, '=') do entries = entries + 1 end
  for n in string.gmatch(steps, ',%+(%d+)') do entries = entries + tonumber(n) end
  local more = entries > 1 and (',+' .. (entries - 1)) or ''
  return '- - ' .. label .. '>' .. entry .. more
end
-- route_key(n), end_key(n): the routing explanation's fields of attempt n (a number);
-- those of the first 16 attempts made once, not concatenated on every call.
local ROUTE_KEYS, END_KEYS = {}, {}
for a = 1, 16 do ROUTE_KEYS[a], END_KEYS[a] = 'route:' .. a, 'end:' .. a end
local function route_key(n) return ROUTE_KEYS[n] or ('route:' .. n) end
local function end_key(n) return END_KEYS[n] or ('end:' .. n) end
local function end_job(jid, job, state, extra)
  local jk = job_key(jid)
  local f = {'state', state, 'finished_at', NOWS}
  local n = 4
  for _, k in ipairs(KEPT_FIELDS) do
    local v = job[k]
    if v ~= nil and v ~= '' then
      f[n + 1], f[n + 2] = k, v
      n = n + 2
    end
  end
  -- The routing explanation (route:<n>, end:<n>; issue 11) is what inspection reads most:
  -- route:1..attempt+1 (a wait or a failure before the next attempt is explained under
  -- the number that attempt would have had), end:1..attempt.
  if CFG.explain ~= 0 then
    local attempt = tonumber(job.attempt) or 0
    for a = 1, attempt + 1 do
      local rk = route_key(a)
      local v = job[rk]
      if v then
        local plain = a == 1 and attempt == 1 and state == 'FINISHED'
          and not string.find(v, '|queued@', 1, true)
        -- rc: the compact form assign kept (a record of an earlier version has none)
        f[n + 1], f[n + 2] = rk, plain and (job.rc or compact_route(v, job.node)) or v
        n = n + 2
      end
      local ek = end_key(a)
      if job[ek] then
        f[n + 1], f[n + 2] = ek, job[ek]
        n = n + 2
      end
    end
  end
  for _, v in ipairs(extra or {}) do
    n = n + 1
    f[n] = v
  end
  -- the audio goes with the in-flight record: an ended job is never sent again
  redis.call('DEL', jk, jk .. ':audio')
  redis.call('HSET', jk, unpack(f))
  redis.call('PEXPIRE', jk, CFGS.job_ttl)
  job.state = state
end

-- json_with(obj, fields): the JSON object text `obj` with `fields` (a Lua table) added,
-- without decoding `obj` (cjson would turn its empty arrays into objects). The caller
-- makes sure the keys are not in `obj` already.
local function json_with(obj, fields)
  local extra = cjson.encode(fields)
  if extra == '{}' then return obj end
  local body = string.sub(obj, 2)
  if string.match(body, '^%s*}') then return extra end
  return string.sub(extra, 1, -2) .. ',' .. body
end
