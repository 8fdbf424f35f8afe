# Helpers shared by bench/run.sh and bench/demo.sh: free ports, a dedicated redis-server,
# Switchyard instances as child processes, and a cleanup that stops everything they started.
# Source it; it never kills anything it did not start (pids are recorded in STARTED).

STARTED=()          # pids of every process started here, stopped by cleanup()
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Is something listening on 127.0.0.1:$1?
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nobody listens on (ephemeral range avoided so client sockets cannot collide).
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    listening "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}

# start_redis DIR PORT: a throw-away redis-server (no persistence) on 127.0.0.1:PORT
# (REDIS_SERVER: another server binary, e.g. a newer Redis or Valkey built from source).
start_redis() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd) # redis-server changes into --dir before opening --logfile
  # REDIS_EXTRA: further redis-server options (e.g. "--hash-max-listpack-entries 32")
  read -r -a rextra <<<"${REDIS_EXTRA:-}"
  "${REDIS_SERVER:-redis-server}" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" "${rextra[@]}" &
  STARTED+=($!)
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "redis-server on $port did not start (see $dir/redis.log)"
}

# dev_credentials BIN: a throw-away HS256 secret for the instances this script starts
# (exported as SWITCHYARD_AUTH__HS256_SECRETS: auth stays on, as in production) and the
# tokens `switchyard sim` presents (SWITCHYARD_SIM_NODE_TOKEN / _SESSION_TOKEN).
dev_credentials() {
  local bin=$1 secret
  secret="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export SWITCHYARD_AUTH__HS256_SECRETS="[\"$secret\"]"
  SWITCHYARD_SIM_NODE_TOKEN=$("$bin" token --scope node --ttl 1d) || die "cannot mint a node token"
  SWITCHYARD_SIM_SESSION_TOKEN=$("$bin" token --scope session --ttl 1d) || die "cannot mint a session token"
  export SWITCHYARD_SIM_NODE_TOKEN SWITCHYARD_SIM_SESSION_TOKEN
}

# start_instance BIN LOG PORT REDIS_URL [VAR=VALUE ...]: one instance in the background;
# sets INSTANCE_PID and waits until /readyz answers 200.
start_instance() {
  local bin=$1 logf=$2 port=$3 redis=$4
  shift 4
  listening "$port" && die "port $port is already in use"
  env SWITCHYARD_LISTEN="127.0.0.1:$port" SWITCHYARD_REDIS__URL="$redis" \
    SWITCHYARD_LOG__LEVEL="${SWITCHYARD_LOG__LEVEL:-warn}" "$@" \
    "$bin" serve >"$logf" 2>&1 &
  INSTANCE_PID=$!
  STARTED+=("$INSTANCE_PID")
  for _ in $(seq 1 100); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; then
      return 0
    fi
    kill -0 "$INSTANCE_PID" 2>/dev/null || die "instance on $port exited (see $logf)"
    sleep 0.1
  done
  die "instance on $port not ready after 10 s (see $logf)"
}

# stop PID...: SIGTERM (graceful drain), then SIGKILL after 10 s.
stop() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

cleanup() {
  local live=()
  local pid
  for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && live+=("$pid"); done
  [ ${#live[@]} -eq 0 ] || stop "${live[@]}"
}

# Resident memory (KiB) and CPU ticks (user + system) of a process.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# CPU ticks of the kernel's DAMON monitor threads (kdamond.N), 0 when there are none. On
# the VM these figures come from, a host-set DAMON scheme samples every page's access bit
# twice a second and holds a vCPU for 10-40 ms at a time while it does, which is what the
# rare multi-millisecond sparse latencies are (bench/notes.md, round 13).
kdamond_ticks() {
  local t=0 f c
  for f in /proc/[0-9]*/comm; do
    if read -r c <"$f" 2>/dev/null && [[ $c == kdamond.* ]]; then
      t=$((t + $(cpu_ticks "$(basename "$(dirname "$f")")" 2>/dev/null || echo 0)))
    fi
  done
  echo "$t"
}

# The sum of a Prometheus counter family on an instance, e.g.
#   metric 5010 'switchyard_connections{kind="node"}'
metric() {
  curl -s "http://127.0.0.1:$1/metrics" | awk -v p="$2" 'index($0, p) == 1 {s += $NF} END {print s + 0}'
}

# Median of the arguments (mean of the two middle values for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2];
    else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# A field of `INFO commandstats` summed over commands matching a regex:
#   cmdstat PORT 'evalsha|fcall' calls
cmdstat() {
  redis-cli -p "$1" info commandstats | tr -d '\r' | awk -F'[:,=]' -v re="^cmdstat_($2)\$" -v f="$3" '
    $1 ~ re { for (i = 2; i < NF; i += 2) if ($i == f) s += $(i + 1) } END { printf "%d\n", s }'
}

# Redis process CPU seconds (user + system).
redis_cpu() {
  redis-cli -p "$1" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f\n", s}'
}

# cg_outdir DIR: for a callgrind count (valgrind present): DIR created, its absolute path in
# OUT, and no cg.out* of an earlier count left in it.
cg_outdir() {
  command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
  mkdir -p "$1"
  OUT=$(cd "$1" && pwd)
  rm -f "$OUT"/cg.out*
}

# start_callgrind_redis DIR PORT: redis-server under callgrind, counting only inside FCALL
# (--toggle-collect=fcallCommand), output in DIR/cg.out.N; sets RPID (for callgrind_control)
# and waits until it answers. REDIS_BIN picks the server (default: the one on PATH).
start_callgrind_redis() {
  local dir=$1 port=$2
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --toggle-collect=fcallCommand \
    "${REDIS_BIN:-redis-server}" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" >"$dir/valgrind.log" 2>&1 &
  RPID=$!
  STARTED+=("$RPID")
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "redis-server under callgrind did not answer on $port"
}

# start_quiet_instance BIN DIR PORT REDIS_PORT: one instance whose sweeps and beats hardly
# run (so a count per job is the jobs' own), plus $INSTANCE_ENV.
start_quiet_instance() {
  local bin=$1 dir=$2 port=$3 rport=$4
  # shellcheck disable=SC2086 # INSTANCE_ENV: several VAR=value words
  start_instance "$bin" "$dir/inst.log" "$port" "redis://127.0.0.1:$rport" \
    SWITCHYARD_SWEEP__INTERVAL_MS=600000 SWITCHYARD_INSTANCE__BEAT_INTERVAL_MS=3000 \
    SWITCHYARD_INSTANCE__PRESENCE_TTL_MS=10000 ${INSTANCE_ENV:-}
}

# sim_sequential BIN PORT N: N utterances per session, each sent when the previous result
# arrived, against the instance on PORT; JSON summary on stdout. SHAPE: "sparse" (1 node,
# 1 session: N jobs) or "sat", ab.sh's saturation shape (20 nodes of capacity 16, 50 sessions
# with a window of 4: N × 50 jobs). SIM_EXTRA: further simulator options.
sim_sequential() {
  local bin=$1 port=$2 n=$3 form extra
  case ${SHAPE:-sparse} in
    sparse) read -r -a form <<<"--nodes 1 --capacity 4 --sessions 1 --window 1" ;;
    sat) read -r -a form <<<"--nodes 20 --capacity 16 --sessions 50 --window 4" ;;
    *) die "SHAPE is sparse or sat" ;;
  esac
  read -r -a extra <<<"${SIM_EXTRA:-}"
  "$bin" sim --quiet --json --url "ws://127.0.0.1:$port" "${form[@]}" --delay-ms 0-0 \
    --interval-ms 0 --utterances "$n" --duration-s 300 --grace-s 5 "${extra[@]}"
}
