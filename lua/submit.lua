--[[ submit: a client's pre-cut `utterance` becomes one job: idempotency on
(session, utterance_index) -> job hash + audio payload (TTL) -> candidate pools -> node
choice (turn affinity, session affinity, power-of-k-choices over eligible nodes) ->
reservation -> DISPATCHED with attempt and deadline; or a bounded wait in the pool queue;
or an immediate NO_AVAILABLE_NODE when no node can ever serve the pair.
Input:
  KEYS[1] session hash   KEYS[2] (optional) the audio, staged by the instance (ARGV[9] is "")
    with the TTL of job:<jid>:audio (CFG.job_ttl): renamed to it, it keeps it
  Derived: session jobs/results keys; job, job audio, node, pool, queue, due keys.
  ARGV[1..4] ctx   ARGV[5] session id   ARGV[6] connection token   ARGV[7] utterance index
  ARGV[8] job_assign template JSON (without job_id/attempt_id/audio)   ARGV[9] audio bytes
  ARGV[10] pools csv ("primary" or "primary|reverse", preferred first)
  ARGV[11] needed services csv   ARGV[12] pair label   ARGV[13] trace id
Output: [reply, blobs...]  (a job_assign for a node of the calling instance has no audio
  blob but `own`: the caller adds the utterance's audio it sent)
  {"status":"created","job_id":id,"dispatch":"dispatched"|"queued"|"failed"}
  {"status":"duplicate","job_id":id}  resent utterance: nothing changed
  {"status":"settled"}   the index already has its terminal message
  {"status":"too_far"}   index beyond CFG.max_ahead of the delivery cursor
  {"status":"missing"} | {"status":"stale"} | {"status":"closed"}
]]
--!include ctx
--!include args
--!include deliver
--!include results
--!include explain
--!include pick
--!include dispatch
--!include groups
--!include submit

-- The session fields this path reads (a session record has ~40): fencing and state, the
-- cursor, the TTL refresh and activity marks, the job id nonce, affinity, the group context,
-- and the owner (deliveries to the session need no lookup of their own).
local FIELDS = {'id', 'conn', 'owner', 'state', 'next_deliver', 'ttl_at', 'last_active', 'nonce',
  'last_node', 'grp_id', 'grp_anchor', 'grp_ctx'}

local stage = staged(KEYS[2])
local sid, idx = ARGV[5], int(7, 'utterance index', 0, math.huge)
local sess, why = session_for(sid, ARGV[6], FIELDS)
if not sess then return finish_staged({status = why}, stage) end
if sess.state ~= 'open' then return finish_staged({status = 'closed'}, stage) end
if idx > (sess.next_deliver or 0) + CFG.max_ahead then
  return finish_staged({status = 'too_far'}, stage)
end
-- The session fields the dispatch writes (last_node) go with the activity mark: one HSET.
local sess_set = {}
local r = submit(sid, sess, idx, ARGV[8], ARGV[9],
  {pools = ARGV[10], needs = ARGV[11], pair = ARGV[12], trace_id = ARGV[13], sess_set = sess_set,
   own_audio = true, stage = stage})
touch_session(sid, sess, sess_set)
return finish_staged(r, stage)
