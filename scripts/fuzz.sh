#!/usr/bin/env bash
# Bounded fuzzing of the request pipeline and the DTC reader with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
# Needs a nightly toolchain; installs cargo-fuzz if missing. Without nightly it says so and exits 0:
# the deterministic mutation tests in `cargo test` (tests/it/reader.rs, tests/it/mutations.rs) still run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain on this machine; skipped (the stable mutation tests cover the same code)"
  exit 0
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked >/dev/null 2>&1 || cargo install cargo-fuzz
fi

corpus=fuzz/corpus
mkdir -p "$corpus/reader" "$corpus/pipeline"
cp tests/reader/valid/*.usr "$corpus/reader/" 2>/dev/null || true
for f in tests/cases/*/flows/*.usr; do
  cp "$f" "$corpus/reader/$(basename "$(dirname "$(dirname "$f")")")-$(basename "$f")"
done
for d in tests/cases/*/; do
  cp "$d/request.json" "$corpus/pipeline/$(basename "$d").json"
done

status=0
for target in pipeline reader; do
  log=$(mktemp)
  if cargo +nightly fuzz run "$target" "$corpus/$target" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1 || true)
    echo "fuzz $target: ${execs:-?} executions in ${secs}s, 0 crashes"
  else
    echo "fuzz $target: CRASH (see fuzz/artifacts/$target/)"
    tail -40 "$log"
    status=1
  fi
  rm -f "$log"
done
exit $status
