//! The TrainingJob controller: a thin shell around the engine.
//!
//! Reconcile, top to bottom (Stackable's steps):
//! 1. **dereference**: the TrainingJob, its namespace's labels, its Job
//!    (from a watch cache), its approvals when it waits for them;
//! 2. **validate/build**: the engine request ([`build::job_request`]);
//! 3. **decide**: submit, approvals, workload start/finish into the engine
//!    under one lock; the records are sealed and queued for the ledger;
//! 4. **apply**: wait until those ledger entries are persisted, then create
//!    the batch/v1 Job if admitted (deterministic name, so never twice);
//! 5. **update_status** by server-side apply, and an Event when the verdict
//!    changed.
//!
//! Decisions about *other* jobs (a queued job admitted when this one
//! finished) are reconciled by triggering those jobs. Policies, approvals,
//! budget windows (the engine's `next_wakeup`) and the queue positions of
//! waiting jobs have their own small loops here, all feeding the same engine.
//! Only the leader runs any of this ([`run_term`]).

pub mod books;
pub mod build;
pub mod cache;
pub mod restore;
pub mod workloads;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::engine::{Engine, EngineError, Event, Outcome, Phase, content_hash};
use komptroller_engine::job::{JobId, Principal};
use komptroller_engine::policy::Policy;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use self::books::{Applied, Books};
use self::build::{StatusInputs, Workload};
use self::cache::{CachedTrainingJob, cached_event};
use self::workloads::{WorkloadRecord, Workloads};
use crate::crd::{
    ComputeApproval, ComputePolicy, ConsumedStatus, FINALIZER, TrainingJob, TrainingJobStatus,
};
use crate::error::{Error, Result};
use crate::ledger_store::{self, LedgerWriter};
use crate::metrics::Metrics;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "komptroller";

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    /// Who publishes the Events (a fresh `Recorder` per Event: kube's
    /// recorder caches every Event it published, for series, and scans that
    /// cache on each publish; we publish one per verdict change and never
    /// repeat one, so the cache only cost memory, ~3 KiB per job).
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

    async fn persist(&self, applied: &Applied) -> Result<()> {
        if let Some(next) = applied.next_seq() {
            self.ledger.wait_persisted(next).await?;
        }
        Ok(())
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

fn id_of(tj: &TrainingJob) -> JobId {
    JobId {
        namespace: tj.namespace().unwrap_or_default(),
        name: tj.name_any(),
        uid: tj.uid().unwrap_or_default(),
    }
}

/// One reconcile of one TrainingJob.
pub async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&tj, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .with_label_values::<&str>(&[])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The controller's reconcile: the cached copy expanded into the (slimmed)
/// TrainingJob [`reconcile`] works on.
pub async fn reconcile_cached(tj: Arc<CachedTrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let expanded = tj.expand()?;
    reconcile(Arc::new(expanded), ctx).await
}

/// Requeue on error with a short backoff; the error is counted and logged.
pub fn error_policy<K: Resource>(tj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    tracing::warn!(job = %format!("{}/{}", tj.namespace().unwrap_or_default(), tj.name_any()), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

async fn reconcile_inner(tj: &TrainingJob, ctx: &Context) -> Result<Action> {
    let mut timing = StepTiming::start(tj);
    let ns = tj.namespace().unwrap_or_default();
    let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &ns);
    let id = id_of(tj);
    let has_finalizer = tj.finalizers().iter().any(|f| f == FINALIZER);

    // Deletion: record the final accounting, then let the object go. The
    // books see the deletion even when our finalizer is not (yet) on it.
    if tj.meta().deletion_timestamp.is_some() {
        record_deletion(ctx, &id).await?;
        if has_finalizer {
            let remaining: Vec<String> = tj
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": tj.resource_version()}});
            match api
                .patch(
                    &tj.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::await_change());
    }

    // The finalizer (so deletion always passes through the books) is added
    // while the decision's ledger entries are written: both must be done
    // before the status shows the decision. A job deleted before the
    // finalizer landed is gone (404): its deletion is recorded here.
    let add_finalizer = async {
        if has_finalizer {
            return Ok(());
        }
        let mut fins = tj.finalizers().to_vec();
        fins.push(FINALIZER.to_string());
        let patch =
            json!({"metadata": {"finalizers": fins, "resourceVersion": tj.resource_version()}});
        api.patch(
            &tj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
    };

    // Dereference and build.
    let req = match build::job_request(tj, ctx.namespace_labels(&ns), &ctx.catalog) {
        Ok(mut r) => {
            if let Some(hash) = tj.annotations().get(CACHED_SPEC_HASH) {
                r.spec_hash = hash.clone();
            }
            r
        }
        Err(message) => {
            if let Err(e) = add_finalizer.await {
                return finalizer_failed(ctx, &id, e).await;
            }
            let status = build::invalid_status(tj, &message, Timestamp::now());
            write_status(ctx, &api, tj, status).await?;
            return Ok(Action::await_change());
        }
    };
    let job_name = build::job_name(&tj.name_any());
    let workload: Option<WorkloadRecord> = ctx
        .jobs
        .get(&ns, &job_name)
        .filter(|j| j.owned_by(tj.uid().as_deref()));
    let observed = workload.as_ref().map(|j| j.observed);

    // Approvals are read only for jobs that wait for them, or that hold
    // approvals no admission has used yet (a deleted ComputeApproval then
    // stops counting).
    let (waiting, holds_approvals) = ctx
        .books
        .lock()
        .map(|b| {
            let phase = b.engine.phase(&id);
            (
                phase == Some(Phase::AwaitingApproval),
                matches!(phase, Some(Phase::Queued | Phase::Pending))
                    && !b.engine.approvals(&id).is_empty(),
            )
        })
        .unwrap_or((false, false));
    let approvals = if waiting
        || holds_approvals
        || tj.status.as_ref().and_then(|s| s.phase) == Some(Phase::AwaitingApproval)
    {
        approvals_for(ctx, &ns, &tj.name_any()).await?
    } else {
        Vec::new()
    };

    // Decide.
    let submit = req.clone();
    let mut approval_results: Vec<(String, std::result::Result<(), String>)> = Vec::new();
    let ((phase, decision, queue_position, problem), applied) = ctx.with_books(Some(&id), |b| {
        let mut applied = Applied::default();
        let mut problem = None;
        match b.apply(Timestamp::now(), Event::Submit(submit)) {
            Ok(a) => applied.extend(a),
            Err(Error::Engine(e @ EngineError::Immutable { .. })) => problem = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        // Approvals counted for a job not yet admitted whose ComputeApproval
        // is gone (deleted, or expired) are withdrawn.
        if matches!(
            b.engine.phase(&id),
            Some(Phase::AwaitingApproval | Phase::Queued | Phase::Pending)
        ) {
            let gone: Vec<String> = b
                .engine
                .approvals(&id)
                .iter()
                .filter(|p| !approvals.iter().any(|(_, a, _)| a.user == p.user))
                .map(|p| p.user.clone())
                .collect();
            for approver in gone {
                applied.extend(b.apply(
                    Timestamp::now(),
                    Event::WithdrawApproval {
                        job: id.clone(),
                        approver,
                    },
                )?);
            }
        }
        if b.engine.phase(&id) == Some(Phase::AwaitingApproval) {
            for (name, approver, spec_hash) in &approvals {
                match b.apply(
                    Timestamp::now(),
                    Event::Approve {
                        job: id.clone(),
                        approver: approver.clone(),
                        spec_hash: spec_hash.clone(),
                    },
                ) {
                    Ok(a) => {
                        applied.extend(a);
                        approval_results.push((name.clone(), Ok(())));
                    }
                    Err(Error::Engine(e)) => {
                        approval_results.push((name.clone(), Err(e.to_string())))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Metering from the Job's status.
        let phase = b.engine.phase(&id);
        if matches!(phase, Some(Phase::Admitted | Phase::Running)) {
            match observed {
                Some(Workload::Running { started }) => {
                    applied.extend(b.apply(started, Event::Start { job: id.clone() })?);
                }
                Some(Workload::Succeeded { started, at }) => {
                    applied.extend(b.apply(started, Event::Start { job: id.clone() })?);
                    applied.extend(finished_at(b, &id, Outcome::Succeeded, at)?);
                }
                Some(Workload::Failed { started, at }) => {
                    if let Some(s) = started {
                        applied.extend(b.apply(s, Event::Start { job: id.clone() })?);
                    }
                    applied.extend(finished_at(b, &id, Outcome::Failed, at)?);
                }
                Some(Workload::DeadlineExceeded { started, at }) => {
                    if let Some(s) = started {
                        applied.extend(b.apply(s, Event::Start { job: id.clone() })?);
                    }
                    applied.extend(finished_at(b, &id, Outcome::DeadlineExceeded, at)?);
                }
                Some(Workload::NotStarted) | None => {}
            }
        }
        let phase = b.engine.phase(&id);
        // A waiting job's sentence with today's numbers, not those of the
        // last time something could have freed it.
        b.engine.refresh_reason(Timestamp::now(), &id);
        let decision = b.engine.decision(&id).cloned();
        let position = b.engine.queue_position(&id);
        Ok(((phase, decision, position, problem), applied))
    })?;
    timing.step("decide");
    let (persisted, finalizer) = tokio::join!(ctx.persist(&applied), add_finalizer);
    persisted?;
    if let Err(e) = finalizer {
        return finalizer_failed(ctx, &id, e).await;
    }
    timing.step("ledger");
    for (name, result) in approval_results {
        write_approval_status(ctx, &ns, &name, result).await;
    }

    // The workload exists exactly when admitted; its deterministic name goes
    // into the status written below, and it is created right after.
    let create_workload = phase == Some(Phase::Admitted) && workload.is_none();
    let job_ref = if create_workload {
        Some(job_name.clone())
    } else {
        workload.as_ref().map(|j| j.name.clone())
    };

    // Status.
    let (ledger_sequence, consumed) = {
        let b = ctx
            .books
            .lock()
            .map_err(|_| Error::Ledger("books lock poisoned".into()))?;
        (
            b.decided_seq.get(&id).copied(),
            b.consumed.get(&id).cloned(),
        )
    };
    let started_at = match observed {
        Some(Workload::Running { started }) | Some(Workload::Succeeded { started, .. }) => {
            Some(started)
        }
        Some(Workload::Failed { started, .. })
        | Some(Workload::DeadlineExceeded { started, .. }) => started,
        _ => None,
    };
    let consumed = consumed.or_else(|| {
        // Live metering while it runs: count × elapsed, at the decision's rate.
        let started = started_at?;
        if phase != Some(Phase::Running) {
            return None;
        }
        let secs =
            (Timestamp::now().as_millisecond() - started.as_millisecond()).max(0) as f64 / 1000.0;
        let d = decision.as_ref()?;
        let p = d.projection.as_ref()?;
        Some(ConsumedStatus {
            accelerator_seconds: komptroller_engine::AcceleratorSeconds(f64::from(p.count) * secs),
            flop: komptroller_engine::Flop(
                p.rate.0
                    * secs
                    * if d.governing.0 < p.upper_bound.0 {
                        p.utilization
                    } else {
                        1.0
                    },
            ),
        })
    });
    let status = build::status(
        tj,
        StatusInputs {
            phase,
            decision,
            queue_position,
            spec_hash: Some(req.spec_hash.clone()),
            started_at,
            job_ref,
            consumed,
            ledger_sequence,
            problem,
        },
        Timestamp::now(),
    );
    write_status(ctx, &api, tj, status).await?;
    timing.step("status");

    // Apply: create the workload of an admitted job.
    if create_workload {
        // A slimmed cached copy lacks the pod template: read the object
        // and run it only if it is still the spec that was decided.
        let full: Arc<TrainingJob>;
        let source = if tj.annotations().contains_key(CACHED_SPEC_HASH) {
            let Some(current) = api
                .get_opt(&tj.name_any())
                .await?
                .filter(|t| t.uid() == tj.uid())
            else {
                return Ok(Action::await_change());
            };
            let current_hash = build::job_request(&current, BTreeMap::new(), &ctx.catalog)
                .map(|r| r.spec_hash)
                .ok();
            if current_hash.as_deref() != Some(req.spec_hash.as_str()) {
                // The spec changed since: its own watch event brings it here.
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            full = Arc::new(current);
            &*full
        } else {
            tj
        };
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        match jobs
            .create(&PostParams::default(), &build::workload(source))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Created by an earlier attempt (ours, by owner uid) or someone
                // else's; a conflict with nothing there is retried.
                match jobs.get_opt(&job_name).await? {
                    Some(existing)
                        if existing
                            .owner_references()
                            .iter()
                            .any(|o| Some(&o.uid) == tj.uid().as_ref()) => {}
                    Some(_) => {
                        return Err(Error::Invalid(format!(
                            "a Job named {job_name} in {ns} exists and is not owned by TrainingJob {}; delete or rename it",
                            tj.name_any()
                        )));
                    }
                    None => return Err(kube::Error::Api(s).into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    timing.step("job");
    timing.finish();

    // Live jobs are looked at again now and then (a running job's metering
    // in its status); an ended one only when it changes (its deletion), so
    // 15,000 finished jobs hold no timers and cause no periodic storm.
    Ok(match phase {
        Some(Phase::Running) => Action::requeue(Duration::from_secs(60)),
        Some(p) if p.is_terminal() => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(600)),
    })
}

/// Meters a workload that ended at `at` (the Job's completion time), learnt
/// of now: the run is charged up to `at`, while the queue is re-checked and
/// the entry written at the (monotonic) engine time of now. A late reconcile
/// therefore never over-meters a run.
fn finished_at(b: &mut Books, id: &JobId, outcome: Outcome, at: Timestamp) -> Result<Applied> {
    b.apply(
        Timestamp::now(),
        Event::FinishedAt {
            job: id.clone(),
            outcome,
            ended_at: at,
        },
    )
}

/// Records a TrainingJob's deletion in the books (its final accounting),
/// when the engine knows it, and waits until the ledger has it.
async fn record_deletion(ctx: &Context, id: &JobId) -> Result<()> {
    let (_, applied) = ctx.with_books(Some(id), |b| {
        if b.engine.phase(id).is_none() {
            return Ok(((), Applied::default()));
        }
        match b.apply(Timestamp::now(), Event::Delete { job: id.clone() }) {
            Ok(a) => Ok(((), a)),
            Err(Error::Engine(EngineError::UnknownJob(_))) => Ok(((), Applied::default())),
            Err(e) => Err(e),
        }
    })?;
    ctx.persist(&applied).await
}

/// The finalizer patch failed: a job already gone (404) was deleted before
/// it landed, so its deletion is recorded now; anything else is retried.
async fn finalizer_failed(ctx: &Context, id: &JobId, e: kube::Error) -> Result<Action> {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            record_deletion(ctx, id).await?;
            Ok(Action::await_change())
        }
        e => Err(e.into()),
    }
}

/// Where a reconcile's time goes, logged at debug level under the target
/// `komptroller::timing` (one line per reconcile: each step's milliseconds,
/// and for a job's first decision its age since creation).
struct StepTiming {
    first_decision: bool,
    created_ms: Option<i64>,
    began: Instant,
    last: Instant,
    steps: Vec<(&'static str, u128)>,
}

impl StepTiming {
    fn start(tj: &TrainingJob) -> StepTiming {
        let now = Instant::now();
        StepTiming {
            first_decision: tj
                .status
                .as_ref()
                .and_then(|s| s.decision.as_ref())
                .is_none(),
            created_ms: tj
                .meta()
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond()),
            began: now,
            last: now,
            steps: Vec::new(),
        }
    }

    fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps
            .push((name, now.duration_since(self.last).as_millis()));
        self.last = now;
    }

    fn finish(&self) {
        if !tracing::enabled!(target: "komptroller::timing", tracing::Level::DEBUG) {
            return;
        }
        let age_ms = self
            .created_ms
            .map(|c| Timestamp::now().as_millisecond() - c);
        let steps: String = self
            .steps
            .iter()
            .map(|(n, ms)| format!("{n}={ms}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(
            target: "komptroller::timing",
            first_decision = self.first_decision,
            age_ms,
            total_ms = self.began.elapsed().as_millis() as u64,
            steps = %steps,
            "reconcile timing"
        );
    }
}

/// Writes the status (server-side apply, forced) when it changed, and an
/// Event for the ML engineer when the verdict changed.
async fn write_status(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    status: TrainingJobStatus,
) -> Result<()> {
    let old = tj.status.clone().unwrap_or_default();
    if build::same_status(&old, &status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": tj.name_any(), "namespace": tj.namespace()},
        "status": status,
    });
    api.patch_status(
        &tj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let old_verdict = old.decision.as_ref().and_then(|d| d.verdict);
    let new = status.decision.as_ref();
    let new_verdict = new.and_then(|d| d.verdict);
    if new_verdict.is_some()
        && (old_verdict != new_verdict
            || old.phase != status.phase && status.phase.is_some_and(|p| p.is_terminal()))
    {
        let reason = match status.phase {
            Some(Phase::Queued) => "Queued",
            Some(Phase::AwaitingApproval) => "AwaitingApproval",
            Some(Phase::Rejected) => "Rejected",
            Some(Phase::Succeeded) => "Succeeded",
            Some(Phase::Failed) => "Failed",
            _ => "Admitted",
        };
        let warning = matches!(status.phase, Some(Phase::Rejected | Phase::Failed))
            || new.and_then(|d| d.enforced_verdict) != new_verdict;
        let note = new.and_then(|d| d.message.clone()).unwrap_or_default();
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Decide".into(),
            secondary: None,
        };
        // Published in the background: the Event is for people, and the
        // reconcile's slot is better spent on the next decision.
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let reference = tj.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, "could not publish Event");
            }
        });
    }
    Ok(())
}

/// The approvals of a job: (object name, approver as stamped, spec hash).
/// Unstamped and expired approvals are reported and skipped.
async fn approvals_for(
    ctx: &Context,
    ns: &str,
    job: &str,
) -> Result<Vec<(String, Principal, String)>> {
    let api: Api<ComputeApproval> = Api::namespaced(ctx.client.clone(), ns);
    let list = api.list(&ListParams::default()).await?;
    let now = Timestamp::now();
    let mut out = Vec::new();
    for a in list.items {
        if a.spec.training_job_name != job {
            continue;
        }
        let name = a.name_any();
        let Some(user) = a.spec.approver.clone().filter(|u| !u.is_empty()) else {
            write_approval_status(ctx, ns, &name, Err("spec.approver is empty: approvals count only when the admission webhook stamped the authenticated approver".into())).await;
            continue;
        };
        if let Some(exp) = &a.spec.expires {
            match exp.parse::<Timestamp>() {
                Ok(t) if t <= now => {
                    write_approval_status(
                        ctx,
                        ns,
                        &name,
                        Err(format!("spec.expires: the approval expired at {t}")),
                    )
                    .await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    write_approval_status(
                        ctx,
                        ns,
                        &name,
                        Err(format!(
                            "spec.expires: {exp:?} is not an RFC 3339 time: {e}"
                        )),
                    )
                    .await;
                    continue;
                }
            }
        }
        out.push((
            name,
            Principal {
                user,
                groups: a.spec.approver_groups.clone(),
            },
            a.spec.spec_hash.clone(),
        ));
    }
    Ok(out)
}

async fn write_approval_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    result: std::result::Result<(), String>,
) {
    let api: Api<ComputeApproval> = Api::namespaced(ctx.client.clone(), ns);
    let (accepted, message) = match result {
        Ok(()) => (true, "Counted towards the job's escalation.".to_string()),
        Err(m) => (false, m),
    };
    let patch = json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "ComputeApproval",
        "metadata": {"name": name, "namespace": ns},
        "status": {"accepted": accepted, "message": message},
    });
    if let Err(e) = api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(approval = %name, error = %e, "could not write ComputeApproval status");
    }
}

/// Policies as the engine takes them (invalid ones are reported on their status).
pub fn engine_policy(p: &ComputePolicy) -> Policy {
    Policy {
        name: p.name_any(),
        spec: p.spec.inner.clone(),
    }
}

async fn write_policy_status(
    client: &Client,
    p: &ComputePolicy,
    result: std::result::Result<(), String>,
) {
    let api: Api<ComputePolicy> = Api::all(client.clone());
    let (ok, reason, message) = match &result {
        Ok(()) => (
            true,
            "Loaded",
            "The policy is valid and in force.".to_string(),
        ),
        Err(m) => (false, "Invalid", m.clone()),
    };
    let status = json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "ComputePolicy",
        "metadata": {"name": p.name_any()},
        "status": {
            "contentHash": content_hash(&p.spec.inner),
            "tiers": p.spec.inner.tiers.len(),
            "budgets": p.spec.inner.budgets.len(),
            "observedGeneration": p.meta().generation,
            "conditions": [{
                "type": "Accepted",
                "status": if ok { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "observedGeneration": p.meta().generation,
                "lastTransitionTime": Timestamp::now().to_string(),
            }],
        },
    });
    if p.status.as_ref().and_then(|s| s.content_hash.as_deref())
        == Some(content_hash(&p.spec.inner).as_str())
        && p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && (c.status == "True") == ok)
        })
    {
        return;
    }
    if let Err(e) = api
        .patch_status(
            &p.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
    {
        tracing::warn!(policy = %p.name_any(), error = %e, "could not write ComputePolicy status");
    }
}

