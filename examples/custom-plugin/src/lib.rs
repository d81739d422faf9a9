//! A guard written from scratch against the Wardgate SDK.
//!
//! Policy: agents may only touch the tables listed in `allowed_tables`
//! (manifest config, comma-separated); humans are not restricted. Writes by
//! agents go to review. Build: `cargo build --profile plugin --target
//! wasm32-wasip2 -p example-guard`, then copy `example_guard.wasm` as
//! `example-guard.wasm` with `example-guard.toml` into the plugin directory.

use wardgate_sdk::sql::{as_sql, writes_data};
use wardgate_sdk::types::{PrincipalKind, Request, Review, Session, Verdict};

/// The decision, as a plain function: unit-testable without wasmtime.
pub fn decide(session: &Session, request: &Request, allowed: &[&str]) -> Verdict {
    let Some(sql) = as_sql(request) else { return Verdict::Allow };
    if session.identity.principal.kind == PrincipalKind::Human {
        return Verdict::Allow;
    }
    for stmt in &sql.statements {
        for t in stmt.tables_read.iter().chain(stmt.tables_written.iter()) {
            let bare = t.rsplit('.').next().unwrap_or(t);
            if !allowed.contains(&bare) {
                return Verdict::Deny(format!("agents may not use table {t}"));
            }
        }
        if writes_data(stmt) {
            return Verdict::Review(Review {
                reason: "agent writes need a human".into(),
                approver_groups: vec![],
                timeout_secs: 0,
            });
        }
    }
    Verdict::Allow
}

/// The exported guard.
pub struct ExampleGuard;

impl exports::wardgate::plugin::guard::Guest for ExampleGuard {
    fn check(request: Request) -> Verdict {
        // Every client session has one: the host answers once per instance.
        let Some(session) = wardgate_sdk::session() else {
            return Verdict::Deny("example-guard needs a client session".into());
        };
        let allowed = wardgate_sdk::config_get("allowed_tables").unwrap_or_default();
        let allowed: Vec<&str> = allowed.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        decide(session, &request, &allowed)
    }
}

wardgate_sdk::guard_plugin!(ExampleGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use wardgate_sdk::testkit::{human, session, sql, statement};
    use wardgate_sdk::types::StatementKind;

    #[test]
    fn agents_are_kept_to_allowed_tables_and_humans_are_not() {
        let mut s = statement(StatementKind::Select, "SELECT * FROM payroll");
        s.tables_read = vec!["payroll".into()];
        let req = sql(vec![s]);
        let mut sess = session("prod");
        assert!(matches!(decide(&sess, &req, &["orders"]), Verdict::Deny(_)));
        sess.identity.principal = human("ann");
        assert_eq!(decide(&sess, &req, &["orders"]), Verdict::Allow);
    }

    #[test]
    fn agent_writes_go_to_review() {
        let mut s = statement(StatementKind::Insert, "INSERT INTO orders VALUES (1)");
        s.tables_written = vec!["orders".into()];
        assert!(matches!(decide(&session("prod"), &sql(vec![s]), &["orders"]), Verdict::Review(_)));
    }
}
