//! What a SQL text does with the session's named prepared statements.
//!
//! SQL's `PREPARE`, `EXECUTE`, `DEALLOCATE` and `DISCARD ALL` share one
//! namespace with the extended protocol's Parse, Bind and Close: a statement
//! parsed by a driver can be run by `EXECUTE name`, one made by `PREPARE` can
//! be bound by name. A guard judging `EXECUTE m` or `CREATE TABLE t AS
//! EXECUTE m` by its own text sees nothing of what runs; the protocol layer
//! follows the names (see the relay's `names`) and gives the guards the
//! statements each executed name stands for, from [`executed_statements`].

use pg_query::protobuf::DiscardMode;
use pg_query::{NodeEnum, NodeRef};

use crate::pipeline::types::{ColumnUsage, SqlPhase, SqlStatement};

/// What one top-level statement does to the session's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameOp {
    /// `PREPARE name AS …`; `text` is the whole PREPARE statement.
    Prepare {
        /// The name, as the server folds it.
        name: String,
        /// The PREPARE statement's text.
        text: String,
    },
    /// `DEALLOCATE name`.
    Deallocate(String),
    /// `DEALLOCATE ALL` or `DISCARD ALL`.
    DeallocateAll,
}

/// A prepared statement a text runs by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// The name, as the server folds it.
    pub name: String,
    /// Inside `CREATE TABLE … AS`: its rows go into a table, not back to
    /// the client as they are. (`EXPLAIN [ANALYZE]` shows a plan, no values:
    /// its `EXECUTE` is judged as the statement alone, as `EXPLAIN ANALYZE
    /// SELECT …` is.)
    pub copied: bool,
}

/// The names a text prepares, drops and runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRefs {
    /// One entry per top-level statement, in order (each is answered by one
    /// CommandComplete, so the server's answers settle them in turn).
    pub tops: Vec<Option<NameOp>>,
    /// Every `EXECUTE`, wherever it is.
    pub executes: Vec<Executed>,
}

impl NameRefs {
    /// It changes which statements the session's names stand for.
    pub fn changes_names(&self) -> bool {
        self.tops.iter().any(Option::is_some)
    }

    /// Every top-level statement is a `PREPARE` (running it runs nothing else).
    pub fn only_prepares(&self) -> bool {
        !self.tops.is_empty() && self.tops.iter().all(|t| matches!(t, Some(NameOp::Prepare { .. })))
    }
}

/// Whether an analysis shows statements that may use names (a cheap test
/// on the path of every request; [`name_refs`] parses again). `EXPLAIN`
/// shows no entry for the `EXECUTE` it wraps, so it counts too.
pub fn mentions_names(statements: &[SqlStatement]) -> bool {
    statements.iter().any(|s| {
        matches!(s.node.as_str(), "PrepareStmt" | "ExecuteStmt" | "DeallocateStmt" | "DiscardStmt" | "ExplainStmt")
    })
}

/// The names `text` prepares, drops and runs. A text the parser rejects
/// uses none (the server rejects it too).
pub fn name_refs(text: &str) -> NameRefs {
    let Ok(parsed) = pg_query::parse(text, 0) else { return NameRefs::default() };
    let mut refs = NameRefs::default();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else { continue };
        let start = (raw.stmt_location.max(0) as usize).min(text.len());
        let end = if raw.stmt_len <= 0 { text.len() } else { (start + raw.stmt_len as usize).min(text.len()) };
        let op = match node {
            NodeEnum::PrepareStmt(p) => {
                Some(NameOp::Prepare { name: p.name.clone(), text: text.get(start..end).unwrap_or("").trim().into() })
            }
            NodeEnum::DeallocateStmt(d) if d.isall || d.name.is_empty() => Some(NameOp::DeallocateAll),
            NodeEnum::DeallocateStmt(d) => Some(NameOp::Deallocate(d.name.clone())),
            NodeEnum::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => Some(NameOp::DeallocateAll),
            _ => None,
        };
        refs.tops.push(op);
        if let NodeEnum::ExecuteStmt(e) = node {
            refs.executes.push(Executed { name: e.name.clone(), copied: false });
        }
        // `EXPLAIN [ANALYZE] EXECUTE`, `CREATE TABLE … AS EXECUTE` (the
        // grammar has no other place for it; any other would count as copied).
        let explained = matches!(node, NodeEnum::ExplainStmt(_));
        for (child, depth, _, _) in node.nodes() {
            // (The statement itself is at depth 1.)
            if let (NodeRef::ExecuteStmt(e), 2..) = (child, depth) {
                refs.executes.push(Executed { name: e.name.clone(), copied: !explained });
            }
        }
    }
    refs
}

