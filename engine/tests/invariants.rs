//! Property tests for the engine's invariants over random event sequences.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::{Catalog, Precision};
use komptroller_engine::decision::Verdict;
use komptroller_engine::engine::{Engine, Event, Outcome};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use komptroller_engine::ledger::LedgerEvent;
use komptroller_engine::manifest::parse_policies;
use proptest::prelude::*;

const POLICY: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: enforce}
spec:
  mode: Enforce
  tiers:
    - {name: t1, threshold: 1e21, action: Admit}
    - {name: t2, threshold: 5e21, action: Escalate, approvals: {required: 1, groups: [safety]}}
    - {name: t3, threshold: 2e22, action: Reject}
  budgets:
    - {name: ns, scope: Namespace, window: 2d, limit: 8e21, action: Throttle}
  capacity:
    cluster: {maxFlopPerSecond: 2e17, maxAccelerators: 200}
    perNamespace: {maxAccelerators: 120}
---
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: observe}
spec:
  mode: Warn
  namespaceSelector: {matchLabels: {team: a}}
  budgets:
    - {name: model, scope: Model, window: 1d, limit: 3e21, action: Reject}
"#;

const CLUSTER_RATE_CAP: f64 = 2e17;
const CLUSTER_ACC_CAP: u64 = 200;

#[derive(Clone, Debug)]
enum Op {
    Submit {
        ns: u8,
        name: u8,
        lineage: u8,
        base: Option<u8>,
        count: u32,
        hours: u16,
        prio: i8,
    },
    Start(u8, u8),
    Finish(u8, u8, u8),
    Delete(u8, u8),
    Approve(u8, u8, bool),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..12, 0u8..4, proptest::option::of(0u8..4), 1u32..150, 1u16..72, -2i8..3).prop_map(
            |(ns, name, lineage, base, count, hours, prio)| Op::Submit { ns, name, lineage, base, count, hours, prio }
        ),
        3 => (0u8..3, 0u8..12).prop_map(|(a, b)| Op::Start(a, b)),
        3 => (0u8..3, 0u8..12, 0u8..3).prop_map(|(a, b, c)| Op::Finish(a, b, c)),
        1 => (0u8..3, 0u8..12).prop_map(|(a, b)| Op::Delete(a, b)),
        1 => (0u8..3, 0u8..12, any::<bool>()).prop_map(|(a, b, c)| Op::Approve(a, b, c)),
        2 => Just(Op::Tick),
    ]
}

fn id(ns: u8, name: u8) -> JobId {
    JobId {
        namespace: ["a", "b", "c"][ns as usize].into(),
        name: format!("j{name}"),
        uid: format!("u{ns}-{name}"),
    }
}

fn request(
    ns: u8,
    name: u8,
    lineage: u8,
    base: Option<u8>,
    count: u32,
    hours: u16,
    prio: i8,
) -> JobRequest {
    let id = id(ns, name);
    JobRequest {
        namespace_labels: std::sync::Arc::new(std::collections::BTreeMap::from([(
            "team".to_string(),
            id.namespace.clone(),
        )])),
        id,
        model: ModelSpec {
            name: Some(format!("l{lineage}")),
            base_model: base.map(|b| format!("l{b}")),
            ..ModelSpec::default()
        },
        accelerator: AcceleratorSpec {
            kind: "nvidia-h100-sxm".into(),
            precision: Precision::Bf16,
        },
        count,
        max_duration: format!("{hours}h").parse().unwrap(),
        priority: i32::from(prio),
        submitter: Some(Principal {
            user: "alice".into(),
            groups: vec![],
        }),
        spec_hash: String::new(),
    }
}

fn engine() -> Engine {
    let mut e = Engine::new(Catalog::builtin());
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    for p in parse_policies(POLICY, "p").unwrap() {
        e.apply(t0, Event::UpsertPolicy(p)).unwrap();
    }
    e
}

