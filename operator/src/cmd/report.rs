//! `komptroller report` (being built).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {}

pub fn run(_args: ReportArgs) -> ExitCode {
    eprintln!("komptroller report: not implemented yet");
    ExitCode::from(2)
}
