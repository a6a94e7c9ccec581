//! The e2e control plane itself: a real kube-apiserver with real
//! RBAC, the real Job controller and scheduler, kwok GPU nodes, and faults
//! that are real (a killed apiserver, a compacted etcd). Every other e2e
//! scenario stands on these.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::harness::{Cluster, Target, wait_for};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, PostParams, WatchParams};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn job(name: &str, runtime: Option<&str>, deadline: Option<i64>, gpus: u32) -> Job {
    let mut meta = json!({});
    if let Some(r) = runtime {
        meta = json!({"annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": r}});
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "activeDeadlineSeconds": deadline,
            "backoffLimit": 0,
            "template": {"metadata": meta, "spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}
    }))
    .unwrap()
}

fn condition(j: &Job, t: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_is_a_real_control_plane_with_gpu_nodes() {
    let c = Cluster::start_shared().await.unwrap();
    let v = c.client().apiserver_version().await.unwrap();
    if c.target == Target::ControlPlane {
        let want = std::env::var(e2e::control_plane::KUBE_MINOR_ENV).unwrap_or("1.37".into());
        assert_eq!(format!("{}.{}", v.major, v.minor), want, "{v:?}");
        assert!(v.git_version.starts_with(&format!("v{want}.")), "{v:?}");
    }
    let nodes: Api<Node> = Api::all(c.client());
    let gpu_nodes: Vec<Node> = nodes
        .list(&ListParams::default().labels("nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"))
        .await
        .unwrap()
        .items;
    assert!(!gpu_nodes.is_empty(), "no H100 nodes");
    for n in &gpu_nodes {
        let alloc = n.status.as_ref().unwrap().allocatable.as_ref().unwrap();
        assert_eq!(alloc["nvidia.com/gpu"].0, "8", "{:?}", n.metadata.name);
        let ready = n.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert!(
            ready
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "{:?} not Ready",
            n.metadata.name
        );
    }
    assert!(
        !nodes
            .list(&ListParams::default().labels("amd.com/gpu.product-name"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "no AMD node"
    );
    // kubectl is the one built here and reports the server's version.
    let out = c
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let vj: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vj["serverVersion"]["gitVersion"], v.git_version);
    assert!(
        vj["clientVersion"]["gitVersion"]
            .as_str()
            .is_some_and(|s| s.starts_with("v1.")),
        "{vj}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_kwok_nodes_succeed_and_hit_their_deadline() {
    let c = Cluster::start_shared().await.unwrap();
    let ns = c.temp_namespace("cp-jobs").await.unwrap();
    let jobs: Api<Job> = Api::namespaced(c.client(), &ns.name);
    jobs.create(&PostParams::default(), &job("ok", Some("2s"), None, 8))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("late", None, Some(3), 1))
        .await
        .unwrap();
    // More GPUs than any node has: the scheduler leaves it Pending.
    jobs.create(&PostParams::default(), &job("huge", None, None, 64))
        .await
        .unwrap();
    let done = wait_for(&jobs, "ok", T, |j| condition(j, "Complete"))
        .await
        .unwrap();
    assert_eq!(done.status.unwrap().succeeded, Some(1));
    wait_for(&jobs, "late", T, |j| condition(j, "Failed"))
        .await
        .unwrap();
    let late = jobs.get("late").await.unwrap();
    let reason = late.status.unwrap().conditions.unwrap();
    assert!(
        reason
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("DeadlineExceeded")),
        "{reason:?}"
    );
    let pods: Api<Pod> = Api::namespaced(c.client(), &ns.name);
    let all = pods.list(&ListParams::default()).await.unwrap().items;
    let of = |j: &str| {
        all.iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("job-name").map(String::as_str) == Some(j))
            })
            .collect::<Vec<_>>()
    };
    let ok = of("ok");
    assert_eq!(ok.len(), 1);
    assert!(
        ok[0]
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref()
            .is_some_and(|n| n.starts_with("kwok-h100-")),
        "{:?}",
        ok[0].spec
    );
    assert_eq!(
        ok[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let huge = of("huge");
    assert_eq!(huge.len(), 1);
    assert_eq!(
        huge[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert!(huge[0].spec.as_ref().unwrap().node_name.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_real_for_certificate_users() {
    let c = Cluster::start_shared().await.unwrap();
    let ns = c.temp_namespace("cp-rbac").await.unwrap();
    let kc = c
        .kubeconfig_for_user("mallory", &["outsiders", "e2e"])
        .unwrap();
    let client = e2e::harness::client_from_kubeconfig(&kc).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let err = cms.list(&ListParams::default()).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("\"mallory\""), "{}", s.message);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // Who the apiserver thinks mallory is: user and both groups.
    let out = c
        .kubectl()
        .env("KUBECONFIG", &kc)
        .args(["auth", "whoami", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "mallory");
    let groups = who["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("outsiders") && groups.contains("e2e"),
        "{groups}"
    );
}

/// Faults for real: etcd compaction turns an old resourceVersion into 410
/// Gone, and a kube-apiserver killed with SIGKILL comes back with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_410_and_a_killed_apiserver_keeps_its_data() {
    let c = Cluster::start().await.unwrap();
    let Ok(cp) = c.require_control_plane() else {
        panic!("{}", e2e::harness::Error::NeedsControlPlane);
    };
    let ns = c.temp_namespace("cp-faults").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let first = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"k": "1"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let old_rv = first.metadata.resource_version.unwrap();
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("b{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let rev = cp.compact_etcd().await.unwrap();
    assert!(rev > 0);
    // A crashed apiserver comes back with its data, and its watch cache
    // starts at etcd's compacted history: a client resuming from the old
    // resourceVersion gets a real 410 Gone.
    cp.restart("kube-apiserver", "KILL").unwrap();
    let client = e2e::harness::client_from_kubeconfig(c.kubeconfig())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let a = cms.get("a").await.unwrap();
    assert_eq!(a.data.unwrap()["k"], "1");
    let gone = {
        use futures::StreamExt;
        match cms.watch(&WatchParams::default().timeout(5), &old_rv).await {
            Err(kube::Error::Api(s)) => s.code == 410,
            Err(e) => panic!("{e}"),
            Ok(stream) => {
                let mut stream = stream.boxed();
                let mut gone = false;
                while let Some(ev) = stream.next().await {
                    if let Ok(kube::core::WatchEvent::Error(s)) = ev {
                        gone = s.code == 410;
                        break;
                    }
                }
                gone
            }
        }
    };
    assert!(
        gone,
        "no 410 Gone for resourceVersion {old_rv} after compacting etcd to {rev} and restarting the apiserver"
    );

    cp.restart("etcd", "KILL").unwrap();
    // The apiserver reconnects to the restarted etcd by itself.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match cms.get("b4").await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("after the etcd restart: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the apiserver did not recover from an etcd restart: {e}"),
        }
    }
}
