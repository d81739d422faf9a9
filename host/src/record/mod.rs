//! Session recording: every event of every session, masked, in an append-only
//! file per session where each line carries the SHA-256 of the previous one
//! and signed checkpoints seal the chain (see [`sign`]).
//!
//! Durability: a session buffers its own events and hands them to the kernel
//! ([`SessionRecorder::commit`]) before its request goes upstream and before
//! its answer goes to the client — a copy into the file's pages through a
//! shared mapping ([`mapped`]), no system call and no thread hand-off. So
//! whatever the gateway acknowledged survives a crash of the process
//! (`kill -9`, OOM); a maintenance thread fsyncs every second and on session
//! close, which bounds what an OS crash or power loss can take.
//! After a crash, [`Recorder::open`] seals the sessions that were open
//! (truncating a torn last line, appending `session.end` and a checkpoint).
//!
//! Recorder plugins get the events from the files themselves, through
//! [`spool`]: a per-sink cursor, persisted, so a slow, failing or absent
//! sink never slows client traffic and never loses an event.

pub mod archive;
pub mod body;
pub mod index;
pub mod log;
pub mod mapped;
pub mod read;
pub mod recover;
pub mod sign;
pub mod spool;
pub mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use crate::plugins::Registry;
use log::LogState;

/// Schema id written in every event.
pub const SCHEMA: &str = "wardgate.event.v1";
/// How often the maintenance thread writes what sessions left buffered and signs due checkpoints.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);
/// How often written recordings are fsynced.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct RecordStats {
    /// Events written.
    pub events: AtomicU64,
    /// Write errors.
    pub write_errors: AtomicU64,
    /// Bytes of recordings not yet delivered to every recorder plugin.
    pub sink_backlog_bytes: AtomicU64,
    /// Sessions with undelivered events.
    pub sink_backlog_sessions: AtomicU64,
    /// Events delivered to recorder plugins.
    pub sink_delivered: AtomicU64,
    /// Failed recorder-plugin deliveries (retried).
    pub sink_failures: AtomicU64,
    /// Recordings removed by retention.
    pub retention_removed: AtomicU64,
    /// Closed recordings not yet copied to the archive.
    pub archive_pending: AtomicU64,
}

/// How long recordings are kept.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Remove closed recordings older than this.
    pub max_age: Option<Duration>,
    /// Remove the oldest closed recordings while all of them take more than this.
    pub max_bytes: Option<u64>,
}

/// How to start a [`Recorder`].
#[derive(Default)]
pub struct Options {
    /// Recorder plugins receive events through a durable spool.
    pub registry: Option<Arc<Registry>>,
    /// Signs checkpoints.
    pub signer: Option<sign::Signer>,
    /// Receives session summaries for the index.
    pub index: Option<index::Feed>,
    /// Retention of closed recordings.
    pub retention: Retention,
    /// Where closed recordings are copied (needs a registry: it rides the spool).
    pub archive: Option<archive::Archive>,
}

/// One session's log, shared by its session and the maintenance thread.
type SharedLog = Arc<Mutex<LogState>>;

struct Inner {
    dir: PathBuf,
    signer: Option<sign::Signer>,
    live: Mutex<HashMap<Arc<str>, Weak<Mutex<LogState>>>>,
    stats: Arc<RecordStats>,
    spool: Option<Arc<spool::Spool>>,
    index: Option<index::Feed>,
    /// Closed sessions whose last events could not be written yet (disk full):
    /// the maintenance thread retries them, then reports them closed.
    orphans: Mutex<Vec<(Arc<str>, SharedLog)>>,
    /// The gateway's exclusive hold on the directory (see [`own`]).
    _owner: Option<std::fs::File>,
}

/// Take the directory for this gateway alone: sealing another live gateway's
/// sessions would cut files it is still writing through a mapping. A second
/// gateway on the same state directory is refused at start; the hold goes
/// with the process (also on `kill -9`). Other commands (the CLI's audit
/// records) append their own sessions without it.
fn own(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".gateway.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(std::io::Error::other(format!(
                "another Wardgate gateway is running on {} (it holds {}); give each gateway its own state_dir",
                dir.display(),
                path.display()
            )));
        }
        return Err(e);
    }
    Ok(f)
}

