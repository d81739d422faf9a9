//! Helpers over host-parsed SQL statements.

use crate::types::{Request, SqlRequest, SqlStatement, StatementKind};

/// The SQL request inside `request`, if it is one.
pub fn as_sql(request: &Request) -> Option<&SqlRequest> {
    match request {
        Request::Sql(sql) => Some(sql),
        _ => None,
    }
}

/// The lower-case name of a statement kind as used in manifests (`drop`, `do-block`, ...).
pub fn kind_name(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Select => "select",
        StatementKind::Insert => "insert",
        StatementKind::Update => "update",
        StatementKind::Delete => "delete",
        StatementKind::Merge => "merge",
        StatementKind::CopyTo => "copy-to",
        StatementKind::CopyFrom => "copy-from",
        StatementKind::Create => "create",
        StatementKind::Alter => "alter",
        StatementKind::Drop => "drop",
        StatementKind::Truncate => "truncate",
        StatementKind::Grant => "grant",
        StatementKind::Revoke => "revoke",
        StatementKind::DoBlock => "do-block",
        StatementKind::Call => "call",
        StatementKind::Transaction => "transaction",
        StatementKind::SessionSetting => "session-setting",
        StatementKind::Explain => "explain",
        StatementKind::Prepared => "prepared",
        StatementKind::Notification => "notification",
        StatementKind::Cursor => "cursor",
        StatementKind::Maintenance => "maintenance",
        StatementKind::Other => "other",
    }
}

/// Parse a manifest kind name back (the inverse of [`kind_name`]).
pub fn kind_from_name(name: &str) -> Option<StatementKind> {
    ALL_KINDS.iter().copied().find(|k| kind_name(*k) == name)
}

/// Every statement kind, for validating configuration.
pub const ALL_KINDS: [StatementKind; 23] = [
    StatementKind::Select,
    StatementKind::Insert,
    StatementKind::Update,
    StatementKind::Delete,
    StatementKind::Merge,
    StatementKind::CopyTo,
    StatementKind::CopyFrom,
    StatementKind::Create,
    StatementKind::Alter,
    StatementKind::Drop,
    StatementKind::Truncate,
    StatementKind::Grant,
    StatementKind::Revoke,
    StatementKind::DoBlock,
    StatementKind::Call,
    StatementKind::Transaction,
    StatementKind::SessionSetting,
    StatementKind::Explain,
    StatementKind::Prepared,
    StatementKind::Notification,
    StatementKind::Cursor,
    StatementKind::Maintenance,
    StatementKind::Other,
];

/// True for statements that change data (INSERT/UPDATE/DELETE/MERGE/COPY FROM).
pub fn writes_data(stmt: &SqlStatement) -> bool {
    matches!(
        stmt.kind,
        StatementKind::Insert
            | StatementKind::Update
            | StatementKind::Delete
            | StatementKind::Merge
            | StatementKind::CopyFrom
    )
}

/// True for UPDATE/DELETE without a WHERE clause: they touch every row.
pub fn is_unbounded_write(stmt: &SqlStatement) -> bool {
    matches!(stmt.kind, StatementKind::Update | StatementKind::Delete) && !stmt.has_where
}

/// True when `stmt` touches `table` (read or written). Matches `schema.table`
/// and bare `table` names case-sensitively, as PostgreSQL resolved them.
pub fn touches_table(stmt: &SqlStatement, table: &str) -> bool {
    let hit = |t: &String| t == table || t.rsplit('.').next() == Some(table);
    stmt.tables_read.iter().any(hit) || stmt.tables_written.iter().any(hit)
}
