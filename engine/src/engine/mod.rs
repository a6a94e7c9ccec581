//! The decision engine: a deterministic state machine fed with events at
//! explicit times (submit, approve, start, finish, delete, policy change,
//! tick) that returns decisions and ledger records.
//!
//! Accounting is conservative and monotone: when a job is admitted, the FLOP
//! its deciding policy governs by is *charged* to its lineage (and its base
//! lineage where the policy counts fine-tunes toward it) and to the rolling
//! namespace, model and cluster budget windows at that instant. The charge is
//! never returned, because regulation counts compute that "will be met" (EU AI
//! Act Art. 52(1)); metered consumption is tracked beside it. Capacity, by
//! contrast, is about what runs now, and is released when a job ends.
//!
//! Every total the engine keeps is derivable from the ledger records it
//! emits, so the operator can rebuild it after a restart.
//!
//! Where things live: this file holds the [`Engine`], its queries and
//! [`Engine::apply`]; `types` the events and results; `lifecycle` what
//! each event does to a job; `evaluate` the decision, one function per
//! step; `queue` deciding and re-deciding queued jobs; `waitlist` the queue
//! and its wake-up index; `accounting` charges, metering and crossings;
//! `series` the budget windows; `constraint` what a throttled job waits on.

mod accounting;
mod constraint;
mod evaluate;
mod lifecycle;
mod queue;
mod series;
mod types;
mod waitlist;

use std::collections::BTreeMap;
// Fast, seeded hashing (job ids are cluster input): foldhash, hashbrown's default.
use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::decision::{Decision, Verdict};
use crate::job::{JobId, JobRequest, Principal};
use crate::ledger::LedgerRecord;
use crate::policy::{Basis, BudgetScope, ComputePolicySpec, Policy, Queueing};
use crate::projection::Projection;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond};

pub use crate::ledger::OPERATOR_ACTOR;
pub use types::{Crossing, EngineError, Event, LineageTotals, Outcome, Phase, RestoredJob, Step};

use constraint::Constraint;
use series::{ChargeSeries, scope_index};
use waitlist::{QueueKey, Waiter, Waitlist};

/// Running compute of one scope.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Usage {
    rate: FlopPerSecond,
    accelerators: u64,
}

/// A policy ready to evaluate: its name, spec and catalog.
#[derive(Clone, Debug)]
struct CompiledPolicy {
    name: Arc<str>,
    spec: ComputePolicySpec,
    catalog: Arc<Catalog>,
    /// Its budgets' names, shared by the constraints that name them.
    budget_names: Vec<Arc<str>>,
}

impl CompiledPolicy {
    /// The constraint of budget `bi` of this policy, for scope key `key`.
    fn budget_constraint(&self, bi: usize, scope: BudgetScope, key: &str) -> Constraint {
        let budget = self
            .budget_names
            .get(bi)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        Constraint::budget(&self.name, &budget, scope, key)
    }

    /// The constraint of this policy's cap: the cluster's, or `namespace`'s.
    fn cap_constraint(&self, namespace: Option<&str>) -> Constraint {
        Constraint::cap(&self.name, namespace)
    }
}

/// What the engine keeps of a job that has ended: enough to answer
/// idempotent resubmissions and status queries, little enough that a million
/// finished jobs cost tens of megabytes, not gigabytes.
#[derive(Clone, Debug)]
struct Tombstone {
    uid: String,
    spec_hash: String,
    phase: Phase,
    /// Kept for rejected jobs only, so their submitter can be told why.
    decision: Option<Box<Decision>>,
}

/// Per-job state.
#[derive(Clone, Debug)]
struct JobState {
    request: JobRequest,
    phase: Phase,
    submitted_at: Timestamp,
    seq: u64,
    decision: Option<Decision>,
    approvals: Vec<Principal>,
    admitted: Option<Admission>,
    started_at: Option<Timestamp>,
    /// Constraints this job is queued on (StrictFIFO blocks others on them).
    throttled_on: Vec<Constraint>,
    /// Whether a StrictFIFO policy governs it.
    throttled_strict: bool,
}

impl JobState {
    /// Its place in the queue (when queued).
    fn queue_key(&self) -> QueueKey {
        (
            std::cmp::Reverse(self.request.priority),
            self.submitted_at,
            self.seq,
        )
    }

