//! One reconcile of one TrainingJob, as named steps, top to bottom:
//!
//! 1. `dereference`: the engine request ([`build::job_request`]) and the
//!    Job that runs it (from the watch cache);
//! 2. `decide`: submit, approvals (from the watch cache), workload start
//!    and finish into the engine, in **one** books section at **one** `now`;
//!    the sealed records are queued for the ledger in decision order;
//! 3. `persist`: wait until those ledger entries are written, and add the
//!    finalizer beside them (both before the status shows the decision);
//! 4. `update_status`: the status by server-side apply, and an Event when
//!    the verdict changed;
//! 5. `apply_workload`: create the batch/v1 Job of an admitted job
//!    (deterministic name, so never twice). The status is written first: it
//!    names the Job, and a Job that exists before the status says why would
//!    look like a job that bypassed governance.
//!
//! A deleted TrainingJob takes `finalize` instead: its final accounting,
//! then the finalizer goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use komptroller_engine::decision::Decision;
use komptroller_engine::engine::{EngineError, Event, Outcome, Phase};
use komptroller_engine::job::{JobId, JobRequest};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::approvals::{self, Outcome as ApprovalOutcome};
use super::books::{Applied, Books};
use super::build::{self, StatusInputs, Workload};
use super::cache::CACHED_SPEC_HASH;
use super::cache::CachedTrainingJob;
use super::context::{Context, id_of};
use super::status::write_status;
use super::workloads::WorkloadRecord;
use crate::crd::{ConsumedStatus, FINALIZER, TrainingJob};
use crate::error::{Error, Result};

/// One reconcile of one TrainingJob.
pub async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = steps(&tj, &ctx).await;
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

/// The reconcile, step by step (see the module doc).
async fn steps(tj: &TrainingJob, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    let mut timing = StepTiming::start(tj);
    let api: Api<TrainingJob> =
        Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
    let id = id_of(tj);
    if tj.meta().deletion_timestamp.is_some() {
        return finalize(ctx, &api, tj, &id, now).await;
    }
    let found = match dereference(tj, ctx) {
        Ok(found) => found,
        Err(message) => return report_invalid(ctx, &api, tj, &id, &message, now).await,
    };
    let decided = decide(ctx, &id, &found, now)?;
    timing.step("decide");
    if let Some(action) = persist(ctx, &api, tj, &id, &decided).await? {
        return Ok(action);
    }
    timing.step("ledger");
    update_status(ctx, &api, tj, &found, &decided, now).await?;
    timing.step("status");
    if let Some(action) = apply_workload(ctx, &api, tj, &found, &decided).await? {
        return Ok(action);
    }
    timing.step("job");
    timing.finish();
    Ok(next_look(decided.phase))
}

/// When a job is looked at again without a change: a running job now and
/// then (its metering in its status), an ended one only when it changes (its
/// deletion), so 15,000 finished jobs hold no timers and cause no periodic
/// storm.
fn next_look(phase: Option<Phase>) -> Action {
    match phase {
        Some(Phase::Running) => Action::requeue(Duration::from_secs(60)),
        Some(p) if p.is_terminal() => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(600)),
    }
}

/// What step 1 found.
struct Found {
    request: JobRequest,
    /// The deterministic name of the Job that runs it.
    job_name: String,
    /// That Job, when it exists and is ours.
    workload: Option<WorkloadRecord>,
}

impl Found {
    fn observed(&self) -> Option<Workload> {
        self.workload.as_ref().map(|j| j.observed)
    }
}

/// Step 1: the engine's request and the Job. An invalid spec is the error
/// (one sentence naming the field).
fn dereference(tj: &TrainingJob, ctx: &Context) -> std::result::Result<Found, String> {
    let ns = tj.namespace().unwrap_or_default();
    let mut request = build::job_request(tj, ctx.namespace_labels(&ns), &ctx.catalog)?;
    // A slimmed cached copy lost part of the spec; its full hash was noted.
    if let Some(hash) = tj.annotations().get(CACHED_SPEC_HASH) {
        request.spec_hash = hash.clone();
    }
    let job_name = build::job_name(&tj.name_any());
    let workload = ctx
        .jobs
        .get(&ns, &job_name)
        .filter(|j| j.owned_by(tj.uid().as_deref()));
    Ok(Found {
        request,
        job_name,
        workload,
    })
}

/// What step 2 decided, and what the status needs from the books.
struct Decided {
    phase: Option<Phase>,
    decision: Option<Decision>,
    queue_position: Option<u32>,
    /// A problem that is not a decision (a spec change refused after admission).
    problem: Option<String>,
    applied: Applied,
    /// Each ComputeApproval of the job: counted, or why not.
    approvals: Vec<ApprovalOutcome>,
    ledger_sequence: Option<u64>,
    /// The final metering of an ended run, else the live metering of a running one.
    consumed: Option<ConsumedStatus>,
}

