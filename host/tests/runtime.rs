//! The plugin runtime against purpose-built hostile plugins.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wardgate::pipeline::types::{
    Identity, Principal, PrincipalKind, Protocol, Request, Session, SqlPhase, SqlRequest, Verdict,
};
use wardgate::plugins::engine::EngineOptions;
use wardgate::plugins::instances::FailureKind;
use wardgate::plugins::{PluginEngine, PluginEvent, Registry, SessionPlugins};

fn session() -> Session {
    Session {
        id: "s1".into(),
        connection: "shop".into(),
        protocol: Protocol::Postgres,
        identity: Identity {
            principal: Principal {
                subject: "sa:t".into(),
                name: "t".into(),
                email: None,
                groups: vec![],
                kind: PrincipalKind::Agent,
                issuer: "wardgate".into(),
            },
            on_behalf_of: vec![],
        },
        client_addr: "127.0.0.1:1".into(),
        started_at_ms: 0,
    }
}

fn sql(text: &str) -> Request {
    Request::Sql(SqlRequest {
        text: text.into(),
        statements: vec![],
        parse_error: None,
        phase: SqlPhase::SimpleQuery,
        statement_name: String::new(),
    })
}

fn hostile_manifest(dir: &Path, timeout_ms: u32, memory_mib: u32, extra: &str) {
    std::fs::write(
        dir.join("hostile.toml"),
        format!("name = \"hostile\"\nversion = \"1.0.0\"\n[limits]\ncall_timeout_ms = {timeout_ms}\nmemory_mib = {memory_mib}\n[config]\n{extra}\n"),
    )
    .unwrap();
}

struct Rig {
    registry: Arc<Registry>,
    dir: std::path::PathBuf,
    events: Arc<Mutex<Vec<PluginEvent>>>,
}

fn rig(timeout_ms: u32, memory_mib: u32) -> Rig {
    let dir = common::tempdir("rt");
    std::fs::copy(common::fixtures().join("hostile.wasm"), dir.join("hostile.wasm")).unwrap();
    hostile_manifest(&dir, timeout_ms, memory_mib, "");
    let engine = PluginEngine::new(EngineOptions { max_instances: 64, ..Default::default() }).unwrap();
    let registry = Registry::open(engine, &dir, &dir.join("state")).unwrap();
    let events = Arc::new(Mutex::new(vec![]));
    let ev = events.clone();
    registry.on_event(move |e| ev.lock().unwrap().push(e.clone()));
    assert!(registry.current().errors.is_empty(), "{:?}", registry.current().errors);
    Rig { registry, dir, events }
}

fn plugins(r: &Rig) -> SessionPlugins {
    SessionPlugins::new(r.registry.clone(), "s1", "shop", "postgres", vec![]).serving(session())
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_and_the_next_call_works() {
    let r = rig(100, 64);
    let mut p = plugins(&r);
    let h = r.registry.current().plugins["hostile"].clone();
    let t = Instant::now();
    let e = p.check(&h, &sql("LOOP")).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind, FailureKind::Deadline, "{e}");
    assert!(took >= Duration::from_millis(95) && took < Duration::from_millis(600), "stopped after {took:?}");
    assert!(e.to_string().contains("plugin hostile exceeded its deadline of 100 ms"), "{e}");
    assert_eq!(p.check(&h, &sql("SELECT 1")).unwrap(), Verdict::Allow);
}

#[test]
fn a_1_gib_allocation_is_refused_and_memory_stays_bounded() {
    let r = rig(2000, 64);
    let mut p = plugins(&r);
    let h = r.registry.current().plugins["hostile"].clone();
    let before = wardgate::util::rss_kib().unwrap();
    for _ in 0..3 {
        let e = p.check(&h, &sql("ALLOC")).unwrap_err();
        assert_eq!(e.kind, FailureKind::Memory, "{e}");
        assert!(e.to_string().contains("memory limit of 64 MiB"), "{e}");
    }
    let after = wardgate::util::rss_kib().unwrap();
    assert!(after < before + 200 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert_eq!(p.check(&h, &sql("fine")).unwrap(), Verdict::Allow);
}

#[test]
fn a_trap_is_denied_and_the_next_call_gets_a_fresh_instance() {
    let r = rig(1000, 64);
    let mut p = plugins(&r);
    let h = r.registry.current().plugins["hostile"].clone();
    let e = p.check(&h, &sql("TRAP")).unwrap_err();
    assert_eq!(e.kind, FailureKind::Trap, "{e}");
    assert_eq!(p.check(&h, &sql("ok")).unwrap(), Verdict::Allow);
    assert!(r
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, PluginEvent::CallFailed { name, .. } if name == "hostile")));
}

