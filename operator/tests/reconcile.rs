//! Reconcile scenarios against a mocked API server (tower-test), as
//! kube-rs's controller-rs `fixtures.rs` does. The mock answers by method
//! and path and records every request, so a scenario asserts what was
//! written, in which order, and what never was. Each scenario is bounded by
//! a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use komptroller::controller::books::Books;
use komptroller::controller::{Context, reconcile};
use komptroller::crd::{TrainingJob, TrainingJobSpec};
use komptroller::error::Error;
use komptroller::ledger_store::LedgerWriter;
use komptroller::metrics::Metrics;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::engine::{Engine, Event};
use komptroller_engine::policy::Policy;
use komptroller_engine::spec_hash::legacy_spec_hash;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::reflector;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the mock saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// How the mock answers special cases.
#[derive(Clone, Default)]
struct Script {
    /// A ledger entry that already exists with this `spec.entry` (another writer).
    existing_ledger_entry: Option<String>,
    /// Job creation fails with this status.
    job_create_status: Option<u16>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn json_response(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason})
}

/// Serves requests until the client is dropped.
fn mock_api(script: Script) -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
            let resp = match (method.as_str(), path.as_str()) {
                ("POST", p) if p.ends_with("/computeledgerentries") => {
                    if script.existing_ledger_entry.is_some() {
                        json_response(409, status_body(409, "AlreadyExists"))
                    } else {
                        json_response(201, body)
                    }
                }
                ("GET", p) if p.contains("/computeledgerentries/") => {
                    let name = p.rsplit('/').next().unwrap();
                    json_response(
                        200,
                        json!({
                            "apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeLedgerEntry",
                            "metadata": {"name": name},
                            "spec": {"sequence": 0, "kind": "Decided", "time": "2026-01-01T00:00:00Z",
                                "prevHash": "", "hash": "", "entry": script.existing_ledger_entry.clone().unwrap_or_default()}
                        }),
                    )
                }
                ("POST", p) if p.ends_with("/jobs") => match script.job_create_status {
                    Some(code) => json_response(code, status_body(code, "InternalError")),
                    None => json_response(201, body),
                },
                ("PATCH", p) if p.contains("/trainingjobs/") => {
                    // Echo a TrainingJob back (the patch is merged over the fixture).
                    let mut tj = fixture_json("train", 8, 2);
                    if let Some(s) = body.get("status") {
                        tj["status"] = s.clone();
                    }
                    if let Some(f) = body.pointer("/metadata/finalizers") {
                        tj["metadata"]["finalizers"] = f.clone();
                    }
                    json_response(200, tj)
                }
                ("POST", p) if p.ends_with("/events") => json_response(201, body),
                ("GET", p) if p.contains("/trainingjobs/") => {
                    let name = p.rsplit('/').next().unwrap();
                    json_response(200, fixture_json(name, 8, 2))
                }
                ("PATCH", p) if p.contains("/computeapprovals/") => json_response(200, body),
                _ => json_response(404, status_body(404, "NotFound")),
            };
            send.send_response(resp);
        }
    });
    (Client::new(service, "default"), log)
}

fn fixture_json(name: &str, gpus: u32, replicas: u32) -> Value {
    json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "generation": 1,
            "resourceVersion": "1", "finalizers": ["komptroller.dev/accounting"]},
        "spec": {
            "model": {"name": "llama"},
            "accelerator": {"type": "nvidia-h100-sxm"},
            "replicas": replicas,
            "maxDuration": "2h",
            "template": {"spec": {"containers": [{"name": "train", "image": "x",
                "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}
        }
    })
}

fn fixture(name: &str) -> TrainingJob {
    serde_json::from_value(fixture_json(name, 8, 2)).unwrap()
}

fn context(client: Client, policies: Vec<Policy>) -> Arc<Context> {
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(Catalog::builtin());
    for p in policies {
        engine
            .apply(jiff::Timestamp::UNIX_EPOCH, Event::UpsertPolicy(p))
            .unwrap();
    }
    let (ledger, _writer) = LedgerWriter::spawn(client.clone(), metrics.clone(), 0);
    let (trigger, _rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(_rx);
    Arc::new(Context {
        reporter: Reporter {
            controller: "komptroller".into(),
            instance: Some("test".into()),
        },
        client,
        metrics,
        books: Mutex::new(Books::new(engine, &[])),
        ledger,
        catalog: Catalog::builtin(),
        trigger,
        jobs: Arc::default(),
        namespaces: reflector::store().0,
        approvals: reflector::store().0,
        queue_dirty: tokio::sync::Notify::new(),
        wakeup_changed: tokio::sync::Notify::new(),
        refresh_all_held: Default::default(),
    })
}

fn ceiling(threshold: f64) -> Policy {
    Policy {
        name: "ceiling".into(),
        spec: serde_json::from_value(
            json!({"tiers": [{"name": "ceiling", "threshold": threshold, "action": "Reject"}]}),
        )
        .unwrap(),
    }
}

fn writes(log: &Log) -> Vec<(String, String)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.method != "GET")
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect()
}

