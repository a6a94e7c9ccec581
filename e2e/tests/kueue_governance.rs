//! komptroller as Kueue's AdmissionCheck controller, on the real control
//! plane with real Kueue (its manager built from sigs.k8s.io/kueue, out of
//! cluster): `komptroller run --kueue` keeps its check Active (before it
//! runs, the ClusterQueue is inactive: fail closed), and a batch/v1 Job
//! that names the queue and `kueue.x-k8s.io/max-exec-time-seconds` is
//! decided by the engine (with komptroller down, it waits with its check
//! Pending and is never admitted ungoverned): admitted (the check Ready, the Job runs, the
//! ledger has its decision and metering), rejected over a ceiling (the check
//! Rejected with the engine's numbers, Kueue deactivates the Workload, the
//! Job never runs), rejected without a duration bound (naming the label);
//! throttled by a komptroller cap (the check Retry, the quota given back,
//! admitted once, at Kueue's next try after the first job ended).
//!
//! The operator runs as the chart's ServiceAccount with the chart's RBAC
//! for `--set kueue.enabled=true` (tests/fixtures/chart-rbac-kueue.yaml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::harness::{
    Cluster, Process, RUNTIME_ANNOTATION, TempNamespace, crds_dir, wait_for, workspace_binary,
};
use e2e::kueue::{
    CONTROLLER_NAME, Kueue, QUEUE_NAME_LABEL, Queues, admission_check, apply_queues, check_state,
    is_true, wait_cluster_queue_active, wait_workload, workload_of,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);
const MAX_EXEC: &str = "kueue.x-k8s.io/max-exec-time-seconds";

fn job(name: &str, queue: &str, gpus: u32, max_exec_secs: Option<u64>) -> Job {
    let mut labels = json!({QUEUE_NAME_LABEL: queue, "komptroller.dev/model": "atlas"});
    if let Some(s) = max_exec_secs {
        labels[MAX_EXEC] = json!(s.to_string());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
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

async fn create(c: &Cluster, q: &Queues, j: Job) -> (String, String) {
    let jobs: Api<Job> = Api::namespaced(c.client(), &q.namespace);
    let created = jobs.create(&PostParams::default(), &j).await.unwrap();
    let uid = created.metadata.uid.unwrap();
    let w = workload_of(c, &q.namespace, &uid, T).await.unwrap();
    (created.metadata.name.unwrap(), w.metadata.name.unwrap())
}

async fn check_settled(c: &Cluster, ns: &str, workload: &str, check: &str, want: &str) -> Value {
    let w = wait_workload(c, ns, workload, T, |w| check_state(w, check) == Some(want))
        .await
        .unwrap_or_else(|e| panic!("{workload}: check {check} never became {want}: {e}"));
    serde_json::to_value(&w).unwrap()
}

fn check_message<'a>(w: &'a Value, check: &str) -> &'a str {
    w.pointer("/status/admissionChecks")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == check))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
}

