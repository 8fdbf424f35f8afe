#!lua name=lean
-- bench/lean/lean.lua: a lower bound, not a scheduler. The two transitions of a job (submit,
-- a successful result) reduced to what Redis must check and write when the instance builds
-- every message and record text itself: fencing (session and node connection, attempt),
-- idempotency, a reservation, the deadline, the finished record, the result log and the
-- cursor. No utterance groups, routing explanation, ui_events, queues or failover: what an
-- "instance builds, script verifies and writes" design would still pay per job
-- (bench/lean.sh measures it like bench/instr.sh).
local function ms(t) return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end

-- ARGV: prefix, session id, connection, index, job id, pool, spec (the job_assign text),
-- trace id, traceparent. KEYS[1]: the staged audio.
redis.register_function('lean_submit', function(keys, a)
  local P, sid, conn, idx, jid = a[1], a[2], a[3], a[4], a[5]
  local now = ms(redis.call('TIME'))
  local sk = P .. 'session:' .. sid
  local s = redis.call('HMGET', sk, 'conn', 'state', 'next_deliver')
  if s[1] ~= conn or s[2] ~= 'open' then return 'stale' end
  if redis.call('HSETNX', sk .. ':jobs', idx, jid) == 0 then return 'duplicate' end
  local best, bfree, bconn
  for _, n in ipairs(redis.call('SRANDMEMBER', P .. 'pool:' .. a[6], 2)) do
    local r = redis.call('HMGET', P .. 'node:' .. n, 'conn', 'reserved', 'capacity', 'state')
    local free = (tonumber(r[3]) or 0) - (tonumber(r[2]) or 0)
    if r[4] == 'live' and free > 0 and (not best or free > bfree) then
      best, bfree, bconn = n, free, r[1]
    end
  end
  if not best then return 'queue' end
  local nk, jk = P .. 'node:' .. best, P .. 'job:' .. jid
  redis.call('HINCRBY', nk, 'reserved', 1)
  redis.call('SADD', nk .. ':jobs', jid)
  redis.call('RENAME', keys[1], jk .. ':audio')
  local nows = string.format('%d', now)
  local deadline = string.format('%d', now + 30000)
  redis.call('HSET', jk, 'state', 'DISPATCHED', 'session', sid, 'idx', idx, 'node', best,
    'attempt', '1', 'created_at', nows, 'dispatched_at', nows, 'deadline', deadline,
    'trace_id', a[8], 'tp', a[9], 'spec', a[7])
  redis.call('PEXPIRE', jk, '600000')
  redis.call('ZADD', P .. 'due:jobs', deadline, jid)
  return best .. ' ' .. bconn .. ' ' .. deadline
end)

-- ARGV: prefix, job id, attempt, node id, connection, the result message (built by the
-- instance).
redis.register_function('lean_result', function(_, a)
  local P, jid, nid = a[1], a[2], a[4]
  local nows = string.format('%d', ms(redis.call('TIME')))
  local jk, nk = P .. 'job:' .. jid, P .. 'node:' .. nid
  local j = redis.call('HMGET', jk, 'state', 'attempt', 'node', 'session', 'idx')
  if j[1] ~= 'DISPATCHED' or j[2] ~= a[3] or j[3] ~= nid then return 'stale' end
  if redis.call('HGET', nk, 'conn') ~= a[5] then return 'stale' end
  redis.call('SREM', nk .. ':jobs', jid)
  redis.call('HINCRBY', nk, 'reserved', -1)
  redis.call('ZREM', P .. 'due:jobs', jid)
  redis.call('HDEL', jk, 'spec', 'deadline', 'tp')
  redis.call('HSET', jk, 'state', 'FINISHED', 'finished_at', nows)
  redis.call('DEL', jk .. ':audio')
  local sk, idx = P .. 'session:' .. j[4], j[5]
  if redis.call('HSETNX', sk .. ':results', idx, a[6]) == 0 then return 'duplicate' end
  redis.call('ZADD', sk .. ':rtime', nows, idx)
  if redis.call('HGET', sk, 'next_deliver') == idx then
    redis.call('HSET', sk, 'next_deliver', string.format('%d', tonumber(idx) + 1))
  end
  return 'ok'
end)