fn to_event(op: &Op) -> Event {
    match op.clone() {
        Op::Submit {
            ns,
            name,
            lineage,
            base,
            count,
            hours,
            prio,
        } => Event::Submit(request(ns, name, lineage, base, count, hours, prio)),
        Op::Start(a, b) => Event::Start { job: id(a, b) },
        Op::Finish(a, b, c) => Event::Finish {
            job: id(a, b),
            outcome: [
                Outcome::Succeeded,
                Outcome::Failed,
                Outcome::DeadlineExceeded,
            ][c as usize],
        },
        Op::Delete(a, b) => Event::Delete { job: id(a, b) },
        Op::Approve(a, b, ok) => Event::Approve {
            job: id(a, b),
            approver: Principal {
                user: if ok {
                    "safety-sam".into()
                } else {
                    "alice".into()
                },
                groups: vec!["safety".into()],
            },
            spec_hash: String::new(),
        },
        Op::Tick => Event::Tick,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Cumulative lineage FLOP (charged and consumed) never decreases; running
    /// compute never exceeds an Enforce cap; a rejected job never runs.
    #[test]
    fn totals_monotone_caps_hold_rejected_never_run(ops in proptest::collection::vec(op(), 1..120)) {
        let mut e = engine();
        let mut now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut last: HashMap<String, (f64, f64)> = HashMap::new();
        let mut rejected: HashSet<JobId> = HashSet::new();
        for op in &ops {
            now = now.checked_add(SignedDuration::from_mins(37)).unwrap();
            if let Op::Submit { ns, name, .. } = op {
                // A resubmission (new uid) is a new job.
                rejected.remove(&id(*ns, *name));
            }
            let Ok(step) = e.apply(now, to_event(op)) else { continue };
            for r in &step.records {
                if let (LedgerEvent::Started, Some(j)) = (&r.event, &r.job) {
                    prop_assert!(!rejected.contains(j), "rejected job {j} started");
                }
            }
            for (j, d) in &step.decisions {
                if d.verdict == Verdict::Reject {
                    rejected.insert(j.clone());
                }
            }
            let (rate, acc) = e.running();
            prop_assert!(rate.0 <= CLUSTER_RATE_CAP * (1.0 + 1e-9), "running {} > cap", rate.0);
            prop_assert!(acc <= CLUSTER_ACC_CAP, "running {acc} accelerators > cap");
            for (l, t) in e.lineages() {
                let prev = last.get(&l).copied().unwrap_or((0.0, 0.0));
                prop_assert!(t.charged.0 >= prev.0, "charged of {l} decreased");
                prop_assert!(t.consumed.0 >= prev.1, "consumed of {l} decreased");
                last.insert(l, (t.charged.0, t.consumed.0));
            }
        }
    }

    /// In any reachable state, a job that projects more FLOP never gets a more
    /// permissive verdict than the same job projecting less.
    #[test]
    fn verdict_monotone_in_projected_flop(
        ops in proptest::collection::vec(op(), 0..60),
        ns in 0u8..3, lineage in 0u8..4, base in proptest::option::of(0u8..4),
        small in 1u32..150, extra in 0u32..150, hours in 1u16..72, more_hours in 0u16..48,
    ) {
        let mut e = engine();
        let mut now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for op in &ops {
            now = now.checked_add(SignedDuration::from_mins(41)).unwrap();
            let _ = e.apply(now, to_event(op));
        }
        let verdict = |count: u32, hours: u16| {
            let mut probe = e.clone();
            let j = request(ns, 200, lineage, base, count, hours, 0);
            let i = j.id.clone();
            probe.apply(now, Event::Submit(j)).unwrap();
            let d = probe.decision(&i).unwrap();
            (d.verdict, d.enforced_verdict)
        };
        let (v1, ev1) = verdict(small, hours);
        let (v2, ev2) = verdict(small + extra, hours + more_hours);
        prop_assert!(v1 <= v2, "{v1:?} for the smaller job, {v2:?} for the larger");
        prop_assert!(ev1 <= ev2, "enforced {ev1:?} for the smaller job, {ev2:?} for the larger");
    }
}
