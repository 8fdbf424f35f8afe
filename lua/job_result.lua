--[[ job_result: a node's result for one attempt. Fenced by (job id, attempt id), the node
the attempt went to, and that node's current connection: anything else is stale, counted,
and changes nothing. Success finishes the job, releases the reservation, appends the
translation_result to the session's result log and delivers what is now in order, then
offers the freed capacity to queued jobs. MODEL_NOT_AVAILABLE marks the service down on
that node (debounced: not extended while marked; at most CFG.mna_per_min marks a minute)
and re-dispatches to another node at once. Any other failure fails the utterance.
Input:
  KEYS[1] job hash   KEYS[2] {tag}:due:jobs
  Derived: node, session (results, pending), pool and queue keys.
  ARGV[1..4] ctx   ARGV[5] job id   ARGV[6] attempt id   ARGV[7] node id
  ARGV[8] connection token   ARGV[9] outcome: ok | model_not_available | error
  ARGV[10] ok: the translation_result JSON without session_id, utterance_index, job_id,
           trace_id (added from the job record); otherwise the node's error message
  ARGV[11] service type that is not available (model_not_available)
  ARGV[12] error code (error)
Output: [JSON, blobs...]
  {"status":"ok","state":"FINISHED"|"FAILED"|"DISPATCHED"|"QUEUED"} | {"status":"stale","reason":r}
]]
--!include ctx
--!include deliver
--!include results
--!include dispatch

local jid, nid, outcome = ARGV[5], ARGV[7], ARGV[9]
local job, why = job_for(jid, ARGV[6], nid, ARGV[8])
if not job then return finish({status = 'stale', reason = why}) end

if outcome == 'ok' then
  release_node(jid, nid)
  redis.call('HSET', KEYS[1], 'state', 'FINISHED', 'finished_at', NOW)
  redis.call('ZREM', KEYS[2], jid)
  redis.call('DEL', KEYS[1] .. ':audio')
  redis.call('PEXPIRE', KEYS[1], CFG.job_ttl)
  job.state = 'FINISHED'
  count('finished')
  LAT.e2e[#LAT.e2e + 1] = NOW - tonumber(job.created_at or NOW)
  ui_event(job, 'ASR_FINAL', 'ok')
  ui_event(job, 'NMT_DONE', 'ok')
  -- identity from the job record, not from what the node wrote
  settle(job.session, job.idx, json_with(ARGV[10], {session_id = job.session,
    utterance_index = tonumber(job.idx), job_id = jid, trace_id = job.trace_id}))
  offer(nid)
elseif outcome == 'model_not_available' then
  local nk, svc = node_key(nid), ARGV[11]
  local m = redis.call('HMGET', nk, 'mna_window', 'mna_count', 'down:' .. svc)
  local window, count = tonumber(m[1] or '0'), tonumber(m[2] or '0')
  if NOW - window > 60000 then window, count = NOW, 0 end
  if tonumber(m[3] or '0') <= NOW and count < CFG.mna_per_min then
    redis.call('HSET', nk, 'down:' .. svc, NOW + CFG.mna_ms)
    count = count + 1
  end
  redis.call('HSET', nk, 'mna_window', window, 'mna_count', count)
  failover(jid, job, 'MODEL_NOT_AVAILABLE', ARGV[10], false)
else
  release_node(jid, nid)
  fail(jid, job, ARGV[12], ARGV[10])
  offer(nid)
end
return finish({status = 'ok', state = job.state})