#[test]
fn repeated_failures_quarantine_the_plugin_until_it_is_replaced() {
    let r = rig(1000, 64);
    let mut p = plugins(&r);
    let h = r.registry.current().plugins["hostile"].clone();
    for _ in 0..5 {
        assert!(p.check(&h, &sql("TRAP")).is_err());
    }
    let e = p.check(&h, &sql("benign")).unwrap_err();
    assert_eq!(e.kind, FailureKind::Quarantined);
    assert!(r.events.lock().unwrap().iter().any(|e| matches!(e, PluginEvent::Quarantined { .. })));
    // Redeploying (same bytes) brings a fresh, healthy version.
    r.registry.reload_names(&["hostile".to_string()].into_iter().collect());
    p.refresh();
    let h2 = r.registry.current().plugins["hostile"].clone();
    assert!(!Arc::ptr_eq(&h, &h2));
    assert_eq!(p.check(&h2, &sql("benign")).unwrap(), Verdict::Allow);
}

#[test]
fn sessions_get_their_own_instances() {
    let r = rig(1000, 64);
    let h = r.registry.current().plugins["hostile"].clone();
    let mut a = plugins(&r);
    let mut b = SessionPlugins::new(r.registry.clone(), "s2", "shop", "postgres", vec![]).serving(session());
    // A trap poisons only the instance of the session that trapped.
    assert!(a.check(&h, &sql("TRAP")).is_err());
    assert_eq!(b.check(&h, &sql("ok")).unwrap(), Verdict::Allow);
    assert_eq!(a.check(&h, &sql("ok")).unwrap(), Verdict::Allow);
}

fn replace_and_expect_rejection(r: &Rig, bytes: &[u8], needle: &str) {
    let live = r.registry.current().plugins["hostile"].hash.clone();
    std::fs::write(r.dir.join("hostile.wasm"), bytes).unwrap();
    r.registry.reload_names(&["hostile".to_string()].into_iter().collect());
    let set = r.registry.current();
    assert_eq!(set.plugins["hostile"].hash, live, "a broken file must not replace a working version");
    let rejected = r.events.lock().unwrap().iter().rev().find_map(|e| match e {
        PluginEvent::Rejected { name, error } if name == "hostile" => Some(error.clone()),
        _ => None,
    });
    let msg = rejected.expect("a rejection event");
    assert!(msg.contains(needle), "{msg}");
    assert!(msg.contains("hostile.wasm"), "names the file: {msg}");
}

#[test]
fn broken_files_never_replace_a_working_version() {
    let r = rig(1000, 64);
    replace_and_expect_rejection(&r, b"this is not wasm", "not a WebAssembly file");
    replace_and_expect_rejection(&r, b"\0asm\x01\0\0\0", "core WebAssembly module");
    let wrong = std::fs::read(common::fixtures().join("wrong-version.wasm")).unwrap();
    replace_and_expect_rejection(&r, &wrong, "speaks wardgate:plugin@0.2.0");
    let none = std::fs::read(common::fixtures().join("no-exports.wasm")).unwrap();
    replace_and_expect_rejection(&r, &none, "exports none of");
}

#[test]
fn a_bad_manifest_is_reported_with_file_line_and_key() {
    let r = rig(1000, 64);
    std::fs::write(r.dir.join("hostile.toml"), "name = \"hostile\"\nversion = \"1.0.0\"\n[limits]\nmemory_mb = 3\n")
        .unwrap();
    r.registry.reload_names(&["hostile".to_string()].into_iter().collect());
    let msg = r
        .events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| match e {
            PluginEvent::Rejected { error, .. } => Some(error.clone()),
            _ => None,
        })
        .unwrap();
    assert!(msg.contains("hostile.toml:4:") && msg.contains("limits.memory_mb"), "{msg}");
    // A plugin without any working version is listed as an error.
    let dir = common::tempdir("rt-fresh");
    std::fs::write(dir.join("lonely.wasm"), b"junk").unwrap();
    let engine = PluginEngine::new(EngineOptions { max_instances: 8, ..Default::default() }).unwrap();
    let reg = Registry::open(engine, &dir, &dir).unwrap();
    assert!(reg.current().errors["lonely"].contains("lonely.toml"), "{:?}", reg.current().errors);
}

