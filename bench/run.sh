#!/usr/bin/env bash
# `make bench`: reproducible benchmark runs on this machine, written to docs/benchmarks.md.
#
# Everything runs on 127.0.0.1 against a dedicated redis-server on a free port, with the
# release build copied aside (a rebuild during the run cannot change what is measured) and
# instances started as child processes; every process started here is stopped on exit.
# Phases (each bounded; ~8 min in all):
#   1. Redis-bound limit: redis-benchmark FCALL of a trivial function.
#   2. Saturation: one instance, nodes answering at once, closed loop (--window).
#   3. Dispatch overhead: open loop at 20 % of the saturation throughput.
#   4. Redis cost per job: INFO commandstats + /metrics deltas around a fixed workload.
#   5. Cross-instance hop: session on A / node on B next to both on A, in the same run.
#   6. Scale: 10k heartbeating nodes + ~10k idle sessions on one instance (RSS, CPU).
#   7. Sparse traffic: 1 and 10 sessions at one utterance per second each, instant nodes
#      (the Nagle + delayed-ACK stall of issue 14 showed only here).
#   8. Routing explanation: Redis µs per job with jobs.explain off vs on (bench/explain.sh).
# Each figure is the median of RUNS runs (default 3); bench/report.sh writes the document.
# Environment: BIN (binary to measure), RUNS, OUT (default docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SRC_BIN=${BIN:-target/release/switchyard}
RUNS=${RUNS:-3}
OUT=${OUT:-docs/benchmarks.md}
WORK=target/bench
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in redis-server redis-cli redis-benchmark jq curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (make bench installs it)"
done
[ -x "$SRC_BIN" ] || die "$SRC_BIN not built (cargo build --release)"
rm -rf "$WORK" && mkdir -p "$WORK"
BIN=$WORK/switchyard
cp "$SRC_BIN" "$BIN"
dev_credentials "$BIN"
ulimit -n "$(ulimit -Hn)" # the scale phase holds ~20k sockets per process
STARTED_AT=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
KDAMOND_BEFORE=$(kdamond_ticks)
awk '{exit !($1 > 1.0)}' /proc/loadavg &&
  log "warning: load average $LOAD_BEFORE before the bench: other work will skew the figures"

RP=$(free_port)
start_redis "$WORK/redis" "$RP"
REDIS_URL="redis://127.0.0.1:$RP"
# Shorter drain so phases change quickly; node heartbeat 5 s (liveness 15 s).
SETTINGS=(SWITCHYARD_INSTANCE__DRAIN_DELAY_MS=100 SWITCHYARD_INSTANCE__DRAIN_GRACE_MS=500
  SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS=5000)

# sim NAME ARGS...: one quiet simulator run, JSON summary in $WORK/NAME.json.
sim() {
  local name=$1
  shift
  echo "switchyard sim $*" >"$WORK/$name.cmd"
  "$BIN" sim --quiet --json "$@" >"$WORK/$name.json" 2>"$WORK/$name.err" ||
    log "sim $name exited with status $? (see $WORK/$name.json)"
}
# j NAME FILTER: a field of a run's JSON summary.
j() { jq -r "$2" "$WORK/$1.json"; }
# The same field over runs NAME-1..NAME-RUNS, as arguments for median().
over_runs() { local r; for r in $(seq 1 "$RUNS"); do j "$1-$r" "$2"; done; }
list() { over_runs "$1" "$2" | awk '{printf "%s%.4g", (NR > 1 ? ", " : ""), $1}'; }
med() { median $(over_runs "$1" "$2"); }
fmt() { printf "%.${2:-2}f" "$1"; }
# Machine-wide busy CPU ticks (all cores).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# Per-script call counts of an instance, as "script count" lines.
script_calls() {
  curl -s "http://127.0.0.1:$1/metrics" |
    sed -n 's/^switchyard_script_calls_total{\(cell="[^"]*",\)\{0,1\}script="\([a-z_]*\)".* \([0-9]*\)$/\2 \3/p' |
    awk '{s[$1] += $2} END {for (k in s) print k, s[k]}' | sort
}
calls_of() { awk -v k="$2" '$1 == k {print $2; f = 1} END {if (!f) print 0}' "$1"; }

