//! Authentication, RBAC authorization and admission webhooks of the stand-in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::webhook::{self, json_patch_b64};
use common::*;
use e2e::harness::client_from_kubeconfig;
use e2e::standin::auth::Tokens;
use e2e::standin::{Authorization, Options};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

async fn as_token(c: &e2e::harness::Cluster, token: &str) -> kube::Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kc");
    c.require_standin()
        .unwrap()
        .write_kubeconfig_for_token(&path, token)
        .unwrap();
    let client = client_from_kubeconfig(&path).await.unwrap();
    std::mem::forget(dir);
    client
}

#[tokio::test]
async fn static_tokens_authenticate() {
    let tokens = Tokens::parse("# comment\ntok-alice,alice,uid-1,\"devs,ops\"\n").unwrap();
    let c = cluster_with_crds(Options {
        tokens,
        ..Options::default()
    })
    .await;
    c.require_standin().expect("tokens are a stand-in option");
    // AlwaysAllow: any authenticated user may act.
    let alice = as_token(&c, "tok-alice").await;
    let cms: Api<ConfigMap> = Api::namespaced(alice, "default");
    cms.create(&PostParams::default(), &cm("by-alice", json!({})))
        .await
        .unwrap();
    let got = Api::<ConfigMap>::namespaced(c.client(), "default")
        .get("by-alice")
        .await
        .unwrap();
    let mf = got.metadata.managed_fields.unwrap();
    assert!(!mf.is_empty());
    // Unknown tokens are 401.
    let nobody = as_token(&c, "wrong").await;
    let e = api_err(
        Api::<ConfigMap>::namespaced(nobody, "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
    assert!(Tokens::parse("only-two,fields").is_err());
}

#[tokio::test]
async fn rbac_roles_bindings_subresources_and_resource_names() {
    let tokens = Tokens::parse(
        "tok-alice,alice,uid-1,\"devs\"\ntok-sa,system:serviceaccount:default:op,uid-2,\n",
    )
    .unwrap();
    let c = cluster_with_crds(Options {
        tokens,
        authorization: Authorization::Rbac,
        ..Options::default()
    })
    .await;
    let ns = c.temp_namespace("rbac").await.unwrap();
    c.apply_yaml(
        &format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: cm-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [allowed]
  verbs: [get]
- apiGroups: [test.komptroller.dev]
  resources: [widgets]
  verbs: [get, list, watch]
- apiGroups: [test.komptroller.dev]
  resources: [widgets/status]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-reads, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}}
subjects: [{{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: ns-lister}}
rules: [{{apiGroups: [""], resources: [namespaces], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: devs-list-ns}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ns-lister}}
subjects: [{{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: op-edits, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{kind: ServiceAccount, name: op, namespace: default}}]
"#,
            ns = ns.name
        ),
        None,
    )
    .await
    .unwrap();
    let admin_cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    admin_cms
        .create(&PostParams::default(), &cm("allowed", json!({})))
        .await
        .unwrap();
    admin_cms
        .create(&PostParams::default(), &cm("secret-ish", json!({})))
        .await
        .unwrap();
    widgets(&c, &ns.name)
        .await
        .create(&PostParams::default(), &widget("w", json!({"size": 1})))
        .await
        .unwrap();

    let alice = as_token(&c, "tok-alice").await;
    let cms: Api<ConfigMap> = Api::namespaced(alice.clone(), &ns.name);
    cms.get("allowed")
        .await
        .expect("resourceNames allow this one");
    let e = api_err(cms.get("secret-ish").await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert!(
        e.message
            .contains("User \"alice\" cannot get resource \"configmaps\""),
        "{}",
        e.message
    );
    assert_eq!(
        api_err(cms.list(&ListParams::default()).await).code,
        403,
        "resourceNames never allow list"
    );
    let ar = c.resolve(&widget_gvk()).await.unwrap().0;
    let w: Api<DynamicObject> = Api::namespaced_with(alice.clone(), &ns.name, &ar);
    w.list(&ListParams::default()).await.unwrap();
    w.patch_status(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "X"}})),
    )
    .await
    .expect("widgets/status patch allowed");
    assert_eq!(
        api_err(
            w.patch(
                "w",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"size": 2}}))
            )
            .await
        )
        .code,
        403,
        "the main resource is not"
    );
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(alice.clone());
    nss.list(&ListParams::default())
        .await
        .expect("group binding via ClusterRoleBinding");
    assert_eq!(
        api_err(
            Api::<ConfigMap>::namespaced(alice, "default")
                .get("x")
                .await
        )
        .code,
        403,
        "the Role is namespaced"
    );
    // A service account bound to the built-in edit ClusterRole in one namespace.
    let sa = as_token(&c, "tok-sa").await;
    Api::<ConfigMap>::namespaced(sa.clone(), &ns.name)
        .create(&PostParams::default(), &cm("by-sa", json!({})))
        .await
        .unwrap();
    assert_eq!(
        api_err(
            Api::<ConfigMap>::namespaced(sa, "default")
                .create(&PostParams::default(), &cm("by-sa", json!({})))
                .await
        )
        .code,
        403
    );
}