    /// What the waitlist reads of it.
    fn waiter(&self) -> Waiter<'_> {
        Waiter {
            namespace: &self.request.id.namespace,
            lineage: self.request.lineage(),
            base_lineage: self.request.base_lineage(),
            throttled_on: &self.throttled_on,
        }
    }
}

/// The waitlist's view of the job queued at `qk` (`None`: it is not queued).
fn waiter<'a>(jobs: &'a HashMap<u64, JobState>, qk: &QueueKey) -> Option<Waiter<'a>> {
    jobs.get(&qk.2)
        .filter(|j| j.phase == Phase::Queued)
        .map(JobState::waiter)
}

/// What an admitted job holds: its capacity, and how it is metered.
#[derive(Clone, Debug)]
struct Admission {
    rate: FlopPerSecond,
    accelerators: u64,
    projection: Option<Projection>,
    basis: Basis,
    /// Lineages charged at admission; consumption is metered onto the same.
    lineages: Vec<String>,
}

/// What freed up, so a queue scan re-evaluates only jobs it could help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger<'a> {
    /// A job of this namespace ended: capacity freed there and cluster-wide.
    Capacity(&'a str),
    /// Time passed: budget windows may have freed.
    Time,
    /// Anything may have changed (policy change, restore).
    All,
}

type JobKey = (String, String);

fn key_of(id: &JobId) -> JobKey {
    (id.namespace.clone(), id.name.clone())
}

/// The engine.
#[derive(Clone, Debug)]
pub struct Engine {
    base_catalog: Arc<Catalog>,
    policies: BTreeMap<String, CompiledPolicy>,
    /// Live jobs (not yet ended) by their sequence number, which is also the
    /// last part of a queued job's [`QueueKey`]: the hot paths reach a job
    /// without hashing its name.
    jobs: HashMap<u64, JobState>,
    /// Live jobs' sequence numbers by namespace and name.
    ids: HashMap<JobKey, u64>,
    ended: HashMap<JobKey, Tombstone>,
    lineages: HashMap<String, LineageTotals>,
    /// Charge series per budget scope (Namespace, Model, Cluster), by scope key.
    windows: [HashMap<String, ChargeSeries>; 3],
    /// Budget window lengths (ms) of all policies ever loaded, per scope.
    window_lengths: [Vec<i64>; 3],
    cluster_usage: Usage,
    ns_usage: HashMap<String, Usage>,
    /// Queued jobs in order, and what could free each.
    waitlist: Waitlist,
    /// Re-evaluate every capacity waiter at every finish and every due
    /// budget waiter at every tick (the reference the index and the budget
    /// re-check are tested against).
    naive_wakeups: bool,
    crossings: Vec<Crossing>,
    /// Tiers crossed, by lineage: (policy, tier).
    crossed: HashMap<String, Vec<(String, String)>>,
    next_seq: u64,
    retention_ms: i64,
    last_prune: i64,
    /// Build ledger records (else only count them; see [`Step`]).
    keep_records: bool,
    /// Word decisions' reasons (else leave them empty; see
    /// [`Engine::keep_reasons`]).
    words: bool,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Catalog::builtin())
    }
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(v: i64) -> Timestamp {
    Timestamp::from_millisecond(v).unwrap_or(Timestamp::MAX)
}

/// What the engine puts in [`JobRequest::spec_hash`] when the caller gives
/// nothing (a trace's submission, a test's request: no TrainingJob, no pod
/// template): `content_hash` of (model, accelerator, count, maxDuration,
/// priority), its canonical bytes written directly
/// (tests/ledger_canonical.rs). Not a TrainingJob's spec hash, which
/// covers the pod template ([`crate::spec_hash::spec_hash`]); a request
/// from the cluster always carries that one. Exposed so a caller can
/// compute it ahead, e.g. on another thread.
pub fn request_digest(req: &JobRequest) -> String {
    request_digest_of(
        &req.model,
        &req.accelerator,
        req.count,
        req.max_duration,
        req.priority,
    )
}

