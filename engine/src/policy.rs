//! `ComputePolicy`: the rules a platform team writes. These types are the
//! CRD's `spec` exactly (the operator wraps them in a `CustomResource`), so a
//! policy file validated here is the policy the cluster will hold.
//!
//! Semantics, in the order the engine applies them (DESIGN.md, "The
//! decision"): tiers on the cumulative FLOP of the model lineage after the
//! job, budgets over rolling windows, approvals lifting escalations,
//! capacity caps on what runs at once, then the mode.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::AcceleratorEntry;
use crate::duration::GoDuration;
use crate::units::{Flop, FlopPerSecond};

/// The specification of a cluster-scoped ComputePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputePolicySpec {
    /// Enforce applies verdicts; Warn admits and warns with the verdict Enforce would give; DryRun admits and records it silently.
    #[serde(default)]
    pub mode: Mode,
    /// Namespaces this policy governs. Empty selects every namespace.
    #[serde(default, skip_serializing_if = "LabelSelector::is_empty")]
    pub namespace_selector: LabelSelector,
    /// How compute is estimated and which estimate governs decisions.
    #[serde(default)]
    pub estimate: EstimateSpec,
    /// How model lineages accumulate compute (fine-tunes, modifications).
    #[serde(default)]
    pub lineage: LineageSpec,
    /// Additions to, or overrides of, the built-in accelerator catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accelerators: Vec<AcceleratorEntry>,
    /// Thresholds on the cumulative FLOP of a model lineage after the job, in ascending order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// FLOP budgets over rolling windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
    /// Caps on concurrently running compute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySpec>,
    /// Queue discipline for throttled jobs, ordered by priority then submission time.
    #[serde(default)]
    pub queueing: Queueing,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Verdicts are applied.
    #[default]
    Enforce,
    /// Jobs are admitted; the Enforce verdict is returned as a warning and recorded.
    Warn,
    /// Jobs are admitted; the Enforce verdict is only recorded.
    DryRun,
}

/// A Kubernetes label selector (matchLabels and matchExpressions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: SelectorOperator,
    /// Values for In and NotIn; must be empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether a namespace with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => !value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Which estimate governs decisions, and the utilization assumed for the expected one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EstimateSpec {
    /// upperBound (peak throughput × maxDuration, the conservative default), expected (upper bound × utilization) or adversarialCeiling (at the fastest precision the hardware supports).
    #[serde(default)]
    pub basis: Basis,
    /// Utilization for the expected estimate, in (0, 1]. Omitted: the catalog default for the accelerator generation and precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
}

impl Default for EstimateSpec {
    fn default() -> Self {
        EstimateSpec {
            basis: Basis::UpperBound,
            utilization: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Basis {
    /// Dense peak at the declared precision × accelerators × maxDuration.
    #[default]
    UpperBound,
    /// The upper bound × utilization.
    Expected,
    /// Dense peak at the fastest precision the hardware supports × accelerators × maxDuration.
    AdversarialCeiling,
}

impl Basis {
    /// The words used in reasons.
    pub fn describe(self) -> &'static str {
        match self {
            Basis::UpperBound => "upper bound",
            Basis::Expected => "expected",
            Basis::AdversarialCeiling => "adversarial ceiling",
        }
    }
}

/// How lineages accumulate compute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineageSpec {
    /// Count a fine-tune's compute against its base model's lineage too (EU AI Act guidelines: fine-tuning by the original provider is the same model's lifecycle). Default true.
    #[serde(default = "yes")]
    pub count_fine_tunes_toward_base: bool,
    /// A rule for substantial modifications of another lineage (EU: a modifier using more than one third of the original's compute becomes its provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modification: Option<ModificationRule>,
}

fn yes() -> bool {
    true
}

impl Default for LineageSpec {
    fn default() -> Self {
        LineageSpec {
            count_fine_tunes_toward_base: true,
            modification: None,
        }
    }
}

/// Fires when a fine-tune's own cumulative compute exceeds a fraction of its base lineage's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModificationRule {
    /// Name used in reasons and reports.
    #[serde(default = "modification_name")]
    pub name: String,
    /// Fraction of the base lineage's compute, in (0, 1], e.g. 0.3333.
    pub fraction_of_base: f64,
    /// Base compute to assume when the base lineage is unknown to the ledger (EU guidelines: 1e25/3 for a systemic-risk original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_base_flop: Option<Flop>,
    /// Admit, Escalate or Reject.
    pub action: TierAction,
    /// Approvals lifting an escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalRequirement>,
    /// Reporting obligation when the rule fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting: Option<Reporting>,
}

fn modification_name() -> String {
    "substantial-modification".to_string()
}

