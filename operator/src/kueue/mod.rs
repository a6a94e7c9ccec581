//! komptroller as a Kueue AdmissionCheck controller
//! (`komptroller.dev/compute-governance`, Kueue API `kueue.x-k8s.io/v1beta2`):
//! every Workload Kueue reserves quota for is decided by the same engine,
//! policies and ledger as a TrainingJob (`komptroller run --kueue`).
//!
//! - Every AdmissionCheck naming this controller is kept `Active=True`.
//!   Kueue keeps a ClusterQueue that lists an inactive check inactive, and
//!   admits a workload only once every check is `Ready`: komptroller down
//!   means **fail closed**, workloads wait with the check `Pending`, nothing
//!   on those queues is admitted ungoverned. To opt a queue out, remove the
//!   check from its `spec.admissionChecksStrategy` (or `spec.admissionChecks`).
//! - A Workload with an entry for one of those checks, once
//!   `QuotaReserved=True` and the entry `Pending`, becomes an engine request
//!   ([`workload::request`]) and is submitted into the books; the entry is
//!   set by server-side apply on `workloads/status` (field manager: the
//!   controller name, only our entry) after the decision's ledger entries
//!   are written: Admit → `Ready`; Throttle → `Retry` after the engine's next
//!   wake-up, so the workload does not hold quota while it waits; Escalate →
//!   `Retry` after [`workload::APPROVAL_RETRY_SECONDS`] (held without
//!   holding quota); Reject → `Rejected` (Kueue deactivates it). The message
//!   is the engine's sentence with the numbers.
//! - Metering from the Workload's conditions: `Admitted` starts the run (at
//!   its transition time), `Finished` ends it.
//! - One job is one job in the books however many Workloads Kueue makes for
//!   it (evictions, re-creations): it is keyed by its owner's uid
//!   ([`workload::job_id`]), so re-admission never charges twice.

pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use komptroller_engine::engine::{Event, Outcome, Phase};
use komptroller_engine::job::JobId;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use self::workload::{CheckState, Owner, check_for, check_state, condition, condition_true};
use crate::controller::books::Applied;
use crate::controller::context::Context;
use crate::error::{Error, Result};

/// The AdmissionCheck controller name.
pub const CONTROLLER_NAME: &str = "komptroller.dev/compute-governance";
/// Kueue's API group and the version komptroller speaks.
pub const GROUP: &str = "kueue.x-k8s.io";
pub const VERSION: &str = "v1beta2";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// What the Workload reconcile needs besides the books.
struct Kueue {
    ctx: Arc<Context>,
    checks: Store<DynamicObject>,
    flavors: Store<DynamicObject>,
    workloads: ApiResource,
}

/// Runs the AdmissionCheck controller for the leader term of `ctx` (until
/// the term ends).
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let check_ar = resource("AdmissionCheck", "admissionchecks");
    let flavor_ar = resource("ResourceFlavor", "resourceflavors");
    let workload_ar = resource("Workload", "workloads");
    let check_writer = reflector::store::Writer::new(check_ar.clone());
    let checks = check_writer.as_reader();
    let flavor_writer = reflector::store::Writer::new(flavor_ar.clone());
    let flavors = flavor_writer.as_reader();
    let check_api: Api<DynamicObject> = Api::all_with(client.clone(), &check_ar);
    let checks_loop = {
        let api = check_api.clone();
        reflector::reflector(
            check_writer,
            watcher::watcher(check_api, watcher::Config::default()).default_backoff(),
        )
        .applied_objects()
        .for_each(move |c| {
            let api = api.clone();
            async move {
                if let Ok(c) = c {
                    keep_active(&api, &c).await;
                }
            }
        })
    };
    let flavor_api: Api<DynamicObject> = Api::all_with(client.clone(), &flavor_ar);
    let flavors_loop = reflector::reflector(
        flavor_writer,
        watcher::watcher(flavor_api, watcher::Config::default()).default_backoff(),
    )
    .for_each(|_| futures::future::ready(()));
    let state = Arc::new(Kueue {
        ctx,
        checks: checks.clone(),
        flavors: flavors.clone(),
        workloads: workload_ar.clone(),
    });
    let workload_api: Api<DynamicObject> = Api::all_with(client, &workload_ar);
    let controller = async move {
        // Decide only once the checks and flavors are known.
        let _ = tokio::join!(checks.wait_until_ready(), flavors.wait_until_ready());
        Controller::new_with(workload_api, watcher::Config::default(), workload_ar)
            .run(reconcile, error_policy, state)
            .for_each(|_| futures::future::ready(()))
            .await;
    };
    tokio::join!(checks_loop, flavors_loop, controller);
}

