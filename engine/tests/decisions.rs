//! Table tests of the decision, step by step (DESIGN.md "The decision").

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::{Catalog, Precision};
use komptroller_engine::decision::Verdict;
use komptroller_engine::engine::{Engine, EngineError, Event, Outcome, Phase};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use komptroller_engine::ledger::LedgerEvent;
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::policy::BudgetScope;
use komptroller_engine::units::Flop;

const H100_BF16: f64 = 989e12;

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(hours: i64) -> Timestamp {
    t0().checked_add(SignedDuration::from_hours(hours)).unwrap()
}

fn engine(policy_yaml: &str) -> Engine {
    let mut e = Engine::new(Catalog::builtin());
    for p in parse_policies(policy_yaml, "test").unwrap() {
        e.apply(t0(), Event::UpsertPolicy(p)).unwrap();
    }
    e
}

fn job(ns: &str, name: &str, lineage: &str, count: u32, hours: u64) -> JobRequest {
    JobRequest {
        id: JobId {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        namespace_labels: std::sync::Arc::new(std::collections::BTreeMap::from([(
            "team".to_string(),
            ns.to_string(),
        )])),
        model: ModelSpec {
            name: Some(lineage.into()),
            ..ModelSpec::default()
        },
        accelerator: AcceleratorSpec {
            kind: "nvidia-h100-sxm".into(),
            precision: Precision::Bf16,
        },
        count,
        max_duration: format!("{hours}h").parse().unwrap(),
        priority: 0,
        submitter: Some(Principal {
            user: "alice".into(),
            groups: vec!["ml".into()],
        }),
        spec_hash: String::new(),
    }
}

fn id(ns: &str, name: &str) -> JobId {
    JobId {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn submit(e: &mut Engine, now: Timestamp, j: JobRequest) -> Verdict {
    let i = j.id.clone();
    e.apply(now, Event::Submit(j)).unwrap();
    e.decision(&i).unwrap().verdict
}

const TIERS: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: tiers}
spec:
  tiers:
    - {name: gpai, threshold: 1e23, action: Admit}
    - name: systemic
      threshold: 1e25
      action: Escalate
      approvals: {required: 2, groups: [safety]}
      reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 14d}
    - {name: frontier, threshold: 1e26, action: Reject}
"#;

#[test]
fn small_job_is_admitted_with_projection_numbers() {
    let mut e = engine(TIERS);
    let v = submit(&mut e, t0(), job("ml", "small", "m", 8, 10));
    assert_eq!(v, Verdict::Admit);
    let d = e.decision(&id("ml", "small")).unwrap();
    let p = d.projection.as_ref().unwrap();
    assert!((p.rate.0 - 8.0 * H100_BF16).abs() < 1.0);
    assert!((p.upper_bound.0 - 8.0 * H100_BF16 * 36_000.0).abs() / p.upper_bound.0 < 1e-12);
    assert_eq!(d.governing, p.upper_bound);
    assert!(d.reason.contains("2.85e20"), "{}", d.reason);
    assert_eq!(e.phase(&id("ml", "small")), Some(Phase::Admitted));
}

#[test]
fn three_jobs_cross_1e25_and_the_third_escalates_until_two_distinct_approvers() {
    let mut e = engine(TIERS);
    // 2048 H100 × 21 days ≈ 3.67e24 each.
    for (i, n) in ["p1", "p2"].iter().enumerate() {
        assert_eq!(
            submit(&mut e, at(i as i64), job("ml", n, "atlas", 2048, 21 * 24)),
            Verdict::Admit
        );
    }
    assert_eq!(
        submit(&mut e, at(3), job("ml", "p3", "atlas", 2048, 21 * 24)),
        Verdict::Escalate
    );
    let d = e.decision(&id("ml", "p3")).unwrap();
    assert_eq!(d.rule.as_deref(), Some("tier/systemic"));
    assert!(
        d.reason.contains("1.1e25") && d.reason.contains("1e25"),
        "{}",
        d.reason
    );
    let need = d.approvals.as_ref().unwrap();
    assert_eq!(need.required, 2);
    assert_eq!(need.groups, vec!["safety".to_string()]);

    let approve = |e: &mut Engine, user: &str, groups: &[&str]| {
        e.apply(
            at(4),
            Event::Approve {
                job: id("ml", "p3"),
                approver: Principal {
                    user: user.into(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                },
                spec_hash: String::new(),
            },
        )
    };
    // Self-approval and approvers outside the group are refused.
    assert!(matches!(
        approve(&mut e, "alice", &["safety"]),
        Err(EngineError::Approval { .. })
    ));
    let err = approve(&mut e, "mallory", &["ml"]).unwrap_err().to_string();
    assert!(err.contains("safety"), "{err}");
    approve(&mut e, "dana", &["safety"]).unwrap();
    assert_eq!(e.phase(&id("ml", "p3")), Some(Phase::AwaitingApproval));
    // The same approver twice does not count twice.
    approve(&mut e, "dana", &["safety"]).unwrap();
    assert_eq!(e.phase(&id("ml", "p3")), Some(Phase::AwaitingApproval));
    approve(&mut e, "erin", &["safety"]).unwrap();
    assert_eq!(e.phase(&id("ml", "p3")), Some(Phase::Admitted));
    assert!(e.lineage("atlas").charged.0 > 1e25);
    let c = &e.crossings().iter().find(|c| c.tier == "systemic").unwrap();
    assert_eq!(c.lineage, "atlas");
    assert_eq!(
        c.notify_by.unwrap(),
        c.at.checked_add(SignedDuration::from_hours(14 * 24))
            .unwrap()
    );
}

#[test]
fn approval_bound_to_spec_hash() {
    let mut e = engine(TIERS);
    submit(&mut e, t0(), job("ml", "big", "atlas", 2048, 60 * 24)); // 1.05e25
    assert_eq!(e.phase(&id("ml", "big")), Some(Phase::AwaitingApproval));
    let err = e
        .apply(
            at(1),
            Event::Approve {
                job: id("ml", "big"),
                approver: Principal {
                    user: "dana".into(),
                    groups: vec!["safety".into()],
                },
                spec_hash: "not-the-hash".into(),
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("spec.specHash"), "{err}");
}

#[test]
fn over_the_ceiling_is_rejected_naming_rule_and_numbers() {
    let mut e = engine(TIERS);
    let v = submit(&mut e, t0(), job("ml", "huge", "x", 16_384, 90 * 24));
    assert_eq!(v, Verdict::Reject);
    let d = e.decision(&id("ml", "huge")).unwrap();
    assert_eq!(d.rule.as_deref(), Some("tier/frontier"));
    assert!(
        d.reason.contains("1e26") && d.reason.contains("1.26e26"),
        "{}",
        d.reason
    );
    assert_eq!(
        e.lineage("x").charged,
        Flop::ZERO,
        "a rejected job charges nothing"
    );
}

const CAPS: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: caps}
spec:
  capacity:
    cluster: {maxAccelerators: 100}
    perNamespace: {maxFlopPerSecond: 1e17}
"#;

#[test]
fn capacity_cap_queues_with_position_and_admits_when_first_finishes() {
    let mut e = engine(CAPS);
    assert_eq!(
        submit(&mut e, t0(), job("a", "first", "m1", 64, 10)),
        Verdict::Admit
    );
    assert_eq!(
        submit(&mut e, at(1), job("b", "second", "m2", 64, 10)),
        Verdict::Throttle
    );
    assert_eq!(
        submit(&mut e, at(1), job("c", "third", "m3", 64, 10)),
        Verdict::Throttle
    );
    assert_eq!(e.queue_position(&id("b", "second")), Some(1));
    assert_eq!(e.queue_position(&id("c", "third")), Some(2));
    let d = e.decision(&id("b", "second")).unwrap();
    assert_eq!(d.rule.as_deref(), Some("capacity/cluster"));
    assert!(d.reason.contains("64 of its 100"), "{}", d.reason);
    e.apply(
        at(2),
        Event::Start {
            job: id("a", "first"),
        },
    )
    .unwrap();
    let step = e
        .apply(
            at(5),
            Event::Finish {
                job: id("a", "first"),
                outcome: Outcome::Succeeded,
            },
        )
        .unwrap();
    assert_eq!(e.phase(&id("b", "second")), Some(Phase::Admitted));
    assert_eq!(e.phase(&id("c", "third")), Some(Phase::Queued));
    assert_eq!(e.queue_position(&id("c", "third")), Some(1));
    // Metering: 64 accelerators × 3 h.
    let fin = step
        .records
        .iter()
        .find_map(|r| match &r.event {
            LedgerEvent::Finished {
                accelerator_seconds,
                consumed,
                ..
            } => Some((*accelerator_seconds, *consumed)),
            _ => None,
        })
        .unwrap();
    assert_eq!(fin.0.0, 64.0 * 3.0 * 3600.0);
    assert!((fin.1.0 - 64.0 * H100_BF16 * 3.0 * 3600.0).abs() / fin.1.0 < 1e-12);
}

#[test]
fn a_job_that_alone_exceeds_a_cap_is_rejected() {
    let mut e = engine(CAPS);
    assert_eq!(
        submit(&mut e, t0(), job("a", "wide", "m", 101, 1)),
        Verdict::Reject
    );
    let d = e.decision(&id("a", "wide")).unwrap();
    assert!(
        d.reason.contains("can never run") && d.reason.contains("101"),
        "{}",
        d.reason
    );
}

#[test]
fn namespace_flop_rate_cap_applies_per_namespace() {
    let mut e = engine(&CAPS.replace("    cluster: {maxAccelerators: 100}\n", ""));
    // 40 H100 = 3.96e16 FLOP/s; three in one namespace exceed 1e17, in two namespaces they do not.
    assert_eq!(
        submit(&mut e, t0(), job("a", "j1", "m", 40, 1)),
        Verdict::Admit
    );
    assert_eq!(
        submit(&mut e, t0(), job("a", "j2", "m", 40, 1)),
        Verdict::Admit
    );
    assert_eq!(
        submit(&mut e, t0(), job("a", "j3", "m", 40, 1)),
        Verdict::Throttle
    );
    assert_eq!(
        submit(&mut e, t0(), job("b", "j4", "m", 4, 1)),
        Verdict::Admit
    );
    let d = e.decision(&id("a", "j3")).unwrap();
    assert_eq!(d.rule.as_deref(), Some("capacity/namespace"));
}

const BUDGET: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: budgets}
spec:
  budgets:
    - {name: ns-30d, scope: Namespace, window: 30d, limit: 1e22, action: Throttle}
"#;

#[test]
fn namespace_budget_throttles_until_its_window_frees() {
    let mut e = engine(BUDGET);
    // 64 H100 × 24h = 5.47e21
    assert_eq!(
        submit(&mut e, t0(), job("a", "j1", "m", 64, 24)),
        Verdict::Admit
    );
    assert_eq!(
        submit(&mut e, at(1), job("a", "j2", "m", 64, 24)),
        Verdict::Throttle
    );
    assert_eq!(
        submit(&mut e, at(1), job("b", "j3", "m", 64, 24)),
        Verdict::Admit,
        "other namespace"
    );
    let d = e.decision(&id("a", "j2")).unwrap();
    assert!(
        d.reason.contains("5.47e21") && d.reason.contains("1e22"),
        "{}",
        d.reason
    );
    let wake = e.next_wakeup().unwrap();
    assert_eq!(wake, at(30 * 24));
    e.apply(at(30 * 24 - 1), Event::Tick).unwrap();
    assert_eq!(e.phase(&id("a", "j2")), Some(Phase::Queued));
    e.apply(wake, Event::Tick).unwrap();
    assert_eq!(e.phase(&id("a", "j2")), Some(Phase::Admitted));
    assert!(
        e.window_charged(
            BudgetScope::Namespace,
            "a",
            wake,
            SignedDuration::from_hours(30 * 24)
        )
        .0 > 5e21
    );
}

#[test]
fn budget_larger_than_limit_is_rejected_outright() {
    let mut e = engine(BUDGET);
    assert_eq!(
        submit(&mut e, t0(), job("a", "big", "m", 1024, 24)),
        Verdict::Reject
    );
}

#[test]
fn warn_and_dry_run_admit_but_record_the_enforce_verdict() {
    for (mode, warns) in [("Warn", true), ("DryRun", false)] {
        let yaml = format!(
            "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {{name: p}}\nspec:\n  mode: {mode}\n  tiers:\n    - {{name: cap, threshold: 1e20, action: Reject}}\n"
        );
        let mut e = engine(&yaml);
        let j = job("a", "j", "m", 8, 10);
        let step = e.apply(t0(), Event::Submit(j)).unwrap();
        let d = e.decision(&id("a", "j")).unwrap();
        assert_eq!(d.verdict, Verdict::Admit, "{mode}");
        assert_eq!(d.enforced_verdict, Verdict::Reject, "{mode}");
        assert_eq!(!d.warnings.is_empty(), warns, "{mode}: {:?}", d.warnings);
        assert!(step.records.iter().any(|r| matches!(
            &r.event,
            LedgerEvent::Decided {
                verdict: Verdict::Admit,
                enforced_verdict: Verdict::Reject,
                ..
            }
        )));
    }
}

#[test]
fn strictest_policy_wins() {
    let yaml = format!("{TIERS}---\n{CAPS}");
    let mut e = engine(&yaml);
    // Over the frontier tier (Reject) and over the cluster cap (Reject too) → Reject from the tier, step order.
    assert_eq!(
        submit(&mut e, t0(), job("a", "j", "m", 16_384, 90 * 24)),
        Verdict::Reject
    );
    // Within caps but past 1e25 → Escalate (stricter than Admit from caps).
    let mut e = engine(&yaml);
    assert_eq!(
        submit(&mut e, t0(), job("a", "k", "m2", 100, 24 * 1500)),
        Verdict::Escalate
    );
}

#[test]
fn fine_tunes_count_toward_their_base_lineage() {
    let mut e = engine(TIERS);
    submit(&mut e, t0(), job("ml", "base", "atlas", 2048, 55 * 24)); // 9.6e24
    let mut ft = job("ml", "ft", "atlas-chat", 256, 10 * 24); // 2.2e23 → atlas 9.8e24
    ft.model.base_model = Some("atlas".into());
    assert_eq!(submit(&mut e, at(1), ft), Verdict::Admit);
    let mut ft2 = job("ml", "ft2", "atlas-chat", 256, 20 * 24); // 4.4e23 → atlas 1.02e25
    ft2.model.base_model = Some("atlas".into());
    assert_eq!(submit(&mut e, at(2), ft2), Verdict::Escalate);
    let d = e.decision(&id("ml", "ft2")).unwrap();
    assert!(d.reason.contains("lineage atlas"), "{}", d.reason);
    assert!(e.lineage("atlas").charged.0 > 9.8e24);
}

#[test]
fn fine_tunes_do_not_count_toward_base_when_the_policy_says_so() {
    let yaml = TIERS.replace(
        "spec:\n",
        "spec:\n  lineage: {countFineTunesTowardBase: false}\n",
    );
    let mut e = engine(&yaml);
    submit(&mut e, t0(), job("ml", "base", "atlas", 2048, 55 * 24));
    let mut ft = job("ml", "ft2", "atlas-chat", 256, 20 * 24);
    ft.model.base_model = Some("atlas".into());
    assert_eq!(submit(&mut e, at(2), ft), Verdict::Admit);
}

#[test]
fn modification_rule_fires_above_a_third_of_the_base() {
    let yaml = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: eu}
spec:
  lineage:
    modification:
      fractionOfBase: 0.3333
      assumedBaseFlop: 3.33e24
      action: Escalate
      approvals: {required: 1, groups: [compliance]}
"#;
    let mut e = engine(yaml);
    let mut ft = job("ml", "ft", "derived", 2048, 21 * 24); // 3.67e24 > 1/3 × 3.33e24
    ft.model.base_model = Some("someone-elses".into());
    assert_eq!(submit(&mut e, t0(), ft), Verdict::Escalate);
    let d = e.decision(&id("ml", "ft")).unwrap();
    assert!(d.reason.contains("assumed"), "{}", d.reason);
}

