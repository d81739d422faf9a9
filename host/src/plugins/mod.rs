//! The plugin platform: wasmtime component model, manifests, limits, hot reload.
//!
//! * [`engine`]: one [`wasmtime::Engine`] per process, the linker, the on-disk
//!   cache of precompiled components and the epoch ticker.
//! * [`loader`]: validates `NAME.wasm` + `NAME.toml` pairs into [`LoadedPlugin`]s.
//! * [`registry`]: the live plugin set, swapped atomically; hot reload.
//! * [`instances`]: per-session instances and the fail-closed call wrappers.
//!
//! Nothing outside this module touches wasmtime.

pub mod engine;
pub mod host_api;
pub mod instances;
pub mod loader;
pub mod manifest;
pub mod registry;

/// Bindings generated from `wit/wardgate.wit` (world `host-view`).
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "host-view",
        path: "../wit",
        additional_derives: [PartialEq, Eq, Hash],
    });
}

pub use engine::PluginEngine;
pub use instances::{CallError, SessionPlugins};
pub use loader::{LoadError, LoadedPlugin};
pub use registry::{PluginEvent, Registry};

/// Contract versions this host speaks.
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Export names the host looks for.
pub const GUARD_EXPORT: &str = "wardgate:plugin/guard@0.2.0";
/// Masker export name.
pub const MASKER_EXPORT: &str = "wardgate:plugin/masker@0.2.0";
/// Recorder export name.
pub const RECORDER_EXPORT: &str = "wardgate:plugin/recorder@0.2.0";
