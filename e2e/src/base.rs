//! What every part of the e2e harness shares: its error type and the
//! repository root.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Harness errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error(
        "the process ended before printing a line containing {needle:?}; its last output:\n{tail}"
    )]
    Exited { needle: String, tail: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("control plane: {0}")]
    ControlPlane(String),
    #[error(
        "this scenario needs the e2e control plane (it restarts or signals its components), but runs against the cluster named by KOMPTROLLER_E2E_KUBECONFIG"
    )]
    NeedsControlPlane,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository root (the workspace holding `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}
