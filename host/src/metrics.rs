//! Counters, rendered in Prometheus text format by the admin API.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use crate::admin::access::AdminStats;
use crate::plugins::Registry;
use crate::record::RecordStats;
use crate::tls::reload::CertStore;

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
    /// Times freed heap was handed back to the OS (see `crate::memory`).
    pub heap_trims: AtomicU64,
}

/// name, help, type, value of a per-plugin metric.
type PluginMetric = (&'static str, &'static str, &'static str, fn(&crate::plugins::LoadedPlugin) -> u64);

/// Where the metrics come from.
pub struct Sources<'a> {
    /// Gateway counters.
    pub stats: &'a Stats,
    /// Plugins.
    pub registry: &'a Registry,
    /// Recording.
    pub record: &'a RecordStats,
    /// Admin listener.
    pub admin: &'a AdminStats,
    /// Listener certificates.
    pub certs: &'a [Arc<CertStore>],
    /// Sessions open now on each session worker thread (empty without a
    /// PostgreSQL listener).
    pub workers: &'a [usize],
}

/// Render all metrics.
pub fn render(src: &Sources<'_>) -> String {
    let Sources { stats, registry, record, admin, certs, workers } = src;
    let mut s = String::new();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let sum = |f: fn(&CertStore) -> &AtomicU64| certs.iter().map(|c| g(f(c))).sum::<u64>();
    let (c, gauge) = ("counter", "gauge");
    let gateway: [(&str, &str, &str, u64); 20] = [
        ("wardgate_sessions_started_total", "Client sessions accepted.", c, g(&stats.sessions_started)),
        ("wardgate_sessions_active", "Client sessions open now.", gauge, g(&stats.sessions_active)),
        ("wardgate_auth_failures_total", "Refused credentials or missing grants.", c, g(&stats.auth_failures)),
        ("wardgate_requests_total", "Requests checked by guards.", c, g(&stats.requests)),
        ("wardgate_requests_denied_total", "Requests refused.", c, g(&stats.requests_denied)),
        ("wardgate_rows_masked_total", "Result rows passed through maskers.", c, g(&stats.rows_masked)),
        (
            "wardgate_heap_trims_total",
            "Times freed heap was handed back to the OS after a burst of sessions ended.",
            c,
            g(&stats.heap_trims),
        ),
        ("wardgate_record_events_total", "Events written to recordings.", c, g(&record.events)),
        ("wardgate_record_write_errors_total", "Recording write errors.", c, g(&record.write_errors)),
        (
            "wardgate_record_sink_backlog_bytes",
            "Bytes of recordings not yet delivered to every recorder plugin.",
            gauge,
            g(&record.sink_backlog_bytes),
        ),
        (
            "wardgate_record_sink_backlog_sessions",
            "Sessions with events not yet delivered to every recorder plugin.",
            gauge,
            g(&record.sink_backlog_sessions),
        ),
        ("wardgate_record_sink_delivered_total", "Events delivered to recorder plugins.", c, g(&record.sink_delivered)),
        (
            "wardgate_record_sink_failures_total",
            "Failed deliveries to recorder plugins (kept and retried).",
            c,
            g(&record.sink_failures),
        ),
        ("wardgate_record_archive_pending", "Closed recordings not yet archived.", gauge, g(&record.archive_pending)),
        (
            "wardgate_record_retention_removed_total",
            "Recordings removed by retention.",
            c,
            g(&record.retention_removed),
        ),
        (
            "wardgate_admin_requests_total",
            "Admin API calls authenticated, authorized and recorded.",
            c,
            g(&admin.allowed),
        ),
        (
            "wardgate_admin_refused_total",
            "Admin API calls refused (credential, role or cross-site).",
            c,
            g(&admin.refused),
        ),
        (
            "wardgate_tls_cert_reloads_total",
            "Listener certificates reloaded after their files changed.",
            c,
            sum(|c| &c.reloads),
        ),
        (
            "wardgate_tls_cert_reload_failures_total",
            "Changed certificate files refused (the previous certificate stayed in service).",
            c,
            sum(|c| &c.reload_failures),
        ),
        (
            "wardgate_plugin_dir_reads_total",
            "Times the plugin directory was read (start-up, then after each change).",
            c,
            registry.reloads(),
        ),
    ];
    for (name, help, kind, v) in gateway {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    // How evenly sessions spread over the worker threads (a session stays on
    // the worker it started on).
    let name = "wardgate_worker_sessions";
    let _ = writeln!(s, "# HELP {name} Client sessions open now on each session worker thread.\n# TYPE {name} gauge");
    for (i, n) in workers.iter().enumerate() {
        let _ = writeln!(s, "{name}{{worker=\"{i}\"}} {n}");
    }
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
