//! Delivery of recorded events to recorder plugins (sinks), off the hot path.
//!
//! The spool is the recordings themselves plus a cursor per sink: a marker
//! file `.spool/ID.json` beside the recordings says how far (in bytes) each
//! sink has read session ID's file, and whether the session is closed. A
//! sink thread reads new lines from the files every [`ROUND`], hands them to
//! each sink in batches of at most [`BATCH`] events, and advances that
//! sink's cursor when the call succeeds. A failing, trapping or slow sink
//! (its calls end at the manifest's deadline) only stops its own cursor;
//! it is retried with exponential backoff, and a fixed or hot-swapped
//! version of the plugin (same name) continues from where it stopped —
//! across gateway restarts too, since cursors are persisted. Delivery is at
//! least once: a sink may see an event again after a crash; `session-id` +
//! `seq` identify it. The backlog takes no extra disk (it is the recordings)
//! and shows in the metrics; retention never removes a recording whose
//! marker is still there. The archive (object storage, see [`Archive`]) is
//! one more cursor: a closed recording is copied there once, whole.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::archive::Archive;
use super::{index, sign, RecordStats};
use crate::pipeline::types::Event;
use crate::plugins::instances::Role;
use crate::plugins::{Registry, SessionPlugins};

/// How often the sink thread looks for new events.
pub const ROUND: Duration = Duration::from_millis(100);
/// Most events in one call to a sink.
pub const BATCH: usize = 256;
/// Most bytes read from one recording per call.
const READ_CAP: u64 = 4 << 20;
/// The cursor name of the archive (not a valid plugin name).
const ARCHIVE: &str = "@archive";
/// Longest pause between retries of a failing sink.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A marker file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Marker {
    /// The session ended (cleanly, or sealed after a crash).
    closed: bool,
    /// Bytes of the recording each sink (by plugin name) has received.
    offsets: HashMap<String, u64>,
    /// The connection the session used; `None` (older markers, gateway-wide
    /// logs): every connection. Sinks get a session only if their manifest
    /// applies to its connection.
    #[serde(default)]
    connection: Option<String>,
}

enum Note {
    /// A session, its connection, and how many bytes of its file are written.
    Open(String, Option<String>, Arc<AtomicU64>),
    Closed(String),
}

/// The spool shared by the recorder and its sink thread.
pub struct Spool {
    rec_dir: PathBuf,
    dir: PathBuf,
    notes: Mutex<Vec<Note>>,
    /// Rounds completed, and whether the last one left a backlog.
    progress: Mutex<(u64, bool)>,
    round_done: Condvar,
}

fn marker_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn write_marker(dir: &Path, id: &str, m: &Marker) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{id}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(m).unwrap_or_default())?;
    std::fs::rename(&tmp, marker_path(dir, id))
}

/// Hand a closed recording written by another process (the CLI's
/// `admin-cli-*` records) to the spool of the gateway that owns `rec_dir`: a
/// running one picks it up within [`ADOPT_EVERY`] rounds, a stopped one at start.
pub fn adopt(rec_dir: &Path, id: &str) -> std::io::Result<()> {
    let dir = rec_dir.join(".spool");
    std::fs::create_dir_all(&dir)?;
    write_marker(&dir, id, &Marker { closed: true, ..Default::default() })
}

/// How often (in rounds) the sink thread looks for adopted recordings.
const ADOPT_EVERY: u64 = 20;

/// The markers in `dir` except those `skip` names (not read): session id and
/// content (`None`: unreadable).
fn scan_markers(dir: &Path, skip: impl Fn(&str) -> bool) -> Vec<(String, Option<Marker>)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.flatten()
        .filter_map(|e| {
            let p = e.path();
            let id = p.file_name()?.to_str()?.strip_suffix(".json")?.to_string();
            if id.starts_with('.') || skip(&id) {
                return None;
            }
            let m = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok());
            Some((id, m))
        })
        .collect()
}