/// Keeps the engine's policies in step with the cluster's ComputePolicies.
async fn policy_loop(ctx: Arc<Context>) {
    let api: Api<ComputePolicy> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut init: Vec<String> = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "ComputePolicy watch error; retrying");
                continue;
            }
        };
        match ev {
            WatchEvent::Init => init.clear(),
            WatchEvent::InitApply(p) => {
                init.push(p.name_any());
                upsert_policy(&ctx, &p).await;
                seen.insert(p.name_any(), ());
            }
            WatchEvent::Apply(p) => {
                upsert_policy(&ctx, &p).await;
                seen.insert(p.name_any(), ());
            }
            WatchEvent::InitDone => {
                let gone: Vec<String> =
                    seen.keys().filter(|k| !init.contains(k)).cloned().collect();
                for name in gone {
                    remove_policy(&ctx, &name).await;
                    seen.remove(&name);
                }
            }
            WatchEvent::Delete(p) => {
                remove_policy(&ctx, &p.name_any()).await;
                seen.remove(&p.name_any());
            }
        }
    }
}

async fn upsert_policy(ctx: &Context, p: &ComputePolicy) {
    let policy = engine_policy(p);
    let hash = content_hash(&policy.spec);
    let name = policy.name.clone();
    let result = ctx.with_books(None, |b| {
        if b.policy_hashes.get(&name) == Some(&hash) {
            return Ok((false, Applied::default()));
        }
        let a = b.apply(Timestamp::now(), Event::UpsertPolicy(policy))?;
        b.policy_hashes.insert(name.clone(), hash);
        Ok((true, a))
    });
    match result {
        Ok((changed, applied)) => {
            if changed {
                tracing::info!(policy = %name, "ComputePolicy loaded");
                // Held jobs were re-evaluated; waiting jobs may have moved.
                trigger_held(ctx);
            }
            let _ = ctx.persist(&applied).await;
            write_policy_status(&ctx.client, p, Ok(())).await;
        }
        Err(e) => {
            tracing::warn!(policy = %name, error = %e, "ComputePolicy refused");
            write_policy_status(&ctx.client, p, Err(e.to_string())).await;
        }
    }
}