/// Waits for komptroller's Event on job `name` with `reason` whose note
/// holds every needle (the sentence a user sees in `kubectl describe job`;
/// Kueue resets a check's own entry when it evicts or deactivates).
async fn decision_event(
    c: &Cluster,
    ns: &str,
    name: &str,
    reason: &str,
    needles: &[&str],
) -> String {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(c.client(), ns);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .find(|n| needles.iter().all(|x| n.contains(x)));
        if let Some(note) = found {
            return note;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} Event on job {name} with {needles:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A rejected job: Kueue deactivates its Workload, the Job stays suspended,
/// and the Event says why.
async fn rejected(c: &Cluster, ns: &str, name: &str, workload: &str, needles: &[&str]) {
    wait_workload(c, ns, workload, T, |w| {
        w.pointer("/spec/active") == Some(&json!(false))
    })
    .await
    .unwrap_or_else(|e| panic!("{workload} was never deactivated: {e}"));
    decision_event(c, ns, name, "Rejected", needles).await;
    let jobs: Api<Job> = Api::namespaced(c.client(), ns);
    let j = jobs.get(name).await.unwrap();
    assert_eq!(
        j.spec.and_then(|s| s.suspend),
        Some(true),
        "a rejected job never runs"
    );
}

async fn ledger(c: &Cluster) -> Vec<Value> {
    c.ledger_entries().await.unwrap()
}

/// A governed queue: the product CRDs, real Kueue, a temporary namespace,
/// an AdmissionCheck of komptroller's controller on a ClusterQueue with 32
/// GPUs of quota (inactive until komptroller runs: fail closed), the policy
/// `spec` named `<ns>-<policy>`, and `komptroller run --kueue` as the
/// chart's ServiceAccount, after which the queue is Active.
struct Governed {
    c: Cluster,
    ns: TempNamespace,
    q: Queues,
    check: String,
    op: Process,
}

async fn governed(prefix: &str, policy: &str, spec: Value) -> Governed {
    let c = Cluster::start().await.unwrap();
    c.install_crds(&crds_dir(), T).await.unwrap();
    let kueue = Kueue::start(&c).await.unwrap_or_else(|e| {
        panic!("\n\nKUEUE IS NOT AVAILABLE, the Kueue scenarios cannot run: {e}\n")
    });
    eprintln!("e2e: komptroller --kueue against Kueue {}", kueue.version);
    let ns = c.temp_namespace(prefix).await.unwrap();
    let kubeconfig = c
        .operator_kubeconfig_with("chart-rbac-kueue.yaml")
        .await
        .unwrap();
    let check = format!("{}-governance", ns.name);
    c.apply_yaml(
        &serde_json::to_string(&admission_check(&check, CONTROLLER_NAME)).unwrap(),
        None,
    )
    .await
    .unwrap();
    let q = apply_queues(&c, &ns.name, &ns.name, 32, &[&check])
        .await
        .unwrap();
    // Nobody governs yet: Kueue keeps the queue inactive (fail closed).
    wait_cluster_queue_active(&c, &q.cluster_queue, "False", T)
        .await
        .unwrap();
    let policy = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy",
        "metadata": {"name": format!("{}-{policy}", ns.name)}, "spec": spec});
    c.apply_yaml(&serde_json::to_string(&policy).unwrap(), None)
        .await
        .unwrap();
    let bin = workspace_binary("komptroller").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "run",
        "--kueue",
        "--metrics-addr",
        &addr,
        "--namespace",
        "komptroller-system",
        "--report-interval",
        "2s",
    ];
    let mut op = Process::start(&bin, &args, Some(&kubeconfig), &[("RUST_LOG", "info")]).unwrap();
    op.wait_for_line("books rebuilt", T).await.unwrap();
    // komptroller marks its check Active: the queue opens.
    wait_cluster_queue_active(&c, &q.cluster_queue, "True", T)
        .await
        .unwrap();
    Governed {
        c,
        ns,
        q,
        check,
        op,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kueue_workloads_are_admitted_and_rejected_by_the_engine() {
    let Governed {
        c,
        ns,
        q,
        check,
        mut op,
    } = governed(
        "kueue-gov",
        "ceiling",
        json!({"tiers": [{"name": "ceiling", "threshold": 1e20, "action": "Reject"}]}),
    )
    .await;

    // Admitted: 8 H100 for 1 h = 2.85e19 FLOP, under the ceiling.
    let (small, w_small) = create(&c, &q, job("small", &q.local_queue, 8, Some(3600))).await;
    let w = check_settled(&c, &ns.name, &w_small, &check, "Ready").await;
    assert!(check_message(&w, &check).contains("2.85e19"), "{w}");
    decision_event(&c, &ns.name, &small, "Admitted", &["2.85e19"]).await;
    let jobs: Api<Job> = Api::namespaced(c.client(), &ns.name);
    wait_for(&jobs, &small, T, |j| {
        j.status.as_ref().and_then(|s| s.succeeded) == Some(1)
    })
    .await
    .unwrap();
    wait_workload(&c, &ns.name, &w_small, T, |w| is_true(w, "Finished"))
        .await
        .unwrap();

    // Over the ceiling: 8 H100 for 5 h = 1.42e20 FLOP.
    let (big, w_big) = create(&c, &q, job("big", &q.local_queue, 8, Some(5 * 3600))).await;
    rejected(&c, &ns.name, &big, &w_big, &["1.42e20", "1e20", "ceiling"]).await;

    // No duration bound: rejected, naming the label to set.
    let (free, w_free) = create(&c, &q, job("unbounded", &q.local_queue, 8, None)).await;
    rejected(&c, &ns.name, &free, &w_free, &[MAX_EXEC]).await;

    // The books: one admission of the small job, its run metered; the big
    // job's rejection.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let entries = ledger(&c).await;
        let of = |name: &str, kind: &str| {
            entries
                .iter()
                .filter(|e| e["job"]["name"] == name && e["event"]["kind"] == kind)
                .cloned()
                .collect::<Vec<_>>()
        };
        let decided = of("job.batch/small", "Decided");
        let finished = of("job.batch/small", "Finished");
        let rejected = of("job.batch/big", "Decided");
        if !finished.is_empty() && !rejected.is_empty() {
            assert_eq!(decided.len(), 1, "admitted once: {decided:?}");
            assert_eq!(decided[0]["event"]["verdict"], "Admit");
            assert_eq!(decided[0]["lineage"], "atlas");
            assert_eq!(rejected[0]["event"]["verdict"], "Reject");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger never showed the Kueue jobs' decisions and metering: {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // komptroller down: nothing is admitted ungoverned. Kueue reserves
    // quota, but the check stays Pending and the Job suspended.
    op.kill().await.unwrap();
    let (late, w_late) = create(&c, &q, job("late", &q.local_queue, 8, Some(3600))).await;
    wait_workload(&c, &ns.name, &w_late, T, |w| is_true(w, "QuotaReserved"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let w = serde_json::to_value(
        wait_workload(&c, &ns.name, &w_late, T, |_| true)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(check_state(&w, &check), Some("Pending"), "{w}");
    assert!(
        !is_true(&w, "Admitted"),
        "admitted while komptroller was down: {w}"
    );
    let j = jobs.get(&late).await.unwrap();
    assert_eq!(
        j.spec.and_then(|s| s.suspend),
        Some(true),
        "ran while komptroller was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_workload_gives_its_quota_back_and_is_admitted_once_capacity_frees() {
    // komptroller's cap: 8 accelerators at a time in the cluster (Kueue's
    // quota would let four such jobs run).
    let Governed {
        c,
        ns,
        q,
        check,
        mut op,
    } = governed(
        "kueue-cap",
        "cap",
        json!({"capacity": {"cluster": {"maxAccelerators": 8}}}),
    )
    .await;

    let mut first = job("first", &q.local_queue, 8, Some(3600));
    first
        .spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations = Some([(RUNTIME_ANNOTATION.to_string(), "20s".to_string())].into());
    let (_, w_first) = create(&c, &q, first).await;
    check_settled(&c, &ns.name, &w_first, &check, "Ready").await;
    wait_workload(&c, &ns.name, &w_first, T, |w| is_true(w, "Admitted"))
        .await
        .unwrap();

    // The second waits for komptroller's cap: Retry, and Kueue gives its
    // quota back while it waits.
    let (second, w_second) = create(&c, &q, job("second", &q.local_queue, 8, Some(3600))).await;
    decision_event(
        &c,
        &ns.name,
        &second,
        "Waiting",
        &["8 of its 8 accelerators"],
    )
    .await;
    wait_workload(&c, &ns.name, &w_second, T, |w| !is_true(w, "QuotaReserved"))
        .await
        .unwrap();
    let j = Api::<Job>::namespaced(c.client(), &ns.name)
        .get(&second)
        .await
        .unwrap();
    assert_eq!(
        j.spec.and_then(|s| s.suspend),
        Some(true),
        "ran before komptroller admitted it"
    );

    // The first ends; the second is admitted at its next try and runs.
    let jobs: Api<Job> = Api::namespaced(c.client(), &ns.name);
    wait_for(&jobs, &second, Duration::from_secs(240), |j| {
        j.status.as_ref().and_then(|s| s.succeeded) == Some(1)
    })
    .await
    .unwrap_or_else(|e| panic!("the throttled job never ran after the first ended: {e}"));

    // One admission each, whatever Kueue retried.
    let entries = ledger(&c).await;
    for name in ["job.batch/first", "job.batch/second"] {
        let admits = entries
            .iter()
            .filter(|e| {
                e["job"]["name"] == name
                    && e["event"]["kind"] == "Decided"
                    && e["event"]["verdict"] == "Admit"
            })
            .count();
        assert_eq!(admits, 1, "{name} admitted {admits} times: {entries:#?}");
    }
    op.kill().await.unwrap();
}
