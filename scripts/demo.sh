#!/usr/bin/env bash
# The demo, from nothing: install prerequisites, build the gateway and the
# plugins, then run `wardgate demo` (pass --keep to stay up and write demo.env).
set -euo pipefail
. "$(dirname "$0")/env.sh"
"$WARDGATE_ROOT/scripts/setup.sh"
"$WARDGATE_ROOT/scripts/build-plugins.sh" >/dev/null
cd "$WARDGATE_ROOT"
cargo build --release -q -p wardgate
exec "$CARGO_TARGET_DIR/release/wardgate" demo --plugins "$WARDGATE_PLUGINS" "$@"
