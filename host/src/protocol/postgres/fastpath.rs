//! The fastpath function-call protocol (FunctionCall, `F`).
//!
//! libpq's and JDBC's large-object APIs call `lo_open`, `loread`, ... this
//! way: the message names a function by OID, with no SQL for guards to read.
//! Only the large-object functions pass: their OIDs are fixed in PostgreSQL's
//! catalog (`pg_proc.dat`), so each call is put to the guards as the SELECT it
//! stands for (`SELECT pg_catalog.loread($1, $2)`) and its result goes through
//! the maskers like a one-column row. Any other OID is refused.

use super::codec::{ProtocolError, Reader};

/// A large-object function: OID, name, result type OID, argument count.
const LARGE_OBJECT: &[(u32, &str, u32, usize)] = &[
    (715, "lo_create", 26, 1),
    (952, "lo_open", 23, 2),
    (953, "lo_close", 23, 1),
    (954, "loread", 17, 2),
    (955, "lowrite", 23, 2),
    (956, "lo_lseek", 23, 3),
    (957, "lo_creat", 26, 1),
    (958, "lo_tell", 23, 1),
    (964, "lo_unlink", 23, 1),
    (1004, "lo_truncate", 23, 2),
    (3170, "lo_lseek64", 20, 3),
    (3171, "lo_tell64", 20, 1),
    (3172, "lo_truncate64", 23, 2),
];

/// A FunctionCall the gateway lets guards decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Function name in `pg_catalog`.
    pub name: &'static str,
    /// The SELECT the call stands for, as guards and the recording see it.
    pub sql: String,
    /// Result type OID.
    pub result_type: u32,
    /// Result format (0 text, 1 binary).
    pub result_format: i16,
}

/// Why a FunctionCall is not let through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// Not a large-object function.
    #[error(
        "function OID {0} cannot be called with the function-call protocol through Wardgate (only the \
         large-object functions can); call it with SELECT"
    )]
    NotAllowed(u32),
    /// A large-object function with the wrong number of arguments.
    #[error("{name} takes {expected} arguments, the call passed {got}")]
    Arity {
        /// Function name.
        name: &'static str,
        /// Its argument count.
        expected: usize,
        /// What the call passed.
        got: usize,
    },
}

/// Read a FunctionCall body: the call to decide on, or why it is refused.
pub fn parse(body: &[u8]) -> Result<Result<Call, Refused>, ProtocolError> {
    let mut r = Reader::new(body, b'F');
    let oid = r.i32()? as u32;
    let nformats = r.i16()?.max(0) as usize;
    for _ in 0..nformats {
        r.i16()?;
    }
    let nargs = r.i16()?.max(0) as usize;
    for _ in 0..nargs {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        }
    }
    let result_format = r.i16()?;
    let Some(&(_, name, result_type, arity)) = LARGE_OBJECT.iter().find(|f| f.0 == oid) else {
        return Ok(Err(Refused::NotAllowed(oid)));
    };
    if nargs != arity {
        return Ok(Err(Refused::Arity { name, expected: arity, got: nargs }));
    }
    let params: Vec<String> = (1..=nargs).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT pg_catalog.{name}({})", params.join(", "));
    Ok(Ok(Call { name, sql, result_type, result_format }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn call(oid: i32, args: &[&[u8]], result_format: i16) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(oid);
        b.put_i16(1);
        b.put_i16(1);
        b.put_i16(args.len() as i16);
        for a in args {
            b.put_i32(a.len() as i32);
            b.put_slice(a);
        }
        b.put_i16(result_format);
        b
    }

    #[test]
    fn large_object_calls_read_as_their_select() {
        let c = parse(&call(954, &[&7i32.to_be_bytes(), &8192i32.to_be_bytes()], 1)).unwrap().unwrap();
        assert_eq!(c.sql, "SELECT pg_catalog.loread($1, $2)");
        assert_eq!((c.name, c.result_type, c.result_format), ("loread", 17, 1));
    }

    #[test]
    fn other_functions_and_wrong_arity_are_refused() {
        // 2619 is pg_read_file(text) on some versions: any OID outside the list is refused.
        assert_eq!(parse(&call(2619, &[b"/etc/passwd"], 0)).unwrap(), Err(Refused::NotAllowed(2619)));
        assert!(matches!(parse(&call(954, &[b"1"], 0)).unwrap(), Err(Refused::Arity { .. })));
    }

    #[test]
    fn truncated_calls_are_protocol_errors() {
        let full = call(954, &[&7i32.to_be_bytes(), &8192i32.to_be_bytes()], 1);
        for n in 0..full.len() {
            assert!(parse(&full[..n]).is_err(), "prefix of {n} bytes");
        }
    }
}
