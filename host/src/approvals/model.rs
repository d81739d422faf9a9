//! The approval request as stored, shown and sent.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::pipeline::types::{Identity, Principal};

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for approvers.
    Pending,
    /// Approved, not used yet (or within its window).
    Approved,
    /// Denied by an approver.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// The requester cancelled or went away.
    Withdrawn,
    /// Approved and used up.
    Executed,
}

impl Status {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Withdrawn => "withdrawn",
            Status::Executed => "executed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "withdrawn" => Status::Withdrawn,
            "executed" => Status::Executed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A principal, serializable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipalView {
    /// Stable id.
    pub subject: String,
    /// Display name.
    pub name: String,
    /// E-mail.
    pub email: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// human | agent | service-account.
    pub kind: String,
    /// Who vouched for it.
    pub issuer: String,
}

impl From<&Principal> for PrincipalView {
    fn from(p: &Principal) -> Self {
        PrincipalView {
            subject: p.subject.clone(),
            name: p.name.clone(),
            email: p.email.clone(),
            groups: p.groups.clone(),
            kind: crate::sql::enum_name(&p.kind),
            issuer: p.issuer.clone(),
        }
    }
}

/// An identity, serializable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityView {
    /// Who asks.
    pub principal: PrincipalView,
    /// On whose behalf, nearest first.
    pub on_behalf_of: Vec<PrincipalView>,
}

impl From<&Identity> for IdentityView {
    fn from(i: &Identity) -> Self {
        IdentityView {
            principal: PrincipalView::from(&i.principal),
            on_behalf_of: i.on_behalf_of.iter().map(PrincipalView::from).collect(),
        }
    }
}

impl IdentityView {
    /// "ai-agent-1 (agent) for alice".
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({})", self.principal.name, self.principal.kind);
        if !self.on_behalf_of.is_empty() {
            let chain: Vec<&str> = self.on_behalf_of.iter().map(|p| p.name.as_str()).collect();
            s.push_str(&format!(" on behalf of {}", chain.join(" for ")));
        }
        s
    }
}

/// One approver's vote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vote {
    /// Who.
    pub approver: PrincipalView,
    /// approve | deny.
    pub decision: String,
    /// Their reason.
    pub reason: Option<String>,
    /// Decided through a break-glass group.
    pub break_glass: bool,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// An approval request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// `apr_…`.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
    /// Expires, ms since the epoch.
    pub expires_at_ms: u64,
    /// Requesting session.
    pub session_id: String,
    /// Connection.
    pub connection: String,
    /// Who asks, with the on-behalf-of chain.
    pub identity: IdentityView,
    /// The exact statement (credentials redacted), for its deciders.
    pub statement: String,
    /// The statement with sensitive values masked.
    pub statement_masked: String,
    /// Binding fingerprint.
    pub fingerprint: String,
    /// Guard that asked for review.
    pub plugin: String,
    /// Its reason.
    pub reason: String,
    /// Who may approve.
    pub approver_groups: Vec<String>,
    /// Approvals needed.
    pub quorum: u64,
    /// The requester's justification.
    pub justification: Option<String>,
    /// wait | defer.
    pub mode: String,
    /// 0: one use; else the approval is valid this long after the decision.
    pub use_window_ms: u64,
    /// Final decision time.
    pub decided_at_ms: Option<u64>,
    /// Final decision summary.
    pub decision: Option<Value>,
    /// Votes so far.
    pub votes: Vec<Vote>,
    /// Times used.
    pub uses: u64,
}

impl ApprovalRequest {
    /// Body of the `approval.requested` event: the masked statement only,
    /// and no fingerprint: it is a plain hash of the exact statement, against
    /// which a masked value's few hidden digits could be guessed (an SSN's
    /// five); it stays in the state store, which holds the statement itself.
    pub fn event_body(&self) -> Value {
        json!({
            "approval_id": self.id,
            "session": self.session_id,
            "connection": self.connection,
            "principal": self.identity.principal,
            "on_behalf_of": self.identity.on_behalf_of,
            "statement": self.statement_masked,
            "plugin": self.plugin,
            "reason": self.reason,
            "approver_groups": self.approver_groups,
            "quorum": self.quorum,
            "justification": self.justification,
            "expires_at_ms": self.expires_at_ms,
        })
    }

    /// Names of those who approved.
    pub fn approvers(&self) -> String {
        let v: Vec<&str> =
            self.votes.iter().filter(|v| v.decision == "approve").map(|v| v.approver.name.as_str()).collect();
        v.join(", ")
    }

    /// Who denied it and why.
    pub fn denial(&self) -> (String, String) {
        self.votes
            .iter()
            .find(|v| v.decision == "deny")
            .map(|v| (v.approver.name.clone(), v.reason.clone().unwrap_or_else(|| "no reason given".into())))
            .unwrap_or_else(|| ("an approver".into(), "no reason given".into()))
    }
}
