//! The admission handlers on fixture AdmissionReviews (operator/tests/fixtures/admission):
//! every denial names the field, the value and the rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod webhook_common;

use komptroller::webhook::review::Route;
use webhook_common::*;

fn denied(resp: &serde_json::Value, needles: &[&str]) {
    assert_eq!(resp["allowed"], false, "expected a denial, got {resp}");
    assert_eq!(resp["status"]["code"], 403, "{resp}");
    let m = message(resp);
    for n in needles {
        assert!(m.contains(n), "denial {m:?} should contain {n:?}");
    }
}

fn allowed(resp: &serde_json::Value) {
    assert_eq!(resp["allowed"], true, "expected allowed, got {resp}");
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
}

#[tokio::test]
async fn small_job_is_allowed_without_warnings() {
    let (status, r) = post(Route::ValidateTrainingJob, "tj-create-small").await;
    assert_eq!(status, 200);
    allowed(&r);
    assert!(warnings(&r).is_empty(), "{r}");
}

#[tokio::test]
async fn unknown_accelerator_names_the_closest_keys() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-unknown-type").await;
    denied(
        &r,
        &[
            "spec.accelerator.type",
            "\"nvidia-h100-sxn\"",
            "unknown accelerator",
            "nvidia-h100-sxm",
        ],
    );
}

#[tokio::test]
async fn precision_must_be_known_and_supported() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-unknown-precision").await;
    denied(
        &r,
        &[
            "spec.accelerator.precision",
            "\"bf17\"",
            "unknown precision",
            "bf16",
        ],
    );
    let (_, r) = post(
        Route::ValidateTrainingJob,
        "tj-create-unsupported-precision",
    )
    .await;
    denied(
        &r,
        &[
            "spec.accelerator.precision",
            "\"fp4\"",
            "nvidia-a100-sxm4-80gb",
            "supports",
        ],
    );
}

#[tokio::test]
async fn a_job_needs_at_least_one_accelerator() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-no-limit").await;
    denied(
        &r,
        &[
            "spec.replicas × spec.template limits[\"nvidia.com/gpu\"]",
            "2 × 0 = 0",
            "at least one accelerator",
        ],
    );
}

#[tokio::test]
async fn another_vendors_resource_is_refused() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-other-vendor").await;
    denied(&r, &["spec.template.spec", "amd.com/gpu", "nvidia.com/gpu"]);
}

#[tokio::test]
async fn over_the_ceiling_is_denied_with_the_engine_sentence() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-over-ceiling").await;
    denied(
        &r,
        &[
            "Rejected: lineage giant would reach",
            "above tier ceiling at 1e26",
            "ComputePolicy frontier",
            "rule tier/ceiling",
        ],
    );
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-over-capacity").await;
    denied(
        &r,
        &[
            "this job alone uses 64000 accelerators",
            "cluster cap of 50000",
            "can never run",
            "rule capacity/cluster",
        ],
    );
}

#[tokio::test]
async fn denial_sentence_is_the_one_the_status_carries() {
    use komptroller_engine::engine::{Engine, Event};
    use komptroller_engine::job::JobId;
    use komptroller_engine::manifest::read_spec;
    let view = FixedView::load();
    let review: serde_json::Value =
        serde_json::from_slice(&fixture("tj-create-over-ceiling")).unwrap();
    let object = &review["request"]["object"];
    let id = JobId {
        namespace: object["metadata"]["namespace"].as_str().unwrap().into(),
        name: object["metadata"]["name"].as_str().unwrap().into(),
        uid: String::new(),
    };
    let req = read_spec(
        id,
        &object["spec"],
        &komptroller_engine::catalog::Catalog::builtin(),
    )
    .for_submission()
    .unwrap();
    let mut engine = Engine::default();
    let now = jiff::Timestamp::now();
    for p in view.policies.clone() {
        engine.apply(now, Event::UpsertPolicy(p)).unwrap();
    }
    let id = req.id.clone();
    engine.apply(now, Event::Submit(req)).unwrap();
    let sentence = engine.decision(&id).unwrap().reason.clone();
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-over-ceiling").await;
    assert!(
        message(&r).starts_with(&sentence),
        "{} vs {sentence}",
        message(&r)
    );
}

#[tokio::test]
async fn escalation_and_warn_mode_come_back_as_warnings() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-escalate").await;
    allowed(&r);
    let w = warnings(&r).join("\n");
    assert!(
        w.contains("Awaiting approval") && w.contains("safety-board"),
        "{w}"
    );
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-warn").await;
    allowed(&r);
    let w = warnings(&r).join("\n");
    assert!(
        w.contains("policy research-warn (Warn) would Reject") && w.contains("tier research-large"),
        "{w}"
    );
}

