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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::catalog::Catalog;
use super::codec::{self, error_bytes, error_fields, frame_len, take_message, Message, ProtocolError, Reader};
use super::copyout::{self, BinaryRows, CopyOut};
use super::fastpath;
use super::hold::{self, ReviewAsk, ReviewCtx};
use super::rows::{self, CopyFormat, Field, Shape};
use super::session::SessionError;
use super::stream::BoxStream;
use super::upstream::Upstream;
use crate::metrics::Stats;
use crate::pipeline::types::{Column, Finding, PackedCells, Request, SqlPhase, SqlRequest};
use crate::pipeline::{Decision, Outcome, SessionPipeline};
use crate::record::body::{Findings, RequestEvent, ResponseError, ResponseEvent, Statements};
use crate::record::SessionRecorder;
use crate::sql::rowcap::Inserted;

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
    },
    Parse {
        name: String,
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
        formats: Vec<i16>,
    },
    Describe {
        portal: bool,
        name: String,
    },
    Execute {
        portal: String,
        id: u64,
        /// When it was forwarded.
        at: std::time::Instant,
    },
    Close,
    Sync,
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

#[derive(Default)]
struct Statement {
    fields: Option<Vec<Field>>,
    /// The statement is a `COPY ... TO STDOUT`.
    copy: Option<CopyOut>,
}

struct Portal {
    stmt: String,
    formats: Vec<i16>,
    fields: Option<Vec<Field>>,
    shape: Option<Arc<Shape>>,
}

#[derive(Default)]
struct Shared {
    expect: VecDeque<Expect>,
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
    tx_status: u8,
    closed: bool,
}

struct Ctx<'a> {
    shared: Arc<Mutex<Shared>>,
    pipeline: Arc<Mutex<SessionPipeline>>,
    notify: Arc<Notify>,
    recorder: &'a SessionRecorder,
    catalog: Catalog,
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
    catalog: Catalog,
    recorder: &SessionRecorder,
    record_rows: usize,
    stats: Arc<Stats>,
    review: ReviewCtx,
    max_rows_written: Option<u64>,
) -> Result<(), SessionError> {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream.stream);
    let ctx = Ctx {
        shared: Arc::new(Mutex::new(Shared { tx_status: upstream.tx_status, ..Default::default() })),
        pipeline: Arc::new(Mutex::new(pipeline)),
        notify: Arc::new(Notify::new()),
        recorder,
        catalog,
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
    super::stream::close(&mut client_w).await;
    ended
}

// ---------------------------------------------------------------- client side

struct ClientState {
    /// After a denied Parse, discard messages until Sync (as PostgreSQL does after an error).
    skipping: bool,
    /// Extended-protocol messages went upstream since the last Sync (or
    /// simple Query): nothing of the gateway's own may be put between them.
    unsynced: bool,
    next_id: u64,
    /// Prepared statements a guard routed to review: their executions are held.
    review_stmts: HashMap<String, Arc<ReviewAsk>>,
    /// Portals of such statements, with their bound parameters.
    review_portals: HashMap<String, (Arc<ReviewAsk>, hold::Params)>,
    /// Request id of each prepared statement, and of the statement each
    /// portal was bound to, in the client's order (a pipelining client binds
    /// and executes before the upstream has confirmed anything): responses
    /// are recorded against the request they answer.
    statement_ids: HashMap<String, u64>,
    portal_ids: HashMap<String, u64>,
}

/// A client message held for approval, and how to forward it if approved.
struct Held {
    ask: Arc<ReviewAsk>,
    params: hold::Params,
    message: Message,
    then: Expect,
}

