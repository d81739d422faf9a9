//! Shared test harness: one throwaway PostgreSQL per test binary (seeded with
//! the demo schema), and a gateway per test with its own plugin directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod oidc;
pub mod raw;

use wardgate::config::Config;
use wardgate::devenv::{seed_demo, PgCluster};

pub struct Db {
    pub pg: PgCluster,
    pub app_password: String,
    pub base: PathBuf,
}

/// Built plugins (scripts/build-plugins.sh).
pub fn dist() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let d = std::env::var_os("WARDGATE_PLUGINS").map(PathBuf::from).unwrap_or_else(|| root.join("dist/plugins"));
    assert!(
        d.join("sql-guard.wasm").exists(),
        "{} has no plugins: run scripts/build-plugins.sh (scripts/test.sh does)",
        d.display()
    );
    d
}

/// Built test fixtures.
pub fn fixtures() -> PathBuf {
    dist().join("../fixtures")
}

/// A fresh temp dir under the target dir.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wardgate-test-{tag}-{}-{}",
        std::process::id(),
        wardgate::util::random_id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shared cluster.
pub fn db() -> &'static Db {
    static DB: OnceLock<Db> = OnceLock::new();
    DB.get_or_init(|| {
        let base = tempdir("pg");
        let pg = PgCluster::start(&base).expect("start postgres");
        pg.stop_when_process_exits().expect("watchdog");
        let app_password = seed_demo(&pg, "shop").expect("seed");
        pg.psql("shop", "ALTER ROLE wardgate_app CREATEDB; GRANT CREATE ON SCHEMA public TO wardgate_app;").unwrap();
        // A role whose own default would make the server read backslashes as
        // escapes: every test through the gateway runs with the gateway's
        // startup packet overriding it (and RESET ALL landing on the override).
        pg.psql("shop", "ALTER ROLE wardgate_app SET standard_conforming_strings = off").unwrap();
        Db { pg, app_password, base }
    })
}

pub struct TestGateway {
    pub gw: wardgate::gateway::Gateway,
    pub dir: PathBuf,
    pub key: String,
    /// A human in `admin.admin_groups`.
    pub admin_key: String,
    /// A service account in `admin.metrics_groups` (a metrics scraper).
    pub metrics_key: String,
    pub plugin_dir: PathBuf,
    pub port: u16,
}

pub struct Options {
    pub plugins: Vec<&'static str>,
    pub required: Vec<&'static str>,
    pub plaintext: bool,
    pub extra: String,
    /// Appended to the `[config]` table of sql-guard's manifest.
    pub guard_config: &'static str,
    /// Appended to pii-mask's manifest, whose last table is `[config.columns]`.
    pub mask_config: &'static str,
    /// Lines for the `[gateway]` table.
    pub gateway_extra: String,
    /// Lines for the `[connections.shop]` table.
    pub connection_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plugins: vec!["sql-guard", "pii-mask"],
            required: vec!["sql-guard", "pii-mask"],
            plaintext: true,
            extra: String::new(),
            guard_config: "",
            mask_config: "",
            gateway_extra: String::new(),
            connection_extra: String::new(),
        }
    }
}

/// Start a gateway in front of the shared cluster.
pub async fn gateway(opts: Options) -> TestGateway {
    let db = db();
    let dir = tempdir("gw");
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for p in &opts.plugins {
        for ext in ["wasm", "toml"] {
            std::fs::copy(dist().join(format!("{p}.{ext}")), plugin_dir.join(format!("{p}.{ext}"))).unwrap();
        }
    }
    for (plugin, extra) in [("sql-guard", opts.guard_config), ("pii-mask", opts.mask_config)] {
        if !extra.is_empty() {
            let m = plugin_dir.join(format!("{plugin}.toml"));
            let text = std::fs::read_to_string(&m).unwrap() + "\n" + extra + "\n";
            std::fs::write(m, text).unwrap();
        }
    }
    std::fs::write(dir.join("pw"), &db.app_password).unwrap();
    let (key, hash) = wardgate::identity::generate_key();
    let (admin_key, admin_hash) = wardgate::identity::generate_key();
    let (metrics_key, metrics_hash) = wardgate::identity::generate_key();
    let listener =
        if opts.plaintext { "allow_plaintext = true\ntls_self_signed = true" } else { "tls_self_signed = true" };
    let required: Vec<String> = opts.required.iter().map(|s| format!("\"{s}\"")).collect();
    let cfg = format!(
        r#"
[gateway]
state_dir = "state"
plugin_dir = "plugins"
{gateway_extra}

[listeners.postgres]
bind = "127.0.0.1:0"
{listener}

[admin]
bind = "127.0.0.1:0"
admin_groups = ["wardgate-admins"]
metrics_groups = ["monitoring"]

[connections.shop]
host = "127.0.0.1"
port = {port}
database = "shop"
user = "wardgate_app"
password_file = "pw"
plugins = [{required}]
{connection_extra}

[[service_accounts]]
name = "test-agent"
groups = ["agents"]
on_behalf_of = "alice@example.com"
key_sha256 = "{hash}"

[[service_accounts]]
name = "ops-admin"
kind = "human"
groups = ["wardgate-admins"]
key_sha256 = "{admin_hash}"

[[service_accounts]]
name = "prometheus"
kind = "service-account"
groups = ["monitoring"]
key_sha256 = "{metrics_hash}"

[[grants]]
connection = "shop"
groups = ["agents"]
{extra}
"#,
        port = db.pg.port,
        required = required.join(", "),
        extra = opts.extra,
        gateway_extra = opts.gateway_extra,
        connection_extra = opts.connection_extra,
    );
    let path = dir.join("wardgate.toml");
    std::fs::write(&path, cfg).unwrap();
    let gw = wardgate::gateway::start(Config::load(&path).unwrap()).await.unwrap();
    let port = gw.postgres_addr.unwrap().port();
    TestGateway { gw, dir, key, admin_key, metrics_key, plugin_dir, port }
}

