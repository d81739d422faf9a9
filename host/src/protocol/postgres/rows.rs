//! Result rows between the wire and packed batches.
//!
//! DataRow messages become one packed batch (one buffer + one length per
//! cell) with the result's column descriptions; the maskers' answer becomes
//! DataRow messages again. Binary-format cells: text-like types are UTF-8 on
//! the wire and are masked as text; `jsonb` loses and regains its version
//! byte; integers and `numeric` are rendered as decimal text so detectors see
//! them, and if a masker changes one the cell becomes NULL (a typed binary
//! number cannot carry a mask); arrays of text are shown as array text and
//! re-encoded (see [`super::arrays`]); arrays of numbers are shown as array
//! text of decimal numbers and, like numbers, become NULL when changed; any
//! other binary type is passed as opaque bytes that a masker may keep or turn
//! into NULL. A text-format `bytea` (and `bytea[]`) is decoded from its hex
//! or escape form, so maskers read the same bytes as in binary format, and
//! becomes NULL when changed (see [`super::bytea`]).
//!
//! Clients parse what they receive by its type, so a masked value must still
//! be one of that type. Text-format cells of fixed-syntax types (numbers,
//! dates and times, uuid, inet, bool, ..., and arrays, ranges and multiranges
//! of them) follow the binary integers' rule: a changed value becomes NULL
//! (`-3583503.876544` masked to `-*******.**6544` would break the client's
//! decimal parser; the same query answers the same in either format). JSON
//! that a masker left unparseable is sent as a JSON string.

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::arrays;
use super::bytea;
use super::catalog::Catalog;
use super::codec::{self, ProtocolError, Reader};
use crate::pipeline::types::{CellFormat, Column, PackedCells};

/// How one column's cells are converted for maskers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    /// Text format: as is.
    Text,
    /// Text format of a fixed-syntax type: kept, or NULL when changed.
    TextFixed,
    /// JSON in text format (json, jsonb) or binary json: must stay JSON.
    Json,
    /// Binary, text-like type: bytes are UTF-8 text.
    BinaryText,
    /// Binary jsonb: version byte 1 + text.
    BinaryJsonb,
    /// Binary int2/int4/int8 or numeric: masked as decimal text.
    BinaryNumber(Number),
    /// Binary array of text (see [`super::arrays`]): masked as array text.
    BinaryTextArray,
    /// Binary array of int2/int4/int8 or numeric: masked as array text of
    /// decimal numbers.
    BinaryNumberArray(Number),
    /// Text format `bytea`: masked as the bytes it stands for.
    TextBytea,
    /// Text format `bytea[]`: masked as its elements' bytes, one per line.
    TextByteaArray,
    /// Binary, other type.
    Opaque,
}

impl Conv {
    /// Whether maskers see bytes that need not be text (recorded in hex).
    pub fn is_bytes(self) -> bool {
        matches!(self, Conv::Opaque | Conv::TextBytea | Conv::TextByteaArray)
    }

    /// Append what maskers read of one cell: arrays and numbers as text,
    /// `bytea` decoded, anything else as it is. A malformed array, number or
    /// bytea is given as its bytes (kept if unchanged, else NULL).
    pub fn read(self, cell: &[u8], out: &mut Vec<u8>) {
        let rendered = match self {
            Conv::BinaryTextArray => arrays::render(cell, out),
            Conv::BinaryNumberArray(n) => arrays::render_with(cell, out, |b, out| n.write(b, out)),
            Conv::BinaryNumber(n) => n.write(cell, out),
            Conv::TextBytea => bytea::decode(cell, out),
            Conv::TextByteaArray => bytea::decode_array(cell, out),
            _ => false,
        };
        if !rendered {
            out.extend_from_slice(cell);
        }
    }
}

/// A number type whose binary form maskers see as decimal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// A big-endian integer of this many bytes (int2, int4, int8).
    Int(u8),
    /// `numeric` (see [`super::numeric`]).
    Numeric,
}

impl Number {
    /// The number type of a scalar type oid.
    fn of(oid: u32) -> Option<Number> {
        Some(match oid {
            21 => Number::Int(2),
            23 => Number::Int(4),
            20 => Number::Int(8),
            1700 => Number::Numeric,
            _ => return None,
        })
    }

    /// The number type of the elements of an array type oid (int2[], int4[],
    /// int8[], numeric[]).
    fn of_array(oid: u32) -> Option<Number> {
        Number::of(match oid {
            1005 => 21,
            1007 => 23,
            1016 => 20,
            1231 => 1700,
            _ => return None,
        })
    }

    /// Append the decimal text of one binary value; false (nothing
    /// appended) if `bytes` are not one of this type.
    fn write(self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        use std::io::Write as _;
        // Integers are written in place (no String per cell).
        match (self, bytes) {
            (Number::Numeric, _) => super::numeric::text(bytes).map(|t| out.extend_from_slice(t.as_bytes())).is_some(),
            (Number::Int(2), &[a, b]) => write!(out, "{}", i16::from_be_bytes([a, b])).is_ok(),
            (Number::Int(4), &[a, b, c, d]) => write!(out, "{}", i32::from_be_bytes([a, b, c, d])).is_ok(),
            (Number::Int(8), &[a, b, c, d, e, f, g, h]) => {
                write!(out, "{}", i64::from_be_bytes([a, b, c, d, e, f, g, h])).is_ok()
            }
            _ => false,
        }
    }
}

