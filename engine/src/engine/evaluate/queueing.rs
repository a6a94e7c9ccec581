//! Step 7: StrictFIFO queue order. Under a StrictFIFO policy nobody passes
//! a queued job (earlier, or of higher priority) that waits on a constraint
//! this job is under too.

use super::{Gathered, RuleOutcome, Subject};
use crate::decision::Verdict;
use crate::engine::CompiledPolicy;
use crate::policy::Queueing;

/// Queues the job behind the first constraint it shares with a blocked job
/// ahead, when `p` queues StrictFIFO.
pub(super) fn strict_fifo(
    job: &Subject<'_>,
    p: &CompiledPolicy,
    g: &mut Gathered,
    outcomes: &mut Vec<RuleOutcome>,
) {
    if p.spec.queueing != Queueing::StrictFIFO {
        return;
    }
    g.strict = true;
    if let Some(c) = g.constraints.iter().find(|c| job.blocked.contains(*c)) {
        outcomes.push(RuleOutcome {
            verdict: Verdict::Throttle,
            rule: "queueing/StrictFIFO".into(),
            reason: format!(
                "Queued: an earlier or higher-priority job waits on {c}, and policy {} queues StrictFIFO.",
                p.name
            ),
            approvals: None,
            constraint: Some(c.clone()),
        });
    }
}
