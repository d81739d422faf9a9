//! Just-in-time approvals: a guard's `review` verdict becomes a request that
//! a human approves or denies before the statement runs.
//!
//! An approval is bound to exactly one statement (its fingerprint, see
//! [`crate::sql::fingerprint`]), one identity (principal and on-behalf-of
//! chain) and one connection, and is used once (or within a window the
//! connection sets). Requests live in the [`StateStore`], so they survive a
//! restart and replicas sharing a PostgreSQL store see each other's
//! decisions: a waiting session polls its request (every
//! [`POLL_INTERVAL`]) and is woken at once by decisions taken on its own
//! replica. Every step is an event in the `approvals` recording and, for the
//! requesting session, in its own.

pub mod model;
pub mod notify;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Notify;

use crate::config::{ApprovalSettings, ApprovalsConfig};
use crate::pipeline::types::{Identity, PrincipalKind};
use crate::record::SessionRecorder;
use crate::state::{StateError, StateStore};
pub use model::{ApprovalRequest, Status, Vote};

/// How often a waiting session re-reads its request from the store (the
/// bound on how late a decision taken on another replica is seen).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// No such request.
    #[error("no approval request {0}")]
    NotFound(String),
    /// Already decided, expired or withdrawn.
    #[error("request {id} is {status}, not pending")]
    NotPending {
        /// Request.
        id: String,
        /// Its status.
        status: Status,
    },
    /// The approver asked for it, or it was asked on their behalf.
    #[error("{0} cannot decide a request they made or that was made on their behalf")]
    OwnRequest(String),
    /// Not in an approver (or break-glass) group.
    #[error("{who} is not in an approver group of this request ({groups})")]
    NotApprover {
        /// Approver.
        who: String,
        /// Groups that may approve.
        groups: String,
    },
    /// Approvers must be of an allowed principal kind (humans by default).
    #[error("{who} is of kind {kind}; only kinds {allowed} may decide approval requests")]
    WrongKind {
        /// Approver.
        who: String,
        /// Their kind.
        kind: String,
        /// Allowed kinds.
        allowed: String,
    },
    /// This approver already voted.
    #[error("{0} has already voted on this request")]
    AlreadyVoted(String),
    /// Storage failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// How a held statement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Approved: run it (the approval has been used).
    Approved {
        /// Who approved (names, comma-separated).
        by: String,
    },
    /// Denied by an approver.
    Denied {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
    /// Nobody decided in time.
    Expired,
    /// Approved, but another run of the same statement (same identity) used it first.
    AlreadyUsed,
    /// The client cancelled, or went away.
    Withdrawn,
    /// This gateway is shutting down; the request stays pending.
    ShuttingDown,
}

/// What a new request needs.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    /// Requesting session.
    pub session_id: &'a str,
    /// Connection.
    pub connection: &'a str,
    /// Who asks.
    pub identity: &'a Identity,
    /// The exact statement, shown to its deciders only; credentials in it
    /// redacted (see [`crate::sql::credentials`]).
    pub statement: &'a str,
    /// Its masked form (for notifications and recordings).
    pub statement_masked: &'a str,
    /// Binding fingerprint.
    pub fingerprint: &'a str,
    /// Guard plugin that asked for review.
    pub plugin: &'a str,
    /// Its reason.
    pub reason: &'a str,
    /// Groups the plugin asked for (empty: the connection's).
    pub approver_groups: &'a [String],
    /// Plugin's timeout in seconds (0: the connection's).
    pub timeout_secs: u32,
    /// The connection's settings.
    pub settings: &'a ApprovalSettings,
    /// The requester's justification, if given.
    pub justification: Option<&'a str>,
}

/// The approval service of one gateway replica.
pub struct Approvals {
    store: StateStore,
    cfg: ApprovalsConfig,
    replica: String,
    local: Mutex<HashMap<String, Arc<Notify>>>,
    log: Arc<SessionRecorder>,
    notifier: notify::Notifier,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// A stable key for an identity and its whole on-behalf-of chain.
pub fn identity_key(id: &Identity) -> String {
    std::iter::once(&id.principal)
        .chain(&id.on_behalf_of)
        .map(|p| format!("{}|{}", p.issuer, p.subject))
        .collect::<Vec<_>>()
        .join(" > ")
}

fn kind_word(k: PrincipalKind) -> &'static str {
    match k {
        PrincipalKind::Human => "human",
        PrincipalKind::Agent => "agent",
        PrincipalKind::ServiceAccount => "service-account",
    }
}

