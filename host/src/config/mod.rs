//! Configuration: the gateway's TOML file, parsed once into typed structs.
//!
//! Relative paths resolve against the config file's directory. Secrets are
//! never written in the file: they come from an environment variable
//! (`*_env`) or a file (`*_file`). Every error names file, line, key and fix.

pub mod approvals;
pub mod diag;
pub mod identity;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use approvals::{ApprovalSettings, ApprovalsConfig, HoldMode, StateStoreConfig, Webhook, WebhookFormat};
use diag::{at_span, TomlError};
pub use identity::{Grant, OidcIssuerConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    listeners: RawListeners,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    connections: BTreeMap<String, RawConnection>,
    #[serde(default)]
    service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    grants: Vec<identity::RawGrant>,
    #[serde(default)]
    oidc: Vec<identity::RawOidc>,
    #[serde(default)]
    approvals: approvals::RawApprovals,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    state_dir: Option<Spanned<String>>,
    plugin_dir: Option<Spanned<String>>,
    #[serde(default)]
    record_rows: Option<u32>,
    #[serde(default)]
    max_plugin_instances: Option<u32>,
    #[serde(default)]
    workers: Option<Spanned<u32>>,
    state_store: Option<Spanned<String>>,
    state_store_password_env: Option<Spanned<String>>,
    state_store_password_file: Option<Spanned<String>>,
    recording_key_file: Option<Spanned<String>>,
    recording_retention_days: Option<Spanned<u32>>,
    recording_max_mib: Option<Spanned<u64>>,
    recording_archive: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListeners {
    postgres: Option<RawPgListener>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgListener {
    bind: Spanned<String>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    #[serde(default)]
    tls_self_signed: bool,
    #[serde(default = "no")]
    allow_plaintext: Spanned<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    #[serde(default)]
    tls_self_signed: bool,
    #[serde(default)]
    admin_groups: Vec<String>,
    #[serde(default)]
    metrics_groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(default = "pg")]
    protocol: Spanned<String>,
    host: Spanned<String>,
    port: u16,
    database: String,
    user: String,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    #[serde(default = "disable")]
    sslmode: Spanned<String>,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    plugins: Vec<String>,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    approvals: Option<approvals::RawConnApprovals>,
    max_rows_written: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    user: Spanned<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

fn no() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn pg() -> Spanned<String> {
    Spanned::new(0..0, "postgres".into())
}
fn disable() -> Spanned<String> {
    Spanned::new(0..0, "disable".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceAccount {
    name: Spanned<String>,
    #[serde(default = "agent")]
    kind: Spanned<String>,
    #[serde(default)]
    groups: Vec<String>,
    key_sha256: Spanned<String>,
    on_behalf_of: Option<String>,
    expires_at: Option<Spanned<String>>,
    #[serde(default)]
    revoked: bool,
}

fn agent() -> Spanned<String> {
    Spanned::new(0..0, "agent".into())
}

/// TLS settings of a listener.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM certificate chain and key files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generate a self-signed certificate at start (demo and tests).
    SelfSigned,
    /// No TLS (only with `allow_plaintext` on loopback).
    None,
}

/// The PostgreSQL listener.
#[derive(Debug, Clone)]
pub struct PgListener {
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS.
    pub tls: TlsSource,
    /// Accept clients that do not use TLS (loopback only).
    pub allow_plaintext: bool,
}

/// The admin listener (API, approvals page, metrics).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to bind (loopback by default).
    pub bind: SocketAddr,
    /// TLS (required unless `bind` is loopback).
    pub tls: TlsSource,
    /// Members have the admin role: plugins, metrics, every approval request (read).
    pub admin_groups: Vec<String>,
    /// Members may read `/metrics` (a Prometheus scraper's service account).
    pub metrics_groups: Vec<String>,
}

/// How the gateway talks TLS to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// TLS, certificate not verified (like libpq's `require`).
    Require,
    /// TLS, certificate and host name verified against `ca_file` or the system roots.
    VerifyFull(Option<PathBuf>),
}

/// Where a connection's upstream password comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// Environment variable.
    Env(String),
    /// File (first line).
    File(PathBuf),
    /// No password (trust / peer authentication upstream).
    None,
}

/// A secret in memory: wiped when dropped.
pub type Secret = zeroize::Zeroizing<String>;

