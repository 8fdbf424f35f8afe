--[[ session_touch: client activity that is not audio: client_heartbeat, tts_started,
tts_play_ended. Keeps the session alive; playback resets the pause clock (playback is not
silence): tts_started pushes the pause deadline past CFG.playback_grace, tts_play_ended
restarts it at pause_ms. A tts_play_ended naming the session's active utterance group moves
that group's anchor to now (its window starts again; lua/includes/groups.lua).
Input:
  KEYS[1] session hash   KEYS[2] {tag}:due:audio
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] connection token
  ARGV[7] event: heartbeat | tts_started | tts_play_ended
  ARGV[8] tts_play_ended: its group_id ("" if none)
Output: [reply]  {"status":"ok"} | {"status":"missing"} | {"status":"stale"}
]]
--!include ctx

local sid, event = ARGV[5], ARGV[7]
local sess, why = session_for(sid, ARGV[6])
if not sess then return finish({status = why}) end
touch_session(sid, sess)
if event == 'tts_play_ended' and ARGV[8] ~= '' and ARGV[8] == sess.grp_id then
  redis.call('HSET', KEYS[1], 'grp_anchor', NOW)
end
if tonumber(sess.buf_bytes or '0') > 0 and sess.state == 'open' then
  if event == 'tts_started' then
    redis.call('ZADD', KEYS[2], NOW + CFG.pause + CFG.playback_grace, sid)
  elseif event == 'tts_play_ended' then
    redis.call('ZADD', KEYS[2], NOW + CFG.pause, sid)
  end
end
return finish({status = 'ok'})