/// The columns of a result and how to convert them.
#[derive(Debug, Clone)]
pub struct Shape {
    /// As maskers see them.
    pub columns: Vec<Column>,
    /// Conversion per column.
    pub conv: Vec<Conv>,
    /// Byte width of each binary-format cell whose type has a fixed one.
    pub width: Vec<Option<usize>>,
}

/// A RowDescription field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Output name.
    pub name: String,
    /// Source table oid (0 if none).
    pub table_oid: u32,
    /// Source column number (0 if none).
    pub attnum: i16,
    /// Type oid.
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Parse a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<Field>, ProtocolError> {
    let mut r = Reader::new(body, b'T');
    let n = r.i16()?;
    if n < 0 {
        return Err(ProtocolError::Truncated('T'));
    }
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = r.cstr()?.to_string();
        let table_oid = r.i32()? as u32;
        let attnum = r.i16()?;
        let type_oid = r.i32()? as u32;
        let _typlen = r.i16()?;
        let _typmod = r.i32()?;
        let format = r.i16()?;
        v.push(Field { name, table_oid, attnum, type_oid, format });
    }
    Ok(v)
}

/// Types whose text form has a fixed syntax that no mask satisfies: numbers,
/// money, bool, dates and times, uuid, network and bit types, lsn, xid; and
/// the arrays, ranges and multiranges built of them (`{************1111}` is
/// no `int8[]`, and a client that parses one fails).
fn is_fixed_syntax(oid: u32) -> bool {
    matches!(
        oid,
        16 | 20 | 21 | 23 | 26 | 28 | 700 | 701 | 790 | 1700 // bool, integers, oid, xid, floats, money, numeric
            | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 // date, time, timestamp(tz), interval, timetz
            | 2950 | 650 | 869 | 774 | 829 | 1560 | 1562 | 3220 | 5069 // uuid, cidr, inet, macaddr(8), bit, varbit, pg_lsn, xid8
            // Their arrays (pg_type.typelem), int2vector and oidvector.
            | 1000 | 1016 | 1005 | 1007 | 1028 | 1011 | 1021 | 1022 | 791 | 1231
            | 1182 | 1183 | 1115 | 1185 | 1187 | 1270
            | 2951 | 651 | 1041 | 775 | 1040 | 1561 | 1563 | 3221 | 271 | 22 | 30
            // Ranges and multiranges of them (pg_range), and their arrays.
            | 3904 | 3906 | 3908 | 3910 | 3912 | 3926 | 4451 | 4532 | 4533 | 4534 | 4535 | 4536
            | 3905 | 3907 | 3909 | 3911 | 3913 | 3927 | 6150 | 6151 | 6152 | 6153 | 6155 | 6157
    )
}

/// The binary wire width of fixed-width types. A cell of another width is
/// not of its described type (a binary COPY whose column was retyped between
/// the gateway's lookup and the COPY): refused, never passed as it is.
fn binary_width(oid: u32) -> Option<usize> {
    Some(match oid {
        16 | 18 => 1,                                                 // bool, char
        21 => 2,                                                      // int2
        23 | 26 | 28 | 29 | 700 | 1082 => 4,                          // int4, oid, xid, cid, float4, date
        20 | 701 | 790 | 1083 | 1114 | 1184 | 3220 | 5069 | 774 => 8, // int8, float8, money, time, timestamp(tz), lsn, xid8, macaddr8
        829 | 27 => 6,                                                // macaddr, tid
        1266 => 12,                                                   // timetz
        1186 | 2950 => 16,                                            // interval, uuid
        _ => return None,
    })
}

fn is_text_like(oid: u32) -> bool {
    // text, varchar, bpchar, name, json, xml, unknown, char, citext-like domains are text too but have other oids
    matches!(oid, 25 | 1043 | 1042 | 19 | 114 | 142 | 705 | 18)
}