impl SecretSource {
    /// Read the secret now (so rotation takes effect without a restart). The
    /// value, and the file's bytes it came from, are wiped when dropped.
    pub fn read(&self) -> Result<Option<Secret>, String> {
        match self {
            SecretSource::None => Ok(None),
            SecretSource::Env(v) => std::env::var(v)
                .map(|s| Some(Secret::new(s)))
                .map_err(|_| format!("environment variable {v} is not set")),
            SecretSource::File(p) => std::fs::read_to_string(p)
                .map(|s| {
                    let all = Secret::new(s);
                    Some(Secret::new(all.lines().next().unwrap_or("").to_string()))
                })
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
        }
    }
}

/// One upstream the gateway fronts.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Name clients use as `dbname`.
    pub name: String,
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Upstream database.
    pub database: String,
    /// Upstream user.
    pub user: String,
    /// Upstream password source.
    pub password: SecretSource,
    /// TLS to upstream.
    pub tls: UpstreamTls,
    /// Plugins this connection cannot run without (fail closed if missing).
    pub plugins: Vec<String>,
    /// Other upstream users grants may select (e.g. a read-only one).
    pub roles: BTreeMap<String, Role>,
    /// What a review verdict does on this connection.
    pub approvals: ApprovalSettings,
    /// The most rows one UPDATE or DELETE may change (and none may change
    /// every row of a table with more than one); see [`crate::sql::rowcap`].
    pub max_rows_written: Option<u64>,
}

/// An upstream login a grant can select.
#[derive(Debug, Clone)]
pub struct Role {
    /// Upstream user.
    pub user: String,
    /// Its password.
    pub password: SecretSource,
}

impl Connection {
    /// This connection as the upstream `role` logs in (the connection's own user if `None`).
    pub fn as_role(&self, role: Option<&str>) -> Option<Connection> {
        let Some(r) = role else { return Some(self.clone()) };
        let role = self.roles.get(r)?;
        Some(Connection { user: role.user.clone(), password: role.password.clone(), ..self.clone() })
    }
}

/// A Wardgate-issued service-account key.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    /// Name (principal subject is `sa:NAME`).
    pub name: String,
    /// `agent` or `service-account`.
    pub kind: String,
    /// Groups.
    pub groups: Vec<String>,
    /// SHA-256 of the key, hex.
    pub key_sha256: String,
    /// The human it acts for.
    pub on_behalf_of: Option<String>,
    /// Expiry, ms since epoch.
    pub expires_at_ms: Option<u64>,
    /// Revoked keys are refused.
    pub revoked: bool,
}

