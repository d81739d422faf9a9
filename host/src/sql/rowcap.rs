//! A connection's cap on the rows one UPDATE or DELETE may change.
//!
//! A static reading of a WHERE cannot tell `WHERE id > 0` (every row, as the
//! data stands) from `WHERE id > 90` (a few): only the data can. So, when a
//! connection sets `max_rows_written`, every UPDATE and DELETE that would run
//! goes upstream with a check in its WHERE that PostgreSQL evaluates in the
//! statement's own snapshot, before the statement changes anything it keeps:
//!
//! ```sql
//! DELETE FROM orders WHERE(id > 0) AND (SELECT CASE
//!     WHEN c.n > 20 THEN ('wardgate-row-cap:' || c.n)::int4
//!     WHEN c.n > 1 AND NOT EXISTS (SELECT 1 FROM orders WHERE (id > 0) IS NOT TRUE)
//!         THEN ('wardgate-every-row:' || c.n)::int4
//!     ELSE 1 END
//!   FROM (SELECT count(*) AS n FROM (SELECT 1 FROM orders WHERE id > 0 LIMIT 21) m) c) = 1
//! ```
//!
//! (a sketch: in the text sent, every function, operator and type of the
//! check is written `pg_catalog.`-qualified, so nothing on the search path can
//! stand in for them).
//!
//! Over the cap, or matching every row of a table that has more than one, the
//! cast fails, the statement fails as a whole (nothing is changed; in a
//! transaction block the transaction is aborted, as by any error) and the
//! relay turns that error into the gateway's own refusal ([`refusal`]). The
//! counting stops at the cap (`LIMIT`), and the every-row test at the first
//! row the WHERE keeps out, so a statement that touches a few rows pays two
//! small lookups. The statement's other text is kept byte for byte: only the
//! WHERE is wrapped (or added, for the no-WHERE writes a guard allowed), and
//! what was inserted is kept ([`Inserted`]) so that an error's position is
//! told to the client in its own text.
//!
//! A write whose WHERE pins a column that the session's catalog read says
//! is alone a unique key (`WHERE id = 5 AND …`) changes one row at most, so
//! it gets a cheaper check instead, evaluated once when it runs: the name
//! resolves to the table the catalog read described, and that table's
//! unique index still has the column of that name as its key. The catalog
//! read is from the session's start: a temporary view of the same name
//! created since, or renamed columns, would otherwise let `WHERE id = 5`
//! change many rows. If the check fails the statement fails too (nothing is
//! changed), the client is told to run it again, and from then on the
//! session's writes get the full count. A new inheritance child would add
//! its rows to its parent's writes: creating one (`INHERITS`, `INHERIT`;
//! partitions are fine, their unique indexes hold across them) is refused
//! while the cap applies.
//!
//! An UPDATE or DELETE that cannot be capped this way — inside a WITH, a rule
//! or another statement — is refused while the cap applies: fail closed.
//! `WHERE CURRENT OF` changes one row and is left as it is; `EXPLAIN` without
//! `ANALYZE` runs nothing and is left too.

use pg_query::protobuf::{self, Token};
use pg_query::{NodeEnum, NodeRef};

use crate::pipeline::types::{SqlStatement, StatementKind};

/// `(table, column)` -> `(table OID, index OID)` for every table the name may
/// mean, when `column` alone is the key of a unique index in each of them;
/// empty otherwise.
pub type UniqueKeys<'a> = &'a dyn Fn(&str, &str) -> Vec<(u32, u32)>;

