#!/usr/bin/env bash
# bench/cells.sh BIN [ROUNDS]: one cell against three cells on a 3-primary Redis Cluster
# (no replicas: this machine has 2 cores), one instance, ROUNDS alternating rounds of a
# 10 s saturation run each. Three cells are named by `switchyard cell-names` (slot spread
# over the live slot map); their load comes from three simulators whose tokens carry a
# `cell` claim each. Prints a markdown section: completed jobs/s and the Redis CPU of each
# primary (INFO cpu, % of one core) — the spread of Redis work over the primaries is the
# point, not a 3x total: the instance and the simulators share the same 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=$1 ROUNDS=${2:-3}
WORK=$(mktemp -d)
trap cleanup EXIT
dev_credentials "$BIN"
SIM=(--capacity 16 --delay-ms 0-0 --window 4 --interval-ms 0 --utterances 1000000
  --duration-s 10 --grace-s 10)

# A port whose cluster bus port (+10000) is free too, both below the ephemeral range.
cluster_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 2700))
    listening "$p" || listening $((p + 10000)) || { echo "$p"; return 0; }
  done
  die "no free cluster port found"
}
PORTS=()
for i in 0 1 2; do
  p=$(cluster_port)
  mkdir -p "$WORK/redis-$i"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --dir "$WORK/redis-$i" --logfile "$WORK/redis-$i/redis.log" &
  STARTED+=($!)
  PORTS+=("$p")
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 0 \
  --cluster-yes >"$WORK/create.log" 2>&1 || die "cluster create failed (see $WORK/create.log)"
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do
    redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
done
URLS=$(printf '"redis://127.0.0.1:%s",' "${PORTS[@]}")
export SWITCHYARD_REDIS__MODE=cluster SWITCHYARD_REDIS__URLS="[${URLS%,}]"
"$BIN" cell-names --count 3 >"$WORK/cells3.toml" || die "switchyard cell-names failed"
mapfile -t NAMES < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$WORK/cells3.toml")
# One cell: the first of the three names (the same tag, on the same primary).
printf '[[cells]]\nname = "%s"\ndefault = true\n' "${NAMES[0]}" >"$WORK/cells1.toml"
# The port of the primary owning the slot of tag {switchyard:NAME} (from CLUSTER NODES).
owner() {
  local slot p
  slot=$(redis-cli -p "${PORTS[0]}" cluster keyslot "{switchyard:$1}")
  for p in "${PORTS[@]}"; do
    redis-cli -p "$p" cluster nodes | awk -v s="$slot" '/myself/ {
      for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
        if (s + 0 >= r[1] + 0 && s + 0 <= r[2] + 0) found = 1 } }
      END { exit !found }' && { echo "$p"; return; }
  done
  echo "?"
}
OWNERS=()
for n in "${NAMES[@]}"; do OWNERS+=("$n→:$(owner "$n")"); done

run_round() { # run_round CELLS ROUND
  local cells=$1 r=$2 ip c0=() c1=() pids=() i
  ip=$(free_port)
  start_instance "$BIN" "$WORK/inst-$cells-$r.log" "$ip" unused \
    SWITCHYARD_CONFIG="$WORK/cells$cells.toml"
  local inst=$INSTANCE_PID
  for p in "${PORTS[@]}"; do c0+=("$(redis_cpu "$p")"); done
  local t0; t0=$(date +%s.%N)
  if [ "$cells" = 1 ]; then
    "$BIN" sim --quiet --json --url "ws://127.0.0.1:$ip" --nodes 18 --sessions 48 "${SIM[@]}" \
      >"$WORK/sim-$cells-$r-0.json" &
    pids+=($!)
  else
    for i in 0 1 2; do
      SWITCHYARD_SIM_NODE_TOKEN=$(SWITCHYARD_CONFIG="$WORK/cells3.toml" "$BIN" token --scope node --cell "${NAMES[$i]}" --ttl 1h) \
        SWITCHYARD_SIM_SESSION_TOKEN=$(SWITCHYARD_CONFIG="$WORK/cells3.toml" "$BIN" token --scope session --cell "${NAMES[$i]}" --ttl 1h) \
        "$BIN" sim --quiet --json --url "ws://127.0.0.1:$ip" --nodes 6 --sessions 16 "${SIM[@]}" \
        >"$WORK/sim-$cells-$r-$i.json" &
      pids+=($!)
    done
  fi
  wait "${pids[@]}"
  local wall; wall=$(echo "$(date +%s.%N) - $t0" | bc -l)
  for p in "${PORTS[@]}"; do c1+=("$(redis_cpu "$p")"); done
  stop "$inst"
  local jobs; jobs=$(cat "$WORK"/sim-"$cells"-"$r"-*.json | jq -s 'map(.results_per_s) | add')
  echo "$jobs" >"$WORK/jobs-$cells-$r"
  for i in 0 1 2; do
    echo "(${c1[$i]} - ${c0[$i]}) / $wall * 100" | bc -l >"$WORK/cpu-$cells-$r-$i"
  done
  local lost; lost=$(cat "$WORK"/sim-"$cells"-"$r"-*.json | jq -s 'map(.lost + .duplicates + .order_violations) | add')
  echo "$lost" >"$WORK/bad-$cells-$r"
  log "cells=$cells round $r: $(printf '%.0f' "$jobs") jobs/s, Redis CPU % per primary: $(for i in 0 1 2; do printf '%.1f ' "$(cat "$WORK/cpu-$cells-$r-$i")"; done)"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run_round 1 "$r"; run_round 3 "$r"; else run_round 3 "$r"; run_round 1 "$r"; fi
done

med_of() { median $(for r in $(seq 1 "$ROUNDS"); do cat "$WORK/$1-$r$2"; done); }
row() { # row CELLS
  local c=$1 cpus=() i
  for i in 0 1 2; do cpus+=("$(med_of "cpu-$c" "-$i")"); done
  local max min
  max=$(printf '%s\n' "${cpus[@]}" | sort -g | tail -1)
  min=$(printf '%s\n' "${cpus[@]}" | sort -g | head -1)
  printf '| %s | %.0f | %.1f | %.1f | %.1f | %.2f | %s |\n' "$c" "$(med_of "jobs-$c" "")" \
    "${cpus[0]}" "${cpus[1]}" "${cpus[2]}" "$(echo "$min / $max" | bc -l)" \
    "$(cat "$WORK"/bad-"$c"-* | paste -sd+ | bc)"
}
HEAD="| cells | completed jobs/s | Redis CPU % primary :${PORTS[0]} | :${PORTS[1]} | :${PORTS[2]} | least / most loaded primary | lost + duplicated + reordered |"
cat <<EOF
Cells on the three primaries (\`switchyard cell-names --count 3\`): ${NAMES[*]}
(cell → primary: ${OWNERS[*]}). Medians of $ROUNDS alternating rounds
(\`bash bench/cells.sh BIN $ROUNDS\`):

$HEAD
|---|---|---|---|---|---|---|
$(row 1)
$(row 3)
EOF
