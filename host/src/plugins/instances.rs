//! Per-session plugin instances and the fail-closed call wrappers.
//!
//! Each session gets its own instance of each plugin it uses (never shared,
//! so one session never sees another's plugin memory), created lazily from the
//! plugin's `InstancePre` in the pooling allocator. After a trap wasmtime
//! poisons an instance, so it is dropped and the next call gets a fresh one.
//! Every failure — trap, deadline, memory limit, missing or quarantined plugin
//! — comes back as a [`CallError`] naming the plugin; callers deny.
//!
//! Hot reload: [`SessionPlugins::refresh`] is called at the start of each
//! request. If the registry swapped in a new set, instances of plugins whose
//! version changed are dropped and the new version is used from this request
//! on; a request already running finishes on the version it started with.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use super::bindings::exports::wardgate::plugin::{guard, masker, recorder};
use super::bindings::wardgate::plugin::types::{Column, Event, MaskedBatch, Request, RowBatch, Session, Verdict};
use super::engine::EPOCH_TICK;
use super::host_api::PluginState;
use super::loader::LoadedPlugin;
use super::registry::{PluginEvent, PluginSet, Registry};

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, out-of-bounds, ...).
    Trap,
    /// The call ran past its deadline.
    Deadline,
    /// The guest hit its memory limit.
    Memory,
    /// The plugin is quarantined after repeated failures.
    Quarantined,
    /// A plugin the connection requires is not loaded.
    Missing,
    /// Instantiation failed (pool exhausted, start function trapped).
    Instantiate,
    /// The plugin returned an error value.
    Refused,
}

/// A failed plugin call. Its `Display` is what clients and logs see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} {}", self.describe())]
pub struct CallError {
    /// Plugin name.
    pub plugin: String,
    /// What happened.
    pub kind: FailureKind,
    /// Details (wasmtime's message, the plugin's error string).
    pub detail: String,
}

impl CallError {
    fn describe(&self) -> String {
        match self.kind {
            FailureKind::Trap => format!("crashed ({})", self.detail),
            FailureKind::Deadline => format!("exceeded its deadline of {}", self.detail),
            FailureKind::Memory => format!("exceeded its memory limit of {}", self.detail),
            FailureKind::Quarantined => "is quarantined after repeated failures".to_string(),
            FailureKind::Missing => format!("is required but not loaded ({})", self.detail),
            FailureKind::Instantiate => format!("could not be started ({})", self.detail),
            FailureKind::Refused => format!("returned an error: {}", self.detail),
        }
    }
}

struct Live {
    plugin: Arc<LoadedPlugin>,
    store: Store<PluginState>,
    guard: Option<guard::Guest>,
    masker: Option<masker::Guest>,
    recorder: Option<recorder::Guest>,
}

/// The plugins of one session.
pub struct SessionPlugins {
    registry: Arc<Registry>,
    set: Arc<PluginSet>,
    session_id: Arc<str>,
    session: Option<Arc<Session>>,
    connection: String,
    protocol: &'static str,
    required: Vec<String>,
    live: HashMap<String, Live>,
}

fn plays(p: &LoadedPlugin, role: Role) -> bool {
    match role {
        Role::Guard => p.exports.guard && p.manifest.plays("guard"),
        Role::Masker => p.exports.masker && p.manifest.plays("masker"),
        Role::Recorder => p.exports.recorder && p.manifest.plays("recorder"),
    }
}

/// Which export to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// guard
    Guard,
    /// masker
    Masker,
    /// recorder
    Recorder,
}

impl SessionPlugins {
    /// Plugins for a session on `connection` over `protocol`; `required` names
    /// plugins the connection cannot run without.
    pub fn new(
        registry: Arc<Registry>,
        session_id: &str,
        connection: &str,
        protocol: &'static str,
        required: Vec<String>,
    ) -> Self {
        let set = registry.current();
        SessionPlugins {
            registry,
            set,
            session_id: Arc::from(session_id),
            session: None,
            connection: connection.to_string(),
            protocol,
            required,
            live: HashMap::new(),
        }
    }

    /// The session instances answer `host.current-session` with (client sessions;
    /// recorder instances serve every session and have none).
    pub fn serving(mut self, session: Session) -> Self {
        self.session = Some(Arc::new(session));
        self
    }

