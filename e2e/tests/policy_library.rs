//! Every policy file in `policies/` is used by an e2e scenario. Each
//! test loads the file itself (not a copy) into the real control plane, runs
//! `komptroller run` with its webhook as the chart's ServiceAccount, submits
//! jobs as certificate users that hit
//! the file's characteristic rules, and checks verdicts, rules and reasons.
//!
//! FLOP figures: an H100 SXM runs 989e12 dense BF16 FLOP/s (the catalog's
//! peak), so one GPU-hour is 3.56e18 FLOP under `basis: upperBound`.
//!
//! Needs the `komptroller` binary (`cargo build -p komptroller`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::operator::{Env, Operator, decision, training_job};
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

const H100: &str = "nvidia-h100-sxm";

const USERS: &[(&str, &str)] = &[
    ("alice", "researchers"),
    ("bob", "ai-act-compliance"),
    ("erin", "ai-act-compliance"),
    ("frank", "frontier-safety"),
    ("grace", "frontier-safety"),
    ("bianca", "biosecurity"),
    ("carol", "safety"),
];

/// The control plane with the users and `komptroller run` (stopped when the
/// returned Operator is dropped).
async fn env() -> (Env, Operator) {
    let env = Env::start(USERS).await;
    let op_kubeconfig = env.kubeconfig_for(common::operator::OPERATOR_SA);
    let op = env.start_operator(&op_kubeconfig, &[]).await;
    (env, op)
}

fn text<'a>(o: &'a kube::api::DynamicObject, field: &str) -> &'a str {
    decision(o, field).as_str().unwrap_or("")
}

fn assert_contains(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{text:?} should contain {n:?}");
    }
}

