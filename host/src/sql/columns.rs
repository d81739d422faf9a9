//! How a statement uses its columns, for policies that protect columns.
//!
//! The walk goes over the complete parse tree (through its serde form, so no
//! node type is skipped — `ARRAY[...]`, `COLLATE`, JSON constructors, window
//! definitions all count). A column is `output` only when the top-level query
//! returns it as is; inside any expression, function, subquery, CTE, set
//! operation, or a statement that copies data elsewhere (INSERT ... SELECT,
//! CREATE TABLE AS, UPDATE ... SET) it is `transformed`; in WHERE, JOIN ON
//! and USING (and NATURAL JOIN, see [`join_references`]), GROUP BY, HAVING,
//! ORDER BY, DISTINCT ON and window clauses it is `filter`, and so is an
//! output that ORDER BY, GROUP BY or DISTINCT ON name by position (`ORDER BY
//! 2`) or by alias (`email AS e … ORDER BY e`), and every output of a plain
//! `SELECT DISTINCT` (see [`output_references`]).
//!
//! A `*` (`t.*`, a whole row, a renamed column) stands for columns the parse
//! cannot name; [`expand_stars`] names them from the session's catalog where
//! it can. The `*` of `EXISTS (SELECT * …)` is no use at all: only whether a
//! row exists leaves the subquery.

use std::collections::{HashMap, HashSet};

use pg_query::NodeEnum;
use serde_json::{Map, Value};

use crate::pipeline::types::{ColumnRef, ColumnUsage, SqlStatement};

const FILTER_KEYS: [&str; 8] = [
    "where_clause",
    "having_clause",
    "sort_clause",
    "group_clause",
    "quals",
    "distinct_clause",
    "partition_clause",
    "order_clause",
];

/// Column references of one statement.
pub fn column_refs(node: &NodeEnum) -> Vec<ColumnRef> {
    let Ok(v) = serde_json::to_value(node) else { return Vec::new() };
    let mut relations = Scope::default();
    collect_relations(&v, &mut relations);
    let mut out = Vec::new();
    let Some((kind, body)) = v.as_object().and_then(|m| m.iter().next()) else { return out };
    // Statements whose inner query's rows go to the client as they are.
    let top = match kind.as_str() {
        "CopyStmt" | "DeclareCursorStmt" | "PrepareStmt" | "ExplainStmt" => body.get("query").and_then(unwrap_node),
        _ => Some((kind.as_str(), body)),
    };
    let outputs = match top {
        // SELECT ... INTO copies rows into a new table: not output.
        Some(("SelectStmt", sel))
            if sel.get("larg").is_none_or(Value::is_null) && sel.get("into_clause").is_none_or(Value::is_null) =>
        {
            Some((sel, "target_list"))
        }
        Some(("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt", dml)) => Some((dml, "returning_clause")),
        _ => None,
    };
    if let Some((stmt, key)) = outputs {
        let items = match key {
            "target_list" => stmt.get(key).and_then(Value::as_array).cloned().unwrap_or_default(),
            _ => stmt.get(key).and_then(|r| r.get("exprs")).and_then(Value::as_array).cloned().unwrap_or_default(),
        };
        for item in &items {
            let val = item.pointer("/node/ResTarget/val");
            match val.and_then(|v| v.pointer("/node/ColumnRef")) {
                Some(c) => record(c, ColumnUsage::Output, &relations, &mut out),
                None => walk(item, false, &relations, &mut out),
            }
        }
        if key == "target_list" {
            output_references(stmt, &relations, &mut out);
        }
        // Everything else in the statement (and around it, for COPY/DECLARE/...).
        let skip = stmt as *const Value;
        walk_except(&v, skip, key, &relations, &mut out);
    } else {
        walk(&v, false, &relations, &mut out);
    }
    out
}

fn unwrap_node(v: &Value) -> Option<(&str, &Value)> {
    v.get("node")?.as_object()?.iter().next().map(|(k, b)| (k.as_str(), b))
}

