//! Reports apply each policy's reporting tiers and modification rule only
//! to jobs the policy selected: Decided entries name the policies whose
//! namespace selector matched (`selectedBy`), and the report (and the
//! verifier, which recomputes it) counts a crossing for a policy only at an
//! admission it selected. Entries written before `selectedBy` existed count
//! toward every policy, as they did.

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::{Catalog, Precision};
use komptroller_engine::decision::Verdict;
use komptroller_engine::engine::{Engine, Event};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use komptroller_engine::ledger::{
    AcceleratorUse, Ledger, LedgerEntry, LedgerEvent, LedgerRecord, write_jsonl,
};
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::policy::{Mode, Policy};
use komptroller_engine::report::{
    FailureClass, NamedInput, Period, ReportBody, SignedReport, ThresholdCrossing, Verified,
    VerifyFailure, VerifyRequest, build_report, verify_report,
};
use komptroller_engine::signing::{public_key_pem, signing_key_from_seed};
use komptroller_engine::units::Flop;

const US: &str = include_str!("../../policies/us-frontier.yaml");
const BIO: &str = "us-biological-sequences";
const FRONTIER: &str = "us-frontier";
const BIO_LABEL: (&str, &str) = ("komptroller.dev/data", "biological-sequences");

fn t(s: &str) -> Timestamp {
    s.parse().expect("time")
}

fn policies() -> Vec<Policy> {
    parse_policies(US, "us-frontier.yaml").expect("policies")
}

