//! A Kueue Workload as the engine sees it, and a verdict as Kueue's
//! AdmissionCheck sees it. Pure functions over the Workload's JSON (Kueue
//! API `kueue.x-k8s.io/v1beta2`), so every rule here is unit-tested without
//! a cluster.
//!
//! The request comes from what will really run: for each pod set, `count`
//! pods × the accelerator limit of its template, read by the same code that
//! reads a TrainingJob's template ([`read_spec`]); the accelerator type from
//! the ResourceFlavor Kueue assigned (its `nvidia.com/gpu.product` node
//! label, resolved through the catalog's product names), else the job's
//! `komptroller.dev/accelerator` label; the duration from
//! `spec.maximumExecutionTimeSeconds` (the job label
//! `kueue.x-k8s.io/max-exec-time-seconds`). A workload without a duration
//! bound cannot be bounded in FLOP and is rejected with a sentence that says
//! which label to set.

use std::collections::BTreeMap;

use komptroller_engine::catalog::Catalog;
use komptroller_engine::engine::{Phase, content_hash};
use komptroller_engine::job::{JobId, JobRequest};
use komptroller_engine::manifest::training_job::read_spec;
use serde_json::{Value, json};

/// The label Kueue reads a job's execution-time bound from.
pub const MAX_EXEC_TIME_LABEL: &str = "kueue.x-k8s.io/max-exec-time-seconds";
/// The job label naming the lineage (model) its compute accumulates on.
pub const MODEL_LABEL: &str = "komptroller.dev/model";
/// The job label naming the base model of a fine-tune.
pub const BASE_MODEL_LABEL: &str = "komptroller.dev/base-model";
/// The job label naming the accelerator type when the flavor does not.
pub const ACCELERATOR_LABEL: &str = "komptroller.dev/accelerator";
/// The job label naming the precision (default bf16).
pub const PRECISION_LABEL: &str = "komptroller.dev/precision";
/// The node label a ResourceFlavor names the GPU product with (GPU Feature
/// Discovery's).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// The job a Workload stands for: its owner (kind, name, uid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The owner of a Workload: the controller owner reference (Kueue's job
/// integration sets it), else the first.
pub fn owner(workload: &Value) -> Option<Owner> {
    let refs = workload.pointer("/metadata/ownerReferences")?.as_array()?;
    let r = refs
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .or_else(|| refs.first())?;
    let s = |k: &str| r.get(k).and_then(Value::as_str).map(String::from);
    Some(Owner {
        api_version: s("apiVersion")?,
        kind: s("kind")?,
        name: s("name")?,
        uid: s("uid")?,
    })
}

/// The engine's identity of the job behind a Workload: `kind.group/name`
/// (as kubectl names it, so it never collides with a TrainingJob of the
/// same name), keyed by the job's uid, so every Workload Kueue makes for
/// one job (after evictions, re-creations) is one job in the books, charged
/// once.
pub fn job_id(namespace: &str, owner: &Owner) -> JobId {
    let group = owner.api_version.split_once('/').map(|(g, _)| g);
    let kind = owner.kind.to_ascii_lowercase();
    let name = match group {
        Some(g) => format!("{kind}.{g}/{}", owner.name),
        None => format!("{kind}/{}", owner.name),
    };
    JobId {
        namespace: namespace.to_string(),
        name,
        uid: owner.uid.clone(),
    }
}

/// Whether a Workload condition is `True`.
pub fn condition_true(workload: &Value, type_: &str) -> bool {
    condition(workload, type_)
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

/// A Workload condition.
pub fn condition<'a>(workload: &'a Value, type_: &str) -> Option<&'a Value> {
    workload
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// The state of check `name` in the Workload's `status.admissionChecks`.
pub fn check_state<'a>(workload: &'a Value, name: &str) -> Option<&'a str> {
    workload
        .pointer("/status/admissionChecks")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))?
        .get("state")
        .and_then(Value::as_str)
}

