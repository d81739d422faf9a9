//! What each prepared-statement name of the session stands for, as far as
//! the server's answers prove it.
//!
//! A name is defined by a Parse or by SQL's `PREPARE` (one namespace), and
//! dropped by a Close, `DEALLOCATE` or `DISCARD ALL`. None of those is sure
//! to take effect when the client side sees it: a Parse of a name in use
//! fails, a statement after an error is skipped to Sync, a `DEALLOCATE` in an
//! aborted transaction is refused. So a definition stays *pending* until its
//! answer comes, and a drop applies only when the server confirms it. Until
//! then a name may stand for any of its definitions: holds and guards take
//! them all, and a Bind that could run two different statements, one of
//! which a guard routed to review, is refused rather than guessed at.
//!
//! Within one Sync block the server skips everything after an error, so a
//! Bind that runs at all runs after every earlier message of its block
//! succeeded: there, the block's newest definition is the one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::sql::prepared::NameOp;

use super::hold::ReviewAsk;

/// One definition of a name, as the server was sent it.
#[derive(Debug)]
pub(super) struct Entry {
    seq: u64,
    /// The Sync block it was sent in.
    block: u64,
    /// Confirmed by the server.
    live: bool,
    pub def: Def,
}

/// What a definition is.
#[derive(Debug)]
pub(super) struct Def {
    /// The request that defined it (its rows are recorded against it).
    pub request: u64,
    /// The statement's text, or the whole `PREPARE` statement's.
    pub text: Arc<str>,
    /// `text` is a SQL `PREPARE` statement.
    pub sql_prepare: bool,
    /// A guard routed it to review: each execution is held.
    pub review: Option<Arc<ReviewAsk>>,
    /// The names its text runs (`EXECUTE`), and the last definition sent
    /// when it was judged with what they stood for (see [`Names::stale`]).
    pub uses_names: (Vec<String>, u64),
    /// Its text prepares, drops or runs names.
    pub mentions_names: bool,
}

impl Def {
    /// The definition as a `PREPARE` statement (what an approver is shown).
    pub fn shown(&self, name: &str) -> String {
        if self.sql_prepare {
            self.text.to_string()
        } else {
            crate::sql::prepared::as_prepare(name, &self.text)
        }
    }
}

/// What a forwarded Query or Execute will do to the names once it runs.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Per top-level statement (see [`crate::sql::prepared::NameRefs::tops`]); empty: nothing.
    pub ops: Vec<Option<NameOp>>,
    /// The request it answers (what its `PREPARE`d statements' rows are recorded against).
    pub request: u64,
    /// The review it was held for: what it prepares is held again when it runs.
    pub review: Option<Arc<ReviewAsk>>,
}

/// How the server answered a definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// ParseComplete, or the PREPARE's CommandComplete.
    Done,
    /// An error, or skipped after one.
    Failed,
    /// Neither seen (the gateway lost track): kept, as if done, without
    /// dropping anything older.
    Unknown,
}

/// The session's names.
#[derive(Debug, Default)]
pub(super) struct Names {
    defs: HashMap<String, Vec<Entry>>,
    /// The last definition's sequence number.
    next: u64,
    /// Sync blocks ended (by Sync, Query or FunctionCall); the current one
    /// is numbered one more (0 stands for none).
    block: u64,
}

/// Why a Bind is refused.
pub(super) const AMBIGUOUS: &str = "this name was prepared again before the server answered the earlier definition, \
     and one of them needs review: the gateway cannot tell which would run";

impl Names {
    /// A Sync, Query or FunctionCall comes: a new block begins.
    pub fn synced(&mut self) {
        self.block += 1;
    }

    /// A Parse goes upstream; returns its sequence number.
    pub fn define(&mut self, name: &str, def: Def) -> u64 {
        self.push(name, def, self.block + 1)
    }

    /// `block` 0: a `PREPARE` in a Query, whose failure does not make the
    /// server skip what follows (see [`Names::bound`]).
    fn push(&mut self, name: &str, def: Def, block: u64) -> u64 {
        self.next += 1;
        self.defs.entry(name.to_string()).or_default().push(Entry { seq: self.next, block, live: false, def });
        self.next
    }