/// A threshold on the cumulative FLOP of a lineage after the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tier {
    /// Name used in reasons, metrics and reports, e.g. eu-systemic-risk.
    pub name: String,
    /// The tier applies when the lineage's cumulative FLOP after the job exceeds this.
    pub threshold: Flop,
    /// Admit, Escalate or Reject.
    pub action: TierAction,
    /// Required for Escalate: how many distinct approvers, from which groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalRequirement>,
    /// A reporting obligation that starts when a lineage crosses this threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting: Option<Reporting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TierAction {
    Admit,
    Escalate,
    Reject,
}

/// Approvals that lift an escalation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequirement {
    /// Number of distinct approvers, none of them the submitter.
    #[serde(default = "one")]
    pub required: u32,
    /// An approver must belong to at least one of these groups. Empty: any authenticated user but the submitter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

fn one() -> u32 {
    1
}

/// A notification obligation, e.g. EU AI Act Art. 52(1): within two weeks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reporting {
    /// The legal basis, quoted in reports, e.g. "EU AI Act Art. 52(1)".
    pub regulation: String,
    /// Deadline after the crossing (or after it becomes known it will be crossed), e.g. 14d.
    pub notify_within: GoDuration,
}

/// A FLOP budget over a rolling window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// Name used in reasons and metrics.
    pub name: String,
    /// What the budget is counted over: each Namespace, each Model lineage, or the whole Cluster.
    pub scope: BudgetScope,
    /// Rolling window, e.g. 30d.
    pub window: GoDuration,
    /// FLOP allowed per scope within any window.
    pub limit: Flop,
    /// What happens to a job that would exceed it: Throttle (wait for the window to free), Escalate or Reject.
    #[serde(default)]
    pub action: BudgetAction,
    /// Required for Escalate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalRequirement>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum BudgetScope {
    Namespace,
    Model,
    Cluster,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BudgetAction {
    #[default]
    Throttle,
    Escalate,
    Reject,
}

/// Caps on concurrently running compute. A job that alone exceeds a cap is rejected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapacitySpec {
    /// Caps over the whole cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cap>,
    /// Caps applied to each namespace separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_namespace: Option<Cap>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cap {
    /// Peak FLOP/s (at declared precision) of all admitted, unfinished jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_flop_per_second: Option<FlopPerSecond>,
    /// Accelerators of all admitted, unfinished jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accelerators: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Queueing {
    /// Smaller jobs may pass a blocked head of the queue when they fit.
    #[default]
    BestEffortFIFO,
    /// Nobody passes a blocked job that waits on the same constraint.
    StrictFIFO,
}

/// A named policy, as loaded from a ComputePolicy manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub spec: ComputePolicySpec,
}

/// A problem with a policy: the field path, the value and the rule broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyProblem {
    /// JSON path of the field, e.g. `spec.tiers[1].threshold`.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// All problems found in a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ComputePolicy {policy:?} is invalid: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct PolicyError {
    pub policy: String,
    pub problems: Vec<PolicyProblem>,
}

