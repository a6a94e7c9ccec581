//! The policy library in `policies/` is valid and means what its comments say.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use komptroller_engine::catalog::{Catalog, Precision};
use komptroller_engine::decision::Verdict;
use komptroller_engine::engine::{Engine, Event};
use komptroller_engine::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::policy::{Mode, Policy};

fn load(name: &str) -> Vec<Policy> {
    let path = format!("{}/../policies/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    parse_policies(&text, &path).unwrap_or_else(|e| panic!("{e}"))
}

fn engine(policies: &[Policy]) -> Engine {
    let mut e = Engine::new(Catalog::builtin());
    for p in policies {
        e.apply(t0(), Event::UpsertPolicy(p.clone())).unwrap();
    }
    e
}

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn job(
    name: &str,
    ns: &str,
    labels: &[(&str, &str)],
    lineage: &str,
    base: Option<&str>,
    count: u32,
    hours: u64,
) -> JobRequest {
    JobRequest {
        id: JobId {
            namespace: ns.into(),
            name: name.into(),
            uid: name.into(),
        },
        namespace_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
            .into(),
        model: ModelSpec {
            name: Some(lineage.into()),
            base_model: base.map(str::to_string),
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
            groups: vec![],
        }),
        spec_hash: String::new(),
    }
}

fn verdict(e: &mut Engine, j: JobRequest) -> (Verdict, Verdict, String) {
    let id = j.id.clone();
    e.apply(t0(), Event::Submit(j)).unwrap();
    let d = e.decision(&id).unwrap();
    (
        d.verdict,
        d.enforced_verdict,
        d.rule.clone().unwrap_or_default(),
    )
}

#[test]
fn every_policy_file_is_valid_and_cites_its_sources() {
    let dir = format!("{}/../policies", env!("CARGO_MANIFEST_DIR"));
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let policies = parse_policies(&text, &path.display().to_string())
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!policies.is_empty());
            assert!(
                text.lines()
                    .filter(|l| l.trim_start().starts_with('#'))
                    .count()
                    >= 5,
                "{}: explain and cite in comments",
                path.display()
            );
            files += 1;
        }
    }
    assert_eq!(files, 4, "default, eu-ai-act, us-frontier, lab-budgets");
}

#[test]
fn default_is_dry_run_and_conservative() {
    let p = load("default.yaml");
    assert!(p.iter().all(|p| p.spec.mode == Mode::DryRun));
    let mut e = engine(&p);
    // 4096 H100 × 30 days at the fp8 ceiling ≈ 2.1e25 > 1e25: admitted, Escalate recorded.
    let (v, enforced, rule) = verdict(&mut e, job("big", "ml", &[], "atlas", None, 4096, 30 * 24));
    assert_eq!((v, enforced), (Verdict::Admit, Verdict::Escalate));
    assert_eq!(rule, "tier/eu-systemic-risk");
}

#[test]
fn eu_ai_act_escalates_past_1e25_and_applies_the_one_third_rule() {
    let p = load("eu-ai-act.yaml");
    let mut e = engine(&p);
    // 2048 H100 × 60 days at bf16 ≈ 1.05e25.
    let (v, _, rule) = verdict(&mut e, job("p", "ml", &[], "atlas", None, 2048, 60 * 24));
    assert_eq!(
        (v, rule.as_str()),
        (Verdict::Escalate, "tier/eu-systemic-risk")
    );
    // A modification of an unknown base using > 1/3 × 1e25/3.
    let (v, _, rule) = verdict(
        &mut e,
        job(
            "ft",
            "ml",
            &[],
            "derived",
            Some("unknown-base"),
            2048,
            15 * 24,
        ),
    );
    assert_eq!(
        (v, rule.as_str()),
        (Verdict::Escalate, "lineage/eu-one-third-modification")
    );
    // A small fine-tune is admitted.
    let (v, _, _) = verdict(
        &mut e,
        job("small", "ml", &[], "chat", Some("unknown-base"), 8, 24),
    );
    assert_eq!(v, Verdict::Admit);
    let t = &p[0].spec.tiers[1];
    assert_eq!(
        t.reporting.as_ref().unwrap().notify_within.0.as_secs(),
        14 * 86_400
    );
}

#[test]
fn us_frontier_has_1e26_and_1e23_for_biological_sequences() {
    let p = load("us-frontier.yaml");
    let mut e = engine(&p);
    let bio = [("komptroller.dev/data", "biological-sequences")];
    // 64 H100 × 24 h ≈ 5.5e21: admitted anywhere.
    assert_eq!(
        verdict(&mut e, job("a", "bio", &bio, "evo", None, 64, 24)).0,
        Verdict::Admit
    );
    // 256 H100 × 5 days ≈ 1.1e23: escalates only in a biological-sequence namespace.
    assert_eq!(
        verdict(&mut e, job("b", "bio", &bio, "evo2", None, 256, 120)).0,
        Verdict::Escalate
    );
    assert_eq!(
        verdict(&mut e, job("c", "llm", &[], "llm", None, 256, 120)).0,
        Verdict::Admit
    );
    // 16,384 H100 × 90 days ≈ 1.26e26: a frontier model.
    let (v, _, rule) = verdict(
        &mut e,
        job("d", "llm", &[], "frontier", None, 16_384, 90 * 24),
    );
    assert_eq!(
        (v, rule.as_str()),
        (Verdict::Escalate, "tier/us-frontier-model")
    );
}

#[test]
fn lab_budgets_throttle_cap_and_strict_fifo() {
    let p = load("lab-budgets.yaml");
    let mut e = engine(&p);
    let std = [("komptroller.dev/budget", "standard")];
    // 1e18 FLOP/s per namespace ≈ 1011 H100 at bf16.
    assert_eq!(
        verdict(&mut e, job("w", "team", &std, "m", None, 1100, 1)).0,
        Verdict::Reject
    );
    // Budget 5e23 per 30 d: 512 H100 × 10 d ≈ 4.4e23, then a second one waits.
    assert_eq!(
        verdict(&mut e, job("a", "team", &std, "m1", None, 512, 240)).0,
        Verdict::Admit
    );
    let (v, _, rule) = verdict(&mut e, job("b", "team", &std, "m2", None, 512, 240));
    assert_eq!((v, rule.as_str()), (Verdict::Throttle, "budget/team-30d"));
    let wake = e.next_wakeup().unwrap();
    assert_eq!(
        wake,
        t0().checked_add(SignedDuration::from_hours(30 * 24))
            .unwrap()
    );
    // Unlabelled namespaces are not governed by it.
    assert_eq!(
        verdict(&mut e, job("c", "other", &[], "m3", None, 1100, 1)).0,
        Verdict::Admit
    );
}
