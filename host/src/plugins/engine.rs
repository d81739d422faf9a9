//! One wasmtime engine per process, its linker, the compiled-component cache
//! and the epoch ticker that enforces per-call deadlines.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::HostView;
use super::host_api::PluginState;

/// One epoch tick. A call's deadline is rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Sizing of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where precompiled components are cached (`None` = no disk cache).
    pub cache_dir: Option<PathBuf>,
    /// Pooled instance slots: sessions x plugins that may be live at once.
    pub max_instances: u32,
    /// Hard ceiling of any plugin's linear memory, bytes.
    pub max_memory_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { cache_dir: None, max_instances: 1000, max_memory_bytes: 512 << 20 }
    }
}

/// The engine, linker and cache shared by every plugin.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: Option<PathBuf>,
    config_key: String,
    stop: Arc<AtomicBool>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    /// Build the engine (pooling allocator, epoch interruption) and start its ticker.
    pub fn new(opts: EngineOptions) -> wasmtime::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        let n = opts.max_instances.max(8);
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .max_memory_size(opts.max_memory_bytes)
            .max_component_instance_size(1 << 20)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_unused_warm_slots(n.min(200));
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(1 << 20);
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            Err(e) => {
                // Pooling needs virtual address space; fall back to on-demand
                // (slower instantiation, same isolation) rather than not start.
                tracing::warn!(error = %e, "pooling allocator unavailable, using on-demand allocation");
                let mut config = Config::new();
                config.wasm_component_model(true).epoch_interruption(true).max_wasm_stack(1 << 20);
                Engine::new(&config)?
            }
        };
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        forbid_blocking(&mut linker)?;
        HostView::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
        let config_key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wardgate-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(wasmtime::Error::from)?;
        }
        Ok(Arc::new(PluginEngine { engine, linker, cache_dir: opts.cache_dir, config_key, stop }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with WASI (empty context) and the `host` interface.
    pub fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    /// Compile `bytes`, or load the cached artifact compiled from the same bytes
    /// by an engine with the same configuration. Returns the component and the
    /// SHA-256 of `bytes`.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<(Component, String)> {
        let hash = hex::encode(Sha256::digest(bytes));
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, bytes)?, hash));
        };
        let path = dir.join(format!("{hash}-{}.cwasm", self.config_key));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an engine
            // with the same compatibility hash, into a cache directory owned by
            // the gateway. A corrupt or foreign file is rejected by wasmtime's
            // header checks; on any error we recompile from the source bytes.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok((c, hash)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring bad cache entry"),
            }
        }
        let artifact = self.engine.precompile_component(bytes)?;
        // Write atomically so a concurrent reader never sees half a file.
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &artifact).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        // SAFETY: `artifact` was just produced by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &artifact)? };
        Ok((component, hash))
    }

    /// The cache directory, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }
}

/// Plugins may not block: a `wasi:io/poll` wait (`std::thread::sleep`, a
/// blocking read) runs in the host, where epoch deadlines cannot interrupt
/// it, so a plugin could hold a session — or the sink thread — forever.
/// Both ways to wait trap instead, which counts as the call failing.
fn forbid_blocking(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.func_wrap("poll", |_, (_,): (Vec<Resource<DynPollable>>,)| -> wasmtime::Result<(Vec<u32>,)> {
        Err(wasmtime::format_err!("plugins may not block (wasi:io/poll.poll): the call is abandoned"))
    })?;
    poll.func_wrap("[method]pollable.block", |_, (_,): (Resource<DynPollable>,)| -> wasmtime::Result<()> {
        Err(wasmtime::format_err!("plugins may not block (wasi:io/poll.block): the call is abandoned"))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
