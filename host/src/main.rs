//! The `wardgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "wardgate", version, about = "Identity-aware gateway with WebAssembly policy plugins", long_about = None)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", env = "WARDGATE_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a complete local demo: PostgreSQL, gateway, plugins and an agent session.
    Demo {
        /// Stay up afterwards and write demo.env for other tools.
        #[arg(long)]
        keep: bool,
        /// Directory holding the built plugins (NAME.wasm + NAME.toml).
        #[arg(long, default_value = "dist/plugins", env = "WARDGATE_PLUGINS")]
        plugins: PathBuf,
        /// Working directory (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where --keep writes the environment file.
        #[arg(long, default_value = "demo.env")]
        env_file: PathBuf,
        #[command(flatten)]
        oidc: DemoOidcArgs,
    },
    /// Check a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Inspect plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCmd,
    },
    /// Manage Wardgate-issued service-account keys.
    ServiceAccounts {
        #[command(subcommand)]
        command: cli::identity::SaCmd,
    },
    /// Decide statements held for human approval.
    Approvals {
        #[command(subcommand)]
        command: cli::approvals::ApprovalsCmd,
    },
    /// Sign in at an OpenID Provider from this terminal (authorization code + PKCE).
    Login(cli::identity::LoginArgs),
    /// Print the stored OIDC token (refreshed if needed), for use as a password.
    Token {
        /// Issuer (default: the first one logged in to).
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: cli::sessions::SessionsCmd,
    },
}

