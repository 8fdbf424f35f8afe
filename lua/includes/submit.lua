-- submit(sid, sess, idx, spec, audio, meta): create the job of utterance `idx` and dispatch
-- it. Idempotent on (session, idx): a repeat returns the existing job and changes nothing.
--   spec  job_assign JSON without job_id/attempt_id/audio (built by Rust or from the session)
--   meta  {pools=, needs=, pair=, trace_id=, turn_id=, turn_node=, turn_prev=?, web_ms=?, sess_set=?,
--         own_audio=?, stage=?}  own_audio: the caller holds `audio` (deliver's `own`)
--         stage: {key=} the audio staged in that key by the caller with the job's TTL
--         (`audio` is then "", the key is renamed to the job's: the audio never becomes a
--         Lua string; a missing key fails the call, with no write left behind);
--         `stage.taken` is set when it was
--         sess_set: a list the session fields dispatch writes are appended to (the caller
--         writes them), instead of their own HSET
-- The job_assign carries the active utterance group's context as `context_text`.
-- Returns {status='created'|'duplicate'|'settled', job_id=, dispatch=}.
-- (Requires ctx, deliver, results, dispatch, groups.)
local function submit(sid, sess, idx, spec, audio, meta)
  local sk = session_key(sid)
  local jobs = sk .. ':jobs'
  local is = dec(idx)
  local jid = 'job-' .. sess.nonce .. '-' .. is
  -- The job, built before the claim below, so that nothing between the claim and the
  -- record's write can fail on what it reads (a Redis function's writes stay when it fails).
  local ids = {type = 'job_assign', job_id = jid, session_id = sid, utterance_index = idx,
    trace_id = meta.trace_id}
  if meta.turn_id and meta.turn_id ~= '' then ids.turn_id = meta.turn_id end
  local context = group_context(sess)
  if context ~= '' then ids.context_text = context end
  -- (fields without a value are left out of the record: readers take absent as empty; the
  -- record gets the fields of dispatch.lua's CREATED_FIELDS: a field added here goes there)
  local job = {id = jid, session = sid, idx = is, state = 'CREATED', attempt = '0',
    pools = meta.pools, needs = meta.needs, pair = meta.pair, trace_id = meta.trace_id,
    turn_id = nonempty(meta.turn_id), turn_node = nonempty(meta.turn_node),
    turn_prev = meta.turn_prev,
    last_node = nonempty(sess.last_node), created_at = NOWS, spec = json_with(spec, ids),
    tp = TP, web_ms = nonempty(meta.web_ms)}
  -- The index is claimed (HSETNX: one command where a look and a write were two); a resend
  -- finds it taken. Each refusal below gives the claim back, and so does a staged audio
  -- found missing: no entry of :jobs names a job that was not created.
  if redis.call('HSETNX', jobs, is, jid) == 0 then
    return {status = 'duplicate', job_id = redis.call('HGET', jobs, is)}
  end
  redis.call('PEXPIRE', jobs, CFGS.session_ttl)
  -- (not only a job's end settles an index: a gap the reorder window gave up on gets its
  -- missing_result without ever having had a job. No call ends with a result logged at
  -- the cursor (results.lua advances past every one), so the index at the cursor needs no
  -- look, where that holds: cursor_clear().)
  local cursor = (sess.next_deliver or 0) + 0
  if idx < cursor or ((idx > cursor or not cursor_clear())
      and redis.call('HEXISTS', sk .. ':results', is) == 1) then
    redis.call('HDEL', jobs, is)
    return {status = 'settled'}
  end
  -- The record is written once, by whichever of assign / queue / fail settles it in this
  -- call (one HSET with the dispatch fields instead of two).
  job.unsaved = true
  job.sess_set = meta.sess_set
  local jk = job_key(jid)
  if meta.stage then
    -- The first write of the call after the claim (given back): a staged key found
    -- missing fails it before any other (a job without its audio could never be served).
    -- The key came with its TTL.
    local moved = redis.pcall('RENAME', meta.stage.key, jk .. ':audio')
    if type(moved) == 'table' and moved.err then
      redis.call('HDEL', jobs, is)
      error({err = 'ERR staged audio missing: ' .. meta.stage.key})
    end
    meta.stage.taken = true
    audio = {key = jk .. ':audio'} -- read by deliver only for a node of another instance
  else
    redis.call('SET', jk .. ':audio', audio, 'PX', CFGS.job_ttl)
  end
  count('submitted')
  job.fresh_audio = audio -- for assign (not a field of the record)
  job.own_audio = meta.own_audio
  local d = dispatch(jid, job)
  return {status = 'created', job_id = jid, dispatch = d}
end
