#!/usr/bin/env bash
# cross-tts.sh OLD_BIN NEW_BIN [ROUNDS]: two builds side by side on the path where results
# cross instances: sessions on instance A, nodes on instance B (every result goes through A's
# inbox), 32 KB of TTS audio per result (TTS_BYTES). Alternating rounds, each on a fresh
# redis-server and two fresh instances; prints each run and the medians of completed jobs/s
# and Redis process CPU µs per job (INFO cpu over the measured 6 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OLD=$1 NEW=$2 ROUNDS=${3:-3}
TTS_BYTES=${TTS_BYTES:-32768}
trap cleanup EXIT

run() { # BIN -> "jobs_per_s redis_us_per_job"
  local bin=$1 work rp ia ib rc0 rc1 n
  dev_credentials "$bin"
  work=$(mktemp -d)
  rp=$(free_port) ia=$(free_port) ib=$(free_port)
  start_redis "$work/redis" "$rp"
  start_instance "$bin" "$work/a.log" "$ia" "redis://127.0.0.1:$rp"
  start_instance "$bin" "$work/b.log" "$ib" "redis://127.0.0.1:$rp"
  local args=(--quiet --json --node-url "ws://127.0.0.1:$ib" --session-url "ws://127.0.0.1:$ia"
    --nodes 8 --capacity 8 --delay-ms 0-0 --sessions 20 --window 2 --interval-ms 0
    --utterances 1000000 --tts-bytes "$TTS_BYTES" --grace-s 5)
  "$bin" sim "${args[@]}" --duration-s 2 >/dev/null # warm-up
  rc0=$(redis_cpu "$rp")
  "$bin" sim "${args[@]}" --duration-s 6 >"$work/run.json"
  rc1=$(redis_cpu "$rp")
  n=$(jq '.results' "$work/run.json")
  [ "$(jq '.lost + .duplicates + .order_violations' "$work/run.json")" = 0 ] || die "integrity: $(cat "$work/run.json")"
  cleanup
  STARTED=()
  echo "$(jq '.results_per_s' "$work/run.json") $(echo "($rc1 - $rc0) * 1000000 / $n" | bc -l)"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -a old_j old_r new_j new_r
for r in $(seq 1 "$ROUNDS"); do
  for which in old new; do
    # alternate the order each round
    if [ $((r % 2)) = 0 ]; then which=$([ $which = old ] && echo new || echo old); fi
    bin=$([ $which = old ] && echo "$OLD" || echo "$NEW")
    read -r j u <<<"$(run "$bin")"
    echo "round $r $which: $j jobs/s, Redis $u µs/job"
    if [ $which = old ]; then old_j+=("$j"); old_r+=("$u"); else new_j+=("$j"); new_r+=("$u"); fi
  done
done
oj=$(printf '%s\n' "${old_j[@]}" | median) nj=$(printf '%s\n' "${new_j[@]}" | median)
orr=$(printf '%s\n' "${old_r[@]}" | median) nr=$(printf '%s\n' "${new_r[@]}" | median)
printf '| median of %s | old | new | new / old |\n|---|---|---|---|\n' "$ROUNDS"
printf '| completed jobs/s | %.0f | %.0f | %.2f × |\n' "$oj" "$nj" "$(echo "$nj / $oj" | bc -l)"
printf '| Redis process CPU µs per job | %.1f | %.1f | %.2f × |\n' "$orr" "$nr" "$(echo "$nr / $orr" | bc -l)"
