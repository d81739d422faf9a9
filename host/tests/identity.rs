//! Identity end to end: a real OpenID Provider (npm oidc-provider), psql
//! through the gateway with its tokens as passwords, service-account keys
//! managed by the `wardgate` CLI, grants and upstream roles.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::oidc::Provider;
use common::{db, gateway, Options, TestGateway};
use serde_json::{json, Value};

fn op() -> &'static Provider {
    static OP: OnceLock<Provider> = OnceLock::new();
    OP.get_or_init(Provider::start)
}

fn wardgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
}

/// Grants: agents (any issuer) as the app user; humans in db-admins likewise;
/// developers through the read-only upstream role. Agents may only read unless
/// they act for a human (sql-guard's identity rule).
fn identity_config(issuers: &[String]) -> String {
    let mut s = String::new();
    for i in issuers {
        s += &format!(
            "\n[[oidc]]\nissuer = \"{i}\"\naudiences = [\"urn:wardgate\", \"wardgate-cli\"]\nleeway_secs = 5\njwks_min_refresh_secs = 1\n"
        );
    }
    s += r#"
[[grants]]
connection = "shop"
groups = ["db-admins"]
kinds = ["human"]

[[grants]]
connection = "shop"
groups = ["developers"]
role = "readonly"

[connections.shop.roles.readonly]
user = "wardgate_ro"
password_file = "ro_pw"
"#;
    s
}

fn readonly_role() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        db().pg
            .psql("shop", "CREATE ROLE wardgate_ro LOGIN PASSWORD 'ro-secret-pw'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO wardgate_ro;")
            .unwrap();
    });
}

async fn oidc_gateway(issuers: &[String]) -> TestGateway {
    readonly_role();
    let g = gateway(Options {
        extra: identity_config(issuers),
        guard_config: "read_only_kinds = [\"agent\"]\nsponsored_writes = true",
        ..Default::default()
    })
    .await;
    std::fs::write(g.dir.join("ro_pw"), "ro-secret-pw").unwrap();
    g
}

fn events(g: &TestGateway, kind: &str) -> Vec<Value> {
    g.recordings()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == kind)
        .map(|e| e["body"].clone())
        .collect()
}

