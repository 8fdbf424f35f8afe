--[[ session_resume: a client reconnects (to any instance) with resume_session_id and
last_received_index. The session moves to the new connection, every result after that
index still in the log is sent again in index order (results are kept CFG.retention ms
after delivery), then anything newly deliverable follows. Terminal messages are numbered
by out_seq; the new connection's writer starts at next_seq and drops older numbers still
travelling to it.
Input:
  KEYS[1] session hash
  Derived: the session's results, pending, jobs keys; node/session records for delivery;
  the caller's presence, listing and inbox group when missing (deliver.lua present()).
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] new connection token
  ARGV[7] last_received_index (-1: none received)
  ARGV[8] SHA-256 (hex) of the resume token presented: must equal the session's resume_hash
  ARGV[9] tenant of the resuming credential ("" = none): must equal the session's tenant
  ARGV[10] epoch floor: the highest epoch of the session's live connection on the caller's
          instance (0: none); the new epoch is above it, above the record's and at least
          the Redis clock in ms (epoch.lua)
Output: [reply, blobs...]
  {"status":"ok","next_seq":N,"resent":N,"state":"open"|"closed","tenant":T,"epoch":E,
   "replaced_conn":tok?,"nonce":n}  T: the session's own tenant ("" = none), which its later jobs
                        keep; E grows with every resume (commit order): the caller's instance
                        keeps the binding of the latest one live when replies come back out
                        of order; tok: the connection the session moved away from; n: the
                        session's nonce (its lifetime, in its job ids job-<n>-<index>)
  {"status":"missing"}  no such session (expired)
  {"status":"refused"}  wrong resume token or tenant: nothing changed (the live session
                        stays with its connection)
  {"status":"gap"}      results after last_received_index were trimmed: resumed = false
]]
--!include ctx
--!include args
--!include deliver
--!include results
--!include epoch

local sid, last = ARGV[5], int(7, 'last_received_index', -math.huge, math.huge)
local floor = int(10, 'epoch floor', 0, 2 ^ 53)
local sk, rk, pk = session_keys(sid)
local proof = redis.call('HMGET', sk, 'id', 'resume_hash', 'tenant', 'conn', 'epoch', 'nonce')
if not proof[1] then return finish({status = 'missing'}) end
if not proof[2] or proof[2] ~= ARGV[8] or (ARGV[9] ~= '' and (proof[3] or '') ~= ARGV[9]) then
  return finish({status = 'refused'})
end
-- A result after `last` already left the log (retention): cannot resume completely.
local cursor = tonumber(redis.call('HGET', sk, 'next_deliver') or '0')
for i = last + 1, cursor - 1 do
  if redis.call('HEXISTS', rk, i) == 0 then return finish({status = 'gap'}) end
  if i - last > CFG.max_ahead then break end
end
local epoch = epoch_after(proof[5], floor)
redis.call('HSET', sk, 'owner', ME, 'conn', ARGV[6], 'epoch', epoch)
present() -- peers reach the session through us from now on
local next_seq = tonumber(redis.call('HGET', sk, 'out_seq') or '0') + 1
local held = {}
for _, i in ipairs(redis.call('ZRANGE', pk, 0, -1)) do held[i] = true end
local idxs = {}
for _, i in ipairs(redis.call('HKEYS', rk)) do
  local n = tonumber(i)
  if n and n > last and not held[i] then idxs[#idxs + 1] = n end
end
table.sort(idxs)
for _, n in ipairs(idxs) do send_terminal(sid, logged(sid, rk, n)) end
release(sid, false)
touch_session(sid)
return finish({status = 'ok', next_seq = next_seq, resent = #idxs,
  state = redis.call('HGET', sk, 'state'), tenant = proof[3] or '', epoch = epoch,
  nonce = proof[6] or '',
  replaced_conn = (proof[4] ~= ARGV[6]) and proof[4] or nil})