async fn client_to_upstream(
    ctx: &Ctx<'_>,
    client: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    upstream: &mut WriteHalf<BoxStream>,
    mut review: ReviewCtx,
) -> Result<(), SessionError> {
    let mut st = ClientState {
        skipping: false,
        unsynced: false,
        next_id: 0,
        review_stmts: HashMap::new(),
        review_portals: HashMap::new(),
        statement_ids: HashMap::new(),
        portal_ids: HashMap::new(),
    };
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    // Bytes read from the client since this task last let the other side run.
    let mut unyielded = 0usize;
    loop {
        loop {
            let m = match take_message(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(protocol_violation(ctx, e).await),
            };
            if m.tag == b'X' {
                codec::put_message(&mut out, b'X', &[]);
                let _ = super::stream::send(upstream, &out).await;
                return Ok(());
            }
            match on_client_message(ctx, &mut st, m, &mut out) {
                Ok(None) => {}
                Ok(Some(held)) => {
                    // Everything before the held message goes out first, in order.
                    if !out.is_empty() {
                        super::stream::send(upstream, &out).await?;
                        out.clear();
                    }
                    let verdict =
                        hold::resolve(&mut review, &held.ask, &held.params, ctx.recorder, client, &mut buf).await?;
                    let simple = matches!(held.then, Expect::Query { .. } | Expect::Function { .. });
                    match verdict {
                        Ok(()) => {
                            let mut then = held.then;
                            if let Expect::Query { at, .. } | Expect::Execute { at, .. } | Expect::Function { at, .. } =
                                &mut then
                            {
                                *at = std::time::Instant::now();
                            }
                            if let Expect::Query { copies, .. } = &mut then {
                                *copies = look_up_columns(ctx, std::mem::take(copies).into(), &mut out);
                            }
                            ctx.shared.lock().expect.push_back(then);
                            codec::put_message(&mut out, held.message.tag, &held.message.body);
                        }
                        Err(bytes) => {
                            ctx.shared.lock().expect.push_back(Expect::Synthetic { bytes, ready: simple });
                            st.skipping = !simple;
                            ctx.notify.notify_one();
                        }
                    }
                }
                Err(e) => return Err(protocol_violation(ctx, e).await),
            }
        }
        if !out.is_empty() {
            super::stream::send(upstream, &out).await?;
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        let n = client.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // A client streaming bulk data (COPY FROM, large binds) keeps this
        // side ready for a whole cooperative budget (~4 MiB of reads): every
        // 16 KiB read, however it arrived (TLS hands over one record at a
        // time), let the other side run, so an error the upstream raised
        // early reaches the client while it is still writing. A query-sized
        // read (every pgbench query) rarely reaches it.
        unyielded += n;
        if unyielded >= YIELD_EVERY {
            unyielded = 0;
            tokio::task::yield_now().await;
        }
    }
}

async fn protocol_violation(ctx: &Ctx<'_>, e: ProtocolError) -> SessionError {
    ctx.recorder.emit("protocol.error", json!({"error": e.to_string()}));
    tracing::warn!("closing session: {e}");
    // The upstream side owns the client writer; it sees the closed flag and sends the error.
    {
        let mut s = ctx.shared.lock();
        s.expect.push_back(Expect::Synthetic {
            bytes: codec::fatal_bytes("08P01", &format!("Wardgate: {e}"), None),
            ready: false,
        });
        s.closed = true;
    }
    ctx.notify.notify_one();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    SessionError::Protocol(e)
}

fn deny_bytes(plugin: &str, reason: &str) -> Bytes {
    error_bytes("42501", &format!("Wardgate: denied by {plugin}: {reason}"), None)
}

fn on_client_message(
    ctx: &Ctx<'_>,
    st: &mut ClientState,
    m: Message,
    out: &mut BytesMut,
) -> Result<Option<Held>, ProtocolError> {
    // A lookup may go before this message only at a Sync boundary.
    let at_boundary = !st.unsynced;
    st.unsynced = match m.tag {
        b'S' | b'Q' | b'F' => false,
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => true,
        _ => st.unsynced,
    };
    if st.skipping {
        if m.tag == b'S' {
            st.skipping = false;
            ctx.shared.lock().expect.push_back(Expect::Sync);
            codec::put_message(out, b'S', &m.body);
        }
        return Ok(None);
    }
    match m.tag {
        b'Q' => {
            let text = Reader::new(&m.body, m.tag).cstr()?.to_string();
            st.next_id += 1;
            let id = st.next_id;
            let (request, violation) = crate::sql::analyze_checked(&text, SqlPhase::SimpleQuery, "");
            let copies = copy_outs(&request, &text, at_boundary);
            let unmaskable = unmaskable_copy(ctx, &copies);
            match decide(ctx, request, violation, id, unmaskable) {
                Decided::Review(ask) => {
                    // Its COPYs' columns are looked up when it is released.
                    let copies = copies.into();
                    return Ok(Some(Held {
                        ask: Arc::new(ask),
                        params: vec![],
                        then: Expect::Query {
                            copies,
                            id,
                            at: std::time::Instant::now(),
                            inserted: Inserted::default(),
                        },
                        message: m,
                    }));
                }
                Decided::Run(forward) => {
                    let copies = look_up_columns(ctx, forwarded(copies, &forward, at_boundary), out);
                    let inserted = forward.inserted;
                    ctx.shared.lock().expect.push_back(Expect::Query {
                        copies,
                        id,
                        at: std::time::Instant::now(),
                        inserted,
                    });
                    match forward.text {
                        None => codec::put_message(out, b'Q', &m.body),
                        Some(text) => {
                            let at = codec::begin(out, b'Q');
                            codec::put_cstr(out, &text);
                            codec::finish(out, at);
                        }
                    }
                }
                Decided::Refuse(bytes) => {
                    ctx.shared.lock().expect.push_back(Expect::Synthetic { bytes, ready: true });
                    ctx.notify.notify_one();
                }
            }
        }
        b'P' => {
            let mut r = Reader::new(&m.body, m.tag);
            let name = r.cstr()?.to_string();
            let text = r.cstr()?.to_string();
            let param_types = r.rest();
            st.next_id += 1;
            let id = st.next_id;
            let (request, violation) = crate::sql::analyze_checked(&text, SqlPhase::Parse, &name);
            let copies = copy_outs(&request, &text, at_boundary);
            let unmaskable = unmaskable_copy(ctx, &copies);
            st.review_stmts.remove(&name);
            let decided = match decide(ctx, request, violation, id, unmaskable) {
                // Preparing runs nothing: hold each execution, with its parameters, instead.
                Decided::Review(ask) => {
                    st.review_stmts.insert(name.clone(), Arc::new(ask));
                    Decided::Run(Forward::default())
                }
                other => other,
            };
            match decided {
                Decided::Review(_) => unreachable!("handled above"),
                Decided::Run(forward) => {
                    st.statement_ids.insert(name.clone(), id);
                    let copies = forwarded(copies, &forward, at_boundary);
                    let copy = look_up_columns(ctx, copies, out).pop_front();
                    let inserted = forward.inserted;
                    ctx.shared.lock().expect.push_back(Expect::Parse { name: name.clone(), copy, inserted });
                    match forward.text {
                        None => codec::put_message(out, b'P', &m.body),
                        Some(text) => {
                            let at = codec::begin(out, b'P');
                            codec::put_cstr(out, &name);
                            codec::put_cstr(out, &text);
                            bytes::BufMut::put_slice(out, param_types);
                            codec::finish(out, at);
                        }
                    }
                }
                Decided::Refuse(bytes) => {
                    ctx.shared.lock().expect.push_back(Expect::Synthetic { bytes, ready: false });
                    st.skipping = true;
                    ctx.notify.notify_one();
                }
            }
        }
        b'B' => {
            let mut r = Reader::new(&m.body, m.tag);
            let portal = r.cstr()?.to_string();
            let stmt = r.cstr()?.to_string();
            let nfmt = r.i16()?.max(0) as usize;
            let mut param_formats = Vec::with_capacity(nfmt * 2);
            for _ in 0..nfmt {
                param_formats.extend_from_slice(&r.i16()?.to_be_bytes());
            }
            let reviewed = st.review_stmts.get(&stmt).cloned();
            let mut params = vec![Some(param_formats)];
            let nparams = r.i16()?.max(0) as usize;
            for _ in 0..nparams {
                let len = r.i32()?;
                let value = if len >= 0 { Some(r.bytes(len as usize)?) } else { None };
                if reviewed.is_some() {
                    params.push(value.map(|v| v.to_vec()));
                }
            }
            match reviewed {
                Some(ask) => st.review_portals.insert(portal.clone(), (ask, params)),
                None => st.review_portals.remove(&portal),
            };
            match st.statement_ids.get(&stmt) {
                Some(&id) => st.portal_ids.insert(portal.clone(), id),
                None => st.portal_ids.remove(&portal),
            };
            let nres = r.i16()?.max(0) as usize;
            let mut formats = Vec::with_capacity(nres);
            for _ in 0..nres {
                formats.push(r.i16()?);
            }
            ctx.shared.lock().expect.push_back(Expect::Bind { portal, stmt, formats });
            codec::put_message(out, b'B', &m.body);
        }
        b'D' => {
            let mut r = Reader::new(&m.body, m.tag);
            let kind = r.u8()?;
            let name = r.cstr()?.to_string();
            ctx.shared.lock().expect.push_back(Expect::Describe { portal: kind == b'P', name });
            codec::put_message(out, b'D', &m.body);
        }
        b'E' => {
            let portal = Reader::new(&m.body, m.tag).cstr()?.to_string();
            let id = st.portal_ids.get(&portal).copied().unwrap_or(0);
            if let Some((ask, params)) = st.review_portals.get(&portal).cloned() {
                return Ok(Some(Held {
                    ask,
                    params,
                    then: Expect::Execute { portal, id, at: std::time::Instant::now() },
                    message: m,
                }));
            }
            ctx.shared.lock().expect.push_back(Expect::Execute { portal, id, at: std::time::Instant::now() });
            codec::put_message(out, b'E', &m.body);
        }
        b'C' => {
            let mut r = Reader::new(&m.body, m.tag);
            let (kind, name) = (r.u8()?, r.cstr()?.to_string());
            if kind == b'S' {
                st.review_stmts.remove(&name);
                st.statement_ids.remove(&name);
            } else {
                st.review_portals.remove(&name);
                st.portal_ids.remove(&name);
            }
            ctx.shared.lock().expect.push_back(Expect::Close);
            codec::put_message(out, b'C', &m.body);
        }
        b'S' => {
            ctx.shared.lock().expect.push_back(Expect::Sync);
            codec::put_message(out, b'S', &m.body);
        }
        b'H' | b'd' | b'c' | b'f' => codec::put_message(out, m.tag, &m.body),
        b'F' => {
            let refuse = |bytes| {
                ctx.shared.lock().expect.push_back(Expect::Synthetic { bytes, ready: true });
                ctx.notify.notify_one();
            };
            // What the guards never saw (or saw and tried to rewrite) is on record too.
            let refused = |reason: &str| {
                ctx.recorder.emit("request.refused", json!({"protocol": "function-call", "reason": reason}));
                refuse(error_bytes("42501", &format!("Wardgate: {reason}"), None));
            };
            let call = match fastpath::parse(&m.body)? {
                Ok(call) => call,
                Err(e) => {
                    refused(&e.to_string());
                    return Ok(None);
                }
            };
            st.next_id += 1;
            let id = st.next_id;
            let (request, violation) = crate::sql::analyze_checked(&call.sql, SqlPhase::SimpleQuery, "");
            let then = Expect::Function {
                id,
                at: std::time::Instant::now(),
                result: (call.name, call.result_type, call.result_format),
            };
            match decide(ctx, request, violation, id, false) {
                Decided::Review(ask) => {
                    return Ok(Some(Held { ask: Arc::new(ask), params: vec![], then, message: m }));
                }
                Decided::Run(Forward { text: None, .. }) => {
                    ctx.shared.lock().expect.push_back(then);
                    codec::put_message(out, b'F', &m.body);
                }
                Decided::Run(Forward { text: Some(_), .. }) => {
                    refused("a guard rewrote a function call; the function-call protocol cannot carry a rewrite")
                }
                Decided::Refuse(bytes) => refuse(bytes),
            }
        }
        other => return Err(ProtocolError::Unexpected(other as char)),
    }
    Ok(None)
}

/// The request's `COPY ... TO STDOUT` statements (none without parsing
/// when the analysis found no COPY TO); see [`lookable`].
fn copy_outs(req: &SqlRequest, text: &str, at_boundary: bool) -> Vec<CopyOut> {
    use crate::pipeline::types::StatementKind;
    if req.statements.iter().any(|s| s.kind == StatementKind::CopyTo) {
        lookable(copyout::copies(text), at_boundary)
    } else {
        Vec::new()
    }
}

/// COPYs whose columns may be looked up: only at a Sync boundary. Inside an
/// unsynced extended-protocol sequence the lookup's Sync would end the
/// client's implicit transaction (or its skip-to-Sync after an error), so
/// there the COPYs get no SELECT to look up.
fn lookable(mut copies: Vec<CopyOut>, at_boundary: bool) -> Vec<CopyOut> {
    if !at_boundary {
        copies.iter_mut().for_each(|c| c.select = None);
    }
    copies
}

/// The COPYs of the text that goes upstream: read again from a guard's
/// rewrite; a row cap's changes no COPY.
fn forwarded(copies: Vec<CopyOut>, forward: &Forward, at_boundary: bool) -> Vec<CopyOut> {
    match &forward.text {
        Some(text) if forward.by_guard => lookable(copyout::copies(text), at_boundary),
        _ => copies,
    }
}

/// A binary COPY whose columns cannot be looked up before it runs, while
/// maskers apply.
fn unmaskable_copy(ctx: &Ctx<'_>, copies: &[CopyOut]) -> bool {
    copies.iter().any(|c| c.format.binary && c.select.is_none()) && ctx.pipeline.lock().masks()
}

/// Ask the upstream for the columns of each COPY (see [`copyout`]) when
/// maskers apply: the lookups go out just before the COPY itself.
fn look_up_columns(ctx: &Ctx<'_>, copies: Vec<CopyOut>, out: &mut BytesMut) -> VecDeque<CopyOut> {
    if copies.is_empty() || !ctx.pipeline.lock().masks() {
        return copies.into();
    }
    let mut s = ctx.shared.lock();
    copies
        .into_iter()
        .map(|mut c| {
            if let Some(select) = &c.select {
                let slot = Arc::new(OnceLock::new());
                copyout::put_lookup(out, select);
                s.expect.push_back(Expect::Lookup(slot.clone()));
                c.described = Some(slot);
            }
            c
        })
        .collect()
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

/// Guards decide; the decision is recorded.
fn decide(
    ctx: &Ctx<'_>,
    mut request: SqlRequest,
    host_violation: Option<String>,
    id: u64,
    unmaskable_copy: bool,
) -> Decided {
    // `WHERE id IS NOT NULL` keeps every row when `id` is NOT NULL: no WHERE.
    // Any table of that name (in any schema, for an unqualified one) counts.
    crate::sql::apply_not_null(&mut request, |table, column| ctx.catalog.not_null_in_any(table, column));
    let mut pipeline = ctx.pipeline.lock();
    // The plugin set is pinned here, at the start of the request: its text is
    // masked, judged and its results masked by the same set.
    pipeline.refresh();
    let masks = pipeline.masks();
    // Recordings hold masked data only: statement literals can carry PII too.
    let recorded_text: String = if masks {
        pipeline.mask_text(&request.text).unwrap_or_else(|e| format!("[statement not recorded: {e}]"))
    } else {
        request.text.clone()
    };
    let phase = if request.phase == SqlPhase::Parse { "parse" } else { "query" };
    let started = std::time::Instant::now();
    // The host's own policy comes first and does not depend on plugins.
    let (result, decision, verdicts, request) = if let Some(reason) = &host_violation {
        let hint = Some("these settings are pinned so the gateway reads SQL exactly as PostgreSQL does");
        (Err(error_bytes("42501", &format!("Wardgate: {reason}"), hint)), "deny", Vec::new(), request)
    } else {
        let wrapped = Request::Sql(request);
        let Decision { outcome, verdicts } = pipeline.check(&wrapped, |r| match r {
            Request::Sql(s) => Request::Sql(crate::sql::analyze(&s.text, s.phase, &s.statement_name)),
            other => other,
        });
        let Request::Sql(request) = wrapped else { unreachable!("wrapped as SQL above") };
        let result = match &outcome {
            Outcome::Allow(_) if unmaskable_copy => Err(error_bytes(
                "42501",
                "Wardgate: binary COPY output cannot be masked here: its columns can only be looked up at a Sync \
                 boundary",
                Some("send the COPY as a simple query or as the first statement after Sync, or use FORMAT text or csv"),
            )),
            Outcome::Allow(Some(Request::Sql(rewritten))) if rewritten.text != request.text => {
                Ok(Some(rewritten.text.clone()))
            }
            Outcome::Allow(None | Some(Request::Sql(_))) => Ok(None),
            Outcome::Allow(Some(_)) => Err(error_bytes(
                "42501",
                "Wardgate: a guard rewrote this SQL request into another protocol's request",
                None,
            )),
            Outcome::Deny { plugin, reason } => Err(deny_bytes(plugin, reason)),
            Outcome::Review { plugin, review } => match &ctx.approvals_off {
                Some(connection) => Err(hold::approvals_off(plugin, &review.reason, connection)),
                // Not an error yet: the caller holds it (see `Decided::Review`).
                None => Ok(None),
            },
        };
        // The connection's row cap goes into what is allowed to run (a text
        // whose analysis, nested statements included, shows no write needs
        // no second parse).
        let by_guard = matches!(result, Ok(Some(_)));
        let mut inserted = Inserted::default();
        let result = match (result, ctx.max_rows_written) {
            (Ok(None), Some(_)) if !crate::sql::rowcap::may_write(&request.statements) => Ok(None),
            (Ok(rewritten), Some(max)) if matches!(outcome, Outcome::Allow(_)) => {
                match cap_rows(ctx, rewritten.as_deref().unwrap_or(&request.text), max) {
                    Ok(Some((capped, by_cap))) => {
                        if !by_guard {
                            inserted = by_cap;
                        }
                        Ok(Some(capped))
                    }
                    Ok(None) => Ok(rewritten),
                    Err(refused) => Err(refused),
                }
            }
            (result, _) => result,
        };
        let decision = match &outcome {
            Outcome::Review { .. } => "review",
            _ if result.is_err() => "deny",
            _ => "allow",
        };
        let review = match outcome {
            Outcome::Review { plugin, review } if result.is_ok() => Some((plugin, review)),
            _ => None,
        };
        (result.map(|text| (Forward { text, by_guard, inserted }, review)), decision, verdicts, request)
    };
    drop(pipeline);
    if result.is_err() {
        ctx.stats.requests_denied.fetch_add(1, Ordering::Relaxed);
    }
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    ctx.recorder.emit(
        "request",
        RequestEvent {
            decision,
            host_policy: host_violation.as_deref(),
            parse_error: request.parse_error.as_deref(),
            phase,
            policy_micros: started.elapsed().as_micros() as u64,
            request_id: id,
            statement: &recorded_text,
            statements: Statements(&request.statements),
            verdicts: &verdicts,
        },
    );
    // The request is on record before it can reach the upstream: fail closed.
    if let Err(e) = ctx.recorder.commit() {
        tracing::error!("refusing a request: {e}");
        return Decided::Refuse(error_bytes(
            "53100",
            &format!("Wardgate: {e}; requests are refused until it can be"),
            Some("the gateway's operator must free space in (or repair) its state directory"),
        ));
    }
    match result {
        Err(bytes) => Decided::Refuse(bytes),
        Ok((_, Some((plugin, review)))) => {
            Decided::Review(ReviewAsk { plugin, review, text: request.text, masked: recorded_text, request_id: id })
        }
        Ok((forward, None)) => Decided::Run(forward),
    }
}

/// The text to run under a row cap: `Ok(None)` when it runs as it is.
fn cap_rows(ctx: &Ctx<'_>, text: &str, max: u64) -> Result<Option<(String, Inserted)>, Bytes> {
    use crate::sql::rowcap::{cap_writes, Capped};
    // A key is unique only if it is in every table the name may mean (the
    // statement's check confirms it of the table the name resolves to).
    let unique_key = |table: &str, column: &str| ctx.catalog.unique_in_every(table, column);
    match cap_writes(text, max, &unique_key) {
        Capped::Unchanged => Ok(None),
        Capped::Rewritten(capped, inserted) => Ok(Some((capped, inserted))),
        Capped::Refused(why, hint) => Err(error_bytes("42501", &format!("Wardgate: {why}"), Some(hint))),
    }
}

// -------------------------------------------------------------- upstream side

/// A COPY TO STDOUT whose rows are being masked.
struct ActiveCopy {
    format: CopyFormat,
    shape: Arc<Shape>,
    /// Binary format: its tuples, whatever the CopyData boundaries.
    binary: Option<BinaryRows>,
    /// The binary header, until it goes out in front of the first tuple.
    header: Option<Bytes>,
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

async fn upstream_to_client(
    ctx: &Ctx<'_>,
    upstream: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    client: &mut WriteHalf<BoxStream>,
) -> Result<(), SessionError> {
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let mut res = Results {
        current: None,
        copy_out: None,
        copy_pending: vec![],
        lookup_failed: None,
        upstream_fatal: false,
        rows: 0,
        bytes: 0,
        findings: vec![],
        sample: vec![],
        request_id: 0,
        started: None,
    };
    loop {
        // Read every round, not once per session: a masker hot-added while
        // the session is open applies from its next request on (the request
        // side refreshes the plugin set first), as the README promises.
        let masks = ctx.pipeline.lock().masks();
        flush_synthetic(ctx, &mut out);
        let drained = drain(ctx, &mut res, masks, &mut buf, &mut out);
        // Write what was produced even when draining failed: it ends with the
        // error the client must see (a withheld result, a protocol error).
        if !out.is_empty() {
            // What the client is about to see is on record first (a crash
            // after this loses nothing the client was told). A failure was
            // logged where it happened, and new requests are refused meanwhile.
            let _ = ctx.recorder.commit();
            let written = super::stream::send(client, &out).await;
            out.clear();
            if drained.is_ok() {
                written?;
            }
        }
        // (`send` flushed whatever was written.)
        drained?;
        if ctx.shared.lock().closed {
            return Ok(());
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            n = upstream.read_buf(&mut buf) => {
                if n? == 0 {
                    flush_synthetic(ctx, &mut out);
                    if !res.upstream_fatal {
                        out.extend_from_slice(&codec::fatal_bytes("57P01", "Wardgate: the upstream server closed the connection", None));
                    }
                    let _ = super::stream::send(client, &out).await;
                    return Ok(());
                }
            }
            _ = ctx.notify.notified() => {}
        }
    }
}

/// Process every complete upstream message in `buf` into `out`, masking
/// consecutive DataRows in batches.
fn drain(
    ctx: &Ctx<'_>,
    res: &mut Results,
    masks: bool,
    buf: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let mut pending_rows: Vec<Bytes> = Vec::new();
    let mut pending_bytes = 0usize;
    // Consecutive CopyData payloads of a masked COPY, masked together.
    let mut pending_copy: Vec<u8> = Vec::new();
    loop {
        let total = match frame_len(buf) {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => return Err(upstream_malformed(e, out)),
        };
        if buf[0] == b'D' && masks {
            let mut frame = buf.split_to(total);
            bytes::Buf::advance(&mut frame, 5);
            pending_bytes += frame.len();
            pending_rows.push(frame.freeze());
            if pending_rows.len() >= BATCH_ROWS || pending_bytes >= BATCH_BYTES {
                mask_rows(ctx, res, &std::mem::take(&mut pending_rows), out)?;
                pending_bytes = 0;
            }
            continue;
        }
        if buf[0] == b'd' && masks && res.copy_out.is_some() {
            pending_copy.extend_from_slice(&buf.split_to(total)[5..]);
            if pending_copy.len() >= BATCH_BYTES {
                mask_copy(ctx, res, &std::mem::take(&mut pending_copy), out)?;
            }
            continue;
        }
        if !pending_rows.is_empty() {
            mask_rows(ctx, res, &std::mem::take(&mut pending_rows), out)?;
            pending_bytes = 0;
        }
        if !pending_copy.is_empty() {
            mask_copy(ctx, res, &std::mem::take(&mut pending_copy), out)?;
        }
        let Some(m) = take_message(buf).map_err(SessionError::Protocol)? else { break };
        on_upstream_message(ctx, res, masks, m, out)?;
        flush_synthetic(ctx, out);
    }
    if !pending_rows.is_empty() {
        mask_rows(ctx, res, &pending_rows, out)?;
    }
    if !pending_copy.is_empty() {
        mask_copy(ctx, res, &pending_copy, out)?;
    }
    Ok(())
}

/// Emit denials that have reached the head of the queue.
fn flush_synthetic(ctx: &Ctx<'_>, out: &mut BytesMut) {
    let mut s = ctx.shared.lock();
    while let Some(Expect::Synthetic { .. }) = s.expect.front() {
        if let Some(Expect::Synthetic { bytes, ready }) = s.expect.pop_front() {
            out.extend_from_slice(&bytes);
            if ready {
                codec::put_message(out, b'Z', &[s.tx_status]);
            }
        }
    }
}

fn mask_rows(ctx: &Ctx<'_>, res: &mut Results, rows_in: &[Bytes], out: &mut BytesMut) -> Result<(), SessionError> {
    let ncols = Reader::new(&rows_in[0], b'D').i16().unwrap_or(0).max(0) as usize;
    let shape = {
        let mut s = ctx.shared.lock();
        current_shape(&mut s, res, &ctx.catalog).unwrap_or_else(|| rows::unknown_shape(ncols))
    };
    let shape = if shape.conv.len() == ncols { shape } else { rows::unknown_shape(ncols) };
    mask_shaped_rows(ctx, res, rows_in, &shape, out)
}

/// Mask rows of a known shape (DataRow bodies) into DataRow messages.
fn mask_shaped_rows(
    ctx: &Ctx<'_>,
    res: &mut Results,
    rows_in: &[Bytes],
    shape: &Arc<Shape>,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    if !ctx.pipeline.lock().masks_columns(&shape.columns) {
        return pass_rows(ctx, res, rows_in, shape, out);
    }
    let packed = rows::pack(rows_in, shape).map_err(|e| upstream_malformed(e, out))?;
    let masked = ctx.pipeline.lock().mask_rows(&shape.columns, packed.clone());
    match masked {
        Ok(m) => {
            res.rows += rows_in.len() as u64;
            res.bytes += m.cells.data.len() as u64;
            merge_findings(&mut res.findings, &m.findings);
            sample(res, &m.cells, shape, ctx.record_rows);
            ctx.stats.rows_masked.fetch_add(rows_in.len() as u64, Ordering::Relaxed);
            rows::unpack(&m.cells, &packed, rows_in, shape, out);
            Ok(())
        }
        Err(e) => Err(withhold(ctx, &e, "result", packed.data.len(), out)),
    }
}

/// Rows no masker reads go out as they came; the recording still counts
/// them and samples the first few.
fn pass_rows(
    ctx: &Ctx<'_>,
    res: &mut Results,
    rows_in: &[Bytes],
    shape: &Shape,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let ncols = shape.columns.len();
    let want = ctx.record_rows.saturating_sub(res.sample.len()).min(rows_in.len());
    if want > 0 {
        let packed = rows::pack(&rows_in[..want], shape).map_err(SessionError::Protocol)?;
        sample(res, &packed, shape, ctx.record_rows);
    }
    rows::check(rows_in, shape).map_err(|e| upstream_malformed(e, out))?;
    for row in rows_in {
        // Cell bytes: the row minus its column count and one length per cell.
        res.bytes += row.len().saturating_sub(2 + 4 * ncols) as u64;
        codec::put_message(out, b'D', row);
    }
    res.rows += rows_in.len() as u64;
    Ok(())
}

/// A FunctionCallResponse through the maskers: its value is the one cell of
/// a row shaped by the call (see [`current_shape`]).
fn mask_function_result(
    ctx: &Ctx<'_>,
    res: &mut Results,
    name: &str,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let null = (-1i32).to_be_bytes();
    let mut row = BytesMut::with_capacity(body.len() + 2);
    bytes::BufMut::put_i16(&mut row, 1);
    row.extend_from_slice(body);
    let mut masked = BytesMut::new();
    let outcome = mask_rows(ctx, res, &[row.freeze()], &mut masked);
    if let Err(e) = outcome {
        out.extend_from_slice(&masked);
        return Err(e);
    }
    // DataRow(1 column) -> FunctionCallResponse: the same cell.
    let d = take_message(&mut masked)
        .map_err(SessionError::Protocol)?
        .ok_or(SessionError::Protocol(ProtocolError::Truncated('V')))?;
    if d.body.get(2..6) == Some(&null[..]) && body.get(..4) != Some(&null[..]) {
        // Large-object bytes cannot carry a mask; a silent NULL would
        // truncate the client's object without a word.
        let text = format!("Wardgate: {name} result withheld: it holds data the maskers hide");
        out.extend_from_slice(&error_bytes("42501", &text, None));
    } else {
        codec::put_message(out, b'V', &d.body[2..]);
    }
    Ok(())
}

/// Fail closed when a masker fails: no unmasked row leaves; the client gets an
/// error and the connection closes (the rest of a result cannot be skipped safely).
/// `batch` is the size of what the masker was given (a hint names it when the
/// plugin's memory limit was too small for it).
fn withhold(
    ctx: &Ctx<'_>,
    e: &crate::plugins::CallError,
    what: &str,
    batch: usize,
    out: &mut BytesMut,
) -> SessionError {
    ctx.recorder.emit("plugin.error", json!({"error": e.to_string(), "during": format!("masking {what}")}));
    let hint = (e.kind == crate::plugins::instances::FailureKind::Memory).then(|| {
        format!(
            "the batch held {:.1} MiB; memory_mib under [limits] in {}.toml bounds the values it can mask",
            batch as f64 / (1024.0 * 1024.0),
            e.plugin
        )
    });
    end_session(ctx, "XX000", &format!("Wardgate: {what} withheld: {e}"), hint.as_deref(), out);
    SessionError::Refused(e.to_string())
}

/// Nothing more of this result may leave: a FATAL error for the client,
/// and the session closes (the rest of a result cannot be skipped safely).
fn end_session(ctx: &Ctx<'_>, code: &str, message: &str, hint: Option<&str>, out: &mut BytesMut) {
    out.extend_from_slice(&codec::fatal_bytes(code, message, hint));
    ctx.shared.lock().closed = true;
}

fn merge_findings(into: &mut Vec<Finding>, from: &[Finding]) {
    for f in from {
        match into.iter_mut().find(|x| x.entity == f.entity) {
            Some(x) => x.count += f.count,
            None => into.push(f.clone()),
        }
    }
}

/// Keep the first rows of a result for the recording: text as text, a
/// binary value no masker could read as `\x` and its bytes in hex (as
/// PostgreSQL prints bytea); at most 200 characters a cell.
fn sample(res: &mut Results, cells: &PackedCells, shape: &Shape, cap: usize) {
    use std::fmt::Write as _;
    const MAX: usize = 200;
    let ncols = shape.conv.len();
    if res.sample.len() >= cap || ncols == 0 {
        return;
    }
    let mut off = 0usize;
    for row in cells.lengths.chunks(ncols) {
        if res.sample.len() >= cap {
            break;
        }
        let mut r = Vec::with_capacity(ncols);
        for (&l, conv) in row.iter().zip(&shape.conv) {
            if l < 0 {
                r.push(None);
                continue;
            }
            let end = off + l as usize;
            let bytes = &cells.data[off..end];
            off = end;
            r.push(Some(if *conv == rows::Conv::Opaque {
                let mut hex = String::from("\\x");
                for b in bytes.iter().take((MAX - 2) / 2) {
                    let _ = write!(hex, "{b:02x}");
                }
                hex
            } else {
                String::from_utf8_lossy(bytes).chars().take(MAX).collect()
            }));
        }
        res.sample.push(r);
    }
}

/// The shape of the rows now arriving: the simple-protocol description, or the
/// portal of the Execute at the head of the queue.
fn current_shape(s: &mut Shared, res: &Results, catalog: &Catalog) -> Option<Arc<Shape>> {
    match s.expect.front() {
        Some(&Expect::Function { result: (name, type_oid, format), .. }) => {
            let field = Field { name: name.to_string(), table_oid: 0, attnum: 0, type_oid, format };
            Some(rows::shape(&[field], None, catalog))
        }
        Some(Expect::Execute { portal, .. }) => {
            let portal = portal.clone();
            let (stmt, formats, pfields, cached) = {
                let p = s.portals.get(&portal)?;
                (p.stmt.clone(), p.formats.clone(), p.fields.clone(), p.shape.clone())
            };
            if let Some(c) = cached {
                return Some(c);
            }
            let shape = match pfields {
                Some(f) => rows::shape(&f, None, catalog),
                None => {
                    let f = s.statements.get(&stmt)?.fields.clone()?;
                    rows::shape(&f, Some(&formats), catalog)
                }
            };
            if let Some(p) = s.portals.get_mut(&portal) {
                p.shape = Some(shape.clone());
            }
            Some(shape)
        }
        _ => res.current.clone(),
    }
}

fn record_response(ctx: &Ctx<'_>, res: &mut Results, tag: Option<&str>, error: Option<(String, String)>) {
    if res.rows == 0 && tag.is_none() && error.is_none() {
        return;
    }
    ctx.recorder.emit(
        "response",
        ResponseEvent {
            bytes: res.bytes,
            command: tag,
            duration_us: res.started.map(|t| t.elapsed().as_micros() as u64),
            error: error.as_ref().map(|(code, message)| ResponseError { code, message }),
            findings: Findings(&res.findings),
            request_id: res.request_id,
            rows: res.rows,
            sample_rows: &res.sample,
        },
    );
    res.sample.clear();
    res.rows = 0;
    res.bytes = 0;
    res.findings.clear();
}

fn on_upstream_message(
    ctx: &Ctx<'_>,
    res: &mut Results,
    masks: bool,
    m: Message,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let mut s = ctx.shared.lock();
    if let Some(Expect::Lookup(slot)) = s.expect.front() {
        // The gateway's own COPY column lookup: its answers stop here.
        match m.tag {
            b'1' | b't' | b'3' => return Ok(()),
            b'T' | b'n' => {
                let fields = match m.tag {
                    b'T' => rows::parse_row_description(&m.body).map_err(SessionError::Protocol)?,
                    _ => Vec::new(),
                };
                let _ = slot.set(Ok(fields));
                return Ok(());
            }
            b'E' => {
                let _ = slot.set(Err(m.body.clone()));
                res.lookup_failed.get_or_insert(m.body);
                return Ok(());
            }
            b'Z' => {
                s.tx_status = m.body.first().copied().unwrap_or(b'I');
                s.expect.pop_front();
                return Ok(());
            }
            _ => {}
        }
    }
    match m.tag {
        b'1' => {
            if let Some(Expect::Parse { name, copy, .. }) = pop_if(&mut s, |e| matches!(e, Expect::Parse { .. })) {
                s.statements.insert(name, Statement { fields: None, copy });
            }
        }
        b'2' => {
            if let Some(Expect::Bind { portal, stmt, formats }) = pop_if(&mut s, |e| matches!(e, Expect::Bind { .. })) {
                s.portals.insert(portal, Portal { stmt, formats, fields: None, shape: None });
            }
        }
        b'3' => {
            pop_if(&mut s, |e| matches!(e, Expect::Close));
        }
        b't' => {}
        b'T' | b'n' => {
            let fields = if m.tag == b'T' {
                Some(rows::parse_row_description(&m.body).map_err(SessionError::Protocol)?)
            } else {
                None
            };
            match s.expect.front() {
                Some(Expect::Describe { .. }) => {
                    if let Some(Expect::Describe { portal, name }) = s.expect.pop_front() {
                        if portal {
                            if let Some(p) = s.portals.get_mut(&name) {
                                p.fields = fields;
                                p.shape = None;
                            }
                        } else {
                            let st = s.statements.entry(name).or_default();
                            st.fields = fields;
                        }
                    }
                }
                Some(Expect::Query { id, at, .. }) => {
                    (res.request_id, res.started) = (*id, Some(*at));
                    res.current = fields.map(|f| rows::shape(&f, None, &ctx.catalog));
                }
                _ => res.current = fields.map(|f| rows::shape(&f, None, &ctx.catalog)),
            }
        }
        b'C' | b'I' | b's' => {
            let tag = (m.tag == b'C').then(|| Reader::new(&m.body, m.tag).cstr().unwrap_or("").to_string());
            if let Some(Expect::Execute { id, at, .. } | Expect::Query { id, at, .. }) = s.expect.front() {
                (res.request_id, res.started) = (*id, Some(*at));
            }
            drop(s);
            record_response(ctx, res, tag.as_deref(), None);
            s = ctx.shared.lock();
            match s.expect.front() {
                Some(Expect::Execute { .. }) => {
                    s.expect.pop_front();
                }
                _ => res.current = None,
            }
        }
        b'E' => {
            let fields = error_fields(&m.body);
            // A COPY's column lookup failed in a transaction block: its error
            // is the COPY's cause (see `Results::lookup_failed`).
            let (m, fields) = match res.lookup_failed.take() {
                Some(body) if fields.iter().any(|(k, v)| *k == b'C' && v == "25P02") => {
                    let fields = error_fields(&body);
                    (Message { tag: b'E', body }, fields)
                }
                _ => (m, fields),
            };
            let (m, fields) = match row_cap_refusal(ctx, &fields) {
                Some(body) => {
                    let fields = error_fields(&body);
                    (Message { tag: b'E', body }, fields)
                }
                None => (m, fields),
            };
            // A position in a capped write's text is told in the client's.
            let (m, fields) = match s.expect.front() {
                Some(Expect::Query { inserted, .. } | Expect::Parse { inserted, .. }) if !inserted.is_empty() => {
                    let fields = client_position(fields, inserted);
                    (Message { tag: b'E', body: codec::fields_body(&fields) }, fields)
                }
                _ => (m, fields),
            };
            let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone()).unwrap_or_default();
            if let Some(
                Expect::Execute { id, at, .. } | Expect::Query { id, at, .. } | Expect::Function { id, at, .. },
            ) = s.expect.front()
            {
                (res.request_id, res.started) = (*id, Some(*at));
            }
            drop(s);
            let masked = mask_notice(ctx, masks, &m)?;
            record_response(ctx, res, None, Some((get(b'C'), masked.1.clone())));
            // V: the severity never localized (9.6+); S: the one older servers send.
            let severity = Some(get(b'V')).filter(|v| !v.is_empty()).unwrap_or_else(|| get(b'S'));
            res.upstream_fatal = matches!(severity.as_str(), "FATAL" | "PANIC");
            s = ctx.shared.lock();
            // In extended protocol the server skips to Sync: so do we.
            let extended = !matches!(s.expect.front(), Some(Expect::Query { .. } | Expect::Function { .. }) | None);
            if extended {
                while let Some(e) = s.expect.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    s.expect.pop_front();
                }
            }
            res.copy_out = None;
            res.current = None;
            codec::put_message(out, b'E', &masked.0);
            return Ok(());
        }
        b'Z' => {
            s.tx_status = m.body.first().copied().unwrap_or(b'I');
            while let Some(e) = s.expect.pop_front() {
                if matches!(e, Expect::Sync | Expect::Query { .. } | Expect::Function { .. }) {
                    break;
                }
            }
            res.current = None;
            res.copy_out = None;
            res.lookup_failed = None;
        }
        b'V' => {
            // A FunctionCall's result: masked as a one-column row.
            let Some(&Expect::Function { id, at, result: (name, ..) }) = s.expect.front() else {
                // Only a forwarded call has a result; anything else would leave unmasked.
                drop(s);
                tracing::error!("upstream sent a function result nobody asked for");
                out.extend_from_slice(&codec::fatal_bytes("08P01", "Wardgate: upstream protocol error", None));
                return Err(SessionError::Protocol(ProtocolError::Unexpected('V')));
            };
            (res.request_id, res.started) = (id, Some(at));
            drop(s);
            if masks {
                mask_function_result(ctx, res, name, &m.body, out)?;
            } else {
                res.rows += 1;
                codec::put_message(out, b'V', &m.body);
            }
            record_response(ctx, res, Some(name), None);
            return Ok(());
        }
        b'H' => {
            // COPY TO STDOUT begins: which of the request's COPYs it is.
            res.copy_pending.clear();
            res.copy_out = None;
            res.lookup_failed = None;
            let copy = if let Some(Expect::Query { copies, id, at, .. }) = s.expect.front_mut() {
                (res.request_id, res.started) = (*id, Some(*at));
                copies.pop_front()
            } else if let Some(Expect::Execute { portal, id, at }) = s.expect.front() {
                (res.request_id, res.started) = (*id, Some(*at));
                let stmt = s.portals.get(portal).map(|p| p.stmt.clone());
                stmt.and_then(|n| s.statements.get(&n)).and_then(|st| st.copy.clone())
            } else {
                None
            };
            if masks {
                drop(s);
                match start_copy(ctx, copy, &m.body) {
                    Ok(active) => res.copy_out = Some(active),
                    Err(reason) => {
                        ctx.recorder.emit("request.refused", json!({"reason": reason}));
                        end_session(ctx, "42501", &format!("Wardgate: {reason}"), None, out);
                        return Err(SessionError::Refused(reason));
                    }
                }
                s = ctx.shared.lock();
            }
        }
        b'c' => {
            if res.copy_out.is_some() {
                drop(s);
                finish_copy(ctx, res, out)?;
                s = ctx.shared.lock();
            }
            res.copy_out = None;
        }
        b'S' => {
            let mut r = Reader::new(&m.body, m.tag);
            let (k, v) = (r.cstr().unwrap_or(""), r.cstr().unwrap_or(""));
            if let Some(problem) = super::session::unsafe_parameter(k, v) {
                drop(s);
                ctx.recorder.emit("session.aborted", json!({"reason": problem}));
                out.extend_from_slice(&codec::fatal_bytes(
                    "XX000",
                    &format!("Wardgate: {problem}; the session is closed"),
                    None,
                ));
                ctx.shared.lock().closed = true;
                return Err(SessionError::Refused(problem));
            }
        }
        b'N' | b'A' if masks => {
            drop(s);
            if m.tag == b'N' {
                let (body, _) = mask_notice(ctx, masks, &m)?;
                codec::put_message(out, b'N', &body);
            } else {
                let mut r = Reader::new(&m.body, m.tag);
                let pid = r.i32().map_err(SessionError::Protocol)?;
                let channel = r.cstr().map_err(SessionError::Protocol)?.to_string();
                let payload = r.cstr().map_err(SessionError::Protocol)?.to_string();
                let payload =
                    ctx.pipeline.lock().mask_text(&payload).map_err(|e| SessionError::Refused(e.to_string()))?;
                let mut body = BytesMut::new();
                bytes::BufMut::put_i32(&mut body, pid);
                codec::put_cstr(&mut body, &channel);
                codec::put_cstr(&mut body, &payload);
                codec::put_message(out, b'A', &body);
            }
            return Ok(());
        }
        _ => {}
    }
    drop(s);
    codec::put_message(out, m.tag, &m.body);
    Ok(())
}

fn pop_if(s: &mut Shared, f: impl Fn(&Expect) -> bool) -> Option<Expect> {
    if s.expect.front().is_some_and(f) {
        s.expect.pop_front()
    } else {
        None
    }
}

/// An error's fields with its position (`P`) in the client's text rather
/// than in the capped text that ran.
fn client_position(mut fields: Vec<(u8, String)>, inserted: &Inserted) -> Vec<(u8, String)> {
    for (code, value) in &mut fields {
        if *code == b'P' {
            if let Ok(p) = value.parse::<usize>() {
                *value = inserted.original_position(p).to_string();
            }
        }
    }
    fields
}

/// The gateway's own ErrorResponse body for an upstream error that a row
/// cap's check raised (see [`crate::sql::rowcap`]).
fn row_cap_refusal(ctx: &Ctx<'_>, fields: &[(u8, String)]) -> Option<Bytes> {
    let max = ctx.max_rows_written?;
    if !fields.iter().any(|(k, v)| *k == b'C' && v == "22P02") {
        return None;
    }
    let message = fields.iter().find(|(k, _)| *k == b'M')?;
    let refusal = crate::sql::rowcap::refusal(&message.1)?;
    if refusal == crate::sql::rowcap::Refusal::KeyChanged {
        ctx.catalog.keys_changed();
    }
    Some(codec::error_body("42501", &refusal.message(max), Some(refusal.hint())))
}

/// Mask the text fields of an ErrorResponse/NoticeResponse (messages and
/// details can quote row values, e.g. a unique-violation's key).
fn mask_notice(ctx: &Ctx<'_>, masks: bool, m: &Message) -> Result<(Bytes, String), SessionError> {
    let fields = error_fields(&m.body);
    let message = fields.iter().find(|(k, _)| *k == b'M').map(|(_, v)| v.clone()).unwrap_or_default();
    if !masks {
        return Ok((m.body.clone(), message));
    }
    let sqlstate = fields.iter().find(|(k, _)| *k == b'C').map(|(_, v)| v.as_str()).unwrap_or("");
    let mut p = ctx.pipeline.lock();
    let mut body = BytesMut::new();
    let mut masked_message = message;
    for (code, value) in &fields {
        let v = if matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            let value = super::errors::withhold_data(sqlstate, *code, value);
            p.mask_text(&value).map_err(|e| SessionError::Refused(e.to_string()))?
        } else {
            value.clone()
        };
        if *code == b'M' {
            masked_message = v.clone();
        }
        bytes::BufMut::put_u8(&mut body, *code);
        codec::put_cstr(&mut body, &v);
    }
    bytes::BufMut::put_u8(&mut body, 0);
    Ok((body.freeze(), masked_message))
}

