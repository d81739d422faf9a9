//! The relay of an authenticated session: client -> gateway -> upstream and
//! back, with guards on every Query/Parse and maskers on every result row.
//!
//! Two halves, one per direction, polled together in the session's task, so
//! neither can block the other (one loop writing to a full upstream socket
//! while the upstream waits for us to read would deadlock a pipelining
//! client); being one task, no cross-thread wake-up separates them. They
//! share an expectation queue:
//! the client side pushes what each forwarded message will produce; the
//! upstream side pops as responses arrive and so always knows which
//! statement and which columns a DataRow belongs to, in simple and extended
//! protocol, with pipelining. A denied request never reaches the upstream:
//! its ErrorResponse is queued in order and emitted by the upstream side when
//! everything before it has been answered.
//!
//! Writes are batched: everything produced from one read is written at once,
//! so a large result costs one syscall per read buffer, not per row; memory
//! stays bounded by the batch size however large the result is.
//!
//! * `client`: the client side (decoding, guards, holds, forwarding).
//! * `decide`: what the guards and the row cap make of one request.
//! * `results`: the upstream side (matching answers to expectations).
//! * `mask`: result rows through the maskers, and their recording.
//! * `copy`: `COPY … TO STDOUT` output through the maskers.
//! * `names`: what each prepared-statement name stands for, as the
//!   server's answers prove it (holds and `EXECUTE`s follow it).
//!
//! The state both sides share is defined here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::catalog::{Catalog, ViewCache};
use super::codec::{self, error_bytes, error_fields, frame_len, take_message, Message, ProtocolError, Reader};
use super::copyout::{self, BinaryRows, CopyOut};
use super::hold::{self, ReviewAsk, ReviewCtx};
use super::rows::{self, CopyFormat, Field, Shape};
use super::session::{self, SessionError};
use super::stream::{self, BoxStream};
use super::upstream::Upstream;
use super::{errors, fastpath};
use crate::metrics::Stats;
use crate::pipeline::types::{Column, Finding, PackedCells, Request, SqlPhase, SqlRequest, StatementKind};
use crate::pipeline::{Decision, Outcome, SessionPipeline};
use crate::record::body::{Findings, RequestEvent, ResponseError, ResponseEvent, Statements};
use crate::record::SessionRecorder;
use crate::sql::rowcap::Inserted;

mod client;
mod copy;
mod decide;
mod mask;
mod names;
mod reread;
mod results;

use client::*;
use copy::*;
use decide::*;
use mask::*;
use names::{Answer, Changes, Def, Effects, Names};
use reread::SessionCatalog;
use results::*;

/// Rows masked per plugin call.
const BATCH_ROWS: usize = 1024;
/// Bytes of rows masked per plugin call.
const BATCH_BYTES: usize = 1 << 20;
/// Read buffer size.
const READ_CHUNK: usize = 64 * 1024;
/// Client bytes read between two turns of the upstream side (see `client_to_upstream`).
const YIELD_EVERY: usize = 16 * 1024;

