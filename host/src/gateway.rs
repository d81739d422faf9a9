//! Assemble a running gateway from a [`Config`]: engine, plugins (watched),
//! recorder, identity, listeners and admin API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::identity::Authenticator;
use crate::metrics::Stats;
use crate::plugins::engine::EngineOptions;
use crate::plugins::{PluginEngine, Registry};
use crate::protocol::postgres::{self, PgContext};
use crate::record::Recorder;

/// A running gateway.
pub struct Gateway {
    /// PostgreSQL listener address.
    pub postgres_addr: Option<SocketAddr>,
    /// Admin API address.
    pub admin_addr: SocketAddr,
    /// Plugins.
    pub registry: Arc<Registry>,
    /// Recording.
    pub recorder: Recorder,
    /// Counters.
    pub stats: Arc<Stats>,
    /// PEM of the self-signed certificate, when one was generated.
    pub self_signed_pem: Option<String>,
    /// Approvals.
    pub approvals: Arc<crate::approvals::Approvals>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Threads the sessions run on; stopped (sessions closed) on drop.
    _workers: Option<crate::workers::Workers>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Hot-reload debounce: editors and `cp` write in several steps.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(50);

/// Start everything the config describes.
pub async fn start(config: Config) -> anyhow::Result<Gateway> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: Some(config.state_dir.join("plugin-cache")),
        max_instances: config.max_plugin_instances,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}"))?;
    let registry = Registry::open(engine, &config.plugin_dir, &config.state_dir)
        .with_context(|| format!("cannot read plugin_dir {}", config.plugin_dir.display()))?;
    registry.watch(RELOAD_DEBOUNCE).context("cannot watch the plugin directory")?;
    for (name, err) in &registry.current().errors {
        tracing::error!(plugin = %name, "plugin not loaded: {err}");
    }
    let signer = match &config.recording_key_file {
        None => None,
        Some(f) => {
            let s = crate::record::sign::Signer::from_key_file(f).map_err(anyhow::Error::msg)?;
            tracing::info!(public_key = %s.public_hex(), "recordings carry signed checkpoints");
            Some(s)
        }
    };
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    let store = crate::state::StateStore::for_config(&config).await.context("cannot open the state store")?;
    let (index, index_task) = crate::record::index::spawn(store.clone());
    tasks.push(index_task);
    let recorder = Recorder::open(
        &config.state_dir.join("recordings"),
        crate::record::Options {
            registry: Some(registry.clone()),
            signer,
            index: Some(index),
            retention: config.retention.clone(),
            archive: config
                .recording_archive
                .as_deref()
                .map(crate::record::archive::Archive::open)
                .transpose()
                .context("gateway.recording_archive")?,
        },
    )
    .context("cannot start the recorder")?;
    // Each run of the gateway gets its own approvals log (a hash chain starts once).
    let log = recorder.session(&format!("approvals-{}", crate::util::random_id()));
    let approvals = crate::approvals::Approvals::new(store, config.approvals.clone(), log);
    tasks.push(approvals.spawn_expirer());
    tasks.push(crate::memory::spawn_trimmer(stats.clone()));
    let auth = Arc::new(Authenticator::from_config(&config));
    let mut postgres_addr = None;
    let mut session_workers = None;
    let mut self_signed_pem = None;
    let mut certs = Vec::new();
    if let Some(l) = &config.postgres {
        let tls = listener_tls(&l.tls, &[], "postgres", &mut tasks, &mut certs)?.map(|t| {
            self_signed_pem = t.self_signed_pem;
            t.config
        });
        let listener = TcpListener::bind(l.bind).await.with_context(|| format!("cannot listen on {}", l.bind))?;
        postgres_addr = Some(listener.local_addr()?);
        let workers = crate::workers::Workers::start(config.workers)
            .with_context(|| format!("cannot start {} session worker threads (gateway.workers)", config.workers))?;
        tracing::debug!(workers = workers.len(), "session workers started");
        let ctx = Arc::new(PgContext {
            config: config.clone(),
            listener: l.clone(),
            tls,
            auth: auth.clone(),
            registry: registry.clone(),
            recorder: recorder.clone(),
            cancels: Default::default(),
            stats: stats.clone(),
            approvals: approvals.clone(),
            views: Default::default(),
            workers: workers.spawner(),
        });
        session_workers = Some(workers);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = postgres::serve(listener, ctx).await {
                tracing::error!("postgres listener stopped: {e}");
            }
        }));
    }
    let admin_tls = listener_tls(&config.admin.tls, &[b"http/1.1"], "admin", &mut tasks, &mut certs)?.map(|t| t.config);
    let admin = TcpListener::bind(config.admin.bind)
        .await
        .with_context(|| format!("cannot listen on admin.bind {}", config.admin.bind))?;
    let admin_addr = admin.local_addr()?;
    let audit = crate::admin::access::Audit::new(recorder.session(&format!("admin-{}", crate::util::random_id())));
    let app = crate::admin::router(crate::admin::AdminState {
        registry: registry.clone(),
        stats: stats.clone(),
        recorder: recorder.clone(),
        approvals: approvals.clone(),
        auth: auth.clone(),
        access: Arc::new(crate::admin::access::Access::from_config(&config)),
        audit,
        certs,
        workers: session_workers.as_ref().map(|w: &crate::workers::Workers| w.spawner()),
    });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::admin::listen::serve(admin, admin_tls, app).await {
            tracing::error!("admin API stopped: {e}");
        }
    }));
    Ok(Gateway {
        postgres_addr,
        admin_addr,
        registry,
        recorder,
        stats,
        self_signed_pem,
        approvals,
        tasks,
        _workers: session_workers,
    })
}

/// A listener's TLS (`what`: `postgres` or `admin`), its certificate watched
/// for changes (the task joins `tasks`, the store joins `certs` for metrics).
fn listener_tls(
    source: &crate::config::TlsSource,
    alpn: &[&[u8]],
    what: &'static str,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    certs: &mut Vec<Arc<crate::tls::reload::CertStore>>,
) -> anyhow::Result<Option<crate::tls::ServerTls>> {
    let tls = crate::tls::server_config(source, alpn).with_context(|| format!("TLS for the {what} listener"))?;
    if let Some(t) = &tls {
        tasks.extend(t.certs.watch(what));
        certs.push(t.certs.clone());
    }
    Ok(tls)
}
