//! Treaty-audit benchmarks (a bench binary; timings never gate tests),
//! the treaty audit's two targets (BENCHMARKS.md):
//!
//! 1. `reports`: 100 clusters × 365 daily signed reports (reports only)
//!    audited in 60 s or less. Each cluster replays its own trace through
//!    the simulator under the EU AI Act policy (a 1e25 FLOP tier with a
//!    reporting obligation) and signs a chain of daily reports with its own
//!    key; groups of four clusters share a frontier lineage of 4 × 5.95e24
//!    FLOP, so the union crosses 1e25 where no cluster's report does.
//! 2. `ledgers`: 10 clusters × 1,000,000 ledger entries each (the ledger
//!    bench's sample job lifecycles, one seed per cluster, with a chain of
//!    30-day reports signed over it) audited with the ledgers at 1.0 × or
//!    more of `sha256sum`'s throughput over the same files, measured
//!    alternately in the same run.
//!
//! The audit is timed as `komptroller audit` runs it: the trust file and
//! every book file read from disk, then `audit::audit`. Inputs are written
//! once, with the engine's own code, under `target/bench-audit/`
//! (`KOMPTROLLER_BENCH_AUDIT_DIR` to move it) and reused by later runs.
//!
//! Run: `cargo bench -p komptroller-engine --bench audit` (both), or
//! `... --bench audit -- reports` / `-- ledgers`. Sizes:
//! `KOMPTROLLER_BENCH_CLUSTERS` (100), `KOMPTROLLER_BENCH_DAYS` (365),
//! `KOMPTROLLER_BENCH_LEDGER_CLUSTERS` (10), `KOMPTROLLER_BENCH_ENTRIES`
//! (1,000,000), `KOMPTROLLER_BENCH_ROUNDS` (3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::audit::{Aliases, FindingKind};
use komptroller_engine::audit::{AuditReport, AuditRequest, ClusterBooks, audit, parse_trust};
use komptroller_engine::catalog::Catalog;
use komptroller_engine::ledger::{Ledger, sample::sample_records, write_jsonl};
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::report::{NamedInput, SignedReport, sign_report_chain};
use komptroller_engine::signing::{Ed25519SigningKey, public_key_pem, signing_key_from_seed};
use komptroller_engine::simulate::{SimulateOptions, parse_trace, simulate};

// What the CLI runs with (operator/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bumped whenever the generated inputs change, so stale ones are rebuilt.
const GENERATOR: &str = "audit-bench v1";

const START: &str = "2026-01-01T00:00:00Z";

const POLICY: &str = r#"apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata:
  name: eu-ai-act
spec:
  lineage:
    countFineTunesTowardBase: true
  tiers:
    - name: gpai
      threshold: 1e23
      action: Admit
    - name: eu-systemic-risk
      threshold: 1e25
      action: Admit
      reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 14d}
"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_root() -> PathBuf {
    std::env::var_os("KOMPTROLLER_BENCH_AUDIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            workspace
                .canonicalize()
                .unwrap_or(workspace)
                .join("target/bench-audit")
        })
}

fn cluster_name(i: usize) -> String {
    format!("c{i:03}")
}

