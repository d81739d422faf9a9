#!/usr/bin/env bash
# Soak: pgbench through the gateway (sql-guard + pii-mask + jsonl-sink active),
# with a just-in-time approval every 10 s and a plugin hot swap every 5 s, for
# SOAK_SECS (default 600). Samples the gateway's RSS and open file descriptors
# every second and prints a summary; exits non-zero on any unexpected error.
# Not a test (numbers depend on the machine). Env: SOAK_SECS, CLIENTS (8).
set -euo pipefail
. "$(dirname "$0")/env.sh"
SOAK_SECS=${SOAK_SECS:-600}; CLIENTS=${CLIENTS:-8}
. "$WARDGATE_ROOT/scripts/lib/stack.sh"
wg_build soak
wg_demo 10
wg_gateway soak '*'
dsn=$GW_DSN; adm_port=$ADM_PORT; approver=$APPROVER; DIR=$DEMO_DIR; work=$WORK; serve_pid=$SERVE_PID
rss0=$(rss); fd0=$(fds); peak=$rss0
fd_targets() { for f in /proc/$SERVE_PID/fd/*; do readlink "$f" 2>/dev/null; done | sed -E 's/[0-9a-f]{32}/ID/g; s/\[[0-9]+\]/[N]/' | sort; }
fd_targets > "$work/fds.start"
echo "soak: ${SOAK_SECS}s, $CLIENTS pgbench clients (-M extended, select-only), an approval every 10 s, a hot swap every 5 s"

# Load.
"$PGBIN/pgbench" -n -S -M extended -c "$CLIENTS" -j2 -T "$SOAK_SECS" "$dsn" >"$work/pgbench.log" 2>&1 &
WG_PIDS+=($!); bench_pid=$!

# Hot swaps: rewrite pii-mask's manifest (a new digest reloads the plugin).
( n=0; while sleep 5; do n=$((n+1)); echo "# swap $n" >> "$DIR/soak-plugins/pii-mask.toml"; echo $n > "$work/swaps"; done ) &
WG_PIDS+=($!)

# Approvals: an agent's DO block waits for review; the DBA approves it.
( ok=0; bad=0
  while sleep 10; do
    out=$(psql -X -q "$dsn" -c "DO \$\$ BEGIN PERFORM count(*) FROM orders; END \$\$" 2>&1) && ok=$((ok+1)) || { bad=$((bad+1)); echo "$out" >> "$work/approval-errors"; }
    echo "$ok $bad" > "$work/approvals"
  done ) &
WG_PIDS+=($!)
( while sleep 1; do
    id=$("$WG" approvals list --admin-url "http://127.0.0.1:$adm_port" --credential "$approver" 2>/dev/null | grep -o 'apr_[0-9a-f]*' | head -1 || true)
    [ -n "$id" ] && "$WG" approvals approve "$id" --reason soak --admin-url "http://127.0.0.1:$adm_port" --credential "$approver" >/dev/null 2>&1 || true
  done ) &
WG_PIDS+=($!)

# A sample a minute shows whether growth levels off (warm-up) or keeps going (a leak).
t=0; trend=""
while kill -0 "$bench_pid" 2>/dev/null; do
  r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
  t=$((t+1)); [ $((t % 60)) -eq 0 ] && trend="$trend $((r/1024))/$(fds)"
  sleep 1
done
wait "$bench_pid" || true
sleep 1
rss1=$(rss); fd1=$(fds)
read -r approved approval_errors < "$work/approvals" || { approved=0; approval_errors=0; }
swaps=$(cat "$work/swaps" 2>/dev/null || echo 0)
tx=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$work/pgbench.log")
failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$work/pgbench.log")
client_errors=$(grep -c -E 'error|ERROR' "$work/pgbench.log" || true)
gateway_errors=$(grep -c -E ' ERROR ' "$SERVE_LOG" || true)
errors=$(( ${failed:-0} + client_errors + approval_errors + gateway_errors ))
echo "transactions $tx, failed ${failed:-0}, client errors $client_errors; approvals $approved approved, $approval_errors failed; hot swaps $swaps; gateway ERROR log lines $gateway_errors"
echo "RSS start $((rss0/1024)) MiB, end $((rss1/1024)) MiB, peak $((peak/1024)) MiB, drift $(( (rss1-rss0)/1024 )) MiB"
echo "open fds start $fd0, end $fd1, drift $((fd1-fd0))"
echo "per minute (RSS MiB/fds):$trend"
fd_targets > "$work/fds.end"
echo "fds opened since start (kind, count): $(comm -13 "$work/fds.start" "$work/fds.end" | sort | uniq -c | awk '{printf "%s x%s; ", $2, $1}')"
echo "errors $errors"
if [ "$errors" -ne 0 ]; then
  tail -5 "$work/pgbench.log"; grep -E ' ERROR ' "$SERVE_LOG" | head -5 || true
  cat "$work/approval-errors" 2>/dev/null | head -5 || true
  exit 1
fi
