//! `wardgate approvals list|show|approve|deny` against a gateway's admin API.

use std::process::ExitCode;

use clap::Subcommand;

use super::admin_client::AdminClient as Access;
use serde_json::Value;

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
