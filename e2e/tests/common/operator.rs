//! Running `komptroller run` on the e2e control plane as the chart's ServiceAccount: the helpers the
//! chart-RBAC, policy-library and certificate-mode scenarios share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::harness::{Cluster, Process, client_from_kubeconfig, wait_for, workspace_binary};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

pub const T: Duration = Duration::from_secs(30);
/// The chart's release namespace and ServiceAccount (`helm install komptroller -n komptroller-system`).
pub const OPERATOR_NS: &str = "komptroller-system";
pub const OPERATOR_SA: &str = "system:serviceaccount:komptroller-system:komptroller";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn komptroller() -> PathBuf {
    workspace_binary("komptroller").unwrap_or_else(|e| panic!("{e}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn gvk(kind: &str) -> GroupVersionKind {
    GroupVersionKind::gvk("komptroller.dev", "v1alpha1", kind)
}

/// The e2e control plane (or the cluster `KOMPTROLLER_E2E_KUBECONFIG`
/// names), exclusively, with the product CRDs, the operator's namespace and
/// the chart's RBAC (its ServiceAccount, ClusterRole, Role and bindings:
/// `tests/fixtures/chart-rbac.yaml`), and users: each `(user, "g1,g2")` acts
/// by a client certificate in those groups and may use komptroller's kinds
/// (ClusterRole `e2e-users`); a `system:serviceaccount:NS:NAME` user acts by
/// a token from the TokenRequest API, with only what RBAC grants it.
pub struct Env {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    users: std::collections::BTreeMap<String, Vec<String>>,
}

/// What the scenarios' people may do (as a namespace `edit` binding would
/// let an ML engineer): komptroller's namespaced kinds, and reading Jobs,
/// Pods and Events.
const USER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-users}
rules:
- apiGroups: [komptroller.dev]
  resources: [trainingjobs, computeapprovals]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [komptroller.dev]
  resources: [computepolicies, computereports, computeledgerentries, trainingjobs/status]
  verbs: [get, list, watch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods, events, namespaces]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [get, list, watch]
---
# The platform team (group platform-team) writes policies and labels namespaces.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-platform-team}
rules:
- apiGroups: [komptroller.dev]
  resources: [computepolicies]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-platform-team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-platform-team}
subjects: [{kind: Group, name: platform-team, apiGroup: rbac.authorization.k8s.io}]
"#;

impl Env {
    pub async fn start(users: &[(&str, &str)]) -> Env {
        let env = Env::start_bare(users).await;
        env.install_crds().await;
        env
    }

    pub async fn install_crds(&self) {
        self.cluster
            .install_crds(&repo().join("crds"), T)
            .await
            .unwrap();
    }

    /// As `start`, without the CRDs.
    pub async fn start_bare(users: &[(&str, &str)]) -> Env {
        let cluster = Cluster::start().await.unwrap();
        cluster.install_chart_rbac().await.unwrap();
        cluster.apply_yaml(USER_RBAC, None).await.unwrap();
        let mut map = std::collections::BTreeMap::new();
        let mut subjects = Vec::new();
        for (user, groups) in users {
            let groups: Vec<String> = groups
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            if !user.starts_with("system:serviceaccount:") {
                subjects.push(
                    json!({"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}),
                );
            }
            map.insert(user.to_string(), groups);
        }
        if !subjects.is_empty() {
            let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "e2e-users"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-users"},
                "subjects": subjects});
            cluster
                .apply_yaml(&serde_json::to_string(&binding).unwrap(), None)
                .await
                .unwrap();
        }
        Env {
            cluster,
            dir: tempfile::tempdir().unwrap(),
            users: map,
        }
    }