/// Closed markers this spool does not know yet (adopted ones); unreadable or
/// open markers are left alone (a finished session's marker may be vanishing).
fn adoptable(dir: &Path, known: &HashMap<String, Pending>) -> Vec<(String, Marker)> {
    scan_markers(dir, |id| known.contains_key(id))
        .into_iter()
        .filter_map(|(id, m)| m.filter(|m| m.closed).map(|m| (id, m)))
        .collect()
}

/// Every marker at start; an unreadable one still means "not delivered": start over for it.
fn markers(dir: &Path) -> Vec<(String, Marker)> {
    scan_markers(dir, |_| false).into_iter().map(|(id, m)| (id, m.unwrap_or_default())).collect()
}

impl Spool {
    /// Seal the sessions a crash left open (markers not closed): see
    /// [`super::recover::seal`]. Returns how many were sealed.
    pub fn recover(
        rec_dir: &Path,
        signer: Option<&sign::Signer>,
        index: Option<&index::Feed>,
    ) -> std::io::Result<usize> {
        let dir = rec_dir.join(".spool");
        std::fs::create_dir_all(&dir)?;
        let mut sealed = 0;
        for (id, mut m) in markers(&dir) {
            if m.closed {
                continue;
            }
            let path = super::session_path(rec_dir, &id);
            match super::recover::seal(&path, &id, signer) {
                Ok(Some(s)) => {
                    if s.appended {
                        sealed += 1;
                        tracing::warn!(session = %id, discarded_bytes = s.discarded, "sealed a recording the last run left open");
                    }
                    if let Some(index) = index {
                        index.ended(&id, s.digest, true);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(session = %id, "cannot seal {}: {e}", path.display()),
            }
            m.closed = true;
            write_marker(&dir, &id, &m)?;
        }
        Ok(sealed)
    }

    /// Start the sink thread for the recordings in `rec_dir`.
    pub fn start(
        rec_dir: &Path,
        registry: Arc<Registry>,
        stats: Arc<RecordStats>,
        archive: Option<Archive>,
    ) -> std::io::Result<Arc<Spool>> {
        let spool = Arc::new(Spool {
            rec_dir: rec_dir.to_path_buf(),
            dir: rec_dir.join(".spool"),
            notes: Mutex::new(vec![]),
            progress: Mutex::new((0, false)),
            round_done: Condvar::new(),
        });
        std::fs::create_dir_all(&spool.dir)?;
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new()
            .name("wardgate-record-sinks".into())
            .spawn(move || run(weak, registry, stats, archive))?;
        Ok(spool)
    }

    /// A session on `connection` (`None`: a gateway-wide log) starts: its
    /// marker exists before its first event is written.
    /// `written` follows how much of its file holds events (the rest of a
    /// live file is reserved space).
    pub fn begin(&self, id: &str, connection: Option<&str>, written: Arc<AtomicU64>) {
        let marker = Marker { connection: connection.map(str::to_string), ..Default::default() };
        if let Err(e) = write_marker(&self.dir, id, &marker) {
            tracing::error!(session = %id, "cannot create spool marker: {e}");
        }
        self.notes.lock().push(Note::Open(id.to_string(), marker.connection, written));
    }

    /// A session ended.
    pub fn closed(&self, id: &str) {
        self.notes.lock().push(Note::Closed(id.to_string()));
    }

    /// Whether sinks still need session `id`'s recording.
    pub fn holds(&self, id: &str) -> bool {
        marker_path(&self.dir, id).exists()
    }

    /// Wait for a whole round that started after this call and ended with
    /// nothing left to deliver.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self.progress.lock();
        let start = p.0;
        loop {
            if p.0 >= start + 2 && !p.1 {
                return true;
            }
            if self.round_done.wait_until(&mut p, deadline).timed_out() {
                return false;
            }
        }
    }
}

struct Pending {
    marker: Marker,
    dirty: bool,
    saved: Instant,
    /// A live session's written length (`None`: adopted from the spool directory).
    written: Option<Arc<AtomicU64>>,
}

/// One sink's retry state.
#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    fn ready(&self) -> bool {
        self.until.is_none_or(|t| Instant::now() >= t)
    }

    fn succeeded(&mut self) {
        self.until = None;
        self.delay = Duration::ZERO;
    }

    /// Double the pause (from one round up to [`MAX_BACKOFF`]); returns it.
    fn failed(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(ROUND, MAX_BACKOFF);
        self.until = Some(Instant::now() + self.delay);
        self.delay
    }
}

