//! The session index in the state store (SQLite or PostgreSQL): who, which
//! connection, when, and what was decided — searchable without reading
//! recordings. Sessions report to a [`Feed`]; one task writes the rows,
//! retrying while the store is unavailable, so indexing never slows a
//! session. `wardgate sessions reindex` rebuilds it from the recordings.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::log::Digest;
use crate::state::{col, StateError, StateStore};

/// An update for the index.
#[derive(Debug)]
enum Op {
    Started { id: String, at_ms: u64, body: Value },
    Ended { id: String, digest: Digest, recovered: bool },
}

/// Where sessions report; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Feed(UnboundedSender<Op>);

impl Feed {
    /// A session started (`body` is its `session.start` event).
    pub fn started(&self, id: &str, at_ms: u64, body: &Value) {
        let _ = self.0.send(Op::Started { id: id.to_string(), at_ms, body: body.clone() });
    }

    /// A session ended (`recovered`: sealed after a crash).
    pub fn ended(&self, id: &str, digest: Digest, recovered: bool) {
        let _ = self.0.send(Op::Ended { id: id.to_string(), digest, recovered });
    }
}

/// Start the task that writes the index.
pub fn spawn(store: StateStore) -> (Feed, tokio::task::JoinHandle<()>) {
    let (tx, rx) = unbounded_channel();
    (Feed(tx), tokio::spawn(write_loop(store, rx)))
}

