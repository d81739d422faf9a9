//! COPY TO STDOUT: what the gateway must know to mask it.
//!
//! COPY output carries no row description: CopyOutResponse tells only the
//! number of columns and their format. So before a `COPY ... TO STDOUT` goes
//! upstream, the gateway asks the server, on the same connection and in the
//! same transaction, what its rows will be: it prepares the SELECT the COPY
//! stands for under a reserved statement name, describes it and closes it
//! ([`put_lookup`]: Parse/Describe/Close/Sync, sent in the same write as the
//! COPY, so no round trip is added). Preparing runs nothing; the server
//! parses and analyses the query exactly as the COPY will, so the answer
//! holds every column's type and, for a table's columns, the table and
//! attribute number: column rules and type-aware masking apply to COPY as
//! they do to SELECT, for temporary tables and `COPY (query)` too.
//!
//! Binary COPY rows ([`BinaryRows`]) are laid out as DataRow bodies (a field
//! count, then a length and the bytes of each field), between a header and a
//! trailer; with the described types they are masked as DataRows are.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use super::codec::{self, ProtocolError};
use super::rows::{CopyFormat, Field};

/// The statement name the column lookup prepares (and closes at once).
pub const LOOKUP_STATEMENT: &str = "wardgate:copy-columns";

/// Binary COPY signature (`PGCOPY\n\377\r\n\0`).
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Header flag: each tuple carries an OID field (servers before 12 only).
const FLAG_OIDS: u32 = 1 << 16;

/// What the upstream said about a COPY's columns: their descriptions, or
/// the ErrorResponse body the lookup got.
pub type Described = Result<Vec<Field>, Bytes>;

/// One `COPY ... TO STDOUT` statement of a request.
#[derive(Debug, Clone)]
pub struct CopyOut {
    /// Format and options.
    pub format: CopyFormat,
    /// The SELECT whose columns the COPY produces.
    pub select: Option<String>,
    /// Filled by the upstream's answer to the lookup, when one was sent.
    pub described: Option<Arc<OnceLock<Described>>>,
}

impl CopyOut {
    /// The columns, if the lookup was sent and succeeded.
    pub fn fields(&self) -> Option<&[Field]> {
        self.described.as_ref()?.get()?.as_ref().ok().map(Vec::as_slice)
    }
}

/// Every `COPY ... TO STDOUT` in `text`, in statement order (which is the
/// order of the CopyOutResponses the server sends for them).
pub fn copies(text: &str) -> Vec<CopyOut> {
    let Ok(parsed) = pg_query::parse(text, 0) else { return vec![] };
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(pg_query::NodeEnum::CopyStmt(c)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        if c.is_from || c.is_program || !c.filename.is_empty() {
            continue;
        }
        let start = (raw.stmt_location.max(0) as usize).min(text.len());
        let end = if raw.stmt_len > 0 { (start + raw.stmt_len as usize).min(text.len()) } else { text.len() };
        let statement = text.get(start..end).unwrap_or("");
        out.push(CopyOut { format: format_of(c), select: select_of(c, statement), described: None });
    }
    out
}

/// The COPY's options that matter for masking its rows.
fn format_of(c: &pg_query::protobuf::CopyStmt) -> CopyFormat {
    let mut f = CopyFormat::text(b'\t');
    let mut delim: Option<u8> = None;
    let mut escape: Option<u8> = None;
    for o in &c.options {
        let Some(pg_query::NodeEnum::DefElem(d)) = o.node.as_ref() else { continue };
        let val = match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
            Some(pg_query::NodeEnum::String(s)) => s.sval.clone(),
            _ => String::new(),
        };
        match d.defname.as_str() {
            "format" => {
                f.csv = val.eq_ignore_ascii_case("csv");
                f.binary = val.eq_ignore_ascii_case("binary");
            }
            "delimiter" => delim = val.bytes().next(),
            "quote" => f.quote = val.bytes().next().unwrap_or(b'"'),
            "escape" => escape = val.bytes().next(),
            _ => {}
        }
    }
    f.delimiter = delim.unwrap_or(if f.csv { b',' } else { b'\t' });
    f.escape = escape.unwrap_or(f.quote);
    if let Some(r) = &c.relation {
        f.table =
            Some(if r.schemaname.is_empty() { r.relname.clone() } else { format!("{}.{}", r.schemaname, r.relname) });
    }
    for a in &c.attlist {
        if let Some(pg_query::NodeEnum::String(s)) = a.node.as_ref() {
            f.columns.push(s.sval.clone());
        }
    }
    f
}

