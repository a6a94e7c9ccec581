//! Step 5: escalations that valid approvals satisfy are lifted. An approval
//! counts when its approver is not the submitter and is in one of the
//! groups the escalation names; each escalating rule needs its required
//! number of distinct such approvers.

use super::{RuleOutcome, Subject};
use crate::decision::Verdict;
use crate::job::Principal;
use crate::policy::ApprovalRequirement;

/// Drops every escalation from `outcomes` when the job's approvals satisfy
/// all of them; whether they were lifted.
pub(super) fn lift_escalations(job: &Subject<'_>, outcomes: &mut Vec<RuleOutcome>) -> bool {
    let mut escalations = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Escalate)
        .peekable();
    if escalations.peek().is_none() {
        return false;
    }
    let satisfied = escalations.all(|o| {
        let need = o.approvals.clone().unwrap_or(ApprovalRequirement {
            required: 1,
            groups: Vec::new(),
        });
        approvals_satisfy(job.approvals, job.req.submitter.as_ref(), &need)
    });
    if satisfied {
        outcomes.retain(|o| o.verdict != Verdict::Escalate);
    }
    satisfied
}

/// Whether the distinct approvers (not the submitter, in the groups) reach the requirement.
fn approvals_satisfy(
    approvals: &[Principal],
    submitter: Option<&Principal>,
    need: &ApprovalRequirement,
) -> bool {
    let mut users: Vec<&str> = approvals
        .iter()
        .filter(|a| submitter.is_none_or(|s| s.user != a.user))
        .filter(|a| need.groups.is_empty() || a.groups.iter().any(|g| need.groups.contains(g)))
        .map(|a| a.user.as_str())
        .collect();
    users.sort_unstable();
    users.dedup();
    users.len() >= need.required as usize
}