async fn remove_policy(ctx: &Context, name: &str) {
    let result = ctx.with_books(None, |b| {
        if b.policy_hashes.remove(name).is_none() {
            return Ok(((), Applied::default()));
        }
        let a = b.apply(
            Timestamp::now(),
            Event::RemovePolicy {
                name: name.to_string(),
            },
        )?;
        Ok(((), a))
    });
    if let Ok((_, applied)) = result {
        tracing::info!(policy = %name, "ComputePolicy removed");
        trigger_held(ctx);
        let _ = ctx.persist(&applied).await;
    }
}

/// Triggers every TrainingJob that waits (queued or awaiting approval), so
/// their status shows the new reason and position.
fn trigger_held(ctx: &Context) {
    ctx.refresh_all_held
        .store(true, std::sync::atomic::Ordering::Relaxed);
    ctx.queue_dirty.notify_one();
}

/// Positions shown exactly: the head of the queue, where people wait for
/// the next admission.
const EXACT_POSITIONS: u32 = 10;

/// Whether a waiting job's shown queue position needs a new status: always
/// at the head of the queue ([`EXACT_POSITIONS`]), deeper only once it is
/// off by more than a tenth. Every admission moves every waiting job up one
/// place; rewriting all their statuses each time made the apiserver writes
/// per admission grow with the queue (a queue of 600 cost 600 status writes
/// per admission), so throughput fell as the queue grew. With the tenth,
/// a job at position p is rewritten about every p/10 admissions.
fn position_stale(shown: Option<u32>, want: Option<u32>) -> bool {
    match (shown, want) {
        (Some(s), Some(w)) if s <= EXACT_POSITIONS || w <= EXACT_POSITIONS => s != w,
        (Some(s), Some(w)) => u64::from(s.abs_diff(w)) * 10 > u64::from(w),
        (s, w) => s != w,
    }
}

