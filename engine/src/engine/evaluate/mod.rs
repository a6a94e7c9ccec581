//! Evaluation: the decision about one job at one instant, a pure function
//! of the job, the selecting policies, the engine's totals and `now`.
//!
//! Each selecting policy is evaluated in the numbered steps of the decision,
//! one function each, every step adding the outcomes of the rules it checks:
//! 1–2. validate the request and project its compute ([`project`]);
//! 3. tiers on the lineage total after the job, and the modification rule
//!    for fine-tunes ([`lineage`]);
//! 4. budgets over their windows ([`budgets`]);
//! 5. escalations that valid approvals satisfy are lifted ([`approvals`]);
//! 6. capacity caps ([`capacity`]);
//! 7. StrictFIFO queue order ([`queueing`]).
//!
//! The strictest outcome of each policy is its verdict; across policies,
//! Enforce policies bind and Warn/DryRun ones are recorded ([`combine`]).
//! Besides the decision, an evaluation says what a throttled job waits on,
//! for the waitlist.

mod approvals;
mod budgets;
mod capacity;
mod combine;
mod lineage;
mod project;
mod queueing;

use foldhash::HashSet;
use jiff::Timestamp;

use super::constraint::Constraint;
use super::waitlist::{QuickItem, QuickTest, Watch};
use super::{CompiledPolicy, Engine};
use crate::catalog::Catalog;
use crate::decision::{Decision, Verdict};
use crate::job::{JobRequest, Principal};
use crate::policy::{ApprovalRequirement, Basis, ComputePolicySpec, Mode, Queueing};
use crate::projection::{Projection, project};
use crate::units::{Flop, FlopPerSecond};

/// One rule's outcome while evaluating a policy.
#[derive(Clone, Debug)]
struct RuleOutcome {
    verdict: Verdict,
    rule: String,
    reason: String,
    approvals: Option<ApprovalRequirement>,
    /// Constraint this outcome waits on, for StrictFIFO blocking.
    constraint: Option<Constraint>,
}

impl RuleOutcome {
    fn reject(rule: &str, reason: String) -> RuleOutcome {
        RuleOutcome {
            verdict: Verdict::Reject,
            rule: rule.to_string(),
            reason,
            approvals: None,
            constraint: None,
        }
    }

    fn escalate(
        rule: String,
        reason: String,
        approvals: Option<ApprovalRequirement>,
    ) -> RuleOutcome {
        RuleOutcome {
            verdict: Verdict::Escalate,
            rule,
            reason,
            approvals,
            constraint: None,
        }
    }
}

/// The full evaluation of a job against all selecting policies.
#[derive(Clone, Debug)]
pub(super) struct Evaluation {
    pub(super) decision: Decision,
    /// Constraints it is throttled on.
    pub(super) throttled_on: Vec<Constraint>,
    pub(super) strict: bool,
    pub(super) charge: Flop,
    pub(super) charged_lineages: Vec<String>,
    pub(super) rate: FlopPerSecond,
    pub(super) basis: Basis,
    /// When a budget window will have freed enough for this job.
    pub(super) wake_at: Option<i64>,
    /// What must change before re-evaluating it could change its outcome.
    pub(super) watch: Watch,
    /// When throttled: every budget and cap it is under, when nothing else
    /// could change its verdict as they fill and free (`None`: not
    /// throttled, a policy not in Enforce mode, an Escalate/Reject budget, a
    /// FLOP/s cap or StrictFIFO).
    pub(super) quick: Option<Vec<QuickItem>>,
}

/// The job being evaluated, as every step reads it.
struct Subject<'a> {
    now: Timestamp,
    req: &'a JobRequest,
    lineage: &'a str,
    base: Option<&'a str>,
    approvals: &'a [Principal],
    /// Constraints queued jobs ahead of it wait on (StrictFIFO).
    blocked: &'a HashSet<Constraint>,
}

