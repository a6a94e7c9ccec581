//! The one error type of the operator (`komptroller run`), as controller-rs
//! has it: every variant says what failed in words a person can act on, and
//! carries a short [`Error::metric_label`] for `komptroller_reconcile_errors_total`.

use komptroller_engine::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (retried by the controller).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// The engine refused an event (the message names the field and rule).
    #[error("engine: {0}")]
    Engine(#[from] EngineError),

    /// An object could not be turned into engine input.
    #[error("{0}")]
    Invalid(String),

    /// JSON (de)serialisation of an object we wrote or read.
    #[error("serialisation: {0}")]
    Serde(#[from] serde_json::Error),

    /// Another writer created a ledger entry with our sequence number and
    /// different content. We stop writing and alarm; nothing is overwritten.
    #[error(
        "ledger conflict: {name} already exists with different content; another operator is writing the ledger. Stopping writes (see komptroller_ledger_conflicts_total)"
    )]
    LedgerConflict { name: String },

    /// The ledger could not be encoded or did not verify.
    #[error("ledger: {0}")]
    Ledger(String),

    /// This replica lost (or never had) the lease; writes are refused.
    #[error("not the leader: writes are refused")]
    NotLeader,

    /// Bad configuration; the message names the flag.
    #[error("configuration: {0}")]
    Config(String),

    /// Report signing or key handling.
    #[error("reports: {0}")]
    Report(String),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Engine(_) => "engine",
            Error::Invalid(_) => "invalid",
            Error::Serde(_) => "serde",
            Error::LedgerConflict { .. } => "ledger_conflict",
            Error::Ledger(_) => "ledger",
            Error::NotLeader => "not_leader",
            Error::Config(_) => "config",
            Error::Report(_) => "report",
        }
    }

    /// Every label [`Error::metric_label`] can return (for the metrics reference).
    pub const LABELS: &'static [&'static str] = &[
        "kube",
        "engine",
        "invalid",
        "serde",
        "ledger_conflict",
        "ledger",
        "not_leader",
        "config",
        "report",
    ];
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
