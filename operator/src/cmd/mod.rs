//! Subcommands. Each module owns its clap arguments and a `run` returning
//! the process exit code (0 success, 2 bad input; verify documents its own).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use komptroller_engine::manifest::parse_policies;
use komptroller_engine::policy::Policy;

pub mod audit;
pub mod bundle;
pub mod crd;
pub mod keygen;
pub mod project;
pub mod report;
pub mod run;
pub mod simulate;
pub mod verify;
pub mod webhook;

/// Output formats of the offline commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Exit code for bad input (files, manifests, flags).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Prints `message` as one error line and returns exit code 2.
pub fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Writes command output to stdout; a closed pipe (`| head`) is not an error.
pub fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&format!("writing output: {e}")),
    }
}

pub fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads and validates ComputePolicy files.
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<Policy>, String> {
    let mut out: Vec<Policy> = Vec::new();
    for p in paths {
        let text = read_file(p)?;
        for policy in parse_policies(&text, &p.display().to_string()).map_err(|e| e.to_string())? {
            if out.iter().any(|q| q.name == policy.name) {
                return Err(format!(
                    "{}: metadata.name: ComputePolicy {:?} is defined twice",
                    p.display(),
                    policy.name
                ));
            }
            out.push(policy);
        }
    }
    Ok(out)
}
