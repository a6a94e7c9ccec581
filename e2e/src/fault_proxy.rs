//! A fault-injecting reverse proxy in front of a real kube-apiserver.
//!
//! A real apiserver does not fail on request, so scenarios that need 500s, 409s, 429s, latency,
//! dropped watches or a stalled apiserver point their client at a
//! [`FaultProxy`] instead, which forwards everything else unchanged.
//!
//! - It listens on `127.0.0.1:<free port>` with TLS (its own throwaway CA,
//!   [`FaultProxy::ca_pem`], a certificate for `127.0.0.1` and `localhost`),
//!   offering only HTTP/1.1.
//! - Each request is forwarded unchanged (method, path and query, headers
//!   including `Authorization`, body) to the upstream over TLS trusting only
//!   the upstream's CA, and the response is streamed back frame by frame
//!   (watches are long-lived chunked streams and are never buffered). Only
//!   hop-by-hop headers (`Connection` and the ones it names, `Keep-Alive`,
//!   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Connection`)
//!   are dropped, as HTTP requires of a proxy.
//! - **Bearer tokens only**: TLS ends at the proxy, so a client certificate
//!   never reaches the apiserver. [`FaultProxy::write_kubeconfig`] writes a
//!   kubeconfig with a token (e.g. a ServiceAccount's from `kubectl create
//!   token`). Upgrades (`exec`, `attach`, `port-forward`) are not proxied.
//! - Each downstream connection gets its own upstream connection (made on
//!   its first forwarded request, replaced when it breaks or a watch on it
//!   was cut); requests on a connection are sequential, as HTTP/1.1 is.
//! - It runs in tasks on the runtime that called [`FaultProxy::start`] and
//!   stops (listener and every connection) when the [`FaultProxy`] is dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::sync::watch;

use crate::tls::{Ca, TlsError, client_config_for_ca};

/// How long a TCP connect or TLS handshake (either side) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Faults the proxy injects, switchable while it runs ([`FaultProxy::set_faults`]).
///
/// The order per request: `latency_ms`, then `paused`, then `throttle_429`,
/// then (writes only) `write_error_500` and `write_error_409`; what is not
/// answered by a fault is forwarded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Probability (0..=1) that a write (POST, PUT, PATCH, DELETE) is
    /// answered 500 InternalError (a `Status`) without reaching the apiserver.
    pub write_error_500: f64,
    /// Probability (0..=1) that a write is answered 409 Conflict (a `Status`)
    /// without reaching the apiserver.
    pub write_error_409: f64,
    /// Probability (0..=1) that any request is answered 429 TooManyRequests
    /// with `Retry-After: 1`, as API priority and fairness does.
    pub throttle_429: f64,
    /// Watch responses (query `watch=true` or `watch=1`) end cleanly this many
    /// seconds after they started (re-read while a watch runs, so setting it
    /// also cuts watches that are already open).
    pub watch_close_every_secs: Option<f64>,
    /// Delay before every request is handled, in milliseconds.
    pub latency_ms: u64,
    /// While true, requests wait (they do not fail) and open responses
    /// (watches) deliver nothing, until it is false again.
    pub paused: bool,
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests sent to the upstream.
    pub forwarded: u64,
    pub injected_500: u64,
    pub injected_409: u64,
    pub injected_429: u64,
    /// Watch responses ended by `watch_close_every_secs`.
    pub watches_closed: u64,
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    #[error("bad upstream URL {url:?}: {reason}")]
    BadUpstream { url: String, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("FaultProxy::start must be called within a tokio runtime")]
    NoRuntime,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    injected_500: AtomicU64,
    injected_409: AtomicU64,
    injected_429: AtomicU64,
    watches_closed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Upstream {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl Upstream {
    fn parse(url: &str, ca_pem: &str) -> Result<Self, FaultProxyError> {
        let bad = |reason: &str| FaultProxyError::BadUpstream {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a path prefix is not supported"));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| bad(&format!("server name: {e}")))?;
        let mut tls = (*client_config_for_ca(ca_pem.as_bytes())?).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            host,
            port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }
}

struct Shared {
    faults: watch::Sender<Faults>,
    counters: Counters,
    upstream: Upstream,
    /// Changes (errors) when the [`FaultProxy`] is dropped.
    shutdown: watch::Receiver<()>,
}

/// A downstream connection's idle upstream connection.
type Slot = Arc<Mutex<Option<SendRequest<Incoming>>>>;

/// A fault-injecting HTTPS reverse proxy in front of a kube-apiserver; see
/// the [module documentation](self). Stops when dropped.
pub struct FaultProxy {
    url: String,
    ca_pem: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("url", &self.url)
            .field("faults", &*self.shared.faults.borrow())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts the proxy on `127.0.0.1:<free port>` in front of `upstream`
    /// (e.g. `https://127.0.0.1:6443`), whose CA is `upstream_ca_pem`. Its
    /// tasks run on the current tokio runtime.
    pub async fn start(
        upstream: &str,
        upstream_ca_pem: &str,
    ) -> Result<FaultProxy, FaultProxyError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| FaultProxyError::NoRuntime)?;
        let upstream = Upstream::parse(upstream, upstream_ca_pem)?;
        let ca = Ca::new("komptroller e2e fault proxy CA")?;
        let leaf = ca.issue_server(&["127.0.0.1", "localhost"])?;
        let mut server = (*leaf.server_config()?).clone();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            faults: watch::Sender::new(Faults::default()),
            counters: Counters::default(),
            upstream,
            shutdown: shutdown_rx,
        });
        let accept = runtime.spawn(accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            shared.clone(),
        ));
        Ok(FaultProxy {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca.cert_pem().to_string(),
            shared,
            accept,
            _shutdown: shutdown_tx,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The proxy's own CA certificate (PEM), which its serving certificate
    /// (for `127.0.0.1` and `localhost`) is signed by.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Replaces the faults; requests waiting while paused go on when
    /// `paused` becomes false.
    pub fn set_faults(&self, f: Faults) {
        self.shared.faults.send_replace(f);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            forwarded: get(&c.forwarded),
            injected_500: get(&c.injected_500),
            injected_409: get(&c.injected_409),
            injected_429: get(&c.injected_429),
            watches_closed: get(&c.watches_closed),
        }
    }

    /// Writes a kubeconfig to `path` pointing at the proxy, trusting its CA
    /// (`certificate-authority-data`) and authenticating with the bearer
    /// `token` (client certificates cannot pass through the proxy).
    pub fn write_kubeconfig(&self, path: &std::path::Path, token: &str) -> std::io::Result<()> {
        // JSON is YAML; serde_json quotes the token whatever it holds.
        let kc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": {
                "server": self.url,
                "certificate-authority-data":
                    base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes()),
            }}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "token@fault-proxy",
                "context": {"cluster": "fault-proxy", "user": "token"}}],
            "current-context": "token@fault-proxy",
        });
        let text = serde_json::to_vec_pretty(&kc).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept loop stops here; dropping `_shutdown` right after
        // ends every connection task.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // E.g. out of file descriptors: do not spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.changed() => {}
                () = serve_downstream(tcp, acceptor, shared) => {}
            }
        });
    }
}

