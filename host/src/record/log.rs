//! One session's append-only log: events are chained (each line carries the
//! SHA-256 of the previous one), buffered by the session, and written to the
//! operating system by [`LogState::commit`] — which the protocol calls before
//! it forwards a request upstream and before it answers the client. So an
//! event whose request or response the gateway acknowledged has reached the
//! kernel's page cache (through [`Appender`]'s mapping): killing the process
//! (even `kill -9`) cannot lose it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::body::Body;
use super::mapped::Appender;
use super::sign::{self, Signer};
use super::{chain_hash_bytes, genesis, SCHEMA};

/// Buffered bytes above which an event is written at once, commit or not.
const WRITE_THROUGH: usize = 256 * 1024;
/// Buffered bytes above which new events are refused while writes fail
/// (the disk is full): the session's requests are refused meanwhile.
const FAILING_CAP: usize = 16 * 1024 * 1024;

/// What the index needs to know of a session, gathered from its events.
#[derive(Debug, Clone, Default)]
pub struct Digest {
    /// The `session.start` body, once seen.
    pub start: Option<Value>,
    /// The `auth.failed` body, if authentication failed.
    pub auth_failed: Option<Value>,
    /// Requests, and how many were denied or routed to review.
    pub requests: u64,
    /// Denied requests.
    pub denied: u64,
    /// Requests routed to review.
    pub reviewed: u64,
    /// First event's time.
    pub first_ms: u64,
    /// Last event's time.
    pub last_ms: u64,
    /// The `session.end` reason.
    pub end_reason: Option<String>,
    /// The session was sealed after a crash.
    pub recovered: bool,
}

