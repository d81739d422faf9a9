//! The state store: approvals and the session index in SQLite — an
//! embedded file, zero set-up — or in PostgreSQL when several gateway
//! replicas share state. One `sqlx` Any pool serves both; the SQL is written
//! once, in the dialect both accept (`$n` placeholders, BIGINT, TEXT).

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or queried.
    #[error("state store: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row could not be read back.
    #[error("state store: corrupt row: {0}")]
    Corrupt(String),
}

/// Which database holds the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local SQLite file.
    Sqlite,
    /// A shared PostgreSQL database.
    Postgres,
}

/// An open state store.
#[derive(Debug, Clone)]
pub struct StateStore {
    pool: AnyPool,
    backend: Backend,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS wardgate_approvals (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        session_id TEXT NOT NULL,
        connection_name TEXT NOT NULL,
        principal_key TEXT NOT NULL,
        identity_json TEXT NOT NULL,
        statement TEXT NOT NULL,
        statement_masked TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        plugin TEXT NOT NULL,
        reason TEXT NOT NULL,
        approver_groups_json TEXT NOT NULL,
        quorum BIGINT NOT NULL,
        justification TEXT,
        mode TEXT NOT NULL,
        use_window_ms BIGINT NOT NULL,
        decided_at_ms BIGINT,
        decision_json TEXT,
        uses BIGINT NOT NULL DEFAULT 0,
        replica TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS wardgate_approvals_binding
        ON wardgate_approvals (fingerprint, principal_key, connection_name, status)",
    "CREATE INDEX IF NOT EXISTS wardgate_approvals_status ON wardgate_approvals (status, expires_at_ms)",
    "CREATE TABLE IF NOT EXISTS wardgate_approval_votes (
        approval_id TEXT NOT NULL,
        approver_key TEXT NOT NULL,
        approver_json TEXT NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT,
        break_glass BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (approval_id, approver_key))",
    "CREATE TABLE IF NOT EXISTS wardgate_sessions (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        connection_name TEXT,
        principal_subject TEXT,
        principal_name TEXT,
        principal_kind TEXT,
        on_behalf_of TEXT,
        client_addr TEXT,
        started_at_ms BIGINT NOT NULL,
        ended_at_ms BIGINT,
        requests BIGINT NOT NULL DEFAULT 0,
        denied BIGINT NOT NULL DEFAULT 0,
        reviewed BIGINT NOT NULL DEFAULT 0,
        end_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS wardgate_sessions_started ON wardgate_sessions (started_at_ms)",
    "CREATE INDEX IF NOT EXISTS wardgate_sessions_connection ON wardgate_sessions (connection_name, started_at_ms)",
];

/// How long a caller waits for a store connection before it gets an error:
/// short, because a held statement or an admin call is refused (fail closed)
/// rather than left hanging while the store is down.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl StateStore {
    /// Open (and create the schema of) `url`: `sqlite://PATH` or `postgres://…`.
    pub async fn open(url: &str, password: Option<&str>) -> Result<StateStore, StateError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        // The URL with the password is wiped once the pool has parsed it.
        let url = crate::config::Secret::new(match (password, backend) {
            (Some(pw), Backend::Postgres) => with_password(url, pw),
            _ => url.to_string(),
        });
        let pool =
            AnyPoolOptions::new().max_connections(8).acquire_timeout(ACQUIRE_TIMEOUT).connect(url.as_str()).await?;
        let store = StateStore { pool, backend };
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&store.pool).await?;
        } else {
            let row = sqlx::query("SHOW synchronous_commit").fetch_one(&store.pool).await?;
            let v: String = col(&row, "synchronous_commit")?;
            if v == "off" {
                tracing::warn!(
                    "the state store runs with synchronous_commit = off: approval decisions acknowledged just before \
                     a database crash can be lost; set it to on for the Wardgate database"
                );
            }
        }
        for stmt in SCHEMA {
            // Two replicas creating the schema at once can race in PostgreSQL's catalog: retry.
            let mut tries = 0;
            loop {
                match sqlx::query(stmt).execute(&store.pool).await {
                    Ok(_) => break,
                    Err(_) if tries < 3 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(store)
    }

    /// The store a gateway config names (`gateway.state_store`, else SQLite in its state_dir).
    pub async fn for_config(config: &crate::config::Config) -> Result<StateStore, StateError> {
        match &config.state_store {
            crate::config::StateStoreConfig::Sqlite => Self::sqlite_in(&config.state_dir).await,
            crate::config::StateStoreConfig::Url { url, password } => {
                let pw =
                    password.read().map_err(|e| StateError::Corrupt(format!("gateway.state_store password: {e}")))?;
                Self::open(url, pw.as_deref().map(String::as_str)).await
            }
        }
    }

    /// The SQLite store in `state_dir`.
    pub async fn sqlite_in(state_dir: &Path) -> Result<StateStore, StateError> {
        Self::open(&format!("sqlite://{}?mode=rwc", state_dir.join("wardgate.db").display()), None).await
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// SQLite or PostgreSQL.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// Put `password` into a `postgres://user@host/db` URL (percent-encoded).
fn with_password(url: &str, password: &str) -> String {
    let enc: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if !user.contains(':') => format!("{scheme}://{user}:{enc}@{host}"),
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Read a column, mapping errors to [`StateError::Corrupt`].
pub fn col<'r, T>(row: &'r AnyRow, name: &str) -> Result<T, StateError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row as _;
    row.try_get(name).map_err(|e| StateError::Corrupt(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_go_into_the_url_encoded() {
        assert_eq!(
            super::with_password("postgres://wg@h:5432/db", "p@ss:w/rd"),
            "postgres://wg:p%40ss%3Aw%2Frd@h:5432/db"
        );
        assert_eq!(super::with_password("postgres://wg:x@h/db", "y"), "postgres://wg:x@h/db");
    }
}
