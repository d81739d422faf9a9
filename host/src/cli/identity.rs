//! `wardgate service-accounts …`, `wardgate login`, `wardgate token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use wardgate::identity::keys::{parse_lifetime_ms, AccountStore, NewAccount};
use wardgate::identity::login;
use wardgate::record::{Recorder, SessionRecorder};

/// Where the state store is: a config file's `state_dir`, or a directory.
#[derive(Args, Debug)]
pub struct StateArgs {
    /// Gateway config file (its state_dir holds the store).
    #[arg(long, short, env = "WARDGATE_CONFIG", conflicts_with = "state_dir")]
    config: Option<PathBuf>,
    /// State directory (instead of --config).
    #[arg(long, env = "WARDGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl StateArgs {
    /// The state directory, and the config when one was given.
    fn resolve(&self) -> anyhow::Result<(PathBuf, Option<wardgate::config::Config>)> {
        match (&self.state_dir, &self.config) {
            (Some(d), _) => Ok((d.clone(), None)),
            (None, Some(c)) => {
                let cfg = wardgate::config::Config::load(c)?;
                Ok((cfg.state_dir.clone(), Some(cfg)))
            }
            (None, None) => anyhow::bail!(
                "where is the gateway's state? pass --config FILE (or set WARDGATE_CONFIG), or --state-dir DIR"
            ),
        }
    }

    fn store(&self) -> anyhow::Result<AccountStore> {
        Ok(AccountStore::in_dir(&self.resolve()?.0))
    }

    /// The key store and the admin recording of a key-management action on
    /// it (see [`audit`]), from one read of the config.
    fn store_audited(&self, command: &str, args: serde_json::Value) -> anyhow::Result<(AccountStore, CliAudit)> {
        let (dir, cfg) = self.resolve()?;
        let audit = audit(&dir, cfg.as_ref(), command, args)?;
        Ok((AccountStore::in_dir(&dir), audit))
    }
}

/// Start the admin recording of a key-management action in `state_dir`:
/// written (and signed, with the config's recording key) *before* the action
/// runs, so an action that cannot be recorded is not taken.
fn audit(
    state_dir: &std::path::Path,
    cfg: Option<&wardgate::config::Config>,
    command: &str,
    body: serde_json::Value,
) -> anyhow::Result<CliAudit> {
    let signer = cfg
        .and_then(|c| c.recording_key_file.as_deref())
        .map(wardgate::record::sign::Signer::from_key_file)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // No registry: no crash recovery or sinks here (a running gateway owns those).
    let recorder =
        Recorder::open(&state_dir.join("recordings"), wardgate::record::Options { signer, ..Default::default() })
            .context("cannot open the recordings directory for the admin record")?;
    let log = recorder.session(&format!("admin-cli-{}", wardgate::util::random_id()));
    let user = std::env::var("USER").unwrap_or_default();
    log.emit(
        "admin.action",
        serde_json::json!({"command": command, "args": body, "os_user": user,
                           "os_uid": unsafe { libc::geteuid() }, "via": "cli"}),
    );
    log.commit().map_err(|e| anyhow::anyhow!("{e}; the action is not taken"))?;
    Ok(CliAudit { log, recorder })
}

/// An admin action from the CLI being recorded (see [`audit`]).
struct CliAudit {
    log: SessionRecorder,
    recorder: Recorder,
}

impl CliAudit {
    /// Record how the action ended, close (and sign) the recording and queue it for the gateway's sinks.
    fn outcome<T>(self, r: &anyhow::Result<T>) {
        let body = match r {
            Ok(_) => serde_json::json!({"ok": true}),
            Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
        };
        self.log.emit("admin.outcome", body);
        let id = self.log.id().to_string();
        // Closing signs the recording; then the gateway's sinks and archive get it too.
        drop(self.log);
        if let Err(e) = wardgate::record::spool::adopt(self.recorder.dir(), &id) {
            eprintln!("warning: the admin record {id} was written but not queued for sinks: {e}");
        }
    }
}