# ---- 1. Redis-bound limit -------------------------------------------------------------
log "1/7 redis-benchmark: FCALL of a trivial function"
redis-cli -p "$RP" function load replace \
  "#!lua name=bench_trivial
redis.register_function('trivial', function() return 1 end)" >/dev/null
EVAL_CMD="redis-benchmark -p PORT -q -n 200000 -c 50 fcall trivial 0"
EVALS=()
for r in $(seq 1 "$RUNS"); do
  EVALS+=("$(redis-benchmark -p "$RP" -q -n 200000 -c 50 fcall trivial 0 | tr '\r' '\n' |
    awk -F': ' '/requests per second/ {split($2, a, " "); v = a[1]} END {print v}')")
done
TRIVIAL_PER_S=$(median "${EVALS[@]}")

# ---- 2. Saturation ----------------------------------------------------------------------
PA=$(free_port)
start_instance "$BIN" "$WORK/instance-a.log" "$PA" "$REDIS_URL" "${SETTINGS[@]}"
A=$INSTANCE_PID
URL_A="ws://127.0.0.1:$PA"
log "2/7 saturation: 20 instant nodes (capacity 16), 50 sessions with window 4, 10 s x $RUNS"
SAT_ARGS=(--nodes 20 --capacity 16 --delay-ms 0-0 --sessions 50 --window 4 --interval-ms 0
  --utterances 1000000 --duration-s 10 --grace-s 10)
INST_CPU=() REDIS_CPU=() MACHINE_CPU=()
for r in $(seq 1 "$RUNS"); do
  i0=$(cpu_ticks "$A") r0=$(redis_cpu "$RP") m0=$(busy_ticks) t0=$(date +%s.%N)
  sim "sat-$r" --url "$URL_A" "${SAT_ARGS[@]}"
  i1=$(cpu_ticks "$A") r1=$(redis_cpu "$RP") m1=$(busy_ticks) t1=$(date +%s.%N)
  wall=$(echo "$t1 - $t0" | bc -l)
  INST_CPU+=("$(echo "($i1 - $i0) / $CLK_TCK / $wall * 100" | bc -l)")
  REDIS_CPU+=("$(echo "($r1 - $r0) / $wall * 100" | bc -l)")
  MACHINE_CPU+=("$(echo "($m1 - $m0) / $CLK_TCK / $wall * 100" | bc -l)")
done
SAT=$(med sat '.results_per_s')

# ---- 3. Dispatch overhead at 20 % load ---------------------------------------------------
RATE=$(echo "$SAT * 0.2" | bc -l)
IV=$(printf '%.0f' "$(echo "50 * 1000 / $RATE" | bc -l)")
log "3/7 latency at 20 % load: $(fmt "$RATE" 0) utterances/s (50 sessions, one every $IV ms each)"
LAT_ARGS=(--nodes 20 --capacity 16 --delay-ms 0-0 --sessions 50 --interval-ms "$IV"
  --utterances 1000000 --duration-s 10 --grace-s 10)
sd() { metric "$PA" "switchyard_script_duration_seconds_$1{cell=\"main\",script=\"$2\"}"; }
s0=$(sd sum submit) n0=$(sd count submit) q0=$(sd sum job_result) k0=$(sd count job_result)
for r in $(seq 1 "$RUNS"); do sim "lat-$r" --url "$URL_A" "${LAT_ARGS[@]}"; done
# Mean round trip of the two lingua-path scripts as the instance sees them (pool checkout,
# FCALL, reply decoding), for the what-bounds-it discussion.
SUBMIT_MS=$(echo "($(sd sum submit) - $s0) * 1000 / ($(sd count submit) - $n0)" | bc -l)
RESULT_MS=$(echo "($(sd sum job_result) - $q0) * 1000 / ($(sd count job_result) - $k0)" | bc -l)