/// Walk `v`, but inside the object `skip` leave out its `key`.
fn walk_except(v: &Value, skip: *const Value, key: &str, rel: &Scope, out: &mut Vec<ColumnRef>) {
    match v {
        Value::Object(m) if std::ptr::eq(v, skip) => {
            for (k, child) in m {
                if k != key {
                    walk(child, FILTER_KEYS.contains(&k.as_str()), rel, out);
                }
            }
        }
        Value::Object(m) => {
            for child in m.values() {
                walk_except(child, skip, key, rel, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_except(x, skip, key, rel, out)),
        _ => {}
    }
}

fn walk(v: &Value, filter: bool, rel: &Scope, out: &mut Vec<ColumnRef>) {
    match v {
        Value::Object(m) => {
            if let Some(c) = m.get("ColumnRef") {
                record(c, if filter { ColumnUsage::Filter } else { ColumnUsage::Transformed }, rel, out);
                return;
            }
            if let Some(exists) = exists_without_stars(m) {
                return walk(&exists, filter, rel, out);
            }
            if let Some(select) = m.get("SelectStmt") {
                output_references(select, rel, out);
            }
            if let Some(join) = m.get("JoinExpr") {
                join_references(join, rel, out);
            }
            for (k, child) in m {
                walk(child, filter || FILTER_KEYS.contains(&k.as_str()), rel, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, filter, rel, out)),
        _ => {}
    }
}

/// `JOIN … USING (a, b)` and `NATURAL JOIN` compare columns that no
/// ColumnRef names: PostgreSQL keeps the rows whose values are equal, so
/// those columns are a filter (`customers JOIN (SELECT '123-45-6789' AS ssn)
/// x USING (ssn)` says whose SSN that is). USING names them. NATURAL joins by
/// every name the two sides share, which the parse cannot know: every column
/// of each table on either side counts ([`expand_stars`] names them from the
/// catalog). A subquery on a side needs nothing more: its own columns are
/// already listed, as transformed, where it reads them.
fn join_references(join: &Value, rel: &Scope, out: &mut Vec<ColumnRef>) {
    for name in join.get("using_clause").and_then(Value::as_array).into_iter().flatten() {
        record_fields(&[name.pointer("/node/String/sval").and_then(Value::as_str)], ColumnUsage::Filter, rel, out);
    }
    if join.get("is_natural").and_then(Value::as_bool) == Some(true) {
        let mut tables = Vec::new();
        for side in ["larg", "rarg"] {
            joined_tables(join.get(side), &mut tables);
        }
        out.extend(tables.into_iter().map(|t| ColumnRef {
            table: Some(t),
            column: "*".into(),
            usage: ColumnUsage::Filter,
        }));
    }
}

/// The tables a join's side reads directly: a table, or those of a join.
fn joined_tables(side: Option<&Value>, out: &mut Vec<String>) {
    match side.and_then(unwrap_node) {
        Some(("RangeVar", r)) => out.extend(r.as_object().map(qualified)),
        Some(("JoinExpr", j)) => ["larg", "rarg"].into_iter().for_each(|s| joined_tables(j.get(s), out)),
        _ => {}
    }
}

/// `SubLinkType::ExistsSublink` as the parse tree's serde form spells it.
const EXISTS_SUBLINK: i64 = 1;

/// Clauses that make a SELECT's rows depend on its outputs' values, which
/// ORDER BY, GROUP BY and DISTINCT ON may name by position (`DISTINCT ON
/// (6)`: how many distinct values, through a star, with `OFFSET`).
const BY_OUTPUTS: [&str; 4] = ["sort_clause", "group_clause", "distinct_clause", "window_clause"];

/// `m` is `EXISTS (SELECT *, … FROM … [WHERE …])`: a plain SELECT (no set
/// operation, no ORDER BY, GROUP BY, DISTINCT or window) with stars in its
/// target list; the same sublink without them. PostgreSQL only asks whether
/// the subquery yields a row, so a star carries nothing out; any other
/// target stays (a set-returning function there changes how many rows there
/// are), and so does everything else (WHERE, LIMIT, …).
fn exists_without_stars(m: &Map<String, Value>) -> Option<Value> {
    let link = m.get("SubLink")?;
    if link.get("sub_link_type").and_then(Value::as_i64) != Some(EXISTS_SUBLINK) {
        return None;
    }
    let select = link.pointer("/subselect/node/SelectStmt")?;
    let present =
        |key: &str| select.get(key).is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
    if present("larg") || BY_OUTPUTS.into_iter().any(present) {
        return None;
    }
    let targets = select.get("target_list").and_then(Value::as_array)?;
    let kept: Vec<Value> = targets.iter().filter(|t| !is_star(t)).cloned().collect();
    if kept.len() == targets.len() {
        return None;
    }
    let mut link = link.clone();
    if let Some(Value::Object(select)) = link.pointer_mut("/subselect/node/SelectStmt") {
        select.insert("target_list".into(), Value::Array(kept));
    }
    Some(Value::Object(Map::from_iter([("SubLink".to_string(), link)])))
}

/// A target list item that is `*` or `t.*`.
fn is_star(target: &Value) -> bool {
    target
        .pointer("/node/ResTarget/val/node/ColumnRef/fields")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x.pointer("/node/AStar").is_some()))
}

/// The items of a SELECT's ORDER BY, GROUP BY (also inside ROLLUP, CUBE and
/// GROUPING SETS) and DISTINCT ON, unwrapped to their expressions; and whether
/// it is a plain `SELECT DISTINCT`.
fn ordering_items(select: &Value) -> (Vec<&Value>, bool) {
    let mut plain_distinct = false;
    let mut todo: Vec<&Value> = Vec::new();
    for key in ["sort_clause", "group_clause", "distinct_clause"] {
        for item in select.get(key).and_then(Value::as_array).into_iter().flatten() {
            plain_distinct |= key == "distinct_clause" && item.get("node").is_some_and(Value::is_null);
            todo.push(item);
        }
    }
    let mut items = Vec::new();
    while let Some(item) = todo.pop() {
        let item = item.pointer("/node/SortBy/node").unwrap_or(item);
        match item.pointer("/node/GroupingSet/content").and_then(Value::as_array) {
            Some(content) => todo.extend(content),
            None => items.push(item),
        }
    }
    (items, plain_distinct)
}

/// An output position (`ORDER BY 2`): an integer constant standing alone.
fn position(item: &Value) -> Option<i64> {
    item.pointer("/node/AConst/val/Ival/ival").and_then(Value::as_i64)
}

/// Whether any SELECT in `node` names an output by position: its column
/// usage then depends on a constant's value, so its analysis must not be
/// shared with texts that differ from it only in constants.
pub fn names_outputs_by_position(node: &NodeEnum) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(m) => {
                m.get("SelectStmt").is_some_and(|s| ordering_items(s).0.into_iter().any(|i| position(i).is_some()))
                    || m.values().any(walk)
            }
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    // Unserializable (never seen): assume it does, so it is never shared.
    serde_json::to_value(node).map(|v| walk(&v)).unwrap_or(true)
}

