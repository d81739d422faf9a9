//! Closed recordings are copied to an S3-compatible object store (moto's
//! server, installed by scripts/setup.sh) and read back from it by the CLI.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{gateway, Options};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> (Moto, u16) {
    let bin = dirs_home().join(".cache/wardgate/moto/bin/moto_server");
    assert!(bin.exists(), "{} missing: run scripts/setup.sh", bin.display());
    let port = wardgate::devenv::free_port().unwrap();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let m = Moto(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (m, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto_server did not start");
}

fn dirs_home() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("HOME").unwrap())
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").arg("-sf").args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_recordings_are_archived_to_s3_byte_for_byte_and_read_back_from_there() {
    let (_moto, port) = moto();
    let endpoint = format!("http://127.0.0.1:{port}");
    curl(&["-X", "PUT", &format!("{endpoint}/evidence")]);
    let env = [
        ("AWS_ACCESS_KEY_ID", "wardgate-test"),
        ("AWS_SECRET_ACCESS_KEY", "wardgate-test-secret"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    for (k, v) in env {
        // SAFETY: this test binary has one test; nothing else reads these concurrently.
        unsafe { std::env::set_var(k, v) };
    }
    let g = gateway(Options {
        gateway_extra: "recording_archive = \"s3://evidence/wardgate\"\n".into(),
        ..Default::default()
    })
    .await;
    let (ok, _, err) = g.psql(&["-c", "SELECT name, email FROM customers ORDER BY id LIMIT 2"]);
    assert!(ok, "{err}");
    assert!(g.gw.recorder.wait_delivered(Duration::from_secs(20)), "archived");
    let listing = curl(&[&format!("{endpoint}/evidence?list-type=2&prefix=wardgate/")]);
    let dir = g.dir.join("state/recordings");
    let local = wardgate::record::verify::recordings_in(&dir).unwrap();
    let session = local.iter().find(|p| !p.to_string_lossy().contains("approvals-")).expect("a session recording");
    let id = session.file_stem().unwrap().to_str().unwrap().to_string();
    assert!(listing.contains(&format!("wardgate/{id}.jsonl")), "{listing}");
    let key = id.clone();
    let object = tokio::task::spawn_blocking(move || {
        wardgate::record::archive::Archive::open("s3://evidence/wardgate").unwrap().get(&key).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(object, std::fs::read(session).unwrap(), "the archived copy is the recording, byte for byte");

    // The local copy is gone (retention, another replica): the CLI reads the archive.
    std::fs::remove_file(session).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(["sessions", "show", &id, "--config"])
        .arg(g.dir.join("wardgate.toml"))
        .envs(env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("j***@example.com"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_no_pii(&text, "archived recording");
}
