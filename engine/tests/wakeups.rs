//! The engine's wake-up index (which queued jobs a finish re-evaluates) and
//! its quick re-check (a finish or a tick refiles a waiter that a budget or a
//! cap still holds back, from its budgets' windows and the current usage,
//! without evaluating it) against the reference that
//! re-evaluates every job queued on a cap at every finish and every due
//! budget waiter at every tick: over random event sequences and policies,
//! both must produce exactly the same ledger records, decisions, phases,
//! queue and next wake-up.

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::{Catalog, Precision};
use komptroller_engine::engine::{Engine, Event, Outcome, Phase};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use komptroller_engine::manifest::parse_policies;
use proptest::prelude::*;

/// Policy sets: tiers and namespace/model budgets under one cluster cap;
/// two Enforce cluster caps and a Warn one; a cluster budget; per-namespace
/// caps only; looser versions of the first and the fourth.
const POLICIES: [&str; 5] = [
    r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: enforce}
spec:
  tiers:
    - {name: t1, threshold: 1e21, action: Admit}
    - {name: t2, threshold: 4e21, action: Escalate, approvals: {required: 1, groups: [safety]}}
    - {name: t3, threshold: 1.5e22, action: Reject}
  lineage:
    modification: {name: mod, fractionOfBase: 0.5, action: Escalate, approvals: {required: 1, groups: [safety]}}
  budgets:
    - {name: ns, scope: Namespace, window: 1d, limit: 3e21, action: Throttle}
    - {name: model, scope: Model, window: 2d, limit: 5e21, action: Throttle}
  capacity:
    cluster: {maxAccelerators: 160}
    perNamespace: {maxAccelerators: 100}
"#,
    r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: big}
spec:
  budgets:
    - {name: ns, scope: Namespace, window: 12h, limit: 2e21, action: Escalate, approvals: {required: 1, groups: [safety]}}
  capacity:
    cluster: {maxAccelerators: 200}
---
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: small}
spec:
  namespaceSelector: {matchLabels: {team: a}}
  capacity:
    cluster: {maxAccelerators: 120}
---
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: watch}
spec:
  mode: Warn
  capacity:
    cluster: {maxAccelerators: 60}
"#,
    r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: cluster-budget}
spec:
  budgets:
    - {name: all, scope: Cluster, window: 1d, limit: 6e21, action: Throttle}
  capacity:
    cluster: {maxAccelerators: 150, maxFlopPerSecond: 1.2e17}
"#,
    r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: per-namespace}
spec:
  tiers:
    - {name: t2, threshold: 6e21, action: Reject}
  capacity:
    perNamespace: {maxAccelerators: 90}
"#,
    // The first and the last set's policies again with looser caps, so that
    // an upsert mid-stream can also let waiters fit sooner.
    r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: enforce}
spec:
  budgets:
    - {name: ns, scope: Namespace, window: 1d, limit: 3e21, action: Throttle}
  capacity:
    cluster: {maxAccelerators: 260}
    perNamespace: {maxAccelerators: 150}
---
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: per-namespace}
spec:
  capacity:
    perNamespace: {maxAccelerators: 140}
"#,
];

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
    FinishedAt(u8, u8, u8),
    Delete(u8, u8),
    Approve(u8, u8),
    Tick,
    /// Upserts one policy of another set mid-stream (new caps, budgets,
    /// tiers: every waiter's slack and budgets change and it is refiled).
    Policy(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..3, 0u8..16, 0u8..4, proptest::option::of(0u8..4), 1u32..110, 1u16..48, -1i8..2).prop_map(
            |(ns, name, lineage, base, count, hours, prio)| Op::Submit { ns, name, lineage, base, count, hours, prio }
        ),
        3 => (0u8..3, 0u8..16).prop_map(|(a, b)| Op::Start(a, b)),
        3 => (0u8..3, 0u8..16, 0u8..3).prop_map(|(a, b, c)| Op::Finish(a, b, c)),
        1 => (0u8..3, 0u8..16, 0u8..3).prop_map(|(a, b, c)| Op::FinishedAt(a, b, c)),
        1 => (0u8..3, 0u8..16).prop_map(|(a, b)| Op::Delete(a, b)),
        1 => (0u8..3, 0u8..16).prop_map(|(a, b)| Op::Approve(a, b)),
        2 => Just(Op::Tick),
        1 => (0u8..4, 0u8..3).prop_map(|(k, i)| Op::Policy(k, i)),
    ]
}

fn id(ns: u8, name: u8) -> JobId {
    JobId {
        namespace: ["a", "b", "c"][ns as usize].into(),
        name: format!("j{name}"),
        uid: format!("u{ns}-{name}"),
    }
}

fn outcome(c: u8) -> Outcome {
    [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::DeadlineExceeded,
    ][c as usize % 3]
}

