//! # webhook-sink
//!
//! A Wardgate recorder that POSTs each batch of events to a webhook as
//! newline-delimited ECS JSON (`application/x-ndjson`, one document per
//! event, see [`wardgate_sdk::ecs`]). It reaches the network only through
//! the host's `http-post`, which allows just the URLs granted in the
//! manifest. Any answer but 2xx fails the batch, so the gateway keeps it
//! spooled and retries; `event.id` (`SESSION:SEQ`) lets the receiver drop
//! the duplicates an at-least-once retry can produce.

use wardgate_sdk::ecs::to_ecs;
use wardgate_sdk::types::Event;

/// The body POSTed for a batch.
pub fn ndjson(events: &[Event]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in events {
        body.extend_from_slice(to_ecs(e).to_string().as_bytes());
        body.push(b'\n');
    }
    body
}

/// The exported recorder.
pub struct WebhookSink;

impl exports::wardgate::plugin::recorder::Guest for WebhookSink {
    fn record(events: Vec<Event>) -> Result<(), String> {
        let url = wardgate_sdk::config_get("url").ok_or("webhook-sink: set [config] url in the manifest")?;
        match wardgate_sdk::http_post(&url, "application/x-ndjson", &ndjson(&events))? {
            200..=299 => Ok(()),
            status => Err(format!("webhook answered HTTP {status}")),
        }
    }
}

wardgate_sdk::recorder_plugin!(WebhookSink);

#[cfg(test)]
mod tests {
    use super::*;
    use exports::wardgate::plugin::recorder::Guest;
    use wardgate_sdk::testkit;

    fn event(seq: u64) -> Event {
        Event { seq, at_ms: 1_700_000_000_000, session_id: "s1".into(), kind: "request".into(), body_json: "{}".into() }
    }

    #[test]
    fn a_batch_is_one_ndjson_post_to_the_configured_url() {
        testkit::set_config(&[("url", "https://siem.test/in")]);
        WebhookSink::record(vec![event(1), event(2)]).unwrap();
        let posts = testkit::with_harness(|h| h.posts.clone());
        assert_eq!(posts.len(), 1);
        let (url, ct, body) = &posts[0];
        assert_eq!((url.as_str(), ct.as_str()), ("https://siem.test/in", "application/x-ndjson"));
        let text = String::from_utf8(body.clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"id\":\"s1:2\""), "{text}");
    }

    #[test]
    fn a_non_2xx_answer_or_no_url_fails_the_batch_so_the_host_retries() {
        testkit::set_config(&[("url", "https://siem.test/in")]);
        testkit::with_harness(|h| h.post_answer = Some(Ok(503)));
        assert_eq!(WebhookSink::record(vec![event(1)]).unwrap_err(), "webhook answered HTTP 503");
        testkit::with_harness(|h| h.post_answer = Some(Err("refused".into())));
        assert!(WebhookSink::record(vec![event(1)]).is_err());
        testkit::set_config(&[]);
        assert!(WebhookSink::record(vec![event(1)]).is_err());
    }
}
