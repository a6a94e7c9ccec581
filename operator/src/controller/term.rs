//! A leader term: the caches, the books rebuilt from the ledger and the
//! cluster, then the controller and its loops, until the term ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::engine::Engine;
use komptroller_engine::policy::Policy;
use kube::api::ListParams;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::task::AbortOnDropHandle;

use super::cache::{CachedTrainingJob, cached_event};
use super::context::Context;
use super::policies::{engine_policy, policy_loop};
use super::reconcile::{error_policy, reconcile_cached};
use super::workloads::{self, Workloads};
use super::{build, loops, restore};
use crate::crd::{ComputeApproval, ComputePolicy, TrainingJob};
use crate::error::{Error, Result};
use crate::ledger_store::{self, LedgerWriter};
use crate::metrics::Metrics;

/// Settings of a leader term.
#[derive(Clone, Debug)]
pub struct TermConfig {
    /// Reporter name on Events.
    pub reporter: String,
    /// Max concurrent reconciles (0: unbounded).
    pub concurrency: u16,
}

/// A leader term: rebuild the books from the cluster, then run the
/// controller and its loops until the future is dropped (lease lost or
/// shutdown). Returns on a fatal error (another ledger writer).
pub async fn run_term(
    client: Client,
    metrics: Arc<Metrics>,
    config: TermConfig,
    books_out: Arc<tokio::sync::RwLock<Option<Arc<Context>>>>,
) -> Result<()> {
    metrics.reset_books();
    let catalog = Catalog::builtin();
    // Caches the reconcile reads from.
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = reflector::reflector(
        ns_writer,
        watcher::watcher(ns_api, watcher::Config::default()).default_backoff(),
    )
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    let job_api: Api<Job> = Api::all(client.clone());
    let job_wc = watcher::Config::default().labels(&format!(
        "{}={}",
        build::MANAGED_BY.0,
        build::MANAGED_BY.1
    ));
    let jobs = Arc::new(Workloads::default());
    let (trigger, trigger_rx) = mpsc::unbounded_channel();
    let job_stream = {
        let jobs = jobs.clone();
        let trigger = trigger.clone();
        async move { workloads::watch_jobs(job_api, job_wc, &jobs, trigger).await }
    };
    // ComputeApprovals: the reconcile reads a job's from this cache, and a
    // change to one brings its job back.
    let approval_api: Api<ComputeApproval> = Api::all(client.clone());
    let (approvals, approval_writer) = reflector::store();
    let approval_stream = {
        let trigger = trigger.clone();
        reflector::reflector(
            approval_writer,
            watcher::watcher(approval_api, watcher::Config::default()).default_backoff(),
        )
        .touched_objects()
        .for_each(move |a| {
            if let Ok(a) = a
                && let Some(ns) = a.namespace()
            {
                let _ = trigger.send(ObjectRef::new(&a.spec.training_job_name).within(&ns));
            }
            futures::future::ready(())
        })
    };
    let mut caches = AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::join!(ns_stream, job_stream, approval_stream);
    }));
    // No decision before every cache is complete: a job's approvals missing
    // from a cache still filling would be withdrawn.
    tokio::select! {
        r = async {
            let (n, (), a) = tokio::join!(
                namespaces.wait_until_ready(),
                jobs.wait_until_ready(),
                approvals.wait_until_ready()
            );
            n.and(a)
        } => {
            r.map_err(|e| Error::Ledger(format!("cache: {e}")))?;
        }
        _ = &mut caches => return Err(Error::Ledger("caches stopped".into())),
    }

    // The books, from the ledger and the cluster.
    let entries = ledger_store::load(&client).await?;
    let policies: Api<ComputePolicy> = Api::all(client.clone());
    let policies: Vec<Policy> = policies
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(engine_policy)
        .collect();
    let tjs: Api<TrainingJob> = Api::all(client.clone());
    let all_tjs = tjs.list(&ListParams::default()).await?.items;
    let requests = all_tjs
        .iter()
        .filter_map(|tj| {
            let ns = tj.namespace().unwrap_or_default();
            let labels = namespaces
                .get(&ObjectRef::new(&ns))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            build::job_request(tj, labels, &catalog).ok()
        })
        .collect();
    for e in &entries {
        metrics.observe_entry(e);
    }
    let loaded = entries.len();
    let (books, fresh) = restore::rebuild(
        Engine::new(catalog.clone()),
        entries,
        policies,
        requests,
        Timestamp::now(),
    )?;
    tracing::info!(
        entries = loaded,
        jobs = all_tjs.len(),
        next_seq = books.head.next_seq,
        "books rebuilt from the ledger and the cluster"
    );
    let (ledger, writer) = LedgerWriter::spawn(
        client.clone(),
        metrics.clone(),
        books.head.next_seq - fresh.len() as u64,
    );
    let _writer = AbortOnDropHandle::new(writer);
    ledger.enqueue(fresh);

    let reporter = Reporter {
        controller: "komptroller".into(),
        instance: Some(config.reporter.clone()),
    };
    let ctx = Arc::new(Context {
        reporter,
        client: client.clone(),
        metrics: metrics.clone(),
        books: Mutex::new(books),
        ledger: ledger.clone(),
        catalog,
        trigger,
        jobs: jobs.clone(),
        namespaces,
        approvals,
        queue_dirty: tokio::sync::Notify::new(),
        wakeup_changed: tokio::sync::Notify::new(),
        refresh_all_held: std::sync::atomic::AtomicBool::new(true),
    });
    *books_out.write().await = Some(ctx.clone());

    let tj_api: Api<TrainingJob> = Api::all(client.clone());
    // managedFields (grown by every server-side apply) are dropped from the cache.
    let (tj_store, tj_writer) = reflector::store();
    let slim_catalog = Catalog::builtin();
    // Only changes a reconcile must answer pass: a new object or spec
    // (generation), deletion, our finalizer. Status writes (ours) do not,
    // or every status write would trigger a reconcile that writes again
    // (live metering of a running job changes with every look).
    let tj_stream = watcher::watcher(tj_api, watcher::Config::default().any_semantic())
        .map_ok(move |ev| cached_event(ev, &slim_catalog))
        .default_backoff()
        .reflect(tj_writer)
        .applied_objects()
        .predicate_filter(reconcile_worthy, Default::default());
    let controller = Controller::for_stream(tj_stream, tj_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency));
    let store = controller.store();
    let controller = controller
        .reconcile_on(UnboundedReceiverStream::new(trigger_rx).map(cached_ref))
        .run(reconcile_cached, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    ctx.queue_dirty.notify_one();
    tokio::select! {
        _ = controller => Err(Error::Ledger("controller stopped".into())),
        _ = policy_loop(ctx.clone()) => Err(Error::Ledger("policy watch stopped".into())),
        _ = loops::wakeup_loop(ctx.clone()) => Err(Error::Ledger("wakeup loop stopped".into())),
        _ = loops::budget_gauge_loop(ctx.clone(), Duration::from_secs(5)) => Err(Error::Ledger("gauge loop stopped".into())),
        _ = loops::queue_refresh_loop(ctx.clone(), store, Duration::from_secs(1)) => Err(Error::Ledger("queue loop stopped".into())),
        name = ledger.conflicted() => Err(Error::LedgerConflict { name }),
        _ = caches => Err(Error::Ledger("caches stopped".into())),
    }
}

/// What of a TrainingJob a reconcile answers to (the controller's watch
/// predicate): its identity, spec generation and deletion. Not its
/// finalizers: our own finalizer patch would bring every new job back for a
/// second reconcile before its status is in the cache (a finalizer removed
/// by hand from a live job is put back at its periodic requeue).
fn reconcile_worthy<K: Resource>(tj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tj.uid().hash(&mut h);
    tj.meta().generation.hash(&mut h);
    tj.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// A trigger for the controller, whose objects are cached copies.
fn cached_ref(r: ObjectRef<TrainingJob>) -> ObjectRef<CachedTrainingJob> {
    let o = ObjectRef::new(&r.name);
    match &r.namespace {
        Some(ns) => o.within(ns),
        None => o,
    }
}