fn job(ns: &str, name: &str, lineage: &str, labels: &[(&str, &str)]) -> JobRequest {
    JobRequest {
        id: JobId {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        namespace_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into(),
        model: ModelSpec {
            name: Some(lineage.into()),
            ..ModelSpec::default()
        },
        accelerator: AcceleratorSpec {
            kind: "nvidia-h100-sxm".into(),
            precision: Precision::Bf16,
        },
        // 256 × H100 × 500 h ≈ 4.6e23 FLOP (upper bound): past the 1e23 bio tier.
        count: 256,
        max_duration: "500h".parse().expect("duration"),
        priority: 0,
        submitter: Some(Principal {
            user: "alice".into(),
            groups: vec!["ml".into()],
        }),
        spec_hash: String::new(),
    }
}

fn selected_by(r: &LedgerRecord) -> Option<Vec<String>> {
    match &r.event {
        LedgerEvent::Decided { selected_by, .. } => selected_by.clone(),
        _ => None,
    }
}

fn sign(body: ReportBody) -> SignedReport {
    body.sign(&signing_key_from_seed(&[11; 32])).expect("sign")
}

fn report(entries: &[LedgerEntry]) -> SignedReport {
    sign(build_report(entries, &policies(), Period::covering(entries), None).expect("build"))
}

fn ledger(records: impl IntoIterator<Item = LedgerRecord>) -> Ledger {
    let mut l = Ledger::new();
    for r in records {
        l.append(r).expect("append");
    }
    l
}

fn crossings(r: &SignedReport) -> Vec<(&str, &str, u64)> {
    r.report
        .threshold_crossings
        .iter()
        .map(|c| (c.lineage.as_str(), c.policy.as_str(), c.crossed_at_seq))
        .collect()
}

/// The engine fills `selectedBy` with every selecting policy, and a report
/// over its ledger lists the bio tier only for the lineage trained in the
/// labelled namespace, at its admission (after approval).
#[test]
fn the_engine_records_the_selecting_policies_and_reports_apply_tiers_only_there() {
    let mut e = Engine::new(Catalog::builtin());
    let t0 = t("2026-06-01T00:00:00Z");
    let mut records = Vec::new();
    for p in policies() {
        records.extend(e.apply(t0, Event::UpsertPolicy(p)).expect("policy").records);
    }
    let plain = job("plain", "prot-1", "prot", &[("team", "plain")]);
    let bio = job("bio", "dna-1", "dna", &[BIO_LABEL]);
    let t1 = t0 + SignedDuration::from_hours(1);
    let t2 = t0 + SignedDuration::from_hours(2);
    let t3 = t0 + SignedDuration::from_hours(3);
    records.extend(e.apply(t1, Event::Submit(plain)).expect("submit").records);
    records.extend(e.apply(t2, Event::Submit(bio)).expect("submit").records);
    let approve = Event::Approve {
        job: JobId {
            namespace: "bio".into(),
            name: "dna-1".into(),
            uid: "uid-dna-1".into(),
        },
        approver: Principal {
            user: "bob".into(),
            groups: vec!["biosecurity".into()],
        },
        spec_hash: String::new(),
    };
    records.extend(e.apply(t3, approve).expect("approve").records);

    let decided: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            LedgerEvent::Decided { verdict, .. } => Some((
                r.job.as_ref().map(|j| j.name.clone()),
                *verdict,
                selected_by(r),
            )),
            _ => None,
        })
        .collect();
    let both = Some(vec![BIO.to_string(), FRONTIER.to_string()]);
    assert_eq!(
        decided,
        vec![
            (
                Some("prot-1".into()),
                Verdict::Admit,
                Some(vec![FRONTIER.to_string()])
            ),
            (Some("dna-1".into()), Verdict::Escalate, both.clone()),
            (Some("dna-1".into()), Verdict::Admit, both),
        ]
    );

    let l = ledger(records.clone());
    let r = report(l.entries());
    let admitted_dna = l
        .entries()
        .iter()
        .find(|e| {
            e.record.time == t3
                && matches!(
                    e.record.event,
                    LedgerEvent::Decided {
                        verdict: Verdict::Admit,
                        ..
                    }
                )
        })
        .expect("dna admission")
        .seq;
    assert_eq!(crossings(&r), vec![("dna", BIO, admitted_dna)]);
    let c = &r.report.threshold_crossings[0];
    assert_eq!(c.tier, "bio-sequence-model");
    assert_eq!(c.crossed_at, t3);
    assert_eq!(c.notify_by, t3 + SignedDuration::from_hours(15 * 24));

    // The engine's own crossings (simulate's output, the operator's books)
    // follow the same rule, live and when rebuilt from the ledger.
    let engine_crossings = |e: &Engine| -> Vec<(String, String, Timestamp)> {
        e.crossings()
            .iter()
            .map(|c| (c.lineage.clone(), c.policy.clone(), c.at))
            .collect()
    };
    let live = engine_crossings(&e);
    assert!(
        live.contains(&("dna".into(), BIO.into(), t3)),
        "the engine records dna crossing the bio tier at its admission: {live:?}"
    );
    assert!(
        !live.iter().any(|(l, p, _)| l == "prot" && p == BIO),
        "a lineage trained only outside the bio namespaces never crosses the bio tier: {live:?}"
    );
    let mut rebuilt = Engine::new(Catalog::builtin());
    for p in policies() {
        rebuilt.apply(t0, Event::UpsertPolicy(p)).expect("policy");
    }
    rebuilt.replay_ledger(records.iter());
    assert_eq!(
        engine_crossings(&rebuilt),
        live,
        "replayed crossings equal the live ones"
    );

    // The same ledger written before `selectedBy` existed: every policy's
    // tiers count everywhere, as they did then.
    let old = ledger(records.into_iter().map(|mut r| {
        if let LedgerEvent::Decided { selected_by, .. } = &mut r.event {
            *selected_by = None;
        }
        r
    }));
    let r = report(old.entries());
    let prot_seq = old
        .entries()
        .iter()
        .find(|e| e.record.time == t1)
        .expect("prot admission")
        .seq;
    assert_eq!(
        crossings(&r),
        vec![("prot", BIO, prot_seq), ("dna", BIO, admitted_dna)]
    );
}

