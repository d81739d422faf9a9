//! Reading recordings back: session summaries, readable timelines, exports.
//!
//! Recordings hold masked data only, so nothing here can reveal more than the
//! file already does. Lines that do not parse are reported, not skipped
//! silently (`sessions verify` says where the chain breaks).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// One recorded event.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// 1-based sequence number.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// Event kind (`session.start`, `request`, …).
    pub kind: String,
    /// Event body.
    pub body: Value,
}

/// A recording file, parsed.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Session id (file stem).
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// Its events, in file order.
    pub events: Vec<RecordedEvent>,
    /// Lines that were not events.
    pub bad_lines: usize,
}

/// Read one recording.
pub fn read(path: &Path) -> std::io::Result<Recording> {
    let text = super::read_content(path)?;
    let mut events = Vec::new();
    let mut bad_lines = 0;
    for line in text.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => events.push(RecordedEvent {
                seq: v["seq"].as_u64().unwrap_or(0),
                at_ms: v["at_ms"].as_u64().unwrap_or(0),
                kind: v["kind"].as_str().unwrap_or("").to_string(),
                body: v["body"].clone(),
            }),
            Err(_) => bad_lines += 1,
        }
    }
    let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    Ok(Recording { id, path: path.to_path_buf(), events, bad_lines })
}

/// The recording of session `id` in `dir` (an id prefix is enough when unique).
pub fn find(dir: &Path, id: &str) -> Result<PathBuf, String> {
    let exact = super::session_path(dir, id);
    if exact.exists() {
        return Ok(exact);
    }
    let matches: Vec<PathBuf> = super::verify::recordings_in(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .into_iter()
        .filter(|p| p.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.starts_with(id)))
        .collect();
    match matches.len() {
        1 => Ok(matches[0].clone()),
        0 => Err(format!("no recording of session {id} in {}", dir.display())),
        n => Err(format!("{n} recordings start with {id}: give more of the id")),
    }
}

/// A one-line summary of a session.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Session id.
    pub id: String,
    /// First event time.
    pub started_ms: u64,
    /// Last event time.
    pub last_ms: u64,
    /// Principal name and kind (`ai-agent-1 (agent) for alice`).
    pub who: String,
    /// Principal subject.
    pub subject: String,
    /// Connection.
    pub connection: String,
    /// Requests, and how many were denied / sent to review.
    pub requests: usize,
    /// Denied requests.
    pub denied: usize,
    /// Requests routed to review.
    pub reviewed: usize,
    /// A `session.end` was recorded.
    pub ended: bool,
    /// Events.
    pub events: usize,
}

