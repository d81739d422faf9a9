//! The PostgreSQL path end to end: real PostgreSQL, real clients (psql,
//! pgbench, tokio-postgres), the first-party plugins.

mod common;

use std::time::{Duration, Instant};

use common::raw::{msg, raw_session, raw_session_with_login, read_until, tags};
use common::{assert_no_pii, db, gateway, Options};
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("no db error: {e}"))
}

/// The message of the refusal (SQLSTATE 42501) `sql` gets as a simple query.
async fn refusal(c: &tokio_postgres::Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.err().unwrap_or_else(|| panic!("{sql} was allowed"));
    assert_eq!(code(&e), "42501", "{sql}: {e:?}");
    e.as_db_error().unwrap().message().to_string()
}

/// `sql` is refused (42501) as a simple query and when prepared; the first message.
async fn refused_both_ways(c: &tokio_postgres::Client, sql: &str) -> String {
    let m = refusal(c, sql).await;
    let e = c.prepare(sql).await.err().unwrap_or_else(|| panic!("{sql} was prepared"));
    assert_eq!(code(&e), "42501", "{sql}: {e:?}");
    m
}

/// Each of `sqls` runs, one simple Query after the other.
async fn all_run(c: &tokio_postgres::Client, sqls: &[&str]) {
    for sql in sqls {
        c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

/// Each of `sqls` is refused (42501) with a message containing `saying`.
async fn all_refused(c: &tokio_postgres::Client, sqls: &[&str], saying: &str) {
    for sql in sqls {
        let m = refusal(c, sql).await;
        assert!(m.contains(saying), "{sql}: {m}");
    }
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_sees_masked_rows() {
    let g = gateway(Options::default()).await;
    let (ok, out, err) = g.psql(&["-c", "SELECT name, email, card_number, ssn, notes FROM customers ORDER BY id"]);
    assert!(ok, "{err}");
    assert!(out.contains("Jane Doe"), "{out}");
    assert!(out.contains("j***@example.com"), "{out}");
    assert!(out.contains("**** **** **** 1111"), "{out}");
    assert!(out.contains("***-**-6789"), "{out}");
    assert_no_pii(&out, "psql output");
    assert_no_pii(&g.recordings(), "recording");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_is_refused_when_tls_is_required() {
    let g = gateway(Options { plaintext: false, ..Default::default() }).await;
    let r = tokio_postgres::connect(&g.dsn(), tokio_postgres::NoTls).await;
    let e = r.err().expect("plaintext must be refused");
    assert_eq!(code(&e), "28000");
    assert!(e.as_db_error().unwrap().message().contains("requires TLS"), "{e:?}");
    let (ok, _, err) = g.psql(&["-c", "SELECT 1"]);
    assert!(ok, "TLS client works: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_and_recorded_without_the_credential() {
    let g = gateway(Options::default()).await;
    let bad = "wg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for cred in [bad, "hunter2-password", ""] {
        let dsn = format!("host=127.0.0.1 port={} dbname=shop user=x password='{cred}' sslmode=disable", g.port);
        let e = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.err().expect("refused");
        assert_eq!(code(&e), "28P01", "{e}");
    }
    let rec = g.recordings();
    assert!(rec.contains("auth.failed"));
    assert!(!rec.contains(bad) && !rec.contains("hunter2-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_grant_is_refused_without_hints() {
    let g = gateway(Options::default()).await;
    let dsn = format!("host=127.0.0.1 port={} dbname=billing user=x password={} sslmode=disable", g.port, g.key);
    let e = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "28000");
    let msg = e.as_db_error().unwrap().message().to_string();
    assert_eq!(msg, "Wardgate: sa:test-agent has no access to connection \"billing\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_binary_results_are_masked_and_types_survive() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    // tokio-postgres asks for binary results: text columns arrive as UTF-8 bytes.
    let rows = c
        .query("SELECT id, email, card_number, ssn, created_at FROM customers WHERE id <= $1 ORDER BY id", &[&2i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let id: i32 = rows[0].get(0);
    assert_eq!(id, 1);
    let email: String = rows[0].get(1);
    assert_eq!(email, "j***@example.com");
    let card: String = rows[1].get(2);
    assert_eq!(card, "****-****-****-5559");
    let ssn: String = rows[0].get(3);
    assert_eq!(ssn, "***-**-6789");
    // A prepared statement reused many times.
    let st = c.prepare("SELECT email FROM customers WHERE id = $1").await.unwrap();
    for i in 1..=5 {
        let r = c.query_one(&st, &[&i]).await.unwrap();
        let e: String = r.get(0);
        assert!(e.contains("***@"), "{e}");
    }
}

/// A value's bytes as the server sent them, whatever its type.
#[derive(Debug, PartialEq)]
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_no_masker_reads_skip_the_sandbox_and_are_still_recorded() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    // pii-mask reads no boolean or int2/int4/oid column: these rows pass as they came.
    let sql = "SELECT id, id::int2 AS small, id > 1 AS later, id::oid AS o FROM customers WHERE id <= $1 ORDER BY id";
    let rows = c.query(sql, &[&3i32]).await.unwrap();
    let got: Vec<(i32, i16, bool, u32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(got, vec![(1, 1, false, 1), (2, 2, true, 2), (3, 3, true, 3)]);
    let text =
        simple_rows(&c.simple_query("SELECT id, id > 1 FROM customers WHERE id <= 2 ORDER BY id").await.unwrap());
    assert_eq!(text, vec![vec![Some("1".into()), Some("f".into())], vec![Some("2".into()), Some("t".into())]]);
    // An int8 may hold a card number: read, and a masked integer becomes NULL.
    let r = c.query_one("SELECT 4111111111111111::int8, 7::int4", &[]).await.unwrap();
    assert_eq!((r.get::<_, Option<i64>>(0), r.get::<_, i32>(1)), (None, 7));
    // So does an array (or range) of them: its masked text would be no value
    // of its type. A UUID whose leading digits look like a card is no card.
    let uuid = "42719259-7440-4891-a38b-6ac1a8f4bca0";
    let sql = format!("SELECT ARRAY[4111111111111111::int8, 7], '{uuid}'::uuid, ARRAY['{uuid}'::uuid], '{uuid}'::text");
    let text = simple_rows(&c.simple_query(&sql).await.unwrap());
    assert_eq!(text, vec![vec![None, Some(uuid.into()), Some(format!("{{{uuid}}}")), Some(uuid.into())]]);
    // A numeric read in binary format is read as its number: masked, NULL;
    // otherwise its bytes as the server sent them.
    let r = c.query_one("SELECT 4111111111111111::numeric, 12345.6789::numeric", &[]).await.unwrap();
    let ok: Vec<u8> = [3u16, 1, 0, 4, 1, 2345, 6789].iter().flat_map(|v| v.to_be_bytes()).collect();
    assert_eq!((r.get::<_, Option<Raw>>(0), r.get::<_, Option<Raw>>(1)), (None, Some(Raw(ok))));
    // So are arrays of numbers in binary format.
    let sql = "SELECT ARRAY[7, 4111111111111111]::int8[], ARRAY[4111111111111111]::numeric[], ARRAY[7, NULL]::int8[]";
    let r = c.query_one(sql, &[]).await.unwrap();
    let kept: Option<Vec<Option<i64>>> = r.get(2);
    assert_eq!((r.get::<_, Option<Raw>>(0), r.get::<_, Option<Raw>>(1), kept), (None, None, Some(vec![Some(7), None])));
    // A record in binary format holds its text fields between length bytes
    // (here 0xC8, no UTF-8): read for them all the same.
    let r = c.query_one("SELECT row('reach me at jane@example.com ' || repeat('x', 171)), row(7)", &[]).await.unwrap();
    let seven: Vec<u8> = [1u32, 23, 4, 7].iter().flat_map(|v| v.to_be_bytes()).collect();
    assert_eq!((r.get::<_, Option<Raw>>(0), r.get::<_, Option<Raw>>(1)), (None, Some(Raw(seven))));
    let rec = g.recordings();
    assert!(
        rec.contains(r#""rows":3,"sample_rows":[["1","1","\\x00","\\x00000001"],["2","2","\\x01","\\x00000002"],"#),
        "passed-through rows are counted and sampled (binary values no masker reads in hex)"
    );
    assert!(rec.contains(r#""sample_rows":[["1","f"],["2","t"]]"#));
    // Each response is recorded against its own request, though the driver
    // pipelines Parse/Bind/Execute ahead of the upstream's answers.
    let requests: Vec<serde_json::Value> = rec
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "request" || e["kind"] == "response")
        .collect();
    let card_request = requests
        .iter()
        .find(|e| e["kind"] == "request" && e["body"]["statement"].as_str().unwrap_or("").contains("::int8"))
        .expect("the int8 query is on record");
    let card_response = requests
        .iter()
        .find(|e| e["kind"] == "response" && e["body"]["findings"].to_string().contains("card"))
        .expect("its response is on record");
    assert_eq!(card_request["body"]["request_id"], card_response["body"]["request_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_is_read_as_the_bytes_it_stands_for() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let sql = "SELECT convert_to('reach me at jane@example.com', 'UTF8'), '\\x000102ff'::bytea, \
               ARRAY[convert_to('jane@example.com', 'UTF8'), NULL], ARRAY['\\x6869'::bytea, NULL]";
    // Text format writes bytea in hex (or, on request, escaped), which no
    // detector reads: decoded for the maskers, a value holding an e-mail is
    // NULL; the others reach the client as the server wrote them.
    let text = simple_rows(&c.simple_query(sql).await.unwrap());
    assert_eq!(text, vec![vec![None, Some("\\x000102ff".into()), None, Some(r#"{"\\x6869",NULL}"#.into())]]);
    // The same in COPY, text and CSV.
    let (ok, out, err) = g.psql(&["-c", &format!("COPY ({sql}) TO STDOUT")]);
    assert!(ok, "{err}");
    assert_eq!(out, "\\N\t\\\\x000102ff\t\\N\t{\"\\\\\\\\x6869\",NULL}\n");
    let (ok, out, err) = g.psql(&["-c", &format!("COPY ({sql}) TO STDOUT (FORMAT csv)")]);
    assert!(ok, "{err}");
    assert_eq!(out, ",\\x000102ff,,\"{\"\"\\\\x6869\"\",NULL}\"\n");
    c.batch_execute("SET bytea_output = 'escape'").await.unwrap();
    let text = simple_rows(&c.simple_query(sql).await.unwrap());
    assert_eq!(text, vec![vec![None, Some("\\000\\001\\002\\377".into()), None, Some("{hi,NULL}".into())]]);
    // Binary format: the bytes themselves, read alike.
    let r = c.query_one(sql, &[]).await.unwrap();
    assert_eq!((r.get::<_, Option<Vec<u8>>>(0), r.get::<_, Option<Vec<u8>>>(1)), (None, Some(vec![0, 1, 2, 255])));
    type Bytes = Option<Vec<Option<Vec<u8>>>>;
    assert_eq!((r.get::<_, Bytes>(2), r.get::<_, Bytes>(3)), (None, Some(vec![Some(b"hi".to_vec()), None])));
    assert_no_pii(&g.recordings(), "recordings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_json_and_expressions_are_masked() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let r = c.query_one("SELECT to_jsonb(c) FROM customers c WHERE id = 1", &[]).await.unwrap();
    let v: serde_json::Value = r.get(0);
    let s = v.to_string();
    assert_no_pii(&s, "jsonb row");
    assert!(s.contains("j***@example.com"), "{s}");
    let r = c.query_one("SELECT upper(email) || ' / ' || card_number FROM customers WHERE id = 2", &[]).await.unwrap();
    let s: String = r.get(0);
    assert!(!s.contains("OMAR.HADDAD@EXAMPLE.ORG") && !s.contains("5500-0055-5555-5559"), "{s}");
    // Arrays of text in binary format: masked element by element, still arrays.
    let r = c
        .query_one("SELECT array_agg(email ORDER BY id), ARRAY['plain', NULL]::varchar[] FROM customers", &[])
        .await
        .unwrap();
    let emails: Vec<Option<String>> = r.get(0);
    let emails: Vec<String> = emails.into_iter().flatten().collect();
    assert!(emails.len() > 2 && emails.iter().all(|e| e.contains("***@")), "{emails:?}");
    assert_no_pii(&emails.join(" "), "text[] in binary format");
    let plain: Vec<Option<String>> = r.get(1);
    assert_eq!(plain, vec![Some("plain".to_string()), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_order_with_a_denial_in_the_middle() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let s1 = c.prepare("SELECT 1::int4").await.unwrap();
    let s3 = c.prepare("SELECT 3::int4").await.unwrap();
    let (a, b, d) = tokio::join!(c.query_one(&s1, &[]), c.query("DROP TABLE customers", &[]), c.query_one(&s3, &[]));
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(code(&b.unwrap_err()), "42501");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);
    // and the connection is still healthy
    assert_eq!(c.query_one("SELECT 4::int4", &[]).await.unwrap().get::<_, i32>(0), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dangerous_statement_class_is_denied_and_the_session_continues() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    for sql in [
        "DROP TABLE customers",
        "drop /* x */ TABLE \"customers\"",
        "TRUNCATE orders",
        "ALTER TABLE customers DROP COLUMN ssn",
        "DELETE FROM orders",
        "UPDATE orders SET status = 'x'",
        "UPDATE orders SET status = 'x' WHERE 1 = 1",
        "GRANT ALL ON customers TO PUBLIC",
        "REVOKE ALL ON customers FROM PUBLIC",
        "COPY orders FROM PROGRAM 'id'",
        "COPY orders TO PROGRAM 'cat'",
        "COPY orders TO '/tmp/wardgate-leak'",
        "COPY orders FROM '/etc/passwd'",
        "CREATE FUNCTION leak() RETURNS SETOF text LANGUAGE sql AS $$ SELECT replace(email, '@', ' at ') FROM customers $$",
        "CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON INSERT TO orders DO ALSO DELETE FROM customers",
        "ALTER ROLE wardgate_app SUPERUSER",
        "SELECT query_to_xml('SELECT replace(email, ''@'', '' at '') FROM customers', true, false, '')",
        "SELECT table_to_xml('customers', true, false, '')",
        "SELECT lo_get(1234)",
        "CREATE OPERATOR ### (FUNCTION = pg_read_file, RIGHTARG = text)",
        "CREATE SCHEMA sneaky CREATE TABLE t (a int) GRANT ALL ON t TO PUBLIC",
        "MERGE INTO orders o USING (SELECT 1 AS x) s ON true WHEN MATCHED THEN DELETE",
        "DELETE FROM orders WHERE NOT false",
        "DELETE FROM orders WHERE id = id",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_terminate_backend(1)",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "EXPLAIN ANALYZE DELETE FROM orders",
        "PREPARE p AS DELETE FROM orders",
        "SELECT 1; DROP TABLE orders",
        "DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$",
        "CALL some_procedure()",
        "SET ROLE postgres",
        "SELEC broken syntax",
    ] {
        let e = c.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} was allowed"));
        assert_eq!(code(&e), "42501", "{sql}: {e}");
        let m = e.as_db_error().unwrap().message();
        assert!(m.starts_with("Wardgate:") && m.contains("sql-guard"), "{sql}: {m}");
    }
    let n: i64 = c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert!(n > 0, "orders survived");
    let n: i64 = c.query_one("SELECT count(*) FROM customers", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_where_that_keeps_every_row_by_logic_or_by_not_null_columns_counts_as_none() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let before: i64 = c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    let sqls = [
        // orders.id is the primary key and status is NOT NULL: the catalog says so.
        "DELETE FROM orders WHERE id IS NOT NULL",
        "DELETE FROM public.orders o WHERE NOT (o.id IS NULL)",
        "UPDATE orders SET amount_cents = 0 WHERE status IS DISTINCT FROM NULL",
        "DELETE FROM orders WHERE customer_id IS NOT NULL OR id IS NOT NULL",
        "WITH d AS (DELETE FROM orders WHERE id IS NOT NULL RETURNING 1) SELECT count(*) FROM d",
        // System columns are never NULL, whatever the catalog lists.
        "UPDATE orders SET status = 'x' WHERE ctid IS NOT NULL",
        "DELETE FROM orders o WHERE NOT (o.xmin IS NULL)",
        // Logic alone.
        "DELETE FROM orders WHERE (id = 1) IS NOT TRUE OR id = 1",
        "DELETE FROM orders WHERE coalesce(customer_id, 0) = coalesce(customer_id, 0)",
        "DELETE FROM orders WHERE customer_id = 3 OR NOT customer_id = 3 OR customer_id IS NULL",
        // The row is among its own candidates; arithmetic with constants and casts are looked through.
        "DELETE FROM orders WHERE id IN (id)",
        "DELETE FROM orders WHERE id = ANY (ARRAY[id])",
        "UPDATE orders SET status = 'x' WHERE id BETWEEN id AND id",
        "DELETE FROM orders WHERE id + 0 = id",
        "DELETE FROM orders WHERE id::bigint = id",
        "DELETE FROM orders WHERE ROW(id) IS NOT NULL",
        // A truth value compared with a constant.
        "DELETE FROM orders WHERE (id = id) = true",
        "DELETE FROM orders WHERE (id = 1) <> (id = 1) IS NOT TRUE",
        // Each constant is a pick of its own; a comparison is NULL only when a side is.
        "DELETE FROM orders WHERE (id = 1) = true OR (id = 1) = false",
        "DELETE FROM orders WHERE (id = 1) IS NOT NULL",
        "UPDATE orders SET status = 'x' WHERE (id = 1) IS DISTINCT FROM NULL",
        // CASE and coalesce read as the conditions they are.
        "DELETE FROM orders WHERE CASE WHEN id = 1 THEN true ELSE true END",
        "DELETE FROM orders WHERE CASE id WHEN 1 THEN true ELSE NOT id = 1 END",
        "DELETE FROM orders WHERE coalesce(id = 1 OR id <> 1, false)",
        // A subquery that returns the column from every row of the same table.
        "DELETE FROM orders WHERE id IN (SELECT id FROM orders)",
        "UPDATE orders SET status = 'x' WHERE orders.id = ANY (SELECT o.id FROM public.orders o WHERE true)",
    ];
    all_refused(&c, &sqls, "without a WHERE").await;
    // A pattern that matches every string, on a NOT NULL column: read after
    // the same statement with a real pattern ran (no template serves it).
    c.batch_execute("DELETE FROM orders WHERE status LIKE 'zz%'").await.unwrap();
    c.batch_execute("UPDATE orders SET status = status WHERE id::text ~ '^9'").await.unwrap();
    let patterns = [
        "DELETE FROM orders WHERE status LIKE '%'",
        "UPDATE orders SET status = status WHERE id::text ~ ''",
        "DELETE FROM orders WHERE status SIMILAR TO '%'",
    ];
    all_refused(&c, &patterns, "without a WHERE").await;
    let e = c.execute("DELETE FROM orders WHERE status ILIKE '%%'", &[]).await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    // The extended protocol is analysed alike.
    let e = c.execute("DELETE FROM orders WHERE id IS NOT NULL", &[]).await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    let n: i64 = c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(n, before, "no order was deleted");
    // A null test of a nullable column is a real filter.
    c.batch_execute("UPDATE orders SET status = status WHERE customer_id IS NOT NULL").await.unwrap();
    c.batch_execute("DELETE FROM orders WHERE placed_at IS NULL AND id = id").await.unwrap();
    // So is a subquery that filters.
    c.batch_execute("DELETE FROM orders WHERE id IN (SELECT id FROM orders WHERE status = 'zz')").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_cap_refuses_writes_that_change_too_many_rows_or_every_row_whatever_the_protocol() {
    let g = gateway(Options { connection_extra: "max_rows_written = 3".into(), ..Options::default() }).await;
    let c = g.client().await;
    // Set up and counted directly, as the superuser (DROP is refused through the gateway).
    let pg = &db().pg;
    pg.psql(
        "shop",
        "DROP TABLE IF EXISTS rowcap_ten, rowcap_two; \
         CREATE TABLE rowcap_ten AS SELECT g AS id, 'v' AS v FROM generate_series(1, 10) g; \
         CREATE TABLE rowcap_two AS SELECT g AS id FROM generate_series(1, 2) g; \
         DROP TABLE IF EXISTS rowcap_keyed; \
         CREATE TABLE rowcap_keyed (id int PRIMARY KEY, grp int); \
         INSERT INTO rowcap_keyed SELECT g, 1 FROM generate_series(1, 10) g; \
         GRANT ALL ON rowcap_ten, rowcap_two, rowcap_keyed TO wardgate_app",
    )
    .unwrap();
    let count = |t: &str| {
        pg.psql("shop", &format!("SELECT count(*) FROM {t}")).unwrap().split_whitespace().nth(2).unwrap().to_string()
    };
    // Data-dependent WHEREs no static reading can decide: simple protocol.
    all_refused(
        &c,
        &[
            "DELETE FROM rowcap_ten WHERE id > 0",
            "UPDATE rowcap_ten SET v = 'x' WHERE id <> 5 RETURNING id",
            "/* c */ DELETE FROM public.rowcap_ten t WHERE t.id < 1e9 -- c",
            "EXPLAIN (ANALYZE) DELETE FROM rowcap_ten WHERE abs(id) >= 0",
            "SELECT 1; DELETE FROM rowcap_ten WHERE id >= (SELECT min(id) FROM rowcap_ten)",
        ],
        "more than 3 rows",
    )
    .await;
    all_refused(&c, &["DELETE FROM rowcap_two WHERE id > 0"], "every row of its table (2 rows)").await;
    all_refused(
        &c,
        &["WITH d AS (DELETE FROM rowcap_ten WHERE id = 1 RETURNING id) SELECT count(*) FROM d"],
        "cannot be held to this connection's max_rows_written",
    )
    .await;
    let upsert = "INSERT INTO rowcap_ten SELECT * FROM rowcap_ten ON CONFLICT (id) DO UPDATE SET v = 'x'";
    all_refused(&c, &[upsert], "may update any number of rows").await;
    // Extended protocol, parameters, prepared statements, a pipeline.
    let e = c.execute("DELETE FROM rowcap_ten WHERE id > $1", &[&0i32]).await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e:?}");
    let over = c.prepare("UPDATE rowcap_ten SET v = $1 WHERE id >= $2").await.unwrap();
    let (a, b) = tokio::join!(c.execute(&over, &[&"x", &1i32]), c.execute(&over, &[&"y", &9i32]));
    assert_eq!(code(&a.unwrap_err()), "42501");
    assert_eq!(b.unwrap(), 2);
    assert_eq!(count("rowcap_ten"), "10");
    assert_eq!(count("rowcap_two"), "2");
    // Within the cap: runs as written, RETURNING included; the session goes on.
    let rows = c.query("DELETE FROM rowcap_ten WHERE id > $1 RETURNING id", &[&7i32]).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(c.execute("DELETE FROM rowcap_two WHERE id = 1", &[]).await.unwrap(), 1);
    assert_eq!(count("rowcap_ten"), "7");
    // In a transaction block the refusal aborts the transaction, as any error does.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(code(&c.batch_execute("DELETE FROM rowcap_ten WHERE id > 0").await.unwrap_err()), "42501");
    assert_eq!(code(&c.batch_execute("SELECT 1").await.unwrap_err()), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    // An error in the condition points where the client wrote it.
    let e = c.simple_query("DELETE FROM rowcap_ten WHERE nosuch > 0").await.unwrap_err();
    let pos = e.as_db_error().and_then(|d| d.position().cloned());
    assert!(matches!(pos, Some(tokio_postgres::error::ErrorPosition::Original(30))), "{pos:?}");
    assert_eq!(count("rowcap_ten"), "7");
    // A write pinned to one row by a unique key (orders.id, the primary key)
    // runs with the cheaper check that the key is still one.
    assert_eq!(c.execute("UPDATE orders SET status = status WHERE id = $1", &[&1i32]).await.unwrap(), 1);
    let pinned = c.simple_query("DELETE FROM rowcap_keyed WHERE id = 10 RETURNING id").await.unwrap();
    assert_eq!(simple_rows(&pinned), vec![vec![Some("10".to_string())]]);
    // The catalog is the session's start's: a temporary view created since,
    // which shadows rowcap_keyed and calls its non-unique column `id`, must
    // not let `WHERE id = 1` change all nine rows.
    let (c2, c3) = (g.client().await, g.client().await);
    c2.batch_execute("CREATE TEMP VIEW rowcap_keyed AS SELECT grp AS id, id AS grp FROM public.rowcap_keyed")
        .await
        .unwrap();
    let message = |e: tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    let e = c2.execute("DELETE FROM rowcap_keyed WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e:?}");
    assert!(message(e).contains("not the one this session began with"));
    assert_eq!(count("rowcap_keyed"), "9");
    // Run again, it is counted in full (and refused: nine rows).
    let e = c2.execute("DELETE FROM rowcap_keyed WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert!(message(e).contains("more than 3 rows"));
    assert_eq!(count("rowcap_keyed"), "9");
    assert_eq!(c2.execute("DELETE FROM rowcap_keyed WHERE grp = $1", &[&9i32]).await.unwrap(), 1);
    // Columns renamed since a session began (by another session): `id` is
    // now the non-unique column.
    assert_eq!(c3.execute("UPDATE rowcap_keyed SET grp = 1 WHERE id = $1", &[&2i32]).await.unwrap(), 1);
    pg.psql("shop", "ALTER TABLE rowcap_keyed RENAME id TO k; ALTER TABLE rowcap_keyed RENAME grp TO id").unwrap();
    let e = c3.execute("UPDATE rowcap_keyed SET k = k WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert!(message(e).contains("not the one this session began with"));
    // A new inheritance child would add its rows to its parent's writes.
    all_refused(&c3, &["CREATE TABLE rowcap_child () INHERITS (rowcap_ten)"], "inheritance").await;
    // An error after the check's place is reported where the client's text
    // has it, in either protocol, for counted and for pinned writes.
    let c4 = g.client().await;
    let at = |text: &str| {
        let before = &text[..text.find("no_such_column").unwrap()];
        Some(tokio_postgres::error::ErrorPosition::Original(before.chars().count() as u32 + 1))
    };
    for sql in [
        "UPDATE rowcap_ten SET v = v WHERE id > 8 RETURNING no_such_column",
        "UPDATE rowcap_ten SET v = 'é' WHERE(id > 8) RETURNING 'ü', no_such_column",
        "SELECT 1; UPDATE customers SET name = name WHERE id = 1 RETURNING no_such_column",
    ] {
        let e = c4.simple_query(sql).await.unwrap_err();
        assert_eq!(e.as_db_error().and_then(|d| d.position()).cloned(), at(sql), "{sql}: {e:?}");
        let one = sql.strip_prefix("SELECT 1; ").unwrap_or(sql);
        let e = c4.prepare(one).await.unwrap_err();
        assert_eq!(e.as_db_error().and_then(|d| d.position()).cloned(), at(one), "{one}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_writes_and_transactions_work() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS wt (id int primary key, v text)").await.unwrap();
    c.batch_execute(
        "BEGIN; INSERT INTO wt VALUES (1, 'a') ON CONFLICT DO NOTHING; UPDATE wt SET v = 'b' WHERE id = 1; COMMIT",
    )
    .await
    .unwrap();
    let v: String = c.query_one("SELECT v FROM wt WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, "b");
    // A denied statement inside a transaction leaves the transaction usable.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.batch_execute("DELETE FROM wt").await.is_err());
    c.batch_execute("UPDATE wt SET v = 'c' WHERE id = 1; COMMIT").await.unwrap();
    let v: String = c.query_one("SELECT v FROM wt WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_statements_in_one_simple_query_and_cursors_are_masked() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let msgs = c
        .simple_query("SELECT email FROM customers WHERE id = 1; SELECT ssn FROM customers WHERE id = 2")
        .await
        .unwrap();
    let rows = simple_rows(&msgs);
    assert_eq!(rows, vec![vec![Some("j***@example.com".to_string())], vec![Some("***-**-7890".to_string())]]);
    let msgs = c
        .simple_query("BEGIN; DECLARE cur CURSOR FOR SELECT email, card_number FROM customers ORDER BY id; FETCH 2 FROM cur; FETCH 1 FROM cur; COMMIT")
        .await
        .unwrap();
    let rows = simple_rows(&msgs);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(r[0].as_deref().unwrap().contains("***@"), "{r:?}");
    }
    // A binary cursor: text-like values are still masked.
    let msgs = c
        .simple_query(
            "BEGIN; DECLARE bc BINARY CURSOR FOR SELECT email FROM customers ORDER BY id; FETCH 1 FROM bc; COMMIT",
        )
        .await
        .unwrap();
    let rows = simple_rows(&msgs);
    assert_eq!(rows[0][0].as_deref(), Some("j***@example.com"));
    // SQL-level PREPARE / EXECUTE.
    let msgs = c
        .simple_query("PREPARE pe AS SELECT email FROM customers WHERE id = $1; EXECUTE pe(3); DEALLOCATE pe")
        .await
        .unwrap();
    assert_eq!(simple_rows(&msgs), vec![vec![Some("l***@example.net".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_is_masked_in_text_csv_and_binary() {
    let g = gateway(Options::default()).await;
    let (ok, out, err) = g.psql(&["-c", "COPY customers TO STDOUT"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert_no_pii(&out, "COPY text");
    assert!(out.contains("***-**-6789"), "column rule applies to COPY of a table: {out}");
    let (ok, out, err) =
        g.psql(&["-c", "COPY (SELECT name, email, notes FROM customers) TO STDOUT WITH (FORMAT csv, HEADER)"]);
    assert!(ok, "{err}");
    assert_no_pii(&out, "COPY csv");
    assert!(out.starts_with("name,email,notes"), "{out}");
    let (ok, out, err) = g.psql(&["-c", "\\copy (SELECT email FROM customers) TO STDOUT"]);
    assert!(ok, "{err}");
    assert_no_pii(&out, "\\copy");
    // Delimiters, quotes and escapes chosen to cut values apart for a naive parser.
    for opts in [
        "DELIMITER '@'",
        "DELIMITER '-'",
        "FORMAT csv, DELIMITER '@'",
        "FORMAT csv, DELIMITER '-', QUOTE '.'",
        "FORMAT csv, DELIMITER ' ', QUOTE '@', ESCAPE '.'",
        "FORMAT csv, FORCE_QUOTE *, QUOTE '1'",
    ] {
        let sql = format!("COPY (SELECT email, ssn, card_number, phone FROM customers) TO STDOUT WITH ({opts})");
        let (ok, out, err) = g.psql(&["-c", &sql]);
        assert!(ok, "{opts}: {err}");
        assert_eq!(out.lines().count(), 5, "{opts}: {out}");
        assert_no_pii(&out, &format!("COPY with {opts}"));
    }
    // Fields the maskers leave alone reach the client byte for byte as the
    // server wrote them (its FORCE_QUOTE, NULL string and escapes); masked
    // fields are written again in the COPY's format (quoted where the server
    // quoted them), still one row per line.
    let sql = "COPY (SELECT id, name, CASE WHEN id = 1 THEN email END AS e FROM customers WHERE id <= 2 ORDER BY id) \
               TO STDOUT WITH (FORMAT csv, DELIMITER '|', QUOTE '*', ESCAPE '!', NULL 'n-u-l-l', FORCE_QUOTE (name, e))";
    let (ok, out, err) = g.psql(&["-c", sql]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "1|*Jane Doe*|*j!*!*!*@example.com*");
    let sql = "COPY (SELECT id, ssn FROM customers WHERE id = 1) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE (ssn))";
    let (ok, out, err) = g.psql(&["-c", sql]);
    assert!(ok, "{err}");
    assert_eq!(out.trim_end(), "1,\"***-**-6789\"");
    assert_eq!(lines[1], "2|*Omar Haddad*|n-u-l-l");
    // Binary too (psql's simple protocol; several COPYs in one query, each
    // masked by its own columns).
    let (ok, out, err) = g.psql(&[
        "-c",
        "COPY customers TO STDOUT WITH (FORMAT binary); COPY (SELECT 1 AS n, email FROM customers) TO STDOUT (FORMAT binary)",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("PGCOPY").count(), 2, "{out}");
    assert_no_pii(&out, "binary COPY");
    assert!(out.contains("***-**-6789"), "column rule applies to binary COPY: {out}");
}

/// A binary COPY stream parsed apart from the gateway's own parser: its rows' fields.
fn binary_copy_rows(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    assert!(data.starts_with(b"PGCOPY\n\xff\r\n\0"), "signature: {data:?}");
    let i32_at = |at: usize| i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
    let mut at = 19 + i32_at(15) as usize;
    let mut rows = Vec::new();
    loop {
        let n = i16::from_be_bytes([data[at], data[at + 1]]);
        at += 2;
        if n == -1 {
            assert_eq!(at, data.len(), "nothing after the trailer");
            return rows;
        }
        let mut row = Vec::new();
        for _ in 0..n {
            let len = i32_at(at);
            at += 4;
            if len < 0 {
                row.push(None);
            } else {
                row.push(Some(data[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        rows.push(row);
    }
}

async fn copy_out_bytes(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<u8>, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let chunks: Vec<bytes::Bytes> = c.copy_out(sql).await?.try_collect().await?;
    Ok(chunks.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_out_is_masked_by_the_columns_the_upstream_describes() {
    use futures_util::TryStreamExt;
    use tokio_postgres::binary_copy::BinaryCopyOutStream;
    use tokio_postgres::types::Type;
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    // tokio-postgres sends COPY in extended protocol. A table: column rules apply.
    let data = copy_out_bytes(&c, "COPY customers (id, email, ssn) TO STDOUT BINARY").await.unwrap();
    assert_no_pii(&String::from_utf8_lossy(&data), "binary COPY");
    let rows = binary_copy_rows(&data);
    assert_eq!(rows.len(), 5);
    let jane = rows.iter().find(|r| r[0].as_deref() == Some(&1i32.to_be_bytes()[..])).expect("id 1, as int4");
    assert_eq!(jane[1].as_deref(), Some(&b"j***@example.com"[..]));
    assert_eq!(jane[2].as_deref(), Some(&b"***-**-6789"[..]));
    // A temporary table (the session's catalog never saw it) and COPY (query).
    c.batch_execute(
        "CREATE TEMPORARY TABLE bin_tmp (id int, note text); \
         INSERT INTO bin_tmp VALUES (1, 'mail jane.doe@example.com'), (2, NULL)",
    )
    .await
    .unwrap();
    for sql in [
        "COPY bin_tmp TO STDOUT (FORMAT binary)",
        "COPY (SELECT id, note FROM bin_tmp ORDER BY id) TO STDOUT (FORMAT binary)",
    ] {
        let data = copy_out_bytes(&c, sql).await.unwrap();
        assert_no_pii(&String::from_utf8_lossy(&data), sql);
        let rows = binary_copy_rows(&data);
        assert_eq!(rows.len(), 2, "{sql}");
        assert!(String::from_utf8_lossy(rows[0][1].as_deref().unwrap()).starts_with("mail "), "{sql}: {rows:?}");
        assert_eq!(rows[1], vec![Some(2i32.to_be_bytes().to_vec()), None], "{sql}");
        // As the driver reads it: one CopyData a tuple, the header in front of the first.
        let stream = c.copy_out(sql).await.unwrap();
        let rows: Vec<_> = BinaryCopyOutStream::new(stream, &[Type::INT4, Type::TEXT]).try_collect().await.unwrap();
        assert_eq!((rows[0].get::<i32>(0), rows[1].get::<Option<&str>>(1)), (1, None), "{sql}");
        assert!(rows[0].get::<&str>(1).starts_with("mail ") && !rows[0].get::<&str>(1).contains("jane.doe"));
    }
    // No rows: header and trailer in one message.
    let stream = c.copy_out("COPY (SELECT id, note FROM bin_tmp WHERE false) TO STDOUT BINARY").await.unwrap();
    let none: Vec<_> = BinaryCopyOutStream::new(stream, &[Type::INT4, Type::TEXT]).try_collect().await.unwrap();
    assert!(none.is_empty());
    // In a transaction block: the lookups leave it usable, and a COPY that
    // fails reports its own cause, not "current transaction is aborted".
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(binary_copy_rows(&copy_out_bytes(&c, "COPY bin_tmp TO STDOUT BINARY").await.unwrap()).len(), 2);
    let e = copy_out_bytes(&c, "COPY (SELECT nosuch FROM bin_tmp) TO STDOUT BINARY").await.unwrap_err();
    assert_eq!(code(&e), "42703", "{e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(c.query_one("SELECT 3::int4", &[]).await.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_copy_inside_an_unsynced_pipeline_is_refused_not_leaked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = gateway(Options::default()).await;
    let mut raw = raw_session(&g).await;
    let mut msgs = Vec::new();
    let mut put = |tag: u8, body: &[u8]| {
        msgs.push(tag);
        msgs.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msgs.extend_from_slice(body);
    };
    put(b'P', b"\0SELECT 1\0\0\0");
    put(b'B', b"\0\0\0\0\0\0\0\0");
    put(b'E', b"\0\0\0\0\0");
    put(b'P', b"\0COPY customers TO STDOUT (FORMAT binary)\0\0\0");
    put(b'B', b"\0\0\0\0\0\0\0\0");
    put(b'E', b"\0\0\0\0\0");
    put(b'S', b"");
    raw.write_all(&msgs).await.unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !all.ends_with(b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.expect("answered").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("binary COPY output cannot be masked here"), "{text}");
    assert!(!text.contains("PGCOPY"), "{text}");
    assert_no_pii(&text, "refused COPY");
    // A text COPY in the middle of a pipeline: masked, and no lookup (with
    // its Sync) is slipped in: the statements before and after it share
    // one implicit transaction.
    let mut msgs = Vec::new();
    let mut put = |tag: u8, body: &[u8]| {
        msgs.push(tag);
        msgs.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msgs.extend_from_slice(body);
    };
    for sql in ["SELECT txid_current()::text", "COPY customers (email) TO STDOUT", "SELECT txid_current()::text"] {
        put(b'P', format!("\0{sql}\0\0\0").as_bytes());
        put(b'B', b"\0\0\0\0\0\0\0\0");
        put(b'E', b"\0\0\0\0\0");
    }
    put(b'S', b"");
    raw.write_all(&msgs).await.unwrap();
    let mut all = Vec::new();
    while !all.ends_with(b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.expect("answered").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
    }
    let mut b = bytes::BytesMut::from(&all[..]);
    let (mut txids, mut copied) = (Vec::new(), String::new());
    while let Some(m) = take(&mut b) {
        match m.0 {
            b'D' => txids.push(m.1[6..].to_vec()),
            b'd' => copied.push_str(&String::from_utf8_lossy(&m.1)),
            b'E' => panic!("error: {}", String::from_utf8_lossy(&m.1)),
            _ => {}
        }
    }
    assert_eq!(txids.len(), 2, "{}", String::from_utf8_lossy(&all));
    assert_eq!(txids[0], txids[1], "one implicit transaction");
    assert_eq!(copied.lines().count(), 5, "{copied}");
    assert_no_pii(&copied, "pipelined COPY");
}

/// One backend message off `b`: (type, body).
fn take(b: &mut bytes::BytesMut) -> Option<(u8, Vec<u8>)> {
    if b.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
    let m = b.split_to(1 + len);
    Some((m[0], m[5..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_reaches_the_upstream() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS copy_in_t (id int, v text)").await.unwrap();
    let input = "1\tone\n2\ttwo\n3\tthree\n";
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '{}' | PGPASSWORD={} PGSSLMODE=require psql -X -h 127.0.0.1 -p {} -U test-agent -d shop -v ON_ERROR_STOP=1 -c '\\copy copy_in_t FROM STDIN'",
            input.replace('\t', "\\t").replace('\n', "\\n"),
            g.key,
            g.port
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n: i64 = c.query_one("SELECT count(*) FROM copy_in_t WHERE id <= 3", &[]).await.unwrap().get(0);
    assert!(n >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_quoted_in_errors_are_masked() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let e = c.batch_execute("SELECT 'jane.doe@example.com'::int").await.unwrap_err();
    assert_eq!(code(&e), "22P02");
    let m = e.as_db_error().unwrap().message();
    assert!(!m.contains("jane.doe@example.com"), "{m}");
    assert_eq!(m, "invalid input syntax for type integer: \"[withheld by Wardgate]\"");
    // Errors provoked on purpose to read a column: fragments no detector would recognise.
    for (sql, secret) in [
        ("SELECT id FROM customers WHERE email::json IS NULL", "jane"),
        ("SELECT id FROM customers WHERE name::int = 1", "Jane Doe"),
        ("SELECT id FROM customers WHERE notes::json IS NULL", "prefers"),
        ("UPDATE customers SET email = NULL WHERE id = 1", "Jane Doe"),
        ("UPDATE customers SET name = NULL WHERE id = 1", "415 555"),
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let d = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        let all = format!("{} {:?} {:?}", d.message(), d.detail(), d.where_());
        assert!(!all.contains(secret), "{sql}: {all}");
    }
    assert!(c.query_one("SELECT 1", &[]).await.is_ok());
}

/// A masker's column rule finds its column whatever the names around it hold:
/// a comma, a quote or a dot in an earlier column's name shifts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_find_their_column_whatever_the_names_around_it() {
    db().pg
        .psql(
            "shop",
            r#"DROP TABLE IF EXISTS odd_names;
               CREATE TABLE odd_names (id int, "a,b" text, "x""y,z" text, "p.q" text, secret text);
               INSERT INTO odd_names VALUES (1, 'one', 'two', 'three', 'kept-between-us-42');
               GRANT SELECT ON odd_names TO wardgate_app;"#,
        )
        .unwrap();
    let g = gateway(Options { mask_config: r#""odd_names.secret" = "redact""#, ..Default::default() }).await;
    let c = g.client().await;
    let rows = simple_rows(&c.simple_query("SELECT * FROM odd_names").await.unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][..4], [Some("1".into()), Some("one".into()), Some("two".into()), Some("three".into())]);
    let secret = rows[0][4].clone().unwrap();
    assert!(!secret.contains("kept-between") && !secret.contains("42"), "{secret}");
    let row = c.query_one("SELECT secret, \"a,b\" FROM odd_names", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), secret);
    assert_eq!(row.get::<_, String>(1), "one");
}

/// A client may Execute without ever describing what it runs (or a cursor it
/// declared in SQL): the gateway describes it itself, so column rules still
/// apply, in text and binary format, and the client sees no message it did
/// not ask for. A portal's rows are those of the statement it was bound to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_apply_to_rows_the_client_never_described() {
    use tokio::io::AsyncWriteExt;
    db().pg
        .psql(
            "shop",
            "DROP TABLE IF EXISTS undescribed;
             CREATE TABLE undescribed (id int, secret text);
             INSERT INTO undescribed VALUES (7, 'kept-between-us-99');
             GRANT SELECT ON undescribed TO wardgate_app;",
        )
        .unwrap();
    let g = gateway(Options { mask_config: r#""undescribed.secret" = "redact""#, ..Default::default() }).await;
    let mut raw = raw_session(&g).await;
    let sql = b"SELECT id, secret FROM undescribed\0";
    let execute = [msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat();
    // (what the client sends, whether rows come back)
    let mut sent = Vec::new();
    for format in [0u8, 1] {
        // Parse, Bind (every result column in `format`), Execute, Sync: no Describe.
        let bind = [&b"\0\0\0\0\0\0\0\x01\0"[..], &[format]].concat();
        sent.push((
            [msg(b'P', &[&b"\0"[..], sql, b"\0\0"].concat()), msg(b'B', &bind), execute.clone()].concat(),
            true,
        ));
    }
    // A portal runs the statement it was bound to, even when that name is
    // closed and parsed again (and described) before the portal executes.
    let again = b"SELECT 'plain'::text AS other\0";
    sent.push((
        [
            msg(b'P', &[&b"s\0"[..], sql, b"\0\0"].concat()),
            msg(b'D', b"Ss\0"),
            msg(b'B', b"p\0s\0\0\0\0\0\0\0"),
            msg(b'C', b"Ss\0"),
            msg(b'P', &[&b"s\0"[..], again, b"\0\0"].concat()),
            msg(b'D', b"Ss\0"),
            msg(b'E', b"p\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat(),
        true,
    ));
    // A described statement that SQL replaces under the same name (with as many columns).
    let two = b"SELECT id, 'plain'::text FROM undescribed\0";
    sent.push(([msg(b'P', &[&b"t\0"[..], two, b"\0\0"].concat()), msg(b'D', b"St\0"), msg(b'S', b"")].concat(), false));
    sent.push((msg(b'Q', b"DEALLOCATE t; PREPARE t AS SELECT id, secret FROM undescribed\0"), false));
    sent.push(([msg(b'B', b"\0t\0\0\0\0\0\0\0"), execute.clone()].concat(), true));
    // The same, with the SQL that replaces `t` parsed before `t` is
    // described, and run after: what `t` stood for when described is not
    // what it stands for when bound.
    sent.push((msg(b'Q', b"DEALLOCATE t; PREPARE t AS SELECT id, 'plain'::text FROM undescribed\0"), false));
    let replace = [
        msg(b'P', b"d\0DEALLOCATE t\0\0\0"),
        msg(b'P', b"r\0PREPARE t AS SELECT id, secret FROM undescribed\0\0\0"),
        msg(b'D', b"St\0"),
        msg(b'B', b"\0d\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'B', b"\0r\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'B', b"\0t\0\0\0\0\0\0\0"),
        execute.clone(),
    ];
    sent.push((replace.concat(), true));
    // A cursor declared in SQL, executed as a protocol portal; then another
    // cursor declared under its name.
    let plain = b"BEGIN; DECLARE c CURSOR FOR SELECT id, 'plain'::text FROM undescribed\0";
    let run_c = [msg(b'E', b"c\0\0\0\0\0"), msg(b'S', b"")].concat();
    sent.push((msg(b'Q', plain), false));
    sent.push((run_c.clone(), true));
    sent.push((msg(b'Q', b"CLOSE c; DECLARE c CURSOR FOR SELECT id, secret FROM undescribed\0"), false));
    sent.push((run_c, true));
    for (bytes, rows) in sent {
        raw.write_all(&bytes).await.unwrap();
        let seen = read_until(&mut raw, b'Z', 1).await;
        let tags = tags(&seen);
        assert_eq!(tags.last(), Some(&b'Z'), "closed: {}", String::from_utf8_lossy(&seen));
        let text = String::from_utf8_lossy(&seen);
        assert!(!text.contains("kept-between") && !text.contains("99"), "{text}");
        assert!(!tags.contains(&b'E'), "{text}");
        // Rows where rows were asked for; no description nobody asked for.
        assert_eq!(tags.contains(&b'D'), rows, "{tags:?}");
        let described = bytes.windows(6).filter(|w| w == b"D\0\0\0\x07S").count();
        assert_eq!(tags.iter().filter(|t| **t == b'T').count(), described, "{tags:?}");
        assert!(!tags.contains(&b'n'), "{tags:?}");
    }
}

/// `COPY … FROM STDIN` in extended protocol: the server ignores the Sync
/// that tokio-postgres, libpq and pg8000 send right after the Execute (and
/// any Sync inside the data), so the gateway must not wait for its
/// ReadyForQuery, or each later answer would be taken for the one before
/// it; column rules apply to what follows as before. A request inside COPY
/// data (the server would read it as the COPY's failure and lose it) ends
/// that session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_in_extended_protocol_keeps_answers_in_step() {
    use futures_util::SinkExt;
    use tokio::io::AsyncWriteExt;
    db().pg
        .psql(
            "shop",
            "DROP TABLE IF EXISTS copied_in; CREATE TABLE copied_in (id int, secret text);
             GRANT SELECT, INSERT ON copied_in TO wardgate_app;",
        )
        .unwrap();
    let g = gateway(Options { mask_config: r#""copied_in.secret" = "redact""#, ..Default::default() }).await;
    let c = g.client().await;
    let copy = |rows: &'static str| {
        let c = &c;
        async move {
            let sink = c.copy_in::<_, bytes::Bytes>("COPY copied_in FROM STDIN").await?;
            futures_util::pin_mut!(sink);
            sink.send(bytes::Bytes::from_static(rows.as_bytes())).await?;
            sink.finish().await
        }
    };
    let secrets = || async {
        let rows = c.query("SELECT id, secret FROM copied_in ORDER BY id", &[]).await.unwrap();
        rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1))).collect::<Vec<_>>()
    };
    assert_eq!(copy("1\tkept-between-us-96\n2\tkept-between-us-95\n").await.unwrap(), 2);
    for round in 0..2 {
        let rows = secrets().await;
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2], "{round}");
        assert!(rows.iter().all(|r| !r.1.contains("kept-between")), "{rows:?}");
        // A COPY that fails on its data leaves the session in step too.
        let e = copy("x\ty\n").await.unwrap_err();
        assert_eq!(code(&e), "22P02", "{e}");
    }

    // By hand: a Sync inside the data, then CopyDone and Sync: one ReadyForQuery.
    let start_copy = [
        msg(b'P', b"\0COPY copied_in FROM STDIN\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    let mut raw = raw_session(&g).await;
    raw.write_all(&start_copy).await.unwrap();
    assert_eq!(tags(&read_until(&mut raw, b'G', 1).await), b"12G");
    let data = [
        msg(b'd', b"3\tkept-between-us-94\n"),
        msg(b'S', b""),
        msg(b'd', b"4\tkept-between-us-93\n"),
        msg(b'c', b""),
        msg(b'S', b""),
        msg(b'Q', b"SELECT id, secret FROM copied_in WHERE id > 2 ORDER BY id\0"),
    ];
    raw.write_all(&data.concat()).await.unwrap();
    let answers = read_until(&mut raw, b'Z', 2).await;
    let text = String::from_utf8_lossy(&answers);
    assert_eq!(tags(&answers), b"CZTDDCZ", "{text}");
    assert!(!text.contains("kept-between"), "{text}");

    // A request inside COPY data.
    raw.write_all(&start_copy).await.unwrap();
    assert_eq!(tags(&read_until(&mut raw, b'G', 1).await), b"12G");
    raw.write_all(&msg(b'Q', b"SELECT 1\0")).await.unwrap();
    let closed = String::from_utf8_lossy(&read_until(&mut raw, b'Z', 1).await).to_string();
    assert!(closed.contains("inside COPY FROM STDIN data"), "{closed}");
    // A Sync after COPY data sent before the server asked for it: whether
    // PostgreSQL answers it depends on whether that data failed the COPY first.
    let mut raw = raw_session(&g).await;
    raw.write_all(&[start_copy, msg(b'd', b"5\tfive\n"), msg(b'S', b"")].concat()).await.unwrap();
    let closed = String::from_utf8_lossy(&read_until(&mut raw, b'Z', 2).await).to_string();
    assert!(
        closed.contains("Sync (after data sent before the server asked for it) inside COPY FROM STDIN data"),
        "{closed}"
    );
    assert_eq!(secrets().await.len(), 4);
}

/// A Bind of a described statement that fails because a cursor holds the
/// portal's name: the portal that then runs is the cursor, and its rows get
/// the cursor's columns (and their rules), not the statement's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_whose_name_a_failed_bind_reused_keeps_its_column_rules() {
    use tokio::io::AsyncWriteExt;
    db().pg
        .psql(
            "shop",
            "CREATE TABLE IF NOT EXISTS unattributed (id int, secret text);
             TRUNCATE unattributed; INSERT INTO unattributed VALUES (7, 'kept-between-us-98');
             GRANT SELECT ON unattributed TO wardgate_app;",
        )
        .unwrap();
    let g = gateway(Options { mask_config: r#""unattributed.secret" = "redact""#, ..Default::default() }).await;
    let other = g.client().await;
    let mut raw = raw_session(&g).await;
    let steps = [
        // A cursor that outlives its transaction, never described.
        msg(b'Q', b"DECLARE p CURSOR WITH HOLD FOR SELECT id, secret FROM unattributed\0"),
        // Binding p fails (it exists) after the client named a described statement.
        [
            msg(b'P', b"s2\0SELECT 1, 'plain'::text\0\0\0"),
            msg(b'D', b"Ss2\0"),
            msg(b'B', b"p\0s2\0\0\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat(),
        [msg(b'E', b"p\0\0\0\0\0"), msg(b'S', b"")].concat(),
    ];
    let mut seen = Vec::new();
    for step in steps {
        raw.write_all(&step).await.unwrap();
        seen.extend(read_until(&mut raw, b'Z', 1).await);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(!text.contains("kept-between") && !text.contains("98"), "{text}");
    assert!(text.contains("cursor \"p\" already exists") && text.contains("[REDACTED]"), "{text}");
    // Everyone else is fine.
    assert_eq!(other.query_one("SELECT 2::int4", &[]).await.unwrap().get::<_, i32>(0), 2);
}

/// The catalog read that names each column's source cannot be answered by
/// look-alike tables on the upstream role's search_path, and a session whose
/// catalog cannot be read is refused rather than run without column rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_read_cannot_be_shadowed_and_a_failed_one_refuses_the_session() {
    let pg = &db().pg;
    pg.psql(
        "shop",
        "CREATE ROLE wg_shadowed LOGIN PASSWORD 'shadowed-secret';
         CREATE SCHEMA shadow; GRANT USAGE ON SCHEMA shadow TO wg_shadowed;
         CREATE VIEW shadow.pg_class AS SELECT * FROM pg_catalog.pg_class WHERE false;
         GRANT SELECT ON shadow.pg_class TO wg_shadowed;
         ALTER ROLE wg_shadowed SET search_path = shadow, pg_catalog, public;
         CREATE TABLE odd_secrets (id int, secret text);
         INSERT INTO odd_secrets VALUES (1, 'kept-between-us-7');
         GRANT SELECT ON odd_secrets TO wg_shadowed;",
    )
    .unwrap();
    pg.psql("postgres", "CREATE DATABASE catalog_locked").unwrap();
    pg.psql("catalog_locked", "REVOKE SELECT ON pg_catalog.pg_index FROM PUBLIC").unwrap();
    let connection = |name: &str, database: &str, user: &str, secret: &str| {
        format!(
            "[connections.{name}]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{database}\"\nuser = \"{user}\"\n{secret}\n\
             plugins = [\"sql-guard\", \"pii-mask\"]\n\n[[grants]]\nconnection = \"{name}\"\ngroups = [\"agents\"]\n",
            pg.port
        )
    };
    std::env::set_var("WG_TEST_SHADOWED_PW", "shadowed-secret");
    let extra = connection("shadowed", "shop", "wg_shadowed", "password_env = \"WG_TEST_SHADOWED_PW\"")
        + &connection("locked", "catalog_locked", "wardgate_app", "password_file = \"pw\"");
    let g = gateway(Options { extra, mask_config: r#""odd_secrets.secret" = "redact""#, ..Default::default() }).await;
    let dsn =
        |db: &str| format!("host=127.0.0.1 port={} dbname={db} user=x password={} sslmode=disable", g.port, g.key);

    let (c, conn_task) = tokio_postgres::connect(&dsn("shadowed"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn_task);
    let rows = simple_rows(&c.simple_query("SELECT id, secret FROM odd_secrets").await.unwrap());
    assert_eq!(rows[0][0].as_deref(), Some("1"));
    let secret = rows[0][1].clone().unwrap();
    assert!(!secret.contains("kept-between"), "{secret}");

    let e = tokio_postgres::connect(&dsn("locked"), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "58000", "{e:?}");
    let m = e.as_db_error().unwrap().message();
    assert!(m.contains("cannot read the catalog of upstream \"locked\"") && m.contains("pg_index"), "{m}");
    let c = g.client().await;
    assert_eq!(c.query_one("SELECT 1::int4", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_right_query() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    let other = g.client().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let slow = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(20)").await });
    let other_slow = tokio::spawn(async move { other.query_one("SELECT pg_sleep(1)::text", &[]).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = slow.await.unwrap().unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code(), &SqlState::QUERY_CANCELED);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(other_slow.await.unwrap().is_ok(), "the other session's query was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_over_tls_is_answered_with_a_clean_close() {
    // libpq 17 sends cancel requests through TLS and counts a close without
    // close_notify as a failed cancel ("SSL error: unexpected eof").
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = gateway(Options::default()).await;
    let (mut raw, login) = raw_session_with_login(&g).await;
    // BackendKeyData: 'K', length 12, process id, secret.
    let k = login.windows(5).position(|w| w == b"K\0\0\0\x0c").expect("BackendKeyData");
    let key = login[k + 5..k + 13].to_vec();
    raw.write_all(b"Q\0\0\0\x18SELECT pg_sleep(20)\0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    // sslmode=require as the gateway speaks it to upstreams: the test gateway's certificate is self-signed.
    let config = wardgate::tls::upstream_config(&wardgate::config::UpstreamTls::Require).unwrap().unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&key);
    tls.write_all(&cancel).await.unwrap();
    tls.flush().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await.expect("closed");
    assert!(read.is_ok(), "the gateway closed without close_notify: {read:?}");
    // And the query was cancelled.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(6).any(|w| w == b"C57014") {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf)).await.expect("cancelled").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protocol_bytes_close_that_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = gateway(Options::default()).await;
    // Garbage instead of a startup packet.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
    s.write_all(&[0xff; 64]).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed promptly");
    // A valid session that then sends a message with a bogus length.
    let c = g.client().await;
    let mut raw = raw_session(&g).await;
    raw.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut all = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut all)).await.expect("connection closed");
    assert!(String::from_utf8_lossy(&all).contains("invalid message length"), "{}", String::from_utf8_lossy(&all));
    // Everyone else is fine.
    assert_eq!(c.query_one("SELECT 2::int4", &[]).await.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_a_clear_error_and_other_connections_keep_working() {
    let dead_port = wardgate::devenv::free_port().unwrap();
    let g = gateway(Options {
        extra: format!(
            "[connections.dead]\nhost = \"127.0.0.1\"\nport = {dead_port}\ndatabase = \"x\"\nuser = \"x\"\n\n[[grants]]\nconnection = \"dead\"\ngroups = [\"agents\"]\n"
        ),
        ..Default::default()
    })
    .await;
    let dsn = format!("host=127.0.0.1 port={} dbname=dead user=x password={} sslmode=disable", g.port, g.key);
    let e = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "08006");
    assert!(e.as_db_error().unwrap().message().contains("upstream for \"dead\" is unavailable"), "{e}");
    let c = g.client().await;
    assert!(c.query_one("SELECT 1", &[]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_plugin_fails_closed() {
    let g = gateway(Options { plugins: vec!["sql-guard"], ..Default::default() }).await;
    let c = g.client().await;
    let e = c.query("SELECT email FROM customers", &[]).await.unwrap_err();
    assert_eq!(code(&e), "42501");
    assert!(e.as_db_error().unwrap().message().contains("pii-mask is required but not loaded"), "{e}");
}

fn pgbench(g: &common::TestGateway, args: &[&str]) -> String {
    let out = std::process::Command::new("pgbench")
        .args(args)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", g.port.to_string())
        .env("PGDATABASE", "shop")
        .env("PGUSER", "test-agent")
        .env("PGPASSWORD", &g.key)
        .env("PGSSLMODE", "require")
        .output()
        .expect("pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_every_query_mode() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let d = db();
        let bin = wardgate::devenv::pg_bin().unwrap();
        let out = std::process::Command::new(bin.join("pgbench")).args(["-i", "-q", "-s", "1"]).arg(d.pg.dsn("shop")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        d.pg.psql("shop", "GRANT SELECT, INSERT, UPDATE, DELETE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO wardgate_app").unwrap();
    });
    let g = gateway(Options::default()).await;
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&g, &["-n", "-S", "-M", mode, "-c", "2", "-j", "2", "-t", "200"]);
        assert!(out.contains("number of failed transactions: 0"), "{out}");
        // The TPC-B-like script writes (UPDATE ... WHERE, INSERT): allowed.
        let out = pgbench(&g, &["-n", "-M", mode, "-c", "2", "-t", "50"]);
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lexer_cannot_be_switched_under_the_guard() {
    let g = gateway(Options::default()).await;
    let c = g.client().await;
    // With standard_conforming_strings off the server would read this as one
    // string and a DROP; the gateway never lets the setting change.
    for sql in [
        "SET standard_conforming_strings = off",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('standard_' || 'conforming_strings', 'off', false)",
        "SET client_encoding = 'SJIS'",
    ] {
        let e = c.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} was allowed"));
        assert_eq!(code(&e), "42501", "{sql}");
    }
    // Resets are allowed (pools send RESET ALL on every release): they land on
    // the values the gateway's startup packet pinned, whatever the server's
    // own defaults are (the test role's default is off: tests/common).
    for sql in ["RESET ALL", "DISCARD ALL", "RESET standard_conforming_strings", "SET client_encoding TO DEFAULT"] {
        c.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let row = c
            .query_one("SELECT current_setting('standard_conforming_strings'), current_setting('client_encoding')", &[])
            .await
            .unwrap();
        assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, String>(1).as_str()), ("on", "UTF8"), "after {sql}");
    }
    // Pipelined: the SET is refused before the next query is even read.
    let (a, b) = tokio::join!(
        c.batch_execute("SET standard_conforming_strings = off"),
        c.simple_query("SELECT 'x\\' , $$ ' ; SELECT 1; -- $$")
    );
    assert!(a.is_err());
    assert!(b.is_ok(), "read as one string and a dollar-quoted string: {b:?}");
    let scs: String = c.query_one("SHOW standard_conforming_strings", &[]).await.unwrap().get(0);
    assert_eq!(scs, "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_payloads_and_notices_are_masked() {
    let g = gateway(Options::default()).await;
    let (ok, out, err) = g.psql(&[
        "-At",
        "-c",
        "LISTEN wg_channel",
        "-c",
        "NOTIFY wg_channel, 'customer jane.doe@example.com changed'",
        "-c",
        "SELECT pg_backend_pid()",
    ]);
    assert!(ok, "{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("Asynchronous notification \"wg_channel\""), "{all}");
    assert!(all.contains("j***@example.com") && !all.contains("jane.doe@example.com"), "{all}");
    // Clients match notifications to connections by the backend's pid.
    let pid = out.lines().last().unwrap_or_default().trim();
    assert!(all.contains(&format!("server process with PID {pid}.")), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_the_server_sends_at_login_reach_the_client_masked() {
    use futures_util::StreamExt;
    let g = gateway(Options::default()).await;
    // 64+ bytes: the server truncates the name and says so while the session starts.
    let name = format!("report-for-jane.doe@example.com-{}", "x".repeat(40));
    let dsn = format!("{} application_name={name}", g.dsn());
    let (client, mut conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
    let collected = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let mut notices = vec![];
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                notices.push(n.message().to_string());
            }
        }
        notices
    });
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);
    let notices = collected.await.unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("will be truncated"), "{notices:?}");
    assert!(notices[0].contains("***@example.com") && !notices[0].contains("jane.doe@"), "{notices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_over_the_function_call_protocol_are_guarded_and_masked() {
    let dir = common::tempdir("lo");
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "shipping notes\nnothing personal here\n").unwrap();
    let import = format!("\\lo_import {}", plain.display());

    // sql-guard's defaults refuse the large-object family (by name, as for SELECT).
    let g = gateway(Options::default()).await;
    let (ok, _, err) = g.psql(&["-c", &import]);
    assert!(!ok && err.contains("lo_creat"), "{err}");
    let (ok, out, err) = g.psql(&["-At", "-c", "SELECT 1"]);
    assert!(ok && out.trim() == "1", "{err}");

    // Allowed by the guard: psql's \lo_import/\lo_export use libpq's fastpath calls.
    let g = gateway(Options { guard_config: r#"deny_functions = ["pg_read_file"]"#, ..Default::default() }).await;
    let oid = |out: &str| out.split_whitespace().last().unwrap_or_default().to_string();
    let (ok, out, err) = g.psql(&["-c", &import]);
    assert!(ok, "{err}");
    let back = dir.join("back.txt");
    let (ok, _, err) = g.psql(&["-c", &format!("\\lo_export {} {}", oid(&out), back.display())]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&plain).unwrap());

    // Bytes holding what the maskers hide are withheld, not silently cut short.
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "contact jane.doe@example.com\n").unwrap();
    let (ok, out, err) = g.psql(&["-c", &format!("\\lo_import {}", secret.display())]);
    assert!(ok, "{err}");
    let leak = dir.join("leak.txt");
    let (ok, o2, err) = g.psql(&["-c", &format!("\\lo_export {} {}", oid(&out), leak.display())]);
    assert!(!ok && err.contains("loread result withheld"), "{o2}{err}");
    let leaked = std::fs::read_to_string(&leak).unwrap_or_default();
    assert!(!leaked.contains("jane.doe"), "{leaked}");
    let (ok, _, err) = g.psql(&["-c", &format!("\\lo_unlink {}", oid(&out))]);
    assert!(ok, "{err}");
}

#[test]
fn serve_with_a_bad_config_names_file_line_and_key() {
    let dir = common::tempdir("badcfg");
    let path = dir.join("wardgate.toml");
    std::fs::write(&path, "[listeners.postgres]\nbind = \"0.0.0.0:6432\"\nallow_plaintext = true\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wardgate.toml:3:") && err.contains("listeners.postgres.allow_plaintext") && err.contains("fix:"),
        "{err}"
    );
    std::fs::write(&path, "[connections.x]\nhost = \"h\"\nport = \"5432\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wardgate.toml:3:") && err.contains("connections.x.port"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforming_protected_columns_to_evade_masking_is_refused() {
    let g = gateway(Options {
        guard_config: r#"protected_columns = ["customers.email", "customers.card_number", "customers.ssn"]"#,
        ..Default::default()
    })
    .await;
    let c = g.client().await;
    let refused = [
        "SELECT replace(email, '@', ' at ') FROM customers",
        "SELECT encode(convert_to(card_number, 'UTF8'), 'base64') FROM customers",
        "SELECT substr(card_number, 1, 8), substr(card_number, 9) FROM customers",
        "SELECT translate(ssn, '0123456789', 'abcdefghij') FROM customers",
        "SELECT ARRAY[reverse(email)] FROM customers",
        "SELECT x FROM (SELECT email AS x FROM customers) s",
        "WITH e AS (SELECT email FROM customers) SELECT * FROM e",
        "SELECT row_to_json(c)::text FROM customers c",
        "SELECT email FROM customers UNION ALL SELECT 'x'",
        "CREATE TEMP TABLE leak AS SELECT email FROM customers",
        "UPDATE customers SET notes = email WHERE id = 1",
        "COPY (SELECT lower(email) FROM customers) TO STDOUT",
        "SELECT * INTO TEMP copy_of_customers FROM customers",
        "CREATE TEMP VIEW v AS SELECT * FROM customers",
        // Renamed by position, behind a join's alias, as one composite value.
        "SELECT reverse(x) FROM customers AS cs(a, b, c, d, e, x)",
        "SELECT reverse(j.x) FROM (customers CROSS JOIN orders) AS j(a, b, c, d, e, x)",
        "SELECT reverse(j.ssn) FROM (customers NATURAL JOIN orders) AS j",
        "SELECT c FROM customers c",
    ];
    all_refused(&c, &refused, "is protected").await;
    // Copies of the values that the catalog keeps, and SQL run from a string.
    for (sql, says) in [
        ("SELECT translate(histogram_bounds::text, '0123456789', 'abcdefghij') FROM pg_stats", "holds sampled values"),
        ("SELECT attname, most_common_vals FROM pg_catalog.pg_stats", "holds sampled values"),
        ("SELECT s FROM pg_stats s", "holds sampled values"),
        ("SELECT reverse(query) FROM pg_stat_activity", "pg_stat_activity.query is protected"),
        ("SELECT word FROM ts_stat('SELECT to_tsvector(''simple'', ssn) FROM customers')", "ts_stat"),
    ] {
        let m = refusal(&c, sql).await;
        assert!(m.contains(says), "{sql}: {m}");
    }
    c.simple_query("SELECT attname, null_frac, n_distinct FROM pg_stats WHERE tablename = 'customers'").await.unwrap();
    // Returned as they are, they come back masked; filtering on them is allowed by default.
    let rows = simple_rows(
        &c.simple_query("SELECT email, ssn FROM customers WHERE email LIKE '%@%' ORDER BY id").await.unwrap(),
    );
    assert_eq!(rows.len(), 5);
    assert_no_pii(&format!("{rows:?}"), "protected columns returned as they are");
}

/// SQL's `EXECUTE` runs a prepared statement by name, in one namespace with
/// the protocol's Parse: the guards judge what the name stands for, so a
/// copy of a protected column's statement is refused as its own text would
/// be, whichever way the name was defined, and a name stands for what the
/// server's answers prove (a failed Parse defines nothing, a failed
/// re-definition leaves the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_run_by_name_are_judged_as_what_they_run() {
    use common::raw::{bind, exchange, execute, parse, query, sync};
    let g = gateway(Options {
        guard_config: r#"protected_columns = ["customers.email", "customers.ssn"]"#,
        ..Default::default()
    })
    .await;
    let mut raw = raw_session(&g).await;
    let refused = |(tags, text): (String, String), what: &str| {
        assert!(tags == "EZ" && text.contains("42501") && text.contains("is protected"), "{what}: {tags} {text}");
    };
    // A driver's statement, copied into a table by name.
    assert_eq!(exchange(&mut raw, &[parse("q", "SELECT ssn, email FROM customers"), sync()]).await.0, "1Z");
    refused(exchange(&mut raw, &[query("CREATE TEMP TABLE leak (a, b) AS EXECUTE q")]).await, "CTAS of a Parse");
    // One SQL prepared; run as it is, it comes back masked.
    let (tags, _) = exchange(&mut raw, &[query("PREPARE r AS SELECT email FROM customers WHERE id = $1")]).await;
    assert_eq!(tags, "CZ");
    refused(exchange(&mut raw, &[query("CREATE TEMP TABLE leak AS EXECUTE r (1)")]).await, "CTAS of a PREPARE");
    refused(exchange(&mut raw, &[parse("", "CREATE TEMP TABLE leak AS EXECUTE r (1)"), sync()]).await, "parsed");
    let (tags, text) = exchange(&mut raw, &[query("EXECUTE r (1)")]).await;
    assert_eq!(tags, "TDCZ", "{text}");
    assert_no_pii(&text, "EXECUTE of a protected column");
    let (tags, text) = exchange(&mut raw, &[parse("", "EXECUTE r (1)"), bind("", ""), execute(""), sync()]).await;
    assert_eq!(tags, "12DCZ", "{text}");
    assert_no_pii(&text, "EXECUTE of a protected column, parsed");
    // A plan shows no values: as for `EXPLAIN ANALYZE SELECT ssn …`.
    let (tags, text) = exchange(&mut raw, &[query("EXPLAIN ANALYZE EXECUTE r (1)")]).await;
    assert!(tags.starts_with("TD") && tags.ends_with("CZ"), "{tags} {text}");
    // Dropped and prepared again, the name stands for the new statement only.
    assert_eq!(exchange(&mut raw, &[query("DEALLOCATE q; PREPARE q AS SELECT 1 AS a, 2 AS b")]).await.0, "CCZ");
    let (tags, text) = exchange(&mut raw, &[query("CREATE TEMP TABLE harmless AS EXECUTE q")]).await;
    assert_eq!(tags, "CZ", "{text}");
    // A Parse of a name in use fails: the name keeps its first statement.
    assert_eq!(exchange(&mut raw, &[parse("p", "SELECT email FROM customers"), sync()]).await.0, "1Z");
    let (tags, text) = exchange(&mut raw, &[parse("p", "SELECT 1 AS a"), sync()]).await;
    assert!(tags == "EZ" && text.contains("42P05"), "{tags} {text}");
    refused(exchange(&mut raw, &[query("CREATE TEMP TABLE leak AS EXECUTE p")]).await, "after a failed Parse");
    // A Parse that failed defined nothing: the next one is the name's statement.
    let (tags, _) = exchange(&mut raw, &[parse("u", "SELECT 1 AS a FROM no_such_table"), sync()]).await;
    assert_eq!(tags, "EZ");
    assert_eq!(exchange(&mut raw, &[parse("u", "SELECT ssn FROM customers"), sync()]).await.0, "1Z");
    refused(exchange(&mut raw, &[query("CREATE TEMP TABLE leak AS EXECUTE u")]).await, "after a failed first Parse");
    // The session is healthy after all of it.
    assert_eq!(exchange(&mut raw, &[query("SELECT 1")]).await.0, "TDCZ");
}

/// A view's column that is a plain reference to another table's column is
/// that column (PostgreSQL's own lineage, read from the view's stored
/// query): its column rule masks it through views of views, renamed, and
/// materialized views, and policies on it follow it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_and_policies_follow_a_column_through_views() {
    db().pg
        .psql(
            "shop",
            "DROP VIEW IF EXISTS viewed_c, viewed_b, viewed_a; DROP MATERIALIZED VIEW IF EXISTS viewed_m;
             DROP TABLE IF EXISTS viewed;
             CREATE TABLE viewed (id int, secret text);
             INSERT INTO viewed VALUES (1, 'kept-between-us-91');
             CREATE VIEW viewed_a AS SELECT id, secret FROM viewed;
             CREATE VIEW viewed_b AS SELECT v.id AS \"odd (name\", v.secret AS x, (SELECT 1) AS one
               FROM viewed_a v WHERE v.id IN (SELECT id FROM viewed);
             CREATE MATERIALIZED VIEW viewed_m AS SELECT secret FROM viewed;
             GRANT SELECT ON viewed, viewed_a, viewed_b, viewed_m TO wardgate_app;",
        )
        .unwrap();
    let g = gateway(Options {
        mask_config: r#""viewed.secret" = "redact""#,
        guard_config: "protected_columns = [\"viewed.secret\"]\nprotected_filter = \"deny\"",
        ..Default::default()
    })
    .await;
    let c = g.client().await;
    for sql in [
        "SELECT secret FROM viewed_a",
        "SELECT * FROM viewed_b",
        "SELECT x, one FROM public.viewed_b",
        "SELECT secret FROM viewed_m",
    ] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        let text = format!("{rows:?}");
        assert!(text.contains("[REDACTED]") && !text.contains("kept-between"), "{sql}: {text}");
    }
    // Extended protocol, binary format: the same rule.
    let row = c.query_one("SELECT x FROM viewed_b WHERE \"odd (name\" = $1", &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "[REDACTED]");
    all_refused(&c, &["SELECT upper(x) FROM viewed_b", "SELECT reverse(secret) FROM viewed_m"], "is protected").await;
    let m = refusal(&c, "SELECT one FROM viewed_b WHERE x LIKE 'k%'").await;
    assert!(m.contains("filters or orders rows by it"), "{m}");

    // The gateway keeps views' lineage across sessions; a view replaced
    // since is read again: its column now holds the secret, and is masked.
    let label = |c: tokio_postgres::Client| async move {
        let rows = simple_rows(&c.simple_query("SELECT label FROM viewed_c").await.unwrap());
        format!("{rows:?}")
    };
    db().pg.psql("shop", "CREATE VIEW viewed_c AS SELECT id, 'plain'::text AS label FROM viewed; GRANT SELECT ON viewed_c TO wardgate_app;").unwrap();
    assert!(label(g.client().await).await.contains("plain"));
    assert!(label(g.client().await).await.contains("plain"));
    db().pg.psql("shop", "CREATE OR REPLACE VIEW viewed_c AS SELECT id, secret AS label FROM viewed").unwrap();
    let text = label(g.client().await).await;
    assert!(text.contains("[REDACTED]") && !text.contains("kept-between"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_or_grouping_by_a_protected_output_named_by_position_or_alias_is_a_filter() {
    let g = gateway(Options {
        guard_config: "protected_columns = [\"customers.email\", \"customers.ssn\"]\nprotected_filter = \"deny\"",
        ..Default::default()
    })
    .await;
    let c = g.client().await;
    // Each sorts, groups or dedups rows by a protected value: the order of the
    // (masked) rows is an oracle on it, as `ORDER BY ssn` is.
    for sql in [
        "SELECT id, ssn FROM customers ORDER BY 2 LIMIT 1",
        "SELECT id, email AS e FROM customers ORDER BY e",
        "SELECT email, count(*) FROM customers GROUP BY 1",
        "SELECT email, count(*) FROM customers GROUP BY CUBE (1)",
        "SELECT DISTINCT ON (2) id, email FROM customers",
        "SELECT DISTINCT email FROM customers",
        "SELECT * FROM customers ORDER BY 3",
    ] {
        let m = refused_both_ways(&c, sql).await;
        assert!(m.contains("filters or orders rows by it"), "{sql}: {m}");
    }
    // Ordering by an unprotected output, by number or name, is fine.
    for sql in ["SELECT id, ssn FROM customers ORDER BY 1", "SELECT id AS n, email FROM customers ORDER BY n DESC"] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        assert_eq!(rows.len(), 5, "{sql}");
        assert_no_pii(&format!("{rows:?}"), sql);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_by_a_protected_column_with_using_or_natural_is_a_filter() {
    let g = gateway(Options {
        guard_config: "protected_columns = [\"*.ssn\"]\nprotected_filter = \"deny\"",
        ..Default::default()
    })
    .await;
    let c = g.client().await;
    // Each keeps the customers whose SSN equals a guess: the row says whose it is.
    for sql in [
        "SELECT id FROM customers JOIN (SELECT '123-45-6789'::text AS ssn) x USING (ssn)",
        "SELECT name FROM customers c FULL JOIN (VALUES ('123-45-6789')) v(ssn) USING (ssn)",
        "SELECT id FROM customers NATURAL JOIN (SELECT 1 AS id, '123-45-6789'::text AS ssn) x",
        "SELECT 1 FROM orders NATURAL JOIN (SELECT * FROM generate_series(1, 3) id) g NATURAL JOIN customers",
    ] {
        let m = refused_both_ways(&c, sql).await;
        assert!(m.contains("ssn is protected") && m.contains("filters or orders rows by it"), "{sql}: {m}");
    }
    // Joining by other columns is fine.
    let sql = "SELECT id, ssn FROM customers JOIN (SELECT customer_id AS id FROM orders) o USING (id) LIMIT 3";
    let rows = simple_rows(&c.simple_query(sql).await.unwrap());
    assert_eq!(rows.len(), 3, "{sql}");
    assert_no_pii(&format!("{rows:?}"), sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_is_judged_by_the_columns_the_catalog_gives_it() {
    // A table of its own (the cluster is shared), with no protected column until one is added.
    db().pg
        .psql(
            "shop",
            "DROP TABLE IF EXISTS star_plain; CREATE TABLE star_plain (id int, note text); \
             INSERT INTO star_plain VALUES (1, 'a'), (2, 'b'); GRANT ALL ON star_plain TO wardgate_app;",
        )
        .unwrap();
    let g = gateway(Options {
        guard_config: "protected_columns = [\"*.email\", \"*.ssn\"]\nprotected_filter = \"deny\"",
        ..Default::default()
    })
    .await;
    let c = g.client().await;
    // Stars over tables without a protected column, over the system catalogs
    // (asyncpg's type introspection is a `SELECT DISTINCT *` over a recursive
    // CTE of pg_type), and the star of EXISTS, which returns no value.
    for sql in [
        "SELECT DISTINCT * FROM star_plain",
        "SELECT count(*) FROM (SELECT * FROM star_plain) s",
        "WITH p AS (SELECT * FROM star_plain) SELECT count(*) FROM p",
        "SELECT * FROM star_plain ORDER BY 1",
        "SELECT p FROM star_plain p",
        "SELECT id FROM star_plain p WHERE EXISTS (SELECT * FROM customers c WHERE c.id = p.id)",
        "SELECT DISTINCT * FROM pg_catalog.pg_type WHERE typname = 'int4'",
        "WITH RECURSIVE tree(oid, name, elem, depth) AS (SELECT t.oid, t.typname, t.typelem, 0 FROM pg_type t \
         WHERE t.oid = 1007 UNION ALL SELECT e.oid, e.typname, e.typelem, tree.depth + 1 FROM pg_type e, tree \
         WHERE e.oid = tree.elem) SELECT DISTINCT *, elem::regtype::text AS elem_name FROM tree ORDER BY depth DESC",
        "SELECT DISTINCT * FROM generate_series(1, 3)",
        "SELECT DISTINCT s.* FROM (SELECT id FROM star_plain) s",
    ] {
        c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        c.prepare(sql).await.unwrap_or_else(|e| panic!("prepare {sql}: {e:?}"));
    }
    // Stars that stand for a protected column are refused, naming it.
    for (sql, says) in [
        ("SELECT DISTINCT * FROM customers", "customers.email is protected"),
        ("SELECT count(*) FROM (SELECT * FROM customers) s", "customers.email is protected"),
        ("SELECT DISTINCT * FROM star_plain, customers", "customers.email is protected"),
        ("SELECT DISTINCT s.* FROM (SELECT id, email FROM customers) s", "email is protected"),
        ("SELECT id FROM star_plain WHERE EXISTS (SELECT * FROM customers c WHERE c.ssn LIKE '1%')", "customers.ssn"),
        ("SELECT 1 WHERE EXISTS (SELECT * FROM customers WHERE id = 1 INTERSECT SELECT * FROM customers)", "customers"),
        // How many distinct SSNs there are, through a position into the star.
        ("SELECT 1 WHERE EXISTS (SELECT DISTINCT ON (6) * FROM customers OFFSET 4)", "customers."),
    ] {
        let m = refusal(&c, sql).await;
        assert!(m.contains(says), "{sql}: {m}");
    }
    // A statement that creates a table reads the catalog as it stands before
    // it runs: its own star is resolved (copying no protected column runs,
    // copying one is refused, naming it); a star after it, in the same
    // request or a later one, is not.
    let m = refusal(&g.client().await, "CREATE TEMP TABLE star_leak AS SELECT * FROM customers").await;
    assert!(m.contains("customers.email is protected"), "{m}");
    g.client().await.simple_query("CREATE TEMP VIEW star_view AS SELECT * FROM star_plain").await.unwrap();
    let m = refusal(&g.client().await, "CREATE TEMP VIEW star_leak AS SELECT DISTINCT * FROM customers").await;
    assert!(m.contains("customers.email is protected"), "{m}");
    let m =
        refusal(&g.client().await, "CREATE TEMP TABLE t1 (x int); CREATE TEMP TABLE t2 AS SELECT * FROM star_plain")
            .await;
    assert!(m.contains("email (read through *"), "{m}");
    // Adding a protected column is itself reviewed (here: refused).
    let m = refusal(&c, "ALTER TABLE star_plain ADD COLUMN email text").await;
    assert!(m.contains("changes a table with protected columns"), "{m}");
    // Another session adds the column. A session that then ran DDL, or met a
    // column its read did not know, reads the catalog again before its next
    // star (see `a_session_reads_its_catalog_again_after_it_changes_columns`);
    // a new session reads it anyway.
    let other = g.client().await;
    db().pg.psql("shop", "ALTER TABLE star_plain ADD COLUMN email text").unwrap();
    c.simple_query("CREATE TEMP TABLE scratch (x int)").await.unwrap();
    let m = refusal(&c, "SELECT DISTINCT * FROM star_plain").await;
    assert!(m.contains("star_plain.email is protected"), "{m}");
    other.simple_query("SELECT * FROM star_plain").await.unwrap();
    let m = refusal(&other, "SELECT DISTINCT * FROM star_plain").await;
    assert!(m.contains("star_plain.email is protected"), "{m}");
    let m = refusal(&g.client().await, "SELECT DISTINCT * FROM star_plain").await;
    assert!(m.contains("star_plain.email is protected"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_catalog_again_after_it_changes_columns() {
    db().pg
        .psql(
            "shop",
            "DROP TABLE IF EXISTS reread_plain; CREATE TABLE reread_plain (id int NOT NULL, note text); \
             INSERT INTO reread_plain VALUES (1, 'a'), (2, 'b'); GRANT ALL ON reread_plain TO wardgate_app;",
        )
        .unwrap();
    // DROP allowed, so a savepoint can bring a dropped table back.
    let g = gateway(Options {
        guard_config: "[config.connections.shop]\nprotected_columns = [\"*.email\"]\nprotected_filter = \"deny\"\n\
                       deny = [\"truncate\"]",
        ..Default::default()
    })
    .await;
    let c = g.client().await;
    let rows = |m: Vec<tokio_postgres::SimpleQueryMessage>| {
        m.into_iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count()
    };
    // After DDL, the next request that needs the catalog has it read again:
    // the session's new tables resolve, in simple and extended protocol.
    all_run(
        &c,
        &[
            "CREATE TEMP TABLE rr_copy AS SELECT * FROM reread_plain",
            "SELECT count(*) FROM (SELECT * FROM rr_copy) s",
            // The session's temporary tables by their schema's alias too.
            "SELECT count(*) FROM (SELECT * FROM pg_temp.rr_copy) s",
            "CREATE TEMP TABLE rr_copy2 AS SELECT * FROM rr_copy",
        ],
    )
    .await;
    c.prepare("SELECT count(*) FROM (SELECT * FROM rr_copy2) s").await.unwrap();
    c.simple_query("CREATE TEMP TABLE rr_mail (id int, email text)").await.unwrap();
    all_refused(&c, &["SELECT count(*) FROM (SELECT * FROM rr_mail) s"], "rr_mail.email is protected").await;
    // Its NOT NULL columns too: a WHERE that only null-tests one keeps every row.
    c.simple_query("CREATE TEMP TABLE rr_nn (id int NOT NULL)").await.unwrap();
    all_refused(&c, &["DELETE FROM rr_nn WHERE id IS NOT NULL"], "without a WHERE").await;
    // Inside a transaction the read sees the transaction's own DDL and leaves
    // the transaction and the session's settings as they were.
    let before = c.query_one("SHOW search_path", &[]).await.unwrap().get::<_, String>(0);
    all_run(&c, &["BEGIN", "SET LOCAL search_path = public", "CREATE TEMP TABLE rr_tx AS SELECT * FROM reread_plain"])
        .await;
    assert_eq!(rows(c.simple_query("SELECT s.* FROM (SELECT DISTINCT * FROM rr_tx) s").await.unwrap()), 2);
    assert_eq!(rows(c.simple_query("SELECT s.* FROM (SELECT DISTINCT * FROM pg_temp.rr_tx) s").await.unwrap()), 2);
    assert_eq!(c.query_one("SHOW search_path", &[]).await.unwrap().get::<_, String>(0), "public");
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(c.query_one("SHOW search_path", &[]).await.unwrap().get::<_, String>(0), before);
    let e = c.simple_query("SELECT * FROM rr_tx").await.unwrap_err();
    assert_eq!(code(&e), "42P01", "the read committed the client's transaction: {e:?}");
    // A read inside a transaction serves one request: after a rollback to a
    // savepoint brings a dropped table back, its protected column is seen.
    all_run(
        &c,
        &[
            "BEGIN",
            "SAVEPOINT s",
            "DROP TABLE rr_mail",
            "CREATE TEMP TABLE rr_mail (id int)",
            "SELECT count(*) FROM (SELECT * FROM rr_mail) s",
            "ROLLBACK TO SAVEPOINT s",
        ],
    )
    .await;
    all_refused(&c, &["SELECT count(*) FROM (SELECT * FROM rr_mail) s"], "rr_mail.email is protected").await;
    // So it does within its own request: a star after a rollback to a
    // savepoint in the same Query is not judged by what the read saw.
    all_run(&c, &["SAVEPOINT s", "DROP TABLE rr_mail", "CREATE TEMP TABLE rr_mail (id int)"]).await;
    let undone = "SELECT count(*) FROM (SELECT * FROM rr_copy) s; ROLLBACK TO SAVEPOINT s; \
                  SELECT count(*) FROM (SELECT * FROM rr_mail) s";
    all_refused(&c, &[undone], "email (read through *").await;
    c.simple_query("COMMIT").await.unwrap();
    // In a failed transaction nothing is read: stars stay unresolved.
    all_run(&c, &["BEGIN", "CREATE TEMP TABLE rr_failed (id int)"]).await;
    c.simple_query("SELECT 1/0").await.unwrap_err();
    all_refused(&c, &["SELECT count(*) FROM (SELECT * FROM rr_copy) s"], "email (read through *").await;
    all_run(&c, &["ROLLBACK", "SELECT count(*) FROM (SELECT * FROM rr_copy) s"]).await;
    // The read uses names of its own: the client's unnamed statement lives on.
    use common::raw::{bind, exchange, execute, parse, query, sync};
    let mut raw = raw_session(&g).await;
    exchange(&mut raw, &[query("CREATE TEMP TABLE rr_raw AS SELECT * FROM reread_plain")]).await;
    exchange(&mut raw, &[parse("", "SELECT 41 + 1"), sync()]).await;
    let (tags, text) = exchange(&mut raw, &[parse("n", "SELECT count(*) FROM (SELECT * FROM rr_raw) s"), sync()]).await;
    assert_eq!(tags, "1Z", "{text}");
    let (tags, text) = exchange(&mut raw, &[bind("", ""), execute(""), sync()]).await;
    assert_eq!(tags, "2DCZ", "{text}");
    assert!(text.contains("42"), "{text}");
    // Every read is on record.
    let recorded = g.recordings();
    assert!(recorded.matches("\"catalog.read\"").count() >= 6, "{recorded}");
}

/// The shared cluster's CA once TLS is on (non-TLS clients keep working).
fn upstream_ca() -> &'static str {
    static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CA.get_or_init(|| db().pg.enable_tls().expect("enable TLS on the test cluster"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let ca = upstream_ca();
    let port = db().pg.port;
    let conn = |name: &str, ca_file: &str| {
        format!(
            "[connections.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"shop\"\nuser = \"wardgate_app\"\npassword_file = \"pw\"\nsslmode = \"verify-full\"\nca_file = \"{ca_file}\"\n[[grants]]\nconnection = \"{name}\"\ngroups = [\"agents\"]\n"
        )
    };
    let g = gateway(Options {
        extra: conn("tls_ok", "ca.pem") + &conn("tls_wrong_ca", "other-ca.pem"),
        ..Default::default()
    })
    .await;
    std::fs::write(g.dir.join("ca.pem"), ca).unwrap();
    std::fs::write(g.dir.join("other-ca.pem"), g.gw.self_signed_pem.as_deref().unwrap()).unwrap();
    let dsn =
        |db: &str| format!("host=127.0.0.1 port={} dbname={db} user=x password={} sslmode=disable", g.port, g.key);
    let (c, conn_task) =
        tokio_postgres::connect(&dsn("tls_ok"), tokio_postgres::NoTls).await.expect("verified TLS upstream");
    tokio::spawn(conn_task);
    let ssl: bool = c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "the gateway's upstream connection is encrypted");
    let e = tokio_postgres::connect(&dsn("tls_wrong_ca"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("an untrusted upstream is refused");
    assert_eq!(code(&e), "08006");
    assert!(e.as_db_error().unwrap().message().contains("TLS to upstream failed"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_upstream_authentication_works() {
    static ROLE: std::sync::Once = std::sync::Once::new();
    ROLE.call_once(|| {
        let pg = &db().pg;
        pg.psql("shop", "SET password_encryption = 'md5'; CREATE ROLE wg_md5 LOGIN PASSWORD 'md5-secret'; GRANT SELECT ON customers TO wg_md5").unwrap();
        pg.hba_prepend("host all wg_md5 127.0.0.1/32 md5").unwrap();
    });
    let extra = format!(
        "[connections.md5]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"shop\"\nuser = \"wg_md5\"\npassword_env = \"WG_TEST_MD5_PW\"\n[[grants]]\nconnection = \"md5\"\ngroups = [\"agents\"]\n",
        db().pg.port
    );
    std::env::set_var("WG_TEST_MD5_PW", "md5-secret");
    let g = gateway(Options { extra, ..Default::default() }).await;
    let dsn = format!("host=127.0.0.1 port={} dbname=md5 user=x password={} sslmode=disable", g.port, g.key);
    let (c, conn_task) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("md5 login upstream");
    tokio::spawn(conn_task);
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "wg_md5");
    let email: String = c.query_one("SELECT email FROM customers WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(email, "j***@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_is_refused_cleanly_and_the_client_can_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = gateway(Options::default()).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(b[0], b'N');
    let body = b"user\0x\0database\0shop\0\0";
    let mut startup = ((8 + body.len()) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(body);
    s.write_all(&startup).await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(b[0], b'R', "authentication request follows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_fail_closed_on_the_data_path_and_others_keep_working() {
    let g = gateway(Options::default()).await;
    std::fs::copy(common::fixtures().join("hostile.wasm"), g.plugin_dir.join("hostile.wasm")).unwrap();
    std::fs::write(
        g.plugin_dir.join("hostile.toml"),
        "name = \"hostile\"\nversion = \"1.0.0\"\norder = 1\n[limits]\ncall_timeout_ms = 100\nmemory_mib = 32\n",
    )
    .unwrap();
    let c = g.client().await;
    // Wait for the hot reload to pick it up.
    let t = Instant::now();
    while !g.gw.registry.current().plugins.contains_key("hostile") {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A guard that spins: denied at its deadline, naming the plugin; the session goes on.
    let started = Instant::now();
    let e = c.simple_query("SELECT 'LOOP'").await.unwrap_err();
    assert_eq!(code(&e), "42501");
    assert!(e.as_db_error().unwrap().message().contains("plugin hostile exceeded its deadline of 100 ms"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(c.query_one("SELECT 7::int4", &[]).await.unwrap().get::<_, i32>(0), 7);
    // A masker that traps on a result: nothing of the result leaves, the connection closes.
    let other = g.client().await;
    let e = c.simple_query("SELECT upper('trap') || ' jane.doe@example.com'").await.unwrap_err();
    let msg = format!("{e:?}");
    assert!(msg.contains("withheld") && msg.contains("hostile"), "{msg}");
    assert!(!msg.contains("jane.doe@example.com"));
    assert!(c.simple_query("SELECT 1").await.is_err(), "that connection is closed");
    // A masker out of memory: the hint says how large the batch was and which limit to raise.
    let c = g.client().await;
    let e = c.simple_query("SELECT upper('alloc')").await.unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert!(db.message().contains("exceeded its memory limit of 32 MiB"), "{e:?}");
    assert!(db.hint().is_some_and(|h| h.contains("memory_mib") && h.contains("hostile.toml")), "{e:?}");
    // Everyone else is unaffected.
    assert_eq!(other.query_one("SELECT 8::int4", &[]).await.unwrap().get::<_, i32>(0), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_speaks_utf8_upstream_whatever_the_client_asks() {
    let g = gateway(Options::default()).await;
    let run = |enc: &str| {
        std::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "SHOW client_encoding"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", g.port.to_string())
            .env("PGDATABASE", "shop")
            .env("PGUSER", "test-agent")
            .env("PGPASSWORD", &g.key)
            .env("PGSSLMODE", "require")
            .env("PGCLIENTENCODING", enc)
            .output()
            .unwrap()
    };
    // A terminal in the C locale asks for SQL_ASCII: accepted, UTF8 upstream.
    let out = run("SQL_ASCII");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "UTF8");
    // Spellings PostgreSQL accepts for UTF8 (asyncpg sends 'utf-8' with the quotes).
    for enc in ["utf-8", "'utf-8'", "Unicode"] {
        let out = run(enc);
        assert!(out.status.success(), "{enc}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "UTF8");
    }
    // Drivers that SET the encoding (or standard_conforming_strings) to what the gateway pins get a no-op.
    let c = g.client().await;
    for ok in ["SET client_encoding TO 'UTF8'", "SET NAMES 'utf-8'", "SET standard_conforming_strings = on"] {
        c.batch_execute(ok).await.unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // An encoding the parser and maskers cannot read is refused with a fix.
    let out = run("LATIN1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client_encoding LATIN1 is not supported") && err.contains("PGCLIENTENCODING=UTF8"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_ends_with_a_fatal_error_is_heard_in_its_own_words() {
    let g = gateway(Options { plugins: vec!["pii-mask"], required: vec!["pii-mask"], ..Default::default() }).await;
    let (ok, _, err) = g.psql(&["-c", "SELECT pg_terminate_backend(pg_backend_pid())"]);
    assert!(!ok);
    assert!(err.contains("FATAL:  terminating connection due to administrator command"), "{err}");
    // Its FATAL explains the close: no second error of the gateway's own.
    assert!(!err.contains("Wardgate"), "{err}");
}