/// An admission of `lineage` in `ns`, charging `charged`, selected by `by`.
fn admitted(
    time: &str,
    (ns, name): (&str, &str),
    lineage: &str,
    base: Option<&str>,
    charged: f64,
    by: Option<&[&str]>,
    policy: Option<&str>,
) -> LedgerRecord {
    LedgerRecord {
        time: t(time),
        job: Some(JobId {
            namespace: ns.into(),
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
            verdict: Verdict::Admit,
            enforced_verdict: Verdict::Admit,
            mode: Mode::Enforce,
            policy: policy.map(String::from),
            rule: None,
            tier: None,
            reason: "r".into(),
            projection: None,
            governing: Flop(charged),
            charged: Flop(charged),
            charged_lineages: std::iter::once(lineage)
                .chain(base)
                .map(String::from)
                .collect(),
            selected_by: by.map(|v| v.iter().map(|s| s.to_string()).collect()),
        },
    }
}

/// Mixed ledger: the lineage `mix` trains 2e23 outside the bio namespaces
/// (no crossing), then 1e21 inside (the crossing, at its cumulative 2.01e23);
/// `out` only trains outside; `legacy` has an entry without `selectedBy`.
fn mixed() -> Ledger {
    let f: &[&str] = &[FRONTIER];
    let both: &[&str] = &[BIO, FRONTIER];
    let none: &[&str] = &[];
    ledger([
        admitted(
            "2026-06-01T08:00:00Z",
            ("plain", "m-1"),
            "mix",
            None,
            2e23,
            Some(f),
            None,
        ),
        admitted(
            "2026-06-01T09:00:00Z",
            ("plain", "o-1"),
            "out",
            None,
            5e23,
            Some(f),
            None,
        ),
        admitted(
            "2026-06-02T10:00:00Z",
            ("lab", "m-2"),
            "mix",
            None,
            1e21,
            Some(both),
            None,
        ),
        admitted(
            "2026-06-03T08:00:00Z",
            ("plain", "o-2"),
            "out",
            None,
            1e23,
            Some(none),
            None,
        ),
        admitted(
            "2026-06-04T08:00:00Z",
            ("old", "l-1"),
            "legacy",
            None,
            3e23,
            None,
            None,
        ),
    ])
}

#[test]
fn a_tier_is_crossed_only_at_an_admission_its_policy_selected() {
    let r = report(mixed().entries());
    assert_eq!(crossings(&r), vec![("mix", BIO, 2), ("legacy", BIO, 4)]);
    let c = &r.report.threshold_crossings[0];
    assert_eq!(c.crossed_at, t("2026-06-02T10:00:00Z"));
    assert_eq!(c.charged_at_crossing, Flop(2e23) + Flop(1e21));
    assert_eq!(c.notify_by, t("2026-06-17T10:00:00Z"));
}

fn verify(l: &Ledger, r: &SignedReport) -> Result<Verified, VerifyFailure> {
    let pem = public_key_pem(&signing_key_from_seed(&[11; 32]).verifying_key()).expect("pem");
    verify_with(&jsonl(l), r, &pem)
}

fn jsonl(l: &Ledger) -> Vec<u8> {
    let mut out = Vec::new();
    write_jsonl(l.entries(), &mut out).expect("write");
    out
}

fn verify_with(ledger: &[u8], r: &SignedReport, pem: &str) -> Result<Verified, VerifyFailure> {
    let bytes = r.canonical_bytes().expect("bytes");
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
            bytes: ledger,
        }),
        previous: None,
        entry: None,
        allow_longer_ledger: false,
    })
}

