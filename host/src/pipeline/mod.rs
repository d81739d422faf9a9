//! The protocol-neutral policy pipeline of one session.
//!
//! request -> guards (in manifest order; first non-allow wins) -> decision;
//! response rows -> maskers (chained in order) -> client. Protocol adapters
//! build [`types::Request`]s and row batches and never see wasmtime.

pub mod types {
    //! The contract's data types, shared by the pipeline and protocol adapters.
    pub use crate::plugins::bindings::wardgate::plugin::types::*;
}

use foldhash::{HashMap, HashMapExt as _};
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Instant;

use crate::plugins::instances::Role;
use crate::plugins::{CallError, LoadedPlugin, Registry, SessionPlugins};
use types::{Column, Finding, PackedCells, Request, Review, RowBatch, Session, SqlRequest, SqlStatement, Verdict};

/// What one guard said, for the recording. Fields in alphabetical order: the
/// recording's canonical form (see [`crate::record::body`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerdictRecord {
    /// The guard was not called: it had allowed a request of the same
    /// structure in this session and declared that its verdicts depend on
    /// nothing else (`[guard] verdicts = "structure"`). Absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// allow | deny | review | rewrite | error
    pub decision: &'static str,
    /// SHA-256 of the plugin's `.wasm`.
    pub hash: String,
    /// Time the call took, microseconds.
    pub micros: u64,
    /// Plugin name.
    pub plugin: String,
    /// Reason given, if any.
    pub reason: Option<String>,
    /// Plugin version.
    pub version: String,
}

/// The pipeline's decision on a request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Run it: as it was (`None`), or as a guard rewrote it.
    Allow(Option<Request>),
    /// Refuse it.
    Deny {
        /// Plugin that refused (or failed).
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A human must approve it first.
    Review {
        /// Plugin that asked.
        plugin: String,
        /// Its review request.
        review: Review,
    },
}

/// Outcome plus the evidence of how it was reached.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The outcome.
    pub outcome: Outcome,
    /// Every guard consulted, in order.
    pub verdicts: Vec<VerdictRecord>,
}

/// Masked rows plus what was found.
#[derive(Debug, Clone)]
pub struct Masked {
    /// Cells after every masker.
    pub cells: PackedCells,
    /// Findings, summed over maskers.
    pub findings: Vec<Finding>,
}

/// The pipeline of one session.
pub struct SessionPipeline {
    plugins: SessionPlugins,
    /// The session as plugins see it.
    pub session: Session,
    guards: Vec<Arc<LoadedPlugin>>,
    maskers: Vec<Arc<LoadedPlugin>>,
    /// Required plugins that are loaded, and the error for one that is not;
    /// resolved once per plugin-set generation, not per call.
    required: Vec<Arc<LoadedPlugin>>,
    missing: Option<CallError>,
    generation: u64,
    /// Per result shape: which maskers read any of its columns (in the
    /// order of `maskers`). Asked once per shape and plugin-set generation.
    /// (This map and the next are looked up on every request and result:
    /// foldhash, seeded per process, instead of SipHash.)
    wanted: HashMap<Vec<Column>, Arc<[bool]>>,
    /// Request structures (see [`Structure`]) each guard that declared
    /// `[guard] verdicts = "structure"` allowed, by the hash of the guard's
    /// position in `guards` and the structure; equal hashes are told apart
    /// by comparing. Only allows are kept: a deny or review is asked again.
    allowed: HashMap<u64, Vec<(usize, SqlRequest)>>,
    allowed_len: usize,
    /// Texts the masker chain masked, when every masker in it declared
    /// `[masker] text = "pure"`: an equal text is answered from here (a
    /// driver's unnamed statement is parsed, so masked for the recording,
    /// on every execution).
    masked_texts: HashMap<String, String>,
}

/// Result shapes whose masker answers a session remembers.
const WANTED_CAP: usize = 512;
/// Allowed request structures a session remembers.
const ALLOWED_CAP: usize = 1024;
/// Masked texts a session remembers, and the longest text remembered: the
/// texts are the client's, so the memo's memory is bounded (~256 KiB).
const MASKED_TEXTS_CAP: usize = 64;
const MASKED_TEXT_MAX: usize = 2048;