/// What the request is read from besides the Workload.
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    /// The owner job's labels.
    pub job_labels: &'a BTreeMap<String, String>,
    /// Each ResourceFlavor's `spec.nodeLabels`, by flavor name.
    pub flavor_labels: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub namespace_labels: BTreeMap<String, String>,
}

/// The engine request for a Workload whose quota Kueue reserved, or one
/// sentence saying what is missing (field, value, rule).
pub fn request(workload: &Value, id: JobId, cx: &Context<'_>) -> Result<JobRequest, String> {
    let secs = workload
        .pointer("/spec/maximumExecutionTimeSeconds")
        .and_then(Value::as_i64);
    let Some(secs) = secs.filter(|s| *s > 0) else {
        return Err(format!(
            "{} has no execution-time bound, so its compute cannot be bounded in FLOP: set the label {MAX_EXEC_TIME_LABEL} on the job (seconds, e.g. \"86400\")",
            id.name
        ));
    };
    let pod_sets = workload
        .pointer("/spec/podSets")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: the Workload has no spec.podSets", id.name))?;
    let accelerator = accelerator_of(workload, cx)?;
    let precision = cx
        .job_labels
        .get(PRECISION_LABEL)
        .cloned()
        .unwrap_or_else(|| "bf16".to_string());
    let mut model = json!({});
    if let Some(m) = cx.job_labels.get(MODEL_LABEL) {
        model["name"] = json!(m);
    }
    if let Some(b) = cx.job_labels.get(BASE_MODEL_LABEL) {
        model["baseModel"] = json!(b);
    }
    let mut total: u32 = 0;
    let mut first: Option<JobRequest> = None;
    let mut hashed = Vec::new();
    for (i, ps) in pod_sets.iter().enumerate() {
        let name = ps.get("name").and_then(Value::as_str).unwrap_or("main");
        let count = ps.get("count").and_then(Value::as_u64).unwrap_or(1);
        let template = ps.get("template").cloned().unwrap_or(Value::Null);
        let spec = json!({
            "model": model,
            "accelerator": {"type": accelerator, "precision": precision},
            "replicas": count,
            "maxDuration": format!("{secs}s"),
            "template": template,
        });
        let req = match read_spec(id.clone(), &spec, cx.catalog).for_decision() {
            Ok(r) => r,
            Err(problems) => {
                let problems: Vec<String> = problems
                    .iter()
                    .map(|p| {
                        p.to_string()
                            .replacen("spec.", &format!("spec.podSets[{i}] ({name}): "), 1)
                    })
                    .collect();
                return Err(format!("{}: {}", id.name, problems.join("; ")));
            }
        };
        total = total
            .checked_add(req.count)
            .ok_or_else(|| format!("{}: more accelerators than can be counted", id.name))?;
        hashed.push(
            json!({"name": name, "count": count, "accelerators": req.count, "spec": req.spec_hash}),
        );
        if first.is_none() {
            first = Some(req);
        }
    }
    let mut req = first.ok_or_else(|| format!("{}: the Workload has no pod sets", id.name))?;
    req.count = total;
    req.namespace_labels = cx.namespace_labels.clone().into();
    // What an approval binds to: every pod set and the duration.
    req.spec_hash =
        content_hash(&json!({"podSets": hashed, "maxDuration": secs, "accelerator": accelerator}));
    Ok(req)
}