#[allow(clippy::too_many_arguments)]
fn webhook_config(
    kind: &str,
    name: &str,
    ca: &str,
    addr: std::net::SocketAddr,
    path: &str,
    failure: &str,
    timeout: u64,
    ns_label: &str,
) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name},
        "webhooks": [{
            "name": format!("{name}.test.komptroller.dev"),
            "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": failure, "timeoutSeconds": timeout,
            "clientConfig": {"url": format!("https://{addr}{path}"), "caBundle": ca},
            "namespaceSelector": {"matchLabels": {"webhook-test": ns_label}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"], "scope": "Namespaced"}],
        }]
    })
}

async fn labelled_ns(c: &e2e::harness::Cluster, label: &str) -> e2e::harness::TempNamespace {
    let ns = c.temp_namespace("hook").await.unwrap();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client());
    nss.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"webhook-test": label}}})),
    )
    .await
    .unwrap();
    ns
}

#[tokio::test]
async fn admission_webhooks_validate_mutate_and_warn() {
    let tokens = Tokens::parse("tok-alice,alice,uid-1,\"devs\"\n").unwrap();
    let c = cluster_with_crds(Options {
        tokens,
        ..Options::default()
    })
    .await;
    let deny: webhook::Decide = Arc::new(|req: &Value| {
        if req.pointer("/object/metadata/labels/deny").is_some() {
            json!({"allowed": false, "status": {"code": 403, "message": format!("{} may not create this", req["userInfo"]["username"].as_str().unwrap_or(""))}})
        } else {
            json!({"allowed": true, "warnings": ["checked by the test webhook"]})
        }
    });
    let validator = webhook::start(deny, Duration::ZERO).await;
    let mutate: webhook::Decide = Arc::new(
        |_req: &Value| json!({"allowed": true, "patchType": "JSONPatch", "patch": json_patch_b64(json!([{"op": "add", "path": "/data", "value": {"mutated": "yes"}}]))}),
    );
    let mutator = webhook::start(mutate, Duration::ZERO).await;
    let cfgs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            None,
        )
        .await
        .unwrap();
    let mcfgs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "MutatingWebhookConfiguration",
            ),
            None,
        )
        .await
        .unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(webhook_config(
            "ValidatingWebhookConfiguration",
            "deny",
            &validator.ca_bundle,
            validator.addr,
            "/validate",
            "Fail",
            5,
            "on",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    mcfgs
        .create(
            &PostParams::default(),
            &serde_json::from_value(webhook_config(
                "MutatingWebhookConfiguration",
                "mutate",
                &mutator.ca_bundle,
                mutator.addr,
                "/mutate",
                "Fail",
                5,
                "on",
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    let ns = labelled_ns(&c, "on").await;
    let alice = as_token(&c, "tok-alice").await;
    let cms: Api<ConfigMap> = Api::namespaced(alice, &ns.name);
    let e = api_err(
        cms.create(&PostParams::default(), &cm("denied", json!({"deny": "1"})))
            .await,
    );
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "admission webhook \"deny.test.komptroller.dev\" denied the request: alice may not create this"
    );
    let o = cms
        .create(&PostParams::default(), &cm("ok", json!({})))
        .await
        .unwrap();
    assert_eq!(
        o.data.unwrap()["mutated"],
        "yes",
        "the mutating webhook's JSONPatch was applied"
    );
    // The validating webhook saw the mutated object and who asked.
    let reviews = validator.reviews.lock().unwrap().clone();
    let last = &reviews.last().unwrap()["request"];
    assert_eq!(last["operation"], "CREATE");
    assert_eq!(last["userInfo"]["username"], "alice");
    assert!(
        last["userInfo"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("devs"))
    );
    assert_eq!(last["object"]["data"]["mutated"], "yes");
    assert_eq!(last["namespace"], ns.name.as_str());
    // Outside the namespaceSelector nothing is called.
    let before = validator.reviews.lock().unwrap().len();
    let other = labelled_ns(&c, "off").await;
    Api::<ConfigMap>::namespaced(c.client(), &other.name)
        .create(&PostParams::default(), &cm("free", json!({"deny": "1"})))
        .await
        .unwrap();
    assert_eq!(validator.reviews.lock().unwrap().len(), before);
    // Warnings reach the client as Warning headers.
    let req = http::Request::post(format!("/api/v1/namespaces/{}/configmaps", ns.name))
        .header("Content-Type", "application/json")
        .body(
            serde_json::to_vec(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "warned"}}),
            )
            .unwrap(),
        )
        .unwrap();
    let resp = c
        .client()
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap();
    let warnings: Vec<String> = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("checked by the test webhook")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn admission_failure_policy_and_timeouts() {
    let c = cluster_with_crds(Options::default()).await;
    let slow: webhook::Decide = Arc::new(
        |_req: &Value| json!({"allowed": false, "status": {"message": "too late to matter"}}),
    );
    let slow_server = webhook::start(slow, Duration::from_secs(3)).await;
    let cfgs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            None,
        )
        .await
        .unwrap();
    // Unreachable webhook, failurePolicy Fail → 500; Ignore → allowed.
    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(webhook_config(
            "ValidatingWebhookConfiguration",
            "dead-fail",
            &slow_server.ca_bundle,
            dead,
            "/",
            "Fail",
            2,
            "fail",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(webhook_config(
            "ValidatingWebhookConfiguration",
            "dead-ignore",
            &slow_server.ca_bundle,
            dead,
            "/",
            "Ignore",
            2,
            "ignore",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(webhook_config(
            "ValidatingWebhookConfiguration",
            "slow",
            &slow_server.ca_bundle,
            slow_server.addr,
            "/",
            "Fail",
            1,
            "slow",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(webhook_config(
            "ValidatingWebhookConfiguration",
            "slow-ignore",
            &slow_server.ca_bundle,
            slow_server.addr,
            "/",
            "Ignore",
            1,
            "slow-ignore",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let fail = labelled_ns(&c, "fail").await;
    let e = api_err(
        Api::<ConfigMap>::namespaced(c.client(), &fail.name)
            .create(&PostParams::default(), &cm("x", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    assert!(
        e.message
            .contains("failed calling webhook \"dead-fail.test.komptroller.dev\""),
        "{}",
        e.message
    );
    let ignore = labelled_ns(&c, "ignore").await;
    Api::<ConfigMap>::namespaced(c.client(), &ignore.name)
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    let slow_ns = labelled_ns(&c, "slow").await;
    let t0 = std::time::Instant::now();
    let e = api_err(
        Api::<ConfigMap>::namespaced(c.client(), &slow_ns.name)
            .create(&PostParams::default(), &cm("x", json!({})))
            .await,
    );
    assert_eq!(e.code, 500);
    assert!(
        t0.elapsed() < Duration::from_millis(2900),
        "timeoutSeconds cut the call short: {:?}",
        t0.elapsed()
    );
    let slow_ignore = labelled_ns(&c, "slow-ignore").await;
    Api::<ConfigMap>::namespaced(c.client(), &slow_ignore.name)
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    // A wrong caBundle is a TLS failure.
    let other_ca = e2e::tls::Ca::new("other").unwrap();
    let bad_ca = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        other_ca.cert_pem(),
    );
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(webhook_config(
            "ValidatingWebhookConfiguration",
            "bad-ca",
            &bad_ca,
            slow_server.addr,
            "/",
            "Fail",
            5,
            "bad-ca",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let bad_ns = labelled_ns(&c, "bad-ca").await;
    let e = api_err(
        Api::<ConfigMap>::namespaced(c.client(), &bad_ns.name)
            .create(&PostParams::default(), &cm("x", json!({})))
            .await,
    );
    assert_eq!(e.code, 500);
    assert!(e.message.contains("tls"), "{}", e.message);
}

#[tokio::test]
async fn admission_match_conditions_and_dry_run() {
    let tokens = Tokens::parse("tok-op,system:serviceaccount:ops:operator,uid-op,\"system:serviceaccounts\"\ntok-alice,alice,uid-1,\"devs\"\n").unwrap();
    let c = cluster_with_crds(Options {
        tokens,
        ..Options::default()
    })
    .await;
    let deny_all: webhook::Decide =
        Arc::new(|_req: &Value| json!({"allowed": false, "status": {"message": "denied"}}));
    let server = webhook::start(deny_all, Duration::ZERO).await;
    let mut cfg = webhook_config(
        "ValidatingWebhookConfiguration",
        "cond",
        &server.ca_bundle,
        server.addr,
        "/",
        "Fail",
        5,
        "cond",
    );
    cfg["webhooks"][0]["matchConditions"] = json!([
        {"name": "not-the-operator", "expression": "request.userInfo.username != 'system:serviceaccount:ops:operator'"},
        {"name": "only-labelled", "expression": "has(object.metadata.labels) && 'check' in object.metadata.labels"}
    ]);
    cfg["webhooks"][0]["sideEffects"] = json!("NoneOnDryRun");
    let cfgs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            None,
        )
        .await
        .unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(cfg).unwrap(),
    )
    .await
    .unwrap();
    let ns = labelled_ns(&c, "cond").await;
    let alice = Api::<ConfigMap>::namespaced(as_token(&c, "tok-alice").await, &ns.name);
    let op = Api::<ConfigMap>::namespaced(as_token(&c, "tok-op").await, &ns.name);
    alice
        .create(&PostParams::default(), &cm("unlabelled", json!({})))
        .await
        .expect("condition false: not called");
    let e = api_err(
        alice
            .create(
                &PostParams::default(),
                &cm("labelled", json!({"check": "1"})),
            )
            .await,
    );
    assert_eq!(e.code, 403, "both conditions true: called and denied");
    op.create(
        &PostParams::default(),
        &cm("by-operator", json!({"check": "1"})),
    )
    .await
    .expect("the operator is excluded");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    // Dry runs reach webhooks declared NoneOnDryRun, flagged as such.
    let before = server.reviews.lock().unwrap().len();
    let e = api_err(alice.create(&dry, &cm("dry", json!({"check": "1"}))).await);
    assert_eq!(e.code, 403);
    let reviews = server.reviews.lock().unwrap().clone();
    assert_eq!(reviews.len(), before + 1);
    assert_eq!(reviews.last().unwrap()["request"]["dryRun"], true);
}

#[tokio::test]
async fn admission_webhook_by_service_reference() {
    // The chart registers its webhook by Service; the stand-in maps the
    // service to a local address and verifies TLS for <name>.<namespace>.svc.
    let allow: webhook::Decide = Arc::new(
        |req: &Value| json!({"allowed": req.pointer("/object/metadata/labels/deny").is_none(), "status": {"message": "denied by service webhook"}}),
    );
    let server =
        webhook::start_with_names(allow, Duration::ZERO, &["komptroller-webhook.ops.svc"]).await;
    let mut services = std::collections::HashMap::new();
    services.insert(
        ("ops".to_string(), "komptroller-webhook".to_string()),
        server.addr,
    );
    let c = cluster_with_crds(Options {
        webhook_services: services,
        ..Options::default()
    })
    .await;
    c.require_standin()
        .expect("service mapping is a stand-in option");
    let mut cfg = webhook_config(
        "ValidatingWebhookConfiguration",
        "svc",
        &server.ca_bundle,
        server.addr,
        "/",
        "Fail",
        5,
        "svc",
    );
    cfg["webhooks"][0]["clientConfig"] = json!({"service": {"namespace": "ops", "name": "komptroller-webhook", "path": "/validate", "port": 443}, "caBundle": server.ca_bundle});
    let cfgs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            None,
        )
        .await
        .unwrap();
    cfgs.create(
        &PostParams::default(),
        &serde_json::from_value(cfg).unwrap(),
    )
    .await
    .unwrap();
    let ns = labelled_ns(&c, "svc").await;
    let cms = Api::<ConfigMap>::namespaced(c.client(), &ns.name);
    cms.create(&PostParams::default(), &cm("ok", json!({})))
        .await
        .unwrap();
    let e = api_err(
        cms.create(&PostParams::default(), &cm("no", json!({"deny": "1"})))
            .await,
    );
    assert!(
        e.message.contains("denied by service webhook"),
        "{}",
        e.message
    );
    assert_eq!(server.reviews.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn webhook_configurations_and_roles_are_validated_and_defaulted() {
    let c = cluster_with_crds(Options::default()).await;
    let cfgs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            None,
        )
        .await
        .unwrap();
    let base = |hook: Value| {
        serde_json::from_value::<DynamicObject>(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "v"}, "webhooks": [hook]})).unwrap()
    };
    let good = json!({"name": "validate.komptroller.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "clientConfig": {"service": {"namespace": "ops", "name": "hook"}},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]});
    for (broken, field) in [
        (json!({"name": "short"}), "webhooks[0].name"),
        (json!({"sideEffects": "Unknown"}), "webhooks[0].sideEffects"),
        (
            json!({"admissionReviewVersions": ["v2"]}),
            "webhooks[0].admissionReviewVersions",
        ),
        (
            json!({"clientConfig": {"url": "http://x.example/"}}),
            "webhooks[0].clientConfig.url",
        ),
        (json!({"timeoutSeconds": 31}), "webhooks[0].timeoutSeconds"),
    ] {
        let mut h = good.clone();
        for (k, v) in broken.as_object().unwrap() {
            h[k] = v.clone();
        }
        let e = api_err(cfgs.create(&PostParams::default(), &base(h)).await);
        assert_eq!(e.code, 422);
        let causes = e.details.map(|d| d.causes).unwrap_or_default();
        assert!(
            causes.iter().any(|c| c.field == field),
            "{field}: {causes:?}"
        );
    }
    let o = cfgs
        .create(&PostParams::default(), &base(good))
        .await
        .unwrap();
    let h = &o.data["webhooks"][0];
    assert_eq!(
        (
            h["failurePolicy"].as_str(),
            h["timeoutSeconds"].as_i64(),
            h["matchPolicy"].as_str()
        ),
        (Some("Fail"), Some(10), Some("Equivalent"))
    );
    assert_eq!(h["clientConfig"]["service"]["port"], 443);
    let roles: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "Role"),
            Some("default"),
        )
        .await
        .unwrap();
    let role = |rules: Value| {
        serde_json::from_value::<DynamicObject>(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}, "rules": rules})).unwrap()
    };
    let e = api_err(
        roles
            .create(
                &PostParams::default(),
                &role(json!([{"resources": ["pods"], "verbs": ["get"]}])),
            )
            .await,
    );
    assert!(
        e.message.contains("rules[0].apiGroups: Required value"),
        "{}",
        e.message
    );
    let e = api_err(
        roles
            .create(
                &PostParams::default(),
                &role(json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])),
            )
            .await,
    );
    assert!(
        e.message
            .contains("namespaced rules cannot apply to non-resource URLs"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn rbac_cluster_role_aggregation() {
    let tokens = Tokens::parse("tok-viewer,viewer,uid-v,\"\"\n").unwrap();
    let c = cluster_with_crds(Options {
        tokens,
        authorization: Authorization::Rbac,
        ..Options::default()
    })
    .await;
    let ns = c.temp_namespace("agg").await.unwrap();
    widgets(&c, &ns.name)
        .await
        .create(&PostParams::default(), &widget("w", json!({"size": 1})))
        .await
        .unwrap();
    c.apply_yaml(
        &format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: viewer-view, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}
subjects: [{{kind: User, name: viewer, apiGroup: rbac.authorization.k8s.io}}]
"#,
            ns = ns.name
        ),
        None,
    )
    .await
    .unwrap();
    let viewer = as_token(&c, "tok-viewer").await;
    let ar = c.resolve(&widget_gvk()).await.unwrap().0;
    let w: Api<DynamicObject> = Api::namespaced_with(viewer, &ns.name, &ar);
    assert_eq!(
        api_err(w.get("w").await).code,
        403,
        "view does not cover widgets yet"
    );
    // A chart-style role aggregated into `view` by label.
    c.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-view
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [test.komptroller.dev], resources: [widgets], verbs: [get, list, watch]}]
"#,
        None,
    )
    .await
    .unwrap();
    w.get("w").await.expect("aggregated into view");
    assert_eq!(api_err(w.delete("w", &Default::default()).await).code, 403);
}

