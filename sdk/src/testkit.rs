//! Native test kit: unit-test plugin logic with `cargo test`, no wasmtime needed.
//!
//! Set config, build a session and requests, call your plugin's functions
//! directly, then inspect what it logged or wrote:
//!
//! ```
//! use wardgate_sdk::testkit;
//! testkit::set_config(&[("mode", "strict")]);
//! assert_eq!(wardgate_sdk::config_get("mode").as_deref(), Some("strict"));
//! let s = testkit::session("analytics");
//! assert_eq!(s.connection, "analytics");
//! testkit::set_session(s);
//! assert_eq!(wardgate_sdk::session().unwrap().connection, "analytics");
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::host::LogLevel;
use crate::rows::PackedBuilder;
use crate::types::*;

/// What the host functions read and write during a native test.
#[derive(Debug, Clone, Default)]
pub struct Harness {
    /// `config-get` values.
    pub config: BTreeMap<String, String>,
    /// `config-json` answer.
    pub config_json: String,
    /// Value of `now-ms`.
    pub now_ms: u64,
    /// Everything logged, in order.
    pub logs: Vec<(LogLevel, String)>,
    /// Lines written with `write-output`.
    pub output: Vec<String>,
    /// When set, `write-output` fails with this message.
    pub output_error: Option<String>,
    /// Requests made with `http-post`: (url, content type, body).
    pub posts: Vec<(String, String, Vec<u8>)>,
    /// What `http-post` answers (default: status 200).
    pub post_answer: Option<Result<u16, String>>,
    /// What `session` answers (see [`set_session`]).
    pub session: Option<&'static Session>,
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness { config_json: "{}".into(), ..Default::default() });
}

/// Run `f` with this thread's harness.
pub fn with_harness<R>(f: impl FnOnce(&mut Harness) -> R) -> R {
    HARNESS.with(|h| f(&mut h.borrow_mut()))
}

/// Reset the harness and set string config values (and a matching `config-json`).
pub fn set_config(pairs: &[(&str, &str)]) {
    let json = {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{}:{}", json_string(k), json_string(v))).collect();
        format!("{{{}}}", body.join(","))
    };
    set_config_json(&json, pairs);
}

/// Reset the harness with a raw `config-json` document and `config-get` pairs.
pub fn set_config_json(json: &str, pairs: &[(&str, &str)]) {
    with_harness(|h| {
        *h = Harness {
            config: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            config_json: json.to_string(),
            ..Default::default()
        }
    });
}

/// Make `session` the one [`crate::session`] answers on this thread (kept
/// for the rest of the process: tests only).
pub fn set_session(session: Session) {
    let leaked: &'static Session = Box::leak(Box::new(session));
    with_harness(|h| h.session = Some(leaked));
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A human principal named `name`.
pub fn human(name: &str) -> Principal {
    Principal {
        subject: format!("user:{name}"),
        name: name.to_string(),
        email: Some(format!("{name}@example.com")),
        groups: vec![],
        kind: PrincipalKind::Human,
        issuer: "https://idp.example.com".into(),
    }
}

/// An agent principal named `name`.
pub fn agent(name: &str) -> Principal {
    Principal {
        subject: format!("sa:{name}"),
        name: name.to_string(),
        email: None,
        groups: vec!["agents".into()],
        kind: PrincipalKind::Agent,
        issuer: "wardgate".into(),
    }
}

/// A PostgreSQL session of an agent on `connection`.
pub fn session(connection: &str) -> Session {
    Session {
        id: "test-session".into(),
        connection: connection.to_string(),
        protocol: Protocol::Postgres,
        identity: Identity { principal: agent("test-agent"), on_behalf_of: vec![] },
        client_addr: "127.0.0.1:50000".into(),
        started_at_ms: 0,
    }
}

/// A statement of `kind` with nothing else set; adjust fields as needed.
pub fn statement(kind: StatementKind, text: &str) -> SqlStatement {
    SqlStatement {
        kind,
        node: String::new(),
        text: text.to_string(),
        tables_read: vec![],
        tables_written: vec![],
        functions: vec![],
        has_where: false,
        alter_drops: false,
        copy_program: false,
        copy_server_file: false,
        object_type: String::new(),
        columns: vec![],
    }
}

/// A column reference for [`SqlStatement::columns`].
pub fn column(table: Option<&str>, name: &str, usage: ColumnUsage) -> ColumnRef {
    ColumnRef { table: table.map(str::to_string), column: name.to_string(), usage }
}

/// A simple-query SQL request made of `statements`.
pub fn sql(statements: Vec<SqlStatement>) -> Request {
    let text = statements.iter().map(|s| s.text.clone()).collect::<Vec<_>>().join("; ");
    Request::Sql(SqlRequest {
        text,
        statements,
        parse_error: None,
        phase: SqlPhase::SimpleQuery,
        statement_name: String::new(),
    })
}

/// A SQL request the host could not parse.
pub fn unparsable(text: &str, error: &str) -> Request {
    Request::Sql(SqlRequest {
        text: text.to_string(),
        statements: vec![],
        parse_error: Some(error.to_string()),
        phase: SqlPhase::SimpleQuery,
        statement_name: String::new(),
    })
}

/// Pack text rows (None = NULL).
pub fn pack(rows: &[&[Option<&str>]]) -> PackedCells {
    let mut b = PackedBuilder::new();
    for row in rows {
        for cell in row.iter() {
            b.push_opt(cell.map(str::as_bytes));
        }
    }
    b.finish()
}

/// Text columns with the given names (type `text`, no source table).
pub fn text_columns(names: &[&str]) -> Vec<Column> {
    names.iter().map(|n| Column { name: n.to_string(), type_oid: 25, table: None, format: CellFormat::Text }).collect()
}

/// Unpack cells back into rows of strings (None = NULL) for assertions.
pub fn unpack(cells: &PackedCells, columns: usize) -> Vec<Vec<Option<String>>> {
    crate::rows::PackedRows::new(cells, columns)
        .expect("valid packed cells")
        .iter()
        .map(|r| r.map(|c| c.map(|b| String::from_utf8_lossy(b).into_owned())).collect())
        .collect()
}
