//! Verify a recording's hash chain.

use std::path::Path;

use serde_json::Value;

use super::{chain_hash, genesis};

/// Why a recording does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read {0}")]
    Io(String),
    /// A line is not JSON or lacks fields.
    #[error("event {0}: not a valid event line")]
    Malformed(usize),
    /// The chain is broken at this event (edited, deleted or reordered).
    #[error("event {line}: {reason}")]
    Broken {
        /// 1-based line.
        line: usize,
        /// What does not match.
        reason: String,
    },
}

/// The recording files in `dir`, sorted (a file path is returned as is).
pub fn recordings_in(path: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut v: Vec<_> = std::fs::read_dir(path)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    Ok(v)
}

/// Check every line of a session file; returns the number of events.
pub fn verify_file(path: &Path) -> Result<usize, VerifyError> {
    verify_file_with(path, None).map(|r| r.events)
}

/// What a verified recording holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events, checkpoints included.
    pub events: usize,
    /// Signed checkpoints (verified when a key was given).
    pub checkpoints: usize,
}

/// Check the chain and, with the gateway's public key, every checkpoint's
/// signature — and that the recording ends with one (else it was cut off,
/// or the session is still open).
pub fn verify_file_with(path: &Path, public: Option<&[u8]>) -> Result<Report, VerifyError> {
    let text = super::read_content(path).map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
    let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let mut prev = genesis(id);
    let mut n = 0;
    let mut checkpoints = 0;
    let mut last_signed = 0usize;
    let (mut started, mut ended) = (false, false);
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let mut v: Value = serde_json::from_str(line).map_err(|_| VerifyError::Malformed(lineno))?;
        let obj = v.as_object_mut().ok_or(VerifyError::Malformed(lineno))?;
        let hash =
            obj.remove("hash").and_then(|h| h.as_str().map(str::to_string)).ok_or(VerifyError::Malformed(lineno))?;
        if obj.get("seq").and_then(Value::as_u64) != Some(lineno as u64) {
            return Err(VerifyError::Broken {
                line: lineno,
                reason: "sequence number out of order (an event was deleted or inserted)".into(),
            });
        }
        if obj.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(VerifyError::Broken { line: lineno, reason: "does not link to the previous event".into() });
        }
        let content = Value::Object(obj.clone()).to_string();
        if chain_hash(&prev, &content) != hash {
            return Err(VerifyError::Broken {
                line: lineno,
                reason: "content does not match its hash (edited)".into(),
            });
        }
        let kind = obj.get("kind").and_then(Value::as_str);
        started |= kind == Some("session.start");
        ended |= kind == Some("session.end");
        if kind == Some("checkpoint") {
            let b = &obj["body"];
            let covers = b["seq"].as_u64() == Some(lineno as u64 - 1) && b["head"].as_str() == Some(prev.as_str());
            if !covers {
                return Err(VerifyError::Broken {
                    line: lineno,
                    reason: "checkpoint does not cover the event before it".into(),
                });
            }
            if let Some(key) = public {
                let sig = b["sig"].as_str().unwrap_or("");
                if !super::sign::verify(key, id, lineno as u64 - 1, &prev, sig) {
                    return Err(VerifyError::Broken {
                        line: lineno,
                        reason: "checkpoint signature does not verify with this key (forged, or another gateway's key)"
                            .into(),
                    });
                }
            }
            checkpoints += 1;
            last_signed = lineno;
        }
        prev = hash;
        n += 1;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(VerifyError::Broken { line: n + 1, reason: "truncated last line".into() });
    }
    if public.is_some() && last_signed != n {
        return Err(VerifyError::Broken {
            line: last_signed + 1,
            reason: format!(
                "events {}..{n} are not covered by a signed checkpoint: the recording was cut off or appended to (or its session is still open)",
                last_signed + 1
            ),
        });
    }
    if public.is_some() && started && !ended {
        return Err(VerifyError::Broken {
            line: n + 1,
            reason: "the recording ends without session.end: cut off at a checkpoint (or the session is still open)"
                .into(),
        });
    }
    Ok(Report { events: n, checkpoints })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{session_path, Recorder};
    use serde_json::json;

    fn recorded(events: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wardgate-verify-{}", crate::util::random_id()));
        let rec = Recorder::start(&dir, None).unwrap();
        let s = rec.session("abc123");
        for i in 0..events {
            s.emit(
                "request",
                json!({"statement": format!("SELECT {i} /* é \" \\ */"), "n": i, "nested": {"z": 1, "a": [1, 2]}}),
            );
        }
        drop(s);
        rec.flush();
        session_path(&dir, "abc123")
    }

    #[test]
    fn an_untouched_recording_verifies() {
        assert_eq!(verify_file(&recorded(5)).unwrap(), 5);
    }

    #[test]
    fn a_flipped_byte_a_deleted_event_and_a_truncated_file_are_detected() {
        let p = recorded(5);
        let orig = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, orig.replacen("SELECT 2", "SELECT 3", 1)).unwrap();
        assert!(matches!(verify_file(&p), Err(VerifyError::Broken { line: 3, .. })), "{:?}", verify_file(&p));
        let lines: Vec<&str> = orig.lines().collect();
        let without = [&lines[..1], &lines[2..]].concat().join("\n") + "\n";
        std::fs::write(&p, without).unwrap();
        assert!(matches!(verify_file(&p), Err(VerifyError::Broken { line: 2, .. })));
        std::fs::write(&p, &orig[..orig.len() - 10]).unwrap();
        assert!(verify_file(&p).is_err());
    }

    #[test]
    fn signed_checkpoints_catch_cut_off_tails_and_forgery() {
        use crate::record::sign::{generate_seed_hex, Signer, EVERY};
        let seed = generate_seed_hex();
        let public = hex::decode(Signer::from_seed_hex(&seed).unwrap().public_hex()).unwrap();
        let dir = std::env::temp_dir().join(format!("wardgate-verify-{}", crate::util::random_id()));
        let rec = Recorder::start_signed(&dir, None, Some(Signer::from_seed_hex(&seed).unwrap())).unwrap();
        let s = rec.session("sig1");
        let n = 2 * EVERY + 22;
        for i in 0..n {
            s.emit("request", json!({"n": i}));
        }
        drop(s);
        rec.flush();
        let p = session_path(&dir, "sig1");
        let r = verify_file_with(&p, Some(&public)).unwrap();
        assert_eq!((r.events, r.checkpoints), (n as usize + 3, 3), "two periodic checkpoints and one at close");
        // Cut off the end, even at a line boundary with a consistent chain: named.
        let orig = std::fs::read_to_string(&p).unwrap();
        let keep = EVERY as usize + 36;
        let kept: String = orig.lines().take(keep).map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, &kept).unwrap();
        assert!(verify_file(&p).is_ok(), "the chain alone cannot tell");
        let e = verify_file_with(&p, Some(&public)).unwrap_err().to_string();
        let first_unsigned = EVERY + 2;
        assert!(
            e.starts_with(&format!("event {first_unsigned}: events {first_unsigned}..{keep} are not covered")),
            "{e}"
        );
        // Another key's checkpoints do not verify.
        std::fs::write(&p, &orig).unwrap();
        let other = hex::decode(Signer::from_seed_hex(&generate_seed_hex()).unwrap().public_hex()).unwrap();
        let e = verify_file_with(&p, Some(&other)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("event {}: checkpoint signature does not verify", EVERY + 1)), "{e}");
    }
}
