//! The metrics port with `--metrics-secure`: served over TLS; `/metrics`
//! and `/reports` only to a bearer token the API server authenticates
//! (TokenReview) and authorizes for GET on the path (SubjectAccessReview);
//! `/healthz` open. The API server is a mock that knows two tokens: an
//! auditor's, whom RBAC allows, and an ML engineer's, whom it does not.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use komptroller::http::{HttpState, serve, tls_config};
use komptroller::http_auth::Authorizer;
use komptroller::metrics::Metrics;
use komptroller::webhook::certs::{generate_ca, issue_serving};
use kube::Client;
use kube::client::Body;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);
const AUDITOR: &str = "system:serviceaccount:audit:auditor";
const ENGINEER: &str = "system:serviceaccount:research:ml-engineer";

fn json_response(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// (method, path) of every request the mock API server answered.
type Log = Arc<Mutex<Vec<(String, String)>>>;

fn mock_api() -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock().unwrap().push((method.clone(), path.clone()));
            let resp = match (method.as_str(), path.as_str()) {
                ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
                    let user = match body["spec"]["token"].as_str() {
                        Some("auditor-token") => Some(AUDITOR),
                        Some("engineer-token") => Some(ENGINEER),
                        _ => None,
                    };
                    body["status"] = match user {
                        Some(u) => json!({"authenticated": true,
                            "user": {"username": u, "groups": ["system:serviceaccounts"]}}),
                        None => json!({"authenticated": false, "error": "invalid bearer token"}),
                    };
                    json_response(201, body)
                }
                ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews") => {
                    let allowed = body["spec"]["user"] == AUDITOR
                        && body["spec"]["nonResourceAttributes"]["verb"] == "get";
                    body["status"] = if allowed {
                        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding komptroller-auditor"})
                    } else {
                        json!({"allowed": false})
                    };
                    json_response(201, body)
                }
                ("GET", "/apis/komptroller.dev/v1alpha1/computereports") => json_response(
                    200,
                    json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeReportList",
                        "metadata": {}, "items": []}),
                ),
                _ => json_response(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
                ),
            };
            send.send_response(resp);
        }
    });
    (Client::new(service, "default"), log)
}

/// A CA the client trusts and a serving certificate for 127.0.0.1, as files.
fn certificates(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let now = jiff::Timestamp::now();
    let (ca, ca_key) = generate_ca(now, 86_400).unwrap();
    let (cert, key) = issue_serving(&ca, &ca_key, &["127.0.0.1".to_string()], now, 86_400).unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (ca, c, k)
}

/// GET over TLS (trusting `ca`) with an optional bearer token: (status, body).
async fn get(
    addr: std::net::SocketAddr,
    ca: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

#[tokio::test]
async fn an_auditor_reads_an_engineer_gets_403_and_no_token_401() {
    tokio::time::timeout(TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let (client, log) = mock_api();
        let tls = tls_config(Some((&cert, &key)), &[]).unwrap();
        let state = HttpState {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(true)),
            client: Some(client.clone()),
            auth: Some(Arc::new(Authorizer::new(client))),
        };
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            state,
            Some(tls),
            std::future::pending(),
        )
        .await
        .unwrap();

        let (status, body) = get(addr, &ca, "/reports", Some("auditor-token")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"reports\""), "{body}");
        let (status, body) = get(addr, &ca, "/metrics", Some("auditor-token")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("komptroller_"), "{body}");

        let (status, body) = get(addr, &ca, "/reports", Some("engineer-token")).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains(ENGINEER) && body.contains("may not get /reports"),
            "{body}"
        );
        let (status, _) = get(
            addr,
            &ca,
            "/reports/report-000000000001",
            Some("engineer-token"),
        )
        .await;
        assert_eq!(status, 403);

        let (status, body) = get(addr, &ca, "/reports", None).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("Authorization"), "{body}");
        let (status, body) = get(addr, &ca, "/metrics", Some("forged-token")).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("invalid bearer token"), "{body}");

        // Probes need no token.
        let (status, _) = get(addr, &ca, "/healthz", None).await;
        assert_eq!(status, 200);

        // The SubjectAccessReview asked about the exact path, and a repeated
        // request within the TTL is answered from the cache.
        let reviews_before = log.lock().unwrap().len();
        let (status, _) = get(addr, &ca, "/reports", Some("auditor-token")).await;
        assert_eq!(status, 200);
        let reviews_after = log
            .lock()
            .unwrap()
            .iter()
            .skip(reviews_before)
            .filter(|(_, p)| p.contains("review"))
            .count();
        assert_eq!(reviews_after, 0, "cached decision reused");
        let tokenreviews = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/tokenreviews"))
            .count();
        // auditor ×2 paths, engineer ×2 paths, forged ×1; none for no token or /healthz.
        assert_eq!(tokenreviews, 5);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn plain_http_serves_without_tokens() {
    tokio::time::timeout(TIMEOUT, async {
        let state = HttpState {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(true)),
            client: None,
            auth: None,
        };
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            state,
            None,
            std::future::pending(),
        )
        .await
        .unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
            "{text}"
        );
    })
    .await
    .unwrap();
}
