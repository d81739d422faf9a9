//! Validate a `NAME.wasm` + `NAME.toml` pair into a [`LoadedPlugin`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::component::InstancePre;

use super::bindings::exports::wardgate::plugin::{guard, masker, recorder};
use super::engine::PluginEngine;
use super::host_api::{Output, PluginContext, PluginState};
use super::manifest::Manifest;
use super::{CONTRACT_VERSION, GUARD_EXPORT, MASKER_EXPORT, RECORDER_EXPORT};
use crate::config::diag::TomlError;

/// Why a plugin could not be loaded. Each names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not WebAssembly at all, or a core module rather than a component.
    #[error("{path}: {detail}")]
    NotAComponent {
        /// File.
        path: PathBuf,
        /// What it is instead, and the fix.
        detail: String,
    },
    /// Built against a contract version this host does not speak.
    #[error("{path}: built for {found}, but this gateway speaks wardgate:plugin@{supported} (fix: rebuild the plugin against wit/ of this gateway version)")]
    WrongVersion {
        /// File.
        path: PathBuf,
        /// The export it has.
        found: String,
        /// What we speak.
        supported: &'static str,
    },
    /// A component, but it exports none of guard/masker/recorder.
    #[error("{path}: exports none of {GUARD_EXPORT}, {MASKER_EXPORT}, {RECORDER_EXPORT} (it exports: {found}); fix: target a world from wit/wardgate.wit such as `guard-plugin`")]
    NoExports {
        /// File.
        path: PathBuf,
        /// What it does export.
        found: String,
    },
    /// An export or import does not match the contract's types, or an import is unknown.
    #[error("{path}: does not fit the contract: {detail}")]
    Incompatible {
        /// File.
        path: PathBuf,
        /// wasmtime's explanation.
        detail: String,
    },
    /// The manifest is missing or invalid.
    #[error("{0}")]
    Manifest(#[from] TomlError),
    /// The manifest's output capability could not be opened.
    #[error("{path}: cannot open output capability: {source}")]
    Output {
        /// Manifest.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Which contract interfaces a component exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exports {
    /// `guard`.
    pub guard: bool,
    /// `masker`.
    pub masker: bool,
    /// `recorder`.
    pub recorder: bool,
}

impl Exports {
    /// Names, for display.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec![];
        if self.guard {
            v.push("guard");
        }
        if self.masker {
            v.push("masker");
        }
        if self.recorder {
            v.push("recorder");
        }
        v
    }
}

/// Health counters of one loaded plugin version.
#[derive(Debug, Default)]
pub struct Health {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed (trap, deadline, memory, error).
    pub failures: AtomicU64,
    /// Failures in a row; reset by a success.
    pub consecutive_failures: AtomicU32,
    /// Quarantined: never called again (fail closed) until replaced.
    pub quarantined: AtomicBool,
}

impl Health {
    /// Current status word.
    pub fn status(&self) -> &'static str {
        if self.quarantined.load(Ordering::Relaxed) {
            "quarantined"
        } else if self.consecutive_failures.load(Ordering::Relaxed) > 0 {
            "failing"
        } else {
            "ok"
        }
    }
}

/// A validated plugin version, ready to instantiate.
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of the `.wasm` bytes.
    pub hash: String,
    /// Where it was loaded from.
    pub wasm_path: PathBuf,
    /// What it exports.
    pub exports: Exports,
    /// When it was loaded (ms since epoch).
    pub loaded_at_ms: u64,
    /// Health counters.
    pub health: Health,
    pub(crate) pre: InstancePre<PluginState>,
    pub(crate) guard: Option<guard::GuestIndices>,
    pub(crate) masker: Option<masker::GuestIndices>,
    pub(crate) recorder: Option<recorder::GuestIndices>,
    pub(crate) context: Arc<PluginContext>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("hash", &self.hash)
            .field("exports", &self.exports)
            .finish()
    }
}

/// What `plugins check` reports about a component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// SHA-256 of the bytes.
    pub hash: String,
    /// Contract exports found.
    pub exports: Exports,
    /// Every export name.
    pub export_names: Vec<String>,
    /// Every import name.
    pub import_names: Vec<String>,
}

