//! Calling a gateway's admin API from the CLI: where it is, how to trust its
//! certificate, and who you are.

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

/// How to reach the gateway and who you are.
#[derive(Args, Debug)]
pub struct AdminClient {
    /// Admin API of the gateway (http:// on loopback, else https://).
    #[arg(long, env = "WARDGATE_ADMIN_URL", default_value = "http://127.0.0.1:9190")]
    admin_url: String,
    /// PEM file of the CA (or self-signed certificate) to trust for an https:// admin URL.
    #[arg(long, env = "WARDGATE_ADMIN_CA")]
    admin_ca: Option<std::path::PathBuf>,
    /// Your credential (a key or token); default: the token from `wardgate login`.
    #[arg(long, env = "WARDGATE_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,
}

impl AdminClient {
    fn credential(&self) -> anyhow::Result<String> {
        if let Some(c) = &self.credential {
            return Ok(c.clone());
        }
        let l = wardgate::identity::login::current(&wardgate::identity::login::default_token_file(), None)
            .context("no credential: pass --credential, set WARDGATE_CREDENTIAL, or run `wardgate login`")?;
        Ok(l.credential().to_string())
    }

    fn agent(&self) -> anyhow::Result<ureq::Agent> {
        let mut b = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0);
        if let Some(ca) = &self.admin_ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read --admin-ca {}", ca.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate in file", ca.display());
            b = b.tls_config(
                ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(certs.into())).build(),
            );
        }
        Ok(b.build().into())
    }

    /// `METHOD path` with the credential; the JSON answer, or the API's error message.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.admin_url.trim_end_matches('/'));
        let agent = self.agent()?;
        let auth = format!("Bearer {}", self.credential()?);
        let resp = match (method, body) {
            ("POST", b) => agent.post(&url).header("Authorization", &auth).send_json(b.unwrap_or(Value::Null)),
            _ => agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = resp.with_context(|| {
            format!(
                "cannot reach the admin API at {} (is the gateway running? set --admin-url or WARDGATE_ADMIN_URL; for https, --admin-ca)",
                self.admin_url
            )
        })?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{}", v["error"].as_str().unwrap_or(status.as_str()));
        }
        Ok(v)
    }
}