# ---- 4. Redis cost per job ----------------------------------------------------------------
log "4/7 Redis cost per job: 50 sessions x 60 utterances (3000 jobs) x $RUNS"
COST_ARGS=(--nodes 20 --capacity 16 --delay-ms 0-0 --sessions 50 --window 2 --interval-ms 0
  --utterances 60 --duration-s 60 --grace-s 10)
for r in $(seq 1 "$RUNS"); do
  redis-cli -p "$RP" config resetstat >/dev/null
  script_calls "$PA" >"$WORK/cost-$r.calls0"
  rc0=$(redis_cpu "$RP") ic0=$(cpu_ticks "$A")
  sim "cost-$r" --url "$URL_A" "${COST_ARGS[@]}"
  rc1=$(redis_cpu "$RP") ic1=$(cpu_ticks "$A")
  redis-cli -p "$RP" info commandstats | tr -d '\r' >"$WORK/cost-$r.commandstats"
  script_calls "$PA" >"$WORK/cost-$r.calls1"
  jobs=$(j "cost-$r" '.results')
  d() { echo $(($(calls_of "$WORK/cost-$r.calls1" "$1") - $(calls_of "$WORK/cost-$r.calls0" "$1"))); }
  lingua=$(($(d submit) + $(d job_result)))
  ev_calls=$(cmdstat "$RP" 'evalsha|fcall' calls) ev_usec=$(cmdstat "$RP" 'evalsha|fcall' usec)
  pings=$(cmdstat "$RP" ping calls) all_usec=$(cmdstat "$RP" '.*' usec)
  jq -n --argjson jobs "$jobs" --argjson lingua "$lingua" --argjson ev "$ev_calls" \
    --argjson evu "$ev_usec" --argjson pings "$pings" --argjson all "$all_usec" \
    --argjson cpu "$(echo "($rc1 - $rc0) * 1000000" | bc -l)" \
    --argjson icpu "$(echo "($ic1 - $ic0) * 1000000 / $CLK_TCK" | bc -l)" '{
      instance_cpu_us_per_job: ($icpu / $jobs),
      lingua_scripts_per_job: ($lingua / $jobs), evalsha_per_job: ($ev / $jobs),
      round_trips_per_job: (($ev + $pings) / $jobs), evalsha_us_per_job: ($evu / $jobs),
      all_commands_us_per_job: ($all / $jobs), redis_cpu_us_per_job: ($cpu / $jobs)}' \
    >"$WORK/costx-$r.json"
done

