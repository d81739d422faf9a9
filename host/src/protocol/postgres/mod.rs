//! The PostgreSQL adapter: a listener that speaks the frontend/backend
//! protocol to clients (psql, drivers) and to the upstream, with guard and
//! masker plugins on every request and result.
//!
//! * [`listener`]: accept loop, TLS negotiation, cancel requests.
//! * [`session`]: one client's life: startup, authentication, upstream login.
//! * [`relay`]: the two directions of an authenticated session.
//! * [`rows`]: DataRow/CopyData <-> packed row batches.
//! * [`catalog`]: what the upstream's catalog said of its tables.
//! * [`codec`]: message framing.

pub mod arrays;
pub mod bytea;
pub mod cancel;
pub mod catalog;
pub mod codec;
pub mod copyout;
pub mod errors;
pub mod fastpath;
pub mod hold;
pub mod lineage;
pub mod listener;
pub mod numeric;
pub mod relay;
pub mod rows;
pub mod session;
pub mod stream;

pub mod upstream;

pub use listener::{serve, PgContext};
