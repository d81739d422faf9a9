//! # sql-guard
//!
//! A Wardgate guard over host-parsed SQL. By default it denies DROP, TRUNCATE,
//! `ALTER ... DROP`, UPDATE/DELETE without WHERE, GRANT/REVOKE, `COPY ...
//! PROGRAM` and file/backend-control functions, and routes DO blocks, CALL,
//! unclassified and unparsable statements to human review. Everything is
//! configurable per connection in the manifest's `[config]` table.

pub mod rules;

use std::sync::OnceLock;

use rules::Guard;
use wardgate_sdk::host::LogLevel;
use wardgate_sdk::types::{Request, Verdict};

fn guard() -> &'static Result<Guard, String> {
    static GUARD: OnceLock<Result<Guard, String>> = OnceLock::new();
    GUARD.get_or_init(|| {
        let g = Guard::from_json(&wardgate_sdk::config_json());
        if let Err(e) = &g {
            wardgate_sdk::log(LogLevel::Error, e);
        }
        g
    })
}

/// The exported guard.
pub struct SqlGuard;

impl exports::wardgate::plugin::guard::Guest for SqlGuard {
    fn check(request: Request) -> Verdict {
        let Some(session) = wardgate_sdk::session() else {
            return Verdict::Deny("sql-guard needs a client session".into());
        };
        match guard() {
            Ok(g) => g.check(session, &request),
            // Fail closed: a broken configuration denies everything.
            Err(e) => Verdict::Deny(format!("sql-guard is misconfigured: {e}")),
        }
    }
}

wardgate_sdk::guard_plugin!(SqlGuard);