/// The accelerator type: the assigned flavor's GPU product node label
/// (through the catalog's names), else the job's label.
fn accelerator_of(workload: &Value, cx: &Context<'_>) -> Result<String, String> {
    let assigned = workload
        .pointer("/status/admission/podSetAssignments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("flavors").and_then(Value::as_object))
        .flat_map(|f| f.iter())
        .filter(|(resource, _)| cx.catalog.resource_names().contains(&resource.as_str()))
        .filter_map(|(_, flavor)| flavor.as_str());
    for flavor in assigned {
        if let Some(product) = cx
            .flavor_labels
            .get(flavor)
            .and_then(|l| l.get(GPU_PRODUCT_LABEL))
        {
            return match cx.catalog.resolve(product) {
                Ok(entry) => Ok(entry.name.clone()),
                Err(_) => Err(format!(
                    "ResourceFlavor {flavor}: nodeLabels[{GPU_PRODUCT_LABEL}] {product:?} is not in the accelerator catalog; add it to a ComputePolicy's accelerators or label the job {ACCELERATOR_LABEL}"
                )),
            };
        }
    }
    cx.job_labels.get(ACCELERATOR_LABEL).cloned().ok_or_else(|| {
        format!(
            "the accelerator type is unknown: the assigned ResourceFlavor has no nodeLabels[{GPU_PRODUCT_LABEL}]; label the job {ACCELERATOR_LABEL} (e.g. nvidia-h100-sxm)"
        )
    })
}

/// The label that hands a job to a Kueue LocalQueue.
pub const QUEUE_NAME_LABEL: &str = "kueue.x-k8s.io/queue-name";

/// What the operator would hand the engine for a Kueue-managed batch/v1 Job
/// manifest (`komptroller project -f job.yaml`): the Workload Kueue makes
/// for it (one pod set of `parallelism` pods, the execution-time label),
/// read by [`request`]. Offline there is no ResourceFlavor, so the
/// accelerator type comes from the job's `komptroller.dev/accelerator`.
pub fn job_manifest_request(job: &Value, catalog: &Catalog) -> Result<JobRequest, String> {
    let labels: BTreeMap<String, String> = job
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let name = job
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name: missing")?;
    if !labels.contains_key(QUEUE_NAME_LABEL) {
        return Err(format!(
            "Job {name} is not managed by Kueue (no label {QUEUE_NAME_LABEL}): komptroller governs Jobs through Kueue's AdmissionCheck; label it with the LocalQueue's name, or submit a TrainingJob"
        ));
    }
    let ns = job
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let secs = match labels.get(MAX_EXEC_TIME_LABEL) {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|s| *s > 0).ok_or_else(|| {
            format!(
                "metadata.labels[{MAX_EXEC_TIME_LABEL:?}] {v:?}: must be a whole number of seconds above 0, e.g. \"86400\""
            )
        })?),
    };
    let count = job
        .pointer("/spec/parallelism")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let mut workload = json!({
        "metadata": {"name": name, "namespace": ns, "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "", "controller": true}]},
        "spec": {"podSets": [{"name": "main", "count": count,
            "template": job.pointer("/spec/template").cloned().unwrap_or(Value::Null)}]},
    });
    if let Some(s) = secs {
        workload["spec"]["maximumExecutionTimeSeconds"] = json!(s);
    }
    let owner = owner(&workload).ok_or("metadata.name: missing")?;
    let no_flavors = BTreeMap::new();
    request(
        &workload,
        job_id(ns, &owner),
        &Context {
            catalog,
            job_labels: &labels,
            flavor_labels: &no_flavors,
            namespace_labels: BTreeMap::new(),
        },
    )
}

/// An AdmissionCheck state for the engine's phase of the job.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckState {
    /// `Ready`, `Retry` or `Rejected` (Kueue's `Pending` is Kueue's).
    pub state: &'static str,
    pub message: String,
    /// For `Retry`: when to ask again.
    pub requeue_after_seconds: Option<i64>,
}

/// How long a Workload that waits for approval stays out of the queue
/// before it is looked at again. Retry releases the quota (holding it for
/// hours of human review would starve the ClusterQueue); an approval
/// arriving earlier is seen at the next look.
pub const APPROVAL_RETRY_SECONDS: i64 = 300;