/// Refreshes waiting jobs' statuses when the queue changed, at most every
/// `period`: the whole queue's positions are read in one walk
/// (`Engine::queue_positions`), and only the jobs whose shown position is
/// stale ([`position_stale`]) or whose queued-ness differs are reconciled;
/// after a policy change every waiting job is (its reason may have changed).
async fn queue_refresh_loop(ctx: Arc<Context>, store: Store<CachedTrainingJob>, period: Duration) {
    use std::collections::HashMap;
    loop {
        ctx.queue_dirty.notified().await;
        let all = ctx
            .refresh_all_held
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let positions: HashMap<(String, String), u32> = match ctx.books.lock() {
            Ok(b) => b
                .engine
                .queue_positions()
                .map(|(id, p)| ((id.namespace.clone(), id.name.clone()), p))
                .collect(),
            Err(_) => continue,
        };
        let mut triggered = 0usize;
        for tj in store.state() {
            let status = tj.status.as_ref();
            let phase = status.and_then(|s| s.phase);
            let held = matches!(phase, Some(Phase::Queued | Phase::AwaitingApproval));
            let key = (tj.namespace().unwrap_or_default(), tj.name_any());
            let want = positions.get(&key).copied();
            let shown = status.and_then(|s| s.queue_position);
            if (held && all)
                || position_stale(shown, want)
                || (phase == Some(Phase::Queued)) != want.is_some()
            {
                triggered += 1;
                let _ = ctx.trigger.send(ObjectRef::new(&key.1).within(&key.0));
            }
        }
        tracing::debug!(target: "komptroller::timing", queued = positions.len(), triggered, "queue positions refreshed");
        tokio::time::sleep(period).await;
    }
}

