//! `komptroller keygen` (being built).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {}

pub fn run(_args: KeygenArgs) -> ExitCode {
    eprintln!("komptroller keygen: not implemented yet");
    ExitCode::from(2)
}