/// What a guard that declared `[guard] verdicts = "structure"` may base its
/// verdict on: a SQL request without its text (the statements' text and the
/// values of their constants); everything the host parsed counts. Requests of
/// other protocols are their content: they have no structure apart from it.
///
/// Hashed and compared in place (no copy of the request per lookup). Every
/// field is named in [`statement_parts`] and [`Structure::parts`], so a field
/// added to the contract fails to compile here until it is decided whether
/// it is structure.
struct Structure<'a>(&'a SqlRequest);

impl Structure<'_> {
    fn parts(&self) -> (&Option<String>, &types::SqlPhase, &String, usize) {
        let SqlRequest { text: _, statements, parse_error, phase, statement_name } = self.0;
        (parse_error, phase, statement_name, statements.len())
    }
}

/// A statement's structure: all of it but its text.
#[allow(clippy::type_complexity)]
fn statement_parts(
    s: &SqlStatement,
) -> (
    &types::StatementKind,
    &String,
    &Vec<String>,
    &Vec<String>,
    &Vec<String>,
    bool,
    bool,
    bool,
    bool,
    &String,
    &Vec<types::ColumnRef>,
) {
    let SqlStatement {
        kind,
        node,
        text: _,
        tables_read,
        tables_written,
        functions,
        has_where,
        alter_drops,
        copy_program,
        copy_server_file,
        object_type,
        columns,
    } = s;
    (
        kind,
        node,
        tables_read,
        tables_written,
        functions,
        *has_where,
        *alter_drops,
        *copy_program,
        *copy_server_file,
        object_type,
        columns,
    )
}

impl std::hash::Hash for Structure<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h);
        self.0.statements.iter().for_each(|s| statement_parts(s).hash(h));
    }
}

impl PartialEq for Structure<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
            && self.0.statements.iter().map(statement_parts).eq(other.0.statements.iter().map(statement_parts))
    }
}

/// `request` as kept in the cache of allowed structures: its texts dropped
/// (they are not structure, and a client's text may be large).
fn without_text(request: &SqlRequest) -> SqlRequest {
    SqlRequest {
        text: String::new(),
        statements: request.statements.iter().map(|s| SqlStatement { text: String::new(), ..s.clone() }).collect(),
        parse_error: request.parse_error.clone(),
        phase: request.phase,
        statement_name: request.statement_name.clone(),
    }
}

fn record(plugin: &LoadedPlugin, decision: &'static str, reason: Option<String>, started: Instant) -> VerdictRecord {
    VerdictRecord {
        cached: false,
        plugin: plugin.manifest.name.clone(),
        version: plugin.manifest.version.clone(),
        hash: plugin.hash.clone(),
        decision,
        reason,
        micros: started.elapsed().as_micros() as u64,
    }
}

impl SessionPipeline {
    /// The pipeline for `session`; `required` names plugins its connection needs.
    pub fn new(registry: Arc<Registry>, session: Session, required: Vec<String>) -> Self {
        let protocol = match session.protocol {
            types::Protocol::Postgres => "postgres",
            types::Protocol::Ssh => "ssh",
            types::Protocol::Http => "http",
        };
        let plugins = SessionPlugins::new(registry, &session.id, &session.connection, protocol, required)
            .serving(session.clone());
        let mut p = SessionPipeline {
            plugins,
            session,
            guards: vec![],
            maskers: vec![],
            required: vec![],
            missing: None,
            generation: u64::MAX,
            wanted: HashMap::new(),
            allowed: HashMap::new(),
            allowed_len: 0,
            masked_texts: HashMap::new(),
        };
        p.refresh();
        p
    }

    /// Pick up hot-reloaded plugins; called at the start of each request.
    pub fn refresh(&mut self) {
        self.plugins.refresh();
        if self.plugins.generation() != self.generation {
            self.generation = self.plugins.generation();
            self.guards = self.plugins.with_role(Role::Guard);
            self.maskers = self.plugins.with_role(Role::Masker);
            (self.required, self.missing) = self.plugins.resolve_required();
            self.wanted.clear();
            self.allowed.clear();
            self.allowed_len = 0;
            self.masked_texts.clear();
        }
    }

    /// Why requests must be denied outright: a required plugin is missing or
    /// quarantined (quarantine can happen between two plugin-set swaps).
    fn blocked(&self) -> Option<CallError> {
        if let Some(m) = &self.missing {
            return Some(m.clone());
        }
        self.required.iter().find(|p| p.health.quarantined.load(std::sync::atomic::Ordering::Relaxed)).map(|p| {
            CallError {
                plugin: p.manifest.name.clone(),
                kind: crate::plugins::instances::FailureKind::Quarantined,
                detail: String::new(),
            }
        })
    }

