//! `COPY … TO STDOUT` output through the maskers: text and CSV lines split
//! into the columns the lookup described, binary tuples as DataRows.

use super::*;

/// How the rows of the COPY that CopyOutResponse `body` begins are masked:
/// by the columns the lookup described; for text without them, by the
/// session's catalog (or line by line when even that is unknown). Binary
/// rows cannot be read without their types: the reason they are withheld.
pub(super) fn start_copy(ctx: &Ctx<'_>, copy: Option<CopyOut>, body: &[u8]) -> Result<ActiveCopy, String> {
    let mut r = Reader::new(body, b'H');
    let binary = r.u8().map_err(|e| e.to_string())? == 1;
    let ncols = r.i16().map_err(|e| e.to_string())?.max(0) as usize;
    let format: i16 = if binary { 1 } else { 0 };
    let described = copy.as_ref().and_then(CopyOut::fields).filter(|f| f.len() == ncols);
    let catalog = ctx.catalog.get();
    let shape = described.map(|f| rows::shape(f, Some(&[format]), &catalog));
    match (copy, shape) {
        (Some(c), Some(shape)) => {
            Ok(ActiveCopy { shape, format: c.format, binary: binary.then(|| BinaryRows::new(ncols)), header: None })
        }
        _ if binary => Err("binary COPY output withheld: the gateway could not learn the types of its columns, \
                            so it cannot mask them; use FORMAT text or csv"
            .into()),
        (Some(c), None) => {
            Ok(ActiveCopy { shape: copy_shape(&c.format, &catalog), format: c.format, binary: None, header: None })
        }
        // We cannot tell how these rows are laid out: mask each line as text.
        (None, _) => {
            Ok(ActiveCopy { format: CopyFormat::text(0), shape: rows::unknown_shape(1), binary: None, header: None })
        }
    }
}

/// Mask CopyData payloads of the COPY in progress.
pub(super) fn mask_copy(ctx: &Ctx<'_>, res: &mut Results, data: &[u8], out: &mut BytesMut) -> Result<(), SessionError> {
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
pub(super) fn finish_copy(ctx: &Ctx<'_>, res: &mut Results, out: &mut BytesMut) -> Result<(), SessionError> {
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
pub(super) fn mask_copy_binary(
    ctx: &Ctx<'_>,
    res: &mut Results,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), SessionError> {
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

pub(super) fn copy_shape(c: &CopyFormat, catalog: &Catalog) -> Arc<Shape> {
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
pub(super) fn mask_copy_data(
    ctx: &Ctx<'_>,
    res: &mut Results,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), SessionError> {
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
        for ((c, _), conv) in r.iter().zip(&shape.conv) {
            match c {
                None => packed.lengths.push(-1),
                Some(b) => {
                    let at = packed.data.len();
                    conv.read(b, &mut packed.data);
                    packed.lengths.push((packed.data.len() - at) as i32);
                }
            }
        }
    }
    // What maskers read of a decoded field (`bytea`) is not its text: a
    // change is found against what they were given, and sends NULL.
    let decoded = shape.conv.iter().any(|c| c.is_bytes());
    let given = decoded.then(|| packed.clone());
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
    let given: Vec<_> = given.as_ref().map(|g| rows::cells(g).collect()).unwrap_or_default();
    let mut given_rows = given.chunks(ncols.max(1));
    let masked: Vec<_> = rows::cells(&m.cells).collect();
    for (i, cells) in masked.chunks(ncols.max(1)).enumerate() {
        let given = given_rows.next();
        // A field the maskers left alone keeps its text byte for byte as the
        // server wrote it (its quoting, FORCE_QUOTE, NULL string, escapes);
        // a masked one is written again in the COPY's format.
        let mut line = Vec::new();
        for (j, (cell, (before, raw))) in cells.iter().zip(&parsed[i]).enumerate() {
            if j > 0 {
                line.push(fmt.delimiter);
            }
            let conv = shape.conv[j];
            let unchanged = match given {
                Some(given) if conv.is_bytes() => given[j] == *cell,
                _ => before.as_deref() == *cell,
            };
            if unchanged {
                line.extend_from_slice(&lines[i][raw.clone()]);
            } else if conv.is_bytes() {
                fmt.replace_field(None, &lines[i][raw.clone()], &mut line);
            } else if raw_lines {
                line.extend_from_slice(cell.unwrap_or(b""));
            } else {
                fmt.replace_field(*cell, &lines[i][raw.clone()], &mut line);
            }
        }
        line.push(b'\n');
        codec::put_message(out, b'd', &line);
    }
    Ok(())
}