/// Sends the engine a Tick when a budget window frees (`next_wakeup`).
async fn wakeup_loop(ctx: Arc<Context>) {
    loop {
        let next = ctx.books.lock().ok().and_then(|b| b.engine.next_wakeup());
        let wait = match next {
            Some(t) => {
                let ms = t.as_millisecond() - Timestamp::now().as_millisecond();
                Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0))
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            _ = ctx.wakeup_changed.notified() => continue,
        }
        if next.is_some_and(|t| t <= Timestamp::now()) {
            match ctx.with_books(None, |b| Ok(((), b.apply(Timestamp::now(), Event::Tick)?))) {
                Ok((_, applied)) => {
                    let _ = ctx.persist(&applied).await;
                }
                Err(e) => tracing::warn!(error = %e, "tick failed"),
            }
        }
    }
}

/// Refreshes `komptroller_budget_use_ratio` every `period`: for each
/// policy budget, the charged FLOP in its window over its limit, per
/// namespace (Namespace scope), lineage (Model scope) or the cluster.
async fn budget_gauge_loop(ctx: Arc<Context>, period: Duration) {
    use komptroller_engine::policy::BudgetScope;
    loop {
        tokio::time::sleep(period).await;
        let namespaces: Vec<String> = ctx
            .namespaces
            .state()
            .iter()
            .map(|n| n.name_any())
            .collect();
        let Ok(b) = ctx.books.lock() else { continue };
        let now = Timestamp::now();
        let lineages: Vec<String> = b.engine.lineages().into_keys().collect();
        ctx.metrics.budget_use_ratio.reset();
        for (policy, spec) in b.engine.policies() {
            for budget in &spec.budgets {
                if budget.limit.0 <= 0.0 {
                    continue;
                }
                let window = jiff::SignedDuration::from_millis(budget.window.as_millis());
                let keys: Vec<String> = match budget.scope {
                    BudgetScope::Cluster => vec![String::new()],
                    BudgetScope::Namespace => namespaces.clone(),
                    BudgetScope::Model => lineages.clone(),
                };
                for key in keys {
                    let used = b.engine.window_charged(budget.scope, &key, now, window);
                    if used.0 > 0.0 || budget.scope == BudgetScope::Cluster {
                        ctx.metrics
                            .budget_use_ratio
                            .with_label_values(&[policy, budget.name.as_str(), key.as_str()])
                            .set(used.0 / budget.limit.0);
                    }
                }
            }
        }
    }
}

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
    let mut caches = tokio::spawn(async move {
        tokio::join!(ns_stream, job_stream);
    });
    let _abort_caches = AbortOnDrop(caches.abort_handle());
    tokio::select! {
        r = async { tokio::join!(namespaces.wait_until_ready(), jobs.wait_until_ready()).0 } => {
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
    let _abort_writer = AbortOnDrop(writer.abort_handle());
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
        queue_dirty: tokio::sync::Notify::new(),
        wakeup_changed: tokio::sync::Notify::new(),
        refresh_all_held: std::sync::atomic::AtomicBool::new(true),
    });
    *books_out.write().await = Some(ctx.clone());

    let tj_api: Api<TrainingJob> = Api::all(client.clone());
    let approvals: Api<ComputeApproval> = Api::all(client.clone());
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
        .watches(
            approvals,
            watcher::Config::default(),
            |a: ComputeApproval| {
                a.namespace()
                    .map(|ns| ObjectRef::new(&a.spec.training_job_name).within(&ns))
            },
        )
        .reconcile_on(tokio_stream_from(trigger_rx).map(cached_ref))
        .run(reconcile_cached, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    ctx.queue_dirty.notify_one();
    tokio::select! {
        _ = controller => Err(Error::Ledger("controller stopped".into())),
        _ = policy_loop(ctx.clone()) => Err(Error::Ledger("policy watch stopped".into())),
        _ = wakeup_loop(ctx.clone()) => Err(Error::Ledger("wakeup loop stopped".into())),
        _ = budget_gauge_loop(ctx.clone(), Duration::from_secs(5)) => Err(Error::Ledger("gauge loop stopped".into())),
        _ = queue_refresh_loop(ctx.clone(), store, Duration::from_secs(1)) => Err(Error::Ledger("queue loop stopped".into())),
        name = ledger.conflicted() => Err(Error::LedgerConflict { name }),
        _ = caches => Err(Error::Ledger("caches stopped".into())),
    }
}

