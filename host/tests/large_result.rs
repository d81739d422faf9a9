//! A large result (1M rows x 5 text columns) streams through the masker with
//! bounded gateway memory. The gateway runs as its own process (`wardgate
//! serve`) so its peak RSS (VmHWM) is measured alone.

mod common;

use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_stream_through_the_masker_in_bounded_memory() {
    let db = common::db();
    let dir = common::tempdir("large");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for p in ["sql-guard", "pii-mask"] {
        for ext in ["wasm", "toml"] {
            std::fs::copy(common::dist().join(format!("{p}.{ext}")), plugins.join(format!("{p}.{ext}"))).unwrap();
        }
    }
    std::fs::write(dir.join("pw"), &db.app_password).unwrap();
    let (key, hash) = wardgate::identity::generate_key();
    let port = wardgate::devenv::free_port().unwrap();
    let admin = wardgate::devenv::free_port().unwrap();
    std::fs::write(
        dir.join("wardgate.toml"),
        format!(
            "[listeners.postgres]\nbind = \"127.0.0.1:{port}\"\nallow_plaintext = true\ntls_self_signed = true\n[admin]\nbind = \"127.0.0.1:{admin}\"\n\
             [connections.shop]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"shop\"\nuser = \"wardgate_app\"\npassword_file = \"pw\"\nplugins = [\"sql-guard\", \"pii-mask\"]\n\
             [[service_accounts]]\nname = \"big\"\nkey_sha256 = \"{hash}\"\n[[grants]]\nconnection = \"shop\"\nprincipals = [\"sa:big\"]\n",
            db.pg.port
        ),
    )
    .unwrap();
    let serve = common::Serve::start(&dir.join("wardgate.toml"), "warn", None);
    let pid = serve.0.id();
    let dsn = format!("host=127.0.0.1 port={port} dbname=shop user=big password={key} sslmode=disable");
    let started = Instant::now();
    let client = loop {
        match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                break c;
            }
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("gateway did not come up: {e}"),
        }
    };
    let baseline = vm_hwm_kib(pid);
    let t = Instant::now();
    let rows = client
        .query_raw(
            "SELECT g::text, 'user' || g || '@example.com', 'note for order ' || g, md5(g::text), '4111 1111 1111 1111' \
             FROM generate_series(1, 1000000) g",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    pin_mut!(rows);
    let mut n = 0u64;
    while let Some(r) = rows.try_next().await.unwrap() {
        if n.is_multiple_of(100_000) {
            let email: &str = r.get(1);
            let card: &str = r.get(4);
            assert!(email.contains("***@example.com"), "{email}");
            assert_eq!(card, "**** **** **** 1111");
        }
        n += 1;
    }
    let took = t.elapsed();
    let peak = vm_hwm_kib(pid);
    eprintln!(
        "1M rows x 5 masked in {took:?} ({:.0} rows/s); gateway peak RSS {} MiB (after start-up {} MiB)",
        n as f64 / took.as_secs_f64(),
        peak / 1024,
        baseline / 1024
    );
    assert_eq!(n, 1_000_000);
    assert!(peak < 64 * 1024, "gateway peak RSS {} KiB exceeds 64 MiB", peak);
}
