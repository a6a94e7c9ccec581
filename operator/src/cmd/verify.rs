//! `komptroller verify` (being built).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}

pub fn run(_args: VerifyArgs) -> ExitCode {
    eprintln!("komptroller verify: not implemented yet");
    ExitCode::from(2)
}
