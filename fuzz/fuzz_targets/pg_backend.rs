//! Upstream bytes as the gateway reads them: RowDescription, DataRow packing
//! for the maskers and unpacking of their answer, ErrorResponse fields (and
//! the withholding of quoted data), COPY text/CSV lines split and re-joined,
//! binary COPY streams cut into tuples.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wardgate::protocol::postgres::codec::{error_fields, take_message};
use wardgate::protocol::postgres::copyout::{BinaryRows, Parts};
use wardgate::protocol::postgres::rows::{self, CopyFormat};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut shape = rows::unknown_shape(0);
    let mut batch: Vec<Bytes> = vec![];
    while let Ok(Some(m)) = take_message(&mut buf) {
        match m.tag {
            b'T' => {
                if let Ok(f) = rows::parse_row_description(&m.body) {
                    shape = rows::shape(&f, None, &Default::default());
                }
            }
            b'D' => batch.push(m.body.clone()),
            b'E' | b'N' => {
                for (field, value) in error_fields(&m.body) {
                    let _ = wardgate::protocol::postgres::errors::withhold_data("22P02", field, &value);
                }
            }
            b'd' => {
                // Binary COPY: the same parts (or the same refusal) however the stream is cut.
                let columns = m.body.len() % 4;
                let whole = BinaryRows::new(columns).feed(&m.body);
                let mut cut = BinaryRows::new(columns);
                let half = m.body.len() / 2;
                let split = cut.feed(&m.body[..half]).and_then(|mut a| {
                    let b = cut.feed(&m.body[half..])?;
                    a.header = a.header.or(b.header);
                    a.rows.extend(b.rows);
                    a.trailer |= b.trailer;
                    Ok::<Parts, _>(a)
                });
                match (whole, split) {
                    (Ok(w), Ok(s)) => assert_eq!(w, s),
                    (w, s) => assert_eq!(w.is_ok(), s.is_ok()),
                }
                for f in [CopyFormat::text(b'\t'), CopyFormat { csv: true, ..CopyFormat::text(b',') }] {
                    let split = f.split(&m.body);
                    // Each field's raw text, joined by the delimiter, is the
                    // line itself: the relay emits unmasked fields that way.
                    let raw: Vec<&[u8]> = split.iter().map(|(_, r)| &m.body[r.clone()]).collect();
                    assert_eq!(raw.join(&[f.delimiter][..]), &m.body[..]);
                    let fields: Vec<Option<Vec<u8>>> = split.into_iter().map(|(v, _)| v).collect();
                    let refs: Vec<Option<&[u8]>> = fields.iter().map(|x| x.as_deref()).collect();
                    let mut out = vec![];
                    f.join(&refs, &mut out);
                    // What is joined splits back to the same fields.
                    let again: Vec<Option<Vec<u8>>> = f.split(&out).into_iter().map(|(v, _)| v).collect();
                    assert_eq!(again, fields);
                }
            }
            _ => {}
        }
    }
    if let Ok(cells) = rows::pack(&batch, &shape) {
        let mut out = BytesMut::new();
        rows::unpack(&cells, &cells, &batch, &shape, &mut out);
        // A masker that changed every cell: the re-encoding paths (binary
        // arrays rebuilt, typed values NULLed, JSON re-quoted).
        let mut masked = cells.clone();
        masked.data.make_ascii_uppercase();
        rows::unpack(&masked, &cells, &batch, &shape, &mut out);
    }
});