impl ComputePolicySpec {
    /// Checks what the schema cannot say: order, positivity, consistency.
    /// Returns every problem, not just the first, each naming its field.
    pub fn problems(&self) -> Vec<PolicyProblem> {
        let mut out = Vec::new();
        let mut bad = |field: String, message: String| out.push(PolicyProblem { field, message });

        if let Some(u) = self.estimate.utilization
            && !(u > 0.0 && u <= 1.0)
        {
            bad(
                "spec.estimate.utilization".into(),
                format!("{u} is outside (0, 1]; use e.g. 0.4 for 40% model FLOP utilization"),
            );
        }
        for (i, r) in self.namespace_selector.match_expressions.iter().enumerate() {
            let f = format!("spec.namespaceSelector.matchExpressions[{i}]");
            match r.operator {
                SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => bad(
                    format!("{f}.values"),
                    format!("operator {:?} needs at least one value", r.operator),
                ),
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !r.values.is_empty() =>
                {
                    bad(
                        format!("{f}.values"),
                        format!(
                            "operator {:?} takes no values, got {:?}",
                            r.operator, r.values
                        ),
                    )
                }
                _ => {}
            }
            if r.key.trim().is_empty() {
                bad(format!("{f}.key"), "must not be empty".into());
            }
        }
        let mut prev: Option<f64> = None;
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let f = format!("spec.tiers[{i}]");
            if !(t.threshold.0.is_finite() && t.threshold.0 > 0.0) {
                bad(
                    format!("{f}.threshold"),
                    format!("{} must be a positive number of FLOP", t.threshold.0),
                );
            }
            if let Some(p) = prev
                && t.threshold.0 <= p
            {
                bad(
                    format!("{f}.threshold"),
                    format!(
                        "tiers must be sorted by ascending, distinct threshold: {} follows {}",
                        crate::units::sci(t.threshold.0),
                        crate::units::sci(p)
                    ),
                );
            }
            prev = Some(t.threshold.0);
            if !names.insert(t.name.clone()) {
                bad(
                    format!("{f}.name"),
                    format!("duplicate tier name {:?}", t.name),
                );
            }
            if t.name.trim().is_empty() {
                bad(format!("{f}.name"), "must not be empty".into());
            }
            check_approvals(
                &mut bad,
                &f,
                t.action == TierAction::Escalate,
                t.approvals.as_ref(),
            );
            if let Some(r) = &t.reporting
                && r.notify_within.is_zero()
            {
                bad(
                    format!("{f}.reporting.notifyWithin"),
                    "must be longer than 0s".into(),
                );
            }
        }
        if let Some(m) = &self.lineage.modification {
            let f = "spec.lineage.modification";
            if !(m.fraction_of_base > 0.0 && m.fraction_of_base <= 1.0) {
                bad(
                    format!("{f}.fractionOfBase"),
                    format!("{} is outside (0, 1]", m.fraction_of_base),
                );
            }
            if let Some(a) = m.assumed_base_flop
                && (a.0.is_nan() || a.0 <= 0.0)
            {
                bad(
                    format!("{f}.assumedBaseFlop"),
                    format!("{} must be positive", a.0),
                );
            }
            check_approvals(
                &mut bad,
                f,
                m.action == TierAction::Escalate,
                m.approvals.as_ref(),
            );
        }
        let mut budget_names = std::collections::BTreeSet::new();
        for (i, b) in self.budgets.iter().enumerate() {
            let f = format!("spec.budgets[{i}]");
            if b.window.is_zero() {
                bad(
                    format!("{f}.window"),
                    format!("{} must be longer than 0s, e.g. 30d", b.window),
                );
            }
            if !(b.limit.0.is_finite() && b.limit.0 > 0.0) {
                bad(
                    format!("{f}.limit"),
                    format!("{} must be a positive number of FLOP", b.limit.0),
                );
            }
            if !budget_names.insert(b.name.clone()) {
                bad(
                    format!("{f}.name"),
                    format!("duplicate budget name {:?}", b.name),
                );
            }
            check_approvals(
                &mut bad,
                &f,
                b.action == BudgetAction::Escalate,
                b.approvals.as_ref(),
            );
        }
        if let Some(c) = &self.capacity {
            for (scope, cap) in [("cluster", &c.cluster), ("perNamespace", &c.per_namespace)] {
                let Some(cap) = cap else { continue };
                if let Some(r) = cap.max_flop_per_second
                    && !(r.0.is_finite() && r.0 > 0.0)
                {
                    bad(
                        format!("spec.capacity.{scope}.maxFlopPerSecond"),
                        format!("{} must be a positive FLOP/s rate", r.0),
                    );
                }
                if cap.max_accelerators == Some(0) {
                    bad(
                        format!("spec.capacity.{scope}.maxAccelerators"),
                        "0 would block every job; omit it for no cap".into(),
                    );
                }
            }
        }
        for (i, a) in self.accelerators.iter().enumerate() {
            let f = format!("spec.accelerators[{i}]");
            if a.name.trim().is_empty() {
                bad(format!("{f}.name"), "must not be empty".into());
            }
            if a.supported().is_empty() {
                bad(
                    format!("{f}.peakTflops"),
                    format!(
                        "accelerator {:?} needs at least one positive dense peak",
                        a.name
                    ),
                );
            }
            if let Some(u) = a.default_utilization
                && !(u > 0.0 && u <= 1.0)
            {
                bad(
                    format!("{f}.defaultUtilization"),
                    format!("{u} is outside (0, 1]"),
                );
            }
        }
        out
    }

    /// `Ok` when [`Self::problems`] finds none.
    pub fn validate(&self, policy: &str) -> Result<(), PolicyError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError {
                policy: policy.to_string(),
                problems,
            })
        }
    }
}

fn check_approvals(
    bad: &mut impl FnMut(String, String),
    field: &str,
    escalates: bool,
    approvals: Option<&ApprovalRequirement>,
) {
    match approvals {
        Some(a) if a.required == 0 => bad(
            format!("{field}.approvals.required"),
            "0 approvals would lift the escalation without anyone looking; use 1 or more, or action Admit".into(),
        ),
        Some(a) if a.groups.iter().any(|g| g.trim().is_empty()) => {
            bad(format!("{field}.approvals.groups"), "group names must not be empty".into())
        }
        None if escalates => bad(
            format!("{field}.approvals"),
            "action Escalate needs approvals: {required: N, groups: [...]}".into(),
        ),
        _ => {}
    }
}