/// The first request matching `pred`, waiting for it (Events are published
/// in the background, after the reconcile returned).
async fn eventually(log: &Log, pred: impl Fn(&Seen) -> bool) -> Seen {
    loop {
        if let Some(s) = log.lock().unwrap().iter().find(|s| pred(s)) {
            return s.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn position(w: &[(String, String)], pred: impl Fn(&str) -> bool) -> Option<usize> {
    w.iter().position(|(_, p)| pred(p))
}

#[tokio::test]
async fn admitted_job_is_ledgered_before_its_status_and_job() {
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script::default());
        let ctx = context(client, vec![]);
        reconcile(Arc::new(fixture("train")), ctx.clone())
            .await
            .unwrap();
        let w = writes(&log);
        let ledger =
            position(&w, |p| p.ends_with("/computeledgerentries")).expect("ledger entry written");
        let job = position(&w, |p| p.ends_with("/jobs")).expect("Job created");
        let status = position(&w, |p| p.ends_with("/status")).expect("status written");
        // Write-ahead: the entry first; the decision is shown as soon as it
        // is durable, and the workload is created after.
        assert!(ledger < status && status < job, "write-ahead order: {w:?}");
        let seen = log.lock().unwrap().clone();
        let job_body = &seen
            .iter()
            .find(|s| s.path.ends_with("/jobs"))
            .unwrap()
            .body;
        assert_eq!(
            job_body.pointer("/spec/activeDeadlineSeconds"),
            Some(&json!(7200))
        );
        assert_eq!(
            job_body.pointer("/spec/completionMode"),
            Some(&json!("Indexed"))
        );
        assert_eq!(job_body.pointer("/spec/parallelism"), Some(&json!(2)));
        assert_eq!(
            job_body.pointer("/metadata/ownerReferences/0/uid"),
            Some(&json!("uid-train"))
        );
        let status = &seen
            .iter()
            .find(|s| s.path.ends_with("/status"))
            .unwrap()
            .body;
        assert_eq!(status.pointer("/status/phase"), Some(&json!("Admitted")));
        assert_eq!(
            status.pointer("/status/decision/ledgerSequence"),
            Some(&json!(0))
        );
        // An Event for the verdict.
        eventually(&log, |s| s.path.ends_with("/events")).await;
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn rejected_job_gets_no_workload() {
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script::default());
        let ctx = context(client, vec![ceiling(1e19)]);
        reconcile(Arc::new(fixture("train")), ctx).await.unwrap();
        let seen = log.lock().unwrap().clone();
        assert!(
            !seen.iter().any(|s| s.path.ends_with("/jobs")),
            "nothing runs before admission"
        );
        let status = &seen
            .iter()
            .find(|s| s.path.ends_with("/status"))
            .unwrap()
            .body;
        assert_eq!(status.pointer("/status/phase"), Some(&json!("Rejected")));
        assert_eq!(
            status.pointer("/status/decision/rule"),
            Some(&json!("tier/ceiling"))
        );
        let event = eventually(&log, |s| s.path.ends_with("/events")).await.body;
        assert_eq!(event.get("type"), Some(&json!("Warning")));
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn another_ledger_writer_stops_everything_and_is_never_overwritten() {
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script {
            existing_ledger_entry: Some("{\"seq\":0,\"someone\":\"else\"}".into()),
            ..Default::default()
        });
        let ctx = context(client, vec![]);
        let err = reconcile(Arc::new(fixture("train")), ctx.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::LedgerConflict { .. }), "{err}");
        assert_eq!(err.metric_label(), "ledger_conflict");
        let w = writes(&log);
        assert!(
            !w.iter()
                .any(|(m, p)| m == "PUT" || p.contains("/computeledgerentries/") && m != "GET"),
            "never overwrites: {w:?}"
        );
        assert!(
            position(&w, |p| p.ends_with("/jobs")).is_none(),
            "no Job after a conflict"
        );
        assert!(
            position(&w, |p| p.ends_with("/status")).is_none(),
            "no status after a conflict"
        );
        assert_eq!(ctx.metrics.ledger_conflicts.get(), 1);
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn deletion_records_final_accounting_then_drops_the_finalizer() {
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script::default());
        let ctx = context(client, vec![]);
        reconcile(Arc::new(fixture("train")), ctx.clone())
            .await
            .unwrap();
        let mut gone = fixture_json("train", 8, 2);
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let gone: TrainingJob = serde_json::from_value(gone).unwrap();
        log.lock().unwrap().clear();
        reconcile(Arc::new(gone), ctx.clone()).await.unwrap();
        let seen = log.lock().unwrap().clone();
        let entry = seen
            .iter()
            .find(|s| s.path.ends_with("/computeledgerentries"))
            .expect("Deleted entry");
        assert_eq!(entry.body.pointer("/spec/kind"), Some(&json!("Deleted")));
        let fin = seen
            .iter()
            .find(|s| s.method == "PATCH")
            .expect("finalizer patch");
        assert_eq!(fin.body.pointer("/metadata/finalizers"), Some(&json!([])));
        let ledger_at = seen
            .iter()
            .position(|s| s.path.ends_with("/computeledgerentries"))
            .unwrap();
        let fin_at = seen.iter().position(|s| s.method == "PATCH").unwrap();
        assert!(ledger_at < fin_at, "the books before the finalizer goes");
        // The lineage keeps the compute.
        let b = ctx.books.lock().unwrap();
        assert!(b.engine.lineage("llama").charged.0 > 0.0);
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn a_failed_job_create_is_retried_without_a_second_decision() {
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script {
            job_create_status: Some(500),
            ..Default::default()
        });
        let ctx = context(client, vec![]);
        let err = reconcile(Arc::new(fixture("train")), ctx.clone())
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "kube");
        // The retry decides nothing new: the engine already admitted it.
        reconcile(Arc::new(fixture("train")), ctx.clone())
            .await
            .unwrap_err();
        let w = writes(&log);
        let entries = w
            .iter()
            .filter(|(_, p)| p.ends_with("/computeledgerentries"))
            .count();
        assert_eq!(entries, 1, "one Decided entry across retries: {w:?}");
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn a_slimmed_cached_job_runs_its_full_template_read_from_the_api() {
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script::default());
        let ctx = context(client, vec![]);
        let full = fixture("train");
        let full_hash = komptroller::controller::build::job_request(
            &full,
            Default::default(),
            &Catalog::builtin(),
        )
        .unwrap()
        .spec_hash;
        let mut cached = full.clone();
        komptroller::controller::slim(&mut cached, &Catalog::builtin());
        let containers = &cached.spec.template.spec.as_ref().unwrap().containers;
        assert_eq!(containers[0].image, None, "the cache drops the template");
        assert!(containers[0].resources.is_some(), "but keeps the resources");
        reconcile(Arc::new(cached), ctx).await.unwrap();
        let seen = log.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|s| s.method == "GET" && s.path.ends_with("/trainingjobs/train")),
            "the full object is read before the Job is created"
        );
        let job = &seen
            .iter()
            .find(|s| s.path.ends_with("/jobs"))
            .unwrap()
            .body;
        assert_eq!(
            job.pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("x")),
            "the Job runs the full template"
        );
        let status = &seen
            .iter()
            .find(|s| s.path.ends_with("/status"))
            .unwrap()
            .body;
        assert_eq!(
            status.pointer("/status/specHash"),
            Some(&json!(full_hash)),
            "approvals bind to the full spec's hash"
        );
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn approvals_are_read_from_the_watch_cache_not_listed() {
    use komptroller::crd::{ComputeApproval, ComputeApprovalSpec};
    use kube::runtime::watcher::Event as WatchEvent;
    tokio::time::timeout(TIMEOUT, async {
        let (client, log) = mock_api(Script::default());
        let escalate = Policy {
            name: "review".into(),
            spec: serde_json::from_value(json!({"tiers": [{"name": "review", "threshold": 1e18,
                "action": "Escalate", "approvals": {"required": 1, "groups": ["safety"]}}]}))
            .unwrap(),
        };
        let ctx = context(client, vec![escalate]);
        let tj = fixture("train");
        reconcile(Arc::new(tj.clone()), ctx.clone()).await.unwrap();
        let seen = log.lock().unwrap().clone();
        let status = &seen
            .iter()
            .rev()
            .find(|s| s.path.ends_with("/trainingjobs/train/status"))
            .expect("status written")
            .body;
        assert_eq!(
            status.pointer("/status/phase"),
            Some(&json!("AwaitingApproval"))
        );
        let spec_hash = status
            .pointer("/status/specHash")
            .and_then(Value::as_str)
            .expect("status.specHash")
            .to_string();
        assert!(!writes(&log).iter().any(|(_, p)| p.ends_with("/jobs")));

        // An approval arrives through the watch cache (as the term's
        // reflector puts it there); the next reconcile counts it.
        let (store, mut writer) = reflector::store();
        let mut approval = ComputeApproval::new(
            "ok-by-alice",
            ComputeApprovalSpec {
                training_job_name: "train".into(),
                spec_hash,
                approver: Some("alice".into()),
                approver_groups: vec!["safety".into()],
                expires: None,
                comment: None,
            },
        );
        approval.metadata.namespace = Some("ml".into());
        writer.apply_watcher_event(&WatchEvent::Apply(approval));
        let ctx = Arc::new(Context {
            approvals: store,
            ..Arc::try_unwrap(ctx).ok().expect("only reference")
        });
        reconcile(Arc::new(tj), ctx.clone()).await.unwrap();
        let w = writes(&log);
        assert!(
            w.iter()
                .any(|(_, p)| p.ends_with("/computeapprovals/ok-by-alice/status")),
            "the approval's status says it counted: {w:?}"
        );
        assert!(
            w.iter().any(|(_, p)| p.ends_with("/jobs")),
            "admitted and run: {w:?}"
        );
        let listed = log
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.method == "GET" && s.path.ends_with("/computeapprovals"));
        assert!(!listed, "no LIST of ComputeApprovals per reconcile");
        let seen = log.lock().unwrap().clone();
        let counted = &seen
            .iter()
            .find(|s| s.path.ends_with("/computeapprovals/ok-by-alice/status"))
            .unwrap()
            .body;
        assert_eq!(counted.pointer("/status/accepted"), Some(&json!(true)));
    })
    .await
    .expect("scenario timed out");
}

