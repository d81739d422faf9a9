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
    /// Approvals of held statements.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Views' column sources, kept across sessions.
    pub views: super::catalog::ViewCache,
    /// The threads sessions run on.
    pub workers: crate::workers::Spawner,
}

/// Accept clients until the listener fails.
pub async fn serve(listener: TcpListener, ctx: Arc<PgContext>) -> std::io::Result<()> {
    loop {
        let (sock, peer) = crate::util::accept(&listener, "postgres").await;
        let _ = sock.set_nodelay(true);
        let session_ctx = ctx.clone();
        let id = crate::util::random_id();
        let span = tracing::info_span!("pg_session", session = %id, client = %peer);
        // A session runs on one worker thread for its whole life (see
        // `workers`). Plugin calls inside it are synchronous either way.
        ctx.workers.spawn(sock, move |sock| {
            let ctx = session_ctx;
            async move {
                ctx.stats.sessions_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ctx.stats.sessions_active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = super::session::run(sock, peer, id, ctx.clone()).await {
                    tracing::info!("session ended: {e}");
                }
                ctx.stats.sessions_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            .instrument(span)
        });
    }
}
