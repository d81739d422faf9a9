//! Guards that declare `[guard] verdicts = "structure"` in their manifest are
//! asked once per request structure in a session: the host reuses their
//! `allow` for requests that differ only in text and constant values. A deny
//! or review is asked again; a reload or a quarantine forgets what was allowed;
//! guards without the declaration are asked about every request.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{gateway, Options, TestGateway};

/// The hostile fixture as a guard that denies requests containing `secret`
/// (it reads the text, so declaring `structure` for it is a false promise: the
/// test uses that to see whether the host asked).
fn hostile(g: &TestGateway, version: u32, structure: bool) {
    let declared = if structure { "[guard]\nverdicts = \"structure\"\n" } else { "" };
    let text = format!(
        "name = \"hostile\"\nversion = \"1.{version}.0\"\norder = 5\nroles = [\"guard\"]\n{declared}[config]\ndeny_word = \"secret\"\ntag = \"v{version}\"\n"
    );
    let tmp = g.plugin_dir.join(".hostile.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, g.plugin_dir.join("hostile.toml")).unwrap();
}

/// Wait until `hostile` version 1.`version`.0 is live.
async fn live(g: &TestGateway, version: u32) {
    let started = Instant::now();
    while g.gw.registry.current().plugins.get("hostile").map(|p| p.manifest.version.clone())
        != Some(format!("1.{version}.0"))
    {
        assert!(started.elapsed() < Duration::from_secs(10), "hostile v{version} never went live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn calls(g: &TestGateway, plugin: &str) -> u64 {
    g.gw.registry.current().plugins[plugin].health.calls.load(Relaxed)
}

async fn denied(c: &tokio_postgres::Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}"));
    assert_eq!(db.code().code(), "42501", "{sql}: {db:?}");
    db.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_guard_is_asked_once_per_structure_and_every_time_for_a_deny() {
    let g = gateway(Options { plugins: vec!["sql-guard"], required: vec!["sql-guard"], ..Default::default() }).await;
    let c = g.client().await;
    let before = calls(&g, "sql-guard");
    for id in 1..=5 {
        let rows = c.simple_query(&format!("SELECT id FROM orders WHERE id = {id}")).await.unwrap();
        let got = rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
        assert_eq!(got, 1);
    }
    assert_eq!(calls(&g, "sql-guard") - before, 1, "same structure, other constants: asked once");
    // Another structure is asked about; the extended protocol's Parse too.
    c.simple_query("SELECT id FROM orders WHERE id = 1 AND customer_id = 2").await.unwrap();
    c.query("SELECT id FROM orders WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(calls(&g, "sql-guard") - before, 3);
    // A deny is never reused: asked each time, denied each time.
    for _ in 0..2 {
        assert!(denied(&c, "DELETE FROM orders").await.contains("sql-guard"));
    }
    assert_eq!(calls(&g, "sql-guard") - before, 5);
    // A new session asks again.
    let c2 = g.client().await;
    c2.simple_query("SELECT id FROM orders WHERE id = 9").await.unwrap();
    assert_eq!(calls(&g, "sql-guard") - before, 6);

    // The recording says which verdicts were reused.
    drop((c, c2));
    let rec = g.recordings();
    let requests: Vec<serde_json::Value> = rec
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| {
            e["kind"] == "request"
                && e["body"]["statement"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("SELECT id FROM orders WHERE id = "))
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .collect();
    let cached: Vec<bool> =
        requests.iter().map(|e| e["body"]["verdicts"][0]["cached"].as_bool().unwrap_or(false)).collect();
    // Five in the first session (the first one asked), one in the second (asked).
    assert_eq!(cached.len(), 6, "{rec}");
    assert_eq!(cached.iter().filter(|c| **c).count(), 4, "{cached:?}");
    for e in &requests {
        assert_eq!(e["body"]["verdicts"][0]["decision"], "allow");
        assert_eq!(e["body"]["verdicts"][0]["plugin"], "sql-guard");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_or_a_quarantine_forgets_what_was_allowed() {
    let g = gateway(Options { plugins: vec!["sql-guard"], required: vec!["sql-guard"], ..Default::default() }).await;
    std::fs::copy(common::fixtures().join("hostile.wasm"), g.plugin_dir.join("hostile.wasm")).unwrap();

    // Without the declaration every request is asked about.
    hostile(&g, 0, false);
    live(&g, 0).await;
    let c = g.client().await;
    c.simple_query("SELECT 'hello'").await.unwrap();
    assert!(denied(&c, "SELECT 'secret'").await.contains("secret is denied by v0"));

    // With it, an allow holds for the structure: the second text is not asked
    // about (which is why only a guard that never reads text may declare it).
    hostile(&g, 1, true);
    live(&g, 1).await;
    c.simple_query("SELECT 'hello'").await.unwrap();
    let asked = calls(&g, "hostile");
    c.simple_query("SELECT 'secret'").await.unwrap();
    assert_eq!(calls(&g, "hostile"), asked);
    // Another session asks for itself.
    let other = g.client().await;
    assert!(denied(&other, "SELECT 'secret'").await.contains("by v1"));

    // A reload forgets: the same session is asked again.
    hostile(&g, 2, false);
    live(&g, 2).await;
    assert!(denied(&c, "SELECT 'secret'").await.contains("by v2"));

    // A quarantined guard is not trusted with its earlier allows.
    hostile(&g, 3, true);
    live(&g, 3).await;
    c.simple_query("SELECT 'hello'").await.unwrap();
    for _ in 0..5 {
        assert!(denied(&other, "SELECT 'TRAP'").await.contains("hostile"));
    }
    assert!(g.gw.registry.current().plugins["hostile"].health.quarantined.load(Relaxed));
    assert!(denied(&c, "SELECT 'hello'").await.contains("hostile"));
}
