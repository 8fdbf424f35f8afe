#!/usr/bin/env bash
# bench/floor.sh BIN [SECONDS]: what the commands the scripts issue cost per job at
# saturation, by themselves (issue 14 item 3's floor). A saturation run (ab.sh's shape: 20
# instant nodes of capacity 16, 50 sessions with a window of 4) on a fresh redis-server and
# one instance; `INFO commandstats` reset after a 3 s warm-up, then divided by the completed
# jobs. commandstats counts a command a script issues under its own name (its time in C,
# not the way back into Lua) and again inside `fcall`; the staging `SET` is the instance's
# own. REDIS_SERVER: another server binary (e.g. Valkey built from source).
set -euo pipefail
BIN=$1 SECS=${2:-10}
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=$(mktemp -d)
dev_credentials "$BIN"
trap cleanup EXIT
rp=$(free_port) ip=$(free_port)
start_redis "$OUT/redis" "$rp"
start_instance "$BIN" "$OUT/inst.log" "$ip" "redis://127.0.0.1:$rp"
sat() {
  "$BIN" sim --quiet --json --url "ws://127.0.0.1:$ip" --nodes 20 --capacity 16 --delay-ms 0-0 \
    --sessions 50 --window 4 --interval-ms 0 --utterances 1000000 --duration-s "$1" --grace-s 10
}
sat 3 >/dev/null
redis-cli -p "$rp" config resetstat >/dev/null
sat "$SECS" >"$OUT/sim.json"
redis-cli -p "$rp" info commandstats | tr -d '\r' >"$OUT/cs.txt"
jobs=$(jq .results "$OUT/sim.json")
echo "$jobs jobs in $SECS s; per job:"
echo "| command | calls per job | µs per job |"
echo "|---|---|---|"
rows() { awk -F'[:,=]' -v J="$jobs" '/^cmdstat_/ { n = $1; sub("cmdstat_", "", n); print n, $3 / J, $5 / J }' "$OUT/cs.txt"; }
rows | awk '$1 != "fcall" && $2 >= 0.005 { printf "| %s | %.2f | %.2f |\n", $1, $2, $3 }' | sort -t'|' -k4 -g -r
rows | awk '$1 == "fcall" { f = $3; c = $2 } $1 != "fcall" && $1 != "set" { s += $3 }
  END { printf "| **all the scripts issue** (all but fcall and the staging set) | | **%.1f** |\n", s
        printf "| fcall: the scripts, their Lua and their commands | %.2f | %.1f |\n", c, f }'
