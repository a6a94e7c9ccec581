//! The operator's HTTP endpoints on `--metrics-addr`: `/metrics`
//! (Prometheus text format), `/healthz` (the process is alive), `/readyz`
//! (CRDs established, serving), `/reports` (the signed ComputeReports, newest
//! first) and `/reports/{name}` (one report exactly as signed, for
//! `komptroller verify` and `komptroller audit`). Every replica serves them.
//! With `--metrics-secure` they are served over TLS and `/metrics` and
//! `/reports` only to callers the API server authenticates and authorizes
//! ([`crate::http_auth`]); without it, plain HTTP for a port a
//! NetworkPolicy already guards.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::crd::ComputeReport;
use crate::http_auth::Authorizer;
use crate::metrics::Metrics;
use crate::webhook::server::TlsListener;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub client: Option<Client>,
    /// Set with `--metrics-secure`: who may read `/metrics` and `/reports`.
    pub auth: Option<Arc<Authorizer>>,
}

pub fn router(state: HttpState) -> Router {
    let confidential = Router::new()
        .route("/metrics", get(metrics))
        .route("/reports", get(reports))
        .route("/reports/{name}", get(report));
    let confidential = match &state.auth {
        Some(auth) => confidential.route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::http_auth::guard,
        )),
        None => confidential,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(confidential)
        .with_state(state)
}

/// Binds `addr` (the error names the flag) and serves until `shutdown`,
/// over TLS when `tls` is given.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), crate::error::Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::error::Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| crate::error::Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let app = router(state);
    let handle = match tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }),
        Some(config) => {
            let listener = TlsListener::new(listener, config)
                .map_err(|e| crate::error::Error::Config(format!("--metrics-addr {addr}: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            })
        }
    };
    Ok((local, handle))
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for CRDs\n").into_response()
    }
}

async fn list_reports(client: &Client) -> Result<Vec<ComputeReport>, kube::Error> {
    let api: Api<ComputeReport> = Api::all(client.clone());
    let mut items = api.list(&ListParams::default()).await?.items;
    items.sort_by_key(|r| std::cmp::Reverse(r.spec.to_sequence));
    Ok(items)
}

async fn reports(State(s): State<HttpState>) -> Response {
    let Some(client) = s.client else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no cluster\n").into_response();
    };
    match list_reports(&client).await {
        Ok(items) => {
            let list: Vec<serde_json::Value> = items
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name_any(),
                        "fromSequence": r.spec.from_sequence,
                        "toSequence": r.spec.to_sequence,
                        "periodStart": r.spec.period_start,
                        "periodEnd": r.spec.period_end,
                        "headHash": r.spec.head_hash,
                        "merkleRoot": r.spec.merkle_root,
                        "keyId": r.spec.key_id,
                        "url": format!("/reports/{}", r.name_any()),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({"reports": list})).into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("listing ComputeReports: {e}\n"),
        )
            .into_response(),
    }
}

async fn report(State(s): State<HttpState>, Path(name): Path<String>) -> Response {
    let Some(client) = s.client else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no cluster\n").into_response();
    };
    let api: Api<ComputeReport> = Api::all(client);
    match api.get_opt(&name).await {
        Ok(Some(r)) => {
            ([(header::CONTENT_TYPE, "application/json")], r.spec.report).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, format!("no ComputeReport {name}\n")).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("reading ComputeReport {name}: {e}\n"),
        )
            .into_response(),
    }
}

/// The TLS configuration of the metrics port: the PEM certificate and key
/// files when given (e.g. from cert-manager), else a self-signed pair for
/// `names` generated at start (Prometheus then skips verification, as with
/// controller-runtime's default; the bearer token is what is checked).
pub fn tls_config(
    files: Option<(&std::path::Path, &std::path::Path)>,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, crate::error::Error> {
    use crate::webhook::certs;
    let config_err = |m: String| crate::error::Error::Config(m);
    let key = match files {
        Some((cert, key)) => {
            let read = |p: &std::path::Path, flag: &str| {
                std::fs::read_to_string(p)
                    .map_err(|e| config_err(format!("{flag} {}: {e}", p.display())))
            };
            let cert_pem = read(cert, "--metrics-cert-file")?;
            let key_pem = read(key, "--metrics-key-file")?;
            certs::certified_key(&cert_pem, &key_pem).map_err(|e| {
                config_err(format!(
                    "--metrics-cert-file {} / --metrics-key-file {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        None => {
            let now = jiff::Timestamp::now();
            let year = 365 * 86_400;
            let (ca, ca_key) = certs::generate_ca(now, year)
                .map_err(|e| config_err(format!("metrics TLS: {e}")))?;
            let (cert, key) = certs::issue_serving(&ca, &ca_key, names, now, year)
                .map_err(|e| config_err(format!("metrics TLS: {e}")))?;
            certs::certified_key(&cert, &key)
                .map_err(|e| config_err(format!("metrics TLS: {e}")))?
        }
    };
    let resolver = Arc::new(certs::ReloadingResolver::new(key));
    crate::webhook::server::tls_config(resolver)
        .map_err(|e| config_err(format!("metrics TLS: {e}")))
}
