//! # jsonl-sink
//!
//! A Wardgate recorder that turns each event into one JSON line with
//! Elastic Common Schema field names (`@timestamp`, `event.action`,
//! `user.name`, `source.address`, ...) and writes it through the `output`
//! capability its manifest was granted (a file, stdout or stderr). It never
//! opens files itself: the sandbox has no filesystem.

use wardgate_sdk::ecs::to_ecs;
use wardgate_sdk::types::Event;

/// The exported recorder.
pub struct JsonlSink;

impl exports::wardgate::plugin::recorder::Guest for JsonlSink {
    fn record(events: Vec<Event>) -> Result<(), String> {
        for e in &events {
            wardgate_sdk::write_output(&to_ecs(e).to_string())?;
        }
        Ok(())
    }
}

wardgate_sdk::recorder_plugin!(JsonlSink);

#[cfg(test)]
mod tests {
    use super::*;
    use exports::wardgate::plugin::recorder::Guest;
    use serde_json::Value;
    use wardgate_sdk::testkit;

    fn event(kind: &str, body: &str) -> Event {
        Event { seq: 3, at_ms: 1_700_000_000_123, session_id: "s1".into(), kind: kind.into(), body_json: body.into() }
    }

    #[test]
    fn events_become_ecs_lines_through_the_output_capability() {
        testkit::set_config(&[]);
        let body = r#"{"principal":{"subject":"sa:bot","name":"bot","groups":["agents"]},"client_addr":"127.0.0.1:5000","decision":"deny"}"#;
        JsonlSink::record(vec![event("verdict", body)]).unwrap();
        let lines = testkit::with_harness(|h| h.output.clone());
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["event"]["action"], "verdict");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["user"]["name"], "bot");
        assert_eq!(v["source"]["ip"], "127.0.0.1");
        assert_eq!(v["session"]["id"], "s1");
    }

    #[test]
    fn a_failing_output_fails_the_batch_so_the_host_retries() {
        testkit::set_config(&[]);
        testkit::with_harness(|h| h.output_error = Some("no output granted".into()));
        assert!(JsonlSink::record(vec![event("request", "{}")]).is_err());
    }
}
