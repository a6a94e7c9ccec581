//! The product's own CRDs (`crds/`) and example on the real kube-apiserver
//! (or the cluster `KOMPTROLLER_E2E_KUBECONFIG` names): they install, the example validates, and their schema rules
//! (enums, CEL, immutability) are enforced. Missing `crds/` is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use e2e::harness::{Cluster, crds_dir, parse_yaml_documents, repo_root};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

#[tokio::test]
async fn product_crds_install_and_enforce_their_schemas() {
    let c = Cluster::start().await.unwrap();
    let names = c.install_crds(&crds_dir(), T).await.unwrap();
    assert!(
        names.iter().any(|n| n == "trainingjobs.komptroller.dev"),
        "{names:?}"
    );
    let ns = c.temp_namespace("product").await.unwrap();
    let example = std::fs::read_to_string(repo_root().join("examples/trainingjob.yaml")).unwrap();
    let mut docs = parse_yaml_documents(&example).unwrap();
    let tj_gvk = GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "TrainingJob");
    let tjs = c.dynamic_api(&tj_gvk, Some(&ns.name)).await.unwrap();
    let mut tj = docs.remove(0);
    tj["metadata"]["namespace"] = json!(ns.name);
    let created = tjs
        .create(
            &PostParams::default(),
            &serde_json::from_value(tj.clone()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // Schema rules of the generated CRD.
    let mut bad = tj.clone();
    bad["metadata"]["name"] = json!("zero-replicas");
    bad["spec"]["replicas"] = json!(0);
    let e = api_err(
        tjs.create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await,
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.replicas must be at least 1"),
        "{}",
        e.message
    );
    let mut bad = tj.clone();
    bad["metadata"]["name"] = json!("bad-precision");
    bad["spec"]["accelerator"]["precision"] = json!("fp2");
    let e = api_err(
        tjs.create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await,
    );
    assert!(
        e.message
            .contains("spec.accelerator.precision: Unsupported value: \"fp2\""),
        "{}",
        e.message
    );
    // Printer columns of TrainingJob.
    let req = http::Request::get(format!(
        "/apis/komptroller.dev/v1alpha1/namespaces/{}/trainingjobs",
        ns.name
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let table: Value = serde_json::from_str(&c.client().request_text(req).await.unwrap()).unwrap();
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        cols.starts_with(&["Name", "Phase", "Accelerators"]),
        "{cols:?}"
    );
    // ComputeApproval: `self == oldSelf` makes the spec immutable.
    let approvals = c
        .dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "ComputeApproval"),
            Some(&ns.name),
        )
        .await
        .unwrap();
    let approval = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval", "metadata": {"name": "a1"},
        "spec": {"trainingJobName": "llama-ft-chat", "specHash": "abc"}});
    approvals
        .create(
            &PostParams::default(),
            &serde_json::from_value(approval).unwrap(),
        )
        .await
        .unwrap();
    let e = api_err(
        approvals
            .patch(
                "a1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"specHash": "def"}})),
            )
            .await,
    );
    assert!(
        e.message.contains("a ComputeApproval is immutable"),
        "{}",
        e.message
    );
    approvals
        .patch(
            "a1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"seen": "yes"}}})),
        )
        .await
        .expect("metadata may change");
}
