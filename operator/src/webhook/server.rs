//! The HTTPS server: axum routes over a rustls listener whose certificate
//! comes from [`ReloadingResolver`] at every handshake (so a renewed
//! certificate is served without a restart), plus the cluster view the
//! handlers read (reflector caches of ComputePolicies and Namespaces, a
//! fresh GET for the TrainingJob an approval names).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use komptroller_engine::policy::{ComputePolicySpec, Policy};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::WebhookError;
use super::certs::ReloadingResolver;
use super::review::{self, ClusterView, Route};
use crate::crd::{ComputePolicy, TrainingJob};

/// Largest AdmissionReview accepted (two objects of up to 1.5 MiB each, and the envelope).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// A TLS server configuration serving whatever the resolver holds (HTTP/1.1).
pub fn tls_config(
    resolver: Arc<ReloadingResolver>,
) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections that finished their TLS handshake, for `axum::serve`.
/// Handshakes run on their own tasks so a slow client never holds up others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(256);
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (only on abort): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

struct AppState<V> {
    view: Arc<V>,
}

impl<V> Clone for AppState<V> {
    fn clone(&self) -> Self {
        AppState {
            view: self.view.clone(),
        }
    }
}

async fn admit<V: ClusterView + 'static>(
    route: Route,
    state: AppState<V>,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let answer = review::handle(route, &body, state.view.as_ref(), Timestamp::now()).await;
    tracing::debug!(
        path = route.path(),
        allowed = answer.allowed,
        micros = started.elapsed().as_micros() as u64,
        "admission review"
    );
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

/// The routes: one POST endpoint per webhook and `/healthz`.
pub fn router<V: ClusterView + 'static>(view: Arc<V>) -> Router {
    let state = AppState { view };
    let mut app = Router::new().route("/healthz", get(|| async { "ok" }));
    for route in Route::ALL {
        app = app.route(
            route.path(),
            post(move |State(s): State<AppState<V>>, body: Bytes| admit(route, s, body)),
        );
    }
    app.layer(DefaultBodyLimit::max(MAX_BODY)).with_state(state)
}

/// Serves `view` over TLS on `listener` until `shutdown`, then drains open requests.
pub async fn run<V: ClusterView + 'static>(
    listener: TcpListener,
    resolver: Arc<ReloadingResolver>,
    view: Arc<V>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let tls = TlsListener::new(listener, tls_config(resolver)?)?;
    axum::serve(tls, router(view))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// The cluster as the handlers see it: caches kept by watches, and the client.
pub struct KubeView {
    policies: Store<DynamicObject>,
    namespaces: Store<Namespace>,
    client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeView {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeView {
    /// Starts the watches and waits (up to `ready_within`) until both caches are filled.
    pub async fn start(client: Client, ready_within: Duration) -> Result<KubeView, WebhookError> {
        // ComputePolicies as dynamic objects: one malformed policy must not stall the cache.
        let ar = ApiResource::erase::<ComputePolicy>(&());
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let pw = reflector::store::Writer::new(ar);
        let policies_store = pw.as_reader();
        let p_task = tokio::spawn(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(pw)
                .for_each(|_| futures::future::ready(())),
        );
        let ns_api: Api<Namespace> = Api::all(client.clone());
        let (namespaces, nw) = reflector::store();
        let n_task = tokio::spawn(
            watcher(ns_api, watcher::Config::default())
                .default_backoff()
                .reflect(nw)
                .for_each(|_| futures::future::ready(())),
        );
        let view = KubeView {
            policies: policies_store,
            namespaces,
            client,
            tasks: vec![p_task, n_task],
        };
        let ready = async {
            view.policies.wait_until_ready().await.ok();
            view.namespaces.wait_until_ready().await.ok();
        };
        tokio::time::timeout(ready_within, ready).await.map_err(|_| {
            WebhookError::Config(format!(
                "the ComputePolicy and Namespace caches did not fill within {ready_within:?}; are the CRDs installed and may the webhook list/watch computepolicies and namespaces?"
            ))
        })?;
        Ok(view)
    }
}

/// A ComputePolicy object as the engine's [`Policy`], if its spec parses.
pub fn policy_of(o: &DynamicObject) -> Option<Policy> {
    let spec: ComputePolicySpec = serde_json::from_value(o.data.get("spec")?.clone()).ok()?;
    Some(Policy {
        name: o.name_any(),
        spec,
    })
}

impl ClusterView for KubeView {
    fn policies(&self) -> Vec<Policy> {
        let mut v: Vec<Policy> = self
            .policies
            .state()
            .iter()
            .filter_map(|o| policy_of(o))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    async fn training_job(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>, String> {
        let ar = ApiResource::erase::<TrainingJob>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        api.get_opt(name).await.map_err(|e| e.to_string())
    }
}
