//! Subcommands. Each module owns its clap arguments and a `run` returning
//! the process exit code (0 success, 2 bad input; verify documents its own).

pub mod keygen;
pub mod project;
pub mod report;
pub mod simulate;
pub mod verify;
