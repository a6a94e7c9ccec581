//! Conformance of the stand-in to kube-apiserver semantics, through kube-rs.
//! Tests that need fault injection or stand-in options say so and fail on a
//! real cluster (`KOMPTROLLER_E2E_KUBECONFIG`) instead of passing silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use e2e::harness::{wait_for, wait_for_deletion};
use e2e::standin::{Faults, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use serde_json::{Value, json};

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

#[tokio::test]
async fn resource_version_uid_generation_and_timestamps() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("meta").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({"k": "1"})))
        .await
        .unwrap();
    let rv_a: u64 = a
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(a.metadata.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(a.metadata.creation_timestamp.is_some());
    assert!(
        a.metadata.generation.is_none(),
        "ConfigMaps have no generation"
    );
    let mut a2 = a.clone();
    a2.data = Some([("k".to_string(), "2".to_string())].into());
    let a2 = cms.replace("a", &PostParams::default(), &a2).await.unwrap();
    let rv_a2: u64 = a2
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv_a2 > rv_a, "resourceVersion must grow");
    assert_eq!(a2.metadata.uid, a.metadata.uid);
    // A no-op update does not bump the resourceVersion.
    let a3 = cms.replace("a", &PostParams::default(), &a2).await.unwrap();
    assert_eq!(a3.metadata.resource_version, a2.metadata.resource_version);

    // One counter across kinds.
    let b = cms
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    assert!(b.metadata.resource_version.unwrap().parse::<u64>().unwrap() > rv_a2);

    // Generation: spec changes only.
    let w = widgets(&c, &ns.name).await;
    let o = w
        .create(&PostParams::default(), &widget("w", json!({"size": 2})))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    let o = w
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1), "labels are not spec");
    let o = w
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1), "status is not spec");
    let o = w
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(2));
}

