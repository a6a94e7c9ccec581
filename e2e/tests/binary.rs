//! The `kube-standin` binary as other checks start it, driven through the
//! harness's `Process` helper (the way the operator binary will be).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use e2e::harness::{Process, client_from_kubeconfig};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "tok-viewer,viewer,uid-v,\"viewers\"\ntok-admin2,admin2,uid-a,\"system:masters\"\n",
    )
    .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_kube-standin"));
    let t0 = std::time::Instant::now();
    let mut p = Process::start(
        bin,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
            "--authorization",
            "RBAC",
            "--time-scale",
            "10",
        ],
        None,
        &[],
    )
    .unwrap();
    let line = p
        .wait_for_line("ready", Duration::from_secs(10))
        .await
        .unwrap();
    eprintln!("started in {:?}: {line}", t0.elapsed());
    // The kubeconfig's default user is a cluster admin.
    let admin = client_from_kubeconfig(&kubeconfig).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
    )
    .await
    .unwrap();
    // Token-file users are authorized by RBAC (viewer has no bindings).
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let admin_token = serde_json::from_str::<serde_json::Value>(&text).unwrap()["users"][0]["user"]
        ["token"]
        .as_str()
        .unwrap()
        .to_string();
    for (token, allowed) in [("tok-viewer", false), ("tok-admin2", true)] {
        let kc = dir.path().join(format!("kc-{token}"));
        std::fs::write(&kc, text.replace(&admin_token, token)).unwrap();
        let client = client_from_kubeconfig(&kc).await.unwrap();
        let r = Api::<ConfigMap>::namespaced(client, "default")
            .list(&ListParams::default())
            .await;
        assert_eq!(r.is_ok(), allowed, "{token}: {r:?}");
    }
    // The admin endpoint switches faults at runtime.
    let req = http::Request::put("/_standin/faults")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&json!({"writeError500": 1.0})).unwrap())
        .unwrap();
    admin.request_text(req).await.unwrap();
    let e = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "y"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 500),
        "{e:?}"
    );
    let req = http::Request::put("/_standin/faults")
        .header("Content-Type", "application/json")
        .body(b"{}".to_vec())
        .unwrap();
    admin.request_text(req).await.unwrap();
    let stats = admin
        .request_text(
            http::Request::get("/_standin/stats")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(stats.contains("\"objects\""), "{stats}");
    let status = p
        .terminate(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_rejects_bad_arguments() {
    let bin = Path::new(env!("CARGO_BIN_EXE_kube-standin"));
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--kubeconfig",
            dir.path().join("k").to_str().unwrap(),
            "--tokens",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read tokens"));
    let out = std::process::Command::new(bin)
        .args(["--kubeconfig", "k", "--authorization", "Webhook"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn harness_real_cluster_mode_through_a_kubeconfig() {
    // Any cluster named by a kubeconfig is "real" to the harness: here a
    // separately started kube-standin stands in for kind/k3d.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let bin = Path::new(env!("CARGO_BIN_EXE_kube-standin"));
    let mut p = Process::start(
        bin,
        &["--kubeconfig", kubeconfig.to_str().unwrap()],
        None,
        &[],
    )
    .unwrap();
    p.wait_for_line("ready", Duration::from_secs(10))
        .await
        .unwrap();
    let c = e2e::harness::Cluster::real(&kubeconfig).await.unwrap();
    assert_eq!(c.target, e2e::harness::Target::Real);
    assert!(
        matches!(c.require_standin(), Err(e2e::harness::Error::NeedsStandIn)),
        "stand-in-only scenarios must fail, not pass, on a real cluster"
    );
    let crds = c
        .install_crds(&e2e::harness::crds_dir(), Duration::from_secs(20))
        .await
        .unwrap();
    assert!(crds.len() >= 5, "{crds:?}");
    let ns = c.temp_namespace("real").await.unwrap();
    let applied = c
        .apply_yaml(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
            Some(&ns.name),
        )
        .await
        .unwrap();
    assert_eq!(applied.len(), 2);
    let name = ns.name.clone();
    drop(ns);
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client());
    e2e::harness::wait_for_deletion(&nss, &name, Duration::from_secs(20))
        .await
        .unwrap();
    p.terminate(Duration::from_secs(5)).await.unwrap();
}