/// ORDER BY, GROUP BY and DISTINCT ON may name an output column by its
/// position (`ORDER BY 2`) or its alias (`email AS e … ORDER BY e`):
/// PostgreSQL then sorts, groups or dedups rows by that output's expression,
/// so its columns are a filter too. A plain `SELECT DISTINCT` dedups by every
/// output. A position at or after a `*` cannot be resolved without the
/// catalog: the `*` and every output from it on count (fail closed:
/// `SELECT * … ORDER BY 1` filters by any of the table's columns).
fn output_references(select: &Value, rel: &Scope, out: &mut Vec<ColumnRef>) {
    let targets: Vec<&Value> = select.get("target_list").and_then(Value::as_array).into_iter().flatten().collect();
    let (items, plain_distinct) = ordering_items(select);
    let mut named: Vec<&Value> = if plain_distinct { targets.clone() } else { Vec::new() };
    for item in items {
        if let Some(n) = position(item) {
            let Some(at) = usize::try_from(n).ok().and_then(|n| n.checked_sub(1)) else { continue };
            match targets.iter().position(|t| is_star(t)) {
                Some(first_star) if at >= first_star => named.extend(targets[first_star..].iter().copied()),
                _ => named.extend(targets.get(at).copied()),
            }
            continue;
        }
        let fields = item.pointer("/node/ColumnRef/fields").and_then(Value::as_array);
        if let Some([name]) = fields.map(Vec::as_slice) {
            let name = name.pointer("/node/String/sval").and_then(Value::as_str);
            named.extend(
                targets
                    .iter()
                    .filter(|t| name.is_some() && t.pointer("/node/ResTarget/name").and_then(Value::as_str) == name),
            );
        }
    }
    for t in named {
        walk(t.pointer("/node/ResTarget/val").unwrap_or(&Value::Null), true, rel, out);
    }
}

