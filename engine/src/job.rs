//! What the engine knows of a training job: identity, lineage, accelerator,
//! count, duration and priority. The operator builds a [`JobRequest`] from a
//! TrainingJob object; `komptroller project` builds it from a manifest file
//! (see [`crate::manifest`]); both read the accelerator count from what will
//! actually run (replicas × the template's resource limit), never from a
//! number typed separately.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::Precision;
use crate::duration::GoDuration;

/// `spec.model` of a TrainingJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// The model lineage compute accumulates on. Default: the TrainingJob's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The lineage this job fine-tunes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// Declared parameter count (active parameters for mixture-of-experts), for the 6·N·D cross-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<f64>,
    /// Declared training tokens, for the 6·N·D cross-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<f64>,
}

/// `spec.accelerator` of a TrainingJob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcceleratorSpec {
    /// Catalog key or alias, e.g. nvidia-h100-sxm or NVIDIA-H100-80GB-HBM3.
    #[serde(rename = "type")]
    pub kind: String,
    /// Numeric precision of training: bf16 (default), fp8, fp16, tf32, fp32, fp64, fp4.
    #[serde(default)]
    pub precision: Precision,
}

/// Identity of a job: namespace, name and the uid of this incarnation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The authenticated submitter, as stamped by the mutating webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A job as submitted to the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    pub id: JobId,
    /// Labels of the job's namespace, for policies' namespaceSelector.
    #[serde(default)]
    /// Shared: every job of a namespace carries the same labels.
    pub namespace_labels: std::sync::Arc<BTreeMap<String, String>>,
    pub model: ModelSpec,
    pub accelerator: AcceleratorSpec,
    /// replicas × the accelerator resource limit of the pod template.
    pub count: u32,
    pub max_duration: GoDuration,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub submitter: Option<Principal>,
    /// Hash of the spec the decision is about (approvals bind to it).
    #[serde(default)]
    pub spec_hash: String,
}

impl JobRequest {
    /// The lineage this job's compute accumulates on.
    pub fn lineage(&self) -> &str {
        self.model.name.as_deref().unwrap_or(&self.id.name)
    }
    pub fn base_lineage(&self) -> Option<&str> {
        self.model
            .base_model
            .as_deref()
            .filter(|b| *b != self.lineage())
    }
}
