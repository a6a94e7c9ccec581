//! Ledger format basics and totals derived from entries alone.

use jiff::Timestamp;
use komptroller_engine::decision::Verdict;
use komptroller_engine::job::JobId;
use komptroller_engine::ledger::{
    AcceleratorUse, ChainError, FIRST_SEQ, GENESIS_PREV_HASH, Ledger, LedgerEvent, LedgerHead,
    LedgerRecord, LedgerTotals, NO_TIER, ScopeKey, Sha256Digest, read_jsonl,
    sample::sample_records, verify_jsonl,
};
use komptroller_engine::policy::Mode;
use komptroller_engine::units::{AcceleratorSeconds, Flop};
use proptest::prelude::*;

fn t(s: &str) -> Timestamp {
    s.parse().expect("time")
}

fn rec(time: &str, ns: &str, name: &str, lineage: &str, event: LedgerEvent) -> LedgerRecord {
    LedgerRecord {
        time: t(time),
        job: Some(JobId {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }),
        lineage: Some(lineage.into()),
        base_lineage: None,
        accelerator: Some(AcceleratorUse {
            kind: "nvidia-h100-sxm".into(),
            count: 8,
        }),
        actor: "alice".into(),
        event,
    }
}

fn decided(verdict: Verdict, charged: f64, lineages: &[&str], tier: Option<&str>) -> LedgerEvent {
    LedgerEvent::Decided {
        verdict,
        enforced_verdict: verdict,
        mode: Mode::Enforce,
        policy: Some("p".into()),
        rule: None,
        tier: tier.map(String::from),
        reason: "r".into(),
        projection: None,
        governing: Flop(charged.max(1e20)),
        charged: Flop(charged),
        charged_lineages: lineages.iter().map(|s| s.to_string()).collect(),
        selected_by: None,
    }
}

fn finished(consumed: f64, acc_s: f64) -> LedgerEvent {
    LedgerEvent::Finished {
        succeeded: true,
        accelerator_seconds: AcceleratorSeconds(acc_s),
        consumed: Flop(consumed),
    }
}

fn table() -> Vec<LedgerRecord> {
    vec![
        rec(
            "2026-01-01T00:00:00Z",
            "a",
            "j1",
            "base",
            decided(Verdict::Admit, 4e24, &["base"], Some("gpai")),
        ),
        rec(
            "2026-01-02T00:00:00Z",
            "b",
            "j2",
            "tune",
            decided(Verdict::Admit, 1e24, &["tune", "base"], None),
        ),
        rec(
            "2026-01-03T00:00:00Z",
            "a",
            "j3",
            "base",
            decided(Verdict::Reject, 0.0, &[], Some("gpai")),
        ),
        rec(
            "2026-01-03T00:00:00Z",
            "a",
            "j3",
            "base",
            decided(Verdict::Throttle, 0.0, &[], Some("gpai")),
        ),
        rec(
            "2026-01-04T00:00:00Z",
            "a",
            "j1",
            "base",
            LedgerEvent::Started,
        ),
        rec(
            "2026-01-05T00:00:00Z",
            "a",
            "j1",
            "base",
            finished(1e24, 3600.0),
        ),
        rec(
            "2026-01-06T00:00:00Z",
            "b",
            "j2",
            "tune",
            finished(2e23, 100.0),
        ),
        // Deleted without ever being admitted: consumption stays on its own lineage.
        rec(
            "2026-01-07T00:00:00Z",
            "c",
            "j9",
            "orphan",
            LedgerEvent::Deleted {
                accelerator_seconds: AcceleratorSeconds(5.0),
                consumed: Flop(7e20),
            },
        ),
    ]
}

#[test]
fn totals_follow_the_accounting_rules() {
    let records = table();
    let tot = LedgerTotals::rebuild_records(&records);
    assert_eq!(tot.entries(), 8);
    // Charges: admissions only, on every charged lineage.
    assert_eq!(tot.lineage_charged("base"), Flop(4e24 + 1e24));
    assert_eq!(tot.lineage_charged("tune"), Flop(1e24));
    assert_eq!(tot.lineage_charged("orphan"), Flop(0.0));
    // Consumption follows the lineages the job was charged on.
    assert_eq!(tot.lineage_consumed("base"), Flop(1e24 + 2e23));
    assert_eq!(tot.lineage_consumed("tune"), Flop(2e23));
    assert_eq!(tot.lineage_consumed("orphan"), Flop(7e20));
    // Namespace, accelerator, tier and cluster count each job once.
    assert_eq!(tot.namespaces()["a"].charged, Flop(4e24));
    assert_eq!(tot.namespaces()["b"].charged, Flop(1e24));
    assert_eq!(tot.namespaces()["c"].consumed, Flop(7e20));
    assert_eq!(
        tot.accelerators()["nvidia-h100-sxm"].charged,
        Flop(4e24 + 1e24)
    );
    assert_eq!(
        tot.accelerators()["nvidia-h100-sxm"].accelerator_seconds,
        AcceleratorSeconds(3705.0)
    );
    assert_eq!(tot.tiers()["gpai"].charged, Flop(4e24));
    assert_eq!(tot.tiers()["gpai"].consumed, Flop(1e24));
    assert_eq!(tot.tiers()[NO_TIER].charged, Flop(1e24));
    assert_eq!(tot.cluster().charged, Flop(4e24 + 1e24));
    assert_eq!(tot.cluster().consumed, Flop(1e24 + 2e23 + 7e20));
    assert_eq!(tot.cluster().admitted, 2);
}