/// Most session worker threads `gateway.workers` may ask for.
const MAX_WORKERS: u32 = 1024;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// State: recordings, plugin cache.
    pub state_dir: PathBuf,
    /// Plugin directory (watched).
    pub plugin_dir: PathBuf,
    /// Result rows recorded per request (masked).
    pub record_rows: u32,
    /// Pooled plugin instance slots.
    pub max_plugin_instances: u32,
    /// Session worker threads (0: one per core).
    pub workers: usize,
    /// PostgreSQL listener.
    pub postgres: Option<PgListener>,
    /// Admin listener.
    pub admin: AdminConfig,
    /// Connections by name.
    pub connections: BTreeMap<String, Connection>,
    /// Service accounts.
    pub service_accounts: Vec<ServiceAccount>,
    /// Grants.
    pub grants: Vec<Grant>,
    /// Trusted OpenID Providers.
    pub oidc: Vec<OidcIssuerConfig>,
    /// Approvals, gateway-wide.
    pub approvals: ApprovalsConfig,
    /// Where approvals (and other shared state) live.
    pub state_store: StateStoreConfig,
    /// The ed25519 seed (hex) that signs recording checkpoints.
    pub recording_key_file: Option<PathBuf>,
    /// How long closed recordings are kept.
    pub retention: crate::record::Retention,
    /// Object storage closed recordings are copied to (`s3://…` or `file:///…`).
    pub recording_archive: Option<String>,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, TomlError> {
        let src = std::fs::read_to_string(path).map_err(|e| TomlError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config: {e}"),
            fix: Some("pass an existing file to --config".into()),
        })?;
        Self::parse(path, &src)
    }

    /// Validate config text (`path` names it in errors and anchors relative paths).
    pub fn parse(path: &Path, src: &str) -> Result<Config, TomlError> {
        let raw: RawConfig = diag::parse(path, src)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
        let err = |span: std::ops::Range<usize>, key: &str, msg: String, fix: &str| {
            at_span(path, src, Some(span), key, msg, Some(fix))
        };

        let state_dir =
            raw.gateway.state_dir.as_ref().map(|s| resolve(s.get_ref())).unwrap_or_else(|| base.join("state"));
        let plugin_dir =
            raw.gateway.plugin_dir.as_ref().map(|s| resolve(s.get_ref())).unwrap_or_else(|| base.join("plugins"));

        let postgres = match raw.listeners.postgres {
            None => None,
            Some(l) => {
                let bind: SocketAddr = l.bind.get_ref().parse().map_err(|_| {
                    err(
                        l.bind.span(),
                        "listeners.postgres.bind",
                        format!("\"{}\" is not an address", l.bind.get_ref()),
                        "use IP:PORT, e.g. \"127.0.0.1:6432\"",
                    )
                })?;
                let tls = tls_source("listeners.postgres", &l.tls_cert, &l.tls_key, l.tls_self_signed, &resolve)
                    .map_err(|(span, key, msg, fix)| err(span, &key, msg, fix))?;
                let allow_plaintext = *l.allow_plaintext.get_ref();
                if matches!(tls, TlsSource::None) && !allow_plaintext {
                    return Err(err(
                        l.bind.span(),
                        "listeners.postgres",
                        "no TLS configured; clients would send their tokens in clear text".into(),
                        "set tls_cert and tls_key (or tls_self_signed = true), or allow_plaintext = true on a loopback address",
                    ));
                }
                if allow_plaintext && !bind.ip().is_loopback() {
                    return Err(err(
                        l.allow_plaintext.span(),
                        "listeners.postgres.allow_plaintext",
                        format!("plaintext is only allowed on loopback, not {}", bind.ip()),
                        "bind to 127.0.0.1 or ::1, or turn allow_plaintext off",
                    ));
                }
                Some(PgListener { bind, tls, allow_plaintext })
            }
        };

        let admin_bind: SocketAddr = match &raw.admin.bind {
            None => "127.0.0.1:9190".parse().expect("valid"),
            Some(b) => b.get_ref().parse().map_err(|_| {
                err(
                    b.span(),
                    "admin.bind",
                    format!("\"{}\" is not an address", b.get_ref()),
                    "use IP:PORT, e.g. \"127.0.0.1:9190\"",
                )
            })?,
        };
        let admin_tls =
            tls_source("admin", &raw.admin.tls_cert, &raw.admin.tls_key, raw.admin.tls_self_signed, &resolve)
                .map_err(|(span, key, msg, fix)| err(span, &key, msg, fix))?;
        if matches!(admin_tls, TlsSource::None) && !admin_bind.ip().is_loopback() {
            return Err(err(
                raw.admin.bind.as_ref().map(|b| b.span()).unwrap_or(0..0),
                "admin.bind",
                format!("the admin listener on {} would carry credentials in clear text", admin_bind.ip()),
                "bind to 127.0.0.1 (and reach it through SSH or a TLS proxy), or set admin.tls_cert and admin.tls_key",
            ));
        }
        let admin = AdminConfig {
            bind: admin_bind,
            tls: admin_tls,
            admin_groups: raw.admin.admin_groups,
            metrics_groups: raw.admin.metrics_groups,
        };

        let cx = identity::Ctx { path, src };
        let mut connections = BTreeMap::new();
        for (name, c) in raw.connections {
            let approvals = approvals::connection(&cx, &name, c.approvals)?;
            let key = |k: &str| format!("connections.{name}.{k}");
            if c.protocol.get_ref() != "postgres" {
                return Err(err(
                    c.protocol.span(),
                    &key("protocol"),
                    format!("unsupported protocol \"{}\"", c.protocol.get_ref()),
                    "use \"postgres\" (ssh and http arrive later)",
                ));
            }
            if c.host.get_ref().is_empty() {
                return Err(err(c.host.span(), &key("host"), "empty host".into(), "set the upstream host"));
            }
            let secret = |env: &Option<Spanned<String>>, file: &Option<Spanned<String>>, k: &str| match (env, file) {
                (Some(v), None) => Ok(SecretSource::Env(v.get_ref().clone())),
                (None, Some(f)) => Ok(SecretSource::File(resolve(f.get_ref()))),
                (None, None) => Ok(SecretSource::None),
                (Some(v), Some(_)) => Err(err(
                    v.span(),
                    &key(&format!("{k}password_env")),
                    "both password_env and password_file".into(),
                    "keep one",
                )),
            };
            let password = secret(&c.password_env, &c.password_file, "")?;
            let mut roles = BTreeMap::new();
            for (r, role) in &c.roles {
                if role.user.get_ref().is_empty() {
                    return Err(err(
                        role.user.span(),
                        &key(&format!("roles.{r}.user")),
                        "empty user".into(),
                        "name the upstream user",
                    ));
                }
                let password = secret(&role.password_env, &role.password_file, &format!("roles.{r}."))?;
                roles.insert(r.clone(), Role { user: role.user.get_ref().clone(), password });
            }
            let tls = match c.sslmode.get_ref().as_str() {
                "disable" => UpstreamTls::Disable,
                "require" => UpstreamTls::Require,
                "verify-full" => UpstreamTls::VerifyFull(c.ca_file.as_ref().map(|f| resolve(f.get_ref()))),
                other => {
                    return Err(err(
                        c.sslmode.span(),
                        &key("sslmode"),
                        format!("unknown sslmode \"{other}\""),
                        "use disable, require or verify-full",
                    ))
                }
            };
            let max_rows_written = match c.max_rows_written {
                Some(m) if *m.get_ref() < 1 => {
                    return Err(err(
                        m.span(),
                        &key("max_rows_written"),
                        format!("max_rows_written must be at least 1, not {}", m.get_ref()),
                        "set the most rows one UPDATE or DELETE may change, or leave the key out for no cap",
                    ))
                }
                Some(m) => Some(*m.get_ref() as u64),
                None => None,
            };
            connections.insert(
                name.clone(),
                Connection {
                    name,
                    host: c.host.into_inner(),
                    port: c.port,
                    database: c.database,
                    user: c.user,
                    password,
                    tls,
                    plugins: c.plugins,
                    roles,
                    approvals,
                    max_rows_written,
                },
            );
        }

        let mut service_accounts = Vec::new();
        for (i, s) in raw.service_accounts.into_iter().enumerate() {
            let key = |k: &str| format!("service_accounts[{i}].{k}");
            let h = s.key_sha256.get_ref();
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(
                    s.key_sha256.span(),
                    &key("key_sha256"),
                    "not a SHA-256 hex digest".into(),
                    "store the key's hash, never the key: `wardgate service-accounts hash` prints it",
                ));
            }
            if !crate::identity::keys::KINDS.contains(&s.kind.get_ref().as_str()) {
                return Err(err(
                    s.kind.span(),
                    &key("kind"),
                    format!("unknown kind \"{}\"", s.kind.get_ref()),
                    "use agent, service-account or human",
                ));
            }
            let expires_at_ms = match &s.expires_at {
                None => None,
                Some(e) => Some(crate::util::parse_rfc3339_ms(e.get_ref()).ok_or_else(|| {
                    err(
                        e.span(),
                        &key("expires_at"),
                        format!("\"{}\" is not a time", e.get_ref()),
                        "use RFC 3339, e.g. \"2027-01-31T00:00:00Z\"",
                    )
                })?),
            };
            if s.name.get_ref().is_empty() {
                return Err(err(s.name.span(), &key("name"), "empty name".into(), "name the account"));
            }
            service_accounts.push(ServiceAccount {
                name: s.name.into_inner(),
                kind: s.kind.into_inner(),
                groups: s.groups,
                key_sha256: h.to_ascii_lowercase(),
                on_behalf_of: s.on_behalf_of,
                expires_at_ms,
                revoked: s.revoked,
            });
        }

        let cx = identity::Ctx { path, src };
        let grants =
            identity::grants(&cx, raw.grants, |name| connections.get(name).map(|c| c.roles.keys().cloned().collect()))?;
        let oidc = identity::oidc(&cx, raw.oidc)?;
        let recording_key_file = match &raw.gateway.recording_key_file {
            None => None,
            Some(f) => {
                let path = resolve(f.get_ref());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        f.span(),
                        "gateway.recording_key_file",
                        format!("cannot read {}: {e}", path.display()),
                        "create one with `wardgate sessions keygen --out FILE`",
                    )
                })?;
                crate::record::sign::Signer::from_seed_hex(&text).map_err(|e| {
                    err(
                        f.span(),
                        "gateway.recording_key_file",
                        format!("{}: {e}", path.display()),
                        "create one with `wardgate sessions keygen --out FILE`",
                    )
                })?;
                Some(path)
            }
        };
        let mut retention = crate::record::Retention::default();
        if let Some(w) = &raw.gateway.workers {
            if *w.get_ref() > MAX_WORKERS {
                return Err(err(
                    w.span(),
                    "gateway.workers",
                    format!("{} threads", w.get_ref()),
                    "use 0 (one per core) or at most 1024",
                ));
            }
        }
        if let Some(d) = &raw.gateway.recording_retention_days {
            if *d.get_ref() == 0 {
                return Err(err(
                    d.span(),
                    "gateway.recording_retention_days",
                    "0 days".into(),
                    "use 1 or more (or leave it out to keep recordings forever)",
                ));
            }
            retention.max_age = Some(std::time::Duration::from_secs(u64::from(*d.get_ref()) * 86_400));
        }
        if let Some(m) = &raw.gateway.recording_max_mib {
            if *m.get_ref() == 0 {
                return Err(err(
                    m.span(),
                    "gateway.recording_max_mib",
                    "0 MiB".into(),
                    "use 1 or more (or leave it out for no cap)",
                ));
            }
            retention.max_bytes = Some(m.get_ref() << 20);
        }
        let recording_archive = match &raw.gateway.recording_archive {
            None => None,
            Some(a) => {
                let url = a.get_ref();
                let ok = url.strip_prefix("file://").is_some_and(|p| p.starts_with('/'))
                    || url.strip_prefix("s3://").is_some_and(|b| !b.is_empty() && !b.starts_with('/'));
                if !ok {
                    return Err(err(
                        a.span(),
                        "gateway.recording_archive",
                        format!("\"{url}\" is not an archive URL"),
                        "use s3://BUCKET/PREFIX (credentials from AWS_* variables) or file:///ABSOLUTE/PATH",
                    ));
                }
                Some(url.clone())
            }
        };
        let approvals = approvals::gateway(&cx, raw.approvals, format!("http://{admin_bind}"))?;
        let state_store = match &raw.gateway.state_store {
            None => StateStoreConfig::Sqlite,
            Some(u) => {
                let url = u.get_ref();
                let scheme_ok = ["sqlite://", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p));
                let has_password =
                    url.split_once("://").and_then(|(_, r)| r.split_once('@')).is_some_and(|(ui, _)| ui.contains(':'));
                if !scheme_ok || has_password {
                    return Err(err(
                        u.span(),
                        "gateway.state_store",
                        if has_password {
                            "the URL holds a password".into()
                        } else {
                            format!("\"{url}\" is not a sqlite:// or postgres:// URL")
                        },
                        "use postgres://USER@HOST:PORT/DB with state_store_password_env (or sqlite://PATH)",
                    ));
                }
                let password = match (&raw.gateway.state_store_password_env, &raw.gateway.state_store_password_file) {
                    (Some(v), None) => SecretSource::Env(v.get_ref().clone()),
                    (None, Some(f)) => SecretSource::File(resolve(f.get_ref())),
                    (None, None) => SecretSource::None,
                    (Some(v), Some(_)) => {
                        return Err(err(
                            v.span(),
                            "gateway.state_store_password_env",
                            "both _env and _file".into(),
                            "keep one",
                        ))
                    }
                };
                StateStoreConfig::Url { url: url.clone(), password }
            }
        };

        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            plugin_dir,
            record_rows: raw.gateway.record_rows.unwrap_or(20),
            max_plugin_instances: raw.gateway.max_plugin_instances.unwrap_or(1000),
            workers: raw.gateway.workers.as_ref().map_or(0, |w| *w.get_ref() as usize),
            postgres,
            admin,
            connections,
            service_accounts,
            grants,
            oidc,
            approvals,
            state_store,
            recording_key_file,
            retention,
            recording_archive,
        })
    }
}

