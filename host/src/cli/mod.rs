//! Subcommands of the `wardgate` binary that live outside `main.rs`.

pub mod identity;