fn sniff(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let bad = |detail: String| LoadError::NotAComponent { path: path.to_path_buf(), detail };
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(bad(
            "not a WebAssembly file (no \\0asm header); fix: point at the .wasm your build produced".into()
        ));
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(bad(
            "a core WebAssembly module, not a component; fix: build with `--target wasm32-wasip2` (which emits a component)".into(),
        )),
        v => Err(bad(format!("unknown WebAssembly version/layer {v:02x?}; fix: rebuild with a current toolchain"))),
    }
}

/// Compile and type-check a component against the contract, without a manifest.
pub fn inspect(
    engine: &PluginEngine,
    path: &Path,
    bytes: &[u8],
) -> Result<(wasmtime::component::Component, Inspection), LoadError> {
    sniff(path, bytes)?;
    let (component, hash) = engine.compile(bytes).map_err(|e| LoadError::NotAComponent {
        path: path.to_path_buf(),
        detail: format!("does not compile: {e:#}"),
    })?;
    let ty = component.component_type();
    let export_names: Vec<String> = ty.exports(engine.engine()).map(|(n, _)| n.to_string()).collect();
    let import_names: Vec<String> = ty.imports(engine.engine()).map(|(n, _)| n.to_string()).collect();
    let has = |n: &str| export_names.iter().any(|e| e == n);
    let exports = Exports { guard: has(GUARD_EXPORT), masker: has(MASKER_EXPORT), recorder: has(RECORDER_EXPORT) };
    if exports == Exports::default() {
        if let Some(other) = export_names.iter().chain(import_names.iter()).find(|n| n.starts_with("wardgate:plugin/"))
        {
            return Err(LoadError::WrongVersion {
                path: path.to_path_buf(),
                found: other.clone(),
                supported: CONTRACT_VERSION,
            });
        }
        return Err(LoadError::NoExports {
            path: path.to_path_buf(),
            found: if export_names.is_empty() { "nothing".into() } else { export_names.join(", ") },
        });
    }
    Ok((component, Inspection { hash, exports, export_names, import_names }))
}

/// Load `dir/NAME.wasm` with `dir/NAME.toml`.
pub fn load(engine: &PluginEngine, wasm_path: &Path, state_dir: &Path) -> Result<LoadedPlugin, LoadError> {
    let name = wasm_path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let manifest_path = wasm_path.with_extension("toml");
    let manifest = Manifest::load(&manifest_path, &name)?;
    let bytes = std::fs::read(wasm_path).map_err(|source| LoadError::Io { path: wasm_path.to_path_buf(), source })?;
    let (component, inspection) = inspect(engine, wasm_path, &bytes)?;
    let incompatible =
        |e: wasmtime::Error| LoadError::Incompatible { path: wasm_path.to_path_buf(), detail: format!("{e:#}") };
    let pre = engine.linker().instantiate_pre(&component).map_err(incompatible)?;
    let guard =
        if inspection.exports.guard { Some(guard::GuestIndices::new(&pre).map_err(incompatible)?) } else { None };
    let masker =
        if inspection.exports.masker { Some(masker::GuestIndices::new(&pre).map_err(incompatible)?) } else { None };
    let recorder =
        if inspection.exports.recorder { Some(recorder::GuestIndices::new(&pre).map_err(incompatible)?) } else { None };
    let output = match &manifest.output {
        None => None,
        Some(t) => Some(
            Output::open(t, state_dir).map_err(|source| LoadError::Output { path: manifest_path.clone(), source })?,
        ),
    };
    let context = Arc::new(PluginContext {
        name: manifest.name.clone(),
        config_json: manifest.config_json.clone(),
        config_values: manifest.config_values.clone(),
        output,
        http: manifest.http.clone(),
        // The call's deadline cannot interrupt a host function: requests carry it themselves.
        http_agent: (!manifest.http.is_empty()).then(|| {
            ureq::Agent::config_builder()
                .timeout_global(Some(manifest.call_timeout))
                .max_redirects(0)
                .http_status_as_error(false)
                .build()
                .into()
        }),
    });
    Ok(LoadedPlugin {
        manifest,
        hash: inspection.hash,
        wasm_path: wasm_path.to_path_buf(),
        exports: inspection.exports,
        loaded_at_ms: crate::util::now_ms(),
        health: Health::default(),
        pre,
        guard,
        masker,
        recorder,
        context,
    })
}
