//! The live plugin set and hot reload.
//!
//! The set is immutable and swapped atomically ([`arc_swap`]). Sessions hold a
//! snapshot and look at the generation number at the start of each request:
//! a request that has started finishes on the versions it started with, the
//! next one uses the new set (see [`super::instances`]). A new version is
//! compiled and validated on the watcher thread, off the data path; a version
//! that fails to load never replaces a working one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;

use super::engine::PluginEngine;
use super::loader::{load, LoadedPlugin};

/// Something operators must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginEvent {
    /// A plugin version went live.
    Loaded {
        /// Plugin.
        name: String,
        /// Version.
        version: String,
        /// Content hash.
        hash: String,
        /// Replaced an earlier version.
        replaced: bool,
    },
    /// A new file was refused; the previous version (if any) stays.
    Rejected {
        /// Plugin (file stem).
        name: String,
        /// Why.
        error: String,
    },
    /// The plugin's files were removed.
    Removed {
        /// Plugin.
        name: String,
    },
    /// A call failed (fail closed).
    CallFailed {
        /// Plugin.
        name: String,
        /// Session.
        session: String,
        /// What happened.
        error: String,
    },
    /// Too many failures in a row: the plugin is quarantined.
    Quarantined {
        /// Plugin.
        name: String,
        /// Failures in a row.
        failures: u32,
    },
}

/// An immutable set of loaded plugins.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Increases with every swap.
    pub generation: u64,
    /// Plugins by name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Files that failed to load and have no working version, by name.
    pub errors: BTreeMap<String, String>,
}

impl PluginSet {
    /// Plugins in call order (manifest `order`, then name).
    pub fn ordered(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut v: Vec<_> = self.plugins.values().cloned().collect();
        v.sort_by(|a, b| a.manifest.order.cmp(&b.manifest.order).then_with(|| a.manifest.name.cmp(&b.manifest.name)));
        v
    }
}

type Listener = Box<dyn Fn(&PluginEvent) + Send + Sync>;

/// The plugin registry of a gateway.
pub struct Registry {
    engine: Arc<PluginEngine>,
    dir: PathBuf,
    state_dir: PathBuf,
    current: ArcSwap<PluginSet>,
    generation: AtomicU64,
    swap_lock: Mutex<()>,
    listeners: Mutex<Vec<Listener>>,
    /// Failures in a row before a plugin is quarantined.
    pub quarantine_after: u32,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// Times the directory was read (start-up, then after each change).
    reloads: AtomicU64,
}

impl Registry {
    /// Load every `*.wasm` in `dir`. Files that fail are reported in the set's
    /// `errors` and as events, and the gateway starts with the rest.
    pub fn open(engine: Arc<PluginEngine>, dir: &Path, state_dir: &Path) -> std::io::Result<Arc<Registry>> {
        std::fs::create_dir_all(dir)?;
        let reg = Arc::new(Registry {
            engine,
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            current: ArcSwap::from_pointee(PluginSet::default()),
            generation: AtomicU64::new(0),
            swap_lock: Mutex::new(()),
            listeners: Mutex::new(Vec::new()),
            quarantine_after: 5,
            watcher: Mutex::new(None),
            reloads: AtomicU64::new(0),
        });
        let names = reg.plugin_names()?;
        reg.reload_names(&names);
        Ok(reg)
    }

    /// Subscribe to plugin events.
    pub fn on_event(&self, f: impl Fn(&PluginEvent) + Send + Sync + 'static) {
        self.listeners.lock().push(Box::new(f));
    }

    /// Tell every listener (and the log).
    pub fn emit(&self, event: PluginEvent) {
        match &event {
            PluginEvent::Loaded { name, version, hash, replaced } => {
                tracing::info!(plugin = %name, %version, hash = &hash[..12], replaced, "plugin loaded")
            }
            PluginEvent::Rejected { name, error } => tracing::error!(plugin = %name, "plugin refused: {error}"),
            PluginEvent::Removed { name } => tracing::info!(plugin = %name, "plugin removed"),
            PluginEvent::CallFailed { name, session, error } => {
                tracing::warn!(plugin = %name, session = %session, "plugin call failed: {error}")
            }
            PluginEvent::Quarantined { name, failures } => {
                tracing::error!(plugin = %name, failures, "plugin quarantined after repeated failures; requests it covers are denied until it is replaced")
            }
        }
        for l in self.listeners.lock().iter() {
            l(&event);
        }
    }

