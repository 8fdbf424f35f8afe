--[[ job_partial: a node's asr_partial, forwarded best-effort to the job's session (with a
ui_event ASR_PARTIAL). Fenced like job_result (node + connection; asr_partial carries no
attempt id). Changes no state.
Input:
  KEYS[1] job hash
  ARGV[1..4] ctx   ARGV[5] job id   ARGV[6] node id   ARGV[7] connection token
  ARGV[8] text   ARGV[9] "1" if is_final
Output: [reply]  {"status":"ok"} | {"status":"stale","reason":r}
]]
--!include ctx
--!include deliver

local jid = ARGV[5]
local job, why = job_for(jid, nil, ARGV[6], ARGV[7])
if not job then return finish({status = 'stale', reason = why}) end
job.id = jid
if job_session(job) then -- (never to another lifetime of the session id)
  deliver('session', job.session, cjson.encode({type = 'asr_partial', session_id = job.session,
    utterance_index = tonumber(job.idx), job_id = jid, text = ARGV[8], is_final = ARGV[9] == '1',
    trace_id = job.trace_id}))
  ui_event(job, 'ASR_PARTIAL', 'ok')
end
return finish({status = 'ok'})
