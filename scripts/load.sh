#!/usr/bin/env bash
# Load: CLIENTS (default 220) concurrent sessions through the gateway with all
# first-party plugins active (sql-guard, pii-mask, jsonl-sink, recording), each
# running a mix of a pgbench point read and a masked customer read, for
# LOAD_SECS (default 60). The same load straight to PostgreSQL runs first as
# the baseline. Prints TPS and latency of both, their ratio, the peak number of
# concurrent gateway sessions seen upstream, gateway RSS and fds, and checks
# masking still holds under load. Exits non-zero on any error.
# Not a test (numbers depend on the machine).
set -euo pipefail
. "$(dirname "$0")/env.sh"
LOAD_SECS=${LOAD_SECS:-60}; CLIENTS=${CLIENTS:-220}
. "$WARDGATE_ROOT/scripts/lib/stack.sh"
wg_build load
wg_demo 10
wg_gateway load '*'
ulimit -n 4096 2>/dev/null || true

cat > "$WORK/mix.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\set cid random(1, 5)
SELECT name, email, card_number, ssn FROM customers WHERE id = :cid;
SQL
app_pw=$(cat "$DEMO_DIR/upstream-password")
up_port=$(sed -E 's|.*:([0-9]+)/.*|\1|' <<<"$UPSTREAM")
direct="host=127.0.0.1 port=$up_port dbname=shop user=wardgate_app password=$app_pw sslmode=disable"

run() { # $1 label, $2 dsn -> prints "tps latency_ms failed"
  "$PGBIN/pgbench" -n -M extended -c "$CLIENTS" -j2 -T "$LOAD_SECS" -f "$WORK/mix.sql" "$2" >"$WORK/$1.log" 2>&1 || true
  local tps lat failed
  tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$WORK/$1.log")
  lat=$(sed -nE 's/^latency average = ([0-9.]+) ms/\1/p' "$WORK/$1.log")
  failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$WORK/$1.log")
  echo "${tps:-0} ${lat:-0} ${failed:-0}"
}

echo "load: $CLIENTS concurrent sessions, ${LOAD_SECS}s each, pgbench -M extended (point read + masked customer read)"
read -r dtps dlat dfail < <(run direct "$direct")
echo "  direct:   tps $dtps, latency avg $dlat ms, failed $dfail"

# Heap trims so far (wardgate_heap_trims_total, read as the demo's admin).
trims() {
  { curl -sf -H "Authorization: Bearer $APPROVER" "http://127.0.0.1:$ADM_PORT/metrics" || true; } |
    awk '$1 == "wardgate_heap_trims_total" {print $2; found = 1} END {if (!found) print 0}'
}
rss0=$(rss); fd0=$(fds); peak_rss=$rss0; peak_fd=$fd0; peak_sessions=0; trims0=$(trims)
read -r peak_wasm peak_other < <(rss_parts)
( "$PGBIN/pgbench" -n -M extended -c "$CLIENTS" -j2 -T "$LOAD_SECS" -f "$WORK/mix.sql" "$GW_DSN" >"$WORK/wardgate.log" 2>&1; echo $? > "$WORK/wardgate.rc" ) &
bench=$!
masked_ok=0; masked_bad=0
while kill -0 "$bench" 2>/dev/null; do
  r=$(rss); if [ "$r" -gt "$peak_rss" ]; then peak_rss=$r; read -r peak_wasm peak_other < <(rss_parts); fi
  f=$(fds); [ "$f" -gt "$peak_fd" ] && peak_fd=$f
  n=$(psql -X -qAt "$UPSTREAM" -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'wardgate_app'" 2>/dev/null || echo 0)
  [ "$n" -gt "$peak_sessions" ] && peak_sessions=$n
  # Masking under load: a fresh session through the gateway never sees a raw value.
  out=$(psql -X -qAt "$GW_DSN" -c "SELECT email, card_number, ssn FROM customers WHERE id = 1" 2>&1 || true)
  if grep -q 'j\*\*\*@example.com' <<<"$out" && ! grep -qE 'jane.doe@|4111 1111 1111 1111|123-45-6789' <<<"$out"; then
    masked_ok=$((masked_ok+1)); else masked_bad=$((masked_bad+1)); echo "  unexpected: $out"; fi
  sleep 1
done
wait "$bench" || true
# The gateway hands freed heap back once the sessions have closed
# (host/src/memory.rs): wait for its trim counter to move (at most 30 s).
trims1=$trims0; trim_wait=0
while [ "$trims1" -le "$trims0" ] && [ "$trim_wait" -lt 60 ]; do
  sleep 0.5; trim_wait=$((trim_wait + 1)); trims1=$(trims)
done
if [ "$trims1" -gt "$trims0" ]; then trimmed="heap trimmed within $(( (trim_wait + 1) / 2 )) s of the load's end"
else trimmed="no heap trim within 30 s of the load's end"; fi
rss1=$(rss); fd1=$(fds)
wtps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$WORK/wardgate.log"); wlat=$(sed -nE 's/^latency average = ([0-9.]+) ms/\1/p' "$WORK/wardgate.log")
wfail=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$WORK/wardgate.log")
client_errors=$(grep -c -E 'error|ERROR' "$WORK/wardgate.log" || true)
gateway_errors=$(grep -c -E ' ERROR ' "$SERVE_LOG" || true)
echo "  wardgate: tps ${wtps:-0}, latency avg ${wlat:-0} ms, failed ${wfail:-?}; client error lines $client_errors, gateway ERROR lines $gateway_errors"
awk -v d="$dtps" -v w="${wtps:-0}" 'BEGIN { printf "  ratio wardgate/direct %.2f\n", (d > 0 ? w / d : 0) }'
echo "  peak concurrent upstream sessions $peak_sessions (of $CLIENTS clients); masking checks $masked_ok ok, $masked_bad bad"
echo "  gateway RSS start $((rss0/1024)) MiB, peak $((peak_rss/1024)) MiB, end $((rss1/1024)) MiB ($trimmed); fds start $fd0, peak $peak_fd, end $fd1"
echo "  at the peak: plugin instances (wasmtime's pool) $((peak_wasm/1024)) MiB, the rest $((peak_other/1024)) MiB" \
  "(per session: $((peak_wasm / CLIENTS)) KiB and $((peak_other / CLIENTS)) KiB)"
errors=$(( ${wfail:-1} + client_errors + gateway_errors + masked_bad + $(cat "$WORK/wardgate.rc") ))
[ "$peak_sessions" -ge "$CLIENTS" ] || { echo "  only $peak_sessions sessions were open at once"; errors=$((errors+1)); }
echo "errors $errors"
if [ "$errors" -ne 0 ]; then tail -5 "$WORK/wardgate.log"; grep -E ' ERROR ' "$SERVE_LOG" | head -5 || true; exit 1; fi