/// How the rows of the COPY that CopyOutResponse `body` begins are masked:
/// by the columns the lookup described; for text without them, by the
/// session's catalog (or line by line when even that is unknown). Binary
/// rows cannot be read without their types: the reason they are withheld.
fn start_copy(ctx: &Ctx<'_>, copy: Option<CopyOut>, body: &[u8]) -> Result<ActiveCopy, String> {
    let mut r = Reader::new(body, b'H');
    let binary = r.u8().map_err(|e| e.to_string())? == 1;
    let ncols = r.i16().map_err(|e| e.to_string())?.max(0) as usize;
    let format: i16 = if binary { 1 } else { 0 };
    let described = copy.as_ref().and_then(CopyOut::fields).filter(|f| f.len() == ncols);
    let shape = described.map(|f| rows::shape(f, Some(&[format]), &ctx.catalog));
    match (copy, shape) {
        (Some(c), Some(shape)) => {
            Ok(ActiveCopy { shape, format: c.format, binary: binary.then(|| BinaryRows::new(ncols)), header: None })
        }
        _ if binary => Err("binary COPY output withheld: the gateway could not learn the types of its columns, \
                            so it cannot mask them; use FORMAT text or csv"
            .into()),
        (Some(c), None) => {
            Ok(ActiveCopy { shape: copy_shape(&c.format, &ctx.catalog), format: c.format, binary: None, header: None })
        }
        // We cannot tell how these rows are laid out: mask each line as text.
        (None, _) => {
            Ok(ActiveCopy { format: CopyFormat::text(0), shape: rows::unknown_shape(1), binary: None, header: None })
        }
    }
}

