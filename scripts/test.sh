#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit, golden, HTTP, reload and crash tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --all-targets
cargo test --all-targets -- --test-threads 2
