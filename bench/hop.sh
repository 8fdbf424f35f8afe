#!/usr/bin/env bash
# bench/hop.sh BIN ROUNDS SETTING_A SETTING_B: the cross-instance hop (make bench §5: 25
# sessions on instance A with their nodes on A, next to 25 on A with their nodes on B) under
# two instance settings, alternating, a fresh redis-server and two instances per run.
# SETTING_*: one VAR=value for both instances, e.g. SWITCHYARD_INSTANCE__WORKER_THREADS=1.
# RATE: utterances/s per side (default 535). Prints each run's p50s and the added
# end-to-end p50.
set -euo pipefail
BIN=$1 ROUNDS=$2 SA=$3 SB=$4 RATE=${RATE:-535}
cd "$(dirname "$0")/.."
. bench/lib.sh
dev_credentials "$BIN"
WORK=$(mktemp -d)
trap cleanup EXIT
iv=$(printf '%.0f' "$(echo "25 * 1000 / $RATE" | bc -l)")
X=(--nodes 10 --capacity 16 --delay-ms 0-0 --sessions 25 --interval-ms "$iv"
  --utterances 1000000 --duration-s 10 --grace-s 10)
one() { # one SETTING RUN
  local set=$1 r=$2 rp pa pb a b
  rp=$(free_port) pa=$(free_port) pb=$(free_port)
  start_redis "$WORK/redis-$r-${set%%=*}" "$rp"
  local rpid=$REDIS_PID
  start_instance "$BIN" "$WORK/a-$r.log" "$pa" "redis://127.0.0.1:$rp" "$set"
  a=$INSTANCE_PID
  start_instance "$BIN" "$WORK/b-$r.log" "$pb" "redis://127.0.0.1:$rp" "$set"
  b=$INSTANCE_PID
  "$BIN" sim --quiet --json --node-url "ws://127.0.0.1:$pa" --session-url "ws://127.0.0.1:$pa" \
    --langs zh,en "${X[@]}" >"$WORK/l.json" &
  local p1=$!
  "$BIN" sim --quiet --json --node-url "ws://127.0.0.1:$pb" --session-url "ws://127.0.0.1:$pa" \
    --langs ja,ko "${X[@]}" >"$WORK/r.json" &
  local p2=$!
  wait "$p1" "$p2"
  kill "$a" "$b" "$rpid" 2>/dev/null || true
  local le re
  le=$(jq .end_to_end.p50_ms "$WORK/l.json") re=$(jq .end_to_end.p50_ms "$WORK/r.json")
  printf '%s run %s: dispatch p50 %s (same) %s (across); end-to-end p50 %s / %s; hop +%.3f ms\n' \
    "$set" "$r" "$(jq .dispatch.p50_ms "$WORK/l.json")" "$(jq .dispatch.p50_ms "$WORK/r.json")" \
    "$le" "$re" "$(echo "$re - $le" | bc -l)"
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one "$SA" "$r"; one "$SB" "$r"; else one "$SB" "$r"; one "$SA" "$r"; fi
done