    /// The server answered definition `seq` of `name`.
    pub fn answered(&mut self, name: &str, seq: u64, answer: Answer) {
        let Some(defs) = self.defs.get_mut(name) else { return };
        match answer {
            // A named statement can be defined only when the name is free;
            // the unnamed one replaces the last: either way nothing older stands.
            Answer::Done => {
                defs.retain(|d| d.seq >= seq);
                if let Some(d) = defs.iter_mut().find(|d| d.seq == seq) {
                    d.live = true;
                }
            }
            Answer::Failed => defs.retain(|d| d.seq != seq),
            Answer::Unknown => {
                if let Some(d) = defs.iter_mut().find(|d| d.seq == seq) {
                    d.live = true;
                }
            }
        }
        if defs.is_empty() {
            self.defs.remove(name);
        }
    }

    /// The server dropped `name` (CloseComplete, `DEALLOCATE`): its
    /// confirmed definitions are gone; those still on their way are not.
    pub fn dropped(&mut self, name: &str) {
        if let Some(defs) = self.defs.get_mut(name) {
            defs.retain(|d| !d.live);
            if defs.is_empty() {
                self.defs.remove(name);
            }
        }
    }

    /// `DEALLOCATE ALL` or `DISCARD ALL` ran.
    pub fn dropped_all(&mut self) {
        self.defs.retain(|_, defs| {
            defs.retain(|d| !d.live);
            !defs.is_empty()
        });
    }

    /// Everything `name` may stand for, oldest first.
    pub fn candidates(&self, name: &str) -> &[Entry] {
        self.defs.get(name).map_or(&[], Vec::as_slice)
    }

    /// What a Bind in the current block binds: the block's own newest
    /// definition if it sent one, else every candidate. `Err` when more
    /// than one could run and they are not equally harmless.
    pub fn bound(&self, name: &str) -> Result<Option<&Def>, &'static str> {
        let defs = self.candidates(name);
        let Some(newest) = defs.last() else { return Ok(None) };
        if newest.block == self.block + 1 || defs.len() == 1 {
            return Ok(Some(&newest.def));
        }
        if defs.iter().any(|e| e.def.review.is_some() || e.def.mentions_names) {
            return Err(AMBIGUOUS);
        }
        Ok(Some(&newest.def))
    }

    /// The last definition sent so far: a statement judged now with what
    /// names stand for is stale once one of them has a later one.
    pub fn judged(&self, names: Vec<String>) -> (Vec<String>, u64) {
        (names, self.next)
    }

    /// Which name of those a statement runs was defined again after it was
    /// judged (one defined and since dropped no longer matters: it cannot run).
    pub fn stale<'a>(&self, (names, judged): &'a (Vec<String>, u64)) -> Option<&'a str> {
        names.iter().find(|n| self.candidates(n).iter().any(|d| d.seq > *judged)).map(String::as_str)
    }
}

/// What a Query or an Execute does to the names, one entry per top-level
/// statement, settled by its CommandCompletes in turn.
#[derive(Debug, Default)]
pub(super) struct Effects(VecDeque<Option<Effect>>);

#[derive(Debug)]
enum Effect {
    Prepared { name: String, seq: u64 },
    Deallocated(String),
    DeallocatedAll,
}

impl Names {
    /// A text's top-level statements go upstream: its `PREPARE`s are pending
    /// definitions from now on.
    pub fn effects(&mut self, changes: &Changes) -> Effects {
        Effects(
            changes
                .ops
                .iter()
                .map(|op| {
                    Some(match op.as_ref()? {
                        NameOp::Prepare { name, text } => {
                            let def = Def {
                                request: changes.request,
                                text: text.as_str().into(),
                                sql_prepare: true,
                                review: changes.review.clone(),
                                uses_names: Default::default(),
                                mentions_names: false,
                            };
                            Effect::Prepared { name: name.clone(), seq: self.push(name, def, 0) }
                        }
                        NameOp::Deallocate(name) => Effect::Deallocated(name.clone()),
                        NameOp::DeallocateAll => Effect::DeallocatedAll,
                    })
                })
                .collect(),
        )
    }

