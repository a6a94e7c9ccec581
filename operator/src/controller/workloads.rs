//! The batch/v1 Jobs the operator created, reduced to what the reconcile
//! needs: which TrainingJob owns each, and what its status says about the
//! workload ([`Workload`]): a few dozen bytes per Job rather than a Job
//! cache.
//!
//! The watch triggers the owning TrainingJob's reconcile only when the
//! workload changed (created, started, ended, deleted), not on every status
//! update of the Job (ready counts and the like).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::build::{self, Workload};
use crate::crd::TrainingJob;

/// One Job, as the reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadRecord {
    /// The Job's name.
    pub name: String,
    /// Name and uid of the TrainingJob that controls it, if any.
    pub owner: Option<(String, String)>,
    /// What its status says.
    pub observed: Workload,
}

impl WorkloadRecord {
    pub fn of(job: &Job) -> WorkloadRecord {
        let owner = job
            .owner_references()
            .iter()
            .find(|o| o.kind == "TrainingJob" && o.controller == Some(true))
            .or_else(|| {
                job.owner_references()
                    .iter()
                    .find(|o| o.kind == "TrainingJob")
            })
            .map(|o| (o.name.clone(), o.uid.clone()));
        WorkloadRecord {
            name: job.name_any(),
            owner,
            observed: build::observe(job),
        }
    }

    /// Whether the TrainingJob with this uid owns the Job.
    pub fn owned_by(&self, uid: Option<&str>) -> bool {
        uid.is_some_and(|u| self.owner.as_ref().is_some_and(|(_, o)| o == u))
    }
}

type Key = (String, String);

/// The Jobs by namespace and name.
pub struct Workloads {
    records: Mutex<HashMap<Key, WorkloadRecord>>,
    ready: watch::Sender<bool>,
}

impl Default for Workloads {
    fn default() -> Self {
        Workloads {
            records: Mutex::new(HashMap::new()),
            ready: watch::Sender::new(false),
        }
    }
}

impl Workloads {
    /// The Job `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<WorkloadRecord> {
        self.records
            .lock()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Records a Job; returns whether the reconcile must hear of it (new or
    /// its workload changed).
    pub fn upsert(&self, namespace: &str, record: WorkloadRecord) -> bool {
        let Ok(mut map) = self.records.lock() else {
            return false;
        };
        let key = (namespace.to_string(), record.name.clone());
        let changed = map.get(&key) != Some(&record);
        map.insert(key, record);
        changed
    }

    /// Forgets a Job.
    pub fn remove(&self, namespace: &str, name: &str) -> Option<WorkloadRecord> {
        self.records
            .lock()
            .ok()?
            .remove(&(namespace.to_string(), name.to_string()))
    }

    /// Number of Jobs known.
    pub fn len(&self) -> usize {
        self.records.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first full list has been read.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Replaces everything with a fresh list; returns the records that
    /// changed, appeared or disappeared (with their namespace).
    fn replace(&self, fresh: HashMap<Key, WorkloadRecord>) -> Vec<(String, WorkloadRecord)> {
        let Ok(mut map) = self.records.lock() else {
            return Vec::new();
        };
        let mut changed: Vec<(String, WorkloadRecord)> = fresh
            .iter()
            .filter(|(k, r)| map.get(*k) != Some(*r))
            .map(|((ns, _), r)| (ns.clone(), r.clone()))
            .collect();
        changed.extend(
            map.iter()
                .filter(|(k, _)| !fresh.contains_key(*k))
                .map(|((ns, _), r)| (ns.clone(), r.clone())),
        );
        *map = fresh;
        changed
    }
}

fn owner_ref(namespace: &str, record: &WorkloadRecord) -> Option<ObjectRef<TrainingJob>> {
    record
        .owner
        .as_ref()
        .map(|(name, _)| ObjectRef::new(name).within(namespace))
}

/// Keeps `workloads` in step with the cluster's Jobs (those `config`
/// selects) and triggers the owner's reconcile when a workload changed.
pub async fn watch_jobs(
    api: Api<Job>,
    config: watcher::Config,
    workloads: &Workloads,
    trigger: mpsc::UnboundedSender<ObjectRef<TrainingJob>>,
) {
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<HashMap<Key, WorkloadRecord>> = None;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "Job watch error; retrying");
                continue;
            }
        };
        let send = |ns: &str, r: &WorkloadRecord| {
            if let Some(o) = owner_ref(ns, r) {
                let _ = trigger.send(o);
            }
        };
        match ev {
            WatchEvent::Init => relist = Some(HashMap::new()),
            WatchEvent::InitApply(job) => {
                if let Some(fresh) = relist.as_mut() {
                    let ns = job.namespace().unwrap_or_default();
                    let r = WorkloadRecord::of(&job);
                    fresh.insert((ns, r.name.clone()), r);
                }
            }
            WatchEvent::InitDone => {
                let first = !*workloads.ready.borrow();
                let changed = workloads.replace(relist.take().unwrap_or_default());
                // The first list precedes the controller, which reconciles
                // every TrainingJob anyway.
                if !first {
                    for (ns, r) in &changed {
                        send(ns, r);
                    }
                }
                workloads.ready.send_replace(true);
            }
            WatchEvent::Apply(job) => {
                let ns = job.namespace().unwrap_or_default();
                let r = WorkloadRecord::of(&job);
                if workloads.upsert(&ns, r.clone()) {
                    send(&ns, &r);
                }
            }
            WatchEvent::Delete(job) => {
                let ns = job.namespace().unwrap_or_default();
                if let Some(r) = workloads.remove(&ns, &job.name_any()) {
                    send(&ns, &r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(name: &str, owner_uid: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "ownerReferences": [{
                "apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
                "name": name, "uid": owner_uid, "controller": true}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn only_workload_changes_are_news() {
        let w = Workloads::default();
        let created = WorkloadRecord::of(&job("a", "u1", json!({})));
        assert!(w.upsert("ml", created.clone()), "a new Job is news");
        assert!(!w.upsert("ml", created), "the same workload is not");
        let running = WorkloadRecord::of(&job(
            "a",
            "u1",
            json!({"startTime": "2026-11-28T00:00:00Z", "active": 1}),
        ));
        assert!(w.upsert("ml", running.clone()), "a start is news");
        let ready = WorkloadRecord::of(&job(
            "a",
            "u1",
            json!({"startTime": "2026-11-28T00:00:00Z", "active": 1, "ready": 1}),
        ));
        assert!(!w.upsert("ml", ready), "a ready count is not");
        let got = w.get("ml", "a").unwrap();
        assert!(got.owned_by(Some("u1")));
        assert!(!got.owned_by(Some("u2")));
        assert!(matches!(got.observed, Workload::Running { .. }));
    }

    #[test]
    fn a_relist_reports_what_changed_or_vanished() {
        let w = Workloads::default();
        w.upsert("ml", WorkloadRecord::of(&job("a", "u1", json!({}))));
        w.upsert("ml", WorkloadRecord::of(&job("b", "u2", json!({}))));
        let mut fresh = HashMap::new();
        let c = WorkloadRecord::of(&job("c", "u3", json!({})));
        fresh.insert(("ml".to_string(), "c".to_string()), c);
        let a = WorkloadRecord::of(&job("a", "u1", json!({})));
        fresh.insert(("ml".to_string(), "a".to_string()), a);
        let mut changed: Vec<String> = w.replace(fresh).into_iter().map(|(_, r)| r.name).collect();
        changed.sort();
        assert_eq!(changed, ["b", "c"]);
        assert!(w.get("ml", "b").is_none());
        assert_eq!(w.len(), 2);
    }
}
