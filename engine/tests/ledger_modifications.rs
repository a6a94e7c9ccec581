//! Reports list substantial modifications (the EU one-third rule): every
//! fine-tune lineage whose own compute passed its policy's modification
//! threshold relative to its base, with the date and the notification
//! deadline, derived from the ledger entries alone and checked by `verify`.

use jiff::Timestamp;
use komptroller_engine::decision::Verdict;
use komptroller_engine::job::JobId;
use komptroller_engine::ledger::{AcceleratorUse, Ledger, LedgerEvent, LedgerRecord, write_jsonl};
use komptroller_engine::policy::{Mode, Policy};
use komptroller_engine::report::{
    FailureClass, ModificationCrossing, NamedInput, Period, SignedReport, VerifyRequest,
    build_report, to_csv, to_markdown, to_openreports_yaml, verify_report,
};
use komptroller_engine::signing::{public_key_pem, signing_key_from_seed};
use komptroller_engine::units::Flop;

const POLICIES: &str = r#"
- name: eu
  spec:
    lineage:
      countFineTunesTowardBase: true
      modification:
        name: eu-one-third-modification
        fractionOfBase: 0.3333
        assumedBaseFlop: 3.33e24
        action: Escalate
        approvals: {required: 1, groups: [ai-act-compliance]}
        reporting: {regulation: "EU AI Act Art. 52(1) (modifier becomes provider)", notifyWithin: 14d}
    tiers:
      - name: eu-systemic-risk
        threshold: 1e25
        action: Escalate
        approvals: {required: 2, groups: [ai-act-compliance]}
        reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 14d}
- name: other
  spec:
    lineage:
      modification:
        name: silent-rule
        fractionOfBase: 0.5
        action: Admit
    tiers: []
"#;

fn t(s: &str) -> Timestamp {
    s.parse().expect("time")
}

fn policies() -> Vec<Policy> {
    serde_saphyr::from_str(POLICIES).expect("policies")
}

/// An admission (or another verdict) of `lineage`, fine-tuning `base`, under `policy`.
fn decided(
    time: &str,
    name: &str,
    lineage: &str,
    base: Option<&str>,
    policy: &str,
    verdict: Verdict,
    charged: f64,
) -> LedgerRecord {
    let charged_lineages: Vec<String> = std::iter::once(lineage)
        .chain(base)
        .map(String::from)
        .collect();
    LedgerRecord {
        time: t(time),
        job: Some(JobId {
            namespace: "ml".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }),
        lineage: Some(lineage.into()),
        base_lineage: base.map(String::from),
        accelerator: Some(AcceleratorUse {
            kind: "nvidia-h100-sxm".into(),
            count: 64,
        }),
        actor: "alice".into(),
        event: LedgerEvent::Decided {
            verdict,
            enforced_verdict: verdict,
            mode: Mode::Enforce,
            policy: Some(policy.into()),
            rule: None,
            tier: None,
            reason: "r".into(),
            projection: None,
            governing: Flop(charged),
            charged: Flop(if verdict == Verdict::Admit {
                charged
            } else {
                0.0
            }),
            charged_lineages: if verdict == Verdict::Admit {
                charged_lineages
            } else {
                Vec::new()
            },
            selected_by: None,
        },
    }
}

fn ledger() -> Ledger {
    let mut l = Ledger::new();
    let a = Verdict::Admit;
    for r in [
        // 0: the base model, 3e24 FLOP of its own.
        decided("2026-04-01T08:00:00Z", "base", "atlas", None, "eu", a, 3e24),
        // 1: a fine-tune at 5e23, below a third of 3e24 (9.999e23).
        decided(
            "2026-04-02T08:00:00Z",
            "ft-1",
            "atlas-chat",
            Some("atlas"),
            "eu",
            a,
            5e23,
        ),
        // 2: escalated, not admitted: charges nothing.
        decided(
            "2026-04-03T08:00:00Z",
            "ft-2",
            "atlas-chat",
            Some("atlas"),
            "eu",
            Verdict::Escalate,
            6e23,
        ),
        // 3: admitted: 1.1e24 > 9.999e23, the crossing.
        decided(
            "2026-04-04T09:30:00Z",
            "ft-2",
            "atlas-chat",
            Some("atlas"),
            "eu",
            a,
            6e23,
        ),
        // 4: more of the same fine-tune: no second crossing.
        decided(
            "2026-04-05T08:00:00Z",
            "ft-3",
            "atlas-chat",
            Some("atlas"),
            "eu",
            a,
            1e23,
        ),
        // 5: a fine-tune of a base unknown to the ledger: assumed 3.33e24, a third is 1.109889e24.
        decided(
            "2026-04-06T08:00:00Z",
            "ft-4",
            "orca-ft",
            Some("orca"),
            "eu",
            a,
            2e24,
        ),
        // 6: a fine-tune under a policy whose rule has no reporting obligation.
        decided(
            "2026-04-07T08:00:00Z",
            "ft-5",
            "kite-ft",
            Some("atlas"),
            "other",
            a,
            2e24,
        ),
    ] {
        l.append(r).expect("append");
    }
    l
}

