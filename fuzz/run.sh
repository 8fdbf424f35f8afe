#!/usr/bin/env bash
# Run every fuzz target for a bounded time and print how many inputs each executed.
# Used by `make fuzz`. FUZZ_SECONDS (default 30) per target, 5 for the trivial
# audio_estimate; fails if a target finds a crash or fewer than FUZZ_MIN_INPUTS (10 000 000)
# inputs ran in total. The decoders start from the lingua fixtures (tests/fixtures/lingua).
# cargo-fuzz passes unstable flags to rustc: RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-30}
min=${FUZZ_MIN_INPUTS:-10000000}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
total=0
for target in decode_node decode_session order audio_estimate; do
  t=$secs
  [ "$target" = audio_estimate ] && t=$(( secs < 5 ? secs : 5 ))
  mkdir -p "corpus/$target"
  seeds=()
  case $target in decode_*) seeds=(../tests/fixtures/lingua) ;; esac
  log=$(mktemp)
  if ! cargo fuzz run -s none "$target" "corpus/$target" "${seeds[@]}" -- \
      -max_total_time="$t" -print_final_stats=1 -timeout=10 -rss_limit_mb=1024 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target FAILED (artifact in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  n=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  rm -f "$log"
  printf 'fuzz: %-15s %12d inputs in %ss\n' "$target" "$n" "$t"
  total=$(( total + n ))
done
printf 'fuzz: total %d inputs\n' "$total"
if [ "$total" -lt "$min" ]; then
  echo "fuzz: fewer than $min inputs; raise FUZZ_SECONDS" >&2
  exit 1
fi
