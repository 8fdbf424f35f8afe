--[[ session_close: the client ends its session: flush the audio buffer (a final cut), then
refuse further audio, and close the session's utterance group (a later result starts a
new one). Results of jobs in flight are still delivered and kept in the result log until
the session expires.
Input:
  KEYS[1] session hash   KEYS[2] {tag}:due:audio
  Derived: the session's audio buffer, jobs, results; job, node, pool, queue keys of the cut;
  {tag}:subject:<sub>:sessions (the closed session no longer counts as live).
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] connection token
Output: [JSON, blobs...]
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
redis.call('ZREM', KEYS[2], sid)
touch_session(sid, sess)
return finish({status = 'ok', job_id = r and r.job_id or nil})
