//! The treaty audit over clusters built by the simulator: each cluster
//! replays its own trace under its own policy, keeps its ledger and signs
//! a chain of daily reports with its own key; the audit verifies them under
//! a trust file and merges what they show.

use std::time::Duration;

use jiff::Timestamp;
use komptroller_engine::audit::{
    Aliases, AuditReport, AuditRequest, BooksFailureKind, ClusterBooks, FindingKind, Trust, audit,
    audit_difference, check_audit_consistency, parse_aliases, parse_audit_report, parse_trust,
};
use komptroller_engine::catalog::Catalog;
use komptroller_engine::ledger::{Ledger, write_jsonl};
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::report::{NamedInput, SignedReport, sign_report_chain};
use komptroller_engine::signing::{Ed25519SigningKey, public_key_pem, signing_key_from_seed};
use komptroller_engine::simulate::{SimulateOptions, parse_trace, simulate};

const START: &str = "2026-01-05T00:00:00Z";

/// EU AI Act's systemic-risk threshold with a reporting obligation, and no
/// action beyond admitting: the clusters let everything run.
const POLICY: &str = r#"apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata:
  name: eu-ai-act
spec:
  lineage:
    countFineTunesTowardBase: true
  tiers:
    - name: eu-systemic-risk
      threshold: 1e25
      action: Admit
      reporting: {regulation: "EU AI Act Art. 52(1)", notifyWithin: 14d}
"#;

fn key(seed: u8) -> Ed25519SigningKey {
    signing_key_from_seed(&[seed; 32])
}

fn pem(k: &Ed25519SigningKey) -> String {
    public_key_pem(&k.verifying_key()).expect("pem")
}

/// A submission of `count` H100s for `days` on `model` (optionally a
/// fine-tune of `base`), `at` hours after the start.
fn job(name: &str, model: &str, base: Option<&str>, count: u32, days: u32, at_h: u32) -> String {
    let base = base.map_or(String::new(), |b| format!(", baseModel: {b}"));
    format!(
        "  - at: {at_h}h\n    submit: {{name: {name}, namespace: lab, submitter: ana, groups: [lab], \
model: {{name: {model}{base}}}, accelerator: {{type: nvidia-h100-sxm, precision: bf16}}, \
count: {count}, maxDuration: {days}d, runtime: {days}d}}\n"
    )
}

fn trace(jobs: &[String]) -> String {
    format!(
        "start: {START}\nnamespaces: {{lab: {{team: lab}}}}\nevents:\n{}",
        jobs.concat()
    )
}

/// A cluster's books: the signed daily reports (file name, bytes) and the ledger.
struct Books {
    name: String,
    reports: Vec<(String, Vec<u8>)>,
    ledger: Vec<u8>,
}