    /// Pick up a newly swapped plugin set (call at the start of each request).
    pub fn refresh(&mut self) {
        if self.registry.generation() == self.set.generation {
            return;
        }
        self.set = self.registry.current();
        let set = &self.set;
        self.live.retain(|name, l| set.plugins.get(name).is_some_and(|p| Arc::ptr_eq(p, &l.plugin)));
    }

    /// Generation of the set this session uses.
    pub fn generation(&self) -> u64 {
        self.set.generation
    }

    /// Plugins that apply to this session and export `role`, in call order.
    pub fn with_role(&self, role: Role) -> Vec<Arc<LoadedPlugin>> {
        self.set
            .ordered()
            .into_iter()
            .filter(|p| p.manifest.applies_to(&self.connection, self.protocol) && plays(p, role))
            .collect()
    }

    /// Plugins playing `role` on this protocol, whichever connections they
    /// apply to (the recording spool serves every session from one instance
    /// per sink and matches each session's connection itself).
    pub fn with_role_any_connection(&self, role: Role) -> Vec<Arc<LoadedPlugin>> {
        self.set.ordered().into_iter().filter(|p| p.manifest.serves(self.protocol) && plays(p, role)).collect()
    }

    /// The required plugins that are loaded, and an error for the first one
    /// that is not. Changes only with the plugin set (see [`Self::generation`]).
    pub fn resolve_required(&self) -> (Vec<Arc<LoadedPlugin>>, Option<CallError>) {
        let mut found = Vec::with_capacity(self.required.len());
        let mut missing = None;
        for name in &self.required {
            match self.set.plugins.get(name) {
                Some(p) => found.push(p.clone()),
                None => {
                    missing.get_or_insert_with(|| CallError {
                        plugin: name.clone(),
                        kind: FailureKind::Missing,
                        detail: self
                            .set
                            .errors
                            .get(name)
                            .cloned()
                            .unwrap_or_else(|| format!("no {name}.wasm in the plugin directory")),
                    });
                }
            }
        }
        (found, missing)
    }

    /// Ask a guard.
    pub fn check(&mut self, plugin: &Arc<LoadedPlugin>, request: &Request) -> Result<Verdict, CallError> {
        self.call(plugin, |live| match &live.guard {
            Some(g) => g.call_check(&mut live.store, request).map(Ok),
            None => Ok(Err("does not export guard".to_string())),
        })
    }

    /// Ask a masker which of `columns` it reads (one answer per column).
    pub fn wants_columns(&mut self, plugin: &Arc<LoadedPlugin>, columns: &[Column]) -> Result<Vec<bool>, CallError> {
        self.call_masker(plugin, |m, store| m.call_wants_columns(store, columns).map(Ok))
    }

    /// Ask a masker to mask a row batch.
    pub fn mask_rows(&mut self, plugin: &Arc<LoadedPlugin>, batch: &RowBatch) -> Result<MaskedBatch, CallError> {
        self.call_masker(plugin, |m, store| m.call_mask_rows(store, batch))
    }

    /// Ask a masker to mask free text.
    pub fn mask_text(&mut self, plugin: &Arc<LoadedPlugin>, text: &str) -> Result<String, CallError> {
        self.call_masker(plugin, |m, store| m.call_mask_text(store, text))
    }

