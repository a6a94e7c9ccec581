//! The Helm chart installed with the real `helm` CLI (helm.sh/helm/v4, built
//! by `e2e/cluster/build`) into the real kube-apiserver: CRDs from
//! the chart's `crds/`, RBAC, Services and the Deployment are accepted; the
//! scheduler places the operator's pods on kwok nodes, which mark them
//! running (no container runs: the process itself runs out of cluster in the
//! other scenarios); `helm upgrade` to the HA values spreads three replicas
//! over three nodes behind a PodDisruptionBudget; a ServiceMonitor needs its
//! CRD; `values.schema.json` refuses a wrong value naming the key; `helm
//! uninstall` removes the release and keeps the CRDs (Helm never deletes
//! `crds/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::harness::{Cluster, repo_root, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};

const NS: &str = "komptroller-system";
const T: Duration = Duration::from_secs(120);

fn helm(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = c
        .helm()
        .args(args)
        .output()
        .expect("the helm e2e/cluster/build built");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ helm {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

async fn running_pods(c: &Cluster) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(c.client(), NS);
    pods.list(&ListParams::default().labels("app.kubernetes.io/instance=komptroller"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_on_the_real_apiserver() {
    let c = Cluster::start().await.unwrap();
    let chart = repo_root().join("charts/komptroller");
    let chart = chart.to_str().unwrap();
    let (ok, version) = helm(&c, &["version", "--short"]);
    assert!(ok && version.starts_with("v4."), "{version}");

    // A wrong value is refused before anything is written, naming the key.
    let (ok, err) = helm(
        &c,
        &[
            "install",
            "komptroller",
            chart,
            "-n",
            NS,
            "--create-namespace",
            "--set",
            "webhook.certMode=bogus",
        ],
    );
    assert!(!ok, "{err}");
    assert!(err.contains("certMode"), "{err}");
    let deployments: Api<Deployment> = Api::namespaced(c.client(), NS);
    assert!(deployments.get_opt("komptroller").await.unwrap().is_none());

    // Install: --wait returns once the Deployment is available (kwok runs its pod).
    let (ok, out) = helm(
        &c,
        &[
            "install",
            "komptroller",
            chart,
            "-n",
            NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    assert!(ok, "{out}");
    let crds: Api<CustomResourceDefinition> = Api::all(c.client());
    let names: BTreeSet<String> = crds
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.ends_with(".komptroller.dev"))
        .collect();
    for want in [
        "trainingjobs",
        "computepolicies",
        "computeapprovals",
        "computeledgerentries",
        "computereports",
    ] {
        assert!(
            names.contains(&format!("{want}.komptroller.dev")),
            "{names:?}"
        );
    }
    let d = deployments.get("komptroller").await.unwrap();
    assert_eq!(
        d.status.as_ref().and_then(|s| s.available_replicas),
        Some(1),
        "{:?}",
        d.status
    );
    let sa: Api<ServiceAccount> = Api::namespaced(c.client(), NS);
    assert!(sa.get_opt("komptroller").await.unwrap().is_some());
    let roles: Api<ClusterRole> = Api::all(c.client());
    assert!(roles.get_opt("komptroller").await.unwrap().is_some());
    let services: Api<Service> = Api::namespaced(c.client(), NS);
    let svc: BTreeSet<String> = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(
        svc.contains("komptroller-metrics") && svc.contains("komptroller-webhook"),
        "{svc:?}"
    );
    let pods = running_pods(&c).await;
    assert_eq!(pods.len(), 1);
    assert!(
        pods[0]
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref()
            .is_some_and(|n| n.starts_with("kwok-")),
        "scheduled onto a kwok node: {:?}",
        pods[0].spec.as_ref().unwrap().node_name
    );

    // A ServiceMonitor needs the Prometheus Operator's CRD: without it the
    // upgrade fails naming the kind, and the release keeps running.
    let (ok, err) = helm(
        &c,
        &[
            "upgrade",
            "komptroller",
            chart,
            "-n",
            NS,
            "--set",
            "serviceMonitor.enabled=true",
        ],
    );
    assert!(!ok && err.contains("ServiceMonitor"), "{err}");
    assert_eq!(running_pods(&c).await.len(), 1);

    // Upgrade to the HA values: three replicas on three different nodes and a PDB.
    let ha = repo_root().join("charts/komptroller/values-ha.yaml");
    let (ok, out) = helm(
        &c,
        &[
            "upgrade",
            "komptroller",
            chart,
            "-n",
            NS,
            "-f",
            ha.to_str().unwrap(),
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    assert!(ok, "{out}");
    let d = wait_for(&deployments, "komptroller", T, |d| {
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(3)
    })
    .await
    .unwrap();
    assert_eq!(d.spec.replicas, Some(3));
    let nodes: BTreeSet<String> = running_pods(&c)
        .await
        .into_iter()
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "anti-affinity spreads the replicas: {nodes:?}"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client(), NS);
    let pdb = wait_for(&pdbs, "komptroller", T, |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.current_healthy == Some(3))
    })
    .await
    .unwrap();
    assert_eq!(pdb.status.unwrap().disruptions_allowed, Some(1));
    let (ok, history) = helm(&c, &["history", "komptroller", "-n", NS]);
    assert!(
        ok && history.contains("deployed") && history.contains("superseded"),
        "{history}"
    );

    // Uninstall: the release goes, the CRDs stay.
    let (ok, out) = helm(
        &c,
        &[
            "uninstall",
            "komptroller",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    assert!(ok, "{out}");
    assert!(deployments.get_opt("komptroller").await.unwrap().is_none());
    assert!(roles.get_opt("komptroller").await.unwrap().is_none());
    assert!(
        crds.get_opt("trainingjobs.komptroller.dev")
            .await
            .unwrap()
            .is_some()
    );
}
