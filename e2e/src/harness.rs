//! The e2e harness: every scenario reaches the cluster through a kubeconfig
//! only. By default it runs on the real control plane `e2e/cluster` builds
//! and starts (one per test binary, see [`crate::control_plane`]); with
//! `KOMPTROLLER_E2E_KUBECONFIG` set the same scenarios run against that
//! cluster. The harness prints which one it runs against and its version.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Client, Config};
use serde_json::{Value, json};

pub use crate::base::{Error, Result, repo_root};
use crate::control_plane::ControlPlane;

/// How long [`Cluster::resolve`] waits for discovery to list a kind.
pub const DISCOVERY_SETTLE: Duration = Duration::from_secs(30);

/// The environment variable naming a real cluster's kubeconfig.
pub const KUBECONFIG_ENV: &str = "KOMPTROLLER_E2E_KUBECONFIG";

/// The pod annotation that says how long a Job's pods run on the kwok nodes
/// before they succeed (e.g. `"30s"`; e2e/cluster/kwok-pod-complete.yaml).
/// Without it a pod runs until its Job's `activeDeadlineSeconds`.
pub const RUNTIME_ANNOTATION: &str = "pod-complete.stage.kwok.x-k8s.io/delay";

/// The label on namespaces `Cluster::temp_namespace` creates.
pub const TEMPORARY_LABEL: &str = "e2e.komptroller.dev/temporary";

/// The field manager the harness applies with.
pub const FIELD_MANAGER: &str = "komptroller-e2e";

/// The product's generated CRDs (`crds/` at the repository root).
pub fn crds_dir() -> PathBuf {
    repo_root().join("crds")
}

/// Which cluster a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The real control plane `e2e/cluster/start` runs (the default).
    ControlPlane,
    /// The cluster `KOMPTROLLER_E2E_KUBECONFIG` names.
    Real,
}

/// Scenarios of one test binary that change cluster-wide state (policies,
/// the ledger, webhook configurations, leases) or restart the control
/// plane's components take turns on it, alone (a write turn); scenarios that
/// stay in their own namespace share it (read turns).
static TURN: std::sync::LazyLock<std::sync::Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::RwLock::new(())));

/// A scenario's turn on the shared cluster, held as long as its `Cluster`.
#[allow(dead_code)]
enum Turn {
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
}

/// A cluster under test.
pub struct Cluster {
    pub target: Target,
    kubeconfig: PathBuf,
    client: Client,
    control_plane: Option<&'static ControlPlane>,
    _turn: Option<Turn>,
}

/// A kube client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    // Only ring is compiled in; installing it is idempotent (an error means one is set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let err = |message: String| Error::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(Client::try_from(config)?)
}

impl Cluster {
    /// The cluster named by `KOMPTROLLER_E2E_KUBECONFIG`, else this test
    /// binary's real control plane; either way exclusively: the scenario
    /// waits for its turn, and the cluster-wide state earlier scenarios left
    /// (komptroller objects, webhook configurations, test namespaces) is
    /// removed first. Namespaced-only scenarios use [`Cluster::start_shared`].
    pub async fn start() -> Result<Self> {
        let turn = TURN.clone().write_owned().await;
        let mut c = Self::connect().await?;
        c.reset().await?;
        c._turn = Some(Turn::Alone(turn));
        Ok(c)
    }

    /// As [`Cluster::start`], without waiting for a turn: for scenarios that
    /// touch only their own namespace and cluster-scoped kinds of their own.
    pub async fn start_shared() -> Result<Self> {
        let turn = TURN.clone().read_owned().await;
        let mut c = Self::connect().await?;
        c._turn = Some(Turn::Shared(turn));
        Ok(c)
    }

    async fn connect() -> Result<Self> {
        match std::env::var_os(KUBECONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::real(Path::new(&p)).await,
            _ => Self::control_plane().await,
        }
    }

    /// This test binary's control plane (started on first use).
    pub async fn control_plane() -> Result<Self> {
        let cp = tokio::task::spawn_blocking(ControlPlane::shared)
            .await
            .map_err(|e| Error::ControlPlane(e.to_string()))??;
        let client = client_from_kubeconfig(&cp.kubeconfig).await?;
        let v = client.apiserver_version().await?;
        eprintln!(
            "e2e: running against the e2e control plane (real etcd, kube-apiserver {}, kube-controller-manager, kube-scheduler; kwok nodes) at {}, {}",
            v.git_version,
            cp.server,
            cp.dir.display()
        );
        Ok(Self {
            target: Target::ControlPlane,
            kubeconfig: cp.kubeconfig.clone(),
            client,
            control_plane: Some(cp),
            _turn: None,
        })
    }

