#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting and lints, then unit, golden, HTTP, reload,
# crash and S3 tests.
#
# The S3 tests need a real object store: a single-node Ceph (scripts/ceph.sh) is started first
# (installed and initialised on a fresh machine, as root) and stopped again on exit; the
# shared-store tests a PostgreSQL server (scripts/postgres.sh), likewise.
set -euo pipefail
cd "$(dirname "$0")/.."

# The conventions first, so a style slip fails in seconds rather than after the build.
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings

cargo build --all-targets

# Bounded fuzzing of the request pipeline and the DTC reader (skipped, saying so, without nightly).
scripts/fuzz.sh "${FLOWGATE_FUZZ_SECONDS:-30}"

out=$(scripts/ceph.sh start) || exit 1
eval "$out"
log=$(mktemp)
trap 'rm -f "$log"; scripts/ceph.sh stop || echo "test.sh: could not stop Ceph" >&2; scripts/postgres.sh stop || echo "test.sh: could not stop PostgreSQL" >&2' EXIT

# The shared-store tests (tests/it/shared.rs) need PostgreSQL: a throwaway server, each test in a
# database of its own. Its URL reaches the tests under a name of their own: a gateway started by
# another test must not pick the shared store up from FLOWGATE_DATABASE_URL.
out=$(scripts/postgres.sh start) || exit 1
eval "$out"
export FLOWGATE_TEST_DATABASE_URL=$FLOWGATE_DATABASE_URL
unset FLOWGATE_DATABASE_URL

# Two test threads (2-core machines); output not captured, so the fault tests' counts show.
# Set through the environment rather than `-- --test-threads 2`: the criterion bench, run once
# as a test, takes no libtest flags.
RUST_TEST_THREADS=2 RUST_TEST_NOCAPTURE=1 cargo test --all-targets 2>&1 | tee "$log"
# One closing line for the whole suite (the last target, an example, runs no test of its own).
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