/// Mask CopyData payloads of the COPY in progress.
fn mask_copy(ctx: &Ctx<'_>, res: &mut Results, data: &[u8], out: &mut BytesMut) -> Result<(), SessionError> {
    match res.copy_out.as_ref().map(|a| a.binary.is_some()) {
        Some(true) => mask_copy_binary(ctx, res, data, out),
        Some(false) => mask_copy_data(ctx, res, data, out),
        None => {
            codec::put_message(out, b'd', data);
            Ok(())
        }
    }
}

/// CopyDone: a text COPY's last line may lack its newline; a binary one
/// must have ended with its trailer.
fn finish_copy(ctx: &Ctx<'_>, res: &mut Results, out: &mut BytesMut) -> Result<(), SessionError> {
    if let Some(Err(e)) = res.copy_out.as_ref().and_then(|a| a.binary.as_ref()).map(BinaryRows::finish) {
        return Err(upstream_malformed(e, out));
    }
    if !res.copy_pending.is_empty() {
        let mut line = std::mem::take(&mut res.copy_pending);
        line.push(b'\n');
        mask_copy_data(ctx, res, &line, out)?;
    }
    Ok(())
}

/// Mask binary COPY data: tuples are DataRow bodies of the described shape.
fn mask_copy_binary(ctx: &Ctx<'_>, res: &mut Results, data: &[u8], out: &mut BytesMut) -> Result<(), SessionError> {
    let Some(active) = res.copy_out.as_mut() else { return Ok(()) };
    let shape = active.shape.clone();
    let parts = match active.binary.as_mut().map(|b| b.feed(data)) {
        Some(Ok(parts)) => parts,
        Some(Err(e)) => return Err(upstream_malformed(e, out)),
        None => return Ok(()),
    };
    let mut header = active.header.take().or(parts.header);
    if !parts.rows.is_empty() {
        let mut rows_out = BytesMut::new();
        let done = mask_shaped_rows(ctx, res, &parts.rows, &shape, &mut rows_out);
        copyout::rows_as_copy_data(rows_out, &mut header, out);
        done?;
    }
    if parts.trailer {
        copyout::put_copy_data(out, &mut header, &(-1i16).to_be_bytes());
    }
    if let Some(active) = res.copy_out.as_mut() {
        active.header = header;
    }
    Ok(())
}