/// `wardgate service-accounts …`
#[derive(Subcommand)]
pub enum SaCmd {
    /// Create a service account and its key; the key is printed once.
    Create {
        /// Account name (the principal is sa:NAME).
        name: String,
        /// Groups (comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// agent, service-account, or human (a personal key, e.g. for an approver without an OpenID Provider).
        #[arg(long, default_value = "agent")]
        kind: String,
        /// The human this agent acts for (recorded as on-behalf-of).
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// List accounts (never keys).
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Revoke an account's key; takes effect on the next connection attempt.
    Revoke {
        /// Account name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Run a `service-accounts` subcommand.
pub fn service_accounts(cmd: SaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SaCmd::Create { name, groups, kind, on_behalf_of, expires, state } => {
            let expires_in_ms = match &expires {
                None => None,
                Some(e) => Some(
                    parse_lifetime_ms(e)
                        .with_context(|| format!("--expires {e}: use a number and a unit (s, m, h, d, w), e.g. 30d"))?,
                ),
            };
            let (store, audit) = state.store_audited(
                "service-accounts create",
                serde_json::json!({"name": name, "kind": kind, "groups": groups, "on_behalf_of": on_behalf_of,
                                   "expires_in_ms": expires_in_ms}),
            )?;
            let created = store
                .create(NewAccount { name, kind, groups, on_behalf_of, expires_in_ms })
                .map_err(anyhow::Error::from);
            audit.outcome(&created);
            let (key, acct) = created?;
            eprintln!(
                "Created {} sa:{} (groups: {}){}{} in {}",
                acct.kind,
                acct.name,
                acct.groups.join(", "),
                acct.on_behalf_of.as_ref().map(|h| format!(", on behalf of {h}")).unwrap_or_default(),
                acct.expires_at_ms
                    .map(|t| format!(", expires {}", wardgate::util::format_rfc3339_ms(t)))
                    .unwrap_or_default(),
                store.path().display()
            );
            eprintln!(
                "Its key follows; it is shown once (only its hash is stored). Give it to the agent as its password:"
            );
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        SaCmd::List { state } => {
            let store = state.store()?;
            let all = store.load()?;
            println!(
                "{:<20} {:<16} {:<24} {:<20} {:<25} {:<25} STATUS",
                "NAME", "KIND", "GROUPS", "ON BEHALF OF", "CREATED", "EXPIRES"
            );
            let now = wardgate::util::now_ms();
            for a in all {
                let fmt = |t: Option<u64>| t.map(wardgate::util::format_rfc3339_ms).unwrap_or_else(|| "-".into());
                let status = match (a.revoked_at_ms, a.expires_at_ms) {
                    (Some(t), _) => format!("revoked {}", wardgate::util::format_rfc3339_ms(t)),
                    (None, Some(e)) if e <= now => "expired".into(),
                    _ => "active".into(),
                };
                println!(
                    "{:<20} {:<16} {:<24} {:<20} {:<25} {:<25} {status}",
                    a.name,
                    a.kind,
                    a.groups.join(","),
                    a.on_behalf_of.as_deref().unwrap_or("-"),
                    fmt(Some(a.created_at_ms)),
                    fmt(a.expires_at_ms)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SaCmd::Revoke { name, state } => {
            let (store, audit) = state.store_audited("service-accounts revoke", serde_json::json!({"name": name}))?;
            let revoked = store.revoke(&name).map_err(anyhow::Error::from);
            audit.outcome(&revoked);
            let n = revoked?;
            eprintln!("revoked {n} key(s) of sa:{name}; new connections with it are refused now");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `wardgate login`
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Issuer URL of the OpenID Provider.
    #[arg(long, env = "WARDGATE_OIDC_ISSUER")]
    issuer: String,
    /// OAuth client id registered for the Wardgate CLI (a public native client).
    #[arg(long, env = "WARDGATE_OIDC_CLIENT_ID", default_value = "wardgate-cli")]
    client_id: String,
    /// Environment variable holding a client secret (confidential clients only).
    #[arg(long)]
    client_secret_env: Option<String>,
    /// Loopback port for the redirect (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Scopes besides openid (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "profile,email,groups,offline_access")]
    scopes: Vec<String>,
    /// Resource indicator (the gateway's audience), if the provider needs one.
    #[arg(long)]
    resource: Option<String>,
    /// Do not try to open a browser; just print the URL.
    #[arg(long)]
    no_browser: bool,
    /// Seconds to wait for the sign-in.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Run `wardgate login`.
pub fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let client_secret = match &a.client_secret_env {
        Some(v) => Some(std::env::var(v).with_context(|| format!("--client-secret-env {v}: variable not set"))?),
        None => None,
    };
    // openidconnect always asks for `openid` itself.
    let scopes: Vec<String> = a.scopes.into_iter().filter(|s| !s.is_empty() && s != "openid").collect();
    let opts = login::LoginOptions {
        issuer: a.issuer.trim_end_matches('/').to_string(),
        client_id: a.client_id,
        client_secret,
        port: a.port,
        scopes,
        resource: a.resource,
        open_browser: !a.no_browser,
        timeout: Duration::from_secs(a.timeout),
    };
    let file = login::default_token_file();
    let done = login::login(&opts, &file, |url| {
        eprintln!("Sign in at the identity provider to continue:\n\n  {url}\n");
        eprintln!("Waiting for the browser to come back to this machine (Ctrl-C to give up)...");
    })?;
    eprintln!(
        "\nSigned in to {} as {} ({}). Tokens are in {} (mode 0600).",
        done.issuer,
        done.name,
        done.subject,
        file.display()
    );
    eprintln!("Use your token as the password, for example:\n");
    eprintln!(
        "  PGPASSWORD=\"$(wardgate token)\" psql \"host=GATEWAY port=6432 dbname=CONNECTION user={} sslmode=require\"",
        done.name
    );
    Ok(ExitCode::SUCCESS)
}

/// Run `wardgate token`: print the stored credential, refreshed if needed.
pub fn token(issuer: Option<String>) -> anyhow::Result<ExitCode> {
    let l = login::current(&login::default_token_file(), issuer.as_deref())?;
    println!("{}", l.credential());
    Ok(ExitCode::SUCCESS)
}