/// The statements a prepared statement stands for when `EXECUTE` runs it:
/// the analysis of its text (`sql_prepare`: the text is a whole `PREPARE`
/// statement, whose own entry is left out). `copied`: no column comes back
/// as it is, each `output` is `transformed`.
pub fn executed_statements(text: &str, sql_prepare: bool, copied: bool) -> Vec<SqlStatement> {
    let mut statements = super::analyze(text, SqlPhase::Parse, "").statements;
    if sql_prepare && statements.first().is_some_and(|s| s.node == "PrepareStmt") {
        statements.remove(0);
    }
    if copied {
        for c in statements.iter_mut().flat_map(|s| s.columns.iter_mut()) {
            if c.usage == ColumnUsage::Output {
                c.usage = ColumnUsage::Transformed;
            }
        }
    }
    statements
}

/// `text` as a `PREPARE` of `name` (for showing what a name stands for).
pub fn as_prepare(name: &str, text: &str) -> String {
    format!("PREPARE \"{}\" AS {}", name.replace('"', "\"\""), text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(name: &str, text: &str) -> Option<NameOp> {
        Some(NameOp::Prepare { name: name.into(), text: text.into() })
    }

    #[test]
    fn top_level_statements_are_settled_in_order() {
        let r = name_refs(
            "PREPARE A AS SELECT 1; select 2; DEALLOCATE \"B\"; DEALLOCATE PREPARE ALL; DISCARD ALL; DISCARD PLANS",
        );
        assert_eq!(
            r.tops,
            vec![
                prepare("a", "PREPARE A AS SELECT 1"),
                None,
                Some(NameOp::Deallocate("B".into())),
                Some(NameOp::DeallocateAll),
                Some(NameOp::DeallocateAll),
                None,
            ]
        );
        assert!(r.changes_names() && !r.only_prepares());
        assert!(name_refs("prepare x as delete from t where id = $1; PREPARE y AS select 1").only_prepares());
        assert!(!name_refs("select 1").changes_names());
    }

    #[test]
    fn executes_are_found_wherever_the_grammar_allows_them() {
        let r = name_refs(
            "EXECUTE m(1); explain analyze execute \"M\"; CREATE TEMP TABLE t (a, b) AS EXECUTE q (2) WITH NO DATA",
        );
        let e = |name: &str, copied| Executed { name: name.into(), copied };
        assert_eq!(r.executes, vec![e("m", false), e("M", false), e("q", true)]);
        assert_eq!(r.tops, vec![None, None, None]);
    }

    #[test]
    fn a_copied_execute_returns_no_column_as_it_is() {
        let plain = executed_statements("PREPARE q AS SELECT ssn FROM customers", true, false);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].node, "SelectStmt");
        assert_eq!(plain[0].columns[0].usage, ColumnUsage::Output);
        let copied = executed_statements("SELECT ssn FROM customers WHERE id = $1", false, true);
        assert_eq!(copied[0].columns[0].usage, ColumnUsage::Transformed);
        assert!(copied[0].columns.iter().any(|c| c.usage == ColumnUsage::Filter));
    }

    #[test]
    fn every_text_that_uses_names_is_parsed_again() {
        for sql in ["EXECUTE m", "explain analyze execute m", "CREATE TABLE t AS EXECUTE m", "PREPARE a AS SELECT 1"] {
            let statements = crate::sql::analyze(sql, SqlPhase::SimpleQuery, "").statements;
            assert!(mentions_names(&statements), "{sql}");
        }
    }

    #[test]
    fn unparsable_text_uses_no_names() {
        assert_eq!(name_refs("PREPARE AS"), NameRefs::default());
        assert_eq!(as_prepare("a\"b", " select 1 "), "PREPARE \"a\"\"b\" AS select 1");
    }
}
