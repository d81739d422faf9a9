#!/usr/bin/env bash
# Wardgate's test OpenID Provider (npm oidc-provider) on 127.0.0.1.
# Usage: scripts/oidc.sh [install|start|stop|rotate|status]   (idempotent)
# Env:   OIDC_PORT (9090)  OIDC_BASE (state dir, default ~/.cache/wardgate/oidc-run)
# install: the project's npm packages (oidc-provider; puppeteer-core for the
# approvals page's browser test) into ~/.cache/wardgate/node, shared with the tests.
set -euo pipefail
ACTION=${1:-start}
HERE=$(cd "$(dirname "$0")" && pwd)
# Pinned: bump together with the tests.
PACKAGES=("oidc-provider@9.13.3" "puppeteer-core@24.8.2")
MODULES=${WARDGATE_NODE_MODULES:-$HOME/.cache/wardgate/node}
OIDC_PORT=${OIDC_PORT:-9090}
OIDC_BASE=${OIDC_BASE:-$HOME/.cache/wardgate/oidc-run}
PIDFILE=$OIDC_BASE/oidc.pid
ISSUER=http://127.0.0.1:$OIDC_PORT

install() {
  command -v node >/dev/null || { echo "node (>= 20) is required: scripts/setup.sh installs it" >&2; exit 1; }
  mkdir -p "$MODULES"
  local missing=()
  for p in "${PACKAGES[@]}"; do
    name=${p%@*}; want=${p##*@}
    have=$(node -p "try { require('$MODULES/node_modules/$name/package.json').version } catch (e) { '' }")
    [ "$have" = "$want" ] || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    ( cd "$MODULES" && { [ -f package.json ] || echo '{"name":"wardgate-test-node","private":true}' > package.json; } \
      && PUPPETEER_SKIP_DOWNLOAD=1 npm install --silent --no-audit --no-fund "${PACKAGES[@]}" )
  fi
  # ESM resolves node_modules next to the file: run the scripts from there.
  cp "$HERE/oidc/provider.mjs" "$HERE/oidc/mint.mjs" "$HERE/approvals-page.mjs" "$MODULES/"
}
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
stop() { if running; then kill "$(cat "$PIDFILE")"; for _ in $(seq 50); do running || break; sleep 0.1; done; fi; rm -f "$PIDFILE"; }
start() {
  install
  mkdir -p "$OIDC_BASE"
  ( cd "$OIDC_BASE"; OIDC_PORT=$OIDC_PORT OIDC_BASE=$OIDC_BASE OIDC_CONFIG=$HERE/oidc/config.json \
      exec nohup node "$MODULES/provider.mjs" >"$OIDC_BASE/oidc.log" 2>&1 ) &
  echo $! > "$PIDFILE"
  for _ in $(seq 100); do curl -fsS "$ISSUER/.well-known/openid-configuration" >/dev/null 2>&1 && break; running || break; sleep 0.1; done
  curl -fsS "$ISSUER/.well-known/openid-configuration" >/dev/null || { echo "oidc provider failed to start" >&2; cat "$OIDC_BASE/oidc.log" >&2; exit 1; }
  echo "OpenID Provider at $ISSUER (state $OIDC_BASE)"
  echo "agent token: curl -s -u ai-agent-1:agent-1-secret -d grant_type=client_credentials -d scope=gateway:postgres $ISSUER/token"
}
case "$ACTION" in
  install) install ;;
  start) if running; then echo "already running at $ISSUER"; else start; fi ;;
  stop) stop ;;
  rotate) stop; rm -f "$OIDC_BASE/jwks.private.json"; start ;;
  status) running && echo "running at $ISSUER" || { echo "not running"; exit 1; } ;;
  *) echo "usage: $0 [install|start|stop|rotate|status]" >&2; exit 2 ;;
esac
