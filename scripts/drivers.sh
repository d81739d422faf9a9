#!/usr/bin/env bash
# Third-party drivers' own test suites through the gateway, each run once
# directly against PostgreSQL and once through Wardgate with pii-mask active:
#   psycopg2's (749 tests: simple protocol, COPY, NOTIFY, large objects,
#     async/green connections, cancel, two-phase commit, every type adapter);
#   asyncpg's (373 tests: extended protocol only, binary formats for every
#     type, pipelined executemany, binary COPY FROM STDIN, cursors, pools that
#     send RESET ALL on release, LISTEN, cancellation and timeouts);
#   pg8000's (647 tests, pure Python: unnamed extended-protocol statements,
#     its three APIs, COPY in and out with odd delimiters and quotes, every
#     type conversion, NOTIFY, parameter statuses);
#   SQLAlchemy's PostgreSQL dialect tests (~9,800 per driver, run through
#     psycopg2 and through asyncpg: reflection of tables, views, indexes,
#     constraints, enums and domains from the catalogs, every PostgreSQL type
#     round-tripped, arrays, JSON, ranges, ON CONFLICT, RETURNING, server-side
#     cursors, isolation levels);
#   Django's own test suite over psycopg 3 (4,031 tests in the apps named in
#     DJANGO_APPS: the ORM's queries, expressions, aggregates, every model
#     field, bulk operations, transactions and savepoints, SELECT FOR UPDATE,
#     schema changes, migrations, introspection, and postgres_tests: arrays,
#     hstore, ranges, full-text search, constraints, server-side cursors),
#     and 2,910 of them again with psycopg 3's server-side binding (named
#     prepared statements, typed parameters);
#   tokio-postgres's own (135 tests, Rust: pipelined queries and prepares,
#     binary formats for every type it maps, binary COPY in and out, portals,
#     cancel tokens, notifications, simple-query batches, transactions and
#     savepoints), plaintext on loopback as its tests connect without TLS.
# A test that fails only through the gateway fails this script, unless it is
# listed below with the reason the gateway answers differently on purpose. A
# failure is retried once on its own (some async tests are timing-sensitive).
# Run by scripts/test.sh; alone: scripts/drivers.sh (DRIVERS="pg8000 ..." for some). Needs PyPI.
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$WARDGATE_ROOT/scripts/lib/stack.sh"
PSYCOPG2=2.9.13
ASYNCPG=0.32.0
PG8000=1.31.6
SQLALCHEMY=2.0.58
DJANGO=5.2.19
PSYCOPG=3.3.9
DJANGO_APPS=${DJANGO_APPS:-"postgres_tests backends transactions select_for_update queries expressions aggregation model_fields lookup db_functions bulk_create schema introspection migrations inspectdb raw_query"}
# Again with server-side binding (named prepared statements, typed parameters).
DJANGO_BINDING_APPS=${DJANGO_BINDING_APPS:-"postgres_tests backends transactions queries expressions aggregation model_fields lookup db_functions bulk_create"}
# The version in Cargo.lock (the end-to-end tests use it): its crate source carries its tests.
TOKIO_POSTGRES=$(grep -A1 '^name = "tokio-postgres"$' "$WARDGATE_ROOT/Cargo.lock" | sed -nE 's/^version = "(.*)"$/\1/p')

