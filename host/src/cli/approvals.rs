//! `wardgate approvals list|show|approve|deny` against a gateway's admin API.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;

/// How to reach the gateway and who you are.
#[derive(Args, Debug)]
pub struct Access {
    /// Admin API of the gateway.
    #[arg(long, env = "WARDGATE_ADMIN_URL", default_value = "http://127.0.0.1:9190")]
    admin_url: String,
    /// Your credential (a key or token); default: the token from `wardgate login`.
    #[arg(long, env = "WARDGATE_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,
}

/// `wardgate approvals …`
#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Requests (pending by default).
    List {
        /// pending, approved, denied, expired, withdrawn, executed or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[command(flatten)]
        access: Access,
    },
    /// One request in full.
    Show {
        /// Request id (apr_…).
        id: String,
        #[command(flatten)]
        access: Access,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        access: Access,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: String,
        /// Why (required, shown to the requester).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        access: Access,
    },
}

impl Access {
    fn credential(&self) -> anyhow::Result<String> {
        if let Some(c) = &self.credential {
            return Ok(c.clone());
        }
        let l = wardgate::identity::login::current(&wardgate::identity::login::default_token_file(), None)
            .context("no credential: pass --credential, set WARDGATE_CREDENTIAL, or run `wardgate login`")?;
        Ok(l.credential().to_string())
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.admin_url.trim_end_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let auth = format!("Bearer {}", self.credential()?);
        let resp = match (method, body) {
            ("POST", b) => agent.post(&url).header("Authorization", &auth).send_json(b.unwrap_or(Value::Null)),
            _ => agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = resp.with_context(|| {
            format!(
                "cannot reach the admin API at {} (is the gateway running? set --admin-url or WARDGATE_ADMIN_URL)",
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

fn ms(v: &Value) -> String {
    v.as_u64().map(wardgate::util::format_rfc3339_ms).unwrap_or_else(|| "-".into())
}

fn print_one(r: &Value) {
    println!("{}  {}", r["id"].as_str().unwrap_or(""), r["status"].as_str().unwrap_or("").to_uppercase());
    println!("  who:        {}", r["summary"].as_str().unwrap_or(""));
    println!(
        "  connection: {}   session: {}",
        r["connection"].as_str().unwrap_or(""),
        r["session_id"].as_str().unwrap_or("")
    );
    println!("  why:        {}: {}", r["plugin"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""));
    if let Some(j) = r["justification"].as_str() {
        println!("  justified:  {j}");
    }
    let groups: Vec<&str> =
        r["approver_groups"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    println!("  approvers:  {} (quorum {})", groups.join(", "), r["quorum"]);
    println!("  created:    {}   expires: {}", ms(&r["created_at_ms"]), ms(&r["expires_at_ms"]));
    for v in r["votes"].as_array().into_iter().flatten() {
        println!(
            "  vote:       {} by {}{}{}",
            v["decision"].as_str().unwrap_or(""),
            v["approver"]["name"].as_str().unwrap_or(""),
            v["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default(),
            if v["break_glass"].as_bool() == Some(true) { " [BREAK-GLASS]" } else { "" }
        );
    }
    println!("  statement:\n    {}", r["statement"].as_str().unwrap_or("").replace('\n', "\n    "));
}

/// Run an `approvals` subcommand.
pub fn run(cmd: ApprovalsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ApprovalsCmd::List { status, access } => {
            let list = access.call("GET", &format!("/api/approvals?status={status}"), None)?;
            let list = list.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                eprintln!("no {status} approval requests");
            }
            for r in &list {
                let stmt: String =
                    r["statement"].as_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
                println!(
                    "{}  {:<9} {}  {}  {}",
                    r["id"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["summary"].as_str().unwrap_or(""),
                    r["connection"].as_str().unwrap_or(""),
                    stmt.chars().take(80).collect::<String>()
                );
            }
        }
        ApprovalsCmd::Show { id, access } => print_one(&access.call("GET", &format!("/api/approvals/{id}"), None)?),
        ApprovalsCmd::Approve { id, reason, access } => {
            let r = access.call(
                "POST",
                &format!("/api/approvals/{id}/approve"),
                Some(serde_json::json!({"reason": reason})),
            )?;
            eprintln!("{id}: {}", r["status"].as_str().unwrap_or(""));
        }
        ApprovalsCmd::Deny { id, reason, access } => {
            let r = access.call(
                "POST",
                &format!("/api/approvals/{id}/deny"),
                Some(serde_json::json!({"reason": reason})),
            )?;
            eprintln!("{id}: {}", r["status"].as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}
