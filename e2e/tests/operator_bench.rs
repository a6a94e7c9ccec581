//! The operator benchmark of issue 5 on the real e2e control plane (not a
//! pass/fail test: it is `#[ignore]`d and prints its numbers for
//! BENCHMARKS.md).
//!
//! ```sh
//! cargo build --release -p komptroller
//! KOMPTROLLER_E2E_NODES=40 cargo test -p e2e --test operator_bench -- --ignored --nocapture
//! ```
//!
//! The operator runs as a release binary in its own process (found beside
//! the test's target directory, under `release/`), as the chart's
//! ServiceAccount; real Jobs are created, scheduled onto kwok nodes and
//! completed by the real Job controller.
//! Burst: `BENCH_JOBS` (15,000) TrainingJobs created at once (64 in flight);
//! the time until every one has a decision in its status. Steady: a fresh
//! cluster, `BENCH_RATE` (100) submissions/s for `BENCH_STEADY_SECS` (30 s);
//! submit-to-decision latency from the client's create call to the watch
//! event carrying the decision. Mix: 9 in 10 jobs are admitted (8 GPUs, run
//! 5 s, metered), 1 in 10 is over a Reject tier. Also the operator's peak RSS
//! (VmHWM) and CPU seconds per 1,000 decisions.
//!
//! `BENCH_PHASES` (`burst,steady`) picks the phases; `BENCH_OPERATOR_WRAPPER`
//! runs the operator under a profiler (e.g. `/usr/bin/heaptrack`);
//! `BENCH_OPERATOR_LOG`
//! sets the operator's `RUST_LOG` (e.g. `warn,komptroller=info,
//! komptroller::timing=debug` logs where each reconcile's time goes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::harness::{Cluster, Process, crds_dir, workspace_binary};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::watcher;
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn release_binary(name: &str) -> PathBuf {
    let debug = workspace_binary(name).unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join(name)
    });
    let release = debug
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("release")
        .join(name);
    assert!(
        release.is_file(),
        "{} missing: cargo build --release -p komptroller",
        release.display()
    );
    release
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rig {
    _dir: tempfile::TempDir,
    cluster: Cluster,
    operator: Process,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    // The cluster alone, with what earlier phases left removed.
    let cluster = Cluster::start().await.unwrap();
    let kc = cluster.operator_kubeconfig().await.unwrap();
    cluster
        .install_crds(&crds_dir(), Duration::from_secs(30))
        .await
        .unwrap();
    let policy = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy",
        "metadata": {"name": "bench"}, "spec": {"tiers": [{"name": "ceiling", "threshold": 1e21, "action": "Reject"}]}});
    cluster
        .apply_yaml(&serde_json::to_string(&policy).unwrap(), None)
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log =
        std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn,komptroller=info".into());
    let binary = release_binary("komptroller");
    let binary = binary.to_str().unwrap();
    let mut args = vec![
        "run",
        "--metrics-addr",
        &addr,
        "--namespace",
        "komptroller-system",
        "--log-format",
        "json",
        "--report-interval",
        "1h",
    ];
    // A profiler to run the operator under (its peak RSS is then not measured).
    let wrapper = std::env::var("BENCH_OPERATOR_WRAPPER").ok();
    let program = match &wrapper {
        Some(w) => {
            args.insert(0, binary);
            PathBuf::from(w)
        }
        None => PathBuf::from(binary),
    };
    let mut operator =
        Process::start(&program, &args, Some(&kc), &[("RUST_LOG", log.as_str())]).unwrap();
    operator
        .wait_for_line("books rebuilt", Duration::from_secs(30))
        .await
        .unwrap();
    // Let the policy load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Rig {
        _dir: dir,
        cluster,
        operator,
    }
}

