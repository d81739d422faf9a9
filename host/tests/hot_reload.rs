//! Hot reload under traffic: plugins replaced 24 times (once with a broken
//! file) while a client runs queries; no query fails except those the new
//! policy denies, and the broken version never goes live.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{gateway, Options};

fn write_manifest(dir: &std::path::Path, version: u32, word: &str) {
    let text = format!(
        "name = \"hostile\"\nversion = \"1.{version}.0\"\norder = 5\n[limits]\ncall_timeout_ms = 500\n[config]\ndeny_word = \"{word}\"\ntag = \"v{version}\"\n"
    );
    // Write-then-rename, as deploy tools do; the watcher also sees plain writes.
    let tmp = dir.join(".hostile.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("hostile.toml")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_replaced_under_traffic_without_failed_queries() {
    let g = gateway(Options::default()).await;
    std::fs::copy(common::fixtures().join("hostile.wasm"), g.plugin_dir.join("hostile.wasm")).unwrap();
    write_manifest(&g.plugin_dir, 0, "word0");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut loops = vec![];
    for _ in 0..2 {
        let c = g.client().await;
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.query_one("SELECT email FROM customers WHERE id = 1", &[]).await {
                    Ok(r) => {
                        let e: String = r.get(0);
                        assert_eq!(e, "j***@example.com");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("unexpected failure: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let probe = g.client().await;
    let mut latencies = vec![];
    for v in 1..=24u32 {
        if v == 12 {
            // A broken build lands: it must not go live; v11 stays.
            let live = g.gw.registry.current().plugins["hostile"].hash.clone();
            std::fs::write(g.plugin_dir.join("hostile.wasm"), b"\0asm garbage from a half-finished build").unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(g.gw.registry.current().plugins["hostile"].hash, live);
            let e = probe.simple_query("SELECT 'word11'").await.unwrap_err();
            assert!(e.as_db_error().unwrap().message().contains("denied by v11"), "{e:?}");
            std::fs::copy(common::fixtures().join("hostile.wasm"), g.plugin_dir.join("hostile.wasm")).unwrap();
        }
        let word = format!("word{v}");
        let written = Instant::now();
        write_manifest(&g.plugin_dir, v, &word);
        // Poll until the new policy is live.
        loop {
            match probe.simple_query(&format!("SELECT '{word}'")).await {
                Err(e) if e.as_db_error().is_some_and(|d| d.message().contains(&format!("denied by v{v}"))) => break,
                _ => {}
            }
            assert!(written.elapsed() < Duration::from_secs(5), "v{v} never went live");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(written.elapsed());
        // The previous word is allowed again.
        assert!(probe.simple_query(&format!("SELECT 'word{}'", v - 1)).await.is_ok());
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    latencies.sort();
    eprintln!(
        "hot swap latency (file write -> live): p50 {:?}, max {:?}; {} queries ok during swaps",
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "queries failed during hot reload");
    // Once the swaps are over the directory is quiet: reading the plugins
    // (as a reload does) must not count as a change that starts another.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = g.gw.registry.reloads();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(g.gw.registry.reloads(), reads, "the plugin directory keeps being re-read with no change");
    assert!(ok.load(Ordering::Relaxed) > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masker_added_while_a_session_is_open_masks_its_next_results() {
    // No masker when the session starts: nothing is masked.
    let g = gateway(Options { plugins: vec![], required: vec![], ..Default::default() }).await;
    let c = g.client().await;
    let sql = "SELECT email FROM customers WHERE id = 1";
    let before: String = c.query_one(sql, &[]).await.unwrap().get(0);
    assert!(before.contains('@') && !before.contains('*'), "{before}");

    // pii-mask dropped into the plugin directory: the same session's next
    // requests, in both protocols, come back masked.
    for ext in ["wasm", "toml"] {
        std::fs::copy(common::dist().join(format!("pii-mask.{ext}")), g.plugin_dir.join(format!("pii-mask.{ext}")))
            .unwrap();
    }
    let started = Instant::now();
    while !g.gw.registry.current().plugins.contains_key("pii-mask") {
        assert!(started.elapsed() < Duration::from_secs(10), "pii-mask never went live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let extended: String = c.query_one(sql, &[]).await.unwrap().get(0);
    assert_eq!(extended, "j***@example.com");
    let simple = c.simple_query(sql).await.unwrap();
    let row = simple.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(row.as_deref(), Some("j***@example.com"));
}