/// What [`cap_writes`] made of a text.
#[derive(Debug, PartialEq, Eq)]
pub enum Capped {
    /// No UPDATE or DELETE runs: send the text as it is.
    Unchanged,
    /// Send this text instead; what it inserted into the client's text.
    Rewritten(String, Inserted),
    /// Refuse the request, for this reason, with this hint.
    Refused(String, &'static str),
}

/// Where a rewrite inserted text into the client's: `(character offset in
/// the client's text, characters inserted)`, in order. PostgreSQL reports an
/// error's position in the text it ran; the client must see it in its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted(Vec<(usize, usize)>);

impl Inserted {
    /// Nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The 1-based character position in the client's text of `position` in
    /// the text that ran. A position inside inserted text (an error in the
    /// check itself) is given as the place of the insertion.
    pub fn original_position(&self, position: usize) -> usize {
        let p = position.saturating_sub(1);
        let mut shift = 0;
        for &(at, len) in &self.0 {
            if p < at + shift {
                break;
            }
            if p < at + shift + len {
                return at + 1;
            }
            shift += len;
        }
        p - shift + 1
    }
}

/// The hint for a write the cap cannot reach where it stands.
const ON_ITS_OWN: &str = "run the UPDATE or DELETE as a statement of its own";

const OVER_CAP: &str = "wardgate-row-cap:";
const EVERY_ROW: &str = "wardgate-every-row:";
const KEY_CHANGED: &str = "wardgate-key-changed:";

/// Wrap the WHERE of every UPDATE and DELETE in `text` so that PostgreSQL
/// refuses one that would change more than `max` rows, or every row of a
/// table with more than one. A write whose WHERE is `col = constant` (or
/// `$n`) AND anything, where `unique_key(table, col)` says `col` alone is a
/// unique key of the table as the statement names it, changes one row at
/// most: its WHERE gets the cheaper check that this is still so.
pub fn cap_writes(text: &str, max: u64, unique_key: UniqueKeys<'_>) -> Capped {
    let Ok(parsed) = super::parser_guarded(|| pg_query::parse(text, 0).map_err(|e| e.to_string())) else {
        // Not PostgreSQL's grammar as this parser knows it: the guards saw the
        // parse error (sql-guard routes unparsable SQL to review).
        return Capped::Unchanged;
    };
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    // (byte offset in `text`, characters inserted there)
    let mut inserted: Vec<(usize, usize)> = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else { continue };
        let start = raw.stmt_location.max(0) as usize;
        let end = if raw.stmt_len > 0 { start + raw.stmt_len as usize } else { text.len() };
        let Some(segment) = text.get(start..end) else { return Capped::Unchanged };
        let (write, explain_only) = top_write(node, unique_key);
        if explain_only {
            continue;
        }
        let writes = match nested_writes(node, max) {
            Ok(writes) => writes,
            Err((why, hint)) => return Capped::Refused(why, hint),
        };
        if writes > usize::from(write.is_some()) {
            return Capped::Refused(
                "an UPDATE or DELETE inside another statement (a WITH query, a rule) cannot be held to this \
                 connection's max_rows_written"
                    .into(),
                ON_ITS_OWN,
            );
        }
        let Some(write) = write else { continue };
        match wrap(segment, &write, max) {
            Ok(Some(Wrapped { range, replacement, inserts })) => {
                edits.push(((start + range.start)..(start + range.end), replacement));
                inserted.extend(inserts.into_iter().map(|(at, len)| (start + at, len)));
            }
            Ok(None) => {}
            Err(why) => return Capped::Refused(why, ON_ITS_OWN),
        }
    }
    if edits.is_empty() {
        return Capped::Unchanged;
    }
    let mut out = text.to_string();
    for (range, replacement) in edits.into_iter().rev() {
        out.replace_range(range, &replacement);
    }
    let inserted = inserted.into_iter().map(|(at, len)| (text[..at].chars().count(), len)).collect();
    Capped::Rewritten(out, Inserted(inserted))
}

/// Whether statements analysed as these (nested ones are listed too, see
/// [`super::analyze`]) may hold anything [`cap_writes`] changes or refuses:
/// an UPDATE, DELETE, upsert, MERGE, or a CREATE (a rule's actions are not
/// listed), ALTER or unclassified statement.
pub fn may_write(statements: &[SqlStatement]) -> bool {
    statements.is_empty()
        || statements.iter().any(|s| {
            matches!(
                s.kind,
                StatementKind::Insert
                    | StatementKind::Update
                    | StatementKind::Delete
                    | StatementKind::Merge
                    | StatementKind::Create
                    | StatementKind::Alter
                    | StatementKind::Other
            )
        })
}

/// Why a capped statement failed because of its cap (see [`refusal`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It would change more than the cap.
    OverCap,
    /// It would change every row of its table, which has this many.
    EveryRow(u64),
    /// Its unique key no longer makes it a one-row write: the table its
    /// name resolves to changed since the session's catalog read.
    KeyChanged,
}

impl Refusal {
    /// The gateway's message to the client, for a cap of `max` rows.
    pub fn message(&self, max: u64) -> String {
        match self {
            Refusal::OverCap => format!(
                "Wardgate: this statement would change more than {max} rows (max_rows_written): refused, nothing \
                 was changed"
            ),
            Refusal::EveryRow(n) => format!(
                "Wardgate: this statement would change every row of its table ({n} rows): a WHERE that keeps every \
                 row is refused like no WHERE; nothing was changed"
            ),
            Refusal::KeyChanged => "Wardgate: the table this statement writes is not the one this session began \
                                    with (what its name means, or its unique key, changed), so its WHERE may no \
                                    longer pin one row: refused, nothing was changed"
                .to_string(),
        }
    }

    /// What the client can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Refusal::KeyChanged => "run it again: this session's writes are now counted in full (max_rows_written)",
            _ => "narrow the WHERE, or change the rows in smaller batches",
        }
    }
}

/// Whether a capped statement failed because of its cap, and how: `None`
/// for any other error. `message` is the upstream's.
pub fn refusal(message: &str) -> Option<Refusal> {
    // The message quotes the text the cast failed on, in any server language.
    let marked = |marker: &str| -> Option<u64> {
        let at = message.find(marker)? + marker.len();
        let digits = &message[at..];
        let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
        digits[..end].parse().ok()
    };
    if marked(OVER_CAP).is_some() {
        return Some(Refusal::OverCap);
    }
    if message.contains(KEY_CHANGED) {
        return Some(Refusal::KeyChanged);
    }
    marked(EVERY_ROW).map(Refusal::EveryRow)
}

