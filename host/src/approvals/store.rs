//! Approval requests in the state store. Every state change is one
//! conditional UPDATE, so replicas racing on the same request agree.

use serde_json::Value;
use sqlx::any::AnyRow;

use super::model::{ApprovalRequest, IdentityView, Status, Vote};
use crate::state::{col, StateError, StateStore};

const COLUMNS: &str =
    "id, status, created_at_ms, expires_at_ms, session_id, connection_name, identity_json, statement, \
    statement_masked, fingerprint, plugin, reason, approver_groups_json, quorum, justification, mode, use_window_ms, \
    decided_at_ms, decision_json, uses";

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StateError> {
    serde_json::from_str(s).map_err(|e| StateError::Corrupt(format!("{what}: {e}")))
}

fn from_row(row: &AnyRow) -> Result<ApprovalRequest, StateError> {
    let status: String = col(row, "status")?;
    let identity: String = col(row, "identity_json")?;
    let groups: String = col(row, "approver_groups_json")?;
    let decision: Option<String> = col(row, "decision_json")?;
    Ok(ApprovalRequest {
        id: col(row, "id")?,
        status: Status::parse(&status).ok_or_else(|| StateError::Corrupt(format!("status {status}")))?,
        created_at_ms: col::<i64>(row, "created_at_ms")? as u64,
        expires_at_ms: col::<i64>(row, "expires_at_ms")? as u64,
        session_id: col(row, "session_id")?,
        connection: col(row, "connection_name")?,
        identity: json::<IdentityView>(&identity, "identity")?,
        statement: col(row, "statement")?,
        statement_masked: col(row, "statement_masked")?,
        fingerprint: col(row, "fingerprint")?,
        plugin: col(row, "plugin")?,
        reason: col(row, "reason")?,
        approver_groups: json(&groups, "approver groups")?,
        quorum: col::<i64>(row, "quorum")? as u64,
        justification: col(row, "justification")?,
        mode: col(row, "mode")?,
        use_window_ms: col::<i64>(row, "use_window_ms")? as u64,
        decided_at_ms: col::<Option<i64>>(row, "decided_at_ms")?.map(|v| v as u64),
        decision: decision.map(|d| json::<Value>(&d, "decision")).transpose()?,
        votes: Vec::new(),
        uses: col::<i64>(row, "uses")? as u64,
    })
}

pub async fn insert(s: &StateStore, r: &ApprovalRequest, key: &str, replica: &str) -> Result<(), StateError> {
    sqlx::query(&format!(
        "INSERT INTO wardgate_approvals ({COLUMNS}, principal_key, replica) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, NULL, NULL, 0, $18, $19)"
    ))
    .bind(&r.id)
    .bind(r.status.as_str())
    .bind(r.created_at_ms as i64)
    .bind(r.expires_at_ms as i64)
    .bind(&r.session_id)
    .bind(&r.connection)
    .bind(serde_json::to_string(&r.identity).unwrap_or_default())
    .bind(&r.statement)
    .bind(&r.statement_masked)
    .bind(&r.fingerprint)
    .bind(&r.plugin)
    .bind(&r.reason)
    .bind(serde_json::to_string(&r.approver_groups).unwrap_or_default())
    .bind(r.quorum as i64)
    .bind(r.justification.clone())
    .bind(&r.mode)
    .bind(r.use_window_ms as i64)
    .bind(key)
    .bind(replica)
    .execute(s.pool())
    .await?;
    Ok(())
}

pub async fn votes(s: &StateStore, id: &str) -> Result<Vec<Vote>, StateError> {
    let rows = sqlx::query(
        "SELECT approver_json, decision, reason, break_glass, at_ms FROM wardgate_approval_votes \
         WHERE approval_id = $1 ORDER BY at_ms",
    )
    .bind(id)
    .fetch_all(s.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let approver: String = col(r, "approver_json")?;
            Ok(Vote {
                approver: json(&approver, "approver")?,
                decision: col(r, "decision")?,
                reason: col(r, "reason")?,
                break_glass: col::<i64>(r, "break_glass")? != 0,
                at_ms: col::<i64>(r, "at_ms")? as u64,
            })
        })
        .collect()
}

async fn with_votes(s: &StateStore, mut r: ApprovalRequest) -> Result<ApprovalRequest, StateError> {
    r.votes = votes(s, &r.id).await?;
    Ok(r)
}

