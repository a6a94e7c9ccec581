//! Reading manifests as `kubectl apply` takes them: a `TrainingJob` (its
//! accelerator count read from replicas × the pod template's resource limit)
//! and `ComputePolicy` documents. Kubernetes types stay out: the pod template
//! is walked as plain JSON, so the engine and the CLI need no k8s crates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::duration::GoDuration;
use crate::engine::content_hash;
use crate::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use crate::policy::{ComputePolicySpec, Policy};

pub const API_VERSION: &str = "komptroller.dev/v1alpha1";
/// Annotation the mutating webhook stamps with the authenticated submitter.
pub const SUBMITTED_BY: &str = "komptroller.dev/submitted-by";

/// A manifest problem: where, what, and what would be right.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ManifestError {
    /// The file (or object) the problem is in.
    pub source_name: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

/// `spec` of a TrainingJob, with the pod template as plain JSON.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingJobSpecDoc {
    #[serde(default)]
    pub model: ModelSpec,
    pub accelerator: AcceleratorSpec,
    #[serde(default = "one")]
    pub replicas: u32,
    pub max_duration: GoDuration,
    #[serde(default)]
    pub priority: i32,
    pub template: serde_json::Value,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TrainingJobSpecDoc,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputePolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ComputePolicySpec,
}

fn err(source_name: &str, message: impl Into<String>) -> ManifestError {
    ManifestError {
        source_name: source_name.to_string(),
        message: message.into(),
    }
}

fn check_kind(
    source_name: &str,
    api_version: &str,
    kind: &str,
    want: &str,
) -> Result<(), ManifestError> {
    if kind != want {
        return Err(err(
            source_name,
            format!("kind: expected {want}, got {kind:?}"),
        ));
    }
    if api_version != API_VERSION {
        return Err(err(
            source_name,
            format!("apiVersion: expected {API_VERSION}, got {api_version:?}"),
        ));
    }
    Ok(())
}

/// Parses a Kubernetes resource quantity that must be a whole number of devices ("8", 8, "1k" is refused).
fn device_quantity(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Sums the limit of `resource` over the template's containers, and reports
/// other accelerator resources requested instead.
pub fn accelerators_per_pod(
    template: &serde_json::Value,
    resource: &str,
    known_resources: &[&str],
) -> Result<u64, String> {
    let containers = template
        .pointer("/spec/containers")
        .and_then(|c| c.as_array())
        .ok_or(
            "spec.template.spec.containers: missing; a pod template needs at least one container",
        )?;
    let mut total = 0u64;
    let mut others = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        for section in ["limits", "requests"] {
            let Some(map) = c
                .pointer(&format!("/resources/{section}"))
                .and_then(|m| m.as_object())
            else {
                continue;
            };
            for (k, v) in map {
                if k == resource && section == "limits" {
                    let n = device_quantity(v).ok_or_else(|| {
                        format!(
                            "spec.template.spec.containers[{i}].resources.limits[{k:?}]: {v} is not a whole number of devices"
                        )
                    })?;
                    total = total.saturating_add(n);
                } else if k != resource && known_resources.contains(&k.as_str()) {
                    others.push(format!("containers[{i}].resources.{section}[{k:?}]"));
                }
            }
        }
    }
    if !others.is_empty() {
        return Err(format!(
            "spec.template.spec: requests {} but the accelerator is scheduled by {resource:?}; the count must come from the accelerator's own resource",
            others.join(", ")
        ));
    }
    Ok(total)
}

/// Builds the engine's view of a TrainingJob document.
pub fn job_request(
    doc: &TrainingJobDoc,
    catalog: &Catalog,
    source_name: &str,
) -> Result<JobRequest, ManifestError> {
    check_kind(source_name, &doc.api_version, &doc.kind, "TrainingJob")?;
    if doc.metadata.name.is_empty() {
        return Err(err(source_name, "metadata.name: missing"));
    }
    let entry = catalog
        .resolve(&doc.spec.accelerator.kind)
        .map_err(|e| err(source_name, e.to_string()))?;
    let per_pod = accelerators_per_pod(
        &doc.spec.template,
        &entry.resource_name,
        &catalog.resource_names(),
    )
    .map_err(|m| err(source_name, m))?;
    let count = u64::from(doc.spec.replicas).saturating_mul(per_pod);
    let count = u32::try_from(count).map_err(|_| {
        err(
            source_name,
            format!("spec.replicas × limit = {count} accelerators is out of range"),
        )
    })?;
    let submitter = doc
        .metadata
        .annotations
        .get(SUBMITTED_BY)
        .and_then(|s| serde_json::from_str::<Principal>(s).ok());
    let spec_value =
        serde_json::to_value(&doc.spec).map_err(|e| err(source_name, e.to_string()))?;
    Ok(JobRequest {
        id: JobId {
            namespace: doc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: doc.metadata.name.clone(),
            uid: doc.metadata.uid.clone().unwrap_or_default(),
        },
        namespace_labels: Default::default(),
        model: doc.spec.model.clone(),
        accelerator: doc.spec.accelerator.clone(),
        count,
        max_duration: doc.spec.max_duration,
        priority: doc.spec.priority,
        submitter,
        spec_hash: spec_hash(&spec_value),
    })
}

/// The hash approvals bind to: SHA-256 of the RFC 8785 canonical JSON of `spec`.
pub fn spec_hash(spec: &serde_json::Value) -> String {
    content_hash(spec)
}

/// Parses one TrainingJob manifest.
pub fn parse_training_job(
    text: &str,
    catalog: &Catalog,
    source_name: &str,
) -> Result<JobRequest, ManifestError> {
    let doc: TrainingJobDoc =
        serde_saphyr::from_str(text).map_err(|e| err(source_name, e.to_string()))?;
    job_request(&doc, catalog, source_name)
}

/// Parses one or more ComputePolicy documents and validates each.
pub fn parse_policies(text: &str, source_name: &str) -> Result<Vec<Policy>, ManifestError> {
    let docs: Vec<ComputePolicyDoc> =
        serde_saphyr::from_multiple(text).map_err(|e| err(source_name, e.to_string()))?;
    let mut out = Vec::new();
    for d in docs {
        check_kind(source_name, &d.api_version, &d.kind, "ComputePolicy")?;
        if d.metadata.name.is_empty() {
            return Err(err(source_name, "metadata.name: missing"));
        }
        d.spec
            .validate(&d.metadata.name)
            .map_err(|e| err(source_name, e.to_string()))?;
        out.push(Policy {
            name: d.metadata.name,
            spec: d.spec,
        });
    }
    if out.is_empty() {
        return Err(err(source_name, "no ComputePolicy document found"));
    }
    Ok(out)
}