async fn write_loop(store: StateStore, mut rx: UnboundedReceiver<Op>) {
    let mut warned = false;
    while let Some(op) = rx.recv().await {
        loop {
            match apply(&store, &op).await {
                Ok(()) => {
                    if warned {
                        tracing::info!("session index writable again");
                        warned = false;
                    }
                    break;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("session index not updated, retrying: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// One indexed session.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Row {
    /// Session id (the recording's name).
    pub id: String,
    /// `open`, `closed`, `auth-failed` or `recovered` (sealed after a crash).
    pub status: String,
    /// Wardgate connection.
    pub connection: Option<String>,
    /// Principal's subject.
    pub principal_subject: Option<String>,
    /// Principal's name (for a failed login: the name it claimed).
    pub principal_name: Option<String>,
    /// human, service-account or agent.
    pub principal_kind: Option<String>,
    /// On whose behalf, nearest first, comma-separated names.
    pub on_behalf_of: Option<String>,
    /// Client address.
    pub client_addr: Option<String>,
    /// Start, ms since the epoch.
    pub started_at_ms: i64,
    /// End, when it ended.
    pub ended_at_ms: Option<i64>,
    /// Requests checked.
    pub requests: i64,
    /// Requests denied.
    pub denied: i64,
    /// Requests routed to review.
    pub reviewed: i64,
    /// Why it ended.
    pub end_reason: Option<String>,
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().map(str::to_string)
}

fn from_start(id: &str, at_ms: u64, body: &Value) -> Row {
    let obo: Vec<String> = body
        .get("on_behalf_of")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| str_at(p, &["name"]).or_else(|| str_at(p, &["subject"]))).collect())
        .unwrap_or_default();
    Row {
        id: id.to_string(),
        status: "open".into(),
        connection: str_at(body, &["connection"]),
        principal_subject: str_at(body, &["principal", "subject"]),
        principal_name: str_at(body, &["principal", "name"]),
        principal_kind: str_at(body, &["principal", "kind"]),
        on_behalf_of: (!obo.is_empty()).then(|| obo.join(",")),
        client_addr: str_at(body, &["client_addr"]),
        started_at_ms: at_ms as i64,
        ..Default::default()
    }
}

/// The row a finished session's digest gives.
pub fn row_of(id: &str, d: &Digest, recovered: bool) -> Row {
    let mut row = match (&d.start, &d.auth_failed) {
        (Some(s), _) => from_start(id, d.first_ms, s),
        (None, Some(f)) => Row {
            id: id.to_string(),
            connection: str_at(f, &["connection"]),
            principal_name: str_at(f, &["user"]),
            client_addr: str_at(f, &["client_addr"]),
            started_at_ms: d.first_ms as i64,
            ..Default::default()
        },
        (None, None) => Row { id: id.to_string(), started_at_ms: d.first_ms as i64, ..Default::default() },
    };
    row.status = if recovered || d.recovered {
        "recovered"
    } else if d.start.is_none() && d.auth_failed.is_some() {
        "auth-failed"
    } else {
        "closed"
    }
    .into();
    row.ended_at_ms = Some(d.last_ms as i64);
    row.requests = d.requests as i64;
    row.denied = d.denied as i64;
    row.reviewed = d.reviewed as i64;
    row.end_reason = d.end_reason.clone();
    row
}

/// The row of a recording read from disk (open when it has no `session.end` yet).
pub fn row_of_recording(id: &str, d: &Digest) -> Row {
    let mut row = row_of(id, d, false);
    if d.end_reason.is_none() {
        row.status = "open".into();
        row.ended_at_ms = None;
    }
    row
}

async fn apply(store: &StateStore, op: &Op) -> Result<(), StateError> {
    match op {
        Op::Started { id, at_ms, body } => upsert(store, &from_start(id, *at_ms, body)).await,
        // Sessions that never began (a log of approvals, a closed port scan) are not indexed.
        Op::Ended { digest, .. } if digest.start.is_none() && digest.auth_failed.is_none() => Ok(()),
        Op::Ended { id, digest, recovered } => upsert(store, &row_of(id, digest, *recovered)).await,
    }
}

/// Insert or update one session's row.
pub async fn upsert(store: &StateStore, r: &Row) -> Result<(), StateError> {
    sqlx::query(
        "INSERT INTO wardgate_sessions (id, status, connection_name, principal_subject, principal_name,
            principal_kind, on_behalf_of, client_addr, started_at_ms, ended_at_ms, requests, denied, reviewed, end_reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status,
            connection_name = COALESCE(excluded.connection_name, wardgate_sessions.connection_name),
            principal_subject = COALESCE(excluded.principal_subject, wardgate_sessions.principal_subject),
            principal_name = COALESCE(excluded.principal_name, wardgate_sessions.principal_name),
            principal_kind = COALESCE(excluded.principal_kind, wardgate_sessions.principal_kind),
            on_behalf_of = COALESCE(excluded.on_behalf_of, wardgate_sessions.on_behalf_of),
            client_addr = COALESCE(excluded.client_addr, wardgate_sessions.client_addr),
            started_at_ms = CASE WHEN wardgate_sessions.started_at_ms > 0 AND wardgate_sessions.started_at_ms < excluded.started_at_ms
                THEN wardgate_sessions.started_at_ms ELSE excluded.started_at_ms END,
            ended_at_ms = excluded.ended_at_ms, requests = excluded.requests, denied = excluded.denied,
            reviewed = excluded.reviewed, end_reason = excluded.end_reason",
    )
    .bind(&r.id)
    .bind(&r.status)
    .bind(&r.connection)
    .bind(&r.principal_subject)
    .bind(&r.principal_name)
    .bind(&r.principal_kind)
    .bind(&r.on_behalf_of)
    .bind(&r.client_addr)
    .bind(r.started_at_ms)
    .bind(r.ended_at_ms)
    .bind(r.requests)
    .bind(r.denied)
    .bind(r.reviewed)
    .bind(&r.end_reason)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Subject, name or on-behalf-of name containing this (case-insensitive).
    pub principal: Option<String>,
    /// Exactly this connection.
    pub connection: Option<String>,
    /// Started at or after (ms).
    pub since_ms: Option<u64>,
    /// Started before (ms).
    pub until_ms: Option<u64>,
    /// `deny`: with a denied request; `review`: with a reviewed one; `allow`:
    /// neither; `flagged`: either; `auth-failed`: refused at login.
    pub decision: Option<String>,
    /// Most rows (newest first).
    pub limit: i64,
}

/// The decisions [`Query::decision`] accepts.
pub const DECISIONS: &[&str] = &["deny", "review", "allow", "flagged", "auth-failed"];

/// Search the index, newest first.
pub async fn search(store: &StateStore, q: &Query) -> Result<Vec<Row>, StateError> {
    let mut sql = String::from(
        "SELECT id, status, connection_name, principal_subject, principal_name, principal_kind, on_behalf_of,
                client_addr, started_at_ms, ended_at_ms, requests, denied, reviewed, end_reason
         FROM wardgate_sessions WHERE 1 = 1",
    );
    let mut binds: Vec<Bind> = vec![];
    let mut n = 0;
    let mut next = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        n += 1;
        format!("${n}")
    };
    if let Some(p) = &q.principal {
        let pat = format!("%{}%", like_escape(&p.to_lowercase()));
        let a = next(Bind::S(pat.clone()), &mut binds);
        let b = next(Bind::S(pat.clone()), &mut binds);
        let c = next(Bind::S(pat), &mut binds);
        sql += &format!(
            " AND (LOWER(COALESCE(principal_subject, '')) LIKE {a} ESCAPE '\\'
                 OR LOWER(COALESCE(principal_name, '')) LIKE {b} ESCAPE '\\'
                 OR LOWER(COALESCE(on_behalf_of, '')) LIKE {c} ESCAPE '\\')"
        );
    }
    if let Some(c) = &q.connection {
        sql += &format!(" AND connection_name = {}", next(Bind::S(c.clone()), &mut binds));
    }
    if let Some(s) = q.since_ms {
        sql += &format!(" AND started_at_ms >= {}", next(Bind::I(s as i64), &mut binds));
    }
    if let Some(u) = q.until_ms {
        sql += &format!(" AND started_at_ms < {}", next(Bind::I(u as i64), &mut binds));
    }
    match q.decision.as_deref() {
        None => {}
        Some("deny") => sql += " AND denied > 0",
        Some("review") => sql += " AND reviewed > 0",
        Some("allow") => sql += " AND denied = 0 AND reviewed = 0 AND status <> 'auth-failed'",
        Some("flagged") => sql += " AND (denied > 0 OR reviewed > 0 OR status = 'auth-failed')",
        Some("auth-failed") => sql += " AND status = 'auth-failed'",
        Some(other) => {
            return Err(StateError::Corrupt(format!("unknown decision {other:?}: use one of {}", DECISIONS.join(", "))))
        }
    }
    sql += &format!(" ORDER BY started_at_ms DESC, id LIMIT {}", next(Bind::I(q.limit.max(1)), &mut binds));
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            Bind::S(s) => query.bind(s),
            Bind::I(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(store.pool()).await?;
    rows.iter()
        .map(|r| {
            Ok(Row {
                id: col(r, "id")?,
                status: col(r, "status")?,
                connection: col(r, "connection_name")?,
                principal_subject: col(r, "principal_subject")?,
                principal_name: col(r, "principal_name")?,
                principal_kind: col(r, "principal_kind")?,
                on_behalf_of: col(r, "on_behalf_of")?,
                client_addr: col(r, "client_addr")?,
                started_at_ms: col(r, "started_at_ms")?,
                ended_at_ms: col(r, "ended_at_ms")?,
                requests: col(r, "requests")?,
                denied: col(r, "denied")?,
                reviewed: col(r, "reviewed")?,
                end_reason: col(r, "end_reason")?,
            })
        })
        .collect()
}

/// Whether `r` matches `q` (the same rules as [`search`], for listing without an index).
pub fn matches(r: &Row, q: &Query) -> bool {
    let contains = |v: &Option<String>, p: &str| v.as_deref().is_some_and(|v| v.to_lowercase().contains(p));
    let principal = q.principal.as_ref().map(|p| p.to_lowercase()).is_none_or(|p| {
        contains(&r.principal_subject, &p) || contains(&r.principal_name, &p) || contains(&r.on_behalf_of, &p)
    });
    let started = r.started_at_ms.max(0) as u64;
    let decision = match q.decision.as_deref() {
        None => true,
        Some("deny") => r.denied > 0,
        Some("review") => r.reviewed > 0,
        Some("allow") => r.denied == 0 && r.reviewed == 0 && r.status != "auth-failed",
        Some("flagged") => r.denied > 0 || r.reviewed > 0 || r.status == "auth-failed",
        Some("auth-failed") => r.status == "auth-failed",
        Some(_) => false,
    };
    principal
        && q.connection.as_ref().is_none_or(|c| r.connection.as_ref() == Some(c))
        && q.since_ms.is_none_or(|s| started >= s)
        && q.until_ms.is_none_or(|u| started < u)
        && decision
}

enum Bind {
    S(String),
    I(i64),
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// Rebuild the index from the recordings in `dir`; returns how many sessions were indexed.
pub async fn reindex(store: &StateStore, dir: &Path) -> Result<usize, StateError> {
    let files =
        super::verify::recordings_in(dir).map_err(|e| StateError::Corrupt(format!("{}: {e}", dir.display())))?;
    let mut n = 0;
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        let id = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let scan = super::recover::scan(&bytes);
        let d = &scan.digest;
        if d.start.is_none() && d.auth_failed.is_none() {
            continue;
        }
        upsert(store, &row_of_recording(&id, d)).await?;
        n += 1;
    }
    Ok(n)
}
