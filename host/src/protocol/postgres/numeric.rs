//! PostgreSQL's binary `numeric` as the decimal text its text format gives,
//! so detectors can read a number a driver fetched in binary format (a card
//! number in a `numeric` column is a card number either way).
//!
//! The binary form (`numeric_send`): `ndigits`, `weight`, `sign` and `dscale`
//! as 16-bit integers, then `ndigits` base-10000 digits, the first worth
//! 10000^`weight`. The text is what `numeric_out` writes: the integer part
//! without leading zeros, then `dscale` fraction digits.

use std::fmt::Write;

use super::codec::Reader;

const POSITIVE: u16 = 0x0000;
const NEGATIVE: u16 = 0x4000;
const NAN: u16 = 0xC000;
const PLUS_INFINITY: u16 = 0xD000;
const MINUS_INFINITY: u16 = 0xF000;
/// Most fraction digits a numeric may have (NUMERIC_MAX_DISPLAY_SCALE).
const MAX_SCALE: u16 = 1000;

/// The decimal text of a binary numeric; `None` if the bytes are not one.
pub fn text(b: &[u8]) -> Option<String> {
    let mut r = Reader::new(b, b'D');
    let ndigits = usize::from(r.i16().ok()? as u16);
    let weight = i64::from(r.i16().ok()?);
    let sign = r.i16().ok()? as u16;
    let dscale = r.i16().ok()? as u16;
    if r.remaining() != 2 * ndigits || dscale > MAX_SCALE {
        return None;
    }
    let digits: Vec<u16> = (0..ndigits).map(|_| r.i16().map(|d| d as u16)).collect::<Result<_, _>>().ok()?;
    if digits.iter().any(|d| *d > 9999) {
        return None;
    }
    let special = match sign {
        POSITIVE | NEGATIVE => None,
        NAN => Some("NaN"),
        PLUS_INFINITY => Some("Infinity"),
        MINUS_INFINITY => Some("-Infinity"),
        _ => return None,
    };
    if let Some(s) = special {
        return (ndigits == 0).then(|| s.to_string());
    }
    // The base-10000 digit worth 10000^p, for any p; groups above or below
    // the given ones are 0.
    let at = |p: i64| usize::try_from(weight - p).ok().and_then(|i| digits.get(i).copied()).unwrap_or(0);
    let mut out = String::with_capacity(4 * ndigits + 2 + usize::from(dscale));
    if sign == NEGATIVE {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        let _ = write!(out, "{}", at(weight));
        for p in (0..weight).rev() {
            let _ = write!(out, "{:04}", at(p));
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + usize::from(dscale);
        let mut p = -1;
        while out.len() < end {
            let _ = write!(out, "{:04}", at(p));
            p -= 1;
        }
        out.truncate(end);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [digits.len() as u16, weight as u16, sign, dscale] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn binary_numerics_read_as_postgresql_writes_them() {
        for (weight, sign, dscale, digits, want) in [
            (0, POSITIVE, 0, &[][..], "0"),
            (3, POSITIVE, 0, &[4111, 1111, 1111, 1111][..], "4111111111111111"),
            (1, POSITIVE, 4, &[1, 2345, 6789][..], "12345.6789"),
            (0, NEGATIVE, 1, &[1, 5000][..], "-1.5"),
            (-1, POSITIVE, 4, &[1][..], "0.0001"),
            (-2, POSITIVE, 6, &[12][..], "0.000000"),
            (-2, POSITIVE, 10, &[12][..], "0.0000001200"),
            (5, POSITIVE, 0, &[1][..], "100000000000000000000"),
            (0, POSITIVE, 2, &[7][..], "7.00"),
            (1, NEGATIVE, 0, &[12, 3][..], "-120003"),
            (0, NAN, 0, &[][..], "NaN"),
            (0, PLUS_INFINITY, 0, &[][..], "Infinity"),
            (0, MINUS_INFINITY, 0, &[][..], "-Infinity"),
        ] {
            assert_eq!(text(&wire(weight, sign, dscale, digits)).as_deref(), Some(want), "{digits:?} w{weight}");
        }
    }

    #[test]
    fn bytes_that_are_no_numeric_are_refused() {
        let mut short = wire(0, POSITIVE, 0, &[1, 2]);
        short.pop();
        for bad in [
            vec![],
            vec![0, 0, 0],
            short,
            wire(0, POSITIVE, 0, &[10000]),
            wire(0, 0x1234, 0, &[1]),
            wire(0, NAN, 0, &[1]),
            wire(0, POSITIVE, 5000, &[1]),
        ] {
            assert_eq!(text(&bad), None, "{bad:?}");
        }
    }
}
