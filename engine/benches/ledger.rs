//! Ledger benchmarks (a bench binary; timings never gate tests):
//!
//! 1. append latency: every `Ledger::append` timed on its own; median and tails;
//! 2. verifying a 1,000,000-entry ledger (`verify_report` with the ledger:
//!    chain, canonical form, Merkle root, totals, signature — what
//!    `komptroller verify --ledger` does) against `sha256sum` over the same
//!    canonical bytes (`ledger.jsonl` in a temp file), measured alternately
//!    in one run.
//!
//! Run: `cargo bench -p komptroller-engine --bench ledger`
//! (`KOMPTROLLER_BENCH_ENTRIES=N` to change the size, `KOMPTROLLER_BENCH_ROUNDS=R`.)

use std::process::Command;
use std::time::{Duration, Instant};

use komptroller_engine::ledger::{Ledger, sample::sample_records, verify_jsonl_facts};
use komptroller_engine::report::{
    BodyBuilder, NamedInput, Period, VerifyRequest, build_report, verify_report,
};
use komptroller_engine::signing::{public_key_pem, signing_key_from_seed};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) this process has used, from /proc (Linux);
/// robust to other load on the machine, unlike wall time.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `sha256sum FILE` timed by bash: (wall, user + system CPU) seconds.
fn time_sha256sum(file: &std::path::Path) -> Option<(f64, f64)> {
    let script = format!(
        "TIMEFORMAT='%R %U %S'; time sha256sum '{}' > /dev/null",
        file.display()
    );
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let n = env_usize("KOMPTROLLER_BENCH_ENTRIES", 1_000_000);
    let rounds = env_usize("KOMPTROLLER_BENCH_ROUNDS", 5);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("ledger benchmark: {n} entries, {rounds} rounds, {threads} hardware threads");

    let records = sample_records(n, 2026, "2026-01-01T00:00:00Z".parse().unwrap_or_default());
    let mut ledger = Ledger::new();
    let mut lat = Vec::with_capacity(n);
    let t_all = Instant::now();
    for r in records {
        let t = Instant::now();
        let e = ledger.append(r);
        lat.push(t.elapsed());
        if e.is_err() {
            eprintln!("append failed");
            return;
        }
    }
    let total = t_all.elapsed();
    lat.sort();
    println!(
        "append: median {:?}, p90 {:?}, p99 {:?}, max {:?}; {:.2} µs/entry overall",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        total.as_secs_f64() * 1e6 / n as f64
    );

    let key = signing_key_from_seed(&[7; 32]);
    let entries = ledger.entries();
    let Ok(body) = build_report(entries, &[], Period::covering(entries), None) else {
        eprintln!("build_report failed");
        return;
    };
    let Ok(report) = body.sign(&key) else {
        eprintln!("sign failed");
        return;
    };
    let Ok(report_bytes) = report.canonical_bytes() else {
        return;
    };
    let Ok(pem) = public_key_pem(&key.verifying_key()) else {
        return;
    };
    let mut bytes = Vec::with_capacity(n * 700);
    if ledger.write_jsonl(&mut bytes).is_err() {
        return;
    }
    let mb = bytes.len() as f64 / 1e6;
    println!(
        "ledger.jsonl: {:.1} MB, {} bytes/entry",
        mb,
        bytes.len() / n.max(1)
    );
    let dir = std::env::temp_dir().join(format!("komptroller-ledger-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("ledger.jsonl");
    if std::fs::write(&file, &bytes).is_err() {
        eprintln!("cannot write {}", file.display());
        return;
    }
    drop(ledger);

    let (mut sha, mut sha_cpu, mut full, mut full_cpu, mut chain1) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        match time_sha256sum(&file) {
            Some((wall, cpu)) => {
                sha.push(mb / wall);
                sha_cpu.push(mb / cpu.max(0.01));
            }
            None => println!("sha256sum (or bash) is not available: no baseline"),
        }
        let req = VerifyRequest {
            report: NamedInput {
                name: "report.json",
                bytes: &report_bytes,
            },
            public_keys: &[NamedInput {
                name: "public-key.pem",
                bytes: pem.as_bytes(),
            }],
            ledger: Some(NamedInput {
                name: "ledger.jsonl",
                bytes: &bytes,
            }),
            previous: None,
            entry: None,
            allow_longer_ledger: false,
        };
        let c0 = cpu_seconds();
        let t = Instant::now();
        let ok = verify_report(&req).is_ok();
        let s = t.elapsed().as_secs_f64();
        let c1 = cpu_seconds();
        assert!(ok, "the benchmark ledger must verify");
        full.push(mb / s);
        if let (Some(a), Some(b)) = (c0, c1) {
            full_cpu.push(mb / (b - a).max(0.01));
        }
        // The line checks alone, single-threaded, for comparison with single-threaded sha256sum.
        let t = Instant::now();
        let ok = verify_jsonl_facts(&bytes, 1, |_| {}).is_ok();
        let s = t.elapsed().as_secs_f64();
        assert!(ok);
        chain1.push(mb / s);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Where the time of one full verification goes: the line checks with
    // nothing done per entry, then the same pass feeding the report
    // computation, then the Merkle root and the rest of the body.
    let t = Instant::now();
    let chain = verify_jsonl_facts(&bytes, threads, |_| {});
    let t_chain = t.elapsed();
    let mut builder = BodyBuilder::new(report.report.period, Default::default(), vec![], None);
    let t = Instant::now();
    let fed = verify_jsonl_facts(&bytes, threads, |e| {
        builder.push_leaf(e.seq, &e.hash, e.leaf, &e.facts)
    });
    let t_fed = t.elapsed();
    let t = Instant::now();
    let root = builder.merkle_root();
    let t_merkle = t.elapsed();
    let t = Instant::now();
    let body = builder.finish();
    let t_finish = t.elapsed();
    println!(
        "breakdown: line checks only {t_chain:?} ({threads} threads); with the report computation fed in order {t_fed:?}; Merkle root {t_merkle:?}; finishing the body {t_finish:?} (ok: {}, {}, {}, {})",
        chain.is_ok(),
        fed.is_ok(),
        root == report.report.merkle_root,
        body.is_ok()
    );
    // SHA-256 alone over the same bytes, one thread (SHA-NI when the CPU has it).
    let t = Instant::now();
    let digest = komptroller_engine::ledger::Sha256Digest::of(&bytes);
    let s = t.elapsed().as_secs_f64();
    println!(
        "SHA-256 (sha2 crate) over the same bytes, 1 thread: {:.0} MB/s ({})",
        mb / s,
        &digest.to_hex()[..8]
    );
    let full_m = median(&mut full);
    let chain1_m = median(&mut chain1);
    println!(
        "verify (the `komptroller verify --ledger` path, {threads} threads): median {full_m:.0} MB/s wall, {:.2} s per million entries",
        mb / full_m * 1e6 / n as f64
    );
    if !full_cpu.is_empty() {
        println!(
            "verify per CPU-second (user+sys, all threads):      median {:.0} MB/s",
            median(&mut full_cpu)
        );
    }
    println!("chain check only, 1 thread:                          median {chain1_m:.0} MB/s wall");
    if !sha.is_empty() {
        let sha_m = median(&mut sha);
        let sha_c = median(&mut sha_cpu);
        println!(
            "sha256sum over the same bytes:                       median {sha_m:.0} MB/s wall, {sha_c:.0} MB/s per CPU-second"
        );
        println!(
            "ratio verify / sha256sum: {:.2} wall (target >= 0.5); {:.2} per CPU-second",
            full_m / sha_m,
            if full_cpu.is_empty() {
                f64::NAN
            } else {
                median(&mut full_cpu) / sha_c
            }
        );
    }
}
