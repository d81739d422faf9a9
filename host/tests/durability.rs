//! Recording durability and sinks: `kill -9` of a busy gateway loses no
//! acknowledged event and leaves verifiable recordings; a sink that sleeps
//! or traps never slows clients, and a fixed build (hot-swapped) receives
//! every event it missed.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{gateway, Options, Serve};

fn wardgate(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wardgate")).args(args).arg("--config").arg(config).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn keygen(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("recording.key");
    let out =
        Command::new(env!("CARGO_BIN_EXE_wardgate")).args(["sessions", "keygen", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success());
    (key, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_busy_sessions_loses_no_acknowledged_event_and_recordings_verify_after_restart() {
    let keydir = common::tempdir("killkey");
    let (key, public) = keygen(&keydir);
    let g = gateway(Options {
        gateway_extra: format!("recording_key_file = \"{}\"\n", key.display()),
        ..Default::default()
    })
    .await;
    let (config, port, _) = g.serve_config_isolated();
    let serve = Serve::start(&config, "warn", Some(&g.dir.join("serve-1.log")));
    serve.wait_for_port(port);

    // Four clients run queries as fast as they can; each remembers what the gateway answered.
    let dsn = g.dsn().replace(&format!("port={}", g.port), &format!("port={port}"));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = vec![];
    for c in 0..4 {
        let (dsn, acked, stop) = (dsn.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tag = format!("c{c}q{i}");
                // The answer is the acknowledgement: after it, the events must survive.
                match client.simple_query(&format!("SELECT '{tag}' AS tag, count(*) FROM orders")).await {
                    Ok(_) => acked.lock().unwrap().push(tag),
                    Err(_) => return,
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = serve.0.id() as i32;
    // SAFETY: killing our own child process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    drop(serve);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the clients were busy: {} answers", acked.len());
    assert!(killed_at.elapsed() < Duration::from_secs(10));

    // Restart: the sessions the crash left open are sealed.
    let serve = Serve::start(&config, "warn", Some(&g.dir.join("serve-2.log")));
    serve.wait_for_port(port);
    serve.terminate();

    let dir = g.dir.join("serve-state/recordings");
    let mut recorded = String::new();
    for f in wardgate::record::verify::recordings_in(&dir).unwrap() {
        // Sealing cut each file to its content: no space reserved by the killed process is left.
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains('\0'), "{} keeps a reserved tail after sealing", f.display());
        recorded += &text;
    }
    let mut requests = HashSet::new();
    let mut responses = 0;
    for line in recorded.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["kind"] == "request" {
            let text = v["body"]["statement"].as_str().unwrap_or_default();
            if let Some(tag) = text.split('\'').nth(1) {
                requests.insert(tag.to_string());
            }
        }
        if v["kind"] == "response" && v["body"]["command"] == "SELECT 1" {
            responses += 1;
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|t| !requests.contains(*t)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged requests missing from the recordings, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(responses >= acked.len(), "{responses} responses recorded for {} answers", acked.len());
    assert_eq!(recorded.matches("sealed when it restarted").count(), 4, "the four open sessions were sealed");

    let (ok, out) = wardgate(&["sessions", "verify", "--public-key", &public], &config);
    assert!(ok, "recordings verify after kill -9 and restart:\n{out}");
    let (ok, out) = wardgate(&["sessions", "list", "--principal", "test-agent"], &config);
    assert!(ok && out.matches(" recovered ").count() == 4, "the index marks the sealed sessions:\n{out}");
}

/// A recorder manifest for the hostile fixture, under the name `siem`.
fn hostile_sink(plugin_dir: &Path, mode: &str) {
    std::fs::write(
        plugin_dir.join("siem.toml"),
        format!(
            "name = \"siem\"\nversion = \"1.0.0\"\nroles = [\"recorder\"]\n[limits]\ncall_timeout_ms = 200\n[config]\nmode = \"{mode}\"\n"
        ),
    )
    .unwrap();
    std::fs::copy(common::fixtures().join("hostile.wasm"), plugin_dir.join("siem.wasm")).unwrap();
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_or_trapping_sink_never_slows_clients_and_a_fixed_build_catches_up() {
    let g = gateway(Options::default()).await;
    let admin = format!("http://{}", g.gw.admin_addr);
    let auth = format!("Authorization: Bearer {}", g.metrics_key);
    let metrics = || {
        let out = Command::new("curl").args(["-sf", "-H", &auth, &format!("{admin}/metrics")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut delivered_before_fix = 0;
    for mode in ["sleep", "trap"] {
        hostile_sink(&g.plugin_dir, mode);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.gw.registry.current().plugins.contains_key("siem") {
            assert!(Instant::now() < deadline, "siem not loaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Client traffic while the sink fails: every query answered, quickly.
        let client = g.client().await;
        let t = Instant::now();
        for i in 0..200 {
            client.simple_query(&format!("SELECT {i}, count(*) FROM orders")).await.unwrap();
        }
        let took = t.elapsed();
        assert!(took < Duration::from_secs(5), "200 queries took {took:?} with a {mode} sink");
        drop(client);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let m = metrics();
        assert!(metric(&m, "wardgate_record_sink_backlog_bytes") > 0, "{mode}: backlog visible:\n{m}");
        assert!(metric(&m, "wardgate_record_sink_failures_total") > 0, "{mode}: failures counted:\n{m}");
        delivered_before_fix = metric(&m, "wardgate_record_sink_delivered_total");
    }
    assert_eq!(delivered_before_fix, 0);

    // The fixed build: the first-party SIEM sink under the same name.
    let out = g.dir.join("state/siem-fixed.jsonl");
    let manifest = std::fs::read_to_string(common::dist().join("jsonl-sink.toml"))
        .unwrap()
        .replace("name = \"jsonl-sink\"", "name = \"siem\"")
        .replace("output = \"file:siem.jsonl\"", &format!("output = \"file:{}\"", out.display()));
    std::fs::write(g.plugin_dir.join("siem.toml"), manifest).unwrap();
    std::fs::copy(common::dist().join("jsonl-sink.wasm"), g.plugin_dir.join("siem.wasm")).unwrap();
    assert!(g.gw.recorder.wait_delivered(Duration::from_secs(20)), "caught up:\n{}", metrics());
    // What was recorded up to now (reading the metrics is itself an audited admin call).
    let recorded = g.recordings();
    assert_eq!(metric(&metrics(), "wardgate_record_sink_backlog_bytes"), 0);

    // Every event of every recording arrived (at least once), in order per session.
    let delivered = std::fs::read_to_string(&out).unwrap();
    let got: HashSet<(String, u64)> = delivered
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["session"]["id"].as_str().unwrap().to_string(), v["event"]["sequence"].as_u64().unwrap())
        })
        .collect();
    let mut want = 0;
    for line in recorded.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        want += 1;
        let key = (v["session"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap());
        assert!(got.contains(&key), "event {key:?} not delivered after the fix");
    }
    assert!(want > 400, "{want} events recorded");
}

/// A small HTTP/1.1 receiver on loopback: answers 503 to the first `fail_first`
/// requests, then 204; keeps the bodies of the accepted ones.
async fn receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (b, s) = (bodies.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let (b, s) = (b.clone(), s.clone());
            tokio::spawn(async move {
                let mut r = BufReader::new(sock);
                loop {
                    let mut len = 0usize;
                    let mut first = true;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            assert!(line.starts_with("POST /ingest "), "{line}");
                            first = false;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let n = s.fetch_add(1, Ordering::SeqCst);
                    let status = if n < fail_first { "503 Service Unavailable" } else { "204 No Content" };
                    if n >= fail_first {
                        b.lock().unwrap().push(String::from_utf8(body).unwrap());
                    }
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    r.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (port, bodies, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_posts_every_event_only_to_granted_urls_and_retries_until_accepted() {
    let g = gateway(Options::default()).await;
    let (port, bodies, seen) = receiver(3).await;
    let url = format!("http://127.0.0.1:{port}/ingest");
    let manifest = |grant: &str| {
        std::fs::read_to_string(common::dist().join("webhook-sink.toml"))
            .unwrap()
            .replace("enabled = false", "enabled = true")
            .replace("call_timeout_ms = 5000", "call_timeout_ms = 2000")
            .replace("http = [\"https://siem.example.com/wardgate/ingest\"]", &format!("http = [\"{grant}\"]"))
            .replace("url = \"https://siem.example.com/wardgate/ingest\"", &format!("url = \"{url}\""))
    };
    // First the URL is not granted: nothing leaves, the batch stays spooled.
    std::fs::write(g.plugin_dir.join("webhook-sink.toml"), manifest("https://siem.example.com/*")).unwrap();
    std::fs::copy(common::dist().join("webhook-sink.wasm"), g.plugin_dir.join("webhook-sink.wasm")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.gw.registry.current().plugins.contains_key("webhook-sink") {
        assert!(Instant::now() < deadline, "webhook-sink not loaded: {:?}", g.gw.registry.current().errors);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, _, err) = g.psql(&["-c", "SELECT name, email FROM customers", "-c", "DROP TABLE orders"]);
    assert!(!ok && err.contains("not allowed"), "{err}");
    assert!(!g.gw.recorder.wait_delivered(Duration::from_secs(1)));
    assert_eq!(seen.load(Ordering::SeqCst), 0, "an ungranted URL is never contacted");
    assert!(g.gw.recorder.stats.sink_failures.load(Ordering::Relaxed) > 0);

    // Granted: the receiver refuses three times, then every event arrives.
    std::fs::write(g.plugin_dir.join("webhook-sink.toml"), manifest(&url)).unwrap();
    assert!(g.gw.recorder.wait_delivered(Duration::from_secs(30)), "not delivered");
    assert!(seen.load(Ordering::SeqCst) > 3);
    let got: HashSet<String> = bodies
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]["id"].as_str().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let recorded = g.recordings();
    for line in recorded.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = format!("{}:{}", v["session"].as_str().unwrap(), v["seq"]);
        assert!(got.contains(&id), "event {id} not posted");
    }
    let all = bodies.lock().unwrap().join("");
    assert!(all.contains("DROP TABLE orders") && all.contains("\"outcome\":\"failure\""), "denials reach the SIEM");
    common::assert_no_pii(&all, "webhook payloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_gets_only_the_sessions_of_the_connections_its_manifest_names() {
    let g = gateway(Options::default()).await;
    let sink = |name: &str, connections: &str| {
        let out = g.dir.join(format!("state/{name}.jsonl"));
        let manifest = std::fs::read_to_string(common::dist().join("jsonl-sink.toml"))
            .unwrap()
            .replace("name = \"jsonl-sink\"", &format!("name = \"{name}\""))
            .replace("connections = [\"*\"]", &format!("connections = [{connections}]"))
            .replace("output = \"file:siem.jsonl\"", &format!("output = \"file:{}\"", out.display()));
        std::fs::write(g.plugin_dir.join(format!("{name}.toml")), manifest).unwrap();
        std::fs::copy(common::dist().join("jsonl-sink.wasm"), g.plugin_dir.join(format!("{name}.wasm"))).unwrap();
        out
    };
    let (shop, other, all) =
        (sink("shop-sink", "\"shop\""), sink("other-sink", "\"billing\""), sink("all-sink", "\"*\""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.gw.registry.current().plugins.len() < 3 {
        assert!(Instant::now() < deadline, "sinks not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = g.client().await;
    c.simple_query("SELECT count(*) FROM orders").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(g.gw.recorder.wait_delivered(Duration::from_secs(20)));
    let sessions = |p: &std::path::Path| -> HashSet<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["session"]["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (shop, other, all) = (sessions(&shop), sessions(&other), sessions(&all));
    assert!(!shop.is_empty(), "the shop sink got the shop session");
    assert!(other.is_empty(), "a sink for another connection got {other:?}");
    // Gateway-wide logs (approvals, admin) go only to sinks for every connection.
    assert!(shop.iter().all(|s| !s.starts_with("approvals-") && !s.starts_with("admin-")), "{shop:?}");
    assert!(all.is_superset(&shop), "{all:?} vs {shop:?}");
}
