//! A real OpenID Provider for tests: npm `oidc-provider` run by node, installed
//! and configured by the project's own `scripts/oidc.sh` and `scripts/oidc/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where `scripts/oidc.sh install` puts node_modules and the project's node scripts.
pub fn modules() -> PathBuf {
    std::env::var_os("WARDGATE_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/wardgate/node"))
}

/// Install the project's npm packages and node scripts (idempotent).
pub fn install_node_deps() {
    let st =
        Command::new("bash").arg(root().join("scripts/oidc.sh")).arg("install").status().expect("run scripts/oidc.sh");
    assert!(st.success(), "scripts/oidc.sh install failed (node and npm are installed by scripts/setup.sh)");
}

pub struct Provider {
    pub port: u16,
    pub base: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
}

impl Provider {
    /// Install (idempotent) and start a provider with its own keys and port.
    pub fn start() -> Provider {
        let st = Command::new("bash")
            .arg(root().join("scripts/oidc.sh"))
            .arg("install")
            .status()
            .expect("run scripts/oidc.sh");
        assert!(st.success(), "scripts/oidc.sh install failed (node and npm are installed by scripts/setup.sh)");
        let base = super::tempdir("oidc");
        let port = wardgate::devenv::free_port().unwrap();
        let p = Provider { port, base, child: Default::default() };
        p.spawn();
        p
    }

    fn spawn(&self) {
        let log = std::fs::File::create(self.base.join("oidc.log")).unwrap();
        let child = Command::new("node")
            .arg(modules().join("provider.mjs"))
            .env("OIDC_PORT", self.port.to_string())
            .env("OIDC_BASE", &self.base)
            .env("OIDC_CONFIG", root().join("scripts/oidc/config.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start node");
        wardgate::devenv::kill_when_process_exits(child.id()).unwrap();
        *self.child.lock().unwrap() = Some(child);
        for _ in 0..200 {
            if ureq::get(&format!("{}/.well-known/openid-configuration", self.issuer())).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "OpenID Provider did not start: {}",
            std::fs::read_to_string(self.base.join("oidc.log")).unwrap_or_default()
        );
    }

    fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// New signing keys (new kids), old ones gone: restart on the same port.
    pub fn rotate(&self) {
        self.stop();
        std::fs::remove_file(self.base.join("jwks.private.json")).unwrap();
        self.spawn();
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn token_request(&self, client: &str, secret: &str, form: &[(&str, &str)]) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}"));
        let mut resp = ureq::post(&format!("{}/token", self.issuer()))
            .header("Authorization", &format!("Basic {auth}"))
            .send_form(form.iter().copied())
            .expect("token request");
        let v: Value = resp.body_mut().read_json().unwrap();
        v["access_token"].as_str().unwrap_or_else(|| panic!("no access token: {v}")).to_string()
    }

    /// A client-credentials access token (JWT, aud urn:wardgate).
    pub fn client_credentials(&self, client: &str, secret: &str) -> String {
        self.token_request(client, secret, &[("grant_type", "client_credentials"), ("scope", "gateway:postgres")])
    }

    /// RFC 8693: `client` exchanges a user's access token for one where it acts for the user.
    pub fn exchange(&self, client: &str, secret: &str, subject_token: &str) -> String {
        self.token_request(
            client,
            secret,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", subject_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
        )
    }

    /// A token signed with this provider's own keys, per `spec` (see scripts/oidc/mint.mjs).
    pub fn mint(&self, spec: Value) -> String {
        let out = Command::new("node")
            .arg(modules().join("mint.mjs"))
            .arg(&self.base)
            .arg(spec.to_string())
            .output()
            .expect("node mint.mjs");
        assert!(out.status.success(), "mint: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Complete a browser sign-in at `url` as `user`, following redirects with
    /// curl (cookies kept) until the loopback callback has been called.
    pub fn sign_in(&self, url: &str, user: &str, password: &str) {
        let jar = self.base.join(format!("cookies-{}", wardgate::util::random_id()));
        let step = |args: &[&str]| -> String {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{redirect_url}", "-b"])
                .arg(&jar)
                .arg("-c")
                .arg(&jar)
                .args(args)
                .output()
                .expect("curl");
            String::from_utf8(out.stdout).unwrap()
        };
        let interaction = step(&[url]);
        assert!(interaction.contains("/interaction/"), "unexpected redirect from /auth: {interaction}");
        let login = format!("{interaction}/login");
        let mut next = step(&[
            "--data-urlencode",
            &format!("login={user}"),
            "--data-urlencode",
            &format!("password={password}"),
            &login,
        ]);
        for _ in 0..6 {
            assert!(!next.is_empty(), "sign-in stopped without a redirect");
            if !next.starts_with(&self.issuer()) {
                break;
            }
            next = step(&[&next]);
        }
        let body = Command::new("curl").args(["-s", &next]).output().unwrap();
        assert!(String::from_utf8_lossy(&body.stdout).contains("Signed in"), "callback: {next}");
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}
