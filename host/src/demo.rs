//! `wardgate demo`: a throwaway PostgreSQL with realistic PII, the gateway
//! with the first-party plugins, and a scripted agent session through it with
//! the real psql client.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::config::Config;
use crate::devenv::{seed_demo, PgCluster};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stay up after the script and write `demo.env`.
    pub keep: bool,
    /// Where the built plugins (`NAME.wasm` + `NAME.toml`) are.
    pub plugins: PathBuf,
    /// Working directory for the cluster, config, state (a temp dir if None).
    pub dir: Option<PathBuf>,
    /// Where `--keep` writes `demo.env`.
    pub env_file: PathBuf,
    /// A running OpenID Provider to trust, with a machine client for the agent.
    pub oidc: Option<DemoOidc>,
}

/// The OpenID Provider the demo's second agent gets its token from.
#[derive(Debug, Clone)]
pub struct DemoOidc {
    /// Issuer URL.
    pub issuer: String,
    /// Audience the gateway accepts (the provider's resource indicator for it).
    pub audience: String,
    /// Client-credentials client of the agent.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Scopes to ask for.
    pub scopes: Vec<String>,
}

const SCRIPT: &[(&str, &str)] = &[
    (
        "A SELECT of customer data: e-mails, cards, SSNs and secrets come back masked",
        "SELECT id, name, email, phone, card_number, ssn, notes FROM customers ORDER BY id LIMIT 3;",
    ),
    (
        "An alias does not hide a column, and aggregates still work",
        "SELECT ssn AS x, count(*) OVER () AS customers FROM customers ORDER BY id LIMIT 2;",
    ),
    (
        "Transforming a protected column to sneak it past the masker is refused",
        "SELECT replace(email, '@', ' at ') FROM customers;",
    ),
    ("DROP TABLE is refused by sql-guard (and never reaches PostgreSQL)", "DROP TABLE customers;"),
    (
        "...even hidden behind a comment and odd case, sent with a SELECT in one query: nothing runs",
        "SELECT count(*) FROM orders \\; /* cleanup */ dRoP/**/TABLE \"orders\";",
    ),
    ("DELETE without WHERE is refused", "DELETE FROM orders;"),
    ("...and so is WHERE true", "DELETE FROM orders WHERE true;"),
    (
        "...and so is a WHERE that, as the data stands, matches them all: the row cap (max_rows_written) counts first",
        "DELETE FROM orders WHERE id > 0;",
    ),
    ("A targeted DELETE is allowed", "DELETE FROM orders WHERE id = 1;"),
    (
        "A DO block waits for a human: the on-call DBA approves it from another terminal (here: the demo, as oncall-dba), then it runs",
        "DO $$ BEGIN UPDATE orders SET status = 'refunded' WHERE id = 2; END $$;",
    ),
    (
        "The approval covered that one run: the same block again needs a new one, and this time the DBA denies it",
        "DO $$ BEGIN UPDATE orders SET status = 'refunded' WHERE id = 2; END $$;",
    ),
    ("Reading server files is refused", "SELECT pg_read_file('/etc/passwd');"),
    (
        "COPY TO STDOUT is masked too",
        "COPY (SELECT name, email, card_number FROM customers ORDER BY id LIMIT 2) TO STDOUT WITH (FORMAT csv);",
    ),
    ("The session goes on after every refusal", "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status;"),
];

/// Appended to the `[config]` table (the manifest's last) of the demo's sql-guard.
const DEMO_PROTECTED: &str = "\n# Added by `wardgate demo`: columns with these names, in any table, may only be returned\n# as they are (so maskers see them): transforming them could carry data past content detectors.\nprotected_columns = [\"*.email\", \"*.card_number\", \"*.ssn\", \"*.phone\", \"*.notes\", \"*.password\", \"*.secret\", \"*.api_key\", \"*.token\", \"*.iban\"]\nprotected_transform = \"deny\"\n# Filtering or ordering by them is refused too: `WHERE ssn LIKE '1%'`, repeated, reads the\n# value one character at a time. Set \"allow\" to permit lookups such as `WHERE email = $1`.\nprotected_filter = \"deny\"\n";

fn find_plugin_dir(p: &Path) -> anyhow::Result<PathBuf> {
    for name in ["sql-guard", "pii-mask"] {
        if !p.join(format!("{name}.wasm")).exists() || !p.join(format!("{name}.toml")).exists() {
            bail!(
                "{}: {name}.wasm/{name}.toml not found. Build the plugins first: scripts/build-plugins.sh (or run scripts/demo.sh, which does everything)",
                p.display()
            );
        }
    }
    Ok(p.to_path_buf())
}

