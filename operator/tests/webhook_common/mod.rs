//! Shared by the webhook tests: fixture AdmissionReviews and a fixed cluster view.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use komptroller::crd::TrainingJobSpec;
use komptroller::webhook::review::{self, ClusterView, Route};
use komptroller_engine::manifest::parse_policies;
use komptroller_engine::policy::Policy;
use kube::api::DynamicObject;
use serde_json::Value;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

/// The spec hash of the fixture job `frontier-run`, substituted for `{{HASH}}`.
pub fn job_hash() -> String {
    let jobs: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("jobs.json")).unwrap()).unwrap();
    TrainingJobSpec::spec_hash_of(&jobs[0]["spec"]).unwrap()
}

/// A fixture review's bytes, with `{{HASH}}` replaced.
pub fn fixture(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(dir().join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    text.replace("{{HASH}}", &job_hash()).into_bytes()
}

/// The cluster as the fixtures see it.
pub struct FixedView {
    pub policies: Vec<Policy>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub jobs: Vec<DynamicObject>,
}

impl FixedView {
    pub fn load() -> FixedView {
        let policies = parse_policies(
            &std::fs::read_to_string(dir().join("policies.yaml")).unwrap(),
            "policies.yaml",
        )
        .unwrap();
        let text = std::fs::read_to_string(dir().join("jobs.json"))
            .unwrap()
            .replace("{{HASH}}", &job_hash());
        let jobs: Vec<DynamicObject> = serde_json::from_str(&text).unwrap();
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "ml".to_string(),
            BTreeMap::from([("team".to_string(), "ml".to_string())]),
        );
        namespaces.insert(
            "research".to_string(),
            BTreeMap::from([("team".to_string(), "research".to_string())]),
        );
        FixedView {
            policies,
            namespaces,
            jobs,
        }
    }
}

impl ClusterView for FixedView {
    fn policies(&self) -> Vec<Policy> {
        self.policies.clone()
    }
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }
    async fn training_job(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>, String> {
        Ok(self
            .jobs
            .iter()
            .find(|j| {
                j.metadata.namespace.as_deref() == Some(namespace)
                    && j.metadata.name.as_deref() == Some(name)
            })
            .cloned())
    }
}

/// Posts a fixture to a route and returns (HTTP status, the response object).
pub async fn post(route: Route, name: &str) -> (u16, Value) {
    post_bytes(route, &fixture(name)).await
}

pub async fn post_bytes(route: Route, body: &[u8]) -> (u16, Value) {
    let view = FixedView::load();
    let answer = review::handle(route, body, &view, jiff::Timestamp::now()).await;
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    (answer.status, v["response"].clone())
}

pub fn message(resp: &Value) -> String {
    resp["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn warnings(resp: &Value) -> Vec<String> {
    resp["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The JSONPatch of a mutating response, decoded.
pub fn patch(resp: &Value) -> Value {
    use base64::Engine as _;
    let b = resp["patch"].as_str().unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
    serde_json::from_slice(&raw).unwrap()
}