#[test]
fn declared_opcount_above_upper_bound_is_rejected_and_governs_when_larger() {
    let mut e = engine(TIERS);
    let mut j = job("ml", "liar", "m", 8, 1); // 2.8e19 upper bound
    j.model.parameters = Some(7e9);
    j.model.tokens = Some(1e12); // 4.2e22
    assert_eq!(submit(&mut e, t0(), j), Verdict::Reject);
    let d = e.decision(&id("ml", "liar")).unwrap();
    assert_eq!(d.rule.as_deref(), Some("validation/opcount"));

    let yaml = TIERS.replace(
        "spec:\n",
        "spec:\n  estimate: {basis: expected, utilization: 0.001}\n",
    );
    let mut e = engine(&yaml);
    let mut j = job("ml", "honest", "m", 8, 10); // upper 2.85e20, expected 2.85e17
    j.model.parameters = Some(1e8);
    j.model.tokens = Some(1e11); // 6e19
    submit(&mut e, t0(), j);
    let d = e.decision(&id("ml", "honest")).unwrap();
    assert_eq!(d.governing, Flop(6e19), "governing never below the opcount");
}

#[test]
fn unknown_accelerator_and_zero_count_are_rejected_naming_the_field() {
    let mut e = engine(TIERS);
    let mut j = job("ml", "typo", "m", 8, 10);
    j.accelerator.kind = "nvidia-h100-sxn".into();
    assert_eq!(submit(&mut e, t0(), j), Verdict::Reject);
    let d = e.decision(&id("ml", "typo")).unwrap();
    assert!(
        d.reason.contains("spec.accelerator.type") && d.reason.contains("nvidia-h100-sxm"),
        "{}",
        d.reason
    );
    let j = job("ml", "none", "m", 0, 10);
    assert_eq!(submit(&mut e, t0(), j), Verdict::Reject);
    assert!(
        e.decision(&id("ml", "none"))
            .unwrap()
            .reason
            .contains("spec.replicas")
    );
}

