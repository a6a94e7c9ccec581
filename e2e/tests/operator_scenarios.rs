//! e2e scenarios of `komptroller run` on the real e2e control
//! plane (or the cluster named by `KOMPTROLLER_E2E_KUBECONFIG`; scenarios
//! that restart components or put a fault proxy in front of the apiserver
//! need the control plane and fail elsewhere). Each test takes the cluster
//! alone and starts its own operator process, as the chart's ServiceAccount. Build the binary first:
//! `cargo build -p komptroller && cargo test -p e2e --test operator_scenarios`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::fault_proxy::{FaultProxy, Faults};
use e2e::harness::{Cluster, Process, crds_dir, wait_for, workspace_binary};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
/// The chart's release namespace: the operator's Lease and Events live here.
const OPERATOR_NS: &str = "komptroller-system";

fn tj_gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "TrainingJob")
}

/// A cluster with the product CRDs installed.
async fn cluster() -> Cluster {
    let c = Cluster::start().await.unwrap();
    c.install_crds(&crds_dir(), T).await.unwrap();
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Operator {
    process: Process,
    /// Base URL of /metrics, /healthz, /readyz, /reports.
    #[allow(dead_code)]
    metrics: String,
}

/// Starts `komptroller run` against the cluster and waits until it leads
/// (or, with `expect_leader = false`, until it is ready).
/// As the chart's ServiceAccount (a TokenRequest token), under the chart's RBAC.
async fn start_operator(c: &Cluster, extra: &[&str], expect_leader: bool) -> Operator {
    let kubeconfig = c.operator_kubeconfig().await.unwrap();
    start_operator_with(c, &kubeconfig, extra, expect_leader).await
}

async fn start_operator_with(
    _c: &Cluster,
    kubeconfig: &std::path::Path,
    extra: &[&str],
    expect_leader: bool,
) -> Operator {
    let bin = workspace_binary("komptroller").unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "run",
        "--metrics-addr",
        addr.as_str(),
        "--namespace",
        OPERATOR_NS,
        "--report-interval",
        "2s",
    ];
    args.extend_from_slice(extra);
    let mut process =
        Process::start(&bin, &args, Some(kubeconfig), &[("RUST_LOG", "info")]).unwrap();
    let needle = if expect_leader {
        "books rebuilt"
    } else {
        "komptroller ready"
    };
    process.wait_for_line(needle, T).await.unwrap();
    Operator {
        process,
        metrics: format!("http://{addr}"),
    }
}

fn training_job(
    name: &str,
    lineage: &str,
    gpus: u32,
    replicas: u32,
    max: &str,
    runtime: Option<&str>,
) -> Value {
    let mut template = json!({"spec": {"containers": [{"name": "train", "image": "busybox",
        "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}});
    if let Some(r) = runtime {
        template["metadata"] = json!({"annotations": {e2e::harness::RUNTIME_ANNOTATION: r}});
    }
    json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": lineage},
            "accelerator": {"type": "nvidia-h100-sxm"},
            "replicas": replicas,
            "maxDuration": max,
            "template": template,
        }
    })
}

async fn apply(c: &Cluster, ns: &str, v: Value) -> DynamicObject {
    let yaml = serde_json::to_string(&v).unwrap();
    c.apply_yaml(&yaml, Some(ns)).await.unwrap().remove(0)
}

async fn tjs(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    c.dynamic_api(&tj_gvk(), Some(ns)).await.unwrap()
}

fn phase(o: &DynamicObject) -> &str {
    o.data
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

async fn wait_phase(c: &Cluster, ns: &str, name: &str, want: &str) -> DynamicObject {
    let api = tjs(c, ns).await;
    match wait_for(&api, name, T, |o| phase(o) == want).await {
        Ok(o) => o,
        Err(e) => {
            let now = api.get_opt(name).await.unwrap();
            panic!(
                "{name} never reached {want}: {e}; now {:#}",
                now.map(|o| o.data).unwrap_or_default()
            );
        }
    }
}

async fn ledger(c: &Cluster) -> Vec<Value> {
    c.ledger_entries().await.unwrap()
}

/// Checks the ledger's chain is contiguous and has no duplicated decision.
fn assert_ledger_sound(entries: &[Value]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64), "ledger has a gap at {i}");
        if i > 0 {
            assert_eq!(e["prevHash"], entries[i - 1]["hash"], "chain broken at {i}");
        }
    }
    let mut decided: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for e in entries {
        if e["event"]["kind"] == "Decided" && e["event"]["verdict"] == "Admit" {
            let j = &e["job"];
            *decided
                .entry((
                    j["namespace"].to_string(),
                    j["name"].to_string(),
                    j["uid"].to_string(),
                ))
                .or_default() += 1;
        }
    }
    for (k, n) in decided {
        assert_eq!(n, 1, "{k:?} admitted {n} times");
    }
}

