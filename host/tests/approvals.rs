//! Just-in-time approvals end to end: psql and tokio-postgres through the
//! gateway, decisions from the `wardgate approvals` CLI, the admin page in
//! headless Chromium, webhooks, two replicas on one PostgreSQL state store,
//! and a restart of `wardgate serve`.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{db, gateway, Options, TestGateway};
use serde_json::Value;

/// A human in no approver group: sees nothing of others' requests.
const DAVE_KEY: &str = "wg_dave-is-a-developer-and-not-an-approver-0000000000";

fn dave_hash() -> String {
    wardgate::identity::key_hash(DAVE_KEY)
}

const DO_INSERT: &str =
    "DO $$ BEGIN INSERT INTO orders (customer_id, amount_cents, status) VALUES (1, 4242, 'held-run'); END $$;";

struct Setup {
    g: TestGateway,
    /// A human approver's key (group dba).
    carol: String,
    /// A human outside the approver groups, but in break-glass.
    erin: String,
}

fn approver_accounts(carol_hash: &str, erin_hash: &str) -> String {
    format!(
        r#"
[[service_accounts]]
name = "dave"
kind = "human"
groups = ["developers"]
key_sha256 = "{dave}"

[[service_accounts]]
name = "carol"
kind = "human"
groups = ["dba"]
key_sha256 = "{carol_hash}"

[[service_accounts]]
name = "erin"
kind = "human"
groups = ["sre-breakglass"]
key_sha256 = "{erin_hash}"
"#,
        dave = dave_hash()
    )
}

fn approvals_extra(mode: &str, timeout: u64, more: &str) -> (String, String, String) {
    let (carol, ch) = wardgate::identity::generate_key();
    let (erin, eh) = wardgate::identity::generate_key();
    let extra = format!(
        "{}\n[approvals]\nbreak_glass_groups = [\"sre-breakglass\"]\n{more}\n\n[connections.shop.approvals]\nmode = \"{mode}\"\ntimeout_secs = {timeout}\napprover_groups = [\"dba\"]\n",
        approver_accounts(&ch, &eh)
    );
    (extra, carol, erin)
}

async fn setup(mode: &str, timeout: u64, more: &str) -> Setup {
    let (extra, carol, erin) = approvals_extra(mode, timeout, more);
    let g = gateway(Options { extra, ..Default::default() }).await;
    Setup { g, carol, erin }
}

fn admin(g: &TestGateway) -> String {
    format!("http://{}", g.gw.admin_addr)
}

