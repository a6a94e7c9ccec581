//! Verdicts and decisions: what the engine answers about a job.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Mode;
use crate::projection::Projection;
use crate::units::Flop;

/// The four answers, ordered from most permissive to strictest: when several
/// policies select a job, the strictest wins.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Verdict {
    Admit,
    Throttle,
    Escalate,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Admit => "Admit",
            Verdict::Throttle => "Throttle",
            Verdict::Escalate => "Escalate",
            Verdict::Reject => "Reject",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may lift an escalation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalNeed {
    /// Distinct approvers still required.
    pub required: u32,
    /// Groups an approver must belong to (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Approvers counted so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
}

/// One decision about one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The verdict that takes effect.
    pub verdict: Verdict,
    /// The verdict Enforce mode gives (differs from `verdict` under Warn and DryRun).
    pub enforced_verdict: Verdict,
    /// The mode of the deciding policy.
    pub mode: Mode,
    /// The deciding policy, if any selected the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The deciding rule, e.g. tier/eu-systemic-risk, budget/team-30d, capacity/cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// One human sentence with the numbers that decided it.
    pub reason: String,
    /// Warnings for the submitter (Warn-mode verdicts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The projection the decision was made on, if the job could be projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<Projection>,
    /// The figure the deciding policy governs by.
    pub governing: Flop,
    /// Cumulative lineage FLOP after this job, as the tiers saw it.
    pub lineage_total: Flop,
    /// The tier the lineage falls in after this job, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// For Escalate: who may approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalNeed>,
    /// For Throttle: 1-based position in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
}
