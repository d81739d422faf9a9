#!/usr/bin/env bash
# The demo, from nothing: install prerequisites, build the gateway and the
# plugins, start the test OpenID Provider (so a second agent can show an OIDC
# client-credentials token), then run `wardgate demo` (pass --keep to stay up
# and write demo.env). The provider is stopped again when the demo ends.
set -euo pipefail
. "$(dirname "$0")/env.sh"
"$WARDGATE_ROOT/scripts/setup.sh"
"$WARDGATE_ROOT/scripts/build-plugins.sh" >/dev/null
( cd "$WARDGATE_ROOT" && cargo build --release -q -p wardgate )
oidc="$WARDGATE_ROOT/scripts/oidc.sh"   # demo.env goes to the caller's working directory

started=""
export OIDC_PORT=${WARDGATE_DEMO_OIDC_PORT:-9390}
export OIDC_BASE=${OIDC_BASE:-$HOME/.cache/wardgate/oidc-demo}
if ! "$oidc" status >/dev/null 2>&1; then
  if "$oidc" start >/dev/null 2>&1; then started=1; else echo "(OpenID Provider did not start: the demo runs without OIDC)"; fi
fi
if "$oidc" status >/dev/null 2>&1; then
  export WARDGATE_DEMO_OIDC_ISSUER=${WARDGATE_DEMO_OIDC_ISSUER:-http://127.0.0.1:$OIDC_PORT}
  export WARDGATE_DEMO_OIDC_CLIENT_SECRET=${WARDGATE_DEMO_OIDC_CLIENT_SECRET:-agent-1-secret}  # scripts/oidc/config.json
fi

"$CARGO_TARGET_DIR/release/wardgate" demo --plugins "$WARDGATE_PLUGINS" "$@" &
wg=$!
trap 'kill -TERM $wg 2>/dev/null || true' TERM INT
set +e
rc=0
while kill -0 "$wg" 2>/dev/null; do wait "$wg"; rc=$?; done
[ -n "$started" ] && "$oidc" stop >/dev/null
exit $rc
