//! Holding a statement a guard routed to review until a human decides.
//!
//! The relay hands over what it would forward; this module finds an unused
//! approval for exactly that statement (and parameters) or creates a request,
//! then, per the connection's mode, fails at once with the request id
//! (`defer`) or waits (`wait`) — while still reading the client, so a
//! disconnect or a CancelRequest withdraws the request. Protocol-specific
//! only in how errors are shaped (SQLSTATE); the decisions come from
//! [`crate::approvals`], which never sees a socket.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt, ReadHalf};

use super::codec::error_bytes;
use super::session::SessionError;
use super::stream::BoxStream;
use crate::approvals::{Approvals, NewRequest, Outcome};
use crate::config::{ApprovalSettings, HoldMode};
use crate::pipeline::types::{Identity, Review};
use crate::record::SessionRecorder;

/// Most bytes read ahead from a client while its statement is held.
const READ_AHEAD: usize = 1 << 20;

/// Bound parameter values (`None`: SQL NULL), in order.
pub type Params = Vec<Option<Vec<u8>>>;

/// What the session knows for approvals.
pub struct ReviewCtx {
    /// The service.
    pub approvals: Arc<Approvals>,
    /// The connection's settings.
    pub settings: ApprovalSettings,
    /// Who is connected.
    pub identity: Identity,
    /// Connection name.
    pub connection: String,
    /// Session id.
    pub session_id: String,
    /// Bumped by the client's CancelRequests.
    pub cancelled: tokio::sync::watch::Receiver<u64>,
}

/// A guard's review verdict on one statement text.
#[derive(Debug)]
pub struct ReviewAsk {
    /// The guard.
    pub plugin: String,
    /// Its review.
    pub review: Review,
    /// Exact statement text.
    pub text: String,
    /// Masked, for notifications and recordings.
    pub masked: String,
    /// Request id in the recording.
    pub request_id: u64,
}

/// The refusal when approvals are off for the connection.
pub fn approvals_off(ask_plugin: &str, reason: &str, connection: &str) -> Bytes {
    error_bytes(
        "42501",
        &format!(
            "Wardgate: {ask_plugin} routed this statement to human review ({reason}); approvals are not enabled for connection \"{connection}\", so it is refused"
        ),
        Some("ask an operator to set [connections.NAME.approvals] mode = \"wait\" or \"defer\""),
    )
}

/// A `justification:` comment in the statement (`/* justification: … */` or `-- justification: …`).
pub fn justification(text: &str) -> Option<String> {
    use pg_query::protobuf::Token;
    let scanned = pg_query::scan(text).ok()?;
    scanned.tokens.iter().find_map(|t| {
        let kind = Token::try_from(t.token).ok()?;
        if !matches!(kind, Token::SqlComment | Token::CComment) {
            return None;
        }
        let raw = text.get(t.start.max(0) as usize..t.end.max(0) as usize)?;
        let inner = raw.trim_start_matches("--").trim_start_matches("/*").trim_end_matches("*/").trim();
        let lower = inner.to_ascii_lowercase();
        let rest = lower.strip_prefix("justification:").map(|_| inner["justification:".len()..].trim())?;
        (!rest.is_empty()).then(|| rest.chars().take(500).collect())
    })
}

fn store_down(e: impl std::fmt::Display) -> Bytes {
    tracing::error!("approvals: state store unavailable: {e}");
    error_bytes(
        "42501",
        "Wardgate: this statement needs approval, but the approval store is unavailable; it is refused",
        Some("try again later; the operator sees the cause in the gateway log"),
    )
}

