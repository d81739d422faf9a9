#!/usr/bin/env bash
# Build the first-party plugins and the test fixtures for wasm32-wasip2 and put
# each NAME.wasm beside its NAME.toml manifest in dist/plugins (and fixtures in
# dist/fixtures). The gateway never needs them to compile.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$WARDGATE_ROOT"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --profile plugin --target wasm32-wasip2 \
  -p pii-mask -p sql-guard -p jsonl-sink -p webhook-sink -p hostile -p wrong-version -p no-exports -p example-guard
out="$CARGO_TARGET_DIR/wasm32-wasip2/plugin"
mkdir -p dist/plugins dist/fixtures
for p in pii-mask sql-guard jsonl-sink webhook-sink; do
  cp "$out/${p//-/_}.wasm" "dist/plugins/$p.wasm"
  cp "plugins/$p/$p.toml" "dist/plugins/$p.toml"
done
for f in hostile wrong-version no-exports; do
  cp "$out/${f//-/_}.wasm" "dist/fixtures/$f.wasm"
done
cp "$out/example_guard.wasm" dist/fixtures/example-guard.wasm
echo "plugins: $(ls dist/plugins | tr '\n' ' ')"
