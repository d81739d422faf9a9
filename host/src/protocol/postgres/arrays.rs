//! Binary-format arrays of text for maskers.
//!
//! Drivers that read results in binary format (tokio-postgres, psycopg 3 with
//! `binary=True`, JDBC, pgx) get `text[]`, `varchar[]`, `bpchar[]` and
//! `name[]` as PostgreSQL's binary array encoding, which detectors cannot read
//! as a whole. Maskers see them as array text instead, every element quoted
//! (`{"jane@example.com",NULL,"x"}`); the masked text is read back element by
//! element and re-encoded under the original header (dimensions, bounds,
//! element type). If a masker changed the text so that it no longer holds the
//! same number of elements, the cell becomes NULL: nothing unmasked leaves.

/// Array types whose elements are UTF-8 text in binary format.
pub fn is_text_array(type_oid: u32) -> bool {
    matches!(type_oid, 1009 | 1015 | 1014 | 1003)
}

/// The header of a binary array: where its elements start and how many there are.
struct Header {
    body_at: usize,
    count: usize,
}

/// Dimensions a PostgreSQL array may have (MAXDIM).
const MAX_DIMS: usize = 6;

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn header(wire: &[u8]) -> Option<Header> {
    let ndim = usize::try_from(i32_at(wire, 0)?).ok().filter(|n| *n <= MAX_DIMS)?;
    let body_at = 12 + 8 * ndim;
    let mut count = usize::from(ndim > 0);
    for d in 0..ndim {
        let len = usize::try_from(i32_at(wire, 12 + 8 * d)?).ok()?;
        count = count.checked_mul(len)?;
    }
    // Every element takes at least its 4-byte length.
    (body_at <= wire.len() && count <= (wire.len() - body_at) / 4).then_some(Header { body_at, count })
}

/// The elements of a binary array (None = NULL), if it is well-formed.
fn elements(wire: &[u8]) -> Option<(Header, Vec<Option<&[u8]>>)> {
    let h = header(wire)?;
    let mut at = h.body_at;
    let mut out = Vec::with_capacity(h.count);
    for _ in 0..h.count {
        let len = i32_at(wire, at)?;
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at.checked_add(len as usize)?;
            out.push(Some(wire.get(at..end)?));
            at = end;
        }
    }
    (at == wire.len()).then_some((h, out))
}

/// Append the array text maskers see; false (nothing appended) if `wire` is
/// not a well-formed binary array.
pub fn render(wire: &[u8], out: &mut Vec<u8>) -> bool {
    render_with(wire, out, |bytes, out| {
        out.push(b'"');
        for &c in bytes {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
        true
    })
}

/// Append array text whose elements `element` writes (false: not one of the
/// array's type); false, with nothing appended, if `wire` is not a
/// well-formed binary array or an element is refused. Arrays of numbers use
/// it too, with the elements as `numeric_out` and `int8out` write them
/// (`{4111111111111111,NULL,7}`): they are never rebuilt, a changed one
/// becomes NULL like a changed number.
pub fn render_with(wire: &[u8], out: &mut Vec<u8>, element: impl Fn(&[u8], &mut Vec<u8>) -> bool) -> bool {
    let Some((_, elems)) = elements(wire) else { return false };
    let start = out.len();
    out.push(b'{');
    for (i, e) in elems.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match e {
            None => out.extend_from_slice(b"NULL"),
            Some(bytes) => {
                if !element(bytes, out) {
                    out.truncate(start);
                    return false;
                }
            }
        }
    }
    out.push(b'}');
    true
}

/// Read array text into elements: quoted strings and NULLs, separated by
/// braces, commas and spaces; with `bare`, also the unquoted elements
/// PostgreSQL writes for simple values (masked text read back has none).
/// None if anything else is there.
pub fn parse(text: &[u8], bare: bool) -> Option<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' | b'}' | b',' | b' ' => i += 1,
            b'"' => {
                let mut e = Vec::new();
                i += 1;
                loop {
                    match *text.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            e.push(*text.get(i + 1)?);
                            i += 2;
                        }
                        c => {
                            e.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Some(e));
            }
            _ if bare => {
                let end = text[i..].iter().position(|&b| b == b',' || b == b'}').map_or(text.len(), |n| i + n);
                let raw = &text[i..end];
                out.push((raw != b"NULL").then(|| raw.to_vec()));
                i = end;
            }
            b'N' if text[i..].starts_with(b"NULL") => {
                out.push(None);
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The binary array for masked text `masked`, under `wire`'s header; None
/// if the text no longer holds the same number of elements.
pub fn rebuild(wire: &[u8], masked: &[u8]) -> Option<Vec<u8>> {
    let h = header(wire)?;
    let elems = parse(masked, false)?;
    if elems.len() != h.count {
        return None;
    }
    let mut out = Vec::with_capacity(wire.len());
    out.extend_from_slice(&wire[..4]);
    out.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
    out.extend_from_slice(&wire[8..h.body_at]);
    for e in &elems {
        match e {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(bytes) => {
                out.extend_from_slice(&i32::try_from(bytes.len()).ok()?.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-dimensional text[] in binary format.
    fn array(elems: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&i32::from(elems.iter().any(|e| e.is_none())).to_be_bytes());
        b.extend_from_slice(&25u32.to_be_bytes());
        b.extend_from_slice(&(elems.len() as i32).to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        for e in elems {
            match e {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn elements_are_masked_and_the_array_keeps_its_shape() {
        let wire = array(&[Some("jane@example.com"), None, Some(r#"say "hi" \ bye"#)]);
        let mut text = Vec::new();
        assert!(render(&wire, &mut text));
        assert_eq!(text, br#"{"jane@example.com",NULL,"say \"hi\" \\ bye"}"#);
        let masked = br#"{"j***@example.com",NULL,"say \"hi\" \\ bye"}"#;
        assert_eq!(
            rebuild(&wire, masked).unwrap(),
            array(&[Some("j***@example.com"), None, Some(r#"say "hi" \ bye"#)])
        );
        // Unchanged text rebuilds the same bytes.
        assert_eq!(rebuild(&wire, &text).unwrap(), wire);
    }

    #[test]
    fn a_mask_that_breaks_the_elements_gives_none() {
        let wire = array(&[Some("a"), Some("b")]);
        assert_eq!(rebuild(&wire, b"[REDACTED]"), None);
        assert_eq!(rebuild(&wire, br#"{"a"}"#), None, "an element lost");
        assert_eq!(rebuild(&wire, br#"{"a","b"#), None, "unterminated");
    }

    #[test]
    fn empty_and_malformed_arrays() {
        let mut empty = Vec::new();
        empty.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
        let mut text = Vec::new();
        assert!(render(&empty, &mut text));
        assert_eq!(text, b"{}");
        assert_eq!(rebuild(&empty, b"{}").unwrap(), empty);
        let wire = array(&[Some("abc")]);
        for n in 0..wire.len() {
            assert!(!render(&wire[..n], &mut Vec::new()), "prefix of {n} bytes");
        }
        let mut huge = array(&[Some("a")]);
        huge[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(!render(&huge, &mut Vec::new()), "a dimension larger than the bytes");
    }
}
