//! komptroller's admission webhooks: instant answers at `kubectl apply`,
//! authenticated approvers, separation of duties.
//!
//! # Interface (for `komptroller run`)
//!
//! ```ignore
//! #[derive(clap::Args)]
//! struct RunArgs {
//!     #[command(flatten)]
//!     webhook: komptroller::webhook::WebhookArgs,
//!     // …
//! }
//! // every replica, no leadership needed:
//! komptroller::webhook::serve(args.webhook, client.clone(), shutdown_signal).await?;
//! ```
//!
//! [`serve`] returns when `shutdown` completes (after draining open
//! requests), or early with an error it cannot recover from (bad flags,
//! the port taken, no certificate). With no `--webhook-addr` it serves
//! nothing and just waits for `shutdown`. Writes it makes — the certificate
//! Secret (create / replace with resourceVersion) and the
//! Validating/MutatingWebhookConfigurations (server-side apply, field manager
//! [`certs::FIELD_MANAGER`]) — are idempotent and safe when replicas race.
//! It logs `webhook ready` (tracing, info) once it accepts requests.
//!
//! RBAC it needs: `list`/`watch` computepolicies and namespaces; `get`
//! trainingjobs; `get`/`create`/`update` secrets in `--webhook-namespace`
//! (self-managed mode); `get`/`create`/`patch` mutating- and
//! validatingwebhookconfigurations (when it manages them).
//!
//! # Layout
//! - [`validate`] and [`mutate`]: pure decisions (no I/O, time passed in).
//! - [`review`]: AdmissionReview bytes in, AdmissionReview bytes out.
//! - [`server`]: axum over rustls, hot-reloaded certificate, cluster caches.
//! - [`certs`]: self-managed CA and serving certificate, cert-manager and
//!   provided modes, the webhook configurations.
//! - [`config`]: the flags.

pub mod certs;
pub mod config;
pub mod mutate;
pub mod review;
pub mod server;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use config::{CertMode, FailurePolicy, WebhookArgs};

/// Why the webhook could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A flag is wrong; the message names it.
    #[error("webhook configuration: {0}")]
    Config(String),
    #[error("webhook TLS: {0}")]
    Tls(String),
    #[error("webhook Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("webhook I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl WebhookError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::Config(_) => "config",
            WebhookError::Tls(_) => "tls",
            WebhookError::Kube(_) => "kube",
            WebhookError::Io(_) => "io",
        }
    }
}

/// Serves the admission webhooks until `shutdown` completes.
pub async fn serve(
    args: WebhookArgs,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    let Some(addr) = args.webhook_addr else {
        tracing::info!("no --webhook-addr: admission webhooks not served");
        shutdown.await;
        return Ok(());
    };
    args.check()?;
    // Only ring is compiled in; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let certs = certs::CertSource::new(args.clone(), client.clone());
    let material = certs.load().await?;
    let resolver = Arc::new(certs::ReloadingResolver::new(certs::certified_key(
        &material.cert_pem,
        &material.key_pem,
    )?));
    let view = Arc::new(server::KubeView::start(client.clone(), Duration::from_secs(60)).await?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WebhookError::Config(format!("--webhook-addr {addr}: {e}")))?;
    let local = listener.local_addr()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_server = stop_rx.clone();
    let server = tokio::spawn(server::run(listener, resolver.clone(), view, async move {
        let _ = stop_server.wait_for(|s| *s).await;
    }));

    // Configurations after the listener is up, so the API server can reach what it is told about.
    let mut served = material;
    if args.manage_webhook_configurations {
        certs::apply_configurations(&client, &args, served.ca_bundle.as_deref()).await?;
    }
    tracing::info!(addr = %local, mode = ?args.cert_mode, "webhook ready");

    let interval = Duration::from_millis(
        u64::try_from(args.webhook_cert_check_interval.as_millis())
            .unwrap_or(60_000)
            .max(100),
    );
    let mut stop_maintenance = stop_rx;
    let maintenance = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop_maintenance.wait_for(|s| *s) => return,
            }
            match certs.refresh(&resolver, &served).await {
                Ok(m) => served = m,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate or configuration check failed; retrying")
                }
            }
        }
    };
    tokio::pin!(maintenance);
    tokio::pin!(shutdown);
    let mut server = server;
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = &mut server => match r {
            Ok(r) => r,
            Err(e) => Err(WebhookError::Io(std::io::Error::other(e.to_string()))),
        },
        _ = &mut maintenance => Ok(()),
    };
    let _ = stop_tx.send(true);
    if !server.is_finished() {
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => return Err(WebhookError::Io(std::io::Error::other(e.to_string()))),
            Err(_) => tracing::warn!("webhook requests still open after 10s; stopping anyway"),
        }
    }
    result
}