    /// The control plane, or an error saying the scenario cannot run elsewhere.
    pub fn require_control_plane(&self) -> Result<&'static ControlPlane> {
        self.control_plane.ok_or(Error::NeedsControlPlane)
    }

    /// A kubeconfig acting as `user` in `groups`: a client certificate on the
    /// control plane; impersonation by the admin elsewhere.
    pub fn kubeconfig_for_user(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        if let Some(cp) = self.control_plane {
            return cp.kubeconfig_for_user(user, groups);
        }
        // Another cluster: the admin kubeconfig, impersonating.
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let mut kc: Value = serde_saphyr::from_str(&text).map_err(|e| Error::Kubeconfig {
            path: self.kubeconfig.clone(),
            message: e.to_string(),
        })?;
        if let Some(users) = kc.get_mut("users").and_then(Value::as_array_mut) {
            for u in users {
                if let Some(ui) = u.get_mut("user").and_then(Value::as_object_mut) {
                    ui.insert("as".into(), json!(user));
                    ui.insert("as-groups".into(), json!(groups));
                }
            }
        }
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "komptroller-e2e-{}-{safe}-{}.kubeconfig",
            std::process::id(),
            groups.join("_")
        ));
        std::fs::write(&path, serde_json::to_string(&kc).unwrap_or_default())?;
        Ok(path)
    }

    /// A kubeconfig acting as the chart's ServiceAccount
    /// (`komptroller-system/komptroller`), with the chart's RBAC applied
    /// (`e2e/tests/fixtures/chart-rbac.yaml`, kept equal to the chart by
    /// `scripts/checks/chart.sh`): the operator runs out of cluster with a
    /// token from the TokenRequest API, so the real RBAC authorizer sees
    /// exactly what the chart grants.
    pub async fn operator_kubeconfig(&self) -> Result<PathBuf> {
        self.operator_kubeconfig_with("chart-rbac.yaml").await
    }

    /// As [`Cluster::operator_kubeconfig`], with the chart's RBAC as rendered
    /// for other values: `fixture` is a file of `e2e/tests/fixtures`
    /// (`chart-rbac-kueue.yaml`: `--set kueue.enabled=true`).
    pub async fn operator_kubeconfig_with(&self, fixture: &str) -> Result<PathBuf> {
        self.install_chart_rbac_from(fixture).await?;
        let token = self.service_account_token("komptroller-system", "komptroller")?;
        let path = std::env::temp_dir().join(format!(
            "komptroller-e2e-{}-operator-sa.kubeconfig",
            std::process::id()
        ));
        self.write_token_kubeconfig(&path, &token)?;
        Ok(path)
    }

    /// The operator's namespace `komptroller-system` and the chart's RBAC as
    /// the chart renders it with default values (its ServiceAccount,
    /// ClusterRole, Role and bindings: `e2e/tests/fixtures/chart-rbac.yaml`).
    pub async fn install_chart_rbac(&self) -> Result<()> {
        self.install_chart_rbac_from("chart-rbac.yaml").await
    }

    /// The operator's namespace and the chart's RBAC from `fixture` (a file
    /// of `e2e/tests/fixtures` that scripts/checks/chart_checks.py renders).
    pub async fn install_chart_rbac_from(&self, fixture: &str) -> Result<()> {
        self.apply_yaml(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: komptroller-system}\n",
            None,
        )
        .await?;
        self.apply_file(&repo_root().join("e2e/tests/fixtures").join(fixture), None)
            .await?;
        Ok(())
    }

    /// A token for ServiceAccount `ns/name` from the TokenRequest API (one
    /// hour), the account created when missing.
    pub fn service_account_token(&self, ns: &str, name: &str) -> Result<String> {
        let _ = self
            .kubectl()
            .args(["-n", ns, "create", "serviceaccount", name])
            .output()?;
        let out = self
            .kubectl()
            .args(["-n", ns, "create", "token", name, "--duration", "1h"])
            .output()?;
        if !out.status.success() {
            return Err(Error::ControlPlane(format!(
                "TokenRequest for {ns}/{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// This cluster's kubeconfig with `token` as its user, written to `path`.
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let bad = |message: String| Error::Kubeconfig {
            path: self.kubeconfig.clone(),
            message,
        };
        let mut kc: Value = serde_saphyr::from_str(&text).map_err(|e| bad(e.to_string()))?;
        kc["users"] = json!([{"name": "token-user", "user": {"token": token}}]);
        let ctx = kc["current-context"]
            .as_str()
            .ok_or_else(|| bad("no current-context".into()))?
            .to_string();
        if let Some(cs) = kc["contexts"].as_array_mut() {
            for c in cs {
                if c["name"] == ctx.as_str() {
                    c["context"]["user"] = json!("token-user");
                }
            }
        }
        std::fs::write(path, serde_json::to_string(&kc).unwrap_or_default())?;
        Ok(())
    }

    /// Removes the cluster-wide state scenarios leave: every komptroller.dev
    /// object (finalizers dropped: its operator is gone), the admission
    /// webhook configurations and the namespaces, and waits until those
    /// namespaces are gone. On the e2e control plane (the suite's own) that
    /// is every webhook configuration and every namespace but the system
    /// ones and Kueue's (`kueue-system`, `kueue-…` configurations, which
    /// `e2e::kueue` starts once per binary); on a cluster `KOMPTROLLER_E2E_KUBECONFIG` names, only
    /// komptroller's configurations (named `komptroller…`) and the
    /// namespaces `temp_namespace` labelled as the suite's.
    pub async fn reset(&self) -> Result<()> {
        use k8s_openapi::api::admissionregistration::v1 as adm;
        use k8s_openapi::api::core::v1::Namespace;
        let lp = kube::api::ListParams::default();
        let dp = DeleteParams::background();
        let own = self.control_plane.is_some();
        // Kueue's own webhook configurations and namespace stay: the binary
        // runs Kueue once (`e2e::kueue`), for every scenario after this one.
        let ours = |name: &str| {
            (own && !name.starts_with(crate::control_plane::KUEUE_WEBHOOK_PREFIX))
                || name.starts_with("komptroller")
        };
        let mwc: Api<adm::MutatingWebhookConfiguration> = Api::all(self.client.clone());
        for o in mwc.list_metadata(&lp).await? {
            let name = o.metadata.name.unwrap_or_default();
            if ours(&name) {
                let _ = mwc.delete(&name, &dp).await;
            }
        }
        let vwc: Api<adm::ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        for o in vwc.list_metadata(&lp).await? {
            let name = o.metadata.name.unwrap_or_default();
            if ours(&name) {
                let _ = vwc.delete(&name, &dp).await;
            }
        }
        // komptroller.dev objects, wherever they are.
        let discovery = kube::Discovery::new(self.client.clone())
            .filter(&["komptroller.dev"])
            .run()
            .await?;
        for group in discovery.groups() {
            for (ar, _caps) in group.recommended_resources() {
                let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
                for o in api.list_metadata(&lp).await? {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let api: Api<DynamicObject> = match o.metadata.namespace.as_deref() {
                        Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                        None => Api::all_with(self.client.clone(), &ar),
                    };
                    if o.metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| !f.is_empty())
                    {
                        let _ = api
                            .patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                            )
                            .await;
                    }
                    let _ = api.delete(&name, &dp).await;
                }
            }
        }
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let system = [
            "default",
            "kube-system",
            "kube-public",
            "kube-node-lease",
            crate::control_plane::KUEUE_NAMESPACE,
        ];
        let candidates = if own {
            lp.clone()
        } else {
            kube::api::ListParams::default().labels(&format!("{TEMPORARY_LABEL}=true"))
        };
        let mut gone = Vec::new();
        for o in nss.list_metadata(&candidates).await? {
            let name = o.metadata.name.unwrap_or_default();
            if !system.contains(&name.as_str()) {
                let _ = nss.delete(&name, &dp).await;
                gone.push(name);
            }
        }
        for n in gone {
            wait_for_deletion(&nss, &n, crate::control_plane::RESET_TIMEOUT).await?;
        }
        Ok(())
    }

    /// A real cluster by kubeconfig.
    pub async fn real(kubeconfig: &Path) -> Result<Self> {
        let client = client_from_kubeconfig(kubeconfig).await?;
        let v = client.apiserver_version().await?;
        eprintln!(
            "e2e: running against the cluster KOMPTROLLER_E2E_KUBECONFIG names ({}, server {} {})",
            kubeconfig.display(),
            v.git_version,
            v.platform
        );
        Ok(Self {
            target: Target::Real,
            kubeconfig: kubeconfig.to_path_buf(),
            client,
            control_plane: None,
            _turn: None,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` command pointed at this cluster: the real kubectl
    /// `e2e/cluster/build` built (never one from PATH).
    pub fn kubectl(&self) -> std::process::Command {
        let bin = crate::control_plane::tool("kubectl")
            .unwrap_or_else(|e| PathBuf::from(format!("kubectl-not-built ({e})")));
        let mut c = std::process::Command::new(bin);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// A `helm` command pointed at this cluster: the real helm CLI
    /// `e2e/cluster/build` built, with its own cache and config under the
    /// system temp directory.
    pub fn helm(&self) -> std::process::Command {
        let bin = crate::control_plane::tool("helm")
            .unwrap_or_else(|e| PathBuf::from(format!("helm-not-built ({e})")));
        let mut c = std::process::Command::new(bin);
        let home =
            std::env::temp_dir().join(format!("komptroller-e2e-helm-{}", std::process::id()));
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        c
    }

    /// A fresh namespace `e2e-<prefix>-<random>`, deleted when dropped.
    pub async fn temp_namespace(&self, prefix: &str) -> Result<TempNamespace> {
        let name = format!(
            "e2e-{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {TEMPORARY_LABEL: "true"}}
        }))
        .map_err(|e| Error::Manifest(e.to_string()))?;
        api.create(&PostParams::default(), &ns).await?;
        Ok(TempNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
            keep: false,
        })
    }

    /// Resolves a kind to its API resource through discovery. A kind discovery
    /// does not list yet is asked again for up to [`DISCOVERY_SETTLE`]: the
    /// API server publishes a new CRD's kinds a moment after it reports the
    /// CRD Established, longer on a loaded machine.
    pub async fn resolve(&self, gvk: &GroupVersionKind) -> Result<(ApiResource, ApiCapabilities)> {
        let deadline = tokio::time::Instant::now() + DISCOVERY_SETTLE;
        loop {
            match kube::discovery::pinned_kind(&self.client, gvk).await {
                Ok(found) => return Ok(found),
                Err(kube::Error::Discovery(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A dynamic API for a kind (namespace ignored for cluster-scoped kinds).
    pub async fn dynamic_api(
        &self,
        gvk: &GroupVersionKind,
        namespace: Option<&str>,
    ) -> Result<Api<DynamicObject>> {
        let (ar, caps) = self.resolve(gvk).await?;
        Ok(match (caps.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// Applies every document of a (multi-document) YAML text by server-side
    /// apply, namespaced objects into `namespace` unless they name their own.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>> {
        let mut out = Vec::new();
        for doc in parse_yaml_documents(yaml)? {
            let gvk = gvk_of(&doc)?;
            let ns = doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(String::from);
            let api = self.dynamic_api(&gvk, ns.as_deref().or(namespace)).await?;
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Manifest(format!("a {} has no metadata.name", gvk.kind)))?
                .to_string();
            let obj = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&doc),
                )
                .await?;
            out.push(obj);
        }
        Ok(out)
    }

    /// Applies a YAML file.
    pub async fn apply_file(
        &self,
        path: &Path,
        namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>> {
        let text = std::fs::read_to_string(path)?;
        self.apply_yaml(&text, namespace).await
    }

    /// Applies every `*.yaml`/`*.yml` file of a directory containing CRDs and
    /// waits until each CRD is Established .
    pub async fn install_crds(&self, dir: &Path, timeout: Duration) -> Result<Vec<String>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut names = Vec::new();
        for f in files {
            for obj in self.apply_file(&f, None).await? {
                if obj
                    .types
                    .as_ref()
                    .is_some_and(|t| t.kind == "CustomResourceDefinition")
                {
                    names.push(obj.metadata.name.clone().unwrap_or_default());
                }
            }
        }
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(self.client.clone());
        for n in &names {
            wait_for(&crds, n, timeout, |c| {
                has_condition_json(
                    &serde_json::to_value(c).unwrap_or_default(),
                    "Established",
                    "True",
                )
            })
            .await?;
        }
        Ok(names)
    }

    /// The operator's ledger as the cluster holds it: every
    /// ComputeLedgerEntry's `spec.entry` parsed, in sequence order.
    pub async fn ledger_entries(&self) -> Result<Vec<Value>> {
        let gvk = GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "ComputeLedgerEntry");
        let api = self.dynamic_api(&gvk, None).await?;
        let mut entries = Vec::new();
        for o in api.list(&kube::api::ListParams::default()).await?.items {
            let name = o.metadata.name.clone().unwrap_or_default();
            let text = o
                .data
                .pointer("/spec/entry")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Error::Manifest(format!("ComputeLedgerEntry {name} has no spec.entry"))
                })?;
            let entry: Value = serde_json::from_str(text).map_err(|e| {
                Error::Manifest(format!(
                    "ComputeLedgerEntry {name}: spec.entry is not JSON: {e}"
                ))
            })?;
            entries.push(entry);
        }
        entries.sort_by_key(|e| e["seq"].as_u64().unwrap_or(u64::MAX));
        Ok(entries)
    }

    /// Waits until a condition of the given type has the given status.
    pub async fn wait_for_condition(
        &self,
        gvk: &GroupVersionKind,
        namespace: Option<&str>,
        name: &str,
        type_: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<DynamicObject> {
        let api = self.dynamic_api(gvk, namespace).await?;
        wait_for(&api, name, timeout, |o| {
            has_condition_json(&o.data, type_, status)
        })
        .await
    }
}

/// Whether `obj.status.conditions` holds `type_` with `status`.
pub fn has_condition_json(obj: &Value, type_: &str, status: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(type_)
                    && c.get("status").and_then(Value::as_str) == Some(status)
            })
        })
}

/// Polls `name` until `pred` holds (or times out). A missing object counts as not yet.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&K) -> bool,
) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(o) = api.get_opt(name).await?
            && pred(&o)
        {
            return Ok(o);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{name} to satisfy the condition"),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `name` no longer exists.
pub async fn wait_for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{name} to be deleted"),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Parses a multi-document YAML text into JSON objects (empty documents skipped).
pub fn parse_yaml_documents(yaml: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| Error::Manifest(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

fn gvk_of(doc: &Value) -> Result<GroupVersionKind> {
    let av = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Manifest("a document has no apiVersion".into()))?;
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Manifest("a document has no kind".into()))?;
    let (group, version) = av.split_once('/').unwrap_or(("", av));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// A namespace deleted (with everything in it) when dropped.
pub struct TempNamespace {
    pub name: String,
    kubeconfig: PathBuf,
    keep: bool,
}

impl TempNamespace {
    /// Keeps the namespace after the test (for debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        // A client is bound to the runtime that made it, so deletion runs on
        // its own thread and runtime; failures only leave a namespace behind.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(client) = client_from_kubeconfig(&kubeconfig).await {
                    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        api.delete(&name, &DeleteParams::background()),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

/// A child process (the operator binary, …).
pub struct Process {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `program args…` with `KUBECONFIG` pointing at `kubeconfig`;
    /// stdout and stderr lines are collected (and echoed to stderr, prefixed).
    pub fn start(
        program: &Path,
        args: &[&str],
        kubeconfig: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tag = program
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(out) = child.stdout.take() {
            spawn_reader(out, tx.clone(), log.clone(), tag.clone());
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, tx, log.clone(), tag);
        }
        Ok(Self { child, lines, log })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for an output line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(needle) => return Ok(l),
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let out = self.output();
                    let tail = out[out.len().saturating_sub(20)..].join("\n");
                    return Err(Error::Exited {
                        needle: needle.to_string(),
                        tail,
                    });
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!("a line containing {needle:?}"),
                        timeout,
                    });
                }
            }
        }
    }

    /// All output so far.
    pub fn output(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `grace` for exit, then kills.
    pub async fn terminate(&mut self, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(s) => Ok(Some(s?)),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }

    /// Kills the process (SIGKILL), as a crash would.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

fn spawn_reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tag: String,
) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("[{tag}] {l}");
            if let Ok(mut g) = log.lock() {
                g.push(l.clone());
            }
            let _ = tx.send(l);
        }
    });
}

/// Path of a binary built in this workspace's target directory, next to the
/// running test executable (`CARGO_BIN_EXE_*` only covers the test's own
/// package). Build it first, e.g. `cargo build -p komptroller`.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Manifest(format!(
            "binary {} not found; build it first (cargo build --bin {name}) with the same CARGO_TARGET_DIR",
            path.display()
        )))
    }
}
