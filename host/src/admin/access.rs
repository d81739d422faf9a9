//! Who may use the admin listener, and the audit trail of what they did.
//!
//! Every route except `/healthz` and the approvals page's static files goes
//! through [`enforce`]: the caller's credential (`Authorization: Bearer`, an
//! OIDC token or a Wardgate key, checked by the same [`Authenticator`] as
//! database clients) is verified, the route's role is checked, and the call
//! is written to the admin recording (`admin-*`) — a state-changing call
//! *before* it runs, so an action that cannot be recorded is refused (fail
//! closed). Roles:
//!
//! * **admin** — `admin.admin_groups`, humans and service accounts (never
//!   agents): plugins, metrics, every approval request (statements masked
//!   unless also an approver of it).
//! * **metrics** — `admin.metrics_groups`: `/metrics` only.
//! * **approver** — members of any approval rule's approver groups or
//!   `approvals.break_glass_groups`, of an `approvals.approver_kinds` kind:
//!   the approvals API (what each may see and decide is narrowed further per
//!   request).
//!
//! Cross-site request forgery: credentials travel only in a header the page
//! reads from its own tab storage (never cookies), so a forged cross-site
//! request carries none. On top, state-changing calls must be
//! `application/json` (a cross-origin page cannot send that without a CORS
//! preflight, which this listener never grants) and an `Origin` or
//! `Sec-Fetch-Site` header, when the browser sends one, must name this origin.
//!
//! [`Authenticator`]: crate::identity::Authenticator

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;

use super::listen::Peer;
use super::{fail, AdminState};
use crate::config::Config;
use crate::pipeline::types::{Identity, PrincipalKind};
use crate::record::SessionRecorder;

/// A role on the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Full read access to the gateway's state.
    Admin,
    /// `/metrics`.
    Metrics,
    /// The approvals API.
    Approver,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Metrics => "metrics",
            Role::Approver => "approver",
        }
    }
}

/// Which groups hold which role.
#[derive(Debug, Clone, Default)]
pub struct Access {
    admin_groups: Vec<String>,
    metrics_groups: Vec<String>,
    approver_groups: Vec<String>,
    approver_kinds: Vec<PrincipalKind>,
}

fn any_in(groups: &[String], of: &[String]) -> bool {
    groups.iter().any(|g| of.contains(g))
}

impl Access {
    /// Roles as the config defines them.
    pub fn from_config(cfg: &Config) -> Access {
        let mut approver_groups: Vec<String> = cfg.approvals.break_glass_groups.clone();
        for c in cfg.connections.values() {
            approver_groups.extend(c.approvals.approver_groups.iter().cloned());
        }
        approver_groups.sort();
        approver_groups.dedup();
        Access {
            admin_groups: cfg.admin.admin_groups.clone(),
            metrics_groups: cfg.admin.metrics_groups.clone(),
            approver_groups,
            approver_kinds: cfg.approvals.approver_kinds.clone(),
        }
    }

    /// Does `who` hold `role`?
    pub fn has(&self, who: &Identity, role: Role) -> bool {
        let p = &who.principal;
        let admin = p.kind != PrincipalKind::Agent && any_in(&p.groups, &self.admin_groups);
        match role {
            Role::Admin => admin,
            Role::Metrics => admin || any_in(&p.groups, &self.metrics_groups),
            Role::Approver => {
                admin || (self.approver_kinds.contains(&p.kind) && any_in(&p.groups, &self.approver_groups))
            }
        }
    }

    fn groups_of(&self, role: Role) -> String {
        let mut v = self.admin_groups.clone();
        match role {
            Role::Admin => {}
            Role::Metrics => v.extend(self.metrics_groups.iter().cloned()),
            Role::Approver => v.extend(self.approver_groups.iter().cloned()),
        }
        if v.is_empty() {
            "none configured".into()
        } else {
            v.join(", ")
        }
    }
}

/// The role a path needs; `None`: public (no credential, not audited).
fn role_for(path: &str) -> Option<Role> {
    match path {
        "/healthz" | "/approvals" | "/approvals.js" => None,
        "/metrics" => Some(Role::Metrics),
        p if p == "/api/approvals" || p.starts_with("/api/approvals/") => Some(Role::Approver),
        // Everything else, including paths that do not exist: admins only,
        // so the route table cannot be probed without a credential.
        _ => Some(Role::Admin),
    }
}

/// Counters for the metrics page.
#[derive(Debug, Default)]
pub struct AdminStats {
    /// Authenticated and authorized calls.
    pub allowed: AtomicU64,
    /// Calls refused (no/bad credential, missing role, cross-site).
    pub refused: AtomicU64,
}

/// The admin audit trail: one recording per gateway run.
pub struct Audit {
    log: SessionRecorder,
    /// Counters.
    pub stats: AdminStats,
}

