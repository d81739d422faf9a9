//! PostgreSQL wire framing (protocol 3.0).
//!
//! We frame messages ourselves instead of decoding every message into a typed
//! struct and re-encoding it (as pgwire's codec does): the relay forwards most
//! messages untouched as byte slices and decodes only what policy needs (Query,
//! Parse, Bind, Describe, RowDescription, DataRow, CopyData...). That avoids an
//! allocation and a copy per message on the hot path. Every decode is
//! bounds-checked and returns [`ProtocolError`] instead of panicking.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest message we accept (PostgreSQL's own limit for most messages is 1 GiB;
/// we stay well below to bound memory per connection).
pub const MAX_MESSAGE: usize = 256 << 20;
/// Largest startup packet.
pub const MAX_STARTUP: usize = 10_000;

/// Malformed bytes from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A length field is out of range.
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength {
        /// Type byte as char.
        tag: char,
        /// Claimed length.
        len: i64,
    },
    /// A field runs past the end of its message.
    #[error("truncated '{0}' message")]
    Truncated(char),
    /// A string is not valid UTF-8 or lacks its terminator.
    #[error("invalid string in '{0}' message")]
    BadString(char),
    /// A message type we do not expect here.
    #[error("unexpected message type '{0}'")]
    Unexpected(char),
    /// Bytes inside a message that break its format (what, in words).
    #[error("malformed {0}")]
    Malformed(String),
}

/// One framed message: type byte and body (without the length).
#[derive(Debug, Clone)]
pub struct Message {
    /// Type byte.
    pub tag: u8,
    /// Body.
    pub body: Bytes,
}

/// Take one complete typed message off the front of `buf`, if there is one.
pub fn take_message(buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
    match frame_len(buf)? {
        None => Ok(None),
        Some(total) => {
            let mut frame = buf.split_to(total);
            let tag = frame[0];
            frame.advance(5);
            Ok(Some(Message { tag, body: frame.freeze() }))
        }
    }
}

/// Total length (type byte + length + body) of the message at the front of
/// `buf`, when complete.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    if len < 4 || len as usize > MAX_MESSAGE {
        return Err(ProtocolError::BadLength { tag: buf[0] as char, len });
    }
    let total = 1 + len as usize;
    Ok(if buf.len() >= total { Some(total) } else { None })
}

/// Take a startup-phase packet (no type byte) off `buf`.
pub fn take_startup(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64;
    if !(8..=MAX_STARTUP as i64).contains(&len) {
        return Err(ProtocolError::BadLength { tag: '0', len });
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    let mut p = buf.split_to(len as usize);
    p.advance(4);
    Ok(Some(p.freeze()))
}

/// A bounds-checked reader over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
    tag: char,
}

impl<'a> Reader<'a> {
    /// Read `body` of a message of type `tag`.
    pub fn new(body: &'a [u8], tag: u8) -> Self {
        Reader { buf: body, tag: tag as char }
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// i16.
    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    /// i32.
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// u8.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.bytes(1)?[0])
    }
    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated(self.tag));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(ProtocolError::BadString(self.tag))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| ProtocolError::BadString(self.tag))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    /// The rest.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Start a message of type `tag` in `out`; returns the position of its length.
pub fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

/// Finish a message started with [`begin`].
pub fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Append a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Append a whole message.
pub fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// The parameter-types section of a Parse that declares none.
pub const NO_PARAM_TYPES: &[u8] = &[0, 0];

// Frontend messages the gateway writes itself (a guard's rewritten text,
// its own Describe before an Execute, a catalog read, a COPY's column
// lookup), each appended to `out`.

/// Query: a simple-protocol request.
pub fn put_query(out: &mut BytesMut, text: &str) {
    let at = begin(out, b'Q');
    put_cstr(out, text);
    finish(out, at);
}

/// Parse `text` as statement `name`; `param_types` is the message's raw
/// parameter-types section (count, then OIDs), [`NO_PARAM_TYPES`] for none.
pub fn put_parse(out: &mut BytesMut, name: &str, text: &str, param_types: &[u8]) {
    let at = begin(out, b'P');
    put_cstr(out, name);
    put_cstr(out, text);
    out.put_slice(param_types);
    finish(out, at);
}