/// A distinct key per cluster (and per data set).
fn cluster_key(set: u8, i: usize) -> Ed25519SigningKey {
    let mut seed = [0u8; 32];
    seed[0] = set;
    seed[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    signing_key_from_seed(&seed)
}

/// CPU seconds (user + system) this process has used, from /proc (Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A data set's directory: reused when its `complete` marker matches.
struct DataSet {
    dir: PathBuf,
    clusters: usize,
}

impl DataSet {
    fn complete(&self, what: &str) -> bool {
        std::fs::read_to_string(self.dir.join("complete")).is_ok_and(|s| s == what)
    }

    fn books(&self, i: usize) -> PathBuf {
        self.dir.join("books").join(cluster_name(i))
    }
}

fn write_reports(dir: &Path, chain: &[SignedReport]) {
    std::fs::create_dir_all(dir).unwrap();
    for r in chain {
        let name = format!(
            "report-{:012}-{}.json",
            r.report.range.to,
            r.report.period.to.strftime("%Y%m%dT%H%M%SZ")
        );
        std::fs::write(dir.join(name), r.canonical_bytes().unwrap()).unwrap();
    }
}

/// `trust.yaml` naming every cluster with its key file under `keys/`.
fn write_trust(set: &DataSet, key_set: u8, report_every: &str, thresholds: &str) {
    let keys = set.dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut trust = String::from("clusters:\n");
    for i in 0..set.clusters {
        let name = cluster_name(i);
        let pem = public_key_pem(&cluster_key(key_set, i).verifying_key()).unwrap();
        std::fs::write(keys.join(format!("{name}.pem")), pem).unwrap();
        trust.push_str(&format!(
            "  - name: {name}\n    reportEvery: {report_every}\n    keys: [keys/{name}.pem]\n"
        ));
    }
    trust.push_str(thresholds);
    std::fs::write(set.dir.join("trust.yaml"), trust).unwrap();
}

/// One submission of the trace, `at_h` hours after the start.
fn job(name: &str, model: &str, count: u32, runtime: &str, at_h: u64) -> String {
    format!(
        "  - at: {at_h}h\n    submit: {{name: {name}, namespace: lab, submitter: ana, groups: [lab], \
model: {{name: {model}}}, accelerator: {{type: nvidia-h100-sxm, precision: bf16}}, \
count: {count}, maxDuration: {runtime}, runtime: {runtime}}}\n"
    )
}

/// Cluster `i`'s trace for the reports data set: its share of a frontier
/// run (2048 H100 for 34 days, 5.95e24 FLOP; four clusters share each
/// frontier lineage) and 120 smaller jobs of its own lineages over the year.
fn reports_trace(i: usize, days: u64) -> String {
    let hours = days * 24;
    let mut jobs = Vec::new();
    let frontier_at = (i as u64 * 37) % (hours.saturating_sub(35 * 24).max(1));
    jobs.push(job(
        &format!("frontier-share-{i}"),
        &format!("frontier-{}", i / 4),
        2048,
        "34d",
        frontier_at,
    ));
    for k in 0..120u64 {
        let at = (k * 73 + i as u64 * 13) % hours.saturating_sub(50).max(1);
        let count = 8 * (1 + (k + i as u64) % 16) as u32;
        let runtime = format!("{}h", 1 + (k * 7 + i as u64) % 48);
        jobs.push(job(
            &format!("run-{k}"),
            &format!("{}-m{}", cluster_name(i), k % 5),
            count,
            &runtime,
            at,
        ));
    }
    format!(
        "start: {START}\nnamespaces: {{lab: {{team: lab}}}}\nevents:\n{}",
        jobs.concat()
    )
}

fn generate_reports_set(set: &DataSet, days: usize) {
    let what = format!("{GENERATOR}: reports {} × {days}\n", set.clusters);
    if set.complete(&what) {
        println!("inputs: reusing {}", set.dir.display());
        return;
    }
    println!("inputs: generating {} (once) ...", set.dir.display());
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(&set.dir);
    std::fs::create_dir_all(&set.dir).unwrap();
    let policies = parse_policies(POLICY, "policy").unwrap();
    let start: Timestamp = START.parse().unwrap();
    let until = start
        .checked_add(SignedDuration::from_hours(24 * days as i64))
        .unwrap();
    let mut reports = 0;
    for i in 0..set.clusters {
        let trace = parse_trace(&reports_trace(i, days as u64), "trace").unwrap();
        let sim = simulate(
            Catalog::builtin(),
            policies.clone(),
            &trace,
            &SimulateOptions {
                timeline: false,
                records: true,
            },
        )
        .unwrap();
        let mut ledger = Ledger::new();
        for r in &sim.records {
            ledger.append(r.clone()).unwrap();
        }
        let key = cluster_key(1, i);
        let chain = sign_report_chain(
            ledger.entries(),
            &sim.policies,
            start,
            Duration::from_secs(86_400),
            until,
            |_| &key,
        )
        .unwrap();
        reports += chain.len();
        write_reports(&set.books(i), &chain);
    }
    write_trust(set, 1, "1d", "");
    std::fs::write(set.dir.join("as-of"), until.to_string()).unwrap();
    std::fs::write(set.dir.join("complete"), &what).unwrap();
    println!(
        "inputs: {} clusters, {reports} reports, written in {:.1?}",
        set.clusters,
        t.elapsed()
    );
}

fn generate_ledgers_set(set: &DataSet, entries: usize) {
    let what = format!("{GENERATOR}: ledgers {} × {entries}\n", set.clusters);
    if set.complete(&what) {
        println!("inputs: reusing {}", set.dir.display());
        return;
    }
    println!(
        "inputs: generating {} (once; minutes) ...",
        set.dir.display()
    );
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(&set.dir);
    std::fs::create_dir_all(&set.dir).unwrap();
    let start: Timestamp = START.parse().unwrap();
    let every = Duration::from_secs(30 * 86_400);
    let mut as_of = start;
    for i in 0..set.clusters {
        let records = sample_records(entries, 1000 + i as u64, start);
        let mut ledger = Ledger::new();
        for r in records {
            ledger.append(r).unwrap();
        }
        let key = cluster_key(2, i);
        let chain =
            sign_report_chain(ledger.entries(), &[], start, every, start, |_| &key).unwrap();
        as_of = as_of.max(chain.last().map_or(start, |r| r.report.period.to));
        let dir = set.books(i);
        write_reports(&dir.join("reports"), &chain);
        let mut bytes = Vec::with_capacity(entries * 700);
        write_jsonl(ledger.entries(), &mut bytes).unwrap();
        std::fs::write(dir.join("ledger.jsonl"), &bytes).unwrap();
        println!(
            "  {}: {} entries, {} reports, {:.1} MB ({:.1?})",
            cluster_name(i),
            entries,
            chain.len(),
            bytes.len() as f64 / 1e6,
            t.elapsed()
        );
    }
    // The auditor's own threshold: the sample's policies carry none, so
    // every merged lineage is checked against this one.
    write_trust(
        set,
        2,
        "30d",
        "thresholds:\n  - {regulation: \"treaty Art. 4\", threshold: 1e26, notifyWithin: 30d}\n",
    );
    std::fs::write(set.dir.join("as-of"), as_of.to_string()).unwrap();
    std::fs::write(set.dir.join("complete"), &what).unwrap();
    println!("inputs: written in {:.1?}", t.elapsed());
}

/// Every file below `dir`, sorted (as `komptroller audit` walks a directory).
fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            files_below(&e, out);
        } else {
            out.push(e);
        }
    }
}