fn job(name: &str, i: u64) -> DynamicObject {
    let huge = i % 10 == 9;
    let (replicas, max) = if huge { (64, "720h") } else { (1, "1h") };
    serde_json::from_value(json!({
        "apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"model": {"name": format!("lineage-{}", i % 50)}, "accelerator": {"type": "nvidia-h100-sxm"},
            "replicas": replicas, "maxDuration": max,
            "template": {"metadata": {"annotations": {e2e::harness::RUNTIME_ANNOTATION: "5s"}},
                "spec": {"containers": [{"name": "t", "image": "x", "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}}
    }))
    .unwrap()
}

/// Records when each TrainingJob first shows a decision.
fn watch_decisions(api: Api<DynamicObject>) -> Arc<Mutex<HashMap<String, Instant>>> {
    let decided: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let d = decided.clone();
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            let objs: Vec<DynamicObject> = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                _ => vec![],
            };
            for o in objs {
                if o.data.pointer("/status/decision/verdict").is_some() {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    d.lock().unwrap().entry(name).or_insert_with(Instant::now);
                }
            }
        }
    });
    decided
}

fn proc_stats(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm_kb)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (see module docs)"]
async fn operator_burst_and_steady_rate() {
    let n = env_or("BENCH_JOBS", 15_000);
    let rate = env_or("BENCH_RATE", 100);
    let steady_secs = env_or("BENCH_STEADY_SECS", 30);
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "burst,steady".into());
    if phases.contains("burst") {
        burst(n).await;
    }
    if phases.contains("steady") {
        steady(rate, steady_secs).await;
    }
}

async fn burst(n: u64) {
    let r = rig().await;
    let ns = r.cluster.temp_namespace("bench").await.unwrap();
    let api = r
        .cluster
        .dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "TrainingJob"),
            Some(&ns.name),
        )
        .await
        .unwrap();
    let decided = watch_decisions(api.clone());
    let pid = r.operator.id().unwrap();
    let (cpu0, _) = proc_stats(pid);
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let o = job(&format!("b{i:05}"), i);
                for _ in 0..5 {
                    if api.create(&PostParams::default(), &o).await.is_ok() {
                        break;
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let created = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = decided.lock().unwrap().len() as u64;
        if done >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_decided = decided
        .lock()
        .unwrap()
        .values()
        .max()
        .map(|t| t.duration_since(t0))
        .unwrap_or_default();
    let count = decided.lock().unwrap().len();
    let (cpu1, hwm_kb) = proc_stats(pid);
    println!(
        "BENCH burst: {count}/{n} TrainingJobs decided in {:.1} s (created in {:.1} s); operator peak RSS {:.1} MiB; CPU {:.2} s = {:.3} CPU-s per 1,000 decisions",
        all_decided.as_secs_f64(),
        created.as_secs_f64(),
        hwm_kb as f64 / 1024.0,
        cpu1 - cpu0,
        (cpu1 - cpu0) / (count as f64 / 1000.0)
    );
    drop(ns);
    drop(r);
}

async fn steady(rate: u64, steady_secs: u64) {
    let r = rig().await;
    let ns = r.cluster.temp_namespace("steady").await.unwrap();
    let api = r
        .cluster
        .dynamic_api(
            &GroupVersionKind::gvk("komptroller.dev", "v1alpha1", "TrainingJob"),
            Some(&ns.name),
        )
        .await
        .unwrap();
    let decided = watch_decisions(api.clone());
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = rate * steady_secs;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let api = api.clone();
        let submitted = submitted.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("s{i:05}");
            submitted
                .lock()
                .unwrap()
                .insert(name.clone(), Instant::now());
            let _ = api.create(&PostParams::default(), &job(&name, i)).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (decided.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sub = submitted.lock().unwrap().clone();
    let dec = decided.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sub
        .iter()
        .filter_map(|(k, s)| dec.get(k).map(|d| d.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    println!(
        "BENCH steady: {} submissions/s for {steady_secs} s: {}/{total} decided; submit-to-decision p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        rate,
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    let (_, hwm_kb) = proc_stats(r.operator.id().unwrap());
    println!(
        "BENCH steady: operator peak RSS {:.1} MiB",
        hwm_kb as f64 / 1024.0
    );
}
