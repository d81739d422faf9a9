//! What a plugin instance's store holds, and the `host` interface it imports.

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::wardgate::plugin::host::{Host, LogLevel};
use super::bindings::wardgate::plugin::types::Session;
use super::manifest::OutputTarget;

/// A granted output, shared by all instances of one plugin version.
#[derive(Debug)]
pub enum Output {
    /// Gateway stdout.
    Stdout,
    /// Gateway stderr.
    Stderr,
    /// An append-only file.
    File(Mutex<std::fs::File>),
}

impl Output {
    /// Open the target (files in append mode).
    pub fn open(target: &OutputTarget, state_dir: &std::path::Path) -> std::io::Result<Output> {
        Ok(match target {
            OutputTarget::Stdout => Output::Stdout,
            OutputTarget::Stderr => Output::Stderr,
            OutputTarget::File(p) => {
                let path = if p.is_absolute() { p.clone() } else { state_dir.join(p) };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Output::File(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?))
            }
        })
    }

    fn write_line(&self, line: &str) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match self {
            Output::Stdout => std::io::stdout().lock().write_all(&buf),
            Output::Stderr => std::io::stderr().lock().write_all(&buf),
            Output::File(f) => f.lock().write_all(&buf),
        }
    }
}

/// What the host knows about the plugin behind an instance.
#[derive(Debug)]
pub struct PluginContext {
    /// Plugin name, for logs.
    pub name: String,
    /// `[config]` as JSON.
    pub config_json: String,
    /// `[config]` values.
    pub config_values: std::collections::BTreeMap<String, String>,
    /// Granted output.
    pub output: Option<Output>,
    /// URLs granted to `http-post`, and the client that reaches them (made
    /// once per plugin version; deadline = the plugin's call deadline).
    pub http: Vec<String>,
    /// Present when `http` is not empty.
    pub http_agent: Option<ureq::Agent>,
}

/// Store data of one plugin instance.
pub struct PluginState {
    /// Plugin this instance belongs to.
    pub plugin: Arc<PluginContext>,
    /// Session the instance serves (for log lines).
    pub session_id: Arc<str>,
    /// The session as `host.current-session` answers it (none for recorders, which
    /// serve every session).
    pub session: Option<Arc<Session>>,
    limits: StoreLimits,
    /// Set when the memory limit refused a growth during the current call.
    pub memory_refused: bool,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    /// State with a memory ceiling and an empty WASI context: no files, no
    /// environment, no sockets, no inherited stdio.
    pub fn new(
        plugin: Arc<PluginContext>,
        session_id: Arc<str>,
        session: Option<Arc<Session>>,
        memory_bytes: usize,
    ) -> Self {
        PluginState {
            plugin,
            session_id,
            session,
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            memory_refused: false,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

impl ResourceLimiter for PluginState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if !ok {
            self.memory_refused = true;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl super::bindings::wardgate::plugin::types::Host for PluginState {}

impl Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        // Cap what a plugin can push into our logs per line.
        let message: String = message.chars().take(2048).collect();
        let plugin = self.plugin.name.as_str();
        let session = &*self.session_id;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, session, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, session, "{message}"),
            LogLevel::Info => tracing::info!(plugin, session, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, session, "{message}"),
            LogLevel::Error => tracing::error!(plugin, session, "{message}"),
        }
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.plugin.config_values.get(&key).cloned()
    }

    fn config_json(&mut self) -> String {
        self.plugin.config_json.clone()
    }

    fn now_ms(&mut self) -> u64 {
        crate::util::now_ms()
    }

    fn current_session(&mut self) -> Option<Session> {
        self.session.as_deref().cloned()
    }

    fn http_post(&mut self, url: String, content_type: String, body: Vec<u8>) -> Result<u16, String> {
        let m = &self.plugin;
        let agent = match &m.http_agent {
            Some(a) if super::manifest::http_granted(&m.http, &url) => a,
            _ => {
                return Err(format!(
                    "{url} is not granted: add it to [capabilities] http in the manifest of {}",
                    m.name
                ))
            }
        };
        agent
            .post(&url)
            .header("content-type", &content_type)
            .send(&body[..])
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("POST {url}: {e}"))
    }

    fn write_output(&mut self, line: String) -> Result<(), String> {
        match &self.plugin.output {
            None => Err("no output capability granted: add [capabilities] output = \"...\" to the manifest".into()),
            Some(o) => o.write_line(&line).map_err(|e| format!("output failed: {e}")),
        }
    }
}
