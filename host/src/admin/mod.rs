//! The admin HTTP API: health, metrics, plugins, approvals. It listens on
//! loopback by default (anything else needs TLS). Every route but `/healthz`
//! and the approvals page's static files needs an authenticated principal with
//! a role, and every call is recorded: see [`access`].

pub mod access;
pub mod approvals;
pub mod listen;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::metrics::Stats;
use crate::plugins::Registry;
use crate::record::Recorder;

/// What the admin API serves from.
#[derive(Clone)]
pub struct AdminState {
    /// Plugins.
    pub registry: Arc<Registry>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Recording.
    pub recorder: Recorder,
    /// Approvals.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Who callers are.
    pub auth: Arc<crate::identity::Authenticator>,
    /// Which callers hold which role.
    pub access: Arc<access::Access>,
    /// The admin audit trail.
    pub audit: Arc<access::Audit>,
    /// Listener certificates (for reload counters).
    pub certs: Vec<Arc<crate::tls::reload::CertStore>>,
    /// The session workers (for their session counts), if a protocol
    /// listener runs.
    pub workers: Option<crate::workers::Spawner>,
}

/// One plugin as `plugins list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the `.wasm`.
    pub hash: String,
    /// guard / masker / recorder.
    pub exports: Vec<String>,
    /// ok / failing / quarantined / error.
    pub status: String,
    /// Calls so far.
    pub calls: u64,
    /// Failed calls so far.
    pub failures: u64,
    /// Call order.
    pub order: i32,
    /// Connections it applies to.
    pub connections: Vec<String>,
    /// Load error, for files without a working version.
    pub error: Option<String>,
}

/// Plugins as `plugins list` shows them.
pub fn plugin_list(registry: &Registry) -> Vec<PluginInfo> {
    use std::sync::atomic::Ordering;
    let set = registry.current();
    let mut v: Vec<PluginInfo> = set
        .ordered()
        .iter()
        .map(|p| PluginInfo {
            name: p.manifest.name.clone(),
            version: p.manifest.version.clone(),
            hash: p.hash.clone(),
            exports: p.exports.names().iter().map(|s| s.to_string()).collect(),
            status: p.health.status().to_string(),
            calls: p.health.calls.load(Ordering::Relaxed),
            failures: p.health.failures.load(Ordering::Relaxed),
            order: p.manifest.order,
            connections: p.manifest.connections.clone(),
            error: None,
        })
        .collect();
    for (name, err) in &set.errors {
        v.push(PluginInfo {
            name: name.clone(),
            version: String::new(),
            hash: String::new(),
            exports: vec![],
            status: "error".into(),
            calls: 0,
            failures: 0,
            order: 0,
            connections: vec![],
            error: Some(err.clone()),
        });
    }
    v
}

/// An error answer: `{"error": msg}` with `status`.
pub(crate) fn fail(status: axum::http::StatusCode, msg: impl Into<String>) -> axum::response::Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

/// The router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(&crate::metrics::Sources {
                        stats: &s.stats,
                        registry: &s.registry,
                        record: &s.recorder.stats,
                        admin: &s.audit.stats,
                        certs: &s.certs,
                        workers: &s.workers.as_ref().map(|w| w.live()).unwrap_or_default(),
                    }),
                )
                    .into_response()
            }),
        )
        .route("/api/plugins", get(|State(s): State<AdminState>| async move { Json(plugin_list(&s.registry)) }))
        .merge(approvals::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::enforce))
        .with_state(state)
}