impl Subject<'_> {
    /// Whether a policy needs its budgets and caps named as StrictFIFO keys.
    fn needs_keys(&self, spec: &ComputePolicySpec) -> bool {
        spec.queueing == Queueing::StrictFIFO && !self.blocked.is_empty()
    }
}

/// One selecting policy's result, for combining across policies.
struct PolicyResult<'a> {
    name: &'a str,
    mode: Mode,
    outcome: RuleOutcome,
    projection: Option<Projection>,
    governing: Flop,
    lineage_total: Flop,
    tier: Option<&'a str>,
    /// For the Admit sentence, written only if this policy decides.
    tier_lineage: &'a str,
    basis: Basis,
    approvals_lifted: bool,
}

/// The last projection, by the catalog and utilization it used: policies
/// without accelerator overrides share the base catalog.
type ProjectionCache = Option<(*const Catalog, Option<f64>, Result<Projection, String>)>;

/// What evaluating the selecting policies in turn gathers for the decision.
struct Gathered {
    /// StrictFIFO keys: the constraints of the StrictFIFO policies so far.
    constraints: Vec<Constraint>,
    throttled_on: Vec<Constraint>,
    strict: bool,
    /// The largest governing figure, charged on admission, and its basis.
    charge: Flop,
    basis_of_charge: Basis,
    rate: FlopPerSecond,
    charged_lineages: Vec<String>,
    wake_at: Option<i64>,
    watch: Watch,
    cluster_budget: bool,
    /// The quick re-check's tests, by policy (index into the selecting
    /// policies) and budget (index into its budgets; `usize::MAX`: a cap).
    quick: Option<Vec<(usize, usize, QuickTest)>>,
    projected: ProjectionCache,
}

impl Engine {
    /// Evaluates `req` against every selecting policy (pure: no mutation).
    pub(super) fn evaluate(
        &self,
        now: Timestamp,
        req: &JobRequest,
        approvals_given: &[Principal],
        blocked: &HashSet<Constraint>,
    ) -> Evaluation {
        let policies = self.selecting(req);
        if policies.is_empty() {
            return self.ungoverned(req);
        }
        let lineage = req.lineage();
        let subject = Subject {
            now,
            req,
            lineage,
            base: req.base_lineage(),
            approvals: approvals_given,
            blocked,
        };
        // Sized exactly: a few hundred bytes each, so growing by doubling
        // would ask the allocator for a block past its fast per-thread cache.
        let mut results: Vec<PolicyResult> = Vec::with_capacity(policies.len());
        let mut g = Gathered {
            constraints: Vec::new(),
            throttled_on: Vec::new(),
            strict: false,
            charge: Flop::ZERO,
            basis_of_charge: Basis::UpperBound,
            rate: FlopPerSecond::ZERO,
            charged_lineages: vec![lineage.to_string()],
            wake_at: None,
            watch: Watch::ALWAYS,
            cluster_budget: false,
            quick: Some(Vec::new()),
            projected: None,
        };
        for (pi, p) in policies.iter().enumerate() {
            results.push(self.evaluate_policy(&subject, pi, p, &mut g));
        }
        self.combine(&subject, &policies, &results, g)
    }