#[test]
fn deleting_an_admitted_job_keeps_its_compute() {
    let mut e = engine(TIERS);
    submit(&mut e, t0(), job("ml", "j", "m", 64, 24));
    e.apply(at(1), Event::Start { job: id("ml", "j") }).unwrap();
    let before = e.lineage("m");
    let step = e
        .apply(at(3), Event::Delete { job: id("ml", "j") })
        .unwrap();
    assert_eq!(e.lineage("m").charged, before.charged);
    assert!(e.lineage("m").consumed.0 > 0.0);
    assert!(
        step.records
            .iter()
            .any(|r| matches!(r.event, LedgerEvent::Deleted { .. }))
    );
    assert_eq!(e.running().1, 0, "capacity released");
}

#[test]
fn policy_change_reevaluates_queued_and_held_jobs() {
    let mut e = engine(CAPS);
    submit(&mut e, t0(), job("a", "first", "m", 64, 10));
    submit(&mut e, t0(), job("b", "second", "m", 64, 10));
    assert_eq!(e.phase(&id("b", "second")), Some(Phase::Queued));
    let relaxed = CAPS.replace("maxAccelerators: 100", "maxAccelerators: 200");
    for p in parse_policies(&relaxed, "t").unwrap() {
        let step = e.apply(at(1), Event::UpsertPolicy(p)).unwrap();
        assert!(
            step.records
                .iter()
                .any(|r| matches!(r.event, LedgerEvent::PolicyChanged { .. }))
        );
    }
    assert_eq!(e.phase(&id("b", "second")), Some(Phase::Admitted));
}

