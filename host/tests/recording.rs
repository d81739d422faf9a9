//! Reading recordings back with the CLI: list, show, export, replay, verify.

mod common;

use std::process::{Command, Output};

use common::{assert_no_pii, gateway, Options};

fn sessions(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate")).arg("sessions").args(args).arg("--dir").arg(dir).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psql_session_reads_back_as_a_timeline_and_tampering_is_named() {
    let g = gateway(Options::default()).await;
    let (ok, _, err) =
        g.psql(&["-c", "SELECT name, email, ssn, card_number FROM customers ORDER BY id", "-c", "DROP TABLE orders"]);
    assert!(!ok && err.contains("DROP TABLE orders is not allowed"), "{err}");
    g.gw.recorder.flush();
    let dir = g.dir.join("state/recordings");

    let list = stdout(&sessions(&dir, &["list", "--principal", "test-agent"]));
    let id = list.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("one session listed").to_string();
    assert!(list.contains("test-agent (agent) for alice@example.com"), "{list}");
    assert!(stdout(&sessions(&dir, &["list", "--flagged", "--since", "10m"])).contains(&id));
    assert!(!stdout(&sessions(&dir, &["list", "--connection", "billing"])).contains(&id));

    let show = stdout(&sessions(&dir, &["show", &id[..10]]));
    for want in [
        "session start: test-agent (agent, wardgate, groups agents) on behalf of alice@example.com",
        "[ALLOW] SELECT name, email, ssn, card_number FROM customers ORDER BY id",
        "[DENY] DROP TABLE orders",
        "sql-guard 0.1.0 deny: DROP TABLE orders is not allowed",
        "j***@example.com",
        "session end",
    ] {
        assert!(show.contains(want), "missing {want:?} in:\n{show}");
    }
    assert_no_pii(&show, "sessions show");
    let csv = stdout(&sessions(&dir, &["export", &id, "--format", "csv"]));
    assert!(csv.starts_with("seq,at,kind,body\n1,") && csv.contains("\"request\""), "{csv}");
    let jsonl = stdout(&sessions(&dir, &["export", &id]));
    assert_eq!(
        jsonl,
        wardgate::record::read_content(&dir.join(format!("{id}.jsonl"))).unwrap(),
        "jsonl export is the file itself"
    );
    let replay = stdout(&sessions(&dir, &["replay", &id, "--speed", "0"]));
    assert_eq!(replay.matches("session start").count(), 1);
    assert!(stdout(&sessions(&dir, &["verify", &id])).starts_with("ok "));

    // Flip one byte inside event 3: verify names it and fails.
    let path = dir.join(format!("{id}.jsonl"));
    let text = wardgate::record::read_content(&path).unwrap();
    let third = text.lines().take(2).map(|l| l.len() + 1).sum::<usize>() + 40;
    let mut bytes = text.into_bytes();
    bytes[third] = if bytes[third] == b'a' { b'b' } else { b'a' };
    std::fs::write(&path, bytes).unwrap();
    let out = sessions(&dir, &["verify", &id]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("FAIL") && msg.contains("event 3"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_recordings_verify_with_the_public_key_and_a_cut_off_end_is_named() {
    let keydir = common::tempdir("reckey");
    let key = keydir.join("recording.key");
    let out =
        Command::new(env!("CARGO_BIN_EXE_wardgate")).args(["sessions", "keygen", "--out"]).arg(&key).output().unwrap();
    let public = stdout(&out).trim().to_string();
    assert_eq!(public.len(), 64);
    let again =
        Command::new(env!("CARGO_BIN_EXE_wardgate")).args(["sessions", "keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!again.status.success(), "an existing key is never overwritten");
    let g = gateway(Options {
        gateway_extra: format!("recording_key_file = \"{}\"\n", key.display()),
        ..Default::default()
    })
    .await;
    let (ok, _, err) = g.psql(&["-c", "SELECT count(*) FROM orders", "-c", "SELECT email FROM customers"]);
    assert!(ok, "{err}");
    // Wait for the session's closing checkpoint.
    let dir = g.dir.join("state/recordings");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let id = loop {
        g.gw.recorder.flush();
        let list = stdout(&sessions(&dir, &["list", "--principal", "test-agent"]));
        if let Some(id) = list.lines().nth(1).and_then(|l| l.split_whitespace().next()) {
            if list.contains(" closed ") {
                break id.to_string();
            }
        }
        assert!(std::time::Instant::now() < deadline, "session not closed: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ok = stdout(&sessions(&dir, &["verify", &id, "--public-key", &public]));
    assert!(ok.contains("signed checkpoints verified"), "{ok}");
    let path = dir.join(format!("{id}.jsonl"));
    let text = wardgate::record::read_content(&path).unwrap();
    let n = text.lines().count();
    let cut: String = text.lines().take(n - 2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, cut).unwrap();
    let bad = sessions(&dir, &["verify", &id, "--public-key", &public]);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stdout);
    assert!(msg.contains("FAIL") && msg.contains("cut off"), "{msg}");
    assert!(stdout(&sessions(&dir, &["verify", &id])).starts_with("ok "), "the chain alone cannot see a cut-off end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_index_finds_sessions_by_principal_connection_time_and_decision() {
    let archive = common::tempdir("archive");
    let g = gateway(Options {
        gateway_extra: format!("recording_archive = \"file://{}\"\n", archive.display()),
        ..Default::default()
    })
    .await;
    let config = g.dir.join("wardgate.toml");
    let (ok, _, err) = g.psql(&["-c", "SELECT count(*) FROM orders", "-c", "DROP TABLE orders"]);
    assert!(!ok && err.contains("not allowed"), "{err}");
    let (ok, _, _) = g.psql(&["-c", "SELECT 1"]);
    assert!(ok);
    let (ok, _, err) = g.psql_as("mallory", "wg_not-a-real-key", &["-c", "SELECT 1"]);
    assert!(!ok, "{err}");
    let list = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(["sessions", "list", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        stdout(&o)
    };
    // The index is written off the sessions' path: wait for the three sessions to be closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while list(&["--json"]).lines().filter(|l| !l.contains("\"status\":\"open\"")).count() < 3 {
        assert!(std::time::Instant::now() < deadline, "not indexed:\n{}", list(&[]));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let denied = list(&["--decision", "deny", "--json"]);
    assert_eq!(denied.lines().count(), 1, "{denied}");
    let row: serde_json::Value = serde_json::from_str(denied.lines().next().unwrap()).unwrap();
    assert_eq!(row["principal_name"], "test-agent");
    assert_eq!(row["on_behalf_of"], "alice@example.com");
    assert_eq!((row["requests"].as_i64(), row["denied"].as_i64()), (Some(2), Some(1)));
    assert_eq!(list(&["--decision", "allow", "--json"]).lines().count(), 1);
    // By the human the agent acts for, case-insensitively; by connection; by time.
    assert_eq!(list(&["--principal", "ALICE", "--json"]).lines().count(), 2);
    assert_eq!(list(&["--connection", "shop", "--since", "5m", "--json"]).lines().count(), 3);
    assert_eq!(list(&["--connection", "billing", "--json"]).lines().count(), 0);
    assert_eq!(list(&["--until", "1h", "--json"]).lines().count(), 0);
    let refused = list(&["--decision", "auth-failed"]);
    assert!(refused.contains("auth-failed") && refused.contains("mallory"), "{refused}");
    assert!(!refused.contains("wg_not-a-real-key"), "the index never holds credentials");
    // Closed recordings are copied to the archive byte for byte; once a local
    // copy is gone, show and verify read the archived one.
    assert!(g.gw.recorder.wait_delivered(std::time::Duration::from_secs(10)), "archived");
    let id = row["id"].as_str().unwrap();
    let local = g.dir.join(format!("state/recordings/{id}.jsonl"));
    assert_eq!(std::fs::read(archive.join(format!("{id}.jsonl"))).unwrap(), std::fs::read(&local).unwrap());
    std::fs::rename(&local, g.dir.join("moved.jsonl")).unwrap();
    let cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .arg("sessions")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        stdout(&o)
    };
    assert!(cli(&["show", id]).contains("[DENY] DROP TABLE orders"));
    assert!(cli(&["verify", id]).starts_with("ok "));
    std::fs::rename(g.dir.join("moved.jsonl"), &local).unwrap();
    // A lost index is rebuilt from the recordings.
    let o = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(["sessions", "reindex", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("indexed 3 sessions"), "{}", stdout(&o));
}