/// One walk over `node`, itself included (and the actions of a rule and the
/// elements of a CREATE SCHEMA, which `nodes()` does not descend into): how
/// many UPDATE and DELETE statements it holds, or why it cannot run under a
/// cap of `max` rows (an upsert that may update more, or a new inheritance
/// child, which would add its rows to its parent's writes).
fn nested_writes(node: &NodeEnum, max: u64) -> Result<usize, (String, &'static str)> {
    let inheritance = || {
        let why = "table inheritance (INHERITS, ALTER TABLE … INHERIT) cannot be created on a connection with \
                   max_rows_written: writes to the parent would reach the child's rows";
        (why.to_string(), "partition the table instead (PARTITION OF), or create the child where no cap applies")
    };
    let add_inherit = protobuf::AlterTableType::AtAddInherit as i32;
    let adds_inherit =
        |c: &protobuf::Node| matches!(&c.node, Some(NodeEnum::AlterTableCmd(c)) if c.subtype == add_inherit);
    let mut writes = 0;
    for (n, _, _, _) in node.nodes() {
        let inner: &[protobuf::Node] = match n {
            NodeRef::DeleteStmt(_) | NodeRef::UpdateStmt(_) => {
                writes += 1;
                continue;
            }
            NodeRef::InsertStmt(i) => match unbounded_upsert(i, max) {
                Some(why) => return Err((why, "list the rows with VALUES, a batch within the cap, or use UPDATE")),
                None => continue,
            },
            NodeRef::CreateStmt(c) if !c.inh_relations.is_empty() && c.partbound.is_none() => return Err(inheritance()),
            NodeRef::AlterTableStmt(a) if a.cmds.iter().any(adds_inherit) => return Err(inheritance()),
            NodeRef::RuleStmt(r) => &r.actions,
            NodeRef::CreateSchemaStmt(c) => &c.schema_elts,
            _ => continue,
        };
        for n in inner.iter().filter_map(|n| n.node.as_ref()) {
            writes += nested_writes(n, max)?;
        }
    }
    Ok(writes)
}

/// Why an `INSERT … ON CONFLICT DO UPDATE` may change more than `max` rows:
/// a `VALUES` list longer than that, or rows from a query (any number of
/// them, each of which may update an existing row).
fn unbounded_upsert(i: &protobuf::InsertStmt, max: u64) -> Option<String> {
    let updates =
        i.on_conflict_clause.as_ref().is_some_and(|c| c.action == protobuf::OnConflictAction::OnconflictUpdate as i32);
    if !updates {
        return None;
    }
    match i.select_stmt.as_ref().and_then(|s| s.node.as_ref()) {
        None => None,
        Some(NodeEnum::SelectStmt(s)) if !s.values_lists.is_empty() => (s.values_lists.len() as u64 > max).then(|| {
            format!(
                "this INSERT … ON CONFLICT DO UPDATE lists {} rows, each of which may update one: more than this \
                 connection's max_rows_written ({max})",
                s.values_lists.len()
            )
        }),
        Some(_) => Some(
            "an INSERT … SELECT … ON CONFLICT DO UPDATE may update any number of rows: it cannot be held to this \
             connection's max_rows_written (list the rows with VALUES, or use UPDATE)"
                .into(),
        ),
    }
}

/// The UPDATE or DELETE a top-level statement runs, if any, and whether the
/// statement only explains one (`EXPLAIN` without `ANALYZE`).
fn top_write(node: &NodeEnum, unique_key: UniqueKeys<'_>) -> (Option<Write>, bool) {
    let of = |n: &NodeEnum| Write::of(n, unique_key);
    match node {
        NodeEnum::DeleteStmt(_) | NodeEnum::UpdateStmt(_) => (of(node), false),
        NodeEnum::PrepareStmt(p) => (p.query.as_ref().and_then(|q| q.node.as_ref()).and_then(of), false),
        NodeEnum::ExplainStmt(e) => {
            let inner = e.query.as_ref().and_then(|q| q.node.as_ref()).and_then(of);
            if explain_analyzes(e) {
                (inner, false)
            } else {
                (None, inner.is_some())
            }
        }
        _ => (None, false),
    }
}

/// `EXPLAIN ANALYZE …`, `EXPLAIN (ANALYZE) …`, `EXPLAIN (ANALYZE true) …`.
fn explain_analyzes(e: &protobuf::ExplainStmt) -> bool {
    e.options.iter().any(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
                None => true,
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::String(s)) => {
                    !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0" | "no")
                }
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                Some(_) => true,
            }
        }
        _ => false,
    })
}

/// What the rewrite needs to know of one UPDATE or DELETE.
struct Write {
    update: bool,
    /// `UPDATE … FROM` / `DELETE … USING` items.
    joins: bool,
    /// Its WHERE, if any.
    has_where: bool,
    /// `WHERE CURRENT OF cursor`.
    current_of: bool,
    /// Its WHERE pins this unique key to one value: one row at most.
    pinned: Option<Pin>,
}

/// The unique key a write's WHERE pins.
struct Pin {
    /// The written table's name as `regclass` input (each part a quoted
    /// identifier), so that it resolves as the statement's own name does.
    table: String,
    /// The key's column.
    column: String,
    /// (table OID, unique index OID) of every table the name may mean.
    indexes: Vec<(u32, u32)>,
}