#[test]
fn strict_fifo_blocks_smaller_jobs_behind_the_head_best_effort_does_not() {
    for (queueing, small_verdict) in [
        ("StrictFIFO", Verdict::Throttle),
        ("BestEffortFIFO", Verdict::Admit),
    ] {
        let yaml = format!(
            "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {{name: q}}\nspec:\n  queueing: {queueing}\n  capacity:\n    cluster: {{maxAccelerators: 100}}\n"
        );
        let mut e = engine(&yaml);
        submit(&mut e, t0(), job("a", "running", "m", 60, 10));
        assert_eq!(
            submit(&mut e, at(1), job("a", "big", "m", 60, 10)),
            Verdict::Throttle
        );
        assert_eq!(
            submit(&mut e, at(2), job("b", "small", "m", 10, 10)),
            small_verdict,
            "{queueing}"
        );
    }
}

#[test]
fn priority_orders_the_queue() {
    let mut e = engine(CAPS);
    submit(&mut e, t0(), job("a", "running", "m", 100, 10));
    submit(&mut e, at(1), job("a", "low", "m", 50, 10));
    let mut hi = job("b", "high", "m", 50, 10);
    hi.priority = 10;
    submit(&mut e, at(2), hi);
    assert_eq!(e.queue_position(&id("b", "high")), Some(1));
    assert_eq!(e.queue_position(&id("a", "low")), Some(2));
}