/// Reconciles job `train` to AwaitingApproval under a one-approval tier,
/// then with a ComputeApproval by alice carrying `approval_hash(spec hash
/// the status shows)` in the watch cache; returns the approval's status
/// (accepted, message) and whether the Job was created.
async fn approval_outcome(approval_hash: impl Fn(&str) -> String) -> (Value, bool) {
    use komptroller::crd::{ComputeApproval, ComputeApprovalSpec};
    use kube::runtime::watcher::Event as WatchEvent;
    let (client, log) = mock_api(Script::default());
    let escalate = Policy {
        name: "review".into(),
        spec: serde_json::from_value(json!({"tiers": [{"name": "review", "threshold": 1e18,
            "action": "Escalate", "approvals": {"required": 1, "groups": ["safety"]}}]}))
        .unwrap(),
    };
    let ctx = context(client, vec![escalate]);
    let tj = fixture("train");
    reconcile(Arc::new(tj.clone()), ctx.clone()).await.unwrap();
    let seen = log.lock().unwrap().clone();
    let status = &seen
        .iter()
        .rev()
        .find(|s| s.path.ends_with("/trainingjobs/train/status"))
        .expect("status written")
        .body;
    let shown = status
        .pointer("/status/specHash")
        .and_then(Value::as_str)
        .expect("status.specHash")
        .to_string();
    let (store, mut writer) = reflector::store();
    let mut approval = ComputeApproval::new(
        "by-alice",
        ComputeApprovalSpec {
            training_job_name: "train".into(),
            spec_hash: approval_hash(&shown),
            approver: Some("alice".into()),
            approver_groups: vec!["safety".into()],
            expires: None,
            comment: None,
        },
    );
    approval.metadata.namespace = Some("ml".into());
    writer.apply_watcher_event(&WatchEvent::Apply(approval));
    let ctx = Arc::new(Context {
        approvals: store,
        ..Arc::try_unwrap(ctx).ok().expect("only reference")
    });
    reconcile(Arc::new(tj), ctx.clone()).await.unwrap();
    let seen = log.lock().unwrap().clone();
    let outcome = seen
        .iter()
        .find(|s| s.path.ends_with("/computeapprovals/by-alice/status"))
        .map(|s| s.body["status"].clone())
        .unwrap_or(Value::Null);
    let ran = seen
        .iter()
        .any(|s| s.method == "POST" && s.path.ends_with("/jobs"));
    (outcome, ran)
}

