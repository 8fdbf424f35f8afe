-- deliver(kind, id, msg_json, audio, seq): a message for node/session `id`, addressed to the
-- connection that owns it now (owner instance + connection token from its record).
--  * owner = the calling instance: returned in OUT, written to the local socket at once;
--  * owner = another instance listed in `instances`: XADDed to that instance's inbox
--    stream here, atomically with the state change that produced it (a crash between the
--    two cannot lose it). Listed, not present: an owner whose presence expired but that
--    nobody took over yet is stalled or dead, and its inbox is where either way its
--    messages are safe: it reads them when it comes back (after a Redis outage longer
--    than the presence TTL, every instance is in that state for a moment), or the peer
--    that takes it over re-routes its node messages;
--  * owner not listed, or none: dropped — state keeps it recoverable (results stay in the
--    result log for resume, jobs time out and fail over). An owner no longer listed was
--    taken over: its tombstone taken:<owner> is there (instance_beat), and a drop marks it
--    `lost` (SET XX): at its next beat (instance_beat `lapsed`) the owner, if it was only
--    stalled, closes its connections with 1012, so they resume instead of carrying on with
--    a hole. An owner unlisted without a tombstone (Redis wiped; present() lists an
--    instance again as soon as it binds a connection) gets nothing.
-- Keys (derived, same hash tag): the target's node:/session: record, {tag}:instances
-- (ZSCORE), {tag}:inbox:<owner> (XADD), {tag}:taken:<owner> (SET XX), the payload's key.
-- `audio` (optional) is the raw job payload, or {key=} to read it from only when it must be
-- sent (`payload`); `seq` (optional) orders a session's terminal
-- messages across the two paths; `tp` is the trace context the delivery span continues
-- (default: the caller's) and `job` the job id it concerns. `own`: the caller holds this
-- audio (submit of a client's pre-cut utterance): for a connection of the caller the
-- entry says `own` instead of returning the audio as a blob (~8 KB less in the reply; the
-- instance adds the client's own base64 text); an inbox delivery still carries it.
-- OWNERS (ctx.lua): target → {owner, conn, nonce (sessions), alive=}, looked up once per call.
-- `tail` (optional, a session's split terminal message, results.lua logged()): {key = the
-- body's key, own = the caller holds the body}: the instance appends the body to `msg`
-- when it writes it; an `own` body of a connection of the caller is not returned at all,
-- an inbox entry names the key (`tail_key`) and its consumer reads it.

-- How long a tombstone taken:<id> stays (ms): an instance stalled longer than this does not
-- learn that messages for its connections were dropped or its inbox was taken over.
local TOMBSTONE_MS = '3600000'

-- payload(p): the text of a payload given as a string or as {key=}.
local function payload(p)
  if type(p) == 'table' then return redis.call('GET', p.key) or '' end
  return p
end

-- owner_of(kind, id): {owner, conn} of node/session `id` (a session's nonce third, for
-- job_session), looked up once per call (OWNERS).
local function owner_of(kind, id)
  local key = P .. kind .. ':' .. id
  local info = OWNERS[key]
  if not info then
    if kind == 'session' then
      info = redis.call('HMGET', key, 'owner', 'conn', 'nonce')
    else
      info = redis.call('HMGET', key, 'owner', 'conn')
    end
    OWNERS[key] = info
  end
  return info
end

-- nonce_of(jid, nonce): whether job id `jid` is job-<nonce>-<digits>: made with session
-- nonce `nonce` (and not with a longer one that starts with `nonce` and a hyphen).
local HYPHEN = 45 -- string.byte('-')
local function nonce_of(jid, nonce)
  return type(nonce) == 'string' and nonce ~= '' and string.sub(jid, 5, 4 + #nonce) == nonce
    and string.byte(jid, 5 + #nonce) == HYPHEN and string.find(jid, '^%d+$', 6 + #nonce) ~= nil
end

-- job_session(job): whether the session `job.session` names is still the one that created
-- the job. Session ids are random and an expired one may be minted again: session_open
-- refuses an id while any key of its earlier session lingers, but a job can outlive them
-- all (`session.idle_ttl_ms` shorter than a job's life, keys evicted under maxmemory). Such
-- a job's result, error, partial text, ui_events and utterance-group text must never reach
-- the new session: every message about a job to its session, and every write of it to the
-- session's records, asks this first. A job id is job-<nonce>-<index> (submit.lua) and the
-- session record keeps its nonce (session_open): one comparison, the nonce read with the
-- owner (owner_of).
local function job_session(job)
  return nonce_of(job.id or '', owner_of('session', job.session or '')[3])
end

-- present(): the calling instance is alive (it runs this script for a connection it is
-- binding), so make sure peers can reach it. Called by the scripts that bind a connection to
-- the caller (register, session_open, session_resume). Normally its beat keeps its presence
-- and one EXISTS is all this costs; after Redis was wiped, or before the instance's first
-- beat, its presence, listing and inbox group are gone until that beat (up to
-- beat_interval), and every peer's delivery to the connection being bound would be dropped
-- (a node's job_assign, a session's results). So they are created here, as the beat does;
-- the beat then overwrites the presence value (its started_at) and the listing's expiry.
local function present()
  local pk = P .. 'instance:' .. ME
  if redis.call('EXISTS', pk) == 1 then return end
  redis.call('SET', pk, NOWS, 'PX', CFGS.presence_ttl)
  redis.call('ZADD', P .. 'instances', NOW + CFG.presence_ttl, ME)
  local inbox = P .. 'inbox:' .. ME
  -- (created at '$' before any entry exists: the consumer reads everything from here on)
  if redis.call('EXISTS', inbox) == 0 then
    redis.call('XGROUP', 'CREATE', inbox, 'g', '$', 'MKSTREAM')
  end
end

-- listed(info, owner): is `owner` listed in `instances` (info.alive; looked up once per
-- target and call: nil while unknown or not listed, so the drop below still sees its first)?
local function listed(info, owner)
  if info.alive == nil and redis.call('ZSCORE', P .. 'instances', owner) then info.alive = true end
  return info.alive == true
end

-- body_gone(sid, header): the terminal message for a logged result whose body is gone: an
-- `error` naming its index (nil if the header names none), which also takes the entry's
-- place in the result log (a resume resends it, not a header without its body). The inbox
-- consumer writes the same when it finds the body gone (routing/inbox.rs `body_gone`).
local function body_gone(sid, header)
  local idx = tonumber(string.match(header, '"utterance_index":(%d+)'))
  if not idx then return nil end
  local m = cjson.encode({type = 'error', code = 'INTERNAL_ERROR', session_id = sid,
    message = 'the result of this utterance expired before it could be delivered',
    utterance_index = idx, details = {utterance_index = idx}})
  local rk = session_key(sid) .. ':results'
  if redis.call('HEXISTS', rk, idx) == 1 then redis.call('HSET', rk, idx, m) end
  return m
end

local function deliver(kind, id, msg, audio, seq, tp, job, own, tail)
  tp = tp or TP
  local info = owner_of(kind, id)
  local owner = info[1]
  if not owner or owner == '' then return end
  -- A session's terminal message (numbered: seq) from a background script (SELF_INBOX) goes
  -- to the caller's own inbox even when the caller holds the session: that script's reply
  -- may be lost (a Redis stall past the call's timeout) after it committed, and nothing
  -- would send the message again (the writer orders both paths by seq). The caller not
  -- listed (Redis wiped, not yet beaten): in the reply, as before.
  if owner == ME and not (SELF_INBOX and seq and kind == 'session' and listed(info, owner)) then
    local blob = nil
    if audio and not own then
      BLOBS[#BLOBS + 1] = payload(audio)
      blob = #BLOBS
    end
    local t, town = nil, nil
    if tail and tail.own then
      town = '1'
    elseif tail then
      local body = redis.call('GET', tail.key)
      if body then
        BLOBS[#BLOBS + 1] = body
        t = #BLOBS
      else
        -- never a message cut after its header: the log outlived its body (evicted, or
        -- held past its TTL). The index still gets a terminal message, so the number it
        -- holds is no gap the connection would wait on (body_gone)
        count('body_missing')
        msg = body_gone(id, msg)
        if not msg then return end
      end
    end
    BLOBS[#BLOBS + 1] = msg
    OUT[#OUT + 1] = {k = kind, id = id, owner = owner, conn = info[2], m = #BLOBS, blob = blob,
      seq = seq, tp = tp, job = job, own = (audio and own) and '1' or nil, t = t, town = town}
  elseif info.alive ~= false and listed(info, owner) then
    local env = cmsgpack.pack({k = kind, id = id, conn = info[2] or '', msg = msg, seq = seq or 0,
      tp = tp, job = job or ''})
    if audio then
      redis.call('XADD', P .. 'inbox:' .. owner, 'MAXLEN', '~', CFG.inbox_max, '*', 'env', env, 'audio',
        payload(audio))
    elseif tail then
      -- the body stays where it is: the consumer reads it (one GET per batch of entries)
      redis.call('XADD', P .. 'inbox:' .. owner, 'MAXLEN', '~', CFG.inbox_max, '*', 'env', env,
        'tail_key', tail.key)
    else
      redis.call('XADD', P .. 'inbox:' .. owner, 'MAXLEN', '~', CFG.inbox_max, '*', 'env', env)
    end
  else
    -- Dropped: the owner is not listed. The first drop for this target in this call marks
    -- a takeover's tombstone `lost` (XX: only where a takeover left one; an owner unlisted
    -- since Redis was wiped held nothing that survived, and no lapse is due).
    if info.alive == nil then
      redis.call('SET', P .. 'taken:' .. owner, 'lost ' .. NOWS, 'XX', 'PX', TOMBSTONE_MS)
    end
    info.alive = false
  end
end

-- ui_event(job, event, status, code): a UI hint for the job's session (best-effort). The
-- job's part of the JSON is encoded once per call and kept on `job` (as `ui_json`, never
-- written to Redis; false: the session is not the job's, job_session); each event appends
-- its few fields (event and status are constants).
local function ui_event(job, event, status, code)
  local head = job.ui_json
  if head == false then return end
  if not head then
    if not job_session(job) then
      job.ui_json = false
      return
    end
    head = string.sub(cjson.encode({type = 'ui_event', trace_id = job.trace_id,
      session_id = job.session, job_id = job.id, utterance_index = tonumber(job.idx)}), 1, -2)
    job.ui_json = head
  end
  local tail = code and (',"error_code":' .. cjson.encode(code)) or ''
  deliver('session', job.session, head .. ',"event":"' .. event .. '","status":"' .. status
    .. '","elapsed_ms":' .. string.format('%d', math.max(0, NOW - (job.created_at or NOW))) .. tail .. '}')
end

-- ui_events_ok(job, events, mine): the UI hints `events` (event names, csv; status ok) for
-- the job's session at once. For a session connected to the calling instance they are one
-- entry `{k = 'ui', ev = "E1,E2", ...}` the instance turns into the `ui_event` messages
-- (no JSON built here: ~5 µs of Redis per message); elsewhere each travels as its message.
-- Its `el` (ms since the job was created) is a number, never below 0: a Redis clock that went
-- back (a failover to a replica behind it) must not make a reply the instance cannot read.
-- `mine` (optional): job_session(job), when the caller knows it.
local function ui_events_ok(job, events, mine)
  if mine == nil then mine = job_session(job) end
  if not mine then return end
  local info = owner_of('session', job.session)
  if info[1] ~= ME then
    for e in string.gmatch(events, '[^,]+') do ui_event(job, e, 'ok') end
    return
  end
  OUT[#OUT + 1] = {k = 'ui', id = job.session, owner = ME, conn = info[2], job = job.id,
    tr = job.trace_id, ix = job.idx, ev = events,
    el = math.max(0, NOW - (job.created_at or NOW))}
end
