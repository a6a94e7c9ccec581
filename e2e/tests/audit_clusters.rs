//! The treaty audit end to end, on two real control planes: each runs its
//! own `komptroller run` (as the chart's ServiceAccount, under the chart's
//! RBAC, with `--metrics-secure`) with its own generated signing key and the
//! same policy, a reporting tier at 1e21 FLOP. One lineage, `frontier`, is
//! split across them: a job of 5.98e20 FLOP on each, so neither cluster's
//! signed reports list a crossing, but the union (1.2e21) crosses the tier.
//! The auditor pulls `/reports` from each operator with a token bound to the
//! chart's auditor ClusterRole, writes a trust file with both published
//! public keys, and runs the built `komptroller audit`, which must find the
//! union crossing (lineage, both clusters, their amounts) and exit 1.
//!
//! The first control plane is this test binary's own (`Cluster::start`, or
//! the cluster `KOMPTROLLER_E2E_KUBECONFIG` names); the second is always a
//! fresh control plane started by `e2e/cluster/start`, stopped when the test
//! binary exits. Needs the `komptroller` binary (`cargo build -p komptroller`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::operator::{
    OPERATOR_NS, T, free_port, komptroller, repo, training_job, wait_for_output,
};
use e2e::control_plane::ControlPlane;
use e2e::harness::{Cluster, Process, wait_for};
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The policy both clusters run: admit everything, report past 1e21 FLOP.
const TIER_FLOP: f64 = 1e21;
const REGULATION: &str = "e2e treaty Art. 1";

/// Each cluster's share: 8 H100 × 989e12 FLOP/s (bf16 peak) × 21 h ≈ 5.98e20 FLOP.
const SHARE_HOURS: f64 = 21.0;
fn expected_share() -> f64 {
    8.0 * 989e12 * SHARE_HOURS * 3600.0
}

const NS: &str = "research";

/// GET `path` over TLS (trusting `ca_pem`) with a bearer token: (status,
/// body); an operator that does not answer within `T` fails the test.
async fn https_get(addr: &str, ca_pem: &str, path: &str, token: &str) -> (u16, String) {
    tokio::time::timeout(T, https_get_unbounded(addr, ca_pem, path, token))
        .await
        .unwrap_or_else(|_| panic!("GET https://{addr}{path}: no answer within {T:?}"))
}