async fn policy(c: &Cluster, name: &str, spec: Value) {
    let v = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy",
        "metadata": {"name": name}, "spec": spec});
    c.apply_yaml(&serde_json::to_string(&v).unwrap(), None)
        .await
        .unwrap();
}

async fn jobs(c: &Cluster, ns: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(c.client(), ns);
    api.list(&ListParams::default()).await.unwrap().items
}

async fn wait_policy_loaded(c: &Cluster, name: &str) {
    c.wait_for_condition(
        &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "ComputePolicy"),
        None,
        name,
        "Accepted",
        "True",
        T,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_job_runs_with_its_deadline_and_is_metered() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-admit").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    apply(
        &c,
        &ns.name,
        training_job("small", "llama-s", 8, 2, "2h", Some("2s")),
    )
    .await;
    let o = wait_phase(&c, &ns.name, "small", "Succeeded").await;
    assert_eq!(
        o.data.pointer("/status/decision/verdict"),
        Some(&json!("Admit"))
    );
    let js = jobs(&c, &ns.name).await;
    assert_eq!(js.len(), 1);
    let spec = js[0].spec.clone().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(7200));
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.parallelism, spec.completions), (Some(2), Some(2)));
    let consumed = o
        .data
        .pointer("/status/consumed/acceleratorSeconds")
        .and_then(Value::as_f64)
        .unwrap();
    // The run is metered from its start (never before the decision) to the
    // Job's completion time; both Job times have 1 s resolution, so a 2 s
    // run reads between 1 and 3 s.
    assert!(
        (16.0..60.0).contains(&consumed),
        "16 GPUs × ~2s (startTime and completionTime have 1 s resolution), got {consumed}"
    );
    let kinds: Vec<String> = ledger(&c)
        .await
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["Decided", "Started", "Finished"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_holds_without_a_job_until_approved() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-esc").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    let (o, hash) = escalated(&c, &ns.name, "frontier", 1, "gpt-x").await;
    assert_eq!(
        o.data.pointer("/status/decision/rule"),
        Some(&json!("tier/frontier"))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        jobs(&c, &ns.name).await.is_empty(),
        "nothing runs before admission"
    );
    // An approval as the webhook stamps it.
    apply(
        &c,
        &ns.name,
        json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval",
        "metadata": {"name": "ok-big"}, "spec": {"trainingJobName": "big", "specHash": hash,
        "approver": "alice", "approverGroups": ["safety"]}}),
    )
    .await;
    wait_phase(&c, &ns.name, "big", "Running").await;
    assert_eq!(jobs(&c, &ns.name).await.len(), 1);
    let kinds: Vec<String> = ledger(&c)
        .await
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"Approved".to_string()), "{kinds:?}");
}

/// Loads policy `name` (a tier at 1e19 FLOP that escalates to `required`
/// approvers of group `safety`), submits TrainingJob `big` of `lineage`
/// and waits until it awaits approval: the object and its spec hash.
async fn escalated(
    c: &Cluster,
    ns: &str,
    name: &str,
    required: u32,
    lineage: &str,
) -> (DynamicObject, String) {
    policy(
        c,
        name,
        json!({"tiers": [{"name": "frontier", "threshold": 1e19, "action": "Escalate",
        "approvals": {"required": required, "groups": ["safety"]}}]}),
    )
    .await;
    wait_policy_loaded(c, name).await;
    apply(c, ns, training_job("big", lineage, 8, 2, "2h", None)).await;
    let o = wait_phase(c, ns, "big", "AwaitingApproval").await;
    let hash = o
        .data
        .pointer("/status/specHash")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    (o, hash)
}

