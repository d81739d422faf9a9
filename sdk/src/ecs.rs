//! Recorded events as Elastic Common Schema (ECS) documents: `@timestamp`,
//! `event.action`, `event.outcome`, `user.*`, `source.*`, `session.id`, and the
//! whole Wardgate event under `wardgate`. Shared by the first-party SIEM sinks.

use serde_json::{json, Map, Value};

use crate::types::Event;

/// Convert one event to an ECS-style JSON object.
pub fn to_ecs(event: &Event) -> Value {
    let body: Value = serde_json::from_str(&event.body_json).unwrap_or_else(|_| json!({ "raw": event.body_json }));
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), Value::String(rfc3339_ms(event.at_ms)));
    doc.insert(
        "event".into(),
        json!({
            "action": event.kind,
            "dataset": "wardgate.session",
            "kind": "event",
            "sequence": event.seq,
            // Delivery is at least once: session id + sequence identify an event.
            "id": format!("{}:{}", event.session_id, event.seq),
            "outcome": outcome(&event.kind, &body),
        }),
    );
    doc.insert("session".into(), json!({ "id": event.session_id }));
    if let Some(p) = body.get("principal") {
        doc.insert(
            "user".into(),
            json!({
                "id": p.get("subject"),
                "name": p.get("name"),
                "email": p.get("email"),
                "roles": p.get("groups"),
            }),
        );
    }
    if let Some(addr) = body.get("client_addr").and_then(Value::as_str) {
        let ip = addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(addr);
        doc.insert("source".into(), json!({ "address": addr, "ip": ip.trim_matches(['[', ']']) }));
    }
    doc.insert("wardgate".into(), body);
    Value::Object(doc)
}

fn outcome(kind: &str, body: &Value) -> &'static str {
    match body.get("decision").and_then(Value::as_str) {
        Some("allow") => "success",
        Some("deny") => "failure",
        Some(_) => "unknown",
        None if kind.ends_with("error") || kind.ends_with("denied") => "failure",
        None => "unknown",
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, (rem / 60) % 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
