--[[ job_result: a node's result for one attempt. Fenced by (job id, attempt id), the node
the attempt went to, and that node's current connection: anything else is stale, counted,
and changes nothing. Success finishes the job, releases the reservation, appends the
translation_result to the session's result log and delivers what is now in order, then
offers the freed capacity to queued jobs. MODEL_NOT_AVAILABLE marks the service down on
that node (debounced: not extended while marked; at most CFG.mna_per_min marks a minute)
and re-dispatches to another node at once. Any other failure fails the utterance.
Input:
  KEYS[1] job hash   KEYS[2] {tag}:due:jobs
  KEYS[3] (optional) a large result's body, staged by the instance (ARGV[10] is then "")
    with the TTL of session:<sid>:body:<idx> (CFG.session_ttl + 2 x CFG.retention)
  Derived: node, session (results, pending), pool and queue keys.
  ARGV[1..4] ctx   ARGV[5] job id   ARGV[6] attempt id   ARGV[7] node id
  ARGV[8] connection token   ARGV[9] outcome: ok | model_not_available | error
  ARGV[10] ok: the translation_result JSON object without session_id, utterance_index,
           job_id, trace_id (added from the job record) and without its opening "{" (its
           members and the closing "}"); otherwise the node's error message
  ARGV[11] service type that is not available (model_not_available): asr, nmt, tts,
           semantic, tone, phonetic or punctuation (the instance maps the node's id), or ""
           when none of them is known: nothing is marked
  ARGV[12] error code (error)
  ARGV[13] ok: the node's text_asr ("" = none: no utterance group)   ARGV[14] ok: text_translated
  ARGV[15] ok: node_completed_at_ms ("" if absent)   ARGV[16] ok: processing_time_ms ("" if absent)
A successful result with text joins the session's utterance group (group_id, part_index;
lua/includes/groups.lua) and carries network_timings + scheduler_sent_at_ms, stamped again
when it is sent (results.lua `stamp`; definitions in docs/jobs.md "Timings").
Output: [reply, blobs...]
  {"status":"ok","state":"FINISHED"|"FAILED"|"DISPATCHED"|"QUEUED"} | {"status":"stale","reason":r}
]]
--!include ctx
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include groups

-- The staged body of a large result (KEYS[3]): settle's `body` argument.
local STAGE

-- int(v): a whole, non-negative number of ms as JSON text (clock skew clamps to 0).
local function int(v) return dec(math.max(0, math.floor(v))) end

-- timed(job, ids): the node's translation_result (ARGV[10]) with the fields `ids` added and,
-- in front, scheduler_sent_at_ms (for now the time it was accepted) and network_timings in
-- the fixed shape `stamp` rewrites. One concatenation: the message carries the TTS audio.
local function timed(job, ids)
  local t = ''
  if job.web_ms and job.web_ms ~= '' then t = t .. ',"web_to_scheduler_ms":' .. job.web_ms end
  local disp, done, proc = tonumber(job.dispatched_at or ''), tonumber(ARGV[15]), tonumber(ARGV[16])
  local s2n, n2s = nil, nil
  if disp and done then
    n2s = NOW - done
    if proc then s2n = done - proc - disp end
  elseif disp and proc then -- no node clock: half of the round trip's overhead each way
    local overhead = math.max(0, NOW - disp - proc)
    s2n = math.floor(overhead / 2)
    n2s = overhead - s2n
  end
  if s2n then t = t .. ',"scheduler_to_node_ms":' .. int(s2n) end
  if n2s then t = t .. ',"node_to_scheduler_ms":' .. int(n2s) end
  local head = result_head(ids, t)
  -- a staged body has members (the instance stages no "}" alone): the header ends in ","
  if STAGE then return head .. ',' end
  local body = ARGV[10] -- members and "}": concatenated as is (no string.sub copy of the audio)
  local sep = string.match(body, '^%s*}') and '' or ','
  return head .. sep .. body
end