/// A cluster's book files, read.
struct Read {
    cluster: String,
    reports: Vec<(String, Vec<u8>)>,
    ledger: Option<(String, Vec<u8>)>,
}

/// What `komptroller audit --trust DIR/trust.yaml --books NAME=DIR/books/NAME ...`
/// does: read the trust file, its key files and every book file, then audit.
/// Returns (the report, seconds reading, seconds auditing).
fn run_audit(set: &DataSet) -> (AuditReport, f64, f64) {
    let t = Instant::now();
    let trust_text = std::fs::read_to_string(set.dir.join("trust.yaml")).unwrap();
    let trust = parse_trust(&trust_text, "trust.yaml", |p| {
        std::fs::read_to_string(set.dir.join(p)).map_err(|e| e.to_string())
    })
    .unwrap();
    let read: Vec<Read> = (0..set.clusters)
        .map(|i| {
            let mut files = Vec::new();
            files_below(&set.books(i), &mut files);
            let mut r = Read {
                cluster: cluster_name(i),
                reports: Vec::new(),
                ledger: None,
            };
            for f in files {
                let shown = f.display().to_string();
                match f.extension().and_then(|e| e.to_str()) {
                    Some("json") => r.reports.push((shown, std::fs::read(&f).unwrap())),
                    Some("jsonl") => r.ledger = Some((shown, std::fs::read(&f).unwrap())),
                    _ => {}
                }
            }
            r
        })
        .collect();
    let reading = t.elapsed().as_secs_f64();
    let books: Vec<ClusterBooks<'_>> = read
        .iter()
        .map(|b| ClusterBooks {
            cluster: &b.cluster,
            reports: b
                .reports
                .iter()
                .map(|(name, bytes)| NamedInput { name, bytes })
                .collect(),
            ledger: b
                .ledger
                .as_ref()
                .map(|(name, bytes)| NamedInput { name, bytes }),
        })
        .collect();
    let as_of: Timestamp = std::fs::read_to_string(set.dir.join("as-of"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = Instant::now();
    let report = audit(&AuditRequest {
        trust: &trust,
        aliases: &Aliases::none(),
        books: &books,
        as_of,
        trust_digest: None,
        aliases_digest: None,
    })
    .unwrap();
    let auditing = t.elapsed().as_secs_f64();
    (report, reading, auditing)
}

/// The audit must have verified every cluster: a benchmark of failures
/// measures nothing.
fn check(report: &AuditReport, clusters: usize) {
    let s = &report.summary;
    if s.verified != clusters as u64 || s.failed != 0 {
        let failures: Vec<String> = report
            .clusters
            .iter()
            .filter_map(|c| c.failure.as_ref().map(|f| f.message.clone()))
            .take(3)
            .collect();
        panic!(
            "the benchmark's books must verify: {} of {clusters} verified; {failures:?}",
            s.verified
        );
    }
}

fn book_files(set: &DataSet) -> (Vec<PathBuf>, u64) {
    let mut files = Vec::new();
    for i in 0..set.clusters {
        files_below(&set.books(i), &mut files);
    }
    files.retain(|f| {
        matches!(
            f.extension().and_then(|e| e.to_str()),
            Some("json" | "jsonl")
        )
    });
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    (files, bytes)
}

/// `sha256sum` over `files` (one process, as a person would run it), timed
/// by bash: (wall, user + system CPU) seconds.
fn time_sha256sum(files: &[PathBuf]) -> Option<(f64, f64)> {
    let list = files
        .iter()
        .map(|f| format!("'{}'", f.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!("TIMEFORMAT='%R %U %S'; time sha256sum {list} > /dev/null");
    let o = Command::new("bash").arg("-c").arg(script).output().ok()?;
    if !o.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let v: Vec<f64> = err
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [r, u, s] => Some((r, u + s)),
        _ => None,
    }
}

fn cli_command(set: &DataSet) -> String {
    let mut cmd = format!(
        "komptroller audit --trust {} --at {}",
        set.dir.join("trust.yaml").display(),
        std::fs::read_to_string(set.dir.join("as-of"))
            .unwrap_or_default()
            .trim()
    );
    for i in 0..set.clusters {
        cmd.push_str(&format!(
            " --books {}={}",
            cluster_name(i),
            set.books(i).display()
        ));
    }
    cmd
}

fn summary_line(report: &AuditReport) -> String {
    let s = &report.summary;
    let unions = report
        .findings
        .iter()
        .filter(|f| matches!(f.detail, FindingKind::UnionCrossing { .. }))
        .count();
    format!(
        "{} clusters verified, {} failed; {} findings ({unions} union crossings); {} merged lineages; exit code {}",
        s.verified,
        s.failed,
        s.findings,
        report.lineages.len(),
        s.exit_code
    )
}

fn bench_reports(rounds: usize) {
    let clusters = env_usize("KOMPTROLLER_BENCH_CLUSTERS", 100);
    let days = env_usize("KOMPTROLLER_BENCH_DAYS", 365);
    let set = DataSet {
        dir: bench_root().join(format!("reports-{clusters}x{days}")),
        clusters,
    };
    println!(
        "== reports only: {clusters} clusters × {days} daily reports (target: audited in <= 60 s)"
    );
    generate_reports_set(&set, days);
    let (files, bytes) = book_files(&set);
    println!(
        "books: {} report files, {:.1} MB",
        files.len(),
        bytes as f64 / 1e6
    );
    let (mut totals, mut audits, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let c0 = cpu_seconds();
        let (report, reading, auditing) = run_audit(&set);
        let c1 = cpu_seconds();
        check(&report, clusters);
        if round == 0 {
            println!("audit: {}", summary_line(&report));
        }
        let cpu = c0.zip(c1).map(|(a, b)| b - a);
        println!(
            "  round {}: {:.2} s (reading {reading:.2} s, audit {auditing:.2} s), CPU {}, load {}",
            round + 1,
            reading + auditing,
            cpu.map_or("?".into(), |c| format!("{c:.2} s")),
            load_average()
        );
        totals.push(reading + auditing);
        audits.push(auditing);
        if let Some(c) = cpu {
            cpus.push(c);
        }
    }
    let total = median(&mut totals);
    println!(
        "reports only: median {total:.2} s wall (audit alone {:.2} s; {:.0} reports/s), CPU {:.2} s; target <= 60 s: {}",
        median(&mut audits),
        files.len() as f64 / total,
        if cpus.is_empty() {
            f64::NAN
        } else {
            median(&mut cpus)
        },
        if total <= 60.0 { "met" } else { "MISSED" }
    );
    println!(
        "the same through the CLI: /usr/bin/time -v {} > /dev/null",
        cli_command(&set)
    );
}

fn bench_ledgers(rounds: usize) {
    let clusters = env_usize("KOMPTROLLER_BENCH_LEDGER_CLUSTERS", 10);
    let entries = env_usize("KOMPTROLLER_BENCH_ENTRIES", 1_000_000);
    let set = DataSet {
        dir: bench_root().join(format!("ledgers-{clusters}x{entries}")),
        clusters,
    };
    println!(
        "== with ledgers: {clusters} clusters × {entries} entries (target: >= 1.0 × sha256sum over the same files)"
    );
    generate_ledgers_set(&set, entries);
    let (files, bytes) = book_files(&set);
    let mb = bytes as f64 / 1e6;
    println!("books: {} files, {mb:.1} MB", files.len());
    let (mut sha, mut sha_cpu, mut full, mut full_cpu, mut alone) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let s = time_sha256sum(&files);
        match s {
            Some((wall, cpu)) => {
                sha.push(mb / wall);
                sha_cpu.push(mb / cpu.max(0.01));
            }
            None => println!("sha256sum (or bash) is not available: no baseline"),
        }
        let c0 = cpu_seconds();
        let (report, reading, auditing) = run_audit(&set);
        let c1 = cpu_seconds();
        check(&report, clusters);
        if round == 0 {
            println!("audit: {}", summary_line(&report));
        }
        let wall = reading + auditing;
        let cpu = c0.zip(c1).map(|(a, b)| b - a);
        println!(
            "  round {}: sha256sum {}; audit {wall:.2} s (reading {reading:.2} s, audit {auditing:.2} s) = {:.0} MB/s, CPU {}; load {}",
            round + 1,
            s.map_or("?".into(), |(w, c)| format!(
                "{w:.2} s = {:.0} MB/s (CPU {c:.2} s)",
                mb / w
            )),
            mb / wall,
            cpu.map_or("?".into(), |c| format!("{c:.2} s")),
            load_average()
        );
        full.push(mb / wall);
        alone.push(mb / auditing);
        if let Some(c) = cpu {
            full_cpu.push(mb / c.max(0.01));
        }
        drop(report);
    }
    let full_m = median(&mut full);
    println!(
        "audit with ledgers (reading + audit): median {full_m:.0} MB/s wall ({:.0} MB/s audit alone, bytes in memory), {:.0} MB/s per CPU-second",
        median(&mut alone),
        if full_cpu.is_empty() {
            f64::NAN
        } else {
            median(&mut full_cpu)
        }
    );
    if !sha.is_empty() {
        let sha_m = median(&mut sha);
        let sha_c = median(&mut sha_cpu);
        println!(
            "sha256sum over the same files: median {sha_m:.0} MB/s wall, {sha_c:.0} MB/s per CPU-second"
        );
        let ratio = full_m / sha_m;
        println!(
            "ratio audit / sha256sum: {ratio:.2} wall (target >= 1.0: {}); {:.2} per CPU-second",
            if ratio >= 1.0 { "met" } else { "MISSED" },
            if full_cpu.is_empty() {
                f64::NAN
            } else {
                median(&mut full_cpu) / sha_c
            }
        );
    }
    println!(
        "the same through the CLI: /usr/bin/time -v {} > /dev/null",
        cli_command(&set)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; the first other argument picks the case.
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let rounds = env_usize("KOMPTROLLER_BENCH_ROUNDS", 3).max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "treaty audit benchmark: {rounds} rounds, {threads} hardware threads, load {}",
        load_average()
    );
    if matches!(which.as_str(), "all" | "reports") {
        bench_reports(rounds);
    }
    if matches!(which.as_str(), "all" | "ledgers") {
        bench_ledgers(rounds);
    }
}