    /// The next statement of `fx` completed.
    pub fn completed(&mut self, fx: &mut Effects) {
        match fx.0.pop_front().flatten() {
            Some(Effect::Prepared { name, seq }) => self.answered(&name, seq, Answer::Done),
            Some(Effect::Deallocated(name)) => self.dropped(&name),
            Some(Effect::DeallocatedAll) => self.dropped_all(),
            None => {}
        }
    }

    /// The rest of `fx` will not complete (`Failed`: an error ended it) or
    /// its end was not seen (`Unknown`).
    pub fn abandoned(&mut self, fx: &mut Effects, answer: Answer) {
        for e in std::mem::take(&mut fx.0).into_iter().flatten() {
            if let Effect::Prepared { name, seq } = e {
                self.answered(&name, seq, answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::types::Review;

    fn def(text: &str, review: bool) -> Def {
        Def {
            request: 1,
            text: text.into(),
            sql_prepare: false,
            review: review.then(|| {
                Arc::new(ReviewAsk {
                    plugin: "g".into(),
                    review: Review { reason: "r".into(), approver_groups: vec![], timeout_secs: 0 },
                    text: text.into(),
                    masked: text.into(),
                    request_id: 1,
                })
            }),
            uses_names: Default::default(),
            mentions_names: false,
        }
    }

    #[test]
    fn a_failed_parse_of_a_name_in_use_leaves_the_first_definition() {
        let mut n = Names::default();
        let first = n.define("m", def("MERGE …", true));
        n.answered("m", first, Answer::Done);
        n.synced();
        let second = n.define("m", def("SELECT 1", false));
        n.answered("m", second, Answer::Failed);
        n.synced();
        assert!(n.bound("m").unwrap().unwrap().review.is_some());
    }

    #[test]
    fn a_drop_counts_only_once_the_server_confirms_it() {
        let mut n = Names::default();
        let first = n.define("m", def("MERGE …", true));
        n.answered("m", first, Answer::Done);
        // A Close skipped after an error never confirms: the name still stands.
        n.synced();
        assert!(n.bound("m").unwrap().unwrap().review.is_some());
        n.dropped("m");
        assert!(n.bound("m").unwrap().is_none());
    }

    #[test]
    fn the_blocks_own_definition_is_the_one_a_bind_in_it_runs() {
        let mut n = Names::default();
        let first = n.define("", def("MERGE …", true));
        n.answered("", first, Answer::Done);
        n.synced();
        n.define("", def("SELECT 1", false));
        assert!(n.bound("").unwrap().unwrap().review.is_none());
        // The next block cannot know whether the new one replaced the old.
        n.synced();
        assert_eq!(n.bound("").unwrap_err(), AMBIGUOUS);
        // Confirmed: it did.
        n.answered("", first + 1, Answer::Done);
        assert!(n.bound("").unwrap().unwrap().review.is_none());
    }

    #[test]
    fn prepares_settle_by_their_command_completes_in_turn() {
        let mut n = Names::default();
        let ops = crate::sql::prepared::name_refs("PREPARE a AS SELECT 1; SELECT 2; PREPARE b AS SELECT 3").tops;
        let mut fx = n.effects(&Changes { ops, request: 7, review: None });
        assert_eq!(n.candidates("a").len(), 1);
        n.completed(&mut fx);
        n.completed(&mut fx);
        n.abandoned(&mut fx, Answer::Failed);
        assert!(n.candidates("a")[0].live);
        assert!(n.candidates("b").is_empty());
        let judged = n.judged(vec!["a".into()]);
        assert_eq!(n.stale(&judged), None);
        let again = n.define("a", def("SELECT 4", false));
        assert_eq!(n.stale(&judged), Some("a"));
        n.answered("a", again, Answer::Failed);
        assert_eq!(n.stale(&judged), None);
        let again = n.define("a", def("SELECT 4", false));
        let ops = crate::sql::prepared::name_refs("DISCARD ALL").tops;
        let mut fx = n.effects(&Changes { ops, request: 8, review: None });
        n.completed(&mut fx);
        // The pending definition is not dropped by a DISCARD sent before it was answered.
        assert_eq!(n.candidates("a").len(), 1);
        assert!(!n.candidates("a")[0].live);
        n.answered("a", again, Answer::Done);
        n.dropped("a");
        assert!(n.candidates("a").is_empty() && n.stale(&judged).is_none());
    }
}