#[tokio::test]
async fn a_stamp_that_is_not_the_requester_is_refused() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-create-stamp-mismatch").await;
    denied(
        &r,
        &[
            "metadata.annotations[komptroller.dev/submitted-by]",
            "alice",
            "\"dave\"",
        ],
    );
}

#[tokio::test]
async fn mutating_stamps_the_submitter_and_refuses_user_values() {
    let (_, r) = post(Route::MutateTrainingJob, "tj-mutate-create").await;
    allowed(&r);
    assert_eq!(r["patchType"], "JSONPatch");
    let p = patch(&r);
    assert_eq!(p[0]["op"], "add");
    assert_eq!(p[0]["path"], "/metadata/annotations");
    let stamp: serde_json::Value = serde_json::from_str(
        p[0]["value"]["komptroller.dev/submitted-by"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stamp["user"], "alice");
    assert_eq!(stamp["groups"][0], "ml-engineers");
    let (_, r) = post(Route::MutateTrainingJob, "tj-mutate-create-forged").await;
    denied(
        &r,
        &[
            "metadata.annotations[komptroller.dev/submitted-by]",
            "user-supplied value is refused",
        ],
    );
    // An apply that drops the stamp gets it back.
    let (_, r) = post(Route::MutateTrainingJob, "tj-mutate-update-stamp-dropped").await;
    allowed(&r);
    assert_eq!(patch(&r)[0]["path"], "/metadata/annotations");
}

#[tokio::test]
async fn spec_is_immutable_once_admitted_but_not_before() {
    let (_, r) = post(Route::ValidateTrainingJob, "tj-update-admitted-spec").await;
    denied(
        &r,
        &[
            "spec.replicas 64",
            "immutable once admitted",
            "phase Running",
            "was 2",
        ],
    );
    let (_, r) = post(Route::ValidateTrainingJob, "tj-update-queued-spec").await;
    allowed(&r);
    let (_, r) = post(Route::ValidateTrainingJob, "tj-update-metadata-only").await;
    allowed(&r);
    let (_, r) = post(Route::ValidateTrainingJob, "tj-update-stamp-changed").await;
    denied(
        &r,
        &[
            "metadata.annotations[komptroller.dev/submitted-by]",
            "cannot be changed",
        ],
    );
}

#[tokio::test]
async fn policies_are_validated_by_the_engine() {
    let (_, r) = post(Route::ValidateComputePolicy, "policy-valid").await;
    allowed(&r);
    let (_, r) = post(Route::ValidateComputePolicy, "policy-invalid").await;
    denied(
        &r,
        &[
            "ComputePolicy \"bad\" is invalid",
            "spec.tiers[1].threshold: tiers must be sorted",
            "spec.budgets[0].window: 0s must be longer than 0s",
            "spec.namespaceSelector.matchExpressions[0].values",
        ],
    );
    let (_, r) = post(Route::ValidateComputePolicy, "policy-bad-mode").await;
    denied(&r, &["spec.mode", "\"Enforcing\"", "Enforce"]);
    let (_, r) = post(Route::ValidateComputePolicy, "policy-alias-accelerator").await;
    denied(
        &r,
        &[
            "spec.accelerators[0].name",
            "alias of the built-in \"nvidia-h100-sxm\"",
        ],
    );
}

#[tokio::test]
async fn approver_is_stamped_and_forgeries_refused() {
    let (_, r) = post(Route::MutateComputeApproval, "approval-mutate-stamps").await;
    allowed(&r);
    let p = patch(&r);
    assert_eq!(p[0]["path"], "/spec/approver");
    assert_eq!(p[0]["value"], "bob");
    assert_eq!(p[1]["value"][0], "safety-board");
    let (_, r) = post(Route::MutateComputeApproval, "approval-mutate-forged").await;
    denied(&r, &["spec.approver", "\"carol\"", "forged", "\"bob\""]);
    // Validating alone (mutating webhook skipped): an unstamped approval is refused.
    let (_, r) = post(Route::ValidateComputeApproval, "approval-unstamped").await;
    denied(&r, &["spec.approver", "(missing)"]);
}

#[tokio::test]
async fn separation_of_duties() {
    let (_, r) = post(Route::ValidateComputeApproval, "approval-ok").await;
    allowed(&r);
    let (_, r) = post(Route::ValidateComputeApproval, "approval-self").await;
    denied(&r, &["spec.approver", "\"alice\"", "separation of duties"]);
    let (_, r) = post(Route::ValidateComputeApproval, "approval-outside-group").await;
    denied(
        &r,
        &[
            "spec.approver",
            "\"dave\"",
            "none of the groups",
            "safety-board",
        ],
    );
    let (_, r) = post(Route::ValidateComputeApproval, "approval-stale-hash").await;
    denied(
        &r,
        &[
            "spec.specHash",
            "\"0000",
            "does not match the current spec",
            &job_hash(),
        ],
    );
    let (_, r) = post(Route::ValidateComputeApproval, "approval-expired").await;
    denied(
        &r,
        &["spec.expires", "2020-01-01T00:00:00Z", "not in the future"],
    );
    let (_, r) = post(Route::ValidateComputeApproval, "approval-no-job").await;
    denied(
        &r,
        &[
            "spec.trainingJobName",
            "\"missing\"",
            "no such TrainingJob in namespace \"ml\"",
        ],
    );
    let (_, r) = post(Route::ValidateComputeApproval, "approval-update").await;
    denied(&r, &["spec.comment", "immutable"]);
}

#[tokio::test]
async fn malformed_bodies_get_an_invalid_review_not_a_panic() {
    let (status, r) = post_bytes(Route::ValidateTrainingJob, b"{").await;
    assert_eq!(status, 400);
    assert_eq!(r["allowed"], false);
    let (status, r) = post_bytes(
        Route::ValidateTrainingJob,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&r).contains("without a request"), "{r}");
    // A review for another kind on this endpoint.
    let body = String::from_utf8(fixture("policy-valid")).unwrap();
    let (_, r) = post_bytes(Route::ValidateTrainingJob, body.as_bytes()).await;
    denied(
        &r,
        &[
            "request.kind",
            "ComputePolicy",
            "/validate/trainingjobs reviews TrainingJob",
        ],
    );
}

