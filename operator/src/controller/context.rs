//! What every reconcile and loop of a leader term shares: the books behind
//! one lock, the ledger writer, the watch caches, and the triggers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Namespace;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::job::JobId;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::books::{Applied, Books};
use super::workloads::Workloads;
use crate::crd::{ComputeApproval, TrainingJob};
use crate::error::{Error, Result};
use crate::ledger_store::LedgerWriter;
use crate::metrics::Metrics;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "komptroller";

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    /// Who publishes the Events. A fresh `Recorder` per Event: kube's
    /// recorder caches every Event it published (for series) and scans that
    /// cache on each publish, while we publish one per verdict change and
    /// never repeat one.
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub books: Mutex<Books>,
    pub ledger: LedgerWriter,
    pub catalog: Catalog,
    /// Reconciles of other TrainingJobs (a decision about them changed).
    pub trigger: mpsc::UnboundedSender<ObjectRef<TrainingJob>>,
    /// The Jobs the operator created, reduced to owner and workload state.
    pub jobs: Arc<Workloads>,
    pub namespaces: Store<Namespace>,
    /// Every ComputeApproval (the reconcile reads a job's from here).
    pub approvals: Store<ComputeApproval>,
    /// Set when the queue changed: the waiting jobs' positions are refreshed.
    pub queue_dirty: tokio::sync::Notify,
    /// Set after any event: the wakeup timer re-reads `next_wakeup`.
    pub wakeup_changed: tokio::sync::Notify,
    /// Set when a policy changed: every waiting job's status is refreshed.
    pub refresh_all_held: std::sync::atomic::AtomicBool,
}

fn job_ref(id: &JobId) -> ObjectRef<TrainingJob> {
    ObjectRef::new(&id.name).within(&id.namespace)
}

impl Context {
    /// Runs `f` on the books under the lock, queues the sealed entries for
    /// the ledger in order, refreshes the gauges, and triggers the jobs
    /// whose verdict changed (except `own`).
    pub fn with_books<T>(
        &self,
        own: Option<&JobId>,
        f: impl FnOnce(&mut Books) -> Result<(T, Applied)>,
    ) -> Result<(T, Applied)> {
        let mut books = self
            .books
            .lock()
            .map_err(|_| Error::Ledger("books lock poisoned".into()))?;
        let (value, applied) = f(&mut books)?;
        self.ledger.enqueue(applied.entries.iter().cloned());
        let e = &books.engine;
        self.metrics
            .queue_depth
            .set(i64::try_from(e.queue_len()).unwrap_or(i64::MAX));
        self.metrics
            .pending_approvals
            .set(i64::try_from(e.pending_approvals()).unwrap_or(i64::MAX));
        let (rate, acc) = e.running();
        self.metrics.running_flop_per_second.set(rate.0);
        self.metrics
            .running_accelerators
            .set(i64::try_from(acc).unwrap_or(i64::MAX));
        drop(books);
        let mut queue_changed = false;
        for (id, _) in &applied.decisions {
            queue_changed = true;
            if Some(id) != own {
                let _ = self.trigger.send(job_ref(id));
            }
        }
        if queue_changed {
            self.queue_dirty.notify_one();
        }
        if !applied.entries.is_empty() {
            self.wakeup_changed.notify_one();
        }
        Ok((value, applied))
    }

    pub async fn persist(&self, applied: &Applied) -> Result<()> {
        if let Some(next) = applied.next_seq() {
            self.ledger.wait_persisted(next).await?;
        }
        Ok(())
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

pub(super) fn id_of(tj: &TrainingJob) -> JobId {
    JobId {
        namespace: tj.namespace().unwrap_or_default(),
        name: tj.name_any(),
        uid: tj.uid().unwrap_or_default(),
    }
}