/// Decide whether a held statement may run. `Ok(Ok(()))`: run it now.
/// `Ok(Err(bytes))`: the ErrorResponse to send instead. `Err`: the client left.
pub async fn resolve(
    rc: &mut ReviewCtx,
    ask: &ReviewAsk,
    params: &[Option<Vec<u8>>],
    recorder: &SessionRecorder,
    client: &mut ReadHalf<BoxStream>,
    buf: &mut BytesMut,
) -> Result<Result<(), Bytes>, SessionError> {
    if rc.settings.mode == HoldMode::Off {
        return Ok(Err(approvals_off(&ask.plugin, &ask.review.reason, &rc.connection)));
    }
    let fp = crate::sql::fingerprint::fingerprint(&ask.text, params);
    match rc.approvals.use_approval(&fp, &rc.identity, &rc.connection).await {
        Ok(Some(id)) => {
            recorder.emit("approval.used", json!({"approval_id": id, "request_id": ask.request_id}));
            return Ok(Ok(()));
        }
        Ok(None) => {}
        Err(e) => return Ok(Err(store_down(e))),
    }
    let justification = justification(&ask.text);
    if rc.settings.require_justification && justification.is_none() {
        return Ok(Err(error_bytes(
            "42501",
            &format!(
                "Wardgate: {} routed this statement to review ({}); a justification is required",
                ask.plugin, ask.review.reason
            ),
            Some("add a comment to the statement: /* justification: why this must run */"),
        )));
    }
    // Deciders see the exact statement, but not a password it sets (see
    // `sql::credentials`); the fingerprint binds the approval to the real text.
    let shown = crate::sql::credentials::redact(&ask.text);
    let req = match rc
        .approvals
        .request(NewRequest {
            session_id: &rc.session_id,
            connection: &rc.connection,
            identity: &rc.identity,
            statement: shown.as_deref().unwrap_or(&ask.text),
            statement_masked: &ask.masked,
            fingerprint: &fp,
            plugin: &ask.plugin,
            reason: &ask.review.reason,
            approver_groups: &ask.review.approver_groups,
            timeout_secs: ask.review.timeout_secs,
            settings: &rc.settings,
            justification: justification.as_deref(),
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return Ok(Err(store_down(e))),
    };
    let expires = crate::util::format_rfc3339_ms(req.expires_at_ms);
    recorder.emit(
        "approval.requested",
        json!({"approval_id": req.id, "request_id": ask.request_id, "mode": req.mode, "plugin": ask.plugin,
               "reason": ask.review.reason, "approver_groups": req.approver_groups, "expires_at_ms": req.expires_at_ms}),
    );
    if rc.settings.mode == HoldMode::Defer {
        return Ok(Err(error_bytes(
            "55000",
            &format!(
                "Wardgate: this statement needs approval: request {} ({}: {}), pending until {expires}",
                req.id, ask.plugin, ask.review.reason
            ),
            Some(&format!(
                "an approver (group {}) runs `wardgate approvals approve {}`; then send the same statement again",
                req.approver_groups.join(" or "),
                req.id
            )),
        )));
    }
    tracing::info!(approval = %req.id, "statement held for approval");
    let outcome = {
        let wait = rc.approvals.wait(&req.id, &mut rc.cancelled);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                o = &mut wait => break o,
                r = client.read_buf(buf), if buf.len() < READ_AHEAD => {
                    if !matches!(r, Ok(n) if n > 0) {
                        let _ = rc.approvals.withdraw(&req.id, "the client disconnected").await;
                        recorder.emit("approval.decision", json!({"approval_id": req.id, "outcome": "withdrawn", "why": "client disconnected"}));
                        return Err(SessionError::Gone);
                    }
                }
            }
        }
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Ok(Err(store_down(e))),
    };
    let word = match &outcome {
        Outcome::Approved { .. } => "approved",
        Outcome::Denied { .. } => "denied",
        Outcome::Expired => "expired",
        Outcome::AlreadyUsed => "already-used",
        Outcome::Withdrawn => "withdrawn",
        Outcome::ShuttingDown => "gateway-shutdown",
    };
    recorder.emit("approval.decision", json!({"approval_id": req.id, "request_id": ask.request_id, "outcome": word}));
    Ok(match outcome {
        Outcome::Approved { .. } => Ok(()),
        Outcome::Denied { by, reason } => Err(error_bytes(
            "42501",
            &format!("Wardgate: approval request {} was denied by {by}: {reason}", req.id),
            None,
        )),
        Outcome::Expired => Err(error_bytes(
            "42501",
            &format!("Wardgate: approval request {} expired at {expires} without a decision", req.id),
            Some("run the statement again to ask anew, and tell an approver"),
        )),
        Outcome::AlreadyUsed => Err(error_bytes(
            "42501",
            &format!(
                "Wardgate: approval request {} was approved, but another run of this statement used it first",
                req.id
            ),
            Some("an approval covers one run: send the statement again to ask anew"),
        )),
        Outcome::ShuttingDown => Err(error_bytes(
            "57P01",
            &format!("Wardgate is shutting down; approval request {} stays pending until {expires}", req.id),
            Some("once it is approved, connect again and send the same statement"),
        )),
        Outcome::Withdrawn => Err(error_bytes(
            "57014",
            &format!("canceling statement due to user request (approval request {} withdrawn)", req.id),
            None,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::justification;

    #[test]
    fn justifications_come_from_comments_only() {
        assert_eq!(
            justification("/* justification: INC-42 cleanup */ DELETE FROM t").as_deref(),
            Some("INC-42 cleanup")
        );
        assert_eq!(justification("DELETE FROM t -- Justification: ticket 7\n").as_deref(), Some("ticket 7"));
        assert_eq!(justification("SELECT 'justification: nope'"), None);
        assert_eq!(justification("/* justification: */ SELECT 1"), None);
    }
}
