//! Step 4: budgets over their rolling windows. A job whose governing FLOP
//! alone exceeds a budget is rejected; one the window's use would push over
//! the limit gets the budget's action (Throttle until the window frees
//! enough, Escalate or Reject).

use super::{Gathered, RuleOutcome, Subject};
use crate::decision::Verdict;
use crate::engine::series::scope_index;
use crate::engine::waitlist::QuickTest;
use crate::engine::{CompiledPolicy, Engine, from_ms, ms};
use crate::policy::{BudgetAction, BudgetScope, ComputePolicySpec, Mode, Queueing};
use crate::units::{Flop, sci};

/// Whether a queued job's re-check under `spec` can skip a full
/// evaluation (see `QuickWatch`): an Enforce policy, not StrictFIFO, with no
/// FLOP/s cap.
pub(super) fn quick_applies(spec: &ComputePolicySpec) -> bool {
    spec.mode == Mode::Enforce
        && spec.queueing != Queueing::StrictFIFO
        && !spec.capacity.as_ref().is_some_and(|c| {
            [&c.cluster, &c.per_namespace]
                .iter()
                .any(|c| c.as_ref().is_some_and(|c| c.max_flop_per_second.is_some()))
        })
}

/// The key a budget of `scope` is counted under for `job`.
pub(super) fn scope_key<'a>(job: &Subject<'a>, scope: BudgetScope) -> &'a str {
    match scope {
        BudgetScope::Namespace => &job.req.id.namespace,
        BudgetScope::Model => job.lineage,
        BudgetScope::Cluster => "",
    }
}

impl Engine {
    /// Step 4: `p`'s budgets (`pi`: its index among the selecting
    /// policies), for a job governed by `governing` FLOP.
    pub(super) fn budgets(
        &self,
        job: &Subject<'_>,
        (pi, p): (usize, &CompiledPolicy),
        governing: Flop,
        g: &mut Gathered,
        outcomes: &mut Vec<RuleOutcome>,
    ) {
        let need_keys = job.needs_keys(&p.spec);
        let now = ms(job.now);
        for (bi, b) in p.spec.budgets.iter().enumerate() {
            let scope_key = scope_key(job, b.scope);
            let window_ms = b.window.as_millis();
            match (&mut g.quick, b.action) {
                (Some(tests), BudgetAction::Throttle) => tests.push((
                    pi,
                    bi,
                    QuickTest::Budget {
                        scope: scope_index(b.scope),
                        window_ms,
                        limit: b.limit.0,
                        governing: governing.0,
                    },
                )),
                (_, BudgetAction::Throttle) => {}
                _ => g.quick = None,
            }
            let series = self.series(b.scope, scope_key);
            let used = series.map_or(0.0, |s| s.window_sum(now, window_ms));
            let constraint = || p.budget_constraint(bi, b.scope, scope_key);
            if need_keys {
                g.constraints.push(constraint());
            }
            match b.scope {
                BudgetScope::Cluster => g.cluster_budget = true,
                BudgetScope::Namespace
                    if governing.0 <= b.limit.0 && used + governing.0 <= b.limit.0 =>
                {
                    g.watch.ns_budgets.push((window_ms, b.limit.0, governing.0));
                }
                _ => {}
            }
            let who = || match b.scope {
                BudgetScope::Namespace => format!("namespace {scope_key}"),
                BudgetScope::Model => format!("lineage {scope_key}"),
                BudgetScope::Cluster => "the cluster".to_string(),
            };
            if governing.0 > b.limit.0 {
                outcomes.push(RuleOutcome::reject(
                    &format!("budget/{}", b.name),
                    format!(
                        "Rejected: this job's {} alone exceeds budget {} of {} per {} for {}.",
                        governing,
                        b.name,
                        b.limit,
                        b.window,
                        who()
                    ),
                ));
            } else if used + governing.0 > b.limit.0 {
                let rule = format!("budget/{}", b.name);
                let frees = series.and_then(|s| s.frees_at(window_ms, b.limit.0 - governing.0));
                let who = who();
                let constraint = constraint();
                let context = if self.wording() {
                    format!(
                        "{} has used {} of its {} FLOP budget {} in the last {}; this job needs {}",
                        who,
                        sci(used),
                        sci(b.limit.0),
                        b.name,
                        b.window,
                        governing
                    )
                } else {
                    String::new()
                };
                match b.action {
                    BudgetAction::Reject => {
                        outcomes.push(RuleOutcome::reject(&rule, format!("Rejected: {context}.")))
                    }
                    BudgetAction::Escalate => outcomes.push(RuleOutcome::escalate(
                        rule,
                        format!("Awaiting approval: {context}."),
                        b.approvals.clone(),
                    )),
                    BudgetAction::Throttle => {
                        if let Some(f) = frees {
                            g.wake_at = Some(g.wake_at.map_or(f, |w: i64| w.min(f)));
                        }
                        outcomes.push(RuleOutcome {
                            verdict: Verdict::Throttle,
                            rule,
                            reason: if self.wording() {
                                format!(
                                    "Queued: {context}; enough frees by {}.",
                                    frees.map_or_else(
                                        || "never".to_string(),
                                        |f| from_ms(f).to_string()
                                    )
                                )
                            } else {
                                String::new()
                            },
                            approvals: None,
                            constraint: Some(constraint),
                        });
                    }
                }
            }
        }
    }
}
