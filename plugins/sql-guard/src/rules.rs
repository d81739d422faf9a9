//! The guard's rules, as plain Rust over host-parsed statements.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use wardgate_sdk::sql::{as_sql, is_unbounded_write, kind_from_name, kind_name};
use wardgate_sdk::types::{ColumnUsage, PrincipalKind, Request, Review, Session, SqlStatement, StatementKind, Verdict};

/// Rules for one connection (or the defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RuleSet {
    /// Statement kinds refused outright.
    #[serde(default = "default_deny")]
    pub deny: Vec<String>,
    /// Statement kinds that need a human's approval.
    #[serde(default = "default_review")]
    pub review: Vec<String>,
    /// Refuse `ALTER ... DROP ...` (columns, constraints).
    #[serde(default = "yes")]
    pub deny_alter_drop: bool,
    /// Refuse UPDATE/DELETE without WHERE.
    #[serde(default = "yes")]
    pub deny_unbounded_writes: bool,
    /// Refuse COPY ... FROM/TO PROGRAM.
    #[serde(default = "yes")]
    pub deny_copy_program: bool,
    /// Refuse COPY ... FROM/TO a file on the database server.
    #[serde(default = "yes")]
    pub deny_copy_server_file: bool,
    /// CREATE/ALTER of these object types needs review: code the guard cannot
    /// see into runs later (a function body, a trigger, a rule), or privileges change.
    #[serde(default = "default_review_object_types")]
    pub review_object_types: Vec<String>,
    /// Functions refused anywhere in a statement (file access, killing backends, ...).
    #[serde(default = "default_deny_functions")]
    pub deny_functions: Vec<String>,
    /// Tables whose writes need review.
    #[serde(default)]
    pub review_writes_to: Vec<String>,
    /// Groups that may approve reviews.
    #[serde(default)]
    pub approver_groups: Vec<String>,
    /// How long a review may wait, seconds (0 = connection default).
    #[serde(default)]
    pub review_timeout_secs: u32,
    /// Columns that may only be returned as they are, so maskers see them:
    /// `table.column`, `schema.table.column` or `*.column`. A statement that
    /// transforms one (`replace(email, ...)`, `substr(card, 1, 8)`, a subquery,
    /// INSERT ... SELECT) could carry its data past the maskers.
    #[serde(default)]
    pub protected_columns: Vec<String>,
    /// What to do when a protected column is transformed: deny (default), review or allow.
    #[serde(default = "deny_word")]
    pub protected_transform: String,
    /// What to do when a protected column filters or orders rows (WHERE, JOIN,
    /// ORDER BY: a guessing oracle): allow (default), review or deny.
    #[serde(default = "allow_word")]
    pub protected_filter: String,
    /// Principal kinds (`agent`, `service-account`, `human`) that may only read.
    #[serde(default)]
    pub read_only_kinds: Vec<String>,
    /// ... unless acting on behalf of a human (RFC 8693 `act` token or a sponsored key).
    #[serde(default)]
    pub sponsored_writes: bool,
}

fn deny_word() -> String {
    "deny".into()
}
fn allow_word() -> String {
    "allow".into()
}