impl Recording {
    /// Summarise (sessions and the gateway's approvals logs alike).
    pub fn summary(&self) -> Summary {
        let start = self.events.iter().find(|e| e.kind == "session.start");
        let p = start.map(|s| &s.body["principal"]);
        let chain: Vec<String> = start
            .and_then(|s| s.body["on_behalf_of"].as_array())
            .map(|a| a.iter().filter_map(|o| o["name"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let who = match p {
            Some(p) => {
                let mut w = format!("{} ({})", p["name"].as_str().unwrap_or("?"), p["kind"].as_str().unwrap_or("?"));
                if !chain.is_empty() {
                    w.push_str(&format!(" for {}", chain.join(" for ")));
                }
                w
            }
            None if self.events.iter().any(|e| e.kind.starts_with("approval.")) => "(approvals log)".into(),
            None if self.events.iter().any(|e| e.kind == "auth.failed") => "(failed login)".into(),
            None => "-".into(),
        };
        let requests: Vec<&RecordedEvent> = self.events.iter().filter(|e| e.kind == "request").collect();
        let connection = start
            .and_then(|s| s.body["connection"].as_str())
            .or_else(|| self.events.iter().find_map(|e| e.body["connection"].as_str()))
            .unwrap_or("-")
            .to_string();
        Summary {
            id: self.id.clone(),
            started_ms: self.events.first().map_or(0, |e| e.at_ms),
            last_ms: self.events.last().map_or(0, |e| e.at_ms),
            who,
            subject: p.and_then(|p| p["subject"].as_str()).unwrap_or("").to_string(),
            connection,
            requests: requests.len(),
            denied: requests.iter().filter(|r| r.body["decision"] == "deny").count(),
            reviewed: requests.iter().filter(|r| r.body["decision"] == "review").count(),
            ended: self.events.iter().any(|e| e.kind == "session.end"),
            events: self.events.len(),
        }
    }
}

fn ms_offset(t: u64, t0: u64) -> String {
    let d = t.saturating_sub(t0);
    format!("+{}.{:03}s", d / 1000, d % 1000)
}

fn verdicts(body: &Value) -> String {
    body["verdicts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| {
                    let mut s = format!(
                        "{} {} {}",
                        v["plugin"].as_str().unwrap_or("?"),
                        v["version"].as_str().unwrap_or(""),
                        v["decision"].as_str().unwrap_or("?")
                    );
                    if let Some(r) = v["reason"].as_str() {
                        s.push_str(&format!(": {r}"));
                    }
                    if v["cached"].as_bool() == Some(true) {
                        s.push_str(" (same structure as an earlier request)");
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// One event as a line of the readable timeline.
pub fn describe(e: &RecordedEvent, t0: u64) -> String {
    let b = &e.body;
    let at = ms_offset(e.at_ms, t0);
    let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
    let text = match e.kind.as_str() {
        "session.start" => {
            let p = &b["principal"];
            let chain: Vec<&str> = b["on_behalf_of"]
                .as_array()
                .map(|a| a.iter().filter_map(|o| o["name"].as_str()).collect())
                .unwrap_or_default();
            format!(
                "session start: {} ({}, {}, groups {}){} → connection {} from {} (tls {}, credential {})",
                p["name"].as_str().unwrap_or("?"),
                p["kind"].as_str().unwrap_or("?"),
                p["issuer"].as_str().unwrap_or("?"),
                p["groups"]
                    .as_array()
                    .map(|g| g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                if chain.is_empty() { String::new() } else { format!(" on behalf of {}", chain.join(" for ")) },
                s("connection"),
                s("client_addr"),
                b["tls"],
                s("credential")
            )
        }
        "request" => format!(
            "#{} {} [{}] {}{}",
            b["request_id"],
            s("phase"),
            s("decision").to_uppercase(),
            s("statement").split_whitespace().collect::<Vec<_>>().join(" "),
            {
                let v = verdicts(b);
                if v.is_empty() {
                    String::new()
                } else {
                    format!("\n           verdicts: {v}")
                }
            }
        ),
        "response" => {
            let findings: Vec<String> = b["findings"]
                .as_array()
                .map(|a| a.iter().map(|f| format!("{}×{}", f["entity"].as_str().unwrap_or("?"), f["count"])).collect())
                .unwrap_or_default();
            let mut t = format!("#{} → {} ({} rows, {} bytes", b["request_id"], s("command"), b["rows"], b["bytes"]);
            if let Some(us) = b["duration_us"].as_u64() {
                t.push_str(&format!(", {:.1} ms", us as f64 / 1000.0));
            }
            t.push(')');
            if !findings.is_empty() {
                t.push_str(&format!(", masked {}", findings.join(" ")));
            }
            if let Some(err) = b["error"].as_object() {
                t.push_str(&format!(
                    ", error {}: {}",
                    err["code"].as_str().unwrap_or(""),
                    err["message"].as_str().unwrap_or("")
                ));
            }
            for row in b["sample_rows"].as_array().into_iter().flatten() {
                let cells: Vec<String> = row
                    .as_array()
                    .map(|c| {
                        c.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| "NULL".into())).collect()
                    })
                    .unwrap_or_default();
                t.push_str(&format!("\n           | {}", cells.join(" | ")));
            }
            t
        }
        "session.end" => format!("session end: {}", s("reason")),
        "checkpoint" => format!(
            "checkpoint: events up to #{} signed (key {}…)",
            b["seq"],
            b["key"].as_str().unwrap_or("").get(..16).unwrap_or("")
        ),
        "auth.failed" => format!("login refused ({}): {} from {}", s("error"), s("reason"), s("client_addr")),
        k if k.starts_with("approval.") => {
            let id = s("approval_id");
            let mut t = format!("{k} {id}");
            for key in ["outcome", "mode", "reason", "why"] {
                if let Some(v) = b[key].as_str() {
                    t.push_str(&format!(" {key}={v}"));
                }
            }
            if let Some(by) = b["by"]["name"].as_str().or(b["approver"]["name"].as_str()) {
                t.push_str(&format!(" by={by}"));
            }
            if b["break_glass"] == true {
                t.push_str(" [BREAK-GLASS]");
            }
            t
        }
        other => format!("{other} {b}"),
    };
    format!("{at:>10} {text}")
}

/// Events as CSV: seq, time, kind, and the body as JSON.
pub fn to_csv(r: &Recording) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("seq,at,kind,body\n");
    for e in &r.events {
        out.push_str(&format!(
            "{},{},{},{}\n",
            e.seq,
            crate::util::format_rfc3339_ms(e.at_ms),
            q(&e.kind),
            q(&e.body.to_string())
        ));
    }
    out
}
