//! Counters, rendered in Prometheus text format by the admin API.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::plugins::Registry;
use crate::record::RecordStats;

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions accepted.
    pub sessions_started: AtomicU64,
    /// Sessions open now.
    pub sessions_active: AtomicU64,
    /// Failed authentications (bad credential or no grant).
    pub auth_failures: AtomicU64,
    /// Requests checked by guards.
    pub requests: AtomicU64,
    /// Requests refused.
    pub requests_denied: AtomicU64,
    /// Result rows that went through maskers.
    pub rows_masked: AtomicU64,
}

/// name, help, type, value of a per-plugin metric.
type PluginMetric = (&'static str, &'static str, &'static str, fn(&crate::plugins::LoadedPlugin) -> u64);

/// Render all metrics.
pub fn render(stats: &Stats, registry: &Registry, record: &RecordStats) -> String {
    let mut s = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter("wardgate_sessions_started_total", "Client sessions accepted.", "counter", g(&stats.sessions_started));
    counter("wardgate_sessions_active", "Client sessions open now.", "gauge", g(&stats.sessions_active));
    counter(
        "wardgate_auth_failures_total",
        "Refused credentials or missing grants.",
        "counter",
        g(&stats.auth_failures),
    );
    counter("wardgate_requests_total", "Requests checked by guards.", "counter", g(&stats.requests));
    counter("wardgate_requests_denied_total", "Requests refused.", "counter", g(&stats.requests_denied));
    counter("wardgate_rows_masked_total", "Result rows passed through maskers.", "counter", g(&stats.rows_masked));
    counter("wardgate_record_events_total", "Events written to recordings.", "counter", g(&record.events));
    counter("wardgate_record_write_errors_total", "Recording write errors.", "counter", g(&record.write_errors));
    counter("wardgate_record_spool_backlog", "Events waiting for recorder plugins.", "gauge", g(&record.spooled));
    counter(
        "wardgate_record_spool_dropped_total",
        "Events dropped from a full recorder spool.",
        "counter",
        g(&record.spool_dropped),
    );
    let set = registry.current();
    let per_plugin: [PluginMetric; 3] = [
        ("wardgate_plugin_calls_total", "Plugin calls.", "counter", |p| p.health.calls.load(Ordering::Relaxed)),
        ("wardgate_plugin_failures_total", "Failed plugin calls (denied, fail closed).", "counter", |p| {
            p.health.failures.load(Ordering::Relaxed)
        }),
        ("wardgate_plugin_quarantined", "Plugins quarantined after repeated failures.", "gauge", |p| {
            p.health.quarantined.load(Ordering::Relaxed) as u64
        }),
    ];
    for (name, help, kind, value) in per_plugin {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in set.plugins.values() {
            let _ =
                writeln!(s, "{name}{{plugin=\"{}\",version=\"{}\"}} {}", p.manifest.name, p.manifest.version, value(p));
        }
    }
    let _ = writeln!(s, "# HELP wardgate_plugin_load_errors Plugin files that failed to load.\n# TYPE wardgate_plugin_load_errors gauge\nwardgate_plugin_load_errors {}", set.errors.len());
    s
}
