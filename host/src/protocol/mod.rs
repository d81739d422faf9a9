//! Protocol adapters, one module per protocol, on the shared pipeline.
//! They parse wire traffic into contract requests and row batches; they never
//! import wasmtime.

pub mod postgres;
