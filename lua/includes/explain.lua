-- The routing explanation of a dispatch (`route:<attempt>` on the job; docs/redis-keys.md
-- "Job routing explanation"): which nodes pick.lua looked at and why each was or was not
-- taken. Nothing here reads or writes Redis. (Requires ctx.)
-- A compact string built while choosing, one table.concat, no cjson:
--   seg>node=verdict:reserved/capacity,node=verdict...|seg>...
-- The chosen node is named in front of it (assign), so its entry keeps its verdict `ok`
-- (the reader marks it chosen: no rewrite here). `why` holds one short string per entry
-- in its array part; nil when CFG.explain is off (then nothing is built).
-- bench/explain-micro.sh measures what this costs per dispatch.
local ROUTE_MAX = 32 -- node entries per attempt at most; beyond, ",+N" says how many more

local function explainer()
  if CFG.explain == 0 then return nil end
  return {k = 0, n = 0, more = 0, sep = '', label = '', ok = {}}
end

-- segment(why, label): start the entries of one candidate pool (or turn / affinity).
local function segment(why, label)
  if not why then return end
  why.k = why.k + 1
  why[why.k] = (why.k > 1 and '|' or '') .. label .. '>'
  why.sep, why.label = '', label
end

-- explain(why, nid, verdict, reserved, cap): one node looked at.
local function explain(why, nid, verdict, reserved, cap)
  if not why then return end
  if why.n >= ROUTE_MAX then
    why.more = why.more + 1
    return
  end
  why.n, why.k = why.n + 1, why.k + 1
  local entry = reserved and (nid .. '=' .. verdict .. ':' .. reserved .. '/' .. cap)
    or (nid .. '=' .. verdict)
  why[why.k] = why.sep .. entry
  why.sep = ','
  if verdict == 'ok' then why.ok[nid] = {why.label, entry} end
end

-- explain_wait(why, jid): the job waits behind the turn's earlier part `jid` (a
-- `turn_wait` step whose one entry is that part's job id).
local function explain_wait(why, jid)
  if not why then return end
  segment(why, 'turn_wait')
  why.k = why.k + 1
  why[why.k] = jid
end

-- route_compact(why, nid): the explanation as a record that finishes on this attempt keeps
-- it (ctx.lua compact_route: the chosen node's entry in its segment, the others counted),
-- built from the entries while they are at hand, so the result needs no pattern matching
-- over the whole text. nil when off or when the node's entry was not recorded.
local function route_compact(why, nid)
  local e = why and why.ok[nid]
  if not e then return nil end
  local others = why.n + why.more - 1
  if others > 0 then return '- - ' .. e[1] .. '>' .. e[2] .. ',+' .. dec(others) end
  return '- - ' .. e[1] .. '>' .. e[2]
end

-- route_text(why): the explanation as one string ("" when off).
local function route_text(why)
  if not why then return '' end
  if why.more > 0 then
    why.k = why.k + 1
    why[why.k] = ',+' .. why.more
  end
  return table.concat(why, '', 1, why.k)
end
