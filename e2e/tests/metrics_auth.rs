//! The operator's `/reports` and `/metrics` with `--metrics-secure`, on the
//! real control plane: served over TLS, and only to callers the real
//! kube-apiserver authenticates (TokenReview) and its RBAC authorizer allows
//! (SubjectAccessReview on the non-resource URL). The operator runs as the
//! chart's ServiceAccount under the chart's RBAC (which grants it the two
//! reviews); an auditor ServiceAccount bound to the chart's auditor
//! ClusterRole reads the signed reports, an ML engineer's token gets 403 and
//! no token 401.
//!
//! Needs the `komptroller` binary (`cargo build -p komptroller`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::operator::{Env, OPERATOR_NS, OPERATOR_SA, T, komptroller, training_job};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "research";

/// GET `path` over TLS (trusting `ca_pem`) with an optional bearer token.
async fn https_get(addr: &str, ca_pem: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let config = e2e::tls::client_config_for_ca(ca_pem.as_bytes()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_reads_reports_an_engineer_gets_403_no_token_401() {
    let env = Env::start(&[
        (
            OPERATOR_SA,
            "system:serviceaccounts,system:serviceaccounts:komptroller-system",
        ),
        ("alice", "researchers"),
    ])
    .await;
    env.namespace(NS, json!({})).await;
    env.namespace("audit", json!({})).await;
    let auditor = env
        .cluster
        .service_account_token("audit", "auditor")
        .unwrap();
    let engineer = env
        .cluster
        .service_account_token(NS, "ml-engineer")
        .unwrap();
    // The chart's auditor ClusterRole (nonResourceURLs /reports, /reports/*,
    // /metrics), bound as metrics.auditor.subjects would bind it.
    env.cluster
        .apply_yaml(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-auditor}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: komptroller-auditor}
subjects: [{kind: ServiceAccount, name: auditor, namespace: audit}]
"#,
            None,
        )
        .await
        .unwrap();

    // The serving certificate, as metrics.certSecret would mount it.
    let ca = e2e::tls::Ca::new("metrics-ca").unwrap();
    let leaf = ca.issue_server(&["127.0.0.1"]).unwrap();
    let (cert, key) = (
        env.dir.path().join("tls.crt"),
        env.dir.path().join("tls.key"),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let op = env
        .start_operator(
            &env.kubeconfig_for(OPERATOR_SA),
            &[
                "--metrics-secure",
                "--metrics-cert-file",
                cert.to_str().unwrap(),
                "--metrics-key-file",
                key.to_str().unwrap(),
            ],
        )
        .await;
    eprintln!(
        "e2e metrics auth: komptroller run --metrics-secure as {OPERATOR_SA} on {}",
        op.metrics
    );

    // Something to report: one admitted job.
    env.create_as(
        "alice",
        NS,
        training_job("small", "notes", "nvidia-h100-sxm", 1, 1, "1h", Some("2s")),
    )
    .await;
    env.wait_phase(NS, "small", &["Running", "Succeeded"]).await;

    let deadline = tokio::time::Instant::now() + T;
    let name = loop {
        let (status, body) =
            https_get(&op.metrics, ca.cert_pem(), "/reports", Some(&auditor)).await;
        assert_eq!(status, 200, "the auditor reads /reports: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if let Some(r) = v["reports"].as_array().and_then(|a| a.first()) {
            break r["name"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no signed report: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let path = format!("/reports/{name}");
    let (status, report) = https_get(&op.metrics, ca.cert_pem(), &path, Some(&auditor)).await;
    assert_eq!(status, 200, "{report}");
    let (status, metrics) = https_get(&op.metrics, ca.cert_pem(), "/metrics", Some(&auditor)).await;
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("komptroller_lineage_charged_flop"),
        "{metrics}"
    );

    // The report the auditor pulled verifies under the published key.
    let dir = env.dir.path();
    std::fs::write(dir.join("report.json"), &report).unwrap();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.cluster.client(), OPERATOR_NS);
    let cm = cms.get("komptroller-signing-key-public").await.unwrap();
    let pem = cm.data.unwrap()["public-key.pem"].clone();
    std::fs::write(dir.join("public-key.pem"), pem).unwrap();
    let out = std::process::Command::new(komptroller())
        .arg("verify")
        .arg("--report")
        .arg(dir.join("report.json"))
        .arg("--key")
        .arg(dir.join("public-key.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An ML engineer is authenticated but RBAC does not let them read reports.
    for p in ["/reports", path.as_str(), "/metrics"] {
        let (status, body) = https_get(&op.metrics, ca.cert_pem(), p, Some(&engineer)).await;
        assert_eq!(status, 403, "{p}: {body}");
        assert!(body.contains("ml-engineer"), "{body}");
    }
    // No token, or one the apiserver does not know: 401.
    let (status, body) = https_get(&op.metrics, ca.cert_pem(), "/reports", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) =
        https_get(&op.metrics, ca.cert_pem(), "/reports", Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    // Probes stay open.
    let (status, _) = https_get(&op.metrics, ca.cert_pem(), "/healthz", None).await;
    assert_eq!(status, 200);
    eprintln!(
        "e2e metrics auth: auditor 200 on /reports, {path} and /metrics; engineer 403; no token 401"
    );
}
