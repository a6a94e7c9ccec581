//! The pure middle of a reconcile (Stackable's "build" step): TrainingJob →
//! engine input, engine state → status, admission → the batch/v1 Job. No
//! client, no clock: tested from fixtures.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use komptroller_engine::catalog::Catalog;
use komptroller_engine::decision::{Decision, Verdict};
use komptroller_engine::engine::Phase;
use komptroller_engine::job::{JobId, JobRequest, Principal};
use komptroller_engine::manifest::read_spec;
use komptroller_engine::units::sci;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{ConsumedStatus, DecisionStatus, SUBMITTED_BY, TrainingJob, TrainingJobStatus};

/// Label on every Job the operator creates (the Job watch selects on it).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "komptroller");
/// Label naming the TrainingJob a Job runs.
pub const TRAINING_JOB_LABEL: &str = "komptroller.dev/training-job";

/// The engine's view of a TrainingJob, read by the engine's one reading of
/// a spec ([`read_spec`]: the accelerator count from replicas × the
/// template's resource limit, the spec hash approvals bind to), with the
/// submitter from the webhook's stamp. What the job alone cannot run for
/// (no accelerator, a zero maxDuration, an unsupported precision) is left to
/// the engine, which rejects it with its own sentence; the error names every
/// field that keeps the spec from being read at all.
pub fn job_request(
    tj: &TrainingJob,
    namespace_labels: BTreeMap<String, String>,
    catalog: &Catalog,
) -> Result<JobRequest, String> {
    let name = tj.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name (missing): a TrainingJob needs a name".into());
    }
    let spec = serde_json::to_value(&tj.spec).map_err(|e| format!("spec: {e}"))?;
    let id = JobId {
        namespace: tj.namespace().unwrap_or_default(),
        name,
        uid: tj.uid().unwrap_or_default(),
    };
    let mut req = read_spec(id, &spec, catalog)
        .for_decision()
        .map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    req.submitter = tj
        .annotations()
        .get(SUBMITTED_BY)
        .and_then(|s| serde_json::from_str::<Principal>(s).ok());
    req.namespace_labels = namespace_labels.into();
    Ok(req)
}

/// The name of the Job that runs a TrainingJob: its own name when that fits a
/// label value (63), else a prefix and a hash. Deterministic, so a restart
/// finds the Job it created instead of creating another.
pub fn job_name(training_job: &str) -> String {
    if training_job.len() <= 63 {
        return training_job.to_string();
    }
    let hash = hex::encode(Sha256::digest(training_job.as_bytes()));
    let mut prefix: String = training_job.chars().take(52).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}-{}", &hash[..10])
}

/// The batch/v1 Job for an admitted TrainingJob: Indexed, parallelism =
/// completions = replicas, activeDeadlineSeconds = maxDuration, owned by the
/// TrainingJob (so Kubernetes deletes it with the TrainingJob).
pub fn workload(tj: &TrainingJob) -> Job {
    let name = tj.name_any();
    let mut labels: BTreeMap<String, String> = tj
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(TRAINING_JOB_LABEL.into(), label_value(&name));
    let mut template = tj.spec.template.clone();
    if let Some(spec) = template.spec.as_mut()
        && spec.restart_policy.is_none()
    {
        // Jobs accept only Never or OnFailure; Never lets the Job count failures.
        spec.restart_policy = Some("Never".into());
    }
    let replicas = i32::try_from(tj.spec.replicas).unwrap_or(i32::MAX);
    let deadline = i64::try_from(tj.spec.max_duration.0.as_secs()).unwrap_or(i64::MAX);
    let deadline = if tj.spec.max_duration.0.subsec_nanos() > 0 {
        deadline.saturating_add(1)
    } else {
        deadline
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name)),
            namespace: tj.namespace(),
            labels: Some(labels),
            owner_references: owner_reference(tj).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(replicas),
            parallelism: Some(replicas),
            active_deadline_seconds: Some(deadline.max(1)),
            template,
            ..Default::default()
        }),
        status: None,
    }
}

