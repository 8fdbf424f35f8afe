-- Ordered, exactly-once delivery of terminal messages per utterance index.
-- Per session: results hash (index -> terminal message JSON), pending zset (settled but not
-- yet delivered), and the cursor `next_deliver` = lowest index not delivered yet.
-- A result waits for an unfinished earlier index at most CFG.reorder ms (due:reorder);
-- then everything held is released, and an index that has no job at all gets
-- missing_result (gap_timeout). A late index is delivered the moment it settles.

local function session_keys(sid)
  local sk = session_key(sid)
  return sk, sk .. ':results', sk .. ':pending', sk .. ':jobs'
end

-- A large translation_result (TTS audio: tens of KB) is logged in two parts, so its body
-- never becomes a Lua string (Redis' Lua hashes every byte of each new string): the log
-- entry is "+" and the header the script built, the node's body (its members and "}") is
-- the string key <session>:body:<idx>, RENAMEd there from the key the instance staged it
-- in. Whoever writes the message to a socket joins the two (deliver's `tail`).
local SPLIT = 43 -- string.byte('+')

-- logged(sid, rk, idx): the logged terminal message of idx as (message or header, tail).
local function logged(sid, rk, idx)
  local v = redis.call('HGET', rk, idx)
  if v and string.byte(v, 1) == SPLIT then return string.sub(v, 2), {key = body_key(sid, idx)} end
  return v, nil
end

-- A translation_result from job_result starts with
--   {"scheduler_sent_at_ms":<accepted>,"network_timings":{"scheduler_to_web_ms":0,...
-- (the log keeps that); each send rewrites these two numbers: sent now, held now - accepted.
local STAMP = '{"scheduler_sent_at_ms":'

-- result_head(ids, timings): the start of a translation_result as the log keeps it, the
-- shape `stamp` rewrites: accepted now, the network timings (`timings`: further members of
-- network_timings after scheduler_to_web_ms, each with its leading comma, or ''), and the
-- members of the table `ids`; no closing "}" and no trailing comma.
local function result_head(ids, timings)
  return STAMP .. NOWS .. ',"network_timings":{"scheduler_to_web_ms":0' .. timings .. '},'
    .. string.sub(cjson.encode(ids), 2, -2)
end

local function stamp(msg)
  if string.sub(msg, 1, #STAMP) ~= STAMP then return msg end
  local acc, rest = string.match(msg,
    '^{"scheduler_sent_at_ms":(%d+),"network_timings":{"scheduler_to_web_ms":%d+()')
  if not acc then return msg end
  return STAMP .. NOWS .. ',"network_timings":{"scheduler_to_web_ms":'
    .. string.format('%d', math.max(0, NOW - acc)) .. string.sub(msg, rest)
end

-- send_terminal(sid, msg, tail): a terminal message, numbered by the session's out_seq so
-- the owning connection writes them in release order whichever path they take. `tail`:
-- the logged body of a split message (logged()).
local function send_terminal(sid, msg, tail)
  local seq = redis.call('HINCRBY', session_key(sid), 'out_seq', 1)
  deliver('session', sid, stamp(msg), nil, seq, nil, nil, nil, tail)
end

local function deliver_index(sid, rk, pk, idx)
  local msg, tail = logged(sid, rk, idx)
  redis.call('ZREM', pk, idx)
  if msg then send_terminal(sid, msg, tail) end
end

local function missing_msg(sid, idx)
  return cjson.encode({type = 'missing_result', session_id = sid, utterance_index = idx,
    reason = 'gap_timeout', created_at_ms = NOW})
end

-- How far one call advances the cursor at most: past every index a result may be logged
-- at (submit refuses one more than session.max_index_ahead, at most 10,000, past the
-- cursor), so that no call ends with a result logged at the cursor (submit and settle's
-- held path rely on it; before this constant the loops went 10,000 steps, which is enough
-- below the maximum: with max_index_ahead at 10,000 both look as they did, since an older
-- library may run side by side during an upgrade).
local ADVANCE_MAX = 10001

-- cursor_clear(): may a call rely on "no result is logged at the cursor" (see ADVANCE_MAX)?
-- Not with max_index_ahead at its maximum, where a library before ADVANCE_MAX could stop
-- one short.
local function cursor_clear() return CFG.max_ahead < 10000 end

-- gated_trim(sid, cursor, s, f): trim the log at most every CFG.retention / 8 (the
-- session's `trim_at`, read into `s`), appending the next time to `f`, the fields of the
-- caller's HSET of the session; or at the next call again, while each trim takes a full
-- page (trim).
local function gated_trim(sid, cursor, s, f)
  if NOW < (s.trim_at or 0) + 0 then return end
  if trim(sid, cursor) then return end
  local n = #f
  f[n + 1], f[n + 2] = 'trim_at', dec(NOW + math.floor(CFG.retention / 8))
end

-- release(sid, force): deliver what is deliverable; force = the reorder window is over.
local function release(sid, force)
  local sk, rk, pk, jk = session_keys(sid)
  local cursor = tonumber(redis.call('HGET', sk, 'next_deliver') or '0')
  local function advance()
    local steps = 0
    while steps < ADVANCE_MAX do
      steps = steps + 1
      if redis.call('ZSCORE', pk, cursor) then
        deliver_index(sid, rk, pk, cursor)
        cursor = cursor + 1
      elseif redis.call('HEXISTS', rk, cursor) == 1 then
        cursor = cursor + 1 -- delivered earlier, out of order
      else
        break
      end
    end
  end
  advance()
  if force and redis.call('ZCARD', pk) > 0 then
    local last = tonumber(redis.call('ZRANGE', pk, -1, -1)[1])
    local g = cursor
    -- bounded: indices are validated on submit to stay within CFG.max_ahead of the cursor
    while g <= last do
      if redis.call('ZSCORE', pk, g) then
        deliver_index(sid, rk, pk, g)
      elseif redis.call('HEXISTS', rk, g) == 0 and redis.call('HEXISTS', jk, g) == 0 then
        count('missing_result')
        local m = missing_msg(sid, g)
        redis.call('HSET', rk, g, m)
        redis.call('PEXPIRE', rk, CFG.session_ttl)
        redis.call('ZADD', sk .. ':rtime', NOW, g)
        redis.call('PEXPIRE', sk .. ':rtime', CFG.session_ttl)
        send_terminal(sid, m)
      end
      g = g + 1
    end
    advance()
  end
  redis.call('HSET', sk, 'next_deliver', cursor)
  trim(sid, cursor)
  if redis.call('ZCARD', pk) > 0 then
    redis.call('ZADD', P .. 'due:reorder', 'NX', NOW + CFG.reorder, sid)
  else
    redis.call('ZREM', P .. 'due:reorder', sid)
  end
end

-- settle(sid, idx, msg, s, stamped, set, body): the one terminal message of utterance idx.
-- Returns false if the index was settled already (never a second terminal message) or the
-- session is gone. `s` (optional): the session's id, next_deliver, out_seq and trim_at as
-- read earlier in this call (session_read), so the fast path needs no EXISTS, HGET or
-- HINCRBY of its own. `stamped`: `msg` was stamped with NOW in this call (job_result's
-- `timed`), so delivering it at once needs no re-stamp (two copies of a message that
-- carries the TTS audio). `set` (optional): a flat list of further session fields to
-- write (the utterance group's), in the fast path's HSET. `body` (optional): the staged
-- body (ctx.lua `staged`): `msg` is only the header, the body in `body.key` becomes
-- <session>:body:<idx> (`body.taken` is set when it did).
-- With `s`, the log is trimmed at most every CFG.retention / 8 (`trim_at`): a result
-- stays at most 9/8 of the retention, and most results need no ZRANGEBYSCORE.
local function settle(sid, idx, msg, s, stamped, set, body)
  local sk, rk, pk = session_keys(sid)
  if s then
    if not s.id then return false end
  elseif redis.call('EXISTS', sk) == 0 then
    return false
  end
  -- Which of the log's keys exist, in one command: EXISTS counts a key once per time it is
  -- named, so results weighs 1, rtime 2, pending 4. A key that exists already has its TTL
  -- (set when it was created, refreshed with the session's by touch_session, which never
  -- leaves one behind the session record): only a key this call creates gets one here.
  -- (A pending zset with no member does not exist: `have < 4` is ZCARD == 0.)
  local rt = sk .. ':rtime'
  local have = redis.call('EXISTS', rk, rt, rt, pk, pk, pk, pk)
  if redis.call('HSETNX', rk, idx, body and ('+' .. msg) or msg) == 0 then return false end
  local tail = nil
  if body then
    tail = {key = body_key(sid, idx), own = body.own}
    redis.call('RENAME', body.key, tail.key) -- staged with the body's TTL: it keeps it
    body.taken = true
  end
  redis.call('ZADD', rt, NOWS, idx)
  if have % 2 == 0 then redis.call('PEXPIRE', rk, CFGS.session_ttl) end
  if have % 4 < 2 then redis.call('PEXPIRE', rt, CFGS.session_ttl) end
  -- The common case: the index is the cursor and nothing else is held. Deliver it now,
  -- without a pending entry (release() would add, find and remove it: 5 more commands).
  local cursor = ((s and s.next_deliver) or redis.call('HGET', sk, 'next_deliver') or 0) + 0
  if idx + 0 == cursor and have < 4 then
    local seq
    if s then
      seq = (s.out_seq or 0) + 1
      deliver('session', sid, stamped and msg or stamp(msg), nil, seq, nil, nil, nil, tail)
    else
      send_terminal(sid, msg, tail)
    end
    cursor = cursor + 1
    local steps = 0
    -- indices delivered earlier, out of order (bounded like release's advance)
    while steps < ADVANCE_MAX and redis.call('HEXISTS', rk, cursor) == 1 do
      cursor, steps = cursor + 1, steps + 1
    end
    if seq then
      local f = set or {}
      local n = #f
      f[n + 1], f[n + 2], f[n + 3], f[n + 4] = 'next_deliver', dec(cursor), 'out_seq', dec(seq)
      gated_trim(sid, cursor, s, f)
      redis.call('HSET', sk, unpack(f))
      s.next_deliver, s.out_seq = cursor, seq
    else
      redis.call('HSET', sk, 'next_deliver', dec(cursor), unpack(set or {}))
      trim(sid, cursor)
    end
    return true
  end
  if s and idx + 0 > cursor and cursor_clear() then
    -- Held behind an earlier index. release() would deliver nothing: no call ends with a
    -- result logged at the cursor, and every held index has its result. What is left of
    -- it: the reorder clock, started by the first result held (NX), and the trim, gated as
    -- in the fast path (in the same HSET as the group's fields).
    local f = set or {}
    gated_trim(sid, cursor, s, f)
    if #f > 0 then redis.call('HSET', sk, unpack(f)) end
    redis.call('ZADD', pk, idx, idx)
    if have < 4 then redis.call('PEXPIRE', pk, CFGS.session_ttl) end
    redis.call('ZADD', P .. 'due:reorder', 'NX', NOW + CFG.reorder, sid)
    return true
  end
  if set and #set > 0 then redis.call('HSET', sk, unpack(set)) end
  redis.call('ZADD', pk, idx, idx)
  if have < 4 then redis.call('PEXPIRE', pk, CFGS.session_ttl) end
  release(sid, false)
  return true
end

-- error_msg: the terminal `error` for one utterance.
local function error_msg(job, code, message)
  return cjson.encode({type = 'error', code = code, message = message,
    session_id = job.session, utterance_index = tonumber(job.idx), job_id = job.id,
    trace_id = job.trace_id,
    details = {utterance_index = tonumber(job.idx), job_id = job.id}})
end
