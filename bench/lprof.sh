#!/usr/bin/env bash
# bench/lprof.sh BIN [N] [OUTDIR]: where the scripts spend their time, line by line: N
# sequential jobs (default 300; SHAPE=sat: ab.sh's saturation shape, as in bench/instr.sh)
# through the instance BIN, on a redis-server that lets the library profile itself.
# callgrind (bench/instr.sh) names the C functions of Redis and its Lua, not which line of our
# Lua made them run; this names the line: its cycles with the commands it issued, and how
# often it ran per job. A line hook costs more than a short line, so lines run many times
# per job read high: compare lines with lines, and confirm a change with bench/instr.sh.
# LPROF_REDIS: a redis-server built with bench/lprof/redis.patch, e.g.
#   apt-get source redis && cd redis-7.0.15 && patch -p1 < .../bench/lprof/redis.patch \
#     && make USE_SYSTEM_JEMALLOC=yes BUILD_TLS=no
# Never a production build: the patch gives scripts Lua's debug library.
set -euo pipefail
BIN=$(realpath "$1") N=${2:-300}
OUT=${3:-$(mktemp -d)}
LPROF_REDIS=${LPROF_REDIS:?a redis-server built with bench/lprof/redis.patch}
cd "$(dirname "$0")/.."
. bench/lib.sh
mkdir -p "$OUT"
dev_credentials "$BIN"
trap cleanup EXIT
rp=$(free_port) ip=$(free_port)
# busy-reply-threshold 0: Redis sets no hook of its own, which would replace ours
"$LPROF_REDIS" --port "$rp" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" \
  --busy-reply-threshold 0 >"$OUT/redis.log" 2>&1 &
STARTED+=("$!")
for _ in $(seq 1 100); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
start_quiet_instance "$BIN" "$OUT" "$ip" "$rp"
sim_sequential "$BIN" "$ip" 20 >/dev/null # the library is loaded, the session and node exist
python3 bench/lprof/inject.py "$rp" "$OUT"
redis-cli -p "$rp" fcall prof_reset 0 >/dev/null
sim_sequential "$BIN" "$ip" "$N" >"$OUT/sim.json"
python3 bench/lprof/report.py "$rp" "$OUT" "$(jq .results "$OUT/sim.json")" "${TOP:-50}"
