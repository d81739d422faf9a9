//! Sealing a recording a crash left open, and summarising recordings for the index.

use std::path::Path;

use serde_json::{json, Value};

use super::log::{Digest, LogState};
use super::sign::Signer;

/// What sealing found and did.
#[derive(Debug)]
pub struct Sealed {
    /// The session's summary (with the sealing `session.end`).
    pub digest: Digest,
    /// Events were appended (false: it was already sealed).
    pub appended: bool,
    /// Bytes of a torn last line that were cut off.
    pub discarded: u64,
}

/// What a recording's complete lines say.
#[derive(Debug, Default)]
pub struct Scan {
    /// Summary for the index.
    pub digest: Digest,
    /// Last event's sequence number and hash.
    pub seq: u64,
    /// Hash of the last event.
    pub head: Option<String>,
    /// Events after the last checkpoint.
    pub unsigned: u64,
    /// Kinds of the last two events, last first.
    pub tail: [Option<String>; 2],
    /// Byte length of the complete lines.
    pub complete_len: u64,
    /// Byte length of the content (complete lines and a torn last one;
    /// reserved space after it is not content).
    pub content_len: u64,
}

/// Read the complete lines of a recording.
pub fn scan(bytes: &[u8]) -> Scan {
    let bytes = super::content(bytes);
    let mut s = Scan { content_len: bytes.len() as u64, ..Scan::default() };
    let end = bytes.iter().rposition(|b| *b == b'\n').map(|p| p + 1).unwrap_or(0);
    s.complete_len = end as u64;
    for line in bytes[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let at_ms = v.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
        s.digest.note(&kind, at_ms, v.get("body").unwrap_or(&Value::Null));
        s.seq = v.get("seq").and_then(Value::as_u64).unwrap_or(s.seq);
        s.head = v.get("hash").and_then(Value::as_str).map(str::to_string);
        s.unsigned = if kind == "checkpoint" { 0 } else { s.unsigned + 1 };
        s.tail = [Some(kind), s.tail[0].take()];
    }
    s
}

/// Seal `path` (session `id`) after a crash: cut a torn last line (it was
/// never acknowledged: commits write whole events) and the reserved space
/// after it, then append
/// `session.end` and, with a signer, a checkpoint over the whole chain. A
/// recording that already ends with `session.end` (and its checkpoint) is
/// left as is. `None` when there is no file.
pub fn seal(path: &Path, id: &str, signer: Option<&Signer>) -> std::io::Result<Option<Sealed>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let s = scan(&bytes);
    // Torn bytes of a last event; after them, space reserved for more (NULs).
    let discarded = s.content_len - s.complete_len;
    if bytes.len() as u64 > s.complete_len {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(s.complete_len)?;
        f.sync_data()?;
    }
    let ended = s.tail[0].as_deref() == Some("session.end")
        || (s.tail[0].as_deref() == Some("checkpoint") && s.tail[1].as_deref() == Some("session.end"));
    if ended && (signer.is_none() || s.unsigned == 0) {
        return Ok(Some(Sealed { digest: s.digest, appended: false, discarded }));
    }
    let head = s.head.clone().unwrap_or_else(|| super::genesis(id));
    let mut log = LogState::resume(path, id, s.seq, head, s.unsigned)?;
    log.digest = s.digest;
    if !ended {
        let body = json!({
            "reason": "the gateway stopped without closing this session; sealed when it restarted",
            "recovered": true,
            "discarded_bytes": discarded,
        });
        log.append("session.end", crate::util::now_ms(), &body, signer).map_err(std::io::Error::other)?;
    }
    if let Some(signer) = signer {
        log.checkpoint(signer);
    }
    log.commit().map_err(std::io::Error::other)?;
    log.sync()?;
    Ok(Some(Sealed { digest: std::mem::take(&mut log.digest), appended: true, discarded }))
}