/// What a forwarded client message will produce.
#[derive(Debug)]
enum Expect {
    /// Simple Query: zero or more results, then ReadyForQuery.
    Query {
        /// Its `COPY ... TO STDOUT` statements, in order, not yet begun.
        copies: VecDeque<CopyOut>,
        id: u64,
        /// When it was forwarded (for the response's duration).
        at: std::time::Instant,
        /// What a row cap inserted into its text (error positions map back).
        inserted: Inserted,
        /// What its statements do to the prepared-statement names.
        names: Effects,
    },
    Parse {
        name: String,
        /// Its definition of the name (see [`names`]).
        seq: u64,
        /// The statement is a `COPY ... TO STDOUT`.
        copy: Option<CopyOut>,
        /// What a row cap inserted into its text.
        inserted: Inserted,
    },
    /// A COPY's column lookup (see [`copyout`]): answered by the gateway, not the client.
    Lookup(Arc<OnceLock<copyout::Described>>),
    Bind {
        portal: String,
        stmt: String,
        /// The request id of the statement's Parse (see [`Portal::request`]).
        request: u64,
    },
    Describe {
        portal: bool,
        name: String,
        /// The gateway's own (see [`ClientState::described_portals`]): its answer stops here.
        hidden: bool,
    },
    Execute {
        portal: String,
        /// When it was forwarded.
        at: std::time::Instant,
        /// What its statement does to the prepared-statement names.
        names: Effects,
    },
    Close {
        portal: bool,
        name: String,
    },
    Sync,
    /// A CopyDone or CopyFail the client sent before the gateway knew
    /// whether the server had begun reading COPY data: the server answers
    /// nothing to it, and it marks where a COPY's ignored Syncs end (see
    /// [`results::copy_in_began`]).
    CopyEnd,
    /// A large-object FunctionCall: its result, then ReadyForQuery.
    Function {
        id: u64,
        at: std::time::Instant,
        /// Function name, result type and format.
        result: (&'static str, u32, i16),
    },
    /// A denial, emitted in place; `ready` adds ReadyForQuery (simple protocol).
    Synthetic {
        bytes: Bytes,
        ready: bool,
    },
}

/// A bound portal (or a `DECLARE`d cursor), with what its statement was
/// when it was bound: a statement closed and parsed again under the same
/// name is another one, and the portal still runs the first.
#[derive(Default)]
struct Portal {
    /// Its statement is a `COPY ... TO STDOUT`.
    copy: Option<CopyOut>,
    /// Its description (the answer to a Describe of the portal, the client's
    /// or the gateway's own), formats included.
    fields: Option<Vec<Field>>,
    shape: Option<Arc<Shape>>,
    /// Made by Bind (not a `DECLARE`d cursor): it ends with its transaction.
    bound: bool,
    /// The request its rows answer: its statement's Parse, recorded with
    /// the text (0: a cursor, which no Parse made).
    request: u64,
}

#[derive(Default)]
struct Shared {
    expect: VecDeque<Expect>,
    /// Prepared statements that are a `COPY ... TO STDOUT` (only those:
    /// a session that prepares ever new names keeps no entry for each).
    copy_statements: HashMap<String, CopyOut>,
    portals: HashMap<String, Portal>,
    tx_status: u8,
    closed: bool,
    /// The client side's reason to close (a protocol violation): sent
    /// ahead of answers still to come, which will not.
    fatal: Option<Bytes>,
    /// Where a `COPY … FROM STDIN` stands (see [`client::copy_step`]).
    copy_in: CopyIn,
    /// What each prepared-statement name stands for.
    names: Names,
}

/// How far a `COPY … FROM STDIN` has come, from both sides' messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum CopyIn {
    /// No COPY data in flight.
    #[default]
    Idle,
    /// The client sent CopyData before the server's CopyInResponse reached
    /// the gateway (no driver sends it so early): until CopyDone or
    /// CopyFail, a Sync would be ignored or answered depending on whether
    /// the COPY failed on that data first, which the gateway cannot know.
    Early,
    /// The server is reading COPY data (CopyInResponse came) and the client
    /// has not ended it: the server ignores Sync until then.
    Reading,
}

impl Shared {
    /// The request the answer at the head of the queue belongs to, and when it was forwarded.
    fn answering(&self) -> Option<(u64, std::time::Instant)> {
        match self.expect.front()? {
            Expect::Query { id, at, .. } | Expect::Function { id, at, .. } => Some((*id, *at)),
            Expect::Execute { portal, at, .. } => Some((self.portals.get(portal).map_or(0, |p| p.request), *at)),
            _ => None,
        }
    }
}

struct Ctx<'a> {
    shared: Arc<Mutex<Shared>>,
    pipeline: Arc<Mutex<SessionPipeline>>,
    notify: Arc<Notify>,
    recorder: &'a SessionRecorder,
    catalog: SessionCatalog<'a>,
    record_rows: usize,
    stats: Arc<Stats>,
    /// Approvals off: review verdicts are refused where they are made.
    approvals_off: Option<String>,
    /// The connection's `max_rows_written` (see [`crate::sql::rowcap`]).
    max_rows_written: Option<u64>,
}

