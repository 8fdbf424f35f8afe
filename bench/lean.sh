#!/usr/bin/env bash
# bench/lean.sh [N]: Redis instructions per job of bench/lean/lean.lua (callgrind inside FCALL,
# as bench/instr.sh counts the real library): N jobs, each a lean_submit and a lean_result,
# one session, a pool of 20 nodes, an 8 KB staged audio and a ~700-byte spec and result.
# The figure beside bench/instr.sh's says how much of a job's Redis cost is the commands a
# job cannot do without, and how much the work the scripts do around them.
set -euo pipefail
N=${1:-200}
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
OUT=$(mktemp -d)
trap 'cleanup; rm -rf "$OUT"' EXIT
rp=$(free_port)
start_callgrind_redis "$OUT" "$rp"
redis-cli -p "$rp" -x function load <bench/lean/lean.lua >/dev/null
P='{switchyard:main}:'
python3 - "$N" "$P" >"$OUT/cmds.txt" <<'PY'
import sys
n, p = int(sys.argv[1]), sys.argv[2]
def q(s): return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'
out = []
for i in range(20):
    out.append(f"HSET {q(p+'node:n-%02d' % i)} conn c{i:02d} reserved 0 capacity 16 state live")
    out.append(f"SADD {q(p+'pool:pub:zh:en')} n-{i:02d}")
out.append(f"HSET {q(p+'session:s-1')} conn sc state open next_deliver 0")
audio = ''.join(chr(48 + (k * 7) % 64) for k in range(8192))
spec = '{"type":"job_assign","session_id":"s-1","source_lang":"zh","target_lang":"en","context_text":"' + 'x' * 330 + '","trace_id":"dfe71405894e45edacd9daeb5ad53453","utterance_index":IDX}'
res = '{"type":"translation_result","text_asr":"' + 'y' * 200 + '","text_translated":"' + 'z' * 200 + '","network_timings":{"scheduler_to_web_ms":0},"utterance_index":IDX}'
for i in range(n):
    jid = f"job-abc-{i}"
    out.append(f"SET {q(p+'stage:audio:s-1:%d' % i)} {audio} PX 600000")
    out.append(f"FCALL lean_submit 1 {q(p+'stage:audio:s-1:%d' % i)} {q(p)} s-1 sc {i} {jid} pub:zh:en {q(spec.replace('IDX', str(i)))} dfe71405894e45edacd9daeb5ad53453 00-dfe71405894e45edacd9daeb5ad53453-1111111111111111-01")
    out.append(f"MARK {i}")
print('\n'.join(out))
PY
# results need the node each submit chose: run submits one by one and answer each
callgrind_control -z "$RPID" >/dev/null
jobs=0
while IFS= read -r line; do
  case $line in
    "MARK "*)
      i=${line#MARK }
      node=$(redis-cli -p "$rp" hget "${P}job:job-abc-$i" node)
      redis-cli -p "$rp" fcall lean_result 0 "$P" "job-abc-$i" 1 "$node" "c${node#n-}" \
        "{\"type\":\"translation_result\",\"utterance_index\":$i,\"text_asr\":\"$(head -c 200 /dev/zero | tr '\0' y)\",\"text_translated\":\"$(head -c 200 /dev/zero | tr '\0' z)\"}" >"$OUT/r"
      [ "$(cat "$OUT/r")" = ok ] || die "lean_result $i: $(cat "$OUT/r")"
      jobs=$((jobs + 1))
      ;;
    *) echo "$line" | redis-cli -p "$rp" >"$OUT/s" ;;
  esac
done <"$OUT/cmds.txt"
callgrind_control -d "$RPID" >/dev/null
ir=$(callgrind_annotate "$(ls -t "$OUT"/cg.out.* | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "lean: jobs $jobs, Redis instructions in FCALL $ir, per job $((ir / jobs))"
