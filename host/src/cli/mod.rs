//! Subcommands of the `wardgate` binary that live outside `main.rs`.

pub mod admin_client;
pub mod approvals;
pub mod identity;
pub mod sessions;