/// Waits until the ledger holds `n` entries of `kind`.
async fn wait_ledger_kind(c: &Cluster, kind: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let entries = ledger(c).await;
        if entries
            .iter()
            .filter(|e| e["event"]["kind"] == kind)
            .count()
            >= n
        {
            return entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger never held {n} {kind} entries: {:?}",
            entries
                .iter()
                .map(|e| &e["event"]["kind"])
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_approval_stops_counting_before_admission() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-withdraw").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    let (_, hash) = escalated(&c, &ns.name, "two-person", 2, "gpt-w").await;
    let approval = |name: &str, who: &str| {
        json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval",
        "metadata": {"name": name}, "spec": {"trainingJobName": "big", "specHash": hash,
        "approver": who, "approverGroups": ["safety"]}})
    };
    let approvals = c
        .dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "ComputeApproval"),
            Some(&ns.name),
        )
        .await
        .unwrap();
    // One approval counted, then its ComputeApproval deleted: withdrawn.
    apply(&c, &ns.name, approval("by-alice", "alice")).await;
    wait_ledger_kind(&c, "Approved", 1).await;
    approvals
        .delete("by-alice", &DeleteParams::default())
        .await
        .unwrap();
    let entries = wait_ledger_kind(&c, "ApprovalWithdrawn", 1).await;
    let w = entries
        .iter()
        .find(|e| e["event"]["kind"] == "ApprovalWithdrawn")
        .unwrap();
    assert_eq!(w["event"]["approver"], "alice");
    // A second person alone is not two: the job still waits, nothing runs.
    apply(&c, &ns.name, approval("by-bob", "bob")).await;
    wait_ledger_kind(&c, "Approved", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = wait_phase(&c, &ns.name, "big", "AwaitingApproval").await;
    assert_eq!(
        o.data.pointer("/status/decision/approvals/approvedBy"),
        Some(&json!(["bob"])),
        "{:#}",
        o.data
    );
    assert!(
        jobs(&c, &ns.name).await.is_empty(),
        "nothing runs before admission"
    );
    apply(&c, &ns.name, approval("by-carol", "carol")).await;
    wait_phase(&c, &ns.name, "big", "Running").await;
    assert_ledger_sound(&ledger(&c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_cap_queues_then_admits_when_the_first_finishes() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-cap").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    policy(
        &c,
        "cap",
        json!({"capacity": {"cluster": {"maxAccelerators": 16}}}),
    )
    .await;
    wait_policy_loaded(&c, "cap").await;
    apply(
        &c,
        &ns.name,
        training_job("first", "a", 8, 2, "2h", Some("4s")),
    )
    .await;
    wait_phase(&c, &ns.name, "first", "Running").await;
    apply(
        &c,
        &ns.name,
        training_job("second", "b", 8, 2, "2h", Some("1s")),
    )
    .await;
    let o = wait_phase(&c, &ns.name, "second", "Queued").await;
    assert_eq!(o.data.pointer("/status/queuePosition"), Some(&json!(1)));
    assert_eq!(
        o.data
            .pointer("/status/decision/rule")
            .and_then(Value::as_str)
            .map(|r| r.starts_with("capacity")),
        Some(true)
    );
    assert_eq!(jobs(&c, &ns.name).await.len(), 1);
    wait_phase(&c, &ns.name, "first", "Succeeded").await;
    wait_phase(&c, &ns.name, "second", "Succeeded").await;
    assert_eq!(jobs(&c, &ns.name).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_budget_throttles_until_its_window_frees() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-budget").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    // One 8-GPU 1h job projects 8 × 989e12 × 3600 ≈ 2.85e19 FLOP; the budget fits one.
    policy(
        &c,
        "budget",
        json!({"budgets": [{"name": "team", "scope": "Namespace", "window": "6s",
        "limit": 4e19, "action": "Throttle"}]}),
    )
    .await;
    wait_policy_loaded(&c, "budget").await;
    apply(
        &c,
        &ns.name,
        training_job("one", "a", 8, 1, "1h", Some("1s")),
    )
    .await;
    wait_phase(&c, &ns.name, "one", "Running").await;
    let t0 = std::time::Instant::now();
    apply(
        &c,
        &ns.name,
        training_job("two", "b", 8, 1, "1h", Some("1s")),
    )
    .await;
    let o = wait_phase(&c, &ns.name, "two", "Queued").await;
    assert!(
        o.data
            .pointer("/status/decision/rule")
            .and_then(Value::as_str)
            .unwrap()
            .contains("team")
    );
    let api = tjs(&c, &ns.name).await;
    wait_for(&api, "two", T, |o| {
        matches!(phase(o), "Admitted" | "Running" | "Succeeded")
    })
    .await
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "admitted only once the window freed ({:?})",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_ceiling_is_rejected_naming_rule_and_numbers() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-reject").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    policy(
        &c,
        "ceiling",
        json!({"tiers": [{"name": "ceiling", "threshold": 1e20, "action": "Reject"}]}),
    )
    .await;
    wait_policy_loaded(&c, "ceiling").await;
    apply(&c, &ns.name, training_job("huge", "h", 8, 2, "2h", None)).await;
    let o = wait_phase(&c, &ns.name, "huge", "Rejected").await;
    let msg = o
        .data
        .pointer("/status/decision/message")
        .and_then(Value::as_str)
        .unwrap();
    assert_eq!(
        o.data.pointer("/status/decision/rule"),
        Some(&json!("tier/ceiling"))
    );
    assert!(
        msg.contains("1.14e20") && msg.contains("1e20") && msg.contains("ceiling"),
        "{msg}"
    );
    assert!(jobs(&c, &ns.name).await.is_empty());

    // What a new user types: the real kubectl shows the decision's Event on
    // the TrainingJob (core and events.k8s.io Events are one resource in
    // Kubernetes), and `kubectl get events` lists it.
    let kubectl = |args: &[&str]| {
        let out = c.kubectl().args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let described = kubectl(&["-n", &ns.name, "describe", "trainingjob", "huge"]);
        let events = described.split("Events:").nth(1).unwrap_or("");
        if events.contains("Rejected") && events.contains("1e20") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl describe shows no decision Event:\n{described}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let events = kubectl(&[
        "-n",
        &ns.name,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=huge",
    ]);
    assert!(
        events.to_lowercase().contains("trainingjob/huge") && events.contains("Rejected"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_jobs_of_one_lineage_cross_1e25_and_the_third_escalates() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-cross").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    policy(
        &c,
        "eu",
        json!({"tiers": [{"name": "eu-systemic-risk", "threshold": 1e25, "action": "Escalate",
        "approvals": {"required": 1}}]}),
    )
    .await;
    wait_policy_loaded(&c, "eu").await;
    // 1024 H100 × 989e12 FLOP/s × 1100h ≈ 4.0e24 FLOP each.
    for (i, want) in [
        ("a", "Running"),
        ("b", "Running"),
        ("c", "AwaitingApproval"),
    ] {
        apply(
            &c,
            &ns.name,
            training_job(&format!("run-{i}"), "frontier", 8, 128, "1100h", None),
        )
        .await;
        let o = wait_phase(&c, &ns.name, &format!("run-{i}"), want).await;
        if want == "AwaitingApproval" {
            let total = o
                .data
                .pointer("/status/decision/lineageTotal")
                .and_then(Value::as_f64)
                .unwrap();
            assert!(total > 1e25, "{total}");
        }
    }
    assert_eq!(jobs(&c, &ns.name).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_admitted_job_keeps_its_compute() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-del").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    let first = apply(
        &c,
        &ns.name,
        training_job("first", "keep", 8, 1, "1h", None),
    )
    .await;
    let o = wait_phase(&c, &ns.name, "first", "Running").await;
    let governing = o
        .data
        .pointer("/status/decision/governing")
        .and_then(Value::as_f64)
        .unwrap();
    let api = tjs(&c, &ns.name).await;
    api.delete("first", &DeleteParams::default()).await.unwrap();
    e2e::harness::wait_for_deletion(&api, "first", T)
        .await
        .unwrap();
    let _ = first;
    let entries = ledger(&c).await;
    assert!(entries.iter().any(|e| e["event"]["kind"] == "Deleted"));
    apply(
        &c,
        &ns.name,
        training_job("second", "keep", 8, 1, "1h", None),
    )
    .await;
    let o = wait_phase(&c, &ns.name, "second", "Running").await;
    let total = o
        .data
        .pointer("/status/decision/lineageTotal")
        .and_then(Value::as_f64)
        .unwrap();
    assert!(
        (total - 2.0 * governing).abs() < governing * 1e-9,
        "lineage total {total} keeps the deleted job's {governing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_warn_admit_but_record_the_enforce_verdict() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-modes").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    for mode in ["DryRun", "Warn"] {
        let name = format!("p-{}", mode.to_lowercase());
        policy(&c, &name, json!({"mode": mode, "tiers": [{"name": "ceiling", "threshold": 1e18, "action": "Reject"}]})).await;
        wait_policy_loaded(&c, &name).await;
        let job = format!("job-{}", mode.to_lowercase());
        apply(&c, &ns.name, training_job(&job, &job, 8, 1, "1h", None)).await;
        let o = wait_phase(&c, &ns.name, &job, "Running").await;
        assert_eq!(
            o.data.pointer("/status/decision/verdict"),
            Some(&json!("Admit"))
        );
        assert_eq!(
            o.data.pointer("/status/decision/enforcedVerdict"),
            Some(&json!("Reject"))
        );
        c.dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "ComputePolicy"),
            None,
        )
        .await
        .unwrap()
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_mid_stream_leaves_no_duplicates() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-restart").await.unwrap();
    let mut op = start_operator(&c, &["--lease-duration", "2s", "--lease-grace", "1s"], true).await;
    policy(
        &c,
        "cap",
        json!({"capacity": {"cluster": {"maxAccelerators": 40}}}),
    )
    .await;
    wait_policy_loaded(&c, "cap").await;
    for i in 0..30 {
        apply(
            &c,
            &ns.name,
            training_job(
                &format!("j{i:02}"),
                &format!("l{i}"),
                8,
                1,
                "1h",
                Some("2s"),
            ),
        )
        .await;
        if i == 12 {
            op.process.kill().await.unwrap();
        }
    }
    let _op2 = start_operator(&c, &["--lease-duration", "2s", "--lease-grace", "1s"], true).await;
    let api = tjs(&c, &ns.name).await;
    for i in 0..30 {
        wait_for(&api, &format!("j{i:02}"), Duration::from_secs(60), |o| {
            phase(o) == "Succeeded"
        })
        .await
        .unwrap();
    }
    let js = jobs(&c, &ns.name).await;
    assert_eq!(js.len(), 30, "one Job per TrainingJob");
    let entries = ledger(&c).await;
    assert_ledger_sound(&entries);
    let finished = entries
        .iter()
        .filter(|e| e["event"]["kind"] == "Finished")
        .count();
    assert_eq!(finished, 30);
}

/// A stalled (SIGSTOP) kube-apiserver: requests hang rather than fail. The
/// operator rides it out and decides what arrives after it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_apiserver_stalls_the_operator_without_losing_a_decision() {
    let c = cluster().await;
    let cp = c
        .require_control_plane()
        .expect("the scenario pauses the control plane's apiserver");
    let ns = c.temp_namespace("op-pause").await.unwrap();
    let _op = start_operator(&c, &[], true).await;
    apply(
        &c,
        &ns.name,
        training_job("before", "p1", 8, 1, "1h", Some("2s")),
    )
    .await;
    wait_phase(&c, &ns.name, "before", "Succeeded").await;
    cp.pause("kube-apiserver", true).unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    cp.pause("kube-apiserver", false).unwrap();
    apply(
        &c,
        &ns.name,
        training_job("after", "p2", 8, 1, "1h", Some("2s")),
    )
    .await;
    wait_phase(&c, &ns.name, "after", "Succeeded").await;
    assert_eq!(jobs(&c, &ns.name).await.len(), 2);
    let entries = ledger(&c).await;
    assert_ledger_sound(&entries);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["event"]["kind"] == "Finished")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies() {
    let c = cluster().await;
    let ns = c.temp_namespace("op-ha").await.unwrap();
    let flags = ["--lease-duration", "3s", "--lease-grace", "1s"];
    let mut a = start_operator(&c, &flags, true).await;
    let mut b = start_operator(&c, &flags, false).await;
    let leases: Api<Lease> = Api::namespaced(c.client(), OPERATOR_NS);
    let holder = leases
        .get("komptroller-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    apply(&c, &ns.name, training_job("before", "x", 8, 1, "1h", None)).await;
    wait_phase(&c, &ns.name, "before", "Running").await;
    a.process.kill().await.unwrap();
    let t0 = std::time::Instant::now();
    apply(&c, &ns.name, training_job("after", "y", 8, 1, "1h", None)).await;
    b.process
        .wait_for_line("books rebuilt", Duration::from_secs(15))
        .await
        .unwrap();
    wait_phase(&c, &ns.name, "after", "Running").await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    let new_holder = leases
        .get("komptroller-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(holder, new_holder);
    assert_ledger_sound(&ledger(&c).await);
    eprintln!("standby took over and decided a new job {took:?} after the leader was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_api_errors_and_watch_closures_still_converge() {
    // The operator reaches the real apiserver through a fault-injecting
    // proxy; the test's own writes go direct.
    let c = cluster().await;
    let cp = c
        .require_control_plane()
        .expect("the fault proxy fronts the e2e control plane");
    let ns = c.temp_namespace("op-faults").await.unwrap();
    let proxy = FaultProxy::start(&cp.server, &std::fs::read_to_string(cp.ca_file()).unwrap())
        .await
        .unwrap();
    c.operator_kubeconfig().await.unwrap();
    let token = c.service_account_token(OPERATOR_NS, "komptroller").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxied = dir.path().join("operator-via-proxy.kubeconfig");
    proxy.write_kubeconfig(&proxied, &token).unwrap();
    let _op = start_operator_with(&c, &proxied, &[], true).await;
    proxy.set_faults(Faults {
        write_error_500: 0.15,
        write_error_409: 0.1,
        watch_close_every_secs: Some(1.5),
        ..Default::default()
    });
    let api = tjs(&c, &ns.name).await;
    for i in 0..15 {
        let v = training_job(&format!("f{i:02}"), "faulty", 8, 1, "1h", Some("1s"));
        let obj: DynamicObject = serde_json::from_value(v).unwrap();
        // The test's own writes retry through the injected errors.
        for _ in 0..20 {
            if api.create(&PostParams::default(), &obj).await.is_ok()
                || api
                    .get_opt(&format!("f{i:02}"))
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            {
                break;
            }
        }
    }
    for i in 0..15 {
        wait_for(&api, &format!("f{i:02}"), Duration::from_secs(60), |o| {
            phase(o) == "Succeeded"
        })
        .await
        .unwrap();
    }
    let stats = proxy.stats();
    proxy.set_faults(Faults::default());
    assert!(
        stats.injected_500 > 0 && stats.injected_409 > 0 && stats.watches_closed > 0,
        "the faults happened: {stats:?}"
    );
    assert_eq!(jobs(&c, &ns.name).await.len(), 15);
    let entries = ledger(&c).await;
    assert_ledger_sound(&entries);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["event"]["kind"] == "Finished")
            .count(),
        15
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_at_start_naming_the_flag() {
    let bin = workspace_binary("komptroller").unwrap();
    for (args, flag) in [
        (
            vec!["run", "--lease-duration", "5s", "--lease-grace", "10s"],
            "--lease-grace",
        ),
        (vec!["run", "--report-interval", "0s"], "--report-interval"),
        (
            vec!["run", "--metrics-addr", "not-an-address"],
            "--metrics-addr",
        ),
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_releases_the_lease() {
    let c = cluster().await;
    let mut op = start_operator(&c, &[], true).await;
    let leases: Api<Lease> = Api::namespaced(c.client(), OPERATOR_NS);
    let held = leases.get("komptroller-leader").await.unwrap();
    assert!(held.spec.unwrap().holder_identity.is_some());
    let status = op.process.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    let lease = leases.get("komptroller-leader").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "lease released on SIGTERM"
    );
}