/// The shape of a result: `fields` with `formats` from Bind overriding (for
/// statement descriptions, whose formats are always 0).
pub fn shape(fields: &[Field], formats: Option<&[i16]>, catalog: &Catalog) -> Arc<Shape> {
    let mut columns = Vec::with_capacity(fields.len());
    let mut conv = Vec::with_capacity(fields.len());
    let mut width = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let format = match formats {
            None => f.format,
            Some([]) => 0,
            Some([one]) => *one,
            Some(all) => all.get(i).copied().unwrap_or(0),
        };
        width.push(if format == 0 { None } else { binary_width(f.type_oid) });
        let c = if f.type_oid == 114 || (format == 0 && f.type_oid == 3802) {
            Conv::Json
        } else if format == 0 && is_fixed_syntax(f.type_oid) {
            Conv::TextFixed
        } else if format == 0 && f.type_oid == 17 {
            Conv::TextBytea
        } else if format == 0 && f.type_oid == 1001 {
            Conv::TextByteaArray
        } else if format == 0 {
            Conv::Text
        } else if is_text_like(f.type_oid) {
            Conv::BinaryText
        } else if f.type_oid == 3802 {
            Conv::BinaryJsonb
        } else if arrays::is_text_array(f.type_oid) {
            Conv::BinaryTextArray
        } else if let Some(n) = Number::of(f.type_oid) {
            Conv::BinaryNumber(n)
        } else if let Some(n) = Number::of_array(f.type_oid) {
            Conv::BinaryNumberArray(n)
        } else {
            Conv::Opaque
        };
        // Column rules match the source column, not an alias (`ssn AS x` is
        // still ssn) and not a view's column that is one (see `Catalog::source`).
        let source = catalog.source(f.table_oid, f.attnum);
        let table = match source {
            Some((t, _)) => Some(t),
            None => {
                let own = catalog.table(f.table_oid);
                if f.attnum > 0 && own.is_some() {
                    // A column added since the read: stars are no longer resolved from it.
                    catalog.columns_changed();
                }
                own
            }
        };
        let name = source.map_or_else(|| f.name.clone(), |(_, c)| c.to_string());
        columns.push(Column {
            name,
            type_oid: f.type_oid,
            table: table.map(|t| t.name.clone()),
            format: match c {
                Conv::Text | Conv::TextFixed => CellFormat::Text,
                Conv::Json if format == 0 => CellFormat::Text,
                Conv::Json | Conv::BinaryText | Conv::BinaryJsonb | Conv::BinaryTextArray => CellFormat::BinaryText,
                Conv::BinaryNumber(_)
                | Conv::BinaryNumberArray(_)
                | Conv::Opaque
                | Conv::TextBytea
                | Conv::TextByteaArray => CellFormat::BinaryOpaque,
            },
        });
        conv.push(c);
    }
    Arc::new(Shape { columns, conv, width })
}

/// A shape for rows whose description we never saw (text, unnamed).
pub fn unknown_shape(n: usize) -> Arc<Shape> {
    Arc::new(Shape {
        columns: (0..n)
            .map(|_| Column { name: String::new(), type_oid: 0, table: None, format: CellFormat::Text })
            .collect(),
        conv: vec![Conv::Text; n],
        width: vec![None; n],
    })
}

fn check_width(len: usize, width: Option<usize>) -> Result<(), ProtocolError> {
    match width {
        Some(w) if w != len => Err(ProtocolError::Malformed(format!("binary value of {len} bytes, its type has {w}"))),
        _ => Ok(()),
    }
}

/// Check that every row of `rows` (DataRow bodies) has `shape`'s column count
/// and that its fixed-width binary cells have their types' widths (what
/// [`pack`] checks, for rows that go out without packing).
pub fn check(rows: &[Bytes], shape: &Shape) -> Result<(), ProtocolError> {
    let fixed = shape.width.iter().any(Option::is_some);
    for body in rows {
        let mut r = Reader::new(body, b'D');
        if r.i16()? as usize != shape.conv.len() {
            return Err(ProtocolError::Truncated('D'));
        }
        if !fixed {
            continue;
        }
        for width in &shape.width {
            let len = r.i32()?;
            if len >= 0 {
                check_width(len as usize, *width)?;
                r.bytes(len as usize)?;
            }
        }
    }
    Ok(())
}

/// Pack DataRow bodies into cells. Every row must have `shape`'s column count.
pub fn pack(rows: &[Bytes], shape: &Shape) -> Result<PackedCells, ProtocolError> {
    let ncols = shape.conv.len();
    let bytes: usize = rows.iter().map(|r| r.len()).sum();
    let mut data = Vec::with_capacity(bytes);
    let mut lengths = Vec::with_capacity(rows.len() * ncols);
    for body in rows {
        let mut r = Reader::new(body, b'D');
        let n = r.i16()?;
        if n as usize != ncols {
            return Err(ProtocolError::Truncated('D'));
        }
        for (conv, width) in shape.conv.iter().zip(&shape.width) {
            let len = r.i32()?;
            if len < 0 {
                lengths.push(-1);
                continue;
            }
            check_width(len as usize, *width)?;
            let cell = r.bytes(len as usize)?;
            let cell: &[u8] = match conv {
                Conv::BinaryJsonb if cell.first() == Some(&1) => &cell[1..],
                _ => cell,
            };
            let at = data.len();
            conv.read(cell, &mut data);
            lengths.push((data.len() - at) as i32);
        }
    }
    Ok(PackedCells { data, lengths })
}

/// The cells of a packed batch in order (None for NULL). The lengths must
/// fit the data, as [`pack`]'s and the pipeline's answers' do.
pub fn cells(packed: &PackedCells) -> impl Iterator<Item = Option<&[u8]>> {
    let mut off = 0usize;
    packed.lengths.iter().map(move |&l| {
        (l >= 0).then(|| {
            let cell = &packed.data[off..off + l as usize];
            off += l as usize;
            cell
        })
    })
}

