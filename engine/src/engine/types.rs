//! The engine's public vocabulary: the events it is fed, what a step
//! produces, where a job stands, and the totals and crossings it reports.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::job::{JobId, JobRequest, Principal};
use crate::ledger::LedgerRecord;
use crate::policy::{Policy, PolicyError};
use crate::units::{AcceleratorSeconds, Flop};

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Queued,
    AwaitingApproval,
    Admitted,
    Running,
    Succeeded,
    Failed,
    Rejected,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Rejected)
    }
    pub fn holds_capacity(self) -> bool {
        matches!(self, Phase::Admitted | Phase::Running)
    }
}

/// What the cluster remembers of a job, for [`Engine::restore_job`](super::Engine::restore_job).
#[derive(Clone, Debug)]
pub struct RestoredJob {
    pub phase: Phase,
    /// When it was first submitted (its queue order).
    pub submitted_at: Timestamp,
    pub decision: Option<Decision>,
    pub approvals: Vec<Principal>,
    pub started_at: Option<Timestamp>,
}

/// How a workload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    DeadlineExceeded,
}

/// An input to the engine.
#[derive(Clone, Debug)]
pub enum Event {
    /// A job was created or its spec changed.
    Submit(JobRequest),
    /// Someone approved a job's escalation.
    Approve {
        job: JobId,
        approver: Principal,
        spec_hash: String,
    },
    /// An approval was taken back (its ComputeApproval was deleted). It
    /// stops counting for a job not yet admitted, which is decided again
    /// (a queued job that needed it goes back to awaiting approval); once a
    /// job is admitted its compute is committed and nothing changes.
    WithdrawApproval { job: JobId, approver: String },
    /// The admitted job's workload started running.
    Start { job: JobId },
    /// The workload ended.
    Finish { job: JobId, outcome: Outcome },
    /// The workload ended at `ended_at`, learnt of only at the event's `now`:
    /// its run is metered up to `ended_at` (clamped between its start and
    /// `now`), while the queue is re-evaluated, and the ledger record
    /// written, at `now`.
    FinishedAt {
        job: JobId,
        outcome: Outcome,
        ended_at: Timestamp,
    },
    /// The TrainingJob was deleted.
    Delete { job: JobId },
    /// A policy was created or changed.
    UpsertPolicy(Policy),
    /// A policy was deleted.
    RemovePolicy { name: String },
    /// Time passed: budget windows may have freed.
    Tick,
}

/// What one event produced.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Decisions whose verdict changed (or were made for the first time).
    pub decisions: Vec<(JobId, Decision)>,
    /// Ledger records, in order.
    pub records: Vec<LedgerRecord>,
    /// Ledger records this step produced but did not keep, when the engine
    /// keeps none (`Engine::keep_records(false)`: a simulation that writes no
    /// ledger counts them only).
    pub records_not_kept: u64,
}

impl Step {
    /// Ledger records this step produced, kept or not.
    pub fn record_count(&self) -> u64 {
        self.records.len() as u64 + self.records_not_kept
    }

    /// Adds the record `make` builds, or only counts it when `keep` is false.
    pub(super) fn emit(&mut self, keep: bool, make: impl FnOnce() -> LedgerRecord) {
        if keep {
            self.records.push(make());
        } else {
            self.records_not_kept += 1;
        }
    }
}

/// Why an event could not be applied. Each message names the field, value and rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no TrainingJob {0} is known to the engine")]
    UnknownJob(String),
    #[error("approval of {job}: {reason}")]
    Approval { job: String, reason: String },
    #[error(
        "spec of {job} is immutable once admitted (phase {phase:?}); delete and resubmit to change it"
    )]
    Immutable { job: String, phase: Phase },
}

/// Totals of one lineage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageTotals {
    /// FLOP reserved by admissions (never returned).
    pub charged: Flop,
    /// Of which charged by jobs whose own lineage this is (not fine-tunes of it).
    pub own_charged: Flop,
    /// FLOP metered from completed runs.
    pub consumed: Flop,
    pub accelerator_seconds: AcceleratorSeconds,
}

/// A lineage crossed a tier threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Crossing {
    pub lineage: String,
    pub policy: String,
    pub tier: String,
    pub threshold: Flop,
    pub at: Timestamp,
    /// The reporting obligation's deadline, when the tier has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_by: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regulation: Option<String>,
}