fn owner_reference(tj: &TrainingJob) -> Option<OwnerReference> {
    let mut o = tj.controller_owner_ref(&())?;
    o.block_owner_deletion = Some(true);
    Some(o)
}

/// A string usable as a label value (≤ 63 characters of `[A-Za-z0-9._-]`).
pub fn label_value(s: &str) -> String {
    let mut v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    while v.ends_with(['-', '_', '.']) {
        v.pop();
    }
    v
}

/// What the Job's status says about the workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    NotStarted,
    Running {
        started: Timestamp,
    },
    Succeeded {
        started: Timestamp,
        at: Timestamp,
    },
    Failed {
        started: Option<Timestamp>,
        at: Timestamp,
    },
    DeadlineExceeded {
        started: Option<Timestamp>,
        at: Timestamp,
    },
}

/// k8s-openapi carries its own jiff; times cross by nanoseconds.
pub fn ts(t: &Time) -> Timestamp {
    Timestamp::from_nanosecond(t.0.as_nanosecond()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The other way round.
pub fn k8s_time(t: Timestamp) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_nanosecond(t.as_nanosecond())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Reads a Job's status: startTime, completionTime, Complete/Failed conditions.
pub fn observe(job: &Job) -> Workload {
    let Some(status) = job.status.as_ref() else {
        return Workload::NotStarted;
    };
    let started = status.start_time.as_ref().map(ts);
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        let at = c
            .last_transition_time
            .as_ref()
            .map(ts)
            .or_else(|| status.completion_time.as_ref().map(ts))
            .unwrap_or_else(Timestamp::now);
        match c.type_.as_str() {
            "Complete" => {
                let at = status.completion_time.as_ref().map(ts).unwrap_or(at);
                return Workload::Succeeded {
                    started: started.unwrap_or(at),
                    at,
                };
            }
            "Failed" if c.reason.as_deref() == Some("DeadlineExceeded") => {
                return Workload::DeadlineExceeded { started, at };
            }
            "Failed" => return Workload::Failed { started, at },
            _ => {}
        }
    }
    match started {
        Some(started) => Workload::Running { started },
        None => Workload::NotStarted,
    }
}

/// What the reconcile knows beyond the engine, for the status.
#[derive(Clone, Debug, Default)]
pub struct StatusInputs {
    pub phase: Option<Phase>,
    pub decision: Option<Decision>,
    pub queue_position: Option<u32>,
    pub spec_hash: Option<String>,
    pub started_at: Option<Timestamp>,
    pub job_ref: Option<String>,
    pub consumed: Option<ConsumedStatus>,
    pub ledger_sequence: Option<u64>,
    /// A problem that is not a decision (e.g. a spec change refused after admission).
    pub problem: Option<String>,
}

/// The status a TrainingJob should have. Conditions keep their
/// lastTransitionTime while their status does not change.
pub fn status(tj: &TrainingJob, inputs: StatusInputs, now: Timestamp) -> TrainingJobStatus {
    let old = tj.status.clone().unwrap_or_default();
    let generation = tj.meta().generation;
    let decision = inputs.decision.as_ref();
    let phase = inputs.phase.or(old.phase);
    let decision_status = match decision {
        Some(d) => Some(DecisionStatus {
            verdict: Some(d.verdict),
            enforced_verdict: Some(d.enforced_verdict),
            policy: d.policy.clone(),
            rule: d.rule.clone(),
            message: Some(d.reason.clone()),
            governing: Some(d.governing),
            lineage_total: Some(d.lineage_total),
            approvals: d.approvals.clone(),
            ledger_sequence: inputs
                .ledger_sequence
                .or(old.decision.as_ref().and_then(|o| o.ledger_sequence)),
        }),
        None => old.decision.clone(),
    };
    let projection = decision
        .and_then(|d| d.projection.clone())
        .or(old.projection.clone());
    let projected_flop = decision
        .map(|d| sci(d.governing.0))
        .or(old.projected_flop.clone());
    let message = decision_status
        .as_ref()
        .and_then(|d| d.message.clone())
        .unwrap_or_default();

    let mut conditions = Vec::new();
    let cond = |type_: &str, ok: bool, reason: &str, message: &str| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: k8s_time(now),
    };
    if let Some(p) = phase {
        let admitted = matches!(
            p,
            Phase::Admitted | Phase::Running | Phase::Succeeded | Phase::Failed
        );
        let reason = match p {
            Phase::Pending => "Pending",
            Phase::Queued => "Throttled",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Rejected => "Rejected",
            _ => "Admitted",
        };
        conditions.push(cond("Admitted", admitted, reason, &message));
        let running = p == Phase::Running;
        conditions.push(cond(
            "Running",
            running,
            if running {
                "WorkloadRunning"
            } else {
                "NotRunning"
            },
            &match (running, &inputs.job_ref) {
                (true, Some(j)) => format!("Job {j} is running."),
                _ => format!("The workload is not running (phase {p:?})."),
            },
        ));
        let completed = match p {
            Phase::Succeeded => Some("Succeeded"),
            Phase::Failed => Some("Failed"),
            Phase::Rejected => Some("Rejected"),
            _ => None,
        };
        if let Some(reason) = completed {
            conditions.push(cond("Completed", true, reason, &message));
        }
        if let Some(need) = decision_status.as_ref().and_then(|d| d.approvals.as_ref()) {
            let approved = p != Phase::AwaitingApproval;
            conditions.push(cond(
                "Approved",
                approved,
                if approved {
                    "Approved"
                } else {
                    "ApprovalRequired"
                },
                &format!(
                    "{} approval(s) required from {}; approved by: {}.",
                    need.required,
                    if need.groups.is_empty() {
                        "any authorised approver".to_string()
                    } else {
                        need.groups.join(", ")
                    },
                    if need.approved_by.is_empty() {
                        "nobody yet".to_string()
                    } else {
                        need.approved_by.join(", ")
                    }
                ),
            ));
        }
    }
    if let Some(problem) = &inputs.problem {
        conditions.push(cond("SpecAccepted", false, "SpecImmutable", problem));
    }
    for c in &mut conditions {
        if let Some(o) = old.conditions.iter().find(|o| o.type_ == c.type_)
            && o.status == c.status
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    TrainingJobStatus {
        phase,
        projection,
        projected_flop,
        decision: decision_status,
        queue_position: if phase == Some(Phase::Queued) {
            inputs.queue_position
        } else {
            None
        },
        consumed: inputs.consumed.or(old.consumed),
        spec_hash: inputs.spec_hash.or(old.spec_hash),
        submitted_at: old.submitted_at.or_else(|| Some(now.to_string())),
        started_at: inputs.started_at.map(|t| t.to_string()).or(old.started_at),
        job_ref: inputs.job_ref.or(old.job_ref),
        observed_generation: generation,
        conditions,
    }
}

/// Status for a TrainingJob the engine cannot even read (the message names
/// the field); nothing is charged and no ledger entry is written.
pub fn invalid_status(tj: &TrainingJob, message: &str, now: Timestamp) -> TrainingJobStatus {
    let decision = Decision {
        verdict: Verdict::Reject,
        enforced_verdict: Verdict::Reject,
        mode: Default::default(),
        policy: None,
        rule: Some("validation/spec".into()),
        reason: format!("Rejected: {message}"),
        warnings: Vec::new(),
        projection: None,
        governing: Default::default(),
        lineage_total: Default::default(),
        tier: None,
        approvals: None,
        queue_position: None,
    };
    status(
        tj,
        StatusInputs {
            phase: Some(Phase::Rejected),
            decision: Some(decision),
            ..Default::default()
        },
        now,
    )
}

/// Whether two statuses differ in anything but condition timestamps.
pub fn same_status(a: &TrainingJobStatus, b: &TrainingJobStatus) -> bool {
    let strip = |s: &TrainingJobStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = k8s_time(Timestamp::UNIX_EPOCH);
        }
        s.submitted_at = None;
        serde_json::to_value(s).unwrap_or_default()
    };
    strip(a) == strip(b) && a.submitted_at.is_some() == b.submitted_at.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TrainingJobSpec;
    use serde_json::json;

    pub fn fixture(name: &str, gpus: u32, replicas: u32) -> TrainingJob {
        serde_json::from_value(json!({
            "apiVersion": "komptroller.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {
                "model": {"name": "llama"},
                "accelerator": {"type": "nvidia-h100-sxm"},
                "replicas": replicas,
                "maxDuration": "2h",
                "template": {"spec": {"containers": [{"name": "train", "image": "x",
                    "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn count_comes_from_replicas_times_limit() {
        let req = job_request(&fixture("a", 8, 4), BTreeMap::new(), &Catalog::builtin()).unwrap();
        assert_eq!(req.count, 32);
        assert_eq!(req.id.namespace, "ml");
        assert_eq!(req.id.uid, "uid-1");
        assert_eq!(req.spec_hash.len(), 64);
    }

    #[test]
    fn the_controller_hashes_the_spec_as_the_webhook_does() {
        let tj = fixture("a", 8, 4);
        let req = job_request(&tj, BTreeMap::new(), &Catalog::builtin()).unwrap();
        assert_eq!(req.spec_hash, tj.spec.spec_hash());
        // The webhook reads the stored spec, whose quantities may be numbers.
        let mut stored = serde_json::to_value(&tj.spec).unwrap();
        let limit = &mut stored["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"];
        *limit = json!(limit.as_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(
            TrainingJobSpec::spec_hash_of(&stored),
            Some(req.spec_hash.clone())
        );
        // Before the one spec hash, the webhook hashed the typed spec whole:
        // the same value, so status.specHash is unchanged.
        assert_eq!(
            req.spec_hash,
            komptroller_engine::engine::content_hash(&tj.spec)
        );
    }

    #[test]
    fn the_submitter_comes_from_the_stamp() {
        let mut tj = fixture("a", 8, 4);
        tj.annotations_mut().insert(
            SUBMITTED_BY.into(),
            r#"{"user":"alice","groups":["ml"]}"#.into(),
        );
        let req = job_request(&tj, BTreeMap::new(), &Catalog::builtin()).unwrap();
        let who = req.submitter.unwrap();
        assert_eq!(
            (who.user.as_str(), who.groups),
            ("alice", vec!["ml".to_string()])
        );
    }

    #[test]
    fn an_unreadable_spec_names_every_field() {
        let mut tj = fixture("a", 8, 4);
        tj.spec.accelerator.kind = "nvidia-h100-sxn".into();
        let message = job_request(&tj, BTreeMap::new(), &Catalog::builtin()).unwrap_err();
        assert!(
            message.starts_with(
                "spec.accelerator.type \"nvidia-h100-sxn\": unknown accelerator; the closest catalog keys are nvidia-h100-sxm"
            ),
            "{message}"
        );
    }

    #[test]
    fn what_the_job_alone_cannot_run_for_is_left_to_the_engine() {
        // No accelerator: the engine rejects it with its own sentence.
        let req = job_request(&fixture("a", 0, 4), BTreeMap::new(), &Catalog::builtin()).unwrap();
        assert_eq!(req.count, 0);
    }

    #[test]
    fn workload_is_indexed_with_deadline_and_owner() {
        let job = workload(&fixture("a", 8, 4));
        let spec = job.spec.unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.parallelism, Some(4));
        assert_eq!(spec.completions, Some(4));
        assert_eq!(spec.active_deadline_seconds, Some(7200));
        let owner = &job.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "TrainingJob");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            spec.template.spec.unwrap().restart_policy.as_deref(),
            Some("Never")
        );
    }

    #[test]
    fn job_names_are_deterministic_and_short() {
        assert_eq!(job_name("a"), "a");
        let long = "x".repeat(100);
        assert_eq!(job_name(&long), job_name(&long));
        assert!(job_name(&long).len() <= 63);
    }

    #[test]
    fn observes_deadline_exceeded() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "status": {"startTime": "2026-01-01T00:00:00Z", "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": "2026-01-01T02:00:00Z"},
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": "2026-01-01T02:00:00Z"}]}
        }))
        .unwrap();
        assert!(matches!(observe(&job), Workload::DeadlineExceeded { .. }));
    }
}
