//! On the real control plane: the chart's RBAC, applied
//! to a real kube-apiserver (authorization Node,RBAC), lets the operator do
//! everything it needs and grants nothing it does not use.
//!
//! The rendered RBAC is `tests/fixtures/chart-rbac.yaml` (default values;
//! `scripts/checks/chart.sh` fails when it drifts from the chart and
//! regenerates it with `KOMPTROLLER_UPDATE_FIXTURES=1`), so this test needs
//! no Python. `komptroller run` runs as the chart's ServiceAccount through
//! its CRDs arriving after it started, admission, queueing, an approval,
//! finishing, deletion with the finalizer,
//! signed reports (written, listed, read), the leader Lease, Events, its
//! webhook configurations and certificate Secret (created and renewed), the
//! signing-key Secret and public-key ConfigMap, a restart over a ledger with
//! a crash hole, and write conflicts injected by a fault proxy in front of
//! the apiserver. kube-apiserver's own audit log then shows every request
//! the operator made (user, verb, resource, the authorizer's decision):
//! none may be denied, and every
//! (verb, API group, resource) the chart grants must have been used, except
//! the grants in [`NOT_RELIABLY_REACHED`], each with the reason no scenario
//! reaches it every time.
//!
//! Needs the `komptroller` binary (`cargo build -p komptroller`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::operator::{Env, OPERATOR_NS, OPERATOR_SA, T, decision, http_get, phase, training_job};
use e2e::fault_proxy::{FaultProxy, Faults};
use e2e::harness::{parse_yaml_documents, wait_for, wait_for_deletion};
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "research";

/// Grants the scenarios here do not reach every time, each with the reason
/// (reviewed: any other grant left unused fails the test).
/// The operator here serves its metrics port in plain HTTP (the scenarios
/// read `/reports` without a token), so it never reviews a caller: the
/// TokenReview and SubjectAccessReview grants of `metrics.secure` (the
/// chart's default) are used in `tests/metrics_auth.rs`, which runs the
/// operator as the chart's ServiceAccount with `--metrics-secure`.
const NOT_RELIABLY_REACHED: &[(&str, &str, &str, &str)] = &[
    (
        "create",
        "authentication.k8s.io",
        "tokenreviews",
        "plain-HTTP metrics here; reviewed in tests/metrics_auth.rs",
    ),
    (
        "create",
        "authorization.k8s.io",
        "subjectaccessreviews",
        "plain-HTTP metrics here; reviewed in tests/metrics_auth.rs",
    ),
];

/// (verb, group, resource[/subresource], namespace or "" for cluster-wide rules).
type Grant = (String, String, String, String);

/// Every (verb, group, resource) the chart's ClusterRole and Role grant.
fn grants(docs: &[Value]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for d in docs {
        let ns = match d["kind"].as_str() {
            Some("ClusterRole") => "",
            Some("Role") => d["metadata"]["namespace"].as_str().unwrap(),
            _ => continue,
        };
        for rule in d["rules"].as_array().unwrap() {
            // nonResourceURLs rules (the auditor and metrics-reader roles)
            // grant paths on the operator's port, not API requests.
            if rule.get("resources").is_none() {
                continue;
            }
            let list = |f: &str| -> Vec<String> {
                rule[f]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            assert!(
                rule.get("resourceNames").is_none(),
                "resourceNames: extend this test"
            );
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((v.clone(), g.clone(), r.clone(), ns.to_string()));
                    }
                }
            }
        }
    }
    out
}