async fn serve_downstream(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let slot: Slot = Arc::default();
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(handle(shared, slot, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None::<Duration>)
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

/// Whether a fault of probability `p` happens now.
fn hit(p: f64) -> bool {
    p > 0.0 && fastrand::f64() < p
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "watch" && matches!(&*v, "true" | "1"))
}

async fn handle(shared: Arc<Shared>, slot: Slot, req: Request<Incoming>) -> Response<ProxyBody> {
    let latency = shared.faults.borrow().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    {
        let mut rx = shared.faults.subscribe();
        // Errs only when the sender is gone, and `shared` holds it.
        let _ = rx.wait_for(|f| !f.paused).await;
    }
    let faults = shared.faults.borrow().clone();
    let c = &shared.counters;
    if hit(faults.throttle_429) {
        bump(&c.injected_429);
        return status_response(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests, please try again later. (injected by the e2e fault proxy)",
            Some(1),
        );
    }
    if is_write(req.method()) {
        if hit(faults.write_error_500) {
            bump(&c.injected_500);
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: injected fault (e2e fault proxy)",
                None,
            );
        }
        if hit(faults.write_error_409) {
            bump(&c.injected_409);
            let message = format!(
                "Operation cannot be fulfilled on {}: the object has been modified; please apply your changes to the latest version and try again (injected by the e2e fault proxy)",
                req.uri().path()
            );
            return status_response(StatusCode::CONFLICT, "Conflict", &message, None);
        }
    }
    forward(shared, slot, req).await
}

/// Removes hop-by-hop headers, which a proxy must not forward.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(n);
    }
}

/// The connection's idle upstream connection if it still works.
async fn reuse(slot: &Slot) -> Option<SendRequest<Incoming>> {
    let taken = slot.lock().ok().and_then(|mut s| s.take());
    let mut sender = taken?;
    if sender.is_closed() {
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, sender.ready()).await {
        Ok(Ok(())) => Some(sender),
        _ => None,
    }
}