/// A config error before it is placed: span, key, message, fix.
type Misplaced = (std::ops::Range<usize>, String, String, &'static str);

/// TLS settings of a listener section (`tls_cert` + `tls_key`, or `tls_self_signed`).
fn tls_source(
    section: &str,
    cert: &Option<Spanned<String>>,
    key: &Option<Spanned<String>>,
    self_signed: bool,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<TlsSource, Misplaced> {
    Ok(match (cert, key, self_signed) {
        (Some(c), Some(k), false) => TlsSource::Files { cert: resolve(c.get_ref()), key: resolve(k.get_ref()) },
        (None, None, true) => TlsSource::SelfSigned,
        (None, None, false) => TlsSource::None,
        (Some(c), None, _) => {
            return Err((
                c.span(),
                format!("{section}.tls_cert"),
                "tls_cert without tls_key".into(),
                "add tls_key = \"key.pem\"",
            ))
        }
        (None, Some(k), _) => {
            return Err((
                k.span(),
                format!("{section}.tls_key"),
                "tls_key without tls_cert".into(),
                "add tls_cert = \"cert.pem\"",
            ))
        }
        (Some(c), Some(_), true) => {
            return Err((
                c.span(),
                format!("{section}.tls_self_signed"),
                "both certificate files and tls_self_signed".into(),
                "choose one",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[gateway]
state_dir = "state"

[listeners.postgres]
bind = "127.0.0.1:6432"
tls_self_signed = true

[connections.app]
host = "127.0.0.1"
port = 5432
database = "app"
user = "wardgate"
password_env = "APP_PW"
plugins = ["sql-guard"]

[[service_accounts]]
name = "bot"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[[grants]]
connection = "app"
groups = ["agents"]
"#;

    #[test]
    fn a_valid_config_loads_with_paths_resolved() {
        let c = Config::parse(Path::new("/etc/wardgate/wardgate.toml"), OK).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/wardgate/state"));
        assert_eq!(c.connections["app"].plugins, vec!["sql-guard".to_string()]);
        assert!(matches!(c.postgres.unwrap().tls, TlsSource::SelfSigned));
    }

    #[test]
    fn plaintext_off_loopback_is_refused_with_line_and_key() {
        let src =
            OK.replace("tls_self_signed = true", "allow_plaintext = true").replace("127.0.0.1:6432", "0.0.0.0:6432");
        let e = Config::parse(Path::new("w.toml"), &src).unwrap_err();
        assert_eq!(e.key, "listeners.postgres.allow_plaintext");
        assert_eq!(e.line, 7);
    }

    #[test]
    fn grant_to_unknown_connection_is_refused() {
        let src = OK.replace("connection = \"app\"", "connection = \"nope\"");
        let e = Config::parse(Path::new("w.toml"), &src).unwrap_err();
        assert_eq!(e.key, "grants[0].connection");
        assert!(e.to_string().contains("w.toml:"), "{e}");
    }

    #[test]
    fn a_plaintext_key_instead_of_its_hash_is_refused() {
        let src = OK.replace("0000000000000000000000000000000000000000000000000000000000000000", "wg_secret");
        let e = Config::parse(Path::new("w.toml"), &src).unwrap_err();
        assert_eq!(e.key, "service_accounts[0].key_sha256");
    }

    #[test]
    fn session_workers_default_to_one_per_core_and_are_bounded() {
        assert_eq!(Config::parse(Path::new("w.toml"), OK).unwrap().workers, 0);
        let src = OK.replace("state_dir = \"state\"", "state_dir = \"state\"\nworkers = 3");
        assert_eq!(Config::parse(Path::new("w.toml"), &src).unwrap().workers, 3);
        let src = OK.replace("state_dir = \"state\"", "state_dir = \"state\"\nworkers = 100000");
        let e = Config::parse(Path::new("w.toml"), &src).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("gateway.workers", 4), "{e}");
        assert!(e.to_string().contains("at most 1024"), "{e}");
    }

    #[test]
    fn a_row_cap_must_be_positive() {
        let src = OK.replace("plugins = [\"sql-guard\"]", "plugins = [\"sql-guard\"]\nmax_rows_written = 0");
        let e = Config::parse(Path::new("w.toml"), &src).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("connections.app.max_rows_written", 16), "{e}");
        let src = OK.replace("plugins = [\"sql-guard\"]", "plugins = [\"sql-guard\"]\nmax_rows_written = 50");
        assert_eq!(Config::parse(Path::new("w.toml"), &src).unwrap().connections["app"].max_rows_written, Some(50));
        assert_eq!(Config::parse(Path::new("w.toml"), OK).unwrap().connections["app"].max_rows_written, None);
    }

    #[test]
    fn typo_in_a_key_names_line() {
        let src = OK.replace("database = \"app\"", "databse = \"app\"");
        let e = Config::parse(Path::new("w.toml"), &src).unwrap_err();
        assert_eq!(e.key, "connections.app.databse");
        assert!(e.line > 0);
    }
}
