//! kube-standin: an in-process stand-in for kube-apiserver.
//!
//! It serves the Kubernetes REST API over HTTPS on a loopback port with the
//! semantics the operator, kube-rs and kubectl depend on (resourceVersion,
//! watch, CRDs and their schemas, server-side apply, finalizers, GC, RBAC,
//! admission webhooks), simulates Job lifecycles since no pods run, and can
//! inject faults at runtime. `e2e/README.md` lists what it does not emulate.

// `ApiError` carries a full `Status` (message, causes, details) and is only
// built on the error path of a request; boxing it would buy nothing here.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod api;
pub mod auth;
pub mod error;
pub mod jobs;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod schema;
pub mod select;
pub mod store;
pub mod table;
pub mod typed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::tls::{Ca, TlsError};
use auth::{Tokens, UserInfo};
use store::Store;

/// How requests are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Authorization {
    /// Every authenticated request is allowed.
    #[default]
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
    /// Decided by the Role/ClusterRole/(Cluster)RoleBinding objects held.
    #[value(name = "RBAC")]
    Rbac,
}

/// Options of a stand-in.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to write the kubeconfig; a temporary file when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// Extra static tokens (the cluster-admin token is always added).
    pub tokens: Tokens,
    pub authorization: Authorization,
    /// Simulated time runs this many times faster for the Job simulator.
    pub time_scale: f64,
    /// Watch events kept for resuming watches; older ones are compacted (410).
    pub history_limit: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Where admission webhooks referenced by `service` are reached:
    /// `(namespace, name)` → address. Unlisted services go to `127.0.0.1:<port>`.
    pub webhook_services: HashMap<(String, String), SocketAddr>,
    /// Fixed port (0: any free port).
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            tokens: Tokens::default(),
            authorization: Authorization::AlwaysAllow,
            time_scale: 1.0,
            history_limit: 200_000,
            bookmark_interval: Duration::from_secs(5),
            webhook_services: HashMap::new(),
            port: 0,
        }
    }
}

/// Faults injected into the stand-in, switchable while it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Share (0..=1) of writes failing with 500 InternalError.
    pub write_error_500: f64,
    /// Share (0..=1) of writes failing with 409 Conflict.
    pub write_error_409: f64,
    /// Share (0..=1) of all resource requests answered 429 TooManyRequests
    /// (API priority and fairness), with `Retry-After: 1`.
    pub throttle_429: f64,
    /// Watches are closed by the server every this many seconds.
    pub watch_close_every_secs: Option<f64>,
    /// Latency added to every request, in milliseconds.
    pub latency_ms: u64,
    /// While true, requests hang and watches deliver nothing.
    pub paused: bool,
}

/// Shared server state.
pub struct Server {
    pub store: Mutex<Store>,
    pub tokens: Tokens,
    pub authorization: Authorization,
    pub time_scale: f64,
    pub bookmark_interval: Duration,
    pub webhook_services: HashMap<(String, String), SocketAddr>,
    pub faults: tokio::sync::watch::Sender<Faults>,
    pub started: Instant,
    pub gc_queue: Mutex<Vec<String>>,
    pub gc_notify: tokio::sync::Notify,
    pub base_url: String,
    /// Watch requests served (to observe client reconnects).
    pub watch_requests: std::sync::atomic::AtomicU64,
    /// Watch requests answered with 410 Gone.
    pub watch_gone: std::sync::atomic::AtomicU64,
    /// Bumped to close every open watch.
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
    /// Authorization decisions on resource requests, by user, verb, group,
    /// resource, subresource and namespace.
    pub audit: auth::AuditLog,
}

impl Server {
    /// Locks the store; a poisoned lock (a panic while holding it) is recovered
    /// because every mutation leaves the store consistent before it can panic.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }
}

