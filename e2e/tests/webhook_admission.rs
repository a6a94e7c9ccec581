//! On the real control plane: komptroller's admission webhooks,
//! served by the real binary over TLS with the certificate it manages
//! itself, called by kube-apiserver with the authenticated `userInfo` of
//! users who act by client certificates in their groups.
//!
//! Needs the `komptroller` binary next to the test executable
//! (`cargo build -p komptroller` first; `cargo test --workspace` builds it).
//! On another cluster (`KOMPTROLLER_E2E_KUBECONFIG`) the users are the
//! admin impersonating them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use e2e::harness::{Process, TempNamespace};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::operator::{T, free_port, gvk, komptroller};

const WEBHOOK_NS: &str = "komptroller-system";

const USERS: &[(&str, &str)] = &[
    ("alice", "ml-engineers"),
    ("bob", "safety-board"),
    ("carol", "safety-board"),
    ("erin", "safety-board"),
    ("dave", "ml-engineers"),
    ("pat", "platform-team"),
];

/// The shared environment (`common::operator::Env`: certificate users,
/// CRDs, the webhook's namespace) plus a namespace for the scenario.
struct Env {
    base: common::operator::Env,
    ns: TempNamespace,
}

impl std::ops::Deref for Env {
    type Target = common::operator::Env;
    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Env {
    async fn start() -> Env {
        let base = common::operator::Env::start(USERS).await;
        let ns = base.cluster.temp_namespace("webhook").await.unwrap();
        Env { base, ns }
    }

    async fn api_as(&self, user: &str, kind: &str) -> Api<DynamicObject> {
        self.base.api_as(user, kind, &self.ns.name).await
    }

    async fn admin(&self, kind: &str) -> Api<DynamicObject> {
        self.cluster
            .dynamic_api(&gvk(kind), Some(&self.ns.name))
            .await
            .unwrap()
    }

    /// `komptroller webhook` (or `run`) serving on a fresh port; waits for "webhook ready".
    async fn start_webhook(&self, subcommand: &str, extra: &[&str]) -> (Process, u16) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("https://127.0.0.1:{port}");
        let mut args = vec![
            subcommand,
            "--webhook-addr",
            &addr,
            "--webhook-url",
            &url,
            "--webhook-namespace",
            WEBHOOK_NS,
            "--webhook-cert-check-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        let mut p = Process::start(
            &komptroller(),
            &args,
            Some(self.cluster.kubeconfig()),
            &[("RUST_LOG", "info")],
        )
        .unwrap();
        p.wait_for_line("webhook ready", T).await.unwrap();
        (p, port)
    }

    async fn apply_policy(&self, yaml: &str) {
        self.cluster.apply_yaml(yaml, None).await.unwrap();
    }

    /// kubectl as `user` in the test namespace; (success, stdout, stderr).
    fn kubectl(&self, user: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut c = std::process::Command::new(e2e::control_plane::tool("kubectl").unwrap());
        c.env("KUBECONFIG", self.kubeconfig_for(user))
            .args(["-n", &self.ns.name])
            .args(args);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("the kubectl e2e/cluster/build built");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

const FRONTIER: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: frontier}
spec:
  mode: Enforce
  tiers:
  - name: eu-systemic-risk
    threshold: 1e25
    action: Escalate
    approvals: {required: 2, groups: [safety-board]}
  - name: ceiling
    threshold: 1e26
    action: Reject
"#;

/// A TrainingJob manifest: `replicas` pods × 8 H100 for `hours`.
fn training_job(name: &str, replicas: u32, hours: u32) -> Value {
    json!({
        "apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": name},
            "accelerator": {"type": "nvidia-h100-sxm", "precision": "bf16"},
            "replicas": replicas,
            "maxDuration": format!("{hours}h"),
            "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "trainer", "image": "ghcr.io/example/trainer:1",
                "resources": {"limits": {"nvidia.com/gpu": 8}}
            }]}}
        }
    })
}

