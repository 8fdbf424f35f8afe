-- cut(sid, sess, reason): turn the session's audio buffer into one job.
-- reason: manual (is_final), timeout (pause), max_duration, max_size, close.
-- The session leaves due:audio (its pause clock); when no free utterance index is found the
-- audio stays buffered and the clock is armed again (now + CFG.pause): the sweep's pause
-- cut retries it. A manual or close cut held that way is remembered in the session's
-- held_cut, so the retry (whatever reason it comes with: the sweep's timeout, a later
-- chunk's max-duration or max-size cut) still cuts it as one: the buffer holds speech the
-- client ended, and the node must see is_manual_cut (padding 280), not a timeout. Only this
-- rare path writes held_cut; the cut that finally takes the audio clears it. The sweep
-- retries a held close cut on the closed session too (session_close leaves the clock).
-- Returns the submit reply, or nil when no job was made.
-- An empty buffer creates no job and does not use an utterance index; neither does a buffer
-- whose estimated duration (sess.buf_ms) is below CFG.min_cut (a click between two
-- is_final; the audio is dropped), unless it is the tail of a turn an earlier max-duration
-- or max-size cut started (speech the node joins to that turn). Both are counted
-- (cut_skipped:empty|too_short). A
-- max-duration or max-size cut keeps the turn (the next job of the turn goes to the same
-- node: the session's turn_node, or, while the turn's last job (turn_job) waits for a node,
-- that job's, as turn_prev); any other cut ends it. The job records web_ms, the client -> scheduler delay of the
-- last audio_chunk that carried client_timestamp_ms (sess.cts, received at sess.rts).
-- (Requires submit.)
local function cut(sid, sess, reason)
  local sk = session_key(sid)
  local bk = sk .. ':audio'
  redis.call('ZREM', P .. 'due:audio', sid)
  local audio = redis.call('GET', bk)
  -- sess is the whole record here (every caller reads it with HGETALL): no extra read
  local held = nonempty(sess.held_cut)
  if held and reason ~= 'close' then reason = held end
  local keeps_turn = reason == 'max_duration' or reason == 'max_size'
  local short = CFG.min_cut > 0 and (sess.turn_id or '') == ''
    and tonumber(sess.buf_ms or '0') < CFG.min_cut
  if not audio or #audio == 0 or short then
    if audio then
      redis.call('DEL', bk)
      redis.call('HSET', sk, 'buf_ms', 0, 'buf_bytes', 0, 'cts', '')
    end
    if not keeps_turn then redis.call('HSET', sk, 'turn_id', '', 'turn_node', '') end
    if held then redis.call('HDEL', sk, 'held_cut') end
    count((audio and #audio > 0) and 'cut_skipped:too_short' or 'cut_skipped:empty')
    return nil
  end
  -- The next index no utterance of this session has used (a client may mix modes), from
  -- next_index on and at most CFG.max_ahead past the delivery cursor, as submit requires of
  -- a client's own index: the gap scan of a forced release (results.lua) is bounded by it.
  -- next_index moves past every index tried. None free (the cursor waits on a slow job, or
  -- the client's utterances hold them): the audio is held.
  local cursor = (sess.next_deliver or 0) + 0
  local last = cursor + CFG.max_ahead
  local idx = math.max((sess.next_index or 0) + 0, cursor)
  local found = false
  while idx <= last do
    if redis.call('HEXISTS', sk .. ':jobs', idx) == 0
        and redis.call('HEXISTS', sk .. ':results', idx) == 0 then
      found = true
      break
    end
    idx = idx + 1
  end
  local next_index = found and idx + 1 or idx
  if next_index ~= (sess.next_index or 0) + 0 then
    redis.call('HSET', sk, 'next_index', dec(next_index))
  end
  if not found then
    -- Keep the audio; nothing is lost. Its pause clock was stopped above: armed again, so
    -- the sweep's pause cut tries again (from the next index) even if no chunk comes.
    redis.call('ZADD', P .. 'due:audio', dec(NOW + CFG.pause), sid)
    -- A pause, max-duration or max-size cut needs no memory: the retry's reason fits it.
    if (reason == 'manual' or reason == 'close') and held ~= reason then
      redis.call('HSET', sk, 'held_cut', reason)
      sess.held_cut = reason
    end
    return nil
  end
  redis.call('DEL', bk)
  redis.call('HSET', sk, 'buf_ms', 0, 'buf_bytes', 0, 'cts', '')
  if held then redis.call('HDEL', sk, 'held_cut') end
  local web_ms = nil
  if sess.cts and sess.cts ~= '' and sess.rts then
    web_ms = string.format('%d', math.max(0, tonumber(sess.rts) - tonumber(sess.cts)))
  end
  local turn = sess.turn_id
  -- A later part of a turn whose node is not known yet (the earlier part waits in a queue)
  -- names that part's job: pick() then waits for it, and follows it to its node.
  local prev = nil
  if not turn or turn == '' then
    turn = sid .. '-t' .. redis.call('HINCRBY', sk, 'turn_seq', 1)
    redis.call('HSET', sk, 'turn_id', turn, 'turn_node', '', 'turn_job', '')
    sess.turn_node = ''
  elseif (sess.turn_node or '') == '' then
    prev = nonempty(sess.turn_job)
  end
  local flags = {padding_ms = (reason == 'manual' or reason == 'close') and 280 or 220}
  if reason == 'manual' or reason == 'close' then flags.is_manual_cut = true end
  if reason == 'timeout' then flags.is_timeout_triggered = true end
  if keeps_turn then flags.is_max_duration_triggered = true end
  local r = submit(sid, sess, idx, json_with(sess.spec, flags), audio, {pools = sess.pools,
    needs = sess.needs, pair = sess.pair, trace_id = sess.trace_id, turn_id = turn,
    turn_node = sess.turn_node, turn_prev = prev, web_ms = web_ms})
  if not keeps_turn then
    redis.call('HSET', sk, 'turn_id', '', 'turn_node', '', 'turn_job', '')
  elseif r and r.job_id then
    redis.call('HSET', sk, 'turn_job', r.job_id)
  end
  return r
end