    /// Evaluates one selecting policy (`pi`: its index among them), step by
    /// step, into its strictest outcome.
    fn evaluate_policy<'a>(
        &self,
        job: &Subject<'a>,
        pi: usize,
        p: &'a CompiledPolicy,
        g: &mut Gathered,
    ) -> PolicyResult<'a> {
        let spec = &p.spec;
        let mut outcomes: Vec<RuleOutcome> = Vec::new();
        // 1. Validate and 2. project.
        let projection = project::validate_and_project(job.req, p, &mut g.projected, &mut outcomes);
        let governing = projection
            .as_ref()
            .map_or(Flop::ZERO, |pr| pr.governing(spec.estimate.basis));
        // 3. Tiers on the lineage total after the job, and the modification rule.
        let standing = self.tiers(job, spec, governing, &mut outcomes);
        self.modification(job, spec, governing, &mut outcomes);
        // 4. Budgets over their windows.
        if !budgets::quick_applies(spec) {
            g.quick = None;
        }
        self.budgets(job, (pi, p), governing, g, &mut outcomes);
        // 5. Escalations satisfied by valid approvals are lifted.
        let approvals_lifted = approvals::lift_escalations(job, &mut outcomes);
        // 6. Capacity caps.
        let job_rate = projection
            .as_ref()
            .map_or(FlopPerSecond::ZERO, |pr| pr.rate);
        self.caps(job, (pi, p), job_rate, g, &mut outcomes);
        // 7. StrictFIFO: nobody passes a queued job blocked on a constraint this job shares.
        queueing::strict_fifo(job, p, g, &mut outcomes);

        for o in &outcomes {
            if o.verdict == Verdict::Throttle
                && let Some(c) = &o.constraint
            {
                g.throttled_on.push(c.clone());
            }
        }
        // The strictest outcome of this policy; earlier steps win ties.
        let outcome = outcomes
            .iter()
            .fold(None::<&RuleOutcome>, |acc, o| match acc {
                Some(a) if a.verdict >= o.verdict => Some(a),
                _ => Some(o),
            })
            .cloned()
            .unwrap_or_else(|| RuleOutcome {
                verdict: Verdict::Admit,
                rule: standing
                    .tier
                    .map_or_else(|| "admit".to_string(), |t| format!("tier/{t}")),
                // Written by `combine` if this policy decides.
                reason: String::new(),
                approvals: None,
                constraint: None,
            });
        if governing.0 > g.charge.0 {
            g.charge = governing;
            g.basis_of_charge = spec.estimate.basis;
        }
        g.rate = g.rate.max(job_rate);
        if spec.lineage.count_fine_tunes_toward_base
            && let Some(b) = job.base
            && !g.charged_lineages.iter().any(|l| l == b)
        {
            g.charged_lineages.push(b.to_string());
        }
        PolicyResult {
            name: &p.name,
            mode: spec.mode,
            outcome,
            projection,
            governing,
            lineage_total: standing.lineage_total,
            tier: standing.tier,
            tier_lineage: standing.tier_lineage,
            basis: spec.estimate.basis,
            approvals_lifted,
        }
    }

    /// The evaluation of a job no policy selects: admitted, its upper bound
    /// recorded on its lineage.
    fn ungoverned(&self, req: &JobRequest) -> Evaluation {
        let lineage = req.lineage();
        let projection = project(&self.base_catalog, req, None).ok();
        let governing = projection
            .as_ref()
            .map_or(Flop::ZERO, |p| p.governing(Basis::UpperBound));
        let mut lineages = vec![lineage.to_string()];
        lineages.extend(req.base_lineage().map(str::to_string));
        let rate = projection.as_ref().map_or(FlopPerSecond::ZERO, |p| p.rate);
        Evaluation {
            decision: Decision {
                verdict: Verdict::Admit,
                enforced_verdict: Verdict::Admit,
                mode: Mode::Enforce,
                policy: None,
                rule: None,
                reason: format!(
                    "Admitted: no ComputePolicy selects namespace {}; projected {} (upper bound) is recorded on lineage {}.",
                    req.id.namespace, governing, lineage
                ),
                warnings: Vec::new(),
                lineage_total: self.lineage(lineage).charged + governing,
                projection,
                governing,
                tier: None,
                approvals: None,
                queue_position: None,
            },
            throttled_on: Vec::new(),
            strict: false,
            charge: governing,
            charged_lineages: lineages,
            rate,
            basis: Basis::UpperBound,
            wake_at: None,
            watch: Watch::ALWAYS,
            quick: None,
        }
    }
}