#[tokio::test]
async fn errors_are_status_objects_with_real_codes() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("err").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let e = api_err(cms.get("missing").await);
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "configmaps \"missing\" not found");
    cms.create(&PostParams::default(), &cm("dup", json!({})))
        .await
        .unwrap();
    let e = api_err(
        cms.create(&PostParams::default(), &cm("dup", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    // Stale resourceVersion.
    let cur = cms.get("dup").await.unwrap();
    let mut stale = cur.clone();
    cms.patch(
        "dup",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("y".to_string(), "2".to_string())].into());
    let e = api_err(cms.replace("dup", &PostParams::default(), &stale).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("the object has been modified"),
        "{}",
        e.message
    );
    // Namespace that does not exist.
    let other: Api<ConfigMap> = Api::namespaced(c.client(), "no-such-namespace");
    let e = api_err(
        other
            .create(&PostParams::default(), &cm("x", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    // Label and annotation rules every kind gets.
    let mut bad = cm("bad-label", json!({}));
    bad.metadata.labels = Some([("model".to_string(), "org/llama".to_string())].into());
    let e = api_err(cms.create(&PostParams::default(), &bad).await);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message
            .contains("metadata.labels: Invalid value: \"org/llama\""),
        "{}",
        e.message
    );
    let mut long = cm("long-label", json!({}));
    long.metadata.labels = Some([("x".to_string(), "a".repeat(64))].into());
    assert_eq!(
        api_err(cms.create(&PostParams::default(), &long).await).code,
        422
    );
    let mut huge = cm("huge-annotation", json!({}));
    huge.metadata.annotations = Some([("big".to_string(), "x".repeat(262_145))].into());
    let e = api_err(cms.create(&PostParams::default(), &huge).await);
    assert!(
        e.message
            .contains("Too long: may not be more than 262144 bytes"),
        "{}",
        e.message
    );
    // Objects beyond etcd's 1.5 MiB limit, and bodies beyond 3 MiB.
    let e = api_err(
        cms.create(
            &PostParams::default(),
            &cm("too-big", json!({"x": "y".repeat(1_600_000)})),
        )
        .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (413, "RequestEntityTooLarge"));
    assert_eq!(e.message, "etcdserver: request is too large");
    let e = api_err(
        cms.create(
            &PostParams::default(),
            &cm("far-too-big", json!({"x": "y".repeat(3_200_000)})),
        )
        .await,
    );
    assert_eq!(e.code, 413);
    assert!(e.message.contains("limit is 3145728"), "{}", e.message);
    // Invalid name.
    let e = api_err(
        cms.create(&PostParams::default(), &cm("Not_Valid", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn status_subresource_splits_both_ways() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("status").await.unwrap();
    let w = widgets(&c, &ns.name).await;
    let mut with_status = widget("s", json!({"size": 2}));
    with_status.data["status"] = json!({"phase": "Forged"});
    let o = w
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(
        o.data.get("status").is_none(),
        "status is dropped on create"
    );
    // Status writes change status only.
    let mut s = o.clone();
    s.data["status"] = json!({"phase": "Ready"});
    s.data["spec"]["size"] = json!(9);
    let o = w
        .replace_status("s", &PostParams::default(), &s)
        .await
        .unwrap();
    assert_eq!(o.data["status"]["phase"], "Ready");
    assert_eq!(o.data["spec"]["size"], 2, "spec ignored on /status");
    // Main writes ignore status.
    let mut m = o.clone();
    m.data["status"] = json!({"phase": "Hacked"});
    m.data["spec"]["size"] = json!(4);
    let o = w.replace("s", &PostParams::default(), &m).await.unwrap();
    assert_eq!(
        o.data["status"]["phase"], "Ready",
        "status ignored on the main resource"
    );
    assert_eq!(o.data["spec"]["size"], 4);
}

#[tokio::test]
async fn list_with_selectors_limit_and_continue() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("list").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    for i in 0..25 {
        let mut o = cm(&format!("cm-{i:02}"), json!({}));
        o.metadata.labels = Some(
            [
                (
                    "parity".to_string(),
                    if i % 2 == 0 { "even" } else { "odd" }.to_string(),
                ),
                ("i".to_string(), i.to_string()),
            ]
            .into(),
        );
        cms.create(&PostParams::default(), &o).await.unwrap();
    }
    let even = cms
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 13);
    let set = cms
        .list(&ListParams::default().labels("i in (1,2,3),parity!=odd"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 1);
    let byname = cms
        .list(&ListParams::default().fields("metadata.name=cm-07"))
        .await
        .unwrap();
    assert_eq!(byname.items.len(), 1);
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    let mut pages = 0;
    loop {
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|o| o.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(cont) => {
                if pages == 1 {
                    assert_eq!(page.metadata.remaining_item_count, Some(15));
                }
                lp = lp.continue_token(&cont);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 25);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "no duplicates across pages");
    // Custom resources only support metadata field selectors.
    let w = widgets(&c, &ns.name).await;
    let e = api_err(w.list(&ListParams::default().fields("spec.size=1")).await);
    assert_eq!(e.code, 400);
}

#[tokio::test]
async fn watch_from_resource_version_in_order_with_bookmarks() {
    let c = cluster_with_crds(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    c.require_standin()
        .expect("bookmark interval is a stand-in option");
    let ns = c.temp_namespace("watch").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let first = cms
        .create(&PostParams::default(), &cm("w0", json!({})))
        .await
        .unwrap();
    let from = first.metadata.resource_version.clone().unwrap();
    cms.create(&PostParams::default(), &cm("w1", json!({})))
        .await
        .unwrap();
    cms.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "b"}})),
    )
    .await
    .unwrap();
    cms.delete("w0", &DeleteParams::default()).await.unwrap();
    let mut stream = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(10),
            &from,
        )
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    let mut bookmark = None;
    while seen.len() < 3 || bookmark.is_none() {
        let ev = tokio::time::timeout(T, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => seen.push(("ADDED", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(b) => bookmark = Some(b.metadata.resource_version),
            WatchEvent::Error(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("ADDED", "w1".to_string()),
            ("MODIFIED", "w1".to_string()),
            ("DELETED", "w0".to_string())
        ]
    );
    let b: u64 = bookmark.unwrap().parse().unwrap();
    assert!(b >= from.parse::<u64>().unwrap() + 3);
}

#[tokio::test]
async fn watch_label_selector_transitions() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("wsel").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let o = cms
        .create(&PostParams::default(), &cm("t", json!({})))
        .await
        .unwrap();
    let from = o.metadata.resource_version.unwrap();
    cms.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})),
    )
    .await
    .unwrap();
    let mut s = cms
        .watch(&WatchParams::default().labels("sel=yes").timeout(5), &from)
        .await
        .unwrap()
        .boxed();
    let a = tokio::time::timeout(T, s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(a, WatchEvent::Added(_)),
        "entering the selector is ADDED: {a:?}"
    );
    let d = tokio::time::timeout(T, s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(d, WatchEvent::Deleted(_)),
        "leaving the selector is DELETED: {d:?}"
    );
}

