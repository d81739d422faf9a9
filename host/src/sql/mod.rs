//! SQL analysis with PostgreSQL's own grammar (libpg_query via `pg_query`).
//!
//! Every Query and Parse message is analysed here once, and guards receive the
//! result: one entry per statement with its kind, tables, functions and WHERE
//! presence. Comments, case and quoting are resolved by the real parser, so
//! `/* x */ dRoP/**/TABLE "Users"` is a DROP of `Users`. Data-changing
//! statements nested inside others (a DELETE in a CTE, EXPLAIN ANALYZE UPDATE,
//! PREPARE ... AS DELETE) are surfaced as statements of their own so a guard
//! cannot be walked around. A WHERE that is trivially true (`WHERE true`,
//! `WHERE 1=1`, `WHERE p OR NOT p`; see [`truth`]) counts as no WHERE.

use std::collections::HashMap;
use std::sync::Arc;

pub mod columns;
pub mod credentials;
pub mod fingerprint;
pub mod prepared;
pub mod rowcap;
pub mod truth;

use parking_lot::Mutex;
use pg_query::protobuf::{self, AlterTableType, ObjectType};
use pg_query::{Node, NodeEnum, NodeRef};

#[cfg(test)]
use crate::pipeline::types::ColumnUsage;
use crate::pipeline::types::{SqlPhase, SqlRequest, SqlStatement, StatementKind};

const CACHE_CAP: usize = 4096;

/// The manifest name of a statement kind (`drop`, `do-block`, ...), derived
/// once per kind from the contract's names (it is on every request's path).
pub fn kind_name(kind: StatementKind) -> &'static str {
    // The binding is a one-byte enum, so its discriminant indexes the table.
    const _: () = assert!(std::mem::size_of::<StatementKind>() == 1);
    static NAMES: [std::sync::OnceLock<&'static str>; 256] = [const { std::sync::OnceLock::new() }; 256];
    // One leaked string per kind the contract declares: bounded.
    NAMES[kind as usize].get_or_init(|| Box::leak(enum_name(&kind).into_boxed_str()))
}

/// The kebab-case name of a contract enum value (`Agent` -> `agent`, `DoBlock` -> `do-block`).
pub fn enum_name(v: &impl std::fmt::Debug) -> String {
    let dbg = format!("{v:?}");
    kebab(dbg.rsplit("::").next().unwrap_or(&dbg))
}

/// Parse `text` and describe its statements. Never panics; a text the parser
/// rejects comes back with `parse_error` set and no statements.
pub fn analyze(text: &str, phase: SqlPhase, statement_name: &str) -> SqlRequest {
    analyze_checked(text, phase, statement_name).0
}

/// [`analyze`], plus why the host itself refuses the text (see
/// [`host_violation`]), from the same cached analysis.
pub fn analyze_checked(text: &str, phase: SqlPhase, statement_name: &str) -> (SqlRequest, Option<String>) {
    // An analysis nobody else holds (not cached) is moved, not copied.
    let analysis = Arc::try_unwrap(analyze_cached(text)).unwrap_or_else(|shared| (*shared).clone());
    request_from(analysis, text, phase, statement_name)
}

/// [`analyze_checked`] without any cache: what the caches must agree with
/// (for tests and fuzzing).
#[doc(hidden)]
pub fn analyze_checked_uncached(text: &str, phase: SqlPhase, statement_name: &str) -> (SqlRequest, Option<String>) {
    let analysis = parser_guarded(|| analyze_uncached(text).map(|(a, _, _)| a));
    request_from(analysis, text, phase, statement_name)
}

/// Run the parser; a panic inside it is an error on this input, not a crash.
fn parser_guarded<T>(f: impl FnOnce() -> Result<T, String> + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).unwrap_or_else(|_| Err("the SQL parser failed on this input".to_string()))
}

fn request_from(
    analysis: Result<Analyzed, String>,
    text: &str,
    phase: SqlPhase,
    statement_name: &str,
) -> (SqlRequest, Option<String>) {
    let (statements, parse_error, violation) = match analysis {
        Ok(a) => (a.statements, None, a.violation),
        Err(e) => (Vec::new(), Some(e), None),
    };
    let request = SqlRequest {
        text: text.to_string(),
        statements,
        parse_error,
        phase,
        statement_name: statement_name.to_string(),
    };
    (request, violation)
}

/// Settings whose change would make PostgreSQL read later queries differently
/// from the parser the gateway uses (string escapes, byte encoding). The host
/// refuses to change them, whatever the plugins say.
pub const PINNED_SETTINGS: [&str; 3] = ["standard_conforming_strings", "client_encoding", "names"];

/// The values the gateway pins them to, as sent in its startup packet
/// upstream (which makes them the session's reset values).
pub const PINNED_VALUES: [(&str, &str); 2] = [("client_encoding", "UTF8"), ("standard_conforming_strings", "on")];

/// Why the host itself refuses `text`, independent of plugins: it would change
/// a pinned setting. Uses the same cached parse as [`analyze`].
pub fn host_violation(text: &str) -> Option<String> {
    match &*analyze_cached(text) {
        Ok(a) => a.violation.clone(),
        Err(_) => None,
    }
}

/// A DELETE or UPDATE whose WHERE only null-tests columns such that it
/// keeps every row once some of them are declared NOT NULL (`WHERE id IS
/// NOT NULL`): the schema decides, which the protocol layer knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NullReliance {
    /// Index of the statement in the request's `statements`.
    pub statement: usize,
    /// The target table as written (`t` or `schema.t`).
    pub table: String,
    /// Its WHERE, to be decided against the table's NOT NULL columns.
    pub tests: truth::NullTests,
}

/// PostgreSQL's system columns: every table has them, they are never NULL,
/// and no user column may take their names.
const SYSTEM_COLUMNS: [&str; 6] = ["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// The WHERE presence of the request's statements under the schema
/// `not_null(table, column)` describes: each statement a [`NullReliance`]
/// names is given `has_where = false` when its WHERE keeps every row once
/// those columns (and the system columns, `ctid IS NOT NULL`) are NOT NULL.
/// Uses the same cached parse as [`analyze`]; costs nothing unless a DELETE
/// or UPDATE has a WHERE.
pub fn apply_not_null(request: &mut SqlRequest, not_null: impl Fn(&str, &str) -> bool) {
    use StatementKind as K;
    if !request.statements.iter().any(|s| s.has_where && matches!(s.kind, K::Delete | K::Update)) {
        return;
    }
    for r in &null_reliance(&request.text) {
        if r.tests.trivial_given(|column| SYSTEM_COLUMNS.contains(&column) || not_null(&r.table, column)) {
            if let Some(s) = request.statements.get_mut(r.statement) {
                s.has_where = false;
            }
        }
    }
}

/// The [`NullReliance`]s of `text`'s statements, from the cached analysis.
pub fn null_reliance(text: &str) -> Vec<NullReliance> {
    match &*analyze_cached(text) {
        Ok(a) => a.reliance.clone(),
        Err(_) => Vec::new(),
    }
}

/// [`null_reliance`] without any cache (for fuzzing).
#[doc(hidden)]
pub fn null_reliance_uncached(text: &str) -> Vec<NullReliance> {
    parser_guarded(|| analyze_uncached(text).map(|(a, _, _)| a.reliance)).unwrap_or_default()
}

#[derive(Clone)]
struct Analyzed {
    statements: Vec<SqlStatement>,
    violation: Option<String>,
    reliance: Vec<NullReliance>,
    /// A constant decides the outcome, so no template may serve the text: a
    /// SELECT names an output by position (`ORDER BY 2`: which column it
    /// filters by), or a WHERE's pattern was read (`name LIKE '%'`).
    constant_matters: bool,
}

/// What the WHERE clauses of a text's statements told.
#[derive(Default)]
struct WhereFacts {
    reliance: Vec<NullReliance>,
    pattern_read: bool,
}

type Analysis = Arc<Result<Analyzed, String>>;

fn analyze_cached(text: &str) -> Analysis {
    static CACHE: Mutex<Option<HashMap<String, Analysis>>> = Mutex::new(None);
    if let Some(hit) = CACHE.lock().as_ref().and_then(|c| c.get(text).cloned()) {
        return hit;
    }
    let outcome = parser_guarded(|| analyze_by_shape(text));
    // A text the literal-key template answered is answered as fast again
    // without this cache: storing it (texts that differ only in constants
    // are all different) would only evict the texts that needed the parser.
    // A rejected text is not stored either: the parser's error can depend on
    // the call as well as the text ("stack depth limit exceeded" measures the
    // calling thread's stack), and a stored one would refuse the text again
    // where a new parse accepts it; parsing it again costs what any new text does.
    let cacheable = matches!(outcome, Ok((_, Served::Lexer)));
    let result: Analysis = Arc::new(outcome.map(|(a, _)| a));
    if cacheable && text.len() <= 16 * 1024 {
        let mut guard = CACHE.lock();
        let cache = guard.get_or_insert_with(HashMap::new);
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(text.to_string(), result.clone());
    }
    result
}

/// The analysis of a token stream with its constants abstracted: what every
/// text with the same tokens (only other literal values) parses to.
struct Template {
    /// (top-level statement index, statement with its text left empty)
    entries: Vec<(usize, SqlStatement)>,
    tops: usize,
    violation: Option<String>,
    reliance: Vec<NullReliance>,
}

/// A cache key from PostgreSQL's own lexer: every token's text, except
/// constants, which contribute only their kind (no key for a text with
/// comments or `U&` strings, see below). The
/// grammar sees only the token stream, so texts with equal keys parse to the
/// same statements (kinds, tables, functions, WHERE). With
/// `standard_conforming_strings` pinned on (see [`PINNED_SETTINGS`]), this
/// lexer reads text exactly as the server does. Also returns the byte ranges
/// of top-level statements (see [`Segments`]).
fn shape_key(text: &str) -> Option<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    use protobuf::Token;
    let scanned = pg_query::scan(text).ok()?;
    let mut key = Vec::with_capacity(text.len());
    let mut segments = Segments::default();
    for t in &scanned.tokens {
        let (start, end) = (t.start.max(0) as usize, (t.end.max(0) as usize).min(text.len()));
        let kind = Token::try_from(t.token).ok()?;
        match kind {
            // Whether a comment belongs to a statement's text follows rules of
            // the parser's own (a leading one does not, a trailing one does);
            // U& escapes are checked after scanning (an invalid one fails the
            // parse, not the scan). Either way: no shape.
            Token::SqlComment | Token::CComment | Token::Usconst | Token::Uident => return None,
            Token::Ascii59 => {
                segments.semicolon(start);
                key.extend_from_slice(b";\0");
                continue;
            }
            Token::Iconst | Token::Fconst | Token::Sconst | Token::Bconst | Token::Xconst => {
                key.push(0xff);
                key.extend_from_slice(&t.token.to_le_bytes());
            }
            _ => key.extend_from_slice(text.get(start..end)?.as_bytes()),
        }
        key.push(0);
        segments.token();
    }
    Some((key, segments.finish(text.len())))
}