/// Step 2: every event this reconcile has for the engine, in one books
/// section at one `now`.
fn decide(ctx: &Context, id: &JobId, found: &Found, now: Timestamp) -> Result<Decided> {
    let observed = found.observed();
    let (mut decided, applied) = ctx.with_books(Some(id), |b| {
        let (mut applied, problem) = b.submit(now, found.request.clone())?;
        let approvals = apply_approvals(ctx, b, id, now, &mut applied)?;
        meter_workload(b, id, observed, now, &mut applied)?;
        let phase = b.engine.phase(id);
        // A waiting job's sentence with today's numbers, not those of the
        // last time something could have freed it (unless it was just
        // decided, with today's numbers).
        if !applied.decisions.iter().any(|(j, _)| j == id) {
            b.engine.refresh_reason(now, id);
        }
        let consumed = b.consumed.get(id).cloned().or_else(|| {
            b.engine
                .consumed_so_far(id, now)
                .map(|(accelerator_seconds, flop)| ConsumedStatus {
                    accelerator_seconds,
                    flop,
                })
        });
        let decided = Decided {
            phase,
            decision: b.engine.decision(id).cloned(),
            queue_position: b.engine.queue_position(id),
            problem,
            applied: Applied::default(),
            approvals,
            ledger_sequence: b.decided_seq.get(id).copied(),
            consumed,
        };
        Ok((decided, applied))
    })?;
    decided.applied = applied;
    Ok(decided)
}

/// Approvals into the engine: those of a job awaiting approval are counted;
/// those counted for a job not yet admitted whose ComputeApproval is gone
/// (deleted, expired) are withdrawn. Read only for jobs that wait for
/// approvals or hold some no admission has used yet.
fn apply_approvals(
    ctx: &Context,
    b: &mut Books,
    id: &JobId,
    now: Timestamp,
    applied: &mut Applied,
) -> Result<Vec<ApprovalOutcome>> {
    let phase = b.engine.phase(id);
    let awaiting = phase == Some(Phase::AwaitingApproval);
    let holds =
        matches!(phase, Some(Phase::Queued | Phase::Pending)) && !b.engine.approvals(id).is_empty();
    if !awaiting && !holds {
        return Ok(Vec::new());
    }
    let (candidates, mut outcomes) =
        approvals::for_job(&ctx.approvals, &id.namespace, &id.name, now);
    let gone: Vec<String> = b
        .engine
        .approvals(id)
        .iter()
        .filter(|p| !candidates.iter().any(|c| c.approver.user == p.user))
        .map(|p| p.user.clone())
        .collect();
    for approver in gone {
        applied.extend(b.apply(
            now,
            Event::WithdrawApproval {
                job: id.clone(),
                approver,
            },
        )?);
    }
    if b.engine.phase(id) == Some(Phase::AwaitingApproval) {
        for c in candidates {
            let result = match b.apply(
                now,
                Event::Approve {
                    job: id.clone(),
                    approver: c.approver,
                    spec_hash: c.spec_hash,
                },
            ) {
                Ok(a) => {
                    applied.extend(a);
                    Ok(())
                }
                Err(Error::Engine(e)) => Err(e.to_string()),
                Err(e) => return Err(e),
            };
            outcomes.push(ApprovalOutcome {
                name: c.name,
                result,
            });
        }
    }
    Ok(outcomes)
}

/// The Job's state into the engine: its start, and its end (charged up to
/// the Job's completion time, whenever the reconcile learns of it).
fn meter_workload(
    b: &mut Books,
    id: &JobId,
    observed: Option<Workload>,
    now: Timestamp,
    applied: &mut Applied,
) -> Result<()> {
    if !matches!(b.engine.phase(id), Some(Phase::Admitted | Phase::Running)) {
        return Ok(());
    }
    let (started, ended) = match observed {
        Some(Workload::Running { started }) => (Some(started), None),
        Some(Workload::Succeeded { started, at }) => {
            (Some(started), Some((Outcome::Succeeded, at)))
        }
        Some(Workload::Failed { started, at }) => (started, Some((Outcome::Failed, at))),
        Some(Workload::DeadlineExceeded { started, at }) => {
            (started, Some((Outcome::DeadlineExceeded, at)))
        }
        Some(Workload::NotStarted) | None => (None, None),
    };
    if let Some(s) = started {
        applied.extend(b.apply(s, Event::Start { job: id.clone() })?);
    }
    if let Some((outcome, at)) = ended {
        // The run is charged up to `at`; the queue is re-checked and the
        // entry written at the (monotonic) engine time of now, so a late
        // reconcile never over-meters a run.
        applied.extend(b.apply(
            now,
            Event::FinishedAt {
                job: id.clone(),
                outcome,
                ended_at: at,
            },
        )?);
    }
    Ok(())
}

/// Step 3: the decision's ledger entries written, and the finalizer (so
/// deletion always passes through the books) added beside them. A job
/// deleted before its finalizer landed is gone (404): its deletion is
/// recorded, and the reconcile ends.
async fn persist(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    id: &JobId,
    decided: &Decided,
) -> Result<Option<Action>> {
    let applied = &decided.applied;
    let (persisted, finalizer) = tokio::join!(ctx.persist(applied), add_finalizer(api, tj));
    persisted?;
    if let Err(e) = finalizer {
        return finalizer_failed(ctx, id, e).await.map(Some);
    }
    Ok(None)
}

