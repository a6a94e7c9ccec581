//! Step 6: capacity caps on what runs now, cluster-wide and per namespace,
//! in FLOP/s and accelerators. A job that alone exceeds a cap can never run
//! and is rejected; one that does not fit beside what runs is throttled.

use super::{Gathered, RuleOutcome, Subject};
use crate::decision::Verdict;
use crate::engine::constraint::Constraint;
use crate::engine::waitlist::QuickTest;
use crate::engine::{CompiledPolicy, Engine, Usage};
use crate::policy::{Cap, Mode};
use crate::units::FlopPerSecond;

impl Engine {
    /// Step 6: `p`'s caps (`pi`: its index among the selecting policies)
    /// for a job running at `job_rate`.
    pub(super) fn caps(
        &self,
        job: &Subject<'_>,
        (pi, p): (usize, &CompiledPolicy),
        job_rate: FlopPerSecond,
        g: &mut Gathered,
        outcomes: &mut Vec<RuleOutcome>,
    ) {
        let Some(cap) = &p.spec.capacity else {
            return;
        };
        let req = job.req;
        if p.spec.mode == Mode::Enforce {
            let slack = |c: &Option<Cap>| {
                c.as_ref()
                    .and_then(|c| c.max_accelerators)
                    .map_or(i64::MAX, |m| {
                        i64::try_from(m)
                            .unwrap_or(i64::MAX)
                            .saturating_sub(i64::from(req.count))
                    })
            };
            g.watch.cluster_slack = g.watch.cluster_slack.min(slack(&cap.cluster));
            g.watch.ns_slack = g.watch.ns_slack.min(slack(&cap.per_namespace));
            if let Some(tests) = &mut g.quick {
                for (namespace, c) in [(false, &cap.cluster), (true, &cap.per_namespace)] {
                    if c.as_ref().is_some_and(|c| c.max_accelerators.is_some()) {
                        tests.push((
                            pi,
                            usize::MAX,
                            QuickTest::Cap {
                                namespace,
                                slack: slack(c),
                            },
                        ));
                    }
                }
            }
        }
        let need_keys = job.needs_keys(&p.spec);
        let ns_usage = self
            .ns_usage
            .get(&req.id.namespace)
            .copied()
            .unwrap_or_default();
        for (namespace, cap, usage) in [
            (None, &cap.cluster, self.cluster_usage),
            (
                Some(req.id.namespace.as_str()),
                &cap.per_namespace,
                ns_usage,
            ),
        ] {
            let Some(cap) = cap else { continue };
            let constraint = || p.cap_constraint(namespace);
            if need_keys {
                g.constraints.push(constraint());
            }
            if let Some(o) = check_cap(
                cap,
                namespace,
                usage,
                job_rate,
                u64::from(req.count),
                constraint,
                self.wording(),
            ) {
                outcomes.push(o);
            }
        }
    }
}

/// Checks one cap; its constraint and reason are built only when the cap bites.
fn check_cap(
    cap: &Cap,
    namespace: Option<&str>,
    usage: Usage,
    rate: FlopPerSecond,
    accelerators: u64,
    constraint: impl Fn() -> Constraint,
    words: bool,
) -> Option<RuleOutcome> {
    let rate_bites = cap
        .max_flop_per_second
        .is_some_and(|m| usage.rate.0 + rate.0 > m.0);
    let count_bites = cap
        .max_accelerators
        .is_some_and(|m| usage.accelerators + accelerators > m);
    if !rate_bites && !count_bites {
        return None;
    }
    let scope = match namespace {
        None => "cluster".to_string(),
        Some(ns) => format!("namespace {ns}"),
    };
    let rule = format!(
        "capacity/{}",
        if namespace.is_none() {
            "cluster"
        } else {
            "namespace"
        }
    );
    if let Some(max) = cap.max_flop_per_second {
        if rate.0 > max.0 {
            return Some(RuleOutcome {
                verdict: Verdict::Reject,
                rule,
                reason: format!(
                    "Rejected: this job alone runs at {}, above the {} cap of {}; it can never run.",
                    rate, scope, max
                ),
                approvals: None,
                constraint: None,
            });
        }
        if usage.rate.0 + rate.0 > max.0 {
            return Some(RuleOutcome {
                verdict: Verdict::Throttle,
                rule,
                reason: if words {
                    format!(
                        "Queued: {} runs {} of its {} cap; this job needs {}.",
                        scope, usage.rate, max, rate
                    )
                } else {
                    String::new()
                },
                approvals: None,
                constraint: Some(constraint()),
            });
        }
    }
    if let Some(max) = cap.max_accelerators {
        if accelerators > max {
            return Some(RuleOutcome {
                verdict: Verdict::Reject,
                rule,
                reason: format!(
                    "Rejected: this job alone uses {accelerators} accelerators, above the {scope} cap of {max}; it can never run."
                ),
                approvals: None,
                constraint: None,
            });
        }
        if usage.accelerators + accelerators > max {
            return Some(RuleOutcome {
                verdict: Verdict::Throttle,
                rule,
                reason: if words {
                    format!(
                        "Queued: {scope} runs {} of its {max} accelerators; this job needs {accelerators}.",
                        usage.accelerators
                    )
                } else {
                    String::new()
                },
                approvals: None,
                constraint: Some(constraint()),
            });
        }
    }
    None
}
