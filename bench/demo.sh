#!/usr/bin/env bash
# `make demo`: the whole system in under a minute. Two instances (127.0.0.1:5010 and :5011)
# on the Redis of `make redis`, then ~20 s of simulated lingua nodes and web sessions spread
# over both (streamed two-way audio, a few failed and unanswered jobs that the scheduler
# reports and fails over), then the instances are stopped. Logs: target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

BIN=${BIN:-target/release/switchyard}
REDIS_PORT=${REDIS_PORT:-6379}
DIR=target/demo
mkdir -p "$DIR"
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$BIN" ] || die "$BIN not built (make release)"
dev_credentials "$BIN"
log "DEVELOPMENT SETUP (throw-away credentials of this demo; not for production):"
log "  secret:        $SWITCHYARD_AUTH__HS256_SECRETS"
log "  node token:    $SWITCHYARD_SIM_NODE_TOKEN"
log "  session token: $SWITCHYARD_SIM_SESSION_TOKEN"
redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || die "no redis on $REDIS_PORT (make redis)"
for p in 5010 5011; do
  listening "$p" && die "port $p is in use (is \`make run\` still running?)"
done

# A cell of its own, so the demo never mixes with what `make run` keeps in this Redis.
# Short run timeout: unanswered jobs fail over within the demo.
settings=(SWITCHYARD_CELL__NAME=demo SWITCHYARD_JOBS__RUN_TIMEOUT_MS=3000
  SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS=5000 SWITCHYARD_INSTANCE__DRAIN_DELAY_MS=200
  SWITCHYARD_LOG__LEVEL=info)
log "starting instance A on 127.0.0.1:5010 (log $DIR/instance-a.log)"
start_instance "$BIN" "$DIR/instance-a.log" 5010 "redis://127.0.0.1:$REDIS_PORT" "${settings[@]}"
A=$INSTANCE_PID
log "starting instance B on 127.0.0.1:5011 (log $DIR/instance-b.log)"
start_instance "$BIN" "$DIR/instance-b.log" 5011 "redis://127.0.0.1:$REDIS_PORT" "${settings[@]}"
B=$INSTANCE_PID

log "6 nodes and 8 two-way sessions streaming audio over both instances for 20 s"
set +e
"$BIN" sim --url ws://127.0.0.1:5010 --url ws://127.0.0.1:5011 \
  --nodes 6 --capacity 4 --delay-ms 150-600 --fail-rate 0.02 --no-result-rate 0.02 \
  --sessions 8 --mode stream --realtime --two-way --utterance-ms 600-1800 --interval-ms 300 \
  --utterances 1000 --duration-s 20 --grace-s 15
status=$?
set -e
echo
for p in 5010 5011; do
  log "what the instance on :$p did (its /metrics):"
  curl -s "http://127.0.0.1:$p/metrics" |
    grep -E '^switchyard_(jobs_total|jobs_failed_total|deliveries_total|inbox_messages_total)' || true
done
log "stopping the instances"
stop "$A" "$B"
if [ "$status" -eq 0 ]; then
  log "demo passed: every utterance got exactly one terminal message, in order"
else
  log "demo FAILED (sim exit status $status); see $DIR/*.log"
fi
exit "$status"
