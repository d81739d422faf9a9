//! Accept loop: one task per client; cancel requests are routed here.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument;

use super::cancel::CancelMap;
use crate::config::{Config, PgListener};
use crate::identity::Authenticator;
use crate::plugins::Registry;
use crate::record::Recorder;

/// Everything a PostgreSQL session needs from the gateway.
pub struct PgContext {
    /// Configuration.
    pub config: Arc<Config>,
    /// Listener settings.
    pub listener: PgListener,
    /// TLS for clients.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Credentials and grants.
    pub auth: Arc<Authenticator>,
    /// Plugins.
    pub registry: Arc<Registry>,
    /// Recording.
    pub recorder: Recorder,
    /// Cancel keys.
    pub cancels: CancelMap,
    /// Counters.
    pub stats: Arc<crate::metrics::Stats>,
}

/// Session workers: one single-threaded runtime per core. Both directions of
/// a session live on one worker, so a query never hops between threads (a
/// cross-thread wakeup per message cost more than the policy work itself).
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    /// Start `n` workers (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new().name(format!("wardgate-pg-{i}")).spawn(move || {
                rt.block_on(std::future::pending::<()>());
            })?;
        }
        Ok(Workers { handles, next: std::sync::atomic::AtomicUsize::new(0) })
    }

    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }
}

/// Accept clients until the listener fails.
pub async fn serve(listener: TcpListener, ctx: Arc<PgContext>) -> std::io::Result<()> {
    let workers = Workers::start(
        std::env::var("WARDGATE_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
    )?;
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: keep serving the sessions we have.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let ctx = ctx.clone();
        let id = crate::util::random_id();
        let span = tracing::info_span!("pg_session", session = %id, client = %peer);
        // Re-register the socket with the worker's reactor.
        let Ok(std_sock) = sock.into_std() else { continue };
        workers.pick().spawn(
            async move {
                let Ok(sock) = tokio::net::TcpStream::from_std(std_sock) else { return };
                ctx.stats.sessions_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ctx.stats.sessions_active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = super::session::run(sock, peer, id, ctx.clone()).await {
                    tracing::info!("session ended: {e}");
                }
                ctx.stats.sessions_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            .instrument(span),
        );
    }
}