    /// One of the masker interface's functions, through [`Self::call`].
    fn call_masker<R>(
        &mut self,
        plugin: &Arc<LoadedPlugin>,
        f: impl FnOnce(&masker::Guest, &mut Store<PluginState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallError> {
        self.call(plugin, |live| match &live.masker {
            Some(m) => f(m, &mut live.store),
            None => Ok(Err("does not export masker".to_string())),
        })
    }

    /// Deliver events to a recorder.
    pub fn record(&mut self, plugin: &Arc<LoadedPlugin>, events: &[Event]) -> Result<(), CallError> {
        self.call(plugin, |live| match &live.recorder {
            Some(r) => r.call_record(&mut live.store, events),
            None => Ok(Err("does not export recorder".to_string())),
        })
    }

    fn instantiate(&self, plugin: &Arc<LoadedPlugin>) -> wasmtime::Result<Live> {
        let state = PluginState::new(
            plugin.context.clone(),
            self.session_id.clone(),
            self.session.clone(),
            plugin.manifest.memory_bytes,
        );
        let mut store = Store::new(self.registry.engine().engine(), state);
        store.limiter(|s| s);
        store.set_epoch_deadline(deadline_ticks(plugin.manifest.call_timeout));
        store.epoch_deadline_trap();
        let instance = plugin.pre.instantiate(&mut store)?;
        let guard = plugin.guard.as_ref().map(|i| i.load(&mut store, &instance)).transpose()?;
        let masker = plugin.masker.as_ref().map(|i| i.load(&mut store, &instance)).transpose()?;
        let recorder = plugin.recorder.as_ref().map(|i| i.load(&mut store, &instance)).transpose()?;
        Ok(Live { plugin: plugin.clone(), store, guard, masker, recorder })
    }

    fn call<R>(
        &mut self,
        plugin: &Arc<LoadedPlugin>,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallError> {
        let name = plugin.manifest.name.as_str();
        if plugin.health.quarantined.load(Ordering::Relaxed) {
            return Err(CallError { plugin: name.to_string(), kind: FailureKind::Quarantined, detail: String::new() });
        }
        plugin.health.calls.fetch_add(1, Ordering::Relaxed);
        // An instance of another version of the plugin (hot-swapped) is stale.
        let current = self.live.get(name).is_some_and(|l| Arc::ptr_eq(&l.plugin, plugin));
        if !current {
            self.live.remove(name);
            match self.instantiate(plugin) {
                Ok(l) => {
                    self.live.insert(name.to_string(), l);
                }
                Err(e) => {
                    let err = CallError {
                        plugin: name.to_string(),
                        kind: FailureKind::Instantiate,
                        detail: format!("{e:#}"),
                    };
                    self.failed(plugin, &err);
                    return Err(err);
                }
            }
        }
        let live = self.live.get_mut(name).expect("inserted above");
        live.store.set_epoch_deadline(deadline_ticks(plugin.manifest.call_timeout));
        live.store.data_mut().memory_refused = false;
        let started = Instant::now();
        // A panic in a host function during the call (wasmtime propagates them;
        // WASI's sync stdio, for one, panics inside a tokio runtime when a guest
        // writes its panic message) must not take the session down: it is a
        // trap like any other, and the instance is discarded.
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(live))) {
            Ok(o) => o,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(wasmtime::Error::msg(format!("host function failed during the call: {}", first_line(&msg))))
            }
        };
        match outcome {
            Ok(Ok(r)) => {
                plugin.health.consecutive_failures.store(0, Ordering::Relaxed);
                Ok(r)
            }
            Ok(Err(msg)) => {
                let err = CallError {
                    plugin: name.to_string(),
                    kind: FailureKind::Refused,
                    detail: msg.chars().take(500).collect(),
                };
                self.failed(plugin, &err);
                Err(err)
            }
            Err(e) => {
                let memory_refused = live.store.data().memory_refused;
                // The instance may be poisoned: drop it; the next call re-instantiates.
                self.live.remove(name);
                let kind = if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    FailureKind::Deadline
                } else if memory_refused {
                    FailureKind::Memory
                } else {
                    FailureKind::Trap
                };
                let detail = match kind {
                    FailureKind::Deadline => {
                        format!(
                            "{} ms (stopped after {} ms)",
                            plugin.manifest.call_timeout.as_millis(),
                            started.elapsed().as_millis()
                        )
                    }
                    FailureKind::Memory => format!("{} MiB", plugin.manifest.memory_bytes >> 20),
                    // The root cause says what happened (a wasm trap, a host refusal);
                    // the outer error is wasmtime's "error while executing at" frame.
                    _ => first_line(&format!("{}", e.root_cause())),
                };
                let err = CallError { plugin: name.to_string(), kind, detail };
                self.failed(plugin, &err);
                Err(err)
            }
        }
    }

    fn failed(&self, plugin: &Arc<LoadedPlugin>, err: &CallError) {
        plugin.health.failures.fetch_add(1, Ordering::Relaxed);
        let n = plugin.health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        self.registry.emit(PluginEvent::CallFailed {
            name: err.plugin.clone(),
            session: self.session_id.to_string(),
            error: err.to_string(),
        });
        if n >= self.registry.quarantine_after && !plugin.health.quarantined.swap(true, Ordering::Relaxed) {
            self.registry.emit(PluginEvent::Quarantined { name: err.plugin.clone(), failures: n });
        }
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() as u64).div_ceil(EPOCH_TICK.as_micros() as u64).max(1) + 1
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}
