//! `komptroller project` (being built).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ProjectArgs {}

pub fn run(_args: ProjectArgs) -> ExitCode {
    eprintln!("komptroller project: not implemented yet");
    ExitCode::from(2)
}
