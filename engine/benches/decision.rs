//! One decision with 10,000 running jobs under 20 tiers, budgets and caps,
//! with 0 and with 1,000,000 jobs of history (targets in BENCHMARKS.md: median
//! ≤ 5 µs, and no more than 2× slower with the history).
//!
//! `cargo bench -p komptroller-engine --bench decision`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::{Catalog, Precision};
use komptroller_engine::engine::{Engine, Event, Outcome};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use komptroller_engine::manifest::parse_policies;

/// 8 tiers + 10 budgets + 2 caps = 20 rules.
const POLICY: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: bench}
spec:
  tiers:
    - {name: t1, threshold: 1e20, action: Admit}
    - {name: t2, threshold: 1e21, action: Admit}
    - {name: t3, threshold: 1e22, action: Admit}
    - {name: t4, threshold: 1e23, action: Admit}
    - {name: t5, threshold: 1e24, action: Admit}
    - {name: t6, threshold: 1e25, action: Escalate, approvals: {required: 2, groups: [safety]}, reporting: {regulation: EU, notifyWithin: 14d}}
    - {name: t7, threshold: 1e26, action: Reject}
    - {name: t8, threshold: 1e27, action: Reject}
  budgets:
    - {name: ns-1d, scope: Namespace, window: 1d, limit: 1e30}
    - {name: ns-7d, scope: Namespace, window: 7d, limit: 1e30}
    - {name: ns-30d, scope: Namespace, window: 30d, limit: 1e30}
    - {name: ns-90d, scope: Namespace, window: 90d, limit: 1e30}
    - {name: model-7d, scope: Model, window: 7d, limit: 1e30}
    - {name: model-30d, scope: Model, window: 30d, limit: 1e30}
    - {name: model-90d, scope: Model, window: 90d, limit: 1e30}
    - {name: cluster-1d, scope: Cluster, window: 1d, limit: 1e31}
    - {name: cluster-30d, scope: Cluster, window: 30d, limit: 1e31}
    - {name: cluster-365d, scope: Cluster, window: 365d, limit: 1e32}
  capacity:
    cluster: {maxFlopPerSecond: 1e24, maxAccelerators: 10000000}
    perNamespace: {maxFlopPerSecond: 1e23, maxAccelerators: 1000000}
"#;

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn request(i: u64) -> JobRequest {
    JobRequest {
        id: JobId {
            namespace: format!("team-{}", i % 100),
            name: format!("job-{i}"),
            uid: format!("uid-{i}"),
        },
        namespace_labels: Default::default(),
        model: ModelSpec {
            name: Some(format!("lineage-{}", i % 1000)),
            ..ModelSpec::default()
        },
        accelerator: AcceleratorSpec {
            kind: "nvidia-h100-sxm".into(),
            precision: Precision::Bf16,
        },
        count: 8,
        max_duration: "2h".parse().unwrap(),
        priority: 0,
        submitter: Some(Principal {
            user: "alice".into(),
            groups: vec![],
        }),
        spec_hash: format!("{i:064x}"),
    }
}

/// An engine with `history` ended jobs and 10,000 running ones.
fn engine_with(history: u64) -> (Engine, Timestamp) {
    let mut e = Engine::new(Catalog::builtin());
    for p in parse_policies(POLICY, "bench").unwrap() {
        e.apply(t0(), Event::UpsertPolicy(p)).unwrap();
    }
    // History spread over a year: one job every ~31 s.
    let step = SignedDuration::from_millis(31_536_000_000 / history.max(1) as i64);
    let mut now = t0();
    for i in 0..history {
        let r = request(i);
        let id = r.id.clone();
        e.apply(now, Event::Submit(r)).unwrap();
        e.apply(now, Event::Start { job: id.clone() }).unwrap();
        e.apply(
            now,
            Event::Finish {
                job: id,
                outcome: Outcome::Succeeded,
            },
        )
        .unwrap();
        now = now.checked_add(step).unwrap();
    }
    for i in history..history + 10_000 {
        let r = request(i);
        let id = r.id.clone();
        e.apply(now, Event::Submit(r)).unwrap();
        e.apply(now, Event::Start { job: id }).unwrap();
    }
    assert_eq!(
        e.running().1,
        80_000,
        "10,000 jobs × 8 accelerators running"
    );
    (e, now)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for (label, history) in [
        ("10k running, no history", 0u64),
        ("10k running, 1M history", 1_000_000),
    ] {
        let (engine, now) = engine_with(history);
        let probe = request(50_000_000);
        group.bench_function(format!("preview ({label})"), |b| {
            b.iter(|| black_box(engine.preview(now, black_box(&probe))))
        });
        let mut e = engine.clone();
        let mut i = 60_000_000u64;
        group.bench_function(format!("submit+delete ({label})"), |b| {
            b.iter(|| {
                let r = request(i);
                let id = r.id.clone();
                i += 1;
                e.apply(now, Event::Submit(r)).unwrap();
                e.apply(now, Event::Delete { job: id }).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
