//! The operator benchmark on the real e2e control plane (not a
//! pass/fail test: it is `#[ignore]`d and prints its numbers for
//! BENCHMARKS.md).
//!
//! ```sh
//! cargo build --release -p komptroller -p e2e --bin komptroller --bin null_writer
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
//! event carrying the decision. Mix: 9 in 10 jobs are admitted (8 GPUs,
//! 1 h bound, run 5 s, metered; 50 lineages, each far below the tier), 1 in
//! 10 (512 GPUs for 30 days) is over the Reject tier at 1e23 FLOP, as the
//! null writer's fixed rule decides too; the verdicts are counted per run. Also the operator's peak RSS
//! (VmHWM) and CPU seconds per 1,000 decisions.
//!
//! Each phase runs twice on the same control plane, once with the operator
//! and once with the null writer (`e2e/src/bin/null_writer.rs`: the same
//! API writes per job with no engine), each on a reset cluster; the ratio
//! of their times is what komptroller adds to what the apiserver costs.
//! Beside each run: CPU seconds and peak RSS of the writer and of every
//! control-plane process (the two cores are shared), and the writer's
//! writes by verb and resource as the apiserver's audit log counted them.
//!
//! `BENCH_WRITERS` (`operator,null`) picks the writers;
//! `BENCH_PHASES` (`burst,steady`) picks the phases; `BENCH_OPERATOR_WRAPPER`
//! runs the operator under a profiler (e.g. `/usr/bin/heaptrack`);
//! `BENCH_OPERATOR_LOG`
//! sets the operator's `RUST_LOG` (e.g. `warn,komptroller=info,
//! komptroller::timing=debug` logs where each reconcile's time goes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::control_plane::ControlPlane;
use e2e::harness::{Cluster, Process, crds_dir, workspace_binary};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::watcher;
use serde_json::json;

/// Whom the audit log names for the writer's requests (both writers act as
/// the chart's ServiceAccount).
const WRITER_USER: &str = "system:serviceaccount:komptroller-system:komptroller";
const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

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
        "{} missing: cargo build --release -p komptroller -p e2e --bin komptroller --bin null_writer",
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    Operator,
    Null,
}

impl Writer {
    fn name(self) -> &'static str {
        match self {
            Writer::Operator => "operator",
            Writer::Null => "null writer",
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    cluster: Cluster,
    writer: Process,
}

async fn rig(writer: Writer) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    // The cluster alone, with what earlier phases left removed.
    let cluster = Cluster::start().await.unwrap();
    let kc = cluster.operator_kubeconfig().await.unwrap();
    cluster
        .install_crds(&crds_dir(), Duration::from_secs(30))
        .await
        .unwrap();
    let policy = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputePolicy",
        "metadata": {"name": "bench"}, "spec": {"tiers": [{"name": "ceiling", "threshold": 1e23, "action": "Reject"}]}});
    cluster
        .apply_yaml(&serde_json::to_string(&policy).unwrap(), None)
        .await
        .unwrap();
    let process = match writer {
        Writer::Operator => {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = std::env::var("BENCH_OPERATOR_LOG")
                .unwrap_or_else(|_| "warn,komptroller=info".into());
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
            let mut p =
                Process::start(&program, &args, Some(&kc), &[("RUST_LOG", log.as_str())]).unwrap();
            p.wait_for_line("books rebuilt", Duration::from_secs(30))
                .await
                .unwrap();
            p
        }
        Writer::Null => {
            let binary = release_binary("null_writer");
            let mut p = Process::start(&binary, &[], Some(&kc), &[]).unwrap();
            p.wait_for_line("null-writer: watching", Duration::from_secs(30))
                .await
                .unwrap();
            p
        }
    };
    // Let the policy load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Rig {
        _dir: dir,
        cluster,
        writer: process,
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

/// When each TrainingJob first showed a decision, and its verdict.
type Decided = Arc<Mutex<HashMap<String, (Instant, String)>>>;

/// Records when each TrainingJob first shows a decision.
fn watch_decisions(api: Api<DynamicObject>) -> Decided {
    let decided: Decided = Arc::default();
    let d = decided.clone();
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            let objs: Vec<DynamicObject> = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                _ => vec![],
            };
            for o in objs {
                if let Some(v) = o.data.pointer("/status/decision/verdict") {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let verdict = v.as_str().unwrap_or("?").to_string();
                    d.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(|| (Instant::now(), verdict));
                }
            }
        }
    });
    decided
}