/// The byte ranges of a text's top-level statements as PostgreSQL's parser
/// delimits them: from just after the previous `;` (or the start) to just
/// before the next (or the end); only those holding a token (the parser
/// drops empty statements). Used trimmed, as the parser's statement texts
/// are (the keys above exist only for texts without comments).
#[derive(Default)]
struct Segments {
    ranges: Vec<std::ops::Range<usize>>,
    start: usize,
    has_token: bool,
}

impl Segments {
    fn token(&mut self) {
        self.has_token = true;
    }

    fn semicolon(&mut self, at: usize) {
        if std::mem::take(&mut self.has_token) {
            self.ranges.push(self.start..at);
        }
        self.start = at + 1;
    }

    fn finish(mut self, len: usize) -> Vec<std::ops::Range<usize>> {
        if self.has_token {
            self.ranges.push(self.start..len);
        }
        self.ranges
    }
}

/// A cheaper key than [`shape_key`] for the texts most requests are: ASCII
/// outside string literals, no comments, no quoted identifiers, no `$`
/// (parameters, dollar quotes), no backslash, and no string prefix (`E'…'`,
/// `B'…'`, `U&'…'`, …). In that alphabet PostgreSQL's lexer has only one way to read
/// a plain string literal (quotes doubled inside; `standard_conforming_strings`
/// is pinned on) and a decimal integer standing alone (not touching a letter,
/// digit, `_`, `$` or `.`), so replacing exactly those by their kind (an
/// integer's class: int4, or numeric when it overflows, as the lexer decides)
/// gives texts that differ only in constants equal keys, and any two texts
/// with equal keys have equal [`shape_key`]s. Everything else is kept byte
/// for byte. `None` means "use the real lexer". Also returns the byte ranges
/// of top-level statements, as [`shape_key`] does.
fn literal_key(text: &str) -> Option<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let mut key = Vec::with_capacity(b.len());
    let mut segments = Segments::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b'\'' => {
                if i > 0 && (word(b[i - 1]) || b[i - 1] == b'&') {
                    // E'…', B'…', X'…', N'…', U&'…' (escapes checked after
                    // scanning), or a name touching a string
                    return None;
                }
                i += 1;
                loop {
                    match *b.get(i)? {
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                key.push(2);
            }
            b'0'..=b'9' if i == 0 || !(word(b[i - 1]) || b[i - 1] == b'.') => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i < b.len() && (word(b[i]) || b[i] == b'.') {
                    key.extend_from_slice(&b[start..i]); // part of a real, a junk-suffixed or non-decimal number
                } else {
                    let digits = text[start..i].trim_start_matches('0');
                    let int4 = digits.len() <= 10 && digits.parse::<u64>().unwrap_or(u64::MAX) <= i32::MAX as u64;
                    key.extend_from_slice(&[1, if int4 { b'I' } else { b'F' }]);
                }
            }
            b';' => {
                segments.semicolon(i);
                key.push(b';');
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                key.push(c);
                i += 1;
                continue;
            }
            b'"' | b'$' | b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            0x21..=0x7e => {
                key.push(c);
                i += 1;
            }
            _ => return None,
        }
        segments.token();
    }
    Some((key, segments.finish(b.len())))
}

/// Texts whose [`literal_key`] was seen, with the template their
/// [`shape_key`] gave.
static LITERAL_SHAPES: Mutex<Option<HashMap<Vec<u8>, Arc<Template>>>> = Mutex::new(None);

fn from_template(text: &str, t: &Template, segments: &[std::ops::Range<usize>]) -> Option<Analyzed> {
    if t.tops != segments.len() {
        return None;
    }
    let statements = t
        .entries
        .iter()
        .map(|(top, st)| SqlStatement { text: text[segments[*top].clone()].trim().to_string(), ..st.clone() })
        .collect();
    Some(Analyzed { statements, violation: t.violation.clone(), reliance: t.reliance.clone(), constant_matters: false })
}

fn cache_put(cache: &Mutex<Option<HashMap<Vec<u8>, Arc<Template>>>>, key: Vec<u8>, t: Arc<Template>) {
    let mut guard = cache.lock();
    let cache = guard.get_or_insert_with(HashMap::new);
    if cache.len() >= CACHE_CAP {
        cache.clear();
    }
    cache.insert(key, t);
}

/// Which of [`analyze_by_shape`]'s ways gave an analysis.
enum Served {
    /// The template of the text's [`literal_key`]: no lexer, no parser.
    Template,
    /// The real lexer (and perhaps the parser).
    Lexer,
}

fn analyze_by_shape(text: &str) -> Result<(Analyzed, Served), String> {
    static SHAPES: Mutex<Option<HashMap<Vec<u8>, Arc<Template>>>> = Mutex::new(None);
    if text.as_bytes().contains(&0) {
        return analyze_uncached(text).map(|(a, _, _)| (a, Served::Lexer));
    }
    let literal = literal_key(text);
    if let Some((key, segments)) = &literal {
        let hit = LITERAL_SHAPES.lock().as_ref().and_then(|c| c.get(key).cloned());
        if let Some(a) = hit.and_then(|t| from_template(text, &t, segments)) {
            return Ok((a, Served::Template));
        }
    }
    let shape = shape_key(text);
    if let Some((key, segments)) = &shape {
        let hit = SHAPES.lock().as_ref().and_then(|c| c.get(key).cloned());
        if let Some(t) = hit {
            if let Some(a) = from_template(text, &t, segments) {
                // The same statements split the same way by both lexers: later
                // texts with this literal key skip the real lexer.
                if let Some((lkey, _)) = literal.filter(|(_, l)| l == segments) {
                    cache_put(&LITERAL_SHAPES, lkey, t);
                }
                return Ok((a, Served::Lexer));
            }
        }
    }
    let (analyzed, tops, owners) = analyze_uncached(text)?;
    if let Some((key, segments)) = shape {
        // Cache the shape only when the token split agrees with the parser's
        // statement split (BEGIN ATOMIC bodies, for one, hold `;` inside a
        // statement) and no constant decides the outcome (set_config's name,
        // the value a pinned setting is SET to).
        let split_agrees = segments.len() == tops.len()
            && tops.iter().enumerate().all(|(i, t)| text[segments[i].clone()].trim() == t.as_str());
        let constant_matters = analyzed.constant_matters
            || analyzed.statements.iter().any(|s| {
                s.functions.iter().any(|f| f.ends_with("set_config"))
                    || (s.kind == StatementKind::SessionSetting && {
                        let t = s.text.to_ascii_lowercase();
                        PINNED_SETTINGS.iter().any(|p| t.contains(p))
                    })
            });
        if split_agrees && !constant_matters && key.len() <= 64 * 1024 {
            // Each statement keeps the index of the top-level statement it
            // came from (two equal statements are still two).
            let entries: Vec<(usize, SqlStatement)> = analyzed
                .statements
                .iter()
                .zip(&owners)
                .map(|(st, &top)| (top, SqlStatement { text: String::new(), ..st.clone() }))
                .collect();
            let consistent = entries.iter().zip(&analyzed.statements).all(|((t, _), st)| tops[*t] == st.text);
            if consistent {
                let t = Arc::new(Template {
                    entries,
                    tops: tops.len(),
                    violation: analyzed.violation.clone(),
                    reliance: analyzed.reliance.clone(),
                });
                if let Some((lkey, _)) = literal.filter(|(_, l)| *l == segments) {
                    cache_put(&LITERAL_SHAPES, lkey, t.clone());
                }
                cache_put(&SHAPES, key, t);
            }
        }
    }
    Ok((analyzed, Served::Lexer))
}

