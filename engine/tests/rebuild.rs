//! The engine's totals are derivable from its ledger records alone: the
//! ledger's own rebuild and an engine restored from the records agree with
//! the live engine, lineage by lineage and window by window.

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::Catalog;
use komptroller_engine::engine::Engine;
use komptroller_engine::ledger::{LedgerTotals, ScopeKey};
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::policy::BudgetScope;
use komptroller_engine::simulate::{SimulateOptions, parse_trace, simulate};

const POLICY: &str = include_str!("../../operator/assets/default-policy.yaml");
const TRACE: &str = include_str!("../../operator/assets/default-trace.yaml");

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn ledger_rebuild_and_engine_replay_match_the_live_engine() {
    let trace = parse_trace(TRACE, "trace").unwrap();
    let policies = parse_policies(POLICY, "policy").unwrap();
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
    assert!(sim.records.len() > 40);
    let live = &sim.summary.lineages;
    assert!(live.len() > 5);

    let totals = LedgerTotals::rebuild_records(&sim.records);
    let mut replayed = Engine::new(Catalog::builtin());
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    for p in sim.policies.iter() {
        replayed
            .apply(
                t0,
                komptroller_engine::engine::Event::UpsertPolicy(p.clone()),
            )
            .unwrap();
    }
    replayed.replay_ledger(&sim.records);

    for (name, t) in live {
        let ledger_charged = totals.lineage_charged(name).0;
        let ledger_consumed = totals.lineage_consumed(name).0;
        assert!(
            close(t.charged.0, ledger_charged),
            "{name}: live charged {} vs ledger {}",
            t.charged.0,
            ledger_charged
        );
        assert!(
            close(t.consumed.0, ledger_consumed),
            "{name}: live consumed {} vs ledger {}",
            t.consumed.0,
            ledger_consumed
        );
        let r = replayed.lineage(name);
        assert!(
            close(t.charged.0, r.charged.0),
            "{name}: replayed charged differs"
        );
        assert!(
            close(t.consumed.0, r.consumed.0),
            "{name}: replayed consumed differs"
        );
    }
    // Window totals at several instants, for every namespace.
    let end = sim.summary.end.unwrap();
    for days in [0i64, 10, 30, 45, 80] {
        let now = trace
            .start
            .checked_add(SignedDuration::from_hours(days * 24))
            .unwrap()
            .min(end);
        let window = SignedDuration::from_hours(30 * 24);
        for ns in ["research", "frontier", "vision", "applied"] {
            let from = now.checked_sub(window).unwrap();
            let ledger = totals
                .window_charged(&ScopeKey::Namespace(ns.into()), from, now)
                .0;
            let engine = replayed
                .window_charged(BudgetScope::Namespace, ns, now, window)
                .0;
            assert!(
                close(ledger, engine),
                "{ns} at day {days}: ledger {ledger} vs engine {engine}"
            );
        }
    }
    // Crossings are found again from the records.
    let crossing = replayed
        .crossings()
        .iter()
        .find(|c| c.tier == "eu-systemic-risk")
        .unwrap();
    let live_crossing = sim
        .summary
        .crossings
        .iter()
        .find(|c| c.tier == "eu-systemic-risk")
        .unwrap();
    assert_eq!(crossing.at, live_crossing.at);
    assert_eq!(crossing.lineage, "atlas");
}