async fn add_finalizer(
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
) -> std::result::Result<(), kube::Error> {
    if tj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut fins = tj.finalizers().to_vec();
    fins.push(FINALIZER.to_string());
    let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": tj.resource_version()}});
    api.patch(
        &tj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// Whether step 5 creates the Job: exactly when admitted and not there yet.
fn creates_workload(found: &Found, decided: &Decided) -> bool {
    decided.phase == Some(Phase::Admitted) && found.workload.is_none()
}

/// Step 4: the status (and the approvals' statuses).
async fn update_status(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    found: &Found,
    decided: &Decided,
    now: Timestamp,
) -> Result<()> {
    approvals::write_outcomes(ctx, &found.request.id.namespace, decided.approvals.clone()).await;
    let observed = found.observed();
    let started_at = match observed {
        Some(Workload::Running { started }) | Some(Workload::Succeeded { started, .. }) => {
            Some(started)
        }
        Some(Workload::Failed { started, .. })
        | Some(Workload::DeadlineExceeded { started, .. }) => started,
        _ => None,
    };
    // The deterministic name of the Job created right after, or the Job's.
    let job_ref = if creates_workload(found, decided) {
        Some(found.job_name.clone())
    } else {
        found.workload.as_ref().map(|j| j.name.clone())
    };
    let status = build::status(
        tj,
        StatusInputs {
            phase: decided.phase,
            decision: decided.decision.clone(),
            queue_position: decided.queue_position,
            spec_hash: Some(found.request.spec_hash.clone()),
            started_at,
            job_ref,
            consumed: decided.consumed.clone(),
            ledger_sequence: decided.ledger_sequence,
            problem: decided.problem.clone(),
        },
        now,
    );
    write_status(ctx, api, tj, status).await
}

/// Step 5: the Job of an admitted job. A slimmed cached copy lacks the pod
/// template: the object is read and run only if it is still the spec that
/// was decided (else its own watch event brings it back).
async fn apply_workload(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    found: &Found,
    decided: &Decided,
) -> Result<Option<Action>> {
    if !creates_workload(found, decided) {
        return Ok(None);
    }
    let full: Arc<TrainingJob>;
    let source = if tj.annotations().contains_key(CACHED_SPEC_HASH) {
        let Some(current) = api
            .get_opt(&tj.name_any())
            .await?
            .filter(|t| t.uid() == tj.uid())
        else {
            return Ok(Some(Action::await_change()));
        };
        let current_hash = build::job_request(&current, BTreeMap::new(), &ctx.catalog)
            .map(|r| r.spec_hash)
            .ok();
        if current_hash.as_deref() != Some(found.request.spec_hash.as_str()) {
            return Ok(Some(Action::requeue(Duration::from_secs(1))));
        }
        full = Arc::new(current);
        &*full
    } else {
        tj
    };
    let ns = &found.request.id.namespace;
    let job_name = &found.job_name;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    match jobs
        .create(&PostParams::default(), &build::workload(source))
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Created by an earlier attempt (ours, by owner uid) or someone
            // else's; a conflict with nothing there is retried.
            match jobs.get_opt(job_name).await? {
                Some(existing)
                    if existing
                        .owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == tj.uid().as_ref()) =>
                {
                    Ok(None)
                }
                Some(_) => Err(Error::Invalid(format!(
                    "a Job named {job_name} in {ns} exists and is not owned by TrainingJob {}; delete or rename it",
                    tj.name_any()
                ))),
                None => Err(kube::Error::Api(s).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// An invalid spec: the finalizer still goes on (its deletion passes
/// through the books like any other), and the status names the problem.
async fn report_invalid(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    id: &JobId,
    message: &str,
    now: Timestamp,
) -> Result<Action> {
    if let Err(e) = add_finalizer(api, tj).await {
        return finalizer_failed(ctx, id, e).await;
    }
    let status = build::invalid_status(tj, message, now);
    write_status(ctx, api, tj, status).await?;
    Ok(Action::await_change())
}

/// A deleted TrainingJob: record the final accounting, then let the object
/// go. The books see the deletion even when our finalizer is not (yet) on it.
async fn finalize(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    id: &JobId,
    now: Timestamp,
) -> Result<Action> {
    record_deletion(ctx, id, now).await?;
    if tj.finalizers().iter().any(|f| f == FINALIZER) {
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
    Ok(Action::await_change())
}

/// Records a TrainingJob's deletion in the books (its final accounting),
/// when the engine knows it, and waits until the ledger has it.
async fn record_deletion(ctx: &Context, id: &JobId, now: Timestamp) -> Result<()> {
    let (_, applied) = ctx.with_books(Some(id), |b| {
        if b.engine.phase(id).is_none() {
            return Ok(((), Applied::default()));
        }
        match b.apply(now, Event::Delete { job: id.clone() }) {
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
            record_deletion(ctx, id, Timestamp::now()).await?;
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