/// Sets `Active=True` on an AdmissionCheck of this controller that does not
/// show it yet.
async fn keep_active(api: &Api<DynamicObject>, check: &DynamicObject) {
    if check
        .data
        .pointer("/spec/controllerName")
        .and_then(Value::as_str)
        != Some(CONTROLLER_NAME)
    {
        return;
    }
    let v = serde_json::to_value(check).unwrap_or_default();
    if condition_true(&v, "Active") {
        return;
    }
    let name = check.name_any();
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "AdmissionCheck",
        "metadata": {"name": name},
        "status": {"conditions": [{
            "type": "Active", "status": "True", "reason": "Active",
            "message": "komptroller governs the workloads of queues that list this check",
            "lastTransitionTime": Timestamp::now().round(jiff::Unit::Second).unwrap_or(Timestamp::now()).to_string(),
            "observedGeneration": check.metadata.generation,
        }]}
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(CONTROLLER_NAME).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => tracing::info!(check = %name, "AdmissionCheck marked Active"),
        Err(e) => {
            tracing::warn!(check = %name, error = %e, "could not mark the AdmissionCheck Active")
        }
    }
}

fn error_policy(w: Arc<DynamicObject>, error: &Error, _: Arc<Kueue>) -> Action {
    tracing::warn!(workload = %format!("{}/{}", w.namespace().unwrap_or_default(), w.name_any()), error = %error, "Workload reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// The names of this controller's checks among the Workload's entries.
fn our_checks(w: &Value, checks: &Store<DynamicObject>) -> Vec<String> {
    w.pointer("/status/admissionChecks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .filter(|name| {
            checks
                .get(&ObjectRef::new_with(
                    name,
                    resource("AdmissionCheck", "admissionchecks"),
                ))
                .is_some_and(|c| {
                    c.data
                        .pointer("/spec/controllerName")
                        .and_then(Value::as_str)
                        == Some(CONTROLLER_NAME)
                })
        })
        .map(String::from)
        .collect()
}

/// A condition's transition time.
fn since(w: &Value, type_: &str) -> Option<Timestamp> {
    condition(w, type_)?
        .get("lastTransitionTime")?
        .as_str()?
        .parse()
        .ok()
}

async fn reconcile(obj: Arc<DynamicObject>, k: Arc<Kueue>) -> Result<Action> {
    let w = serde_json::to_value(&*obj).map_err(|e| Error::Invalid(e.to_string()))?;
    let mine = our_checks(&w, &k.checks);
    if mine.is_empty() {
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().unwrap_or_default();
    let owner = workload::owner(&w).unwrap_or_else(|| Owner {
        api_version: format!("{GROUP}/{VERSION}"),
        kind: "Workload".into(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
    });
    let id = workload::job_id(&ns, &owner);
    let ctx = &k.ctx;
    let now = Timestamp::now();

    // Metering from the Workload's conditions.
    let (_, applied) = ctx.with_books(None, |b| {
        let mut applied = Applied::default();
        if matches!(b.engine.phase(&id), Some(Phase::Admitted | Phase::Running)) {
            if condition_true(&w, "Admitted") || condition_true(&w, "Finished") {
                let started = since(&w, "Admitted").unwrap_or(now);
                if b.engine.phase(&id) == Some(Phase::Admitted) {
                    applied.extend(b.apply(started, Event::Start { job: id.clone() })?);
                }
            }
            if condition_true(&w, "Finished") {
                let failed = condition(&w, "Finished")
                    .and_then(|c| c.get("reason"))
                    .and_then(Value::as_str)
                    == Some("Failed");
                let outcome = if failed {
                    Outcome::Failed
                } else {
                    Outcome::Succeeded
                };
                applied.extend(b.apply(
                    now,
                    Event::FinishedAt {
                        job: id.clone(),
                        outcome,
                        ended_at: since(&w, "Finished").unwrap_or(now),
                    },
                )?);
            }
        }
        Ok(((), applied))
    })?;
    ctx.persist(&applied).await?;

    let pending: Vec<&String> = mine
        .iter()
        .filter(|c| matches!(check_state(&w, c), None | Some("Pending")))
        .collect();
    if !condition_true(&w, "QuotaReserved") || pending.is_empty() || condition_true(&w, "Finished")
    {
        return Ok(Action::await_change());
    }
    let (state, decided_now) = decide(&k, &w, &owner, &id, now).await?;
    for check in pending {
        write_check(&k, &obj, check, &state).await?;
    }
    // Kueue resets a check to Pending when it evicts or deactivates the
    // Workload, so the sentence is also an Event on the job, where its owner
    // looks (`kubectl describe job`): once per decision, not per retry.
    if decided_now || state.state != "Retry" {
        publish_event(&k, &ns, &owner, &state);
    }
    Ok(Action::await_change())
}

/// The decision about a Workload's job, durable in the ledger before it is
/// returned; with it, whether the engine decided (or re-decided) the job
/// just now.
async fn decide(
    k: &Kueue,
    w: &Value,
    owner: &Owner,
    id: &JobId,
    now: Timestamp,
) -> Result<(CheckState, bool)> {
    let ctx = &k.ctx;
    let job_labels = job_labels(k, w, owner, &id.namespace).await?;
    let flavor_labels: BTreeMap<String, BTreeMap<String, String>> = k
        .flavors
        .state()
        .iter()
        .map(|f| {
            let labels = f
                .data
                .pointer("/spec/nodeLabels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            (f.name_any(), labels)
        })
        .collect();
    let cx = workload::Context {
        catalog: &ctx.catalog,
        job_labels: &job_labels,
        flavor_labels: &flavor_labels,
        namespace_labels: ctx.namespace_labels(&id.namespace),
    };
    let req = match workload::request(w, id.clone(), &cx) {
        Ok(r) => r,
        Err(message) => {
            return Ok((
                CheckState {
                    state: "Rejected",
                    message,
                    requeue_after_seconds: None,
                },
                true,
            ));
        }
    };
    let ((phase, message, wake, decided_now), applied) = ctx.with_books(None, |b| {
        let (applied, problem) = b.submit(now, req)?;
        let decided_now = applied.decisions.iter().any(|(j, _)| j == id);
        if !decided_now {
            b.engine.refresh_reason(now, id);
        }
        let message = problem
            .or_else(|| b.engine.decision(id).map(|d| d.reason.clone()))
            .unwrap_or_default();
        let wake = b
            .engine
            .next_wakeup()
            .map(|t| (t.as_second() - now.as_second()).max(1));
        Ok(((b.engine.phase(id), message, wake, decided_now), applied))
    })?;
    ctx.persist(&applied).await?;
    let state = match phase {
        Some(p) => check_for(p, message, wake),
        None => CheckState {
            state: "Retry",
            message,
            requeue_after_seconds: Some(60),
        },
    };
    Ok((state, decided_now))
}

/// The owner job's labels (a batch/v1 Job is read; for other kinds the
/// first pod set's template labels stand in).
async fn job_labels(
    k: &Kueue,
    w: &Value,
    owner: &Owner,
    ns: &str,
) -> Result<BTreeMap<String, String>> {
    if owner.api_version == "batch/v1" && owner.kind == "Job" {
        let jobs: Api<Job> = Api::namespaced(k.ctx.client.clone(), ns);
        if let Some(j) = jobs.get_opt(&owner.name).await? {
            return Ok(j.metadata.labels.unwrap_or_default());
        }
    }
    Ok(w.pointer("/spec/podSets/0/template/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default())
}

/// Our entry of the Workload's `status.admissionChecks`, by server-side
/// apply (field manager: the controller name, so only our entry is ours).
async fn write_check(k: &Kueue, w: &DynamicObject, check: &str, state: &CheckState) -> Result<()> {
    let ns = w.namespace().unwrap_or_default();
    let mut entry = json!({
        "name": check,
        "state": state.state,
        "message": state.message,
        "lastTransitionTime": Timestamp::now().round(jiff::Unit::Second).unwrap_or(Timestamp::now()).to_string(),
    });
    if let Some(s) = state.requeue_after_seconds {
        entry["requeueAfterSeconds"] = json!(s);
    }
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Workload",
        "metadata": {"name": w.name_any(), "namespace": ns},
        "status": {"admissionChecks": [entry]},
    });
    let api: Api<DynamicObject> = Api::namespaced_with(k.ctx.client.clone(), &ns, &k.workloads);
    api.patch_status(
        &w.name_any(),
        &PatchParams::apply(CONTROLLER_NAME).force(),
        &Patch::Apply(&body),
    )
    .await?;
    tracing::info!(workload = %format!("{ns}/{}", w.name_any()), check, state = state.state, message = %state.message, "admission check set");
    Ok(())
}

/// The decision as an Event on the job (in the background: it is for
/// people, and a failed publish is only logged).
fn publish_event(k: &Kueue, ns: &str, owner: &Owner, state: &CheckState) {
    let (reason, type_) = match state.state {
        "Ready" => ("Admitted", EventType::Normal),
        "Rejected" => ("Rejected", EventType::Warning),
        _ => ("Waiting", EventType::Normal),
    };
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(state.message.chars().take(1000).collect()),
        action: "Decide".into(),
        secondary: None,
    };
    let reference = ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: Some(ns.to_string()),
        uid: Some(owner.uid.clone()).filter(|u| !u.is_empty()),
        ..Default::default()
    };
    let recorder = Recorder::new(k.ctx.client.clone(), k.ctx.reporter.clone());
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "could not publish the Kueue job's Event");
        }
    });
}