/// The names a statement's FROM clauses give.
#[derive(Default)]
struct Scope {
    /// Every RangeVar: alias -> table and table -> table (schema-qualified when written so).
    tables: HashMap<String, String>,
    /// Aliases of joined tables (`(a JOIN b) AS j`, `JOIN b USING (id) AS j`):
    /// their columns may be any joined table's.
    joins: HashSet<String>,
    /// Names from column alias lists (`customers AS c(a, b, x)`, `(a JOIN b)
    /// AS j(x, y)`): they rename a column by position, so which column one
    /// stands for is unknown without the catalog. The table renamed (None: a join).
    renamed: HashMap<String, Option<String>>,
}

fn names(alias: Option<&Value>) -> impl Iterator<Item = &str> {
    alias
        .and_then(|a| a.get("colnames"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| n.pointer("/node/String/sval").and_then(Value::as_str))
}

fn alias_name(alias: Option<&Value>) -> Option<&str> {
    alias.and_then(|a| a.get("aliasname")).and_then(Value::as_str)
}

fn collect_relations(v: &Value, rel: &mut Scope) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("RangeVar").and_then(Value::as_object) {
                let name = qualified(r);
                if let Some(a) = alias_name(r.get("alias")) {
                    rel.tables.insert(a.to_string(), name.clone());
                }
                for c in names(r.get("alias")) {
                    rel.renamed.insert(c.to_string(), Some(name.clone()));
                }
                if let Some(t) = r.get("relname").and_then(Value::as_str) {
                    rel.tables.insert(t.to_string(), name);
                }
            }
            if let Some(j) = m.get("JoinExpr").and_then(Value::as_object) {
                for alias in [j.get("alias"), j.get("join_using_alias")] {
                    rel.joins.extend(alias_name(alias).map(str::to_string));
                    for c in names(alias) {
                        rel.renamed.insert(c.to_string(), None);
                    }
                }
            }
            m.values().for_each(|c| collect_relations(c, rel));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_relations(x, rel)),
        _ => {}
    }
}

fn qualified(r: &Map<String, Value>) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
    if s("schemaname").is_empty() {
        s("relname").to_string()
    } else {
        format!("{}.{}", s("schemaname"), s("relname"))
    }
}