# Deliberate differences, each with its reason.
own_db="connects to a database the test itself creates: dbname names a configured Wardgate connection"
masked="reads back the e-mail addresses it stored, which pii-mask masks (README: What gets masked)"
own_role="logs in as a role the test creates: clients log in as Wardgate principals"
unknown_db="expects 3D000 for a database that does not exist; any connection a principal may not use is 28000, so connection names are not disclosed"
declare -A EXPECTED=(
  [test_encoding_name]="client_encoding is pinned to UTF8 (README: Reading SQL exactly as PostgreSQL does)"
  [test_copy_bytes]="client_encoding is pinned to UTF8"
  [test_copy_text]="client_encoding is pinned to UTF8"
  [test_copy_expert_textiobase]="client_encoding is pinned to UTF8"
  [test_notifies_received_on_set_client_encoding]="client_encoding is pinned to UTF8"
  [test_koi8]="client_encoding is pinned to UTF8"
  [test_latin1]="client_encoding is pinned to UTF8"
  [test_scs]="standard_conforming_strings is pinned on"
  [test_user]="the client's user is its Wardgate principal, not the upstream role"
  [test_flush_on_write]="its last step selects a 50 MiB value: more than pii-mask's 64 MiB can mask (the error's hint says which limit to raise)"
  [test_no_explicit_close_no_debug]="asyncio's TLS transport holds the dropped connection one event-loop tick longer than the test allows (the direct run is plaintext; through the gateway without TLS it passes)"
  [test_no_explicit_close_with_debug]="the same, with asyncio debug on"
  [test_pool_config_persistence]="asyncpg's pool cancels its reconnecting maintenance task on close; over TLS a connect cancelled before the SSLRequest's answer leaves a future whose exception nobody reads (asyncpg's own race: directly against PostgreSQL with ssl = on it fails 6 runs in 25; the direct run is plaintext)"
  [test_introspection_loads_basetypes_of_domains]="$own_db"
  [test_introspection_on_large_db]="$own_db"
  [test_type_cache_invalidation_in_pool]="$own_db"
  [test_prepare_cache_invalidation_in_pool]="$own_db"
  [test_copy_from_with_error]="the quoted value of a data exception is withheld on masked sessions (README: What gets masked)"
  [test_Connection_plain_socket]="names no database: dbname names a Wardgate connection, and it defaults to the user name"
  [test_md5]="$unknown_db"
  [test_password]="$unknown_db"
  [test_unicode_databaseName]="$unknown_db"
  [test_bytes_databaseName]="$unknown_db"
  [test_database_name_unicode]="$unknown_db"
  [test_database_name_bytes]="$unknown_db"
  [test_bytes_password]="$unknown_db"
  [test_password_bytes]="$unknown_db"
  [testDatabaseMissing]="$unknown_db"
  [testMd5]="$unknown_db"
  [testPassword]="$unknown_db"
  [testUnicodeDatabaseName]="$unknown_db"
  [testBytesDatabaseName]="$unknown_db"
  [testBytesPassword]="$unknown_db"
  [test_scram_sha_256]="$own_role"
  [test_multiple_host_real_connect]="fills a URL template by replacing the letters H, P, D and U, which also rewrites those letters inside a service-account key (the direct run's hex password has none)"
  [test_backslash_escapes_detection]="standard_conforming_strings is pinned on"
  [test_client_encoding]="client_encoding is pinned to UTF8"
  [test_on_conflict_do_update_constraint_can_be_index]="$masked"
  [test_on_conflict_do_update_exotic_targets_two]="$masked"
  [test_on_conflict_do_update_exotic_targets_three]="$masked"
  [test_on_conflict_do_update_exotic_targets_four]="$masked"
  [test_on_conflict_do_update_exotic_targets_four_no_pk]="$masked"
  [test_on_conflict_do_update_exotic_targets_five]="$masked"
  [test_on_conflict_do_update_exotic_targets_six]="$masked"
  [test_on_conflict_do_update_no_row_actually_affected]="$masked"
  [test_domain_create_table]="$masked"
  [test_create_table_schema_translate_map]="$masked (its get_domains cases)"
  [test_unaccent_with_conforming_strings_off]="standard_conforming_strings is pinned on"
  [plain_password_ok]="$own_role"
  [scram_password_ok]="$own_role"
  [test_connect_role]="PostgreSQL quotes the role name in a 22023 error, a data exception, whose quoted values are withheld on masked sessions (README: What gets masked)"
)

wg_build drivers
venv="$HOME/.cache/wardgate/drivers-venv"
src="$HOME/.cache/wardgate/psycopg2-$PSYCOPG2"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import psycopg2" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "psycopg2-binary==$PSYCOPG2"
fi
if [ ! -d "$src/tests" ]; then
  "$venv/bin/pip" download -q --no-deps --no-binary :all: -d "$WORK" "psycopg2==$PSYCOPG2"
  tar -xzf "$WORK/psycopg2-$PSYCOPG2.tar.gz" -C "$(dirname "$src")"