#[test]
fn namespace_selector_limits_which_policies_apply() {
    let yaml = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: only-research}
spec:
  namespaceSelector: {matchLabels: {team: research}}
  tiers: [{name: tiny, threshold: 1, action: Reject}]
"#;
    let mut e = engine(yaml);
    assert_eq!(
        submit(&mut e, t0(), job("research", "a", "m", 1, 1)),
        Verdict::Reject
    );
    assert_eq!(
        submit(&mut e, t0(), job("prod", "b", "m", 1, 1)),
        Verdict::Admit
    );
    assert!(
        e.decision(&id("prod", "b"))
            .unwrap()
            .reason
            .contains("no ComputePolicy selects")
    );
}

#[test]
fn resubmitting_the_same_spec_is_idempotent_and_admitted_specs_are_immutable() {
    let mut e = engine(TIERS);
    let j = job("ml", "j", "m", 8, 10);
    let first = e.apply(t0(), Event::Submit(j.clone())).unwrap();
    assert_eq!(first.records.len(), 1);
    let again = e.apply(at(1), Event::Submit(j.clone())).unwrap();
    assert!(again.records.is_empty(), "no duplicate ledger record");
    assert_eq!(
        e.lineage("m").charged,
        e.decision(&j.id).unwrap().governing,
        "charged once"
    );
    let mut changed = j.clone();
    changed.count = 16;
    assert!(matches!(
        e.apply(at(2), Event::Submit(changed)),
        Err(EngineError::Immutable { .. })
    ));
}

