//! Running `komptroller run` on the stand-in as token users: the helpers the
//! chart-RBAC, policy-library and certificate-mode scenarios share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::harness::{Cluster, Process, client_from_kubeconfig, wait_for, workspace_binary};
use e2e::standin::Options;
use e2e::standin::auth::Tokens;
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

/// A stand-in with static-token users (`token,user,uid,"groups"` lines;
/// user `u` gets token `tok-u`), the product CRDs and the operator's namespace.
pub struct Env {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start(users: &[(&str, &str)], options: Options) -> Env {
        let env = Env::start_bare(users, options).await;
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
    pub async fn start_bare(users: &[(&str, &str)], options: Options) -> Env {
        let mut tokens = String::new();
        for (user, groups) in users {
            tokens.push_str(&format!("tok-{user},{user},uid-{user},\"{groups}\"\n"));
        }
        let cluster = Cluster::start_standin(Options {
            tokens: Tokens::parse(&tokens).unwrap(),
            ..options
        })
        .await
        .unwrap();
        cluster
            .apply_yaml(
                &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {OPERATOR_NS}}}\n"),
                None,
            )
            .await
            .unwrap();
        Env {
            cluster,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A kubeconfig that authenticates as `user` (token `tok-<user>`).
    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        // KUBECONFIG is a ':'-separated list: no colons in the file name.
        let file = user.replace(':', "_");
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        if !path.exists() {
            self.cluster
                .require_standin()
                .unwrap()
                .write_kubeconfig_for_token(&path, &format!("tok-{user}"))
                .unwrap();
        }
        path
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
/// `max`; `runtime` is how long the stand-in's Job simulator lets it run.
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
        template["metadata"] = json!({"annotations": {"e2e.komptroller.dev/runtime": r}});
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