fn to_event(op: &Op, now: Timestamp) -> Event {
    match op.clone() {
        Op::Submit {
            ns,
            name,
            lineage,
            base,
            count,
            hours,
            prio,
        } => {
            let id = id(ns, name);
            Event::Submit(JobRequest {
                namespace_labels: std::sync::Arc::new(std::collections::BTreeMap::from([(
                    "team".to_string(),
                    id.namespace.clone(),
                )])),
                id,
                model: ModelSpec {
                    name: Some(format!("l{lineage}")),
                    base_model: base.filter(|b| *b != lineage).map(|b| format!("l{b}")),
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
            })
        }
        Op::Start(a, b) => Event::Start { job: id(a, b) },
        Op::Finish(a, b, c) => Event::Finish {
            job: id(a, b),
            outcome: outcome(c),
        },
        Op::FinishedAt(a, b, c) => Event::FinishedAt {
            job: id(a, b),
            outcome: outcome(c),
            ended_at: now.checked_sub(SignedDuration::from_mins(90)).unwrap(),
        },
        Op::Delete(a, b) => Event::Delete { job: id(a, b) },
        Op::Approve(a, b) => Event::Approve {
            job: id(a, b),
            approver: Principal {
                user: "safety-sam".into(),
                groups: vec!["safety".into()],
            },
            spec_hash: String::new(),
        },
        Op::Tick => Event::Tick,
        Op::Policy(k, i) => {
            let set = parse_policies(POLICIES[usize::from(k) % POLICIES.len()], "p").unwrap();
            Event::UpsertPolicy(set[usize::from(i) % set.len()].clone())
        }
    }
}

fn engine(policies: &str, naive: bool) -> Engine {
    let mut e = Engine::new(Catalog::builtin());
    e.set_naive_wakeups(naive);
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    for p in parse_policies(policies, "p").unwrap() {
        e.apply(t0, Event::UpsertPolicy(p)).unwrap();
    }
    e
}

/// What an observer can see of the queue and the jobs.
fn visible(e: &Engine) -> (Vec<(JobId, u32)>, Vec<Option<Phase>>) {
    let queue = e.queue_positions().map(|(j, p)| (j.clone(), p)).collect();
    let phases = (0..3)
        .flat_map(|ns| (0..16).map(move |n| (ns, n)))
        .map(|(ns, n)| e.phase(&id(ns, n)))
        .collect();
    (queue, phases)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn indexed_wakeups_decide_exactly_as_reevaluating_every_waiter(
        policy in 0usize..POLICIES.len(),
        ops in proptest::collection::vec((op(), 1i64..240), 1..160),
    ) {
        let mut fast = engine(POLICIES[policy], false);
        let mut naive = engine(POLICIES[policy], true);
        let mut now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for (i, (op, gap)) in ops.iter().enumerate() {
            now = now.checked_add(SignedDuration::from_mins(*gap)).unwrap();
            let a = fast.apply(now, to_event(op, now));
            let b = naive.apply(now, to_event(op, now));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(format!("{:?}", a.records), format!("{:?}", b.records), "records at op {} {:?}", i, op);
                    prop_assert_eq!(format!("{:?}", a.decisions), format!("{:?}", b.decisions), "decisions at op {} {:?}", i, op);
                }
                (a, b) => prop_assert_eq!(a.is_err(), b.is_err(), "errors at op {} {:?}", i, op),
            }
            prop_assert_eq!(visible(&fast), visible(&naive), "state after op {} {:?}", i, op);
            prop_assert_eq!(fast.next_wakeup(), naive.next_wakeup(), "next wakeup after op {} {:?}", i, op);
        }
    }

    /// An engine that keeps no records and words no reasons (a simulation
    /// printing its summary only) decides exactly the same, counts the
    /// records it skips, and leaves every reason and warning empty.
    #[test]
    fn a_terse_engine_decides_exactly_as_a_full_one(
        policy in 0usize..POLICIES.len(),
        ops in proptest::collection::vec((op(), 1i64..240), 1..160),
    ) {
        let mut full = engine(POLICIES[policy], false);
        let mut terse = engine(POLICIES[policy], false);
        terse.keep_records(false);
        terse.keep_reasons(false);
        let mut now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for (i, (op, gap)) in ops.iter().enumerate() {
            now = now.checked_add(SignedDuration::from_mins(*gap)).unwrap();
            let a = full.apply(now, to_event(op, now));
            let b = terse.apply(now, to_event(op, now));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    prop_assert!(b.records.is_empty());
                    prop_assert_eq!(a.records.len() as u64, b.records_not_kept, "records at op {} {:?}", i, op);
                    prop_assert!(b.decisions.iter().all(|(_, d)| d.reason.is_empty() && d.warnings.is_empty()));
                    let blank = |s: &komptroller_engine::engine::Step| {
                        s.decisions
                            .iter()
                            .map(|(j, d)| {
                                let mut d = d.clone();
                                d.reason.clear();
                                d.warnings.clear();
                                (j.clone(), d)
                            })
                            .collect::<Vec<_>>()
                    };
                    prop_assert_eq!(blank(&a), blank(&b), "decisions at op {} {:?}", i, op);
                }
                (a, b) => prop_assert_eq!(a.is_err(), b.is_err(), "errors at op {} {:?}", i, op),
            }
            prop_assert_eq!(visible(&full), visible(&terse), "state after op {} {:?}", i, op);
            prop_assert_eq!(full.next_wakeup(), terse.next_wakeup(), "next wakeup after op {} {:?}", i, op);
        }
    }
}