fn run(spool: Weak<Spool>, registry: Arc<Registry>, stats: Arc<RecordStats>, archive: Option<Archive>) {
    // One instance per sink for all sessions; each session goes only to the
    // sinks whose manifest applies to its connection.
    let mut plugins = SessionPlugins::new(registry, "recorder", "*", "postgres", vec![]);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    if let Some(s) = spool.upgrade() {
        for (id, marker) in markers(&s.dir) {
            pending.insert(id, Pending { marker, dirty: false, saved: Instant::now(), written: None });
        }
    }
    let mut round = 0u64;
    loop {
        std::thread::sleep(ROUND);
        let Some(spool) = spool.upgrade() else { return };
        round += 1;
        if round.is_multiple_of(ADOPT_EVERY) {
            for (id, marker) in adoptable(&spool.dir, &pending) {
                pending.insert(id, Pending { marker, dirty: false, saved: Instant::now(), written: None });
            }
        }
        for note in std::mem::take(&mut *spool.notes.lock()) {
            match note {
                Note::Open(id, connection, written) => {
                    pending.entry(id).or_insert(Pending {
                        marker: Marker { connection, ..Default::default() },
                        dirty: false,
                        saved: Instant::now(),
                        written: Some(written),
                    });
                }
                Note::Closed(id) => {
                    if let Some(p) = pending.get_mut(&id) {
                        p.marker.closed = true;
                        p.dirty = true;
                    }
                }
            }
        }
        plugins.refresh();
        let all_sinks = plugins.with_role_any_connection(Role::Recorder);
        let (mut backlog, mut behind, mut unarchived) = (0u64, 0u64, 0u64);
        let mut finished = vec![];
        for (id, p) in pending.iter_mut() {
            let path = super::session_path(&spool.rec_dir, id);
            // A session of this process says how much it wrote (a live file
            // ends in reserved space); an adopted one is measured on disk.
            let len = match &p.written {
                Some(w) => w.load(Ordering::Acquire),
                None => written_len(&path).unwrap_or(0),
            };
            let sinks = all_sinks.iter().filter(|s| match &p.marker.connection {
                Some(conn) => s.manifest.applies_to(conn, "postgres"),
                None => s.manifest.applies_to_all_connections(),
            });
            let mut least = len;
            for sink in sinks {
                let name = &sink.manifest.name;
                let off = p.marker.offsets.get(name).copied().unwrap_or(0);
                let b = backoff.entry(name.clone()).or_default();
                let new = if off < len && b.ready() {
                    match deliver(&mut plugins, sink, &path, off, len, &stats) {
                        Ok(n) => {
                            b.succeeded();
                            n
                        }
                        Err((n, e)) => {
                            stats.sink_failures.fetch_add(1, Ordering::Relaxed);
                            let pause = b.failed();
                            tracing::warn!(plugin = %name, session = %id, "recorder sink failed; its events stay spooled and are retried in {pause:?}: {e}");
                            n
                        }
                    }
                } else {
                    off
                };
                if new != off {
                    p.marker.offsets.insert(name.clone(), new);
                    p.dirty = true;
                }
                least = least.min(new);
            }
            if least < len {
                backlog += len - least;
                behind += 1;
            }
            // A closed recording is copied to the archive whole, once.
            let mut archived = true;
            if let (Some(a), true) = (&archive, p.marker.closed) {
                if p.marker.offsets.get(ARCHIVE).copied().unwrap_or(0) < len {
                    let b = backoff.entry(ARCHIVE.to_string()).or_default();
                    archived = b.ready()
                        && match a.put(id, &path) {
                            Ok(()) => {
                                b.succeeded();
                                p.marker.offsets.insert(ARCHIVE.to_string(), len);
                                p.dirty = true;
                                true
                            }
                            Err(e) => {
                                let pause = b.failed();
                                tracing::warn!(session = %id, "recording not archived yet, retrying in {pause:?}: {e}");
                                false
                            }
                        };
                    unarchived += u64::from(!archived);
                }
            }
            if p.marker.closed && least >= len && archived {
                finished.push(id.clone());
            } else if p.dirty && (p.marker.closed || p.saved.elapsed() >= Duration::from_secs(1)) {
                match write_marker(&spool.dir, id, &p.marker) {
                    Ok(()) => {
                        p.dirty = false;
                        p.saved = Instant::now();
                    }
                    Err(e) => tracing::error!(session = %id, "cannot save spool cursor: {e}"),
                }
            }
        }
        for id in finished {
            pending.remove(&id);
            let _ = std::fs::remove_file(marker_path(&spool.dir, &id));
        }
        stats.sink_backlog_bytes.store(backlog, Ordering::Relaxed);
        stats.sink_backlog_sessions.store(behind, Ordering::Relaxed);
        stats.archive_pending.store(unarchived, Ordering::Relaxed);
        let mut progress = spool.progress.lock();
        *progress = (progress.0 + 1, backlog > 0 || unarchived > 0);
        spool.round_done.notify_all();
    }
}

