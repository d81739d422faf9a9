//! Event bodies.
//!
//! Most events pass a `serde_json::Value`. The two written for every request
//! ([`RequestEvent`], [`ResponseEvent`]) are typed and serialized straight
//! into the log, without building a JSON tree first (measured: building and
//! re-serializing that tree was a tenth of the gateway's CPU per query). Their
//! fields are declared in alphabetical order, which is the canonical form
//! `verify` re-creates; a test holds every typed body to it.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use crate::pipeline::types::{Finding, SqlStatement};
use crate::pipeline::VerdictRecord;

/// A body the log can write and the index digest can read.
pub trait Body: Serialize {
    /// The `decision` field of a request event.
    fn decision(&self) -> Option<&str> {
        None
    }

    /// The body as a JSON value (only for the few lifecycle events the
    /// digest keeps whole).
    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Body for Value {
    fn decision(&self) -> Option<&str> {
        self.get("decision").and_then(Value::as_str)
    }

    fn to_value(&self) -> Value {
        self.clone()
    }
}

/// A request and what the policy decided (kind `request`).
#[derive(serde::Serialize)]
pub struct RequestEvent<'a> {
    /// allow | deny | review
    pub decision: &'a str,
    /// Why the host itself refused it, if it did.
    pub host_policy: Option<&'a str>,
    /// The parser's error, if the text did not parse.
    pub parse_error: Option<&'a str>,
    /// query | parse
    pub phase: &'a str,
    /// Time the policy took.
    pub policy_micros: u64,
    /// The request's number in its session.
    pub request_id: u64,
    /// The text, masked.
    pub statement: &'a str,
    /// What the parser found in it.
    pub statements: Statements<'a>,
    /// Every guard consulted, in order.
    pub verdicts: &'a [VerdictRecord],
}

impl Body for RequestEvent<'_> {
    fn decision(&self) -> Option<&str> {
        Some(self.decision)
    }
}

/// Parsed statements, recorded without their text (the request's masked text
/// is recorded once).
pub struct Statements<'a>(pub &'a [SqlStatement]);

#[derive(serde::Serialize)]
struct StatementSummary<'a> {
    functions: &'a [String],
    has_where: bool,
    kind: &'static str,
    node: &'a str,
    tables_read: &'a [String],
    tables_written: &'a [String],
}

impl Serialize for Statements<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for st in self.0 {
            seq.serialize_element(&StatementSummary {
                functions: &st.functions,
                has_where: st.has_where,
                kind: crate::sql::kind_name(st.kind),
                node: &st.node,
                tables_read: &st.tables_read,
                tables_written: &st.tables_written,
            })?;
        }
        seq.end()
    }
}

/// What a request produced (kind `response`).
#[derive(serde::Serialize)]
pub struct ResponseEvent<'a> {
    /// Bytes of rows sent to the client.
    pub bytes: u64,
    /// The command tag, when the request completed.
    pub command: Option<&'a str>,
    /// From forwarding the request to this response.
    pub duration_us: Option<u64>,
    /// The error the request ended with.
    pub error: Option<ResponseError<'a>>,
    /// What the maskers found.
    pub findings: Findings<'a>,
    /// The request this answers.
    pub request_id: u64,
    /// Rows sent to the client.
    pub rows: u64,
    /// The first rows, masked.
    pub sample_rows: &'a [Vec<Option<String>>],
}

impl Body for ResponseEvent<'_> {}

/// An error a request ended with.
#[derive(serde::Serialize)]
pub struct ResponseError<'a> {
    /// SQLSTATE.
    pub code: &'a str,
    /// The server's message.
    pub message: &'a str,
}

/// Maskers' findings, as `{count, entity}` objects.
pub struct Findings<'a>(pub &'a [Finding]);

impl Serialize for Findings<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct One<'a> {
            count: u32,
            entity: &'a str,
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for f in self.0 {
            seq.serialize_element(&One { count: f.count, entity: &f.entity })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::types::SqlPhase;

    /// Serialized directly, a typed body must equal its canonical form
    /// (a JSON tree's sorted keys): otherwise `verify` would reject the log.
    fn canonical<B: Body>(b: &B) {
        let direct = serde_json::to_string(b).unwrap();
        assert_eq!(direct, b.to_value().to_string());
    }

    #[test]
    fn typed_bodies_are_canonical() {
        let parsed = crate::sql::analyze("update t set a = f(b) where c = 1", SqlPhase::SimpleQuery, "");
        let st = &parsed.statements[0];
        let verdicts = [VerdictRecord {
            cached: false,
            plugin: "g".into(),
            version: "1".into(),
            hash: "ab".into(),
            decision: "deny",
            reason: Some("no".into()),
            micros: 3,
        }];
        canonical(&RequestEvent {
            decision: "deny",
            host_policy: Some("p"),
            parse_error: None,
            phase: "query",
            policy_micros: 4,
            request_id: 1,
            statement: "select \"x\"\n",
            statements: Statements(std::slice::from_ref(st)),
            verdicts: &verdicts,
        });
        let findings = [Finding { entity: "email".into(), count: 2 }];
        canonical(&ResponseEvent {
            bytes: 10,
            command: Some("SELECT 1"),
            duration_us: Some(5),
            error: Some(ResponseError { code: "42501", message: "m" }),
            findings: Findings(&findings),
            request_id: 1,
            rows: 1,
            sample_rows: &[vec![Some("a".into()), None]],
        });
    }
}