/// A 10-hour job of `count` H100 in namespace `ns`, its own lineage.
fn submit_10h(ns: u8, name: u8, count: u32) -> Op {
    Op::Submit {
        ns,
        name,
        lineage: name,
        base: None,
        count,
        hours: 10,
        prio: 0,
    }
}

/// A policy upsert that loosens a cap while a job stays queued on it must
/// refile the job with its new slack: a later finish that frees enough for
/// the looser cap (not for the old one) admits it, as re-evaluating every
/// waiter would.
#[test]
fn loosened_cap_refiles_a_waiter_that_stays_queued() {
    let cap = |n: u32| {
        format!(
            "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {{name: caps}}\nspec:\n  capacity:\n    cluster: {{maxAccelerators: {n}}}\n"
        )
    };
    for naive in [false, true] {
        let mut e = engine(&cap(160), naive);
        let mut now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut step = |e: &mut Engine, ev: &dyn Fn(Timestamp) -> Event| {
            now = now.checked_add(SignedDuration::from_mins(1)).unwrap();
            e.apply(now, ev(now)).unwrap();
        };
        let submit = submit_10h;
        let op = |o: Op| move |t: Timestamp| to_event(&o, t);
        step(&mut e, &op(submit(0, 0, 100)));
        step(&mut e, &op(Op::Start(0, 0)));
        step(&mut e, &op(submit(1, 1, 50)));
        step(&mut e, &op(Op::Start(1, 1)));
        step(&mut e, &op(submit(2, 2, 120)));
        assert_eq!(e.phase(&id(2, 2)), Some(Phase::Queued), "naive {naive}");
        let looser = parse_policies(&cap(260), "p").unwrap().remove(0);
        step(&mut e, &|_| Event::UpsertPolicy(looser.clone()));
        // 150 running + 120 > 260: still queued on the same cap.
        assert_eq!(e.phase(&id(2, 2)), Some(Phase::Queued), "naive {naive}");
        step(&mut e, &op(Op::Finish(1, 1, 0)));
        // 100 running + 120 ≤ 260 (but > 160): admitted.
        assert_eq!(e.phase(&id(2, 2)), Some(Phase::Admitted), "naive {naive}");
    }
}

/// A queued job's sentence is refreshed on demand with the numbers of the
/// moment (`Engine::refresh_reason`): its verdict and queue place stay, and
/// nothing is refreshed into a verdict the engine has not decided yet.
#[test]
fn refresh_reason_rewords_a_waiting_job_without_deciding_it() {
    let policy = "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {name: budget}\nspec:\n  estimate: {basis: upperBound}\n  budgets:\n    - {name: day, scope: Namespace, window: 1d, limit: 1e21, action: Throttle}\n";
    let mut e = engine(policy, false);
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let at = |mins: i64| t0.checked_add(SignedDuration::from_mins(mins)).unwrap();
    let submit = |name, count| submit_10h(0, name, count);
    // Three admissions of 8 H100 × 10 h (2.85e20 each), then one of 16 that
    // needs two of them to leave the 1-day window.
    for (i, name) in [0u8, 1, 2].into_iter().enumerate() {
        let now = at(60 * i as i64);
        e.apply(now, to_event(&submit(name, 8), now)).unwrap();
        assert_eq!(e.phase(&id(0, name)), Some(Phase::Admitted));
    }
    let now = at(180);
    e.apply(now, to_event(&submit(3, 16), now)).unwrap();
    let queued = id(0, 3);
    assert_eq!(e.phase(&queued), Some(Phase::Queued));
    let before = e.decision(&queued).unwrap().clone();
    assert!(before.reason.contains("8.54e20"), "{}", before.reason);
    // One admission has left the window, not yet the second: still queued,
    // on fewer FLOP used.
    let later = at(24 * 60 + 30);
    e.refresh_reason(later, &queued);
    let after = e.decision(&queued).unwrap().clone();
    assert_eq!(e.phase(&queued), Some(Phase::Queued));
    assert_eq!(after.verdict, before.verdict);
    assert_eq!(after.queue_position, before.queue_position);
    assert!(after.reason.contains("5.7e20"), "{}", after.reason);
    assert_ne!(after.reason, before.reason);
    // Both have left: it would fit, but only the engine's tick decides that.
    let due = at(25 * 60 + 30);
    e.refresh_reason(due, &queued);
    assert_eq!(e.phase(&queued), Some(Phase::Queued));
    assert_eq!(e.decision(&queued).unwrap().reason, after.reason);
    e.apply(due, Event::Tick).unwrap();
    assert_eq!(e.phase(&queued), Some(Phase::Admitted));
}
