#!/usr/bin/env bash
# bench/idle.sh BIN [SECONDS]: end-to-end latency of one session (one node answering at once)
# as a function of the time between its utterances: 0 (each sent when the previous result
# arrived), 2, 10, 50, 250 and 1000 ms, at most 200 utterances or SECONDS (default 15) per
# gap, one instance and one redis-server; then bench/wake.py, the cost of waking an idle
# process at the same gaps with no Switchyard at all. Where the two curves rise together, the sparse latency is the
# machine's way out of idle, not work the scheduler does per utterance.
set -euo pipefail
BIN=$(realpath "$1") S=${2:-15}
cd "$(dirname "$0")/.."
. bench/lib.sh
dev_credentials "$BIN"
trap cleanup EXIT
OUT=$(mktemp -d)
rp=$(free_port) ip=$(free_port) wp=$(free_port)
start_redis "$OUT" "$rp"
start_instance "$BIN" "$OUT/inst.log" "$ip" "redis://127.0.0.1:$rp"
printf '| gap between utterances (ms) | utterances | dispatch p50 (ms) | end-to-end p50 / p90 (ms) |\n|---|---|---|---|\n'
for gap in 0 2 10 50 250 1000; do
  # at most 200 each (the session's utterance rate limit refuses a long burst at gap 0)
  n=$((gap == 0 ? 200 : S * 1000 / gap)) && n=$((n > 200 ? 200 : n))
  "$BIN" sim --quiet --json --url "ws://127.0.0.1:$ip" --nodes 1 --capacity 4 --delay-ms 0-0 \
    --sessions 1 --window 1 --interval-ms "$gap" --utterances "$n" --duration-s $((S + 5)) \
    --grace-s 5 >"$OUT/gap-$gap.json" 2>"$OUT/gap-$gap.err" || log "sim exited with $? ($(tail -1 "$OUT/gap-$gap.err"))"
  jq -r --arg g "$gap" '"| \($g) | \(.results) | \(.dispatch.p50_ms) | \(.end_to_end.p50_ms) / \(.end_to_end.p90_ms) |"' \
    "$OUT/gap-$gap.json"
done
echo
python3 bench/wake.py "$wp"