#[test]
fn verify_recomputes_the_selected_crossings_and_detects_tampering() {
    let l = mixed();
    let r = report(l.entries());
    verify(&l, &r).expect("verifies");

    // A report stating the crossing the old rule gives (`out` in a plain
    // namespace) does not match the entries.
    let mut wrong = r.report.clone();
    wrong.threshold_crossings.insert(
        1,
        ThresholdCrossing {
            lineage: "out".into(),
            crossed_at: t("2026-06-01T09:00:00Z"),
            crossed_at_seq: 1,
            charged_at_crossing: Flop(5e23),
            notify_by: t("2026-06-16T09:00:00Z"),
            ..r.report.threshold_crossings[0].clone()
        },
    );
    let err = verify(&l, &sign(wrong)).expect_err("extra crossing");
    assert_eq!(err.class, FailureClass::Totals, "{}", err.message);
    assert!(
        err.message.contains("thresholdCrossings"),
        "{}",
        err.message
    );

    // Editing `selectedBy` in the ledger breaks its chain.
    let pem = public_key_pem(&signing_key_from_seed(&[11; 32]).verifying_key()).expect("pem");
    let text = String::from_utf8(jsonl(&l)).expect("utf-8");
    let needle = format!(r#""selectedBy":["{FRONTIER}"]"#);
    assert!(text.contains(&needle), "{text}");
    let tampered = text.replacen(&needle, &format!(r#""selectedBy":["{BIO}"]"#), 1);
    let err = verify_with(tampered.as_bytes(), &r, &pem).expect_err("tampered selectedBy");
    assert_eq!(err.class, FailureClass::Chain, "{}", err.message);
    let dropped = text.replacen(&format!(r#","selectedBy":["{FRONTIER}"]"#), "", 1);
    let err = verify_with(dropped.as_bytes(), &r, &pem).expect_err("dropped selectedBy");
    assert_eq!(err.class, FailureClass::Chain, "{}", err.message);

    // A ledger whose entries say the bio policy selected `out` (re-chained,
    // so the chain holds) is not the ledger the report signed.
    let f: &[&str] = &[FRONTIER];
    let both: &[&str] = &[BIO, FRONTIER];
    let relabelled = ledger(l.entries().iter().map(|e| {
        let mut rec = e.record.clone();
        if e.seq == 1
            && let LedgerEvent::Decided { selected_by, .. } = &mut rec.event
        {
            assert_eq!(
                selected_by.as_deref(),
                Some(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])
            );
            *selected_by = Some(both.iter().map(|s| s.to_string()).collect());
        }
        rec
    }));
    let err = verify(&relabelled, &r).expect_err("relabelled");
    assert_eq!(err.class, FailureClass::LedgerMismatch, "{}", err.message);
    // …and a report built from it states the crossing, and verifies against it.
    let r2 = report(relabelled.entries());
    assert_eq!(
        crossings(&r2),
        vec![("out", BIO, 1), ("mix", BIO, 2), ("legacy", BIO, 4)]
    );
    verify(&relabelled, &r2).expect("verifies");
}

/// A modification rule applies to fine-tunes its policy selected, even when
/// another policy decided the job; old entries use the deciding policy.
#[test]
fn modification_rules_follow_the_selecting_policies() {
    let yaml = r#"
- name: eu
  spec:
    lineage:
      modification:
        name: eu-one-third-modification
        fractionOfBase: 0.3333
        action: Escalate
        approvals: {required: 1, groups: [ai-act-compliance]}
        reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 14d}
    tiers: []
- name: strict
  spec:
    tiers: []
"#;
    let policies: Vec<Policy> = serde_saphyr::from_str(yaml).expect("policies");
    let eu_strict: &[&str] = &["eu", "strict"];
    let strict: &[&str] = &["strict"];
    let l = ledger([
        admitted(
            "2026-07-01T08:00:00Z",
            ("a", "b"),
            "atlas",
            None,
            3e24,
            Some(eu_strict),
            Some("eu"),
        ),
        // Selected by eu, decided by strict: crosses eu's rule.
        admitted(
            "2026-07-02T08:00:00Z",
            ("a", "f1"),
            "ft-a",
            Some("atlas"),
            2e24,
            Some(eu_strict),
            Some("strict"),
        ),
        // Not selected by eu: no crossing, though eu decided nothing here.
        admitted(
            "2026-07-03T08:00:00Z",
            ("b", "f2"),
            "ft-b",
            Some("atlas"),
            2e24,
            Some(strict),
            Some("strict"),
        ),
        // Old entries: the deciding policy's rule only.
        admitted(
            "2026-07-04T08:00:00Z",
            ("c", "f3"),
            "ft-c",
            Some("atlas"),
            2e24,
            None,
            Some("strict"),
        ),
        admitted(
            "2026-07-05T08:00:00Z",
            ("c", "f4"),
            "ft-d",
            Some("atlas"),
            2e24,
            None,
            Some("eu"),
        ),
    ]);
    let body =
        build_report(l.entries(), &policies, Period::covering(l.entries()), None).expect("build");
    let got: Vec<_> = body
        .modification_crossings
        .iter()
        .map(|c| (c.lineage.as_str(), c.policy.as_str(), c.crossed_at_seq))
        .collect();
    assert_eq!(got, vec![("ft-a", "eu", 1), ("ft-d", "eu", 4)]);
    let r = sign(body);
    verify(&l, &r).expect("verifies");
}
