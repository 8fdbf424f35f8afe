-- deliver(kind, id, msg_json, blob): a message for node/session `id`, addressed to the
-- connection that owns it now (owner instance + connection token from its record). The
-- calling instance writes it to its local socket; a target without an owner gets nothing
-- (its state stays recoverable: results in the result log, jobs time out and fail over).
local function deliver(kind, id, msg, blob)
  local info = redis.call('HMGET', P .. kind .. ':' .. id, 'owner', 'conn')
  if not info[1] or info[1] == '' then return end
  OUT[#OUT + 1] = {k = kind, id = id, owner = info[1], conn = info[2], msg = msg, blob = blob}
end

-- ui_event(job, event, status, extra): a UI hint for the job's session (best-effort).
local function ui_event(job, event, status, code)
  local m = {type = 'ui_event', trace_id = job.trace_id, session_id = job.session,
    job_id = job.id, utterance_index = tonumber(job.idx), event = event, status = status,
    elapsed_ms = NOW - tonumber(job.created_at or NOW)}
  if code then m.error_code = code end
  deliver('session', job.session, cjson.encode(m))
end