#[test]
fn windows_exclude_their_start_and_include_their_end() {
    let tot = LedgerTotals::rebuild_records(&table());
    let base = ScopeKey::Model("base".into());
    let day1 = t("2026-01-01T00:00:00Z");
    let day2 = t("2026-01-02T00:00:00Z");
    assert_eq!(
        tot.window_charged(&base, t("2025-12-01T00:00:00Z"), day2),
        Flop(4e24 + 1e24)
    );
    assert_eq!(tot.window_charged(&base, day1, day2), Flop(1e24));
    assert_eq!(
        tot.window_charged(&base, t("2025-12-01T00:00:00Z"), day1),
        Flop(4e24)
    );
    assert_eq!(
        tot.window_charged(&base, day2, t("2026-02-01T00:00:00Z")),
        Flop(0.0)
    );
    assert_eq!(
        tot.window_charged(&ScopeKey::Namespace("b".into()), day1, day2),
        Flop(1e24)
    );
    assert_eq!(
        tot.window_charged(&ScopeKey::Cluster, t("2025-01-01T00:00:00Z"), day2),
        Flop(4e24 + 1e24)
    );
    assert_eq!(
        tot.window_charged(&ScopeKey::Namespace("zzz".into()), day1, day2),
        Flop(0.0)
    );
}

#[test]
fn the_chain_starts_at_seq_0_from_the_genesis_value() {
    let mut l = Ledger::new();
    let mut head = LedgerHead::GENESIS;
    for r in table() {
        let e = l.append(r.clone()).expect("append").clone();
        let sealed = head.seal(r).expect("seal");
        assert_eq!(e, sealed, "Ledger::append and LedgerHead::seal agree");
    }
    let e = l.entries();
    assert_eq!(e[0].seq, FIRST_SEQ);
    assert_eq!(FIRST_SEQ, 0);
    assert_eq!(e[0].prev_hash, GENESIS_PREV_HASH);
    assert_eq!(GENESIS_PREV_HASH, Sha256Digest([0; 32]));
    for w in e.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert_eq!(l.head(), head);
    assert_eq!(e[3].compute_hash().expect("hash"), e[3].hash);
    // The hash is SHA-256 of the canonical JSON without `hash`; spot-check the bytes.
    let body = String::from_utf8(e[0].body_bytes().expect("body")).expect("utf8");
    assert!(
        body.starts_with(
            "{\"accelerator\":{\"count\":8,\"type\":\"nvidia-h100-sxm\"},\"actor\":\"alice\","
        ),
        "{body}"
    );
    assert!(body.contains(",\"prevHash\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"seq\":0,\"time\":\"2026-01-01T00:00:00Z\"}"), "{body}");
    assert!(!body.contains("\"hash\""));
}

#[test]
fn from_entries_rejects_a_broken_chain() {
    let mut l = Ledger::new();
    for r in table() {
        l.append(r).expect("append");
    }
    let mut e = l.into_entries();
    e[2].record.actor = "mallory".into();
    match Ledger::from_entries(e) {
        Err(ChainError::HashMismatch { seq: 2, .. }) => {}
        other => panic!("expected a hash mismatch at seq 2, got {other:?}"),
    }
}

#[test]
fn non_finite_flop_cannot_be_appended() {
    let mut l = Ledger::new();
    let r = rec(
        "2026-01-01T00:00:00Z",
        "a",
        "j",
        "x",
        decided(Verdict::Admit, f64::NAN, &["x"], None),
    );
    assert!(l.append(r).is_err());
    assert!(l.is_empty());
    assert_eq!(l.head(), LedgerHead::GENESIS);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn jsonl_round_trips_and_rebuild_equals_incremental(n in 0usize..80, seed in any::<u64>(), cut in any::<prop::sample::Index>()) {
        let mut l = Ledger::new();
        let mut live = LedgerTotals::new();
        for r in sample_records(n, seed, t("2026-03-03T03:03:03.5Z")) {
            live.apply(&r);
            l.append(r).expect("append");
        }
        let mut bytes = Vec::new();
        l.write_jsonl(&mut bytes).expect("write");
        let parsed = verify_jsonl(&bytes).expect("verifies");
        prop_assert_eq!(&parsed, &l.entries().to_vec());
        prop_assert_eq!(&read_jsonl(&bytes).expect("reads"), &parsed);
        let rebuilt = LedgerTotals::rebuild(&parsed);
        prop_assert_eq!(rebuilt.lineages(), live.lineages());
        prop_assert_eq!(rebuilt.namespaces(), live.namespaces());
        prop_assert_eq!(rebuilt.accelerators(), live.accelerators());
        prop_assert_eq!(rebuilt.tiers(), live.tiers());
        prop_assert_eq!(rebuilt.cluster(), live.cluster());
        // Period totals count only the entries from `cut` on.
        let k = if n == 0 { 0 } else { cut.index(n + 1) };
        let part = LedgerTotals::rebuild_from(&parsed, k);
        prop_assert_eq!(part.entries(), (n - k) as u64);
        let admitted_after = parsed[k..].iter().filter(|e| matches!(e.record.event, LedgerEvent::Decided { verdict: Verdict::Admit, .. })).count() as u64;
        prop_assert_eq!(part.cluster().admitted, admitted_after);
    }
}