/// Parse with the full grammar. Also returns each top-level statement's text,
/// and for each described statement the index of the top-level one it is in.
fn analyze_uncached(text: &str) -> Result<(Analyzed, Vec<String>, Vec<usize>), String> {
    if text.as_bytes().contains(&0) {
        return Err("query text contains a NUL byte".into());
    }
    let parsed = pg_query::parse(text, 0).map_err(|e| match e {
        pg_query::Error::Parse(m) => m,
        other => other.to_string(),
    })?;
    let mut out = Vec::new();
    let mut violation = None;
    let mut tops = Vec::with_capacity(parsed.protobuf.stmts.len());
    let mut owners = Vec::new();
    let mut by_position = false;
    let mut facts = WhereFacts::default();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else { continue };
        let start = (raw.stmt_location.max(0) as usize).min(text.len());
        let end = if raw.stmt_len <= 0 { text.len() } else { (start + raw.stmt_len as usize).min(text.len()) };
        let stmt_text = text.get(start..end).unwrap_or(text).trim().to_string();
        describe_tree(node, &stmt_text, &mut out, &mut facts);
        owners.resize(out.len(), tops.len());
        tops.push(stmt_text);
        if violation.is_none() {
            violation = pinned_setting_change(node);
        }
        by_position |= columns::names_outputs_by_position(node);
    }
    let constant_matters = by_position || facts.pattern_read;
    Ok((Analyzed { statements: out, violation, reliance: facts.reliance, constant_matters }, tops, owners))
}

fn is_pinned(name: &str) -> bool {
    PINNED_SETTINGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// An encoding name as PostgreSQL compares it: ASCII letters and digits only,
/// lower case (`'UTF-8'`, `utf_8` and `"Utf8"` all become `utf8`).
pub fn clean_encoding_name(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Does `name` (any spelling PostgreSQL accepts) mean UTF8?
pub fn is_utf8_encoding(name: &str) -> bool {
    matches!(clean_encoding_name(name).as_str(), "utf8" | "unicode")
}

/// `SET pinned TO value` where the value is the one Wardgate pins (a no-op
/// that drivers and ORMs send): UTF8 for the encoding, on for
/// `standard_conforming_strings`.
fn sets_pinned_value(v: &protobuf::VariableSetStmt) -> bool {
    if v.kind() != protobuf::VariableSetKind::VarSetValue || v.args.len() != 1 {
        return false;
    }
    let Some(NodeEnum::AConst(c)) = v.args[0].node.as_ref() else { return false };
    let value = match &c.val {
        Some(protobuf::a_const::Val::Sval(s)) => s.sval.clone(),
        Some(protobuf::a_const::Val::Boolval(b)) => if b.boolval { "on" } else { "off" }.to_string(),
        _ => return false,
    };
    if v.name.eq_ignore_ascii_case("standard_conforming_strings") {
        matches!(value.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1")
    } else {
        is_utf8_encoding(&value)
    }
}

/// SET of a pinned setting to another value, or `set_config()` whose name is
/// pinned or not a constant. Resets are allowed: the gateway sends the pinned
/// values in its startup packet, and PostgreSQL's reset value of a setting is
/// the one the session started with (`RESET ALL`, `RESET client_encoding`,
/// `SET … TO DEFAULT` and `DISCARD ALL` all land on the pinned value again;
/// asyncpg's pool sends `RESET ALL` on every release).
fn pinned_setting_change(node: &NodeEnum) -> Option<String> {
    use protobuf::VariableSetKind::{VarReset, VarResetAll, VarSetDefault};
    if let NodeEnum::VariableSetStmt(v) = node {
        let resets = matches!(v.kind(), VarReset | VarResetAll | VarSetDefault);
        if is_pinned(&v.name) && !resets && !sets_pinned_value(v) {
            return Some(format!("changing {} is not allowed through Wardgate", v.name));
        }
    }
    for (child, _, _, _) in node.nodes() {
        let NodeRef::FuncCall(f) = child else { continue };
        match set_config_name(f) {
            None => {}
            Some(Some(n)) if !is_pinned(&n) => {}
            Some(Some(n)) => return Some(format!("changing {n} is not allowed through Wardgate")),
            Some(None) => {
                return Some("set_config() with a computed setting name is not allowed through Wardgate".into())
            }
        }
    }
    None
}

/// For a call of `set_config`: the setting it names when that is a constant
/// (`Some(None)`: computed). `None`: not `set_config`.
fn set_config_name(f: &protobuf::FuncCall) -> Option<Option<String>> {
    let name = strings(&f.funcname);
    if !(name == "set_config" || name == "pg_catalog.set_config") {
        return None;
    }
    Some(match f.args.first().and_then(|a| a.node.as_ref()) {
        Some(NodeEnum::AConst(c)) => match &c.val {
            Some(protobuf::a_const::Val::Sval(sv)) => Some(sv.sval.clone()),
            _ => None,
        },
        _ => None,
    })
}

/// Settings that change who the session is: `SET ROLE` and `SET SESSION
/// AUTHORIZATION` are statements of their own (kind other, which guards
/// review); `set_config()` on them is described the same way.
const IDENTITY_SETTINGS: [&str; 2] = ["role", "session_authorization"];

/// Describe `node` and any data-changing statements nested in it.
fn describe_tree(node: &NodeEnum, text: &str, out: &mut Vec<SqlStatement>, facts: &mut WhereFacts) {
    out.push(describe(node, text));
    judge_where(node, out, facts);
    for (child, _, _, _) in node.nodes() {
        let NodeRef::FuncCall(f) = child else { continue };
        if let Some(Some(name)) = set_config_name(f) {
            if IDENTITY_SETTINGS.iter().any(|s| s.eq_ignore_ascii_case(name.trim())) {
                out.push(SqlStatement {
                    kind: StatementKind::Other,
                    node: "VariableSetStmt".into(),
                    functions: vec!["set_config".into()],
                    ..describe(&NodeEnum::VariableSetStmt(Default::default()), text)
                });
            }
        }
    }
    let nested: Vec<&NodeEnum> = match node {
        NodeEnum::PrepareStmt(p) => p.query.as_ref().and_then(|q| q.node.as_ref()).into_iter().collect(),
        NodeEnum::DeclareCursorStmt(d) => d.query.as_ref().and_then(|q| q.node.as_ref()).into_iter().collect(),
        NodeEnum::CreateTableAsStmt(c) => c.query.as_ref().and_then(|q| q.node.as_ref()).into_iter().collect(),
        // CREATE SCHEMA can carry CREATE TABLE/VIEW/INDEX/TRIGGER and GRANT elements.
        NodeEnum::CreateSchemaStmt(c) => c.schema_elts.iter().filter_map(|e| e.node.as_ref()).collect(),
        _ => Vec::new(),
    };
    for n in nested {
        describe_tree(n, text, out, facts);
    }
    for (child, depth, _, _) in node.nodes() {
        if depth <= 1 {
            continue;
        }
        let inner = match child {
            NodeRef::DeleteStmt(s) => NodeEnum::DeleteStmt(Box::new(s.clone())),
            NodeRef::UpdateStmt(s) => NodeEnum::UpdateStmt(Box::new(s.clone())),
            NodeRef::InsertStmt(s) => NodeEnum::InsertStmt(Box::new(s.clone())),
            NodeRef::MergeStmt(s) => NodeEnum::MergeStmt(Box::new(s.clone())),
            _ => continue,
        };
        out.push(describe(&inner, text));
        judge_where(&inner, out, facts);
    }
}

/// `schema.table` or `table`, as the statement names it.
pub(crate) fn relname(v: &protobuf::RangeVar) -> String {
    if v.schemaname.is_empty() {
        v.relname.clone()
    } else {
        format!("{}.{}", v.schemaname, v.relname)
    }
}

fn strings(list: &[Node]) -> String {
    list.iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn object_type_name(t: i32) -> String {
    let Ok(t) = ObjectType::try_from(t) else { return String::new() };
    kebab(format!("{t:?}").trim_start_matches("Object"))
}

/// CamelCase -> kebab-case.
fn kebab(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('-');
        }
        s.push(c.to_ascii_lowercase());
    }
    s
}

/// The target table and WHERE of a DELETE or UPDATE.
fn target_and_where(node: &NodeEnum) -> Option<(Option<&protobuf::RangeVar>, Option<&Node>)> {
    match node {
        NodeEnum::UpdateStmt(u) => Some((u.relation.as_ref(), u.where_clause.as_deref())),
        NodeEnum::DeleteStmt(d) => Some((d.relation.as_ref(), d.where_clause.as_deref())),
        _ => None,
    }
}

/// If the statement just described (the last in `out`) is a DELETE or
/// UPDATE, judge its WHERE once: set its `has_where`, and if the schema may
/// still make it trivial (null tests), note that (see [`NullReliance`]).
fn judge_where(node: &NodeEnum, out: &mut [SqlStatement], facts: &mut WhereFacts) {
    let Some((target, clause)) = target_and_where(node) else { return };
    let Some(last) = out.len().checked_sub(1) else { return };
    let truth = truth::where_truth(clause, target);
    out[last].has_where = !truth.trivial;
    facts.pattern_read |= truth.pattern_read;
    if let (Some(target), Some(tests)) = (target, truth.null_tests) {
        facts.reliance.push(NullReliance { statement: last, table: relname(target), tests });
    }
}

/// Does any column reference (or whole-row reference) occur anywhere in `n`?
pub(crate) fn mentions_a_column(n: &NodeEnum) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| k == "ColumnRef" || walk(v)),
            serde_json::Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    // Unserializable (never seen): assume it does, so only the rules above decide.
    serde_json::to_value(n).map(|v| walk(&v)).unwrap_or(true)
}