# Redis memory a job leaves behind (issue 14): its record while it waits out
# jobs.record_ttl_ms, and its entries in the session's result log (the terminal message,
# TTS audio included, its time in :rtime and the idempotency entry in :jobs), kept
# session.result_retention_ms for resume. Steady state at R jobs/s holds R x (ttl x record
# + retention x log entries): that figure per (job/s).
JOB_TTL_MS=${SWITCHYARD_JOBS__RECORD_TTL_MS:-600000}
RETENTION_MS=${SWITCHYARD_SESSION__RESULT_RETENTION_MS:-120000}
# (the sampling pipelines end early on purpose: SIGPIPE upstream is not a failure)
job_records() {
  { redis-cli -p "$RP" --scan --pattern '*:job:*' || true; } | grep -v ':audio$' | head -300 |
    while read -r k; do
      if [ "$(redis-cli -p "$RP" hget "$k" state)" = FINISHED ]; then
        redis-cli -p "$RP" memory usage "$k" samples 0 || true
      fi
    done | head -50 || true
}
JOB_REC_B=$(median $(job_records))
# bytes per entry of a session's log key: MEMORY USAGE over entries, summed over 20 sessions
per_entry() { # per_entry SUFFIX LENCMD
  { redis-cli -p "$RP" --scan --pattern "*:session:*:$1" || true; } | head -20 |
    while read -r k; do
      echo "$(redis-cli -p "$RP" memory usage "$k" samples 0) $(redis-cli -p "$RP" "$2" "$k")"
    done | awk '{b += $1; n += $2} END {if (n) printf "%.1f\n", b / n; else print 0}'
}
LOG_RES_B=$(per_entry results hlen)
LOG_JOBS_B=$(per_entry jobs hlen)
LOG_RTIME_B=$(per_entry rtime zcard)
LOG_B=$(echo "$LOG_RES_B + $LOG_JOBS_B + $LOG_RTIME_B" | bc -l)
MEM_PER_RATE=$(echo "$JOB_TTL_MS / 1000 * $JOB_REC_B + $RETENTION_MS / 1000 * $LOG_B" | bc -l)
# The same with real-sized TTS audio: the sim's placeholder is 10 bytes, a real result
# carries seconds of speech. TTS_BYTES (default 32768, ~44 KB of base64) per result, on a
# Redis and instance of their own so only these results are sampled.
TTS_BYTES=${TTS_BYTES:-32768}
RP_TTS=$(free_port) P_TTS=$(free_port)
start_redis "$WORK/redis-tts" "$RP_TTS"
R_TTS=$REDIS_PID
start_instance "$BIN" "$WORK/instance-tts.log" "$P_TTS" "redis://127.0.0.1:$RP_TTS" "${SETTINGS[@]}"
I_TTS=$INSTANCE_PID
sim tts --url "ws://127.0.0.1:$P_TTS" --nodes 4 --capacity 16 --delay-ms 0-0 --sessions 10 \
  --window 2 --interval-ms 0 --utterances 40 --duration-s 30 --grace-s 5 --tts-bytes "$TTS_BYTES"
# A result with TTS audio is logged in two parts (docs/redis-keys.md): the entry and the
# string key session:<sid>:body:<idx>. Bytes of the body keys per entry, same 20 sessions.
per_entry_body() {
  { redis-cli -p "$RP" --scan --pattern "*:session:*:results" || true; } | head -20 |
    while read -r k; do
      n=$(redis-cli -p "$RP" hlen "$k") b=0
      for bk in $({ redis-cli -p "$RP" --scan --pattern "${k%:results}:body:*" || true; }); do
        b=$((b + $(redis-cli -p "$RP" memory usage "$bk" samples 0)))
      done
      echo "$b $n"
    done | awk '{b += $1; n += $2} END {if (n) printf "%.1f\n", b / n; else print 0}'
}
LOG_RES_TTS_B=$(echo "$(RP=$RP_TTS per_entry results hlen) + $(RP=$RP_TTS per_entry_body)" | bc -l)
stop "$I_TTS" "$R_TTS"
MEM_PER_RATE_TTS=$(echo "$JOB_TTL_MS / 1000 * $JOB_REC_B + $RETENTION_MS / 1000 * \
  ($LOG_B - $LOG_RES_B + $LOG_RES_TTS_B)" | bc -l)

# ---- 5. Cross-instance hop ----------------------------------------------------------------
PB=$(free_port)
start_instance "$BIN" "$WORK/instance-b.log" "$PB" "$REDIS_URL" "${SETTINGS[@]}"
B=$INSTANCE_PID
URL_B="ws://127.0.0.1:$PB"
XRATE=$(echo "$SAT * 0.1" | bc -l)
XIV=$(printf '%.0f' "$(echo "25 * 1000 / $XRATE" | bc -l)")
log "5/7 cross-instance hop: A->A (zh,en) next to A->B (ja,ko), $(fmt "$XRATE" 0)/s each"
X_ARGS=(--nodes 10 --capacity 16 --delay-ms 0-0 --sessions 25 --interval-ms "$XIV"
  --utterances 1000000 --duration-s 10 --grace-s 10)
