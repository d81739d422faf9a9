//! Client bytes as the gateway reads them: the startup packet (SSLRequest,
//! GSSENCRequest, CancelRequest, StartupMessage), then framed messages whose
//! fields are read with the same `Reader` the relay uses, and each Query /
//! Parse text (and each large-object FunctionCall, as its SELECT) through
//! the SQL analysis the guards get.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wardgate::pipeline::types::SqlPhase;
use wardgate::protocol::postgres::codec::{take_message, take_startup, Reader};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(startup)) = take_startup(&mut buf) {
        let mut r = Reader::new(&startup, 0);
        if r.i32().is_ok() {
            while let Ok(k) = r.cstr() {
                if k.is_empty() || r.cstr().is_err() {
                    break;
                }
            }
        }
    }
    while let Ok(Some(m)) = take_message(&mut buf) {
        let mut r = Reader::new(&m.body, m.tag);
        match m.tag {
            b'F' => {
                if let Ok(Ok(call)) = wardgate::protocol::postgres::fastpath::parse(&m.body) {
                    let _ = wardgate::sql::analyze(&call.sql, SqlPhase::SimpleQuery, "");
                }
            }
            b'Q' => {
                if let Ok(q) = r.cstr() {
                    let _ = wardgate::sql::analyze(q, SqlPhase::SimpleQuery, "");
                }
            }
            b'P' => {
                let name = r.cstr().unwrap_or("");
                if let Ok(q) = r.cstr() {
                    let _ = wardgate::sql::analyze(q, SqlPhase::Parse, name);
                }
                if let Ok(n) = r.i16() {
                    for _ in 0..n.max(0) {
                        let _ = r.i32();
                    }
                }
            }
            b'B' => {
                let _ = (r.cstr(), r.cstr());
                for _ in 0..r.i16().unwrap_or(0).max(0) {
                    let _ = r.i16();
                }
                for _ in 0..r.i16().unwrap_or(0).max(0) {
                    match r.i32() {
                        Ok(n) if n >= 0 => {
                            let _ = r.bytes(n as usize);
                        }
                        _ => {}
                    }
                }
            }
            b'E' | b'D' | b'C' => {
                let _ = (r.u8(), r.cstr(), r.i32());
            }
            _ => {
                let _ = r.rest();
            }
        }
    }
});
