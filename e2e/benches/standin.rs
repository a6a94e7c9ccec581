//! Load benchmark of kube-standin: hold N objects, sustain a write rate with
//! concurrent watchers, report throughput, latency and watch delivery.
//!
//! `cargo bench -p e2e --bench standin -- [--objects 50000] [--rate 2000]
//!  [--seconds 20] [--watchers 5] [--concurrency 64]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::harness::client_from_kubeconfig;
use e2e::standin::{Options, StandIn};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this runs
    // as a quick smoke test instead of the full load.
    let full = std::env::args().any(|a| a == "--bench");
    let objects = arg("--objects", if full { 50_000 } else { 500 });
    let rate = arg("--rate", if full { 2_000 } else { 200 });
    let seconds = arg("--seconds", if full { 20 } else { 1 });
    let watchers = arg("--watchers", 5);
    let concurrency = arg("--concurrency", 64);
    let namespaces = 50u64;
    let jobs = arg("--jobs", if full { 15_000 } else { 100 });
    let standin = StandIn::start(Options {
        history_limit: 200_000,
        time_scale: 60.0,
        ..Options::default()
    })
    .unwrap();
    let client = client_from_kubeconfig(&standin.kubeconfig).await.unwrap();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for n in 0..namespaces {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("bench-{n}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    println!(
        "kube-standin load benchmark: {objects} objects, target {rate} writes/s for {seconds}s, {watchers} watchers, concurrency {concurrency}"
    );
    // Phase 1: load.
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= objects {
                    break;
                }
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("bench-{}", i % namespaces));
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}"), "labels": {"bench": "yes", "shard": (i % 16).to_string()}}, "data": {"payload": "x".repeat(200), "i": i.to_string()}})).unwrap();
                api.create(&PostParams::default(), &cm).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let load = t0.elapsed();
    println!(
        "load: {objects} creates in {:.1}s = {:.0} creates/s; objects held {}; RSS {:.0} MiB (server and client in one process)",
        load.as_secs_f64(),
        objects as f64 / load.as_secs_f64(),
        standin.object_count(),
        rss_mib()
    );
    // Phase 2: watchers from the current resourceVersion, then paced writes.
    let start_rv = standin.resource_version().to_string();
    let received: Vec<Arc<AtomicU64>> =
        (0..watchers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut watch_tasks = Vec::new();
    for counter in &received {
        let api: Api<ConfigMap> = Api::all(client.clone());
        let counter = counter.clone();
        let rv = start_rv.clone();
        watch_tasks.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default().timeout(290), &rv)
                .await
                .unwrap()
                .boxed();
            while let Ok(Some(ev)) = s.try_next().await {
                if matches!(ev, WatchEvent::Modified(_)) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = rate * seconds;
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let t1 = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let issued = issued.clone();
        let failed = failed.clone();
        let latencies = latencies.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let k = issued.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                // Pace: write k is due at k / rate seconds.
                let due = t1 + Duration::from_secs_f64(k as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let i = (k * 7919) % objects;
                let api: Api<ConfigMap> =
                    Api::namespaced(client.clone(), &format!("bench-{}", i % namespaces));
                let s = Instant::now();
                let r = api
                    .patch(
                        &format!("cm-{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"k": k.to_string()}})),
                    )
                    .await;
                let ms = s.elapsed().as_secs_f64() * 1000.0;
                if r.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().unwrap().push(ms);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let write_time = t1.elapsed();
    // Wait for watchers to drain.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while received.iter().any(|c| c.load(Ordering::Relaxed) < total)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = t1.elapsed();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "writes: {total} merge patches in {:.2}s = {:.0} writes/s achieved (target {rate}); failed {}; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        write_time.as_secs_f64(),
        total as f64 / write_time.as_secs_f64(),
        failed.load(Ordering::Relaxed),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    let counts: Vec<u64> = received.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "watchers: MODIFIED events received per watcher {counts:?} (expected {total} each); all delivered {:.2}s after the first write",
        drained.as_secs_f64()
    );
    println!(
        "final: objects {}, resourceVersion {}, RSS {:.0} MiB",
        standin.object_count(),
        standin.resource_version(),
        rss_mib()
    );
    for t in watch_tasks {
        t.abort();
    }
    // Phase 3: the Job simulator with many Jobs (runtime 2m at 60x = 2s each),
    // completions counted by a watch.
    let all_jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::all(client.clone());
    let jobs_rv = standin.resource_version().to_string();
    let completed = Arc::new(AtomicU64::new(0));
    let completed2 = completed.clone();
    let job_watch = tokio::spawn(async move {
        let mut s = all_jobs
            .watch(&WatchParams::default().timeout(290), &jobs_rv)
            .await
            .unwrap()
            .boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            if let WatchEvent::Modified(j) = ev
                && j.status.as_ref().and_then(|s| s.succeeded) == Some(1)
            {
                completed2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let t2 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    break;
                }
                let api: Api<k8s_openapi::api::batch::v1::Job> =
                    Api::namespaced(client.clone(), &format!("bench-{}", i % namespaces));
                let job = serde_json::from_value(json!({
                    "metadata": {"name": format!("job-{i}"), "annotations": {"e2e.komptroller.dev/runtime": "2m"}},
                    "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}
                }))
                .unwrap();
                api.create(&PostParams::default(), &job).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let created = t2.elapsed();
    let done_deadline = Instant::now() + Duration::from_secs(120);
    while completed.load(Ordering::Relaxed) < jobs && Instant::now() < done_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let complete = completed.load(Ordering::Relaxed);
    job_watch.abort();
    println!(
        "jobs: {jobs} Jobs created in {:.1}s; {complete} Complete {:.1}s after the first create (runtime 2m at time scale 60 = 2s each); objects {}, RSS {:.0} MiB",
        created.as_secs_f64(),
        t2.elapsed().as_secs_f64(),
        standin.object_count(),
        rss_mib()
    );
    let ok = counts.iter().all(|c| *c == total)
        && failed.load(Ordering::Relaxed) == 0
        && complete == jobs;
    if !ok {
        eprintln!("FAILED: events lost or writes failed");
        std::process::exit(1);
    }
}