for r in $(seq 1 "$RUNS"); do
  sim "local-$r" --node-url "$URL_A" --session-url "$URL_A" --langs zh,en "${X_ARGS[@]}" &
  p1=$!
  sim "remote-$r" --node-url "$URL_B" --session-url "$URL_A" --langs ja,ko "${X_ARGS[@]}" &
  p2=$!
  wait "$p1" "$p2"
done
ratio() { # ratio NAME FIELD: median over runs of remote/local
  local r v=()
  for r in $(seq 1 "$RUNS"); do
    v+=("$(echo "$(j "remote-$r" "$1") / $(j "local-$r" "$1")" | bc -l)")
  done
  median "${v[@]}"
}
# The hop's added end-to-end p50 (issue 14: ≤ 0.3 ms).
HOP_E50=$(echo "$(med remote .end_to_end.p50_ms) - $(med local .end_to_end.p50_ms)" | bc -l)

# ---- 7. Sparse traffic ---------------------------------------------------------------------
# One utterance per second per session, nodes answering at once: every message travels on
# an otherwise idle socket, where a missing TCP_NODELAY costs a delayed ACK (~40 ms).
SPARSE_S=${SPARSE_S:-20}
log "7/7 sparse traffic: 1 and 10 sessions, one utterance/s each, ${SPARSE_S} s x $RUNS"
SPARSE1_ARGS=(--nodes 1 --capacity 4 --delay-ms 0-0 --sessions 1 --interval-ms 1000
  --utterances 1000000 --duration-s "$SPARSE_S" --grace-s 5)
SPARSE10_ARGS=(--nodes 4 --capacity 4 --delay-ms 0-0 --sessions 10 --interval-ms 1000
  --utterances 1000000 --duration-s "$SPARSE_S" --grace-s 5)
# And the issue's reproduction: one session, each utterance sent when the previous result
# arrived (closed loop, window 1), 200 utterances.
SERIAL_ARGS=(--nodes 1 --capacity 4 --delay-ms 0-0 --sessions 1 --window 1 --interval-ms 0
  --utterances 200 --duration-s 30 --grace-s 5)
for r in $(seq 1 "$RUNS"); do
  sim "sparse1-$r" --url "$URL_A" "${SPARSE1_ARGS[@]}"
  sim "sparse10-$r" --url "$URL_A" "${SPARSE10_ARGS[@]}"
  sim "serial-$r" --url "$URL_A" "${SERIAL_ARGS[@]}"
done
stop "$A" "$B"

# ---- 6. Scale: 10k nodes + ~10k idle sessions ---------------------------------------------
HARD=$(ulimit -Hn)
SCALE_NODES=10000
# The instance holds one descriptor per connection; keep 200 for Redis, listener, files.
SCALE_SESSIONS=$((HARD - SCALE_NODES - 200))
[ "$SCALE_SESSIONS" -gt 10000 ] && SCALE_SESSIONS=10000
redis-cli -p "$RP" flushall >/dev/null
PS=$(free_port)
# (the simulated nodes share one fleet token: let it hold them all)
start_instance "$BIN" "$WORK/instance-scale.log" "$PS" "$REDIS_URL" "${SETTINGS[@]}" \
  SWITCHYARD_LIMITS__MAX_NODES_PER_CREDENTIAL=$SCALE_NODES