#[test]
fn bad_policies_name_the_field() {
    let yaml = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: bad}
spec:
  tiers:
    - {name: b, threshold: 1e25, action: Admit}
    - {name: a, threshold: 1e23, action: Escalate}
  budgets:
    - {name: x, scope: Namespace, window: "0", limit: -5}
"#;
    let err = parse_policies(yaml, "bad.yaml").unwrap_err().to_string();
    for needle in [
        "spec.tiers[1].threshold",
        "sorted",
        "spec.tiers[1].approvals",
        "spec.budgets[0].window",
        "spec.budgets[0].limit",
    ] {
        assert!(err.contains(needle), "missing {needle} in {err}");
    }
}

#[test]
fn queue_positions_list_the_whole_queue_in_order() {
    let mut e = engine(CAPS);
    submit(&mut e, t0(), job("a", "first", "m1", 64, 10));
    submit(&mut e, at(1), job("b", "second", "m2", 64, 10));
    let mut high = job("c", "third", "m3", 64, 10);
    high.priority = 5;
    submit(&mut e, at(2), high);
    submit(&mut e, at(3), job("d", "fourth", "m4", 64, 10));
    let listed: Vec<(String, u32)> = e
        .queue_positions()
        .map(|(j, p)| (j.name.clone(), p))
        .collect();
    assert_eq!(
        listed,
        [
            ("third".into(), 1),
            ("second".into(), 2),
            ("fourth".into(), 3)
        ]
    );
    for (j, p) in e.queue_positions() {
        assert_eq!(e.queue_position(j), Some(p));
    }
    assert_eq!(e.submitted_at(&id("b", "second")), Some(at(1)));
    assert_eq!(e.submitted_at(&id("a", "first")), Some(t0()));
    assert_eq!(e.submitted_at(&id("z", "nobody")), None);
}