fn describe(node: &NodeEnum, text: &str) -> SqlStatement {
    use StatementKind as K;
    let mut s = SqlStatement {
        kind: K::Other,
        node: node_name(node),
        text: text.to_string(),
        tables_read: Vec::new(),
        tables_written: Vec::new(),
        functions: Vec::new(),
        has_where: false,
        alter_drops: false,
        copy_program: false,
        copy_server_file: false,
        object_type: String::new(),
        columns: columns::column_refs(node),
    };
    s.kind = match node {
        NodeEnum::SelectStmt(sel) => {
            if let Some(into) = sel.into_clause.as_ref().and_then(|i| i.rel.as_ref()) {
                s.tables_written.push(relname(into));
            }
            K::Select
        }
        NodeEnum::InsertStmt(_) => K::Insert,
        // Their `has_where` is judged by `judge_where`, once.
        NodeEnum::UpdateStmt(_) => K::Update,
        NodeEnum::DeleteStmt(_) => K::Delete,
        NodeEnum::MergeStmt(_) => K::Merge,
        NodeEnum::CopyStmt(c) => {
            s.copy_program = c.is_program;
            s.copy_server_file = !c.is_program && !c.filename.is_empty();
            if let Some(r) = &c.relation {
                if c.is_from {
                    s.tables_written.push(relname(r));
                } else {
                    s.tables_read.push(relname(r));
                }
            }
            if c.is_from {
                K::CopyFrom
            } else {
                K::CopyTo
            }
        }
        NodeEnum::CreateStmt(c) => {
            s.object_type = "table".into();
            if let Some(r) = &c.relation {
                s.tables_written.push(relname(r));
            }
            K::Create
        }
        NodeEnum::CreateTableAsStmt(c) => {
            s.object_type = "table".into();
            // The table it creates comes first (see `columns::expand_stars`).
            if let Some(into) = c.into.as_ref().and_then(|i| i.rel.as_ref()) {
                s.tables_written.push(relname(into));
            }
            K::Create
        }
        NodeEnum::ViewStmt(v) => {
            s.object_type = "view".into();
            // The view it creates comes first (see `columns::expand_stars`).
            if let Some(view) = &v.view {
                s.tables_written.push(relname(view));
            }
            K::Create
        }
        NodeEnum::IndexStmt(_) => {
            s.object_type = "index".into();
            K::Create
        }
        NodeEnum::CreateSchemaStmt(_) => {
            s.object_type = "schema".into();
            K::Create
        }
        NodeEnum::CreateFunctionStmt(f) => {
            s.object_type = if f.is_procedure { "procedure" } else { "function" }.into();
            K::Create
        }
        NodeEnum::CreateTrigStmt(_) => {
            s.object_type = "trigger".into();
            K::Create
        }
        NodeEnum::RuleStmt(_) => {
            s.object_type = "rule".into();
            K::Create
        }
        NodeEnum::CreateExtensionStmt(_) => {
            s.object_type = "extension".into();
            K::Create
        }
        NodeEnum::CreatePlangStmt(_) => {
            s.object_type = "language".into();
            K::Create
        }
        NodeEnum::CreateEventTrigStmt(_) => {
            s.object_type = "event-trigger".into();
            K::Create
        }
        NodeEnum::AlterRoleStmt(_) | NodeEnum::AlterRoleSetStmt(_) => {
            s.object_type = "role".into();
            K::Alter
        }
        NodeEnum::AlterFunctionStmt(_) => {
            s.object_type = "function".into();
            K::Alter
        }
        NodeEnum::CreateRoleStmt(_) => {
            s.object_type = "role".into();
            K::Create
        }
        NodeEnum::DefineStmt(d) => {
            s.object_type = object_type_name(d.kind);
            K::Create
        }
        NodeEnum::CreateCastStmt(_) => {
            s.object_type = "cast".into();
            K::Create
        }
        NodeEnum::CreateSeqStmt(_)
        | NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CreateDomainStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::CreatePolicyStmt(_)
        | NodeEnum::CreateStatsStmt(_) => K::Create,
        NodeEnum::AlterTableStmt(a) => {
            s.object_type = object_type_name(a.objtype);
            if let Some(r) = &a.relation {
                s.tables_written.push(relname(r));
            }
            s.alter_drops = a.cmds.iter().any(|c| match c.node.as_ref() {
                Some(NodeEnum::AlterTableCmd(cmd)) => matches!(
                    cmd.subtype(),
                    AlterTableType::AtDropColumn
                        | AlterTableType::AtDropConstraint
                        | AlterTableType::AtDropNotNull
                        | AlterTableType::AtDropExpression
                        | AlterTableType::AtDropIdentity
                        | AlterTableType::AtDropInherit
                        | AlterTableType::AtDropOf
                        | AlterTableType::AtDropCluster
                ),
                _ => false,
            });
            K::Alter
        }
        NodeEnum::RenameStmt(r) => {
            s.object_type = object_type_name(r.rename_type);
            if let Some(rel) = &r.relation {
                s.tables_written.push(relname(rel));
            }
            K::Alter
        }
        NodeEnum::AlterObjectSchemaStmt(_)
        | NodeEnum::AlterOwnerStmt(_)
        | NodeEnum::AlterSeqStmt(_)
        | NodeEnum::AlterDomainStmt(_)
        | NodeEnum::AlterEnumStmt(_)
        | NodeEnum::AlterExtensionStmt(_)
        | NodeEnum::AlterDatabaseStmt(_)
        | NodeEnum::AlterDatabaseSetStmt(_)
        | NodeEnum::AlterPolicyStmt(_)
        | NodeEnum::CommentStmt(_) => K::Alter,
        NodeEnum::DropStmt(d) => {
            s.object_type = object_type_name(d.remove_type);
            for o in &d.objects {
                match o.node.as_ref() {
                    Some(NodeEnum::List(l)) => s.tables_written.push(strings(&l.items)),
                    Some(NodeEnum::String(st)) => s.tables_written.push(st.sval.clone()),
                    _ => {}
                }
            }
            K::Drop
        }
        NodeEnum::DropRoleStmt(_) => {
            s.object_type = "role".into();
            K::Drop
        }
        NodeEnum::DropdbStmt(d) => {
            s.object_type = "database".into();
            s.tables_written.push(d.dbname.clone());
            K::Drop
        }
        NodeEnum::DropOwnedStmt(_) | NodeEnum::DropTableSpaceStmt(_) | NodeEnum::DropSubscriptionStmt(_) => K::Drop,
        NodeEnum::TruncateStmt(t) => {
            for r in &t.relations {
                if let Some(NodeEnum::RangeVar(v)) = r.node.as_ref() {
                    s.tables_written.push(relname(v));
                }
            }
            K::Truncate
        }
        NodeEnum::GrantStmt(g) => {
            if g.is_grant {
                K::Grant
            } else {
                K::Revoke
            }
        }
        NodeEnum::GrantRoleStmt(g) => {
            if g.is_grant {
                K::Grant
            } else {
                K::Revoke
            }
        }
        NodeEnum::AlterDefaultPrivilegesStmt(_) => K::Grant,
        NodeEnum::DoStmt(_) => K::DoBlock,
        NodeEnum::CallStmt(_) => K::Call,
        NodeEnum::TransactionStmt(_) => K::Transaction,
        NodeEnum::VariableSetStmt(v) => {
            // Changing the role or authorization is a privilege change, not a setting.
            if matches!(
                v.name.to_ascii_lowercase().as_str(),
                "role" | "session_authorization" | "session authorization"
            ) {
                K::Other
            } else {
                K::SessionSetting
            }
        }
        NodeEnum::VariableShowStmt(_) => K::SessionSetting,
        NodeEnum::ExplainStmt(_) => K::Explain,
        NodeEnum::PrepareStmt(_) | NodeEnum::ExecuteStmt(_) | NodeEnum::DeallocateStmt(_) => K::Prepared,
        NodeEnum::ListenStmt(_) | NodeEnum::UnlistenStmt(_) | NodeEnum::NotifyStmt(_) => K::Notification,
        NodeEnum::DeclareCursorStmt(_) | NodeEnum::FetchStmt(_) | NodeEnum::ClosePortalStmt(_) => K::Cursor,
        NodeEnum::VacuumStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::LockStmt(_)
        | NodeEnum::DiscardStmt(_) => K::Maintenance,
        _ => K::Other,
    };
    // Tables and functions anywhere in the statement.
    let mut ctes: Vec<String> = Vec::new();
    for (child, _, context, _) in node.nodes() {
        match child {
            NodeRef::CommonTableExpr(c) => ctes.push(c.ctename.clone()),
            NodeRef::RangeVar(v) => {
                let name = relname(v);
                if ctes.contains(&name) {
                    continue;
                }
                let list = match context {
                    pg_query::Context::DML | pg_query::Context::DDL => &mut s.tables_written,
                    _ => &mut s.tables_read,
                };
                if !list.contains(&name) {
                    list.push(name);
                }
            }
            NodeRef::FuncCall(f) => {
                let name = strings(&f.funcname);
                if !name.is_empty() && !s.functions.contains(&name) {
                    s.functions.push(name);
                }
            }
            _ => {}
        }
    }
    s
}

