//! The client side: each message the client sends is decoded, put to the
//! guards (Query, Parse, FunctionCall), held for review or refused, and what
//! runs goes upstream with its expectation queued.

use super::*;
use crate::sql::prepared::{Executed, NameRefs};

pub(super) async fn client_to_upstream(
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
        portal_changes: HashMap::new(),
        described_portals: HashSet::new(),
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
                let _ = stream::send(upstream, &out).await;
                return Ok(());
            }
            if matches!(m.tag, b'Q' | b'P') && !st.unsynced && !st.skipping {
                reread::before_request(ctx, &m, upstream, &mut out).await?;
            }
            match on_client_message(ctx, &mut st, m, &mut out) {
                Ok(None) => {}
                Ok(Some(held)) => {
                    // Everything before the held message goes out first, in order.
                    if !out.is_empty() {
                        stream::send(upstream, &out).await?;
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
                            queue(ctx, then, &held.changes);
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
            stream::send(upstream, &out).await?;
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

pub(super) async fn protocol_violation(ctx: &Ctx<'_>, e: ProtocolError) -> SessionError {
    ctx.recorder.emit("protocol.error", json!({"error": e.to_string()}));
    tracing::warn!("closing session: {e}");
    // The upstream side owns the client writer; it sees the closed flag and sends the error.
    {
        let mut s = ctx.shared.lock();
        s.fatal = Some(codec::fatal_bytes("08P01", &format!("Wardgate: {e}"), None));
        s.closed = true;
    }
    ctx.notify.notify_one();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    SessionError::Protocol(e)
}

pub(super) fn deny_bytes(plugin: &str, reason: &str) -> Bytes {
    error_bytes("42501", &format!("Wardgate: denied by {plugin}: {reason}"), None)
}

pub(super) fn on_client_message(
    ctx: &Ctx<'_>,
    st: &mut ClientState,
    m: Message,
    out: &mut BytesMut,
) -> Result<Option<Held>, ProtocolError> {
    if copy_step(ctx, &m, out)? {
        return Ok(None);
    }
    // A lookup may go before this message only at a Sync boundary.
    let at_boundary = !st.unsynced;
    st.unsynced = match m.tag {
        b'S' | b'Q' | b'F' => false,
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => true,
        _ => st.unsynced,
    };
    if matches!(m.tag, b'S' | b'Q' | b'F') {
        ctx.shared.lock().names.synced();
    }
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
            let (mut request, violation) = crate::sql::analyze_checked(&text, SqlPhase::SimpleQuery, "");
            // It may close or declare cursors (`CLOSE c; DECLARE c …`).
            st.described_portals.clear();
            let refs = names_used(&request);
            let definitions = expand(ctx, &mut request, &refs.executes);
            let only_prepares = refs.only_prepares();
            let mut changes = Changes { ops: refs.tops, request: id, review: None };
            let copies = copy_outs(&request, &text, at_boundary);
            let unmaskable = unmaskable_copy(ctx, &copies);
            let query = |copies, inserted| Expect::Query {
                copies,
                id,
                at: std::time::Instant::now(),
                inserted,
                names: Effects::default(),
            };
            match decide(ctx, request, violation, id, unmaskable, &definitions) {
                // Preparing runs nothing: hold each execution instead, as for a Parse.
                Decided::Review(ask) if only_prepares => {
                    changes.review = Some(Arc::new(ask));
                    queue(ctx, query(VecDeque::new(), Inserted::default()), &changes);
                    codec::put_message(out, b'Q', &m.body);
                }
                Decided::Review(ask) => {
                    // What it prepares is held again when it runs.
                    let ask = Arc::new(ask);
                    changes.review = Some(ask.clone());
                    // Its COPYs' columns are looked up when it is released.
                    return Ok(Some(Held {
                        ask,
                        params: vec![],
                        then: query(copies.into(), Inserted::default()),
                        message: m,
                        changes: Arc::new(changes),
                    }));
                }
                Decided::Run(forward) => {
                    let copies = look_up_columns(ctx, forwarded(copies, &forward, at_boundary), out);
                    // A guard's rewrite may prepare other names.
                    let changes = match &forward.text {
                        Some(text) if forward.by_guard => {
                            Changes { ops: crate::sql::prepared::name_refs(text).tops, request: id, review: None }
                        }
                        _ => changes,
                    };
                    queue(ctx, query(copies, forward.inserted), &changes);
                    match forward.text {
                        None => codec::put_message(out, b'Q', &m.body),
                        Some(text) => codec::put_query(out, &text),
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
            let (mut request, violation) = crate::sql::analyze_checked(&text, SqlPhase::Parse, &name);
            let mentions_names = crate::sql::prepared::mentions_names(&request.statements);
            let refs = names_used(&request);
            let uses_names = ctx.shared.lock().names.judged(refs.executes.iter().map(|e| e.name.clone()).collect());
            let definitions = expand(ctx, &mut request, &refs.executes);
            let copies = copy_outs(&request, &text, at_boundary);
            let unmaskable = unmaskable_copy(ctx, &copies);
            let (review, decided) = match decide(ctx, request, violation, id, unmaskable, &definitions) {
                // Preparing runs nothing: hold each execution, with its parameters, instead.
                Decided::Review(ask) => (Some(Arc::new(ask)), Decided::Run(Forward::default())),
                other => (None, other),
            };
            match decided {
                Decided::Review(_) => unreachable!("handled above"),
                Decided::Run(forward) => {
                    let copies = forwarded(copies, &forward, at_boundary);
                    let copy = look_up_columns(ctx, copies, out).pop_front();
                    let inserted = forward.inserted;
                    match &forward.text {
                        None => codec::put_message(out, b'P', &m.body),
                        Some(text) => codec::put_parse(out, &name, text, param_types),
                    }
                    // The name stands for what the server was sent.
                    let def = Def {
                        request: id,
                        text: forward.text.unwrap_or(text).into(),
                        sql_prepare: false,
                        review,
                        uses_names,
                        mentions_names,
                    };
                    let mut s = ctx.shared.lock();
                    let seq = s.names.define(&name, def);
                    s.expect.push_back(Expect::Parse { name, seq, copy, inserted });
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
            let Bound { review: reviewed, request, changes } = match bound(ctx, &stmt) {
                Ok(bound) => bound,
                Err(why) => {
                    ctx.recorder.emit("request.refused", json!({"protocol": "bind", "statement": stmt, "reason": why}));
                    let hint = Some("close the statement, Sync, and prepare it again");
                    ctx.shared.lock().expect.push_back(Expect::Synthetic {
                        bytes: error_bytes("42P03", &format!("Wardgate: prepared statement \"{stmt}\": {why}"), hint),
                        ready: false,
                    });
                    st.skipping = true;
                    ctx.notify.notify_one();
                    return Ok(None);
                }
            };
            let mut params = vec![Some(param_formats)];
            let nparams = r.i16()?.max(0) as usize;
            for _ in 0..nparams {
                let len = r.i32()?;
                let value = if len >= 0 { Some(r.bytes(len as usize)?) } else { None };
                if reviewed.is_some() {
                    params.push(value.map(|v| v.to_vec()));
                }
            }
            match changes {
                Some(changes) => st.portal_changes.insert(portal.clone(), Arc::new(changes)),
                None => st.portal_changes.remove(&portal),
            };
            st.described_portals.remove(&portal);
            let then = Expect::Bind { portal, stmt, request };
            // A reviewed statement's portal does not exist until approved:
            // once bound, SQL's FETCH or MOVE could run it as well as Execute.
            if let Some(ask) = reviewed {
                return Ok(Some(Held { ask, params, then, message: m, changes: Arc::default() }));
            }
            ctx.shared.lock().expect.push_back(then);
            codec::put_message(out, b'B', &m.body);
        }
        b'D' => {
            let mut r = Reader::new(&m.body, m.tag);
            let kind = r.u8()?;
            let name = r.cstr()?.to_string();
            if kind == b'P' {
                st.described_portals.insert(name.clone());
            }
            ctx.shared.lock().expect.push_back(Expect::Describe { portal: kind == b'P', name, hidden: false });
            codec::put_message(out, b'D', &m.body);
        }
        b'E' => {
            let portal = Reader::new(&m.body, m.tag).cstr()?.to_string();
            // Running a statement may close or declare cursors: only this portal stays known.
            let known = st.described_portals.contains(&portal);
            st.described_portals.clear();
            st.described_portals.insert(portal.clone());
            if !known {
                ctx.shared.lock().expect.push_back(Expect::Describe {
                    portal: true,
                    name: portal.clone(),
                    hidden: true,
                });
                codec::put_describe(out, b'P', &portal);
            }
            let changes = st.portal_changes.get(&portal).cloned().unwrap_or_default();
            queue(ctx, Expect::Execute { portal, at: std::time::Instant::now(), names: Effects::default() }, &changes);
            codec::put_message(out, b'E', &m.body);
        }
        b'C' => {
            let mut r = Reader::new(&m.body, m.tag);
            let (kind, name) = (r.u8()?, r.cstr()?.to_string());
            // A statement's name is dropped when the server confirms it (see [`names`]).
            if kind != b'S' {
                st.portal_changes.remove(&name);
                st.described_portals.remove(&name);
            }
            ctx.shared.lock().expect.push_back(Expect::Close { portal: kind != b'S', name });
            codec::put_message(out, b'C', &m.body);
        }
        b'S' => {
            ctx.shared.lock().expect.push_back(Expect::Sync);
            codec::put_message(out, b'S', &m.body);
        }
        b'H' | b'd' => codec::put_message(out, m.tag, &m.body),
        b'c' | b'f' => {
            // It may end a COPY whose CopyInResponse is still on its way.
            ctx.shared.lock().expect.push_back(Expect::CopyEnd);
            codec::put_message(out, m.tag, &m.body);
        }
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
            st.described_portals.clear();
            let then = Expect::Function {
                id,
                at: std::time::Instant::now(),
                result: (call.name, call.result_type, call.result_format),
            };
            match decide(ctx, request, violation, id, false, "") {
                Decided::Review(ask) => {
                    let changes = Arc::default();
                    return Ok(Some(Held { ask: Arc::new(ask), params: vec![], then, message: m, changes }));
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

/// The client's side of a `COPY … FROM STDIN` (see [`CopyIn`]); `true`:
/// the message was dealt with here. While the server reads COPY data,
/// CopyData and Flush go through and CopyDone or CopyFail ends the COPY. A
/// Sync is not sent: the server would ignore it, and had the COPY already
/// failed, it would end a skip to Sync whose end the gateway could not
/// place. Anything else the server would take as the COPY's failure and
/// lose, and a Sync after data sent before the server asked for it may be
/// answered or not: either ends the session.
pub(super) fn copy_step(ctx: &Ctx<'_>, m: &Message, out: &mut BytesMut) -> Result<bool, ProtocolError> {
    let mut s = ctx.shared.lock();
    let inside = |what: String| {
        ProtocolError::Malformed(format!(
            "{what} inside COPY FROM STDIN data (end the COPY with CopyDone or CopyFail first)"
        ))
    };
    match (s.copy_in, m.tag) {
        (CopyIn::Reading, b'd' | b'H') => {
            codec::put_message(out, m.tag, &m.body);
            Ok(true)
        }
        (CopyIn::Reading, b'c' | b'f') => {
            s.copy_in = CopyIn::Idle;
            codec::put_message(out, m.tag, &m.body);
            Ok(true)
        }
        (CopyIn::Reading, b'S') => Ok(true),
        (CopyIn::Reading, other) => Err(inside(format!("message '{}'", other as char))),
        (CopyIn::Early, b'S') => Err(inside("Sync (after data sent before the server asked for it)".into())),
        // Forwarded as any message is; an end also marks where a COPY's
        // ignored Syncs stop (see [`results::copy_in_began`]).
        (_, b'c' | b'f') => {
            s.copy_in = CopyIn::Idle;
            Ok(false)
        }
        (CopyIn::Idle, b'd') => {
            s.copy_in = CopyIn::Early;
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The request's `COPY ... TO STDOUT` statements (none without parsing
/// when the analysis found no COPY TO); see [`lookable`].
pub(super) fn copy_outs(req: &SqlRequest, text: &str, at_boundary: bool) -> Vec<CopyOut> {
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
pub(super) fn lookable(mut copies: Vec<CopyOut>, at_boundary: bool) -> Vec<CopyOut> {
    if !at_boundary {
        copies.iter_mut().for_each(|c| c.select = None);
    }
    copies
}

/// The COPYs of the text that goes upstream: read again from a guard's
/// rewrite; a row cap's changes no COPY.
pub(super) fn forwarded(copies: Vec<CopyOut>, forward: &Forward, at_boundary: bool) -> Vec<CopyOut> {
    match &forward.text {
        Some(text) if forward.by_guard => lookable(copyout::copies(text), at_boundary),
        _ => copies,
    }
}

/// A binary COPY whose columns cannot be looked up before it runs, while
/// maskers apply.
pub(super) fn unmaskable_copy(ctx: &Ctx<'_>, copies: &[CopyOut]) -> bool {
    copies.iter().any(|c| c.format.binary && c.select.is_none()) && ctx.pipeline.lock().masks()
}

/// Ask the upstream for the columns of each COPY (see [`copyout`]) when
/// maskers apply: the lookups go out just before the COPY itself.
pub(super) fn look_up_columns(ctx: &Ctx<'_>, copies: Vec<CopyOut>, out: &mut BytesMut) -> VecDeque<CopyOut> {
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

/// Queue what a forwarded message will produce; the `PREPARE`s a Query or
/// an Execute runs are pending definitions from now on.
pub(super) fn queue(ctx: &Ctx<'_>, mut then: Expect, changes: &Changes) {
    let mut s = ctx.shared.lock();
    if !changes.ops.is_empty() {
        if let Expect::Query { names, .. } | Expect::Execute { names, .. } = &mut then {
            *names = s.names.effects(changes);
        }
    }
    s.expect.push_back(then);
}

/// The names a request's text prepares, drops and runs (parsed again only
/// when its analysis shows any).
pub(super) fn names_used(request: &SqlRequest) -> NameRefs {
    if crate::sql::prepared::mentions_names(&request.statements) {
        crate::sql::prepared::name_refs(&request.text)
    } else {
        NameRefs::default()
    }
}

/// Most levels of statements run by name that [`expand`] follows.
const EXPAND_DEPTH: usize = 8;

/// Give the guards what each name the request `EXECUTE`s stands for: the
/// statements of every definition it may have (see [`names`]), and of the
/// names those run in turn. Returns the definitions as `PREPARE`
/// statements, for the approver and the recording.
pub(super) fn expand(ctx: &Ctx<'_>, request: &mut SqlRequest, executes: &[Executed]) -> String {
    let mut definitions = String::new();
    let mut todo: VecDeque<(Executed, usize)> = executes.iter().map(|e| (e.clone(), 0)).collect();
    let mut seen = HashSet::new();
    while let Some((e, depth)) = todo.pop_front() {
        let defs: Vec<_> = {
            let s = ctx.shared.lock();
            let defs = s.names.candidates(&e.name);
            defs.iter()
                .map(|d| &d.def)
                .map(|d| (d.text.clone(), d.sql_prepare, d.mentions_names, d.shown(&e.name)))
                .collect()
        };
        for (text, sql_prepare, mentions_names, shown) in defs {
            if !seen.insert((e.name.clone(), text.clone(), e.copied)) {
                continue;
            }
            request.statements.extend(crate::sql::prepared::executed_statements(&text, sql_prepare, e.copied));
            definitions.push_str(&shown);
            definitions.push_str(";\n");
            if mentions_names && depth < EXPAND_DEPTH {
                for inner in crate::sql::prepared::name_refs(&text).executes {
                    todo.push_back((Executed { copied: inner.copied || e.copied, ..inner }, depth + 1));
                }
            }
        }
    }
    definitions
}

/// What a Bind binds, as far as the gateway follows it.
#[derive(Default)]
struct Bound {
    /// The review its statement's definition asks for: the Bind is held.
    review: Option<Arc<ReviewAsk>>,
    /// The request that defined the statement (0: none the gateway saw).
    request: u64,
    /// What running it does to the names.
    changes: Option<Changes>,
}

/// What a Bind of `stmt` binds. `Err`: it cannot be told (see
/// [`names::Names::bound`]) or it runs a name defined again since it was judged.
fn bound(ctx: &Ctx<'_>, stmt: &str) -> Result<Bound, String> {
    let (review, request, dynamic) = {
        let s = ctx.shared.lock();
        let Some(def) = s.names.bound(stmt).map_err(str::to_string)? else { return Ok(Bound::default()) };
        if let Some(name) = s.names.stale(&def.uses_names) {
            return Err(format!("it runs prepared statement \"{name}\", which was prepared again after it was judged"));
        }
        (def.review.clone(), def.request, (def.mentions_names && !def.sql_prepare).then(|| def.text.clone()))
    };
    // (Parsed outside the session's lock: the other side may be waiting for it.)
    let changes = dynamic
        .map(|text| crate::sql::prepared::name_refs(&text))
        .filter(|r| r.changes_names())
        .map(|r| Changes { ops: r.tops, request, review: review.clone() });
    Ok(Bound { review, request, changes })
}
