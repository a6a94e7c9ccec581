//! The null writer: the operator's API writes with no engine behind them.
//!
//! The limit the operator bench compares komptroller against. It watches
//! TrainingJobs and the Jobs it created exactly as the operator does and
//! makes the same writes per job, in the same order and with the same
//! concurrency (64 reconciles, 32 ledger creates in flight), but decides by
//! a fixed rule instead of the engine: a job of at most `--admit-max-replicas`
//! replicas is admitted, a larger one rejected. Per decision: the finalizer
//! (merge patch) beside one `ComputeLedgerEntry` create, the status (server-
//! side apply), an Event and, when admitted, the batch/v1 Job. When the Job
//! runs: a ledger entry and the status; when it ends: a ledger entry, the
//! status and an Event. The ledger entries carry a line of the operator's
//! size but are not chained: nothing here hashes or signs.
//!
//! ```sh
//! KUBECONFIG=... null-writer [--admit-max-replicas 8] [--concurrency 64]
//! ```
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

const FINALIZER: &str = "komptroller.dev/ledger";
const MANAGER: &str = "komptroller";

struct Writer {
    client: Client,
    tj: ApiResource,
    entry: ApiResource,
    seq: AtomicU64,
    ledger_slots: Semaphore,
    reporter: Reporter,
    admit_max_replicas: u64,
    /// Jobs whose start / end was already recorded.
    started: Mutex<HashSet<String>>,
    ended: Mutex<HashSet<String>>,
    /// The status each decision wrote (later writes change its phase).
    statuses: Mutex<HashMap<String, Value>>,
}

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name}: expected a whole number")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let admit_max_replicas = arg("--admit-max-replicas", 8)?;
    let concurrency = usize::try_from(arg("--concurrency", 64)?)?;
    let client = Client::try_default().await?;
    let gvk = |kind| GroupVersionKind::gvk("komptroller.dev", "v1alpha1", kind);
    let w = Arc::new(Writer {
        client: client.clone(),
        tj: ApiResource::from_gvk(&gvk("TrainingJob")),
        entry: ApiResource::from_gvk(&gvk("ComputeLedgerEntry")),
        seq: AtomicU64::new(0),
        ledger_slots: Semaphore::new(32),
        reporter: Reporter {
            controller: "komptroller".into(),
            instance: None,
        },
        admit_max_replicas,
        started: Mutex::default(),
        ended: Mutex::default(),
        statuses: Mutex::default(),
    });

    // TrainingJobs without a decision are decided, 64 at a time.
    let (tx, rx) = mpsc::unbounded_channel::<DynamicObject>();
    let tj_all: Api<DynamicObject> = Api::all_with(client.clone(), &w.tj);
    let watch_tj = async move {
        let mut s = watcher::watcher(tj_all, watcher::Config::default()).boxed();
        while let Some(ev) = s.try_next().await? {
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev
                && o.data.pointer("/status/decision").is_none()
                && o.metadata.deletion_timestamp.is_none()
            {
                let _ = tx.send(o);
            }
        }
        Ok::<(), watcher::Error>(())
    };
    let decide = {
        let w = w.clone();
        let mut seen = HashSet::new();
        tokio_stream_from(rx)
            .filter(move |o| futures::future::ready(seen.insert(o.uid().unwrap_or_default())))
            .for_each_concurrent(concurrency, move |o| {
                let w = w.clone();
                async move {
                    if let Err(e) = w.decide(&o).await {
                        eprintln!("null-writer: {}: {e}", o.name_any());
                    }
                }
            })
    };
    // The Jobs it created: start and end.
    let jobs: Api<Job> = Api::all(client.clone());
    let watch_jobs = {
        let w = w.clone();
        async move {
            let wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=komptroller");
            watcher::watcher(jobs, wc)
                .try_for_each_concurrent(concurrency, |ev| {
                    let w = w.clone();
                    async move {
                        if let watcher::Event::Apply(j) | watcher::Event::InitApply(j) = ev
                            && let Err(e) = w.observe(&j).await
                        {
                            eprintln!("null-writer: Job {}: {e}", j.name_any());
                        }
                        Ok(())
                    }
                })
                .await
        }
    };
    eprintln!("null-writer: watching");
    let (a, _, c) = tokio::join!(watch_tj, decide, watch_jobs);
    a?;
    c?;
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Writer {
    fn tj_api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.tj)
    }

    /// One ledger entry of about the operator's size.
    async fn ledger(&self, kind: &str, job: &str, lineage: &str) -> kube::Result<()> {
        let _slot = self.ledger_slots.acquire().await;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let hash = format!("{seq:064x}");
        let line = json!({"seq": seq, "kind": kind, "job": job, "lineage": lineage,
            "time": jiff::Timestamp::now().to_string(), "prevHash": hash, "hash": hash,
            "record": {"padding": "x".repeat(300)}})
        .to_string();
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "komptroller.dev/v1alpha1", "kind": "ComputeLedgerEntry",
            "metadata": {"name": format!("ledger-{seq:012}"),
                "labels": {"app.kubernetes.io/managed-by": "komptroller"}},
            "spec": {"sequence": seq, "kind": kind, "time": jiff::Timestamp::now().to_string(),
                "job": job, "lineage": lineage, "prevHash": hash, "hash": hash, "entry": line}
        }))
        .map_err(kube::Error::SerdeError)?;
        Api::<DynamicObject>::all_with(self.client.clone(), &self.entry)
            .create(&PostParams::default(), &obj)
            .await
            .map(|_| ())
    }

    async fn status(&self, o: &DynamicObject, status: Value) -> kube::Result<()> {
        let ns = o.namespace().unwrap_or_default();
        let patch = json!({"apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": o.name_any(), "namespace": ns}, "status": status});
        self.tj_api(&ns)
            .patch_status(
                &o.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map(|_| ())
    }

    fn event(&self, reference: k8s_openapi::api::core::v1::ObjectReference, reason: &str) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(format!("{reason} by the null writer")),
            action: "Decide".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            let _ = recorder.publish(&ev, &reference).await;
        });
    }

    async fn decide(&self, o: &DynamicObject) -> kube::Result<()> {
        let ns = o.namespace().unwrap_or_default();
        let name = o.name_any();
        let job = format!("{ns}/{name}");
        let lineage = o
            .data
            .pointer("/spec/model/name")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_string();
        let replicas = o
            .data
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let admit = replicas <= self.admit_max_replicas;
        let mut fins = o.finalizers().to_vec();
        fins.push(FINALIZER.into());
        let fin =
            json!({"metadata": {"finalizers": fins, "resourceVersion": o.resource_version()}});
        let api = self.tj_api(&ns);
        let (pp, fin) = (PatchParams::default(), Patch::Merge(&fin));
        let (l, f) = tokio::join!(
            self.ledger("Decided", &job, &lineage),
            api.patch(&name, &pp, &fin)
        );
        l?;
        f?;
        let (phase, verdict) = if admit {
            ("Admitted", "Admit")
        } else {
            ("Rejected", "Reject")
        };
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"phase": phase, "observedGeneration": o.metadata.generation,
            "projectedFlop": "2.851e19", "specHash": format!("{:064x}", self.seq.load(Ordering::Relaxed)),
            "submittedAt": now,
            "decision": {"verdict": verdict, "enforcedVerdict": verdict, "policy": "bench", "rule": "null",
                "message": format!("{verdict}: decided by the null writer's fixed rule (replicas {replicas}, at most {} admitted)", self.admit_max_replicas)},
            "jobRef": if admit { Some(name.clone()) } else { None },
            "conditions": [{"type": "Decided", "status": "True", "reason": verdict, "message": "null writer", "lastTransitionTime": now}]});
        if let Ok(mut m) = self.statuses.lock() {
            m.insert(job.clone(), status.clone());
        }
        self.status(o, status).await?;
        let reference = DynamicObject::object_ref(o, &self.tj);
        self.event(reference, phase);
        if admit {
            let mut template = o
                .data
                .pointer("/spec/template")
                .cloned()
                .unwrap_or(json!({}));
            if template.pointer("/spec/restartPolicy").is_none()
                && let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert("restartPolicy".into(), json!("Never"));
            }
            let job: Job = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns,
                    "labels": {"app.kubernetes.io/managed-by": "komptroller", "komptroller.dev/training-job": name},
                    "ownerReferences": [{"apiVersion": "komptroller.dev/v1alpha1", "kind": "TrainingJob",
                        "name": name, "uid": o.uid(), "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"completionMode": "Indexed", "completions": replicas, "parallelism": replicas,
                    "activeDeadlineSeconds": 3600, "template": template}
            }))
            .map_err(kube::Error::SerdeError)?;
            match Api::<Job>::namespaced(self.client.clone(), &ns)
                .create(&PostParams::default(), &job)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn observe(&self, j: &Job) -> kube::Result<()> {
        let Some(owner) = j.owner_references().first() else {
            return Ok(());
        };
        let ns = j.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", owner.name);
        let s = j.status.clone().unwrap_or_default();
        let done = s.succeeded.unwrap_or(0) > 0 || s.failed.unwrap_or(0) > 0;
        let running = s.start_time.is_some() && s.active.unwrap_or(0) > 0;
        let tj = DynamicObject::new(&owner.name, &self.tj).within(&ns);
        let with_phase = |phase: &str| {
            let mut st = self
                .statuses
                .lock()
                .ok()
                .and_then(|m| m.get(&key).cloned())
                .unwrap_or(json!({}));
            st["phase"] = json!(phase);
            st
        };
        if running && self.started.lock().is_ok_and(|mut m| m.insert(key.clone())) {
            self.ledger("Started", &key, "").await?;
            self.status(&tj, with_phase("Running")).await?;
        }
        if done && self.ended.lock().is_ok_and(|mut m| m.insert(key.clone())) {
            self.ledger("Finished", &key, "").await?;
            self.status(&tj, with_phase("Succeeded")).await?;
            let mut reference = DynamicObject::object_ref(&tj, &self.tj);
            reference.uid = Some(owner.uid.clone());
            self.event(reference, "Succeeded");
        }
        Ok(())
    }
}