/// Write masked cells back as DataRow messages into `out`. `original` is the
/// packed input (to detect unchanged binary integers).
pub fn unpack(masked: &PackedCells, original: &PackedCells, rows: &[Bytes], shape: &Shape, out: &mut BytesMut) {
    let ncols = shape.conv.len();
    let mut off = 0usize;
    let mut orig_off = 0usize;
    for (ri, row_body) in rows.iter().enumerate() {
        let at = codec::begin(out, b'D');
        out.put_i16(ncols as i16);
        // Original cells of this row, for typed values kept as they were.
        let mut orig_reader = Reader::new(row_body, b'D');
        let _ = orig_reader.i16();
        for (ci, conv) in shape.conv.iter().enumerate() {
            let idx = ri * ncols + ci;
            let len = masked.lengths[idx];
            let olen = original.lengths[idx];
            let cell = if len >= 0 { &masked.data[off..off + len as usize] } else { &[][..] };
            let ocell = if olen >= 0 { &original.data[orig_off..orig_off + olen as usize] } else { &[][..] };
            off += len.max(0) as usize;
            orig_off += olen.max(0) as usize;
            let wire_len = orig_reader.i32().unwrap_or(-1);
            let wire = if wire_len >= 0 { orig_reader.bytes(wire_len as usize).unwrap_or(&[]) } else { &[][..] };
            if len < 0 {
                out.put_i32(-1);
                continue;
            }
            match conv {
                Conv::Text | Conv::BinaryText => {
                    out.put_i32(cell.len() as i32);
                    out.put_slice(cell);
                }
                Conv::Json => {
                    let body = still_json(cell, ocell);
                    out.put_i32(body.len() as i32);
                    out.put_slice(&body);
                }
                Conv::BinaryJsonb => {
                    let body = still_json(cell, ocell);
                    out.put_i32(body.len() as i32 + 1);
                    out.put_u8(1);
                    out.put_slice(&body);
                }
                // Typed values: the original bytes when unchanged; a changed
                // array re-encoded; any other change, NULL.
                _ if cell == ocell && olen >= 0 => {
                    out.put_i32(wire.len() as i32);
                    out.put_slice(wire);
                }
                Conv::BinaryTextArray => match arrays::rebuild(wire, cell) {
                    Some(array) => {
                        out.put_i32(array.len() as i32);
                        out.put_slice(&array);
                    }
                    None => out.put_i32(-1),
                },
                Conv::TextFixed
                | Conv::BinaryNumber(_)
                | Conv::BinaryNumberArray(_)
                | Conv::Opaque
                | Conv::TextBytea
                | Conv::TextByteaArray => out.put_i32(-1),
            }
        }
        codec::finish(out, at);
    }
}

/// Masked JSON as the client will parse it: unchanged or still JSON as is;
/// otherwise (a masker broke it) the masked text as a JSON string.
fn still_json<'a>(cell: &'a [u8], original: &[u8]) -> std::borrow::Cow<'a, [u8]> {
    if cell == original || serde_json::from_slice::<serde::de::IgnoredAny>(cell).is_ok() {
        return std::borrow::Cow::Borrowed(cell);
    }
    let text = String::from_utf8_lossy(cell);
    std::borrow::Cow::Owned(serde_json::Value::String(text.into_owned()).to_string().into_bytes())
}

/// Options of a `COPY ... TO STDOUT` that matter for masking its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// `csv` rather than `text`.
    pub csv: bool,
    /// Binary format (cannot be masked: refused when maskers apply).
    pub binary: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// CSV quote character (`QUOTE`, default `"`).
    pub quote: u8,
    /// CSV escape character (`ESCAPE`, default: the quote).
    pub escape: u8,
    /// `schema.table` or `table` when copying a table.
    pub table: Option<String>,
    /// Column list when given.
    pub columns: Vec<String>,
}

/// One field of a COPY line: its value (None = NULL) and the byte range of
/// its text in the line as the server wrote it.
pub type CopyField = (Option<Vec<u8>>, Range<usize>);

impl CopyFormat {
    /// Text format with `delimiter` (0: lines are not split into fields).
    pub fn text(delimiter: u8) -> Self {
        CopyFormat { csv: false, binary: false, delimiter, quote: b'"', escape: b'"', table: None, columns: vec![] }
    }

    /// Split one line of COPY output into fields (None = NULL), each with
    /// the byte range of its text in `line` as the server wrote it.
    pub fn split(&self, line: &[u8]) -> Vec<CopyField> {
        if self.csv {
            split_csv_spans(line, self.delimiter, self.quote, self.escape)
        } else {
            split_copy_text_spans(line, self.delimiter)
        }
    }

    /// Write `cell` in place of a field the server wrote as `raw`: in CSV, a
    /// value the server quoted (`FORCE_QUOTE`) stays quoted.
    pub fn replace_field(&self, cell: Option<&[u8]>, raw: &[u8], out: &mut Vec<u8>) {
        match cell {
            Some(b) if self.csv => {
                put_csv_value(b, self.delimiter, self.quote, self.escape, raw.first() == Some(&self.quote), out)
            }
            _ => self.join(&[cell], out),
        }
    }

    /// Join fields back into one line (without the newline).
    pub fn join(&self, fields: &[Option<&[u8]>], out: &mut Vec<u8>) {
        if self.csv {
            join_csv(fields, self.delimiter, self.quote, self.escape, out)
        } else {
            join_copy_text(fields, self.delimiter, out)
        }
    }
}

/// Split one text-format COPY line into fields (None = `\N`), unescaping.
/// A backslash escapes the next byte, the delimiter included, so fields are
/// found while unescaping, never by splitting first.
pub fn split_copy_text(line: &[u8], delim: u8) -> Vec<Option<Vec<u8>>> {
    split_copy_text_spans(line, delim).into_iter().map(|(v, _)| v).collect()
}