/// Replays `jobs` and signs a report every day for `days` days, with the
/// key `key_at(period end)` gives.
fn books<'k>(
    name: &str,
    jobs: &[String],
    days: i64,
    key_at: impl FnMut(Timestamp) -> &'k Ed25519SigningKey,
) -> Books {
    let t = parse_trace(&trace(jobs), "trace").expect("trace");
    let policies = parse_policies(POLICY, "policy").expect("policy");
    let sim = simulate(
        Catalog::builtin(),
        policies.clone(),
        &t,
        &SimulateOptions {
            timeline: false,
            records: true,
        },
    )
    .expect("simulate");
    let mut ledger = Ledger::new();
    for r in &sim.records {
        ledger.append(r.clone()).expect("append");
    }
    let start: Timestamp = START.parse().expect("start");
    let until = start
        .checked_add(jiff::SignedDuration::from_hours(24 * days))
        .expect("until");
    let chain = sign_report_chain(
        ledger.entries(),
        &sim.policies,
        start,
        Duration::from_secs(86_400),
        until,
        key_at,
    )
    .expect("chain");
    let reports = chain
        .iter()
        .map(|r| {
            (
                format!(
                    "{name}/report-{:012}-{}.json",
                    r.report.range.to, r.report.period.to
                ),
                r.canonical_bytes().expect("bytes"),
            )
        })
        .collect();
    let mut bytes = Vec::new();
    write_jsonl(ledger.entries(), &mut bytes).expect("jsonl");
    Books {
        name: name.to_string(),
        reports,
        ledger: bytes,
    }
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// A trust file listing each cluster with its keys (inline PEM, optional validity).
/// A public key's PEM and its optional validFrom and validUntil.
type KeyEntry<'a> = (String, Option<&'a str>, Option<&'a str>);

fn trust_yaml(clusters: &[(&str, Vec<KeyEntry<'_>>)]) -> String {
    let mut out = String::from("clusters:\n");
    for (name, keys) in clusters {
        out.push_str(&format!(
            "  - name: {name}\n    reportEvery: 1d\n    keys:\n"
        ));
        for (pem, from, until) in keys {
            out.push_str("      - key: |\n");
            out.push_str(&indent(pem, 10));
            if let Some(f) = from {
                out.push_str(&format!("        validFrom: {f}\n"));
            }
            if let Some(u) = until {
                out.push_str(&format!("        validUntil: {u}\n"));
            }
        }
    }
    out
}

fn trust_of(clusters: &[(&str, &Ed25519SigningKey)]) -> Trust {
    let list: Vec<(&str, Vec<KeyEntry<'_>>)> = clusters
        .iter()
        .map(|(n, k)| (*n, vec![(pem(k), None, None)]))
        .collect();
    parse_trust(&trust_yaml(&list), "trust.yaml", |p| {
        Err(format!("no file {p} in this test"))
    })
    .expect("trust")
}

fn run(trust: &Trust, aliases: &Aliases, all: &[Books], ledgers: bool, as_of: &str) -> AuditReport {
    let cluster_books: Vec<ClusterBooks<'_>> = all
        .iter()
        .map(|b| ClusterBooks {
            cluster: &b.name,
            reports: b
                .reports
                .iter()
                .map(|(n, bytes)| NamedInput { name: n, bytes })
                .collect(),
            ledger: ledgers.then(|| NamedInput {
                name: "ledger.jsonl",
                bytes: &b.ledger,
            }),
        })
        .collect();
    audit(&AuditRequest {
        trust,
        aliases,
        books: &cluster_books,
        as_of: as_of.parse().expect("as_of"),
        trust_digest: None,
        aliases_digest: None,
    })
    .expect("audit")
}

/// 2048 H100 for 34 days at bf16 peak: 2048 × 989e12 × 34 × 86400 ≈ 5.95e24 FLOP.
fn frontier_share(cluster: &str) -> String {
    job(
        &format!("{cluster}-frontier"),
        "frontier",
        None,
        2048,
        34,
        1,
    )
}

/// A day's run on 8 GPUs, over before any chain below ends.
fn short_job() -> String {
    job("short", "short", None, 8, 1, 1)
}

/// End of the 40 daily reports every cluster below signs.
const AS_OF: &str = "2026-02-14T00:00:00Z";

fn unions(a: &AuditReport) -> Vec<&komptroller_engine::audit::UnionCrossing> {
    a.findings
        .iter()
        .filter_map(|f| match &f.detail {
            FindingKind::UnionCrossing { crossing } => Some(crossing),
            _ => None,
        })
        .collect()
}

fn three_trust(keys: &[Ed25519SigningKey; 3]) -> Trust {
    trust_of(&[
        ("eu-west", &keys[0]),
        ("us-east", &keys[1]),
        ("ap-south", &keys[2]),
    ])
}

fn three_clusters(keys: &[Ed25519SigningKey; 3]) -> Vec<Books> {
    ["eu-west", "us-east", "ap-south"]
        .iter()
        .zip(keys)
        .map(|(name, k)| {
            books(
                name,
                &[
                    frontier_share(name),
                    job(&format!("{name}-small"), "small", None, 512, 20, 2),
                ],
                40,
                |_| k,
            )
        })
        .collect()
}

#[test]
fn a_lineage_split_across_three_clusters_crosses_in_the_union_only() {
    let keys = [key(1), key(2), key(3)];
    let all = three_clusters(&keys);
    let trust = three_trust(&keys);
    for ledgers in [true, false] {
        let a = run(&trust, &Aliases::none(), &all, ledgers, AS_OF);
        assert_eq!(a.summary.failed, 0, "{}", a.render_text(20));
        // No single cluster's report lists the crossing.
        for c in &a.clusters {
            assert!(c.verified, "{c:?}");
        }
        let found = unions(&a);
        assert_eq!(found.len(), 1, "{}", a.render_text(20));
        let x = found[0];
        assert_eq!(x.lineage, "frontier");
        assert_eq!(x.regulation, "EU AI Act Art. 52(1)");
        assert_eq!(x.threshold.get(), 1e25);
        assert_eq!(x.clusters.len(), 3);
        let share = 2048.0 * 989e12 * 34.0 * 86_400.0;
        for s in &x.clusters {
            assert!((s.charged.get() - share).abs() < share * 1e-9, "{s:?}");
        }
        // The second cluster's admission takes the union past 1e25 (2 × 5.95e24).
        assert!(x.charged_at_crossing.get() > 1e25 && x.charged_at_crossing.get() < 1.2e25);
        let admitted: Timestamp = "2026-01-05T01:00:00Z".parse().unwrap();
        if ledgers {
            assert_eq!(x.crossed_at, admitted);
            assert_eq!(x.crossed_after, None);
        } else {
            // Reports only: the end of the day it happened in.
            assert_eq!(
                x.crossed_at,
                "2026-01-06T00:00:00Z".parse::<Timestamp>().unwrap()
            );
            assert_eq!(x.crossed_after, None, "the first report has no predecessor");
        }
        assert_eq!(
            x.notify_by,
            x.crossed_at
                .checked_add(jiff::SignedDuration::from_hours(14 * 24))
                .unwrap()
        );
        // Exit code 1: findings, every cluster verified.
        assert_eq!(a.exit_code(), 1);
        let merged = a.lineages.iter().find(|l| l.lineage == "frontier").unwrap();
        assert!((merged.total.charged.get() - 3.0 * share).abs() < share * 1e-9);
    }
}

#[test]
fn a_lineage_under_the_threshold_in_the_union_is_not_a_finding() {
    let keys = [key(1), key(2), key(3)];
    let all = three_clusters(&keys);
    let trust = three_trust(&keys);
    let a = run(&trust, &Aliases::none(), &all, true, AS_OF);
    let small = a.lineages.iter().find(|l| l.lineage == "small").unwrap();
    // 3 × 512 × 989e12 × 20 d ≈ 2.6e24 < 1e25.
    assert!(small.total.charged.get() > 2e24 && small.total.charged.get() < 1e25);
    assert!(small.crossings.is_empty());
    assert!(unions(&a).iter().all(|x| x.lineage != "small"));
}

#[test]
fn a_crossing_a_cluster_already_reported_is_not_a_finding() {
    let keys = [key(1), key(2)];
    // One cluster alone runs 2 × 5.95e24 and reports the crossing itself.
    let big = books(
        "eu-west",
        &[
            frontier_share("a"),
            job("b-frontier", "frontier", None, 2048, 34, 3),
        ],
        40,
        |_| &keys[0],
    );
    let other = books("us-east", &[frontier_share("c")], 40, |_| &keys[1]);
    let trust = trust_of(&[("eu-west", &keys[0]), ("us-east", &keys[1])]);
    let a = run(&trust, &Aliases::none(), &[big, other], true, AS_OF);
    let merged = a.lineages.iter().find(|l| l.lineage == "frontier").unwrap();
    assert_eq!(merged.crossings.len(), 1);
    assert_eq!(merged.crossings[0].reported_by.len(), 1);
    assert_eq!(merged.crossings[0].reported_by[0].cluster, "eu-west");
    assert!(unions(&a).is_empty(), "{}", a.render_text(10));
    assert_eq!(a.exit_code(), 0, "{}", a.render_text(10));
}

#[test]
fn a_tampered_ledger_byte_fails_that_cluster_and_names_it() {
    let keys = [key(1), key(2), key(3)];
    let mut all = three_clusters(&keys);
    let trust = three_trust(&keys);
    // Change one digit of a FLOP figure in us-east's ledger.
    let ledger = &mut all[1].ledger;
    let at = ledger
        .windows(9)
        .position(|w| w == b"\"charged\"")
        .expect("a charged field");
    let digit = ledger[at + 10..]
        .iter()
        .position(|b| b.is_ascii_digit() && *b != b'9')
        .expect("digit")
        + at
        + 10;
    ledger[digit] += 1;
    let a = run(&trust, &Aliases::none(), &all, true, AS_OF);
    let us = &a.clusters[1];
    assert!(!us.verified);
    let f = us.failure.as_ref().unwrap();
    assert_eq!(f.kind, BooksFailureKind::LedgerChain, "{f:?}");
    assert_eq!(f.file, "ledger.jsonl");
    assert!(
        f.message.starts_with("cluster us-east: ledger.jsonl"),
        "{}",
        f.message
    );
    assert!(f.message.contains("seq"), "{}", f.message);
    assert!(a.clusters[0].verified && a.clusters[2].verified);
    assert_eq!(a.exit_code(), 3);
    // The failed cluster's figures are not merged.
    let merged = a.lineages.iter().find(|l| l.lineage == "frontier").unwrap();
    assert_eq!(merged.clusters.len(), 2);
}

#[test]
fn a_tampered_report_byte_fails_that_cluster_and_names_the_report() {
    let keys = [key(1), key(2), key(3)];
    let mut all = three_clusters(&keys);
    let trust = three_trust(&keys);
    // Lower a cumulative figure in one of ap-south's reports, keeping the JSON canonical.
    let (name, bytes) = &mut all[2].reports[10];
    let name = name.clone();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("\"charged\":").unwrap() + "\"charged\":".len();
    let mut b = text.into_bytes();
    assert!(b[at].is_ascii_digit() && b[at] != b'1');
    b[at] -= 1;
    *bytes = b;
    for ledgers in [true, false] {
        let a = run(&trust, &Aliases::none(), &all, ledgers, AS_OF);
        let f = a.clusters[2].failure.as_ref().expect("ap-south fails");
        assert_eq!(f.kind, BooksFailureKind::Signature, "{f:?}");
        assert_eq!(f.file, name);
        assert!(
            f.message.contains("ap-south") && f.message.contains(&name),
            "{}",
            f.message
        );
        assert_eq!(a.exit_code(), 3);
    }
}

#[test]
fn a_missing_report_in_the_middle_of_the_chain_is_found() {
    let k = key(7);
    let mut b = books("eu-west", &[frontier_share("eu-west")], 40, |_| &k);
    let removed = b.reports.remove(20).0;
    let trust = trust_of(&[("eu-west", &k)]);
    for ledgers in [true, false] {
        let a = run(
            &trust,
            &Aliases::none(),
            std::slice::from_ref(&b),
            ledgers,
            AS_OF,
        );
        assert!(a.clusters[0].verified, "{:?}", a.clusters[0].failure);
        let missing: Vec<_> = a
            .findings
            .iter()
            .filter_map(|f| match &f.detail {
                FindingKind::MissingReports {
                    after,
                    before,
                    period,
                    ..
                } => Some((after.clone(), before.clone(), *period)),
                _ => None,
            })
            .collect();
        assert_eq!(missing.len(), 1, "{}", a.render_text(5));
        let (after, before, period) = &missing[0];
        assert_eq!(after.as_deref(), Some(b.reports[19].0.as_str()));
        assert_eq!(before, &b.reports[20].0);
        let p = period.unwrap();
        assert_eq!(p.from, "2026-01-25T00:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(p.to, "2026-01-26T00:00:00Z".parse::<Timestamp>().unwrap());
        assert!(!removed.is_empty());
        assert_eq!(a.exit_code(), 1);
    }
}

#[test]
fn the_first_reports_missing_is_found() {
    let k = key(7);
    let mut b = books("eu-west", &[frontier_share("eu-west")], 10, |_| &k);
    b.reports.drain(..3);
    let trust = trust_of(&[("eu-west", &k)]);
    let a = run(
        &trust,
        &Aliases::none(),
        std::slice::from_ref(&b),
        false,
        "2026-01-15T00:00:00Z",
    );
    assert!(a.clusters[0].verified);
    assert!(
        a.findings
            .iter()
            .any(|f| matches!(&f.detail, FindingKind::MissingReports { after: None, .. })),
        "{}",
        a.render_text(5)
    );
}

#[test]
fn a_key_rotation_mid_year_verifies() {
    let (old, new) = (key(11), key(12));
    let rotation: Timestamp = "2026-01-20T00:00:00Z".parse().unwrap();
    let b = books("eu-west", &[frontier_share("eu-west")], 40, |at| {
        if at <= rotation { &old } else { &new }
    });
    // The old key is valid for reports ending up to the rotation (inclusive).
    let yaml = trust_yaml(&[(
        "eu-west",
        vec![
            (pem(&old), None, Some("2026-01-20T00:00:01Z")),
            (pem(&new), Some("2026-01-20T00:00:01Z"), None),
        ],
    )]);
    let trust = parse_trust(&yaml, "trust.yaml", |_| Err("no files".into())).unwrap();
    for ledgers in [true, false] {
        let a = run(
            &trust,
            &Aliases::none(),
            std::slice::from_ref(&b),
            ledgers,
            AS_OF,
        );
        let c = &a.clusters[0];
        assert!(c.verified, "{:?}", c.failure);
        assert_eq!(c.key_ids.len(), 2);
        assert!(a.findings.is_empty(), "{}", a.render_text(5));
        assert_eq!(a.exit_code(), 0);
    }
    // With the old key's validity ending a day earlier, the report of the
    // rotation day is signed outside it.
    let yaml = trust_yaml(&[(
        "eu-west",
        vec![
            (pem(&old), None, Some("2026-01-19T00:00:01Z")),
            (pem(&new), Some("2026-01-20T00:00:01Z"), None),
        ],
    )]);
    let trust = parse_trust(&yaml, "trust.yaml", |_| Err("no files".into())).unwrap();
    let a = run(
        &trust,
        &Aliases::none(),
        std::slice::from_ref(&b),
        false,
        AS_OF,
    );
    let f = a.clusters[0].failure.as_ref().expect("outside validity");
    assert_eq!(f.kind, BooksFailureKind::Key);
    assert!(
        f.message.contains("valid until 2026-01-19T00:00:01Z"),
        "{}",
        f.message
    );
    assert!(f.message.contains("2026-01-20T00:00:00Z"), "{}", f.message);
}

#[test]
fn a_report_signed_with_a_key_not_in_the_trust_file_fails() {
    let (k, stranger) = (key(21), key(22));
    let b = books("eu-west", &[frontier_share("eu-west")], 5, |at| {
        if at == "2026-01-08T00:00:00Z".parse::<Timestamp>().unwrap() {
            &stranger
        } else {
            &k
        }
    });
    let trust = trust_of(&[("eu-west", &k)]);
    let a = run(
        &trust,
        &Aliases::none(),
        std::slice::from_ref(&b),
        false,
        "2026-01-10T00:00:00Z",
    );
    let f = a.clusters[0].failure.as_ref().expect("unknown key");
    assert_eq!(f.kind, BooksFailureKind::Key);
    assert!(f.message.contains("does not list"), "{}", f.message);
    assert!(f.file.contains("2026-01-08T00:00:00Z"), "{}", f.file);
    assert_eq!(a.exit_code(), 3);
}

#[test]
fn silence_is_a_finding() {
    let keys = [key(1), key(2)];
    let b = books("eu-west", &[short_job()], 10, |_| &keys[0]);
    let trust = trust_of(&[("eu-west", &keys[0]), ("us-east", &keys[1])]);
    // eu-west's last report ends 2026-01-15; audited ten days later. us-east gave nothing.
    let a = run(
        &trust,
        &Aliases::none(),
        &[b],
        false,
        "2026-01-25T00:00:00Z",
    );
    let silent: Vec<(&str, Option<Timestamp>)> = a
        .findings
        .iter()
        .filter_map(|f| match &f.detail {
            FindingKind::Silent {
                cluster,
                last_report_end,
                ..
            } => Some((cluster.as_str(), *last_report_end)),
            _ => None,
        })
        .collect();
    assert_eq!(
        silent,
        vec![
            ("eu-west", Some("2026-01-15T00:00:00Z".parse().unwrap())),
            ("us-east", None)
        ]
    );
    assert_eq!(a.exit_code(), 1);
    // On time: within a day (plus a tenth) of the last report, no finding.
    let b = books("eu-west", &[short_job()], 10, |_| &keys[0]);
    let trust = trust_of(&[("eu-west", &keys[0])]);
    let a = run(
        &trust,
        &Aliases::none(),
        &[b],
        false,
        "2026-01-16T02:00:00Z",
    );
    assert!(a.findings.is_empty(), "{}", a.render_text(5));
}

#[test]
fn a_report_covering_more_than_its_period_is_late() {
    let k = key(3);
    let t = parse_trace(&trace(&[frontier_share("x")]), "trace").unwrap();
    let policies = parse_policies(POLICY, "policy").unwrap();
    let sim = simulate(
        Catalog::builtin(),
        policies.clone(),
        &t,
        &SimulateOptions {
            timeline: false,
            records: true,
        },
    )
    .unwrap();
    let mut ledger = Ledger::new();
    for r in &sim.records {
        ledger.append(r.clone()).unwrap();
    }
    let start: Timestamp = START.parse().unwrap();
    // Weekly reports against a daily reporting period.
    let chain = sign_report_chain(
        ledger.entries(),
        &sim.policies,
        start,
        Duration::from_secs(7 * 86_400),
        "2026-02-09T00:00:00Z".parse().unwrap(),
        |_| &k,
    )
    .unwrap();
    let b = Books {
        name: "eu-west".into(),
        reports: chain
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("r{i}.json"), r.canonical_bytes().unwrap()))
            .collect(),
        ledger: Vec::new(),
    };
    let trust = trust_of(&[("eu-west", &k)]);
    let a = run(
        &trust,
        &Aliases::none(),
        &[b],
        false,
        "2026-02-09T00:00:00Z",
    );
    let late = a
        .findings
        .iter()
        .filter(|f| matches!(f.detail, FindingKind::LateReport { .. }))
        .count();
    assert_eq!(late, chain.len());
}

#[test]
fn aliases_merge_one_model_under_different_names() {
    let keys = [key(1), key(2)];
    let a_books = books("eu-west", &[frontier_share("eu-west")], 40, |_| &keys[0]);
    let b_books = books(
        "us-east",
        &[job("us-f7", "f7-main", None, 2048, 34, 5)],
        40,
        |_| &keys[1],
    );
    let trust = trust_of(&[("eu-west", &keys[0]), ("us-east", &keys[1])]);
    let all = [a_books, b_books];
    // Without aliases: two lineages of 5.95e24 each, nothing crosses.
    let a = run(&trust, &Aliases::none(), &all, true, AS_OF);
    assert!(unions(&a).is_empty());
    let aliases = parse_aliases(
        "aliases:\n  - lineage: frontier\n    names: [{cluster: us-east, lineage: f7-main}]\n",
        "aliases.yaml",
        &trust,
    )
    .unwrap();
    let a = run(&trust, &aliases, &all, true, AS_OF);
    let found = unions(&a);
    assert_eq!(found.len(), 1, "{}", a.render_text(5));
    assert_eq!(found[0].lineage, "frontier");
    // The second admission (us-east, 5 h after the start) takes it over.
    assert_eq!(
        found[0].crossed_at,
        "2026-01-05T05:00:00Z".parse::<Timestamp>().unwrap()
    );
    let merged = a.lineages.iter().find(|l| l.lineage == "frontier").unwrap();
    assert_eq!(merged.clusters[1].names, vec!["f7-main".to_string()]);
}

#[test]
fn fine_tunes_of_one_base_in_different_clusters_are_possibly_related() {
    let keys = [key(1), key(2)];
    let a_books = books(
        "eu-west",
        &[job("a-sft", "chat-eu", Some("open-base"), 256, 10, 1)],
        20,
        |_| &keys[0],
    );
    let b_books = books(
        "us-east",
        &[job("b-sft", "chat-us", Some("open-base"), 256, 10, 1)],
        20,
        |_| &keys[1],
    );
    let trust = trust_of(&[("eu-west", &keys[0]), ("us-east", &keys[1])]);
    // With the ledgers, `verify` recomputes each report's lineageBases too.
    let all = [a_books, b_books];
    let with_ledgers = run(&trust, &Aliases::none(), &all, true, "2026-01-25T00:00:00Z");
    assert_eq!(
        with_ledgers.summary.failed,
        0,
        "{}",
        with_ledgers.render_text(5)
    );
    let a = run(
        &trust,
        &Aliases::none(),
        &all,
        false,
        "2026-01-25T00:00:00Z",
    );
    assert_eq!(a.possibly_related, with_ledgers.possibly_related);
    assert_eq!(a.possibly_related.len(), 1, "{}", a.render_text(5));
    let r = &a.possibly_related[0];
    assert_eq!(r.base, "open-base");
    let names: Vec<&str> = r.members.iter().map(|m| m.lineage.as_str()).collect();
    assert_eq!(names, ["chat-eu", "chat-us"]);
    // Related lineages are for the auditor to judge, not findings.
    assert_eq!(a.exit_code(), 0, "{}", a.render_text(5));
}

#[test]
fn two_continuations_of_one_report_fail_the_cluster() {
    let k = key(5);
    let b1 = books("eu-west", &[frontier_share("eu-west")], 10, |_| &k);
    // Same start, different books from day 3 on: a fork.
    let b2 = books(
        "eu-west",
        &[
            frontier_share("eu-west"),
            job("extra", "extra", None, 8, 1, 50),
        ],
        10,
        |_| &k,
    );
    let mut merged = b1;
    merged.reports.extend(
        b2.reports
            .into_iter()
            .map(|(n, b)| (format!("fork-{n}"), b)),
    );
    let trust = trust_of(&[("eu-west", &k)]);
    let a = run(
        &trust,
        &Aliases::none(),
        &[merged],
        false,
        "2026-01-15T00:00:00Z",
    );
    let f = a.clusters[0].failure.as_ref().expect("fork");
    assert_eq!(f.kind, BooksFailureKind::ReportChain);
    assert!(f.message.contains("both continue"), "{}", f.message);
}

#[test]
fn the_order_of_the_files_does_not_matter_and_duplicates_are_one() {
    let keys = [key(1), key(2), key(3)];
    let all = three_clusters(&keys);
    let trust = three_trust(&keys);
    let a = run(&trust, &Aliases::none(), &all, false, AS_OF);
    let shuffled: Vec<Books> = all
        .iter()
        .map(|b| {
            let mut reports = b.reports.clone();
            reports.reverse();
            reports.swap(3, 17);
            reports.push(reports[5].clone());
            Books {
                name: b.name.clone(),
                reports,
                ledger: b.ledger.clone(),
            }
        })
        .collect();
    let b = run(&trust, &Aliases::none(), &shuffled, false, AS_OF);
    assert_eq!(audit_difference(&a, &b), None);
    assert_eq!(a, b);
}

#[test]
fn the_signed_audit_report_verifies_and_a_changed_figure_does_not() {
    let keys = [key(1), key(2), key(3)];
    let all = three_clusters(&keys);
    let trust = three_trust(&keys);
    let a = run(&trust, &Aliases::none(), &all, true, AS_OF);
    let auditor = key(99);
    let signed = a.clone().sign(&auditor).unwrap();
    let bytes = signed.canonical_bytes().unwrap();
    let parsed = parse_audit_report(&bytes).unwrap();
    parsed.verify_signature(&auditor.verifying_key()).unwrap();
    assert_eq!(parsed.audit, a);
    check_audit_consistency(&parsed.audit).unwrap();
    // Another key does not verify it.
    assert!(parsed.verify_signature(&key(98).verifying_key()).is_err());
    // An altered byte breaks the signature (kept canonical: a digit).
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("\"chargedAtCrossing\":").unwrap() + "\"chargedAtCrossing\":".len();
    let mut altered = text.into_bytes();
    altered[at] = if altered[at] == b'1' { b'2' } else { b'1' };
    let p = parse_audit_report(&altered).unwrap();
    assert!(p.verify_signature(&auditor.verifying_key()).is_err());
    // A self-contradicting audit (a crossing dropped from the findings) is caught.
    let mut forged = a.clone();
    forged
        .findings
        .retain(|f| !matches!(f.detail, FindingKind::UnionCrossing { .. }));
    let err = check_audit_consistency(&forged).unwrap_err();
    assert!(err.contains("no unionCrossing"), "{err}");
}

#[test]
fn trust_and_alias_files_name_the_field_value_and_rule() {
    let k = key(1);
    let bad = |yaml: &str| {
        parse_trust(yaml, "trust.yaml", |p| Err(format!("{p}: no such file")))
            .unwrap_err()
            .to_string()
    };
    let e = bad("clusters: []\n");
    assert!(e.contains("clusters is empty"), "{e}");
    let one = trust_yaml(&[("a", vec![(pem(&k), None, None)])]);
    let twice = format!("{one}{}", one.trim_start_matches("clusters:\n"));
    let e = bad(&twice);
    assert!(
        e.contains("clusters[1].name") && e.contains("listed twice"),
        "{e}"
    );
    let e = bad("clusters:\n  - {name: a, reportEvery: 1d, keys: []}\n");
    assert!(
        e.contains("clusters[0].keys") && e.contains("no key"),
        "{e}"
    );
    let e = bad("clusters:\n  - {name: a, reportEvery: 0s, keys: [k.pem]}\n");
    assert!(e.contains("reportEvery"), "{e}");
    let e = bad("clusters:\n  - {name: a, reportEvery: 1d, keys: [k.pem]}\n");
    assert!(
        e.contains("clusters[0].keys[0]") && e.contains("k.pem: no such file"),
        "{e}"
    );
    let e = bad("clusters:\n  - {name: 'a b', reportEvery: 1d, keys: [k.pem]}\n");
    assert!(e.contains("clusters[0].name") && e.contains("' '"), "{e}");
    let e = bad(&trust_yaml(&[(
        "a",
        vec![(
            pem(&k),
            Some("2026-02-01T00:00:00Z"),
            Some("2026-01-01T00:00:00Z"),
        )],
    )]));
    assert!(
        e.contains("validFrom") && e.contains("not before validUntil"),
        "{e}"
    );
    let e = bad("clusters:\n  - {name: a, reportEvery: 1d, keys: [k.pem], color: red}\n");
    assert!(e.contains("color"), "{e}");
    let e = bad(&format!(
        "{one}thresholds:\n  - {{regulation: treaty, threshold: -1, notifyWithin: 30d}}\n"
    ));
    assert!(
        e.contains("thresholds[0].threshold") && e.contains("-1"),
        "{e}"
    );
    // Private keys are refused.
    let private = komptroller_engine::signing::private_key_pem(&k).unwrap();
    let e = bad(&trust_yaml(&[("a", vec![(private, None, None)])]));
    assert!(e.contains("private key"), "{e}");

    let trust = parse_trust(&one, "trust.yaml", |_| Err("no".into())).unwrap();
    let e = parse_aliases(
        "aliases:\n  - lineage: x\n    names: [{cluster: nowhere, lineage: y}]\n",
        "aliases.yaml",
        &trust,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("aliases[0].names[0].cluster") && e.contains("nowhere"),
        "{e}"
    );
    let e = parse_aliases(
        "aliases:\n  - {lineage: m1, names: [m2]}\n  - {lineage: m3, names: [m2]}\n",
        "aliases.yaml",
        &trust,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("aliases[1].names[0]") && e.contains("aliases[0].names[0]"),
        "{e}"
    );
    // Books for a cluster the trust file does not name.
    let books = [ClusterBooks {
        cluster: "elsewhere",
        reports: Vec::new(),
        ledger: None,
    }];
    let e = audit(&AuditRequest {
        trust: &trust,
        aliases: &Aliases::none(),
        books: &books,
        as_of: AS_OF.parse().unwrap(),
        trust_digest: None,
        aliases_digest: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--books elsewhere") && e.contains("not in the trust file"),
        "{e}"
    );
}

#[test]
fn auditor_thresholds_from_the_trust_file_apply_to_the_union() {
    let keys = [key(1), key(2), key(3)];
    let all = three_clusters(&keys);
    let mut yaml = trust_yaml(&[
        ("eu-west", vec![(pem(&keys[0]), None, None)]),
        ("us-east", vec![(pem(&keys[1]), None, None)]),
        ("ap-south", vec![(pem(&keys[2]), None, None)]),
    ]);
    yaml.push_str(
        "thresholds:\n  - {regulation: treaty-small, threshold: 2e24, notifyWithin: 30d}\n",
    );
    let trust = parse_trust(&yaml, "trust.yaml", |_| Err("no".into())).unwrap();
    let a = run(&trust, &Aliases::none(), &all, true, AS_OF);
    let small: Vec<_> = unions(&a)
        .into_iter()
        .filter(|x| x.regulation == "treaty-small")
        .map(|x| x.lineage.as_str())
        .collect();
    // Both lineages pass 2e24 in the union.
    assert_eq!(small, ["frontier", "small"]);
    assert!(a.thresholds.iter().any(|t| t.sources == ["trust file"]));
}

/// Reports written by hand-rolled chains keep their signature; a sanity
/// check that the chain builder links every report to the one before.
#[test]
fn the_chain_builder_links_each_report_to_the_previous_one() {
    let k = key(1);
    let b = books("x", &[short_job()], 3, |_| &k);
    let parsed: Vec<SignedReport> = b
        .reports
        .iter()
        .map(|(_, bytes)| komptroller_engine::report::parse_report(bytes).unwrap())
        .collect();
    assert_eq!(parsed.len(), 3);
    assert!(parsed[0].report.previous.is_none());
    for w in parsed.windows(2) {
        let link = w[1].report.previous.as_ref().unwrap();
        assert_eq!(link.report_hash, w[0].report_hash().unwrap());
        assert_eq!(w[1].report.period.from, w[0].report.period.to);
    }
}