S=$INSTANCE_PID
URL_S="ws://127.0.0.1:$PS"
sleep 1
RSS0=$(rss_kib "$S")
# wait_conns KIND N: until the instance holds N connections of KIND (120 s at most).
wait_conns() {
  local t0=$SECONDS
  while [ "$(metric "$PS" "switchyard_connections{kind=\"$1\"}")" -lt "$2" ]; do
    if [ $((SECONDS - t0)) -ge 120 ]; then
      log "only $(metric "$PS" "switchyard_connections{kind=\"$1\"}") $1 connections after 120 s"
      echo "> 120"
      return 0
    fi
    sleep 0.5
  done
  echo $((SECONDS - t0))
}
log "6/7 scale: $SCALE_NODES nodes (heartbeat 5 s) + $SCALE_SESSIONS idle sessions on one instance"
NODES_CMD=(--url "$URL_S" --nodes "$SCALE_NODES" --sessions 0 --heartbeat-ms 5000 --duration-s 300
  --connect-concurrency 100)
echo "switchyard sim ${NODES_CMD[*]}" >"$WORK/scale-nodes.cmd"
"$BIN" sim --quiet --json "${NODES_CMD[@]}" >"$WORK/scale-nodes.json" 2>"$WORK/scale-nodes.err" &
SIM_NODES=$!
STARTED+=("$SIM_NODES")
T_NODES=$(wait_conns node "$SCALE_NODES")
sleep 6 # every node has heartbeated at least once more
RSS1=$(rss_kib "$S")
SESS_CMD=(--url "$URL_S" --nodes 0 --sessions "$SCALE_SESSIONS" --utterances 0 --duration-s 300
  --connect-concurrency 100)
echo "switchyard sim ${SESS_CMD[*]}" >"$WORK/scale-sessions.cmd"
"$BIN" sim --quiet --json "${SESS_CMD[@]}" >"$WORK/scale-sessions.json" 2>"$WORK/scale-sessions.err" &
SIM_SESSIONS=$!
STARTED+=("$SIM_SESSIONS")
T_SESSIONS=$(wait_conns session "$SCALE_SESSIONS")
sleep 2
NODES_UP=$(metric "$PS" 'switchyard_connections{kind="node"}')
SESSIONS_UP=$(metric "$PS" 'switchyard_connections{kind="session"}')
W_RSS=() W_CPU=() W_HB=() W_US=() W_CALLS=() W_RCPU=()
for w in $(seq 1 "$RUNS"); do
  redis-cli -p "$RP" config resetstat >/dev/null
  c0=$(cpu_ticks "$S") h0=$(metric "$PS" 'switchyard_messages_in_total{kind="node",detail="node_heartbeat"}')
  rc0=$(redis_cpu "$RP") t0=$(date +%s.%N)
  sleep 10
  c1=$(cpu_ticks "$S") h1=$(metric "$PS" 'switchyard_messages_in_total{kind="node",detail="node_heartbeat"}')
  rc1=$(redis_cpu "$RP") t1=$(date +%s.%N)
  wall=$(echo "$t1 - $t0" | bc -l)
  hb=$((h1 - h0))
  W_RSS+=("$(rss_kib "$S")")
  W_CPU+=("$(echo "($c1 - $c0) / $CLK_TCK / $wall * 100" | bc -l)")
  W_HB+=("$(echo "$hb / $wall" | bc -l)")
  W_US+=("$(echo "$(cmdstat "$RP" 'evalsha|fcall' usec) / $hb" | bc -l)")
  W_CALLS+=("$(echo "$(cmdstat "$RP" 'evalsha|fcall' calls) / $hb" | bc -l)")
  W_RCPU+=("$(echo "($rc1 - $rc0) / $wall * 100" | bc -l)")
done
REDIS_MEM=$(redis-cli -p "$RP" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')
RSS2=$(median "${W_RSS[@]}")
stop "$SIM_SESSIONS" "$SIM_NODES"
stop "$S"
PER_NODE=$(echo "($RSS1 - $RSS0) / $SCALE_NODES" | bc -l)
PER_SESSION=$(echo "($RSS2 - $RSS1) / $SCALE_SESSIONS" | bc -l)
RSS_10K=$(echo "$RSS0 + 10000 * ($PER_NODE + $PER_SESSION)" | bc -l)

# ---- 7. Routing explanation: the same build with jobs.explain off and on, side by side ----
log "7/7 routing explanation cost (jobs.explain off vs on, ${EXPLAIN_ROUNDS:-3} alternating rounds)"
EXPLAIN_AB=$(bash bench/explain.sh "$BIN" "${EXPLAIN_ROUNDS:-3}")

# ---- 7b. What bounds sparse latency: latency against the gap between utterances ----------
log "7b latency against the gap between one session's utterances (bench/idle.sh)"
IDLE_CURVE=$(bash bench/idle.sh "$BIN" "${IDLE_S:-8}")

# ---- 9. Cells: one cell vs three on a 3-primary Redis Cluster ------------------------------
log "9 cells: 1 cell vs 3 cells on a 3-primary cluster (${CELLS_ROUNDS:-3} alternating rounds)"
CELLS_AB=$(bash bench/cells.sh "$BIN" "${CELLS_ROUNDS:-3}")

# ---- Summary and docs/benchmarks.md -------------------------------------------------------
ALL=$(cat "$WORK"/{sat,lat,cost,local,remote,sparse1,sparse10,serial}-*.json)
INTEGRITY=$(echo "$ALL" | jq -s '{runs: length, sent: (map(.utterances_sent) | add),
  lost: (map(.lost) | add), duplicates: (map(.duplicates) | add),
  order_violations: (map(.order_violations) | add), oversold: (map(.oversold) | add),
  errors: (map(.errors_by_code | to_entries[] | .value) | add // 0)}' -c)
cost() { median $(for r in $(seq 1 "$RUNS"); do jq -r "$1" "$WORK/costx-$r.json"; done); }
LINGUA=$(cost .lingua_scripts_per_job)
EV_JOB=$(cost .evalsha_per_job)
RT_JOB=$(cost .round_trips_per_job)
EV_US=$(cost .evalsha_us_per_job)
ALL_US=$(cost .all_commands_us_per_job)
RCPU_US=$(cost .redis_cpu_us_per_job)
ICPU_US=$(cost .instance_cpu_us_per_job)
# Commands inside the scripts of the last cost run, per job, by Redis time.
JOBS_LAST=$(j "cost-$RUNS" .results)
BREAKDOWN=$(awk -F'[:,=]' -v jobs="$JOBS_LAST" '/^cmdstat_/ {
    name = substr($1, 9); printf "| %s | %.2f | %.1f |\n", name, $3 / jobs, $5 / jobs }' \
  "$WORK/cost-$RUNS.commandstats" | sort -t'|' -k4 -g -r | head -15)
LIMIT=$(echo "$TRIVIAL_PER_S / $LINGUA" | bc -l)
REAL_LIMIT=$(echo "1000000 / $RCPU_US" | bc -l)
SHARE=$(echo "$SAT / $LIMIT * 100" | bc -l)
SHARE_REAL=$(echo "$SAT / $REAL_LIMIT * 100" | bc -l)
D50=$(med lat .dispatch.p50_ms) D90=$(med lat .dispatch.p90_ms) D99=$(med lat .dispatch.p99_ms)
DMAX=$(med lat .dispatch.max_ms)
E50=$(med lat .end_to_end.p50_ms) E99=$(med lat .end_to_end.p99_ms)
SP1_E50=$(med sparse1 .end_to_end.p50_ms) SP1_E99=$(med sparse1 .end_to_end.p99_ms)
SP10_E50=$(med sparse10 .end_to_end.p50_ms) SP10_E99=$(med sparse10 .end_to_end.p99_ms)
verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "met"; else echo "**missed**"; fi; }
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src lua Cargo.toml 2>/dev/null || GIT="$GIT + uncommitted changes"
MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r)"
REDIS_V=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')

. bench/report.sh >"$OUT"

log "done in $(($(date +%s) - STARTED_AT)) s; figures in $OUT"
sed -n '/^## Summary/,/^## 1\./p' "$OUT" | head -n -1
