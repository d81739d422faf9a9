//! Host functions. Inside the sandbox they call the host; in native tests they
//! read and write the thread-local [`crate::testkit`] harness instead.

use crate::host::LogLevel;
use crate::types::Session;

/// Write a line to the gateway's log. Never pass unmasked data.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testkit::with_harness(|h| h.logs.push((level, message.to_string())));
}

/// A value from the manifest's `[config]` table (strings as-is, others as JSON).
pub fn config_get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return crate::host::config_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testkit::with_harness(|h| h.config.get(key).cloned());
}

/// The manifest's whole `[config]` table as a JSON object.
pub fn config_json() -> String {
    #[cfg(target_arch = "wasm32")]
    return crate::host::config_json();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testkit::with_harness(|h| h.config_json.clone());
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testkit::with_harness(|h| h.now_ms);
}

/// Append a line to the output granted in the manifest's `[capabilities]`.
pub fn write_output(line: &str) -> Result<(), String> {
    #[cfg(target_arch = "wasm32")]
    return crate::host::write_output(line);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testkit::with_harness(|h| match &h.output_error {
        Some(e) => Err(e.clone()),
        None => {
            h.output.push(line.to_string());
            Ok(())
        }
    });
}

/// POST `body` to `url` (granted in the manifest's `[capabilities] http`);
/// returns the HTTP status.
pub fn http_post(url: &str, content_type: &str, body: &[u8]) -> Result<u16, String> {
    #[cfg(target_arch = "wasm32")]
    return crate::host::http_post(url, content_type, body);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testkit::with_harness(|h| {
        h.posts.push((url.to_string(), content_type.to_string(), body.to_vec()));
        h.post_answer.clone().unwrap_or(Ok(200))
    });
}

/// The session this instance serves: asked of the host once, then kept (an
/// instance serves one session for its whole life). None in recorders, which
/// serve every session.
pub fn session() -> Option<&'static Session> {
    #[cfg(target_arch = "wasm32")]
    {
        static SESSION: std::sync::OnceLock<Option<Session>> = std::sync::OnceLock::new();
        SESSION.get_or_init(crate::host::current_session).as_ref()
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testkit::with_harness(|h| h.session)
}
