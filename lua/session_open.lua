--[[ session_open: a client's session_init creates its session record.
Input:
  KEYS[1] session hash {tag}:session:<sid>
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] "1" when minted: the id must be unused, by
          the record and by every key of an earlier session of that id (they get their own
          TTLs and may outlive the record: a new session must not find its job index,
          result log or audio buffer)
  ARGV[7] connection token   ARGV[8] nonce (makes job ids unique across session lifetimes)
  ARGV[9] subject: the opening credential's `sub`, `<tenant>/<sub>` with a tenant ("" = none:
          not counted); kept as the record's `sub`
  ARGV[10] most live sessions per subject (0 = no limit)
  ARGV[11] n: field/value pairs in ARGV[12 .. 11+2n] (languages, mode, tenant, pools, needs,
          pair, spec = the job_assign template, trace_id, resume_hash, client fields)
  Derived: {tag}:subject:<subject>:sessions (zset sid -> expiry ms; see subject_sessions);
  session:<sid>:jobs, :results, :pending, :audio, :rtime (checked when minted); the caller's
  presence, listing and inbox group when missing (deliver.lua present())
Output: [reply]
  {"status":"taken"} | {"status":"ok"}
  {"status":"limit","live":N}  the subject already has ARGV[10] live sessions: nothing written
]]
--!include ctx
--!include args
--!include deliver

local sid, sub = ARGV[5], ARGV[9]
local max_live = int(10, 'sessions per subject', 0, math.huge)
local n = int(11, 'field pairs', 0, (#ARGV - 11) / 2)
if ARGV[6] == '1' then
  local sk = KEYS[1]
  if redis.call('EXISTS', sk, sk .. ':jobs', sk .. ':results', sk .. ':pending', sk .. ':audio',
      sk .. ':rtime') > 0 then
    return finish({status = 'taken'})
  end
end
if sub ~= '' then
  -- Live = not closed and not expired: entries expire with the session's idle TTL.
  local zk = subject_sessions(sub)
  redis.call('ZREMRANGEBYSCORE', zk, '-inf', NOW)
  local live = redis.call('ZCARD', zk)
  if max_live > 0 and live >= max_live then
    return finish({status = 'limit', live = live})
  end
  redis.call('ZADD', zk, NOW + CFG.session_ttl, sid)
  redis.call('PEXPIRE', zk, CFG.session_ttl)
end
local fields = {'id', sid, 'owner', ME, 'conn', ARGV[7], 'nonce', ARGV[8], 'state', 'open',
  'created_at', NOW, 'last_active', NOW, 'ttl_at', NOW, 'next_index', 0, 'next_deliver', 0, 'buf_ms', 0,
  'buf_bytes', 0, 'turn_id', '', 'turn_node', '', 'turn_seq', 0, 'last_node', ''}
fields[#fields + 1] = 'sub'
fields[#fields + 1] = sub
for i = 12, 11 + 2 * n do fields[#fields + 1] = ARGV[i] end
present() -- peers reach the session through us from now on
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], CFG.session_ttl)
return finish({status = 'ok'})
