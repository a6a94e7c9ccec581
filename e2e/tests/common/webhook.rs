//! A test admission webhook server over TLS with its own CA.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

pub type Decide = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

pub struct WebhookServer {
    pub addr: SocketAddr,
    pub ca_bundle: String,
    pub reviews: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `decide(request) -> response fields` (uid is filled in); `delay` before answering.
pub async fn start(decide: Decide, delay: Duration) -> WebhookServer {
    start_with_names(decide, delay, &["127.0.0.1", "localhost"]).await
}

/// As `start`, with a certificate for these names (e.g. `svc.ns.svc`).
pub async fn start_with_names(decide: Decide, delay: Duration, names: &[&str]) -> WebhookServer {
    let ca = e2e::tls::Ca::new("webhook-ca").unwrap();
    let leaf = ca.issue_server(names).unwrap();
    let tls = leaf.server_config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reviews = Arc::new(Mutex::new(Vec::new()));
    let rv = reviews.clone();
    let task = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let decide = decide.clone();
            let rv = rv.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let decide = decide.clone();
                        let rv = rv.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: Value = serde_json::from_slice(&body).unwrap();
                            rv.lock().unwrap().push(review.clone());
                            tokio::time::sleep(delay).await;
                            let mut resp = decide(&review["request"]);
                            resp["uid"] = review["request"]["uid"].clone();
                            let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp});
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                serde_json::to_vec(&out).unwrap(),
                            ))))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    WebhookServer {
        addr,
        ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca.cert_pem()),
        reviews,
        task,
    }
}

pub fn json_patch_b64(ops: Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&ops).unwrap())
}
