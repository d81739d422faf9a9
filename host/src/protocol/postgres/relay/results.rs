//! The upstream side: each message the upstream sends is matched to the
//! expectation it answers and goes to the client masked, recorded, or
//! replaced by the gateway's own (a queued refusal, a row cap's).

use super::*;

pub(super) async fn upstream_to_client(
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
        // (The session closes below.)
        if let Some(fatal) = ctx.shared.lock().fatal.take() {
            out.extend_from_slice(&fatal);
        }
        // Write what was produced even when draining failed: it ends with the
        // error the client must see (a withheld result, a protocol error).
        if !out.is_empty() {
            // What the client is about to see is on record first (a crash
            // after this loses nothing the client was told). A failure was
            // logged where it happened, and new requests are refused meanwhile.
            let _ = ctx.recorder.commit();
            let written = stream::send(client, &out).await;
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
                    let _ = stream::send(client, &out).await;
                    return Ok(());
                }
            }
            _ = ctx.notify.notified() => {}
        }
    }
}

/// Process every complete upstream message in `buf` into `out`, masking
/// consecutive DataRows in batches.
pub(super) fn drain(
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
        if ctx.catalog.reading() {
            // (Nothing else is in flight: no rows are pending.)
            let Some(m) = take_message(buf).map_err(SessionError::Protocol)? else { break };
            if let Some(m) = ctx.catalog.answer(&ctx.shared, m)? {
                on_upstream_message(ctx, res, masks, m, out)?;
            }
            continue;
        }
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
pub(super) fn flush_synthetic(ctx: &Ctx<'_>, out: &mut BytesMut) {
    let mut s = ctx.shared.lock();
    drop_dead_copy_ends(&mut s);
    while let Some(Expect::Synthetic { .. }) = s.expect.front() {
        if let Some(Expect::Synthetic { bytes, ready }) = s.expect.pop_front() {
            out.extend_from_slice(&bytes);
            if ready {
                codec::put_message(out, b'Z', &[s.tx_status]);
            }
        }
    }
}

/// The shape of the rows now arriving: the simple-protocol description, or the
/// portal of the Execute at the head of the queue; `None` when the gateway
/// does not know it (the caller fails closed).
pub(super) fn current_shape(s: &mut Shared, res: &Results, catalog: &Catalog) -> Option<Arc<Shape>> {
    match s.expect.front() {
        Some(&Expect::Function { result: (name, type_oid, format), .. }) => {
            let field = Field { name: name.to_string(), table_oid: 0, attnum: 0, type_oid, format };
            Some(rows::shape(&[field], None, catalog))
        }
        Some(Expect::Execute { portal, .. }) => {
            let p = s.portals.get_mut(portal)?;
            if let Some(c) = &p.shape {
                return Some(c.clone());
            }
            let shape = rows::shape(p.fields.as_deref()?, None, catalog);
            p.shape = Some(shape.clone());
            Some(shape)
        }
        Some(Expect::Query { .. }) => res.current.clone(),
        // Rows answer a Query, an Execute or a FunctionCall, nothing else.
        _ => None,
    }
}

pub(super) fn record_response(ctx: &Ctx<'_>, res: &mut Results, tag: Option<&str>, error: Option<(String, String)>) {
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

pub(super) fn on_upstream_message(
    ctx: &Ctx<'_>,
    res: &mut Results,
    masks: bool,
    m: Message,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let mut s = ctx.shared.lock();
    drop_dead_copy_ends(&mut s);
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
            if let Some(Expect::Parse { name, seq, copy, .. }) = pop_if(&mut s, |e| matches!(e, Expect::Parse { .. })) {
                s.names.answered(&name, seq, Answer::Done);
                match copy {
                    Some(copy) => s.copy_statements.insert(name, copy),
                    None => s.copy_statements.remove(&name),
                };
            }
        }
        b'2' => {
            if let Some(Expect::Bind { portal, stmt, request }) = pop_if(&mut s, |e| matches!(e, Expect::Bind { .. })) {
                let copy = s.copy_statements.get(&stmt).cloned();
                s.portals.insert(portal, Portal { copy, fields: None, shape: None, bound: true, request });
            }
        }
        b'3' => {
            if let Some(Expect::Close { portal, name }) = pop_if(&mut s, |e| matches!(e, Expect::Close { .. })) {
                if portal {
                    s.portals.remove(&name);
                } else {
                    s.copy_statements.remove(&name);
                    s.names.dropped(&name);
                }
            }
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
                    if let Some(Expect::Describe { portal, name, hidden }) = s.expect.pop_front() {
                        // (A statement's description says what its name
                        // stands for now, not when a portal runs.)
                        if portal {
                            // Or a portal never bound: a `DECLARE`d cursor.
                            let p = s.portals.entry(name).or_default();
                            p.fields = fields;
                            p.shape = None;
                        }
                        if hidden {
                            return Ok(());
                        }
                    }
                }
                Some(Expect::Query { id, at, .. }) => {
                    (res.request_id, res.started) = (*id, Some(*at));
                    res.current = fields.map(|f| rows::shape(&f, None, &ctx.catalog.get()));
                }
                _ => res.current = fields.map(|f| rows::shape(&f, None, &ctx.catalog.get())),
            }
        }
        b'C' | b'I' | b's' => {
            let tag = (m.tag == b'C').then(|| Reader::new(&m.body, m.tag).cstr().unwrap_or("").to_string());
            res.answers(s.answering());
            drop(s);
            record_response(ctx, res, tag.as_deref(), None);
            s = ctx.shared.lock();
            let Shared { expect, names, .. } = &mut *s;
            if let (Some(Expect::Execute { names: fx, .. } | Expect::Query { names: fx, .. }), b'C') =
                (expect.front_mut(), m.tag)
            {
                names.completed(fx);
            }
            match expect.front() {
                Some(Expect::Execute { .. }) => {
                    expect.pop_front();
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
            res.answers(s.answering());
            drop(s);
            let masked = mask_notice(ctx, masks, &m)?;
            record_response(ctx, res, None, Some((codec::field(&fields, b'C').to_string(), masked.1.clone())));
            res.upstream_fatal = codec::is_fatal(&fields);
            s = ctx.shared.lock();
            // In extended protocol the server skips to Sync: so do we.
            // A COPY FROM STDIN that fails has stopped reading data.
            if s.copy_in == CopyIn::Reading {
                s.copy_in = CopyIn::Idle;
            }
            let extended = !matches!(s.expect.front(), Some(Expect::Query { .. } | Expect::Function { .. }) | None);
            if extended {
                while let Some(e) = s.expect.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    if let Some(e) = s.expect.pop_front() {
                        unanswered(&mut s.names, e, Answer::Failed);
                    }
                }
            } else if let Some(Expect::Query { names: fx, .. }) = s.expect.front_mut() {
                // The rest of the Query does not run.
                let mut fx = std::mem::take(fx);
                s.names.abandoned(&mut fx, Answer::Failed);
            }
            res.copy_out = None;
            res.current = None;
            codec::put_message(out, b'E', &masked.0);
            return Ok(());
        }
        b'Z' => {
            s.tx_status = m.body.first().copied().unwrap_or(b'I');
            if s.tx_status == b'I' {
                // The server dropped every portal Bind made (cursors WITH HOLD may live on).
                s.portals.retain(|_, p| !p.bound);
            }
            while let Some(e) = s.expect.pop_front() {
                let last = matches!(e, Expect::Sync | Expect::Query { .. } | Expect::Function { .. });
                // What the server answered nothing to was not seen to fail.
                unanswered(&mut s.names, e, Answer::Unknown);
                if last {
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
            res.answers(s.answering());
            let copy = if let Some(Expect::Query { copies, .. }) = s.expect.front_mut() {
                copies.pop_front()
            } else if let Some(Expect::Execute { portal, .. }) = s.expect.front() {
                s.portals.get(portal).and_then(|p| p.copy.clone())
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
        b'G' => {
            if matches!(s.expect.front(), Some(Expect::Execute { .. } | Expect::Query { .. })) {
                if let Err(reason) = copy_in_began(&mut s) {
                    drop(s);
                    ctx.recorder.emit("protocol.error", json!({"error": reason}));
                    end_session(ctx, "08P01", &format!("Wardgate: {reason}"), None, out);
                    return Err(SessionError::Protocol(ProtocolError::Malformed(reason.into())));
                }
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
            if let Some(problem) = session::unsafe_parameter(k, v) {
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

/// The server reads `COPY … FROM STDIN` data for the request at the head of
/// the queue: until the client's CopyDone or CopyFail it ignores Sync, so
/// the Syncs the client sent since that request get no ReadyForQuery (libpq,
/// pg8000 and tokio-postgres send one right after the Execute). If the
/// client's CopyDone or CopyFail is already queued, the COPY ends there;
/// otherwise the Syncs the client sends until then go nowhere (see
/// [`copy_step`]). A request queued before the COPY's end would be read by the
/// server as the COPY's failure and lost: the gateway could no longer tell
/// which answer is whose, so that ends the session.
pub(super) fn copy_in_began(s: &mut Shared) -> Result<(), &'static str> {
    let mut i = 1;
    while i < s.expect.len() {
        match s.expect[i] {
            Expect::Sync => {
                s.expect.remove(i);
            }
            // A denial the server never saw.
            Expect::Synthetic { .. } => i += 1,
            Expect::CopyEnd => {
                s.expect.remove(i);
                return Ok(());
            }
            _ => return Err("the client sent a request inside COPY FROM STDIN data"),
        }
    }
    s.copy_in = CopyIn::Reading;
    Ok(())
}

/// A CopyDone or CopyFail at the head of the queue came when the server was
/// not reading COPY data (everything before it is answered): the server
/// ignored it.
fn drop_dead_copy_ends(s: &mut Shared) {
    while let Some(Expect::CopyEnd) = s.expect.front() {
        s.expect.pop_front();
    }
}

pub(super) fn pop_if(s: &mut Shared, f: impl Fn(&Expect) -> bool) -> Option<Expect> {
    if s.expect.front().is_some_and(f) {
        s.expect.pop_front()
    } else {
        None
    }
}

/// An error's fields with its position (`P`) in the client's text rather
/// than in the capped text that ran.
pub(super) fn client_position(mut fields: Vec<(u8, String)>, inserted: &Inserted) -> Vec<(u8, String)> {
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
pub(super) fn row_cap_refusal(ctx: &Ctx<'_>, fields: &[(u8, String)]) -> Option<Bytes> {
    let max = ctx.max_rows_written?;
    if !fields.iter().any(|(k, v)| *k == b'C' && v == "22P02") {
        return None;
    }
    let message = fields.iter().find(|(k, _)| *k == b'M')?;
    let refusal = crate::sql::rowcap::refusal(&message.1)?;
    if refusal == crate::sql::rowcap::Refusal::KeyChanged {
        ctx.catalog.get().keys_changed();
    }
    Some(codec::error_body("42501", &refusal.message(max), Some(refusal.hint())))
}

/// Mask the text fields of an ErrorResponse/NoticeResponse (messages and
/// details can quote row values, e.g. a unique-violation's key).
pub(super) fn mask_notice(ctx: &Ctx<'_>, masks: bool, m: &Message) -> Result<(Bytes, String), SessionError> {
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
            let value = errors::withhold_data(sqlstate, *code, value);
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

/// The upstream broke the protocol: the client is told, the session ends.
pub(super) fn upstream_malformed(e: ProtocolError, out: &mut BytesMut) -> SessionError {
    tracing::error!("upstream sent malformed bytes: {e}");
    out.extend_from_slice(&codec::fatal_bytes("08P01", "Wardgate: upstream protocol error", None));
    SessionError::Protocol(e)
}

/// `e` leaves the queue without the answer that settles its names: a
/// Parse's definition, a Query's or Execute's remaining `PREPARE`s.
fn unanswered(names: &mut Names, e: Expect, answer: Answer) {
    match e {
        Expect::Parse { name, seq, .. } => names.answered(&name, seq, answer),
        Expect::Query { names: mut fx, .. } | Expect::Execute { names: mut fx, .. } => names.abandoned(&mut fx, answer),
        _ => {}
    }
}