/// The fixture `approval-ok` with `hash` as its `spec.specHash`.
fn approval_with(hash: &str) -> Vec<u8> {
    String::from_utf8(fixture("approval-ok"))
        .unwrap()
        .replace(&job_hash(), hash)
        .into_bytes()
}

/// The spec of the fixture job `frontier-run` as stored.
fn stored_spec() -> serde_json::Value {
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("jobs.json")).unwrap()).unwrap();
    jobs[0]["spec"].clone()
}

/// The `spec.specHash` operations of a mutating response.
fn spec_hash_ops(resp: &serde_json::Value) -> Vec<serde_json::Value> {
    patch(resp)
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["path"] == "/spec/specHash")
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_approval_binds_to_the_one_spec_hash() {
    use komptroller::crd::TrainingJobSpec;
    let one = TrainingJobSpec::spec_hash_of(&stored_spec()).unwrap();
    assert_eq!(one, job_hash());
    let (_, r) = post_bytes(Route::ValidateComputeApproval, &approval_with(&one)).await;
    allowed(&r);
    assert!(warnings(&r).is_empty(), "{r}");
    let (_, r) = post_bytes(Route::MutateComputeApproval, &approval_with(&one)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(spec_hash_ops(&r).is_empty(), "left as given: {r}");
}

#[tokio::test]
async fn an_approval_carrying_the_legacy_hash_is_accepted_and_rebound() {
    use komptroller_engine::spec_hash::legacy_spec_hash;
    let legacy = legacy_spec_hash(&stored_spec());
    assert_ne!(legacy, job_hash(), "the stored limit is the number 8");
    let (_, r) = post_bytes(Route::ValidateComputeApproval, &approval_with(&legacy)).await;
    allowed(&r);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{r}");
    assert!(
        w[0].contains("legacy hash") && w[0].contains("v0.3"),
        "{w:?}"
    );
    assert!(w[0].contains(&job_hash()), "{w:?}");
    let (_, r) = post_bytes(Route::MutateComputeApproval, &approval_with(&legacy)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        spec_hash_ops(&r),
        vec![serde_json::json!({"op": "replace", "path": "/spec/specHash", "value": job_hash()})],
        "bound to the spec hash the controller counts"
    );
}

#[tokio::test]
async fn an_approval_of_another_spec_is_refused() {
    use komptroller::crd::TrainingJobSpec;
    use komptroller_engine::spec_hash::legacy_spec_hash;
    let mut other = stored_spec();
    other["replicas"] = serde_json::json!(256);
    for hash in [
        TrainingJobSpec::spec_hash_of(&other).unwrap(),
        legacy_spec_hash(&other),
    ] {
        let (_, r) = post_bytes(Route::ValidateComputeApproval, &approval_with(&hash)).await;
        denied(
            &r,
            &[
                "spec.specHash",
                &hash,
                "does not match the current spec",
                &job_hash(),
            ],
        );
        let (_, r) = post_bytes(Route::MutateComputeApproval, &approval_with(&hash)).await;
        assert!(spec_hash_ops(&r).is_empty(), "not rebound: {r}");
    }
}
