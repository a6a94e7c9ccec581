//! The custom resources of `komptroller.dev/v1alpha1`, generated into `crds/`
//! by `komptroller crd` (and checked for drift in CI).
//!
//! Spec types reuse the engine's types wherever the engine defines the
//! meaning (policy, model, accelerator, projection, decision), so a manifest
//! the CLI accepts is exactly what the cluster stores.

// kube's `printcolumn(...)` arguments repeat (`type_ = "string"`), which
// clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use komptroller_engine::GoDuration;
use komptroller_engine::decision::{ApprovalNeed, Verdict};
use komptroller_engine::engine::Phase;
use komptroller_engine::job::{AcceleratorSpec, ModelSpec};
use komptroller_engine::policy::ComputePolicySpec as EnginePolicySpec;
use komptroller_engine::projection::Projection;
use komptroller_engine::spec_hash::{HashedSpec, spec_hash};
use komptroller_engine::units::{AcceleratorSeconds, Flop};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const GROUP: &str = "komptroller.dev";
pub const VERSION: &str = "v1alpha1";
/// Finalizer that records the final accounting before a TrainingJob goes.
pub const FINALIZER: &str = "komptroller.dev/accounting";
/// Annotation carrying the authenticated submitter (stamped by the mutating webhook).
pub const SUBMITTED_BY: &str = komptroller_engine::manifest::SUBMITTED_BY;

fn one() -> u32 {
    1
}

/// A training run whose compute komptroller projects, decides, starts and meters.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "komptroller.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    shortname = "tj",
    category = "komptroller",
    status = "TrainingJobStatus",
    doc = "A training run governed by compute: projected, decided against ComputePolicies, started only when admitted, and metered.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the job stands"
    ),
    printcolumn(
        name = "Accelerators",
        type_ = "integer",
        json_path = ".status.projection.count",
        description = "replicas × per-pod accelerator limit"
    ),
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.accelerator.type",
        priority = "1"
    ),
    printcolumn(
        name = "Projected",
        type_ = "string",
        json_path = ".status.projectedFlop",
        description = "Governing FLOP figure"
    ),
    printcolumn(
        name = "Verdict",
        type_ = "string",
        json_path = ".status.decision.verdict"
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.queuePosition",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.replicas >= 1").message("spec.replicas must be at least 1"))]
pub struct TrainingJobSpec {
    /// The model lineage and optional declared size (for the 6·N·D cross-check).
    #[serde(default)]
    pub model: ModelSpec,
    /// Accelerator type (catalog key or alias) and training precision.
    pub accelerator: AcceleratorSpec,
    /// Number of pods (an Indexed Job with parallelism = completions = replicas).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Longest the job may run (Go duration, e.g. 72h); enforced through the Job's activeDeadlineSeconds.
    pub max_duration: GoDuration,
    /// Queue priority: higher runs first; ties by submission time.
    #[serde(default)]
    pub priority: i32,
    /// The pod template of the workload. The accelerator count is read from its resource limits.
    pub template: PodTemplateSpec,
}

impl TrainingJobSpec {
    /// This spec's spec hash ([`komptroller_engine::spec_hash`]): what
    /// `status.specHash` shows and approvals bind to; the value the engine's
    /// reading of the spec computes from this type's JSON.
    pub fn spec_hash(&self) -> String {
        // A derived struct of strings, numbers and maps always serializes.
        let template = serde_json::to_value(&self.template).unwrap_or_default();
        spec_hash(&HashedSpec {
            model: &self.model,
            accelerator: &self.accelerator,
            replicas: self.replicas,
            max_duration: self.max_duration,
            priority: self.priority,
            template: &template,
        })
    }

    /// The spec hash of a spec as stored (JSON), read through this type as
    /// the controller reads it (quantities as strings, unknown fields
    /// dropped); `None` when it does not read as a TrainingJob spec.
    pub fn spec_hash_of(spec: &Value) -> Option<String> {
        TrainingJobSpec::deserialize(spec)
            .ok()
            .map(|s| s.spec_hash())
    }
}

/// Observed state of a TrainingJob.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Pending, Queued, AwaitingApproval, Admitted, Running, Succeeded, Failed or Rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The projection the decision was made on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<Projection>,
    /// The governing FLOP figure in scientific notation, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_flop: Option<String>,
    /// The current decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionStatus>,
    /// 1-based position in the queue while Queued: exact for the first
    /// ten waiting jobs; deeper in the queue it is refreshed once it is off
    /// by more than a tenth (so a long queue does not rewrite every waiting
    /// job's status on each admission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Compute metered so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed: Option<ConsumedStatus>,
    /// SHA-256 of the canonical JSON of the spec; approvals bind to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// When the operator first saw the job (its queue order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// When the workload started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The batch/v1 Job of the admission (same namespace). It is named in
    /// the status written at admission, just before the Job is created, and
    /// creation is retried until it exists; the Running condition turns
    /// true once the Job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_ref: Option<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Kubernetes-convention conditions: Admitted, Running, Completed, Approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A decision as the status carries it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionStatus {
    /// Admit, Throttle, Escalate or Reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The verdict Enforce mode gives (differs under Warn and DryRun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_verdict: Option<Verdict>,
    /// The deciding ComputePolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The deciding rule, e.g. tier/eu-systemic-risk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// One sentence with the numbers that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Governing FLOP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governing: Option<Flop>,
    /// Cumulative lineage FLOP after this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage_total: Option<Flop>,
    /// Who may approve, while AwaitingApproval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalNeed>,
    /// Sequence number of the ledger entry that recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_sequence: Option<u64>,
}