/// The content length of a recording file (see [`super::mapped::content_len`]).
fn written_len(path: &Path) -> std::io::Result<u64> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    super::mapped::content_len(&f, size)
}

/// Deliver the complete lines of `path` between `off` and `len` to `sink`.
/// Returns the new offset, also on failure (what was delivered stays delivered).
fn deliver(
    plugins: &mut SessionPlugins,
    sink: &Arc<crate::plugins::LoadedPlugin>,
    path: &Path,
    mut off: u64,
    len: u64,
    stats: &RecordStats,
) -> Result<u64, (u64, String)> {
    let read = |off: u64| -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(off))?;
        let mut buf = vec![];
        f.take((len - off).min(READ_CAP)).read_to_end(&mut buf)?;
        Ok(buf)
    };
    while off < len {
        let mut buf = read(off).map_err(|e| (off, format!("cannot read {}: {e}", path.display())))?;
        // Bytes being copied in by the session read as NUL until they are
        // there: lines stop before the first.
        let copied = super::content(&buf).len();
        let complete = copied == buf.len();
        buf.truncate(copied);
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            if complete && buf.len() as u64 >= READ_CAP {
                // One event larger than the read cap: skip it rather than wedge the sink.
                tracing::error!(path = %path.display(), offset = off, "event too large for recorder plugins; skipped");
                off += buf.len() as u64;
                continue;
            }
            break; // a line being written: next round
        };
        let mut events = Vec::with_capacity(BATCH);
        let mut consumed = 0usize;
        let mut start = 0usize;
        for line in buf[..=end].split_inclusive(|b| *b == b'\n') {
            start += line.len();
            if let Some(e) = to_event(line) {
                events.push(e);
            }
            if events.len() == BATCH {
                let n = events.len() as u64;
                plugins
                    .record(sink, &std::mem::take(&mut events))
                    .map_err(|e| (off + consumed as u64, e.to_string()))?;
                stats.sink_delivered.fetch_add(n, Ordering::Relaxed);
                consumed = start;
            }
        }
        if !events.is_empty() {
            let n = events.len() as u64;
            plugins.record(sink, &events).map_err(|e| (off + consumed as u64, e.to_string()))?;
            stats.sink_delivered.fetch_add(n, Ordering::Relaxed);
        }
        off += end as u64 + 1;
    }
    Ok(off)
}

/// One recording line as a plugin event.
fn to_event(line: &[u8]) -> Option<Event> {
    let v: Value = serde_json::from_slice(line).ok()?;
    Some(Event {
        seq: v.get("seq")?.as_u64()?,
        at_ms: v.get("at_ms")?.as_u64()?,
        session_id: v.get("session")?.as_str()?.to_string(),
        kind: v.get("kind")?.as_str()?.to_string(),
        body_json: v.get("body")?.to_string(),
    })
}
