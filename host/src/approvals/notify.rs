//! Webhook notifications for approval requests: a Slack-compatible body
//! (`text` + `blocks`) or the generic JSON event, retried with exponential
//! backoff off the data path. A failed notification never approves anything:
//! the request just waits (and expires) as if nobody had been told.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::model::ApprovalRequest;
use crate::config::{Webhook, WebhookFormat};
use crate::record::SessionRecorder;

/// Attempts per notification (waits 0.5, 1, 2, 4, 8 s between them).
pub const ATTEMPTS: u32 = 6;

struct Job {
    hook: Webhook,
    body: Value,
    approval_id: String,
    what: &'static str,
    log: Arc<SessionRecorder>,
}

/// Sends notifications in the background.
#[derive(Debug, Clone)]
pub struct Notifier {
    hooks: Vec<Webhook>,
    admin_url: String,
    tx: Option<mpsc::UnboundedSender<Job>>,
}

impl Notifier {
    /// Start the sender task (none when no webhook is configured).
    pub fn start(hooks: Vec<Webhook>, admin_url: String) -> Notifier {
        if hooks.is_empty() {
            return Notifier { hooks, admin_url, tx: None };
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                // Each delivery retries on its own task, so one dead endpoint does not delay the others.
                tokio::spawn(deliver(job));
            }
        });
        Notifier { hooks, admin_url, tx: Some(tx) }
    }

    fn send(&self, req: &ApprovalRequest, what: &'static str, headline: String, log: &Arc<SessionRecorder>) {
        let Some(tx) = &self.tx else { return };
        for hook in &self.hooks {
            let body = match hook.format {
                WebhookFormat::Slack => slack_body(req, &headline, &self.admin_url),
                WebhookFormat::Json => json!({"event": what, "headline": headline, "approval": public_view(req),
                                              "url": format!("{}/approvals", self.admin_url)}),
            };
            let _ = tx.send(Job { hook: hook.clone(), body, approval_id: req.id.clone(), what, log: log.clone() });
        }
    }

    /// A request is waiting.
    pub fn requested(&self, req: &ApprovalRequest, log: &Arc<SessionRecorder>) {
        let headline = format!(
            "Approval needed: {} wants to run a statement on {} ({})",
            req.identity.describe(),
            req.connection,
            req.reason
        );
        self.send(req, "approval.requested", headline, log);
    }

    /// A request was decided (or voted on).
    pub fn decided(&self, req: &ApprovalRequest, break_glass: bool, log: &Arc<SessionRecorder>) {
        let last = req.votes.last();
        let who = last.map(|v| v.approver.name.as_str()).unwrap_or("someone");
        let bg = if break_glass { "BREAK-GLASS: " } else { "" };
        let headline = format!("{bg}{} is {} ({who} voted)", req.id, req.status);
        self.send(req, "approval.decided", headline, log);
    }
}

/// The request without the unmasked statement.
fn public_view(req: &ApprovalRequest) -> Value {
    let mut v = serde_json::to_value(req).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("statement");
    }
    v
}

fn slack_body(req: &ApprovalRequest, headline: &str, admin_url: &str) -> Value {
    let stmt: String = req.statement_masked.chars().take(2500).collect();
    json!({
        "text": headline,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{headline}*")}},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("```{stmt}```")}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "`{}` · approvers: {} · quorum {} · expires {} · <{}/approvals|review>",
                req.id, req.approver_groups.join(", "), req.quorum,
                crate::util::format_rfc3339_ms(req.expires_at_ms), admin_url)}]}
        ]
    })
}

async fn deliver(job: Job) {
    let mut wait = Duration::from_millis(500);
    let target = job.hook.display.clone();
    for attempt in 1..=ATTEMPTS {
        let url = job.hook.url.clone();
        let body = job.body.clone();
        let sent = tokio::task::spawn_blocking(move || post(&url, &body)).await.unwrap_or_else(|e| Err(e.to_string()));
        match sent {
            Ok(status) => {
                job.log.emit(
                    "approval.notified",
                    json!({"approval_id": job.approval_id, "event": job.what, "webhook": target, "status": status, "attempt": attempt}),
                );
                return;
            }
            Err(e) => {
                tracing::warn!(webhook = %target, attempt, "approval notification failed: {e}");
                if attempt == ATTEMPTS {
                    job.log.emit(
                        "approval.notify_failed",
                        json!({"approval_id": job.approval_id, "event": job.what, "webhook": target, "error": e, "attempts": attempt}),
                    );
                    return;
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

fn post(url: &str, body: &Value) -> Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let resp = agent.post(url).send_json(body).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("HTTP {status}"))
    }
}
