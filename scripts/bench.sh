#!/usr/bin/env bash
# Benchmarks, each printed as a ratio against a baseline measured in the same run.
#  1. Plugin platform: guard call, masking vs native, instantiation (cargo bench).
#  2. pgbench -S (select-only), interleaved rounds: direct PostgreSQL vs pgbouncer
#     vs Wardgate (sql-guard + pii-mask active), -c4 -j2; then single-client
#     latency p50/p99 direct vs pgbouncer vs Wardgate.
# Not a test: numbers vary with the machine. Env: ROUNDS (3), SECS (10), SCALE (10).
set -euo pipefail
. "$(dirname "$0")/env.sh"
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}; SCALE=${SCALE:-10}
. "$WARDGATE_ROOT/scripts/lib/stack.sh"
wg_build bench

echo "== plugin platform"
cargo bench -q -p wardgate --bench plugins 2>/dev/null | grep -v '^$'

# PostgreSQL + seeded database from the demo; a second gateway with only
# sql-guard + pii-mask (the demo also runs a recorder plugin).
wg_demo "$SCALE"
wg_gateway bench sql-guard pii-mask
work=$WORK; WARDGATE_UPSTREAM_DSN=$UPSTREAM; WARDGATE_DEMO_DIR=$DEMO_DIR; agent_key=$AGENT_KEY; gw_port=$GW_PORT
app_pw=$(cat "$WARDGATE_DEMO_DIR/upstream-password")
up_port=$(sed -E 's|.*:([0-9]+)/.*|\1|' <<<"$WARDGATE_UPSTREAM_DSN")

# pgbouncer in front of the same database, same upstream user.
bn_port=$(port)
printf '"wardgate_app" "%s"\n' "$app_pw" > "$work/userlist.txt"
cat > "$work/pgbouncer.ini" <<INI
[databases]
shop = host=127.0.0.1 port=$up_port dbname=shop
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bn_port
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
chown -R postgres "$work" 2>/dev/null || true
if [ "$(id -u)" = 0 ]; then runuser -u postgres -- pgbouncer -q "$work/pgbouncer.ini" 2>/dev/null & else pgbouncer -q "$work/pgbouncer.ini" 2>/dev/null & fi
WG_PIDS+=($!)
sleep 1

direct="host=127.0.0.1 port=$up_port dbname=shop user=wardgate_app password=$app_pw sslmode=disable"
bouncer="host=127.0.0.1 port=$bn_port dbname=shop user=wardgate_app password=$app_pw sslmode=disable"
wardgate="host=127.0.0.1 port=$gw_port dbname=shop user=demo-agent password=$agent_key sslmode=disable"
for _ in $(seq 1 50); do psql -X -q "$wardgate" -c 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done

tps() { "$PGBIN/pgbench" -n -S -c4 -j2 -T "$SECS" "$1" 2>/dev/null | sed -nE 's/^tps = ([0-9.]+).*/\1/p'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "== pgbench -S -c4 -j2 -T$SECS, scale $SCALE, $ROUNDS interleaved rounds (TPS)"
: > "$work/d"; : > "$work/b"; : > "$work/w"
for r in $(seq 1 "$ROUNDS"); do
  d=$(tps "$direct"); b=$(tps "$bouncer"); w=$(tps "$wardgate")
  echo "  round $r: direct $d  pgbouncer $b  wardgate $w"
  echo "$d" >> "$work/d"; echo "$b" >> "$work/b"; echo "$w" >> "$work/w"
done
D=$(median < "$work/d"); B=$(median < "$work/b"); W=$(median < "$work/w")
awk -v d="$D" -v b="$B" -v w="$W" 'BEGIN {
  printf "  median TPS: direct %.0f, pgbouncer %.0f, wardgate %.0f\n", d, b, w;
  printf "  ratios: pgbouncer/direct %.2f, wardgate/direct %.2f, wardgate/pgbouncer %.2f\n", b/d, w/d, w/b }'

echo
echo "== single-client latency (pgbench -S -c1, per-transaction log)"
lat() {
  rm -f "$work"/lat.*
  (cd "$work" && "$PGBIN/pgbench" -n -S -c1 -j1 -T "$SECS" -l --log-prefix=lat "$1" >/dev/null 2>&1)
  cat "$work"/lat.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%d %d\n", a[int(NR*0.5)], a[int(NR*0.99)]}'
}
read -r dp50 dp99 < <(lat "$direct")
read -r bp50 bp99 < <(lat "$bouncer")
read -r wp50 wp99 < <(lat "$wardgate")
read -r dp50b dp99b < <(lat "$direct")
dp50=$(( (dp50 + dp50b) / 2 )); dp99=$(( (dp99 + dp99b) / 2 ))
echo "  direct    p50 ${dp50} µs  p99 ${dp99} µs"
echo "  pgbouncer p50 ${bp50} µs  p99 ${bp99} µs  (added p50 $((bp50 - dp50)) µs: what a plain proxy costs here)"
echo "  wardgate  p50 ${wp50} µs  p99 ${wp99} µs"
echo "  added p50 $((wp50 - dp50)) µs (target <= 50), added p99 $((wp99 - dp99)) µs"
