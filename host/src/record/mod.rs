//! Session recording: every event of every session, masked, in an append-only
//! file per session where each line carries the SHA-256 of the previous one.
//!
//! Events go into a queue that one writer thread drains every
//! [`COMMIT_INTERVAL`] (group commit: write everything queued, flush once).
//! Senders never wake the writer: a futex wake per event cost ~20% of the
//! gateway's CPU under pgbench. Recorder plugins get the
//! same events in batches from a separate sink thread with a per-sink spool,
//! so a slow or failing sink never slows client traffic; a failed batch stays
//! in the spool and is retried.

pub mod read;
pub mod sign;
pub mod verify;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::pipeline::types::Event;
use crate::plugins::instances::Role;
use crate::plugins::{Registry, SessionPlugins};

/// Schema id written in every event.
pub const SCHEMA: &str = "wardgate.event.v1";
/// How often the writer drains the queue.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// Events a recorder plugin's spool holds before the oldest are counted as dropped.
pub const SPOOL_CAP: usize = 100_000;

enum Cmd {
    Event { session: Arc<str>, kind: &'static str, at_ms: u64, body: Value },
    Close { session: Arc<str> },
    Flush(Sender<()>),
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct RecordStats {
    /// Events written.
    pub events: AtomicU64,
    /// Write errors.
    pub write_errors: AtomicU64,
    /// Events waiting in recorder-plugin spools.
    pub spooled: AtomicU64,
    /// Events dropped because a spool was full.
    pub spool_dropped: AtomicU64,
}

/// The queue between sessions and the writer.
#[derive(Default)]
struct Queue {
    cmds: parking_lot::Mutex<Vec<Cmd>>,
    closed: std::sync::atomic::AtomicBool,
}

/// A handle that enqueues commands.
#[derive(Clone)]
struct Tx(Arc<Queue>);

impl Tx {
    fn send(&self, c: Cmd) -> Result<(), ()> {
        if self.0.closed.load(Ordering::Relaxed) {
            return Err(());
        }
        self.0.cmds.lock().push(c);
        Ok(())
    }
}

/// The gateway's recorder.
#[derive(Clone)]
pub struct Recorder {
    tx: Tx,
    dir: PathBuf,
    /// Counters.
    pub stats: Arc<RecordStats>,
}

impl Recorder {
    /// Start the writer (and, with a registry, the plugin sink) threads.
    pub fn start(dir: &Path, registry: Option<Arc<Registry>>) -> std::io::Result<Recorder> {
        Self::start_signed(dir, registry, None)
    }

    /// Like [`Recorder::start`], writing signed checkpoints with `signer`.
    pub fn start_signed(
        dir: &Path,
        registry: Option<Arc<Registry>>,
        signer: Option<sign::Signer>,
    ) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let queue = Arc::new(Queue::default());
        let tx = Tx(queue.clone());
        let stats = Arc::new(RecordStats::default());
        let sink_tx = registry.map(|r| {
            let (stx, srx) = channel::<Vec<Event>>();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("wardgate-record-sinks".into())
                .spawn(move || sink_loop(r, srx, stats))
                .expect("spawn sink thread");
            stx
        });
        {
            let dir = dir.to_path_buf();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("wardgate-record".into())
                .spawn(move || writer_loop(dir, queue, sink_tx, stats, signer))?;
        }
        Ok(Recorder { tx, dir: dir.to_path_buf(), stats })
    }

    /// Where recordings live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A handle for one session.
    pub fn session(&self, id: &str) -> SessionRecorder {
        SessionRecorder { id: Arc::from(id), tx: self.tx.clone() }
    }

    /// Wait until everything queued so far is written and flushed.
    pub fn flush(&self) {
        let (tx, rx) = channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// Records the events of one session. Closing happens on drop.
pub struct SessionRecorder {
    id: Arc<str>,
    tx: Tx,
}

impl SessionRecorder {
    /// Record an event. `body` must hold masked data only.
    pub fn emit(&self, kind: &'static str, body: Value) {
        let _ = self.tx.send(Cmd::Event { session: self.id.clone(), kind, at_ms: crate::util::now_ms(), body });
    }

    /// Session id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SessionRecorder {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Close { session: self.id.clone() });
    }
}

struct Open {
    file: BufWriter<File>,
    seq: u64,
    prev: String,
    /// Events written since the last checkpoint, and when the first of them was.
    unsigned: u64,
    unsigned_since: Option<std::time::Instant>,
}

impl Open {
    /// Append one event line (canonical form, chained to the previous one).
    fn append(&mut self, session: &str, kind: &str, at_ms: u64, body_json: &str) -> std::io::Result<()> {
        self.seq += 1;
        // Serialize once, in canonical form (keys sorted, as a serde_json map
        // re-serializes them): `verify` parses the line, drops `hash` and must
        // get exactly this content back.
        let content = format!(
            "{{\"at\":{},\"at_ms\":{at_ms},\"body\":{body_json},\"kind\":{},\"prev\":\"{}\",\"schema\":\"{SCHEMA}\",\"seq\":{},\"session\":{}}}",
            Value::String(crate::util::format_rfc3339_ms(at_ms)),
            Value::String(kind.to_string()),
            self.prev,
            self.seq,
            Value::String(session.to_string()),
        );
        let hash = chain_hash(&self.prev, &content);
        let line = format!("{},\"hash\":\"{hash}\"}}", &content[..content.len() - 1]);
        let r = writeln!(self.file, "{line}");
        self.prev = hash;
        r
    }

    /// Sign the chain head, if anything is unsigned.
    fn checkpoint(&mut self, session: &str, signer: &sign::Signer) -> std::io::Result<()> {
        if self.unsigned == 0 {
            return Ok(());
        }
        let body = serde_json::json!({
            "seq": self.seq,
            "head": self.prev,
            "key": signer.public_hex(),
            "sig": signer.sign(session, self.seq, &self.prev),
        });
        self.unsigned = 0;
        self.unsigned_since = None;
        self.append(session, "checkpoint", crate::util::now_ms(), &body.to_string())
    }
}

/// The file of a session's recording.
pub fn session_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.jsonl"))
}

/// Hash of one line's content given the previous hash.
pub fn chain_hash(prev: &str, content: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(content.as_bytes());
    hex::encode(h.finalize())
}

/// The hash a session's chain starts from.
pub fn genesis(id: &str) -> String {
    // (The chain starts from a hash of the session id, so a file cannot be
    // renamed to another session's id without breaking its first event.)
    hex::encode(Sha256::digest(format!("wardgate-session:{id}").as_bytes()))
}

/// Checkpoint sessions whose oldest unsigned event is old enough (all, if `all`), and flush them.
fn sign_due(open: &mut HashMap<Arc<str>, Open>, signer: &sign::Signer, all: bool, stats: &RecordStats) {
    for (session, o) in open.iter_mut() {
        let due = o.unsigned_since.is_some_and(|t| all || t.elapsed() >= sign::MAX_UNSIGNED_AGE);
        if due && (o.checkpoint(session, signer).is_err() || o.file.flush().is_err()) {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn writer_loop(
    dir: PathBuf,
    queue: Arc<Queue>,
    sink: Option<Sender<Vec<Event>>>,
    stats: Arc<RecordStats>,
    signer: Option<sign::Signer>,
) {
    let mut last_sweep = std::time::Instant::now();
    let mut open: HashMap<Arc<str>, Open> = HashMap::new();
    let mut batch: Vec<Event> = Vec::new();
    let mut cmds: Vec<Cmd> = Vec::new();
    loop {
        std::mem::swap(&mut *queue.cmds.lock(), &mut cmds);
        if cmds.is_empty() {
            if Arc::strong_count(&queue) == 1 {
                return; // every sender is gone
            }
            if let Some(signer) = &signer {
                if last_sweep.elapsed() >= sign::MAX_UNSIGNED_AGE / 4 {
                    last_sweep = std::time::Instant::now();
                    sign_due(&mut open, signer, false, &stats);
                }
            }
            std::thread::sleep(COMMIT_INTERVAL);
            continue;
        }
        let mut waiters = vec![];
        // Group commit: write everything queued, then flush once.
        for c in cmds.drain(..) {
            match c {
                Cmd::Event { session, kind, at_ms, body } => {
                    let o = match open.get_mut(&session) {
                        Some(o) => o,
                        None => {
                            let path = session_path(&dir, &session);
                            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                                Ok(f) => open.entry(session.clone()).or_insert(Open {
                                    file: BufWriter::new(f),
                                    seq: 0,
                                    prev: genesis(&session),
                                    unsigned: 0,
                                    unsigned_since: None,
                                }),
                                Err(e) => {
                                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(path = %path.display(), error = %e, "cannot open recording");
                                    continue;
                                }
                            }
                        }
                    };
                    let body_json = body.to_string();
                    if o.append(&session, kind, at_ms, &body_json).is_err() {
                        stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.events.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(signer) = &signer {
                        o.unsigned += 1;
                        o.unsigned_since.get_or_insert_with(std::time::Instant::now);
                        if o.unsigned >= sign::EVERY && o.checkpoint(&session, signer).is_err() {
                            stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if sink.is_some() {
                        batch.push(Event {
                            seq: o.seq,
                            at_ms,
                            session_id: session.to_string(),
                            kind: kind.to_string(),
                            body_json,
                        });
                    }
                }
                Cmd::Close { session } => {
                    if let Some(mut o) = open.remove(&session) {
                        if let Some(signer) = &signer {
                            if o.checkpoint(&session, signer).is_err() {
                                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let _ = o.file.flush();
                        let _ = o.file.get_ref().sync_data();
                    }
                }
                Cmd::Flush(w) => waiters.push(w),
            }
        }
        // Sign what waited long enough, and everything when someone waits for a flush.
        if let Some(signer) = &signer {
            if !waiters.is_empty() || last_sweep.elapsed() >= sign::MAX_UNSIGNED_AGE / 4 {
                last_sweep = std::time::Instant::now();
                sign_due(&mut open, signer, !waiters.is_empty(), &stats);
            }
        }
        for o in open.values_mut() {
            if o.file.flush().is_err() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let (Some(s), false) = (&sink, batch.is_empty()) {
            let _ = s.send(std::mem::take(&mut batch));
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

fn sink_loop(registry: Arc<Registry>, rx: Receiver<Vec<Event>>, stats: Arc<RecordStats>) {
    let mut plugins = SessionPlugins::new(registry, "recorder", "*", "postgres", vec![]);
    let mut spools: HashMap<String, VecDeque<Event>> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let got =
            rx.recv_timeout(if spools.values().any(|s| !s.is_empty()) { backoff } else { Duration::from_secs(1) });
        plugins.refresh();
        let sinks = plugins.with_role(Role::Recorder);
        match got {
            Ok(events) => {
                for p in &sinks {
                    let q = spools.entry(p.manifest.name.clone()).or_default();
                    q.extend(events.iter().cloned());
                    while q.len() > SPOOL_CAP {
                        q.pop_front();
                        stats.spool_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut failed = false;
        for p in &sinks {
            let Some(q) = spools.get_mut(&p.manifest.name) else { continue };
            while !q.is_empty() {
                let n = q.len().min(256);
                let chunk: Vec<Event> = q.iter().take(n).cloned().collect();
                match plugins.record(p, &chunk) {
                    Ok(()) => {
                        q.drain(..n);
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %p.manifest.name, "recorder sink failed, events kept in spool: {e}");
                        failed = true;
                        break;
                    }
                }
            }
        }
        backoff = if failed { (backoff * 2).min(Duration::from_secs(5)) } else { Duration::from_millis(50) };
        stats.spooled.store(spools.values().map(|q| q.len() as u64).sum(), Ordering::Relaxed);
    }
}