#[test]
fn finished_at_meters_to_the_completion_time_and_reevaluates_at_now() {
    let mut e = engine(CAPS);
    submit(&mut e, t0(), job("a", "first", "m1", 64, 10));
    submit(&mut e, at(1), job("b", "second", "m2", 64, 10));
    e.apply(
        at(2),
        Event::Start {
            job: id("a", "first"),
        },
    )
    .unwrap();
    // Ended at 5 h, learnt of at 8 h.
    let step = e
        .apply(
            at(8),
            Event::FinishedAt {
                job: id("a", "first"),
                outcome: Outcome::Succeeded,
                ended_at: at(5),
            },
        )
        .unwrap();
    assert_eq!(e.phase(&id("a", "first")), Some(Phase::Succeeded));
    assert_eq!(e.phase(&id("b", "second")), Some(Phase::Admitted));
    let fin = step
        .records
        .iter()
        .find_map(|r| match &r.event {
            LedgerEvent::Finished {
                accelerator_seconds,
                ..
            } => Some((r.time, *accelerator_seconds)),
            _ => None,
        })
        .unwrap();
    assert_eq!(fin.0, at(8), "the record is written when it is learnt");
    assert_eq!(fin.1.0, 64.0 * 3.0 * 3600.0, "metered start to end: 3 h");
    let admitted = step
        .records
        .iter()
        .find(|r| {
            r.job.as_ref().map(|j| j.name.as_str()) == Some("second")
                && matches!(r.event, LedgerEvent::Decided { .. })
        })
        .unwrap();
    assert_eq!(admitted.time, at(8), "the queue is re-evaluated at now");
    assert_eq!(e.lineage("m1").accelerator_seconds.0, 64.0 * 3.0 * 3600.0);

    // A completion time after `now` is clamped to `now`; before the start, to zero.
    submit(&mut e, at(9), job("c", "late", "m3", 8, 10));
    e.apply(
        at(9),
        Event::Start {
            job: id("c", "late"),
        },
    )
    .unwrap();
    e.apply(
        at(10),
        Event::FinishedAt {
            job: id("c", "late"),
            outcome: Outcome::Failed,
            ended_at: at(50),
        },
    )
    .unwrap();
    assert_eq!(e.lineage("m3").accelerator_seconds.0, 8.0 * 3600.0);
    submit(&mut e, at(11), job("d", "early", "m4", 8, 10));
    e.apply(
        at(11),
        Event::Start {
            job: id("d", "early"),
        },
    )
    .unwrap();
    e.apply(
        at(12),
        Event::FinishedAt {
            job: id("d", "early"),
            outcome: Outcome::Succeeded,
            ended_at: at(3),
        },
    )
    .unwrap();
    assert_eq!(e.phase(&id("d", "early")), Some(Phase::Succeeded));
    assert_eq!(e.lineage("m4").accelerator_seconds.0, 0.0);
}

#[test]
fn a_withdrawn_approval_stops_counting_until_the_job_is_admitted() {
    // Tiers plus a cluster cap: an approved escalation can still queue.
    let policy = format!("{TIERS}  capacity:\n    cluster: {{maxAccelerators: 5000}}\n");
    let mut e = engine(&policy);
    for (i, n) in ["p1", "p2"].iter().enumerate() {
        submit(&mut e, at(i as i64), job("ml", n, "atlas", 2048, 21 * 24));
    }
    e.apply(
        at(2),
        Event::Start {
            job: id("ml", "p1"),
        },
    )
    .unwrap();
    let p3 = id("ml", "p3");
    assert_eq!(
        submit(&mut e, at(3), job("ml", "p3", "atlas", 2048, 21 * 24)),
        Verdict::Escalate
    );
    let approve = |e: &mut Engine, user: &str| {
        e.apply(
            at(4),
            Event::Approve {
                job: p3.clone(),
                approver: Principal {
                    user: user.into(),
                    groups: vec!["safety".into()],
                },
                spec_hash: String::new(),
            },
        )
        .unwrap()
    };
    let withdraw = |e: &mut Engine, user: &str| {
        e.apply(
            at(5),
            Event::WithdrawApproval {
                job: p3.clone(),
                approver: user.into(),
            },
        )
        .unwrap()
    };
    // One of two approvals, withdrawn: a second approver alone is not enough.
    approve(&mut e, "dana");
    let step = withdraw(&mut e, "dana");
    assert!(
        step.records.iter().any(|r| matches!(
            &r.event,
            LedgerEvent::ApprovalWithdrawn { approver } if approver == "dana"
        )),
        "{:?}",
        step.records
    );
    assert!(e.approvals(&p3).is_empty());
    approve(&mut e, "erin");
    assert_eq!(e.phase(&p3), Some(Phase::AwaitingApproval));
    let d = e.decision(&p3).unwrap();
    assert_eq!(
        d.approvals.as_ref().unwrap().approved_by,
        vec!["erin".to_string()]
    );
    // Two approvals lift the escalation, but the cap queues it (p1 and p2
    // hold 4,096 of 5,000); withdrawing one sends it back to waiting.
    approve(&mut e, "dana");
    assert_eq!(e.phase(&p3), Some(Phase::Queued));
    let step = withdraw(&mut e, "erin");
    assert_eq!(e.phase(&p3), Some(Phase::AwaitingApproval));
    assert!(
        step.decisions
            .iter()
            .any(|(j, d)| *j == p3 && d.verdict == Verdict::Escalate)
    );
    // Withdrawing an approval that is not counted, or after admission,
    // changes nothing and writes nothing.
    assert!(withdraw(&mut e, "zoe").records.is_empty());
    approve(&mut e, "frank");
    e.apply(
        at(6),
        Event::Finish {
            job: id("ml", "p1"),
            outcome: Outcome::Succeeded,
        },
    )
    .unwrap();
    assert_eq!(e.phase(&p3), Some(Phase::Admitted));
    let step = withdraw(&mut e, "frank");
    assert!(step.records.is_empty() && step.decisions.is_empty());
    assert_eq!(e.phase(&p3), Some(Phase::Admitted));
}

