//! # wardgate-sdk
//!
//! Everything a Rust plugin author needs to write a Wardgate guard, masker or
//! recorder against the `wardgate:plugin@0.2.0` contract (see `wit/wardgate.wit`).
//!
//! * [`types`] and [`host`]: the generated contract types and host imports.
//! * [`session`], [`log`], [`config_get`], [`config_json`], [`now_ms`], [`write_output`],
//!   [`http_post`]: the host functions, usable from native unit tests too (see [`testkit`]).
//! * [`rows`]: read and build packed row batches cell by cell.
//! * [`ecs`]: recorded events as Elastic Common Schema documents, for SIEM sinks.
//! * [`sql`]: helpers over host-parsed statements.
//! * [`testkit`]: build sessions, requests and batches in `cargo test`,
//!   without wasmtime.
//!
//! A plugin crate generates its export glue against the same WIT and points the
//! shared interfaces at this crate, so every plugin uses one set of types:
//!
//! ```text
//! wardgate_sdk::wit_bindgen::generate!({
//!     world: "guard-plugin",
//!     path: "wit",                       // a copy of (or link to) wardgate's wit/
//!     runtime_path: "wardgate_sdk::wit_bindgen::rt",
//!     with: {
//!         "wardgate:plugin/types@0.2.0": wardgate_sdk::types,
//!         "wardgate:plugin/host@0.2.0": wardgate_sdk::host,
//!     },
//! });
//! struct MyGuard;
//! impl exports::wardgate::plugin::guard::Guest for MyGuard {
//!     fn check(request: Request) -> Verdict {
//!         let who = wardgate_sdk::session(); // asked once per instance
//!         /* ... */
//!     }
//! }
//! export!(MyGuard);
//! ```
//! The [`guard_plugin!`], [`masker_plugin!`] and [`recorder_plugin!`] macros write
//! exactly that for a crate whose `wit/` links to the contract.

#![deny(missing_docs)]

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "sdk",
        path: "wit",
        generate_all,
        additional_derives: [PartialEq],
    });
}

pub use bindings::wardgate::plugin::{host, types};
pub use types::*;
pub use wit_bindgen;

pub mod rows;
pub mod sql;
pub mod testkit;

mod imports;
pub use imports::{config_get, config_json, http_post, log, now_ms, session, write_output};

pub mod ecs;

#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_glue {
    ($world:literal, $ty:ident) => {
        $crate::wit_bindgen::generate!({
            world: $world,
            path: "wit",
            runtime_path: "wardgate_sdk::wit_bindgen::rt",
            with: {
                "wardgate:plugin/types@0.2.0": wardgate_sdk::types,
                "wardgate:plugin/host@0.2.0": wardgate_sdk::host,
            },
        });
        #[cfg(target_arch = "wasm32")]
        export!($ty);
    };
}

/// Generate the export glue of a guard plugin and export `$ty`, which implements
/// `exports::wardgate::plugin::guard::Guest`. Expects the contract in `./wit`.
#[macro_export]
macro_rules! guard_plugin {
    ($ty:ident) => {
        $crate::__plugin_glue!("guard-plugin", $ty);
    };
}

/// Generate the export glue of a masker plugin and export `$ty`, which implements
/// `exports::wardgate::plugin::masker::Guest`. Expects the contract in `./wit`.
#[macro_export]
macro_rules! masker_plugin {
    ($ty:ident) => {
        $crate::__plugin_glue!("masker-plugin", $ty);
    };
}

/// Generate the export glue of a recorder plugin and export `$ty`, which implements
/// `exports::wardgate::plugin::recorder::Guest`. Expects the contract in `./wit`.
#[macro_export]
macro_rules! recorder_plugin {
    ($ty:ident) => {
        $crate::__plugin_glue!("recorder-plugin", $ty);
    };
}
