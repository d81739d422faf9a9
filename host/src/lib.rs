//! Wardgate: an identity-aware Layer-7 gateway whose policies are sandboxed
//! WebAssembly components.
//!
//! Data flows one way: a protocol adapter ([`protocol`]) parses, [`identity`]
//! attaches a principal, the [`pipeline`] asks guard plugins, the request goes
//! upstream, maskers rewrite the response, and every step is [`record`]ed.
#![warn(missing_docs)]

pub mod admin;
pub mod approvals;
pub mod config;
pub mod demo;
pub mod devenv;
pub mod gateway;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod protocol;
pub mod record;
pub mod sql;
pub mod state;
pub mod tls;
pub mod util;
pub mod workers;
