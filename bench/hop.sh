#!/usr/bin/env bash
# bench/hop.sh BIN ROUNDS SETTING_A SETTING_B: the cross-instance hop (make bench §5: 25
# sessions on instance A with their nodes on A, next to 25 on A with their nodes on B, and
# make bench's instance settings) under two instance settings, alternating, a fresh
# redis-server and two instances per run. SETTING_*: one VAR=value for both instances, e.g.
# SWITCHYARD_INSTANCE__WORKER_THREADS=1. RATE: utterances/s per side (default 535). Prints
# each run's p50s and the added end-to-end p50.
set -euo pipefail
BIN=$1 ROUNDS=$2 SA=$3 SB=$4 RATE=${RATE:-535}
cd "$(dirname "$0")/.."
. bench/lib.sh
dev_credentials "$BIN"
WORK=$(mktemp -d)
trap 'cleanup; rm -rf "$WORK"' EXIT
# as bench/run.sh: short drains, node heartbeat 5 s
SETTINGS=(SWITCHYARD_INSTANCE__DRAIN_DELAY_MS=100 SWITCHYARD_INSTANCE__DRAIN_GRACE_MS=500
  SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS=5000)
iv=$(printf '%.0f' "$(echo "25 * 1000 / $RATE" | bc -l)")
X=(--nodes 10 --capacity 16 --delay-ms 0-0 --sessions 25 --interval-ms "$iv"
  --utterances 1000000 --duration-s 10 --grace-s 10)
one() { # one LABEL SETTING RUN
  local label=$1 set=$2 r=$3 dir rp pa pb a b
  dir="$WORK/$label-$r"
  mkdir -p "$dir"
  rp=$(free_port)
  start_redis "$dir/redis" "$rp"
  local rpid=$REDIS_PID
  pa=$(free_port)
  start_instance "$BIN" "$dir/a.log" "$pa" "redis://127.0.0.1:$rp" "${SETTINGS[@]}" "$set"
  a=$INSTANCE_PID
  pb=$(free_port)
  start_instance "$BIN" "$dir/b.log" "$pb" "redis://127.0.0.1:$rp" "${SETTINGS[@]}" "$set"
  b=$INSTANCE_PID
  "$BIN" sim --quiet --json --node-url "ws://127.0.0.1:$pa" --session-url "ws://127.0.0.1:$pa" \
    --langs zh,en "${X[@]}" >"$dir/same.json" &
  local p1=$!
  "$BIN" sim --quiet --json --node-url "ws://127.0.0.1:$pb" --session-url "ws://127.0.0.1:$pa" \
    --langs ja,ko "${X[@]}" >"$dir/across.json" &
  local p2=$!
  local ok=0
  wait "$p1" || ok=1
  wait "$p2" || ok=1
  stop "$a" "$b"
  stop "$rpid"
  [ "$ok" = 0 ] || die "a simulator failed in run $r ($set): see $dir"
  local le re
  le=$(jq .end_to_end.p50_ms "$dir/same.json") re=$(jq .end_to_end.p50_ms "$dir/across.json")
  printf '%s run %s: dispatch p50 %s (same) %s (across); end-to-end p50 %s / %s; hop %+.3f ms\n' \
    "$set" "$r" "$(jq .dispatch.p50_ms "$dir/same.json")" "$(jq .dispatch.p50_ms "$dir/across.json")" \
    "$le" "$re" "$(echo "$re - $le" | bc -l)"
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one a "$SA" "$r"; one b "$SB" "$r"; else one b "$SB" "$r"; one a "$SA" "$r"; fi
done