fi
# sdist NAME VERSION: unpack NAME's sdist under ~/.cache/wardgate (once),
# fetched by the URL and SHA-256 of PyPI's simple index, as pip reads them.
sdist() {
  local dir="$HOME/.cache/wardgate/$1-$2"
  [ -d "$dir/tests" ] || [ -d "$dir/test" ] && return 0
  link=$(curl -fsS "https://pypi.org/simple/$1/" | grep -oE "https://[^\"#]*/$1-$2\.tar\.gz#sha256=[0-9a-f]{64}" | head -1)
  [ -n "$link" ] || { echo "$1 $2: no sdist in PyPI's simple index"; exit 1; }
  curl -fsSL -o "$WORK/$1.tar.gz" "${link%%#*}"
  echo "${link##*=}  $WORK/$1.tar.gz" | sha256sum -c --quiet
  tar -xzf "$WORK/$1.tar.gz" -C "$(dirname "$dir")"
}
# asyncpg: the wheel (compiled protocol) runs the tests of its sdist (building
# the sdist is not needed).
asrc="$HOME/.cache/wardgate/asyncpg-$ASYNCPG"
if ! "$venv/bin/python" -c "import asyncpg, distro; assert asyncpg.__version__ == '$ASYNCPG'" 2>/dev/null; then
  "$venv/bin/pip" install -q "asyncpg==$ASYNCPG" distro
fi
if [ ! -d "$asrc/tests" ]; then
  sdist asyncpg "$ASYNCPG"
  rm -rf "$asrc/asyncpg" # the tests must import the installed package, not the unbuilt source
fi
# pg8000 (pure Python): its sdist's tests, with the package and pytest
# installed. Its fixtures hard-code user "postgres" and no database: they
# read PGUSER and PGDATABASE instead.
psrc="$HOME/.cache/wardgate/pg8000-$PG8000"
if ! "$venv/bin/python" -c "import pg8000, pytest, pytz; assert pg8000.__version__ == '$PG8000'" 2>/dev/null; then
  "$venv/bin/pip" install -q "pg8000==$PG8000" pytest pytz
fi
sdist pg8000 "$PG8000"
sed -i 's|db_connect = {"user": "postgres", "password": "pw"}|db_connect = {"user": environ.get("PGUSER", "postgres"), "password": "pw", "database": environ.get("PGDATABASE")}|' \
  "$psrc"/test/{native,dbapi,legacy}/conftest.py

# SQLAlchemy: its sdist's tests run from the source tree (PYTHONPATH=lib);
# the asyncpg dialect needs greenlet.
qsrc="$HOME/.cache/wardgate/sqlalchemy-$SQLALCHEMY"
if ! "$venv/bin/python" -c "import greenlet, typing_extensions" 2>/dev/null; then
  "$venv/bin/pip" install -q greenlet typing_extensions
fi
sdist sqlalchemy "$SQLALCHEMY"

# Django: its sdist's tests run from the source tree (PYTHONPATH) over
# psycopg 3. Each run has two databases of its own (some schema and migration
# tests leave tables behind, which the other run would trip over).
djsrc="$HOME/.cache/wardgate/django-$DJANGO"
if ! "$venv/bin/python" -c "import psycopg, asgiref, sqlparse; assert psycopg.__version__ == '$PSYCOPG'" 2>/dev/null; then
  "$venv/bin/pip" install -q "psycopg[binary]==$PSYCOPG" asgiref sqlparse
fi
sdist django "$DJANGO"

# tokio-postgres: its crate source (in cargo's registry once the workspace is
# built) copied under ~/.cache/wardgate, its tests pointed at TPG_PORT with the
# login in TPG_LOGIN instead of port 5433 and user postgres, then built.
tsrc="$HOME/.cache/wardgate/tokio-postgres-$TOKIO_POSTGRES"
if [ ! -f "$tsrc/.wardgate-patched" ]; then
  crate=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"tokio-postgres-$TOKIO_POSTGRES" 2>/dev/null | head -1)
  [ -n "$crate" ] || { echo "tokio-postgres $TOKIO_POSTGRES: not in cargo's registry (build the workspace first)"; exit 1; }
  rm -rf "$tsrc"; cp -r "$crate" "$tsrc"
  python3 - "$tsrc/tests/test" <<'PY'