impl Write {
    fn of(node: &NodeEnum, unique_key: UniqueKeys<'_>) -> Option<Write> {
        let (update, joins, relation, where_clause) = match node {
            NodeEnum::DeleteStmt(d) => {
                (false, !d.using_clause.is_empty(), d.relation.as_ref(), d.where_clause.as_deref())
            }
            NodeEnum::UpdateStmt(u) => {
                (true, !u.from_clause.is_empty(), u.relation.as_ref(), u.where_clause.as_deref())
            }
            _ => return None,
        };
        let where_node = where_clause.and_then(|w| w.node.as_ref());
        Some(Write {
            update,
            joins,
            has_where: where_clause.is_some(),
            current_of: matches!(where_node, Some(NodeEnum::CurrentOfExpr(_))),
            pinned: relation.zip(where_node).and_then(|(r, w)| {
                let (column, indexes) = pins_a_unique_key(r, w, unique_key)?;
                let parts = [&r.catalogname, &r.schemaname, &r.relname];
                let quoted: Vec<String> =
                    parts.iter().filter(|p| !p.is_empty()).map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect();
                Some(Pin { table: quoted.join("."), column, indexes })
            }),
        })
    }
}

/// `WHERE key = constant [AND …]` (either side, `$n` or a cast constant
/// too), `key` a column of the written table that `unique_key` says is a
/// unique key of it on its own, named bare or by the table's alias or name.
/// Only the plain `=` (an operator of that name elsewhere on the search path
/// would need CREATE OPERATOR, which sql-guard sends to review). The key's
/// column and its indexes (see [`UniqueKeys`]), if one is pinned.
fn pins_a_unique_key(
    relation: &protobuf::RangeVar,
    where_clause: &NodeEnum,
    unique_key: UniqueKeys<'_>,
) -> Option<(String, Vec<(u32, u32)>)> {
    let table = super::relname(relation);
    let called = relation.alias.as_ref().map_or(relation.relname.as_str(), |a| a.aliasname.as_str());
    let column = |n: &NodeEnum| -> Option<String> {
        let NodeEnum::ColumnRef(c) = n else { return None };
        let names: Vec<&str> = c
            .fields
            .iter()
            .map(|f| match &f.node {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        match names.as_slice() {
            [col] => Some(col.to_string()),
            [qualifier, col] if *qualifier == called => Some(col.to_string()),
            _ => None,
        }
    };
    fn constant(n: &NodeEnum) -> bool {
        match n {
            NodeEnum::AConst(c) => !c.isnull,
            NodeEnum::ParamRef(_) => true,
            NodeEnum::TypeCast(t) => t.arg.as_ref().and_then(|a| a.node.as_ref()).is_some_and(constant),
            _ => false,
        }
    }
    let conjuncts: Vec<&NodeEnum> = match where_clause {
        NodeEnum::BoolExpr(b) if b.boolop == protobuf::BoolExprType::AndExpr as i32 => {
            b.args.iter().filter_map(|a| a.node.as_ref()).collect()
        }
        other => vec![other],
    };
    conjuncts.into_iter().find_map(|c| {
        let NodeEnum::AExpr(e) = c else { return None };
        let plain_equals =
            matches!(e.name.as_slice(), [op] if matches!(&op.node, Some(NodeEnum::String(s)) if s.sval == "="));
        if e.kind != protobuf::AExprKind::AexprOp as i32 || !plain_equals {
            return None;
        }
        let l = e.lexpr.as_ref().and_then(|n| n.node.as_ref())?;
        let r = e.rexpr.as_ref().and_then(|n| n.node.as_ref())?;
        let pinned = |col: &NodeEnum, value: &NodeEnum| {
            let col = column(col).filter(|_| constant(value))?;
            let indexes = unique_key(&table, &col);
            (!indexes.is_empty()).then_some((col, indexes))
        };
        pinned(l, r).or_else(|| pinned(r, l))
    })
}

/// One token of a statement's text, with its parenthesis depth.
struct Tok {
    kind: Option<Token>,
    start: usize,
    end: usize,
    depth: usize,
}

/// A WHERE wrapped: `range` of the segment becomes `replacement`, which
/// inserts `(byte offset in the segment, characters)` into it (the rest of
/// the replacement stands, character for character, where the range stood).
struct Wrapped {
    range: std::ops::Range<usize>,
    replacement: String,
    inserts: Vec<(usize, usize)>,
}

/// The edit that caps `write` inside `segment` (one statement's text).
/// `None`: nothing to cap.
fn wrap(segment: &str, write: &Write, max: u64) -> Result<Option<Wrapped>, String> {
    if write.current_of {
        return Ok(None);
    }
    let unreadable =
        || "this UPDATE or DELETE could not be held to max_rows_written (its text did not scan)".to_string();
    let scanned = pg_query::scan(segment).map_err(|_| unreadable())?;
    let mut toks = Vec::with_capacity(scanned.tokens.len());
    let mut depth = 0usize;
    for t in &scanned.tokens {
        let kind = Token::try_from(t.token).ok();
        let (start, end) = (t.start.max(0) as usize, (t.end.max(0) as usize).min(segment.len()));
        if matches!(kind, Some(Token::SqlComment | Token::CComment)) {
            continue;
        }
        if matches!(kind, Some(Token::Ascii41 | Token::Ascii93)) {
            depth = depth.saturating_sub(1);
        }
        toks.push(Tok { kind, start, end, depth });
        if matches!(kind, Some(Token::Ascii40 | Token::Ascii91)) {
            depth += 1;
        }
    }
    let top = |from: usize, k: Token| {
        toks.iter().enumerate().skip(from).find(|(_, t)| t.depth == 0 && t.kind == Some(k)).map(|(i, _)| i)
    };
    let verb = top(0, if write.update { Token::Update } else { Token::DeleteP }).ok_or_else(unreadable)?;
    // The target: `UPDATE <target> SET`, `DELETE FROM <target> [USING|WHERE|RETURNING]`.
    let (target_from, target_end) = if write.update {
        (verb + 1, top(verb + 1, Token::Set).ok_or_else(unreadable)?)
    } else {
        let from = top(verb + 1, Token::From).ok_or_else(unreadable)?;
        let end = toks
            .iter()
            .enumerate()
            .skip(from + 1)
            .find(|(_, t)| t.depth == 0 && matches!(t.kind, Some(Token::Using | Token::Where | Token::Returning)))
            .map_or(toks.len(), |(i, _)| i);
        (from + 1, end)
    };
    let returning = top(target_end, Token::Returning);
    let clause_end = returning.unwrap_or(toks.len());
    let where_at = if write.has_where { Some(top(target_end, Token::Where).ok_or_else(unreadable)?) } else { None };
    // The joined items: `UPDATE … SET … FROM <items>` (not the FROM of an
    // `IS DISTINCT FROM` in a SET), `DELETE … USING <items>`.
    let joins = if write.joins {
        let opener = if write.update {
            (target_end + 1..where_at.unwrap_or(clause_end)).find(|&i| {
                toks[i].depth == 0 && toks[i].kind == Some(Token::From) && toks[i - 1].kind != Some(Token::Distinct)
            })
        } else {
            top(target_end, Token::Using)
        };
        let opener = opener.ok_or_else(unreadable)?;
        Some(span(segment, &toks, opener + 1, where_at.unwrap_or(clause_end)).ok_or_else(unreadable)?)
    } else {
        None
    };
    let target = span(segment, &toks, target_from, target_end).ok_or_else(unreadable)?;
    let (range, cond) = match where_at {
        Some(w) => {
            let cond_range = range_of(&toks, w + 1, clause_end).ok_or_else(unreadable)?;
            let cond = segment[cond_range.clone()].to_string();
            // `WHERE id > 0` becomes `WHERE(id > 0) AND …`: the opening
            // parenthesis takes the place of the blank, so an error in the
            // condition points where the client's text has it.
            let blank =
                cond_range.start > toks[w].end && segment.as_bytes()[cond_range.start - 1].is_ascii_whitespace();
            (if blank { cond_range.start - 1..cond_range.end } else { cond_range }, cond)
        }
        // No WHERE (a guard allowed it): one goes in before RETURNING, or at the end.
        None => {
            let at = toks[..clause_end].last().map_or(segment.len(), |t| t.end);
            (at..at, "true".to_string())
        }
    };
    let check = match &write.pinned {
        Some(pin) => key_check(pin),
        None => count_check(target, joins, &cond, max),
    };
    let (replacement, inserts) = if where_at.is_some() {
        let tail = format!(") AND {check}");
        let mut inserts = Vec::with_capacity(2);
        if range.len() == cond.len() {
            // No blank took the parenthesis: it is inserted too.
            inserts.push((range.start, 1));
        }
        inserts.push((range.end, tail.chars().count()));
        (format!("({cond}{tail}"), inserts)
    } else {
        let added = format!(" WHERE {check}");
        let inserts = vec![(range.start, added.chars().count())];
        (added, inserts)
    };
    Ok(Some(Wrapped { range, replacement, inserts }))
}

/// Every name a check adds is pg_catalog's, written out: a function or
/// operator of the same name earlier on the search_path cannot stand in.
const GT: &str = "OPERATOR(pg_catalog.>)";
const EQ: &str = "OPERATOR(pg_catalog.=)";
const CAT: &str = "OPERATOR(pg_catalog.||)";

/// The check of a write whose WHERE is `cond`: fewer than `max` rows of
/// `target` (joined with `joins`, if any), and not every row of a table
/// with more than one.
fn count_check(target: &str, joins: Option<&str>, cond: &str, max: u64) -> String {
    let from = match joins {
        Some(items) => format!("{target}, {items}"),
        None => target.to_string(),
    };
    // The every-row test reads the target alone: with joined items the WHERE
    // may name them, and the count of the join is what the cap holds.
    let (gt, cat) = (GT, CAT);
    let every_row = if joins.is_none() {
        format!(
            " WHEN wardgate_c.n {gt} 1::pg_catalog.int8 AND NOT EXISTS (SELECT 1 FROM {target} WHERE ({cond}) IS NOT \
             TRUE) THEN ('{EVERY_ROW}'::pg_catalog.text {cat} wardgate_c.n)::pg_catalog.int4"
        )
    } else {
        String::new()
    };
    format!(
        "(SELECT CASE WHEN wardgate_c.n {gt} {max}::pg_catalog.int8 THEN ('{OVER_CAP}'::pg_catalog.text {cat} \
         wardgate_c.n)::pg_catalog.int4{every_row} ELSE 1 END FROM (SELECT pg_catalog.count(*) AS n FROM (SELECT 1 \
         FROM {from} WHERE {cond} LIMIT {limit}) AS wardgate_m) AS wardgate_c) {EQ} 1",
        limit = max.saturating_add(1),
    )
}

/// The check of a write pinned to one row by `pin`: the table its name
/// resolves to is one the catalog read described, and the unique index the
/// read found on it still has the column of that name as its key. The name
/// is resolved when the statement is parsed, as the statement's own is; the
/// index is read once when it runs (an InitPlan), not per row.
fn key_check(pin: &Pin) -> String {
    let literal = |s: &str| s.replace('\'', "''");
    let (table, column) = (literal(&pin.table), literal(&pin.column));
    let arms: String =
        pin.indexes.iter().map(|(t, i)| format!(" WHEN {t}::pg_catalog.oid THEN {i}::pg_catalog.oid")).collect();
    let key =
        format!("pg_catalog.pg_get_indexdef(CASE '{table}'::pg_catalog.regclass::pg_catalog.oid{arms} END, 1, true)");
    format!(
        "(SELECT CASE WHEN {key} {EQ} pg_catalog.quote_ident('{column}') THEN 1 ELSE ('{KEY_CHANGED}'::\
         pg_catalog.text {CAT} COALESCE({key}, '-'))::pg_catalog.int4 END) {EQ} 1"
    )
}

/// The byte range from token `from` to the end of token `to - 1`.
fn range_of(toks: &[Tok], from: usize, to: usize) -> Option<std::ops::Range<usize>> {
    (from < to && to <= toks.len()).then(|| toks[from].start..toks[to - 1].end)
}

/// The text of tokens `from..to` (comments between them included).
fn span<'a>(segment: &'a str, toks: &[Tok], from: usize, to: usize) -> Option<&'a str> {
    segment.get(range_of(toks, from, to)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_keys(_: &str, _: &str) -> Vec<(u32, u32)> {
        Vec::new()
    }

    fn rewritten(text: &str) -> String {
        match cap_writes(text, 20, &no_keys) {
            Capped::Rewritten(t, _) => t,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn wraps_the_where_of_updates_and_deletes() {
        let t = rewritten("DELETE FROM orders WHERE id > 0");
        assert!(t.starts_with("DELETE FROM orders WHERE(id > 0) AND (SELECT CASE WHEN wardgate_c.n OPERATOR"), "{t}");
        assert!(!t.contains(" > 20") && !t.contains(" count(") && !t.contains(" || "), "{t}");
        assert!(t.contains("NOT EXISTS (SELECT 1 FROM orders WHERE (id > 0) IS NOT TRUE)"), "{t}");
        assert!(t.contains("(SELECT 1 FROM orders WHERE id > 0 LIMIT 21)"), "{t}");
        assert!(pg_query::parse(&t, 0).is_ok(), "{t}");
        let t =
            rewritten("update public.orders AS o set status = 'x' where o.status is distinct from 'y' returning o.id");
        assert!(
            t.starts_with(
                "update public.orders AS o set status = 'x' where(o.status is distinct from 'y') AND (SELECT"
            ),
            "{t}"
        );
        assert!(t.contains("FROM public.orders AS o WHERE (o.status is distinct from 'y') IS NOT TRUE"), "{t}");
        assert!(t.ends_with(") OPERATOR(pg_catalog.=) 1 returning o.id"), "{t}");
        assert!(pg_query::parse(&t, 0).is_ok(), "{t}");
    }

    #[test]
    fn joins_are_counted_with_their_items() {
        let t = rewritten(
            "UPDATE orders SET total = total IS DISTINCT FROM NULL FROM customers c WHERE c.id = customer_id",
        );
        assert!(t.contains("FROM orders, customers c WHERE c.id = customer_id LIMIT 21"), "{t}");
        assert!(!t.contains("NOT EXISTS"), "{t}");
        let t =
            rewritten("DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND c.name = $1 RETURNING *");
        assert!(t.contains("FROM orders o, customers c WHERE c.id = o.customer_id AND c.name = $1 LIMIT 21"), "{t}");
        assert!(t.ends_with(" RETURNING *"), "{t}");
        assert!(pg_query::parse(&t, 0).is_ok(), "{t}");
    }

    /// 1-based character position of `needle` in `text`, as PostgreSQL reports one.
    fn position(text: &str, needle: &str) -> usize {
        text[..text.find(needle).unwrap_or_else(|| panic!("{needle} in {text}"))].chars().count() + 1
    }

    #[test]
    fn error_positions_map_back_to_the_clients_text() {
        let keys = |table: &str, column: &str| match (table, column) {
            ("t", "id") => vec![(1, 2)],
            _ => Vec::new(),
        };
        for text in [
            "UPDATE t SET a = 'é' WHERE a = 'ü' RETURNING zzz",
            "UPDATE t SET a = 'é' WHERE(a = 'ü') RETURNING zzz",
            "UPDATE t SET a = 'é' RETURNING zzz",
            "DELETE FROM t WHERE id = 1 RETURNING zzz",
            "DELETE FROM t WHERE a > 'ß'; /* ö */ UPDATE t SET a = 1 WHERE(b = 'ø') RETURNING zzz",
        ] {
            let Capped::Rewritten(sent, inserted) = cap_writes(text, 20, &keys) else { panic!("{text}") };
            assert_eq!(inserted.original_position(position(&sent, "zzz")), position(text, "zzz"), "{sent}");
            // What stands before the first insertion is where it was; the check itself maps to its place.
            assert_eq!(inserted.original_position(1), 1);
            assert_eq!(inserted.original_position(position(&sent, "t ")), position(text, "t "));
            let in_check = position(&sent, "pg_catalog");
            assert!(inserted.original_position(in_check) <= position(text, "zzz"), "{sent}");
        }
        assert_eq!(Inserted::default().original_position(7), 7);
    }

    #[test]
    fn several_statements_comments_and_no_where() {
        let t = rewritten("select 1; /* a */ delete from t where a = 1 -- trailing\n; UPDATE t SET a = 2 RETURNING a");
        assert!(t.starts_with("select 1; /* a */ delete from t where(a = 1) AND (SELECT"), "{t}");
        // Without a blank the condition moves by the parenthesis.
        assert!(rewritten("DELETE FROM t WHERE(a = 1)").starts_with("DELETE FROM t WHERE((a = 1)) AND (SELECT"));
        assert!(t.contains(") OPERATOR(pg_catalog.=) 1 -- trailing\n; UPDATE t SET a = 2 WHERE (SELECT CASE"), "{t}");
        assert!(t.contains("FROM (SELECT 1 FROM t WHERE true LIMIT 21)"), "{t}");
        assert!(t.ends_with(") OPERATOR(pg_catalog.=) 1 RETURNING a"), "{t}");
        assert_eq!(pg_query::parse(&t, 0).map(|p| p.protobuf.stmts.len()).ok(), Some(3), "{t}");
    }

    #[test]
    fn explain_prepare_and_what_cannot_be_capped() {
        assert!(rewritten("EXPLAIN (ANALYZE, COSTS off) DELETE FROM t WHERE a > 0").contains("AND (SELECT CASE"));
        assert!(rewritten("PREPARE p (int) AS UPDATE t SET a = $1 WHERE b > $1").contains("WHERE b > $1 LIMIT 21"));
        assert_eq!(cap_writes("EXPLAIN DELETE FROM t WHERE a > 0", 20, &no_keys), Capped::Unchanged);
        assert_eq!(cap_writes("SELECT * FROM t; INSERT INTO t VALUES (1)", 20, &no_keys), Capped::Unchanged);
        assert_eq!(cap_writes("DELETE FROM t WHERE CURRENT OF c", 20, &no_keys), Capped::Unchanged);
        for nested in [
            "WITH d AS (DELETE FROM t WHERE a > 0 RETURNING *) SELECT * FROM d",
            "WITH u AS (UPDATE t SET a = 1 WHERE a > 0 RETURNING a) DELETE FROM s WHERE b = 1",
            "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM s",
        ] {
            assert!(matches!(cap_writes(nested, 20, &no_keys), Capped::Refused(..)), "{nested}");
        }
        // Upserts: a VALUES list within the cap runs as it is; longer, or from a query, is refused.
        let upsert = |rows: usize| {
            let values = vec!["(1, 'a')"; rows].join(", ");
            cap_writes(
                &format!("INSERT INTO t VALUES {values} ON CONFLICT (id) DO UPDATE SET v = excluded.v"),
                20,
                &no_keys,
            )
        };
        assert_eq!(upsert(20), Capped::Unchanged);
        assert!(matches!(upsert(21), Capped::Refused(r, _) if r.contains("lists 21 rows")));
        let from_query = "INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET v = 'x'";
        assert!(
            matches!(cap_writes(from_query, 20, &no_keys), Capped::Refused(r, _) if r.contains("any number of rows"))
        );
        let nothing = "INSERT INTO t SELECT * FROM s ON CONFLICT DO NOTHING";
        assert_eq!(cap_writes(nothing, 20, &no_keys), Capped::Unchanged);
        // A new inheritance child would add its rows to its parent's writes.
        for inherits in [
            "CREATE TABLE c (x int) INHERITS (t)",
            "ALTER TABLE c INHERIT t",
            "CREATE SCHEMA s CREATE TABLE c () INHERITS (public.t)",
        ] {
            let refused = cap_writes(inherits, 20, &no_keys);
            assert!(matches!(&refused, Capped::Refused(r, h) if r.contains("inheritance") && h.contains("PARTITION")));
        }
        for fine in
            ["CREATE TABLE c PARTITION OF t FOR VALUES IN (1)", "ALTER TABLE c NO INHERIT t", "CREATE TABLE c (x int)"]
        {
            assert_eq!(cap_writes(fine, 20, &no_keys), Capped::Unchanged, "{fine}");
        }
    }

    #[test]
    fn only_texts_that_may_write_are_parsed_again() {
        let kinds =
            |text: &str| super::super::analyze(text, crate::pipeline::types::SqlPhase::SimpleQuery, "").statements;
        for reads in ["SELECT * FROM t WHERE a > 0", "BEGIN; SHOW search_path; COMMIT", "EXPLAIN SELECT 1"] {
            assert!(!may_write(&kinds(reads)), "{reads}");
        }
        for writes in [
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
            "EXPLAIN ANALYZE UPDATE t SET a = 1",
            "PREPARE p AS DELETE FROM t WHERE a = $1",
            "COPY (DELETE FROM t RETURNING *) TO STDOUT",
            "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM s",
            "INSERT INTO t SELECT * FROM s ON CONFLICT (id) DO UPDATE SET v = 1",
            "ALTER TABLE c INHERIT t",
            "SELEC 1",
        ] {
            assert!(may_write(&kinds(writes)), "{writes}");
        }
    }

    #[test]
    fn a_write_pinned_to_one_row_by_a_unique_key_gets_the_key_check() {
        let keys = |table: &str, column: &str| match (table, column) {
            ("orders" | "public.orders", "id") => vec![(16384, 16390)],
            ("Odd\"Name", "I'd") => vec![(1, 2), (3, 4)],
            _ => Vec::new(),
        };
        let key_checked = |text: &str, table: &str, column: &str| match cap_writes(text, 20, &keys) {
            Capped::Rewritten(t, _) => {
                assert!(
                    t.contains(&format!("pg_get_indexdef(CASE '{table}'::pg_catalog.regclass::pg_catalog.oid WHEN"))
                );
                assert!(
                    t.contains(&format!("OPERATOR(pg_catalog.=) pg_catalog.quote_ident('{column}') THEN 1")),
                    "{t}"
                );
                assert!(!t.contains("count("), "{t}");
                assert!(pg_query::parse(&t, 0).is_ok(), "{t}");
                t
            }
            other => panic!("{text}: {other:?}"),
        };
        for pinned in [
            "DELETE FROM orders WHERE id = 5",
            "UPDATE orders SET status = 'x' WHERE status = 'y' AND $1 = id RETURNING id",
            "UPDATE orders SET status = 'x' WHERE orders.id = $2::bigint",
        ] {
            key_checked(pinned, "\"orders\"", "id");
        }
        let t = key_checked(
            "DELETE FROM public.orders o WHERE o.id = '5'::int AND o.status <> 'x'",
            "\"public\".\"orders\"",
            "id",
        );
        assert!(t.starts_with("DELETE FROM public.orders o WHERE(o.id = '5'::int AND o.status <> 'x') AND (SELECT"));
        let t = key_checked("DELETE FROM \"Odd\"\"Name\" WHERE \"I'd\" = 1", "\"Odd\"\"Name\"", "I''d");
        assert!(t.contains(
            "WHEN 1::pg_catalog.oid THEN 2::pg_catalog.oid WHEN 3::pg_catalog.oid THEN 4::pg_catalog.oid END"
        ));
        let t = key_checked("DELETE FROM orders WHERE id = 5", "\"orders\"", "id");
        let arm = "WHEN 16384::pg_catalog.oid THEN 16390::pg_catalog.oid END, 1, true)";
        assert!(t.contains(&format!("{arm} OPERATOR(pg_catalog.=) pg_catalog.quote_ident('id')")), "{t}");
        for capped in [
            "DELETE FROM orders WHERE id > 5",
            "DELETE FROM \"Orders\" WHERE id = 5",
            "DELETE FROM orders WHERE id = 5 OR status = 'x'",
            "DELETE FROM orders WHERE id = NULL OR true",
            "DELETE FROM orders WHERE customer_id = 5",
            "DELETE FROM orders o WHERE orders.id = 5",
            "DELETE FROM orders WHERE id = id",
            "DELETE FROM orders WHERE id = 5 + customer_id",
            "DELETE FROM orders WHERE id OPERATOR(public.=) 5",
            "DELETE FROM other WHERE id = 5",
        ] {
            assert!(
                matches!(cap_writes(capped, 20, &keys), Capped::Rewritten(t, _) if t.contains("count(")),
                "{capped}"
            );
        }
    }

    #[test]
    fn refusals_are_read_from_the_cast_error_only() {
        let over = refusal("invalid input syntax for type integer: \"wardgate-row-cap:21\"").unwrap();
        assert!(over.message(20).contains("more than 20 rows"), "{over:?}");
        let every = refusal("invalid input syntax for type integer: \"wardgate-every-row:199\"").unwrap();
        assert!(every.message(20).contains("every row of its table (199 rows)"), "{every:?}");
        assert_eq!(refusal("invalid input syntax for type integer: \"abc\""), None);
        let german = "ungültige Eingabesyntax für Typ integer: »wardgate-every-row:7«";
        assert_eq!(refusal(german), Some(Refusal::EveryRow(7)));
        assert_eq!(refusal("invalid input syntax for type integer: \"wardgate-row-cap:x\""), None);
        let changed = refusal("invalid input syntax for type integer: \"wardgate-key-changed:false\"").unwrap();
        assert_eq!(changed, Refusal::KeyChanged);
        assert!(changed.hint().contains("run it again"));
    }
}