#[tokio::test]
async fn watch_gets_410_after_compaction() {
    let c = cluster_with_crds(Options::default()).await;
    let standin = c.require_standin().expect("compaction is injected");
    let ns = c.temp_namespace("gone").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let o = cms
        .create(&PostParams::default(), &cm("g", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("h", json!({})))
        .await
        .unwrap();
    standin.compact();
    let mut s = cms
        .watch(
            &WatchParams::default().timeout(5),
            o.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(T, s.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // A list continue token from before the compaction is gone too.
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    let cont = page.metadata.continue_.unwrap();
    cms.create(&PostParams::default(), &cm("i", json!({})))
        .await
        .unwrap();
    standin.compact();
    let e = api_err(
        cms.list(&ListParams::default().limit(1).continue_token(&cont))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("patch").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    cms.create(
        &PostParams::default(),
        &cm("p", json!({"a": "1", "b": "2"})),
    )
    .await
    .unwrap();
    let o = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        o.data.unwrap().into_iter().collect::<Vec<_>>(),
        vec![
            ("b".to_string(), "2".to_string()),
            ("c".to_string(), "3".to_string())
        ]
    );
    let jp: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "2"}, {"op": "replace", "path": "/data/b", "value": "20"}])).unwrap();
    let o = cms
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(o.data.unwrap()["b"], "20");
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "nope"}]))
            .unwrap();
    let e = api_err(
        cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(bad))
            .await,
    );
    assert_eq!(e.code, 422);
    // Strategic merge: finalizers merge as a set on built-ins.
    cms.patch(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"finalizers": ["a/one"]}})),
    )
    .await
    .unwrap();
    let o = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"finalizers": ["a/two"]}})),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.finalizers.unwrap(), vec!["a/one", "a/two"]);
    cms.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    // ... and is refused for custom resources, as the real server refuses it.
    let w = widgets(&c, &ns.name).await;
    w.create(&PostParams::default(), &widget("smp", json!({"size": 1})))
        .await
        .unwrap();
    let e = api_err(
        w.patch(
            "smp",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"size": 2}})),
        )
        .await,
    );
    assert_eq!(e.code, 415);
}

#[tokio::test]
async fn server_side_apply_managers_conflicts_and_removal() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("ssa").await.unwrap();
    let w = widgets(&c, &ns.name).await;
    let cfg = |spec: Value| json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": spec});
    let o = w
        .patch(
            "x",
            &PatchParams::apply("alice"),
            &Patch::Apply(cfg(json!({"size": 5, "color": "green", "tags": ["a"]}))),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["size"], 5);
    let managers: Vec<_> = o
        .metadata
        .managed_fields
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap()))
        .collect();
    assert_eq!(managers, vec![("alice".to_string(), "Apply".to_string())]);
    // Another manager setting a different value conflicts.
    let e = api_err(
        w.patch(
            "x",
            &PatchParams::apply("bob"),
            &Patch::Apply(cfg(json!({"size": 6}))),
        )
        .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"alice\"") && e.message.contains(".spec.size"),
        "{}",
        e.message
    );
    // The same value is shared ownership, no conflict.
    w.patch(
        "x",
        &PatchParams::apply("bob"),
        &Patch::Apply(cfg(json!({"size": 5}))),
    )
    .await
    .unwrap();
    // Force takes it over.
    let o = w
        .patch(
            "x",
            &PatchParams::apply("carol").force(),
            &Patch::Apply(cfg(json!({"size": 7}))),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["size"], 7);
    // Alice drops color from her config: it is removed (nobody else owns it).
    let o = w
        .patch(
            "x",
            &PatchParams::apply("alice").force(),
            &Patch::Apply(cfg(json!({"size": 7, "tags": ["a"]}))),
        )
        .await
        .unwrap();
    assert_eq!(
        o.data["spec"]["color"], "red",
        "color removed, then defaulted again by the schema"
    );
    // A field set by an Update is not removed when an applier stops applying it.
    w.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "keep-me"}})),
    )
    .await
    .unwrap();
    let o = w
        .patch(
            "x",
            &PatchParams::apply("alice").force(),
            &Patch::Apply(cfg(json!({"size": 7}))),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["name"], "keep-me");
    assert!(
        o.data["spec"].get("tags").is_none(),
        "tags dropped by alice"
    );
    // Apply creates, and status apply touches status only.
    let o = w.patch("y", &PatchParams::apply("alice"), &Patch::Apply(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "y"}, "spec": {"size": 1}}))).await.unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    let o = w.patch_status("y", &PatchParams::apply("ctl").force(), &Patch::Apply(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "y"}, "status": {"phase": "Done"}, "spec": {"size": 99}}))).await.unwrap();
    assert_eq!(o.data["status"]["phase"], "Done");
    assert_eq!(o.data["spec"]["size"], 1);
    // fieldManager is required for apply.
    let e = api_err(w.patch("y", &PatchParams::default(), &Patch::Apply(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "y"}}))).await);
    assert_eq!(e.code, 400);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("fin").await.unwrap();
    let w = widgets(&c, &ns.name).await;
    let mut o = widget("f", json!({"size": 1}));
    o.metadata.finalizers = Some(vec!["test.komptroller.dev/hold".into()]);
    w.create(&PostParams::default(), &o).await.unwrap();
    let r = w.delete("f", &DeleteParams::default()).await.unwrap();
    let held = r.left().expect("a finalizer keeps the object");
    assert!(held.metadata.deletion_timestamp.is_some());
    let got = w.get("f").await.unwrap();
    assert!(got.metadata.deletion_timestamp.is_some());
    // No new finalizers once deleting.
    let e = api_err(
        w.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["test.komptroller.dev/hold", "x/y"]}}),
            ),
        )
        .await,
    );
    assert_eq!(e.code, 422);
    // Deleting again is accepted and changes nothing.
    let again = w
        .delete("f", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        got.metadata.resource_version
    );
    w.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        w.get_opt("f").await.unwrap().is_none(),
        "gone once the last finalizer is removed"
    );
    // Without finalizers deletion is immediate and returns a Status.
    w.create(&PostParams::default(), &widget("g", json!({"size": 1})))
        .await
        .unwrap();
    assert!(
        w.delete("g", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );
}

