//! Result rows through the maskers, in batches, and what the recording keeps
//! of them (counts, findings, a masked sample).

use super::*;

pub(super) fn mask_rows(
    ctx: &Ctx<'_>,
    res: &mut Results,
    rows_in: &[Bytes],
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let ncols = Reader::new(&rows_in[0], b'D').i16().unwrap_or(0).max(0) as usize;
    let shape = current_shape(&mut ctx.shared.lock(), res, &ctx.catalog.get()).filter(|s| s.conv.len() == ncols);
    let Some(shape) = shape else {
        // Rows the gateway cannot attribute to their columns would reach
        // maskers without column rules. Every Execute's portal is described
        // just before it runs (see `ClientState::described_portals`), so only
        // a queue out of step with the server gets here: fail closed.
        let reason = "rows arrived that the gateway cannot attribute to their columns";
        ctx.recorder.emit("request.refused", json!({"reason": reason}));
        let hint = "reconnect; if it happens again, report the client and the session's recording";
        end_session(ctx, "08P01", &format!("Wardgate: {reason}; the session is closed"), Some(hint), out);
        return Err(SessionError::Refused(reason.into()));
    };
    mask_shaped_rows(ctx, res, rows_in, &shape, out)
}

/// Mask rows of a known shape (DataRow bodies) into DataRow messages.
pub(super) fn mask_shaped_rows(
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
pub(super) fn pass_rows(
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
pub(super) fn mask_function_result(
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
pub(super) fn withhold(
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
pub(super) fn end_session(ctx: &Ctx<'_>, code: &str, message: &str, hint: Option<&str>, out: &mut BytesMut) {
    out.extend_from_slice(&codec::fatal_bytes(code, message, hint));
    ctx.shared.lock().closed = true;
}

pub(super) fn merge_findings(into: &mut Vec<Finding>, from: &[Finding]) {
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
pub(super) fn sample(res: &mut Results, cells: &PackedCells, shape: &Shape, cap: usize) {
    use std::fmt::Write as _;
    const MAX: usize = 200;
    let ncols = shape.conv.len();
    if res.sample.len() >= cap || ncols == 0 {
        return;
    }
    let mut cells = rows::cells(cells);
    while res.sample.len() < cap {
        let mut r = Vec::with_capacity(ncols);
        for (cell, conv) in cells.by_ref().take(ncols).zip(&shape.conv) {
            let Some(bytes) = cell else {
                r.push(None);
                continue;
            };
            r.push(Some(if conv.is_bytes() {
                let mut hex = String::from("\\x");
                for b in bytes.iter().take((MAX - 2) / 2) {
                    let _ = write!(hex, "{b:02x}");
                }
                hex
            } else {
                String::from_utf8_lossy(bytes).chars().take(MAX).collect()
            }));
        }
        if r.is_empty() {
            break;
        }
        res.sample.push(r);
    }
}