impl Approvals {
    /// The service over `store`; its events go to `log`.
    pub fn new(store: StateStore, cfg: ApprovalsConfig, log: SessionRecorder) -> Arc<Approvals> {
        let log = Arc::new(log);
        let replica = crate::util::random_id()[..12].to_string();
        let notifier = notify::Notifier::start(cfg.webhooks.clone(), cfg.admin_url.clone());
        let (shutdown, _) = tokio::sync::watch::channel(false);
        Arc::new(Approvals { store, cfg, replica, local: Mutex::new(HashMap::new()), log, notifier, shutdown })
    }

    /// Release every waiting session with [`Outcome::ShuttingDown`] (their
    /// requests stay pending, to be approved and re-run after a restart).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The gateway-wide settings.
    pub fn config(&self) -> &ApprovalsConfig {
        &self.cfg
    }

    /// Expire overdue requests every second, for as long as the task runs.
    pub fn spawn_expirer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = me.expire_due().await {
                    tracing::warn!("approvals: expiring overdue requests failed: {e}");
                }
            }
        })
    }

    /// Is there an approval, unused (or within its window), for exactly this
    /// statement, identity and connection? If so it is used now and its id returned.
    pub async fn use_approval(
        &self,
        fingerprint: &str,
        identity: &Identity,
        connection: &str,
    ) -> Result<Option<String>, StateError> {
        let now = crate::util::now_ms();
        let key = identity_key(identity);
        for id in store::approved_candidates(&self.store, fingerprint, &key, connection).await? {
            if store::consume(&self.store, &id, now).await? {
                self.log.emit("approval.executed", json!({"approval_id": id}));
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Create a request (or return the pending one for the same binding).
    pub async fn request(&self, new: NewRequest<'_>) -> Result<ApprovalRequest, StateError> {
        let key = identity_key(new.identity);
        if let Some(existing) = store::pending_for(&self.store, new.fingerprint, &key, new.connection).await? {
            return Ok(existing);
        }
        let now = crate::util::now_ms();
        let timeout = if new.timeout_secs > 0 {
            Duration::from_secs(new.timeout_secs as u64).min(new.settings.timeout)
        } else {
            new.settings.timeout
        };
        let groups = if new.approver_groups.is_empty() {
            new.settings.approver_groups.clone()
        } else {
            new.approver_groups.to_vec()
        };
        let req = ApprovalRequest {
            id: format!("apr_{}", crate::util::random_id()),
            status: Status::Pending,
            created_at_ms: now,
            expires_at_ms: now + timeout.as_millis() as u64,
            session_id: new.session_id.to_string(),
            connection: new.connection.to_string(),
            identity: model::IdentityView::from(new.identity),
            statement: new.statement.to_string(),
            statement_masked: new.statement_masked.to_string(),
            fingerprint: new.fingerprint.to_string(),
            plugin: new.plugin.to_string(),
            reason: new.reason.to_string(),
            approver_groups: groups,
            quorum: new.settings.quorum.max(1),
            justification: new.justification.map(str::to_string),
            mode: new.settings.mode.as_str().to_string(),
            use_window_ms: new.settings.use_window.as_millis() as u64,
            decided_at_ms: None,
            decision: None,
            votes: Vec::new(),
            uses: 0,
        };
        store::insert(&self.store, &req, &key, &self.replica).await?;
        self.log.emit("approval.requested", req.event_body());
        self.notifier.requested(&req, &self.log);
        Ok(req)
    }

    fn local_notify(&self, id: &str) -> Arc<Notify> {
        self.local.lock().entry(id.to_string()).or_insert_with(|| Arc::new(Notify::new())).clone()
    }

    /// Wait for `id` to be decided, expire, or be withdrawn by `cancelled`
    /// (the client's CancelRequest). An approval found here is used at once.
    pub async fn wait(
        &self,
        id: &str,
        cancelled: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<Outcome, StateError> {
        let wake = self.local_notify(id);
        let mut shutdown = self.shutdown.subscribe();
        let result = loop {
            if *shutdown.borrow_and_update() {
                break Outcome::ShuttingDown;
            }
            let notified = wake.notified();
            let Some(req) = self.get(id).await? else { break Outcome::Withdrawn };
            match req.status {
                Status::Approved => {
                    if store::consume(&self.store, id, crate::util::now_ms()).await? {
                        self.log.emit("approval.executed", json!({"approval_id": id}));
                        break Outcome::Approved { by: req.approvers() };
                    }
                    break Outcome::AlreadyUsed;
                }
                Status::Denied => {
                    let (by, reason) = req.denial();
                    break Outcome::Denied { by, reason };
                }
                Status::Expired => break Outcome::Expired,
                Status::Executed => break Outcome::AlreadyUsed,
                Status::Withdrawn => break Outcome::Withdrawn,
                Status::Pending if req.expires_at_ms <= crate::util::now_ms() => {
                    self.expire_one(&req).await?;
                    break Outcome::Expired;
                }
                Status::Pending => {}
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => {}
                changed = cancelled.changed() => {
                    if changed.is_ok() {
                        self.withdraw(id, "cancelled by the client").await?;
                        break Outcome::Withdrawn;
                    }
                }
            }
        };
        self.local.lock().remove(id);
        Ok(result)
    }

    /// Withdraw a pending request (the client cancelled or disconnected).
    pub async fn withdraw(&self, id: &str, why: &str) -> Result<(), StateError> {
        if store::set_final(&self.store, id, Status::Withdrawn, &json!({"reason": why}), crate::util::now_ms()).await? {
            self.log.emit("approval.withdrawn", json!({"approval_id": id, "reason": why}));
        }
        Ok(())
    }

    /// One request.
    pub async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StateError> {
        store::get(&self.store, id).await
    }

    /// Requests, newest first (optionally only one status), at most `limit`.
    pub async fn list(&self, status: Option<Status>, limit: u32) -> Result<Vec<ApprovalRequest>, StateError> {
        store::list(&self.store, status, limit).await
    }

    /// An approver's vote. Approving counts towards the quorum; one denial denies.
    pub async fn decide(
        &self,
        id: &str,
        approver: &Identity,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<ApprovalRequest, DecideError> {
        let req = self.get(id).await?.ok_or_else(|| DecideError::NotFound(id.to_string()))?;
        let now = crate::util::now_ms();
        if req.status == Status::Pending && req.expires_at_ms <= now {
            self.expire_one(&req).await?;
            return Err(DecideError::NotPending { id: id.to_string(), status: Status::Expired });
        }
        if req.status != Status::Pending {
            return Err(DecideError::NotPending { id: id.to_string(), status: req.status });
        }
        let me = &approver.principal;
        let who = format!("{} ({})", me.name, me.subject);
        let mine = |p: &model::PrincipalView| p.subject == me.subject && p.issuer == me.issuer;
        if mine(&req.identity.principal) || req.identity.on_behalf_of.iter().any(mine) {
            return Err(DecideError::OwnRequest(who));
        }
        if !self.cfg.approver_kinds.contains(&me.kind) {
            let allowed: Vec<&str> = self.cfg.approver_kinds.iter().map(|k| kind_word(*k)).collect();
            return Err(DecideError::WrongKind { who, kind: kind_word(me.kind).into(), allowed: allowed.join(", ") });
        }
        let in_group = req.approver_groups.iter().any(|g| me.groups.contains(g));
        let break_glass = !in_group && self.cfg.break_glass_groups.iter().any(|g| me.groups.contains(g));
        if !in_group && !break_glass {
            return Err(DecideError::NotApprover { who, groups: req.approver_groups.join(", ") });
        }
        let vote = Vote {
            approver: model::PrincipalView::from(me),
            decision: if approve { "approve".into() } else { "deny".into() },
            reason: reason.map(str::to_string),
            break_glass,
            at_ms: now,
        };
        if !store::add_vote(&self.store, id, &format!("{}|{}", me.issuer, me.subject), &vote).await? {
            return Err(DecideError::AlreadyVoted(who));
        }
        if break_glass {
            tracing::warn!(approval = id, approver = %me.subject, "BREAK-GLASS decision on an approval request");
        }
        self.log.emit(
            if approve { "approval.approved_vote" } else { "approval.denied_vote" },
            json!({"approval_id": id, "approver": vote.approver, "reason": reason, "break_glass": break_glass}),
        );
        let approvals = store::votes(&self.store, id).await?.iter().filter(|v| v.decision == "approve").count() as u64;
        let final_status = if !approve {
            Some(Status::Denied)
        } else if approvals >= req.quorum || break_glass {
            Some(Status::Approved)
        } else {
            None
        };
        if let Some(status) = final_status {
            let summary =
                json!({"by": vote.approver, "reason": reason, "break_glass": break_glass, "approvals": approvals});
            if store::set_final(&self.store, id, status, &summary, now).await? {
                self.log.emit(
                    if status == Status::Approved { "approval.approved" } else { "approval.denied" },
                    json!({"approval_id": id, "by": vote.approver, "reason": reason, "break_glass": break_glass}),
                );
            }
        }
        if let Some(n) = self.local.lock().get(id) {
            n.notify_waiters();
        }
        let updated = self.get(id).await?.ok_or_else(|| DecideError::NotFound(id.to_string()))?;
        self.notifier.decided(&updated, break_glass, &self.log);
        Ok(updated)
    }

    async fn expire_one(&self, req: &ApprovalRequest) -> Result<(), StateError> {
        if store::set_final(&self.store, &req.id, Status::Expired, &json!({}), crate::util::now_ms()).await? {
            self.log.emit("approval.expired", json!({"approval_id": req.id, "expires_at_ms": req.expires_at_ms}));
        }
        Ok(())
    }

    /// Mark every overdue pending request expired.
    pub async fn expire_due(&self) -> Result<usize, StateError> {
        let due = store::overdue(&self.store, crate::util::now_ms()).await?;
        for req in &due {
            self.expire_one(req).await?;
            if let Some(n) = self.local.lock().get(&req.id) {
                n.notify_waiters();
            }
        }
        Ok(due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HoldMode;
    use crate::pipeline::types::Principal;

    fn principal(subject: &str, kind: PrincipalKind, groups: &[&str]) -> Principal {
        Principal {
            subject: subject.into(),
            name: subject.into(),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            kind,
            issuer: "https://idp".into(),
        }
    }

    fn id(p: Principal, on_behalf_of: Vec<Principal>) -> Identity {
        Identity { principal: p, on_behalf_of }
    }

    async fn service(quorum: u64) -> (Arc<Approvals>, ApprovalSettings, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("wg-approvals-{}", crate::util::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = StateStore::sqlite_in(&dir).await.unwrap();
        let recorder = crate::record::Recorder::start(&dir.join("rec"), None).unwrap();
        let cfg = ApprovalsConfig {
            break_glass_groups: vec!["breakglass".into()],
            approver_kinds: vec![PrincipalKind::Human],
            webhooks: vec![],
            admin_url: "http://127.0.0.1:1".into(),
        };
        let settings = ApprovalSettings {
            mode: HoldMode::Wait,
            quorum,
            approver_groups: vec!["dba".into()],
            ..Default::default()
        };
        (Approvals::new(store, cfg, recorder.session("approvals-test")), settings, dir)
    }

    async fn ask(a: &Approvals, who: &Identity, settings: &ApprovalSettings, fp: &str) -> ApprovalRequest {
        a.request(NewRequest {
            session_id: "s1",
            connection: "shop",
            identity: who,
            statement: "DO $$ BEGIN END $$",
            statement_masked: "DO $$ BEGIN END $$",
            fingerprint: fp,
            plugin: "sql-guard",
            reason: "DO BLOCK needs approval",
            approver_groups: &[],
            timeout_secs: 0,
            settings,
            justification: None,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn approvers_are_checked_and_an_approval_is_bound_and_used_once() {
        let (a, settings, dir) = service(1).await;
        let alice = principal("alice", PrincipalKind::Human, &["dba"]);
        let agent = id(principal("bot", PrincipalKind::Agent, &["agents"]), vec![alice.clone()]);
        let req = ask(&a, &agent, &settings, "fp1").await;
        assert_eq!(req.approver_groups, ["dba"]);
        let again = ask(&a, &agent, &settings, "fp1").await;
        assert_eq!(again.id, req.id, "the same binding reuses the pending request");

        let err = |r: Result<ApprovalRequest, DecideError>| r.unwrap_err().to_string();
        let e = err(a.decide(&req.id, &id(alice.clone(), vec![]), true, None).await);
        assert!(e.contains("made on their behalf"), "{e}");
        let e = err(a.decide(&req.id, &agent, true, None).await);
        assert!(e.contains("cannot decide a request they made"), "{e}");
        let e =
            err(a.decide(&req.id, &id(principal("ops-bot", PrincipalKind::Agent, &["dba"]), vec![]), true, None).await);
        assert!(e.contains("only kinds human"), "{e}");
        let e = err(a.decide(&req.id, &id(principal("bob", PrincipalKind::Human, &["dev"]), vec![]), true, None).await);
        assert!(e.contains("not in an approver group"), "{e}");

        let carol = id(principal("carol", PrincipalKind::Human, &["dba"]), vec![]);
        assert!(a.use_approval("fp1", &agent, "shop").await.unwrap().is_none(), "pending is not approved");
        let done = a.decide(&req.id, &carol, true, Some("looks fine")).await.unwrap();
        assert_eq!(done.status, Status::Approved);
        let e = err(a.decide(&req.id, &carol, true, None).await);
        assert!(e.contains("not pending"), "{e}");
        assert!(a.use_approval("fp2", &agent, "shop").await.unwrap().is_none(), "another statement");
        assert!(a.use_approval("fp1", &agent, "billing").await.unwrap().is_none(), "another connection");
        let other =
            id(principal("bot", PrincipalKind::Agent, &["agents"]), vec![principal("bob", PrincipalKind::Human, &[])]);
        assert!(a.use_approval("fp1", &other, "shop").await.unwrap().is_none(), "another on-behalf-of chain");
        assert_eq!(a.use_approval("fp1", &agent, "shop").await.unwrap().as_deref(), Some(req.id.as_str()));
        assert!(a.use_approval("fp1", &agent, "shop").await.unwrap().is_none(), "used once");
        assert_eq!(a.get(&req.id).await.unwrap().unwrap().status, Status::Executed);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn quorum_break_glass_denial_and_expiry() {
        let (a, mut settings, dir) = service(2).await;
        let agent = id(principal("bot", PrincipalKind::Agent, &["agents"]), vec![]);
        let dba = |n: &str| id(principal(n, PrincipalKind::Human, &["dba"]), vec![]);
        let req = ask(&a, &agent, &settings, "q").await;
        assert_eq!(a.decide(&req.id, &dba("carol"), true, None).await.unwrap().status, Status::Pending);
        assert!(a.decide(&req.id, &dba("carol"), true, None).await.unwrap_err().to_string().contains("already voted"));
        assert_eq!(a.decide(&req.id, &dba("dave"), true, None).await.unwrap().status, Status::Approved);

        let req = ask(&a, &agent, &settings, "bg").await;
        let sre = id(principal("erin", PrincipalKind::Human, &["breakglass"]), vec![]);
        let r = a.decide(&req.id, &sre, true, Some("incident 7")).await.unwrap();
        assert_eq!(r.status, Status::Approved, "break-glass needs no quorum");
        assert!(r.votes[0].break_glass);

        let req = ask(&a, &agent, &settings, "deny").await;
        let r = a.decide(&req.id, &dba("carol"), false, Some("not today")).await.unwrap();
        assert_eq!(r.status, Status::Denied);
        assert_eq!(r.denial(), ("carol".to_string(), "not today".to_string()));

        settings.timeout = Duration::from_millis(50);
        let req = ask(&a, &agent, &settings, "late").await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(a.expire_due().await.unwrap(), 1);
        assert_eq!(a.get(&req.id).await.unwrap().unwrap().status, Status::Expired);
        assert!(a.decide(&req.id, &dba("carol"), true, None).await.is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