#[tokio::test]
async fn garbage_collection_through_owner_references() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("gc").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(c.client(), &ns.name);
    for (owner, policy) in [
        ("owner-bg", None),
        ("owner-orphan", Some("Orphan")),
        ("owner-fg", Some("Foreground")),
    ] {
        let o = cms
            .create(&PostParams::default(), &cm(owner, json!({})))
            .await
            .unwrap();
        let dep: Secret = serde_json::from_value(json!({"metadata": {"name": format!("{owner}-dep"), "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": o.metadata.uid, "blockOwnerDeletion": true}]}})).unwrap();
        secrets.create(&PostParams::default(), &dep).await.unwrap();
        let dp = match policy {
            Some("Orphan") => DeleteParams::orphan(),
            Some("Foreground") => DeleteParams::foreground(),
            _ => DeleteParams::background(),
        };
        cms.delete(owner, &dp).await.unwrap();
        wait_for_deletion(&cms, owner, T).await.unwrap();
        let dep_name = format!("{owner}-dep");
        if policy == Some("Orphan") {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let d = secrets.get(&dep_name).await.unwrap();
            assert!(
                d.metadata.owner_references.unwrap_or_default().is_empty(),
                "orphaned dependents lose the reference"
            );
        } else {
            wait_for_deletion(&secrets, &dep_name, T).await.unwrap();
        }
    }
    // A dependent with another live owner stays.
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let b = cms
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let dep: Secret = serde_json::from_value(
        json!({"metadata": {"name": "two-owners", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": a.metadata.uid},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": b.metadata.uid}]}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &dep).await.unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(secrets.get_opt("two-owners").await.unwrap().is_some());
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    wait_for_deletion(&secrets, "two-owners", T).await.unwrap();
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("dry").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let o = cms.create(&pp, &cm("d", json!({"a": "1"}))).await.unwrap();
    assert_eq!(o.metadata.name.as_deref(), Some("d"));
    assert!(cms.get_opt("d").await.unwrap().is_none());
    cms.create(&PostParams::default(), &cm("d", json!({"a": "1"})))
        .await
        .unwrap();
    cms.patch(
        "d",
        &PatchParams::default().dry_run(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    assert_eq!(cms.get("d").await.unwrap().data.unwrap()["a"], "1");
    cms.delete(
        "d",
        &DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    assert!(cms.get_opt("d").await.unwrap().is_some());
    // Validation still runs on dry runs.
    let w = widgets(&c, &ns.name).await;
    let e = api_err(w.create(&pp, &widget("bad", json!({"size": 0}))).await);
    assert_eq!(e.code, 422);
}

#[tokio::test]
async fn schema_validation_defaults_pruning_and_cel() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("schema").await.unwrap();
    let w = widgets(&c, &ns.name).await;
    // Defaults and pruning (non-strict: pruned silently).
    let o = w.create(&PostParams::default(), &widget("ok", json!({"size": 3, "unknown": 1, "extra": {"free": {"form": true}}, "port": 8080, "note": null}))).await.unwrap();
    assert_eq!(o.data["spec"]["color"], "red");
    assert_eq!(o.data["spec"]["minSize"], 1);
    assert!(
        o.data["spec"].get("unknown").is_none(),
        "unknown fields are pruned"
    );
    assert_eq!(
        o.data["spec"]["extra"]["free"]["form"], true,
        "preserve-unknown-fields keeps them"
    );
    assert_eq!(o.data["spec"]["note"], Value::Null, "nullable keeps null");
    w.create(
        &PostParams::default(),
        &widget("port-str", json!({"size": 3, "port": "http"})),
    )
    .await
    .unwrap();
    // Strict field validation rejects unknown fields.
    let e = api_err(w.patch("strict", &PatchParams::apply("t").validation_strict(), &Patch::Apply(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "strict"}, "spec": {"size": 1, "bogus": 1}}))).await);
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("unknown field \"spec.bogus\""),
        "{}",
        e.message
    );
    // Each rule, with the field path and reason the real server reports.
    let cases = [
        (json!({}), "spec.size", "FieldValueRequired"),
        (
            json!({"size": "three"}),
            "spec.size",
            "FieldValueTypeInvalid",
        ),
        (json!({"size": 0}), "spec.size", "FieldValueInvalid"),
        (json!({"size": 101}), "spec.size", "FieldValueInvalid"),
        (
            json!({"size": 1, "color": "pink"}),
            "spec.color",
            "FieldValueNotSupported",
        ),
        (
            json!({"size": 1, "name": "Bad_Name"}),
            "spec.name",
            "FieldValueInvalid",
        ),
        (
            json!({"size": 1, "name": "a-very-long-name-indeed-yes"}),
            "spec.name",
            "FieldValueTooLong",
        ),
        (
            json!({"size": 1, "port": 1.5}),
            "spec.port",
            "FieldValueTypeInvalid",
        ),
        (json!({"size": 1, "color": null}), "", ""),
        (
            json!({"size": 1, "tags": ["a", "a"]}),
            "spec.tags[1]",
            "FieldValueDuplicate",
        ),
        (
            json!({"size": 2, "minSize": 3}),
            "spec.minSize",
            "FieldValueInvalid",
        ),
        (
            json!({"size": 1, "duration": "10x"}),
            "spec.duration",
            "FieldValueInvalid",
        ),
        (
            json!({"size": 1, "labels": {"a": 1}}),
            "spec.labels.a",
            "FieldValueTypeInvalid",
        ),
    ];
    for (i, (spec, field, reason)) in cases.iter().enumerate() {
        let r = w
            .create(
                &PostParams::default(),
                &widget(&format!("case-{i}"), spec.clone()),
            )
            .await;
        if field.is_empty() {
            let o = r.unwrap_or_else(|e| panic!("case {i} {spec} should pass: {e}"));
            assert_eq!(
                o.data["spec"]["color"], "red",
                "non-nullable null is defaulted"
            );
            continue;
        }
        let e = api_err(r);
        assert_eq!(e.code, 422, "case {i} {spec}: {}", e.message);
        let causes = e.details.map(|d| d.causes).unwrap_or_default();
        assert!(
            causes
                .iter()
                .any(|c| c.field == *field && c.reason == *reason),
            "case {i} {spec}: expected {field} {reason}, got {causes:?}"
        );
    }
    // Transition rule (oldSelf).
    w.create(
        &PostParams::default(),
        &widget("imm", json!({"size": 1, "immutableTag": "v1"})),
    )
    .await
    .unwrap();
    let e = api_err(
        w.patch(
            "imm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"immutableTag": "v2"}})),
        )
        .await,
    );
    assert!(
        e.message.contains("immutableTag is immutable"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn crd_registration_structural_check_and_discovery() {
    let c = cluster_with_crds(Options::default()).await;
    let crds: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            None,
        )
        .await
        .unwrap();
    let got = crds.get("widgets.test.komptroller.dev").await.unwrap();
    assert!(e2e::harness::has_condition_json(
        &got.data,
        "Established",
        "True"
    ));
    assert!(e2e::harness::has_condition_json(
        &got.data,
        "NamesAccepted",
        "True"
    ));
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.test.komptroller.dev"},
        "spec": {"group": "test.komptroller.dev", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}}}}]}
    })).unwrap();
    let e = api_err(crds.create(&PostParams::default(), &bad).await);
    assert_eq!(e.code, 422);
    assert!(e.message.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields"), "{}", e.message);
    // Discovery lists the kinds and their status subresource.
    let d = kube::discovery::Discovery::new(c.client())
        .run()
        .await
        .unwrap();
    let (ar, caps) = d.resolve_gvk(&widget_gvk()).expect("Widget discovered");
    assert_eq!(ar.plural, "widgets");
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "widgets/status" || s.plural == "status"),
        "{:?}",
        caps.subresources
    );
    // Cluster-scoped custom resources.
    let gizmos = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk("test.komptroller.dev", "v1", "Gizmo"),
            None,
        )
        .await
        .unwrap();
    let g: DynamicObject = serde_json::from_value(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Gizmo", "metadata": {"name": "g1"}, "spec": {"any": {"thing": 1}}})).unwrap();
    let g = gizmos.create(&PostParams::default(), &g).await.unwrap();
    assert!(g.metadata.namespace.is_none());
    assert_eq!(g.data["spec"]["any"]["thing"], 1);
    // Deleting the CRD deletes its objects and the API.
    crds.delete("gizmos.test.komptroller.dev", &DeleteParams::default())
        .await
        .unwrap();
    let e = api_err(gizmos.get("g1").await);
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn tables_follow_printer_columns() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("table").await.unwrap();
    let w = widgets(&c, &ns.name).await;
    w.create(
        &PostParams::default(),
        &widget("t1", json!({"size": 4, "color": "blue"})),
    )
    .await
    .unwrap();
    w.patch_status("t1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]}}))).await.unwrap();
    let req = http::Request::get(format!(
        "/apis/test.komptroller.dev/v1/namespaces/{}/widgets",
        ns.name
    ))
    .header(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(Vec::new())
    .unwrap();
    let text = c.client().request_text(req).await.unwrap();
    let t: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Name", "Size", "Color", "Phase", "Ready", "Age"]);
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[0], "t1");
    assert_eq!(cells[1], 4);
    assert_eq!(cells[2], "blue");
    assert_eq!(cells[3], "Ready");
    assert_eq!(cells[4], "True");
}

#[tokio::test]
async fn jobs_simulator_lifecycle() {
    let c = cluster_with_crds(Options {
        time_scale: 60.0,
        ..Options::default()
    })
    .await;
    c.require_standin()
        .expect("the Job simulator is the stand-in's");
    let ns = c.temp_namespace("jobs").await.unwrap();
    let jobs: Api<Job> = Api::namespaced(c.client(), &ns.name);
    let job = |name: &str, ann: Option<&str>, deadline: Option<i64>, suspend: bool| -> Job {
        let mut j = json!({"metadata": {"name": name}, "spec": {"suspend": suspend, "completions": 2, "parallelism": 2, "completionMode": "Indexed",
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        if let Some(a) = ann {
            j["spec"]["template"]["metadata"] =
                json!({"annotations": {"e2e.komptroller.dev/runtime": a}});
        }
        if let Some(d) = deadline {
            j["spec"]["activeDeadlineSeconds"] = json!(d);
        }
        serde_json::from_value(j).unwrap()
    };
    jobs.create(
        &PostParams::default(),
        &job("done", Some("2m"), None, false),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("late", Some("1h"), Some(60), false),
    )
    .await
    .unwrap();
    jobs.create(&PostParams::default(), &job("held", Some("1m"), None, true))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("forever", None, None, false))
        .await
        .unwrap();
    let cond = |j: &Job, t: &str| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    let running = wait_for(&jobs, "done", T, |j| {
        j.status
            .as_ref()
            .is_some_and(|s| s.start_time.is_some() && s.active == Some(2))
    })
    .await
    .unwrap();
    assert!(!cond(&running, "Complete"));
    let done = wait_for(&jobs, "done", T, |j| cond(j, "Complete"))
        .await
        .unwrap();
    let s = done.status.unwrap();
    assert_eq!(s.succeeded, Some(2));
    assert_eq!(s.active, Some(0));
    assert_eq!(s.completed_indexes.as_deref(), Some("0-1"));
    let types: Vec<String> = s.conditions.unwrap().into_iter().map(|c| c.type_).collect();
    assert_eq!(types, vec!["SuccessCriteriaMet", "Complete"]);
    let took = s.completion_time.unwrap().0.as_second() - s.start_time.unwrap().0.as_second();
    assert_eq!(took, 120, "simulated duration equals the runtime");
    let late = wait_for(&jobs, "late", T, |j| cond(j, "Failed"))
        .await
        .unwrap();
    let ls = late.status.unwrap();
    let failed = ls
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    assert!(
        ls.completion_time.is_none(),
        "failed Jobs get no completionTime"
    );
    let held = wait_for(&jobs, "held", T, |j| cond(j, "Suspended"))
        .await
        .unwrap();
    assert!(
        held.status.unwrap().start_time.is_none(),
        "suspended Jobs do not start"
    );
    jobs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    wait_for(&jobs, "held", T, |j| cond(j, "Complete"))
        .await
        .unwrap();
    let forever = jobs.get("forever").await.unwrap();
    assert!(!cond(&forever, "Complete") && !cond(&forever, "Failed"));
    // Job validation the operator must satisfy.
    let bad: Job = serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}})).unwrap();
    let e = api_err(jobs.create(&PostParams::default(), &bad).await);
    assert_eq!(e.code, 422);
    assert!(e.message.contains("restartPolicy"), "{}", e.message);
}