/// A name as PostgreSQL reads it back exactly (the parser already folded case).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SELECT a COPY's rows come from: `COPY t (a, b)` reads `SELECT "a",
/// "b" FROM ONLY "t"`; `COPY (query)` reads the query, cut from `statement`
/// by the real lexer (the parenthesis after COPY and its match).
fn select_of(c: &pg_query::protobuf::CopyStmt, statement: &str) -> Option<String> {
    if let Some(r) = &c.relation {
        let table: Vec<String> = [&r.catalogname, &r.schemaname, &r.relname]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| quote_ident(p))
            .collect();
        let mut columns = Vec::new();
        for a in &c.attlist {
            let Some(pg_query::NodeEnum::String(s)) = a.node.as_ref() else { return None };
            columns.push(quote_ident(&s.sval));
        }
        let columns = if columns.is_empty() { "*".to_string() } else { columns.join(", ") };
        return Some(format!("SELECT {columns} FROM ONLY {}", table.join(".")));
    }
    c.query.as_ref()?;
    let scanned = pg_query::scan(statement).ok()?;
    let (mut depth, mut open) = (0usize, None);
    for t in &scanned.tokens {
        match pg_query::protobuf::Token::try_from(t.token).ok()? {
            pg_query::protobuf::Token::Ascii40 => {
                if depth == 0 {
                    open = Some(t.end as usize);
                }
                depth += 1;
            }
            pg_query::protobuf::Token::Ascii41 => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return statement.get(open?..t.start as usize).map(str::to_string);
                }
            }
            _ => {}
        }
    }
    None
}

/// Append the column lookup for `select` to `out`: Parse under
/// [`LOOKUP_STATEMENT`], Describe it, Close it, Sync. Answered by
/// ParseComplete, ParameterDescription, RowDescription (or NoData),
/// CloseComplete and ReadyForQuery; or by an ErrorResponse and ReadyForQuery.
pub fn put_lookup(out: &mut BytesMut, select: &str) {
    codec::put_parse(out, LOOKUP_STATEMENT, select, codec::NO_PARAM_TYPES);
    codec::put_describe(out, b'S', LOOKUP_STATEMENT);
    codec::put_close(out, b'S', LOOKUP_STATEMENT);
    codec::put_sync(out);
}

/// Where a binary COPY stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Tuples,
    Trailer,
}

/// A binary COPY stream cut into its parts, whatever the CopyData message
/// boundaries (the protocol does not tie tuples to messages).
#[derive(Debug)]
pub struct BinaryRows {
    stage: Stage,
    pending: Vec<u8>,
    columns: usize,
}

/// What one piece of a binary COPY stream held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parts {
    /// The header, as the server wrote it (first piece only).
    pub header: Option<Bytes>,
    /// Complete tuples, each laid out as a DataRow body.
    pub rows: Vec<Bytes>,
    /// The trailer arrived: the stream is complete.
    pub trailer: bool,
}

impl BinaryRows {
    /// A stream of tuples of `columns` fields.
    pub fn new(columns: usize) -> Self {
        BinaryRows { stage: Stage::Header, pending: Vec::new(), columns }
    }

    /// Take one CopyData payload; returns the parts it completed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Parts, ProtocolError> {
        self.pending.extend_from_slice(data);
        let mut parts = Parts::default();
        let mut at = 0usize;
        loop {
            let rest = &self.pending[at..];
            match self.stage {
                Stage::Header => {
                    if rest.len() < SIGNATURE.len() + 8 {
                        if !SIGNATURE.starts_with(&rest[..rest.len().min(SIGNATURE.len())]) {
                            return Err(ProtocolError::Malformed("binary COPY signature".into()));
                        }
                        break;
                    }
                    if &rest[..SIGNATURE.len()] != SIGNATURE {
                        return Err(ProtocolError::Malformed("binary COPY signature".into()));
                    }
                    let flags = u32::from_be_bytes(rest[11..15].try_into().expect("4 bytes"));
                    if flags & FLAG_OIDS != 0 {
                        return Err(ProtocolError::Malformed("binary COPY with OIDs".into()));
                    }
                    let ext = i32::from_be_bytes(rest[15..19].try_into().expect("4 bytes"));
                    let ext = usize::try_from(ext)
                        .map_err(|_| ProtocolError::Malformed("binary COPY header extension".into()))?;
                    let Some(len) = (SIGNATURE.len() + 8).checked_add(ext).filter(|&l| l <= rest.len()) else { break };
                    parts.header = Some(Bytes::copy_from_slice(&rest[..len]));
                    at += len;
                    self.stage = Stage::Tuples;
                }
                Stage::Tuples => {
                    let Some(len) = tuple_len(rest, self.columns)? else { break };
                    if len == 2 {
                        // -1: the trailer.
                        at += 2;
                        self.stage = Stage::Trailer;
                        parts.trailer = true;
                    } else {
                        parts.rows.push(Bytes::copy_from_slice(&rest[..len]));
                        at += len;
                    }
                }
                Stage::Trailer => {
                    if !rest.is_empty() {
                        return Err(ProtocolError::Malformed("data after the binary COPY trailer".into()));
                    }
                    break;
                }
            }
        }
        self.pending.drain(..at);
        Ok(parts)
    }

    /// The stream ended (CopyDone): it must have ended with its trailer.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.stage == Stage::Trailer && self.pending.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed("binary COPY ended inside a tuple".into()))
        }
    }
}

