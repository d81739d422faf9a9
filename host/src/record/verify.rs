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
    let text = std::fs::read_to_string(path).map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
    let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let mut prev = genesis(id);
    let mut n = 0;
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
        prev = hash;
        n += 1;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(VerifyError::Broken { line: n + 1, reason: "truncated last line".into() });
    }
    Ok(n)
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
}