/// CPU seconds (user + system) and resident set (KiB) of a process.
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
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kb)
}

/// CPU and peak RSS of the writer and the control plane over one run,
/// sampled every 250 ms (the control plane's processes live across runs, so
/// their lifetime high-water mark would not say what this run took).
struct Usage {
    pids: Vec<(String, u32)>,
    cpu0: Vec<f64>,
    peak_kb: Arc<Mutex<Vec<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Usage {
    fn start(writer: u32, cp: Option<&ControlPlane>) -> Usage {
        let mut pids = vec![("writer".to_string(), writer)];
        if let Some(cp) = cp {
            for c in COMPONENTS {
                if let Ok(pid) = cp.pid(c) {
                    pids.push((c.to_string(), pid as u32));
                }
            }
        }
        let cpu0 = pids.iter().map(|(_, p)| proc_stats(*p).0).collect();
        let peak_kb = Arc::new(Mutex::new(vec![0; pids.len()]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, k, st) = (pids.clone(), peak_kb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (_, pid)) in p.iter().enumerate() {
                    let rss = proc_stats(*pid).1;
                    let mut k = k.lock().unwrap();
                    k[i] = k[i].max(rss);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Usage {
            pids,
            cpu0,
            peak_kb,
            stop,
        }
    }

    /// `(name, CPU s, peak RSS MiB)` per process; the writer first.
    fn finish(&self) -> Vec<(String, f64, f64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = self.peak_kb.lock().unwrap().clone();
        self.pids
            .iter()
            .enumerate()
            .map(|(i, (name, pid))| {
                (
                    name.clone(),
                    proc_stats(*pid).0 - self.cpu0[i],
                    peak[i] as f64 / 1024.0,
                )
            })
            .collect()
    }
}

fn print_usage(label: &str, usage: &[(String, f64, f64)], wall: f64) {
    let total: f64 = usage.iter().map(|u| u.1).sum();
    let line: Vec<String> = usage
        .iter()
        .map(|(n, cpu, rss)| format!("{n} {cpu:.1} CPU-s / {rss:.0} MiB"))
        .collect();
    println!(
        "BENCH {label}: CPU over {wall:.1} s ({:.0}% of 2 cores in all): {}",
        total / (2.0 * wall.max(0.001)) * 100.0,
        line.join(", ")
    );
}

/// The writer's requests in the apiserver's audit log from `since` on,
/// counted by `verb resource[/subresource]` (watches and reads too, so the
/// two writers' traffic can be compared whole).
fn audit_counts(cp: &ControlPlane, since: jiff::Timestamp) -> BTreeMap<String, u64> {
    let path = cp.dir.join("logs/audit.log");
    let mut counts = BTreeMap::new();
    let Ok(file) = std::fs::File::open(&path) else {
        return counts;
    };
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        if !line.contains(WRITER_USER) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v.pointer("/user/username").and_then(|u| u.as_str()) != Some(WRITER_USER) {
            continue;
        }
        let at = v
            .get("requestReceivedTimestamp")
            .and_then(|t| t.as_str())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if at.is_none_or(|t| t < since) {
            continue;
        }
        let verb = v.get("verb").and_then(|x| x.as_str()).unwrap_or("?");
        let resource = v
            .pointer("/objectRef/resource")
            .and_then(|x| x.as_str())
            .unwrap_or("-");
        let key = match v.pointer("/objectRef/subresource").and_then(|x| x.as_str()) {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn print_audit(label: &str, counts: &BTreeMap<String, u64>) {
    let writes: u64 = counts
        .iter()
        .filter(|(k, _)| {
            ["create", "patch", "update", "delete"]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum();
    let line: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "BENCH {label}: {writes} writes; requests: {}",
        line.join(", ")
    );
}

/// The verdicts, counted: both writers must decide the same jobs alike for
/// their writes to compare.
fn print_verdicts(label: &str, decided: &Decided) {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (_, v) in decided.lock().unwrap().values() {
        *by.entry(v.clone()).or_insert(0) += 1;
    }
    println!("BENCH {label}: verdicts {by:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn writers() -> Vec<Writer> {
    let w = std::env::var("BENCH_WRITERS").unwrap_or_else(|_| "operator,null".into());
    let mut out = Vec::new();
    if w.contains("operator") {
        out.push(Writer::Operator);
    }
    if w.contains("null") {
        out.push(Writer::Null);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (see module docs)"]
async fn operator_burst_and_steady_rate() {
    let n = env_or("BENCH_JOBS", 15_000);
    let rate = env_or("BENCH_RATE", 100);
    let steady_secs = env_or("BENCH_STEADY_SECS", 30);
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "burst,steady".into());
    let cluster = Cluster::start_shared().await.unwrap();
    let version = cluster.client().apiserver_version().await.unwrap();
    println!(
        "BENCH on {} (Kubernetes {}, {} kwok nodes)",
        if cluster.require_control_plane().is_ok() {
            "the e2e control plane"
        } else {
            "KOMPTROLLER_E2E_KUBECONFIG's cluster"
        },
        version.git_version,
        std::env::var("KOMPTROLLER_E2E_NODES").unwrap_or_else(|_| "4".into())
    );
    drop(cluster);
    if phases.contains("burst") {
        let mut times = Vec::new();
        for w in writers() {
            times.push((w, burst(w, n).await));
        }
        print_ratio("burst: time until all decided", &times);
    }
    if phases.contains("steady") {
        let mut times = Vec::new();
        for w in writers() {
            times.push((w, steady(w, rate, steady_secs).await));
        }
        print_ratio("steady: submit-to-decision p99", &times);
    }
}

fn print_ratio(what: &str, times: &[(Writer, f64)]) {
    let get = |w| times.iter().find(|(x, _)| *x == w).map(|(_, t)| *t);
    if let (Some(op), Some(null)) = (get(Writer::Operator), get(Writer::Null)) {
        println!(
            "BENCH {what}: operator {op:.2} / null writer {null:.2} = {:.2}x",
            op / null.max(1e-9)
        );
    }
}

/// Creates `n` TrainingJobs at once; returns the seconds until all decided.
async fn burst(writer: Writer, n: u64) -> f64 {
    let r = rig(writer).await;
    let label = format!("burst [{}]", writer.name());
    let cp = r.cluster.require_control_plane().ok();
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
    let pid = r.writer.id().unwrap();
    let since = jiff::Timestamp::now();
    let usage = Usage::start(pid, cp);
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
    let deadline = Instant::now() + Duration::from_secs(900);
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
        .map(|(t, _)| *t)
        .max()
        .map(|t| t.duration_since(t0))
        .unwrap_or_default()
        .as_secs_f64();
    let count = decided.lock().unwrap().len();
    let used = usage.finish();
    print_verdicts(&label, &decided);
    let writer_cpu = used[0].1;
    println!(
        "BENCH {label}: {count}/{n} TrainingJobs decided in {all_decided:.1} s (created in {:.1} s); {} peak RSS {:.1} MiB; CPU {writer_cpu:.2} s = {:.3} CPU-s per 1,000 decisions",
        created.as_secs_f64(),
        writer.name(),
        used[0].2,
        writer_cpu / (count as f64 / 1000.0)
    );
    print_usage(&label, &used, all_decided);
    if let Some(cp) = cp {
        // The audit log is written in batches of up to a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
        print_audit(&label, &audit_counts(cp, since));
    }
    drop(ns);
    drop(r);
    all_decided
}

/// `rate` submissions/s for `steady_secs`; returns the p99 in seconds.
async fn steady(writer: Writer, rate: u64, steady_secs: u64) -> f64 {
    let r = rig(writer).await;
    let label = format!("steady [{}]", writer.name());
    let cp = r.cluster.require_control_plane().ok();
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
    let since = jiff::Timestamp::now();
    let usage = Usage::start(r.writer.id().unwrap(), cp);
    let t0 = Instant::now();
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
    let wall = t0.elapsed().as_secs_f64();
    let used = usage.finish();
    print_verdicts(&label, &decided);
    let sub = submitted.lock().unwrap().clone();
    let dec = decided.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sub
        .iter()
        .filter_map(|(k, s)| dec.get(k).map(|(d, _)| d.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "BENCH {label}: {rate} submissions/s for {steady_secs} s: {}/{total} decided; submit-to-decision p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} peak RSS {:.1} MiB",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        writer.name(),
        used[0].2,
    );
    print_usage(&label, &used, wall);
    if let Some(cp) = cp {
        tokio::time::sleep(Duration::from_secs(2)).await;
        print_audit(&label, &audit_counts(cp, since));
    }
    drop(ns);
    drop(r);
    p99.as_secs_f64()
}