/// Run the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let plugin_src = find_plugin_dir(&opts.plugins)?;
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = std::env::temp_dir().join(format!("wardgate-demo-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            tmp.clone()
        }
    };
    let dir = std::fs::canonicalize(&dir)?;
    println!("Wardgate demo — working directory {}\n", dir.display());

    print!("Starting a throwaway PostgreSQL ... ");
    std::io::stdout().flush()?;
    let pg = PgCluster::start(&dir.join("pg")).context("starting PostgreSQL")?;
    let app_pw = seed_demo(&pg, "shop").context("seeding the demo schema")?;
    println!("127.0.0.1:{} (database \"shop\": customers with e-mails, cards, SSNs; orders)", pg.port);

    // Plugins: copy so experiments with hot reload do not touch the build output.
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    for e in std::fs::read_dir(&plugin_src)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "wasm" || x == "toml") {
            std::fs::copy(&p, plugin_dir.join(p.file_name().unwrap_or_default()))?;
        }
    }
    // The demo's data has PII in known columns: protect them from transformation
    // (a `replace(email, '@', ' at ')` would otherwise walk past content detectors).
    let guard_manifest = plugin_dir.join("sql-guard.toml");
    let mut text = std::fs::read_to_string(&guard_manifest)?;
    if !text.contains("protected_columns") {
        text.push_str(DEMO_PROTECTED);
        std::fs::write(&guard_manifest, text)?;
    }
    // The agent's key comes from the state store, as `wardgate service-accounts create` makes it.
    let store = crate::identity::keys::AccountStore::in_dir(&dir.join("state"));
    let _ = store.revoke("demo-agent"); // a reused --dir: issue a fresh key
    let (key, _) = store
        .create(crate::identity::keys::NewAccount {
            name: "demo-agent".into(),
            kind: "agent".into(),
            groups: vec!["agents".into()],
            on_behalf_of: Some("alice@example.com".into()),
            expires_in_ms: Some(7 * 86_400_000),
        })
        .context("creating the demo's service account")?;
    // A human approver and Wardgate admin with a personal key (no OpenID Provider needed for the demo).
    let _ = store.revoke("oncall-dba");
    let (approver_key, _) = store
        .create(crate::identity::keys::NewAccount {
            name: "oncall-dba".into(),
            kind: "human".into(),
            groups: vec!["dba".into(), "wardgate-admins".into()],
            on_behalf_of: None,
            expires_in_ms: Some(7 * 86_400_000),
        })
        .context("creating the demo's approver")?;
    let oidc_config = opts
        .oidc
        .as_ref()
        .map(|o| {
            format!(
                "\n[[oidc]]\nissuer = \"{}\"\naudiences = [\"{}\"]\n\n[[grants]]\nconnection = \"shop\"\nprincipals = [\"{}\"]\n",
                o.issuer, o.audience, o.client_id
            )
        })
        .unwrap_or_default();
    // The key that signs recording checkpoints (kept across runs of the same --dir).
    let key_file = dir.join("recording.key");
    if !key_file.exists() {
        std::fs::write(&key_file, crate::record::sign::generate_seed_hex() + "\n")?;
        set_private(&key_file);
    }
    let recording_public = crate::record::sign::Signer::from_seed_hex(&std::fs::read_to_string(&key_file)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?
        .public_hex();
    let pw_file = dir.join("upstream-password");
    std::fs::write(&pw_file, &app_pw)?;
    set_private(&pw_file);
    let gw_port = crate::devenv::free_port()?;
    let admin_port = crate::devenv::free_port()?;
    let config_text = format!(
        r#"# Written by `wardgate demo`. A real config: `wardgate serve --config {cfg}` runs it.
[gateway]
state_dir = "state"
plugin_dir = "plugins"
recording_key_file = "recording.key"   # signs checkpoints in every recording

[listeners.postgres]
bind = "127.0.0.1:{gw_port}"
tls_self_signed = true

[admin]                            # loopback only; every call needs a credential with a role
bind = "127.0.0.1:{admin_port}"
admin_groups = ["wardgate-admins"]

# Group "agents" may use both connections. Service accounts live in
# state/service-accounts.json (`wardgate service-accounts list`).
{connections}{oidc_config}"#,
        cfg = dir.join("wardgate.toml").display(),
        connections = demo_connection("shop", "", ROW_CAP, pg.port)
            + &demo_connection(
                "postgres",
                "# The cluster's maintenance database (empty), under the same policy but without\n\
                 # the row cap: tools and driver test suites connect to \"postgres\" by default.\n",
                "",
                pg.port
            ),
    );
    let cfg_path = dir.join("wardgate.toml");
    std::fs::write(&cfg_path, config_text)?;
    let config = Config::load(&cfg_path)?;
    let gw = crate::gateway::start(config).await?;
    let gw_addr = gw.postgres_addr.context("no postgres listener")?;
    println!("Gateway on {gw_addr} (TLS, self-signed), admin API on http://{}", gw.admin_addr);
    for p in crate::admin::plugin_list(&gw.registry) {
        match &p.error {
            None => println!("  plugin {} {} ({}) sha256:{}", p.name, p.version, p.exports.join("+"), &p.hash[..12]),
            Some(e) => println!("  plugin {} NOT LOADED: {e}", p.name),
        }
    }
    println!("\nAgent \"demo-agent\" (a Wardgate service-account key, acting for alice@example.com)");
    println!("connects with plain psql; it never sees the database password.\n");

    let env = [
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", gw_addr.port().to_string()),
        ("PGDATABASE", "shop".to_string()),
        ("PGUSER", "demo-agent".to_string()),
        ("PGPASSWORD", key.clone()),
        ("PGSSLMODE", "require".to_string()),
    ];
    let mut script = String::new();
    for (i, (title, sql)) in SCRIPT.iter().enumerate() {
        script.push_str(&format!(
            "\\echo '\\n[{}] {}'\n\\echo 'agent=> {}'\n{}\n",
            i + 1,
            title.replace('\'', "''"),
            sql.replace('\'', "''"),
            sql
        ));
    }
    let script_path = dir.join("agent-session.sql");
    std::fs::write(&script_path, &script)?;
    let approver = demo_approver(&gw, &config_auth(&cfg_path)?, &approver_key).await?;
    let psql = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("psql -X -v ON_ERROR_STOP=0 -P pager=off -f '{}' 2>&1", script_path.display()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PGAPPNAME", "demo-agent")
        .output()
        .await
        .context("running psql")?;
    approver.abort();
    println!("{}", String::from_utf8_lossy(&psql.stdout).trim_end());

    if let Some(o) = &opts.oidc {
        oidc_agent(o, &env).await;
    }

    // psql has exited; give the gateway a moment to record each session's end.
    let rec_dir = gw.recorder.dir().to_path_buf();
    for _ in 0..40 {
        gw.recorder.flush();
        let open = crate::record::verify::recordings_in(&rec_dir)?.iter().any(|f| {
            crate::record::read::read(f).is_ok_and(|r| {
                r.events.iter().any(|e| e.kind == "session.start") && !r.events.iter().any(|e| e.kind == "session.end")
            })
        });
        if !open {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let recordings = crate::record::verify::recordings_in(&rec_dir)?;
    println!("\nEvidence:");
    let public = hex::decode(&recording_public).unwrap_or_default();
    for r in &recordings {
        match crate::record::verify::verify_file_with(r, Some(&public)) {
            Ok(v) => println!(
                "  recording {} — {} events, SHA-256 chain and {} signed checkpoint(s) verified, masked data only",
                r.display(),
                v.events,
                v.checkpoints
            ),
            Err(e) => println!("  recording {} — DOES NOT VERIFY: {e}", r.display()),
        }
    }
    println!("  read one back: wardgate sessions show ID --config {}", cfg_path.display());
    let siem = dir.join("state").join("siem.jsonl");
    if siem.exists() {
        println!("  SIEM feed (jsonl-sink plugin, ECS fields): {}", siem.display());
    }
    println!("  config: {}", cfg_path.display());

    if opts.keep {
        let env_text: String = env
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .chain([
                format!("WARDGATE_UPSTREAM_DSN={}\n", pg.dsn("shop")),
                format!("WARDGATE_ADMIN_URL=http://{}\n", gw.admin_addr),
                format!("WARDGATE_DEMO_DIR={}\n", dir.display()),
                format!("WARDGATE_CONFIG={}\n", cfg_path.display()),
                format!("WARDGATE_CREDENTIAL={approver_key}\n"),
                format!("WARDGATE_RECORDING_PUBLIC_KEY={recording_public}\n"),
            ])
            .chain(
                opts.oidc
                    .iter()
                    .map(|o| format!("WARDGATE_OIDC_ISSUER={}\nWARDGATE_OIDC_AUDIENCE={}\n", o.issuer, o.audience)),
            )
            .collect();
        std::fs::write(&opts.env_file, env_text)?;
        set_private(&opts.env_file);
        println!(
            "\nThe demo stays up. {} holds the agent's libpq variables and the direct DSN:",
            opts.env_file.display()
        );
        println!("  set -a; . {}; set +a; psql", opts.env_file.display());
        println!("Plugins hot-reload from {} — edit a manifest or drop in a new .wasm.", plugin_dir.display());
        println!(
            "Admin (http://{0}, loopback): `wardgate approvals list`, `wardgate plugins list`, the page at \
             http://{0}/approvals — all as WARDGATE_CREDENTIAL (oncall-dba, an approver and admin).",
            gw.admin_addr
        );
        println!("Ctrl-C (or SIGTERM) stops everything.");
        wait_for_shutdown().await;
        println!("\nStopping.");
        let _ = std::fs::remove_file(&opts.env_file);
    }
    drop(gw);
    drop(pg);
    if opts.dir.is_none() && !opts.keep {
        println!("(working directory kept for inspection: {})", dir.display());
    }
    Ok(())
}

/// The shop connection's row cap (see `crate::sql::rowcap`).
const ROW_CAP: &str =
    "max_rows_written = 20   # an UPDATE or DELETE that would change more rows, or every row of a table, is refused\n";

/// A demo connection to database `name` (the same name as the connection),
/// with the demo's policy and grant.
fn demo_connection(name: &str, comment: &str, extra: &str, pg_port: u16) -> String {
    format!(
        r#"{comment}[connections.{name}]
host = "127.0.0.1"
port = {pg_port}
database = "{name}"
user = "wardgate_app"
password_file = "upstream-password"
plugins = ["sql-guard", "pii-mask"]
{extra}
[connections.{name}.approvals]   # a review verdict waits for a human in group dba
mode = "wait"
timeout_secs = 30
approver_groups = ["dba"]

[[grants]]
connection = "{name}"
groups = ["agents"]

"#
    )
}

fn config_auth(cfg_path: &Path) -> anyhow::Result<crate::identity::Authenticator> {
    Ok(crate::identity::Authenticator::from_config(&Config::load(cfg_path)?))
}

/// Plays the on-call DBA: approves the first request it sees, denies the second.
async fn demo_approver(
    gw: &crate::gateway::Gateway,
    auth: &crate::identity::Authenticator,
    key: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let me = auth.authenticate(key).await.map_err(|e| anyhow::anyhow!("demo approver: {e}"))?;
    let approvals = gw.approvals.clone();
    Ok(tokio::spawn(async move {
        let mut decided = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let Ok(pending) = approvals.list(Some(crate::approvals::Status::Pending), 10).await else { continue };
            for r in pending {
                let (approve, reason) =
                    if decided == 0 { (true, "checked: one refund") } else { (false, "one run was enough") };
                if approvals.decide(&r.id, &me, approve, Some(reason)).await.is_ok() {
                    decided += 1;
                }
            }
        }
    }))
}

/// A second agent, identified by a client-credentials token from the OpenID Provider.
async fn oidc_agent(o: &DemoOidc, env: &[(&str, String)]) {
    println!(
        "\nA second agent authenticates with a client-credentials token from {} (client {}):",
        o.issuer, o.client_id
    );
    let o2 = o.clone();
    let token = tokio::task::spawn_blocking(move || {
        crate::identity::login::client_credentials(&o2.issuer, &o2.client_id, &o2.client_secret, &o2.scopes)
    })
    .await;
    let token = match token {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return println!("  could not get a token: {e}"),
        Err(e) => return println!("  could not get a token: {e}"),
    };
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-P", "pager=off", "-c", "SELECT name, email FROM customers ORDER BY id LIMIT 2"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PGUSER", &o.client_id)
        .env("PGPASSWORD", &token)
        .output()
        .await;
    match out {
        Ok(o) => {
            println!("agent=> SELECT name, email FROM customers ORDER BY id LIMIT 2;");
            println!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout).trim_end(),
                String::from_utf8_lossy(&o.stderr).trim_end()
            );
        }
        Err(e) => println!("  psql failed: {e}"),
    }
}

fn set_private(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// Is psql on PATH?
pub fn have_psql() -> bool {
    Command::new("psql").arg("--version").output().is_ok_and(|o| o.status.success())
}