#[test]
fn live_metering_is_the_final_metering_rule_on_every_basis() {
    for (basis, spec) in [
        ("upperBound", "{basis: upperBound}"),
        ("expected", "{basis: expected, utilization: 0.4}"),
        ("adversarialCeiling", "{basis: adversarialCeiling}"),
    ] {
        let policy = format!(
            "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {{name: est}}\nspec:\n  estimate: {spec}\n"
        );
        let mut e = engine(&policy);
        let j = id("ml", "run");
        assert_eq!(
            submit(&mut e, t0(), job("ml", "run", "m", 16, 10)),
            Verdict::Admit
        );
        assert_eq!(
            e.consumed_so_far(&j, at(1)),
            None,
            "{basis}: not running yet"
        );
        e.apply(at(1), Event::Start { job: j.clone() }).unwrap();
        let live = e.consumed_so_far(&j, at(4)).expect("running");
        assert_eq!(
            live.0.0,
            16.0 * 3.0 * 3600.0,
            "{basis}: accelerator-seconds"
        );
        let step = e
            .apply(
                at(6),
                Event::FinishedAt {
                    job: j.clone(),
                    outcome: Outcome::Succeeded,
                    ended_at: at(4),
                },
            )
            .unwrap();
        let booked = step
            .records
            .iter()
            .find_map(|r| match &r.event {
                LedgerEvent::Finished { consumed, .. } => Some(*consumed),
                _ => None,
            })
            .expect("Finished record");
        assert!(booked.0 > 0.0, "{basis}");
        assert_eq!(live.1, booked, "{basis}: live and final metering agree");
        assert_eq!(e.consumed_so_far(&j, at(7)), None, "{basis}: ended");
    }
    // The bases do differ (the test would not notice a shared wrong basis otherwise).
    let ceiling = {
        let mut e = engine(
            "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {name: est}\nspec:\n  estimate: {basis: adversarialCeiling}\n",
        );
        submit(&mut e, t0(), job("ml", "run", "m", 16, 10));
        e.apply(
            at(1),
            Event::Start {
                job: id("ml", "run"),
            },
        )
        .unwrap();
        e.consumed_so_far(&id("ml", "run"), at(4)).unwrap().1
    };
    let upper = {
        let mut e = engine(
            "apiVersion: komptroller.dev/v1alpha1\nkind: ComputePolicy\nmetadata: {name: est}\nspec:\n  estimate: {basis: upperBound}\n",
        );
        submit(&mut e, t0(), job("ml", "run", "m", 16, 10));
        e.apply(
            at(1),
            Event::Start {
                job: id("ml", "run"),
            },
        )
        .unwrap();
        e.consumed_so_far(&id("ml", "run"), at(4)).unwrap().1
    };
    assert!(
        ceiling.0 > upper.0,
        "ceiling {ceiling:?} vs upper bound {upper:?}"
    );
}