/// Metered consumption.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumedStatus {
    /// Accelerator count × seconds run.
    pub accelerator_seconds: AcceleratorSeconds,
    /// FLOP under the deciding policy's basis.
    pub flop: Flop,
}

/// Cluster-wide rules on training compute: tiers, budgets, caps.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "komptroller.dev",
    version = "v1alpha1",
    kind = "ComputePolicy",
    category = "komptroller",
    shortname = "cpol",
    status = "ComputePolicyStatus",
    doc = "Cluster-wide rules on training compute: tiers on cumulative lineage FLOP, rolling budgets, capacity caps.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Tiers", type_ = "integer", json_path = ".status.tiers"),
    printcolumn(name = "Budgets", type_ = "integer", json_path = ".status.budgets"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ComputePolicySpec {
    #[serde(flatten)]
    pub inner: EnginePolicySpec,
}

/// Observed state of a ComputePolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputePolicyStatus {
    /// SHA-256 of the canonical JSON of the spec, as recorded in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Number of tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<u32>,
    /// Number of budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<u32>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted (valid and loaded) and its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An approval of one TrainingJob's escalation, bound to the spec it saw.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "komptroller.dev",
    version = "v1alpha1",
    kind = "ComputeApproval",
    namespaced,
    category = "komptroller",
    shortname = "cappr",
    status = "ComputeApprovalStatus",
    doc = "An approval of a TrainingJob's escalation by an authenticated approver, bound to the exact spec it approves.",
    printcolumn(name = "Job", type_ = "string", json_path = ".spec.trainingJobName"),
    printcolumn(name = "Approver", type_ = "string", json_path = ".spec.approver"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.accepted"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ComputeApproval is immutable; delete it and create another"))]
pub struct ComputeApprovalSpec {
    /// The TrainingJob approved, in this namespace.
    pub training_job_name: String,
    /// The job's status.specHash at the time of review; a different current spec voids the approval.
    pub spec_hash: String,
    /// The approving user, stamped by the admission webhook from the authenticated request; a forged value is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The approver's groups, stamped by the admission webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approver_groups: Vec<String>,
    /// Optional expiry (RFC 3339); an expired approval does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Why the approver approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Observed state of a ComputeApproval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeApprovalStatus {
    /// Whether the operator counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// Why it was or was not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A signed compute report over a period and a ledger range.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "komptroller.dev",
    version = "v1alpha1",
    kind = "ComputeReport",
    category = "komptroller",
    shortname = "crep",
    doc = "A signed, hash-chained compute report; verify it offline with `komptroller verify`.",
    printcolumn(name = "From", type_ = "integer", json_path = ".spec.fromSequence"),
    printcolumn(name = "To", type_ = "integer", json_path = ".spec.toSequence"),
    printcolumn(
        name = "Key",
        type_ = "string",
        json_path = ".spec.keyId",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ComputeReportSpec {
    /// First ledger sequence number covered.
    pub from_sequence: u64,
    /// Last ledger sequence number covered.
    pub to_sequence: u64,
    /// Start of the period (RFC 3339).
    pub period_start: String,
    /// End of the period (RFC 3339).
    pub period_end: String,
    /// Hash of the last entry covered.
    pub head_hash: String,
    /// RFC 6962 Merkle root over the entries covered.
    pub merkle_root: String,
    /// SHA-256 of the signing public key (SPKI DER).
    pub key_id: String,
    /// The signed report, canonical JSON exactly as signed.
    pub report: String,
}

/// One immutable ledger entry. Named `ledger-<sequence>`; only the leader writes them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "komptroller.dev",
    version = "v1alpha1",
    kind = "ComputeLedgerEntry",
    category = "komptroller",
    shortname = "cle",
    doc = "One immutable, hash-chained entry of komptroller's compute ledger.",
    printcolumn(name = "Seq", type_ = "integer", json_path = ".spec.sequence"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Job", type_ = "string", json_path = ".spec.job"),
    printcolumn(name = "Lineage", type_ = "string", json_path = ".spec.lineage"),
    printcolumn(name = "Time", type_ = "date", json_path = ".spec.time")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("ledger entries are immutable"))]
pub struct ComputeLedgerEntrySpec {
    /// Sequence number in the ledger.
    pub sequence: u64,
    /// Event kind: Decided, Approved, ApprovalWithdrawn, Started, Finished, DeadlineExceeded, Deleted, PolicyChanged.
    pub kind: String,
    /// When it happened (RFC 3339).
    pub time: String,
    /// namespace/name of the job concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Model lineage, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
    /// The entry as one line of canonical JSON, exactly as hashed.
    pub entry: String,
}

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The TrainingJob CRD with descriptions removed inside `spec.template`.
///
/// The full PodTemplateSpec schema with its descriptions is 600 kB, more than
/// the 256 kB `kubectl apply` can store in its last-applied annotation. The
/// structure (and so validation) is kept; `kubectl explain pod.spec` documents
/// the fields.
fn training_job_crd() -> Crd {
    let crd = TrainingJob::crd();
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(|v| v.as_array_mut())
    {
        for version in versions {
            if let Some(template) =
                version.pointer_mut("/schema/openAPIV3Schema/properties/spec/properties/template")
            {
                let own = template.get("description").cloned();
                strip(template);
                if let (Some(own), Some(map)) = (own, template.as_object_mut()) {
                    map.insert("description".into(), own);
                }
            }
        }
    }
    serde_json::from_value(value).unwrap_or(crd)
}

/// All CRDs, in the order `komptroller crd` writes them.
pub fn all() -> Vec<Crd> {
    vec![
        training_job_crd(),
        ComputePolicy::crd(),
        ComputeApproval::crd(),
        ComputeReport::crd(),
        ComputeLedgerEntry::crd(),
    ]
}
