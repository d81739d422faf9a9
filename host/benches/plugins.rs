//! Plugin platform benchmark (run with `cargo bench -p wardgate --bench plugins`
//! after scripts/build-plugins.sh). Prints, each against a baseline measured in
//! the same run:
//! * guard call cost (sql-guard, realistic parsed request), µs per call;
//! * masking throughput on 1000 x 5 batches: pii-mask in the sandbox vs the
//!   same code compiled natively (ratio; target >= 0.5);
//! * instantiate-per-session cost (pooled);
//! * SQL analysis cost (libpg_query) for comparison;
//! * one short request through the session pipeline vs the calls it makes.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wardgate::pipeline::types::*;
use wardgate::plugins::engine::EngineOptions;
use wardgate::plugins::{PluginEngine, Registry, SessionPlugins};

fn dist() -> PathBuf {
    std::env::var_os("WARDGATE_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/plugins"))
}

fn per_iter(mut f: impl FnMut(), min: Duration) -> Duration {
    for _ in 0..50 {
        f();
    }
    let mut n = 0u32;
    let start = Instant::now();
    while start.elapsed() < min || n < 100 {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn session() -> Session {
    Session {
        id: "bench".into(),
        connection: "shop".into(),
        protocol: Protocol::Postgres,
        identity: Identity {
            principal: Principal {
                subject: "sa:bench".into(),
                name: "bench".into(),
                email: None,
                groups: vec!["agents".into()],
                kind: PrincipalKind::Agent,
                issuer: "wardgate".into(),
            },
            on_behalf_of: vec![],
        },
        client_addr: "127.0.0.1:1".into(),
        started_at_ms: 0,
    }
}

const ROWS: usize = 1000;

fn rows() -> Vec<[String; 5]> {
    (0..ROWS)
        .map(|i| {
            [
                format!("{}", 100000 + i),
                format!("Customer Number {i}"),
                format!("user{i}@example.com"),
                if i % 3 == 0 { "4111 1111 1111 1111".to_string() } else { format!("order note {i} shipped on time") },
                format!("2026-01-{:02} 10:{:02}:00+00", 1 + i % 28, i % 60),
            ]
        })
        .collect()
}

fn main() {
    let dir = dist();
    assert!(dir.join("pii-mask.wasm").exists(), "run scripts/build-plugins.sh first");
    let engine = PluginEngine::new(EngineOptions { max_instances: 200, ..Default::default() }).unwrap();
    let registry = Registry::open(engine, &dir, &std::env::temp_dir()).unwrap();
    let set = registry.current();
    let guard = set.plugins["sql-guard"].clone();
    let masker = set.plugins["pii-mask"].clone();
    let mut sp = SessionPlugins::new(registry.clone(), "bench", "shop", "postgres", vec![]).serving(session());
    let text =
        "SELECT c.id, c.email, o.amount_cents FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = 42";

    // SQL analysis (host, native) for scale.
    let t_parse = per_iter(
        || {
            black_box(pg_query::parse(black_box(text), 0).unwrap());
        },
        Duration::from_millis(500),
    );
    let t_scan = per_iter(
        || {
            black_box(pg_query::scan(black_box(text)).unwrap());
        },
        Duration::from_millis(500),
    );
    let t_cached = per_iter(
        || {
            black_box(wardgate::sql::analyze(black_box(text), SqlPhase::SimpleQuery, ""));
        },
        Duration::from_millis(500),
    );
    // Texts that differ only in a constant (pgbench's and most agents' queries).
    let varied: Vec<String> = (0..100_000).map(|i| text.replace("o.id = 42", &format!("o.id = {i}"))).collect();
    let mut next = varied.iter().cycle();
    let t_literal = per_iter(
        || {
            black_box(wardgate::sql::analyze(next.next().unwrap(), SqlPhase::SimpleQuery, ""));
        },
        Duration::from_millis(500),
    );
    let req = Request::Sql(wardgate::sql::analyze(text, SqlPhase::SimpleQuery, ""));

    // Guard call.
    assert_eq!(sp.check(&guard, &req).unwrap(), Verdict::Allow);
    let t_guard = per_iter(
        || {
            black_box(sp.check(&guard, &req).unwrap());
        },
        Duration::from_secs(1),
    );

    // Masking: sandboxed vs native, same Policy code and config.
    let data = rows();
    let mut packed = PackedCells { data: vec![], lengths: vec![] };
    for r in &data {
        for c in r {
            packed.data.extend_from_slice(c.as_bytes());
            packed.lengths.push(c.len() as i32);
        }
    }
    let names = ["id", "name", "email", "note", "created_at"];
    let columns: Vec<Column> = names
        .iter()
        .map(|n| Column {
            name: n.to_string(),
            type_oid: 25,
            table: Some("public.customers".into()),
            format: CellFormat::Text,
        })
        .collect();
    let batch = RowBatch { columns: columns.clone(), cells: packed.clone() };
    let bytes = packed.data.len();
    let t_wasm = per_iter(
        || {
            black_box(sp.mask_rows(&masker, &batch).unwrap());
        },
        Duration::from_secs(2),
    );
    let native_policy = pii_mask::policy::Policy::from_json(&masker.manifest.config_json).unwrap();
    let ncols: Vec<wardgate_sdk::types::Column> = names
        .iter()
        .map(|n| wardgate_sdk::types::Column {
            name: n.to_string(),
            type_oid: 25,
            table: Some("public.customers".into()),
            format: wardgate_sdk::types::CellFormat::Text,
        })
        .collect();
    let ncells = wardgate_sdk::types::PackedCells { data: packed.data.clone(), lengths: packed.lengths.clone() };
    let t_native = per_iter(
        || {
            black_box(native_policy.mask_batch(black_box(&ncols), black_box(&ncells)).unwrap());
        },
        Duration::from_secs(2),
    );

    // What one short request pays (pgbench -S: one statement in, one int4
    // row out): the statement masked for the recording, and a 1x1 batch.
    let stmt = "SELECT abalance FROM pgbench_accounts WHERE aid = 823089;";
    let one = RowBatch {
        columns: vec![Column { name: "abalance".into(), type_oid: 23, table: None, format: CellFormat::Text }],
        cells: PackedCells { data: b"-4711".to_vec(), lengths: vec![5] },
    };
    let one_native = wardgate_sdk::types::PackedCells { data: b"-4711".to_vec(), lengths: vec![5] };
    let one_col = vec![wardgate_sdk::types::Column {
        name: "abalance".into(),
        type_oid: 23,
        table: None,
        format: wardgate_sdk::types::CellFormat::Text,
    }];
    let t_text = per_iter(
        || {
            black_box(sp.mask_text(&masker, black_box(stmt)).unwrap());
        },
        Duration::from_secs(1),
    );
    let t_text_native = per_iter(
        || {
            black_box(native_policy.mask_text(black_box(stmt)));
        },
        Duration::from_millis(500),
    );
    let t_one = per_iter(
        || {
            black_box(sp.mask_rows(&masker, &one).unwrap());
        },
        Duration::from_secs(1),
    );
    let t_one_native = per_iter(
        || {
            black_box(native_policy.mask_batch(black_box(&one_col), black_box(&one_native)).unwrap());
        },
        Duration::from_millis(500),
    );

    // One pgbench -S request through the session pipeline, as the Postgres
    // relay runs it: analysis (other constants each time), the statement
    // masked for the recording, every guard asked (sql-guard answers from
    // its structure cache). Against: the same analysis plus one raw
    // mask-text call, so the difference is the pipeline's own bookkeeping.
    let mut pipe = wardgate::pipeline::SessionPipeline::new(registry.clone(), session(), vec![]);
    let pg: Vec<String> =
        (0..100_000).map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};")).collect();
    let mut next_pg = pg.iter().cycle();
    let t_request = per_iter(
        || {
            let t = next_pg.next().unwrap();
            let r = Request::Sql(wardgate::sql::analyze(t, SqlPhase::SimpleQuery, ""));
            black_box(pipe.mask_text(t).unwrap());
            black_box(pipe.check(&r, |r| r));
        },
        Duration::from_secs(1),
    );
    let t_request_raw = per_iter(
        || {
            let t = next_pg.next().unwrap();
            black_box(wardgate::sql::analyze(t, SqlPhase::SimpleQuery, ""));
            black_box(sp.mask_text(&masker, t).unwrap());
        },
        Duration::from_secs(1),
    );

    // Near-boundary cost: a masker that returns its input (the hostile test
    // fixture, which also copies the batch to a string and scans it for its
    // trigger words, so this is an upper bound on lift/lower).
    let fixture_dir = dir.join("../fixtures");
    let t_boundary = if fixture_dir.join("hostile.wasm").exists() {
        let d = std::env::temp_dir().join(format!("wardgate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(fixture_dir.join("hostile.wasm"), d.join("hostile.wasm")).unwrap();
        std::fs::write(d.join("hostile.toml"), "name = \"hostile\"\nversion = \"1.0.0\"\n").unwrap();
        let e2 = PluginEngine::new(EngineOptions { max_instances: 16, ..Default::default() }).unwrap();
        let r2 = Registry::open(e2, &d, &d).unwrap();
        let h = r2.current().plugins["hostile"].clone();
        let mut s2 = SessionPlugins::new(r2.clone(), "b2", "shop", "postgres", vec![]).serving(session());
        Some(per_iter(
            || {
                black_box(s2.mask_rows(&h, &batch).unwrap());
            },
            Duration::from_secs(1),
        ))
    } else {
        None
    };

    // Instantiate per session (pooled): a new session's first call minus a warm call.
    let t_first = per_iter(
        || {
            let mut s = SessionPlugins::new(registry.clone(), "b", "shop", "postgres", vec![]).serving(session());
            black_box(s.check(&guard, &req).unwrap());
        },
        Duration::from_secs(1),
    );

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("wardgate plugin benchmark ({} rows x 5 cells, {:.0} KB per batch)", ROWS, bytes as f64 / 1024.0);
    println!("  SQL analysis (libpg_query, native)     {:>9.2} µs/query", us(t_parse));
    println!("  SQL scan only (libpg_query lexer)      {:>9.2} µs/query", us(t_scan));
    println!("  SQL analysis, cache hit (same text)    {:>9.2} µs/query", us(t_cached));
    println!("  SQL analysis, other constants          {:>9.2} µs/query   (literal key: no lexer)", us(t_literal));
    println!("  guard call, sql-guard, warm instance   {:>9.2} µs/call   (target <= 5 µs)", us(t_guard));
    println!(
        "  new session: instantiate + first call  {:>9.2} µs        (instantiate ~ {:.2} µs)",
        us(t_first),
        us(t_first) - us(t_guard)
    );
    println!(
        "  mask 1000x5, native pii-mask           {:>9.1} µs/batch  {:>7.1} MB/s",
        us(t_native),
        bytes as f64 / t_native.as_secs_f64() / 1e6
    );
    println!(
        "  mask 1000x5, pii-mask in sandbox       {:>9.1} µs/batch  {:>7.1} MB/s",
        us(t_wasm),
        bytes as f64 / t_wasm.as_secs_f64() / 1e6
    );
    println!(
        "  mask statement text (recording), sandbox {:>7.2} µs/call   native {:.2} µs",
        us(t_text),
        us(t_text_native)
    );
    println!(
        "  mask 1x1 int4 row, sandbox              {:>8.2} µs/call   native {:.2} µs",
        us(t_one),
        us(t_one_native)
    );
    println!(
        "  pgbench -S request through the pipeline {:>7.2} µs        analysis + one mask-text call {:.2} µs",
        us(t_request),
        us(t_request_raw)
    );
    if let Some(b) = t_boundary {
        println!(
            "  pass-through masker (hostile fixture)   {:>9.1} µs/batch  (lift/lower + one scan: boundary upper bound)",
            us(b)
        );
    }
    println!(
        "  masking throughput ratio sandbox/native {:>8.2}           (target >= 0.5)",
        t_native.as_secs_f64() / t_wasm.as_secs_f64()
    );
}