/// The ComputeApproval by alice, as the mutating webhook leaves it when
/// she gives `hash` for the stored job `train`.
fn through_the_mutating_webhook(hash: &str) -> String {
    use komptroller::webhook::{mutate, validate::Requester};
    use kube::api::DynamicObject;
    use kube::core::admission::Operation;
    let job: DynamicObject = serde_json::from_value(fixture_json("train", 8, 2)).unwrap();
    let mut approval = json!({
        "apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval",
        "metadata": {"name": "by-alice", "namespace": "ml"},
        "spec": {"trainingJobName": "train", "specHash": hash}
    });
    let object: DynamicObject = serde_json::from_value(approval.clone()).unwrap();
    let alice = Requester {
        user: "alice".into(),
        groups: vec!["safety".into()],
    };
    let patch =
        mutate::compute_approval(&Operation::Create, &object, &alice, Some(&job)).expect("stamped");
    json_patch::patch(&mut approval, &patch.0).unwrap();
    approval["spec"]["specHash"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_approval_binds_to_the_one_spec_hash() {
    tokio::time::timeout(TIMEOUT, async {
        let stored = fixture_json("train", 8, 2)["spec"].clone();
        let one = TrainingJobSpec::spec_hash_of(&stored).unwrap();
        // What status.specHash shows is the one spec hash, and an approval
        // giving it passes the mutating webhook unchanged and counts.
        assert_eq!(through_the_mutating_webhook(&one), one);
        let (outcome, ran) = approval_outcome(|shown| {
            assert_eq!(shown, one);
            through_the_mutating_webhook(shown)
        })
        .await;
        assert_eq!(outcome["accepted"], json!(true), "{outcome}");
        assert!(ran, "admitted and run");
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn an_approval_carrying_the_legacy_hash_of_the_same_spec_counts() {
    tokio::time::timeout(TIMEOUT, async {
        // The legacy hash: the spec as stored, `nvidia.com/gpu: 8` a number.
        let stored = fixture_json("train", 8, 2)["spec"].clone();
        let legacy = legacy_spec_hash(&stored);
        assert_ne!(
            Some(&legacy),
            TrainingJobSpec::spec_hash_of(&stored).as_ref()
        );
        let (outcome, ran) = approval_outcome(|_| through_the_mutating_webhook(&legacy)).await;
        assert_eq!(outcome["accepted"], json!(true), "{outcome}");
        assert!(ran, "admitted and run");
    })
    .await
    .expect("scenario timed out");
}

#[tokio::test]
async fn an_approval_of_another_spec_does_not_count() {
    tokio::time::timeout(TIMEOUT, async {
        // The same job with 4 replicas instead of 2: its hashes, both kinds.
        let other = fixture_json("train", 8, 4)["spec"].clone();
        for hash in [
            TrainingJobSpec::spec_hash_of(&other).unwrap(),
            legacy_spec_hash(&other),
        ] {
            assert_eq!(through_the_mutating_webhook(&hash), hash, "not rebound");
            let (outcome, ran) = approval_outcome(|_| hash.clone()).await;
            assert_eq!(outcome["accepted"], json!(false), "{outcome}");
            assert!(
                outcome["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("does not match")),
                "{outcome}"
            );
            assert!(!ran, "still awaiting approval");
        }
    })
    .await
    .expect("scenario timed out");
}
