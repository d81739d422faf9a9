//! Approvals on the admin listener: a JSON API and a small web page.
//!
//! Callers are authenticated and hold the approver (or admin) role before
//! these handlers run ([`super::access`]). A request is visible to those who
//! may decide it (its approver groups, or break-glass), who see its exact
//! statement, to admins and to whoever asked (or was asked for), who see it
//! masked. The page keeps the credential in the tab's sessionStorage and sends
//! it as a header (no cookies).

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::access::Role;
use super::{fail, AdminState};
use crate::approvals::{ApprovalRequest, DecideError, Status};
use crate::pipeline::types::Identity;

/// May `who` decide `req`? (Exact statement shown only then.)
fn may_decide(s: &AdminState, who: &Identity, req: &ApprovalRequest) -> bool {
    let g = &who.principal.groups;
    req.approver_groups.iter().any(|x| g.contains(x))
        || s.approvals.config().break_glass_groups.iter().any(|x| g.contains(x))
}

/// May `who` see `req` at all? Its deciders, and whoever it was asked by or for.
fn may_see(s: &AdminState, who: &Identity, req: &ApprovalRequest) -> bool {
    let me = &who.principal;
    let is_me = |p: &crate::approvals::model::PrincipalView| p.subject == me.subject && p.issuer == me.issuer;
    may_decide(s, who, req)
        || s.access.has(who, Role::Admin)
        || is_me(&req.identity.principal)
        || req.identity.on_behalf_of.iter().any(is_me)
}

fn view(s: &AdminState, who: &Identity, req: &ApprovalRequest) -> serde_json::Value {
    let decide = may_decide(s, who, req);
    let mut v = serde_json::to_value(req).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        if !decide {
            // Masked, and without the exact statement's hash (see `ApprovalRequest::event_body`).
            o.insert("statement".into(), json!(req.statement_masked));
            o.remove("fingerprint");
        }
        o.insert("can_decide".into(), json!(decide && req.status == Status::Pending));
        o.insert("summary".into(), json!(req.identity.describe()));
    }
    v
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Query(q): Query<ListQuery>,
) -> Response {
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(x) => match Status::parse(x) {
            Some(st) => Some(st),
            None => return fail(StatusCode::BAD_REQUEST, format!("unknown status {x}")),
        },
    };
    match s.approvals.list(status, q.limit.unwrap_or(100).min(1000)).await {
        Ok(all) => Json(all.iter().filter(|r| may_see(&s, &who, r)).map(|r| view(&s, &who, r)).collect::<Vec<_>>())
            .into_response(),
        Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn show(State(s): State<AdminState>, Extension(who): Extension<Identity>, Path(id): Path<String>) -> Response {
    match s.approvals.get(&id).await {
        Ok(Some(r)) if may_see(&s, &who, &r) => Json(view(&s, &who, &r)).into_response(),
        // Not yours to see reads the same as not there.
        Ok(_) => fail(StatusCode::NOT_FOUND, format!("no approval request {id}")),
        Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize, Default)]
struct DecideBody {
    reason: Option<String>,
}

async fn decide(s: AdminState, who: Identity, id: String, approve: bool, body: Option<Json<DecideBody>>) -> Response {
    let reason = body.and_then(|Json(b)| b.reason).filter(|r| !r.trim().is_empty());
    if !approve && reason.is_none() {
        return fail(StatusCode::BAD_REQUEST, "a denial needs a reason");
    }
    match s.approvals.decide(&id, &who, approve, reason.as_deref()).await {
        Ok(r) => Json(view(&s, &who, &r)).into_response(),
        Err(e) => {
            let status = match &e {
                DecideError::NotFound(_) => StatusCode::NOT_FOUND,
                DecideError::NotPending { .. } | DecideError::AlreadyVoted(_) => StatusCode::CONFLICT,
                DecideError::OwnRequest(_) | DecideError::NotApprover { .. } | DecideError::WrongKind { .. } => {
                    StatusCode::FORBIDDEN
                }
                DecideError::State(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!(approval = %id, approver = %who.principal.subject, "approval decision refused: {e}");
            fail(status, e.to_string())
        }
    }
}

const PAGE: &str = include_str!("approvals.html");
const SCRIPT: &str = include_str!("approvals.js");

fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
}

/// Routes under `/approvals` and `/api/approvals`.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/approvals", get(|| async { (page_headers("text/html; charset=utf-8"), PAGE) }))
        .route("/approvals.js", get(|| async { (page_headers("text/javascript; charset=utf-8"), SCRIPT) }))
        .route("/api/approvals", get(list))
        .route("/api/approvals/{id}", get(show))
        .route(
            "/api/approvals/{id}/approve",
            post(
                |State(s): State<AdminState>,
                 Extension(w): Extension<Identity>,
                 Path(id): Path<String>,
                 b: Option<Json<DecideBody>>| { decide(s, w, id, true, b) },
            ),
        )
        .route(
            "/api/approvals/{id}/deny",
            post(
                |State(s): State<AdminState>,
                 Extension(w): Extension<Identity>,
                 Path(id): Path<String>,
                 b: Option<Json<DecideBody>>| { decide(s, w, id, false, b) },
            ),
        )
}
