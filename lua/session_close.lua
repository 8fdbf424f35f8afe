--[[ session_close: the client ends its session: flush the audio buffer (a final cut), then
refuse further audio, and close the session's utterance group (a later result starts a
new one). Results of jobs in flight are still delivered and kept in the result log until
the session expires. When the final cut finds no free utterance index (cut.lua) the audio
stays buffered with held_cut = close and the session keeps its pause clock in due:audio:
the sweep cuts it as soon as an index is free (is_manual_cut, like this cut), so the
closed session's last words are not lost.
Input:
  KEYS[1] session hash   KEYS[2] {tag}:due:audio (the pause clock: cut() stops it, or
    keeps it armed for audio it held)
  Derived: the session's audio buffer, jobs, results; job, node, pool, queue keys of the cut;
  {tag}:subject:<subject>:sessions (the closed session no longer counts as live).
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] connection token
Output: [reply, blobs...]
  {"status":"ok","job_id":id?} | {"status":"missing"} | {"status":"stale"}
]]
--!include ctx
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include groups
--!include submit
--!include cut

local sid = ARGV[5]
local sess, why = session_for(sid, ARGV[6])
if not sess then return finish({status = why}) end
local r = nil
if sess.state == 'open' then r = cut(sid, sess, 'close') end
redis.call('HSET', KEYS[1], 'state', 'closed', 'closed_at', NOW, 'grp_id', '')
if sess.sub and sess.sub ~= '' then redis.call('ZREM', subject_sessions(sess.sub), sid) end
-- No ZREM of KEYS[2] here: cut() stopped the session's pause clock, or armed it again for
-- audio it held; on an already closed session a clock still armed is such a held cut's.
touch_session(sid, sess)
return finish({status = 'ok', job_id = r and r.job_id or nil})