impl Audit {
    /// Audit into `log`.
    pub fn new(log: SessionRecorder) -> Arc<Audit> {
        Arc::new(Audit { log, stats: AdminStats::default() })
    }
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Cross-site checks for a state-changing call; `Err` says why it is refused.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = h("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(format!("cross-site request refused (Sec-Fetch-Site: {site})"));
        }
    }
    if let Some(origin) = h("origin") {
        let host = h("host").unwrap_or("");
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        if origin == "null" || authority.is_empty() || !authority.eq_ignore_ascii_case(host) {
            return Err(format!("cross-origin request refused (Origin {origin} is not this listener, {host})"));
        }
    }
    let json = h("content-type").is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err("send state-changing calls as Content-Type: application/json".into());
    }
    Ok(())
}

/// The middleware: authenticate, authorize, audit. The caller's [`Identity`]
/// is handed to handlers as a request extension.
pub async fn enforce(
    State(s): State<AdminState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let Some(role) = role_for(&path) else { return next.run(req).await };
    let method = req.method().clone();
    let audit = &s.audit;
    let refuse = |status: StatusCode, who: Option<&Identity>, why: String| {
        audit.stats.refused.fetch_add(1, Ordering::Relaxed);
        audit.log.emit(
            "admin.refused",
            json!({"method": method.as_str(), "path": path, "peer": peer.to_string(),
                   "principal": who.map(|w| crate::approvals::model::PrincipalView::from(&w.principal)), "status": status.as_u16(), "reason": why}),
        );
        // Refusals are best effort: a full disk must not turn into a 500 for a bad token.
        let _ = audit.log.commit();
        tracing::warn!(%peer, %path, "admin API: {why}");
        fail(status, why)
    };

    if !is_safe(&method) {
        if let Err(why) = same_origin(req.headers()) {
            return refuse(StatusCode::FORBIDDEN, None, why);
        }
    }
    let cred = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    let Some(cred) = cred else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            None,
            "send your credential as Authorization: Bearer (wardgate token, or a key)".into(),
        );
    };
    let Some(cred) = cred.strip_prefix("Bearer ").or_else(|| cred.strip_prefix("bearer ")) else {
        return refuse(StatusCode::UNAUTHORIZED, None, "use the Bearer scheme".into());
    };
    let who = match s.auth.authenticate(cred.trim()).await {
        Ok(who) => who,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, None, format!("credential refused: {e}")),
    };
    if !s.access.has(&who, role) {
        let why = format!(
            "{} lacks the {} role here (groups: {}); see admin.admin_groups / admin.metrics_groups / approver groups",
            who.principal.name,
            role.word(),
            s.access.groups_of(role)
        );
        return refuse(StatusCode::FORBIDDEN, Some(&who), why);
    }
    let principal = crate::approvals::model::PrincipalView::from(&who.principal);
    if !is_safe(&method) {
        // Recorded before it runs: no unrecorded admin action.
        audit.log.emit(
            "admin.action",
            json!({"method": method.as_str(), "path": path, "peer": peer.to_string(), "principal": principal}),
        );
        if let Err(e) = audit.log.commit() {
            tracing::error!("admin API: cannot record an action, refusing it: {e}");
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the admin audit log cannot be written ({e}); refused"),
            );
        }
    }
    req.extensions_mut().insert(who);
    let res = next.run(req).await;
    audit.stats.allowed.fetch_add(1, Ordering::Relaxed);
    audit.log.emit(
        "admin.request",
        json!({"method": method.as_str(), "path": path, "peer": peer.to_string(), "principal": principal,
               "role": role.word(), "status": res.status().as_u16()}),
    );
    let _ = audit.log.commit();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_state_changes_are_refused() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:9190");
        assert!(same_origin(&headers(&[json, host])).is_ok(), "a CLI sends no Origin");
        assert!(same_origin(&headers(&[json, host, ("origin", "http://127.0.0.1:9190")])).is_ok());
        assert!(same_origin(&headers(&[json, host, ("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&headers(&[json, host, ("origin", "https://evil.example")])).is_err());
        assert!(same_origin(&headers(&[json, host, ("origin", "null")])).is_err());
        assert!(same_origin(&headers(&[json, host, ("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&headers(&[json, host, ("sec-fetch-site", "same-site")])).is_err());
        assert!(same_origin(&headers(&[("content-type", "text/plain"), host])).is_err(), "a form post");
        assert!(same_origin(&headers(&[host])).is_err());
    }

    #[test]
    fn every_path_but_the_public_ones_needs_a_role() {
        assert_eq!(role_for("/healthz"), None);
        assert_eq!(role_for("/approvals"), None);
        assert_eq!(role_for("/metrics"), Some(Role::Metrics));
        assert_eq!(role_for("/api/plugins"), Some(Role::Admin));
        assert_eq!(role_for("/api/approvals"), Some(Role::Approver));
        assert_eq!(role_for("/api/approvals/apr_1/approve"), Some(Role::Approver));
        assert_eq!(role_for("/api/approvalsX"), Some(Role::Admin));
        assert_eq!(role_for("/nope"), Some(Role::Admin));
    }
}
