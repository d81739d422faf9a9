#!/usr/bin/env bash
# Benchmarks, each printed as a ratio against a baseline measured in the same run.
#  1. Plugin platform: guard call, masking vs native, instantiation (cargo bench).
#  2. pgbench -S (select-only), interleaved rounds: direct PostgreSQL vs pgbouncer
#     vs Wardgate (sql-guard + pii-mask active) vs Wardgate with no plugin (its
#     relay, SQL analysis and recording: what is left is the plugins' policy),
#     -c4 -j2, with each proxy's CPU per transaction; then single-client
#     latency p50/p99 of each, in interleaved rounds too (medians).
# Not a test: numbers vary with the machine. Env: ROUNDS (3), SECS (10), SCALE (10).
set -euo pipefail
. "$(dirname "$0")/env.sh"
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}; SCALE=${SCALE:-10}
. "$WARDGATE_ROOT/scripts/lib/stack.sh"
wg_build bench

echo "== plugin platform"
cargo bench -q -p wardgate --bench plugins 2>/dev/null | grep -v '^$'

# PostgreSQL + seeded database from the demo; a second gateway with only
# sql-guard + pii-mask (the demo also runs a recorder plugin), and a third with
# no plugin at all.
wg_demo "$SCALE"
wg_gateway bare
bare_port=$GW_PORT; bare_pid=$SERVE_PID; WG_PIDS+=("$SERVE_PID")
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
for _ in $(seq 1 50); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.1; done
sleep 0.5
bouncer_pid=$(cat "$work/pgbouncer.pid")

direct="host=127.0.0.1 port=$up_port dbname=shop user=wardgate_app password=$app_pw sslmode=disable"
bouncer="host=127.0.0.1 port=$bn_port dbname=shop user=wardgate_app password=$app_pw sslmode=disable"
wardgate="host=127.0.0.1 port=$gw_port dbname=shop user=demo-agent password=$agent_key sslmode=disable"
bare="host=127.0.0.1 port=$bare_port dbname=shop user=demo-agent password=$agent_key sslmode=disable"
for _ in $(seq 1 50); do psql -X -q "$wardgate" -c 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done

# "USER SYSTEM": CPU seconds (all threads) a process has used so far in user
# space and in the kernel.
cpu_s() { sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f %.2f\n", $12 / hz, $13 / hz}'; }
# "TPS µs user-µs kernel-µs" for a DSN: pgbench's TPS and the CPU the proxy
# whose pid is $2 spent per transaction, and its split (0 for none).
tps() {
  local before out
  before=$([ -n "$2" ] && cpu_s "$2" || echo 0 0)
  out=$("$PGBIN/pgbench" -n -S -c4 -j2 -T "$SECS" "$1" 2>/dev/null)
  awk -v before="$before" -v after="$([ -n "$2" ] && cpu_s "$2" || echo 0 0)" '
    /^number of transactions actually processed/ { n = $NF }
    /^tps = / { tps = $3 }
    END {
      split(before, b, " "); split(after, a, " ");
      u = n ? (a[1] - b[1]) * 1e6 / n : 0; k = n ? (a[2] - b[2]) * 1e6 / n : 0;
      printf "%.0f %.1f %.1f %.1f\n", tps, u + k, u, k }' <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "== pgbench -S -c4 -j2 -T$SECS, scale $SCALE, $ROUNDS interleaved rounds (TPS; the proxy's CPU per transaction)"
: > "$work/d"; : > "$work/b"; : > "$work/w"; : > "$work/n"
for f in bc wc nc bu wu nu bk wk nk; do : > "$work/$f"; done
for r in $(seq 1 "$ROUNDS"); do
  read -r d _ < <(tps "$direct" "")
  read -r b bc bu bk < <(tps "$bouncer" "$bouncer_pid")
  read -r w wc wu wk < <(tps "$wardgate" "$SERVE_PID")
  read -r n nc nu nk < <(tps "$bare" "$bare_pid")
  echo "  round $r: direct $d  pgbouncer $b ($bc µs)  wardgate $w ($wc µs)  wardgate, no plugin $n ($nc µs)"
  echo "$d" >> "$work/d"; echo "$b" >> "$work/b"; echo "$w" >> "$work/w"; echo "$n" >> "$work/n"
  echo "$bc" >> "$work/bc"; echo "$wc" >> "$work/wc"; echo "$nc" >> "$work/nc"
  echo "$bu" >> "$work/bu"; echo "$wu" >> "$work/wu"; echo "$nu" >> "$work/nu"
  echo "$bk" >> "$work/bk"; echo "$wk" >> "$work/wk"; echo "$nk" >> "$work/nk"
done
D=$(median < "$work/d"); B=$(median < "$work/b"); W=$(median < "$work/w"); N=$(median < "$work/n")
awk -v d="$D" -v b="$B" -v w="$W" -v n="$N" \
    -v bc="$(median < "$work/bc")" -v wc="$(median < "$work/wc")" -v nc="$(median < "$work/nc")" \
    -v bu="$(median < "$work/bu")" -v wu="$(median < "$work/wu")" -v nu="$(median < "$work/nu")" \
    -v bk="$(median < "$work/bk")" -v wk="$(median < "$work/wk")" -v nk="$(median < "$work/nk")" 'BEGIN {
  printf "  median TPS: direct %.0f, pgbouncer %.0f, wardgate %.0f, wardgate with no plugin %.0f\n", d, b, w, n;
  printf "  median CPU per transaction: pgbouncer %.1f µs, wardgate %.1f µs, wardgate with no plugin %.1f µs\n", bc, wc, nc;
  printf "    of which user space / kernel: pgbouncer %.1f / %.1f, wardgate %.1f / %.1f, no plugin %.1f / %.1f\n", bu, bk, wu, wk, nu, nk;
  printf "  ratios: pgbouncer/direct %.2f, wardgate/direct %.2f, wardgate/pgbouncer %.2f\n", b/d, w/d, w/b;
  printf "  wardgate with no plugin/pgbouncer %.2f (relay, SQL analysis, recording); the plugins take wardgate to %.2f of that\n", n/b, w/n }'