    /// A kubeconfig that authenticates as `user`: a ServiceAccount by a
    /// token from the TokenRequest API (the account is created when
    /// missing), anyone else by a client certificate in its groups.
    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
            let (ns, name) = rest.split_once(':').unwrap();
            let file = user.replace(':', "_");
            let path = self.dir.path().join(format!("{file}.kubeconfig"));
            if !path.exists() {
                let token = self.cluster.service_account_token(ns, name).unwrap();
                self.cluster.write_token_kubeconfig(&path, &token).unwrap();
            }
            return path;
        }
        let groups: Vec<&str> = self
            .users
            .get(user)
            .map(|g| g.iter().map(String::as_str).collect())
            .unwrap_or_default();
        self.cluster.kubeconfig_for_user(user, &groups).unwrap()
    }

    pub async fn api_as(&self, user: &str, kind: &str, ns: &str) -> Api<DynamicObject> {
        let client = client_from_kubeconfig(&self.kubeconfig_for(user))
            .await
            .unwrap();
        let (ar, _) = self.cluster.resolve(&gvk(kind)).await.unwrap();
        Api::namespaced_with(client, ns, &ar)
    }

    pub async fn admin(&self, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        self.cluster.dynamic_api(&gvk(kind), ns).await.unwrap()
    }

    pub async fn namespace(&self, name: &str, labels: Value) {
        let v = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}});
        self.cluster
            .apply_yaml(&serde_json::to_string(&v).unwrap(), None)
            .await
            .unwrap();
    }

    /// `komptroller run` with its webhook, as `kubeconfig`'s user; waits
    /// until it leads (`books rebuilt`) and serves the webhook.
    pub async fn start_operator(&self, kubeconfig: &Path, extra: &[&str]) -> Operator {
        let (metrics, webhook) = (free_port(), free_port());
        let metrics_addr = format!("127.0.0.1:{metrics}");
        let webhook_addr = format!("127.0.0.1:{webhook}");
        let url = format!("https://127.0.0.1:{webhook}");
        let mut args = vec![
            "run",
            "--namespace",
            OPERATOR_NS,
            "--metrics-addr",
            &metrics_addr,
            "--webhook-addr",
            &webhook_addr,
            "--webhook-url",
            &url,
            "--webhook-namespace",
            OPERATOR_NS,
            "--webhook-cert-check-interval",
            "1s",
            "--report-interval",
            "2s",
        ];
        args.extend_from_slice(extra);
        let process = Process::start(
            &komptroller(),
            &args,
            Some(kubeconfig),
            &[("RUST_LOG", "info")],
        )
        .unwrap();
        wait_for_output(&process, &["webhook ready", "books rebuilt"]).await;
        Operator {
            process,
            metrics: metrics_addr,
        }
    }

    pub async fn apply(&self, v: &Value, ns: Option<&str>) -> DynamicObject {
        self.cluster
            .apply_yaml(&serde_json::to_string(v).unwrap(), ns)
            .await
            .unwrap()
            .remove(0)
    }

    /// Applies a policy file from `policies/` as it is (every document), and
    /// waits until the operator has accepted each policy in it.
    pub async fn apply_policy_file(&self, file: &str) -> Vec<String> {
        let path = repo().join("policies").join(file);
        let objs = self.cluster.apply_file(&path, None).await.unwrap();
        let names: Vec<String> = objs
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        for n in &names {
            self.cluster
                .wait_for_condition(&gvk("ComputePolicy"), None, n, "Accepted", "True", T)
                .await
                .unwrap_or_else(|e| panic!("policy {n} from policies/{file} not accepted: {e}"));
        }
        names
    }

    pub async fn wait_phase(&self, ns: &str, name: &str, phases: &[&str]) -> DynamicObject {
        let api = self.admin("TrainingJob", Some(ns)).await;
        match wait_for(&api, name, T, |o| phases.contains(&phase(o))).await {
            Ok(o) => o,
            Err(e) => {
                let now = api.get_opt(name).await.unwrap();
                panic!(
                    "{name} never reached {phases:?}: {e}; now {:#}",
                    now.map(|o| o.data).unwrap_or_default()
                );
            }
        }
    }

    /// Creates `obj` as `user` (the webhooks stamp the user).
    pub async fn create_as(&self, user: &str, ns: &str, obj: Value) -> DynamicObject {
        let kind = obj["kind"].as_str().unwrap().to_string();
        self.api_as(user, &kind, ns)
            .await
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{user} creating a {kind}: {e}"))
    }

    /// Approves `job` as `user` for the spec hash the status shows.
    pub async fn approve_as(&self, user: &str, ns: &str, job: &str) -> DynamicObject {
        self.try_approve_as(user, ns, job)
            .await
            .unwrap_or_else(|e| panic!("{user} approving {job}: {e}"))
    }

    /// As `approve_as`, returning the API's answer.
    pub async fn try_approve_as(
        &self,
        user: &str,
        ns: &str,
        job: &str,
    ) -> Result<DynamicObject, kube::Error> {
        let tj = self.admin("TrainingJob", Some(ns)).await.get(job).await?;
        let hash = tj.data["status"]["specHash"].as_str().unwrap().to_string();
        let approval = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval",
            "metadata": {"name": format!("{job}-by-{user}")},
            "spec": {"trainingJobName": job, "specHash": hash}});
        self.api_as(user, "ComputeApproval", ns)
            .await
            .create(
                &PostParams::default(),
                &serde_json::from_value(approval).unwrap(),
            )
            .await
    }

    /// The Jobs in a namespace.
    pub async fn jobs(&self, ns: &str) -> Vec<k8s_openapi::api::batch::v1::Job> {
        let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(self.cluster.client(), ns);
        api.list(&ListParams::default()).await.unwrap().items
    }
}

pub struct Operator {
    pub process: Process,
    /// HOST:PORT of /metrics, /healthz, /readyz, /reports.
    pub metrics: String,
}

/// Waits until the process has printed a line containing each needle (in any order).
pub async fn wait_for_output(p: &Process, needles: &[&str]) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let out = p.output().join("\n");
        if needles.iter().all(|n| out.contains(n)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needles:?} within {T:?}; output:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn phase(o: &DynamicObject) -> &str {
    o.data
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn decision<'a>(o: &'a DynamicObject, field: &str) -> &'a Value {
    o.data
        .pointer(&format!("/status/decision/{field}"))
        .unwrap_or(&Value::Null)
}

/// A TrainingJob: `replicas` pods × `gpus` accelerators of `accelerator` for
/// `max`; `runtime` is how long its pods run on the kwok nodes before they succeed
/// (without one they run until the Job's deadline).
pub fn training_job(
    name: &str,
    lineage: &str,
    accelerator: &str,
    gpus: u32,
    replicas: u32,
    max: &str,
    runtime: Option<&str>,
) -> Value {
    let mut template = json!({"spec": {"restartPolicy": "Never", "containers": [{
        "name": "train", "image": "ghcr.io/example/trainer:1",
        "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}});
    if let Some(r) = runtime {
        template["metadata"] = json!({"annotations": {e2e::harness::RUNTIME_ANNOTATION: r}});
    }
    json!({
        "apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": lineage},
            "accelerator": {"type": accelerator},
            "replicas": replicas,
            "maxDuration": max,
            "template": template,
        }
    })
}

/// A plain HTTP/1.0 GET (the operator's /reports and /metrics); (status, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
