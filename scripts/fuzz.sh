#!/usr/bin/env bash
# Fuzz the gateway's parsers with cargo fuzz (libFuzzer, nightly Rust).
#
#   scripts/fuzz.sh            # every target for 60 s (set FUZZ_SECONDS, or pass targets)
#   FUZZ_SECONDS=600 scripts/fuzz.sh pg_frontend
#
# First replays every saved crash in fuzz/regressions/TARGET (each must pass
# now), then fuzzes from the seeds in fuzz/corpus/TARGET. A crash is saved in
# fuzz/artifacts/TARGET and the script fails: copy the input to
# fuzz/regressions/TARGET/ once it is fixed. Installs the nightly toolchain and
# cargo-fuzz if missing. Prints executions per target.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$WARDGATE_ROOT"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pg_frontend pg_backend sql_analyze config masker_batch)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Its own target directory: nightly + sanitizer builds never share the stable one.
export CARGO_TARGET_DIR="$HOME/.cache/wardgate/fuzz-target"

cd fuzz
# Builds of another checkout of this repository in the same target directory
# carry the same crate hashes for the local path crates but other sources:
# rebuild those when the checkout changed.
if [ "$(cat "$CARGO_TARGET_DIR/.checkout" 2>/dev/null)" != "$WARDGATE_ROOT" ]; then
  cargo +nightly clean -q --release --target x86_64-unknown-linux-gnu \
    -p wardgate -p wardgate-sdk -p pii-mask -p wardgate-fuzz 2>/dev/null || true
  mkdir -p "$CARGO_TARGET_DIR" && echo "$WARDGATE_ROOT" > "$CARGO_TARGET_DIR/.checkout"
fi

for t in "${targets[@]}"; do
  cargo +nightly fuzz build -O "$t" >/dev/null 2>&1 || { cargo +nightly fuzz build -O "$t"; exit 1; }
  mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t"
  if compgen -G "regressions/$t/*" >/dev/null; then
    cargo +nightly fuzz run -O "$t" regressions/"$t"/* -- -runs=1 >/dev/null 2>"artifacts/$t/replay.log" \
      || { echo "fuzz $t: a saved regression input fails again:"; tail -30 "artifacts/$t/replay.log"; exit 1; }
  fi
  # Fuzz into a scratch copy of the seeds, so a run does not grow the repository.
  work="$CARGO_TARGET_DIR/corpus/$t"
  mkdir -p "$work"
  cp -n corpus/"$t"/* "$work"/ 2>/dev/null || true
  log="$CARGO_TARGET_DIR/$t.log"
  if ! cargo +nightly fuzz run -O "$t" "$work" -- -max_total_time="$seconds" -rss_limit_mb=4096 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz $t: FAILED (input saved in fuzz/artifacts/$t/)"
    # What failed and on which input, so a CI log alone reproduces it: the
    # panic with its message, libFuzzer's summary, the input as Base64
    # (printf '%s' B64 | base64 -d > input) and as the target read it.
    grep -E -A3 'panicked' "$log" | grep -vE '^ +[0-9]+: |^ +at ' | cut -c1-1500 | head -12
    grep -E 'ERROR: libFuzzer|SUMMARY|Test unit written|^Base64: ' "$log" | head -8
    grep -A2 'Output of `std::fmt::Debug`' "$log" | tail -1 | cut -c1-2000
    exit 1
  fi
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz $t: ${runs:-?} executions in ${seconds}s, no crash"
done