pub async fn get(s: &StateStore, id: &str) -> Result<Option<ApprovalRequest>, StateError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM wardgate_approvals WHERE id = $1"))
        .bind(id)
        .fetch_optional(s.pool())
        .await?;
    match row {
        Some(r) => Ok(Some(with_votes(s, from_row(&r)?).await?)),
        None => Ok(None),
    }
}

pub async fn list(s: &StateStore, status: Option<Status>, limit: u32) -> Result<Vec<ApprovalRequest>, StateError> {
    let rows = match status {
        Some(st) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM wardgate_approvals WHERE status = $1 ORDER BY created_at_ms DESC LIMIT $2"
            ))
            .bind(st.as_str())
            .bind(limit as i64)
            .fetch_all(s.pool())
            .await?
        }
        None => {
            sqlx::query(&format!("SELECT {COLUMNS} FROM wardgate_approvals ORDER BY created_at_ms DESC LIMIT $1"))
                .bind(limit as i64)
                .fetch_all(s.pool())
                .await?
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(with_votes(s, from_row(r)?).await?);
    }
    Ok(out)
}

pub async fn pending_for(
    s: &StateStore,
    fingerprint: &str,
    key: &str,
    connection: &str,
) -> Result<Option<ApprovalRequest>, StateError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM wardgate_approvals WHERE fingerprint = $1 AND principal_key = $2 \
         AND connection_name = $3 AND status = 'pending' AND expires_at_ms > $4 ORDER BY created_at_ms LIMIT 1"
    ))
    .bind(fingerprint)
    .bind(key)
    .bind(connection)
    .bind(crate::util::now_ms() as i64)
    .fetch_optional(s.pool())
    .await?;
    match row {
        Some(r) => Ok(Some(with_votes(s, from_row(&r)?).await?)),
        None => Ok(None),
    }
}

pub async fn approved_candidates(
    s: &StateStore,
    fingerprint: &str,
    key: &str,
    connection: &str,
) -> Result<Vec<String>, StateError> {
    let rows = sqlx::query(
        "SELECT id FROM wardgate_approvals WHERE fingerprint = $1 AND principal_key = $2 \
         AND connection_name = $3 AND status = 'approved' ORDER BY created_at_ms LIMIT 10",
    )
    .bind(fingerprint)
    .bind(key)
    .bind(connection)
    .fetch_all(s.pool())
    .await?;
    rows.iter().map(|r| col(r, "id")).collect()
}

/// Use an approval: once, or any number of times inside its window.
pub async fn consume(s: &StateStore, id: &str, now: u64) -> Result<bool, StateError> {
    let done = sqlx::query(
        "UPDATE wardgate_approvals SET uses = uses + 1, \
         status = CASE WHEN use_window_ms = 0 THEN 'executed' ELSE status END \
         WHERE id = $1 AND status = 'approved' \
         AND ((use_window_ms = 0 AND uses = 0) OR (use_window_ms > 0 AND decided_at_ms + use_window_ms > $2))",
    )
    .bind(id)
    .bind(now as i64)
    .execute(s.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Move a pending request to a final status; false if it was not pending.
pub async fn set_final(
    s: &StateStore,
    id: &str,
    status: Status,
    summary: &Value,
    now: u64,
) -> Result<bool, StateError> {
    let done = sqlx::query(
        "UPDATE wardgate_approvals SET status = $1, decided_at_ms = $2, decision_json = $3 \
         WHERE id = $4 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(now as i64)
    .bind(summary.to_string())
    .bind(id)
    .execute(s.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Record a vote; false if this approver already voted.
pub async fn add_vote(s: &StateStore, id: &str, approver_key: &str, v: &Vote) -> Result<bool, StateError> {
    let r = sqlx::query(
        "INSERT INTO wardgate_approval_votes (approval_id, approver_key, approver_json, decision, reason, break_glass, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(approver_key)
    .bind(serde_json::to_string(&v.approver).unwrap_or_default())
    .bind(&v.decision)
    .bind(v.reason.clone())
    .bind(v.break_glass as i64)
    .bind(v.at_ms as i64)
    .execute(s.pool())
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.kind() == sqlx::error::ErrorKind::UniqueViolation => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn overdue(s: &StateStore, now: u64) -> Result<Vec<ApprovalRequest>, StateError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM wardgate_approvals WHERE status = 'pending' AND expires_at_ms <= $1 LIMIT 500"
    ))
    .bind(now as i64)
    .fetch_all(s.pool())
    .await?;
    rows.iter().map(from_row).collect()
}