#[tokio::test]
async fn apply_that_creates_needs_create_and_the_audit_log_records_every_decision() {
    let tokens = Tokens::parse("tok-pat,pat,uid-pat,\"patchers\"\n").unwrap();
    let c = cluster_with_crds(Options {
        tokens,
        authorization: Authorization::Rbac,
        ..Options::default()
    })
    .await;
    let standin = c.require_standin().unwrap();
    c.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: patch-only, namespace: default}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get, patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: patch-only, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: patch-only}
subjects: [{kind: Group, name: patchers}]
"#,
        None,
    )
    .await
    .unwrap();
    standin.clear_audit();
    let pat: Api<ConfigMap> = Api::namespaced(as_token(&c, "tok-pat").await, "default");
    let pp = PatchParams::apply("pat");
    let doc = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
        "data": {"a": "1"}});
    // Creating by apply is authorized as create too (as kube-apiserver does).
    let e = api_err(pat.patch("applied", &pp, &Patch::Apply(&doc)).await);
    assert_eq!(e.code, 403);
    assert!(
        e.message.contains("cannot create resource \"configmaps\""),
        "{}",
        e.message
    );
    // Once it exists, patch alone is enough.
    Api::<ConfigMap>::namespaced(c.client(), "default")
        .create(&PostParams::default(), &cm("applied", json!({})))
        .await
        .unwrap();
    pat.patch("applied", &pp, &Patch::Apply(&doc))
        .await
        .unwrap();
    let audit = standin.audit();
    let of = |verb: &str| {
        audit
            .iter()
            .find(|r| r.key.user == "pat" && r.key.verb == verb && r.key.resource == "configmaps")
            .map(|r| (r.allowed, r.denied, r.key.namespace.clone()))
    };
    assert_eq!(of("patch"), Some((2, 0, "default".into())), "{audit:?}");
    assert_eq!(of("create"), Some((0, 1, "default".into())), "{audit:?}");
}
