#!/usr/bin/env bash
# bench/instr.sh BIN [N] [OUTDIR]: Redis instructions per job, counted by callgrind inside
# FCALL only (--toggle-collect=fcallCommand): N sequential jobs (default 200) of one session
# and one node (SHAPE=sat: ab.sh's saturation shape; bench/lib.sh sim_sequential), after 20
# to warm up; sweeps and beats slowed down so they hardly count.
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
cg_outdir "$OUT"
dev_credentials "$BIN"
trap cleanup EXIT
rp=$(free_port) ip=$(free_port)
start_callgrind_redis "$OUT" "$rp"
start_quiet_instance "$BIN" "$OUT" "$ip" "$rp"
sim_sequential "$BIN" "$ip" 20 >/dev/null
callgrind_control -z "$RPID" >/dev/null
redis-cli -p "$rp" config resetstat >/dev/null
sim_sequential "$BIN" "$ip" "$N" >"$OUT/sim.json"
callgrind_control -d "$RPID" >/dev/null
jobs=$(jq '.results' "$OUT/sim.json")
calls=$(redis-cli -p "$rp" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_fcall:calls=\([0-9]*\),.*/\1/p')
ir=$(callgrind_annotate "$OUT/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "jobs $jobs, FCALLs $calls, Redis instructions in FCALL $ir, per job $((ir / jobs))"
