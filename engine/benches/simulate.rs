//! `simulate` of a generated trace: wall time and peak memory (BENCHMARKS.md's
//! target for 1,000,000 submissions: ≤ 10 s and ≤ 1 GiB on 2 cores).
//!
//! `cargo bench -p komptroller-engine --bench simulate -- [SUBMISSIONS] [SEED]`
//!
//! The same run through the CLI:
//! `komptroller gen-trace --submissions 1000000 -o trace.jsonl &&
//!  /usr/bin/time -v komptroller simulate --trace trace.jsonl --summary-only`

// The allocator the komptroller binary uses (operator/src/main.rs), so this
// measures what `komptroller simulate` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::BufReader;
use std::time::Instant;

use komptroller_engine::catalog::Catalog;
use komptroller_engine::simulate::{
    SimulateOptions, generate_trace, read_jsonl_trace, simulate_stream,
};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let path = std::env::temp_dir().join(format!("komptroller-trace-{n}-{seed}.jsonl"));
    let t = Instant::now();
    let file = std::fs::File::create(&path).unwrap();
    let mut w = std::io::BufWriter::new(file);
    generate_trace(n, seed, &mut w).unwrap();
    std::io::Write::flush(&mut w).unwrap();
    drop(w);
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "generated {n} submissions (seed {seed}) in {:.2?}: {} MiB",
        t.elapsed(),
        size / (1 << 20)
    );

    let t = Instant::now();
    let file = std::fs::File::open(&path).unwrap();
    let (header, events) = read_jsonl_trace(BufReader::new(file), "trace").unwrap();
    let sim = simulate_stream(
        Catalog::builtin(),
        Vec::new(),
        &header,
        events,
        &SimulateOptions {
            timeline: false,
            records: false,
        },
    )
    .unwrap();
    let wall = t.elapsed();
    let s = &sim.summary;
    println!(
        "simulate: {} submissions, {} admitted, {} rejected, {} queued, {} awaiting approval, {} ledger records, max queue depth {}",
        s.submissions,
        s.admitted,
        s.rejected,
        s.still_queued,
        s.awaiting_approval,
        s.ledger_records,
        s.max_queue_depth
    );
    println!(
        "simulate wall time {:.2?} ({:.0} submissions/s); peak RSS {:.0} MiB",
        wall,
        n as f64 / wall.as_secs_f64(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    let _ = std::fs::remove_file(&path);
}