/// Every request of `user` in kube-apiserver's audit log (JSON lines, one
/// event per request at stage ResponseComplete): (verb, group, resource,
/// namespace) → (allowed, denied), by the authorizer's decision annotation.
fn used_by(audit_log: &std::path::Path, user: &str) -> BTreeMap<Grant, (u64, u64)> {
    let mut out = BTreeMap::new();
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if ev["stage"] != "ResponseComplete" || ev["user"]["username"] != user {
            continue;
        }
        let Some(obj) = ev.get("objectRef") else {
            continue; // non-resource URLs (/api, /apis, /version)
        };
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let res = match obj["subresource"].as_str() {
            Some(sub) if !sub.is_empty() => format!("{}/{sub}", s(&obj["resource"])),
            _ => s(&obj["resource"]),
        };
        let decision = ev["annotations"]["authorization.k8s.io/decision"].as_str();
        let mut verbs = vec![s(&ev["verb"])];
        // A server-side apply that creates its object (201) is authorized
        // for `create` as well as `patch`, in one audited request.
        if verbs[0] == "patch" && ev["responseStatus"]["code"] == 201 {
            verbs.push("create".into());
        }
        for verb in verbs {
            let e = out
                .entry((verb, s(&obj["apiGroup"]), res.clone(), s(&obj["namespace"])))
                .or_insert((0, 0));
            if decision == Some("forbid") {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    out
}

/// Whether a grant was used: cluster-wide grants by a request in any
/// namespace (or none), namespaced grants by a request in their namespace.
fn grant_used(g: &Grant, used: &BTreeMap<Grant, (u64, u64)>) -> bool {
    used.iter().any(|((v, gr, r, ns), (allowed, _))| {
        *allowed > 0 && v == &g.0 && gr == &g.1 && r == &g.2 && (g.3.is_empty() || ns == &g.3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_is_enough_and_all_of_it_is_used() {
    let fixture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chart-rbac.yaml"),
    )
    .unwrap();
    let rbac = parse_yaml_documents(&fixture).unwrap();
    let sa = rbac.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(
        format!(
            "system:serviceaccount:{}:{}",
            sa["metadata"]["namespace"].as_str().unwrap(),
            sa["metadata"]["name"].as_str().unwrap()
        ),
        OPERATOR_SA,
        "the fixture's ServiceAccount"
    );
    let granted = grants(&rbac);
    assert!(granted.len() > 20, "{granted:?}");

    eprintln!("e2e chart RBAC: the real kube-apiserver's RBAC authorizer and audit log");
    let env = Env::start_bare(&[
        (
            OPERATOR_SA,
            "system:serviceaccounts,system:serviceaccounts:komptroller-system",
        ),
        ("alice", "researchers"),
        ("carol", "safety,researchers"),
    ])
    .await;
    let cp = env
        .cluster
        .require_control_plane()
        .expect("the audit log is the e2e control plane's");
    let audit = cp.dir.join("logs/audit.log");
    env.namespace(NS, json!({})).await;
    // The chart's RBAC is applied by `Env` (this fixture); what the people
    // in this scenario may do:
    env.cluster
        .apply_yaml(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-researchers}
rules:
- apiGroups: [komptroller.dev]
  resources: [trainingjobs, computeapprovals]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-researchers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-researchers}
subjects: [{kind: Group, name: researchers, apiGroup: rbac.authorization.k8s.io}]
"#,
            None,
        )
        .await
        .unwrap();
    let op_kubeconfig = env.kubeconfig_for(OPERATOR_SA);
    // A short-lived serving certificate, so the Secret is renewed (update) during the run.
    let flags = [
        "--webhook-cert-validity",
        "40s",
        "--webhook-cert-renew-before",
        "30s",
        "--lease-duration",
        "4s",
        "--lease-grace",
        "2s",
    ];
    // The CRDs arrive after the operator started (it waits for them: a watch).
    let (mut op, ()) = tokio::join!(env.start_operator(&op_kubeconfig, &flags), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.install_crds().await;
    });

    // A policy: an escalation tier for the safety group and a cap of 8 accelerators.
    env.apply(
        &json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy",
            "metadata": {"name": "rbac-check"},
            "spec": {"mode": "Enforce",
                "tiers": [{"name": "large", "threshold": 1e21, "action": "Escalate",
                           "approvals": {"required": 1, "groups": ["safety"]}}],
                "capacity": {"cluster": {"maxAccelerators": 8}}}}),
        None,
    )
    .await;
    env.cluster
        .wait_for_condition(
            &common::operator::gvk("ComputePolicy"),
            None,
            "rbac-check",
            "Accepted",
            "True",
            T,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // the webhook's policy cache

    // Admission and a finish; queueing behind the cap.
    let h100 = "nvidia-h100-sxm";
    env.create_as(
        "alice",
        NS,
        training_job("first", "a", h100, 8, 1, "1h", Some("3s")),
    )
    .await;
    env.wait_phase(NS, "first", &["Running"]).await;
    env.create_as(
        "alice",
        NS,
        training_job("second", "b", h100, 8, 1, "1h", Some("1s")),
    )
    .await;
    let o = env.wait_phase(NS, "second", &["Queued"]).await;
    assert!(
        decision(&o, "rule")
            .as_str()
            .is_some_and(|r| r.starts_with("capacity")),
        "{:#}",
        o.data
    );
    env.wait_phase(NS, "first", &["Succeeded"]).await;
    env.wait_phase(NS, "second", &["Succeeded"]).await;

    // An escalation, approved by the safety group (the webhook reads the job).
    env.create_as(
        "alice",
        NS,
        training_job("big", "c", h100, 8, 1, "100h", Some("1s")),
    )
    .await;
    env.wait_phase(NS, "big", &["AwaitingApproval"]).await;
    env.approve_as("carol", NS, "big").await;
    env.wait_phase(NS, "big", &["Succeeded"]).await;

    // Deletion of a running job: the finalizer records it and lets go.
    env.create_as(
        "alice",
        NS,
        training_job("doomed", "d", h100, 8, 1, "1h", None),
    )
    .await;
    env.wait_phase(NS, "doomed", &["Running"]).await;
    let tjs = env.admin("TrainingJob", Some(NS)).await;
    tjs.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_deletion(&tjs, "doomed", T).await.unwrap();

    // Reports: written, then listed and read through the operator's /reports.
    let reports = env.admin("ComputeReport", None).await;
    let deadline = tokio::time::Instant::now() + T;
    let report = loop {
        let (status, body) = http_get(&op.metrics, "/reports").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if let Some(r) = v["reports"].as_array().and_then(|a| a.first()) {
            break r["name"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no signed report: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(reports.get_opt(&report).await.unwrap().is_some());
    let (status, body) = http_get(&op.metrics, &format!("/reports/{report}")).await;
    assert_eq!(status, 200, "{body}");

    // The serving certificate is renewed (Secret update) within ~10 s of its creation.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.cluster.client(), OPERATOR_NS);
    let tls = secrets.get("komptroller-webhook-tls").await.unwrap();
    wait_for(&secrets, "komptroller-webhook-tls", T, |s| {
        s.metadata.resource_version != tls.metadata.resource_version
    })
    .await
    .unwrap();

    // A restart over a ledger with a crash hole: the entry before the last is
    // gone, so the last (never acknowledged) is deleted and its job decided again.
    op.process.terminate(Duration::from_secs(10)).await.unwrap();
    let ledger = env.admin("ComputeLedgerEntry", None).await;
    let mut names: Vec<String> = ledger
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.metadata.name.unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    let hole = &names[names.len() - 2];
    let orphan = names[names.len() - 1].clone();
    ledger.delete(hole, &DeleteParams::default()).await.unwrap();
    // From here on the operator talks through a fault proxy (no faults yet).
    let proxy = FaultProxy::start(&cp.server, &std::fs::read_to_string(cp.ca_file()).unwrap())
        .await
        .unwrap();
    let proxied = env.dir.path().join("operator-via-proxy.kubeconfig");
    let token = env
        .cluster
        .service_account_token(OPERATOR_NS, "komptroller")
        .unwrap();
    proxy.write_kubeconfig(&proxied, &token).unwrap();
    let mut op = env.start_operator(&proxied, &flags).await;
    assert!(
        op.process
            .output()
            .iter()
            .any(|l| l.contains("deleting an unacknowledged ledger entry")),
        "the orphan {orphan} beyond the hole at {hole} was not deleted"
    );
    assert!(ledger.get_opt(&orphan).await.unwrap().is_none());

    // Injected write conflicts: a ledger entry or Job create answered 409 is read back (get).
    proxy.set_faults(Faults {
        write_error_409: 0.5,
        ..Faults::default()
    });
    let alice_tj = env.api_as("alice", "TrainingJob", NS).await;
    let mut i = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let read_back = |group: &str, resource: &str| -> Grant {
        ("get".into(), group.into(), resource.into(), String::new())
    };
    let wanted = [
        read_back("komptroller.dev", "computeledgerentries"),
        read_back("batch", "jobs"),
    ];
    while !wanted
        .iter()
        .all(|g| grant_used(g, &used_by(&audit, OPERATOR_SA)))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ledger entry and Job read back under injected 409s"
        );
        let name = format!("conflicted-{i}");
        let obj = serde_json::from_value(training_job(&name, &name, h100, 1, 1, "1h", Some("1s")))
            .unwrap();
        let _ = alice_tj.create(&PostParams::default(), &obj).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.set_faults(Faults::default());
    assert!(proxy.stats().injected_409 > 0, "{:?}", proxy.stats());
    // The operator converges once the faults stop.
    for o in alice_tj.list(&Default::default()).await.unwrap().items {
        let name = o.metadata.name.unwrap();
        if name.starts_with("conflicted-") {
            wait_for(&alice_tj, &name, T, |o| {
                matches!(phase(o), "Succeeded" | "Queued" | "Running" | "Admitted")
            })
            .await
            .unwrap();
        }
    }
    op.process.terminate(Duration::from_secs(10)).await.unwrap();

    // The audit: nothing denied, every grant used (or listed in NOT_RELIABLY_REACHED).
    // (The apiserver writes its audit log in batches of at most a second.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = used_by(&audit, OPERATOR_SA);
    assert!(
        !used.is_empty(),
        "no request of {OPERATOR_SA} in {}",
        audit.display()
    );
    let mut report = String::new();
    for ((v, g, r, ns), (allowed, denied)) in &used {
        report.push_str(&format!(
            "  {v:<8} {g:>30} {r:<32} {ns:<20} allowed {allowed} denied {denied}\n"
        ));
    }
    eprintln!("requests of {OPERATOR_SA}:\n{report}");
    let denied: Vec<&Grant> = used
        .iter()
        .filter(|(_, (_, d))| *d > 0)
        .map(|(k, _)| k)
        .collect();
    assert!(
        denied.is_empty(),
        "the chart's RBAC denied the operator: {denied:?}"
    );
    let unreliable: BTreeSet<(String, String, String)> = NOT_RELIABLY_REACHED
        .iter()
        .map(|(v, g, r, _)| (v.to_string(), g.to_string(), r.to_string()))
        .collect();
    let mut unused = Vec::new();
    for g in &granted {
        let key = (g.0.clone(), g.1.clone(), g.2.clone());
        match (grant_used(g, &used), unreliable.contains(&key)) {
            (false, false) => unused.push(format!(
                "{key:?} (namespace {:?}) is granted by the chart and never used",
                g.3
            )),
            (hit, true) => eprintln!("{key:?}: used this run: {hit}"),
            (true, false) => {}
        }
    }
    for (v, g, r, _) in NOT_RELIABLY_REACHED {
        assert!(
            granted.iter().any(|x| x.0 == *v && x.1 == *g && x.2 == *r),
            "NOT_RELIABLY_REACHED lists ({v}, {g}, {r}), which the chart no longer grants"
        );
    }
    assert!(unused.is_empty(), "{}", unused.join("\n"));
}