fn approval(name: &str, job: &str, hash: &str, extra: Value) -> DynamicObject {
    let mut spec = json!({"trainingJobName": job, "specHash": hash});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeApproval",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn denial(r: Result<DynamicObject, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            s.message
        }
        other => panic!("expected the webhook to deny, got {other:?}"),
    }
}

fn assert_contains(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{text:?} should contain {n:?}");
    }
}

/// The spec hash `komptroller project -o json` prints for `manifest`.
fn project_spec_hash(env: &Env, manifest: &Value) -> String {
    let file = env.dir.path().join("project.json");
    std::fs::write(&file, serde_json::to_vec(manifest).unwrap()).unwrap();
    let out = std::process::Command::new(komptroller())
        .args(["project", "-o", "json", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["specHash"].as_str().unwrap().to_string()
}

/// The status the controller writes while a job waits for approval, written
/// here by the admin (this scenario exercises the webhook alone).
async fn hold_for_approval(env: &Env, name: &str, hash: &str) {
    let tjs = env.admin("TrainingJob").await;
    let tj = tjs.get(name).await.unwrap();
    let status = json!({"status": {
        "phase": "AwaitingApproval",
        "observedGeneration": tj.metadata.generation,
        "specHash": hash,
        "decision": {"verdict": "Escalate", "policy": "frontier", "rule": "tier/eu-systemic-risk",
                     "approvals": {"required": 2, "groups": ["safety-board"]}}
    }});
    tjs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_authenticated_and_separated() {
    let env = Env::start().await;
    let (mut webhook, _) = env.start_webhook("webhook", &[]).await;
    env.apply_policy(FRONTIER).await;

    // Alice submits; the mutating webhook stamps her identity.
    let alice_tj = env.api_as("alice", "TrainingJob").await;
    let job: DynamicObject =
        serde_json::from_value(training_job("frontier-run", 512, 720)).unwrap();
    let created = alice_tj.create(&PostParams::default(), &job).await.unwrap();
    let stamp: Value = serde_json::from_str(
        &created.metadata.annotations.unwrap()["komptroller.dev/submitted-by"],
    )
    .unwrap();
    assert_eq!(stamp["user"], "alice");
    assert_eq!(
        stamp["groups"],
        json!(["ml-engineers", "system:authenticated"])
    );
    // A forged stamp on create is refused.
    let mut forged = training_job("forged-stamp", 1, 1);
    forged["metadata"]["annotations"] =
        json!({"komptroller.dev/submitted-by": "{\"user\":\"bob\",\"groups\":[]}"});
    let m = denial(
        alice_tj
            .create(
                &PostParams::default(),
                &serde_json::from_value(forged).unwrap(),
            )
            .await,
    );
    assert_contains(
        &m,
        &[
            "metadata.annotations[komptroller.dev/submitted-by]",
            "user-supplied value is refused",
        ],
    );

    // The spec hash an approver reviews: what `komptroller project` prints
    // for the manifest is what the controller shows as status.specHash.
    let h = &project_spec_hash(&env, &training_job("frontier-run", 512, 720));
    hold_for_approval(&env, "frontier-run", h).await;

    // Self-approval.
    let m = denial(
        env.api_as("alice", "ComputeApproval")
            .await
            .create(
                &PostParams::default(),
                &approval("by-alice", "frontier-run", h, json!({})),
            )
            .await,
    );
    assert_contains(&m, &["spec.approver \"alice\"", "separation of duties"]);
    // A forged approver.
    let bob = env.api_as("bob", "ComputeApproval").await;
    let m = denial(
        bob.create(
            &PostParams::default(),
            &approval("as-carol", "frontier-run", h, json!({"approver": "carol"})),
        )
        .await,
    );
    assert_contains(&m, &["spec.approver \"carol\"", "forged", "\"bob\""]);
    // An approver outside the required group.
    let m = denial(
        env.api_as("dave", "ComputeApproval")
            .await
            .create(
                &PostParams::default(),
                &approval("by-dave", "frontier-run", h, json!({})),
            )
            .await,
    );
    assert_contains(
        &m,
        &[
            "spec.approver \"dave\"",
            "none of the groups",
            "safety-board",
        ],
    );

    // Two distinct approvers from the group.
    let got = bob
        .create(
            &PostParams::default(),
            &approval("by-bob", "frontier-run", h, json!({"comment": "reviewed"})),
        )
        .await
        .unwrap();
    assert_eq!(got.data["spec"]["approver"], "bob");
    assert_eq!(
        got.data["spec"]["approverGroups"],
        json!(["safety-board", "system:authenticated"])
    );
    let carol = env.api_as("carol", "ComputeApproval").await;
    carol
        .create(
            &PostParams::default(),
            &approval("by-carol", "frontier-run", h, json!({})),
        )
        .await
        .unwrap();
    // Approvals are immutable.
    let r = bob
        .patch(
            "by-bob",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"comment": "changed"}})),
        )
        .await;
    assert!(
        matches!(r, Err(kube::Error::Api(ref s)) if s.message.contains("immutable")),
        "{r:?}"
    );

    // The spec changes while awaiting approval: approvals of the old spec are refused.
    alice_tj
        .patch(
            "frontier-run",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 600}})),
        )
        .await
        .unwrap();
    let erin = env.api_as("erin", "ComputeApproval").await;
    let m = denial(
        erin.create(
            &PostParams::default(),
            &approval("by-erin", "frontier-run", h, json!({})),
        )
        .await,
    );
    assert_contains(
        &m,
        &[
            &format!("spec.specHash {h:?}"),
            "does not match the current spec",
        ],
    );
    // An approval of the new spec binds to its hash.
    let changed = &project_spec_hash(&env, &training_job("frontier-run", 600, 720));
    assert_ne!(changed, h);
    assert_contains(&m, &[changed]);

    webhook.terminate(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_gets_denials_and_warn_mode_warnings() {
    let env = Env::start().await;
    let (mut webhook, _) = env.start_webhook("webhook", &[]).await;
    env.apply_policy(FRONTIER).await;
    env.apply_policy(
        r#"
apiVersion: komptroller.dev/v1alpha1
kind: ComputePolicy
metadata: {name: research-warn}
spec:
  mode: Warn
  namespaceSelector: {matchLabels: {komptroller.dev/mode: warn}}
  tiers:
  - {name: research-large, threshold: 1e21, action: Reject}
"#,
    )
    .await;
    let to_yaml = |v: &Value| serde_json::to_string(v).unwrap();

    // Over the ceiling: denied at apply, with the rule and the numbers.
    let (ok, _, err) = env.kubectl(
        "alice",
        &["apply", "-f", "-"],
        Some(&to_yaml(&training_job("giant", 4096, 2160))),
    );
    assert!(!ok, "{err}");
    assert_contains(
        &err,
        &[
            "Rejected: lineage giant would reach",
            "above tier ceiling at 1e26",
            "rule tier/ceiling",
        ],
    );
    // An unknown accelerator names the field and the closest keys.
    let mut typo = training_job("typo", 1, 1);
    typo["spec"]["accelerator"]["type"] = json!("nvidia-h100-sxn");
    let (ok, _, err) = env.kubectl("alice", &["apply", "-f", "-"], Some(&to_yaml(&typo)));
    assert!(!ok);
    assert_contains(
        &err,
        &[
            "spec.accelerator.type \"nvidia-h100-sxn\"",
            "nvidia-h100-sxm",
        ],
    );
    // An invalid policy is refused by its webhook, naming each field (pat
    // of the platform team may write policies; RBAC is real).
    let (ok, _, err) = env.kubectl(
        "pat",
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"komptroller.dev/v1alpha1","kind":"ComputePolicy","metadata":{"name":"bad"},"spec":{"tiers":[{"name":"b","threshold":1e26,"action":"Reject"},{"name":"a","threshold":1e25,"action":"Admit"}]}}"#),
    );
    assert!(!ok);
    assert_contains(&err, &["spec.tiers[1].threshold", "sorted"]);

    // Warn mode: admitted, and kubectl prints the verdict Enforce would give.
    let (ok, _, err) = env.kubectl(
        "pat",
        &[
            "label",
            "namespace",
            &env.ns.name,
            "komptroller.dev/mode=warn",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = env.kubectl(
        "alice",
        &["apply", "-f", "-"],
        Some(&to_yaml(&training_job("experiment", 2, 24))),
    );
    assert!(ok, "{err}");
    assert_contains(&out, &["trainingjob.komptroller.dev/experiment created"]);
    assert_contains(
        &err,
        &[
            "Warning: komptroller: policy research-warn (Warn) would Reject",
            "tier research-large",
        ],
    );

    webhook.terminate(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_down_fail_blocks_and_ignore_lets_through() {
    let env = Env::start().await;
    let alice_tj = env.api_as("alice", "TrainingJob").await;

    // failurePolicy Fail (the default): with the webhook gone, creation is refused.
    let (mut webhook, _) = env.start_webhook("webhook", &[]).await;
    alice_tj
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("while-up", 1, 1)).unwrap(),
        )
        .await
        .unwrap();
    webhook.kill().await.unwrap();
    let r = alice_tj
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("while-down", 1, 1)).unwrap(),
        )
        .await;
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 500, "{s:?}");
            assert_contains(
                &s.message,
                &[
                    "failed calling webhook",
                    "trainingjobs.mutate.komptroller.dev",
                ],
            );
        }
        other => panic!("expected a failed webhook call, got {other:?}"),
    }

    // failurePolicy Ignore: the same outage lets the job through (unstamped).
    let (mut webhook, _) = env
        .start_webhook("webhook", &["--trainingjob-failure-policy", "Ignore"])
        .await;
    let cfg: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(env.cluster.client());
    let v = cfg.get("komptroller").await.unwrap();
    let hooks = v.webhooks.unwrap();
    let tj_hook = hooks
        .iter()
        .find(|h| h.name == "trainingjobs.validate.komptroller.dev")
        .unwrap();
    assert_eq!(tj_hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(tj_hook.side_effects, "None");
    assert_eq!(tj_hook.admission_review_versions, vec!["v1".to_string()]);
    assert!(tj_hook.timeout_seconds.unwrap() <= 10);
    let approvals_hook = hooks
        .iter()
        .find(|h| h.name == "computeapprovals.validate.komptroller.dev")
        .unwrap();
    assert_eq!(approvals_hook.failure_policy.as_deref(), Some("Fail"));
    webhook.kill().await.unwrap();
    let got = alice_tj
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("while-down", 1, 1)).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        got.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("komptroller.dev/submitted-by"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn self_managed_certificate_renews_and_replicas_agree() {
    let env = Env::start().await;
    // Two replicas racing on the same Secret, with a short-lived certificate.
    let short = [
        "--webhook-cert-validity",
        "40s",
        "--webhook-cert-renew-before",
        "30s",
    ];
    let ((mut a, _), (mut b, _)) = tokio::join!(
        env.start_webhook("webhook", &short),
        env.start_webhook("webhook", &short)
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.cluster.client(), WEBHOOK_NS);
    let first = secrets.get("komptroller-webhook-tls").await.unwrap();
    let cert =
        |s: &k8s_openapi::api::core::v1::Secret| s.data.as_ref().unwrap()["tls.crt"].0.clone();
    let ca = |s: &k8s_openapi::api::core::v1::Secret| s.data.as_ref().unwrap()["ca.crt"].0.clone();
    let alice_tj = env.api_as("alice", "TrainingJob").await;
    alice_tj
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("before", 1, 1)).unwrap(),
        )
        .await
        .unwrap();
    // Renewed within ~10s (40s validity, renew 30s before the end, checked every second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let s = secrets.get("komptroller-webhook-tls").await.unwrap();
        if cert(&s) != cert(&first) {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the serving certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        ca(&renewed),
        ca(&first),
        "a serving-certificate renewal keeps the CA (and the caBundle)"
    );
    // Both replicas reload without a restart; requests keep succeeding.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..6 {
        alice_tj
            .create(
                &PostParams::default(),
                &serde_json::from_value(training_job(&format!("after-{i}"), 1, 1)).unwrap(),
            )
            .await
            .unwrap();
    }
    let out = [a.output(), b.output()].concat().join("\n");
    assert!(
        out.contains("reloaded the webhook serving certificate"),
        "{out}"
    );
    a.terminate(Duration::from_secs(5)).await.unwrap();
    b.terminate(Duration::from_secs(5)).await.unwrap();
}