fn report() -> (Ledger, SignedReport) {
    let l = ledger();
    let key = signing_key_from_seed(&[5; 32]);
    let body = build_report(
        l.entries(),
        &policies(),
        Period::covering(l.entries()),
        None,
    )
    .expect("build");
    (l, body.sign(&key).expect("sign"))
}

#[test]
fn a_fine_tune_past_a_third_of_its_base_is_listed_with_its_deadline() {
    let (_, r) = report();
    let b = &r.report;
    assert_eq!(
        b.modification_thresholds.len(),
        1,
        "only rules with reporting"
    );
    let m = &b.modification_thresholds[0];
    assert_eq!(
        (m.policy.as_str(), m.rule.as_str()),
        ("eu", "eu-one-third-modification")
    );
    assert_eq!(m.fraction_of_base, 0.3333);
    assert_eq!(m.assumed_base_flop, Some(Flop(3.33e24)));
    assert_eq!(
        b.modification_crossings,
        vec![
            ModificationCrossing {
                lineage: "atlas-chat".into(),
                base_lineage: "atlas".into(),
                policy: "eu".into(),
                rule: "eu-one-third-modification".into(),
                regulation: "EU AI Act Art. 52(1) (modifier becomes provider)".into(),
                base_flop: Flop(3e24),
                base_assumed: false,
                threshold: Flop(3e24 * 0.3333),
                crossed_at: t("2026-04-04T09:30:00Z"),
                crossed_at_seq: 3,
                charged_at_crossing: Flop(5e23 + 6e23),
                notify_by: t("2026-04-18T09:30:00Z"),
            },
            ModificationCrossing {
                lineage: "orca-ft".into(),
                base_lineage: "orca".into(),
                policy: "eu".into(),
                rule: "eu-one-third-modification".into(),
                regulation: "EU AI Act Art. 52(1) (modifier becomes provider)".into(),
                base_flop: Flop(3.33e24),
                base_assumed: true,
                threshold: Flop(3.33e24 * 0.3333),
                crossed_at: t("2026-04-06T08:00:00Z"),
                crossed_at_seq: 5,
                charged_at_crossing: Flop(2e24),
                notify_by: t("2026-04-20T08:00:00Z"),
            },
        ]
    );
}

#[test]
fn verify_recomputes_the_modifications_and_names_an_altered_one() {
    let (l, r) = report();
    let key = signing_key_from_seed(&[5; 32]);
    let pem = public_key_pem(&key.verifying_key()).expect("pem");
    let mut jsonl = Vec::new();
    write_jsonl(l.entries(), &mut jsonl).expect("write");
    let check = |report: &SignedReport| {
        let bytes = report.canonical_bytes().expect("bytes");
        verify_report(&VerifyRequest {
            report: NamedInput {
                name: "report.json",
                bytes: &bytes,
            },
            public_keys: &[NamedInput {
                name: "public-key.pem",
                bytes: pem.as_bytes(),
            }],
            ledger: Some(NamedInput {
                name: "ledger.jsonl",
                bytes: &jsonl,
            }),
            previous: None,
            entry: None,
            allow_longer_ledger: false,
        })
    };
    let ok = check(&r).expect("verifies");
    assert!(
        ok.checks.iter().any(|c| c.contains("totals")),
        "{:?}",
        ok.checks
    );
    // Signed by the right key, but stating another deadline, or omitting a crossing.
    let mut later = r.report.clone();
    later.modification_crossings[0].notify_by = t("2026-04-25T09:30:00Z");
    let err = check(&later.sign(&key).expect("sign")).expect_err("altered deadline");
    assert_eq!(err.class, FailureClass::Totals, "{}", err.message);
    assert!(
        err.message
            .contains("report.modificationCrossings[0].notifyBy"),
        "{}",
        err.message
    );
    let mut fewer = r.report.clone();
    fewer.modification_crossings.remove(1);
    let err = check(&fewer.sign(&key).expect("sign")).expect_err("omitted crossing");
    assert_eq!(err.class, FailureClass::Totals, "{}", err.message);
    assert!(
        err.message.contains("modificationCrossings"),
        "{}",
        err.message
    );
    // A stated rule with another fraction gives other crossings.
    let mut looser = r.report.clone();
    looser.modification_thresholds[0].fraction_of_base = 0.5;
    let err = check(&looser.sign(&key).expect("sign")).expect_err("other rule");
    assert_eq!(err.class, FailureClass::Totals, "{}", err.message);
}