async fn https_get_unbounded(addr: &str, ca_pem: &str, path: &str, token: &str) -> (u16, String) {
    let config = e2e::tls::client_config_for_ca(ca_pem.as_bytes()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
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

fn gvk(kind: &str) -> GroupVersionKind {
    GroupVersionKind::gvk("komptroller.dev", "v1alpha1", kind)
}

/// One cluster of the treaty: its control plane, operator and auditor access.
struct Site {
    name: &'static str,
    cluster: Cluster,
    /// Keeps the operator running as long as the site.
    _operator: Process,
    metrics: String,
    ca_pem: String,
    auditor_token: String,
    dir: PathBuf,
}

/// The second control plane (two kwok H100 nodes), in `e2e-clusters/` next
/// to the first one's directory when there is one.
async fn second_control_plane(first: &Cluster) -> Cluster {
    let root = match first.require_control_plane() {
        Ok(cp) => cp
            .dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir),
        Err(_) => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"))
            .join("e2e-clusters"),
    };
    let dir = root.join(format!("audit_clusters_second-{}", std::process::id()));
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&dir, "2"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the second control plane did not start: {e}"));
    let cluster = Cluster::real(&cp.kubeconfig).await.unwrap();
    let v = cluster.client().apiserver_version().await.unwrap();
    eprintln!(
        "e2e audit: second cluster: a second e2e control plane (real etcd, kube-apiserver {}, kube-controller-manager, kube-scheduler; kwok nodes) at {}, {}",
        v.git_version,
        cp.server,
        cp.dir.display()
    );
    cluster
}

/// Readies `cluster` as the chart would (namespace, RBAC, CRDs), applies the
/// policy, starts the operator with `--metrics-secure` as the chart's
/// ServiceAccount and makes an auditor ServiceAccount bound to the chart's
/// auditor ClusterRole.
async fn site(name: &'static str, cluster: Cluster, dir: &Path) -> Site {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    cluster.install_chart_rbac().await.unwrap();
    cluster.install_crds(&repo().join("crds"), T).await.unwrap();
    for ns in [NS, "audit"] {
        cluster
            .apply_yaml(
                &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"),
                None,
            )
            .await
            .unwrap();
    }
    cluster
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
    let auditor_token = cluster.service_account_token("audit", "auditor").unwrap();

    // The operator, as the chart's ServiceAccount, with its own serving certificate.
    let token = cluster
        .service_account_token(OPERATOR_NS, "komptroller")
        .unwrap();
    let kubeconfig = dir.join("operator.kubeconfig");
    cluster.write_token_kubeconfig(&kubeconfig, &token).unwrap();
    let ca = e2e::tls::Ca::new(&format!("{name}-metrics-ca")).unwrap();
    let leaf = ca.issue_server(&["127.0.0.1"]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let (metrics, webhook) = (free_port(), free_port());
    let metrics = format!("127.0.0.1:{metrics}");
    let webhook_addr = format!("127.0.0.1:{webhook}");
    let url = format!("https://{webhook_addr}");
    let args = [
        "run",
        "--namespace",
        OPERATOR_NS,
        "--metrics-addr",
        &metrics,
        "--metrics-secure",
        "--metrics-cert-file",
        cert.to_str().unwrap(),
        "--metrics-key-file",
        key.to_str().unwrap(),
        "--webhook-addr",
        &webhook_addr,
        "--webhook-url",
        &url,
        "--webhook-namespace",
        OPERATOR_NS,
        "--webhook-cert-check-interval",
        "1s",
        "--report-interval",
        "2s",
    ];
    let operator = Process::start(
        &komptroller(),
        &args,
        Some(&kubeconfig),
        &[("RUST_LOG", "info")],
    )
    .unwrap();
    wait_for_output(&operator, &["webhook ready", "books rebuilt"]).await;
    eprintln!("e2e audit: cluster {name}: komptroller run --metrics-secure on {metrics}");

    let policy = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy",
        "metadata": {"name": "treaty"},
        "spec": {"tiers": [{"name": "treaty-tier", "threshold": TIER_FLOP, "action": "Admit",
            "reporting": {"regulation": REGULATION, "notifyWithin": "14d"}}]}});
    cluster
        .apply_yaml(&serde_json::to_string(&policy).unwrap(), None)
        .await
        .unwrap();
    cluster
        .wait_for_condition(&gvk("ComputePolicy"), None, "treaty", "Accepted", "True", T)
        .await
        .unwrap_or_else(|e| panic!("cluster {name}: policy not accepted: {e}"));
    Site {
        name,
        cluster,
        _operator: operator,
        metrics,
        ca_pem: ca.cert_pem().to_string(),
        auditor_token,
        dir,
    }
}

impl Site {
    async fn get(&self, path: &str) -> String {
        let (status, body) =
            https_get(&self.metrics, &self.ca_pem, path, &self.auditor_token).await;
        assert_eq!(status, 200, "cluster {}: GET {path}: {body}", self.name);
        body
    }