import sys
d = sys.argv[1]
login = 'fn wg(s: &str) -> String {\n    let login = std::env::var("TPG_LOGIN").unwrap();\n    s.replace("user=postgres dbname=postgres", &login).replace("user=postgres", &login)\n}\n\n'
port = 'format!("127.0.0.1:{}", std::env::var("TPG_PORT").unwrap())'
main = open(f"{d}/main.rs").read()
main = main.replace("async fn connect_raw(", login + "async fn connect_raw(", 1)
main = main.replace('TcpStream::connect("127.0.0.1:5433")', f"TcpStream::connect({port})")
main = main.replace("let config = s.parse::<Config>()", "let config = wg(s).parse::<Config>()")
open(f"{d}/main.rs", "w").write(main)
rt = open(f"{d}/runtime.rs").read()
rt = rt.replace("tokio_postgres::connect(s, NoTls)",
                'tokio_postgres::connect(&crate::wg(s).replace("5433", &std::env::var("TPG_PORT").unwrap()), NoTls)')
open(f"{d}/runtime.rs", "w").write(rt)
assert main.count("TPG_PORT") >= 2 and "wg(s)" in main and "TPG_PORT" in rt, "tokio-postgres tests changed shape"
PY
  touch "$tsrc/.wardgate-patched"
fi
TPG_FEATURES="with-serde_json-1 with-uuid-1 with-chrono-0_4 with-bit-vec-0_6 with-time-0_3 with-eui48-1 with-geo-types-0_7 array-impls"
# One build; cargo names the test binary it made ("Executable ... (PATH)").
tbuild=$(cd "$tsrc" && CARGO_TARGET_DIR="$HOME/.cache/wardgate/tokio-postgres-target" cargo test --no-run --test test \
  --features "$TPG_FEATURES" 2>&1) || true
tbin=$(sed -nE 's/^ *Executable .*\((.*)\)$/\1/p' <<<"$tbuild" | tail -1)
[ -x "$tbin" ] || { echo "tokio-postgres $TOKIO_POSTGRES: its tests did not build:"; tail -30 <<<"$tbuild"; exit 1; }
cat > "$djsrc/tests/test_wardgate.py" <<'PY'
import os
common = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": "127.0.0.1",
    "PORT": int(os.environ["DJ_PORT"]),
    "USER": os.environ["DJ_USER"],
    "PASSWORD": os.environ["DJ_PASSWORD"],
    "OPTIONS": {"sslmode": os.environ["DJ_SSLMODE"], "server_side_binding": os.environ.get("DJ_SERVER_BINDING") == "1"},
}
DATABASES = {
    "default": {**common, "NAME": os.environ["DJ_DB"], "TEST": {"NAME": os.environ["DJ_DB"]}},
    "other": {**common, "NAME": os.environ["DJ_DB"] + "_other", "TEST": {"NAME": os.environ["DJ_DB"] + "_other"}},
}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
PY

wg_demo 1
# psycopg2's suite gets a database of its own; asyncpg's names "postgres" in
# its code. Both are reached as the upstream superuser (the suites create
# tables, types and large objects), granted to the demo's agents.
psql -X -q "$UPSTREAM" -c "CREATE DATABASE psycopg2_test" >/dev/null
# SQLAlchemy's suite expects two extra schemas and hstore in its database.
psql -X -q "$UPSTREAM" -c "CREATE DATABASE sqla_test" >/dev/null
psql -X -q "${UPSTREAM%/*}/sqla_test" -c "CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2; CREATE EXTENSION hstore" >/dev/null
# tokio-postgres's suite: its types tests need hstore, citext and ltree; its
# login tests, roles with passwords (the direct run only).
psql -X -q "$UPSTREAM" -c "CREATE DATABASE tokio_postgres_test" \
  -c "CREATE ROLE pass_user LOGIN PASSWORD 'password'" -c "CREATE ROLE scram_user LOGIN PASSWORD 'password'" >/dev/null
psql -X -q "${UPSTREAM%/*}/tokio_postgres_test" -c "CREATE EXTENSION hstore; CREATE EXTENSION citext; CREATE EXTENSION ltree" >/dev/null
for db in django_direct django_direct_other django_gateway django_gateway_other; do
  psql -X -q "$UPSTREAM" -c "CREATE DATABASE $db" >/dev/null
