#!/usr/bin/env bash
# bench/ab.sh OLD_BIN NEW_BIN [ROUNDS]: two builds of switchyard side by side in one run, on
# the same workload, alternating (A B B A ...) so machine noise hits both alike. Each round,
# each build gets a fresh redis-server and one instance: a 10 s saturation run (closed loop)
# and a 10 s open-loop run at a fixed rate, both driven by NEW_BIN's simulator. Prints a
# markdown table of medians and the ratio new/old.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OLD=$1 NEW=$2 ROUNDS=${3:-3}
# Both builds get the secret (one from before access control ignores it and runs open);
# NEW's simulator presents the tokens.
dev_credentials "$NEW"
WORK=$(mktemp -d)
trap cleanup EXIT
SAT=(--nodes 20 --capacity 16 --delay-ms 0-0 --sessions 50 --window 4 --interval-ms 0
  --utterances 1000000 --duration-s 10 --grace-s 10)
LAT=(--nodes 20 --capacity 16 --delay-ms 0-0 --sessions 50 --interval-ms 80
  --utterances 1000000 --duration-s 10 --grace-s 10)

run_one() { # run_one NAME BIN ROUND
  local name=$1 bin=$2 r=$3 rp ip
  rp=$(free_port) ip=$(free_port)
  start_redis "$WORK/redis-$name-$r" "$rp"
  local redis_pid=$REDIS_PID
  start_instance "$bin" "$WORK/$name-$r.log" "$ip" "redis://127.0.0.1:$rp"
  local inst=$INSTANCE_PID
  redis-cli -p "$rp" config resetstat >/dev/null
  "$NEW" sim --quiet --json --url "ws://127.0.0.1:$ip" "${SAT[@]}" >"$WORK/sat-$name-$r.json"
  local us calls
  us=$(cmdstat "$rp" evalsha usec)
  "$NEW" sim --quiet --json --url "ws://127.0.0.1:$ip" "${LAT[@]}" >"$WORK/lat-$name-$r.json"
  echo "$us" >"$WORK/us-$name-$r"
  stop "$inst"
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for n in $order; do
    log "round $r: $n"
    if [ "$n" = old ]; then run_one old "$OLD" "$r"; else run_one new "$NEW" "$r"; fi
  done
done

val() { jq -r "$2" "$WORK/$1.json"; }
series() { for r in $(seq 1 "$ROUNDS"); do eval "$1"; done; }
row() { # row LABEL OLD_VALUES NEW_VALUES
  local o n
  o=$(median $2) n=$(median $3)
  printf '| %s | %.3f | %.3f | %.2f × |\n' "$1" "$o" "$n" "$(echo "$n / $o" | bc -l)"
}
thr() { series "val sat-$1-\$r .results_per_s"; }
usj() { series "echo \"\$(cat $WORK/us-$1-\$r) / \$(val sat-$1-\$r .results)\" | bc -l"; }
d50() { series "val lat-$1-\$r .dispatch.p50_ms"; }
d99() { series "val lat-$1-\$r .dispatch.p99_ms"; }
echo "| median of $ROUNDS alternating rounds | old | new | new / old |"
echo "|---|---|---|---|"
row "saturation, completed jobs/s" "$(thr old)" "$(thr new)"
row "Redis µs in EVALSHA per job (saturation)" "$(usj old)" "$(usj new)"
row "dispatch p50 ms (open loop, 625 utterances/s)" "$(d50 old)" "$(d50 new)"
row "dispatch p99 ms (open loop, 625 utterances/s)" "$(d99 old)" "$(d99 new)"
