//! Real Kueue on this test binary's control plane: its manager
//! (`sigs.k8s.io/kueue`, built by `e2e/cluster/build` from
//! `e2e/cluster/tools/kueue`) started out of cluster by
//! `e2e/cluster/kueue-start`, once per test binary (like
//! [`ControlPlane::shared`]), with its CRDs, webhooks and a Configuration
//! managing `batch/v1` Jobs; and the queue objects scenarios need: a
//! ResourceFlavor for the kwok H100 nodes, a ClusterQueue with
//! `nvidia.com/gpu` quota (optionally naming AdmissionChecks) and a
//! LocalQueue in a namespace.
//!
//! Kueue's webhooks are registered (they suspend a Job that names a queue,
//! as in a real install), so scenarios create Jobs as users do.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::control_plane::{ControlPlane, scripts_dir};
use crate::harness::{Cluster, Error, Result, has_condition_json, wait_for};

/// Kueue's API group.
pub const GROUP: &str = "kueue.x-k8s.io";
/// The Kueue API version the helpers write (Kueue v0.17's storage version).
pub const VERSION: &str = "v1beta2";
/// The label that hands a Job to a LocalQueue.
pub const QUEUE_NAME_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The label Kueue puts on a Workload: the uid of the job it stands for.
pub const JOB_UID_LABEL: &str = "kueue.x-k8s.io/job-uid";
/// Kueue's namespace; [`Cluster::reset`] keeps it.
pub const NAMESPACE: &str = crate::control_plane::KUEUE_NAMESPACE;
/// The prefix of Kueue's webhook configurations' names, which
/// [`Cluster::reset`] keeps.
pub const WEBHOOK_PREFIX: &str = crate::control_plane::KUEUE_WEBHOOK_PREFIX;
/// komptroller's AdmissionCheck controller name.
pub const CONTROLLER_NAME: &str = "komptroller.dev/compute-governance";
/// The node label the ResourceFlavor selects (as GPU feature discovery and
/// the kwok H100 nodes carry it).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The kwok H100 nodes' product.
pub const H100_PRODUCT: &str = "NVIDIA-H100-80GB-HBM3";
/// The GPU resource the ClusterQueue gives quota for.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Kueue running on the control plane.
#[derive(Debug, Clone)]
pub struct Kueue {
    /// The version the running manager reported (`gitVersion` in its log).
    pub version: String,
    /// Its namespace (`kueue-system`).
    pub namespace: String,
    /// Where its webhook server listens (`https://10.255.0.1:<port>`).
    pub webhook: String,
    /// Its log.
    pub log: PathBuf,
    /// The line `e2e/cluster/kueue-start` printed.
    pub ready_line: String,
}

static SHARED: OnceLock<std::result::Result<Kueue, String>> = OnceLock::new();

/// A Kueue kind (`ClusterQueue`, `Workload`, …) in [`VERSION`].
pub fn gvk(kind: &str) -> GroupVersionKind {
    GroupVersionKind::gvk(GROUP, VERSION, kind)
}

impl Kueue {
    /// Kueue on this test binary's control plane, started on first use and
    /// stopped with the control plane when the binary exits. Blocking.
    pub fn shared() -> Result<&'static Kueue> {
        SHARED
            .get_or_init(|| {
                let cp = ControlPlane::shared().map_err(|e| e.to_string())?;
                Self::start_on(cp).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::ControlPlane(e.clone()))
    }

    /// Kueue on `cluster`, which must be this binary's control plane (Kueue
    /// is started there; on a cluster `KOMPTROLLER_E2E_KUBECONFIG` names this
    /// fails). Prints the cluster, its server version and Kueue's version.
    pub async fn start(cluster: &Cluster) -> Result<&'static Kueue> {
        if cluster.require_control_plane().is_err() {
            return Err(Error::ControlPlane(
                "Kueue is started by the suite only on its own control plane; this run targets the cluster KOMPTROLLER_E2E_KUBECONFIG names".into(),
            ));
        }
        let kueue = tokio::task::spawn_blocking(Self::shared)
            .await
            .map_err(|e| Error::ControlPlane(e.to_string()))??;
        let v = cluster.client().apiserver_version().await?;
        eprintln!(
            "e2e: Kueue {} (sigs.k8s.io/kueue manager, out of cluster, webhooks at {}) on the e2e control plane, kube-apiserver {}",
            kueue.version, kueue.webhook, v.git_version
        );
        Ok(kueue)
    }

    /// Runs `e2e/cluster/kueue-start --dir <the control plane's dir>` (which
    /// builds Kueue's manager first when it is missing).
    fn start_on(cp: &ControlPlane) -> Result<Kueue> {
        let out = Command::new(scripts_dir().join("kueue-start"))
            .arg("--dir")
            .arg(&cp.dir)
            .stderr(std::process::Stdio::inherit())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let bin = cp.dir.join("bin/kueue");
        if !out.status.success() || !stdout.contains("ready") {
            let missing = if bin.is_file() {
                String::new()
            } else {
                format!(
                    "\n\n!!! Kueue's manager is missing: {} does not exist.\n!!! e2e/cluster/build kueue builds it from e2e/cluster/tools/kueue (sigs.k8s.io/kueue; Go 1.26+ and the Go module proxy needed); the Kueue scenarios cannot run without it.\n",
                    bin.display()
                )
            };
            return Err(Error::ControlPlane(format!(
                "e2e/cluster/kueue-start --dir {} failed ({}): {stdout}{missing}",
                cp.dir.display(),
                out.status
            )));
        }
        eprintln!("e2e: {stdout}");
        let env = std::fs::read_to_string(cp.dir.join("kueue/env"))?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::ControlPlane(format!("{}/kueue/env has no {k}", cp.dir.display()))
                })
        };
        let pinned = get("KUEUE_VERSION")?;
        let log = cp.dir.join("logs/kueue.log");
        let version = reported_version(&std::fs::read_to_string(&log)?).ok_or_else(|| {
            Error::ControlPlane(format!(
                "{} has no `Initializing … gitVersion` line",
                log.display()
            ))
        })?;
        if version != pinned {
            return Err(Error::ControlPlane(format!(
                "the Kueue manager reports {version}, e2e/cluster/tools/kueue pins {pinned}: {} is stale",
                bin.display()
            )));
        }
        Ok(Kueue {
            version,
            namespace: get("KUEUE_NAMESPACE")?,
            webhook: get("KUEUE_WEBHOOK")?,
            log,
            ready_line: stdout,
        })
    }
}

