//! Real Kueue on the e2e control plane: the ground komptroller's Kueue
//! AdmissionCheck controller will be tested on. Kueue's manager
//! (`sigs.k8s.io/kueue`, built by e2e/cluster/build) runs out of cluster
//! with its webhooks registered; a batch/v1 Job that names a LocalQueue is
//! suspended by Kueue's webhook, gets a Workload, is admitted against a
//! ClusterQueue's `nvidia.com/gpu` quota and runs on a kwok H100 node; a
//! ClusterQueue that names an AdmissionCheck of komptroller's controller
//! holds the Workload with quota reserved but not admitted until the check
//! is Ready (set here by server-side apply, standing in for the controller).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::harness::{Cluster, RUNTIME_ANNOTATION, wait_for};
use e2e::kueue::{
    CONTROLLER_NAME, GPU_PRODUCT_LABEL, H100_PRODUCT, Kueue, QUEUE_NAME_LABEL, Queues,
    admission_check, apply_queues, check_state, is_true, set_admission_check_active,
    set_check_state, wait_cluster_queue_active, wait_workload, workload_of,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

/// A Job for the queue: one pod, `gpus` GPUs, succeeding 2 s after it runs
/// on a kwok node. Created not suspended: Kueue's webhook suspends it.
fn job(name: &str, queue: &str, gpus: u32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {QUEUE_NAME_LABEL: queue}},
        "spec": {
            "suspend": false,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {RUNTIME_ANNOTATION: "2s"}},
                "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "train", "image": "busybox",
                        "resources": {
                            "requests": {"cpu": "1", "memory": "1Gi"},
                            "limits": {"nvidia.com/gpu": gpus}}}]}}}
    }))
    .unwrap()
}

