//! Subcommands of the `wardgate` binary that live outside `main.rs`.

pub mod approvals;
pub mod identity;
pub mod sessions;