fn yes() -> bool {
    true
}
fn default_deny() -> Vec<String> {
    ["drop", "truncate", "grant", "revoke"].map(String::from).to_vec()
}
fn default_review() -> Vec<String> {
    ["do-block", "call", "merge", "other"].map(String::from).to_vec()
}
fn default_review_object_types() -> Vec<String> {
    ["function", "procedure", "trigger", "rule", "extension", "language", "event-trigger", "role"]
        .map(String::from)
        .to_vec()
}
fn default_deny_functions() -> Vec<String> {
    [
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "dblink",
        "dblink_exec",
        "dblink_connect",
        "pg_file_write",
        // These run SQL given as a string, out of the guard's sight.
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        // Large objects bypass table permissions and masking (their bytes
        // reach clients as bytea, which detectors cannot read): the whole
        // family, including what libpq's and JDBC's large-object APIs call.
        "lo_get",
        "lo_put",
        "lo_from_bytea",
        "lo_unlink",
        "lo_open",
        "lo_close",
        "loread",
        "lowrite",
        "lo_lseek",
        "lo_lseek64",
        "lo_tell",
        "lo_tell64",
        "lo_truncate",
        "lo_truncate64",
        "lo_creat",
        "lo_create",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        // These run SQL given as a string too: ts_stat('SELECT ...') returns
        // the words of a query's result, ts_rewrite(query, 'SELECT ...') its
        // rows as a tsquery (its three-argument form is refused with it).
        "ts_stat",
        "ts_rewrite",
        // Other backends' statement texts, as pg_stat_activity.query (see
        // QUERY_TEXTS) but out of the protected-column rules' sight.
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for RuleSet {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

/// The manifest's `[config]` table: defaults plus per-connection overrides.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(flatten)]
    pub defaults: RuleSet,
    /// Rule sets that replace the defaults for named connections.
    #[serde(default)]
    pub connections: BTreeMap<String, RuleSet>,
}

/// Compiled rules.
#[derive(Debug, Clone)]
pub struct Compiled {
    deny: BTreeSet<String>,
    review: BTreeSet<String>,
    set: RuleSet,
    deny_functions: BTreeSet<String>,
}

/// The guard's whole policy.
#[derive(Debug, Clone)]
pub struct Guard {
    defaults: Compiled,
    connections: BTreeMap<String, Compiled>,
}

fn compile(set: RuleSet, at: &str) -> Result<Compiled, String> {
    for (key, v) in [("protected_transform", &set.protected_transform), ("protected_filter", &set.protected_filter)] {
        if !["allow", "review", "deny"].contains(&v.as_str()) {
            return Err(format!("sql-guard config: {at}: {key} = \"{v}\" must be allow, review or deny"));
        }
    }
    for p in &set.protected_columns {
        if p.split('.').count() < 2 || p.split('.').any(str::is_empty) {
            return Err(format!(
                "sql-guard config: {at}: protected_columns entry \"{p}\" must be \"table.column\", \"schema.table.column\" or \"*.column\""
            ));
        }
    }
    for k in set.deny.iter().chain(set.review.iter()) {
        if kind_from_name(k).is_none() {
            return Err(format!(
                "sql-guard config: {at}: unknown statement kind \"{k}\" (known: {})",
                wardgate_sdk::sql::ALL_KINDS.iter().map(|k| kind_name(*k)).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(Compiled {
        deny: set.deny.iter().cloned().collect(),
        review: set.review.iter().cloned().collect(),
        deny_functions: set.deny_functions.iter().map(|f| f.to_ascii_lowercase()).collect(),
        set,
    })
}

impl Guard {
    /// Build from the JSON config table.
    pub fn from_json(json: &str) -> Result<Guard, String> {
        let cfg: Config = serde_json::from_str(json).map_err(|e| format!("sql-guard config: {e}"))?;
        let defaults = compile(cfg.defaults, "defaults")?;
        let mut connections = BTreeMap::new();
        for (name, set) in cfg.connections {
            connections.insert(name.clone(), compile(set, &format!("connections.{name}"))?);
        }
        Ok(Guard { defaults, connections })
    }

    /// Decide on a request.
    pub fn check(&self, session: &Session, request: &Request) -> Verdict {
        let Some(sql) = as_sql(request) else {
            return Verdict::Allow; // not ours: SQL rules only
        };
        let rules = self.connections.get(&session.connection).unwrap_or(&self.defaults);
        if let Some(err) = &sql.parse_error {
            return review(rules, format!("the statement could not be parsed ({err}); a human must look at it"));
        }
        if let Some(why) = read_only(rules, session) {
            if let Some(stmt) = sql.statements.iter().find(|s| !is_read(s)) {
                return Verdict::Deny(format!("{why}; {} is not a read", kind_name(stmt.kind)));
            }
        }
        let mut first_review: Option<Verdict> = None;
        for stmt in &sql.statements {
            match judge(rules, stmt) {
                Verdict::Allow => {}
                v @ Verdict::Deny(_) => return v,
                v => {
                    first_review.get_or_insert(v);
                }
            }
        }
        first_review.unwrap_or(Verdict::Allow)
    }
}

/// Why this session may only read, if it may.
fn read_only(rules: &Compiled, session: &Session) -> Option<String> {
    let id = &session.identity;
    let kind = match id.principal.kind {
        PrincipalKind::Human => "human",
        PrincipalKind::Agent => "agent",
        PrincipalKind::ServiceAccount => "service-account",
    };
    if !rules.set.read_only_kinds.iter().any(|k| k == kind) {
        return None;
    }
    let sponsor = id.on_behalf_of.iter().find(|p| p.kind == PrincipalKind::Human);
    match sponsor {
        Some(_) if rules.set.sponsored_writes => None,
        Some(h) => Some(format!("{kind} {} acting for {} may only read here", id.principal.name, h.name)),
        None => Some(format!("{kind} {} may only read here unless it acts for a human", id.principal.name)),
    }
}

/// Statements that change nothing.
fn is_read(s: &SqlStatement) -> bool {
    use StatementKind as K;
    s.tables_written.is_empty()
        && matches!(s.kind, K::Select | K::CopyTo | K::Transaction | K::SessionSetting | K::Explain | K::Cursor)
}

fn bare(t: &str) -> &str {
    t.rsplit('.').next().unwrap_or(t)
}

fn touches_protected_table(rules: &Compiled, stmt: &SqlStatement) -> bool {
    rules
        .set
        .protected_columns
        .iter()
        .filter_map(|p| p.rsplit_once('.').map(|(t, _)| t))
        .any(|pt| stmt.tables_written.iter().any(|t| pt == "*" || t == pt || bare(t) == bare(pt)))
}

/// Statement texts of other sessions, which every gateway session can read
/// (they share the upstream role): their literals are data too, so where
/// columns are protected these are protected with them.
const QUERY_TEXTS: &[&str] = &["pg_stat_activity.query", "pg_stat_statements.query"];

/// PostgreSQL's planner statistics keep sampled values (most common values,
/// histogram bounds) of every analyzed column, protected ones included, in
/// rows no masker can attribute to the column they came from: the views'
/// columns that hold them (`*` reads them too; an empty list: every column).
const STATISTICS_SAMPLES: &[(&str, &[&str])] = &[
    ("pg_stats", &["most_common_vals", "histogram_bounds", "most_common_elems", "range_bounds_histogram", "*"]),
    ("pg_stats_ext", &["most_common_vals", "*"]),
    (
        "pg_stats_ext_exprs",
        &["most_common_vals", "histogram_bounds", "most_common_elems", "range_bounds_histogram", "*"],
    ),
    ("pg_statistic", &[]),
    ("pg_statistic_ext_data", &[]),
];

/// The first column of a statistics view holding sampled values that the
/// statement reads, in any way (`pg_stats.histogram_bounds`).
fn statistics_sample(rules: &Compiled, stmt: &SqlStatement) -> Option<String> {
    if rules.set.protected_columns.is_empty() {
        return None;
    }
    let samples = |rel: &str| STATISTICS_SAMPLES.iter().find(|(v, _)| *v == bare(rel)).map(|(v, cols)| (*v, *cols));
    stmt.columns.iter().find_map(|c| {
        let candidates: Vec<&str> = match &c.table {
            Some(t) => vec![t.as_str()],
            None => stmt.tables_read.iter().map(String::as_str).collect(),
        };
        candidates.into_iter().filter_map(samples).find_map(|(view, cols)| {
            (cols.is_empty() || cols.contains(&c.column.as_str())).then(|| format!("{view}.{}", c.column))
        })
    })
}

/// The first protected column the statement uses other than as plain output.
fn protected_use(rules: &Compiled, stmt: &SqlStatement) -> Option<(String, ColumnUsage)> {
    if rules.set.protected_columns.is_empty() {
        return None;
    }
    for c in stmt.columns.iter().filter(|c| c.usage != ColumnUsage::Output) {
        for p in rules.set.protected_columns.iter().map(String::as_str).chain(QUERY_TEXTS.iter().copied()) {
            let Some((ptable, pcol)) = p.rsplit_once('.') else { continue };
            if c.column != pcol && c.column != "*" {
                continue;
            }
            let table_match = ptable == "*"
                || match &c.table {
                    Some(t) => t == ptable || bare(t) == bare(ptable),
                    None => stmt
                        .tables_read
                        .iter()
                        .chain(stmt.tables_written.iter())
                        .any(|t| t == ptable || bare(t) == bare(ptable)),
                };
            if table_match {
                // Name the column itself; a wildcard rule says nothing about which one.
                let name = match (&c.table, ptable) {
                    (Some(t), _) => format!("{}.{}", bare(t), if c.column == "*" { pcol } else { &c.column }),
                    (None, "*") => pcol.to_string(),
                    (None, _) => p.to_string(),
                };
                let name = if c.column == "*" {
                    format!("{name} (read through *, a whole row or a renamed column)")
                } else {
                    name
                };
                return Some((name, c.usage));
            }
        }
    }
    None
}

fn review(rules: &Compiled, reason: String) -> Verdict {
    Verdict::Review(Review {
        reason,
        approver_groups: rules.set.approver_groups.clone(),
        timeout_secs: rules.set.review_timeout_secs,
    })
}

fn describe(stmt: &SqlStatement) -> String {
    let what = kind_name(stmt.kind).to_ascii_uppercase().replace('-', " ");
    let target = stmt.tables_written.first().or(stmt.tables_read.first());
    match (stmt.object_type.as_str(), target) {
        ("", Some(t)) => format!("{what} on {t}"),
        ("", None) => what,
        (o, Some(t)) => format!("{what} {} {t}", o.to_ascii_uppercase()),
        (o, None) => format!("{what} {}", o.to_ascii_uppercase()),
    }
}

fn judge(rules: &Compiled, stmt: &SqlStatement) -> Verdict {
    let kind = kind_name(stmt.kind);
    if stmt.copy_program && rules.set.deny_copy_program {
        return Verdict::Deny("COPY ... PROGRAM runs a shell command on the database server".into());
    }
    if stmt.copy_server_file && rules.set.deny_copy_server_file {
        return Verdict::Deny("COPY to or from a file on the database server is not allowed".into());
    }
    if let Some(f) = stmt.functions.iter().find(|f| {
        let bare = f.rsplit('.').next().unwrap_or(f).to_ascii_lowercase();
        rules.deny_functions.contains(&bare) || rules.deny_functions.contains(&f.to_ascii_lowercase())
    }) {
        return Verdict::Deny(format!("function {f}() is not allowed"));
    }
    if rules.deny.contains(kind) {
        return Verdict::Deny(format!("{} is not allowed", describe(stmt)));
    }
    if stmt.kind == StatementKind::Alter && stmt.alter_drops && rules.set.deny_alter_drop {
        return Verdict::Deny(format!("{} that drops a column or constraint is not allowed", describe(stmt)));
    }
    if is_unbounded_write(stmt) && rules.set.deny_unbounded_writes {
        return Verdict::Deny(format!("{} without a WHERE clause is not allowed", describe(stmt)));
    }
    if stmt.kind == StatementKind::Alter && touches_protected_table(rules, stmt) {
        // Renaming or retyping a protected column would move it out of the rules' reach.
        return review(rules, format!("{} changes a table with protected columns", describe(stmt)));
    }
    if let Some((col, usage)) = protected_use(rules, stmt) {
        let (action, what) = match usage {
            ColumnUsage::Filter => (
                rules.set.protected_filter.as_str(),
                "filters or orders rows by it (repeated filters would reveal the value)",
            ),
            _ => (rules.set.protected_transform.as_str(), "transforms or copies it"),
        };
        let reason = format!("{col} is protected: it may only be returned as it is (masked); this statement {what}");
        match action {
            "deny" => return Verdict::Deny(reason),
            "review" => return review(rules, reason),
            _ => {}
        }
    }
    if let Some(col) = statistics_sample(rules, stmt) {
        let reason = format!(
            "{col} holds sampled values of every analyzed column, protected ones included, that maskers cannot \
             attribute to their column; read its other columns (attname, null_frac, n_distinct, correlation)"
        );
        match rules.set.protected_transform.as_str() {
            "deny" => return Verdict::Deny(reason),
            "review" => return review(rules, reason),
            _ => {}
        }
    }
    if rules.review.contains(kind) {
        return review(rules, format!("{} needs approval", describe(stmt)));
    }
    if matches!(stmt.kind, StatementKind::Create | StatementKind::Alter)
        && rules.set.review_object_types.iter().any(|o| o == &stmt.object_type)
    {
        return review(rules, format!("{} needs approval", describe(stmt)));
    }
    if !rules.set.review_writes_to.is_empty()
        && stmt
            .tables_written
            .iter()
            .any(|t| rules.set.review_writes_to.iter().any(|p| p == t || t.rsplit('.').next() == Some(p.as_str())))
    {
        return review(rules, format!("{} writes a protected table", describe(stmt)));
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardgate_sdk::testkit::{session, sql, statement, unparsable};

    fn guard() -> Guard {
        Guard::from_json("{}").unwrap()
    }

    fn verdict(stmts: Vec<SqlStatement>) -> Verdict {
        guard().check(&session("prod"), &sql(stmts))
    }

    fn is_deny(v: &Verdict) -> bool {
        matches!(v, Verdict::Deny(_))
    }
    fn is_review(v: &Verdict) -> bool {
        matches!(v, Verdict::Review(_))
    }

    #[test]
    fn read_only_kinds_may_read_and_only_sponsored_agents_may_write() {
        let g = Guard::from_json(r#"{"read_only_kinds": ["agent"], "sponsored_writes": true}"#).unwrap();
        let mut upd = statement(StatementKind::Update, "UPDATE t SET a = 1 WHERE id = 1");
        upd.has_where = true;
        upd.tables_written = vec!["t".into()];
        let read = statement(StatementKind::Select, "SELECT 1");
        let lone = session("prod");
        assert_eq!(g.check(&lone, &sql(vec![read.clone()])), Verdict::Allow);
        let v = g.check(&lone, &sql(vec![read.clone(), upd.clone()]));
        assert!(matches!(&v, Verdict::Deny(r) if r.contains("agent test-agent may only read")), "{v:?}");
        let mut sponsored = session("prod");
        sponsored.identity.on_behalf_of = vec![wardgate_sdk::testkit::human("alice")];
        assert_eq!(g.check(&sponsored, &sql(vec![upd.clone()])), Verdict::Allow);
        let strict = Guard::from_json(r#"{"read_only_kinds": ["agent"]}"#).unwrap();
        let v = strict.check(&sponsored, &sql(vec![upd]));
        assert!(matches!(&v, Verdict::Deny(r) if r.contains("acting for alice")), "{v:?}");
        let mut human = session("prod");
        human.identity.principal = wardgate_sdk::testkit::human("bob");
        let mut del = statement(StatementKind::Delete, "DELETE FROM t WHERE id = 1");
        del.has_where = true;
        assert_eq!(strict.check(&human, &sql(vec![del])), Verdict::Allow);
    }

    #[test]
    fn drop_table_is_denied() {
        let mut s = statement(StatementKind::Drop, "DROP TABLE users");
        s.object_type = "table".into();
        s.tables_written = vec!["users".into()];
        let v = verdict(vec![s]);
        assert!(matches!(&v, Verdict::Deny(r) if r.contains("DROP TABLE users")), "{v:?}");
    }

    #[test]
    fn drop_behind_a_select_is_denied() {
        let v =
            verdict(vec![statement(StatementKind::Select, "SELECT 1"), statement(StatementKind::Drop, "DROP TABLE t")]);
        assert!(is_deny(&v));
    }

    #[test]
    fn delete_without_where_is_denied_but_with_where_allowed() {
        let mut d = statement(StatementKind::Delete, "DELETE FROM t");
        assert!(is_deny(&verdict(vec![d.clone()])));
        d.has_where = true;
        assert_eq!(verdict(vec![d]), Verdict::Allow);
    }

    #[test]
    fn truncate_grant_revoke_alter_drop_copy_program_are_denied() {
        for k in [StatementKind::Truncate, StatementKind::Grant, StatementKind::Revoke] {
            assert!(is_deny(&verdict(vec![statement(k, "x")])), "{k:?}");
        }
        let mut a = statement(StatementKind::Alter, "ALTER TABLE t DROP COLUMN c");
        a.alter_drops = true;
        assert!(is_deny(&verdict(vec![a])));
        let mut c = statement(StatementKind::CopyFrom, "COPY t FROM PROGRAM 'id'");
        c.copy_program = true;
        assert!(is_deny(&verdict(vec![c])));
        let mut f = statement(StatementKind::CopyTo, "COPY t TO '/tmp/x'");
        f.copy_server_file = true;
        assert!(is_deny(&verdict(vec![f])));
        let mut func = statement(StatementKind::Create, "CREATE FUNCTION f() ...");
        func.object_type = "function".into();
        assert!(is_review(&verdict(vec![func])));
        let mut table = statement(StatementKind::Create, "CREATE TABLE t (a int)");
        table.object_type = "table".into();
        assert_eq!(verdict(vec![table]), Verdict::Allow);
    }

    #[test]
    fn do_call_other_and_unparsable_go_to_review() {
        for k in [StatementKind::DoBlock, StatementKind::Call, StatementKind::Other] {
            assert!(is_review(&verdict(vec![statement(k, "x")])), "{k:?}");
        }
        assert!(is_review(&guard().check(&session("prod"), &unparsable("SELEC 1", "syntax error"))));
    }

    #[test]
    fn dangerous_functions_are_denied_even_schema_qualified() {
        let mut s = statement(StatementKind::Select, "SELECT pg_catalog.pg_read_file('/etc/passwd')");
        s.functions = vec!["pg_catalog.pg_read_file".into()];
        assert!(is_deny(&verdict(vec![s])));
    }

    #[test]
    fn per_connection_rules_replace_defaults() {
        let g =
            Guard::from_json(r#"{"connections":{"scratch":{"deny":[],"review":[],"deny_unbounded_writes":false}}}"#)
                .unwrap();
        let d = statement(StatementKind::Delete, "DELETE FROM t");
        assert_eq!(g.check(&session("scratch"), &sql(vec![d.clone()])), Verdict::Allow);
        assert!(is_deny(&g.check(&session("prod"), &sql(vec![d]))));
    }

    #[test]
    fn protected_columns_may_only_be_returned_as_they_are() {
        use wardgate_sdk::testkit::column;
        let g = Guard::from_json(r#"{"protected_columns":["customers.email","*.ssn"],"protected_filter":"review"}"#)
            .unwrap();
        let stmt = |cols: Vec<wardgate_sdk::types::ColumnRef>| {
            let mut s = statement(StatementKind::Select, "SELECT ...");
            s.tables_read = vec!["public.customers".into()];
            s.columns = cols;
            s
        };
        let check = |s| g.check(&session("prod"), &sql(vec![s]));
        assert_eq!(check(stmt(vec![column(None, "email", ColumnUsage::Output)])), Verdict::Allow);
        let v = check(stmt(vec![column(None, "email", ColumnUsage::Transformed)]));
        assert!(matches!(&v, Verdict::Deny(r) if r.contains("customers.email is protected")), "{v:?}");
        assert!(is_deny(&check(stmt(vec![column(Some("public.customers"), "*", ColumnUsage::Transformed)]))));
        assert!(is_deny(&check(stmt(vec![column(Some("people"), "ssn", ColumnUsage::Transformed)]))));
        assert!(is_review(&check(stmt(vec![column(None, "email", ColumnUsage::Filter)]))));
        assert_eq!(check(stmt(vec![column(Some("orders"), "email", ColumnUsage::Transformed)])), Verdict::Allow);
        let mut rename = statement(StatementKind::Alter, "ALTER TABLE customers RENAME COLUMN ssn TO x");
        rename.tables_written = vec!["customers".into()];
        assert!(is_review(&check(rename)));
        assert!(Guard::from_json(r#"{"protected_columns":["email"]}"#).unwrap_err().contains("table.column"));
        assert!(Guard::from_json(r#"{"protected_filter":"maybe"}"#).unwrap_err().contains("protected_filter"));
    }

    #[test]
    fn statistics_samples_and_query_texts_are_protected_with_the_columns() {
        use wardgate_sdk::testkit::column;
        let g = Guard::from_json(r#"{"protected_columns":["customers.ssn"]}"#).unwrap();
        let stmt = |table: &str, cols: Vec<wardgate_sdk::types::ColumnRef>| {
            let mut s = statement(StatementKind::Select, "SELECT ...");
            s.tables_read = vec![table.into()];
            s.columns = cols;
            s
        };
        let check = |s| g.check(&session("prod"), &sql(vec![s]));
        // Sampled values: refused however they are read, a plain read included
        // (column rules cannot apply to them).
        let v = check(stmt("pg_catalog.pg_stats", vec![column(None, "histogram_bounds", ColumnUsage::Transformed)]));
        assert!(
            matches!(&v, Verdict::Deny(r) if r.contains("pg_stats.histogram_bounds holds sampled values")),
            "{v:?}"
        );
        assert!(is_deny(&check(stmt("pg_stats", vec![column(None, "most_common_vals", ColumnUsage::Output)]))));
        assert!(is_deny(&check(stmt("pg_stats", vec![column(Some("pg_stats"), "*", ColumnUsage::Output)]))));
        assert!(is_deny(&check(stmt("pg_statistic", vec![column(None, "starelid", ColumnUsage::Output)]))));
        // Its other columns, and the same names elsewhere, are fine.
        assert_eq!(check(stmt("pg_stats", vec![column(None, "n_distinct", ColumnUsage::Output)])), Verdict::Allow);
        assert_eq!(
            check(stmt("my_stats", vec![column(None, "histogram_bounds", ColumnUsage::Output)])),
            Verdict::Allow
        );
        // Other sessions' statement texts may only be returned as they are.
        assert_eq!(check(stmt("pg_stat_activity", vec![column(None, "query", ColumnUsage::Output)])), Verdict::Allow);
        let v = check(stmt("pg_catalog.pg_stat_activity", vec![column(None, "query", ColumnUsage::Transformed)]));
        assert!(matches!(&v, Verdict::Deny(r) if r.contains("pg_stat_activity.query is protected")), "{v:?}");
        // Functions that run SQL given as text, or read other backends' texts.
        for f in ["ts_stat", "pg_catalog.ts_rewrite", "pg_stat_get_backend_activity"] {
            let mut s = stmt("customers", vec![]);
            s.functions = vec![f.into()];
            assert!(is_deny(&guard().check(&session("prod"), &sql(vec![s]))), "{f}");
        }
        // Without protected columns the views are not special.
        let open = Guard::from_json("{}").unwrap();
        let s = stmt("pg_stats", vec![column(None, "histogram_bounds", ColumnUsage::Transformed)]);
        assert_eq!(open.check(&session("prod"), &sql(vec![s])), Verdict::Allow);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = Guard::from_json(r#"{"deny":["dorp"]}"#).unwrap_err();
        assert!(e.contains("dorp") && e.contains("defaults"), "{e}");
        let e = Guard::from_json(r#"{"connections":{"x":{"review":["nope"]}}}"#).unwrap_err();
        assert!(e.contains("connections.x"), "{e}");
    }
}