    /// True when at least one masker applies (or a required plugin is missing,
    /// in which case masking must fail closed).
    pub fn masks(&self) -> bool {
        !self.maskers.is_empty() || self.blocked().is_some()
    }

    /// Ask every guard about `request`. `reanalyze` turns a guard's rewrite
    /// into a fully analysed request (for SQL: parse the new text again).
    pub fn check(&mut self, request: &Request, reanalyze: impl Fn(Request) -> Request) -> Decision {
        self.refresh();
        let mut verdicts = Vec::with_capacity(self.guards.len());
        if let Some(err) = self.blocked() {
            return Decision {
                outcome: Outcome::Deny { plugin: err.plugin.clone(), reason: err.to_string() },
                verdicts,
            };
        }
        // The request as the guards so far left it (a rewrite replaces it).
        let mut rewritten: Option<Request> = None;
        for at in 0..self.guards.len() {
            let g = self.guards[at].clone();
            let started = Instant::now();
            let asked = rewritten.as_ref().unwrap_or(request);
            // A quarantined guard is always called (and fails closed there).
            let by_structure =
                g.manifest.verdicts_by_structure && !g.health.quarantined.load(std::sync::atomic::Ordering::Relaxed);
            let key = match asked {
                Request::Sql(sql) if by_structure => Some((sql, self.allowed.hasher().hash_one((at, Structure(sql))))),
                _ => None,
            };
            let cached = key.is_some_and(|(sql, hash)| {
                self.allowed
                    .get(&hash)
                    .is_some_and(|v| v.iter().any(|(i, s)| *i == at && Structure(s) == Structure(sql)))
            });
            if cached {
                verdicts.push(VerdictRecord { cached: true, ..record(&g, "allow", None, started) });
                continue;
            }
            match self.plugins.check(&g, asked) {
                Ok(Verdict::Allow) => {
                    verdicts.push(record(&g, "allow", None, started));
                    if let Some((sql, hash)) = key {
                        if self.allowed_len >= ALLOWED_CAP {
                            self.allowed.clear();
                            self.allowed_len = 0;
                        }
                        self.allowed.entry(hash).or_default().push((at, without_text(sql)));
                        self.allowed_len += 1;
                    }
                }
                Ok(Verdict::Deny(reason)) => {
                    verdicts.push(record(&g, "deny", Some(reason.clone()), started));
                    return Decision { outcome: Outcome::Deny { plugin: g.manifest.name.clone(), reason }, verdicts };
                }
                Ok(Verdict::Review(review)) => {
                    verdicts.push(record(&g, "review", Some(review.reason.clone()), started));
                    return Decision { outcome: Outcome::Review { plugin: g.manifest.name.clone(), review }, verdicts };
                }
                Ok(Verdict::Rewrite(new)) => {
                    verdicts.push(record(&g, "rewrite", None, started));
                    rewritten = Some(reanalyze(new));
                }
                Err(e) => {
                    verdicts.push(record(&g, "error", Some(e.to_string()), started));
                    return Decision {
                        outcome: Outcome::Deny { plugin: g.manifest.name.clone(), reason: e.to_string() },
                        verdicts,
                    };
                }
            }
        }
        Decision { outcome: Outcome::Allow(rewritten), verdicts }
    }

    /// Which maskers read any of `columns`, in order (see the contract's
    /// `wants-columns`). A masker that fails to answer, or answers for the
    /// wrong number of columns, reads them all: it is called and fails closed there.
    fn wanted_by(&mut self, columns: &[Column]) -> Arc<[bool]> {
        if let Some(w) = self.wanted.get(columns) {
            return w.clone();
        }
        let wanted: Arc<[bool]> = self
            .maskers
            .clone()
            .iter()
            .map(|m| match self.plugins.wants_columns(m, columns) {
                Ok(answer) if answer.len() == columns.len() => answer.contains(&true),
                _ => true,
            })
            .collect();
        if self.wanted.len() >= WANTED_CAP {
            self.wanted.clear();
        }
        self.wanted.insert(columns.to_vec(), wanted.clone());
        wanted
    }

    /// True when rows of `columns` must go through [`Self::mask_rows`]: some
    /// masker reads one of the columns, or masking must fail closed.
    pub fn masks_columns(&mut self, columns: &[Column]) -> bool {
        self.blocked().is_some() || self.wanted_by(columns).contains(&true)
    }