/// Relay until either side closes.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: BoxStream,
    client_buf: BytesMut,
    upstream: Upstream,
    pipeline: SessionPipeline,
    (catalog, views): (Catalog, &ViewCache),
    recorder: &SessionRecorder,
    record_rows: usize,
    stats: Arc<Stats>,
    review: ReviewCtx,
    max_rows_written: Option<u64>,
) -> Result<(), SessionError> {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream.stream);
    let connection = review.connection.clone();
    let ctx = Ctx {
        shared: Arc::new(Mutex::new(Shared { tx_status: upstream.tx_status, ..Default::default() })),
        pipeline: Arc::new(Mutex::new(pipeline)),
        notify: Arc::new(Notify::new()),
        recorder,
        catalog: SessionCatalog::new(catalog, views, &connection),
        record_rows,
        stats,
        approvals_off: (review.settings.mode == crate::config::HoldMode::Off).then(|| review.connection.clone()),
        max_rows_written,
    };
    let c2u = client_to_upstream(&ctx, &mut client_r, client_buf, &mut up_w, review);
    // Login notices first, then whatever followed the upstream's ReadyForQuery.
    let mut pending = upstream.notices;
    pending.extend_from_slice(&upstream.leftover);
    let u2c = upstream_to_client(&ctx, &mut up_r, pending, &mut client_w);
    // Whichever side ends first ends the session.
    let ended = tokio::select! {
        r = c2u => r,
        r = u2c => r,
    };
    stream::close(&mut client_w).await;
    ended
}

struct ClientState {
    /// After a denied Parse, discard messages until Sync (as PostgreSQL does after an error).
    skipping: bool,
    /// Extended-protocol messages went upstream since the last Sync (or
    /// simple Query): nothing of the gateway's own may be put between them.
    unsynced: bool,
    next_id: u64,
    /// Portals whose statement prepares or drops names when it runs.
    portal_changes: HashMap<String, Arc<Changes>>,
    /// Portals the client described since they were bound and since
    /// anything else ran. An Execute of any other portal gets a Describe of
    /// the gateway's own first: a client may skip Describe, a `DECLARE`d
    /// cursor is never bound, and what a statement's name stood for when the
    /// client described it is not what it stands for after SQL (or a
    /// function's dynamic SQL) ran `DEALLOCATE s; PREPARE s …` or
    /// `CLOSE c; DECLARE c …`. Only the portal's own description, asked
    /// just before it runs, tells maskers each value's column, type and
    /// format for sure (a column rule cannot be skipped by not asking, or by
    /// renaming).
    described_portals: HashSet<String>,
}

/// A client message held for approval, and how to forward it if approved.
struct Held {
    ask: Arc<ReviewAsk>,
    params: hold::Params,
    message: Message,
    then: Expect,
    /// What it does to the prepared-statement names if it runs.
    changes: Arc<Changes>,
}

/// What goes upstream for a request that runs.
#[derive(Default)]
struct Forward {
    /// The text to send instead of the client's: a guard's rewrite, a row
    /// cap's check, or both.
    text: Option<String>,
    /// A guard rewrote the text.
    by_guard: bool,
    /// What a row cap inserted into the client's text (nothing if a guard
    /// rewrote it: positions then are the guard's text's).
    inserted: Inserted,
}

/// What the guards decided about one request.
enum Decided {
    /// Run it.
    Run(Forward),
    /// Send this ErrorResponse instead.
    Refuse(Bytes),
    /// Hold it for a human.
    Review(ReviewAsk),
}

/// A COPY TO STDOUT whose rows are being masked.
struct ActiveCopy {
    format: CopyFormat,
    shape: Arc<Shape>,
    /// Binary format: its tuples, whatever the CopyData boundaries.
    binary: Option<BinaryRows>,
    /// The binary header, until it goes out in front of the first tuple.
    header: Option<Bytes>,
}

impl Results {
    /// What follows answers this request (see [`Shared::answering`]), forwarded then.
    fn answers(&mut self, request: Option<(u64, std::time::Instant)>) {
        if let Some((id, at)) = request {
            (self.request_id, self.started) = (id, Some(at));
        }
    }
}

struct Results {
    /// Result of the current simple-protocol statement.
    current: Option<Arc<Shape>>,
    /// COPY TO STDOUT in progress, when its rows are masked.
    copy_out: Option<ActiveCopy>,
    /// Partial COPY line carried between CopyData messages.
    copy_pending: Vec<u8>,
    /// The ErrorResponse a COPY's column lookup got: in a transaction block
    /// it aborted the transaction, so the COPY's own error would only say
    /// so; the client is shown this one, the COPY's real cause, instead.
    lookup_failed: Option<Bytes>,
    /// The upstream's last error was FATAL or PANIC: it explains the close
    /// that follows, so the client sees that error and not one of ours.
    upstream_fatal: bool,
    /// Summary of the result being produced, for the recording.
    rows: u64,
    bytes: u64,
    findings: Vec<Finding>,
    sample: Vec<Vec<Option<String>>>,
    request_id: u64,
    /// When the request this result answers was forwarded.
    started: Option<std::time::Instant>,
}
