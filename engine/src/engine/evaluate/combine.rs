//! Combining the selecting policies' results into one decision: the
//! strictest verdict of the Enforce policies binds; Warn and DryRun
//! policies are recorded (Warn ones as warnings), and the deciding policy
//! words the reason.

use super::budgets::scope_key;
use super::{Evaluation, Gathered, PolicyResult, Subject};
use crate::decision::{ApprovalNeed, Decision, Verdict};
use crate::engine::waitlist::{QuickItem, QuickTest, Watch};
use crate::engine::{CompiledPolicy, Engine};
use crate::policy::Mode;
use crate::units::sci;

/// The strictest of `results` that pass `filter`; the first wins ties.
fn strictest<'r, 'a>(
    results: &'r [PolicyResult<'a>],
    filter: impl Fn(&PolicyResult<'a>) -> bool,
) -> Option<&'r PolicyResult<'a>> {
    results
        .iter()
        .filter(|r| filter(r))
        .fold(None::<&PolicyResult>, |acc, r| match acc {
            Some(a) if a.outcome.verdict >= r.outcome.verdict => Some(a),
            _ => Some(r),
        })
}

/// The reason of an admission by `r`.
fn admitted(job: &Subject<'_>, r: &PolicyResult<'_>) -> String {
    format!(
        "Admitted: {} for {} = {} ({}); lineage {} reaches {} cumulative FLOP{}.",
        r.projection.as_ref().map_or_else(
            || "—".to_string(),
            |pr| format!("{} × {} at {}", pr.count, pr.accelerator, pr.precision)
        ),
        job.req.max_duration,
        r.governing,
        r.basis.describe(),
        r.tier_lineage,
        sci(r.lineage_total.0),
        if r.approvals_lifted { ", approved" } else { "" }
    )
}

impl Engine {
    /// The decision from every selecting policy's result (`results`, one
    /// per policy of `policies`, at least one).
    pub(super) fn combine(
        &self,
        job: &Subject<'_>,
        policies: &[&CompiledPolicy],
        results: &[PolicyResult<'_>],
        g: Gathered,
    ) -> Evaluation {
        let binding = strictest(results, |r| r.mode == Mode::Enforce);
        let overall = strictest(results, |_| true);
        let verdict = binding.map_or(Verdict::Admit, |r| r.outcome.verdict);
        let enforced_verdict = overall.map_or(Verdict::Admit, |r| r.outcome.verdict);
        // The deciding policy: the binding one when it is strictest, else the
        // strictest overall (there is one: `results` is not empty).
        let Some(decider) = binding
            .filter(|b| b.outcome.verdict == verdict && verdict != Verdict::Admit)
            .or(overall)
        else {
            return self.ungoverned(job.req);
        };
        let mut warnings = Vec::new();
        for r in results.iter().filter(|_| self.wording()) {
            if r.mode == Mode::Warn && r.outcome.verdict != Verdict::Admit {
                warnings.push(format!(
                    "policy {} ({:?}) would {}: {}",
                    r.name, r.mode, r.outcome.verdict, r.outcome.reason
                ));
            }
        }
        let reason = if !self.wording() {
            String::new()
        } else if verdict == Verdict::Admit && decider.outcome.verdict != Verdict::Admit {
            format!(
                "Admitted ({:?} mode): Enforce would {} — {}",
                decider.mode, decider.outcome.verdict, decider.outcome.reason
            )
        } else if decider.outcome.verdict == Verdict::Admit {
            admitted(job, decider)
        } else {
            decider.outcome.reason.clone()
        };
        let approvals = if verdict == Verdict::Escalate {
            decider.outcome.approvals.as_ref().map(|a| ApprovalNeed {
                required: a.required,
                groups: a.groups.clone(),
                approved_by: job.approvals.iter().map(|p| p.user.clone()).collect(),
            })
        } else {
            None
        };
        Evaluation {
            decision: Decision {
                verdict,
                enforced_verdict,
                mode: decider.mode,
                policy: Some(decider.name.to_string()),
                rule: Some(decider.outcome.rule.clone()),
                reason,
                warnings,
                projection: decider.projection.clone(),
                governing: decider.governing,
                lineage_total: decider.lineage_total,
                tier: decider.tier.map(str::to_string),
                approvals,
                queue_position: None,
            },
            throttled_on: g.throttled_on,
            strict: g.strict,
            charge: g.charge,
            charged_lineages: g.charged_lineages,
            rate: g.rate,
            basis: g.basis_of_charge,
            wake_at: if verdict == Verdict::Throttle {
                g.wake_at
            } else {
                None
            },
            watch: if g.cluster_budget {
                Watch::ALWAYS
            } else {
                g.watch
            },
            quick: g
                .quick
                .filter(|_| verdict == Verdict::Throttle)
                .map(|tests| quick_items(job, policies, tests)),
        }
    }
}

/// The quick re-check's tests, each with the constraint it is named by.
fn quick_items(
    job: &Subject<'_>,
    policies: &[&CompiledPolicy],
    tests: Vec<(usize, usize, QuickTest)>,
) -> Vec<QuickItem> {
    tests
        .into_iter()
        .filter_map(|(pi, bi, test)| {
            let p = policies.get(pi)?;
            let constraint = match test {
                QuickTest::Cap { namespace, .. } => {
                    p.cap_constraint(namespace.then_some(job.req.id.namespace.as_str()))
                }
                QuickTest::Budget { .. } => {
                    let b = p.spec.budgets.get(bi)?;
                    p.budget_constraint(bi, b.scope, scope_key(job, b.scope))
                }
            };
            Some(QuickItem { test, constraint })
        })
        .collect()
}