fn job_condition(j: &Job, t: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

fn suspended(j: &Job) -> Option<bool> {
    j.spec.as_ref().and_then(|s| s.suspend)
}

/// Kueue on this binary's control plane (and which cluster, server and
/// Kueue versions this ran against, printed).
async fn setup(prefix: &str) -> (Cluster, &'static Kueue, e2e::harness::TempNamespace) {
    let c = Cluster::start_shared().await.unwrap();
    let kueue = match Kueue::start(&c).await {
        Ok(k) => k,
        Err(e) => panic!("\n\nKUEUE IS NOT AVAILABLE, the Kueue scenarios cannot run: {e}\n"),
    };
    assert!(kueue.version.starts_with("v0.17."), "{kueue:?}");
    let ns = c.temp_namespace(prefix).await.unwrap();
    (c, kueue, ns)
}

/// Creates the Job and checks Kueue's webhook suspended it on the way in.
async fn create_job(c: &Cluster, q: &Queues, name: &str, gpus: u32) -> Job {
    let jobs: Api<Job> = Api::namespaced(c.client(), &q.namespace);
    let created = jobs
        .create(&PostParams::default(), &job(name, &q.local_queue, gpus))
        .await
        .unwrap();
    assert_eq!(
        suspended(&created),
        Some(true),
        "Kueue's Job webhook did not suspend a Job naming a queue: {:?}",
        created.spec
    );
    created
}

/// Waits for the Job to run its pod on a kwok H100 node (the flavor's node
/// label injected by Kueue) and complete.
async fn runs_to_completion(c: &Cluster, q: &Queues, name: &str) {
    let jobs: Api<Job> = Api::namespaced(c.client(), &q.namespace);
    wait_for(&jobs, name, T, |j| suspended(j) == Some(false))
        .await
        .unwrap();
    let done = wait_for(&jobs, name, T, |j| job_condition(j, "Complete"))
        .await
        .unwrap();
    assert_eq!(done.status.and_then(|s| s.succeeded), Some(1));
    let pods: Api<Pod> = Api::namespaced(c.client(), &q.namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let spec = pods[0].spec.as_ref().unwrap();
    let node = spec.node_name.as_deref().unwrap_or_default();
    assert!(node.starts_with("kwok-h100-"), "ran on {node:?}");
    assert_eq!(
        spec.node_selector
            .as_ref()
            .and_then(|s| s.get(GPU_PRODUCT_LABEL))
            .map(String::as_str),
        Some(H100_PRODUCT),
        "Kueue did not inject the flavor's node label: {:?}",
        spec.node_selector
    );
    assert_eq!(
        pods[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
}

fn assigned_flavor(w: &Value) -> Option<&str> {
    w.pointer("/status/admission/podSetAssignments/0/flavors/nvidia.com~1gpu")
        .and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_admitted_by_kueue_and_runs_on_a_kwok_gpu_node() {
    let (c, _kueue, ns) = setup("kueue-run").await;
    let q = apply_queues(&c, &ns.name, &ns.name, 16, &[]).await.unwrap();
    wait_cluster_queue_active(&c, &q.cluster_queue, "True", T)
        .await
        .unwrap();

    let created = create_job(&c, &q, "train", 8).await;
    let uid = created.metadata.uid.unwrap();
    let w = workload_of(&c, &ns.name, &uid, T).await.unwrap();
    let wname = w.metadata.name.clone().unwrap();
    let w = wait_workload(&c, &ns.name, &wname, T, |w| is_true(w, "Admitted"))
        .await
        .unwrap();
    let w = serde_json::to_value(&w).unwrap();
    assert!(is_true(&w, "QuotaReserved"), "{w}");
    assert_eq!(
        w.pointer("/status/admission/clusterQueue")
            .and_then(Value::as_str),
        Some(q.cluster_queue.as_str()),
        "{w}"
    );
    assert_eq!(assigned_flavor(&w), Some(q.flavor.as_str()), "{w}");
    assert_eq!(
        w.pointer("/spec/podSets/0/count").and_then(Value::as_i64),
        Some(1),
        "{w}"
    );

    runs_to_completion(&c, &q, "train").await;
    wait_workload(&c, &ns.name, &wname, T, |w| is_true(w, "Finished"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_check_of_komptrollers_controller_holds_the_workload_until_ready() {
    let (c, _kueue, ns) = setup("kueue-check").await;
    let check = format!("{}-governance", ns.name);
    c.apply_yaml(
        &serde_json::to_string(&admission_check(&check, CONTROLLER_NAME)).unwrap(),
        None,
    )
    .await
    .unwrap();
    let q = apply_queues(&c, &ns.name, &ns.name, 16, &[&check])
        .await
        .unwrap();
    // No controller has said the check is Active: Kueue keeps the
    // ClusterQueue inactive (fail closed).
    let cq = wait_cluster_queue_active(&c, &q.cluster_queue, "False", T)
        .await
        .unwrap();
    let reasons: Vec<&str> = cq
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "Active")
        .filter_map(|c| c["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"AdmissionCheckInactive"),
        "the ClusterQueue is inactive for another reason: {reasons:?}"
    );
    set_admission_check_active(&c, &check, true).await.unwrap();
    wait_cluster_queue_active(&c, &q.cluster_queue, "True", T)
        .await
        .unwrap();

    let created = create_job(&c, &q, "held", 8).await;
    let uid = created.metadata.uid.unwrap();
    let wname = workload_of(&c, &ns.name, &uid, T)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    let w = wait_workload(&c, &ns.name, &wname, T, |w| {
        is_true(w, "QuotaReserved") && check_state(w, &check) == Some("Pending")
    })
    .await
    .unwrap();
    let w = serde_json::to_value(&w).unwrap();
    assert!(
        !is_true(&w, "Admitted"),
        "admitted with the check Pending: {w}"
    );
    assert_eq!(assigned_flavor(&w), Some(q.flavor.as_str()), "{w}");
    // It stays held: quota reserved, not admitted, the Job suspended.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = wait_workload(&c, &ns.name, &wname, T, |_| true)
        .await
        .unwrap();
    let w = serde_json::to_value(&w).unwrap();
    assert!(is_true(&w, "QuotaReserved"), "{w}");
    assert!(
        !is_true(&w, "Admitted"),
        "admitted with the check Pending: {w}"
    );
    assert_eq!(check_state(&w, &check), Some("Pending"), "{w}");
    let jobs: Api<Job> = Api::namespaced(c.client(), &ns.name);
    assert_eq!(
        suspended(&jobs.get("held").await.unwrap()),
        Some(true),
        "the Job ran before its check was Ready"
    );

    // The controller's verdict: Ready, by server-side apply of its own
    // entry to workloads/status.
    let applied = set_check_state(
        &c,
        &ns.name,
        &wname,
        &check,
        "Ready",
        "admitted by the e2e suite standing in for komptroller",
    )
    .await
    .unwrap();
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == CONTROLLER_NAME),
        "{managers:?}"
    );
    let w = wait_workload(&c, &ns.name, &wname, T, |w| is_true(w, "Admitted"))
        .await
        .unwrap();
    let w = serde_json::to_value(&w).unwrap();
    assert_eq!(check_state(&w, &check), Some("Ready"), "{w}");
    runs_to_completion(&c, &q, "held").await;
}