done
up_pw=$(sed -E 's|^postgresql://[^:]+:([^@]+)@.*|\1|' <<<"$UPSTREAM")
up_port=$(sed -E 's|.*@127\.0\.0\.1:([0-9]+)/.*|\1|' <<<"$UPSTREAM")
gw="$WORK/drivers"; mkdir -p "$gw/plugins" "$gw/state"
cp "$WARDGATE_PLUGINS"/pii-mask.wasm "$WARDGATE_PLUGINS"/pii-mask.toml "$gw/plugins/"
cp "$DEMO_DIR/state/service-accounts.json" "$gw/state/"
printf '%s\n' "$up_pw" > "$gw/upstream-password"
GW_PORT=$(port)
# A connection per database the suites use, each granted to the demo's agents.
connection() {
  printf '\n[connections.%s]\nhost = "127.0.0.1"\nport = %s\ndatabase = "%s"\nuser = "postgres"\n' "$1" "$up_port" "$1"
  printf 'password_file = "upstream-password"\nplugins = ["pii-mask"]\n\n[[grants]]\nconnection = "%s"\ngroups = ["agents"]\n' "$1"
}
{
  cat <<TOML
[gateway]
state_dir = "state"
plugin_dir = "plugins"

[listeners.postgres]
bind = "127.0.0.1:$GW_PORT"
tls_self_signed = true
allow_plaintext = true

[admin]
bind = "127.0.0.1:$(port)"
TOML
  for db in psycopg2_test postgres sqla_test django_gateway django_gateway_other tokio_postgres_test; do connection "$db"; done
} > "$gw/wardgate.toml"
WARDGATE_LOG=warn "$WG" serve --config "$gw/wardgate.toml" 2>"$WORK/serve.log" &
SERVE_PID=$!
GW_DSN="host=127.0.0.1 port=$GW_PORT dbname=psycopg2_test user=demo-agent password=$AGENT_KEY sslmode=require"
ready=0
for _ in $(seq 1 100); do psql -X -q "$GW_DSN" -c 'select 1' >/dev/null 2>&1 && { ready=1; break; }; sleep 0.2; done
[ "$ready" = 1 ] || { echo "the gateway did not start:"; cat "$WORK/serve.log"; psql -X "$GW_DSN" -c 'select 1'; exit 1; }