#[test]
fn every_view_shows_the_modifications() {
    let (_, r) = report();
    let csv = to_csv(&r);
    let rows: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = rows[0].split(',').collect();
    let row = rows
        .iter()
        .find(|l| l.starts_with("modification_crossing,atlas-chat,"))
        .expect("CSV row");
    let cells: Vec<&str> = row.split(',').collect();
    assert_eq!(cells.len(), header.len(), "{row}");
    let cell = |name: &str| cells[header.iter().position(|h| *h == name).expect(name)];
    assert_eq!(cell("base_lineage"), "atlas");
    assert_eq!(cell("rule"), "eu-one-third-modification");
    assert_eq!(cell("crossed_at"), "2026-04-04T09:30:00Z");
    assert_eq!(cell("crossed_at_seq"), "3");
    assert_eq!(cell("notify_by"), "2026-04-18T09:30:00Z");
    assert_eq!(cell("charged_flop").parse::<f64>().ok(), Some(5e23 + 6e23));
    assert!(
        rows.iter()
            .any(|l| l.starts_with("modification_crossing,orca-ft,"))
    );
    for l in &rows {
        assert_eq!(l.split(',').count(), header.len(), "ragged CSV row {l}");
    }

    let md = to_markdown(&r).expect("markdown");
    assert!(md.contains("## Substantial modifications"), "{md}");
    assert!(
        md.contains("| atlas-chat | atlas |") && md.contains("**2026-04-18T09:30:00Z**"),
        "{md}"
    );
    assert!(
        md.contains("| orca-ft | orca |") && md.contains("assumed"),
        "{md}"
    );

    let yaml = to_openreports_yaml(&r).expect("yaml");
    let doc: serde_json::Value = serde_saphyr::from_str(&yaml).expect("parse yaml");
    let results = doc["results"].as_array().expect("results");
    let mods: Vec<&serde_json::Value> = results
        .iter()
        .filter(|x| x["rule"] == "eu-one-third-modification")
        .collect();
    assert_eq!(mods.len(), 2, "{yaml}");
    assert_eq!(mods[0]["result"], "warn");
    assert_eq!(mods[0]["properties"]["baseLineage"], "atlas");
    assert_eq!(mods[0]["properties"]["notifyBy"], "2026-04-18T09:30:00Z");
    assert_eq!(mods[1]["properties"]["baseAssumed"], "true");
    let warn = doc["summary"]["warn"].as_u64().expect("warn");
    assert!(warn >= 2, "{yaml}");
}

#[test]
fn reports_without_a_modification_rule_are_unchanged() {
    let l = ledger();
    let key = signing_key_from_seed(&[5; 32]);
    let no_rule: Vec<Policy> = policies()
        .into_iter()
        .map(|mut p| {
            p.spec.lineage.modification = None;
            p
        })
        .collect();
    let r = build_report(l.entries(), &no_rule, Period::covering(l.entries()), None)
        .expect("build")
        .sign(&key)
        .expect("sign");
    assert!(r.report.modification_crossings.is_empty());
    let bytes = String::from_utf8(r.canonical_bytes().expect("bytes")).expect("utf8");
    assert!(!bytes.contains("modification"), "{bytes}");
    assert!(
        !to_markdown(&r)
            .expect("md")
            .contains("Substantial modifications")
    );
}
