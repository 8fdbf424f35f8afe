#!/usr/bin/env bash
# bench/syscalls.sh BIN [N]: the instance's system calls per job, by call (strace -c -f
# attached after a warm-up, over N sequential jobs; default 300). SHAPE and SIM_EXTRA as in
# bench/lib.sh sim_sequential; INSTANCE_ENV: settings for the instance, e.g.
# "SWITCHYARD_INSTANCE__WORKER_THREADS=2". Counts, not time: strace slows every call down.
set -euo pipefail
BIN=$1 N=${2:-300}
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v strace >/dev/null || die "strace is needed (apt-get install strace)"
WORK=$(mktemp -d)
dev_credentials "$BIN"
trap 'cleanup; rm -rf "$WORK"' EXIT
rp=$(free_port) ip=$(free_port)
start_redis "$WORK/redis" "$rp"
start_quiet_instance "$BIN" "$WORK" "$ip" "$rp"
sim_sequential "$BIN" "$ip" 20 >/dev/null
strace -c -f -p "$INSTANCE_PID" -o "$WORK/strace.txt" 2>"$WORK/strace.err" &
sp=$!
sleep 0.5
kill -0 "$sp" 2>/dev/null || die "strace could not attach: $(cat "$WORK/strace.err")"
sim_sequential "$BIN" "$ip" "$N" >"$WORK/sim.json"
kill -INT "$sp"
wait "$sp" || true
jobs=$(jq '.results // 0' "$WORK/sim.json")
[ "$jobs" -gt 0 ] || die "no job completed (see $WORK)"
echo "jobs $jobs; system calls per job:"
awk -v j="$jobs" '$1 ~ /^[0-9.]+$/ && $NF != "total" {printf "%-16s %8.2f\n", $NF, $4 / j; t += $4}
  END {printf "%-16s %8.2f\n", "all", t / j}' "$WORK/strace.txt" | sort -k2 -nr
