-- epoch_after(recorded, floor): the epoch of a commit that gives an id (a node id, a session)
-- to a connection: above the record's `epoch` field, above the caller's floor (the epoch of
-- the id's live binding on its instance) and at least the Redis clock in ms. The clock is
-- what keeps a commit ahead of one Redis lost: after a failover without the last commit,
-- the record's epoch is the one before it and the floor covers only the caller's live
-- binding, not a pending one of that lost commit, which would otherwise share the new
-- commit's epoch (and the reply that arrived last would win). ≤ 14 digits for centuries,
-- so it is a whole number a double holds exactly (the reply packs it as an integer).
-- (Requires ctx.)
local function epoch_after(recorded, floor)
  return math.max(tonumber(recorded or '0') or 0, floor, NOW - 1) + 1
end
