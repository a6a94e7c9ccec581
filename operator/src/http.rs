//! The operator's plain-HTTP endpoints on `--metrics-addr`: `/metrics`
//! (Prometheus text format), `/healthz` (the process is alive), `/readyz`
//! (CRDs established, serving), `/reports` (the signed ComputeReports, newest
//! first) and `/reports/{name}` (one report exactly as signed, for
//! `komptroller verify`). Every replica serves them.

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
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub client: Option<Client>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/reports", get(reports))
        .route("/reports/{name}", get(report))
        .with_state(state)
}

/// Binds `addr` (the error names the flag) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), crate::error::Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::error::Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| crate::error::Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let app = router(state);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
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
