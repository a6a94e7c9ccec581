//! The contract between the engine and the ledger: the records the engine
//! emits. Field names are part of the on-disk and signed format
//! (camelCase JSON); change them only with a format version bump.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::decision::Verdict;
use crate::job::{JobId, JobRequest};
use crate::policy::Mode;
use crate::projection::Projection;
use crate::units::{AcceleratorSeconds, Flop};

/// The actor name the engine records for its own actions.
pub const OPERATOR_ACTOR: &str = "komptroller";

/// Accelerator type and count of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorUse {
    /// Catalog key.
    #[serde(rename = "type")]
    pub kind: String,
    pub count: u32,
}

/// One event, before the ledger sequences and chains it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRecord {
    /// When it happened (engine time, RFC 3339 UTC).
    pub time: Timestamp,
    /// The job concerned (absent for PolicyChanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// The job's model lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// The lineage it fine-tunes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_lineage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<AcceleratorUse>,
    /// Who caused it: the submitter, the approver, `komptroller` for the operator's own actions.
    pub actor: String,
    pub event: LedgerEvent,
}

impl LedgerRecord {
    /// A record of `event` about `req`, caused by `actor`; the accelerator
    /// is named as `catalog` names it (the request's own key when unknown).
    pub fn about_job(
        catalog: &Catalog,
        now: Timestamp,
        req: &JobRequest,
        actor: &str,
        event: LedgerEvent,
    ) -> LedgerRecord {
        LedgerRecord {
            time: now,
            job: Some(req.id.clone()),
            lineage: Some(req.lineage().to_string()),
            base_lineage: req.base_lineage().map(str::to_string),
            accelerator: Some(AcceleratorUse {
                kind: catalog
                    .get(&req.accelerator.kind)
                    .map_or_else(|| req.accelerator.kind.clone(), |e| e.name.clone()),
                count: req.count,
            }),
            actor: actor.to_string(),
            event,
        }
    }

    /// A record of the operator's own `event`, about no job.
    pub fn by_operator(now: Timestamp, event: LedgerEvent) -> LedgerRecord {
        LedgerRecord {
            time: now,
            job: None,
            lineage: None,
            base_lineage: None,
            accelerator: None,
            actor: OPERATOR_ACTOR.to_string(),
            event,
        }
    }

    /// A policy was created or changed (`content_hash` of its spec) or
    /// removed (`content_hash` empty).
    pub fn policy_changed(now: Timestamp, policy: &str, content_hash: String) -> LedgerRecord {
        LedgerRecord::by_operator(
            now,
            LedgerEvent::PolicyChanged {
                policy: policy.to_string(),
                content_hash,
            },
        )
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum LedgerEvent {
    /// A verdict about a job. When `verdict` is Admit, `charged` FLOP is
    /// reserved on every lineage in `chargedLineages` and on the namespace,
    /// model and cluster budgets at `time`; reservations are never returned
    /// (conservative accounting: the law counts what "will be met").
    Decided {
        verdict: Verdict,
        enforced_verdict: Verdict,
        mode: Mode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<String>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        projection: Option<Projection>,
        /// The governing FLOP figure.
        governing: Flop,
        /// FLOP reserved by this decision (governing when admitted, else 0).
        charged: Flop,
        /// Lineages the charge accumulates on (the job's, plus its base where the policy counts fine-tunes toward it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        charged_lineages: Vec<String>,
        /// The policies whose namespace selector matched the job (every
        /// mode), by name in name order; `[]` when none did. Reports count
        /// a charge toward a policy's reporting tiers and modification rule
        /// only when the policy is listed. Absent in entries written before
        /// this field existed: those count toward every policy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selected_by: Option<Vec<String>>,
    },
    /// An approver lifted (part of) an escalation.
    Approved {
        approver: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
        spec_hash: String,
    },
    /// An approval counted for a job that was not yet admitted was taken
    /// back (its ComputeApproval was deleted): the job needs it again.
    ApprovalWithdrawn { approver: String },
    /// The workload started running.
    Started,
    /// The workload ended; `consumed` is metered from its run time.
    Finished {
        succeeded: bool,
        accelerator_seconds: AcceleratorSeconds,
        consumed: Flop,
    },
    /// Kubernetes stopped the workload at activeDeadlineSeconds (= maxDuration).
    DeadlineExceeded {
        accelerator_seconds: AcceleratorSeconds,
        consumed: Flop,
    },
    /// The TrainingJob was deleted; its compute stays on the books.
    /// `acceleratorSeconds`/`consumed` are the final metering when it was still running.
    Deleted {
        accelerator_seconds: AcceleratorSeconds,
        consumed: Flop,
    },
    /// A policy was created, changed or removed (`contentHash` empty when removed).
    PolicyChanged {
        policy: String,
        content_hash: String,
    },
}

impl LedgerEvent {
    /// What a Finished, DeadlineExceeded or Deleted event metered:
    /// (accelerator-seconds, consumed FLOP); `None` for the other kinds.
    pub fn metered(&self) -> Option<(AcceleratorSeconds, Flop)> {
        match self {
            LedgerEvent::Finished {
                accelerator_seconds,
                consumed,
                ..
            }
            | LedgerEvent::DeadlineExceeded {
                accelerator_seconds,
                consumed,
            }
            | LedgerEvent::Deleted {
                accelerator_seconds,
                consumed,
            } => Some((*accelerator_seconds, *consumed)),
            LedgerEvent::Decided { .. }
            | LedgerEvent::Approved { .. }
            | LedgerEvent::ApprovalWithdrawn { .. }
            | LedgerEvent::Started
            | LedgerEvent::PolicyChanged { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            LedgerEvent::Decided { .. } => "Decided",
            LedgerEvent::Approved { .. } => "Approved",
            LedgerEvent::ApprovalWithdrawn { .. } => "ApprovalWithdrawn",
            LedgerEvent::Started => "Started",
            LedgerEvent::Finished { .. } => "Finished",
            LedgerEvent::DeadlineExceeded { .. } => "DeadlineExceeded",
            LedgerEvent::Deleted { .. } => "Deleted",
            LedgerEvent::PolicyChanged { .. } => "PolicyChanged",
        }
    }
}
