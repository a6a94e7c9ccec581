//! The main loop of `komptroller run`: HTTP endpoints, CRD wait, webhook,
//! leader election, and the leader's term (controller and reports).
//!
//! Every replica serves the webhook, `/metrics` and `/reports`; only the
//! holder of the Lease runs the controller and writes. When the lease is
//! lost the term is dropped at once (its tasks are aborted); a standby
//! acquires the lease once it expires (`--lease-duration`) and rebuilds the
//! books from the cluster. SIGTERM (or Ctrl-C) stops serving, ends the term
//! and releases the lease so a standby takes over without waiting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::controller::{self, TermConfig};
use crate::error::{Error, Result};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;

/// Where the metrics port's certificate comes from.
#[derive(Debug, Clone)]
pub struct MetricsTls {
    /// (certificate, key) PEM files; `None`: self-signed for `names`.
    pub files: Option<(PathBuf, PathBuf)>,
    pub names: Vec<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub metrics_addr: SocketAddr,
    /// TLS and TokenReview/SubjectAccessReview on the metrics port.
    pub metrics_secure: Option<MetricsTls>,
    pub namespace: Option<String>,
    pub lease_name: String,
    pub lease_duration_secs: u64,
    pub lease_grace_secs: u64,
    pub identity: String,
    pub report_interval: Duration,
    pub key_secret: String,
    pub concurrency: u16,
    /// Run the Kueue AdmissionCheck controller.
    pub kueue: bool,
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Waits until every komptroller CRD is Established.
pub async fn wait_for_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let mut logged = false;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(crd = %name, error = %e, "waiting for CRD");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(_) => {
                    if !logged {
                        tracing::warn!(crd = %name, "CRD not established yet; install crds/ (kubectl apply -f crds/) — waiting");
                        logged = true;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Starts the admission webhooks given a client and a shutdown
/// future; every replica serves them. `None`: no webhook compiled in.
pub type WebhookStarter = Box<
    dyn FnOnce(
            Client,
            futures::future::BoxFuture<'static, ()>,
        ) -> futures::future::BoxFuture<'static, std::result::Result<(), String>>
        + Send,
>;

pub async fn run(config: RunConfig, webhook: Option<WebhookStarter>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let client = Client::try_default().await.map_err(|e| {
        Error::Config(format!(
            "no cluster: set KUBECONFIG (as kubectl does) or run in a pod: {e}"
        ))
    })?;
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());

    let (tls, auth) = match &config.metrics_secure {
        Some(m) => {
            let files = m.files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            (
                Some(http::tls_config(files, &m.names)?),
                Some(Arc::new(crate::http_auth::Authorizer::new(client.clone()))),
            )
        }
        None => (None, None),
    };
    let secure = tls.is_some();
    let (addr, http_task) = http::serve(
        config.metrics_addr,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            client: Some(client.clone()),
            auth,
        },
        tls,
        stopped(),
    )
    .await?;
    if secure {
        tracing::info!(addr = %addr, "serving /metrics, /healthz, /readyz, /reports over HTTPS; /metrics and /reports need a bearer token RBAC allows (TokenReview, SubjectAccessReview)");
    } else {
        tracing::info!(addr = %addr, "serving /metrics, /healthz, /readyz, /reports over plain HTTP (no --metrics-secure)");
    }

    tokio::select! {
        r = wait_for_crds(&client) => r?,
        _ = stopped() => return Ok(()),
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(namespace = %namespace, identity = %config.identity, "CRDs established; komptroller ready");

    // Every replica serves the webhook (it serves nothing without --webhook-addr).
    let mut webhook_task = match webhook {
        Some(start) => tokio::spawn(start(client.clone(), Box::pin(stopped()))),
        None => {
            tokio::spawn(async { std::future::pending::<std::result::Result<(), String>>().await })
        }
    };

    // Leader election.
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration_secs)
        .with_grace(config.lease_grace_secs)
        .with_field_manager(format!("komptroller-lease-{}", config.identity))
        .build()
        .await
        .map_err(|e| {
            Error::Config(format!(
                "--lease-name {}/{}: {e}",
                namespace, config.lease_name
            ))
        })?;
    let (mut leading, lease_task) = manager.watch().await;

    let mut term: Option<AbortOnDropHandle<Result<()>>> = None;
    let stop = stopped();
    tokio::pin!(stop);
    let result: Result<()> = loop {
        let term_done = async {
            match term.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break Ok(()),
            r = &mut webhook_task => {
                break match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Error::Config(e)),
                    Err(e) => Err(Error::Config(format!("webhook task: {e}"))),
                };
            }
            changed = leading.changed() => {
                if changed.is_err() {
                    break Err(Error::Config("lease manager stopped".into()));
                }
                let is_leader = *leading.borrow_and_update();
                metrics.is_leader.set(i64::from(is_leader));
                if is_leader && term.is_none() {
                    tracing::info!(identity = %config.identity, "acquired the lease: leading");
                    term = Some(AbortOnDropHandle::new(tokio::spawn(leader_term(client.clone(), metrics.clone(), config.clone(), namespace.clone()))));
                } else if !is_leader && term.is_some() {
                    tracing::warn!(identity = %config.identity, "lost the lease: stopping writes");
                    term = None;
                    metrics.reset_books();
                }
            }
            r = term_done => {
                term = None;
                match r {
                    Ok(Err(e @ Error::LedgerConflict { .. })) => break Err(e),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "leader term failed; rebuilding in 2s");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        if *leading.borrow() {
                            term = Some(AbortOnDropHandle::new(tokio::spawn(leader_term(client.clone(), metrics.clone(), config.clone(), namespace.clone()))));
                        }
                    }
                    Ok(Ok(())) => {}
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(error = %e, "leader term panicked"),
                }
            }
        }
    };
    // Stop writing before releasing the lease.
    drop(term);
    metrics.is_leader.set(0);
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!("lease released"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the lease failed"),
        _ => tracing::warn!("releasing the lease timed out"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("komptroller stopped");
    result
}

/// One leader term: the controller and the report loop.
async fn leader_term(
    client: Client,
    metrics: Arc<Metrics>,
    config: RunConfig,
    namespace: String,
) -> Result<()> {
    let slot = Arc::new(tokio::sync::RwLock::new(None));
    let key = crate::reports::signing_key(&client, &namespace, &config.key_secret).await?;
    let reports = {
        let slot = slot.clone();
        let client = client.clone();
        async move {
            // The report loop starts once the controller has rebuilt the books.
            let ctx = loop {
                if let Some(ctx) = slot.read().await.clone() {
                    break ctx;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            crate::reports::report_loop(client, ctx, key, config.report_interval).await
        }
    };
    let kueue = {
        let slot = slot.clone();
        async move {
            if !config.kueue {
                return std::future::pending().await;
            }
            let ctx = loop {
                if let Some(ctx) = slot.read().await.clone() {
                    break ctx;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            crate::kueue::run(ctx).await;
            Err(Error::Config(
                "the Kueue AdmissionCheck controller stopped".into(),
            ))
        }
    };
    let term = controller::run_term(
        client.clone(),
        metrics,
        TermConfig {
            reporter: config.identity.clone(),
            concurrency: config.concurrency,
        },
        slot,
    );
    tokio::select! {
        r = term => r,
        r = reports => r,
        r = kueue => r,
    }
}
