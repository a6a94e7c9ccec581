//! The controller's cached copy of a TrainingJob ([`CachedTrainingJob`]).
//!
//! A `TrainingJob` carries its pod template inline, and a typed object is
//! mostly `None`s; the cache keeps the metadata (without managedFields), the
//! status, and the slimmed spec ([`slim`]: the containers' names and
//! resources) as compact JSON, and a reconcile expands it back into the
//! slimmed `TrainingJob` it works on ([`CachedTrainingJob::expand`]). The
//! full template is read from the API when the Job is created. What this
//! saves is measured in BENCHMARKS.md (operator RSS).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use komptroller_engine::catalog::Catalog;
use kube::api::ObjectMeta;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::build;
use crate::crd::{TrainingJob, TrainingJobStatus};
use crate::error::Result;

/// Annotation on the operator's slimmed copy of a TrainingJob (never
/// written to the cluster): the hash of the full spec, which the slimmed
/// copy no longer has. The cache itself keeps it as
/// [`CachedTrainingJob::spec_hash`]; [`CachedTrainingJob::expand`] puts it
/// back.
pub const CACHED_SPEC_HASH: &str = "komptroller.dev/cached-spec-hash";

/// Slims a TrainingJob for the controller's cache: managedFields go, and
/// the pod template keeps only its containers' names and resources (what
/// the accelerator count is read from), after the full spec's hash is noted
/// in [`CACHED_SPEC_HASH`]. The full template is read from the API when the
/// Job is created. An invalid job is cached whole (its error is reported
/// from the full object).
pub fn slim(tj: &mut TrainingJob, catalog: &Catalog) {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    tj.managed_fields_mut().clear();
    let Ok(req) = build::job_request(tj, BTreeMap::new(), catalog) else {
        return;
    };
    let template = &mut tj.spec.template;
    template.metadata = None;
    if let Some(spec) = template.spec.as_mut() {
        let containers = spec
            .containers
            .iter()
            .map(|c| Container {
                name: c.name.clone(),
                resources: c.resources.clone(),
                ..Default::default()
            })
            .collect();
        *spec = PodSpec {
            containers,
            ..Default::default()
        };
    }
    tj.annotations_mut()
        .insert(CACHED_SPEC_HASH.to_string(), req.spec_hash);
}

/// A TrainingJob as the controller's cache keeps it. Never read from or
/// written to the API (the `Deserialize` is only what the controller's
/// bounds ask for).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedTrainingJob {
    pub metadata: ObjectMeta,
    /// The slimmed spec ([`slim`]), compact JSON.
    pub spec: Box<str>,
    /// Hash of the full spec, when the spec was slimmed (an invalid job is
    /// cached whole and has none).
    pub spec_hash: Option<Box<str>>,
    pub status: Option<TrainingJobStatus>,
}

impl CachedTrainingJob {
    /// The cached copy of `tj`: slimmed ([`slim`]), then reduced.
    pub fn of(mut tj: TrainingJob, catalog: &Catalog) -> CachedTrainingJob {
        slim(&mut tj, catalog);
        let spec_hash = tj
            .annotations_mut()
            .remove(CACHED_SPEC_HASH)
            .map(String::into_boxed_str);
        if tj
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            tj.metadata.annotations = None;
        }
        // Serialising a derived struct of strings, numbers and maps cannot
        // fail; an empty spec would be reported as invalid on expansion.
        let spec = serde_json::to_string(&tj.spec)
            .unwrap_or_default()
            .into_boxed_str();
        CachedTrainingJob {
            metadata: tj.metadata,
            spec,
            spec_hash,
            status: tj.status,
        }
    }

    /// The slimmed TrainingJob this copy stands for (with the full spec's
    /// hash in [`CACHED_SPEC_HASH`], as [`slim`] leaves it).
    pub fn expand(&self) -> Result<TrainingJob> {
        let spec = serde_json::from_str(&self.spec)?;
        let mut tj = TrainingJob {
            metadata: self.metadata.clone(),
            spec,
            status: self.status.clone(),
        };
        if let Some(hash) = &self.spec_hash {
            tj.annotations_mut()
                .insert(CACHED_SPEC_HASH.to_string(), hash.to_string());
        }
        Ok(tj)
    }
}

/// A watch event of TrainingJobs as the cache takes it.
pub fn cached_event(event: Event<TrainingJob>, catalog: &Catalog) -> Event<CachedTrainingJob> {
    let of = |tj| CachedTrainingJob::of(tj, catalog);
    match event {
        Event::Apply(tj) => Event::Apply(of(tj)),
        Event::Delete(tj) => Event::Delete(of(tj)),
        Event::Init => Event::Init,
        Event::InitApply(tj) => Event::InitApply(of(tj)),
        Event::InitDone => Event::InitDone,
    }
}

impl Resource for CachedTrainingJob {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        TrainingJob::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        TrainingJob::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        TrainingJob::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        TrainingJob::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        TrainingJob::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expanding_gives_back_the_slimmed_job() {
        let catalog = Catalog::builtin();
        let tj: TrainingJob = serde_json::from_value(json!({
            "apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "t", "namespace": "ml", "uid": "u1",
                "annotations": {"komptroller.dev/submitted-by": "alice"}},
            "spec": {"model": {"name": "m"}, "accelerator": {"type": "nvidia-h100-sxm"},
                "replicas": 2, "maxDuration": "1h",
                "template": {"metadata": {"annotations": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "x",
                        "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}},
            "status": {"phase": "Queued", "queuePosition": 3}
        }))
        .unwrap();
        let mut slimmed = tj.clone();
        slim(&mut slimmed, &catalog);
        let cached = CachedTrainingJob::of(tj, &catalog);
        assert!(cached.spec_hash.is_some());
        assert!(!cached.annotations().contains_key(CACHED_SPEC_HASH));
        let back = cached.expand().unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&slimmed).unwrap()
        );
    }
}
