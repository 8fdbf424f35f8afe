#!/usr/bin/env bash
# bench/instr.sh BIN [N] [OUTDIR]: Redis instructions per job, counted by callgrind inside
# FCALL only (--toggle-collect=fcallCommand): N sequential jobs (default 200) of one session
# and one node (SHAPE=sat: see below), after 20 to warm up; sweeps and beats slowed down so
# they hardly count.
# Instruction counts are repeatable (±0.3 % here) whatever else the machine is doing, so two
# builds compare without alternating rounds; they measure the scripts' work, not the
# kernel's or the network's. REDIS_BIN: a redis-server with symbols (Debian's is stripped:
# `apt-get source redis && make USE_SYSTEM_JEMALLOC=yes BUILD_TLS=no`), so that
# `callgrind_annotate --inclusive=yes OUTDIR/cg.out.1` names functions. SIM_EXTRA: options
# added to the simulator (e.g. "--tts-bytes 32768").
set -euo pipefail
BIN=$1 N=${2:-200}
OUT=${3:-$(mktemp -d)}
REDIS_BIN=${REDIS_BIN:-redis-server}
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/cg.out*
dev_credentials "$BIN"
trap cleanup EXIT
rp=$(free_port) ip=$(free_port)
start_callgrind_redis "$OUT" "$rp"
start_instance "$BIN" "$OUT/inst.log" "$ip" "redis://127.0.0.1:$rp" \
  SWITCHYARD_SWEEP__INTERVAL_MS=600000 SWITCHYARD_INSTANCE__BEAT_INTERVAL_MS=3000 \
  SWITCHYARD_INSTANCE__PRESENCE_TTL_MS=10000 ${INSTANCE_ENV:-}
read -r -a EXTRA <<<"${SIM_EXTRA:-}"
# SHAPE: the workload's shape; "sat" is ab.sh's saturation shape (20 nodes of capacity 16, 50
# sessions with a window of 4: N utterances each, so N × 50 jobs).
case ${SHAPE:-sparse} in
  sparse) read -r -a FORM <<<"--nodes 1 --capacity 4 --sessions 1 --window 1" ;;
  sat) read -r -a FORM <<<"--nodes 20 --capacity 16 --sessions 50 --window 4" ;;
  *) die "SHAPE is sparse or sat" ;;
esac
sim() {
  "$BIN" sim --quiet --json --url "ws://127.0.0.1:$ip" "${FORM[@]}" --delay-ms 0-0 \
    --interval-ms 0 --utterances "$1" --duration-s 300 --grace-s 5 "${EXTRA[@]}"
}
sim 20 >/dev/null
callgrind_control -z "$RPID" >/dev/null
redis-cli -p "$rp" config resetstat >/dev/null
sim "$N" >"$OUT/sim.json"
callgrind_control -d "$RPID" >/dev/null
jobs=$(jq '.results' "$OUT/sim.json")
calls=$(redis-cli -p "$rp" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_fcall:calls=\([0-9]*\),.*/\1/p')
ir=$(callgrind_annotate "$OUT/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "jobs $jobs, FCALLs $calls, Redis instructions in FCALL $ir, per job $((ir / jobs))"
