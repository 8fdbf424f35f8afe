#!/usr/bin/env bash
# bench/profile.sh BIN OUTDIR [redis|instance|both]: a saturation run (ab.sh's SAT workload,
# 25 s) on a fresh redis-server and one instance, with `perf record` for 12 s on
# redis-server and/or the instance (cpu-clock sampling, -F 499). REDIS_BIN picks the
# redis-server (Debian's is stripped: build one with symbols from the source package,
# `apt-get source redis && make USE_SYSTEM_JEMALLOC=yes BUILD_TLS=no`); PERF_CG the call
# graph option (default -g; "--call-graph dwarf,32768" for a Redis built without frame
# pointers); SIM_EXTRA options added to the simulator (e.g. "--tts-bytes 32768"). Writes OUTDIR/{redis,inst}.data, cmdstats.txt and cpu.txt; read with
# `perf report -i OUTDIR/redis.data --children --sort symbol`.
set -euo pipefail
BIN=$1 OUT=$2 WHAT=${3:-both}
REDIS_BIN=${REDIS_BIN:-redis-server}
CG=${PERF_CG:--g}
cd "$(dirname "$0")/.."
. bench/lib.sh
mkdir -p "$OUT/redis"
OUT=$(cd "$OUT" && pwd)
dev_credentials "$BIN"
trap cleanup EXIT
rp=$(free_port) ip=$(free_port)
"$REDIS_BIN" --port "$rp" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT/redis" \
  --logfile "$OUT/redis/redis.log" &
STARTED+=($!)
RPID=$!
for _ in $(seq 1 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
start_instance "$BIN" "$OUT/inst.log" "$ip" "redis://127.0.0.1:$rp"
IPID=$INSTANCE_PID
read -r -a EXTRA <<<"${SIM_EXTRA:-}"
"$BIN" sim --quiet --json --url "ws://127.0.0.1:$ip" --nodes 20 --capacity 16 --delay-ms 0-0 \
  --sessions 50 --window 4 --interval-ms 0 --utterances 1000000 --duration-s 25 --grace-s 10 \
  "${EXTRA[@]}" \
  >"$OUT/sat.json" &
SIM=$!
sleep 6
redis-cli -p "$rp" config resetstat >/dev/null
rc0=$(redis_cpu "$rp")
t0=$(cpu_ticks "$IPID")
# shellcheck disable=SC2086 # CG is a list of perf options
case $WHAT in
  redis) perf record -F 499 $CG -o "$OUT/redis.data" -p "$RPID" -- sleep 12 2>/dev/null ;;
  instance) perf record -F 499 $CG -o "$OUT/inst.data" -p "$IPID" -- sleep 12 2>/dev/null ;;
  both)
    perf record -F 499 $CG -o "$OUT/redis.data" -p "$RPID" -- sleep 12 2>/dev/null &
    perf record -F 499 $CG -o "$OUT/inst.data" -p "$IPID" -- sleep 12 2>/dev/null
    wait $! || true
    ;;
esac
rc1=$(redis_cpu "$rp")
t1=$(cpu_ticks "$IPID")
redis-cli -p "$rp" info commandstats | tr -d '\r' >"$OUT/cmdstats.txt"
jobs=$(cmdstat "$rp" 'evalsha|fcall' calls)
wait "$SIM" || true
{
  echo "in the 12 s window: script calls (FCALL) $jobs (≈ 2 per job)"
  echo "Redis CPU s: $(echo "$rc1 - $rc0" | bc -l)  instance CPU s: $(echo "($t1 - $t0) / $CLK_TCK" | bc -l)"
  jq -c '{results, results_per_s}' "$OUT/sat.json"
} | tee "$OUT/cpu.txt"
