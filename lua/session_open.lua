--[[ session_open: a client's session_init creates its session record.
Input:
  KEYS[1] session hash {tag}:session:<sid>
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] "1" when minted (must be unused)
  ARGV[7] connection token   ARGV[8] nonce (makes job ids unique across session lifetimes)
  ARGV[9] n: field/value pairs in ARGV[10 .. 9+2n] (languages, mode, tenant, pools, needs,
          pair, spec = the job_assign template, trace_id, client fields)
Output: [JSON]
  {"status":"taken"} | {"status":"ok"}
]]
--!include ctx
--!include args

local sid = ARGV[5]
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return finish({status = 'taken'})
end
local fields = {'id', sid, 'owner', ME, 'conn', ARGV[7], 'nonce', ARGV[8], 'state', 'open',
  'created_at', NOW, 'last_active', NOW, 'ttl_at', NOW, 'next_index', 0, 'next_deliver', 0, 'buf_ms', 0,
  'buf_bytes', 0, 'turn_id', '', 'turn_node', '', 'turn_seq', 0, 'last_node', ''}
local n = int(9, 'field pairs', 0, (#ARGV - 9) / 2)
for i = 10, 9 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], CFG.session_ttl)
return finish({status = 'ok'})