#[tokio::test]
async fn namespace_deletion_empties_then_removes() {
    let c = cluster_with_crds(Options::default()).await;
    let mut ns = c.temp_namespace("nsdel").await.unwrap();
    ns.keep();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    cms.create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    let w = widgets(&c, &ns.name).await;
    let mut held = widget("held", json!({"size": 1}));
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    w.create(&PostParams::default(), &held).await.unwrap();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client());
    nss.delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    let n = nss.get(&ns.name).await.unwrap();
    assert_eq!(n.status.unwrap().phase.as_deref(), Some("Terminating"));
    let e = api_err(
        cms.create(&PostParams::default(), &cm("y", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    wait_for_deletion(&cms, "x", T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        nss.get_opt(&ns.name).await.unwrap().is_some(),
        "a finalizer in the namespace holds it"
    );
    w.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_for_deletion(&nss, &ns.name, T).await.unwrap();
}

#[tokio::test]
async fn injected_faults() {
    let c = cluster_with_crds(Options::default()).await;
    let standin = c.require_standin().expect("faults are injected");
    let ns = c.temp_namespace("faults").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    standin.set_faults(Faults {
        write_error_500: 1.0,
        ..Faults::default()
    });
    let e = api_err(
        cms.create(&PostParams::default(), &cm("f", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    cms.list(&ListParams::default())
        .await
        .expect("reads are not failed");
    standin.set_faults(Faults {
        write_error_409: 1.0,
        ..Faults::default()
    });
    let e = api_err(
        cms.create(&PostParams::default(), &cm("f", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    standin.set_faults(Faults {
        write_error_500: 0.5,
        ..Faults::default()
    });
    let mut failures = 0;
    for i in 0..200 {
        if cms
            .create(&PostParams::default(), &cm(&format!("r{i}"), json!({})))
            .await
            .is_err()
        {
            failures += 1;
        }
    }
    assert!((50..150).contains(&failures), "about half fail: {failures}");
    // 429: kube-rs's default client retries them (honouring Retry-After); a
    // client without retries sees the Status.
    standin.set_faults(Faults {
        throttle_429: 1.0,
        ..Faults::default()
    });
    let kc = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    let no_retry: Api<ConfigMap> =
        Api::namespaced(kube::Client::try_from(config).unwrap(), &ns.name);
    let e = api_err(no_retry.get("r0").await);
    assert_eq!((e.code, e.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(e.details.map(|d| d.retry_after_seconds), Some(1));
    standin.set_faults(Faults {
        throttle_429: 0.2,
        ..Faults::default()
    });
    for _ in 0..5 {
        cms.list(&ListParams::default())
            .await
            .expect("retried past 429s");
    }
    standin.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let t0 = std::time::Instant::now();
    cms.get("r0").await.ok();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Pause: requests hang until resumed.
    standin.set_faults(Faults {
        paused: true,
        ..Faults::default()
    });
    let cms2 = cms.clone();
    let pending = tokio::spawn(async move {
        cms2.create(&PostParams::default(), &cm("during-pause", json!({})))
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!pending.is_finished(), "a paused server does not answer");
    standin.set_faults(Faults::default());
    tokio::time::timeout(T, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Watches closed every N seconds.
    standin.set_faults(Faults {
        watch_close_every_secs: Some(0.5),
        ..Faults::default()
    });
    let t0 = std::time::Instant::now();
    let s = cms
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .unwrap();
    let n = tokio::time::timeout(T, s.count()).await.unwrap();
    assert!(n > 0);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the watch was closed by the server"
    );
    standin.set_faults(Faults::default());
}

#[tokio::test]
async fn builtin_unknown_fields_and_type_errors() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("typed").await.unwrap();
    let jobs: Api<DynamicObject> = c
        .dynamic_api(
            &kube::core::GroupVersionKind::gvk("batch", "v1", "Job"),
            Some(&ns.name),
        )
        .await
        .unwrap();
    let job = |spec_extra: Value| {
        let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "typo"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}});
        for (k, v) in spec_extra.as_object().unwrap() {
            j["spec"][k] = v.clone();
        }
        j
    };
    // Strict: an unknown field in a built-in kind is refused.
    let e = api_err(
        jobs.patch(
            "typo",
            &PatchParams::apply("t").validation_strict(),
            &Patch::Apply(job(json!({"paralelism": 2}))),
        )
        .await,
    );
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("unknown field \"spec.paralelism\""),
        "{}",
        e.message
    );
    // Otherwise it is pruned.
    let o = jobs
        .patch(
            "typo",
            &PatchParams::apply("t"),
            &Patch::Apply(job(json!({"paralelism": 2}))),
        )
        .await
        .unwrap();
    assert!(o.data["spec"].get("paralelism").is_none());
    // A value of the wrong type does not decode.
    let e = api_err(
        jobs.patch(
            "typo2",
            &PatchParams::apply("t"),
            &Patch::Apply({
                let mut j = job(json!({"activeDeadlineSeconds": "ten"}));
                j["metadata"]["name"] = json!("typo2");
                j
            }),
        )
        .await,
    );
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("cannot be handled as a Job"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn server_side_apply_merges_list_map_items_per_key() {
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("ssamap").await.unwrap();
    let w = widgets(&c, &ns.name).await;
    w.create(&PostParams::default(), &widget("m", json!({"size": 1})))
        .await
        .unwrap();
    let status = |conds: Value| json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "m"}, "status": {"conditions": conds}});
    // status.conditions is `x-kubernetes-list-type: map` keyed by type in the fixture CRD.
    w.patch_status(
        "m",
        &PatchParams::apply("controller-a"),
        &Patch::Apply(status(json!([{"type": "Ready", "status": "True"}]))),
    )
    .await
    .unwrap();
    let o = w
        .patch_status(
            "m",
            &PatchParams::apply("controller-b"),
            &Patch::Apply(status(json!([{"type": "Audited", "status": "False"}]))),
        )
        .await
        .unwrap();
    let types: Vec<&str> = o.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["Ready", "Audited"],
        "each manager owns its own item"
    );
    let e = api_err(w.patch_status("m", &PatchParams::apply("controller-b"), &Patch::Apply(status(json!([{"type": "Ready", "status": "False"}, {"type": "Audited", "status": "False"}])))).await);
    assert_eq!(e.code, 409);
    let o = w
        .patch_status(
            "m",
            &PatchParams::apply("controller-a"),
            &Patch::Apply(status(json!([]))),
        )
        .await
        .unwrap();
    let types: Vec<&str> = o.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Audited"]);
    // `listType=set` lists are owned per value too.
    w.patch("m", &PatchParams::apply("a"), &Patch::Apply(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "m"}, "spec": {"size": 1, "tags": ["x"]}}))).await.unwrap();
    let o = w.patch("m", &PatchParams::apply("b"), &Patch::Apply(json!({"apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": "m"}, "spec": {"tags": ["y"]}}))).await.unwrap();
    assert_eq!(o.data["spec"]["tags"], json!(["x", "y"]));
}