/// The `gitVersion` of the manager's `Initializing` log line (JSON).
fn reported_version(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("\"Initializing\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            v.get("gitVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
}

/// A ResourceFlavor for the kwok H100 nodes (`nvidia.com/gpu.product`).
pub fn resource_flavor(name: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "ResourceFlavor",
        "metadata": {"name": name},
        "spec": {"nodeLabels": {GPU_PRODUCT_LABEL: H100_PRODUCT}}
    })
}

/// A ClusterQueue for every namespace with one flavor's quota of cpu,
/// memory and `gpus` × `nvidia.com/gpu`, naming `checks` (AdmissionChecks)
/// on every flavor.
pub fn cluster_queue(name: &str, flavor: &str, gpus: u32, checks: &[&str]) -> Value {
    let mut spec = json!({
        "namespaceSelector": {},
        "resourceGroups": [{
            "coveredResources": ["cpu", "memory", GPU_RESOURCE],
            "flavors": [{"name": flavor, "resources": [
                {"name": "cpu", "nominalQuota": "1000"},
                {"name": "memory", "nominalQuota": "10Ti"},
                {"name": GPU_RESOURCE, "nominalQuota": gpus.to_string()}
            ]}]
        }]
    });
    if !checks.is_empty() {
        spec["admissionChecksStrategy"] = json!({
            "admissionChecks": checks.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()
        });
    }
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": spec
    })
}

/// A LocalQueue in `namespace` pointing at a ClusterQueue.
pub fn local_queue(name: &str, namespace: &str, cluster_queue: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue}
    })
}

/// An AdmissionCheck handled by `controller` (e.g. [`CONTROLLER_NAME`]).
pub fn admission_check(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "AdmissionCheck",
        "metadata": {"name": name},
        "spec": {"controllerName": controller}
    })
}

/// The names of the queue objects [`apply_queues`] made.
#[derive(Debug, Clone)]
pub struct Queues {
    pub flavor: String,
    pub cluster_queue: String,
    pub local_queue: String,
    pub namespace: String,
}

/// Applies a ResourceFlavor, a ClusterQueue (`gpus` GPUs of quota, naming
/// `checks`) and a LocalQueue in `namespace`, all named `<prefix>-…`. Does
/// not wait for the ClusterQueue to become Active (with checks, it is not
/// until each check is Active).
pub async fn apply_queues(
    cluster: &Cluster,
    namespace: &str,
    prefix: &str,
    gpus: u32,
    checks: &[&str],
) -> Result<Queues> {
    let q = Queues {
        flavor: format!("{prefix}-h100"),
        cluster_queue: format!("{prefix}-cq"),
        local_queue: format!("{prefix}-lq"),
        namespace: namespace.to_string(),
    };
    let docs = [
        resource_flavor(&q.flavor),
        cluster_queue(&q.cluster_queue, &q.flavor, gpus, checks),
        local_queue(&q.local_queue, namespace, &q.cluster_queue),
    ];
    for d in docs {
        let yaml = serde_json::to_string(&d).map_err(|e| Error::Manifest(e.to_string()))?;
        cluster.apply_yaml(&yaml, Some(namespace)).await?;
    }
    Ok(q)
}

/// Waits until a ClusterQueue's `Active` condition has `status`.
pub async fn wait_cluster_queue_active(
    cluster: &Cluster,
    name: &str,
    status: &str,
    timeout: Duration,
) -> Result<DynamicObject> {
    cluster
        .wait_for_condition(&gvk("ClusterQueue"), None, name, "Active", status, timeout)
        .await
}

