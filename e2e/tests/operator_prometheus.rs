//! A real Prometheus (Debian package `prometheus`, started here on a
//! loopback port) scrapes `komptroller run`'s `/metrics`; the PromQL sum of
//! consumed FLOP must equal the ledger's consumed total. Fails loudly when
//! the `prometheus` binary is missing (`apt-get install prometheus`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use e2e::harness::{Cluster, Process, crds_dir, wait_for, workspace_binary};
use kube::api::ListParams;
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on loopback.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

fn prometheus_binary() -> String {
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if std::path::Path::new(p).is_file() {
            return p.to_string();
        }
    }
    panic!(
        "the `prometheus` binary is not installed: apt-get install prometheus (Debian package) — this test does not skip"
    );
}

fn promql(addr: &str, query: &str) -> Option<f64> {
    let q: String = form_urlencoded_byte_serialize(query);
    let body = http_get(addr, &format!("/api/v1/query?query={q}"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v.pointer("/data/result/0/value/1")?.as_str()?.parse().ok()
}

fn form_urlencoded_byte_serialize(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_consumed_flop_equals_the_ledger_total() {
    let prom_bin = prometheus_binary();
    let c = Cluster::start().await.unwrap();
    c.install_crds(&crds_dir(), T).await.unwrap();
    let ns = c.temp_namespace("op-prom").await.unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let bin = workspace_binary("komptroller").unwrap();
    let mut op = Process::start(
        &bin,
        &[
            "run",
            "--metrics-addr",
            &metrics_addr,
            "--namespace",
            "default",
        ],
        Some(c.kubeconfig()),
        &[],
    )
    .unwrap();
    op.wait_for_line("books rebuilt", T).await.unwrap();

    let tjs = c
        .dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "TrainingJob"),
            Some(&ns.name),
        )
        .await
        .unwrap();
    for (name, gpus, runtime) in [("a", 8, "1s"), ("b", 4, "2s"), ("c", 2, "1500ms")] {
        let v = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {"model": {"name": format!("m-{name}")}, "accelerator": {"type": "nvidia-h100-sxm"},
                "replicas": 1, "maxDuration": "1h",
                "template": {"metadata": {"annotations": {e2e::harness::RUNTIME_ANNOTATION: runtime}},
                    "spec": {"containers": [{"name": "t", "image": "x", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}});
        c.apply_yaml(&serde_json::to_string(&v).unwrap(), Some(&ns.name))
            .await
            .unwrap();
    }
    for name in ["a", "b", "c"] {
        wait_for(&tjs, name, T, |o| {
            o.data.pointer("/status/phase") == Some(&json!("Succeeded"))
        })
        .await
        .unwrap();
    }
    // The ledger's consumed total.
    let entries = c
        .dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "ComputeLedgerEntry"),
            None,
        )
        .await
        .unwrap()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let ledger_total: f64 = entries
        .iter()
        .map(|o| serde_json::from_str::<Value>(o.data["spec"]["entry"].as_str().unwrap()).unwrap())
        .filter_map(|e| e.pointer("/event/consumed").and_then(Value::as_f64))
        .sum();
    assert!(ledger_total > 0.0);

    // A real Prometheus scraping the operator.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: komptroller\n    static_configs:\n      - targets: ['{metrics_addr}']\n"),
    )
    .unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let _prom = Process::start(
        std::path::Path::new(&prom_bin),
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={prom_addr}"),
        ],
        None,
        &[],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let promql_total = loop {
        if let Some(v) = promql(&prom_addr, "sum(komptroller_consumed_flop_total)") {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the metric"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rel = (promql_total - ledger_total).abs() / ledger_total;
    eprintln!(
        "PromQL sum(komptroller_consumed_flop_total) = {promql_total:e}; ledger consumed total = {ledger_total:e}; relative difference {rel:e}"
    );
    assert!(rel < 1e-9, "PromQL {promql_total} != ledger {ledger_total}");
    let up = promql(&prom_addr, "up{job=\"komptroller\"}").unwrap();
    assert_eq!(up, 1.0);
}
