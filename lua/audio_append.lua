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
  ARGV[11] the chunk's number on its connection (1, 2, ...; 0: not numbered). A chunk whose
           number the session's `chunk` field (<connection token> <number> <1 if it cut>)
           already holds for this connection is not appended again: on a cluster the
           client resends a call whose connection reset after it was sent, and the call
           may have run (docs/scaling.md)
Output: [reply, blobs...]
  {"status":"ok","cut":reason?,"job_id":id?,"dispatch":"dispatched"|"queued"|"failed"?}
  {"status":"repeat","cut":bool}  the chunk was appended already, nothing changed; cut: its
    first run cut (what that cut delivered went with the first reply, which was lost)
  {"status":"full"}  the buffer, held (past CFG.max_bytes: no free index), would pass
    2 x CFG.max_bytes with this chunk: the chunk is not kept (its is_final still marks the
    held audio a manual cut: held_cut); the session's TTLs are refreshed
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
local seq = int(11, 'chunk number', 0, math.huge)
-- (checked like the others, though kept as text: a cut's arithmetic reads it after the
-- buffer is gone)
if ARGV[10] ~= '' then int(10, 'client_timestamp_ms', 0, 2^53) end
local sess, why = session_for(sid, ARGV[6])
if not sess then return finish({status = why}) end
if seq > 0 then
  local conn, done, did_cut = string.match(sess.chunk or '', '^(%S+) (%d+) ([01])$')
  if conn == ARGV[6] and tonumber(done) >= seq then
    return finish({status = 'repeat', cut = did_cut == '1'})
  end
end
if sess.state ~= 'open' then return finish({status = 'closed'}) end
local bytes = tonumber(sess.buf_bytes or '0')
local ms = tonumber(sess.buf_ms or '0')
-- A buffer is cut once it passes CFG.max_bytes: one past it is held (no free index: the
-- session's utterances are CFG.max_ahead past its delivery cursor), and takes no chunk that
-- would bring it past twice that. Refused, the chunk is not kept; the session stays alive,
-- and a refused is_final still makes the held audio the client's manual cut.
if #payload > 0 and bytes > CFG.max_bytes and bytes + #payload > 2 * CFG.max_bytes then
  if ARGV[8] == '1' and sess.held_cut ~= 'manual' and sess.held_cut ~= 'close' then
    redis.call('HSET', KEYS[1], 'held_cut', 'manual')
  end
  touch_session(sid, sess)
  return finish({status = 'full'})
end
local fields = {}
if #payload > 0 then
  if redis.call('APPEND', KEYS[2], payload) == #payload then
    redis.call('PEXPIRE', KEYS[2], CFG.session_ttl) -- a new buffer: its own TTL at once
  end
  bytes = bytes + #payload
  ms = ms + chunk_ms
  fields = {'buf_bytes', bytes, 'buf_ms', ms}
  if ARGV[10] ~= '' then
    fields[5], fields[6], fields[7], fields[8] = 'cts', ARGV[10], 'rts', NOW
  end
end
if ARGV[10] ~= '' then sess.cts, sess.rts = ARGV[10], NOW end
local reason = nil
if ARGV[8] == '1' then reason = 'manual'
elseif ms >= CFG.max_duration then reason = 'max_duration'
elseif bytes > CFG.max_bytes then reason = 'max_size'
end
if seq > 0 then
  fields[#fields + 1] = 'chunk'
  fields[#fields + 1] = ARGV[6] .. ' ' .. ARGV[11] .. ' ' .. (reason and '1' or '0')
end
-- before cut(), whose writes of buf_bytes/buf_ms win
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
touch_session(sid, sess)
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