/// The signed reports' crossing of `tier` by `lineage` (waits for a report that has it).
async fn crossing(env: &Env, lineage: &str, tier: &str) -> Value {
    let reports = env.admin("ComputeReport", None).await;
    let deadline = tokio::time::Instant::now() + common::operator::T;
    loop {
        for r in reports.list(&Default::default()).await.unwrap().items {
            let report: Value =
                serde_json::from_str(r.data["spec"]["report"].as_str().unwrap()).unwrap();
            let mut found = None;
            find_key(&report, "thresholdCrossings", &mut found);
            if let Some(c) = found.and_then(|c| c.as_array().cloned()).and_then(|a| {
                a.into_iter()
                    .find(|c| c["lineage"] == lineage && c["tier"] == tier)
            }) {
                return c;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no signed report with a crossing of {tier} by {lineage}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn find_key(v: &Value, key: &str, out: &mut Option<Value>) {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(key) {
                *out = Some(x.clone());
                return;
            }
            for x in m.values() {
                find_key(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_admits_everything_and_records_what_enforce_would_do() {
    let (env, _op) = env().await;
    assert_eq!(env.apply_policy_file("default.yaml").await, ["default"]);
    env.namespace("research", json!({})).await;
    // 1024 H100 for 2000 h declared BF16: 7.3e24 at BF16 peak, but the
    // adversarial ceiling (FP8, 1979 TFLOP/s) is 1.46e25, above 1e25.
    env.create_as(
        "alice",
        "research",
        training_job("big", "big", H100, 8, 128, "2000h", None),
    )
    .await;
    let o = env
        .wait_phase("research", "big", &["Admitted", "Running"])
        .await;
    assert_eq!(decision(&o, "verdict"), "Admit", "DryRun admits");
    assert_eq!(decision(&o, "enforcedVerdict"), "Escalate");
    assert_eq!(decision(&o, "rule"), "tier/eu-systemic-risk");
    let governing = decision(&o, "governing").as_f64().unwrap();
    assert!(
        (1.4e25..1.5e25).contains(&governing),
        "the adversarial ceiling: 1024 × 1979e12 × 7.2e6 s = 1.46e25, got {governing}"
    );
    assert_contains(text(&o, "message"), &["eu-systemic-risk", "1e25"]);
    // A small job: Admit either way.
    env.create_as(
        "alice",
        "research",
        training_job("small", "small", H100, 8, 1, "10h", None),
    )
    .await;
    let o = env
        .wait_phase("research", "small", &["Admitted", "Running"])
        .await;
    assert_eq!(decision(&o, "enforcedVerdict"), "Admit");
    // The status says Admitted a moment before the Job exists.
    let deadline = tokio::time::Instant::now() + common::operator::T;
    while env.jobs("research").await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both run");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(env.jobs("research").await.len(), 2, "both run, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eu_ai_act_escalates_at_1e25_cumulative_and_on_a_one_third_modification() {
    let (env, _op) = env().await;
    assert_eq!(env.apply_policy_file("eu-ai-act.yaml").await, ["eu-ai-act"]);
    env.namespace("lab", json!({})).await;
    // Three 4.0e24 runs of one lineage (1024 H100 × 1100 h): the third
    // takes it past 1e25 cumulative and needs two compliance approvals.
    for (i, want) in [
        ("a", "Running"),
        ("b", "Running"),
        ("c", "AwaitingApproval"),
    ] {
        let name = format!("frontier-{i}");
        env.create_as(
            "alice",
            "lab",
            training_job(&name, "frontier", H100, 8, 128, "1100h", None),
        )
        .await;
        env.wait_phase("lab", &name, &[want]).await;
    }
    let o = env
        .wait_phase("lab", "frontier-c", &["AwaitingApproval"])
        .await;
    assert_eq!(decision(&o, "rule"), "tier/eu-systemic-risk");
    assert_eq!(decision(&o, "approvals")["required"], 2);
    assert_eq!(
        decision(&o, "approvals")["groups"],
        json!(["ai-act-compliance"])
    );
    let total = decision(&o, "lineageTotal").as_f64().unwrap();
    assert!((1.2e25..1.21e25).contains(&total), "{total}");
    assert_contains(
        text(&o, "message"),
        &[
            "lineage frontier would reach",
            "above tier eu-systemic-risk at 1e25",
        ],
    );
    // The submitter cannot approve; two compliance officers do.
    let denied = env.try_approve_as("alice", "lab", "frontier-c").await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.message.contains("separation of duties")),
        "{denied:?}"
    );
    env.approve_as("bob", "lab", "frontier-c").await;
    env.approve_as("erin", "lab", "frontier-c").await;
    env.wait_phase("lab", "frontier-c", &["Admitted", "Running"])
        .await;
    // Crossing 1e25 is reported with the Art. 52(1) two-week deadline.
    let c = crossing(&env, "frontier", "eu-systemic-risk").await;
    assert_eq!(c["regulation"], "EU AI Act Art. 52(1)");
    let at: jiff::Timestamp = c["crossedAt"].as_str().unwrap().parse().unwrap();
    let by: jiff::Timestamp = c["notifyBy"].as_str().unwrap().parse().unwrap();
    assert_eq!(by.duration_since(at).as_secs(), 14 * 24 * 3600, "{c:#}");

    // The one-third rule: a fine-tune of a base the ledger does not know is
    // measured against 10^25 / 3 (assumed); 256 H100 × 1320 h = 1.2e24 > 1.11e24.
    let mut ft = training_job("llama-ft", "llama-ft", H100, 8, 32, "1320h", None);
    ft["spec"]["model"]["baseModel"] = json!("llama-open");
    env.create_as("alice", "lab", ft).await;
    let o = env
        .wait_phase("lab", "llama-ft", &["AwaitingApproval"])
        .await;
    assert_eq!(decision(&o, "rule"), "lineage/eu-one-third-modification");
    assert_eq!(
        decision(&o, "approvals")["groups"],
        json!(["ai-act-compliance"])
    );
    assert_contains(
        text(&o, "message"),
        &[
            "fine-tune lineage llama-ft",
            "more than 0.3333 of its base llama-open",
            "assumed: base unknown to the ledger",
        ],
    );
    // A small fine-tune (32 H100 × 100 h = 1.1e22) stays a fine-tune: admitted.
    let mut small = training_job("llama-ft-small", "llama-ft-small", H100, 8, 4, "100h", None);
    small["spec"]["model"]["baseModel"] = json!("llama-open");
    env.create_as("alice", "lab", small).await;
    let o = env
        .wait_phase("lab", "llama-ft-small", &["Admitted", "Running"])
        .await;
    assert_eq!(decision(&o, "verdict"), "Admit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn us_frontier_escalates_at_1e26_and_biological_sequence_data_at_1e23() {
    let (env, _op) = env().await;
    let mut names = env.apply_policy_file("us-frontier.yaml").await;
    names.sort();
    assert_eq!(names, ["us-biological-sequences", "us-frontier"]);
    env.namespace("general", json!({})).await;
    env.namespace(
        "protein",
        json!({"komptroller.dev/data": "biological-sequences"}),
    )
    .await;
    // 64 H100 × 600 h = 1.37e23: over 1e23 only where biological sequence data is trained.
    for ns in ["general", "protein"] {
        env.create_as(
            "alice",
            ns,
            training_job("esm", &format!("esm-{ns}"), H100, 8, 8, "600h", None),
        )
        .await;
    }
    let o = env
        .wait_phase("general", "esm", &["Admitted", "Running"])
        .await;
    assert_eq!(decision(&o, "verdict"), "Admit");
    let o = env
        .wait_phase("protein", "esm", &["AwaitingApproval"])
        .await;
    assert_eq!(decision(&o, "rule"), "tier/bio-sequence-model");
    assert_eq!(decision(&o, "policy"), "us-biological-sequences");
    assert_eq!(decision(&o, "approvals")["groups"], json!(["biosecurity"]));
    assert_contains(
        text(&o, "message"),
        &["above tier bio-sequence-model at 1e23"],
    );
    // A frontier-safety reviewer is not in the biosecurity group; a biosecurity reviewer is.
    let denied = env.try_approve_as("frank", "protein", "esm").await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.message.contains("biosecurity")),
        "{denied:?}"
    );
    env.approve_as("bianca", "protein", "esm").await;
    env.wait_phase("protein", "esm", &["Admitted", "Running"])
        .await;

    // 8192 H100 × 3500 h = 1.02e26: a frontier model (SB 53 / RAISE), two approvals.
    env.create_as(
        "alice",
        "general",
        training_job("frontier", "frontier", H100, 8, 1024, "3500h", None),
    )
    .await;
    let o = env
        .wait_phase("general", "frontier", &["AwaitingApproval"])
        .await;
    assert_eq!(decision(&o, "rule"), "tier/us-frontier-model");
    assert_eq!(decision(&o, "approvals")["required"], 2);
    assert_eq!(
        decision(&o, "approvals")["groups"],
        json!(["frontier-safety"])
    );
    assert_contains(
        text(&o, "message"),
        &["above tier us-frontier-model at 1e26"],
    );
    env.approve_as("frank", "general", "frontier").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let o = env.admin("TrainingJob", Some("general")).await;
    let o = o.get("frontier").await.unwrap();
    assert_eq!(
        common::operator::phase(&o),
        "AwaitingApproval",
        "one approval of two"
    );
    env.approve_as("grace", "general", "frontier").await;
    env.wait_phase("general", "frontier", &["Admitted", "Running"])
        .await;
    let c = crossing(&env, "frontier", "us-frontier-model").await;
    // No report lists lineage frontier (trained only in namespace general)
    // as crossing bio-sequence-model: that policy does not select general.
    // Every report that lists the 1e26 crossing is past the 1e23 figure too.
    let reports = env.admin("ComputeReport", None).await;
    for r in reports.list(&Default::default()).await.unwrap().items {
        let report: Value =
            serde_json::from_str(r.data["spec"]["report"].as_str().unwrap()).unwrap();
        let mut found = None;
        find_key(&report, "thresholdCrossings", &mut found);
        let crossings = found
            .and_then(|c| c.as_array().cloned())
            .unwrap_or_default();
        assert!(
            !crossings
                .iter()
                .any(|c| c["lineage"] == "frontier" && c["tier"] == "bio-sequence-model"),
            "{crossings:#?}"
        );
    }
    let at: jiff::Timestamp = c["crossedAt"].as_str().unwrap().parse().unwrap();
    let by: jiff::Timestamp = c["notifyBy"].as_str().unwrap().parse().unwrap();
    assert_eq!(by.duration_since(at).as_secs(), 15 * 24 * 3600, "{c:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_budgets_throttle_cap_and_need_the_safety_group() {
    let (env, _op) = env().await;
    assert_eq!(
        env.apply_policy_file("lab-budgets.yaml").await,
        ["lab-budgets"]
    );
    let standard = json!({"komptroller.dev/budget": "standard"});
    for ns in ["team-a", "team-b", "team-c", "team-d", "team-e"] {
        env.namespace(ns, standard.clone()).await;
    }
    env.namespace("unbudgeted", json!({})).await;

    // A namespace cap of 1e18 FLOP/s: 1024 H100 (1.01e18 FLOP/s) can never
    // run there, and the webhook says so at submit time.
    let r = env
        .api_as("alice", "TrainingJob", "team-a")
        .await
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("huge", "huge", H100, 8, 128, "1h", None))
                .unwrap(),
        )
        .await;
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert_contains(
                &s.message,
                &[
                    "this job alone runs at",
                    "above the namespace team-a cap of 1e18",
                    "rule capacity/namespace",
                ],
            );
        }
        other => panic!("the webhook should deny a job over the cap: {other:?}"),
    }
    // The same job where the policy does not select the namespace: admitted.
    env.create_as(
        "alice",
        "unbudgeted",
        training_job("huge", "huge", H100, 8, 128, "1h", None),
    )
    .await;
    env.wait_phase("unbudgeted", "huge", &["Admitted", "Running"])
        .await;

    // Two 512-H100 jobs (5.06e17 FLOP/s each) exceed the namespace cap
    // together: the second queues until the first is gone.
    for name in ["wide-1", "wide-2"] {
        env.create_as(
            "alice",
            "team-a",
            training_job(name, name, H100, 8, 64, "10h", None),
        )
        .await;
    }
    env.wait_phase("team-a", "wide-1", &["Running"]).await;
    let o = env.wait_phase("team-a", "wide-2", &["Queued"]).await;
    assert_eq!(decision(&o, "rule"), "capacity/namespace");
    assert_contains(text(&o, "message"), &["Queued: namespace team-a runs"]);
    env.admin("TrainingJob", Some("team-a"))
        .await
        .delete("wide-1", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_phase("team-a", "wide-2", &["Admitted", "Running"])
        .await;

    // The 30-day namespace budget of 5e23: 256 H100 × 400 h = 3.65e23 fits
    // once; the second waits for the window.
    for name in ["month-1", "month-2"] {
        env.create_as(
            "alice",
            "team-b",
            training_job(name, name, H100, 8, 32, "400h", None),
        )
        .await;
    }
    env.wait_phase("team-b", "month-1", &["Running"]).await;
    let o = env.wait_phase("team-b", "month-2", &["Queued"]).await;
    assert_eq!(decision(&o, "rule"), "budget/team-30d");
    assert_contains(
        text(&o, "message"),
        &[
            "namespace team-b has used",
            "of its 5e23 FLOP budget team-30d in the last 30d",
        ],
    );

    // One lineage past 1e24 across three teams (3 × 3.65e23 = 1.09e24)
    // needs one approval from the safety group.
    for (ns, want) in [
        ("team-c", "Running"),
        ("team-d", "Running"),
        ("team-e", "AwaitingApproval"),
    ] {
        env.create_as(
            "alice",
            ns,
            training_job("shared", "lab-model", H100, 8, 32, "400h", None),
        )
        .await;
        env.wait_phase(ns, "shared", &[want]).await;
    }
    let o = env
        .wait_phase("team-e", "shared", &["AwaitingApproval"])
        .await;
    assert_eq!(decision(&o, "rule"), "tier/lab-large-run");
    assert_eq!(decision(&o, "approvals")["groups"], json!(["safety"]));
    assert_contains(
        text(&o, "message"),
        &[
            "lineage lab-model would reach",
            "above tier lab-large-run at 1e24",
        ],
    );
    // Outside the safety group: refused. In it: admitted.
    let denied = env.try_approve_as("bob", "team-e", "shared").await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.message.contains("safety")),
        "{denied:?}"
    );
    env.approve_as("carol", "team-e", "shared").await;
    env.wait_phase("team-e", "shared", &["Admitted", "Running"])
        .await;
}