impl Digest {
    /// Take one event into account.
    pub fn note<B: Body + ?Sized>(&mut self, kind: &str, at_ms: u64, body: &B) {
        if self.first_ms == 0 {
            self.first_ms = at_ms;
        }
        self.last_ms = at_ms;
        match kind {
            "session.start" => self.start = Some(body.to_value()),
            "auth.failed" => self.auth_failed = Some(body.to_value()),
            "session.end" => {
                let body = body.to_value();
                self.end_reason = body.get("reason").and_then(Value::as_str).map(str::to_string);
                self.recovered = body.get("recovered").and_then(Value::as_bool).unwrap_or(false);
            }
            "request" => {
                self.requests += 1;
                match body.decision() {
                    Some("deny") => self.denied += 1,
                    Some("review") => self.reviewed += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The mutable state of one session's log.
pub struct LogState {
    id: String,
    path: PathBuf,
    file: Option<Appender>,
    /// Bytes of the file that hold events, for readers of the live file.
    written: Arc<AtomicU64>,
    /// Chained lines not yet handed to the kernel.
    buf: Vec<u8>,
    seq: u64,
    prev: String,
    /// Events since the last checkpoint, and when the first of them was.
    unsigned: u64,
    unsigned_since: Option<Instant>,
    /// Written since the last fsync.
    unsynced: bool,
    /// The last event's time and its RFC 3339 form (events come several a
    /// millisecond under load: formatted once).
    at: (u64, String),
    /// Events this log appended (for the gateway's counters).
    pub appended: u64,
    /// The last write error, while writes fail.
    pub error: Option<String>,
    /// Summary for the index.
    pub digest: Digest,
}

impl LogState {
    /// A new, empty log for session `id` in `dir` (the file is created on the first commit).
    pub fn new(dir: &Path, id: &str) -> LogState {
        LogState {
            id: id.to_string(),
            path: super::session_path(dir, id),
            file: None,
            written: Arc::default(),
            buf: Vec::new(),
            seq: 0,
            prev: genesis(id),
            unsigned: 0,
            unsigned_since: None,
            unsynced: false,
            at: (u64::MAX, String::new()),
            appended: 0,
            error: None,
            digest: Digest::default(),
        }
    }

    /// Continue an existing file whose last complete event is `seq` with hash
    /// `prev`, `unsigned` events after its last checkpoint.
    pub fn resume(path: &Path, id: &str, seq: u64, prev: String, unsigned: u64) -> std::io::Result<LogState> {
        let file = Appender::new(std::fs::OpenOptions::new().read(true).write(true).open(path)?)?;
        let mut s = LogState::new(path.parent().unwrap_or(Path::new(".")), id);
        s.path = path.to_path_buf();
        s.written.store(file.written(), Ordering::Release);
        s.file = Some(file);
        s.seq = seq;
        s.prev = prev;
        s.unsigned = unsigned;
        Ok(s)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bytes of the file hold events, kept current by [`Self::commit`].
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    /// Whether the file exists yet.
    pub fn opened(&self) -> bool {
        self.file.is_some()
    }

    /// Append one event to the buffer, chained to the previous one; signs a
    /// checkpoint after every [`sign::EVERY`] events.
    pub fn append<B: Body + ?Sized>(
        &mut self,
        kind: &str,
        at_ms: u64,
        body: &B,
        signer: Option<&Signer>,
    ) -> Result<(), String> {
        if self.buf.len() > FAILING_CAP {
            return Err(self.error.clone().unwrap_or_else(|| "recording buffer full".into()));
        }
        self.digest.note(kind, at_ms, body);
        self.push_line(kind, at_ms, body);
        if let Some(signer) = signer {
            self.unsigned += 1;
            self.unsigned_since.get_or_insert_with(Instant::now);
            if self.unsigned >= sign::EVERY {
                self.checkpoint(signer);
            }
        }
        if self.buf.len() >= WRITE_THROUGH {
            let _ = self.commit();
        }
        Ok(())
    }

    /// Chain one line onto the buffer, serialized in place. Canonical form
    /// (keys sorted, as a serde_json map re-serializes them): `verify` parses
    /// the line, drops `hash` and must get exactly this content back.
    fn push_line<B: Body + ?Sized>(&mut self, kind: &str, at_ms: u64, body: &B) {
        self.seq += 1;
        let start = self.buf.len();
        if self.at.0 != at_ms {
            self.at = (at_ms, crate::util::format_rfc3339_ms(at_ms));
        }
        let buf = &mut self.buf;
        let mut digits = itoa::Buffer::new();
        // (RFC 3339 times, hex hashes, the schema and numbers need no escaping.)
        buf.extend_from_slice(b"{\"at\":\"");
        buf.extend_from_slice(self.at.1.as_bytes());
        buf.extend_from_slice(b"\",\"at_ms\":");
        buf.extend_from_slice(digits.format(at_ms).as_bytes());
        buf.extend_from_slice(b",\"body\":");
        let body_at = buf.len();
        if serde_json::to_writer(&mut *buf, body).is_err() {
            buf.truncate(body_at);
            buf.extend_from_slice(b"null");
        }
        buf.extend_from_slice(b",\"kind\":");
        let _ = serde_json::to_writer(&mut *buf, kind);
        buf.extend_from_slice(b",\"prev\":\"");
        buf.extend_from_slice(self.prev.as_bytes());
        buf.extend_from_slice(b"\",\"schema\":\"");
        buf.extend_from_slice(SCHEMA.as_bytes());
        buf.extend_from_slice(b"\",\"seq\":");
        buf.extend_from_slice(digits.format(self.seq).as_bytes());
        buf.extend_from_slice(b",\"session\":");
        let _ = serde_json::to_writer(&mut *buf, &self.id);
        buf.push(b'}');
        let hash = chain_hash_bytes(&self.prev, &buf[start..]);
        // The hash goes in last, inside the object.
        buf.pop();
        buf.extend_from_slice(b",\"hash\":\"");
        buf.extend_from_slice(hash.as_bytes());
        buf.extend_from_slice(b"\"}\n");
        self.prev = hash;
        self.appended += 1;
    }

    /// Sign the chain head, if anything is unsigned.
    pub fn checkpoint(&mut self, signer: &Signer) {
        if self.unsigned == 0 {
            return;
        }
        let body = serde_json::json!({
            "seq": self.seq,
            "head": self.prev,
            "key": signer.public_hex(),
            "sig": signer.sign(&self.id, self.seq, &self.prev),
        });
        self.unsigned = 0;
        self.unsigned_since = None;
        self.push_line("checkpoint", crate::util::now_ms(), &body);
    }

    /// Whether the oldest unsigned event waited at least `age`.
    pub fn sign_due(&self, age: std::time::Duration) -> bool {
        self.unsigned_since.is_some_and(|t| t.elapsed() >= age)
    }

    /// Whether events wait in the buffer.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Hand buffered events to the kernel. On failure (disk full) the
    /// unwritten bytes stay buffered, and the file holds an exact prefix of
    /// the log: the next commit continues where this one stopped.
    pub fn commit(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .and_then(Appender::new)
                .map_err(|e| self.failed("open", e))?;
            self.file = Some(f);
        }
        let file = self.file.as_mut().expect("opened above");
        let (done, result) = file.append(&self.buf);
        self.written.store(file.written(), Ordering::Release);
        self.buf.drain(..done);
        self.unsynced |= done > 0;
        match result {
            Ok(()) => {
                self.error = None;
                Ok(())
            }
            Err(e) => Err(self.failed("write", e)),
        }
    }

    /// The session ended: cut the file to its content (the space reserved for
    /// further events is given back).
    pub fn finish(&mut self) {
        if let Some(f) = &mut self.file {
            if let Err(e) = f.finish() {
                tracing::warn!(path = %self.path.display(), "cannot cut the recording to its content: {e}");
            }
        }
    }

    /// Note a failure; the message (shown to clients) names the OS error, not the path.
    fn failed(&mut self, op: &str, e: std::io::Error) -> String {
        if self.error.is_none() {
            tracing::error!(path = %self.path.display(), "cannot {op} the recording: {e}");
        }
        let msg = e.to_string();
        self.error = Some(msg.clone());
        msg
    }

    /// fsync the file if anything was written since the last time.
    pub fn sync(&mut self) -> std::io::Result<()> {
        match (&self.file, self.unsynced) {
            (Some(f), true) => {
                self.unsynced = false;
                f.file().sync_data()
            }
            _ => Ok(()),
        }
    }
}
