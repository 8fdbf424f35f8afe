#!/usr/bin/env bash
# bench/ab.sh OLD_BIN NEW_BIN [ROUNDS]: two builds of switchyard side by side in one run, on
# the same workload, alternating (A B B A ...) so machine noise hits both alike. Each round,
# each build gets a fresh redis-server and one instance: a 10 s saturation run (closed loop)
# and a 10 s open-loop run at a fixed rate, then two sparse runs (1 and 10 sessions at one
# utterance per second each, instant nodes, SPARSE_S s each; then 1 session sending each
# utterance when the previous result arrived, 200 times), all driven by NEW_BIN's
# simulator (SIM_EXTRA: options added to every simulator run). SPARSE_ONLY=1 runs only the three sparse runs; SAT_ONLY=1 only the saturation run
# (with the per-job costs: Redis µs in script calls (EVALSHA or FCALL), Redis process CPU, instance CPU, bytes per
# finished job record).
# OLD_REDIS / NEW_REDIS: the redis-server binary each side runs on (default: the one on PATH),
# to compare servers with one build passed as both OLD_BIN and NEW_BIN.
# Prints a markdown table of medians and the ratio new/old.
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
SPARSE_S=${SPARSE_S:-10} SPARSE_ONLY=${SPARSE_ONLY:-0} SAT_ONLY=${SAT_ONLY:-0}
SPARSE1=(--nodes 1 --capacity 4 --delay-ms 0-0 --sessions 1 --interval-ms 1000
  --utterances 1000000 --duration-s "$SPARSE_S" --grace-s 5)
SERIAL=(--nodes 1 --capacity 4 --delay-ms 0-0 --sessions 1 --window 1 --interval-ms 0
  --utterances 200 --duration-s 30 --grace-s 5)
SPARSE10=(--nodes 4 --capacity 4 --delay-ms 0-0 --sessions 10 --interval-ms 1000
  --utterances 1000000 --duration-s "$SPARSE_S" --grace-s 5)
# SIM_EXTRA: simulator options added to every run, e.g. SIM_EXTRA="--tts-bytes 32768".
read -r -a EXTRA <<<"${SIM_EXTRA:-}"
SAT+=("${EXTRA[@]}") LAT+=("${EXTRA[@]}") SPARSE1+=("${EXTRA[@]}") SERIAL+=("${EXTRA[@]}")
SPARSE10+=("${EXTRA[@]}")