/// Record a ColumnRef node.
fn record(c: &Value, usage: ColumnUsage, rel: &Scope, out: &mut Vec<ColumnRef>) {
    let fields: Vec<Option<&str>> = c
        .get("fields")
        .and_then(Value::as_array)
        .map(|f| f.iter().map(|x| x.pointer("/node/String/sval").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    record_fields(&fields, usage, rel, out);
}

/// Record the column these names (`col`, `t.col`, `s.t.col`; `None` for a
/// `*`) mean in this scope.
fn record_fields(fields: &[Option<&str>], usage: ColumnUsage, rel: &Scope, out: &mut Vec<ColumnRef>) {
    let whole_row = if usage == ColumnUsage::Output { ColumnUsage::Transformed } else { usage };
    // A renamed column could be any of its table's: `*`, as a whole row is.
    let column_named = |c: Option<&str>| match c {
        Some(c) if !rel.renamed.contains_key(c) => c.to_string(),
        _ => "*".to_string(),
    };
    let (table, column) = match fields {
        [] => return,
        // `t` alone naming a relation in this statement is a whole-row
        // reference: one composite value, whose fields no column rule can
        // follow, so never returned "as is".
        [Some(one)] if rel.tables.contains_key(*one) => {
            return out.push(ColumnRef { table: rel.tables.get(*one).cloned(), column: "*".into(), usage: whole_row });
        }
        [Some(one)] if rel.joins.contains(*one) => {
            return out.push(ColumnRef { table: None, column: "*".into(), usage: whole_row });
        }
        [Some(one)] if rel.renamed.contains_key(*one) => (rel.renamed[*one].clone(), "*".to_string()),
        [one] => (None, one.unwrap_or("*").to_string()),
        // A join's column: any joined table's.
        [Some(t), col] if rel.joins.contains(*t) => (None, column_named(*col)),
        [.., t, col] => {
            let t = t.unwrap_or_default();
            let table = if fields.len() >= 3 {
                let schema = fields[fields.len() - 3].unwrap_or_default();
                format!("{schema}.{t}")
            } else {
                rel.tables.get(t).cloned().unwrap_or_else(|| t.to_string())
            };
            (Some(table), column_named(*col))
        }
    };
    out.push(ColumnRef { table, column, usage });
}

/// Name the columns a `*` stands for, where the session's catalog knows them.
///
/// A star a statement uses other than as plain output (`SELECT DISTINCT *`,
/// `(SELECT * FROM t)`, a whole row, a renamed column) becomes one reference
/// per column of the tables it may come from, with the star's usage: for
/// `t.*`, every table the name `t` may mean (in any schema, when
/// unqualified); for a bare `*`, every table the statement reads or writes (a
/// superset of its FROM's; not the table or view a `CREATE TABLE … AS` or a
/// `CREATE VIEW` creates, which its query cannot read), and so for `s.*`
/// when `s` names a subquery or a CTE. `columns_of(table)` gives the columns of the tables a name may mean,
/// `None` when the catalog knows none by that name (a table created since the
/// catalog was read): a star over such a table stays `*`, which policies
/// take as any column. A bare star of a statement that names no table
/// (`SELECT DISTINCT * FROM generate_series(1, 3)`) stands for no table
/// column and is dropped: what a function in FROM returns is the function's,
/// not a table's (as for named columns, policies on columns do not follow
/// data through functions). Stars returned as plain output stay as they are:
/// maskers see those columns with their source.
pub fn expand_stars<'c>(statements: &mut [SqlStatement], columns_of: impl Fn(&str) -> Option<Vec<&'c str>>) {
    for s in statements {
        if !s.columns.iter().any(|c| c.column == "*" && c.usage != ColumnUsage::Output) {
            continue;
        }
        let mut expanded: Vec<ColumnRef> = Vec::with_capacity(s.columns.len());
        let mut seen: HashSet<(u8, String, &str)> = HashSet::new();
        for c in std::mem::take(&mut s.columns) {
            if c.column != "*" || c.usage == ColumnUsage::Output {
                expanded.push(c);
                continue;
            }
            let named = |t: &String| s.tables_read.contains(t) || s.tables_written.contains(t);
            // The table or view a CREATE TABLE … AS or a CREATE VIEW creates
            // (listed first) is no star's source.
            let created = usize::from(s.node == "CreateTableAsStmt" || s.node == "ViewStmt");
            let sources = || s.tables_read.iter().chain(s.tables_written.iter().skip(created));
            let known: Option<Vec<(&String, Vec<&str>)>> = match (&c.table, c.table.as_deref().map(&columns_of)) {
                (Some(t), Some(Some(columns))) => Some(vec![(t, columns)]),
                (Some(t), _) if named(t) => None,
                // Not a table: a subquery's or a CTE's name (whose own columns
                // are listed where it reads them), so the statement's tables.
                _ => sources().map(|t| Some((t, columns_of(t)?))).collect(),
            };
            let Some(known) = known else {
                expanded.push(c);
                continue;
            };
            for (table, columns) in known {
                for column in columns {
                    if seen.insert((c.usage as u8, table.clone(), column)) {
                        expanded.push(ColumnRef { table: Some(table.clone()), column: column.into(), usage: c.usage });
                    }
                }
            }
        }
        s.columns = expanded;
    }
}

/// List a view's column again as the column it stands for, with the same
/// usage: `sources_of(table, column)` gives the `(table, column)` a view's
/// column is a plain reference to (through views of views; none for a
/// table's column, or a view's computed one). So policies on `customers.ssn`
/// follow `SELECT upper(x) FROM v` where `v` is `SELECT ssn AS x FROM
/// customers`. An unqualified column may be any named table's.
pub fn add_view_sources(statements: &mut [SqlStatement], sources_of: impl Fn(&str, &str) -> Vec<(String, String)>) {
    for s in statements {
        let mut added: Vec<ColumnRef> = Vec::new();
        for c in &s.columns {
            if c.column == "*" {
                continue;
            }
            let tables: Vec<&String> = match &c.table {
                Some(t) => vec![t],
                None => s.tables_read.iter().chain(&s.tables_written).collect(),
            };
            for t in tables {
                for (table, column) in sources_of(t, &c.column) {
                    let r = ColumnRef { table: Some(table), column, usage: c.usage };
                    if !added.contains(&r) && !s.columns.contains(&r) {
                        added.push(r);
                    }
                }
            }
        }
        s.columns.extend(added);
    }
}