/// A running OpenID Provider for the demo's second agent (optional).
#[derive(clap::Args)]
struct DemoOidcArgs {
    /// Issuer URL of a running OpenID Provider (e.g. scripts/oidc.sh start).
    #[arg(long, env = "WARDGATE_DEMO_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// Audience of the provider's tokens for this gateway.
    #[arg(long, env = "WARDGATE_DEMO_OIDC_AUDIENCE", default_value = "urn:wardgate")]
    oidc_audience: String,
    /// The agent's client-credentials client.
    #[arg(long, env = "WARDGATE_DEMO_OIDC_CLIENT_ID", default_value = "ai-agent-1")]
    oidc_client_id: String,
    /// Environment variable holding its secret.
    #[arg(long, default_value = "WARDGATE_DEMO_OIDC_CLIENT_SECRET")]
    oidc_client_secret_env: String,
    /// Scopes to ask for (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "gateway:postgres")]
    oidc_scopes: Vec<String>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file and print a summary.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginsCmd {
    /// Validate a plugin component: world, contract version, exports, manifest.
    Check {
        /// The .wasm file (its NAME.toml beside it is checked too, if present).
        file: PathBuf,
    },
    /// What a running gateway has loaded.
    List {
        #[command(flatten)]
        admin: cli::admin_client::AdminClient,
    },
}

/// Panics go to the log as one structured line (with a backtrace when
/// RUST_BACKTRACE is set). Plugin calls contain panics raised inside host
/// functions; the gateway keeps serving.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-text panic payload)".into());
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        tracing::error!(%location, "panic: {msg}");
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!("backtrace:\n{backtrace}");
        }
    }));
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDGATE_LOG")
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    use std::io::IsTerminal as _;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
    log_panics();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Serve { .. } | Cmd::Demo { .. }) {
        // Commands that print: `… | head` should end quietly, as for any Unix tool.
        // (The servers keep Rust's default: a closed socket is an error, not a signal.)
        // SAFETY: set before any thread starts; restores the default disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wardgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Serve { config } => {
            init_logging(&cli.log_format);
            let config = wardgate::config::Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let gw = wardgate::gateway::start(config).await?;
                if let Some(a) = gw.postgres_addr {
                    tracing::info!(%a, "postgres listener ready");
                }
                tracing::info!(admin = %gw.admin_addr, "admin API ready");
                wardgate::demo::wait_for_shutdown().await;
                tracing::info!("shutting down");
                // Statements held for approval get a clear error (their requests stay pending).
                gw.approvals.shutdown();
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                gw.recorder.flush();
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { keep, plugins, dir, env_file, oidc } => {
            let oidc = match oidc.oidc_issuer {
                None => None,
                Some(issuer) => Some(wardgate::demo::DemoOidc {
                    issuer: issuer.trim_end_matches('/').to_string(),
                    audience: oidc.oidc_audience,
                    client_id: oidc.oidc_client_id,
                    client_secret: std::env::var(&oidc.oidc_client_secret_env).with_context(|| {
                        format!("--oidc-issuer needs the agent's client secret in ${}", oidc.oidc_client_secret_env)
                    })?,
                    scopes: oidc.oidc_scopes,
                }),
            };
            if std::env::var_os("WARDGATE_LOG").is_none() {
                std::env::set_var("WARDGATE_LOG", "warn");
            }
            init_logging(&cli.log_format);
            if !wardgate::demo::have_psql() {
                anyhow::bail!("psql not found: install postgresql-client (scripts/setup.sh does)");
            }
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(wardgate::demo::run(wardgate::demo::DemoOptions { keep, plugins, dir, env_file, oidc }))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { command: ConfigCmd::Check { file } } => {
            let c = wardgate::config::Config::load(&file)?;
            println!("{}: ok", file.display());
            println!("  connections: {}", c.connections.keys().cloned().collect::<Vec<_>>().join(", "));
            println!("  service accounts: {}, grants: {}", c.service_accounts.len(), c.grants.len());
            println!("  plugin_dir: {}\n  state_dir: {}", c.plugin_dir.display(), c.state_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plugins { command: PluginsCmd::Check { file } } => plugins_check(&file),
        Cmd::Plugins { command: PluginsCmd::List { admin } } => {
            let list: Vec<wardgate::admin::PluginInfo> =
                serde_json::from_value(admin.call("GET", "/api/plugins", None)?)?;
            println!(
                "{:<16} {:<9} {:<14} {:<17} {:>8} {:>8}  STATUS",
                "NAME", "VERSION", "SHA256", "EXPORTS", "CALLS", "FAILED"
            );
            for p in list {
                println!(
                    "{:<16} {:<9} {:<14} {:<17} {:>8} {:>8}  {}{}",
                    p.name,
                    p.version,
                    p.hash.get(..12).unwrap_or(""),
                    p.exports.join("+"),
                    p.calls,
                    p.failures,
                    p.status,
                    p.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ServiceAccounts { command } => cli::identity::service_accounts(command),
        Cmd::Login(args) => cli::identity::login(args),
        Cmd::Approvals { command } => cli::approvals::run(command),
        Cmd::Token { issuer } => cli::identity::token(issuer),
        Cmd::Sessions { command } => cli::sessions::run(command),
    }
}

fn plugins_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let engine = wardgate::plugins::PluginEngine::new(Default::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (_, info) = match wardgate::plugins::loader::inspect(&engine, file, &bytes) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("wardgate: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}: a Wardgate plugin component", file.display());
    println!("  contract: wardgate:plugin@{}", wardgate::plugins::CONTRACT_VERSION);
    println!("  exports:  {}", info.exports.names().join(", "));
    println!("  sha256:   {}", info.hash);
    println!("  imports:  {}", info.import_names.join(", "));
    let manifest = file.with_extension("toml");
    if manifest.exists() {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        match wardgate::plugins::manifest::Manifest::load(&manifest, name) {
            Ok(m) => {
                println!(
                    "  manifest: {} {} (order {}, {} MiB, {} ms per call)",
                    m.name,
                    m.version,
                    m.order,
                    m.memory_bytes >> 20,
                    m.call_timeout.as_millis()
                );
                let engine_check = wardgate::plugins::loader::load(&engine, file, &std::env::temp_dir());
                if let Err(e) = engine_check {
                    eprintln!("wardgate: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
            Err(e) => {
                eprintln!("wardgate: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    } else {
        println!("  manifest: none beside it ({}); the gateway will refuse to load it without one", manifest.display());
    }
    Ok(ExitCode::SUCCESS)
}