/// [`request_digest`] from the parts of a request it covers.
pub fn request_digest_of(
    model: &crate::job::ModelSpec,
    accelerator: &crate::job::AcceleratorSpec,
    count: u32,
    max_duration: crate::duration::GoDuration,
    priority: i32,
) -> String {
    let bytes =
        crate::ledger::job_spec_canonical_json(model, accelerator, count, max_duration, priority)
            .unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// SHA-256 (hex) of a value's canonical JSON; used for spec and policy hashes.
/// The single-pass serializer the ledger uses (tested byte for byte against
/// `serde_json_canonicalizer`); a value with no canonical form hashes as
/// empty input.
pub fn content_hash<T: Serialize>(value: &T) -> String {
    let bytes = crate::ledger::canonical_json(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

impl Engine {
    pub fn new(catalog: Catalog) -> Engine {
        Engine {
            base_catalog: Arc::new(catalog),
            policies: BTreeMap::new(),
            jobs: HashMap::new(),
            ids: HashMap::new(),
            ended: HashMap::new(),
            lineages: HashMap::new(),
            windows: Default::default(),
            window_lengths: Default::default(),
            cluster_usage: Usage::default(),
            ns_usage: HashMap::new(),
            waitlist: Waitlist::default(),
            naive_wakeups: false,
            crossings: Vec::new(),
            crossed: HashMap::new(),
            next_seq: 0,
            retention_ms: 400 * 86_400_000,
            last_prune: i64::MIN,
            keep_records: true,
            words: true,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.base_catalog
    }

    /// Totals of a lineage.
    pub fn lineage(&self, name: &str) -> LineageTotals {
        self.lineages.get(name).copied().unwrap_or_default()
    }

    /// All lineage totals, sorted by name.
    pub fn lineages(&self) -> BTreeMap<String, LineageTotals> {
        self.lineages.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Charged FLOP of `scope`/`key` in (now - window, now].
    pub fn window_charged(
        &self,
        scope: BudgetScope,
        key: &str,
        now: Timestamp,
        window: SignedDuration,
    ) -> crate::units::Flop {
        let w = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        crate::units::Flop(
            self.series(scope, key)
                .map_or(0.0, |s| s.window_sum(ms(now), w)),
        )
    }

    fn series(&self, scope: BudgetScope, key: &str) -> Option<&ChargeSeries> {
        self.windows[scope_index(scope)].get(key)
    }

    pub fn crossings(&self) -> &[Crossing] {
        &self.crossings
    }

    /// Running FLOP/s and accelerators of admitted, unfinished jobs.
    pub fn running(&self) -> (FlopPerSecond, u64) {
        (self.cluster_usage.rate, self.cluster_usage.accelerators)
    }

    pub fn queue_len(&self) -> usize {
        self.waitlist.len()
    }

    pub fn phase(&self, id: &JobId) -> Option<Phase> {
        let key = key_of(id);
        self.live(&key)
            .map(|j| j.phase)
            .or_else(|| self.ended.get(&key).map(|t| t.phase))
    }

    /// A live job by namespace and name.
    fn live(&self, key: &JobKey) -> Option<&JobState> {
        self.ids.get(key).and_then(|seq| self.jobs.get(seq))
    }

    /// A queued job by its place in the queue.
    fn queued(&self, qk: &QueueKey) -> Option<&JobState> {
        self.jobs.get(&qk.2).filter(|j| j.phase == Phase::Queued)
    }

    /// The current decision of a live job, or of a rejected one.
    pub fn decision(&self, id: &JobId) -> Option<&Decision> {
        let key = key_of(id);
        match self.live(&key) {
            Some(j) => j.decision.as_ref(),
            None => self.ended.get(&key).and_then(|t| t.decision.as_deref()),
        }
    }

    /// Jobs the engine tracks in full (not yet ended).
    pub fn live_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The whole queue in order, each queued job with its 1-based position,
    /// in one O(n) walk (asking [`Self::queue_position`] per job is O(n²)).
    pub fn queue_positions(&self) -> impl Iterator<Item = (&JobId, u32)> + '_ {
        self.waitlist
            .iter()
            .filter_map(|qk| self.jobs.get(&qk.2).map(|j| &j.request.id))
            .zip(1u32..)
    }

    /// When a live (not yet ended) job was first submitted: the time that
    /// orders it in the queue after its priority.
    pub fn submitted_at(&self, id: &JobId) -> Option<Timestamp> {
        self.live(&key_of(id)).map(|j| j.submitted_at)
    }

    /// What a running job has used so far (accelerator-seconds, FLOP), by
    /// the same rule that meters it when it ends; `None` unless it runs.
    pub fn consumed_so_far(
        &self,
        id: &JobId,
        now: Timestamp,
    ) -> Option<(AcceleratorSeconds, Flop)> {
        let job = self.live(&key_of(id))?;
        if job.phase != Phase::Running {
            return None;
        }
        Some(accounting::usage(job, now))
    }

    /// 1-based position of a queued job.
    pub fn queue_position(&self, id: &JobId) -> Option<u32> {
        let j = self.live(&key_of(id))?;
        if j.phase != Phase::Queued {
            return None;
        }
        self.waitlist.position(j.queue_key())
    }

    /// Jobs waiting for approval.
    pub fn pending_approvals(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.phase == Phase::AwaitingApproval)
            .count()
    }

    /// The approvals counted for a job not yet ended (who approved, in order).
    pub fn approvals(&self, id: &JobId) -> &[Principal] {
        self.live(&key_of(id))
            .map_or(&[], |j| j.approvals.as_slice())
    }

    /// The earliest future time at which a Tick could admit a throttled job.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.waitlist.next_wakeup().map(from_ms)
    }

    /// Policies currently loaded.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &ComputePolicySpec)> {
        self.policies.values().map(|p| (&*p.name, &p.spec))
    }

    /// Whether to build ledger records (the default). Without them each
    /// [`Step`] only counts the records it would have held
    /// (`records_not_kept`); decisions and state are the same either way.
    pub fn keep_records(&mut self, keep: bool) {
        self.keep_records = keep;
    }

    /// Whether to word each decision's one-line reason and warnings (the
    /// default). Without, `Decision::reason` and `warnings` are left empty:
    /// for a caller that shows none (a simulation printing only its
    /// summary); verdicts, rules and numbers are the same either way.
    /// Records imply reasons: with [`Engine::keep_records`] on, the ledger's
    /// reasons are always worded.
    pub fn keep_reasons(&mut self, keep: bool) {
        self.words = keep;
    }

    fn wording(&self) -> bool {
        self.words || self.keep_records
    }

    /// Re-evaluate every capacity waiter at every finish instead of only
    /// those the index says could change, and every due budget waiter at a
    /// tick instead of re-checking its budgets: the reference behaviour, for
    /// tests.
    #[doc(hidden)]
    pub fn set_naive_wakeups(&mut self, naive: bool) {
        self.naive_wakeups = naive;
    }

    /// Applies one event at `now`.
    pub fn apply(&mut self, now: Timestamp, event: Event) -> Result<Step, EngineError> {
        let mut step = Step::default();
        match event {
            Event::Submit(req) => self.submit(now, req, &mut step)?,
            Event::Approve {
                job,
                approver,
                spec_hash,
            } => self.approve(now, &job, approver, &spec_hash, &mut step)?,
            Event::WithdrawApproval { job, approver } => {
                self.withdraw(now, &job, &approver, &mut step)
            }
            Event::Start { job } => self.start(now, &job, &mut step)?,
            Event::Finish { job, outcome } => {
                self.finish(now, now, &job, outcome, &mut step)?;
                self.drain_queue(now, &mut step, Trigger::Capacity(&job.namespace));
            }
            Event::FinishedAt {
                job,
                outcome,
                ended_at,
            } => {
                self.finish(now, ended_at.min(now), &job, outcome, &mut step)?;
                self.drain_queue(now, &mut step, Trigger::Capacity(&job.namespace));
            }
            Event::Delete { job } => {
                self.delete(now, &job, &mut step)?;
                self.drain_queue(now, &mut step, Trigger::Capacity(&job.namespace));
            }
            Event::UpsertPolicy(p) => self.upsert_policy(now, p, &mut step)?,
            Event::RemovePolicy { name } => {
                if self.policies.remove(&name).is_some() {
                    step.emit(self.keep_records, || {
                        LedgerRecord::policy_changed(now, &name, String::new())
                    });
                    self.reevaluate_held(now, &mut step);
                }
            }
            Event::Tick => {
                self.waitlist.pass_time(ms(now));
                self.drain_queue(now, &mut step, Trigger::Time);
                self.prune(now);
            }
        }
        Ok(step)
    }

    /// Loads or replaces a policy and decides every held job again.
    fn upsert_policy(
        &mut self,
        now: Timestamp,
        p: Policy,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        p.spec.validate(&p.name)?;
        let catalog = if p.spec.accelerators.is_empty() {
            Arc::clone(&self.base_catalog)
        } else {
            Arc::new(self.base_catalog.with_overrides(&p.spec.accelerators))
        };
        let hash = content_hash(&p.spec);
        for b in &p.spec.budgets {
            let (i, w) = (scope_index(b.scope), b.window.as_millis());
            if !self.window_lengths[i].contains(&w) {
                self.window_lengths[i].push(w);
                for series in self.windows[i].values_mut() {
                    series.register(w);
                }
            }
        }
        self.retention_ms = self.retention_ms.max(
            p.spec
                .budgets
                .iter()
                .map(|b| b.window.as_millis())
                .max()
                .unwrap_or(0),
        );
        let budget_names = p
            .spec
            .budgets
            .iter()
            .map(|b| Arc::from(b.name.as_str()))
            .collect();
        self.policies.insert(
            p.name.clone(),
            CompiledPolicy {
                name: Arc::from(p.name.as_str()),
                spec: p.spec,
                catalog,
                budget_names,
            },
        );
        step.emit(self.keep_records, || {
            LedgerRecord::policy_changed(now, &p.name, hash)
        });
        self.reevaluate_held(now, step);
        Ok(())
    }

    /// The policies whose namespace selector matches the job, by name.
    fn selecting(&self, req: &JobRequest) -> Vec<&CompiledPolicy> {
        self.policies
            .values()
            .filter(|p| p.spec.namespace_selector.matches(&req.namespace_labels))
            .collect()
    }

    fn any_strict(&self) -> bool {
        self.policies
            .values()
            .any(|p| p.spec.queueing == Queueing::StrictFIFO)
    }

    /// A ledger record of `event` about `req`, caused by `actor`.
    fn record(
        &self,
        now: Timestamp,
        req: &JobRequest,
        actor: &str,
        event: crate::ledger::LedgerEvent,
    ) -> LedgerRecord {
        LedgerRecord::about_job(&self.base_catalog, now, req, actor, event)
    }

    /// Re-evaluates the queue and held jobs, e.g. after a restore.
    pub fn resume(&mut self, now: Timestamp) -> Step {
        let mut step = Step::default();
        self.reevaluate_held(now, &mut step);
        step
    }

    /// The decision `req` would get if submitted at `now`, without changing
    /// anything: what the admission webhook answers at `kubectl apply` time.
    pub fn preview(&self, now: Timestamp, req: &JobRequest) -> Decision {
        let blocked = self.blocked_ahead((std::cmp::Reverse(req.priority), now, self.next_seq));
        self.evaluate(now, req, &[], &blocked).decision
    }

    /// Re-words a queued job's decision with the numbers of `now` (budget
    /// use, when a window frees), for whoever is about to show it: a waiting
    /// job is re-evaluated only when something could free it, so its stored
    /// sentence can be older than its state. Changes nothing else: if the
    /// job would no longer be throttled at `now` (its wake-up is due but not
    /// yet processed), the stored decision stays until that event decides.
    pub fn refresh_reason(&mut self, now: Timestamp, id: &JobId) {
        let Some(&seq) = self.ids.get(&key_of(id)) else {
            return;
        };
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        if job.phase != Phase::Queued {
            return;
        }
        let blocked = self.blocked_ahead(job.queue_key());
        let eval = self.evaluate(now, &job.request, &job.approvals, &blocked);
        if eval.decision.verdict != Verdict::Throttle {
            return;
        }
        if let Some(j) = self.jobs.get_mut(&seq) {
            let position = j.decision.as_ref().and_then(|d| d.queue_position);
            j.decision = Some(Decision {
                queue_position: position,
                ..eval.decision
            });
        }
    }
}
