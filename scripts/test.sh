#!/usr/bin/env bash
# Every test, from nothing: install prerequisites, build the plugins for
# wasm32-wasip2, run the plugins' native unit tests and the gateway's unit and
# end-to-end tests (real PostgreSQL, psql, pgbench, tokio-postgres), a
# third-party drivers' own test suites through the gateway (psycopg2's and
# asyncpg's, each compared with a direct run: scripts/drivers.sh), a short
# fuzzing run of every parser (scripts/fuzz.sh), then the style gates
# (rustfmt, clippy -D warnings).
set -euo pipefail
. "$(dirname "$0")/env.sh"
"$WARDGATE_ROOT/scripts/setup.sh"
cd "$WARDGATE_ROOT"
echo "== building plugins (wasm32-wasip2)"
scripts/build-plugins.sh
echo "== tests"
cargo test --release --workspace --exclude hostile --exclude wrong-version --exclude no-exports
scripts/drivers.sh
echo "== fuzzing (short run; longer: FUZZ_SECONDS=600 scripts/fuzz.sh)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" scripts/fuzz.sh
echo "== style"
cargo fmt --all -- --check
cargo clippy --release --workspace --exclude hostile --exclude wrong-version --exclude no-exports --all-targets -q -- -D warnings
echo "== all tests passed"