fn node_name(node: &NodeEnum) -> String {
    match node {
        NodeEnum::SelectStmt(_) => "SelectStmt",
        NodeEnum::InsertStmt(_) => "InsertStmt",
        NodeEnum::UpdateStmt(_) => "UpdateStmt",
        NodeEnum::DeleteStmt(_) => "DeleteStmt",
        NodeEnum::MergeStmt(_) => "MergeStmt",
        NodeEnum::CopyStmt(_) => "CopyStmt",
        NodeEnum::CreateStmt(_) => "CreateStmt",
        NodeEnum::CreateTableAsStmt(_) => "CreateTableAsStmt",
        NodeEnum::ViewStmt(_) => "ViewStmt",
        NodeEnum::IndexStmt(_) => "IndexStmt",
        NodeEnum::CreateSchemaStmt(_) => "CreateSchemaStmt",
        NodeEnum::CreateFunctionStmt(_) => "CreateFunctionStmt",
        NodeEnum::CreateRoleStmt(_) => "CreateRoleStmt",
        NodeEnum::CreateSeqStmt(_) => "CreateSeqStmt",
        NodeEnum::CreateExtensionStmt(_) => "CreateExtensionStmt",
        NodeEnum::CreateTrigStmt(_) => "CreateTrigStmt",
        NodeEnum::RuleStmt(_) => "RuleStmt",
        NodeEnum::CompositeTypeStmt(_) => "CompositeTypeStmt",
        NodeEnum::CreateEnumStmt(_) => "CreateEnumStmt",
        NodeEnum::CreateDomainStmt(_) => "CreateDomainStmt",
        NodeEnum::DefineStmt(_) => "DefineStmt",
        NodeEnum::CreatedbStmt(_) => "CreatedbStmt",
        NodeEnum::CreatePolicyStmt(_) => "CreatePolicyStmt",
        NodeEnum::CreateEventTrigStmt(_) => "CreateEventTrigStmt",
        NodeEnum::CreateCastStmt(_) => "CreateCastStmt",
        NodeEnum::CreateStatsStmt(_) => "CreateStatsStmt",
        NodeEnum::AlterTableStmt(_) => "AlterTableStmt",
        NodeEnum::RenameStmt(_) => "RenameStmt",
        NodeEnum::AlterRoleStmt(_) => "AlterRoleStmt",
        NodeEnum::AlterObjectSchemaStmt(_) => "AlterObjectSchemaStmt",
        NodeEnum::AlterOwnerStmt(_) => "AlterOwnerStmt",
        NodeEnum::AlterSeqStmt(_) => "AlterSeqStmt",
        NodeEnum::AlterFunctionStmt(_) => "AlterFunctionStmt",
        NodeEnum::AlterDomainStmt(_) => "AlterDomainStmt",
        NodeEnum::AlterEnumStmt(_) => "AlterEnumStmt",
        NodeEnum::AlterExtensionStmt(_) => "AlterExtensionStmt",
        NodeEnum::AlterDatabaseStmt(_) => "AlterDatabaseStmt",
        NodeEnum::AlterDatabaseSetStmt(_) => "AlterDatabaseSetStmt",
        NodeEnum::AlterRoleSetStmt(_) => "AlterRoleSetStmt",
        NodeEnum::AlterPolicyStmt(_) => "AlterPolicyStmt",
        NodeEnum::CommentStmt(_) => "CommentStmt",
        NodeEnum::DropStmt(_) => "DropStmt",
        NodeEnum::DropRoleStmt(_) => "DropRoleStmt",
        NodeEnum::DropdbStmt(_) => "DropdbStmt",
        NodeEnum::DropOwnedStmt(_) => "DropOwnedStmt",
        NodeEnum::DropTableSpaceStmt(_) => "DropTableSpaceStmt",
        NodeEnum::DropSubscriptionStmt(_) => "DropSubscriptionStmt",
        NodeEnum::TruncateStmt(_) => "TruncateStmt",
        NodeEnum::GrantStmt(_) => "GrantStmt",
        NodeEnum::GrantRoleStmt(_) => "GrantRoleStmt",
        NodeEnum::AlterDefaultPrivilegesStmt(_) => "AlterDefaultPrivilegesStmt",
        NodeEnum::DoStmt(_) => "DoStmt",
        NodeEnum::CallStmt(_) => "CallStmt",
        NodeEnum::TransactionStmt(_) => "TransactionStmt",
        NodeEnum::VariableSetStmt(_) => "VariableSetStmt",
        NodeEnum::VariableShowStmt(_) => "VariableShowStmt",
        NodeEnum::ExplainStmt(_) => "ExplainStmt",
        NodeEnum::PrepareStmt(_) => "PrepareStmt",
        NodeEnum::ExecuteStmt(_) => "ExecuteStmt",
        NodeEnum::DeallocateStmt(_) => "DeallocateStmt",
        NodeEnum::ListenStmt(_) => "ListenStmt",
        NodeEnum::UnlistenStmt(_) => "UnlistenStmt",
        NodeEnum::NotifyStmt(_) => "NotifyStmt",
        NodeEnum::DeclareCursorStmt(_) => "DeclareCursorStmt",
        NodeEnum::FetchStmt(_) => "FetchStmt",
        NodeEnum::ClosePortalStmt(_) => "ClosePortalStmt",
        NodeEnum::VacuumStmt(_) => "VacuumStmt",
        NodeEnum::ClusterStmt(_) => "ClusterStmt",
        NodeEnum::ReindexStmt(_) => "ReindexStmt",
        NodeEnum::CheckPointStmt(_) => "CheckPointStmt",
        NodeEnum::LockStmt(_) => "LockStmt",
        NodeEnum::DiscardStmt(_) => "DiscardStmt",
        NodeEnum::AlterSystemStmt(_) => "AlterSystemStmt",
        NodeEnum::LoadStmt(_) => "LoadStmt",
        NodeEnum::SecLabelStmt(_) => "SecLabelStmt",
        NodeEnum::CreateForeignServerStmt(_) => "CreateForeignServerStmt",
        NodeEnum::CreateForeignTableStmt(_) => "CreateForeignTableStmt",
        NodeEnum::ImportForeignSchemaStmt(_) => "ImportForeignSchemaStmt",
        NodeEnum::CreateUserMappingStmt(_) => "CreateUserMappingStmt",
        NodeEnum::CreateSubscriptionStmt(_) => "CreateSubscriptionStmt",
        NodeEnum::CreatePublicationStmt(_) => "CreatePublicationStmt",
        NodeEnum::ReassignOwnedStmt(_) => "ReassignOwnedStmt",
        NodeEnum::ConstraintsSetStmt(_) => "ConstraintsSetStmt",
        _ => "Other",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<StatementKind> {
        let r = analyze(sql, SqlPhase::SimpleQuery, "");
        assert!(r.parse_error.is_none(), "{sql}: {:?}", r.parse_error);
        r.statements.iter().map(|s| s.kind).collect()
    }

    fn first(sql: &str) -> SqlStatement {
        analyze(sql, SqlPhase::SimpleQuery, "").statements.remove(0)
    }

    #[test]
    fn the_literal_key_abstracts_only_plain_literals_and_gives_up_on_the_rest() {
        let k = |t: &str| literal_key(t).map(|(k, _)| k).unwrap_or_else(|| panic!("no key for {t}"));
        assert_eq!(k("SELECT * FROM t WHERE id = 1"), k("SELECT * FROM t WHERE id = 2147483647"));
        assert_eq!(k("SELECT 007"), k("SELECT 1"), "leading zeros: still an int4");
        assert_ne!(k("SELECT 1"), k("SELECT 2147483648"), "an int4 and a numeric are different tokens");
        assert_eq!(k("SELECT 'a;b', 'it''s'"), k("SELECT '', 'x'"));
        assert_ne!(k("SELECT t1 FROM x"), k("SELECT t2 FROM x"), "digits in names are names");
        assert_ne!(k("SELECT 1.5"), k("SELECT 2.5"), "reals stay verbatim");
        assert_ne!(k("SELECT 1e5"), k("SELECT 2e5"));
        assert_ne!(k("SELECT 0x1f"), k("SELECT 0x2f"));
        assert_ne!(k("SELECT 1 FROM t"), k("SELECT 1  FROM t"), "layout is kept");
        for t in [
            "SELECT E'a'",
            "SELECT e'\\''",
            "SELECT B'101'",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT \"T\"",
            "SELECT 'a",
            "SELECT é",
            "SELECT 1 \\g",
            "SELECT 1'a'",
            "SELECT U&'a'",
        ] {
            assert!(literal_key(t).is_none(), "{t}");
        }
        let text = "SELECT 1; ;SELECT 'a;b' ;";
        assert_eq!(literal_key(text).unwrap().1, shape_key(text).unwrap().1);
        assert_eq!(literal_key(text).unwrap().1, vec![0..8, 11..24]);
    }

    #[test]
    fn texts_that_differ_in_literals_get_what_a_fresh_parse_gives() {
        let pairs = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 99;",
            ),
            ("SELECT 'x;y', 1; DELETE FROM t WHERE a = 2", "SELECT 'q', 3; DELETE FROM t WHERE a = 4"),
            ("SELECT U&'a', 'it''s'", "SELECT U&'\\zz', ''"),
            ("SELECT 'a'\n'b' FROM t", "SELECT 'c'\n'd' FROM t"),
            ("UPDATE t SET x = 1 WHERE 1 = 2", "UPDATE t SET x = 1 WHERE 1 = 1"),
            ("SELECT 1 UNION SELECT 2147483648", "SELECT 5 UNION SELECT 9999999999"),
            ("SELECT n", "SELECT n--e, upper("),
            ("SELECT naitems+1", "/* x */ SELECT naitems+2"),
            // Two equal statements are two: the second keeps its own text.
            ("DO $$ BEGIN PERFORM 1; END $$; DO $$ BEGIN PERFORM 1; END $$", "DO $$ x $$; DO $$ y $$"),
            ("SELECT 1; SELECT 1", "SELECT 1; SELECT 2"),
            ("/* a */ SELECT 1; /* b */; SELECT 2 /* c */", "SELECT 1; SELECT 2"),
            ("SET search_path = 'a'", "SET search_path = 'b'"),
            ("SET client_encoding = 'UTF8'", "SET client_encoding = 'LATIN1'"),
            ("SELECT set_config('x.y', '1', false)", "SELECT set_config('client_encoding', '1', false)"),
            (
                "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END",
                "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 2; END",
            ),
        ];
        for (seen, next) in pairs {
            for t in [seen, seen, next, next] {
                assert_eq!(
                    analyze_checked(t, SqlPhase::SimpleQuery, ""),
                    analyze_checked_uncached(t, SqlPhase::SimpleQuery, ""),
                    "{t} (after {seen})"
                );
            }
        }
        // A constant the grammar itself checks: the cache may serve a text the
        // server rejects (nothing runs), never the other way round.
        let _ = analyze_checked("SELECT 1::float(5)", SqlPhase::SimpleQuery, "");
        let cached = analyze_checked("SELECT 1::float(0)", SqlPhase::SimpleQuery, "");
        let fresh = analyze_checked_uncached("SELECT 1::float(0)", SqlPhase::SimpleQuery, "");
        assert!(fresh.0.parse_error.is_some() && cached.0.parse_error.is_none());
        assert_eq!(cached.0.statements[0].text, "SELECT 1::float(0)");
        // The common case is served without the real lexer.
        let key = literal_key(pairs[0].1).unwrap().0;
        assert!(LITERAL_SHAPES.lock().as_ref().is_some_and(|c| c.contains_key(&key)));
    }

    #[test]
    fn a_rejected_text_is_parsed_again() {
        // libpg_query sizes its stack depth limit to the calling thread's
        // free stack: on a small stack a deeply nested text is refused
        // ("stack depth limit exceeded"); on a large one the parser gets
        // through and the tree is refused for its depth when decoded (prost's
        // limit). The first refusal is the call's, not the text's: it must
        // not be served to the second call. (The small stack is under a
        // quarter of the default 2 MiB: glibc reuses a cached thread stack up
        // to four times the size asked for.)
        let text = format!("SELECT {}1{}", "(1+".repeat(3000), ")".repeat(3000));
        let on_stack = |bytes: usize| {
            let text = text.clone();
            std::thread::Builder::new()
                .stack_size(bytes)
                .spawn(move || analyze_checked(&text, SqlPhase::SimpleQuery, "").0.parse_error)
                .unwrap()
                .join()
                .unwrap()
        };
        let small = on_stack(400 << 10);
        assert!(small.as_deref().is_some_and(|e| e.contains("stack depth")), "{small:?}");
        let large = on_stack(32 << 20);
        assert!(large.as_deref().is_some_and(|e| !e.contains("stack depth")), "{large:?}");
    }

    #[test]
    fn comments_case_and_quoting_do_not_hide_a_drop() {
        let s = first("/* x */ dRoP/**/TABLE \"Users\"");
        assert_eq!(s.kind, StatementKind::Drop);
        assert_eq!(s.object_type, "table");
        assert_eq!(s.tables_written, vec!["Users".to_string()]);
        assert_eq!(s.node, "DropStmt");
    }

    #[test]
    fn drop_behind_a_select_is_its_own_statement() {
        assert_eq!(kinds("SELECT 1; DROP TABLE t"), vec![StatementKind::Select, StatementKind::Drop]);
        let r = analyze("SELECT 1; DROP TABLE t", SqlPhase::SimpleQuery, "");
        assert_eq!(r.statements[1].text, "DROP TABLE t");
    }

    #[test]
    fn delete_where_presence_and_trivial_where() {
        assert!(!first("DELETE FROM t").has_where);
        assert!(first("DELETE FROM t WHERE id = 1").has_where);
        assert!(!first("DELETE FROM t WHERE true").has_where);
        assert!(!first("DELETE FROM t WHERE 1 = 1").has_where);
        assert!(!first("UPDATE t SET a = 1 WHERE id = 1 OR 'a' = 'a'").has_where);
        assert!(!first("DELETE FROM t WHERE NOT false").has_where);
        assert!(!first("DELETE FROM t WHERE id = id").has_where);
        assert!(!first("DELETE FROM t WHERE true AND (1 = 1)").has_where);
        assert!(first("DELETE FROM t WHERE true AND id = 3").has_where);
        for rowless in [
            "UPDATE t SET a = 1 WHERE coalesce(NULL, true)",
            "DELETE FROM t WHERE now() > '2000-01-01'",
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u)",
            "DELETE FROM t WHERE random() < 2",
        ] {
            assert!(!first(rowless).has_where, "{rowless}");
        }
        assert!(first("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.t_id = t.id)").has_where);
    }

    #[test]
    fn nested_deletes_are_surfaced() {
        let k = kinds("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x");
        assert!(k.contains(&StatementKind::Delete), "{k:?}");
        let k = kinds("EXPLAIN ANALYZE DELETE FROM t");
        assert!(k.contains(&StatementKind::Delete), "{k:?}");
        let k = kinds("PREPARE p AS DELETE FROM t");
        assert_eq!(k, vec![StatementKind::Prepared, StatementKind::Delete]);
    }

    #[test]
    fn copy_program_do_call_and_set_role() {
        let c = first("COPY t FROM PROGRAM 'id'");
        assert!(c.copy_program);
        assert!(first("COPY t TO '/tmp/out'").copy_server_file);
        assert!(!first("COPY t TO STDOUT").copy_server_file);
        assert_eq!(
            first("CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql").object_type,
            "function"
        );
        assert_eq!(first("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u").object_type, "rule");
        assert_eq!(first("CREATE OPERATOR ### (FUNCTION = pg_read_file, RIGHTARG = text)").object_type, "operator");
        let k = kinds("CREATE SCHEMA s CREATE TABLE t (a int) GRANT ALL ON t TO PUBLIC");
        assert!(k.contains(&StatementKind::Grant), "{k:?}");
        assert_eq!(c.kind, StatementKind::CopyFrom);
        assert_eq!(first("COPY (SELECT 1) TO STDOUT").kind, StatementKind::CopyTo);
        assert_eq!(first("DO $$ BEGIN DROP TABLE t; END $$").kind, StatementKind::DoBlock);
        assert_eq!(first("CALL p()").kind, StatementKind::Call);
        assert_eq!(first("SET ROLE postgres").kind, StatementKind::Other);
        assert_eq!(first("SET search_path = x").kind, StatementKind::SessionSetting);
    }

    #[test]
    fn alter_drop_and_functions_and_tables() {
        let a = first("ALTER TABLE customers DROP COLUMN ssn");
        assert!(a.alter_drops);
        assert_eq!(a.kind, StatementKind::Alter);
        let s = first("SELECT pg_catalog.pg_read_file('/etc/passwd'), c.email FROM public.customers c JOIN orders o ON o.cid = c.id");
        assert_eq!(s.functions, vec!["pg_catalog.pg_read_file".to_string()]);
        assert!(s.tables_read.contains(&"public.customers".to_string()));
        assert!(s.tables_read.contains(&"orders".to_string()));
    }

    #[test]
    fn create_table_as_and_view_list_what_they_create_first() {
        let c = first("CREATE TEMP TABLE x AS WITH d AS (DELETE FROM o WHERE id = 1 RETURNING *) SELECT * FROM d, t");
        assert_eq!(c.tables_written, ["x", "o"]);
        assert_eq!(c.tables_read, ["t"]);
        let v = first("CREATE OR REPLACE VIEW s.v AS SELECT * FROM t");
        assert_eq!(v.tables_written, ["s.v"]);
        assert_eq!(v.tables_read, ["t"]);
    }

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        for text in ["SELEC 1", "DROP TABLE", "\u{0}", "'", "$$", "SELECT (((((((((("] {
            let r = analyze(text, SqlPhase::SimpleQuery, "");
            assert!(r.parse_error.is_some(), "{text:?}");
            assert!(r.statements.is_empty());
        }
    }

    #[test]
    fn set_config_on_role_or_session_authorization_reads_like_set_role() {
        for text in [
            "SELECT set_config('role', 'postgres', false)",
            "SELECT pg_catalog.set_config('Session_Authorization', 'postgres', false)",
            "SELECT 1 FROM t WHERE set_config('role', 'admin', true) IS NOT NULL",
        ] {
            let k = kinds(text);
            assert!(k.contains(&StatementKind::Other), "{text}: {k:?}");
        }
        assert_eq!(kinds("SELECT set_config('search_path', 'app', false)"), vec![StatementKind::Select]);
        assert_eq!(first("SET ROLE postgres").kind, StatementKind::Other);
    }

    #[test]
    fn an_allowed_pinned_value_never_lends_its_verdict_to_another_value_of_the_same_shape() {
        for (ok, bad) in [
            ("SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'"),
            ("SET NAMES 'utf8'", "SET NAMES 'big5'"),
            ("SET LOCAL standard_conforming_strings = 'on'", "SET LOCAL standard_conforming_strings = 'off'"),
            ("SELECT 1; SET client_encoding TO 'unicode'", "SELECT 2; SET client_encoding TO 'latin1'"),
        ] {
            assert_eq!(host_violation(ok), None, "{ok}");
            assert!(host_violation(bad).is_some(), "{bad} rode on the verdict for {ok}");
        }
    }

    #[test]
    fn changes_to_lexer_settings_are_host_violations() {
        for bad in [
            "SET standard_conforming_strings = off",
            "set STANDARD_CONFORMING_STRINGS to off",
            "SET LOCAL client_encoding = 'SJIS'",
            "SET NAMES 'LATIN1'",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT pg_catalog.set_config('standard_' || 'conforming_strings', 'off', false)",
            "SELECT 1; SELECT set_config(name, 'off', false) FROM pg_settings",
            "SET client_encoding TO 'UTF8', 'LATIN1'",
            "SET standard_conforming_strings = 'off'",
            "SET client_encoding = 'UTF16'",
        ] {
            assert!(host_violation(bad).is_some(), "{bad}");
        }
        // Setting a pinned value to what it is pinned to is a no-op drivers send.
        for ok in [
            "SET search_path = app",
            "SELECT set_config('search_path', '', false)",
            "SELECT 1",
            "SET client_encoding TO 'UTF8'",
            "SET client_encoding = 'utf-8'",
            "SET NAMES 'unicode'",
            "SET client_encoding TO utf8",
            "SET standard_conforming_strings = on",
            "SET standard_conforming_strings TO 'true'",
            // Resets land on the values the gateway's startup packet pinned.
            "RESET ALL",
            "RESET standard_conforming_strings",
            "RESET client_encoding",
            "SET client_encoding = DEFAULT",
            "DISCARD ALL",
        ] {
            assert_eq!(host_violation(ok), None, "{ok}");
        }
    }

    #[test]
    fn texts_that_differ_only_in_constants_share_a_shape_but_keep_their_own_text() {
        let a = analyze("SELECT * FROM t WHERE id = 1; DELETE FROM u WHERE x = 'a'", SqlPhase::SimpleQuery, "");
        let b = analyze("SELECT * FROM t WHERE id = 22; DELETE FROM u WHERE x = 'it''s'", SqlPhase::SimpleQuery, "");
        assert_eq!(a.statements.len(), 2);
        assert_eq!(b.statements[0].text, "SELECT * FROM t WHERE id = 22");
        assert_eq!(b.statements[1].text, "DELETE FROM u WHERE x = 'it''s'");
        assert_eq!(a.statements[1].kind, b.statements[1].kind);
        // Same tokens but a constant where an identifier was: a different shape.
        let c = analyze("DELETE FROM u WHERE 1 = 1", SqlPhase::SimpleQuery, "");
        let d = analyze("DELETE FROM u WHERE 2 = 2", SqlPhase::SimpleQuery, "");
        assert!(!c.statements[0].has_where && !d.statements[0].has_where);
        // set_config's first argument decides: never served from the shape cache.
        assert!(host_violation("SELECT set_config('search_path', 'x', false)").is_none());
        assert!(host_violation("SELECT set_config('standard_conforming_strings', 'off', false)").is_some());
        // Strings that hide statements are constants to the real lexer.
        let e = analyze("SELECT 'a; DROP TABLE t'", SqlPhase::SimpleQuery, "");
        assert_eq!(e.statements.len(), 1);
        let f = analyze("SELECT $$x$$; DROP TABLE t", SqlPhase::SimpleQuery, "");
        assert_eq!(f.statements[1].kind, StatementKind::Drop);
        // BEGIN ATOMIC bodies contain `;`: statements still come out right.
        let g = analyze(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
            SqlPhase::SimpleQuery,
            "",
        );
        assert_eq!(g.statements[0].kind, StatementKind::Create);
    }

    fn uses(sql: &str) -> Vec<(Option<String>, String, ColumnUsage)> {
        let mut v: Vec<_> = first(sql).columns.into_iter().map(|c| (c.table, c.column, c.usage)).collect();
        v.sort_by_key(|(t, c, u)| (t.clone(), c.clone(), *u as u8));
        v
    }

    #[test]
    fn column_usage_is_output_only_when_returned_as_is_by_the_top_level_query() {
        use ColumnUsage::*;
        let c = |t: Option<&str>, n: &str, u| (t.map(str::to_string), n.to_string(), u);
        assert_eq!(
            uses("SELECT c.email, ssn AS x FROM customers c WHERE c.id = 1 ORDER BY name"),
            vec![
                c(None, "name", Filter),
                c(None, "ssn", Output),
                c(Some("customers"), "email", Output),
                c(Some("customers"), "id", Filter)
            ]
        );
        assert_eq!(uses("SELECT replace(email, '@', ' at ') FROM customers"), vec![c(None, "email", Transformed)]);
        assert_eq!(uses("SELECT ARRAY[upper(email)] FROM customers"), vec![c(None, "email", Transformed)]);
        assert_eq!(uses("SELECT (email COLLATE \"C\") FROM customers"), vec![c(None, "email", Transformed)]);
        assert!(uses("SELECT x FROM (SELECT email AS x FROM customers) s").contains(&c(None, "x", Output)));
        assert!(uses("SELECT x FROM (SELECT email AS x FROM customers) s").contains(&c(None, "email", Transformed)));
        assert!(uses("SELECT row_to_json(c) FROM customers c").contains(&c(Some("customers"), "*", Transformed)));
        // A whole row is one composite value: not its columns as they are.
        assert_eq!(uses("SELECT c FROM customers c"), vec![c(Some("customers"), "*", Transformed)]);
        assert_eq!(uses("SELECT c.* FROM customers c"), vec![c(Some("customers"), "*", Output)]);
        assert_eq!(uses("SELECT * FROM customers"), vec![c(None, "*", Output)]);
        assert_eq!(uses("COPY (SELECT email FROM customers) TO STDOUT"), vec![c(None, "email", Output)]);
        assert!(uses("INSERT INTO t SELECT email FROM customers").contains(&c(None, "email", Transformed)));
        assert!(uses("CREATE TABLE t AS SELECT email FROM customers").contains(&c(None, "email", Transformed)));
        assert!(uses("UPDATE customers SET notes = email WHERE id = 1").contains(&c(None, "email", Transformed)));
        assert!(uses("SELECT email FROM customers UNION SELECT 'x'").contains(&c(None, "email", Transformed)));
        assert!(uses("SELECT * INTO copy FROM customers").contains(&c(None, "*", Transformed)));
        assert_eq!(first("ALTER TABLE customers RENAME COLUMN ssn TO x").tables_written, vec!["customers".to_string()]);
        assert_eq!(
            uses("DELETE FROM customers WHERE id = 1 RETURNING email"),
            vec![c(None, "email", Output), c(None, "id", Filter)]
        );
        // Column alias lists rename columns by position: a renamed one may be any of its table's.
        let renamed = "SELECT reverse(x), cs.id FROM customers AS cs(a, b, c, d, e, x)";
        assert_eq!(uses(renamed), vec![c(Some("customers"), "*", Transformed), c(Some("customers"), "id", Output)]);
        assert_eq!(uses("SELECT reverse(cs.x) FROM customers cs(x)"), vec![c(Some("customers"), "*", Transformed)]);
        // A join's alias hides which table a column is from; its name is a whole row.
        let joined = "SELECT reverse(j.x), j, j.ssn FROM (customers CROSS JOIN orders) AS j(a, x)";
        assert_eq!(uses(joined), vec![c(None, "*", Transformed), c(None, "*", Transformed), c(None, "ssn", Output)]);
        assert_eq!(
            uses("SELECT reverse(x) FROM (a JOIN b USING (id)) AS j(x)"),
            vec![c(None, "*", Transformed), c(None, "id", Filter)]
        );
        assert_eq!(
            uses("SELECT u.id FROM a JOIN b USING (id) AS u"),
            vec![c(None, "id", Output), c(None, "id", Filter)]
        );
    }

    #[test]
    fn join_using_and_natural_join_filter_by_the_columns_they_compare() {
        use ColumnUsage::*;
        let c = |t: Option<&str>, n: &str, u| (t.map(str::to_string), n.to_string(), u);
        // Equal values are kept: an oracle for the column, like `ON c.ssn = x.ssn`.
        let using = "SELECT id FROM customers JOIN (SELECT '123-45-6789'::text AS ssn) x USING (ssn)";
        assert_eq!(uses(using), vec![c(None, "id", Output), c(None, "ssn", Filter)]);
        let two = "SELECT o.id FROM orders o LEFT JOIN customers c USING (id, email)";
        assert_eq!(uses(two), vec![c(None, "email", Filter), c(None, "id", Filter), c(Some("orders"), "id", Output)]);
        // A renamed column may be any of its table's.
        let renamed = "SELECT 1 FROM customers AS cs(a, b, x) JOIN t USING (x)";
        assert_eq!(uses(renamed), vec![c(Some("customers"), "*", Filter)]);
        // NATURAL compares every name the sides share: each side's tables, every column.
        let natural = "SELECT id FROM customers NATURAL JOIN (SELECT 1 AS id, '123-45-6789'::text AS ssn) x";
        assert_eq!(uses(natural), vec![c(None, "id", Output), c(Some("customers"), "*", Filter)]);
        let nested = "SELECT 1 FROM public.orders NATURAL JOIN (customers c JOIN t ON true)";
        assert_eq!(
            uses(nested),
            vec![c(Some("customers"), "*", Filter), c(Some("public.orders"), "*", Filter), c(Some("t"), "*", Filter)]
        );
    }

    #[test]
    fn the_star_of_an_exists_subquery_is_no_use_but_the_rest_of_it_is() {
        use ColumnUsage::*;
        let c = |t: Option<&str>, n: &str, u| (t.map(str::to_string), n.to_string(), u);
        let sql = "SELECT id FROM orders o WHERE EXISTS (SELECT *, c.* FROM customers c WHERE c.id = o.customer_id)";
        assert_eq!(
            uses(sql),
            vec![c(None, "id", Output), c(Some("customers"), "id", Filter), c(Some("orders"), "customer_id", Filter)]
        );
        assert_eq!(uses("SELECT EXISTS (SELECT * FROM customers)"), vec![]);
        // Not a star: a set-returning function changes how many rows there are.
        let srf = "SELECT 1 WHERE EXISTS (SELECT *, generate_series(1, length(ssn)) FROM customers)";
        assert_eq!(uses(srf), vec![c(None, "ssn", Filter)]);
        // A set operation compares whole rows: the stars are a filter.
        let intersect = "SELECT 1 WHERE EXISTS (SELECT * FROM customers INTERSECT SELECT * FROM customers)";
        assert_eq!(uses(intersect), vec![c(None, "*", Filter), c(None, "*", Filter)]);
        // So do clauses that may name a star's column by position.
        for sql in [
            "SELECT 1 WHERE EXISTS (SELECT DISTINCT ON (6) * FROM customers OFFSET 4)",
            "SELECT 1 WHERE EXISTS (SELECT * FROM customers GROUP BY 1, 6 HAVING count(*) > 1)",
            "SELECT 1 WHERE EXISTS (SELECT DISTINCT * FROM customers OFFSET 4)",
            "SELECT 1 WHERE EXISTS (SELECT * FROM customers ORDER BY 6 LIMIT 1)",
        ] {
            assert!(uses(sql).contains(&c(None, "*", Filter)), "{sql}: {:?}", uses(sql));
        }
        // Elsewhere a subquery's star is a use.
        assert_eq!(uses("SELECT 1 WHERE 1 IN (SELECT * FROM t)"), vec![c(None, "*", Filter)]);
    }

    #[test]
    fn stars_are_expanded_from_the_catalog_where_it_knows_every_table() {
        use ColumnUsage::*;
        let catalog = |t: &str| match t {
            "orders" | "public.orders" => Some(vec!["id", "total"]),
            "customers" => Some(vec!["id", "email"]),
            _ => None,
        };
        let expanded = |sql: &str| {
            let mut statements = vec![first(sql)];
            columns::expand_stars(&mut statements, catalog);
            let mut v: Vec<_> =
                statements.remove(0).columns.into_iter().map(|c| (c.table, c.column, c.usage)).collect();
            v.sort_by_key(|(t, c, u)| (t.clone(), c.clone(), *u as u8));
            v
        };
        let c = |t: Option<&str>, n: &str, u| (t.map(str::to_string), n.to_string(), u);
        // `SELECT DISTINCT *` returns the star as it is and dedups by it.
        assert_eq!(
            expanded("SELECT DISTINCT * FROM orders"),
            vec![c(None, "*", Output), c(Some("orders"), "id", Filter), c(Some("orders"), "total", Filter)]
        );
        // Every table a bare star may come from, each column once per usage.
        assert_eq!(
            expanded("SELECT count(*) FROM (SELECT * FROM orders, customers) s"),
            vec![
                c(Some("customers"), "email", Transformed),
                c(Some("customers"), "id", Transformed),
                c(Some("orders"), "id", Transformed),
                c(Some("orders"), "total", Transformed)
            ]
        );
        assert_eq!(
            expanded("SELECT c FROM customers c"),
            vec![c(Some("customers"), "email", Transformed), c(Some("customers"), "id", Transformed)]
        );
        // A subquery's or CTE's star comes from the statement's tables.
        assert_eq!(
            expanded("SELECT DISTINCT s.* FROM (SELECT id FROM orders) s"),
            vec![
                c(None, "id", Transformed),
                c(Some("orders"), "id", Filter),
                c(Some("orders"), "total", Filter),
                c(Some("s"), "*", Output)
            ]
        );
        // A table the catalog does not know keeps the star; so does a star
        // over it and a known one.
        assert_eq!(expanded("SELECT count(*) FROM (SELECT * FROM fresh) s"), vec![c(None, "*", Transformed)]);
        assert_eq!(
            expanded("SELECT DISTINCT o.*, f.* FROM orders o, fresh f")
                .iter()
                .filter(|x| x.2 == Filter && x.1 == "*")
                .count(),
            1
        );
        // Plain output is left to the maskers; a star over no table at all is nothing.
        assert_eq!(expanded("SELECT * FROM customers"), vec![c(None, "*", Output)]);
        assert_eq!(expanded("SELECT DISTINCT * FROM generate_series(1, 3)"), vec![c(None, "*", Output)]);
    }

    #[test]
    fn outputs_named_by_position_or_alias_in_order_group_or_distinct_are_filters() {
        use ColumnUsage::*;
        let c = |n: &str, u| (None, n.to_string(), u);
        let filtered = |sql: &str, col: &str| {
            assert!(uses(sql).contains(&c(col, Filter)), "{sql}: {:?}", uses(sql));
        };
        filtered("SELECT id, email FROM customers ORDER BY 2", "email");
        filtered("SELECT id, email FROM customers ORDER BY 2 DESC NULLS LAST", "email");
        filtered("SELECT id, email AS e FROM customers ORDER BY e", "email");
        filtered("SELECT email, count(*) FROM customers GROUP BY 1", "email");
        filtered("SELECT email AS e, count(*) FROM customers GROUP BY e", "email");
        filtered("SELECT email, count(*) FROM customers GROUP BY ROLLUP (1)", "email");
        filtered("SELECT email, count(*) FROM customers GROUP BY GROUPING SETS ((1), ())", "email");
        filtered("SELECT DISTINCT ON (2) id, email FROM customers", "email");
        filtered("SELECT DISTINCT email FROM customers", "email");
        filtered("SELECT x FROM (SELECT id, email FROM customers ORDER BY 2 LIMIT 1) s", "email");
        filtered("DECLARE k CURSOR FOR SELECT id, ssn FROM customers ORDER BY 2", "ssn");
        filtered("COPY (SELECT id, ssn FROM customers ORDER BY 2) TO STDOUT", "ssn");
        // A position at or after a `*` cannot be resolved without the catalog.
        filtered("SELECT * FROM customers ORDER BY 3", "*");
        filtered("SELECT id, *, email FROM customers ORDER BY 2", "*");
        filtered("SELECT id, *, email FROM customers ORDER BY 9", "email");
        // A position before any `*` is exactly that output; a number past the
        // outputs, an unrelated name or a constant elsewhere name none.
        let by_id = vec![c("email", Output), c("id", Output), c("id", Filter)];
        assert_eq!(uses("SELECT id, email FROM customers ORDER BY 1"), by_id);
        assert_eq!(
            uses("SELECT id, * FROM customers ORDER BY 1"),
            vec![c("*", Output), c("id", Output), c("id", Filter)]
        );
        assert_eq!(uses("SELECT email FROM customers ORDER BY 5"), vec![c("email", Output)]);
        assert_eq!(uses("SELECT email FROM customers LIMIT 2"), vec![c("email", Output)]);
        assert_eq!(
            uses("SELECT id, email AS e FROM customers ORDER BY id"),
            vec![c("email", Output), c("id", Output), c("id", Filter)]
        );
    }

    #[test]
    fn truncate_grant_revoke() {
        assert_eq!(kinds("TRUNCATE a, b"), vec![StatementKind::Truncate]);
        assert_eq!(kinds("GRANT ALL ON t TO x"), vec![StatementKind::Grant]);
        assert_eq!(kinds("REVOKE ALL ON t FROM x"), vec![StatementKind::Revoke]);
    }
}
