#!/usr/bin/env bash
# bench/explain.sh [BIN] [ROUNDS]: what the routing explanation (`jobs.explain`: route:<n> and
# end:<n> on every job record, lua/includes/dispatch.lua) costs Redis, side by side: the same
# build with the explanation off ("old") and on ("new"), alternating rounds (bench/ab.sh).
# Prints ab.sh's markdown table; the row to read is "Redis µs in script calls ... per job".
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/switchyard}"); ROUNDS=${2:-3}
[ -x "$BIN" ] || { echo "bench/explain.sh: $BIN not built (cargo build --release)" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
printf '#!/bin/sh\nSWITCHYARD_JOBS__EXPLAIN=false exec %q "$@"\n' "$BIN" >"$W/explain-off"
chmod +x "$W/explain-off"
bash bench/ab.sh "$W/explain-off" "$BIN" "$ROUNDS"
