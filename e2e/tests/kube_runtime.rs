//! kube-runtime's watcher and Controller against the stand-in, through
//! injected watch closures and 410 Gone after compaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use e2e::standin::{Faults, Options};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_survives_closures_and_410() {
    let c = cluster_with_crds(Options::default()).await;
    let standin = c.require_standin().expect("faults are injected");
    let ns = c.temp_namespace("watcher").await.unwrap();
    let other = c.temp_namespace("noise").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    let noise: Api<ConfigMap> = Api::namespaced(c.client(), &other.name);
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("pre-{i}")))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let inits = Arc::new(AtomicUsize::new(0));
    let inits2 = inits.clone();
    let stream = watcher::watcher(cms.clone(), watcher::Config::default())
        .default_backoff()
        .inspect(move |e| {
            if let Ok(Event::InitDone) = e {
                inits2.fetch_add(1, Ordering::SeqCst);
            }
        })
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    reader.wait_until_ready().await.unwrap();
    let (w0, _) = standin.watch_counts();
    // Watches closed by the server every 300ms while objects keep coming.
    standin.set_faults(Faults {
        watch_close_every_secs: Some(0.3),
        ..Faults::default()
    });
    for i in 0..20 {
        cms.create(&PostParams::default(), &cm(&format!("during-{i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let want = |n: usize| {
        (0..n)
            .map(|i| format!("during-{i}"))
            .chain((0..5).map(|i| format!("pre-{i}")))
            .collect::<BTreeSet<_>>()
    };
    let have = |r: &reflector::Store<ConfigMap>| {
        r.state()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect::<BTreeSet<_>>()
    };
    let deadline = tokio::time::Instant::now() + T;
    while have(&reader) != want(20) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher missed objects: {:?}",
            want(20).difference(&have(&reader)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (w1, _) = standin.watch_counts();
    assert!(
        w1 - w0 >= 3,
        "the watcher reconnected after closures ({} watches)",
        w1 - w0
    );
    assert_eq!(
        inits.load(Ordering::SeqCst),
        1,
        "closures alone resume from the last resourceVersion, without relisting"
    );
    // Now force 410: writes elsewhere move the resourceVersion past what the
    // watcher has seen, history is compacted, and the next reconnect is Gone.
    standin.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(400)).await;
    cms.delete("pre-0", &Default::default()).await.unwrap();
    cms.create(&PostParams::default(), &cm("after-compaction"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while !have(&reader).contains("after-compaction") {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    noise
        .create(&PostParams::default(), &cm("moves-rv"))
        .await
        .unwrap();
    standin.compact();
    standin.close_watches();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let h = have(&reader);
        if h.contains("after-compaction")
            && !h.contains("pre-0")
            && inits.load(Ordering::SeqCst) >= 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relist after 410: inits={} gone={:?}",
            inits.load(Ordering::SeqCst),
            standin.watch_counts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(standin.watch_counts().1 >= 1, "a watch got 410 Gone");
    standin.set_faults(Faults::default());
    task.abort();
}

struct Ctx {
    api_resource: kube::discovery::ApiResource,
    client: kube::Client,
    reconciles: AtomicUsize,
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = obj.metadata.namespace.clone().unwrap();
    let name = obj.metadata.name.clone().unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.api_resource);
    let status = json!({
        "apiVersion": "test.komptroller.dev/v1", "kind": "Widget", "metadata": {"name": name},
        "status": {"phase": "Reconciled", "observedGeneration": obj.metadata.generation,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok"}]},
    });
    api.patch_status(
        &name,
        &PatchParams::apply("e2e-controller").force(),
        &Patch::Apply(&status),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_obj: Arc<DynamicObject>, _e: &kube::Error, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_converges_through_faults() {
    let c = cluster_with_crds(Options::default()).await;
    let standin = c.require_standin().expect("faults are injected");
    let ns = c.temp_namespace("ctrl").await.unwrap();
    let (ar, _) = c.resolve(&widget_gvk()).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(c.client(), &ns.name, &ar);
    let ctx = Arc::new(Ctx {
        api_resource: ar.clone(),
        client: c.client(),
        reconciles: AtomicUsize::new(0),
    });
    let controller = Controller::new_with(api.clone(), watcher::Config::default(), ar.clone())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let task = tokio::spawn(controller);
    standin.set_faults(Faults {
        write_error_500: 0.3,
        watch_close_every_secs: Some(0.5),
        ..Faults::default()
    });
    let mut created = 0;
    while created < 20 {
        if api
            .create(
                &PostParams::default(),
                &widget(&format!("w{created}"), json!({"size": 1})),
            )
            .await
            .is_ok()
        {
            created += 1;
        }
    }
    // Spec changes to half of them (retrying injected failures).
    for i in (0..20).step_by(2) {
        while api
            .patch(
                &format!("w{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"size": 2}})),
            )
            .await
            .is_err()
        {}
    }
    // Compaction mid-run forces the controller's watcher to relist.
    standin.compact();
    let converged = |list: &[DynamicObject]| {
        list.len() == 20
            && list.iter().all(|o| {
                o.data
                    .pointer("/status/observedGeneration")
                    .and_then(|g| g.as_i64())
                    == o.metadata.generation
            })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = api
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        if converged(&list) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller did not converge: {:?}",
            list.iter()
                .map(|o| (
                    o.metadata.name.clone(),
                    o.metadata.generation,
                    o.data.pointer("/status/observedGeneration").cloned()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    standin.set_faults(Faults::default());
    let widgets = api.list(&Default::default()).await.unwrap().items;
    assert!(
        widgets
            .iter()
            .all(|w| e2e::harness::has_condition_json(&w.data, "Ready", "True"))
    );
    assert!(ctx.reconciles.load(Ordering::SeqCst) >= 30);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_and_event_recorder() {
    use kube::Resource;
    use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
    let c = cluster_with_crds(Options::default()).await;
    let ns = c.temp_namespace("stream").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), &ns.name);
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}")))
            .await
            .unwrap();
    }
    // sendInitialEvents + the initial-events-end bookmark.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = watcher::watcher(cms.clone(), watcher::Config::default().streaming_lists())
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    tokio::time::timeout(T, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.state().len(), 3);
    task.abort();
    // kube-runtime's Recorder: create, then a merge patch for the series.
    let obj = cms.get("s0").await.unwrap();
    let recorder = Recorder::new(
        c.client(),
        Reporter {
            controller: "e2e-test".into(),
            instance: Some("e2e-0".into()),
        },
    );
    let ev = KEvent {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello".into()),
        action: "Test".into(),
        secondary: None,
    };
    recorder.publish(&ev, &obj.object_ref(&())).await.unwrap();
    recorder.publish(&ev, &obj.object_ref(&())).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client(), &ns.name);
    let list = events.list(&Default::default()).await.unwrap().items;
    assert_eq!(list.len(), 1, "the second publish patches the same event");
    assert_eq!(list[0].reason.as_deref(), Some("Tested"));
    assert_eq!(list[0].series.as_ref().map(|s| s.count), Some(2));
}