/// [`split_copy_text`], with each field's raw byte range.
fn split_copy_text_spans(line: &[u8], delim: u8) -> Vec<CopyField> {
    let mut fields = vec![];
    let mut cur = Vec::new();
    let mut null = false;
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if c == b'\\' && i + 1 < line.len() {
            let n = line[i + 1];
            if n == b'N' && cur.is_empty() && !null && (i + 2 == line.len() || line[i + 2] == delim) {
                null = true;
            } else {
                cur.push(match n {
                    b't' => b'\t',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b'b' => 8,
                    b'f' => 12,
                    b'v' => 11,
                    other => other,
                });
            }
            i += 2;
            continue;
        }
        if c == delim {
            fields.push((if null { None } else { Some(std::mem::take(&mut cur)) }, start..i));
            null = false;
            start = i + 1;
        } else {
            cur.push(c);
        }
        i += 1;
    }
    fields.push((if null { None } else { Some(cur) }, start..line.len()));
    fields
}

/// Join fields back into a text-format COPY line (without the newline).
pub fn join_copy_text(fields: &[Option<&[u8]>], delim: u8, out: &mut Vec<u8>) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(delim);
        }
        match f {
            None => out.extend_from_slice(b"\\N"),
            Some(b) => {
                for &c in b.iter() {
                    match c {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' if delim == b'\t' => out.extend_from_slice(b"\\t"),
                        c if c == delim => {
                            out.push(b'\\');
                            out.push(c);
                        }
                        c => out.push(c),
                    }
                }
            }
        }
    }
}

/// Split one CSV line into fields (unquoted empty = NULL, as COPY writes it),
/// with the COPY's `QUOTE` and `ESCAPE` characters.
pub fn split_csv(line: &[u8], delim: u8, quote: u8, escape: u8) -> Vec<Option<Vec<u8>>> {
    split_csv_spans(line, delim, quote, escape).into_iter().map(|(v, _)| v).collect()
}

/// [`split_csv`], with each field's raw byte range.
fn split_csv_spans(line: &[u8], delim: u8, quote: u8, escape: u8) -> Vec<CopyField> {
    let mut fields = vec![];
    let mut cur = Vec::new();
    let mut quoted_any = false;
    let mut in_quotes = false;
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if in_quotes {
            if c == escape
                && i + 1 < line.len()
                && (line[i + 1] == quote || line[i + 1] == escape)
                && (escape != quote || line[i + 1] == quote)
            {
                cur.push(line[i + 1]);
                i += 2;
                continue;
            }
            if c == quote {
                in_quotes = false;
            } else {
                cur.push(c);
            }
        } else if c == quote {
            in_quotes = true;
            quoted_any = true;
        } else if c == delim {
            let f = std::mem::take(&mut cur);
            fields.push((if f.is_empty() && !quoted_any { None } else { Some(f) }, start..i));
            quoted_any = false;
            start = i + 1;
        } else {
            cur.push(c);
        }
        i += 1;
    }
    fields.push((if cur.is_empty() && !quoted_any { None } else { Some(cur) }, start..line.len()));
    fields
}

/// Join CSV fields, quoting when needed.
pub fn join_csv(fields: &[Option<&[u8]>], delim: u8, quote: u8, escape: u8, out: &mut Vec<u8>) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(delim);
        }
        if let Some(b) = f {
            put_csv_value(b, delim, quote, escape, false, out);
        }
    }
}