    /// Times the plugin directory was read (start-up, then after each change).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The current set.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    /// The current generation (cheap; no refcount traffic).
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    fn plugin_names(&self) -> std::io::Result<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "wasm") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    names.insert(stem.to_string());
                }
            }
        }
        Ok(names)
    }

    /// Reload the named plugins from disk and swap once for all of them.
    pub fn reload_names(&self, names: &BTreeSet<String>) {
        let _guard = self.swap_lock.lock();
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let old = self.current.load_full();
        let mut plugins = old.plugins.clone();
        let mut errors = old.errors.clone();
        let mut events = Vec::new();
        let mut changed = false;
        for name in names {
            let wasm = self.dir.join(format!("{name}.wasm"));
            if !wasm.exists() {
                errors.remove(name);
                if plugins.remove(name).is_some() {
                    changed = true;
                    events.push(PluginEvent::Removed { name: name.clone() });
                }
                continue;
            }
            // Unchanged bytes and manifest: nothing to do (editors touch files).
            match load(&self.engine, &wasm, &self.state_dir) {
                Ok(p) => {
                    if let Some(prev) = plugins.get(name) {
                        if prev.hash == p.hash
                            && prev.manifest.digest == p.manifest.digest
                            && !prev.health.quarantined.load(Ordering::Relaxed)
                        {
                            errors.remove(name);
                            continue;
                        }
                    }
                    events.push(PluginEvent::Loaded {
                        name: name.clone(),
                        version: p.manifest.version.clone(),
                        hash: p.hash.clone(),
                        replaced: plugins.contains_key(name),
                    });
                    errors.remove(name);
                    plugins.insert(name.clone(), Arc::new(p));
                    changed = true;
                }
                Err(e) => {
                    let msg = e.to_string();
                    events.push(PluginEvent::Rejected { name: name.clone(), error: msg.clone() });
                    if !plugins.contains_key(name) {
                        errors.insert(name.clone(), msg);
                        changed = true;
                    }
                }
            }
        }
        if changed || errors != old.errors {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            self.current.store(Arc::new(PluginSet { generation, plugins, errors }));
        }
        drop(_guard);
        for e in events {
            self.emit(e);
        }
    }

    /// Watch the directory and reload changed plugins, debouncing bursts of
    /// writes (editors and `cp` write in several steps) by `debounce`.
    pub fn watch(self: &Arc<Self>, debounce: Duration) -> notify::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Opening or reading a file (our own reload reads them) is not a
            // change: without this filter every reload triggered the next one.
            // A file closed after writing is.
            use notify::event::{AccessKind, AccessMode, EventKind};
            let Ok(ev) = res else { return };
            let change = match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                kind => !kind.is_access(),
            };
            if change {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        *self.watcher.lock() = Some(watcher);
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("wardgate-plugin-watch".into())
            .spawn(move || {
                let mut pending: BTreeSet<String> = BTreeSet::new();
                let mut last = Instant::now();
                loop {
                    let timeout = if pending.is_empty() { Duration::from_millis(500) } else { debounce };
                    match rx.recv_timeout(timeout) {
                        Ok(path) => {
                            let ext_ok = path.extension().is_some_and(|e| e == "wasm" || e == "toml");
                            if let (true, Some(stem)) = (ext_ok, path.file_stem().and_then(|s| s.to_str())) {
                                if !stem.starts_with('.') {
                                    pending.insert(stem.to_string());
                                    last = Instant::now();
                                }
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(reg) = weak.upgrade() else { return };
                    if !pending.is_empty() && last.elapsed() >= debounce {
                        let names = std::mem::take(&mut pending);
                        reg.reload_names(&names);
                    }
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(())
    }
}
