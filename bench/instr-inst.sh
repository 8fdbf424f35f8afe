#!/usr/bin/env bash
# bench/instr-inst.sh BIN [N] [OUTDIR]: the instance's instructions per job, counted by
# callgrind over the whole `switchyard serve` process (user space; the kernel's work is not
# counted): N sequential jobs (default 200; SHAPE=sat: ab.sh's saturation shape, N × 50 jobs;
# bench/lib.sh sim_sequential) after 20 to warm up, sweeps and beats slowed down so they
# hardly count. Repeatable to well under 1 % whatever else the machine does; read the profile
# with `callgrind_annotate --inclusive=yes OUTDIR/cg.out.1`.
set -euo pipefail
BIN=$1 N=${2:-200}
OUT=${3:-$(mktemp -d)}
cd "$(dirname "$0")/.."
. bench/lib.sh
cg_outdir "$OUT"
dev_credentials "$BIN"
trap cleanup EXIT
rp=$(free_port) ip=$(free_port)
start_redis "$OUT/redis" "$rp"
# A wrapper so start_instance runs `valgrind … BIN serve` (it waits for /readyz).
cat >"$OUT/vg" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" "$BIN" "\$@" 2>"$OUT/valgrind.log"
WRAP
chmod +x "$OUT/vg"
start_quiet_instance "$OUT/vg" "$OUT" "$ip" "$rp"
sim_sequential "$BIN" "$ip" 20 >/dev/null
callgrind_control -z "$INSTANCE_PID" >/dev/null
sim_sequential "$BIN" "$ip" "$N" >"$OUT/sim.json"
callgrind_control -d "$INSTANCE_PID" >/dev/null
jobs=$(jq '.results' "$OUT/sim.json")
f=$(ls -t "$OUT"/cg.out.* | head -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "jobs $jobs, instance instructions $ir, per job $((ir / jobs)) ($f)"
