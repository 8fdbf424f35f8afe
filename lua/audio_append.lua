--[[ audio_append: one audio_chunk of a streaming session. Appends the payload to the
session's buffer and applies the cut rules (a cut too short to be speech makes no job, see
cut.lua): is_final -> manual cut; buffered duration >=
max_duration -> max-duration cut (the turn continues); buffer > max_bytes -> size cut;
otherwise the pause deadline moves to now + pause_ms (the sweep cuts on expiry). A cut
submits the job in this same script (dispatch or queue), so no audio is lost between cut
and submission.
Input:
  KEYS[1] session hash   KEYS[2] session audio buffer {tag}:session:<sid>:audio
  KEYS[3] {tag}:due:audio
  Derived: session jobs/results keys; job, node, pool and queue keys of a cut.
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] connection token
  ARGV[7] payload bytes (raw, may be empty)   ARGV[8] "1" if is_final
  ARGV[9] payload duration estimate, ms
  ARGV[10] the chunk's client_timestamp_ms ("" if absent): kept as cts (with its arrival
           time rts) for the web_to_scheduler_ms timing of the next cut
Output: [JSON, blobs...]
  {"status":"ok","cut":reason?,"job_id":id?,"dispatch":"dispatched"|"queued"|"failed"?}
  {"status":"missing"} | {"status":"stale"} | {"status":"closed"}
]]
--!include ctx
--!include args
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include groups
--!include submit
--!include cut

local sid, payload = ARGV[5], ARGV[7]
local chunk_ms = int(9, 'duration ms', 0, math.huge)
local sess, why = session_for(sid, ARGV[6])
if not sess then return finish({status = why}) end
if sess.state ~= 'open' then return finish({status = 'closed'}) end
local bytes = tonumber(sess.buf_bytes or '0')
local ms = tonumber(sess.buf_ms or '0')
if #payload > 0 then
  if redis.call('APPEND', KEYS[2], payload) == #payload then
    redis.call('PEXPIRE', KEYS[2], CFG.session_ttl) -- a new buffer: its own TTL at once
  end
  bytes = bytes + #payload
  ms = ms + chunk_ms
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[1], 'buf_bytes', bytes, 'buf_ms', ms, 'cts', ARGV[10], 'rts', NOW)
  else
    redis.call('HSET', KEYS[1], 'buf_bytes', bytes, 'buf_ms', ms)
  end
end
if ARGV[10] ~= '' then sess.cts, sess.rts = ARGV[10], NOW end
touch_session(sid, sess)
local reason = nil
if ARGV[8] == '1' then reason = 'manual'
elseif ms >= CFG.max_duration then reason = 'max_duration'
elseif bytes > CFG.max_bytes then reason = 'max_size'
end
local reply = {status = 'ok'}
if reason then
  sess.buf_bytes, sess.buf_ms = bytes, ms
  local r = cut(sid, sess, reason)
  reply.cut = reason
  if r then
    reply.job_id, reply.dispatch = r.job_id, r.dispatch
  end
elseif bytes > 0 then
  redis.call('ZADD', KEYS[3], NOW + CFG.pause, sid)
end
return finish(reply)