/// Annotation on the operator's slimmed copy of a TrainingJob (never
/// written to the cluster): the hash of the full spec, which the slimmed
/// copy no longer has. The cache itself keeps it as
/// [`CachedTrainingJob::spec_hash`]; [`CachedTrainingJob::expand`] puts it
/// back.
pub const CACHED_SPEC_HASH: &str = "komptroller.dev/cached-spec-hash";

/// Slims a TrainingJob for the controller's cache: managedFields go, and
/// the pod template keeps only its containers' names and resources (what
/// the accelerator count is read from), after the full spec's hash is noted
/// in [`CACHED_SPEC_HASH`]. The full template is read from the API when the
/// Job is created. An invalid job is cached whole (its error is reported
/// from the full object).
pub fn slim(tj: &mut TrainingJob, catalog: &Catalog) {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    tj.managed_fields_mut().clear();
    let Ok(req) = build::job_request(tj, BTreeMap::new(), catalog) else {
        return;
    };
    let template = &mut tj.spec.template;
    template.metadata = None;
    if let Some(spec) = template.spec.as_mut() {
        let containers = spec
            .containers
            .iter()
            .map(|c| Container {
                name: c.name.clone(),
                resources: c.resources.clone(),
                ..Default::default()
            })
            .collect();
        *spec = PodSpec {
            containers,
            ..Default::default()
        };
    }
    tj.annotations_mut()
        .insert(CACHED_SPEC_HASH.to_string(), req.spec_hash);
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

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Aborts a spawned task when dropped (a leader term's helpers end with it).
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::position_stale;

    #[test]
    fn the_head_of_the_queue_is_always_exact() {
        assert!(position_stale(Some(3), Some(2)));
        assert!(position_stale(Some(11), Some(10)));
        assert!(!position_stale(Some(7), Some(7)));
    }

    #[test]
    fn deeper_positions_wait_until_off_by_a_tenth() {
        assert!(!position_stale(Some(500), Some(460)));
        assert!(!position_stale(Some(500), Some(455)));
        assert!(position_stale(Some(500), Some(450)));
        // A job that jumped back (a higher priority arrived) likewise.
        assert!(!position_stale(Some(100), Some(109)));
        assert!(position_stale(Some(100), Some(112)));
    }

    #[test]
    fn entering_or_leaving_the_queue_is_always_shown() {
        assert!(position_stale(None, Some(400)));
        assert!(position_stale(Some(400), None));
        assert!(!position_stale(None, None));
    }
}
