//! Step 3: the lineage rules. Tiers act on the cumulative FLOP of the
//! lineage after this job (of its base lineage instead, when the policy
//! counts fine-tunes toward the base and that total is larger); the
//! modification rule acts when a fine-tune's own compute passes a fraction
//! of its base's.

use super::{RuleOutcome, Subject};
use crate::engine::Engine;
use crate::policy::{ComputePolicySpec, TierAction};
use crate::units::{Flop, sci};

/// Where a job's lineage stands under one policy's tiers.
pub(super) struct Standing<'a> {
    /// The lineage whose total the tiers were applied to.
    pub(super) tier_lineage: &'a str,
    /// Its cumulative FLOP after this job.
    pub(super) lineage_total: Flop,
    /// The highest tier that total is above.
    pub(super) tier: Option<&'a str>,
}

impl Engine {
    /// Step 3: tiers on the lineage total after the job.
    pub(super) fn tiers<'a>(
        &self,
        job: &Subject<'a>,
        spec: &'a ComputePolicySpec,
        governing: Flop,
        outcomes: &mut Vec<RuleOutcome>,
    ) -> Standing<'a> {
        let count_base = spec.lineage.count_fine_tunes_toward_base;
        let own_total = self.lineage(job.lineage).charged + governing;
        let (tier_lineage, lineage_total) = match (job.base, count_base) {
            (Some(b), true) => {
                let bt = self.lineage(b).charged + governing;
                if bt.0 > own_total.0 {
                    (b, bt)
                } else {
                    (job.lineage, own_total)
                }
            }
            _ => (job.lineage, own_total),
        };
        let mut tier = None;
        if let Some(t) = spec
            .tiers
            .iter()
            .rev()
            .find(|t| lineage_total.0 > t.threshold.0)
        {
            tier = Some(t.name.as_str());
            let rule = format!("tier/{}", t.name);
            let context = || {
                format!(
                    "lineage {} would reach {} cumulative FLOP with this job's {}, above tier {} at {}",
                    tier_lineage,
                    sci(lineage_total.0),
                    governing,
                    t.name,
                    sci(t.threshold.0)
                )
            };
            match t.action {
                TierAction::Admit => {}
                TierAction::Reject => outcomes.push(RuleOutcome::reject(
                    &rule,
                    format!("Rejected: {}.", context()),
                )),
                TierAction::Escalate => outcomes.push(RuleOutcome::escalate(
                    rule,
                    format!("Awaiting approval: {}.", context()),
                    t.approvals.clone(),
                )),
            }
        }
        Standing {
            tier_lineage,
            lineage_total,
            tier,
        }
    }

    /// Step 3, for fine-tunes: substantial modification of another lineage.
    pub(super) fn modification(
        &self,
        job: &Subject<'_>,
        spec: &ComputePolicySpec,
        governing: Flop,
        outcomes: &mut Vec<RuleOutcome>,
    ) {
        let (Some(b), Some(m)) = (job.base, &spec.lineage.modification) else {
            return;
        };
        let known = self.lineage(b).own_charged;
        let base_flop = if known.0 > 0.0 {
            known
        } else {
            m.assumed_base_flop.unwrap_or(Flop::ZERO)
        };
        let own_after = self.lineage(job.lineage).own_charged + governing;
        if base_flop.0 > 0.0 && own_after.0 > base_flop.0 * m.fraction_of_base {
            let context = format!(
                "fine-tune lineage {} would use {} FLOP, more than {:.4} of its base {}'s {}{}",
                job.lineage,
                sci(own_after.0),
                m.fraction_of_base,
                b,
                base_flop,
                if known.0 > 0.0 {
                    ""
                } else {
                    " (assumed: base unknown to the ledger)"
                }
            );
            let rule = format!("lineage/{}", m.name);
            match m.action {
                TierAction::Admit => {}
                TierAction::Reject => {
                    outcomes.push(RuleOutcome::reject(&rule, format!("Rejected: {context}.")))
                }
                TierAction::Escalate => outcomes.push(RuleOutcome::escalate(
                    rule,
                    format!("Awaiting approval: {context}."),
                    m.approvals.clone(),
                )),
            }
        }
    }
}
