//! Maskers that declare `[masker] text = "pure"` (pii-mask does) mask an
//! equal text once per session: a driver's unnamed statement is parsed, and so
//! masked for the recording, on every execution. The recording still holds
//! the masked text of every request; another session, or a reload of the
//! plugin set, masks for itself; without the declaration every text is masked
//! by a call.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{gateway, Options, TestGateway};

fn calls(g: &TestGateway) -> u64 {
    g.gw.registry.current().plugins["pii-mask"].health.calls.load(Relaxed)
}

/// The calls pii-mask gets while `sql` runs (as a simple query) on `c`.
async fn calls_for(g: &TestGateway, c: &tokio_postgres::Client, sql: &str) -> u64 {
    let before = calls(g);
    c.simple_query(sql).await.unwrap();
    calls(g) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equal_text_is_masked_once_per_session_when_the_masker_is_pure() {
    let g = gateway(Options { plugins: vec!["pii-mask"], required: vec!["pii-mask"], ..Default::default() }).await;
    let manifest = std::fs::read_to_string(g.plugin_dir.join("pii-mask.toml")).unwrap();
    assert!(manifest.contains("text = \"pure\""), "this test needs pii-mask to declare it");
    let c = g.client().await;
    // An int column: no masker reads the result, so the statement text is
    // the only thing masked (plus the one wants-columns question per shape).
    let sql = "SELECT id FROM orders WHERE id = 1 AND 'jane.doe@example.com' <> ''";
    assert_eq!(calls_for(&g, &c, sql).await, 2, "first time: mask-text and wants-columns");
    assert_eq!(calls_for(&g, &c, sql).await, 0, "same text: no call");
    assert_eq!(calls_for(&g, &c, &sql.replace("id = 1", "id = 2")).await, 1, "other text: masked");
    // Another session masks for itself.
    let other = g.client().await;
    assert_eq!(calls_for(&g, &other, sql).await, 2);

    // Every request is on record with its statement masked, reused or not.
    drop((c, other));
    let rec = g.recordings();
    assert!(!rec.contains("jane.doe@example.com"), "unmasked text in the recording");
    let statements: Vec<String> = rec
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "request")
        .filter_map(|e| e["body"]["statement"].as_str().map(str::to_string))
        .filter(|s| s.starts_with("SELECT id FROM orders"))
        .collect();
    // (Two sessions' files, in no particular order.)
    let masked = "SELECT id FROM orders WHERE id = 1 AND '***@example.com' <> ''";
    assert_eq!(statements.len(), 4, "{rec}");
    assert_eq!(statements.iter().filter(|s| *s == masked).count(), 3, "{statements:?}");
    assert!(statements.contains(&masked.replace("id = 1", "id = 2")), "{statements:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_declaration_or_after_a_reload_the_text_is_masked_again() {
    let g = gateway(Options { plugins: vec!["pii-mask"], required: vec!["pii-mask"], ..Default::default() }).await;
    let c = g.client().await;
    let sql = "SELECT id FROM orders WHERE id = 3 AND 'jane.doe@example.com' <> ''";
    assert_eq!(calls_for(&g, &c, sql).await, 2);
    assert_eq!(calls_for(&g, &c, sql).await, 0);

    // The same plugin, its manifest without the promise (a new version, so
    // the test can see it go live): every equal text is a call again.
    let path = g.plugin_dir.join("pii-mask.toml");
    let manifest = std::fs::read_to_string(&path)
        .unwrap()
        .replace("text = \"pure\"", "text = \"call\"")
        .replace("version = \"0.1.0\"", "version = \"0.1.1\"");
    let tmp = g.plugin_dir.join(".pii-mask.toml.tmp");
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let started = Instant::now();
    while g.gw.registry.current().plugins["pii-mask"].manifest.version != "0.1.1" {
        assert!(started.elapsed() < Duration::from_secs(10), "the new manifest never went live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New instance after the swap: mask-text and wants-columns, then mask-text each time.
    assert_eq!(calls_for(&g, &c, sql).await, 2);
    assert_eq!(calls_for(&g, &c, sql).await, 1);
    assert_eq!(calls_for(&g, &c, sql).await, 1);
}