/// Bind statement `statement` to portal `portal` with no parameters and
/// every result column in text.
pub fn put_bind_text(out: &mut BytesMut, portal: &str, statement: &str) {
    let at = begin(out, b'B');
    put_cstr(out, portal);
    put_cstr(out, statement);
    // No parameter formats, no parameters, no result formats (all text).
    out.put_slice(&[0, 0, 0, 0, 0, 0]);
    finish(out, at);
}

/// Describe (`kind` b'S' for a statement, b'P' for a portal).
pub fn put_describe(out: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(out, b'D');
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

/// Execute every row of `portal`.
pub fn put_execute(out: &mut BytesMut, portal: &str) {
    let at = begin(out, b'E');
    put_cstr(out, portal);
    out.put_i32(0);
    finish(out, at);
}

/// Close (`kind` b'S' for a statement, b'P' for a portal).
pub fn put_close(out: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(out, b'C');
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

/// Sync.
pub fn put_sync(out: &mut BytesMut) {
    put_message(out, b'S', &[]);
}

/// Append an ErrorResponse (or NoticeResponse with `tag = b'N'`).
pub fn put_error(
    out: &mut BytesMut,
    tag: u8,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let at = begin(out, tag);
    out.put_u8(b'S');
    put_cstr(out, severity);
    out.put_u8(b'V');
    put_cstr(out, severity);
    out.put_u8(b'C');
    put_cstr(out, code);
    out.put_u8(b'M');
    put_cstr(out, message);
    if let Some(d) = detail {
        out.put_u8(b'D');
        put_cstr(out, d);
    }
    if let Some(h) = hint {
        out.put_u8(b'H');
        put_cstr(out, h);
    }
    out.put_u8(0);
    finish(out, at);
}

/// An ErrorResponse as bytes.
pub fn error_bytes(code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let mut out = BytesMut::new();
    put_error(&mut out, b'E', "ERROR", code, message, None, hint);
    out.freeze()
}

/// An ErrorResponse's body (no tag, no length), as [`error_bytes`] frames it.
pub fn error_body(code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let mut fields =
        vec![(b'S', "ERROR".to_string()), (b'V', "ERROR".into()), (b'C', code.into()), (b'M', message.into())];
    fields.extend(hint.map(|h| (b'H', h.to_string())));
    fields_body(&fields)
}

/// A FATAL ErrorResponse as bytes.
pub fn fatal_bytes(code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let mut out = BytesMut::new();
    put_error(&mut out, b'E', "FATAL", code, message, None, hint);
    out.freeze()
}

/// An ErrorResponse/NoticeResponse body made of these fields (the inverse of
/// [`error_fields`]).
pub fn fields_body(fields: &[(u8, String)]) -> Bytes {
    let mut out = BytesMut::new();
    for (code, value) in fields {
        out.put_u8(*code);
        put_cstr(&mut out, value);
    }
    out.put_u8(0);
    out.freeze()
}

/// Fields of an ErrorResponse/NoticeResponse.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut r = Reader::new(body, b'E');
    let mut v = vec![];
    while let Ok(code) = r.u8() {
        if code == 0 {
            break;
        }
        match r.cstr() {
            Ok(s) => v.push((code, s.to_string())),
            Err(_) => break,
        }
    }
    v
}

/// Field `code` of an ErrorResponse or NoticeResponse read by
/// [`error_fields`] ("" when absent).
pub fn field(fields: &[(u8, String)], code: u8) -> &str {
    fields.iter().find(|(k, _)| *k == code).map_or("", |(_, v)| v.as_str())
}

/// Whether an ErrorResponse ends the session: its severity is FATAL or
/// PANIC (`V`, never localized, from 9.6 on; `S` from older servers).
pub fn is_fatal(fields: &[(u8, String)]) -> bool {
    let severity = Some(field(fields, b'V')).filter(|v| !v.is_empty()).unwrap_or_else(|| field(fields, b'S'));
    matches!(severity, "FATAL" | "PANIC")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's own frontend messages, byte for byte what an
    /// independent encoder (the one tokio-postgres uses) writes.
    #[test]
    fn frontend_messages_match_an_independent_encoder() {
        use postgres_protocol::message::frontend as f;
        let (mut ours, mut theirs) = (BytesMut::new(), BytesMut::new());
        put_query(&mut ours, "select 1");
        f::query("select 1", &mut theirs).unwrap();
        put_parse(&mut ours, "s1", "select $1", NO_PARAM_TYPES);
        f::parse("s1", "select $1", std::iter::empty(), &mut theirs).unwrap();
        put_parse(&mut ours, "s2", "select $1", &[0, 1, 0, 0, 0, 23]);
        f::parse("s2", "select $1", [23], &mut theirs).unwrap();
        put_bind_text(&mut ours, "p", "s1");
        let no_values: [Option<&[u8]>; 0] = [];
        f::bind(
            "p",
            "s1",
            std::iter::empty(),
            no_values,
            |v, buf| match v {
                Some(v) => {
                    buf.put_slice(v);
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            std::iter::empty(),
            &mut theirs,
        )
        .map_err(|_| "bind")
        .unwrap();
        put_describe(&mut ours, b'P', "p");
        f::describe(b'P', "p", &mut theirs).unwrap();
        put_execute(&mut ours, "p");
        f::execute("p", 0, &mut theirs).unwrap();
        put_close(&mut ours, b'S', "s1");
        f::close(b'S', "s1", &mut theirs).unwrap();
        put_sync(&mut ours);
        f::sync(&mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn fatal_is_read_from_the_unlocalized_severity_first() {
        let fields = |v: &[(u8, &str)]| v.iter().map(|(k, s)| (*k, s.to_string())).collect::<Vec<_>>();
        assert!(is_fatal(&fields(&[(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "57P01")])));
        assert!(is_fatal(&fields(&[(b'S', "PANIC")])), "a server before 9.6 sends S only");
        // A localized S ("SCHWERWIEGEND") is read through V.
        assert!(is_fatal(&fields(&[(b'S', "SCHWERWIEGEND"), (b'V', "FATAL")])));
        assert!(!is_fatal(&fields(&[(b'S', "FEHLER"), (b'V', "ERROR")])));
        assert!(!is_fatal(&fields(&[(b'C', "42501")])));
        assert_eq!(field(&fields(&[(b'C', "42501")]), b'C'), "42501");
        assert_eq!(field(&fields(&[(b'C', "42501")]), b'M'), "");
    }

    #[test]
    fn an_error_body_is_the_framed_errors_body_and_reads_back() {
        let framed = error_bytes("42501", "no", Some("ask"));
        assert_eq!(error_body("42501", "no", Some("ask")), framed.slice(5..));
        let fields = error_fields(&error_body("42501", "no", None));
        assert_eq!(fields_body(&fields), error_body("42501", "no", None));
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut out = BytesMut::new();
        put_message(&mut out, b'Q', b"SELECT 1\0");
        let mut buf = BytesMut::from(&out[..3]);
        assert!(take_message(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&out[3..]);
        let m = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(m.tag, b'Q');
        assert_eq!(&m.body[..], b"SELECT 1\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(matches!(take_message(&mut buf), Err(ProtocolError::BadLength { .. })));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(take_message(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]);
        assert!(take_startup(&mut buf).is_err());
    }

    #[test]
    fn reader_is_bounds_checked() {
        let mut r = Reader::new(b"ab", b'D');
        assert!(r.i32().is_err());
        let mut r = Reader::new(b"abc", b'Q');
        assert_eq!(r.cstr().unwrap_err(), ProtocolError::BadString('Q'));
    }

    #[test]
    fn error_response_round_trips() {
        let b = error_bytes("42501", "denied", Some("ask"));
        let mut buf = BytesMut::from(&b[..]);
        let m = take_message(&mut buf).unwrap().unwrap();
        let f = error_fields(&m.body);
        assert!(f.contains(&(b'C', "42501".into())));
        assert!(f.contains(&(b'M', "denied".into())));
        assert!(f.contains(&(b'H', "ask".into())));
    }
}