async fn wait_phase(env: &Env, name: &str, phases: &[&str]) -> DynamicObject {
    let tjs = env.admin("TrainingJob").await;
    e2e::harness::wait_for(&tjs, name, T, |o| {
        o.data
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .is_some_and(|p| phases.contains(&p))
    })
    .await
    .unwrap_or_else(|e| panic!("{name} never reached {phases:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_operator_ignore_still_holds_and_two_approvers_admit() {
    let env = Env::start().await;
    env.apply_policy(FRONTIER).await;
    let alice_tj = env.api_as("alice", "TrainingJob").await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(env.cluster.client(), &env.ns.name);
    let run = |metrics: String| {
        vec![
            "--metrics-addr".to_string(),
            metrics,
            "--namespace".to_string(),
            WEBHOOK_NS.to_string(),
            "--report-interval".to_string(),
            "1h".to_string(),
        ]
    };

    // The webhook registered with failurePolicy Ignore, then gone.
    let (mut webhook, _) = env
        .start_webhook(
            "webhook",
            &[
                "--trainingjob-failure-policy",
                "Ignore",
                "--approval-failure-policy",
                "Ignore",
            ],
        )
        .await;
    webhook.kill().await.unwrap();
    // The operator alone (no --webhook-addr) still holds an escalated job.
    let args = run(format!("127.0.0.1:{}", free_port()));
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.insert(0, "run");
    let mut op = Process::start(
        &komptroller(),
        &args,
        Some(env.cluster.kubeconfig()),
        &[("RUST_LOG", "info")],
    )
    .unwrap();
    alice_tj
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("held-run", 512, 720)).unwrap(),
        )
        .await
        .unwrap();
    let held = wait_phase(&env, "held-run", &["AwaitingApproval"]).await;
    assert_eq!(
        held.data
            .pointer("/status/decision/rule")
            .and_then(Value::as_str),
        Some("tier/eu-systemic-risk")
    );
    assert!(
        jobs.get_opt("held-run").await.unwrap().is_none(),
        "nothing runs before admission"
    );
    op.terminate(Duration::from_secs(10)).await.unwrap();

    // The operator with its webhook (Fail again): two distinct approvers from the group admit.
    let extra = run(format!("127.0.0.1:{}", free_port()));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (mut op, _) = env.start_webhook("run", &extra).await;
    alice_tj
        .create(
            &PostParams::default(),
            &serde_json::from_value(training_job("frontier-run", 512, 720)).unwrap(),
        )
        .await
        .unwrap();
    let tj = wait_phase(&env, "frontier-run", &["AwaitingApproval"]).await;
    let hash = tj
        .data
        .pointer("/status/specHash")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    let m = denial(
        env.api_as("alice", "ComputeApproval")
            .await
            .create(
                &PostParams::default(),
                &approval("by-alice", "frontier-run", &hash, json!({})),
            )
            .await,
    );
    assert_contains(&m, &["separation of duties"]);
    env.api_as("bob", "ComputeApproval")
        .await
        .create(
            &PostParams::default(),
            &approval("by-bob", "frontier-run", &hash, json!({})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        jobs.get_opt("frontier-run").await.unwrap().is_none(),
        "one approval of two admits nothing"
    );
    env.api_as("carol", "ComputeApproval")
        .await
        .create(
            &PostParams::default(),
            &approval("by-carol", "frontier-run", &hash, json!({})),
        )
        .await
        .unwrap();
    wait_phase(&env, "frontier-run", &["Admitted", "Running"]).await;
    e2e::harness::wait_for(&jobs, "frontier-run", T, |_| true)
        .await
        .unwrap();
    op.terminate(Duration::from_secs(10)).await.unwrap();
}
