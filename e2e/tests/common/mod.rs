//! Helpers shared by the e2e test files.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod operator;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use e2e::harness::Cluster;
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;

pub const T: Duration = Duration::from_secs(20);

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn widget_gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("test.komptroller.dev", "v1", "Widget")
}

/// The e2e control plane (exclusively) with the test CRDs installed.
pub async fn cluster_with_crds() -> Cluster {
    let c = Cluster::start().await.unwrap();
    c.install_crds(&fixtures().join("crds"), T).await.unwrap();
    c
}

pub async fn widgets(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    c.dynamic_api(&widget_gvk(), Some(ns)).await.unwrap()
}

pub fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "test.komptroller.dev/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// The API error of a failed call (panics, naming the call, if it succeeded).
pub fn api_err<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub fn rv(o: &DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}