impl Inner {
    /// A session's log is complete on disk: tell the spool and the index.
    fn closed(&self, id: &str, st: &mut LogState) {
        st.finish();
        let digest = std::mem::take(&mut st.digest);
        if let Some(spool) = &self.spool {
            spool.closed(id);
        }
        if let (Some(index), true) = (&self.index, st.opened()) {
            index.ended(id, digest, false);
        }
    }
}

/// The gateway's recorder.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
    /// Counters.
    pub stats: Arc<RecordStats>,
}

/// A recording could not be written: requests are refused until it can.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session recording cannot be written: {0}")]
pub struct RecordError(pub String);

impl Recorder {
    /// Start recording into `dir` (without signatures, index or retention).
    pub fn start(dir: &Path, registry: Option<Arc<Registry>>) -> std::io::Result<Recorder> {
        Self::open(dir, Options { registry, ..Default::default() })
    }

    /// Like [`Recorder::start`], writing signed checkpoints with `signer`.
    pub fn start_signed(
        dir: &Path,
        registry: Option<Arc<Registry>>,
        signer: Option<sign::Signer>,
    ) -> std::io::Result<Recorder> {
        Self::open(dir, Options { registry, signer, ..Default::default() })
    }

    /// Open the recordings in `dir`: seal the sessions a crash left open,
    /// then start the maintenance thread and (with a registry) the sinks' spool.
    pub fn open(dir: &Path, opts: Options) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let stats = Arc::new(RecordStats::default());
        let owner = opts.registry.is_some().then(|| own(dir)).transpose()?;
        let spool = match opts.registry {
            Some(registry) => {
                spool::Spool::recover(dir, opts.signer.as_ref(), opts.index.as_ref())?;
                Some(spool::Spool::start(dir, registry, stats.clone(), opts.archive)?)
            }
            None => None,
        };
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            signer: opts.signer,
            live: Mutex::new(HashMap::new()),
            stats: stats.clone(),
            spool,
            index: opts.index,
            orphans: Mutex::new(Vec::new()),
            _owner: owner,
        });
        let weak = Arc::downgrade(&inner);
        let retention = opts.retention;
        std::thread::Builder::new().name("wardgate-record".into()).spawn(move || maintain(weak, retention))?;
        Ok(Recorder { inner, stats })
    }

    /// Where recordings live.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A handle for a gateway-wide log (approvals, admin): recorder plugins
    /// for every connection receive it.
    pub fn session(&self, id: &str) -> SessionRecorder {
        self.open_session(id, None)
    }

    /// A handle for one client session on `connection`: recorder plugins whose
    /// manifest applies to that connection receive it.
    pub fn session_on(&self, id: &str, connection: &str) -> SessionRecorder {
        self.open_session(id, Some(connection))
    }

    fn open_session(&self, id: &str, connection: Option<&str>) -> SessionRecorder {
        let id: Arc<str> = Arc::from(id);
        let log = Arc::new(Mutex::new(LogState::new(&self.inner.dir, &id)));
        self.inner.live.lock().insert(id.clone(), Arc::downgrade(&log));
        if let Some(spool) = &self.inner.spool {
            spool.begin(&id, connection, log.lock().written());
        }
        SessionRecorder { id, log, inner: self.inner.clone() }
    }

    /// Sign and write everything recorded so far (tests, shutdown, the demo).
    pub fn flush(&self) {
        for log in live_logs(&self.inner) {
            let mut st = log.lock();
            if let Some(signer) = &self.inner.signer {
                st.checkpoint(signer);
            }
            if st.commit().is_err() {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait until recorder plugins (and the archive) have received everything
    /// recorded so far (at most `timeout`); true when they have.
    pub fn wait_delivered(&self, timeout: Duration) -> bool {
        self.flush();
        let Some(spool) = &self.inner.spool else { return true };
        spool.wait_idle(timeout)
    }
}

fn live_logs(inner: &Inner) -> Vec<Arc<Mutex<LogState>>> {
    inner.live.lock().values().filter_map(Weak::upgrade).collect()
}

/// Records the events of one session. Closing happens on drop.
pub struct SessionRecorder {
    id: Arc<str>,
    log: Arc<Mutex<LogState>>,
    inner: Arc<Inner>,
}

impl SessionRecorder {
    /// Record an event. `body` must hold masked data only. The event is
    /// buffered; [`SessionRecorder::commit`] writes it.
    pub fn emit<B: body::Body>(&self, kind: &'static str, body: B) {
        let at_ms = crate::util::now_ms();
        let mut st = self.log.lock();
        if st.append(kind, at_ms, &body, self.inner.signer.as_ref()).is_err() {
            self.inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        if kind == "session.start" {
            if let Some(index) = &self.inner.index {
                index.started(&self.id, at_ms, &body.to_value());
            }
        }
    }

    /// Hand the buffered events to the kernel. Callers commit before a request
    /// goes upstream and before an answer goes to the client; an error means
    /// the recording cannot be written and the request must be refused.
    pub fn commit(&self) -> Result<(), RecordError> {
        let mut st = self.log.lock();
        if !st.pending() {
            return match &st.error {
                Some(e) => Err(RecordError(e.clone())),
                None => Ok(()),
            };
        }
        let r = st.commit();
        let n = std::mem::take(&mut st.appended);
        drop(st);
        self.inner.stats.events.fetch_add(n, Ordering::Relaxed);
        r.map_err(|e| {
            self.inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            RecordError(e)
        })
    }

    /// Session id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SessionRecorder {
    fn drop(&mut self) {
        let mut st = self.log.lock();
        if let Some(signer) = &self.inner.signer {
            st.checkpoint(signer);
        }
        let written = st.commit().is_ok() && st.sync().is_ok();
        self.inner.stats.events.fetch_add(std::mem::take(&mut st.appended), Ordering::Relaxed);
        self.inner.live.lock().remove(&self.id);
        if written {
            self.inner.closed(&self.id, &mut st);
        } else {
            self.inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(session = %self.id, "recording not fully written yet, retrying: {}", st.error.clone().unwrap_or_default());
            drop(st);
            self.inner.orphans.lock().push((self.id.clone(), self.log.clone()));
        }
    }
}

/// A recording's content: its bytes up to the first NUL. A live session's
/// file ends in space reserved for its next events, which reads as NULs (see
/// [`mapped`]); JSON never holds a raw NUL, so nothing of the content is cut.
pub fn content(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())]
}

/// A recording's content as text (see [`content`]).
pub fn read_content(path: &Path) -> std::io::Result<String> {
    let mut bytes = std::fs::read(path)?;
    bytes.truncate(content(&bytes).len());
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The file of a session's recording.
pub fn session_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.jsonl"))
}

/// Hash of one line's content given the previous hash.
pub fn chain_hash(prev: &str, content: &str) -> String {
    chain_hash_bytes(prev, content.as_bytes())
}

/// [`chain_hash`] of content that is still bytes.
pub fn chain_hash_bytes(prev: &str, content: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(content);
    let mut hex = [0u8; 64];
    hex::encode_to_slice(h.finalize(), &mut hex).expect("a SHA-256 digest is 32 bytes");
    String::from_utf8_lossy(&hex).into_owned()
}

/// The hash a session's chain starts from.
pub fn genesis(id: &str) -> String {
    // (The chain starts from a hash of the session id, so a file cannot be
    // renamed to another session's id without breaking its first event.)
    hex::encode(Sha256::digest(format!("wardgate-session:{id}").as_bytes()))
}

/// The maintenance thread: writes events sessions left buffered (a session
/// waiting on a long query), signs checkpoints that are due, fsyncs, and
/// applies retention. Ends with the recorder.
fn maintain(inner: Weak<Inner>, retention: Retention) {
    let mut last_sync = Instant::now();
    let mut last_retention: Option<Instant> = None;
    loop {
        std::thread::sleep(SWEEP_INTERVAL);
        let Some(inner) = inner.upgrade() else { return };
        let sync = last_sync.elapsed() >= SYNC_INTERVAL;
        for log in live_logs(&inner) {
            let mut st = log.lock();
            if let Some(signer) = &inner.signer {
                if st.sign_due(sign::MAX_UNSIGNED_AGE) {
                    st.checkpoint(signer);
                }
            }
            let failed = st.commit().is_err() || (sync && st.sync().is_err());
            inner.stats.events.fetch_add(std::mem::take(&mut st.appended), Ordering::Relaxed);
            if failed {
                inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if sync {
            last_sync = Instant::now();
        }
        inner.orphans.lock().retain(|(id, log)| {
            let mut st = log.lock();
            let written = st.commit().is_ok() && st.sync().is_ok();
            inner.stats.events.fetch_add(std::mem::take(&mut st.appended), Ordering::Relaxed);
            if written {
                inner.closed(id, &mut st);
            }
            !written
        });
        if last_retention.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_retention = Some(Instant::now());
            let n = apply_retention(&inner, &retention);
            inner.stats.retention_removed.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Remove closed recordings past their age, then the oldest while over the
/// size cap. Open sessions and recordings a sink has not received are kept.
fn apply_retention(inner: &Inner, r: &Retention) -> u64 {
    if r.max_age.is_none() && r.max_bytes.is_none() {
        return 0;
    }
    let Ok(files) = verify::recordings_in(&inner.dir) else { return 0 };
    let live: Vec<Arc<str>> = inner.live.lock().keys().cloned().collect();
    let mut closed: Vec<(std::time::SystemTime, u64, PathBuf)> = files
        .into_iter()
        .filter(|p| {
            let id = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            !live.iter().any(|l| &**l == id) && !inner.spool.as_ref().is_some_and(|s| s.holds(id))
        })
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((m.modified().ok()?, m.len(), p))
        })
        .collect();
    closed.sort();
    let mut total: u64 = closed.iter().map(|c| c.1).sum();
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for (modified, len, path) in closed {
        let old = r.max_age.is_some_and(|a| now.duration_since(modified).unwrap_or_default() > a);
        let over = r.max_bytes.is_some_and(|m| total > m);
        if !(old || over) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed += 1;
                total -= len;
                tracing::info!(path = %path.display(), "recording removed by retention");
            }
            Err(e) => tracing::warn!(path = %path.display(), "retention cannot remove recording: {e}"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gateway_owns_a_recordings_directory_until_it_exits() {
        let dir = std::env::temp_dir().join(format!("wardgate-own-{}", crate::util::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = own(&dir).unwrap();
        let e = own(&dir).unwrap_err().to_string();
        assert!(e.contains("another Wardgate gateway is running on") && e.contains("own state_dir"), "{e}");
        drop(first);
        own(&dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn aged(dir: &Path, id: &str, bytes: usize, age_days: u64) {
        let path = session_path(dir, id);
        std::fs::write(&path, vec![b'x'; bytes]).unwrap();
        let when = std::time::SystemTime::now() - Duration::from_secs(age_days * 86_400);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }

    #[test]
    fn retention_removes_old_recordings_then_the_oldest_over_the_cap_but_never_an_open_one() {
        let dir = std::env::temp_dir().join(format!("wardgate-retention-{}", crate::util::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        aged(&dir, "ancient", 10, 400);
        aged(&dir, "old", 600_000, 20);
        aged(&dir, "recent", 600_000, 10);
        aged(&dir, "new", 600_000, 1);
        let retention = Retention { max_age: Some(Duration::from_secs(365 * 86_400)), max_bytes: Some(1 << 20) };
        let rec = Recorder::open(&dir, Options { retention, ..Default::default() }).unwrap();
        let live = rec.session("recent");
        let deadline = Instant::now() + Duration::from_secs(5);
        while rec.stats.retention_removed.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "retention did not run");
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<String> = verify::recordings_in(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        // "ancient" is past its age; "old" goes for the size cap; "recent" is open.
        assert_eq!(left, vec!["new", "recent"]);
        drop(live);
    }
}
