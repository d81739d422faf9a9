//! `wardgate sessions list|show|replay|export|verify`: reading recordings.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use wardgate::record::{index, read};
use wardgate::state::StateStore;

/// Where the recordings are.
#[derive(Args, Debug)]
pub struct Where {
    /// Gateway config file (recordings are in its state_dir).
    #[arg(long, short, env = "WARDGATE_CONFIG", conflicts_with = "dir")]
    config: Option<PathBuf>,
    /// The recordings directory (instead of --config).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Where {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.dir, &self.config) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(c)) => Ok(wardgate::config::Config::load(c)?.state_dir.join("recordings")),
            (None, None) => anyhow::bail!("pass --config FILE (or set WARDGATE_CONFIG), or --dir RECORDINGS_DIR"),
        }
    }

    fn open(&self, id: &str) -> anyhow::Result<read::Recording> {
        let path = self.path_of(id)?;
        read::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// The file of session `id` (a unique prefix, or a path): the local
    /// recording, else — with --config and `gateway.recording_archive` — the
    /// archived copy, fetched into a temporary directory.
    fn path_of(&self, id: &str) -> anyhow::Result<PathBuf> {
        if std::path::Path::new(id).is_file() {
            return Ok(PathBuf::from(id));
        }
        let local = read::find(&self.dir()?, id);
        let (Err(e), None, Some(config)) = (&local, &self.dir, &self.config) else {
            return local.map_err(|e| anyhow::anyhow!(e));
        };
        let Some(url) = wardgate::config::Config::load(config)?.recording_archive else {
            anyhow::bail!("{e}");
        };
        let archive = wardgate::record::archive::Archive::open(&url)?;
        let bytes =
            archive.get(id).with_context(|| format!("{e}; not in the archive {url} either (give the full id)"))?;
        let dir = std::env::temp_dir().join(format!("wardgate-archive-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = wardgate::record::session_path(&dir, id);
        std::fs::write(&path, bytes)?;
        eprintln!("(from the archive {url})");
        Ok(path)
    }
}

/// `wardgate sessions …`
#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Recorded sessions, newest first: from the session index in the state
    /// store (with --config), or by reading the recordings (with --dir).
    List {
        /// Only sessions whose principal (subject or name) or on-behalf-of principal contains this.
        #[arg(long)]
        principal: Option<String>,
        /// Only this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only sessions started since (RFC 3339, or a span like 30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only sessions started before (RFC 3339, or a span like 30m, 2h, 7d ago).
        #[arg(long)]
        until: Option<String>,
        /// Only sessions with: deny, review, allow (neither), flagged (deny, review or refused login), auth-failed.
        #[arg(long)]
        decision: Option<String>,
        /// Same as --decision flagged.
        #[arg(long, conflicts_with = "decision")]
        flagged: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Rebuild the session index in the state store from the recordings.
    Reindex {
        /// Gateway config file.
        #[arg(long, short, env = "WARDGATE_CONFIG")]
        config: PathBuf,
    },
    /// One session as a readable timeline.
    Show {
        /// Session id (a unique prefix is enough) or a recording file.
        id: String,
        #[command(flatten)]
        at: Where,
    },
    /// Play a session back in time order.
    Replay {
        /// Session id or file.
        id: String,
        /// Speed factor (2 = twice as fast; 0 = no pauses).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[command(flatten)]
        at: Where,
    },
    /// Export a session's events.
    Export {
        /// Session id or file.
        id: String,
        /// jsonl (the verifiable lines as stored) or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        at: Where,
    },
    /// Verify hash chains (and signed checkpoints): one session, a file, or every recording.
    Verify {
        /// Session id, a recording file or directory (default: all recordings).
        target: Option<String>,
        /// The gateway's checkpoint public key (hex, or a file holding it): signatures are checked and
        /// every recording must end with a signed checkpoint.
        #[arg(long, env = "WARDGATE_RECORDING_PUBLIC_KEY")]
        public_key: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Create a checkpoint signing key for `gateway.recording_key_file`; prints the public key.
    Keygen {
        /// Where to write the private key (created 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

fn since_ms(s: &str) -> anyhow::Result<u64> {
    if let Some(t) = wardgate::util::parse_rfc3339_ms(s) {
        return Ok(t);
    }
    let d = wardgate::identity::keys::parse_lifetime_ms(s)
        .with_context(|| format!("--since {s}: use RFC 3339 or a span like 30m, 2h, 7d"))?;
    Ok(wardgate::util::now_ms().saturating_sub(d))
}

/// Run a `sessions` subcommand.
pub fn run(cmd: SessionsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SessionsCmd::List { principal, connection, since, until, decision, flagged, limit, json, at } => {
            let q = index::Query {
                principal,
                connection,
                since_ms: since.as_deref().map(since_ms).transpose()?,
                until_ms: until.as_deref().map(since_ms).transpose()?,
                decision: if flagged { Some("flagged".into()) } else { decision },
                limit,
            };
            if let Some(d) = q.decision.as_deref().filter(|d| !index::DECISIONS.contains(d)) {
                anyhow::bail!("--decision {d}: use one of {}", index::DECISIONS.join(", "));
            }
            let (rows, place) = match (&at.dir, &at.config) {
                (None, Some(c)) => {
                    let config = wardgate::config::Config::load(c)?;
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let rows = rt.block_on(async {
                        let store = StateStore::for_config(&config).await?;
                        index::search(&store, &q).await
                    })?;
                    (rows, "the session index".to_string())
                }
                _ => {
                    let dir = at.dir()?;
                    (scan_dir(&dir, &q)?, dir.display().to_string())
                }
            };
            print_rows(&rows, json);
            if rows.is_empty() {
                eprintln!("no matching sessions in {place}");
            }
        }
        SessionsCmd::Reindex { config } => {
            let config = wardgate::config::Config::load(&config)?;
            let dir = config.state_dir.join("recordings");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let n = rt.block_on(async {
                let store = StateStore::for_config(&config).await?;
                index::reindex(&store, &dir).await
            })?;
            println!("indexed {n} sessions from {}", dir.display());
        }
        SessionsCmd::Show { id, at } => {
            let r = at.open(&id)?;
            let s = r.summary();
            println!("session {}  ({} events, {})", r.id, r.events.len(), r.path.display());
            println!("who: {}   connection: {}", s.who, s.connection);
            println!("started {}", wardgate::util::format_rfc3339_ms(s.started_ms));
            let t0 = s.started_ms;
            for e in &r.events {
                println!("{}", read::describe(e, t0));
            }
            if r.bad_lines > 0 {
                println!("({} lines are not events: run `wardgate sessions verify {}`)", r.bad_lines, r.id);
            }
        }
        SessionsCmd::Replay { id, speed, at } => {
            let r = at.open(&id)?;
            let mut events = r.events.clone();
            events.sort_by_key(|e| (e.at_ms, e.seq));
            let t0 = events.first().map_or(0, |e| e.at_ms);
            let mut last = t0;
            for e in &events {
                if speed > 0.0 && e.at_ms > last {
                    let wait = ((e.at_ms - last) as f64 / speed).min(10_000.0);
                    std::thread::sleep(Duration::from_millis(wait as u64));
                }
                last = e.at_ms;
                println!("{}", read::describe(e, t0));
            }
        }
        SessionsCmd::Export { id, format, at } => {
            let r = at.open(&id)?;
            match format.as_str() {
                // The stored lines, untouched, so the export still verifies.
                "jsonl" => print!("{}", wardgate::record::read_content(&r.path)?),
                "csv" => print!("{}", read::to_csv(&r)),
                other => anyhow::bail!("--format {other}: use jsonl or csv"),
            }
        }
        SessionsCmd::Keygen { out } => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let seed = wardgate::record::sign::generate_seed_hex();
            let public =
                wardgate::record::sign::Signer::from_seed_hex(&seed).map_err(|e| anyhow::anyhow!(e))?.public_hex();
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&out).with_context(|| {
                    format!("cannot create {} (an existing key is never overwritten)", out.display())
                })?;
            writeln!(f, "{seed}")?;
            eprintln!(
                "private key written to {} (keep it secret; set gateway.recording_key_file to it)",
                out.display()
            );
            eprintln!("public key, for `wardgate sessions verify --public-key`:");
            println!("{public}");
        }
        SessionsCmd::Verify { target, public_key, at } => {
            let key = public_key
                .as_deref()
                .map(wardgate::record::sign::parse_public)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let files = match &target {
                Some(t) if std::path::Path::new(t).exists() => {
                    wardgate::record::verify::recordings_in(std::path::Path::new(t))?
                }
                Some(id) => vec![at.path_of(id)?],
                None => wardgate::record::verify::recordings_in(&at.dir()?)?,
            };
            let mut bad = 0;
            for f in &files {
                match wardgate::record::verify::verify_file_with(f, key.as_deref()) {
                    Ok(r) if key.is_some() => {
                        println!(
                            "ok   {} ({} events, {} signed checkpoints verified)",
                            f.display(),
                            r.events,
                            r.checkpoints
                        )
                    }
                    Ok(r) => println!(
                        "ok   {} ({} events; chain only, pass --public-key to check signatures)",
                        f.display(),
                        r.events
                    ),
                    Err(e) => {
                        bad += 1;
                        println!("FAIL {}: {e}", f.display());
                    }
                }
            }
            return Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The sessions in a recordings directory matching `q` (without an index).
fn scan_dir(dir: &std::path::Path, q: &index::Query) -> anyhow::Result<Vec<index::Row>> {
    let mut rows = Vec::new();
    for f in wardgate::record::verify::recordings_in(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        let d = wardgate::record::recover::scan(&bytes).digest;
        if d.start.is_none() && d.auth_failed.is_none() {
            continue;
        }
        let id = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let row = index::row_of_recording(id, &d);
        if index::matches(&row, q) {
            rows.push(row);
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
    rows.truncate(q.limit.max(1) as usize);
    Ok(rows)
}

fn print_rows(rows: &[index::Row], json: bool) {
    if json {
        for r in rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<34} {:<24} {:<12} {:>5} {:>6} {:>6}  {:<11} WHO",
        "SESSION", "STARTED", "CONNECTION", "REQS", "DENIED", "REVIEW", "STATUS"
    );
    for r in rows {
        let mut who = r.principal_name.clone().or_else(|| r.principal_subject.clone()).unwrap_or_else(|| "?".into());
        if let Some(k) = &r.principal_kind {
            who += &format!(" ({k})");
        }
        if let Some(o) = &r.on_behalf_of {
            who += &format!(" for {o}");
        }
        println!(
            "{:<34} {:<24} {:<12} {:>5} {:>6} {:>6}  {:<11} {}",
            r.id,
            wardgate::util::format_rfc3339_ms(r.started_at_ms.max(0) as u64),
            r.connection.as_deref().unwrap_or("-"),
            r.requests,
            r.denied,
            r.reviewed,
            r.status,
            who
        );
    }
}