impl TestGateway {
    /// A tokio-postgres connection string (plaintext loopback).
    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} dbname=shop user=test-agent password={} sslmode=disable", self.port, self.key)
    }

    /// Connect tokio-postgres (plaintext loopback listener).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.dsn(), tokio_postgres::NoTls).await.expect("connect through gateway");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Run psql through the gateway with TLS; returns (status ok, stdout, stderr).
    pub fn psql(&self, args: &[&str]) -> (bool, String, String) {
        self.psql_as("test-agent", &self.key, args)
    }

    /// psql through the gateway with TLS, presenting `credential` as the password.
    pub fn psql_as(&self, user: &str, credential: &str, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off"])
            .args(args)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", "shop")
            .env("PGUSER", user)
            .env("PGPASSWORD", credential)
            .env("PGSSLMODE", "require")
            .output()
            .expect("psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// This gateway's config with fixed free ports, written to `serve.toml` for
    /// `wardgate serve`; returns (path, postgres port, admin port).
    pub fn serve_config(&self) -> (PathBuf, u16, u16) {
        let port = wardgate::devenv::free_port().unwrap();
        let admin = wardgate::devenv::free_port().unwrap();
        let cfg = std::fs::read_to_string(self.dir.join("wardgate.toml"))
            .unwrap()
            .replace(
                "bind = \"127.0.0.1:0\"\nallow_plaintext",
                &format!("bind = \"127.0.0.1:{port}\"\nallow_plaintext"),
            )
            .replace("[admin]\nbind = \"127.0.0.1:0\"", &format!("[admin]\nbind = \"127.0.0.1:{admin}\""));
        let path = self.dir.join("serve.toml");
        std::fs::write(&path, cfg).unwrap();
        (path, port, admin)
    }

    /// Like [`Self::serve_config`], with a state directory of its own
    /// (`serve-state`) that this in-process gateway does not touch (a gateway
    /// holds its state directory alone: see `record::own`).
    pub fn serve_config_isolated(&self) -> (PathBuf, u16, u16) {
        let (path, port, admin) = self.serve_config();
        let cfg =
            std::fs::read_to_string(&path).unwrap().replace("state_dir = \"state\"", "state_dir = \"serve-state\"");
        std::fs::write(&path, cfg).unwrap();
        (path, port, admin)
    }

    /// Every recording file's text, concatenated.
    pub fn recordings(&self) -> String {
        self.gw.recorder.flush();
        let mut s = String::new();
        for f in wardgate::record::verify::recordings_in(&self.dir.join("state/recordings")).unwrap() {
            s.push_str(&wardgate::record::read_content(&f).unwrap());
        }
        s
    }
}

/// Seeded PII that must never come out unmasked.
pub const SEEDED_PII: &[&str] = &[
    "jane.doe@example.com",
    "omar.haddad@example.org",
    "4111 1111 1111 1111",
    "5500-0055-5555-5559",
    "123-45-6789",
    "hunter2",
    "AKIAIOSFODNN7EXAMPLE",
    "378282246310005",
];

pub fn assert_no_pii(text: &str, what: &str) {
    for p in SEEDED_PII {
        assert!(!text.contains(p), "{what} leaks {p}:\n{text}");
    }
}

/// `wardgate serve --config FILE` as its own process, killed on drop.
pub struct Serve(pub std::process::Child);

impl Serve {
    /// Start it; stderr (the log) goes to `log` if given.
    pub fn start(config: &Path, log_level: &str, log: Option<&Path>) -> Serve {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate"));
        cmd.args(["serve", "--config"]).arg(config).env("WARDGATE_LOG", log_level);
        if let Some(l) = log {
            cmd.stderr(std::fs::File::create(l).unwrap());
        }
        Serve(cmd.spawn().unwrap())
    }

    /// Ask it to stop (SIGTERM), and wait until it has.
    pub fn terminate(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }

    /// Wait until `port` accepts TCP connections.
    pub fn wait_for_port(&self, port: u16) {
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("wardgate serve did not listen on {port}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
