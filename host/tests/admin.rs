//! The admin listener lets no one in without a credential and a role, refuses
//! cross-site state changes, records every call (never a credential), and
//! serves TLS whose certificate is reloaded when its files change.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{gateway, Options};

/// (status, body) of a curl call.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_needs_a_credential_with_the_right_role_and_every_call_is_recorded() {
    let g = gateway(Options::default()).await;
    let base = format!("http://{}", g.gw.admin_addr);
    let url = |p: &str| format!("{base}{p}");
    let (agent, admin, metrics) = (bearer(&g.key), bearer(&g.admin_key), bearer(&g.metrics_key));
    let bogus = "wg_sa_0000000000000000000000000000000000000000";

    // Public: liveness and the page's static files (no data in them).
    assert_eq!(curl(&[&url("/healthz")]).0, 200);
    assert_eq!(curl(&[&url("/approvals")]).0, 200);

    // No credential: 401 everywhere else, including paths that do not exist.
    for p in ["/metrics", "/api/plugins", "/api/approvals", "/api/approvals/apr_x", "/api/nothing-here", "/x"] {
        let (code, body) = curl(&[&url(p)]);
        assert_eq!(code, 401, "{p}: {body}");
        assert!(body.contains("Authorization: Bearer"), "{p}: {body}");
    }
    // A bad credential: 401, and the answer does not echo it.
    let (code, body) = curl(&["-H", &bearer(bogus), &url("/api/plugins")]);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains(bogus), "{body}");

    // An agent holds no admin role, even with a valid key.
    for p in ["/metrics", "/api/plugins", "/api/approvals"] {
        let (code, body) = curl(&["-H", &agent, &url(p)]);
        assert_eq!(code, 403, "{p}: {body}");
        assert!(body.contains("role"), "{body}");
    }
    // The scraper: metrics only.
    let (code, body) = curl(&["-H", &metrics, &url("/metrics")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("wardgate_admin_refused_total"), "{body}");
    assert!(body.contains("\n# TYPE wardgate_heap_trims_total counter\nwardgate_heap_trims_total "), "{body}");
    // Per worker thread: the sessions open on it, which add up to the open
    // sessions (one, this client's).
    let client = g.client().await;
    let (_, body) = curl(&["-H", &metrics, &url("/metrics")]);
    let per_worker: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("wardgate_worker_sessions{worker=\""))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count"))
        .collect();
    assert!(!per_worker.is_empty(), "{body}");
    assert_eq!(per_worker.iter().sum::<u64>(), 1, "{body}");
    assert!(body.contains("\nwardgate_sessions_active 1\n"), "{body}");
    drop(client);
    assert_eq!(curl(&["-H", &metrics, &url("/api/plugins")]).0, 403);
    assert_eq!(curl(&["-H", &metrics, &url("/api/approvals")]).0, 403);
    // The admin: everything.
    for p in ["/metrics", "/api/plugins", "/api/approvals?status=all"] {
        let (code, body) = curl(&["-H", &admin, &url(p)]);
        assert_eq!(code, 200, "{p}: {body}");
    }
    // The CLI authenticates the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(["plugins", "list", "--admin-url", &base, "--credential", &g.admin_key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(["plugins", "list", "--admin-url", &base, "--credential", &g.key])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role"), "{}", String::from_utf8_lossy(&out.stderr));

    // Cross-site: a page elsewhere cannot make the admin's browser decide anything.
    let decide = url("/api/approvals/apr_missing/approve");
    let json = "Content-Type: application/json";
    let (code, body) =
        curl(&["-X", "POST", "-H", &admin, "-H", json, "-H", "Origin: https://evil.example", "-d", "{}", &decide]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    let (code, body) =
        curl(&["-X", "POST", "-H", &admin, "-H", json, "-H", "Sec-Fetch-Site: cross-site", "-d", "{}", &decide]);
    assert_eq!(code, 403, "{body}");
    // A form post (no preflight) is refused whatever its origin.
    let (code, body) = curl(&["-X", "POST", "-H", &admin, "-H", "Content-Type: text/plain", "-d", "{}", &decide]);
    assert_eq!(code, 403, "{body}");
    // Same origin (the page) and no origin (the CLI) pass the check and reach the handler.
    let own = format!("Origin: {base}");
    assert_eq!(curl(&["-X", "POST", "-H", &admin, "-H", json, "-H", &own, "-d", "{}", &decide]).0, 404);
    assert_eq!(curl(&["-X", "POST", "-H", &admin, "-H", json, "-d", "{}", &decide]).0, 404);

    // The audit trail: refusals with reasons, calls with the principal, the
    // POST recorded before it ran — and no credential anywhere.
    let rec = g.recordings();
    let events: Vec<serde_json::Value> = rec.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of = |kind: &str| events.iter().filter(|e| e["kind"] == kind).cloned().collect::<Vec<_>>();
    let refused = of("admin.refused");
    let requests = of("admin.request");
    let actions = of("admin.action");
    assert!(refused.len() >= 16, "{} refusals recorded", refused.len());
    assert!(refused.iter().any(|e| e["body"]["status"] == 403 && e["body"]["principal"]["subject"] == "sa:test-agent"));
    assert!(refused.iter().any(|e| e["body"]["reason"].as_str().unwrap_or("").contains("cross-origin")));
    assert!(requests
        .iter()
        .any(|e| e["body"]["path"] == "/api/plugins" && e["body"]["principal"]["subject"] == "sa:ops-admin"));
    assert!(requests
        .iter()
        .any(|e| e["body"]["path"] == "/metrics" && e["body"]["principal"]["subject"] == "sa:prometheus"));
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(actions.iter().all(|e| e["body"]["path"] == "/api/approvals/apr_missing/approve"));
    for secret in [&g.key, &g.admin_key, &g.metrics_key, &bogus.to_string()] {
        assert!(!rec.contains(secret.as_str()), "a credential reached the recording");
    }
}

