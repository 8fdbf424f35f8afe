#!/usr/bin/env bash
# bench/explain-micro.sh [N]: the Redis time the routing explanation adds to one dispatch,
# measured inside Redis, free of the load generator's noise. One EVAL inlines the real
# lua/includes/explain.lua (with ctx) and runs N times what a dispatch
# of a 3-node look does for its explanation: build it (explainer, segment, explain x3,
# route_text) and write it with the HSET the dispatch does anyway, plus the
# attempt's end field; and N times the same HSET without the two fields (CFG.explain = 0).
# Prints µs per dispatch for both and the difference. Needs redis-server and redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-200000}
WORK=$(mktemp -d)
trap 'cleanup; rm -rf "$WORK"' EXIT
RP=$(free_port)
start_redis "$WORK/redis" "$RP"
inline() { awk '/^--!include /{f="lua/includes/" $2 ".lua"; while ((getline l < f) > 0) print l; close(f); next} {print}'; }
cat >"$WORK/micro.lua" <<'LUA'
local K0, A0 = KEYS, ARGV -- ctx.lua declares its own KEYS, ARGV (set by begin)
--!include ctx
--!include explain
-- the call context begin() sets up in the library; configuration all 0 but `explain`
local v = {}
for i, name in ipairs(CFG_NAMES) do v[i] = name == 'explain' and tonumber(A0[3]) or 0 end
begin(K0, {A0[1], A0[2], struct.pack('<' .. string.rep('d', #CFG_NAMES), unpack(v)), '1 '})
local n = tonumber(A0[4])
local t0 = redis.call('TIME')
for i = 1, n do
  local why = explainer()
  segment(why, 'pub:zh:en')
  explain(why, 'node-3FA2B9C1', 'full', '4', '4')
  explain(why, 'node-77C01D2E', 'ok', '1', '4')
  explain(why, 'node-0B1E5A44', 'tried')
  local text = route_text(why)
  if why then
    redis.call('HSET', KEYS[1], 'state', 'DISPATCHED', 'node', 'node-77C01D2E',
      'route:1', i .. ' node-77C01D2E ' .. text, 'end:1', i .. ' ok')
  else
    redis.call('HSET', KEYS[1], 'state', 'DISPATCHED', 'node', 'node-77C01D2E')
  end
end
local t1 = redis.call('TIME')
return (t1[1] - t0[1]) * 1000000 + (t1[2] - t0[2])
LUA
SCRIPT=$(inline <"$WORK/micro.lua")
run() { # run EXPLAIN(0|1): total µs of N iterations
  redis-cli -p "$RP" EVAL "$SCRIPT" 1 '{bench}:job:x' '{bench}:' bench "$1" "$N"
}
on=() off=()
for _ in 1 2 3; do off+=("$(run 0)"); on+=("$(run 1)"); done
OFF=$(median "${off[@]}") ON=$(median "${on[@]}")
printf '| explanation | µs per dispatch (median of 3 × %d) |\n|---|---|\n' "$N"
printf '| off (`jobs.explain = false`) | %.3f |\n' "$(echo "$OFF / $N" | bc -l)"
printf '| on | %.3f |\n' "$(echo "$ON / $N" | bc -l)"
printf '| added by the explanation | %.3f |\n' "$(echo "($ON - $OFF) / $N" | bc -l)"