/// The check state for a phase: Admit → Ready; Throttle → Retry (the
/// workload does not hold quota while it waits) after the engine's next
/// wake-up; Escalate → Retry after [`APPROVAL_RETRY_SECONDS`]; Reject →
/// Rejected (Kueue deactivates the workload).
pub fn check_for(phase: Phase, message: String, retry_after: Option<i64>) -> CheckState {
    let (state, requeue) = match phase {
        Phase::Admitted | Phase::Running | Phase::Succeeded | Phase::Failed => ("Ready", None),
        Phase::Queued | Phase::Pending => ("Retry", Some(retry_after.unwrap_or(60).clamp(1, 3600))),
        Phase::AwaitingApproval => ("Retry", Some(APPROVAL_RETRY_SECONDS)),
        Phase::Rejected => ("Rejected", None),
    };
    CheckState {
        state,
        message: message.chars().take(1000).collect(),
        requeue_after_seconds: requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(secs: Option<i64>, gpus: u32, count: u32) -> Value {
        let mut w = json!({
            "metadata": {"name": "job-train-1a2b3", "namespace": "ml",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                    "uid": "uid-1", "controller": true}]},
            "spec": {"podSets": [{"name": "main", "count": count, "template": {"spec": {
                "containers": [{"name": "c", "image": "x",
                    "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}]},
            "status": {"admission": {"clusterQueue": "cq", "podSetAssignments": [
                {"name": "main", "flavors": {"nvidia.com/gpu": "h100", "cpu": "default"}}]}}
        });
        if let Some(s) = secs {
            w["spec"]["maximumExecutionTimeSeconds"] = json!(s);
        }
        w
    }

    fn flavors() -> BTreeMap<String, BTreeMap<String, String>> {
        BTreeMap::from([(
            "h100".to_string(),
            BTreeMap::from([(
                GPU_PRODUCT_LABEL.to_string(),
                "NVIDIA-H100-80GB-HBM3".to_string(),
            )]),
        )])
    }

    fn read(w: &Value, labels: &BTreeMap<String, String>) -> Result<JobRequest, String> {
        let catalog = Catalog::builtin();
        let flavors = flavors();
        let o = owner(w).unwrap();
        request(
            w,
            job_id("ml", &o),
            &Context {
                catalog: &catalog,
                job_labels: labels,
                flavor_labels: &flavors,
                namespace_labels: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn the_request_is_what_will_run_on_the_assigned_flavor() {
        let labels = BTreeMap::from([(MODEL_LABEL.to_string(), "atlas".to_string())]);
        let r = read(&workload(Some(7200), 8, 4), &labels).unwrap();
        assert_eq!(r.count, 32, "4 pods × 8 GPUs");
        assert_eq!(r.accelerator.kind, "nvidia-h100-sxm");
        assert_eq!(r.max_duration.as_millis(), 7_200_000);
        assert_eq!(r.lineage(), "atlas");
        assert_eq!(r.id.name, "job.batch/train");
        assert_eq!(r.id.uid, "uid-1");
        // Without a model label the lineage is the job itself.
        let r = read(&workload(Some(7200), 8, 4), &BTreeMap::new()).unwrap();
        assert_eq!(r.lineage(), "job.batch/train");
    }

    #[test]
    fn several_pod_sets_add_up_and_the_hash_binds_to_them_and_the_duration() {
        let mut w = workload(Some(3600), 8, 2);
        let second = w["spec"]["podSets"][0].clone();
        let mut second = second;
        second["name"] = json!("workers");
        second["count"] = json!(3);
        w["spec"]["podSets"].as_array_mut().unwrap().push(second);
        let r = read(&w, &BTreeMap::new()).unwrap();
        assert_eq!(r.count, 8 * 2 + 8 * 3);
        let longer = {
            let mut l = w.clone();
            l["spec"]["maximumExecutionTimeSeconds"] = json!(7200);
            read(&l, &BTreeMap::new()).unwrap()
        };
        assert_ne!(r.spec_hash, longer.spec_hash);
        let more = {
            let mut m = w.clone();
            m["spec"]["podSets"][1]["count"] = json!(4);
            read(&m, &BTreeMap::new()).unwrap()
        };
        assert_ne!(r.spec_hash, more.spec_hash);
        assert_eq!(r.spec_hash, read(&w, &BTreeMap::new()).unwrap().spec_hash);
    }

    #[test]
    fn no_duration_bound_says_which_label_to_set() {
        let e = read(&workload(None, 8, 1), &BTreeMap::new()).unwrap_err();
        assert!(
            e.contains(MAX_EXEC_TIME_LABEL) && e.contains("job.batch/train"),
            "{e}"
        );
    }

    #[test]
    fn a_flavor_without_a_product_label_falls_back_to_the_jobs_label() {
        let mut w = workload(Some(3600), 8, 1);
        w["status"]["admission"]["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"] =
            json!("plain");
        let e = read(&w, &BTreeMap::new()).unwrap_err();
        assert!(e.contains(ACCELERATOR_LABEL), "{e}");
        let labels = BTreeMap::from([(
            ACCELERATOR_LABEL.to_string(),
            "nvidia-a100-sxm4-80gb".to_string(),
        )]);
        let r = read(&w, &labels);
        // The label's value goes through the same catalog checks as a TrainingJob's type.
        match r {
            Ok(r) => assert_eq!(r.accelerator.kind, "nvidia-a100-sxm4-80gb"),
            Err(e) => assert!(e.contains("nvidia-a100-sxm4-80gb"), "{e}"),
        }
    }

    #[test]
    fn a_bad_template_names_the_pod_set_field() {
        let mut w = workload(Some(3600), 8, 1);
        w["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] =
            json!("eight");
        let e = read(&w, &BTreeMap::new()).unwrap_err();
        assert!(
            e.contains("podSets[0] (main)") && e.contains("eight"),
            "{e}"
        );
    }

    #[test]
    fn a_kueue_job_manifest_reads_as_its_workload_would() {
        let catalog = Catalog::builtin();
        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "train", "namespace": "ml", "labels": {
                QUEUE_NAME_LABEL: "team-a", MAX_EXEC_TIME_LABEL: "7200",
                ACCELERATOR_LABEL: "nvidia-h100-sxm", MODEL_LABEL: "atlas"}},
            "spec": {"parallelism": 4, "template": {"spec": {"containers": [{"name": "c", "image": "x",
                "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}}});
        let r = job_manifest_request(&job, &catalog).unwrap();
        assert_eq!(
            (r.count, r.lineage(), r.id.name.as_str()),
            (32, "atlas", "job.batch/train")
        );
        assert_eq!(r.max_duration.as_millis(), 7_200_000);
        let mut unqueued = job.clone();
        unqueued["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(QUEUE_NAME_LABEL);
        let e = job_manifest_request(&unqueued, &catalog).unwrap_err();
        assert!(e.contains(QUEUE_NAME_LABEL), "{e}");
        let mut bad = job.clone();
        bad["metadata"]["labels"][MAX_EXEC_TIME_LABEL] = json!("2h");
        let e = job_manifest_request(&bad, &catalog).unwrap_err();
        assert!(e.contains("\"2h\"") && e.contains("seconds"), "{e}");
    }

    #[test]
    fn verdicts_map_to_check_states() {
        let ready = check_for(Phase::Admitted, "ok".into(), None);
        assert_eq!((ready.state, ready.requeue_after_seconds), ("Ready", None));
        let retry = check_for(Phase::Queued, "wait".into(), Some(120));
        assert_eq!(
            (retry.state, retry.requeue_after_seconds),
            ("Retry", Some(120))
        );
        let far = check_for(Phase::Queued, "wait".into(), Some(86_400));
        assert_eq!(
            far.requeue_after_seconds,
            Some(3600),
            "asked again at least hourly"
        );
        let held = check_for(Phase::AwaitingApproval, "approve".into(), None);
        assert_eq!(
            (held.state, held.requeue_after_seconds),
            ("Retry", Some(APPROVAL_RETRY_SECONDS))
        );
        let no = check_for(Phase::Rejected, "no".into(), None);
        assert_eq!(no.state, "Rejected");
    }
}
