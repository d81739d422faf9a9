//! `bytea`'s text forms, decoded so maskers read the bytes they stand for.
//!
//! In text format PostgreSQL writes a `bytea` as hex (`\x6a616e65…`, the
//! default `bytea_output`) or, with `bytea_output = 'escape'`, as its
//! printable bytes with `\\` and `\ooo` for the rest. Neither is text a
//! detector can read: an e-mail stored as `bytea` would leave in hex. The
//! gateway gives maskers the decoded bytes instead, as it gives them a binary
//! `bytea`'s bytes, and (like any value whose type a mask cannot keep) sends
//! NULL when one is changed.

use super::arrays;

/// Append the bytes a text-format `bytea` stands for; false (nothing
/// appended) if `text` is neither of its forms.
pub fn decode(text: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = match text.strip_prefix(b"\\x") {
        Some(hex) => decode_hex(hex, out),
        None => decode_escape(text, out),
    };
    if !ok {
        out.truncate(start);
    }
    ok
}

fn decode_hex(hex: &[u8], out: &mut Vec<u8>) -> bool {
    let at = out.len();
    out.resize(at + hex.len() / 2, 0);
    hex::decode_to_slice(hex, &mut out[at..]).is_ok()
}

fn decode_escape(text: &[u8], out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    while i < text.len() {
        match text[i..] {
            [b'\\', b'\\', ..] => {
                out.push(b'\\');
                i += 2;
            }
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                i += 4;
            }
            [b'\\', ..] => return false,
            [c, ..] => {
                out.push(c);
                i += 1;
            }
            [] => unreachable!("i < len"),
        }
    }
    true
}

/// Append the decoded elements of a text-format `bytea[]` (any dimensions),
/// one per line, NULLs left out; false (nothing appended) if `text` is not
/// one.
pub fn decode_array(text: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = decode_elements(text, out);
    if !ok {
        out.truncate(start);
    }
    ok
}

fn decode_elements(text: &[u8], out: &mut Vec<u8>) -> bool {
    // Lower bounds other than 1 come first: `[0:1]={…}`.
    let Some(open) = text.iter().position(|&b| b == b'{') else { return false };
    let Some(elements) = arrays::parse(&text[open..], true) else { return false };
    for (n, element) in elements.iter().flatten().enumerate() {
        if n > 0 {
            out.push(b'\n');
        }
        if !decode(element, out) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(f: fn(&[u8], &mut Vec<u8>) -> bool, text: &[u8]) -> Option<Vec<u8>> {
        let mut out = b"kept".to_vec();
        let ok = f(text, &mut out);
        assert!(out.starts_with(b"kept"), "what was there stays");
        if !ok {
            assert_eq!(out, b"kept", "a failed decode appends nothing");
        }
        ok.then(|| out[4..].to_vec())
    }

    #[test]
    fn hex_and_escape_forms_decode_to_their_bytes() {
        assert_eq!(dec(decode, b"\\x6a616e65").as_deref(), Some(&b"jane"[..]));
        assert_eq!(dec(decode, b"\\x00FF").as_deref(), Some(&b"\x00\xff"[..]));
        assert_eq!(dec(decode, b"\\x").as_deref(), Some(&b""[..]));
        assert_eq!(dec(decode, b"a\\\\b\\000\\377@x").as_deref(), Some(&b"a\\b\x00\xff@x"[..]));
        assert_eq!(dec(decode, b"plain").as_deref(), Some(&b"plain"[..]));
    }

    #[test]
    fn malformed_forms_are_refused() {
        for bad in [&b"\\x6"[..], b"\\x6g", b"\\x 6a", b"a\\b", b"\\400", b"\\08", b"\\"] {
            assert_eq!(dec(decode, bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn arrays_decode_every_element() {
        let got = dec(decode_array, br#"{"\\x6a61","\\x",NULL,"\\x6e65"}"#).unwrap();
        assert_eq!(got, b"ja\n\nne");
        // Escape output: unquoted elements, quoted ones with escaped quotes.
        let got = dec(decode_array, br#"[0:1]={{abc,"q\"\\001\\\\"}}"#).unwrap();
        assert_eq!(got, b"abc\nq\"\x01\\");
        assert_eq!(dec(decode_array, b"{}").as_deref(), Some(&b""[..]));
        for bad in [&b"no braces"[..], br#"{"\\x6"}"#, br#"{"unterminated}"#, br#"{a\b}"#] {
            assert_eq!(dec(decode_array, bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
