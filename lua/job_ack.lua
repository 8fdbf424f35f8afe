--[[ job_ack: optional job_ack / job_started from a node (lingua nodes send neither). Fenced
like job_result. An ack moves DISPATCHED -> ACCEPTED and replaces the short ack deadline
by the run deadline; started moves to RUNNING.
Input:
  KEYS[1] job hash   KEYS[2] {tag}:due:jobs
  ARGV[1..4] ctx   ARGV[5] job id   ARGV[6] attempt id   ARGV[7] node id
  ARGV[8] connection token   ARGV[9] event: ack | started
Output: [reply]
  {"status":"ok","state":s} | {"status":"stale","reason":r}
]]
--!include ctx
--!include deliver

local jid = ARGV[5]
local job, why = job_for(jid, ARGV[6], ARGV[7], ARGV[8])
if not job then return finish({status = 'stale', reason = why}) end
local state = job.state
if ARGV[9] == 'ack' and state == 'DISPATCHED' then
  state = 'ACCEPTED'
  count('acked')
  ui_event(job, 'NODE_ACCEPTED', 'ok')
elseif ARGV[9] == 'started' and state ~= 'RUNNING' then
  state = 'RUNNING'
  count('started')
end
local deadline = tonumber(job.dispatched_at) + CFG.run_timeout
redis.call('HSET', KEYS[1], 'state', state, 'deadline', deadline)
redis.call('ZADD', KEYS[2], deadline, jid)
return finish({status = 'ok', state = state})