/// One non-NULL CSV value: quoted when it must be (or when `force`, as the
/// server quotes every value of a `FORCE_QUOTE` column), escaped inside quotes.
fn put_csv_value(b: &[u8], delim: u8, quote: u8, escape: u8, force: bool, out: &mut Vec<u8>) {
    let needs =
        force || b.is_empty() || b.iter().any(|&c| c == delim || c == quote || c == escape || c == b'\n' || c == b'\r');
    if !needs {
        return out.extend_from_slice(b);
    }
    out.push(quote);
    for &c in b {
        if c == quote || (c == escape && escape != quote) {
            out.push(escape);
        }
        out.push(c);
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::catalog::TableInfo;
    use std::collections::HashMap;

    fn data_row(cells: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(cells.len() as i16);
        for c in cells {
            match c {
                None => b.put_i32(-1),
                Some(x) => {
                    b.put_i32(x.len() as i32);
                    b.put_slice(x);
                }
            }
        }
        b.freeze()
    }

    fn field(name: &str, type_oid: u32, format: i16) -> Field {
        Field { name: name.into(), table_oid: 0, attnum: 0, type_oid, format }
    }

    #[test]
    fn a_binary_cell_that_is_not_its_types_width_is_refused_packed_or_not() {
        // A column described as int4 and oid (no masker reads them) whose
        // cells hold text: the retype race of a binary COPY. Never passed on.
        let s = shape(&[field("n", 23, 1), field("o", 26, 1), field("t", 25, 1)], None, &Catalog::default());
        let good = data_row(&[Some(&1i32.to_be_bytes()), None, Some(b"x")]);
        check(std::slice::from_ref(&good), &s).unwrap();
        pack(&[good], &s).unwrap();
        for bad in [
            data_row(&[Some(b"123456789"), None, Some(b"x")]),
            data_row(&[Some(&1i32.to_be_bytes()), Some(b"jane@example.com"), Some(b"x")]),
        ] {
            assert!(matches!(check(std::slice::from_ref(&bad), &s), Err(ProtocolError::Malformed(_))));
            assert!(matches!(pack(&[bad], &s), Err(ProtocolError::Malformed(_))));
        }
        // Text format: no widths.
        let text = shape(&[field("n", 23, 0)], None, &Catalog::default());
        check(&[data_row(&[Some(b"123456789")])], &text).unwrap();
    }

    #[test]
    fn binary_ints_are_rendered_and_nulled_when_changed() {
        let s = shape(&[field("id", 20, 1), field("email", 25, 1)], None, &Catalog::default());
        let rows = vec![data_row(&[Some(&7i64.to_be_bytes()), Some(b"a@b.io")])];
        let packed = pack(&rows, &s).unwrap();
        assert_eq!(&packed.data[..], b"7a@b.io");
        // masker changes the email only
        let masked = PackedCells { data: b"7x".to_vec(), lengths: vec![1, 1] };
        let mut out = BytesMut::new();
        unpack(&masked, &packed, &rows, &s, &mut out);
        let m = codec::take_message(&mut out).unwrap().unwrap();
        assert_eq!(m.body, data_row(&[Some(&7i64.to_be_bytes()), Some(b"x")]));
        // masker changes the int: it becomes NULL
        let masked = PackedCells { data: b"Xx".to_vec(), lengths: vec![1, 1] };
        let mut out = BytesMut::new();
        unpack(&masked, &packed, &rows, &s, &mut out);
        let m = codec::take_message(&mut out).unwrap().unwrap();
        assert_eq!(m.body, data_row(&[None, Some(b"x")]));
    }

    /// One text-format row through `unpack` with the masker's answer `masked`.
    fn unpack_one(s: &Shape, cells: &[&[u8]], masked: &[&[u8]]) -> Bytes {
        let rows = vec![data_row(&cells.iter().map(|c| Some(*c)).collect::<Vec<_>>())];
        let packed = pack(&rows, s).unwrap();
        let answer = PackedCells { data: masked.concat(), lengths: masked.iter().map(|c| c.len() as i32).collect() };
        let mut out = BytesMut::new();
        unpack(&answer, &packed, &rows, s, &mut out);
        codec::take_message(&mut out).unwrap().unwrap().body
    }

    #[test]
    fn masked_values_stay_values_of_their_type() {
        // numeric, date, text: a changed number or date becomes NULL, text carries the mask.
        let s = shape(&[field("n", 1700, 0), field("d", 1082, 0), field("t", 25, 0)], None, &Catalog::default());
        assert_eq!(s.columns[0].format, CellFormat::Text, "maskers still read them as text");
        let kept =
            unpack_one(&s, &[b"-3583503.876544", b"2026-01-02", b"x"], &[b"-3583503.876544", b"2026-01-02", b"x"]);
        assert_eq!(kept, data_row(&[Some(b"-3583503.876544"), Some(b"2026-01-02"), Some(b"x")]));
        let changed = unpack_one(&s, &[b"-3583503.876544", b"2026-01-02", b"x"], &[b"-*******.**6544", b"****", b"*"]);
        assert_eq!(changed, data_row(&[None, None, Some(b"*")]));
        // So are arrays and ranges of them; an array of text carries the mask.
        let s = shape(
            &[field("i8s", 1016, 0), field("ids", 2951, 0), field("r", 3926, 0), field("ts", 1009, 0)],
            None,
            &Catalog::default(),
        );
        let cells: [&[u8]; 4] = [b"{4111111111111111,7}", b"{42719259-7440-4891-a38b-6ac1a8f4bca0}", b"[1,9)", b"{a}"];
        assert_eq!(unpack_one(&s, &cells, &cells), data_row(&cells.map(Some)));
        let masked: [&[u8]; 4] = [b"{************1111,7}", b"{********-****-4891-a38b-6ac1a8f4bca0}", b"[*,9)", b"{*}"];
        assert_eq!(unpack_one(&s, &cells, &masked), data_row(&[None, None, None, Some(b"{*}")]));
        // json in text format, jsonb in text format: a mask that breaks JSON is quoted.
        let s = shape(&[field("j", 114, 0), field("jb", 3802, 0)], None, &Catalog::default());
        let out = unpack_one(&s, &[b"4111111111111111", b"{\"a\": 1}"], &[b"************1111", b"{\"a\": 2}"]);
        assert_eq!(out, data_row(&[Some(b"\"************1111\""), Some(b"{\"a\": 2}")]));
    }

    #[test]
    fn binary_numerics_are_read_as_decimal_text_and_a_changed_one_is_null() {
        let s = shape(&[field("n", 1700, 1), field("t", 25, 1)], None, &Catalog::default());
        assert_eq!(s.columns[0].format, CellFormat::BinaryOpaque, "a mask cannot be written back into it");
        // 4111111111111111: four base-10000 digits, weight 3.
        let mut card = Vec::new();
        for v in [4u16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            card.extend_from_slice(&v.to_be_bytes());
        }
        let rows = vec![data_row(&[Some(&card), Some(b"x")])];
        let packed = pack(&rows, &s).unwrap();
        assert_eq!(&packed.data[..], b"4111111111111111x", "detectors see the number");
        let kept = unpack_one(&s, &[&card, b"x"], &[b"4111111111111111", b"x"]);
        assert_eq!(kept, data_row(&[Some(&card), Some(b"x")]), "unchanged: the original bytes");
        let masked = unpack_one(&s, &[&card, b"x"], &[b"************1111", b"x"]);
        assert_eq!(masked, data_row(&[None, Some(b"x")]));
        // Bytes that are no numeric go to maskers as they are.
        let odd = pack(&[data_row(&[Some(b"\x01"), Some(b"y")])], &s).unwrap();
        assert_eq!(&odd.data[..], b"\x01y");
    }

    #[test]
    fn binary_text_arrays_are_masked_element_by_element() {
        let s = shape(&[field("emails", 1009, 1)], None, &Catalog::default());
        assert_eq!(s.columns[0].format, CellFormat::BinaryText);
        let wire = binary_array(25, &[Some(b"jane@example.com"), Some(b"x")]);
        let rows = vec![data_row(&[Some(&wire)])];
        let packed = pack(&rows, &s).unwrap();
        assert_eq!(&packed.data[..], br#"{"jane@example.com","x"}"#);
        let masked = br#"{"j***@example.com","x"}"#;
        let answer = PackedCells { data: masked.to_vec(), lengths: vec![masked.len() as i32] };
        let mut out = BytesMut::new();
        unpack(&answer, &packed, &rows, &s, &mut out);
        let body = codec::take_message(&mut out).unwrap().unwrap().body;
        let expected = super::arrays::rebuild(&wire, masked).unwrap();
        assert_eq!(body, data_row(&[Some(&expected)]));
        assert!(expected.windows(16).any(|w| w == b"j***@example.com"));
        // A mask over the whole cell (a column rule) cannot be re-encoded: NULL.
        let answer = PackedCells { data: b"[REDACTED]".to_vec(), lengths: vec![10] };
        let mut out = BytesMut::new();
        unpack(&answer, &packed, &rows, &s, &mut out);
        assert_eq!(codec::take_message(&mut out).unwrap().unwrap().body, data_row(&[None]));
    }

    /// A one-dimensional binary array of element type `elem` (None = NULL).
    fn binary_array(elem: u32, elems: &[Option<&[u8]>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for v in [1i32, i32::from(elems.iter().any(Option::is_none)), elem as i32, elems.len() as i32, 1] {
            wire.extend_from_slice(&v.to_be_bytes());
        }
        for e in elems {
            match e {
                None => wire.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    wire.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    wire.extend_from_slice(b);
                }
            }
        }
        wire
    }

    #[test]
    fn binary_number_arrays_are_read_as_array_text_and_a_changed_one_is_null() {
        let mut card = Vec::new();
        for v in [4u16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            card.extend_from_slice(&v.to_be_bytes());
        }
        let i8s = binary_array(20, &[Some(&4111111111111111i64.to_be_bytes()), None, Some(&(-7i64).to_be_bytes())]);
        let nums = binary_array(1700, &[Some(&card)]);
        let i2s = binary_array(21, &[Some(&3i16.to_be_bytes())]);
        let i4s = binary_array(23, &[]);
        let s = shape(
            &[field("a", 1016, 1), field("b", 1231, 1), field("c", 1005, 1), field("d", 1007, 1)],
            None,
            &Catalog::default(),
        );
        assert!(s.columns.iter().all(|c| c.format == CellFormat::BinaryOpaque), "a mask cannot be written back");
        let cells: [&[u8]; 4] = [&i8s, &nums, &i2s, &i4s];
        let rows = vec![data_row(&cells.map(Some))];
        let packed = pack(&rows, &s).unwrap();
        assert_eq!(&packed.data[..], b"{4111111111111111,NULL,-7}{4111111111111111}{3}{}", "detectors see numbers");
        let text: [&[u8]; 4] = [b"{4111111111111111,NULL,-7}", b"{4111111111111111}", b"{3}", b"{}"];
        assert_eq!(unpack_one(&s, &cells, &text), data_row(&cells.map(Some)), "unchanged: the original bytes");
        let masked: [&[u8]; 4] = [b"{************1111,NULL,-7}", b"{************1111}", b"{3}", b"{}"];
        assert_eq!(unpack_one(&s, &cells, &masked), data_row(&[None, None, Some(&i2s), Some(&i4s)]));
        // An element that is not of the array's type, or a broken array: its bytes, as opaque.
        let short = binary_array(20, &[Some(&7i32.to_be_bytes())]);
        let mut cut = i8s.clone();
        cut.pop();
        for bad in [short, cut] {
            let s = shape(&[field("a", 1016, 1)], None, &Catalog::default());
            assert_eq!(pack(&[data_row(&[Some(&bad)])], &s).unwrap().data, bad);
        }
    }

    #[test]
    fn aliases_do_not_hide_the_source_column() {
        let mut tables = HashMap::new();
        tables.insert(
            42,
            TableInfo {
                name: "public.customers".into(),
                columns: vec!["id".into(), "ssn".into()],
                not_null: vec![true, false],
                unique_index: vec![Some(1), None],
                ..Default::default()
            },
        );
        let f = Field { name: "x".into(), table_oid: 42, attnum: 2, type_oid: 25, format: 0 };
        let s = shape(&[f], None, &Catalog::from_tables(tables));
        assert_eq!(s.columns[0].name, "ssn");
        assert_eq!(s.columns[0].table.as_deref(), Some("public.customers"));
    }

    #[test]
    fn ragged_rows_are_errors() {
        let s = shape(&[field("a", 25, 0)], None, &Catalog::default());
        assert!(pack(&[data_row(&[Some(b"x"), Some(b"y")])], &s).is_err());
        assert!(pack(&[Bytes::from_static(&[0, 1, 0, 0, 0, 9, b'a'])], &s).is_err());
    }

    #[test]
    fn copy_text_and_csv_round_trip() {
        // A delimiter inside a value is escaped, not a field boundary.
        let f = split_copy_text(b"jane.doe\\@example.com@\\N@x\\\\@", b'@');
        assert_eq!(f, vec![Some(b"jane.doe@example.com".to_vec()), None, Some(b"x\\".to_vec()), Some(vec![])]);
        let refs: Vec<Option<&[u8]>> = f.iter().map(|x| x.as_deref()).collect();
        let mut out = vec![];
        join_copy_text(&refs, b'@', &mut out);
        assert_eq!(out, b"jane.doe\\@example.com@\\N@x\\\\@");
        // QUOTE and ESCAPE options.
        let f = split_csv(b".123-45-6789.-.a..b.-", b'-', b'.', b'.');
        assert_eq!(f, vec![Some(b"123-45-6789".to_vec()), Some(b"a.b".to_vec()), None]);
        let f2 = split_csv(b"'it\\'s',\"x\"", b',', b'\'', b'\\');
        assert_eq!(f2, vec![Some(b"it's".to_vec()), Some(b"\"x\"".to_vec())]);
        let refs: Vec<Option<&[u8]>> = f.iter().map(|x| x.as_deref()).collect();
        let mut out = vec![];
        join_csv(&refs, b'-', b'.', b'.', &mut out);
        assert_eq!(out, b".123-45-6789.-.a..b.-");
        let f = split_copy_text(b"1\ta\\tb\t\\N", b'\t');
        assert_eq!(f, vec![Some(b"1".to_vec()), Some(b"a\tb".to_vec()), None]);
        let mut out = vec![];
        let refs: Vec<Option<&[u8]>> = f.iter().map(|x| x.as_deref()).collect();
        join_copy_text(&refs, b'\t', &mut out);
        assert_eq!(out, b"1\ta\\tb\t\\N");
        let f = split_csv(b"1,\"a,\"\"b\",,x", b',', b'"', b'"');
        assert_eq!(f, vec![Some(b"1".to_vec()), Some(b"a,\"b".to_vec()), None, Some(b"x".to_vec())]);
        let mut out = vec![];
        let refs: Vec<Option<&[u8]>> = f.iter().map(|x| x.as_deref()).collect();
        join_csv(&refs, b',', b'"', b'"', &mut out);
        assert_eq!(out, b"1,\"a,\"\"b\",,x");
    }

    #[test]
    fn a_masked_csv_value_stays_quoted_where_the_server_quoted_it() {
        let csv = CopyFormat { csv: true, ..CopyFormat::text(b',') };
        let replaced = |fmt: &CopyFormat, cell: Option<&[u8]>, raw: &[u8]| {
            let mut out = vec![];
            fmt.replace_field(cell, raw, &mut out);
            String::from_utf8(out).unwrap()
        };
        // FORCE_QUOTE wrote "123-45-6789"; plain CSV wrote it bare.
        assert_eq!(replaced(&csv, Some(b"***-**-6789"), b"\"123-45-6789\""), "\"***-**-6789\"");
        assert_eq!(replaced(&csv, Some(b"***-**-6789"), b"123-45-6789"), "***-**-6789");
        assert_eq!(replaced(&csv, Some(b"a,b"), b"x"), "\"a,b\"");
        assert_eq!(replaced(&csv, None, b"\"x\""), "");
        assert_eq!(replaced(&CopyFormat::text(b'\t'), Some(b"a\tb"), b"\"x\""), "a\\tb");
    }

    #[test]
    fn each_copy_field_knows_its_text_as_the_server_wrote_it() {
        let raw =
            |line: &[u8], f: Vec<CopyField>| -> Vec<Vec<u8>> { f.into_iter().map(|(_, r)| line[r].to_vec()).collect() };
        let line = b"*a|1*|b|n-u-l-l||*!**";
        let f = split_csv_spans(line, b'|', b'*', b'!');
        assert_eq!(raw(line, f.clone()), [&b"*a|1*"[..], b"b", b"n-u-l-l", b"", b"*!**"]);
        assert_eq!(f[0].0.as_deref(), Some(&b"a|1"[..]));
        assert_eq!(f[4].0.as_deref(), Some(&b"*"[..]));
        let line = b"a\\tb\t\\N\tx\\\\";
        let f = split_copy_text_spans(line, b'\t');
        assert_eq!(raw(line, f.clone()), [&br"a\tb"[..], br"\N", br"x\\"]);
        assert_eq!(f[1].0, None);
    }
}