# psycopg2 direct|gateway [TEST...]: run its suite (or the named tests), print its output.
psycopg2() {
  local where=$1; shift
  if [ "$where" = direct ]; then
    export PSYCOPG2_TESTDB_PORT=$up_port PSYCOPG2_TESTDB_USER=postgres PSYCOPG2_TESTDB_PASSWORD=$up_pw PGSSLMODE=disable
  else
    export PSYCOPG2_TESTDB_PORT=$GW_PORT PSYCOPG2_TESTDB_USER=demo-agent PSYCOPG2_TESTDB_PASSWORD=$AGENT_KEY PGSSLMODE=require
  fi
  export PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1
  if [ $# -eq 0 ]; then
    (cd "$src" && timeout 900 "$venv/bin/python" -c \
      "import tests, unittest; unittest.main(defaultTest='tests.test_suite', verbosity=2)" 2>&1) || true
  else
    (cd "$src" && timeout 300 "$venv/bin/python" -m unittest -v "$@" 2>&1) || true
  fi
}

# asyncpg direct|gateway [TEST...]: its suite reads libpq's variables (with
# PGHOST set it uses that server instead of starting its own).
asyncpg() {
  local where=$1; shift
  if [ "$where" = direct ]; then
    local env=(PGPORT="$up_port" PGUSER=postgres PGPASSWORD="$up_pw" PGSSLMODE=disable)
  else
    local env=(PGPORT="$GW_PORT" PGUSER=demo-agent PGPASSWORD="$AGENT_KEY" PGSSLMODE=require)
  fi
  if [ $# -eq 0 ]; then set -- discover -v -s tests -t .; else set -- -v "$@"; fi
  (cd "$asrc" && env PGHOST=127.0.0.1 PGDATABASE=postgres "${env[@]}" timeout 900 "$venv/bin/python" -m unittest "$@" 2>&1) || true
}
# pg8000 direct|gateway [TEST...]: pytest, libpq's variables read by the patched fixtures.
pg8000() {
  local where=$1; shift
  if [ "$where" = direct ]; then
    local env=(PGPORT="$up_port" PGUSER=postgres PGPASSWORD="$up_pw")
  else
    local env=(PGPORT="$GW_PORT" PGUSER=demo-agent PGPASSWORD="$AGENT_KEY")
  fi
  [ $# -gt 0 ] || set -- test/native test/dbapi test/legacy --ignore-glob='*auth*' --ignore-glob='*benchmark*'
  (cd "$psrc" && env PGHOST=127.0.0.1 PGDATABASE=postgres "${env[@]}" timeout 900 \
    "$venv/bin/python" -m pytest -q -rfE -p no:cacheprovider "$@" 2>&1) || true
}
# sqlalchemy DRIVER direct|gateway [TEST...]: SQLAlchemy's PostgreSQL dialect
# tests through DRIVER (psycopg2 or asyncpg), pytest with --dburi.
sqlalchemy() {
  local driver=$1 where=$2 url tls; shift 2
  # (TLS through the gateway, plaintext direct; named in the URL, not PGSSLMODE.)
  if [ "$driver" = asyncpg ]; then tls=ssl; else tls=sslmode; fi
  if [ "$where" = direct ]; then
    url="postgresql+$driver://postgres:$up_pw@127.0.0.1:$up_port/sqla_test?$tls=disable"
  else
    url="postgresql+$driver://demo-agent:$AGENT_KEY@127.0.0.1:$GW_PORT/sqla_test?$tls=require"
  fi
  [ $# -gt 0 ] || set -- test/dialect/postgresql
  (cd "$qsrc" && env -u PGSSLMODE PYTHONPATH=lib timeout 900 "$venv/bin/python" -m pytest -q -rfE -p no:cacheprovider \
    --dburi "$url" "$@" 2>&1) || true
}
# django direct|gateway [LABEL...]: Django's runtests.py (DJANGO_APPS, or the named tests).
django() {
  local where=$1; shift
  if [ "$where" = direct ]; then
    local env=(DJ_PORT="$up_port" DJ_USER=postgres DJ_PASSWORD="$up_pw" DJ_SSLMODE=disable DJ_DB=django_direct)
  else
    local env=(DJ_PORT="$GW_PORT" DJ_USER=demo-agent DJ_PASSWORD="$AGENT_KEY" DJ_SSLMODE=require DJ_DB=django_gateway)
  fi
  [ $# -gt 0 ] || set -- $DJANGO_APPS
  (cd "$djsrc/tests" && env -u PGSSLMODE "${env[@]}" PYTHONPATH="$djsrc" timeout 1500 "$venv/bin/python" runtests.py \
    --settings=test_wardgate --keepdb --parallel 1 --noinput "$@" 2>&1) || true
}
# The same with psycopg 3's server-side binding (its schema and migration
# tests, which leave tables behind, are not among DJANGO_BINDING_APPS).
django_server_binding() {
  local where=$1; shift
  [ $# -gt 0 ] || set -- $DJANGO_BINDING_APPS
  DJ_SERVER_BINDING=1 django "$where" "$@"
}
# tokio_postgres direct|gateway [TEST...]: its test binary (libtest), plaintext.
tokio_postgres() {
  local where=$1; shift
  if [ "$where" = direct ]; then
    local env=(TPG_PORT="$up_port" TPG_LOGIN="user=postgres password=$up_pw dbname=tokio_postgres_test")
  else
    local env=(TPG_PORT="$GW_PORT" TPG_LOGIN="user=demo-agent password=$AGENT_KEY dbname=tokio_postgres_test")
  fi
  [ $# -eq 0 ] || set -- --exact "$@"
  (cd "$tsrc" && env "${env[@]}" timeout 600 "$tbin" --test-threads=2 "$@" 2>&1) || true
}
sqlalchemy_psycopg2() { sqlalchemy psycopg2 "$@"; }
sqlalchemy_asyncpg() { sqlalchemy asyncpg "$@"; }

# Test ids of failures (unittest: subtests and setUpClass included; pytest: path::name).
failed() {
  { sed -nE 's/^(FAIL|ERROR): ([A-Za-z_0-9]+) \(([A-Za-z_0-9.]+)\)( .*)?$/\3/p' "$1"
    sed -nE 's/^(FAILED|ERROR) (.*::.*)$/\2/p' "$1" | sed -E 's/ - .*$//'
    sed -nE 's/^test (.*) \.\.\. FAILED$/\1/p' "$1"; } | sort -u
}
# The run's summary line(s), empty when it did not complete.
summary() { grep -E '^(Ran [0-9]+ tests|OK|FAILED( \(.*)?$)|^=* ?[0-9]+ (passed|failed)|[0-9]+ passed' "$1" | tr '\n' ' ' || true; }
# Whether a run of one test passed.
passed() { grep -qE '^OK|^=* ?1 passed|^test result: ok\. 1 passed'; }

# compare NAME: run suite NAME both ways; fail on a test failing only through the gateway.
compare() {
  local name=$1 bad=0
  "$name" direct > "$WORK/$name-direct.log"
  "$name" gateway > "$WORK/$name-gateway.log"
  for f in direct gateway; do
    sum=$(summary "$WORK/$name-$f.log")
    [ -n "$sum" ] || { echo "  the $f run did not complete:"; tail -30 "$WORK/$name-$f.log"; exit 1; }
    echo "  $f: $sum"
  done
  failed "$WORK/$name-direct.log" > "$WORK/$name-direct.failed"
  failed "$WORK/$name-gateway.log" > "$WORK/$name-gateway.failed"
  while read -r t; do
    local test=${t%%\[*}; test=${test##*[.:]}
    if [ -n "${EXPECTED[$test]:-}" ]; then
      echo "  differs on purpose: $t — ${EXPECTED[$test]}"
    elif "$name" gateway "$t" | passed; then
      echo "  passed when retried alone: $t"
    else
      echo "  FAILED only through the gateway: $t"
      { awk -v t="($t)" '/^(FAIL|ERROR): /{p=index($0,t)>0} p' "$WORK/$name-gateway.log"; grep -F "$t" "$WORK/$name-gateway.log"; } \
        | head -30 | sed 's/^/    /'
      bad=1
    fi
  done < <(comm -13 "$WORK/$name-direct.failed" "$WORK/$name-gateway.failed")
  return $bad
}

# DRIVERS="asyncpg sqlalchemy_asyncpg" scripts/drivers.sh runs only those suites.
declare -A TITLE=(
  [psycopg2]="psycopg2 $PSYCOPG2 test suite"
  [asyncpg]="asyncpg $ASYNCPG test suite"
  [pg8000]="pg8000 $PG8000 test suite"
  [sqlalchemy_psycopg2]="SQLAlchemy $SQLALCHEMY PostgreSQL dialect tests over psycopg2"
  [sqlalchemy_asyncpg]="SQLAlchemy $SQLALCHEMY PostgreSQL dialect tests over asyncpg"
  [django]="Django $DJANGO test suite ($(wc -w <<<"$DJANGO_APPS") apps) over psycopg $PSYCOPG"
  [django_server_binding]="Django $DJANGO test suite ($(wc -w <<<"$DJANGO_BINDING_APPS") apps) over psycopg $PSYCOPG with server-side binding"
  [tokio_postgres]="tokio-postgres $TOKIO_POSTGRES test suite"
)
status=0
for suite in ${DRIVERS:-psycopg2 asyncpg pg8000 sqlalchemy_psycopg2 sqlalchemy_asyncpg django django_server_binding tokio_postgres}; do
  [ -n "${TITLE[$suite]:-}" ] || { echo "unknown suite $suite (use: ${!TITLE[*]})"; exit 2; }
  echo "== ${TITLE[$suite]}: directly, then through Wardgate (pii-mask active)"
  compare "$suite" || status=1
done
[ "$status" = 0 ] || { echo "== driver suites: regressions through the gateway"; exit 1; }
echo "== driver suites: no difference but the deliberate ones"