-- A success reads only what it needs: the job's fields end_job keeps (with the routing
-- explanation of attempts 1..n: route:1..n and end:1..n-1, n = the attempt this result is
-- for; any other attempt is refused by the fencing) plus state, web_ms and rc (the compact
-- route end_job keeps; the job's id is the caller's), and the node's fields of fencing,
-- release and offer in one HMGET. A failure may re-dispatch: it reads the whole record. The
-- lists are built once per attempt id (as sent) and configuration.
local function ok_fields(attempt)
  local cache = DERIVED.ok_fields or derive('ok_fields', {})
  local f = cache[attempt]
  if f then return f end
  local n = tonumber(attempt)
  if not n or n % 1 ~= 0 or n < 1 or n > CFG.max_attempts then n = 0 end
  f = {'state', 'web_ms', 'rc'}
  for _, k in ipairs(KEPT_FIELDS) do f[#f + 1] = k end
  if CFG.explain ~= 0 then
    for a = 1, n do
      f[#f + 1] = route_key(a)
      if a < n then f[#f + 1] = end_key(a) end
    end
  end
  -- (bounded: only the ids of attempts 1..16 as written, the only ones fencing lets through)
  if SMALL[n] == attempt then cache[attempt] = f end
  return f
end
local NODE_FIELDS = {'conn', 'capacity_target', 'state', 'reserved', 'capacity', 'capsig'}
-- The session's fields the result path reads (owner for delivery, nonce for job_session,
-- utterance group, cursor).
local SESSION_FIELDS = {'id', 'owner', 'conn', 'nonce', 'grp_id', 'grp_anchor', 'grp_part',
  'grp_ctx', 'grp_lens', 'next_deliver', 'out_seq', 'trim_at'}

local jid, nid, outcome = ARGV[5], ARGV[7], ARGV[9]
local ok = outcome == 'ok'
STAGE = staged(KEYS[3], true)
local job, node = job_for(jid, ARGV[6], nid, ARGV[8], ok and ok_fields(ARGV[6]) or nil,
  ok and NODE_FIELDS or nil)
if not job then return finish_staged({status = 'stale', reason = node}, STAGE) end
job.id = jid

if ok then
  -- checked before any write: a missing body would leave a header without it
  if STAGE and redis.call('EXISTS', STAGE.key) == 0 then
    error({err = 'ERR staged result body missing: ' .. STAGE.key})
  end
  local sess = session_read(job.session, SESSION_FIELDS)
  -- another lifetime of the session id (job_session): as if the session were gone, no
  -- result, group text or ui_event of this job reaches it
  local mine = nonce_of(jid, sess.nonce) -- (job_session, with the nonce just read)
  if not mine then sess = {} end
  release_node(jid, nid, node)
  redis.call('ZREM', KEYS[2], jid)
  -- (no end:<attempt>: the last attempt of a FINISHED job ended ok at finished_at)
  end_job(jid, job, 'FINISHED')
  count('finished')
  LAT.e2e[#LAT.e2e + 1] = math.max(0, NOW - (job.created_at or NOW))
  ui_events_ok(job, 'ASR_FINAL,NMT_DONE', mine)
  -- identity from the job record, not from what the node wrote
  local ids = {session_id = job.session, utterance_index = tonumber(job.idx), job_id = jid,
    trace_id = job.trace_id}
  -- The group's fields go in settle's HSET of the cursor (one HSET of the session).
  local set = {}
  if ARGV[13] ~= '' then
    ids.group_id, ids.part_index = group_join(job.session, ARGV[13], ARGV[14], sess, set)
  end
  if not settle(job.session, job.idx, timed(job, ids), sess, true, set, STAGE) and #set > 0
      and sess.id then
    redis.call('HSET', session_key(job.session), unpack(set))
  end
  offer(nid, node)
elseif outcome == 'model_not_available' then
  -- (no known service: nothing a pick could read is marked, and none of the node's marks of
  -- the minute is used up)
  local nk, svc = node_key(nid), ARGV[11]
  if svc ~= '' then
    local m = redis.call('HMGET', nk, 'mna_window', 'mna_count', 'down:' .. svc)
    local window, count = tonumber(m[1] or '0'), tonumber(m[2] or '0')
    if NOW - window > 60000 then window, count = NOW, 0 end
    if tonumber(m[3] or '0') <= NOW and count < CFG.mna_per_min then
      redis.call('HSET', nk, 'down:' .. svc, NOW + CFG.mna_ms)
      count = count + 1
    end
    redis.call('HSET', nk, 'mna_window', window, 'mna_count', count)
  end
  failover(jid, job, 'MODEL_NOT_AVAILABLE', ARGV[10], false)
else
  release_node(jid, nid)
  fail(jid, job, ARGV[12], ARGV[10])
  offer(nid)
end
return finish_staged({status = 'ok', state = job.state}, STAGE)