/// Errors starting a stand-in.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the stand-in thread failed to start: {0}")]
    Thread(String),
}

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    pub base_url: String,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// Bearer token of the cluster-admin user (group `system:masters`).
    pub admin_token: String,
    pub ca_pem: String,
    server: Arc<Server>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl StandIn {
    /// Starts a stand-in on its own runtime thread and waits until it serves.
    pub fn start(opts: Options) -> Result<Self, StartError> {
        let ca = Ca::new("kube-standin-ca")?;
        let leaf = ca.issue_server(&["127.0.0.1", "localhost", "kubernetes.default.svc"])?;
        let tls = leaf.server_config()?;
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", opts.port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let base_url = format!("https://{addr}");
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let mut tokens = opts.tokens.clone();
        tokens.0.insert(
            admin_token.clone(),
            UserInfo {
                username: "kube-standin-admin".into(),
                uid: "kube-standin-admin".into(),
                groups: vec!["system:masters".into()],
            },
        );
        let (tempdir, kubeconfig) = match &opts.kubeconfig {
            Some(p) => (None, p.clone()),
            None => {
                let d = tempfile::tempdir()?;
                let p = d.path().join("kubeconfig");
                (Some(d), p)
            }
        };
        write_kubeconfig(&kubeconfig, &base_url, ca.cert_pem(), &admin_token)?;
        let (faults, _) = tokio::sync::watch::channel(Faults::default());
        let server = Arc::new(Server {
            store: Mutex::new(Store::new(opts.history_limit.max(16))),
            tokens,
            authorization: opts.authorization,
            time_scale: if opts.time_scale > 0.0 {
                opts.time_scale
            } else {
                1.0
            },
            bookmark_interval: opts.bookmark_interval,
            webhook_services: opts.webhook_services.clone(),
            faults,
            started: Instant::now(),
            gc_queue: Mutex::new(Vec::new()),
            gc_notify: tokio::sync::Notify::new(),
            base_url: base_url.clone(),
            watch_requests: std::sync::atomic::AtomicU64::new(0),
            watch_gone: std::sync::atomic::AtomicU64::new(0),
            watch_epoch: tokio::sync::watch::channel(0).0,
            audit: auth::AuditLog::default(),
        });
        api::bootstrap(&server);
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name("kube-standin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    tokio::spawn(jobs::run(srv.clone()));
                    tokio::spawn(api::gc_loop(srv.clone()));
                    tokio::spawn(api::namespace_loop(srv.clone()));
                    let _ = ready_tx.send(Ok(()));
                    api::serve(srv, listener, tls, shutdown_rx).await;
                });
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Thread(e)),
            Err(e) => return Err(StartError::Thread(e.to_string())),
        }
        Ok(Self {
            base_url,
            addr,
            kubeconfig,
            admin_token,
            ca_pem: ca.cert_pem().to_string(),
            server,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _tempdir: tempdir,
        })
    }

    /// Writes a kubeconfig for this stand-in that authenticates with `token`
    /// (a token from the `tokens` option), e.g. to run a binary as a service account.
    pub fn write_kubeconfig_for_token(&self, path: &Path, token: &str) -> std::io::Result<()> {
        write_kubeconfig(path, &self.base_url, &self.ca_pem, token)
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.server.faults.send_replace(faults);
    }

    pub fn faults(&self) -> Faults {
        self.server.faults()
    }

    /// Drops the watch history: any watch resuming from an earlier
    /// resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.server.lock().compact();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.server.lock().rv
    }

    /// Closes every open watch now (clients reconnect from their last resourceVersion).
    pub fn close_watches(&self) {
        self.server.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Watch requests served so far, and how many got 410 Gone.
    pub fn watch_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.server.watch_requests.load(Relaxed),
            self.server.watch_gone.load(Relaxed),
        )
    }

    /// The request audit log: every (user, verb, API group, resource,
    /// subresource, namespace) asked for since the start (or the last
    /// [`clear_audit`](Self::clear_audit)), with how often it was allowed
    /// and denied.
    pub fn audit(&self) -> Vec<auth::AuditRecord> {
        self.server.audit.records()
    }

    pub fn clear_audit(&self) {
        self.server.audit.clear();
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.server.lock().count()
    }

    /// Shared state, for in-process inspection by tests.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Writes a kubeconfig whose current context is the stand-in's cluster admin.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> std::io::Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-standin", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "kube-standin-admin", "user": {"token": token}}],
        "contexts": [{"name": "kube-standin", "context": {"cluster": "kube-standin", "user": "kube-standin-admin", "namespace": "default"}}],
        "current-context": "kube-standin",
        "preferences": {},
    });
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    // JSON is YAML; kubectl and kube-rs read it either way.
    let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}