async fn connect(shared: &Shared) -> Result<SendRequest<Incoming>, String> {
    let up = &shared.upstream;
    let addr = format!("{}:{}", up.host, up.port);
    let tcp = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio::net::TcpStream::connect((up.host.as_str(), up.port)),
    )
    .await
    .map_err(|_| format!("dial tcp {addr}: timed out"))?
    .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        up.tls.connect(up.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| format!("tls handshake with {addr}: timed out"))?
    .map_err(|e| format!("tls handshake with {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake with {addr}: {e}"))?;
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = conn => {}
        }
    });
    Ok(sender)
}

async fn forward(shared: Arc<Shared>, slot: Slot, req: Request<Incoming>) -> Response<ProxyBody> {
    let watch = is_watch(req.uri().query());
    let (mut parts, body) = req.into_parts();
    // Origin form (`/api/v1/...?...`), whatever form the client used.
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{}:{}",
            shared.upstream.host, shared.upstream.port
        ))
    {
        parts.headers.insert(header::HOST, v);
    }
    let mut sender = match reuse(&slot).await {
        Some(s) => s,
        None => match connect(&shared).await {
            Ok(s) => s,
            Err(e) => return bad_gateway(&e),
        },
    };
    bump(&shared.counters.forwarded);
    let resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(&format!("upstream: {e}")),
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let faults = shared.faults.subscribe();
    let close = watch.then(|| watch_closer(faults.clone(), tokio::time::Instant::now()));
    Response::from_parts(
        parts,
        ProxyBody(Inner::Upstream(Box::new(Streaming {
            body,
            reuse: Some((sender, slot)),
            close,
            faults,
            unpause: None,
            shared,
            done: false,
        }))),
    )
}

/// Resolves when a watch that started at `started` is to be closed
/// (`watch_close_every_secs` after it started, as the fault says now).
fn watch_closer(
    mut rx: watch::Receiver<Faults>,
    started: tokio::time::Instant,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        loop {
            let secs = rx.borrow_and_update().watch_close_every_secs;
            let at = secs
                .filter(|s| s.is_finite() && *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .and_then(|d| started.checked_add(d));
            let changed = match at {
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at) => return,
                    r = rx.changed() => r,
                },
                None => rx.changed().await,
            };
            if changed.is_err() {
                // The proxy is gone; its tasks end the connection.
                std::future::pending::<()>().await;
            }
        }
    })
}

fn status_response(
    code: StatusCode,
    reason: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response<ProxyBody> {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(s) = retry_after {
        status["details"] = json!({"retryAfterSeconds": s});
    }
    let body = serde_json::to_vec(&status).unwrap_or_default();
    let mut resp = Response::new(ProxyBody(Inner::Full(Some(Bytes::from(body)))));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

fn bad_gateway(message: &str) -> Response<ProxyBody> {
    status_response(
        StatusCode::BAD_GATEWAY,
        "InternalError",
        &format!("e2e fault proxy: {message}"),
        None,
    )
}

/// A response body: an injected `Status`, or the upstream's streamed through.
struct ProxyBody(Inner);

enum Inner {
    Full(Option<Bytes>),
    Upstream(Box<Streaming>),
}

struct Streaming {
    body: Incoming,
    /// The upstream connection, back to the slot once the body ended.
    reuse: Option<(SendRequest<Incoming>, Slot)>,
    /// For watches: resolves when the watch is to be closed.
    close: Option<BoxFuture<'static, ()>>,
    faults: watch::Receiver<Faults>,
    /// Resolves when the proxy is unpaused (set while it is paused).
    unpause: Option<BoxFuture<'static, ()>>,
    shared: Arc<Shared>,
    done: bool,
}

impl Streaming {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(close) = self.close.as_mut()
            && close.as_mut().poll(cx).is_ready()
        {
            // A clean end (the last chunk) downstream; the upstream response
            // is cut, so its connection is not reused.
            self.done = true;
            self.reuse = None;
            bump(&self.shared.counters.watches_closed);
            return Poll::Ready(None);
        }
        loop {
            if let Some(unpause) = self.unpause.as_mut() {
                match unpause.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => self.unpause = None,
                }
            }
            let paused = self.faults.borrow().paused;
            if !paused {
                break;
            }
            let mut rx = self.faults.clone();
            self.unpause = Some(Box::pin(async move {
                let _ = rx.wait_for(|f| !f.paused).await;
            }));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                if let Some((sender, slot)) = self.reuse.take()
                    && let Ok(mut s) = slot.lock()
                {
                    *s = Some(sender);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                self.reuse = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(s) => s.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(s) if s.close.is_none() && !s.done => s.body.size_hint(),
            Inner::Upstream(_) => SizeHint::default(),
        }
    }
}
