# Shared by bench.sh, soak.sh and load.sh (sourced, not run): build everything,
# start a kept demo (PostgreSQL, schema, keys, plugins) with pgbench tables, and
# a gateway of the script's own on a plaintext loopback listener.
# Sets: WG, WORK, UPSTREAM, DEMO_DIR, AGENT_KEY, APPROVER, PGBIN, and after
# wg_gateway: GW_PORT, ADM_PORT, SERVE_PID, SERVE_LOG, GW_DSN. Extra pids to
# stop on exit go in WG_PIDS.

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WG_PIDS=()
wg_cleanup() {
  for p in "${WG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${SERVE_PID:-}" ] && kill "$SERVE_PID" 2>/dev/null || true
  [ -n "${DEMO_PID:-}" ] && kill "$DEMO_PID" 2>/dev/null && wait "$DEMO_PID" 2>/dev/null || true
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# Set-up, plugins, release build. $1: name for the temp directory.
wg_build() {
  "$WARDGATE_ROOT/scripts/setup.sh" >/dev/null
  "$WARDGATE_ROOT/scripts/build-plugins.sh" >/dev/null
  (cd "$WARDGATE_ROOT" && cargo build --release -q -p wardgate)
  WG="$CARGO_TARGET_DIR/release/wardgate"
  WORK=$(mktemp -d "/tmp/wardgate-$1.XXXXXX")
  chmod 755 "$WORK"
  trap wg_cleanup EXIT
}

# The demo, kept up, plus pgbench tables at scale $1 readable by the gateway's upstream role.
wg_demo() {
  "$WG" demo --keep --plugins "$WARDGATE_PLUGINS" --dir "$WORK/demo" --env-file "$WORK/demo.env" >"$WORK/demo.log" 2>&1 &
  DEMO_PID=$!
  for _ in $(seq 1 120); do [ -f "$WORK/demo.env" ] && break; sleep 0.5; done
  [ -f "$WORK/demo.env" ] || { cat "$WORK/demo.log"; exit 1; }
  val() { grep "^$1=" "$WORK/demo.env" | cut -d= -f2-; }
  UPSTREAM=$(val WARDGATE_UPSTREAM_DSN); DEMO_DIR=$(val WARDGATE_DEMO_DIR)
  AGENT_KEY=$(val PGPASSWORD); APPROVER=$(val WARDGATE_CREDENTIAL)
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  "$PGBIN/pgbench" -i -q -s "$1" "$UPSTREAM" >/dev/null 2>&1
  psql -X -q "$UPSTREAM" -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO wardgate_app" >/dev/null
}

# A gateway named $1 with the demo's config, its own ports, plaintext on
# loopback (so transport equals a direct connection) and the plugins named in
# $2.. (each NAME copies NAME.wasm and NAME.toml; "*" copies them all). With
# none, the gateway runs no plugin and requires none: the relay, SQL analysis
# and recording alone (a baseline for what the plugins' policy costs).
wg_gateway() {
  local name=$1; shift
  local required=()
  if [ $# -eq 0 ]; then required=(-e "s|^plugins = \[.*\]|plugins = []|"); fi
  GW_PORT=$(port); ADM_PORT=$(port)
  mkdir -p "$DEMO_DIR/$name-plugins" "$DEMO_DIR/$name-state"
  for p in "$@"; do cp "$WARDGATE_PLUGINS"/$p.wasm "$WARDGATE_PLUGINS"/$p.toml "$DEMO_DIR/$name-plugins/"; done
  # The demo's keys live in its state store: give this gateway the same accounts.
  cp "$DEMO_DIR/state/service-accounts.json" "$DEMO_DIR/$name-state/"
  sed -e "/^\[listeners.postgres\]/,/^\[/ s|^bind = .*|bind = \"127.0.0.1:$GW_PORT\"\nallow_plaintext = true|" \
      -e "/^\[admin\]/,/^\[/ s|^bind = .*|bind = \"127.0.0.1:$ADM_PORT\"|" \
      -e "s|^state_dir = .*|state_dir = \"$name-state\"|" \
      -e "s|^plugin_dir = .*|plugin_dir = \"$name-plugins\"|" "${required[@]}" \
      "$DEMO_DIR/wardgate.toml" > "$DEMO_DIR/$name.toml"
  SERVE_LOG="$WORK/$name-serve.log"
  WARDGATE_LOG=warn ${WG_WRAP:-} "$WG" serve --config "$DEMO_DIR/$name.toml" 2>"$SERVE_LOG" &
  SERVE_PID=$!
  GW_DSN="host=127.0.0.1 port=$GW_PORT dbname=shop user=demo-agent password=$AGENT_KEY sslmode=disable"
  for _ in $(seq 1 100); do psql -X -q "$GW_DSN" -c 'select 1' >/dev/null 2>&1 && return 0; sleep 0.2; done
  cat "$SERVE_LOG"; exit 1
}

# Gateway process RSS (KiB) and open file descriptors.
rss() { awk '/^VmRSS/ {print $2}' "/proc/$SERVE_PID/status"; }
fds() { ls "/proc/$SERVE_PID/fd" | wc -l; }
# Gateway RSS (KiB) in two parts: "WASM OTHER". WASM is what is resident in
# wasmtime's pooling reservations (plugin instances' linear memories, tables
# and state): runs of adjacent mappings that hold a piece over 1 GiB (a
# reservation is split where slots are in use). OTHER is the rest (heap,
# stacks, code, buffers).
rss_parts() {
  awk '
    /^[0-9a-f]+-[0-9a-f]+ / { split($1, a, "-"); if (a[1] != prev_end) flush(); prev_end = a[2]; next }
    /^Size:/ { if ($2 > 1048576) big = 1; next }
    /^Rss:/ { run += $2; next }
    function flush() { if (big) w += run; else o += run; run = 0; big = 0 }
    END { flush(); print w + 0, o + 0 }' "/proc/$SERVE_PID/smaps"
}