/// Length of the complete tuple (or 2 for the trailer) at the start of
/// `b`; None while it is incomplete.
fn tuple_len(b: &[u8], columns: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(count) = b.get(..2) else { return Ok(None) };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Ok(Some(2));
    }
    if count as usize != columns || count < 0 {
        return Err(ProtocolError::Malformed(format!("binary COPY tuple of {count} fields, expected {columns}")));
    }
    let mut at = 2usize;
    for _ in 0..columns {
        let Some(len) = b.get(at..at + 4) else { return Ok(None) };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        at += 4;
        if len < -1 {
            return Err(ProtocolError::Malformed("binary COPY field length".into()));
        }
        at += len.max(0) as usize;
    }
    Ok((at <= b.len()).then_some(at))
}

/// The DataRow messages in `rows` written again as CopyData messages (a
/// binary COPY tuple is a DataRow body), one tuple a message as the server
/// sends them, the stream's `header` (until sent) in front of the first, as
/// the server sends it too: clients such as tokio-postgres read a message as
/// header and tuple. Any other message (an error) goes as it is.
pub fn rows_as_copy_data(mut rows: BytesMut, header: &mut Option<Bytes>, out: &mut BytesMut) {
    while let Ok(Some(m)) = codec::take_message(&mut rows) {
        if m.tag == b'D' {
            put_copy_data(out, header, &m.body);
        } else {
            codec::put_message(out, m.tag, &m.body);
        }
    }
}

/// One CopyData message: the unsent `header`, if any, then `body`.
pub fn put_copy_data(out: &mut BytesMut, header: &mut Option<Bytes>, body: &[u8]) {
    let at = codec::begin(out, b'd');
    if let Some(h) = header.take() {
        out.extend_from_slice(&h);
    }
    out.extend_from_slice(body);
    codec::finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ext: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&(ext.len() as i32).to_be_bytes());
        h.extend_from_slice(ext);
        h
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut t = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    t.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    t.extend_from_slice(b);
                }
            }
        }
        t
    }

    #[test]
    fn a_binary_stream_cut_anywhere_gives_the_same_tuples() {
        let rows = [tuple(&[Some(b"\0\0\0\x01"), Some(b"jane@example.com")]), tuple(&[Some(b"\0\0\0\x02"), None])];
        let mut stream = header(b"ext");
        for r in &rows {
            stream.extend_from_slice(r);
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        for cut in 1..stream.len() {
            for step in [1, 3, cut] {
                let mut b = BinaryRows::new(2);
                let mut got = Parts::default();
                for piece in stream.chunks(step.max(1)) {
                    let p = b.feed(piece).unwrap();
                    got.header = got.header.or(p.header);
                    got.rows.extend(p.rows);
                    got.trailer |= p.trailer;
                }
                assert_eq!(got.header.as_deref(), Some(&header(b"ext")[..]));
                assert_eq!(got.rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), rows.to_vec());
                assert!(got.trailer);
                b.finish().unwrap();
            }
        }
    }

    #[test]
    fn a_damaged_binary_stream_is_refused() {
        let mut b = BinaryRows::new(1);
        assert!(b.feed(b"PGCOPX\n").is_err(), "bad signature, even before it is complete");
        let mut b = BinaryRows::new(1);
        b.feed(&header(b"")).unwrap();
        assert!(b.feed(&tuple(&[Some(b"a"), Some(b"b")])).is_err(), "wrong field count");
        let mut b = BinaryRows::new(1);
        b.feed(&header(b"")).unwrap();
        b.feed(&tuple(&[Some(b"abc")])[..4]).unwrap();
        assert!(b.finish().is_err(), "ended inside a tuple");
        let mut b = BinaryRows::new(1);
        let mut oids = header(b"");
        oids[11..15].copy_from_slice(&FLAG_OIDS.to_be_bytes());
        assert!(b.feed(&oids).is_err(), "OIDs");
        let mut b = BinaryRows::new(1);
        b.feed(&header(b"")).unwrap();
        assert!(b.feed(&[0xff, 0xff, 0]).is_err(), "data after the trailer");
    }

    #[test]
    fn each_copy_to_stdout_gets_the_select_it_reads() {
        let c = copies(
            "COPY customers TO STDOUT; COPY s.\"T x\" (a, \"B\") TO STDOUT (FORMAT binary); \
             COPY t FROM STDIN; COPY (SELECT '(' || x FROM (SELECT 1 AS x) q) TO STDOUT WITH CSV; \
             COPY pg_temp.foo (id) TO STDIN BINARY",
        );
        let selects: Vec<_> = c.iter().map(|c| c.select.clone().unwrap()).collect();
        assert_eq!(
            selects,
            [
                "SELECT * FROM ONLY \"customers\"",
                "SELECT \"a\", \"B\" FROM ONLY \"s\".\"T x\"",
                "SELECT '(' || x FROM (SELECT 1 AS x) q",
                "SELECT \"id\" FROM ONLY \"pg_temp\".\"foo\"",
            ]
        );
        assert_eq!(c.iter().map(|c| c.format.binary).collect::<Vec<_>>(), [false, true, false, true]);
        assert!(c[2].format.csv);
        assert!(copies("COPY t TO '/tmp/x'; COPY t TO PROGRAM 'cat'").is_empty());
    }
}