/// The upstream broke the protocol: the client is told, the session ends.
fn upstream_malformed(e: ProtocolError, out: &mut BytesMut) -> SessionError {
    tracing::error!("upstream sent malformed bytes: {e}");
    out.extend_from_slice(&codec::fatal_bytes("08P01", "Wardgate: upstream protocol error", None));
    SessionError::Protocol(e)
}

fn copy_shape(c: &CopyFormat, catalog: &Catalog) -> Arc<Shape> {
    let table = c.table.as_ref().and_then(|t| {
        let qualified = if t.contains('.') { t.clone() } else { format!("public.{t}") };
        catalog.qualified(&qualified)
    });
    let names: Vec<String> = if !c.columns.is_empty() {
        c.columns.clone()
    } else {
        table.map(|t| t.columns.iter().filter(|n| !n.is_empty()).cloned().collect()).unwrap_or_default()
    };
    let mut shape = rows::unknown_shape(names.len().max(1));
    let s = Arc::make_mut(&mut shape);
    for (i, n) in names.iter().enumerate() {
        s.columns[i] = Column {
            name: n.clone(),
            type_oid: 0,
            table: table.map(|t| t.name.clone()),
            format: crate::pipeline::types::CellFormat::Text,
        };
    }
    shape
}

/// Mask one CopyData message of COPY TO STDOUT (text or CSV).
fn mask_copy_data(ctx: &Ctx<'_>, res: &mut Results, data: &[u8], out: &mut BytesMut) -> Result<(), SessionError> {
    let Some((fmt, shape)) = res.copy_out.as_ref().map(|a| (a.format.clone(), a.shape.clone())) else {
        return Ok(());
    };
    res.copy_pending.extend_from_slice(data);
    let Some(last_nl) = res.copy_pending.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
    let complete: Vec<u8> = res.copy_pending.drain(..=last_nl).collect();
    let lines: Vec<&[u8]> = complete[..complete.len() - 1].split(|&b| b == b'\n').collect();
    let whole = |l: &[u8]| vec![(Some(l.to_vec()), 0..l.len())];
    let whole_line = fmt.delimiter == 0;
    let parsed: Vec<Vec<rows::CopyField>> =
        lines.iter().map(|l| if whole_line { whole(l) } else { fmt.split(l) }).collect();
    let ncols = parsed.first().map(|r| r.len()).unwrap_or(0);
    let uniform = parsed.iter().all(|r| r.len() == ncols);
    // Rows that do not split evenly (a quoted newline in CSV) are masked as whole lines.
    let raw_lines = whole_line || !(uniform && ncols > 0);
    let (parsed, shape) = if !raw_lines {
        let shape = if shape.columns.len() == ncols { shape } else { rows::unknown_shape(ncols) };
        (parsed, shape)
    } else {
        (lines.iter().map(|l| whole(l)).collect(), rows::unknown_shape(1))
    };
    let ncols = shape.columns.len();
    let mut packed =
        PackedCells { data: Vec::with_capacity(complete.len()), lengths: Vec::with_capacity(parsed.len() * ncols) };
    for r in &parsed {
        for (c, _) in r {
            match c {
                None => packed.lengths.push(-1),
                Some(b) => {
                    packed.data.extend_from_slice(b);
                    packed.lengths.push(b.len() as i32);
                }
            }
        }
    }
    let batch = packed.data.len();
    let masked = ctx.pipeline.lock().mask_rows(&shape.columns, packed);
    let m = match masked {
        Ok(m) => m,
        Err(e) => return Err(withhold(ctx, &e, "COPY output", batch, out)),
    };
    res.rows += parsed.len() as u64;
    res.bytes += m.cells.data.len() as u64;
    merge_findings(&mut res.findings, &m.findings);
    sample(res, &m.cells, &shape, ctx.record_rows);
    let mut off = 0usize;
    for (i, row) in m.cells.lengths.chunks(ncols.max(1)).enumerate() {
        let mut cells: Vec<Option<&[u8]>> = Vec::with_capacity(ncols);
        for &l in row {
            if l < 0 {
                cells.push(None);
            } else {
                cells.push(Some(&m.cells.data[off..off + l as usize]));
                off += l as usize;
            }
        }
        // A field the maskers left alone keeps its text byte for byte as the
        // server wrote it (its quoting, FORCE_QUOTE, NULL string, escapes);
        // a masked one is written again in the COPY's format.
        let mut line = Vec::new();
        for (j, (cell, (before, raw))) in cells.iter().zip(&parsed[i]).enumerate() {
            if j > 0 {
                line.push(fmt.delimiter);
            }
            if before.as_deref() == *cell {
                line.extend_from_slice(&lines[i][raw.clone()]);
            } else if raw_lines {
                line.extend_from_slice(cell.unwrap_or(b""));
            } else {
                fmt.join(&[*cell], &mut line);
            }
        }
        line.push(b'\n');
        codec::put_message(out, b'd', &line);
    }
    Ok(())
}