/// Sets an AdmissionCheck's `Active` condition by server-side apply to
/// `admissionchecks/status` (what its controller does; the field manager is
/// [`CONTROLLER_NAME`]).
pub async fn set_admission_check_active(cluster: &Cluster, name: &str, active: bool) -> Result<()> {
    let api = cluster.dynamic_api(&gvk("AdmissionCheck"), None).await?;
    let (status, reason) = if active {
        ("True", "Active")
    } else {
        ("False", "Inactive")
    };
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "AdmissionCheck",
        "metadata": {"name": name},
        "status": {"conditions": [{
            "type": "Active", "status": status, "reason": reason,
            "message": format!("set by the e2e suite standing in for {CONTROLLER_NAME}"),
            "lastTransitionTime": now(),
        }]}
    });
    api.patch_status(
        name,
        &PatchParams::apply(CONTROLLER_NAME).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Sets one AdmissionCheck's entry in a Workload's `status.admissionChecks`
/// (`Pending`, `Ready`, `Retry` or `Rejected`) by server-side apply to
/// `workloads/status` with field manager [`CONTROLLER_NAME`], only that
/// entry (as komptroller's controller will).
pub async fn set_check_state(
    cluster: &Cluster,
    namespace: &str,
    workload: &str,
    check: &str,
    state: &str,
    message: &str,
) -> Result<DynamicObject> {
    let api = cluster
        .dynamic_api(&gvk("Workload"), Some(namespace))
        .await?;
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Workload",
        "metadata": {"name": workload, "namespace": namespace},
        "status": {"admissionChecks": [{
            "name": check, "state": state, "message": message,
            "lastTransitionTime": now(),
        }]}
    });
    Ok(api
        .patch_status(
            workload,
            &PatchParams::apply(CONTROLLER_NAME).force(),
            &Patch::Apply(&body),
        )
        .await?)
}

/// The Workload Kueue made for the job with this uid, waiting up to
/// `timeout` for it.
pub async fn workload_of(
    cluster: &Cluster,
    namespace: &str,
    job_uid: &str,
    timeout: Duration,
) -> Result<DynamicObject> {
    let api: Api<DynamicObject> = cluster
        .dynamic_api(&gvk("Workload"), Some(namespace))
        .await?;
    let lp = ListParams::default().labels(&format!("{JOB_UID_LABEL}={job_uid}"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(w) = api.list(&lp).await?.items.into_iter().next() {
            return Ok(w);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("a Workload labelled {JOB_UID_LABEL}={job_uid} in {namespace}"),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a Workload satisfies `pred` (on its JSON).
pub async fn wait_workload(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<DynamicObject> {
    let api = cluster
        .dynamic_api(&gvk("Workload"), Some(namespace))
        .await?;
    wait_for(&api, name, timeout, |w| {
        pred(&serde_json::to_value(w).unwrap_or_default())
    })
    .await
}

/// The state of `check` in a Workload's `status.admissionChecks`.
pub fn check_state<'a>(workload: &'a Value, check: &str) -> Option<&'a str> {
    workload
        .pointer("/status/admissionChecks")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(check))?
        .get("state")
        .and_then(Value::as_str)
}

/// Whether a Workload (JSON) has condition `type_` = `True`.
pub fn is_true(workload: &Value, type_: &str) -> bool {
    has_condition_json(workload, type_, "True")
}

/// Now, RFC 3339 in whole seconds (as metav1.Time serialises).
fn now() -> String {
    let t = jiff::Timestamp::now();
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_the_manager_logs() {
        let log = "{\"level\":\"info\",\"msg\":\"other\"}\n{\"level\":\"info\",\"ts\":\"x\",\"logger\":\"setup\",\"msg\":\"Initializing\",\"gitVersion\":\"v0.17.0\",\"gitCommit\":\"abc\"}\n";
        assert_eq!(reported_version(log).as_deref(), Some("v0.17.0"));
        assert_eq!(reported_version("no json here\n"), None);
    }

    #[test]
    fn cluster_queue_names_its_checks_only_when_given() {
        let plain = cluster_queue("cq", "f", 16, &[]);
        assert!(plain["spec"].get("admissionChecksStrategy").is_none());
        assert_eq!(
            plain["spec"]["resourceGroups"][0]["flavors"][0]["resources"][2],
            json!({"name": GPU_RESOURCE, "nominalQuota": "16"})
        );
        let checked = cluster_queue("cq", "f", 8, &["a", "b"]);
        assert_eq!(
            checked["spec"]["admissionChecksStrategy"]["admissionChecks"],
            json!([{"name": "a"}, {"name": "b"}])
        );
    }

    #[test]
    fn check_state_finds_the_named_entry() {
        let w = json!({"status": {"admissionChecks": [
            {"name": "x", "state": "Ready"}, {"name": "y", "state": "Pending"}]}});
        assert_eq!(check_state(&w, "y"), Some("Pending"));
        assert_eq!(check_state(&w, "z"), None);
        assert_eq!(check_state(&json!({}), "y"), None);
    }
}