    /// Submits this cluster's share of `frontier` and waits until it ran;
    /// returns the FLOP it was charged (its decision's governing figure).
    async fn run_share(&self) -> f64 {
        let job = training_job(
            &format!("frontier-{}", self.name),
            "frontier",
            "nvidia-h100-sxm",
            8,
            1,
            &format!("{SHARE_HOURS}h"),
            Some("2s"),
        );
        self.cluster
            .apply_yaml(&serde_json::to_string(&job).unwrap(), Some(NS))
            .await
            .unwrap();
        let api: Api<DynamicObject> = self
            .cluster
            .dynamic_api(&gvk("TrainingJob"), Some(NS))
            .await
            .unwrap();
        let name = format!("frontier-{}", self.name);
        let done = wait_for(&api, &name, Duration::from_secs(60), |o| {
            o.data.pointer("/status/phase").and_then(Value::as_str) == Some("Succeeded")
        })
        .await
        .unwrap_or_else(|e| panic!("cluster {}: {name} did not succeed: {e}", self.name));
        done.data
            .pointer("/status/decision/governing")
            .and_then(Value::as_f64)
            .unwrap_or_else(|| {
                panic!(
                    "cluster {}: {name} has no governing FLOP: {:#}",
                    self.name, done.data
                )
            })
    }