fn claims(extra: Value) -> Value {
    let now = wardgate::util::now_ms() / 1000;
    let mut c = json!({"iss": op().issuer(), "aud": "urn:wardgate", "sub": "ai-agent-1", "client_id": "ai-agent-1",
                       "groups": ["agents"], "iat": now, "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_from_the_real_provider_connects_as_an_agent() {
    let g = oidc_gateway(&[op().issuer()]).await;
    let token = op().client_credentials("ai-agent-1", "agent-1-secret");
    let (ok, out, err) = g.psql_as("ai-agent-1", &token, &["-Atc", "SELECT current_user, count(*) FROM customers"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "wardgate_app|5");
    // The guard sees the principal: an agent acting for nobody may only read.
    let (ok, _, err) = g.psql_as("ai-agent-1", &token, &["-c", "UPDATE orders SET status = 'paid' WHERE id = 1"]);
    assert!(!ok);
    assert!(err.contains("agent ai-agent-1 may only read here unless it acts for a human"), "{err}");
    let start = &events(&g, "session.start")[0];
    assert_eq!(start["principal"]["kind"], "agent");
    assert_eq!(start["principal"]["name"], "ai-agent-1");
    assert_eq!(start["principal"]["groups"], json!(["agents"]));
    assert_eq!(start["principal"]["issuer"], op().issuer());
    assert_eq!(start["credential"], "oidc-token");
    assert_eq!(start["on_behalf_of"], json!([]));
    assert!(!g.recordings().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_logs_in_from_the_terminal_and_an_agent_acts_for_them() {
    let g = oidc_gateway(&[op().issuer()]).await;
    let token_file = g.dir.join("tokens.json");
    let mut login = wardgate()
        .args(["login", "--issuer", &op().issuer(), "--no-browser", "--timeout", "30"])
        .env("WARDGATE_TOKEN_FILE", &token_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(login.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "login printed no URL");
        if let Some(u) = line.trim().strip_prefix(&format!("{}/auth?", op().issuer())) {
            break format!("{}/auth?{u}", op().issuer());
        }
    };
    assert!(url.contains("code_challenge_method=S256") && url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"));
    op().sign_in(&url, "alice", "alice-pw");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(login.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("as alice") && rest.contains("psql"), "{rest}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let out = wardgate().arg("token").env("WARDGATE_TOKEN_FILE", &token_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // Alice herself: a human in db-admins.
    let (ok, out, err) = g.psql_as("alice", &alice, &["-Atc", "SELECT current_user"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "wardgate_app");
    let start = &events(&g, "session.start")[0];
    assert_eq!(
        (start["principal"]["kind"].as_str(), start["principal"]["name"].as_str()),
        (Some("human"), Some("alice"))
    );
    assert_eq!(start["principal"]["groups"], json!(["db-admins", "approvers"]));

    // An agent exchanges her token (RFC 8693) and acts for her: it may write.
    let delegated = op().exchange("ai-agent-1", "agent-1-secret", &alice);
    let (ok, _, err) = g.psql_as("ai-agent-1", &delegated, &["-c", "UPDATE orders SET status = 'paid' WHERE id = 1"]);
    assert!(ok, "{err}");
    let starts = events(&g, "session.start");
    let s = starts.iter().find(|s| s["principal"]["name"] == "ai-agent-1").expect("agent session recorded");
    assert_eq!(s["principal"]["kind"], "agent");
    assert_eq!(s["on_behalf_of"][0]["name"], "alice");
    assert_eq!(s["on_behalf_of"][0]["kind"], "human");
    assert!(!g.recordings().contains(&alice) && !g.recordings().contains(&delegated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_a_clear_reason_and_recorded_without_the_token() {
    let other = format!("http://127.0.0.1:{}", wardgate::devenv::free_port().unwrap());
    let g = oidc_gateway(&[op().issuer(), other.clone()]).await;
    let now = wardgate::util::now_ms() / 1000;
    let good = op().mint(json!({"claims": claims(json!({}))}));
    let (ok, _, err) = g.psql_as("x", &good, &["-c", "SELECT 1"]);
    assert!(ok, "a well-formed minted token is accepted: {err}");
    let no_grant = op().client_credentials("ai-agent-2", "agent-2-secret");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            op().mint(json!({"claims": claims(json!({"iat": now - 7200, "exp": now - 3600}))})),
            "token expired",
        ),
        (
            "not yet valid",
            op().mint(json!({"claims": claims(json!({"nbf": now + 3600}))})),
            "token is not valid for another",
        ),
        (
            "wrong audience",
            op().mint(json!({"claims": claims(json!({"aud": "urn:other-app"}))})),
            "audience \"urn:other-app\" is not accepted",
        ),
        (
            "wrong issuer",
            op().mint(json!({"claims": claims(json!({"iss": "https://evil.example"}))})),
            "issuer \"https://evil.example\" is not configured",
        ),
        (
            "alg none",
            op().mint(json!({"mode": "none", "claims": claims(json!({}))})),
            "algorithm \"none\" is not accepted",
        ),
        (
            "HS256 keyed with the RSA public key",
            op().mint(json!({"mode": "hs256-public", "alg": "HS256", "claims": claims(json!({}))})),
            "algorithm \"HS256\" is not accepted",
        ),
        (
            "bad signature",
            op().mint(json!({"mode": "bad-signature", "claims": claims(json!({}))})),
            "signature is invalid",
        ),
        (
            "RS256 bad signature",
            op().mint(json!({"mode": "bad-signature", "alg": "RS256", "claims": claims(json!({}))})),
            "signature is invalid",
        ),
        (
            "unknown kid",
            op().mint(json!({"kid": "not-a-key", "claims": claims(json!({}))})),
            "unknown key id \"not-a-key\"",
        ),
        ("truncated", good[..good.rfind('.').unwrap() - 10].to_string(), "malformed"),
        ("signature cut short", good[..good.len() - 4].to_string(), "token"),
        ("malformed", good.split('.').next().unwrap().to_string() + ".!!.x", "malformed"),
        ("unreachable issuer", op().mint(json!({"claims": claims(json!({"iss": other}))})), "is unreachable"),
        ("no grant", no_grant.clone(), "ai-agent-2 has no access to connection \"shop\""),
    ];
    for (what, token, expect) in &cases {
        let (ok, _, err) = g.psql_as("x", token, &["-c", "SELECT 1"]);
        assert!(!ok, "{what}: accepted");
        assert!(err.contains(expect), "{what}: {err}");
        assert!(!err.contains(token.as_str()), "{what}: the error echoes the token");
    }
    let failed = events(&g, "auth.failed");
    assert_eq!(failed.len(), cases.len(), "every refusal is recorded");
    let kinds: Vec<&str> = failed.iter().map(|f| f["error"].as_str().unwrap()).collect();
    for k in [
        "token-expired",
        "token-not-yet-valid",
        "token-audience",
        "token-issuer",
        "token-algorithm",
        "token-bad-signature",
        "token-unknown-key",
        "token-malformed",
        "idp-unavailable",
        "no-grant",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let rec = g.recordings();
    for (what, token, _) in &cases {
        assert!(!rec.contains(token.as_str()), "{what}: the recording holds the token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_key_rotation_new_tokens_work_and_old_ones_are_refused() {
    let own = Provider::start();
    let g = oidc_gateway(&[own.issuer()]).await;
    let old = own.client_credentials("ai-agent-1", "agent-1-secret");
    let (ok, _, err) = g.psql_as("a", &old, &["-c", "SELECT 1"]);
    assert!(ok, "{err}");
    own.rotate();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // jwks_min_refresh_secs = 1
    let new = own.client_credentials("ai-agent-1", "agent-1-secret");
    let (ok, _, err) = g.psql_as("a", &new, &["-c", "SELECT 1"]);
    assert!(ok, "a token signed with the new key is accepted after a JWKS refresh: {err}");
    let (ok, _, err) = g.psql_as("a", &old, &["-c", "SELECT 1"]);
    assert!(!ok, "a token signed with a removed key is refused");
    assert!(err.contains("unknown key id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_keys_are_created_listed_and_revoked_with_the_cli() {
    let g = oidc_gateway(&[]).await;
    let cfg = g.dir.join("wardgate.toml");
    let out = wardgate()
        .args([
            "service-accounts",
            "create",
            "nightly-bot",
            "--groups",
            "agents",
            "--on-behalf-of",
            "carol@example.test",
            "--expires",
            "1d",
        ])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("wg_"));
    let store = std::fs::read_to_string(g.dir.join("state/service-accounts.json")).unwrap();
    assert!(!store.contains(&key), "only the hash is stored");
    let (ok, _, err) = g.psql_as("nightly-bot", &key, &["-Atc", "SELECT 1"]);
    assert!(ok, "{err}");
    let start = events(&g, "session.start").pop().unwrap();
    assert_eq!(start["principal"]["subject"], "sa:nightly-bot");
    assert_eq!(start["on_behalf_of"][0]["name"], "carol@example.test");

    let list = wardgate().args(["service-accounts", "list", "--config"]).arg(&cfg).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("nightly-bot") && list.contains("active") && !list.contains(&key), "{list}");

    let out = wardgate().args(["service-accounts", "revoke", "nightly-bot", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success());
    let (ok, _, err) = g.psql_as("nightly-bot", &key, &["-Atc", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("key of service account nightly-bot has been revoked"), "{err}");
    let list = wardgate().args(["service-accounts", "list", "--config"]).arg(&cfg).output().unwrap();
    assert!(String::from_utf8(list.stdout).unwrap().contains("revoked"));
    let failed = events(&g, "auth.failed");
    assert_eq!(failed.last().unwrap()["error"], "key-revoked");
    assert!(!g.recordings().contains(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_choose_the_upstream_role_and_respect_principal_kinds() {
    let g = oidc_gateway(&[op().issuer()]).await;
    let human = |groups: Value| {
        op().mint(json!({"claims": claims(json!({"sub": "bob", "client_id": "wardgate-cli", "preferred_username": "bob", "groups": groups}))}))
    };
    // developers -> the read-only upstream user: reads work, writes are PostgreSQL's to refuse.
    let bob = human(json!(["developers"]));
    let (ok, out, err) = g.psql_as("bob", &bob, &["-Atc", "SELECT current_user, count(*) FROM orders"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "wardgate_ro|200");
    let (ok, _, err) = g.psql_as("bob", &bob, &["-c", "UPDATE orders SET status = 'paid' WHERE id = 1"]);
    assert!(!ok && err.contains("permission denied for table orders"), "{err}");
    let start = events(&g, "session.start").pop().unwrap();
    assert_eq!(
        (start["upstream_role"].as_str(), start["upstream_user"].as_str()),
        (Some("readonly"), Some("wardgate_ro"))
    );
    // db-admins is granted to humans only: an agent claiming the group is refused.
    let agent_admin = op().mint(json!({"claims": claims(json!({"groups": ["db-admins"]}))}));
    let (ok, _, err) = g.psql_as("a", &agent_admin, &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("ai-agent-1 has no access to connection \"shop\""), "{err}");
    // A human outside every granted group, and a connection that does not exist, read the same.
    let (ok, _, err) = g.psql_as("bob", &human(json!(["marketing"])), &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("bob has no access to connection \"shop\""), "{err}");
    let out = std::process::Command::new("psql")
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!("host=127.0.0.1 port={} dbname=payroll user=bob sslmode=require", g.port))
        .env("PGPASSWORD", &bob)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bob has no access to connection \"payroll\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_log_never_holds_a_token_or_a_key_even_at_debug() {
    let g = oidc_gateway(&[op().issuer()]).await;
    // The same config, served by the real binary with its log captured.
    let (path, port, _) = g.serve_config_isolated();
    let log = g.dir.join("serve.log");
    let serve = common::Serve::start(&path, "debug", Some(&log));
    serve.wait_for_port(port);
    let good = op().client_credentials("ai-agent-1", "agent-1-secret");
    let forged = op().mint(json!({"mode": "bad-signature", "claims": claims(json!({}))}));
    let expired = op().mint(json!({"claims": claims(json!({"exp": 1000, "iat": 900}))}));
    let (wrong_key, _) = wardgate::identity::generate_key();
    let mut creds = vec![good.clone(), forged, expired, wrong_key, g.key.clone()];
    creds.push(format!("{}garbage", &good[..40]));
    for c in &creds {
        let out = Command::new("psql")
            .args(["-X", "-Atc", "SELECT 1"])
            .arg(format!("host=127.0.0.1 port={port} dbname=shop user=x sslmode=require"))
            .env("PGPASSWORD", c)
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains(c.as_str()));
    }
    drop(serve);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("authentication refused"), "the log records refusals:\n{text}");
    assert!(text.contains("session authorized"), "{text}");
    for c in &creds {
        // No token, key, or even a signature-sized fragment of one.
        assert!(!text.contains(c.as_str()), "a credential is in the log");
        let sig = c.rsplit('.').next().unwrap();
        assert!(sig.len() < 20 || !text.contains(sig), "a token signature is in the log");
    }
}