echo
echo "== single-client latency (pgbench -S -c1 -T$SECS, per-transaction log), $ROUNDS interleaved rounds"
# "p50 p99" in µs of one run against a DSN.
lat() {
  rm -f "$work"/lat.*
  (cd "$work" && "$PGBIN/pgbench" -n -S -c1 -j1 -T "$SECS" -l --log-prefix=lat "$1" >/dev/null 2>&1)
  cat "$work"/lat.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%d %d\n", a[int(NR*0.5)], a[int(NR*0.99)]}'
}
# Each round runs the four in another order, so no one always runs first.
names=(direct pgbouncer wardgate bare); dsns=("$direct" "$bouncer" "$wardgate" "$bare")
for t in "${names[@]}"; do : > "$work/p50.$t"; : > "$work/p99.$t"; done
for r in $(seq 1 "$ROUNDS"); do
  line="  round $r:"
  for k in 0 1 2 3; do
    i=$(( (k + r - 1) % 4 ))
    read -r p50 p99 < <(lat "${dsns[$i]}")
    echo "$p50" >> "$work/p50.${names[$i]}"; echo "$p99" >> "$work/p99.${names[$i]}"
    line="$line ${names[$i]} $p50/$p99"
  done
  echo "$line µs (p50/p99)"
done
for t in "${names[@]}"; do
  read -r "p50_$t" < <(median < "$work/p50.$t"); read -r "p99_$t" < <(median < "$work/p99.$t")
done
echo "  medians: direct p50 ${p50_direct} µs  p99 ${p99_direct} µs"
echo "  pgbouncer p50 ${p50_pgbouncer} µs  p99 ${p99_pgbouncer} µs  (added p50 $((p50_pgbouncer - p50_direct)) µs: what a plain proxy costs here)"
echo "  wardgate  p50 ${p50_wardgate} µs  p99 ${p99_wardgate} µs"
echo "  wardgate with no plugin p50 ${p50_bare} µs  p99 ${p99_bare} µs  (added p50 $((p50_bare - p50_direct)) µs: relay, SQL analysis, recording)"
echo "  added p50 $((p50_wardgate - p50_direct)) µs (target <= 50), added p99 $((p99_wardgate - p99_direct)) µs"