    /// Pulls every signed report into `DIR/books` (with the `/reports`
    /// index, which the audit skips), once the newest one counts
    /// `charged` FLOP for `frontier` and no new report came for two
    /// report intervals. Returns the newest report.
    async fn pull_books(&self, charged: f64) -> (PathBuf, Value) {
        let books = self.dir.join("books");
        let deadline = tokio::time::Instant::now() + T;
        let mut last_seen = Vec::new();
        loop {
            let index = self.get("/reports").await;
            let v: Value = serde_json::from_str(&index).unwrap();
            let names: Vec<String> = v["reports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if !names.is_empty() && names == last_seen {
                let _ = std::fs::remove_dir_all(&books);
                std::fs::create_dir_all(&books).unwrap();
                std::fs::write(books.join("index.json"), &index).unwrap();
                let mut newest: Option<(u64, Value)> = None;
                for n in &names {
                    let body = self.get(&format!("/reports/{n}")).await;
                    std::fs::write(books.join(format!("{n}.json")), &body).unwrap();
                    let r: Value = serde_json::from_str(&body).unwrap();
                    let to = r["report"]["range"]["to"].as_u64().unwrap();
                    if newest.as_ref().is_none_or(|(t, _)| to > *t) {
                        newest = Some((to, r));
                    }
                }
                let (_, newest) = newest.unwrap();
                let counted = newest["report"]["cumulative"]["frontier"]["charged"].as_f64();
                if counted == Some(charged) {
                    eprintln!(
                        "e2e audit: cluster {}: pulled {} signed reports from /reports (newest covers {} entries)",
                        self.name,
                        names.len(),
                        newest["report"]["range"]["to"]
                    );
                    return (books, newest);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster {}: the reports did not settle on {charged} FLOP for frontier within {T:?}: {index}",
                self.name
            );
            last_seen = names;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// The public key the operator published (ConfigMap `komptroller-signing-key-public`).
    async fn public_key(&self) -> String {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.cluster.client(), OPERATOR_NS);
        let cm = cms.get("komptroller-signing-key-public").await.unwrap();
        cm.data.unwrap()["public-key.pem"].clone()
    }
}

fn run_audit(trust: &Path, books: &[(&str, &Path)], output: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(komptroller());
    cmd.arg("audit").arg("--trust").arg(trust);
    for (name, path) in books {
        cmd.arg("--books").arg(format!("{name}={}", path.display()));
    }
    cmd.args(["-o", output]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lineage_split_across_two_clusters_crosses_only_in_the_union() {
    let first = Cluster::start().await.unwrap();
    let second = second_control_plane(&first).await;
    let dir = tempfile::tempdir().unwrap();
    let west = site("west", first, dir.path()).await;
    let east = site("east", second, dir.path()).await;
    let sites = [&west, &east];

    // Each cluster runs its share; each stays under the tier on its own.
    let mut shares = Vec::new();
    for s in sites {
        let charged = s.run_share().await;
        let want = expected_share();
        assert!(
            (charged - want).abs() <= want * 1e-9,
            "cluster {}: charged {charged}, expected {want}",
            s.name
        );
        assert!(charged < TIER_FLOP);
        shares.push(charged);
    }
    assert!(shares.iter().sum::<f64>() > TIER_FLOP);

    // The auditor pulls each cluster's books; no cluster's own report lists a crossing.
    let mut books = Vec::new();
    let mut trust = String::from("clusters:\n");
    for (s, charged) in sites.iter().zip(&shares) {
        let (path, newest) = s.pull_books(*charged).await;
        assert_eq!(
            newest["report"]["thresholdCrossings"],
            json!([]),
            "cluster {}: its own report lists a crossing",
            s.name
        );
        let thresholds = newest["report"]["reportingThresholds"].to_string();
        assert!(thresholds.contains(REGULATION), "{thresholds}");
        let key = dir.path().join(format!("{}-public-key.pem", s.name));
        std::fs::write(&key, s.public_key().await).unwrap();
        trust.push_str(&format!(
            "  - name: {}\n    reportEvery: 1h\n    keys: [{}-public-key.pem]\n",
            s.name, s.name
        ));
        books.push((s.name, path));
    }
    let trust_file = dir.path().join("trust.yaml");
    std::fs::write(&trust_file, &trust).unwrap();
    let books: Vec<(&str, &Path)> = books.iter().map(|(n, p)| (*n, p.as_path())).collect();

    let out = run_audit(&trust_file, &books, "json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "komptroller audit: exit 1 (findings) expected; stderr: {stderr}\nstdout: {stdout}"
    );
    let a: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(a["summary"]["verified"], 2, "{stdout}");
    assert_eq!(a["summary"]["failed"], 0, "{stdout}");
    assert_eq!(a["summary"]["unionCrossings"], 1, "{stdout}");
    // The union crossing is the only finding: no gap, no late report, no silence.
    let findings = a["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{stdout}");
    let f = &findings[0];
    assert_eq!(f["detail"]["kind"], "unionCrossing", "{stdout}");
    let x = &f["detail"]["crossing"];
    assert_eq!(x["lineage"], "frontier");
    assert_eq!(x["regulation"], REGULATION);
    assert_eq!(x["threshold"].as_f64(), Some(TIER_FLOP));
    assert_eq!(x["reportedBy"], json!([]));
    let mut clusters: Vec<(String, f64)> = x["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap().to_string(),
                c["charged"].as_f64().unwrap(),
            )
        })
        .collect();
    clusters.sort_by(|p, q| p.0.cmp(&q.0));
    assert_eq!(
        clusters,
        vec![
            ("east".to_string(), shares[1]),
            ("west".to_string(), shares[0])
        ],
        "{stdout}"
    );
    let at_crossing = x["chargedAtCrossing"].as_f64().unwrap();
    assert!(
        (at_crossing - shares.iter().sum::<f64>()).abs() <= TIER_FLOP * 1e-9,
        "{stdout}"
    );
    // Crossed when the second share was reported; notification due 14 days later.
    let crossed: jiff::Timestamp = x["crossedAt"].as_str().unwrap().parse().unwrap();
    let notify: jiff::Timestamp = x["notifyBy"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        notify,
        crossed
            .checked_add(jiff::SignedDuration::from_hours(14 * 24))
            .unwrap()
    );
    let age = jiff::Timestamp::now().duration_since(crossed);
    assert!(
        age > jiff::SignedDuration::ZERO && age < jiff::SignedDuration::from_mins(10),
        "crossed at {crossed}, not during this test"
    );
    let merged = a["lineages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lineage"] == "frontier")
        .unwrap();
    assert_eq!(
        merged["total"]["charged"].as_f64(),
        Some(shares[0] + shares[1])
    );

    // The text a person reads names the lineage and both clusters.
    let out = run_audit(&trust_file, &books, "text");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in ["frontier", "west", "east", REGULATION] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    eprintln!(
        "e2e audit: komptroller audit over west ({:.3e} FLOP) and east ({:.3e} FLOP): union crossing of {TIER_FLOP:e} at {crossed}, notify by {notify}; exit 1",
        shares[0], shares[1]
    );
}