    /// Run `cells` (rows of `columns`) through every masker that reads them, in order.
    pub fn mask_rows(&mut self, columns: &[Column], cells: PackedCells) -> Result<Masked, CallError> {
        if let Some(err) = self.blocked() {
            return Err(err);
        }
        let wanted = self.wanted_by(columns);
        let mut batch = RowBatch { columns: columns.to_vec(), cells };
        let mut findings: Vec<Finding> = Vec::new();
        for (m, _) in self.maskers.clone().into_iter().zip(wanted.iter()).filter(|(_, w)| **w) {
            let expected = batch.cells.lengths.len();
            let out = self.plugins.mask_rows(&m, &batch)?;
            if out.cells.lengths.len() != expected || !lengths_fit(&out.cells) {
                return Err(CallError {
                    plugin: m.manifest.name.clone(),
                    kind: crate::plugins::instances::FailureKind::Refused,
                    detail: format!(
                        "returned {} cells for {} (or inconsistent lengths)",
                        out.cells.lengths.len(),
                        expected
                    ),
                });
            }
            for f in out.findings {
                match findings.iter_mut().find(|x| x.entity == f.entity) {
                    Some(x) => x.count += f.count,
                    None => findings.push(f),
                }
            }
            batch.cells = out.cells;
        }
        Ok(Masked { cells: batch.cells, findings })
    }

    /// Run free text through every masker in order. When every masker
    /// declared its text masking pure, an equal text masked earlier in this
    /// session (and plugin-set generation) is answered without a call; a
    /// quarantined masker is always called (and fails closed there).
    pub fn mask_text(&mut self, text: &str) -> Result<String, CallError> {
        if let Some(err) = self.blocked() {
            return Err(err);
        }
        let reusable = text.len() <= MASKED_TEXT_MAX
            && self
                .maskers
                .iter()
                .all(|m| m.manifest.text_pure && !m.health.quarantined.load(std::sync::atomic::Ordering::Relaxed));
        if reusable {
            if let Some(masked) = self.masked_texts.get(text) {
                return Ok(masked.clone());
            }
        }
        let mut masked = text.to_string();
        for m in &self.maskers {
            masked = self.plugins.mask_text(m, &masked)?;
        }
        if reusable {
            if self.masked_texts.len() >= MASKED_TEXTS_CAP {
                self.masked_texts.clear();
            }
            self.masked_texts.insert(text.to_string(), masked.clone());
        }
        Ok(masked)
    }
}

/// Lengths are -1 or more and add up to the data length.
fn lengths_fit(cells: &PackedCells) -> bool {
    let mut total: usize = 0;
    for &l in &cells.lengths {
        if l < -1 {
            return false;
        }
        total += l.max(0) as usize;
    }
    total == cells.data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(r: &SqlRequest) -> u64 {
        foldhash::fast::FixedState::with_seed(7).hash_one((0usize, Structure(r)))
    }

    fn analyzed(text: &str) -> SqlRequest {
        crate::sql::analyze(text, types::SqlPhase::SimpleQuery, "")
    }

    #[test]
    fn structures_differ_only_where_more_than_text_differs() {
        let a = analyzed("SELECT id FROM orders WHERE id = 1");
        let b = analyzed("select id from orders where id = 987654");
        assert!(Structure(&a) == Structure(&b));
        assert_eq!(hash(&a), hash(&b));
        // What the cache keeps compares equal to what it was made from.
        assert!(Structure(&without_text(&a)) == Structure(&b));
        assert!(without_text(&a).text.is_empty() && without_text(&a).statements[0].text.is_empty());
        for other in [
            "SELECT id FROM customers WHERE id = 1",
            "SELECT id FROM orders WHERE id = 1; SELECT 1",
            "DELETE FROM orders WHERE id = 1",
            "SELECT lower(status) FROM orders WHERE id = 1",
        ] {
            assert!(Structure(&a) != Structure(&analyzed(other)), "{other}");
        }
        let mut named = a.clone();
        named.statement_name = "s1".into();
        assert!(Structure(&a) != Structure(&named));
        let mut parse = a.clone();
        parse.phase = types::SqlPhase::Parse;
        assert!(Structure(&a) != Structure(&parse));
        let mut broken = a.clone();
        broken.parse_error = Some("x".into());
        assert!(Structure(&a) != Structure(&broken));
    }
}
