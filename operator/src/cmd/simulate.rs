//! `komptroller simulate` (being built).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {}

pub fn run(_args: SimulateArgs) -> ExitCode {
    eprintln!("komptroller simulate: not implemented yet");
    ExitCode::from(2)
}