fn write_pair(dir: &std::path::Path, cn: &str) -> String {
    let ck = rcgen::generate_simple_self_signed(vec![cn.to_string(), "localhost".into(), "127.0.0.1".into()]).unwrap();
    // Key first, then certificate, each by rename: how deploy tools rotate.
    let tmp = dir.join(".key.tmp");
    std::fs::write(&tmp, ck.signing_key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, dir.join("key.pem")).unwrap();
    let tmp = dir.join(".cert.tmp");
    std::fs::write(&tmp, ck.cert.pem()).unwrap();
    std::fs::rename(&tmp, dir.join("cert.pem")).unwrap();
    ck.cert.pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_serve_tls_and_pick_up_a_rotated_certificate_without_a_restart() {
    let g = gateway(Options::default()).await;
    let tls = g.dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("first.pem"), write_pair(&tls, "first.test")).unwrap();
    let (path, port, admin) = g.serve_config_isolated();
    let files = "tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"";
    let cfg = std::fs::read_to_string(&path)
        .unwrap()
        .replace("allow_plaintext = true\ntls_self_signed = true", files)
        .replace("tls_self_signed = true", files)
        .replace("[admin]\n", &format!("[admin]\n{files}\n"));
    std::fs::write(&path, cfg).unwrap();
    let gw = wardgate::gateway::start(wardgate::config::Config::load(&path).unwrap()).await.unwrap();

    let https = format!("https://127.0.0.1:{admin}/healthz");
    let trusting = |pem: &str| curl(&["--cacert", tls.join(pem).to_str().unwrap(), &https]).0;
    let psql = |pem: &str| {
        Command::new("psql")
            .args(["-X", "-qAt", "-c", "SELECT 1"])
            .arg(format!(
                "host=127.0.0.1 port={port} dbname=shop user=test-agent password={} sslmode=verify-full sslrootcert={}",
                g.key,
                tls.join(pem).display()
            ))
            .output()
            .unwrap()
            .status
            .success()
    };
    assert_eq!(trusting("first.pem"), 200);
    assert!(psql("first.pem"));
    // Plain HTTP on the TLS admin port gets nowhere.
    assert_eq!(curl(&[&format!("http://127.0.0.1:{admin}/healthz")]).0, 0);
    // TLS 1.2 is the floor: a TLS 1.2-only client gets in, a TLS 1.1 one is refused.
    assert_eq!(
        curl(&["--tlsv1.2", "--tls-max", "1.2", "--cacert", tls.join("first.pem").to_str().unwrap(), &https]).0,
        200
    );
    assert_eq!(
        curl(&["--tlsv1.1", "--tls-max", "1.1", "--cacert", tls.join("first.pem").to_str().unwrap(), &https]).0,
        0
    );

    // Rotate: new files, same paths. Within a few seconds new handshakes get the new certificate.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(tls.join("second.pem"), write_pair(&tls, "second.test")).unwrap();
    let t = Instant::now();
    while trusting("second.pem") != 200 {
        assert!(t.elapsed() < Duration::from_secs(10), "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("certificate rotation picked up after {:?}", t.elapsed());
    assert_ne!(trusting("first.pem"), 200, "the old certificate is still served");
    assert!(psql("second.pem"));
    assert!(!psql("first.pem"));

    // A broken rotation (garbage certificate) is refused; the second one stays in service.
    std::fs::write(tls.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(trusting("second.pem"), 200);
    assert!(psql("second.pem"));
    let (code, body) = curl(&[
        "--cacert",
        tls.join("second.pem").to_str().unwrap(),
        "-H",
        &bearer(&g.admin_key),
        &format!("https://127.0.0.1:{admin}/metrics"),
    ]);
    assert_eq!(code, 200);
    assert!(body.contains("wardgate_tls_cert_reloads_total 2"), "{body}");
    assert!(
        body.lines().any(|l| l.starts_with("wardgate_tls_cert_reload_failures_total") && !l.ends_with(" 0")),
        "{body}"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_management_from_the_cli_is_recorded_without_the_key() {
    let g = gateway(Options::default()).await;
    // A SIEM sink for every connection: CLI admin records reach it too.
    let siem = g.dir.join("state/siem-all.jsonl");
    let manifest = std::fs::read_to_string(common::dist().join("jsonl-sink.toml"))
        .unwrap()
        .replace("output = \"file:siem.jsonl\"", &format!("output = \"file:{}\"", siem.display()));
    std::fs::write(g.plugin_dir.join("jsonl-sink.toml"), manifest).unwrap();
    std::fs::copy(common::dist().join("jsonl-sink.wasm"), g.plugin_dir.join("jsonl-sink.wasm")).unwrap();
    let config = g.dir.join("wardgate.toml");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .args(["service-accounts"])
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("USER", "ops-oncall")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = run(&["create", "nightly-etl", "--groups", "agents", "--expires", "7d"]);
    assert!(key.starts_with("wg_"), "{key}");
    run(&["revoke", "nightly-etl"]);

    let dir = g.dir.join("state/recordings");
    let files: Vec<_> = wardgate::record::verify::recordings_in(&dir)
        .unwrap()
        .into_iter()
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("admin-cli-"))
        .collect();
    assert_eq!(files.len(), 2, "one admin recording per CLI action");
    let text: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(!text.contains(&key), "the key reached the recording");
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<_> = events.iter().filter(|e| e["kind"] == "admin.action").collect();
    assert!(actions.iter().any(|e| e["body"]["command"] == "service-accounts create"
        && e["body"]["args"]["name"] == "nightly-etl"
        && e["body"]["os_user"] == "ops-oncall"));
    assert!(actions.iter().any(|e| e["body"]["command"] == "service-accounts revoke"));
    assert_eq!(events.iter().filter(|e| e["kind"] == "admin.outcome" && e["body"]["ok"] == true).count(), 2);
    // The running gateway's spool adopts them: the sink receives both records.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = std::fs::read_to_string(&siem).unwrap_or_default();
        let delivered = got.lines().filter(|l| l.contains("\"admin-cli-")).count();
        if delivered >= 4 {
            assert!(!got.contains(&key), "the key reached the sink");
            break;
        }
        assert!(Instant::now() < deadline, "{delivered} admin-cli events delivered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each is a complete, verifiable recording.
    for f in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_wardgate")).args(["sessions", "verify"]).arg(f).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}