run_one() { # run_one NAME BIN ROUND
  local name=$1 bin=$2 r=$3 rp ip
  rp=$(free_port) ip=$(free_port)
  local server=${OLD_REDIS:-redis-server}
  [ "$name" = new ] && server=${NEW_REDIS:-redis-server}
  REDIS_SERVER=$server start_redis "$WORK/redis-$name-$r" "$rp"
  local redis_pid=$REDIS_PID
  start_instance "$bin" "$WORK/$name-$r.log" "$ip" "redis://127.0.0.1:$rp"
  local inst=$INSTANCE_PID
  local url="ws://127.0.0.1:$ip"
  if [ "$SPARSE_ONLY" != 1 ]; then
    redis-cli -p "$rp" config resetstat >/dev/null
    local t0 t1
    t0=$(cpu_ticks "$inst")
    # Redis process CPU (INFO cpu): unlike commandstats usec (wall time inside each call),
    # not inflated when other work on the machine preempts Redis.
    local rc0 rc1
    rc0=$(redis_cpu "$rp")
    "$NEW" sim --quiet --json --url "$url" "${SAT[@]}" >"$WORK/sat-$name-$r.json"
    rc1=$(redis_cpu "$rp")
    t1=$(cpu_ticks "$inst")
    echo "($rc1 - $rc0) * 1000000" | bc -l >"$WORK/rcpu-$name-$r"
    cmdstat "$rp" 'evalsha|fcall' usec >"$WORK/us-$name-$r"
    cmdstat "$rp" 'evalsha|fcall' calls >"$WORK/calls-$name-$r"
    echo "($t1 - $t0) * 1000000 / $CLK_TCK" | bc -l >"$WORK/icpu-$name-$r"
    # MEMORY USAGE of finished job records (median of up to 50), and the result log
    { redis-cli -p "$rp" --scan --pattern '*:job:*' || true; } | grep -v ':audio$' | head -200 |
      while read -r k; do
        if [ "$(redis-cli -p "$rp" hget "$k" state)" = FINISHED ]; then
          redis-cli -p "$rp" memory usage "$k" samples 0
        fi
      done | head -50 >"$WORK/jobmem-$name-$r" || true
  fi
  if [ "$SAT_ONLY" != 1 ] && [ "$SPARSE_ONLY" != 1 ]; then
    "$NEW" sim --quiet --json --url "$url" "${LAT[@]}" >"$WORK/lat-$name-$r.json"
  fi
  if [ "$SAT_ONLY" = 1 ]; then
    stop "$inst"
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    return 0
  fi
  "$NEW" sim --quiet --json --url "$url" "${SPARSE1[@]}" >"$WORK/sparse1-$name-$r.json"
  "$NEW" sim --quiet --json --url "$url" "${SPARSE10[@]}" >"$WORK/sparse10-$name-$r.json"
  "$NEW" sim --quiet --json --url "$url" "${SERIAL[@]}" >"$WORK/sparse0-$name-$r.json"
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
upc() { series "echo \"\$(cat $WORK/us-$1-\$r) / \$(cat $WORK/calls-$1-\$r)\" | bc -l"; }
icj() { series "echo \"\$(cat $WORK/icpu-$1-\$r) / \$(val sat-$1-\$r .results)\" | bc -l"; }
jmem() { series "median \$(cat $WORK/jobmem-$1-\$r)"; }
rcj() { series "echo \"\$(cat $WORK/rcpu-$1-\$r) / \$(val sat-$1-\$r .results)\" | bc -l"; }
d50() { series "val lat-$1-\$r .dispatch.p50_ms"; }
d99() { series "val lat-$1-\$r .dispatch.p99_ms"; }
sp() { series "val sparse$1-$2-\$r .$3"; } # sp SESSIONS BUILD FIELD
echo "| median of $ROUNDS alternating rounds | old | new | new / old |"
echo "|---|---|---|---|"
if [ "$SPARSE_ONLY" != 1 ]; then
  row "saturation, completed jobs/s" "$(thr old)" "$(thr new)"
  row "Redis µs in script calls (EVALSHA or FCALL) per job (saturation)" "$(usj old)" "$(usj new)"
  row "Redis µs per script call (saturation)" "$(upc old)" "$(upc new)"
  row "instance CPU µs per job (saturation)" "$(icj old)" "$(icj new)"
  row "bytes per finished job record (MEMORY USAGE)" "$(jmem old)" "$(jmem new)"
  row "Redis process CPU µs per job (INFO cpu, saturation)" "$(rcj old)" "$(rcj new)"
fi
if [ "$SAT_ONLY" != 1 ] && [ "$SPARSE_ONLY" != 1 ]; then
  row "dispatch p50 ms (open loop, 625 utterances/s)" "$(d50 old)" "$(d50 new)"
  row "dispatch p99 ms (open loop, 625 utterances/s)" "$(d99 old)" "$(d99 new)"
fi
[ "$SAT_ONLY" = 1 ] && exit 0
for n in 1 10 0; do
  case $n in
    0) what="1 session, one utterance after another (closed loop)" ;;
    *) what="$n session(s) at 1 utterance/s each" ;;
  esac
  for f in end_to_end.p50_ms end_to_end.p99_ms dispatch.p50_ms dispatch.p99_ms; do
    row "$what: ${f%%.*} ${f#*.}" "$(sp "$n" old "$f")" "$(sp "$n" new "$f")"
  done
done