fn cli(admin_url: &str, credential: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .arg("approvals")
        .args(args)
        .env("WARDGATE_ADMIN_URL", admin_url)
        .env("WARDGATE_CREDENTIAL", credential)
        .env("WARDGATE_TOKEN_FILE", "/nonexistent")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Poll the CLI until a pending request other than `except` shows up; its id.
fn wait_pending(admin_url: &str, credential: &str, except: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(admin_url, credential, &["list"]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(id) = stdout.split_whitespace().find(|w| w.starts_with("apr_") && !except.iter().any(|e| e == w)) {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "no pending approval request appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn psql_spawn(port: u16, key: &str, sql: &str) -> tokio::task::JoinHandle<Output> {
    let (port, key, sql) = (port.to_string(), key.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", &sql])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port)
            .env("PGDATABASE", "shop")
            .env("PGUSER", "test-agent")
            .env("PGPASSWORD", key)
            .env("PGSSLMODE", "require")
            .output()
            .unwrap()
    })
}

/// Orders with `status`: each test that counts them inserts its own status
/// (tests run in parallel against one database).
fn held_rows(status: &str) -> usize {
    db().pg
        .psql("shop", &format!("SELECT count(*) FROM orders WHERE status = '{status}'"))
        .unwrap()
        .lines()
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn events(g: &TestGateway, kind: &str) -> Vec<Value> {
    g.recordings()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == kind)
        .map(|e| e["body"].clone())
        .collect()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("no db error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_statement_waits_runs_once_approved_and_a_second_run_needs_a_new_approval() {
    let s = setup("wait", 60, "").await;
    let a = admin(&s.g);
    let insert = DO_INSERT.replace("held-run", "held-run-twice");
    let held_rows = || held_rows("held-run-twice");
    let before = held_rows();
    let psql = psql_spawn(s.g.port, &s.g.key, &insert);
    let id = wait_pending(&a, &s.carol, &[]);
    let show = cli(&a, &s.carol, &["show", &id]);
    assert!(
        text(&show).contains("INSERT INTO orders")
            && text(&show).contains("test-agent (agent) on behalf of alice@example.com"),
        "{}",
        text(&show)
    );
    // The requesting agent cannot approve its own request: agents hold no role on the admin API.
    let own = cli(&a, &s.g.key, &["approve", &id]);
    assert!(!own.status.success() && text(&own).contains("lacks the approver role"), "{}", text(&own));
    assert_eq!(held_rows(), before, "nothing ran while held");
    let ok = cli(&a, &s.carol, &["approve", &id, "--reason", "checked the insert"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = psql.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(held_rows(), before + 1);

    // The same statement again is a new request; deny it.
    let psql = psql_spawn(s.g.port, &s.g.key, &insert);
    let second = wait_pending(&a, &s.carol, std::slice::from_ref(&id));
    assert_ne!(second, id);
    let no = cli(&a, &s.carol, &["deny", &second, "--reason", "once is enough"]);
    assert!(no.status.success(), "{}", text(&no));
    let out = psql.await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("approval request {second} was denied by carol: once is enough")),
        "{}",
        text(&out)
    );
    assert_eq!(held_rows(), before + 1);
    // Two sessions, two recordings (read back in directory order).
    let mut decisions: Vec<String> =
        events(&s.g, "approval.decision").iter().map(|e| e["outcome"].as_str().unwrap().to_string()).collect();
    decisions.sort();
    assert_eq!(decisions, ["approved", "denied"]);
    // In the session's recording (with its request id) and in the gateway's approvals log.
    let requested = events(&s.g, "approval.requested");
    assert_eq!(requested.iter().filter(|e| e.get("request_id").is_some()).count(), 2);
    assert_eq!(requested.iter().filter(|e| e.get("principal").is_some()).count(), 2);
    assert!(!events(&s.g, "approval.approved").is_empty() && !events(&s.g, "approval.denied").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_gives_the_waiting_client_a_clear_error() {
    let s = setup("wait", 1, "").await;
    let t = Instant::now();
    let out = psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("expired at") && text(&out).contains("without a decision"), "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(5), "expired on time: {:?}", t.elapsed());
    let out = cli(&admin(&s.g), &s.carol, &["list", "--status", "expired"]);
    assert!(text(&out).contains("apr_"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_held_statement_is_in_no_recording_approval_request_or_state_file() {
    let s = setup("wait", 1, "").await;
    let secret = "Hunter2-Secret-Pw";
    let sql = format!("alter role wardgate_nobody with /* x */ password '{secret}' valid until 'infinity'");
    let out = psql_spawn(s.g.port, &s.g.key, &sql).await.unwrap();
    assert!(text(&out).contains("without a decision"), "held, then expired: {}", text(&out));
    let a = admin(&s.g);
    let list = text(&cli(&a, &s.carol, &["list", "--status", "expired"]));
    let id = list.split_whitespace().find(|w| w.starts_with("apr_")).expect("the expired request is listed");
    let show = text(&cli(&a, &s.carol, &["show", id]));
    assert!(show.contains("password '[REDACTED]' valid until") && !show.contains(secret), "{show}");
    let rec = s.g.recordings();
    assert!(!rec.contains(secret), "recorded redacted");
    let stmt = rec.lines().find(|l| l.contains("wardgate_nobody")).unwrap_or_default();
    assert!(stmt.contains("password '[REDACTED"), "{stmt}");
    // Nor a hash of the exact text, which could be checked against guesses.
    assert!(!rec.contains("fingerprint"), "no fingerprint on record");
    // The state store's files (SQLite and its journal) hold no copy either.
    for f in std::fs::read_dir(s.g.dir.join("state")).unwrap() {
        let path = f.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defer_mode_binds_the_approval_to_the_statement_and_its_parameters() {
    let s = setup("defer", 60, "").await;
    let a = admin(&s.g);
    // Simple protocol: an immediate error naming the request.
    let out = psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("needs approval: request apr_") && msg.contains("wardgate approvals approve"), "{msg}");
    let id = msg
        .split_whitespace()
        .find(|w| w.starts_with("apr_"))
        .unwrap()
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .to_string();
    // Retrying before a decision reuses the pending request.
    let again = text(&psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap());
    assert!(again.contains(&id), "{again}");
    assert!(cli(&a, &s.carol, &["approve", &id]).status.success());
    // A different statement is not covered; the same one, formatted differently, is — once.
    let other = DO_INSERT.replace("4242", "4243");
    assert!(!psql_spawn(s.g.port, &s.g.key, &other).await.unwrap().status.success());
    // (The DO body is a string constant: only what is outside it may be reformatted.)
    let reformatted = format!("/* retry */ do\n   {}", DO_INSERT.trim_start_matches("DO "));
    let out = psql_spawn(s.g.port, &s.g.key, &reformatted).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap().status.success(), "used once");

    // Extended protocol: bound parameters are part of the binding.
    let c = s.g.client().await;
    let merge = "MERGE INTO orders o USING (SELECT $1::int AS id) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET status = 'merged'";
    let e = c.execute(merge, &[&5i32]).await.unwrap_err();
    assert_eq!(code(&e), "55000", "{e}");
    let text5 = e.as_db_error().unwrap().message().to_string();
    let id5 = text5.split_whitespace().find(|w| w.starts_with("apr_")).unwrap().to_string();
    assert!(cli(&a, &s.carol, &["approve", &id5]).status.success());
    let e6 = c.execute(merge, &[&6i32]).await.unwrap_err();
    assert!(!e6.as_db_error().unwrap().message().contains(&id5), "another parameter is another request");
    assert_eq!(c.execute(merge, &[&5i32]).await.unwrap(), 1);
    assert_eq!(code(&c.execute(merge, &[&5i32]).await.unwrap_err()), "55000", "used once");
    // The session is healthy after all of it.
    assert_eq!(c.query_one("SELECT 1::int", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert!(!events(&s.g, "approval.used").is_empty());
}

/// A statement a guard routed to review is held however its name is run:
/// by SQL's `EXECUTE` of the name a driver parsed it under, inside
/// `EXPLAIN ANALYZE`, from a statement that executes it, after a failed
/// Parse of the same name or a Close the server skipped, when SQL's
/// `PREPARE` made it and a driver binds it, and by SQL's FETCH of its portal
/// (held at Bind, it has none before approval). The approver is shown what
/// the name stands for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_statement_is_held_whichever_way_its_name_is_run() {
    use common::raw::{bind, close_statement, exchange, execute, parse, query, raw_session, sync};
    let s = setup("defer", 60, "").await;
    let mut raw = raw_session(&s.g).await;
    let merge = "MERGE INTO orders o USING (SELECT id FROM orders ORDER BY id LIMIT 1) s ON o.id = s.id \
                 WHEN MATCHED THEN UPDATE SET status = 'run-by-name'";
    let held = |(tags, text): (String, String), what: &str| {
        assert!(tags.ends_with("EZ") && text.contains("55000") && text.contains("apr_"), "{what}: {tags} {text}");
    };
    assert_eq!(exchange(&mut raw, &[parse("m", merge), sync()]).await.0, "1Z");
    held(exchange(&mut raw, &[bind("", "m"), execute(""), sync()]).await, "bound");
    held(exchange(&mut raw, &[query("EXECUTE m")]).await, "SQL EXECUTE");
    held(exchange(&mut raw, &[query("EXPLAIN ANALYZE EXECUTE m")]).await, "EXPLAIN ANALYZE EXECUTE");
    held(exchange(&mut raw, &[parse("", "EXECUTE m"), bind("", ""), execute(""), sync()]).await, "parsed EXECUTE");
    // The server refuses a second Parse of the name: it still stands for the MERGE.
    let (tags, answer) = exchange(&mut raw, &[parse("m", "SELECT 1"), sync()]).await;
    assert!(tags == "EZ" && answer.contains("42P05"), "{tags} {answer}");
    held(exchange(&mut raw, &[bind("", "m"), execute(""), sync()]).await, "after a failed Parse");
    // After an error the server skips to Sync, the Close included.
    let (tags, _) =
        exchange(&mut raw, &[parse("x", "SELECT 1 FROM no_such_table"), close_statement("m"), sync()]).await;
    assert_eq!(tags, "EZ");
    held(exchange(&mut raw, &[bind("", "m"), execute(""), sync()]).await, "after a skipped Close");
    // SQL's PREPARE runs nothing; each execution is held.
    assert_eq!(exchange(&mut raw, &[query(&format!("PREPARE m2 AS {merge}"))]).await.0, "CZ");
    held(exchange(&mut raw, &[query("EXECUTE m2")]).await, "EXECUTE of a SQL PREPARE");
    held(exchange(&mut raw, &[bind("", "m2"), execute(""), sync()]).await, "Bind of a SQL PREPARE");
    // A reviewed statement's portal does not exist before approval: SQL's
    // FETCH cannot run it either.
    let role = "SELECT set_config('role', current_user, false)";
    assert_eq!(exchange(&mut raw, &[parse("r", role), sync()]).await.0, "1Z");
    assert_eq!(exchange(&mut raw, &[query("BEGIN")]).await.0, "CZ");
    held(exchange(&mut raw, &[bind("p", "r"), sync()]).await, "bound to a named portal");
    let (tags, answer) = exchange(&mut raw, &[query("FETCH ALL p")]).await;
    assert!(tags == "EZ" && answer.contains("34000"), "FETCH of a held portal: {tags} {answer}");
    assert_eq!(exchange(&mut raw, &[query("ROLLBACK")]).await.0, "CZ");
    // What the approver sees of `EXECUTE m` names the statement it runs.
    let pending = cli(&admin(&s.g), &s.carol, &["list"]);
    assert!(text(&pending).contains("MERGE INTO orders"), "{}", text(&pending));
    let ran = db().pg.psql("shop", "SELECT count(*) FROM orders WHERE status = 'run-by-name'").unwrap();
    assert!(ran.contains(" 0"), "nothing ran unapproved: {ran}");
    // Closed (and confirmed), the name is free for a statement that needs no review.
    assert_eq!(exchange(&mut raw, &[close_statement("m"), sync()]).await.0, "3Z");
    assert_eq!(exchange(&mut raw, &[parse("m", "SELECT 1"), bind("", "m"), execute(""), sync()]).await.0, "12DCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_withdraws_the_held_statement() {
    let s = setup("wait", 60, "").await;
    let c = s.g.client().await;
    let token = c.cancel_token();
    let held = tokio::spawn(async move { c.batch_execute(DO_INSERT).await });
    let id = wait_pending(&admin(&s.g), &s.carol, &[]);
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    let show = cli(&admin(&s.g), &s.carol, &["show", &id]);
    assert!(text(&show).contains("WITHDRAWN"), "{}", text(&show));
    let late = cli(&admin(&s.g), &s.carol, &["approve", &id]);
    assert!(!late.status.success() && text(&late).contains("withdrawn, not pending"), "{}", text(&late));
    // The requesting agent holds no admin-API role (it learns outcomes from its
    // session); a principal with nothing to do with it sees nothing either.
    assert!(text(&cli(&admin(&s.g), &s.g.key, &["show", &id])).contains("lacks the approver role"));
    let breakglass = text(&cli(&admin(&s.g), &s.erin, &["list", "--status", "all"]));
    assert!(breakglass.contains(&id), "break-glass sees everything: {breakglass}");
    let stranger = text(&cli(&admin(&s.g), DAVE_KEY, &["list", "--status", "all"]));
    assert!(!stranger.contains(&id), "{stranger}");
    let shown = text(&cli(&admin(&s.g), DAVE_KEY, &["show", &id]));
    assert!(shown.contains("lacks the approver role") && !shown.contains("INSERT"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_explicit_and_recorded() {
    let s = setup("defer", 60, "").await;
    let out = text(&psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap());
    let id = out.split_whitespace().find(|w| w.starts_with("apr_")).unwrap().trim_end_matches(',').to_string();
    let ok = cli(&admin(&s.g), &s.erin, &["approve", &id, "--reason", "incident 4711"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let show = text(&cli(&admin(&s.g), &s.carol, &["show", &id]));
    assert!(show.contains("[BREAK-GLASS]") && show.contains("incident 4711"), "{show}");
}

/// A tiny HTTP receiver: the first request gets a 500, later ones 200.
async fn webhook_receiver() -> (u16, std::sync::Arc<parking_lot::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let k = s.read(&mut chunk).await.unwrap_or(0);
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len: usize = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        break;
                    }
                }
            }
            let body = String::from_utf8_lossy(&buf).split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            let status = if n == 1 { "500 Internal Server Error" } else { "200 OK" };
            if n > 1 {
                sink.lock().push(body);
            }
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
        }
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_and_a_dead_one_approves_nothing() {
    let (port, got) = webhook_receiver().await;
    let dead = wardgate::devenv::free_port().unwrap();
    let hooks = format!(
        "[[approvals.webhooks]]\nurl = \"http://127.0.0.1:{port}/slack\"\nformat = \"slack\"\n\n[[approvals.webhooks]]\nurl = \"http://127.0.0.1:{dead}/down\"\nformat = \"json\"\n"
    );
    let s = setup("defer", 60, &hooks).await;
    let out = text(&psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap());
    assert!(out.contains("apr_"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.lock().is_empty() {
        assert!(Instant::now() < deadline, "the webhook was not retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body: Value = serde_json::from_str(&got.lock()[0]).unwrap();
    let headline = body["text"].as_str().unwrap();
    assert!(headline.starts_with("Approval needed: test-agent (agent) on behalf of alice@example.com"), "{headline}");
    assert!(body["blocks"][1]["text"]["text"].as_str().unwrap().contains("INSERT INTO orders"));
    let list = text(&cli(&admin(&s.g), &s.carol, &["list"]));
    assert!(list.contains("pending"), "a failing webhook leaves the request pending: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_postgres_state_store() {
    let pg = &db().pg;
    let _ = pg.psql("postgres", "CREATE DATABASE wardgate_state");
    let password = pg.dsn("x").split(':').nth(2).unwrap().split('@').next().unwrap().to_string();
    let pw_file = common::tempdir("state-pw").join("pw");
    std::fs::write(&pw_file, &password).unwrap();
    let gateway_extra = format!(
        "state_store = \"postgres://postgres@127.0.0.1:{}/wardgate_state\"\nstate_store_password_file = \"{}\"\n",
        pg.port,
        pw_file.display()
    );
    let (extra, carol, _) = approvals_extra("wait", 60, "");
    let a = gateway(Options { extra: extra.clone(), gateway_extra: gateway_extra.clone(), ..Default::default() }).await;
    let b = gateway(Options { extra, gateway_extra, ..Default::default() }).await;
    let psql = psql_spawn(a.port, &a.key, DO_INSERT);
    let id = wait_pending(&admin(&b), &carol, &[]);
    let t = Instant::now();
    assert!(cli(&admin(&b), &carol, &["approve", &id]).status.success());
    let out = psql.await.unwrap();
    assert!(out.status.success(), "released by a decision on the other replica: {}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(3), "within the polling bound: {:?}", t.elapsed());
    assert!(a.recordings().contains(&id) && !b.recordings().contains("\"approval.requested\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_survive_a_restart_and_expire_on_time() {
    let (extra, carol, _) = approvals_extra("wait", 6, "");
    let template = gateway(Options { extra, ..Default::default() }).await;
    let (path, port, admin_port) = template.serve_config_isolated();
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let serve = common::Serve::start(&path, "warn", None);
    serve.wait_for_port(port);
    let psql = psql_spawn(port, &template.key, DO_INSERT);
    let id = wait_pending(&admin_url, &carol, &[]);
    let t = Instant::now();
    drop(serve); // kill -9
    let out = tokio::time::timeout(Duration::from_secs(5), psql)
        .await
        .expect("the waiting client is not left hanging")
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("connection to server was lost") || text(&out).contains("closed the connection"),
        "{}",
        text(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    let serve = common::Serve::start(&path, "warn", None);
    serve.wait_for_port(port);
    let shown = text(&cli(&admin_url, &carol, &["show", &id]));
    assert!(shown.contains("PENDING"), "survived the restart: {shown}");
    // A graceful stop (SIGTERM) tells a waiting client why, and the request stays pending.
    let psql = psql_spawn(port, &template.key, DO_INSERT);
    wait_pending(&admin_url, &carol, &[]);
    serve.terminate();
    let out = tokio::time::timeout(Duration::from_secs(5), psql).await.unwrap().unwrap();
    assert!(text(&out).contains("Wardgate is shutting down; approval request apr_"), "{}", text(&out));
    let serve = common::Serve::start(&path, "warn", None);
    serve.wait_for_port(port);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let shown = text(&cli(&admin_url, &carol, &["show", &id]));
    assert!(shown.contains("EXPIRED"), "expired on time: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvals_page_works_in_headless_chromium() {
    common::oidc::install_node_deps();
    let s = setup("defer", 60, "").await;
    let out = text(&psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap());
    assert!(out.contains("apr_"), "{out}");
    let page = Command::new("node")
        .arg(common::oidc::modules().join("approvals-page.mjs"))
        .args([&admin(&s.g), &s.carol, "approve"])
        .output()
        .unwrap();
    assert!(page.status.success(), "{}", text(&page));
    let v: Value = serde_json::from_slice(&page.stdout).unwrap();
    assert_eq!(v["title"], "Wardgate approvals");
    let req = &v["requests"][0];
    assert!(req["statement"].as_str().unwrap().contains("INSERT INTO orders"), "{v}");
    assert!(req["text"].as_str().unwrap().contains("test-agent (agent) on behalf of alice@example.com"), "{v}");
    assert!(v["status"].as_str().unwrap().ends_with("is now approved."), "{v}");
    assert_eq!(v["credentialInDom"], false);
    assert!(v.get("pageErrors").is_none(), "{v}");
    let out = psql_spawn(s.g.port, &s.g.key, DO_INSERT).await.unwrap();
    assert!(out.status.success(), "approved in the browser, so it runs: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_approval_withdraws_its_request_and_nothing_runs() {
    let s = setup("wait", 60, "").await;
    let gone_rows = || db().pg.psql("shop", "SELECT count(*) FROM orders WHERE status = 'gone-run'").unwrap();
    let before = gone_rows();
    let mut child = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", &DO_INSERT.replace("held-run", "gone-run")])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", s.g.port.to_string())
        .env("PGDATABASE", "shop")
        .env("PGUSER", "test-agent")
        .env("PGPASSWORD", &s.g.key)
        .env("PGSSLMODE", "require")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = wait_pending(&admin(&s.g), &s.carol, &[]);
    child.kill().unwrap(); // the agent's process dies while it waits
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = text(&cli(&admin(&s.g), &s.carol, &["show", &id]));
        if shown.contains("WITHDRAWN") {
            break;
        }
        assert!(Instant::now() < deadline, "still not withdrawn: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An approver arriving late cannot release it, and it never ran.
    let out = cli(&admin(&s.g), &s.carol, &["approve", &id]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not pending"), "{}", text(&out));
    assert_eq!(gone_rows(), before);
    let decided = events(&s.g, "approval.decision");
    assert!(decided.iter().any(|e| e["approval_id"] == id.as_str() && e["outcome"] == "withdrawn"), "{decided:?}");
    assert!(!events(&s.g, "approval.withdrawn").is_empty(), "the approvals log has it too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_state_store_refuses_only_what_needs_it_and_loses_no_decision() {
    let base = common::tempdir("state-down");
    let st = wardgate::devenv::PgCluster::start(&base).unwrap();
    st.stop_when_process_exits().unwrap();
    st.psql("postgres", "CREATE DATABASE wardgate_state").unwrap();
    // The test clusters trade durability for speed; a state store must not
    // (an immediate stop below is a crash, and a decision is acknowledged only once committed).
    st.psql("postgres", "ALTER SYSTEM SET synchronous_commit = on").unwrap();
    st.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let password = st.dsn("x").split(':').nth(2).unwrap().split('@').next().unwrap().to_string();
    std::fs::write(base.join("pw"), &password).unwrap();
    let gateway_extra = format!(
        "state_store = \"postgres://postgres@127.0.0.1:{}/wardgate_state\"\nstate_store_password_file = \"{}\"\n",
        st.port,
        base.join("pw").display()
    );
    let (extra, carol, _) = approvals_extra("wait", 60, "");
    let g = gateway(Options { extra, gateway_extra, ..Default::default() }).await;
    let url = admin(&g);

    // A decision taken before the outage.
    let psql = psql_spawn(g.port, &g.key, DO_INSERT);
    let first = wait_pending(&url, &carol, &[]);
    assert!(cli(&url, &carol, &["approve", &first]).status.success());
    assert!(psql.await.unwrap().status.success());

    st.stop();
    // Others are unaffected: sessions and plain statements need no store.
    let c = g.client().await;
    assert!(c.simple_query("SELECT count(*) FROM orders").await.is_ok());
    // What needs the store is refused, clearly and promptly (fail closed).
    let t = Instant::now();
    let out = psql_spawn(g.port, &g.key, DO_INSERT).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("the approval store is unavailable; it is refused"), "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(10), "refused after {:?}", t.elapsed());
    let out = cli(&url, &carol, &["list"]);
    assert!(!out.status.success(), "{}", text(&out));

    // Back: the gateway recovers by itself and nothing decided was lost.
    st.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(&url, &carol, &["list"]).status.success() {
        assert!(Instant::now() < deadline, "the admin API did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = text(&cli(&url, &carol, &["show", &first]));
    assert!(shown.contains("EXECUTED"), "{shown}");
    let psql = psql_spawn(g.port, &g.key, DO_INSERT);
    let second = wait_pending(&url, &carol, std::slice::from_ref(&first));
    assert!(cli(&url, &carol, &["approve", &second]).status.success());
    assert!(psql.await.unwrap().status.success());
    // Sessions that ran during the outage reach the session index once it is back.
    drop(c);
    let files = wardgate::record::verify::recordings_in(&g.dir.join("state/recordings")).unwrap();
    let sessions = files
        .iter()
        .filter(|f| {
            let n = f.file_name().unwrap().to_string_lossy();
            !n.starts_with("approvals-") && !n.starts_with("admin-")
        })
        .count();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: usize = st
            .psql("wardgate_state", "SELECT count(*) FROM wardgate_sessions")
            .unwrap()
            .lines()
            .nth(2)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if n >= sessions {
            break;
        }
        assert!(Instant::now() < deadline, "index has {n} of {sessions} sessions");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