fn wardgate_cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn plugins_check_reports_exports_or_a_clear_error() {
    let d = common::dist();
    let (code, out) = wardgate_cli(&["plugins", "check", d.join("pii-mask.wasm").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("exports:  masker")
            && out.contains("wardgate:plugin@0.2.0")
            && out.contains("manifest: pii-mask 0.1.0"),
        "{out}"
    );
    let f = common::fixtures();
    let (code, out) = wardgate_cli(&["plugins", "check", f.join("wrong-version.wasm").to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("wardgate:plugin/guard@9.0.0"), "{out}");
    let (code, out) = wardgate_cli(&["plugins", "check", f.join("no-exports.wasm").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("exports none of"), "{out}");
    let junk = common::tempdir("junk").join("x.wasm");
    std::fs::write(&junk, b"hello").unwrap();
    let (code, out) = wardgate_cli(&["plugins", "check", junk.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("not a WebAssembly file"), "{out}");
}

#[test]
fn a_plugin_that_sleeps_in_the_host_is_stopped_at_once() {
    // A wait in wasi:io/poll runs in the host, out of reach of epoch deadlines:
    // the host refuses to block instead of holding the session.
    let r = rig(100, 64);
    let mut p = plugins(&r);
    let h = r.registry.current().plugins["hostile"].clone();
    let t = Instant::now();
    let e = p.check(&h, &sql("SLEEP")).unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(600), "stopped after {:?}", t.elapsed());
    assert!(e.to_string().contains("may not block"), "{e}");
    assert_eq!(p.check(&h, &sql("SELECT 1")).unwrap(), Verdict::Allow);
}

#[test]
fn a_masker_is_asked_once_per_result_shape_and_skipped_for_columns_it_does_not_read() {
    use std::sync::atomic::Ordering::Relaxed;
    use wardgate::pipeline::types::{CellFormat, Column, PackedCells};
    use wardgate::pipeline::SessionPipeline;

    let r = rig(200, 64);
    hostile_manifest(&r.dir, 200, 64, "skip_column = \"balance\"");
    r.registry.reload_names(&["hostile".to_string()].into_iter().collect());
    let plugin = r.registry.current().plugins["hostile"].clone();
    let calls = || plugin.health.calls.load(Relaxed);
    let col = |name: &str| Column { name: name.into(), type_oid: 23, table: None, format: CellFormat::Text };
    let cells = PackedCells { data: b"42".to_vec(), lengths: vec![2] };
    let mut p = SessionPipeline::new(r.registry.clone(), session(), vec![]);

    let start = calls();
    assert!(!p.masks_columns(&[col("balance")]), "hostile does not read `balance`");
    assert_eq!(p.mask_rows(&[col("balance")], cells.clone()).unwrap().cells, cells);
    assert_eq!(calls() - start, 1, "one wants-columns call and no mask-rows");
    p.mask_rows(&[col("balance")], cells.clone()).unwrap();
    assert_eq!(calls() - start, 1, "the answer is remembered for the shape");

    assert!(p.masks_columns(&[col("name"), col("balance")]));
    p.mask_rows(&[col("name"), col("balance")], PackedCells { data: b"ab42".to_vec(), lengths: vec![2, 2] }).unwrap();
    assert_eq!(calls() - start, 3, "a shape with a wanted column is asked about, then masked");

    // A masker that cannot answer reads everything: it is called (and fails
    // closed there if it is really broken).
    assert!(p.masks_columns(&[col("TRAP")]));
    assert!(r.events.lock().unwrap().iter().any(|e| matches!(e, PluginEvent::CallFailed { .. })));
    assert_eq!(p.mask_rows(&[col("TRAP")], cells.clone()).unwrap().cells, cells);

    // A new plugin version is asked again.
    hostile_manifest(&r.dir, 200, 64, "");
    r.registry.reload_names(&["hostile".to_string()].into_iter().collect());
    p.refresh();
    assert!(p.masks_columns(&[col("balance")]), "the new version reads `balance`");
}

#[test]
fn a_plugin_instance_sees_the_session_it_serves() {
    // sql-guard's identity rules read the session through host.current-session.
    let dir = common::tempdir("sess");
    std::fs::copy(common::dist().join("sql-guard.wasm"), dir.join("sql-guard.wasm")).unwrap();
    std::fs::write(
        dir.join("sql-guard.toml"),
        "name = \"sql-guard\"\nversion = \"1.0.0\"\n[config]\nread_only_kinds = [\"agent\"]\n",
    )
    .unwrap();
    let engine = PluginEngine::new(EngineOptions { max_instances: 8, ..Default::default() }).unwrap();
    let registry = Registry::open(engine, &dir, &dir.join("state")).unwrap();
    let guard = registry.current().plugins["sql-guard"].clone();
    let insert = Request::Sql(wardgate::sql::analyze("INSERT INTO t VALUES (1)", SqlPhase::SimpleQuery, ""));
    let mut agent = SessionPlugins::new(registry.clone(), "a", "shop", "postgres", vec![]).serving(session());
    assert!(matches!(agent.check(&guard, &insert).unwrap(), Verdict::Deny(_)), "agents may only read");
    let mut human = session();
    human.identity.principal.kind = PrincipalKind::Human;
    let mut human = SessionPlugins::new(registry.clone(), "h", "shop", "postgres", vec![]).serving(human);
    assert_eq!(human.check(&guard, &insert).unwrap(), Verdict::Allow);
    // Without a session (a recorder's instance) a guard has nobody to judge.
    let mut none = SessionPlugins::new(registry, "r", "*", "postgres", vec![]);
    assert!(matches!(none.check(&guard, &insert).unwrap(), Verdict::Deny(_)));
}
