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

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
// Fast, seeded hashing (job ids are cluster input): foldhash, hashbrown's default.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::decision::{ApprovalNeed, Decision, Verdict};
use crate::job::{JobId, JobRequest, Principal};
use crate::ledger::{AcceleratorUse, LedgerEvent, LedgerRecord};
use crate::policy::{
    ApprovalRequirement, Basis, BudgetAction, BudgetScope, Cap, ComputePolicySpec, Mode, Policy,
    PolicyError, Queueing, TierAction,
};
use crate::projection::{Projection, project};
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds, sci};

/// The actor name the engine uses for its own actions.
pub const OPERATOR_ACTOR: &str = "komptroller";

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Queued,
    AwaitingApproval,
    Admitted,
    Running,
    Succeeded,
    Failed,
    Rejected,
    Stopped,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::Rejected | Phase::Stopped
        )
    }
    pub fn holds_capacity(self) -> bool {
        matches!(self, Phase::Admitted | Phase::Running)
    }
}

/// What the cluster remembers of a job, for [`Engine::restore_job`].
#[derive(Clone, Debug)]
pub struct RestoredJob {
    pub phase: Phase,
    /// When it was first submitted (its queue order).
    pub submitted_at: Timestamp,
    pub decision: Option<Decision>,
    pub approvals: Vec<Principal>,
    pub started_at: Option<Timestamp>,
}

/// How a workload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    DeadlineExceeded,
}

/// An input to the engine.
#[derive(Clone, Debug)]
pub enum Event {
    /// A job was created or its spec changed.
    Submit(JobRequest),
    /// Someone approved a job's escalation.
    Approve {
        job: JobId,
        approver: Principal,
        spec_hash: String,
    },
    /// An approval was taken back (its ComputeApproval was deleted). It
    /// stops counting for a job not yet admitted, which is decided again
    /// (a queued job that needed it goes back to awaiting approval); once a
    /// job is admitted its compute is committed and nothing changes.
    WithdrawApproval { job: JobId, approver: String },
    /// The admitted job's workload started running.
    Start { job: JobId },
    /// The workload ended.
    Finish { job: JobId, outcome: Outcome },
    /// The workload ended at `ended_at`, learnt of only at the event's `now`:
    /// its run is metered up to `ended_at` (clamped between its start and
    /// `now`), while the queue is re-evaluated, and the ledger record
    /// written, at `now`.
    FinishedAt {
        job: JobId,
        outcome: Outcome,
        ended_at: Timestamp,
    },
    /// The TrainingJob was deleted.
    Delete { job: JobId },
    /// A policy was created or changed.
    UpsertPolicy(Policy),
    /// A policy was deleted.
    RemovePolicy { name: String },
    /// Time passed: budget windows may have freed.
    Tick,
}

/// What one event produced.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Decisions whose verdict changed (or were made for the first time).
    pub decisions: Vec<(JobId, Decision)>,
    /// Ledger records, in order.
    pub records: Vec<LedgerRecord>,
    /// Ledger records this step produced but did not keep, when the engine
    /// keeps none (`Engine::keep_records(false)`: a simulation that writes no
    /// ledger counts them only).
    pub records_not_kept: u64,
}

impl Step {
    /// Ledger records this step produced, kept or not.
    pub fn record_count(&self) -> u64 {
        self.records.len() as u64 + self.records_not_kept
    }

    /// Adds the record `make` builds, or only counts it when `keep` is false.
    fn emit(&mut self, keep: bool, make: impl FnOnce() -> LedgerRecord) {
        if keep {
            self.records.push(make());
        } else {
            self.records_not_kept += 1;
        }
    }
}

/// Why an event could not be applied. Each message names the field, value and rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no TrainingJob {0} is known to the engine")]
    UnknownJob(String),
    #[error("approval of {job}: {reason}")]
    Approval { job: String, reason: String },
    #[error(
        "spec of {job} is immutable once admitted (phase {phase:?}); delete and resubmit to change it"
    )]
    Immutable { job: String, phase: Phase },
}

/// Totals of one lineage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageTotals {
    /// FLOP reserved by admissions (never returned).
    pub charged: Flop,
    /// Of which charged by jobs whose own lineage this is (not fine-tunes of it).
    pub own_charged: Flop,
    /// FLOP metered from completed runs.
    pub consumed: Flop,
    pub accelerator_seconds: AcceleratorSeconds,
}

/// A lineage crossed a tier threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Crossing {
    pub lineage: String,
    pub policy: String,
    pub tier: String,
    pub threshold: Flop,
    pub at: Timestamp,
    /// The reporting obligation's deadline, when the tier has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_by: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regulation: Option<String>,
}

/// Running compute of one scope.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Usage {
    rate: FlopPerSecond,
    accelerators: u64,
}

/// Charges over time with prefix sums. A rolling-window sum is the
/// difference of two prefix sums; the window's start only moves forward with
/// time, so each registered window keeps a cursor and finds its start in
/// amortised O(1) instead of a binary search over the whole history.
#[derive(Debug, Default)]
struct ChargeSeries {
    /// (time in ms, cumulative FLOP including this charge)
    points: VecDeque<(i64, f64)>,
    /// Cumulative FLOP of points pruned from the front.
    pruned: f64,
    /// Absolute index of `points[0]` (points pruned so far).
    popped: usize,
    /// Per window length (ms): absolute index of the first point after the
    /// window start, as of the last query. Atomics keep `&self` queries
    /// lock-free and the engine `Sync`.
    cursors: Vec<(i64, AtomicUsize)>,
}

impl Clone for ChargeSeries {
    fn clone(&self) -> Self {
        ChargeSeries {
            points: self.points.clone(),
            pruned: self.pruned,
            popped: self.popped,
            cursors: self
                .cursors
                .iter()
                .map(|(w, c)| (*w, AtomicUsize::new(c.load(AtomicOrdering::Relaxed))))
                .collect(),
        }
    }
}

impl ChargeSeries {
    fn with_windows(windows: &[i64]) -> ChargeSeries {
        let mut s = ChargeSeries::default();
        for w in windows {
            s.register(*w);
        }
        s
    }
    fn register(&mut self, window_ms: i64) {
        if !self.cursors.iter().any(|(w, _)| *w == window_ms) {
            self.cursors
                .push((window_ms, AtomicUsize::new(self.popped)));
        }
    }
    fn push(&mut self, t: i64, flop: f64) {
        let last = self.points.back().map_or(self.pruned, |p| p.1);
        self.points.push_back((t, last + flop));
    }
    fn total(&self) -> f64 {
        self.points.back().map_or(self.pruned, |p| p.1)
    }
    fn cum_before(&self, i: usize) -> f64 {
        if i == 0 {
            self.pruned
        } else {
            self.points[i - 1].1
        }
    }
    /// Cumulative sum of charges at or before `t`.
    fn cum_at(&self, t: i64) -> f64 {
        if self.points.back().is_none_or(|p| p.0 <= t) {
            return self.total();
        }
        self.cum_before(self.points.partition_point(|p| p.0 <= t))
    }
    /// Cumulative sum at or before `t`, using the cursor of `window_ms`.
    fn cum_at_window_start(&self, t: i64, window_ms: i64) -> f64 {
        let Some((_, cursor)) = self.cursors.iter().find(|(w, _)| *w == window_ms) else {
            return self.cum_at(t);
        };
        let len = self.points.len();
        let mut i = cursor
            .load(AtomicOrdering::Relaxed)
            .saturating_sub(self.popped)
            .min(len);
        if i > 0 && self.points[i - 1].0 > t {
            // Asked about the past: search instead of walking back.
            i = self.points.partition_point(|p| p.0 <= t);
        } else {
            while i < len && self.points[i].0 <= t {
                i += 1;
            }
        }
        cursor.store(i + self.popped, AtomicOrdering::Relaxed);
        self.cum_before(i)
    }
    /// Sum of charges in (now - window, now].
    fn window_sum(&self, now: i64, window_ms: i64) -> f64 {
        self.cum_at(now) - self.cum_at_window_start(now.saturating_sub(window_ms), window_ms)
    }
    /// Earliest time at which the window sum drops to `target` or below,
    /// assuming no new charges.
    fn frees_at(&self, window_ms: i64, target: f64) -> Option<i64> {
        let total = self.total();
        if total - self.pruned <= target {
            return None;
        }
        // The first point i such that total - cum[i] <= target: once it leaves the window the sum fits.
        let i = self.points.partition_point(|p| total - p.1 > target);
        self.points.get(i).map(|p| p.0.saturating_add(window_ms))
    }
    fn prune_before(&mut self, t: i64) {
        while let Some(&(pt, cum)) = self.points.front() {
            if pt < t && self.points.len() > 1 {
                self.pruned = cum;
                self.points.pop_front();
                self.popped += 1;
            } else {
                break;
            }
        }
    }
}

/// A policy ready to evaluate: spec, its catalog, its content hash.
#[derive(Clone, Debug)]
struct CompiledPolicy {
    name: String,
    spec: ComputePolicySpec,
    catalog: Arc<Catalog>,
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
    throttled_on: Vec<String>,
    /// Whether a StrictFIFO policy governs it.
    throttled_strict: bool,
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

#[derive(Clone, Debug)]
struct Admission {
    rate: FlopPerSecond,
    accelerators: u64,
    projection: Option<Projection>,
    basis: Basis,
    /// Lineages charged at admission; consumption is metered onto the same.
    lineages: Vec<String>,
}

type QueueKey = (Reverse<i32>, Timestamp, u64);
type JobKey = (String, String);

fn key_of(id: &JobId) -> JobKey {
    (id.namespace.clone(), id.name.clone())
}

/// One rule's outcome while evaluating a policy.
#[derive(Clone, Debug)]
struct RuleOutcome {
    verdict: Verdict,
    rule: String,
    reason: String,
    approvals: Option<ApprovalRequirement>,
    /// Constraint this outcome waits on, for StrictFIFO blocking.
    constraint: Option<String>,
}

/// The full evaluation of a job against all selecting policies.
#[derive(Clone, Debug)]
struct Evaluation {
    decision: Decision,
    /// Constraints it is throttled on.
    throttled_on: Vec<String>,
    strict: bool,
    charge: Flop,
    charged_lineages: Vec<String>,
    rate: FlopPerSecond,
    basis: Basis,
    /// When a budget window will have freed enough for this job.
    wake_at: Option<i64>,
    /// What must change before re-evaluating it could change its outcome.
    watch: Watch,
    /// When throttled: every budget and cap it is under, when nothing else
    /// could change its verdict as they fill and free (`None`: not
    /// throttled, a policy not in Enforce mode, an Escalate/Reject budget, a
    /// FLOP/s cap or StrictFIFO).
    quick: Option<Vec<QuickItem>>,
}

/// What could change the outcome of a job queued on a capacity cap.
///
/// While an Enforce policy's accelerator cap still bites, the job stays
/// queued on it whatever else is true; re-evaluating it can only change its
/// verdict or what it waits on when its lineage totals change (tiers,
/// modification, model budgets), a namespace budget it is under fills, a
/// budget window it waits on frees, or it gets an approval.
#[derive(Clone, Debug)]
struct Watch {
    /// Largest cluster accelerator usage at which it could fit every Enforce
    /// cluster cap (`i64::MAX`: no such cap, or a cluster budget: always
    /// re-evaluate).
    cluster_slack: i64,
    /// The same for its namespace's usage and the Enforce namespace caps.
    ns_slack: i64,
    /// Namespace budgets it is under: (window ms, limit, its governing FLOP).
    ns_budgets: Vec<(i64, f64, f64)>,
}

impl Watch {
    const ALWAYS: Watch = Watch {
        cluster_slack: i64::MAX,
        ns_slack: i64::MAX,
        ns_budgets: Vec::new(),
    };
}

/// One constraint of an Enforce policy that a queued job is under, as a
/// test the quick re-check can run without evaluating the job again.
#[derive(Clone, Copy, Debug)]
enum QuickTest {
    /// A `Throttle` budget: holds it back while the window's use plus its
    /// governing FLOP exceeds the limit. The window's key is the job's
    /// namespace, lineage or the cluster, by `scope`.
    Budget {
        scope: usize,
        window_ms: i64,
        limit: f64,
        governing: f64,
    },
    /// An accelerator cap: holds it back while usage (its namespace's, or
    /// the cluster's) exceeds `slack` (the cap less its accelerators).
    Cap { namespace: bool, slack: i64 },
}

/// A [`QuickTest`] and the constraint it is named by in `throttled_on`.
#[derive(Clone, Debug)]
struct QuickItem {
    test: QuickTest,
    constraint: String,
}

/// What a queued job was last evaluated against when every policy that
/// selects it is an Enforce policy whose only moving parts are `Throttle`
/// budgets and accelerator caps (no Escalate/Reject budget, no FLOP/s cap,
/// no StrictFIFO): as long as its lineages' totals stand, which of its
/// budgets and caps hold it back is all that can change, so a finish or a
/// budget window freeing can refile it without a full evaluation (see
/// [`Engine::quick_check`]). A charge to its lineage or base lineage (tiers,
/// modification) drops it: the next visit evaluates the job.
#[derive(Clone, Debug)]
struct QuickWatch {
    /// Every budget and cap it is under, in the order `evaluate` meets them.
    items: Vec<QuickItem>,
    /// Its lineage and base lineage (where it is filed in `quick_by_lineage`).
    lineages: Vec<String>,
    /// A cluster budget selects it (its capacity index entry is then
    /// `Watch::ALWAYS`, as `evaluate` files it).
    cluster_budget: bool,
}

/// A capacity waiter's entry in the wake-up index.
#[derive(Clone, Debug)]
struct CapEntry {
    /// Filed under its namespace's cap (else under the cluster's).
    ns_home: bool,
    cluster_slack: i64,
    ns_slack: i64,
    namespace: String,
    /// Its lineage and its base lineage.
    lineages: Vec<String>,
    ns_budgets: Vec<(i64, f64, f64)>,
}

/// The wake-up index of one kind of capacity waiter (the cluster's, or one
/// namespace's).
#[derive(Clone, Debug, Default)]
struct Waiters {
    /// By the slack that matters to them (see [`Watch`]).
    by_slack: std::collections::BTreeSet<(i64, QueueKey)>,
    /// Namespace waiters by cluster slack: those the cluster cap starts to
    /// bite move to the cluster's waiters when re-evaluated.
    by_cluster_slack: std::collections::BTreeSet<(i64, QueueKey)>,
    /// Those whose lineage totals, namespace budget or approvals changed
    /// since they were last evaluated.
    dirty: std::collections::BTreeSet<QueueKey>,
}

impl Waiters {
    fn is_empty(&self) -> bool {
        self.by_slack.is_empty() && self.dirty.is_empty()
    }
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
    /// Queued jobs in order (the job is `jobs[qk.2]`).
    queue: std::collections::BTreeSet<QueueKey>,
    /// Queued jobs that freed capacity could help (waiting on a cap, or unknown).
    capacity_waiters: std::collections::BTreeSet<QueueKey>,
    /// Capacity waiters' wake-up index: a finish re-evaluates only those that
    /// could now fit, and those whose other inputs changed.
    cap_entries: HashMap<QueueKey, CapEntry>,
    /// Waiters on the cluster cap.
    cluster_waiters: Waiters,
    /// Waiters on their own namespace's cap only, by namespace.
    ns_waiters: HashMap<String, Waiters>,
    /// Capacity waiters by their lineage and base lineage.
    cap_by_lineage: HashMap<String, HashSet<QueueKey>>,
    /// Capacity waiters under a namespace budget, by namespace.
    cap_ns_budget: HashMap<String, HashSet<QueueKey>>,
    /// Re-evaluate every capacity waiter at every finish and every due
    /// budget waiter at every tick (the reference the index and the budget
    /// re-check are tested against).
    naive_wakeups: bool,
    /// Queued jobs waiting only on their own namespace's cap, by namespace.
    ns_capacity_waiters: HashMap<String, std::collections::BTreeSet<QueueKey>>,
    /// Queued jobs that time could help (waiting on a budget window, or unknown).
    budget_waiters: std::collections::BTreeSet<(i64, QueueKey)>,
    /// When each budget waiter's window frees enough (ms; i64::MIN: unknown, re-check).
    budget_wake: HashMap<QueueKey, i64>,
    /// Queued jobs' budgets and caps, for the quick re-check.
    quick_watch: HashMap<QueueKey, QuickWatch>,
    /// Jobs with a quick watch, by their lineage and base lineage.
    quick_by_lineage: HashMap<String, HashSet<QueueKey>>,
    crossings: Vec<Crossing>,
    /// Tiers crossed, by lineage: (policy, tier).
    crossed: HashMap<String, Vec<(String, String)>>,
    next_seq: u64,
    /// Earliest time a throttled job's budget window frees.
    wakeups: std::collections::BTreeSet<i64>,
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

/// The hash approvals bind to and resubmissions are compared by when the
/// caller gives none: `content_hash` of (model, accelerator, count,
/// maxDuration, priority), its canonical bytes written directly
/// (tests/ledger_canonical.rs). Exposed so a caller can compute it ahead,
/// e.g. on another thread.
pub fn spec_hash(req: &JobRequest) -> String {
    spec_hash_of(
        &req.model,
        &req.accelerator,
        req.count,
        req.max_duration,
        req.priority,
    )
}

/// [`spec_hash`] from the parts of a spec it covers.
pub fn spec_hash_of(
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
/// empty input, as before.
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
            queue: std::collections::BTreeSet::new(),
            capacity_waiters: Default::default(),
            cap_entries: HashMap::new(),
            cluster_waiters: Waiters::default(),
            ns_waiters: HashMap::new(),
            cap_by_lineage: HashMap::new(),
            cap_ns_budget: HashMap::new(),
            naive_wakeups: false,
            ns_capacity_waiters: HashMap::new(),
            budget_waiters: Default::default(),
            budget_wake: HashMap::new(),
            quick_watch: HashMap::new(),
            quick_by_lineage: HashMap::new(),
            crossings: Vec::new(),
            crossed: HashMap::new(),
            next_seq: 0,
            wakeups: std::collections::BTreeSet::new(),
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
    ) -> Flop {
        let w = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        Flop(
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
        self.queue.len()
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

    /// Moves an ended job to a tombstone.
    fn bury(&mut self, seq: u64) {
        if let Some(j) = self.jobs.remove(&seq) {
            let JobState {
                request,
                phase,
                decision,
                ..
            } = j;
            let JobRequest { id, spec_hash, .. } = request;
            let key = (id.namespace, id.name);
            self.ids.remove(&key);
            let keep = phase == Phase::Rejected;
            self.ended.insert(
                key,
                Tombstone {
                    uid: id.uid,
                    spec_hash,
                    phase,
                    decision: if keep { decision.map(Box::new) } else { None },
                },
            );
        }
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
        let blocked =
            self.blocked_ahead((Reverse(job.request.priority), job.submitted_at, job.seq));
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

    /// The whole queue in order, each queued job with its 1-based position,
    /// in one O(n) walk (asking [`Self::queue_position`] per job is O(n²)).
    pub fn queue_positions(&self) -> impl Iterator<Item = (&JobId, u32)> + '_ {
        self.queue
            .iter()
            .filter_map(|qk| self.jobs.get(&qk.2).map(|j| &j.request.id))
            .zip(1u32..)
    }

    /// When a live (not yet ended) job was first submitted: the time that
    /// orders it in the queue after its priority.
    pub fn submitted_at(&self, id: &JobId) -> Option<Timestamp> {
        self.live(&key_of(id)).map(|j| j.submitted_at)
    }

    /// 1-based position of a queued job.
    pub fn queue_position(&self, id: &JobId) -> Option<u32> {
        let j = self.live(&key_of(id))?;
        if j.phase != Phase::Queued {
            return None;
        }
        let qk = (Reverse(j.request.priority), j.submitted_at, j.seq);
        u32::try_from(self.queue.range(..qk).count() + 1).ok()
    }

    /// Jobs waiting for approval.
    pub fn pending_approvals(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.phase == Phase::AwaitingApproval)
            .count()
    }

    /// The earliest future time at which a Tick could admit a throttled job.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.wakeups.iter().next().map(|t| from_ms(*t))
    }

    /// Policies currently loaded.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &ComputePolicySpec)> {
        self.policies.values().map(|p| (p.name.as_str(), &p.spec))
    }

    /// Rebuilds lineage totals, budget windows and threshold crossings from
    /// ledger records, in ledger order, after a restart. Load policies first
    /// (crossings are found against their tiers). Produces no new records.
    pub fn replay_ledger<'a>(&mut self, records: impl IntoIterator<Item = &'a LedgerRecord>) {
        let mut admitted_under: HashMap<JobId, Vec<String>> = HashMap::new();
        for r in records {
            match &r.event {
                LedgerEvent::Decided {
                    verdict: Verdict::Admit,
                    charged,
                    charged_lineages,
                    selected_by,
                    ..
                } => {
                    let lineages: Vec<String> = if charged_lineages.is_empty() {
                        r.lineage.iter().cloned().collect()
                    } else {
                        charged_lineages.clone()
                    };
                    if let Some(job) = &r.job {
                        self.charge(r.time, &job.namespace, &lineages, *charged);
                        self.record_crossings(r.time, &lineages, selected_by.as_deref());
                        admitted_under.insert(job.clone(), lineages);
                    }
                }
                other => {
                    let Some((accelerator_seconds, consumed)) = other.metered() else {
                        continue;
                    };
                    let lineages = r
                        .job
                        .as_ref()
                        .and_then(|j| admitted_under.get(j).cloned())
                        .unwrap_or_else(|| r.lineage.iter().cloned().collect());
                    for l in lineages {
                        let t = self.lineages.entry(l).or_default();
                        t.consumed += consumed;
                        t.accelerator_seconds += accelerator_seconds;
                    }
                }
            }
        }
    }

    /// Re-registers a job the cluster already knows (after a restart), in the
    /// phase its status records, without deciding it again or emitting records.
    /// Admitted and running jobs take their capacity back; queued jobs their
    /// place (by priority, then `submitted_at`).
    pub fn restore_job(&mut self, request: JobRequest, restored: RestoredJob) {
        let key = key_of(&request.id);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut job = JobState {
            request,
            phase: restored.phase,
            submitted_at: restored.submitted_at,
            seq,
            decision: restored.decision,
            approvals: restored.approvals,
            admitted: None,
            started_at: restored.started_at,
            throttled_on: Vec::new(),
            throttled_strict: false,
        };
        if job.phase.holds_capacity() {
            let projection = job
                .decision
                .as_ref()
                .and_then(|d| d.projection.clone())
                .or_else(|| project(&self.base_catalog, &job.request, None).ok());
            let rate = projection.as_ref().map_or(FlopPerSecond::ZERO, |p| p.rate);
            let mut lineages = vec![job.request.lineage().to_string()];
            lineages.extend(job.request.base_lineage().map(str::to_string));
            let accelerators = u64::from(job.request.count);
            self.occupy(&job.request.id.namespace, rate, accelerators);
            let basis = self
                .selecting(&job.request)
                .iter()
                .map(|p| p.spec.estimate.basis)
                .next()
                .unwrap_or_default();
            job.admitted = Some(Admission {
                rate,
                accelerators,
                projection,
                basis,
                lineages,
            });
        }
        if let Some(old) = self.ids.get(&key).and_then(|s| self.jobs.get(s)).cloned() {
            self.unqueue(&old);
            if old.phase.holds_capacity() {
                self.release(&old);
            }
            self.jobs.remove(&old.seq);
        }
        let queued = (job.phase == Phase::Queued).then_some((
            Reverse(job.request.priority),
            job.submitted_at,
            job.seq,
        ));
        self.ids.insert(key, seq);
        self.jobs.insert(seq, job);
        if let Some(qk) = queued {
            self.queue.insert(qk);
            self.set_waits(qk, &[], None, Watch::ALWAYS);
        }
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
        let blocked = self.blocked_ahead((Reverse(req.priority), now, self.next_seq));
        self.evaluate(now, req, &[], &blocked).decision
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
            Event::UpsertPolicy(p) => {
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
                self.policies.insert(
                    p.name.clone(),
                    CompiledPolicy {
                        name: p.name.clone(),
                        spec: p.spec,
                        catalog,
                    },
                );
                step.emit(self.keep_records, || policy_record(now, &p.name, hash));
                self.reevaluate_held(now, &mut step);
            }
            Event::RemovePolicy { name } => {
                if self.policies.remove(&name).is_some() {
                    step.emit(self.keep_records, || {
                        policy_record(now, &name, String::new())
                    });
                    self.reevaluate_held(now, &mut step);
                }
            }
            Event::Tick => {
                self.wakeups = self.wakeups.split_off(&(ms(now) + 1));
                self.drain_queue(now, &mut step, Trigger::Time);
                self.prune(now);
            }
        }
        Ok(step)
    }

    fn prune(&mut self, now: Timestamp) {
        // Pruning walks every series; once a simulated day is plenty.
        if ms(now).saturating_sub(self.last_prune) < 86_400_000 {
            return;
        }
        self.last_prune = ms(now);
        let horizon = ms(now).saturating_sub(self.retention_ms);
        for s in self.windows.iter_mut().flat_map(|m| m.values_mut()) {
            s.prune_before(horizon);
        }
    }

    fn selecting(&self, req: &JobRequest) -> Vec<&CompiledPolicy> {
        self.policies
            .values()
            .filter(|p| p.spec.namespace_selector.matches(&req.namespace_labels))
            .collect()
    }

    fn submit(
        &mut self,
        now: Timestamp,
        mut req: JobRequest,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        if req.spec_hash.is_empty() {
            req.spec_hash = spec_hash(&req);
        }
        let key = key_of(&req.id);
        if let Some(t) = self.ended.get(&key) {
            if t.uid == req.id.uid {
                if t.spec_hash == req.spec_hash {
                    return Ok(()); // idempotent resubmission of an ended job
                }
                return Err(EngineError::Immutable {
                    job: req.id.to_string(),
                    phase: t.phase,
                });
            }
            self.ended.remove(&key); // a new incarnation
        }
        if let Some(existing) = self.live(&key) {
            let same_incarnation = existing.request.id.uid == req.id.uid;
            if same_incarnation && existing.request.spec_hash == req.spec_hash {
                return Ok(()); // idempotent resubmission
            }
            if same_incarnation && (existing.phase.holds_capacity() || existing.phase.is_terminal())
            {
                return Err(EngineError::Immutable {
                    job: req.id.to_string(),
                    phase: existing.phase,
                });
            }
            // A spec change before admission (or a new incarnation): forget the
            // old hold, its approvals and its queue place.
            let old = existing.clone();
            self.unqueue(&old);
            if !same_incarnation && old.phase.holds_capacity() {
                self.release(&old);
            }
            self.jobs.remove(&old.seq);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(key, seq);
        self.jobs.insert(
            seq,
            JobState {
                request: req,
                phase: Phase::Pending,
                submitted_at: now,
                seq,
                decision: None,
                approvals: Vec::new(),
                admitted: None,
                started_at: None,
                throttled_on: Vec::new(),
                throttled_strict: false,
            },
        );
        self.decide(now, seq, step, true);
        Ok(())
    }

    fn approve(
        &mut self,
        now: Timestamp,
        id: &JobId,
        approver: Principal,
        spec_hash: &str,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        let seq = self
            .ids
            .get(&key_of(id))
            .copied()
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        let job = self
            .jobs
            .get(&seq)
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        let err = |reason: String| EngineError::Approval {
            job: id.to_string(),
            reason,
        };
        if let Some(sub) = &job.request.submitter
            && sub.user == approver.user
        {
            return Err(err(format!(
                "spec.approver: {:?} submitted this job and cannot approve it (separation of duties)",
                approver.user
            )));
        }
        if !spec_hash.is_empty() && spec_hash != job.request.spec_hash {
            return Err(err(format!(
                "spec.specHash: {spec_hash} does not match the job's current spec {}; the spec changed after it was reviewed",
                job.request.spec_hash
            )));
        }
        if job.approvals.iter().any(|a| a.user == approver.user) {
            return Ok(());
        }
        if let Some(need) = job.decision.as_ref().and_then(|d| d.approvals.as_ref())
            && !need.groups.is_empty()
            && !approver.groups.iter().any(|g| need.groups.contains(g))
        {
            return Err(err(format!(
                "spec.approver: {:?} is in none of the groups this escalation requires ({})",
                approver.user,
                need.groups.join(", ")
            )));
        }
        step.emit(self.keep_records, || {
            let mut rec = self.record(now, &job.request, &approver.user);
            rec.event = LedgerEvent::Approved {
                approver: approver.user.clone(),
                groups: approver.groups.clone(),
                spec_hash: job.request.spec_hash.clone(),
            };
            rec
        });
        let held = job.phase == Phase::AwaitingApproval;
        let qk = (Reverse(job.request.priority), job.submitted_at, job.seq);
        if let Some(j) = self.jobs.get_mut(&seq) {
            j.approvals.push(approver);
        }
        // Approvals can lift an escalation: re-evaluate it at the next finish.
        self.mark_dirty(&qk);
        if held {
            self.decide(now, seq, step, false);
        }
        Ok(())
    }

    fn withdraw(&mut self, now: Timestamp, id: &JobId, approver: &str, step: &mut Step) {
        let Some(&seq) = self.ids.get(&key_of(id)) else {
            return; // ended or unknown: nothing counts any more
        };
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let pending = matches!(
            job.phase,
            Phase::Pending | Phase::Queued | Phase::AwaitingApproval
        );
        if !pending || !job.approvals.iter().any(|a| a.user == approver) {
            return;
        }
        step.emit(self.keep_records, || {
            let mut rec = self.record(now, &job.request, OPERATOR_ACTOR);
            rec.event = LedgerEvent::ApprovalWithdrawn {
                approver: approver.to_string(),
            };
            rec
        });
        if let Some(j) = self.jobs.get_mut(&seq) {
            j.approvals.retain(|a| a.user != approver);
        }
        self.decide(now, seq, step, false);
    }

    /// The approvals counted for a job not yet ended (who approved, in order).
    pub fn approvals(&self, id: &JobId) -> &[Principal] {
        self.live(&key_of(id))
            .map_or(&[], |j| j.approvals.as_slice())
    }

    fn start(&mut self, now: Timestamp, id: &JobId, step: &mut Step) -> Result<(), EngineError> {
        let job = self
            .ids
            .get(&key_of(id))
            .and_then(|seq| self.jobs.get_mut(seq))
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        if job.phase != Phase::Admitted {
            return Ok(());
        }
        job.phase = Phase::Running;
        job.started_at = Some(now);
        let catalog = &self.base_catalog;
        step.emit(self.keep_records, || {
            let mut rec = record_of(catalog, now, &job.request, OPERATOR_ACTOR);
            rec.event = LedgerEvent::Started;
            rec
        });
        Ok(())
    }

    /// Meters a job that held capacity and releases it.
    fn meter(&mut self, now: Timestamp, seq: u64) -> (AcceleratorSeconds, Flop) {
        let Some(job) = self.jobs.get(&seq) else {
            return (AcceleratorSeconds::ZERO, Flop::ZERO);
        };
        let elapsed = match job.started_at {
            Some(s) => Seconds((ms(now) - ms(s)).max(0) as f64 / 1000.0),
            None => Seconds::ZERO,
        };
        let acc = AcceleratorSeconds::of(job.request.count, elapsed);
        let flop = job
            .admitted
            .as_ref()
            .and_then(|a| a.projection.as_ref().map(|p| p.consumed(elapsed, a.basis)))
            .unwrap_or(Flop::ZERO);
        let mut meter_onto = |l: &str| {
            let t = match self.lineages.get_mut(l) {
                Some(t) => t,
                None => self.lineages.entry(l.to_string()).or_default(),
            };
            t.consumed += flop;
            t.accelerator_seconds += acc;
        };
        match &job.admitted {
            Some(a) if !a.lineages.is_empty() => a.lineages.iter().for_each(|l| meter_onto(l)),
            _ => meter_onto(job.request.lineage()),
        }
        if let Some(a) = &job.admitted {
            let (rate, accelerators) = (a.rate, a.accelerators);
            let namespace = &job.request.id.namespace;
            release_usage(
                &mut self.cluster_usage,
                &mut self.ns_usage,
                namespace,
                rate,
                accelerators,
            );
        }
        (acc, flop)
    }

    /// Takes capacity for an admitted job; [`Self::release`] gives it back.
    fn occupy(&mut self, namespace: &str, rate: FlopPerSecond, accelerators: u64) {
        self.cluster_usage.rate += rate;
        self.cluster_usage.accelerators += accelerators;
        let u = match self.ns_usage.get_mut(namespace) {
            Some(u) => u,
            None => self.ns_usage.entry(namespace.to_string()).or_default(),
        };
        u.rate += rate;
        u.accelerators += accelerators;
    }

    fn release(&mut self, job: &JobState) {
        if let Some(a) = &job.admitted {
            release_usage(
                &mut self.cluster_usage,
                &mut self.ns_usage,
                &job.request.id.namespace,
                a.rate,
                a.accelerators,
            );
        }
    }

    /// Ends a job at `now`, metering its run up to `ended_at` (≤ `now`).
    fn finish(
        &mut self,
        now: Timestamp,
        ended_at: Timestamp,
        id: &JobId,
        outcome: Outcome,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        let seq = self
            .ids
            .get(&key_of(id))
            .copied()
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        let phase = self
            .jobs
            .get(&seq)
            .map(|j| j.phase)
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        if !phase.holds_capacity() {
            return Ok(());
        }
        let (acc, flop) = self.meter(ended_at, seq);
        let Some(job) = self.jobs.get_mut(&seq) else {
            return Ok(());
        };
        job.phase = match outcome {
            Outcome::Succeeded => Phase::Succeeded,
            Outcome::Failed | Outcome::DeadlineExceeded => Phase::Failed,
        };
        job.admitted = None;
        let catalog = &self.base_catalog;
        step.emit(self.keep_records, || {
            let mut rec = record_of(catalog, now, &job.request, OPERATOR_ACTOR);
            rec.event = match outcome {
                Outcome::DeadlineExceeded => LedgerEvent::DeadlineExceeded {
                    accelerator_seconds: acc,
                    consumed: flop,
                },
                o => LedgerEvent::Finished {
                    succeeded: o == Outcome::Succeeded,
                    accelerator_seconds: acc,
                    consumed: flop,
                },
            };
            rec
        });
        self.bury(seq);
        Ok(())
    }

    fn delete(&mut self, now: Timestamp, id: &JobId, step: &mut Step) -> Result<(), EngineError> {
        let key = key_of(id);
        let Some(job) = self.live(&key).cloned() else {
            if let Some(t) = self.ended.remove(&key) {
                // An ended job's TrainingJob goes: nothing left to meter, but the
                // deletion is on the books like any other.
                step.emit(self.keep_records, || {
                    let mut rec = policy_record(now, "", String::new());
                    rec.job = Some(JobId {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        uid: t.uid,
                    });
                    rec.event = LedgerEvent::Deleted {
                        accelerator_seconds: AcceleratorSeconds::ZERO,
                        consumed: Flop::ZERO,
                    };
                    rec
                });
                return Ok(());
            }
            return Err(EngineError::UnknownJob(id.to_string()));
        };
        let (acc, flop) = if job.phase.holds_capacity() {
            self.meter(now, job.seq)
        } else {
            (AcceleratorSeconds::ZERO, Flop::ZERO)
        };
        self.unqueue(&job);
        self.jobs.remove(&job.seq);
        self.ids.remove(&key);
        step.emit(self.keep_records, || {
            let mut rec = self.record(now, &job.request, OPERATOR_ACTOR);
            rec.event = LedgerEvent::Deleted {
                accelerator_seconds: acc,
                consumed: flop,
            };
            rec
        });
        Ok(())
    }

    fn dequeue(&mut self, qk: &QueueKey) {
        self.unfile_ns_waiter(qk);
        self.queue.remove(qk);
        self.capacity_waiters.remove(qk);
        self.unindex_cap(qk);
        self.unfile_budget_waiter(qk);
        self.forget_quick(qk);
    }

    /// Files a queued job under what could free it.
    fn set_waits(
        &mut self,
        qk: QueueKey,
        throttled_on: &[String],
        wake_at: Option<i64>,
        watch: Watch,
    ) {
        let on_budget = throttled_on.iter().any(|c| c.starts_with("budget/"));
        let on_other = throttled_on.iter().any(|c| !c.starts_with("budget/"));
        let unknown = throttled_on.is_empty();
        // Re-queued on the same constraints with the same slack: its place in
        // the wake-up index stands (only its dirty mark goes, as refiling does).
        let cap_watch = if unknown { &Watch::ALWAYS } else { &watch };
        let same_cap = (on_other || unknown)
            && self
                .queued(&qk)
                .is_some_and(|j| j.throttled_on.as_slice() == throttled_on)
            && self.cap_entries.get(&qk).is_some_and(|e| {
                e.cluster_slack == cap_watch.cluster_slack
                    && e.ns_slack == cap_watch.ns_slack
                    && e.ns_budgets == cap_watch.ns_budgets
            });
        if same_cap {
            if let Some(e) = self.cap_entries.get(&qk) {
                if e.ns_home {
                    if let Some(w) = self.ns_waiters.get_mut(&e.namespace) {
                        w.dirty.remove(&qk);
                    }
                } else {
                    self.cluster_waiters.dirty.remove(&qk);
                }
            }
        } else {
            self.capacity_waiters.remove(&qk);
            self.unindex_cap(&qk);
            self.unfile_ns_waiter(&qk);
        }
        if (on_other || unknown) && !same_cap {
            // Waiting only on its own namespace's cap: only that namespace's
            // finishing jobs can help it.
            let home = self
                .jobs
                .get(&qk.2)
                .filter(|j| j.phase == Phase::Queued)
                .map(|j| &j.request.id.namespace);
            let only_ns = home.is_some_and(|ns| {
                !unknown
                    && throttled_on
                        .iter()
                        .filter(|c| !c.starts_with("budget/"))
                        .all(|c| {
                            c.starts_with("capacity/")
                                && c.strip_suffix(ns.as_str())
                                    .is_some_and(|c| c.ends_with("namespace "))
                        })
            });
            match home {
                Some(ns) if only_ns => {
                    match self.ns_capacity_waiters.get_mut(ns.as_str()) {
                        Some(set) => {
                            set.insert(qk);
                        }
                        None => {
                            self.ns_capacity_waiters
                                .insert(ns.clone(), std::collections::BTreeSet::from([qk]));
                        }
                    }
                    self.index_cap(qk, watch, true);
                }
                _ => {
                    self.capacity_waiters.insert(qk);
                    self.index_cap(qk, if unknown { Watch::ALWAYS } else { watch }, false);
                }
            }
        }
        if on_budget || unknown {
            // Due when its window frees; unknown: at every tick.
            let w = if unknown {
                i64::MIN
            } else {
                wake_at.unwrap_or(i64::MAX)
            };
            self.file_budget_waiter(qk, w);
        } else {
            self.unfile_budget_waiter(&qk);
        }
    }

    /// Files (or refiles) a budget waiter to be due at `w` (ms).
    fn file_budget_waiter(&mut self, qk: QueueKey, w: i64) {
        if let Some(old) = self.budget_wake.insert(qk, w) {
            self.budget_waiters.remove(&(old, qk));
        }
        self.budget_waiters.insert((w, qk));
    }

    fn unfile_budget_waiter(&mut self, qk: &QueueKey) {
        if let Some(w) = self.budget_wake.remove(qk) {
            self.budget_waiters.remove(&(w, *qk));
        }
    }

    /// Keeps (or forgets) what a queued job was just evaluated against, for
    /// the quick re-check.
    fn watch_quick(&mut self, qk: QueueKey, quick: Option<Vec<QuickItem>>) {
        self.forget_quick(&qk);
        let Some(items) = quick else {
            return;
        };
        let Some(job) = self.queued(&qk) else {
            return;
        };
        let lineages: Vec<String> = std::iter::once(job.request.lineage())
            .chain(job.request.base_lineage())
            .map(str::to_string)
            .collect();
        for l in &lineages {
            add_to(&mut self.quick_by_lineage, l, qk);
        }
        let cluster_budget = items.iter().any(|i| {
            matches!(
                i.test,
                QuickTest::Budget { scope, .. } if scope == scope_index(BudgetScope::Cluster)
            )
        });
        self.quick_watch.insert(
            qk,
            QuickWatch {
                items,
                lineages,
                cluster_budget,
            },
        );
    }

    /// Drops a job's quick watch, if any.
    fn forget_quick(&mut self, qk: &QueueKey) {
        let Some(w) = self.quick_watch.remove(qk) else {
            return;
        };
        for l in &w.lineages {
            if let Some(set) = self.quick_by_lineage.get_mut(l.as_str()) {
                set.remove(qk);
                if set.is_empty() {
                    self.quick_by_lineage.remove(l.as_str());
                }
            }
        }
    }

    /// Files a capacity waiter in the wake-up index.
    fn index_cap(&mut self, qk: QueueKey, watch: Watch, ns_home: bool) {
        let Some(job) = self.queued(&qk) else {
            return;
        };
        let mut lineages = vec![job.request.lineage().to_string()];
        lineages.extend(job.request.base_lineage().map(str::to_string));
        let namespace = job.request.id.namespace.clone();
        for l in &lineages {
            add_to(&mut self.cap_by_lineage, l, qk);
        }
        if !watch.ns_budgets.is_empty() {
            add_to(&mut self.cap_ns_budget, &namespace, qk);
        }
        if ns_home {
            if !self.ns_waiters.contains_key(&namespace) {
                self.ns_waiters
                    .insert(namespace.clone(), Waiters::default());
            }
            if let Some(w) = self.ns_waiters.get_mut(&namespace) {
                w.by_slack.insert((watch.ns_slack, qk));
                w.by_cluster_slack.insert((watch.cluster_slack, qk));
            }
        } else {
            self.cluster_waiters
                .by_slack
                .insert((watch.cluster_slack, qk));
        }
        self.cap_entries.insert(
            qk,
            CapEntry {
                ns_home,
                cluster_slack: watch.cluster_slack,
                ns_slack: watch.ns_slack,
                namespace,
                lineages,
                ns_budgets: watch.ns_budgets,
            },
        );
    }

    fn unindex_cap(&mut self, qk: &QueueKey) {
        let Some(e) = self.cap_entries.remove(qk) else {
            return;
        };
        if e.ns_home {
            if let Some(w) = self.ns_waiters.get_mut(&e.namespace) {
                w.by_slack.remove(&(e.ns_slack, *qk));
                w.by_cluster_slack.remove(&(e.cluster_slack, *qk));
                w.dirty.remove(qk);
                if w.is_empty() {
                    self.ns_waiters.remove(&e.namespace);
                }
            }
        } else {
            self.cluster_waiters
                .by_slack
                .remove(&(e.cluster_slack, *qk));
            self.cluster_waiters.dirty.remove(qk);
        }
        for l in &e.lineages {
            if let Some(set) = self.cap_by_lineage.get_mut(l) {
                set.remove(qk);
                if set.is_empty() {
                    self.cap_by_lineage.remove(l);
                }
            }
        }
        if !e.ns_budgets.is_empty()
            && let Some(set) = self.cap_ns_budget.get_mut(&e.namespace)
        {
            set.remove(qk);
            if set.is_empty() {
                self.cap_ns_budget.remove(&e.namespace);
            }
        }
    }

    /// Marks a capacity waiter for re-evaluation at the next finish that
    /// re-evaluates its kind of waiters.
    fn mark_dirty(&mut self, qk: &QueueKey) {
        let Some(e) = self.cap_entries.get(qk) else {
            return;
        };
        if e.ns_home {
            if let Some(w) = self.ns_waiters.get_mut(&e.namespace) {
                w.dirty.insert(*qk);
            }
        } else {
            self.cluster_waiters.dirty.insert(*qk);
        }
    }

    /// Marks the capacity waiters a charge could affect: those of the charged
    /// lineages, and those whose namespace budget it fills past their need.
    fn dirty_after_charge(&mut self, now: i64, namespace: &str, lineages: &[String]) {
        let mut dirty: Vec<QueueKey> = Vec::new();
        for l in lineages {
            if let Some(set) = self.cap_by_lineage.get(l) {
                dirty.extend(set.iter().copied());
            }
        }
        if let Some(set) = self.cap_ns_budget.get(namespace)
            && let Some(series) = self.windows[scope_index(BudgetScope::Namespace)].get(namespace)
        {
            for qk in set {
                let Some(e) = self.cap_entries.get(qk) else {
                    continue;
                };
                // The same test as `evaluate`'s, so the outcome flips exactly here.
                if e.ns_budgets
                    .iter()
                    .any(|(w, limit, gov)| series.window_sum(now, *w) + gov > *limit)
                {
                    dirty.push(*qk);
                }
            }
        }
        for qk in dirty {
            self.mark_dirty(&qk);
        }
    }

    /// Whether to build ledger records (the default). Without them each
    /// [`Step`] only counts the records it would have held
    /// (`records_not_kept`); decisions and state are the same either way.
    pub fn keep_records(&mut self, keep: bool) {
        self.keep_records = keep;
    }

    /// Whether to word each decision's one-line reason and warnings (the
    /// default). Without, `Decision::reason` and `warnings` are left empty:
    /// for a caller that shows
    /// none (a simulation printing only its summary); verdicts, rules and
    /// numbers are the same either way. Records imply reasons: with
    /// [`Engine::keep_records`] on, the ledger's reasons are always worded.
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

    fn unfile_ns_waiter(&mut self, qk: &QueueKey) {
        if let Some(j) = self.jobs.get(&qk.2)
            && let Some(set) = self.ns_capacity_waiters.get_mut(&j.request.id.namespace)
        {
            set.remove(qk);
            if set.is_empty() {
                self.ns_capacity_waiters.remove(&j.request.id.namespace);
            }
        }
    }

    fn any_strict(&self) -> bool {
        self.policies
            .values()
            .any(|p| p.spec.queueing == Queueing::StrictFIFO)
    }

    fn unqueue(&mut self, job: &JobState) {
        if job.phase == Phase::Queued {
            self.dequeue(&(Reverse(job.request.priority), job.submitted_at, job.seq));
        }
    }

    fn record(&self, now: Timestamp, req: &JobRequest, actor: &str) -> LedgerRecord {
        record_of(&self.base_catalog, now, req, actor)
    }

    /// Re-evaluates everything held: queued jobs and jobs awaiting approval.
    fn reevaluate_held(&mut self, now: Timestamp, step: &mut Step) {
        let mut held: Vec<(Timestamp, u64)> = self
            .jobs
            .values()
            .filter(|j| j.phase == Phase::AwaitingApproval)
            .map(|j| (j.submitted_at, j.seq))
            .collect();
        held.sort();
        for (_, seq) in held {
            self.decide(now, seq, step, false);
        }
        self.drain_queue(now, step, Trigger::All);
    }

    /// Walks the queue in order and admits what now fits.
    fn drain_queue(&mut self, now: Timestamp, step: &mut Step, trigger: Trigger<'_>) {
        if self.queue.is_empty() {
            return;
        }
        let mut blocked: HashSet<String> = HashSet::new();
        // Without StrictFIFO, nobody blocks anybody: scan only the jobs the
        // trigger could help. With it, every queued job ahead matters.
        let strict = self.any_strict();
        let mut qks: Vec<QueueKey> = match (trigger, strict) {
            (Trigger::Capacity(ns), false) if !self.naive_wakeups => {
                return self.drain_capacity(now, step, ns);
            }
            (Trigger::Capacity(ns), false) => {
                let mut due: Vec<QueueKey> = self.capacity_waiters.iter().copied().collect();
                if let Some(set) = self.ns_capacity_waiters.get(ns) {
                    due.extend(set.iter().copied());
                    due.sort();
                }
                due
            }
            (Trigger::Time, false) => {
                // Only jobs whose window has freed by now; admitted in queue order.
                let now_ms = ms(now);
                let mut due: Vec<QueueKey> = self
                    .budget_waiters
                    .iter()
                    .take_while(|(w, _)| *w <= now_ms)
                    .map(|(_, qk)| *qk)
                    .collect();
                due.sort();
                due
            }
            _ => self.queue.iter().copied().collect(),
        };
        for qk in std::mem::take(&mut qks) {
            self.visit(now, step, trigger, qk, &mut blocked);
        }
    }

    /// Re-evaluates, in queue order, the queued jobs a finish in `ns` could
    /// help: cluster-cap waiters that could fit the freed capacity, those
    /// whose other inputs changed (including by admissions made during this
    /// walk), those whose budget window has freed, and `ns`'s own waiters.
    /// Without StrictFIFO nobody blocks anybody, so skipping the others
    /// changes no decision: re-evaluating them would queue them again on the
    /// same constraints.
    fn drain_capacity(&mut self, now: Timestamp, step: &mut Step, ns: &str) {
        use std::ops::Bound::{Excluded, Unbounded};
        let now_ms = ms(now);
        let acc = |u: Usage| i64::try_from(u.accelerators).unwrap_or(i64::MAX);
        // Those whose budget window has freed.
        let own = self.ns_capacity_waiters.get(ns);
        let budget_due: std::collections::BTreeSet<QueueKey> = self
            .budget_waiters
            .iter()
            .take_while(|(w, _)| *w <= now_ms)
            .map(|(_, qk)| *qk)
            .filter(|qk| self.capacity_waiters.contains(qk) || own.is_some_and(|s| s.contains(qk)))
            .collect();
        let no_waiters = Waiters::default();
        let mut blocked = HashSet::new();
        let mut cursor: Option<QueueKey> = None;
        loop {
            // Usage only grows during the walk (admissions), so a waiter
            // passed over because it did not fit still does not fit.
            let cluster_used = acc(self.cluster_usage);
            let ns_used = acc(self.ns_usage.get(ns).copied().unwrap_or_default());
            let after = cursor.map_or(Unbounded, Excluded);
            let home = self.ns_waiters.get(ns).unwrap_or(&no_waiters);
            let next = [
                // Cluster-cap waiters that fit every Enforce cap at today's
                // usage (slack ≥ used), `ns`'s own that fit its caps, and
                // `ns`'s own that the cluster cap now bites (to be refiled).
                first_by_slack(
                    &self.cluster_waiters.by_slack,
                    cluster_used,
                    i64::MAX,
                    cursor,
                ),
                first_by_slack(&home.by_slack, ns_used, i64::MAX, cursor),
                first_by_slack(&home.by_cluster_slack, i64::MIN, cluster_used - 1, cursor),
                budget_due.range((after, Unbounded)).next().copied(),
                self.cluster_waiters
                    .dirty
                    .range((after, Unbounded))
                    .next()
                    .copied(),
                home.dirty.range((after, Unbounded)).next().copied(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(qk) = next else { break };
            cursor = Some(qk);
            self.visit(now, step, Trigger::Capacity(ns), qk, &mut blocked);
        }
    }

    /// For a queued job with a [`QuickWatch`] whose lineages' totals still
    /// stand: what evaluating it now would give while it stays throttled (the
    /// constraints that hold it back, as a bit per item of the watch; when a
    /// budget window frees enough for it; how to file it), from its budgets'
    /// windows and the current usage alone. `None`: nothing holds it back any more (or it has no quick
    /// watch, or its lineages were charged since): evaluate it.
    fn quick_check(&self, now: Timestamp, qk: QueueKey) -> Option<(u64, Option<i64>, Watch)> {
        let w = self.quick_watch.get(&qk)?;
        if w.items.len() > 64 {
            return None;
        }
        let job = self.queued(&qk)?;
        let namespace = job.request.id.namespace.as_str();
        let acc = |u: Usage| i64::try_from(u.accelerators).unwrap_or(i64::MAX);
        let cluster_used = acc(self.cluster_usage);
        let ns_used = acc(self.ns_usage.get(namespace).copied().unwrap_or_default());
        let now_ms = ms(now);
        let mut held = 0u64;
        let mut wake: Option<i64> = None;
        let mut watch = Watch::ALWAYS;
        for (i, item) in w.items.iter().enumerate() {
            match item.test {
                QuickTest::Budget {
                    scope,
                    window_ms,
                    limit,
                    governing,
                } => {
                    let scope_key = match scope {
                        0 => namespace,
                        1 => job.request.lineage(),
                        _ => "",
                    };
                    let series = self.windows[scope].get(scope_key);
                    let used = series.map_or(0.0, |s| s.window_sum(now_ms, window_ms));
                    // The same tests, wake-up and watch as `evaluate`'s.
                    if scope == 0 && governing <= limit && used + governing <= limit {
                        watch.ns_budgets.push((window_ms, limit, governing));
                    }
                    if used + governing > limit {
                        held |= 1 << i;
                        if let Some(f) =
                            series.and_then(|s| s.frees_at(window_ms, limit - governing))
                        {
                            wake = Some(wake.map_or(f, |x: i64| x.min(f)));
                        }
                    }
                }
                QuickTest::Cap { namespace, slack } => {
                    let used = if namespace {
                        watch.ns_slack = watch.ns_slack.min(slack);
                        ns_used
                    } else {
                        watch.cluster_slack = watch.cluster_slack.min(slack);
                        cluster_used
                    };
                    if used > slack {
                        held |= 1 << i;
                    }
                }
            }
        }
        if held == 0 {
            return None;
        }
        if w.cluster_budget {
            watch = Watch::ALWAYS;
        }
        Some((held, wake, watch))
    }

    /// Re-evaluates one queued job for `trigger`; admits it if it now fits.
    fn visit(
        &mut self,
        now: Timestamp,
        step: &mut Step,
        trigger: Trigger<'_>,
        qk: QueueKey,
        blocked: &mut HashSet<String>,
    ) {
        {
            let seq = qk.2;
            let Some(job) = self.queued(&qk) else {
                return;
            };
            // Freed capacity cannot help a job waiting only on a budget window,
            // and time passing cannot help one waiting only on capacity.
            let waits_on = |prefix: &str| {
                !job.throttled_on.is_empty()
                    && job.throttled_on.iter().all(|c| c.starts_with(prefix))
            };
            let hopeless = match trigger {
                Trigger::Capacity(_) => waits_on("budget/"),
                Trigger::Time => waits_on("capacity/"),
                Trigger::All => false,
            };
            if hopeless {
                if job.throttled_strict {
                    blocked.extend(job.throttled_on.iter().cloned());
                }
                return;
            }
            if trigger != Trigger::All
                && !job.throttled_strict
                && !self.naive_wakeups
                && let Some((held, wake_at, watch)) = self.quick_check(now, qk)
            {
                // Still held back by a budget or a cap, and nothing else that
                // could change its verdict moved: refile it on what holds it
                // now, as evaluating it would (its reason is re-worded when
                // shown: `refresh_reason`).
                if let Some(w) = wake_at {
                    self.wakeups.insert(w);
                }
                let Some(items) = self.quick_watch.get(&qk).map(|w| &w.items) else {
                    return;
                };
                let holding = || {
                    items
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| held & (1 << i) != 0)
                        .map(|(_, item)| &item.constraint)
                };
                let current = self.jobs.get(&seq).map(|j| &j.throttled_on);
                let budgets_as_before = current.is_some_and(|on| {
                    holding().eq(on.iter()) && on.iter().all(|c| c.starts_with("budget/"))
                });
                if budgets_as_before {
                    // Held by the same budgets only: what `set_waits` would do
                    // comes down to its new wake-up.
                    self.file_budget_waiter(qk, wake_at.unwrap_or(i64::MAX));
                    return;
                }
                let held: Vec<String> = holding().cloned().collect();
                self.set_waits(qk, &held, wake_at, watch);
                if let Some(j) = self.jobs.get_mut(&seq) {
                    j.throttled_on = held;
                }
                return;
            }
            let mut eval = self.evaluate(now, &job.request, &job.approvals, blocked);
            if eval.decision.verdict == Verdict::Throttle {
                if eval.strict {
                    blocked.extend(eval.throttled_on.iter().cloned());
                }
                if let Some(w) = eval.wake_at {
                    self.wakeups.insert(w);
                }
                // Still waiting: keep the place, refresh the reason quietly.
                let watch = std::mem::replace(&mut eval.watch, Watch::ALWAYS);
                self.set_waits(qk, &eval.throttled_on, eval.wake_at, watch);
                self.watch_quick(qk, eval.quick.take());
                if let Some(j) = self.jobs.get_mut(&seq) {
                    j.decision = Some(eval.decision);
                    j.throttled_on = eval.throttled_on;
                    j.throttled_strict = eval.strict;
                }
                return;
            }
            self.dequeue(&qk);
            self.commit(now, seq, eval, step, false);
        }
    }

    /// Evaluates a job and applies the verdict.
    fn decide(&mut self, now: Timestamp, seq: u64, step: &mut Step, fresh: bool) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let blocked =
            self.blocked_ahead((Reverse(job.request.priority), job.submitted_at, job.seq));
        let eval = self.evaluate(now, &job.request, &job.approvals, &blocked);
        self.commit(now, seq, eval, step, fresh);
    }

    /// Constraints blocked by queued jobs ahead of `job` (StrictFIFO).
    fn blocked_ahead(&self, qk: QueueKey) -> HashSet<String> {
        let mut out = HashSet::new();
        if self.queue.is_empty() || !self.any_strict() {
            return out;
        }
        for other in self.queue.range(..qk) {
            if let Some(o) = self.jobs.get(&other.2) {
                out.extend(o.throttled_on.iter().cloned());
            }
        }
        out
    }

    fn commit(&mut self, now: Timestamp, seq: u64, eval: Evaluation, step: &mut Step, fresh: bool) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let previous = job.decision.as_ref().map(|d| d.verdict);
        let (priority, count) = (job.request.priority, job.request.count);
        let namespace = job.request.id.namespace.clone();
        let mut decision = eval.decision;
        let phase = match decision.verdict {
            Verdict::Admit => Phase::Admitted,
            Verdict::Throttle => Phase::Queued,
            Verdict::Escalate => Phase::AwaitingApproval,
            Verdict::Reject => Phase::Rejected,
        };
        let was_queued = job.phase == Phase::Queued;
        let qk = (Reverse(priority), job.submitted_at, job.seq);
        if phase == Phase::Queued {
            if !was_queued {
                self.queue.insert(qk);
            }
            // Queued from here on (`queued` finds it by its phase).
            if let Some(j) = self.jobs.get_mut(&seq) {
                j.phase = Phase::Queued;
            }
            self.set_waits(qk, &eval.throttled_on, eval.wake_at, eval.watch.clone());
            self.watch_quick(qk, eval.quick.clone());
            decision.queue_position = u32::try_from(self.queue.range(..qk).count() + 1).ok();
            if let Some(w) = eval.wake_at {
                self.wakeups.insert(w);
            }
        } else if was_queued {
            self.dequeue(&qk);
        }
        let charged = if phase == Phase::Admitted {
            eval.charge
        } else {
            Flop::ZERO
        };
        if phase == Phase::Admitted {
            self.charge(now, &namespace, &eval.charged_lineages, charged);
            self.occupy(&namespace, eval.rate, u64::from(count));
        }
        let changed = fresh || previous != Some(decision.verdict);
        // Names of the policies that selected the job: for the ledger entry
        // and for the crossings an admission causes (computed once).
        let req = match self.jobs.get(&seq) {
            Some(j) => &j.request,
            None => return,
        };
        // An admission crosses a tier only now and then: the names are not
        // needed otherwise unless a ledger entry records them.
        let crossing = phase == Phase::Admitted && self.may_cross(&eval.charged_lineages);
        let selected: Vec<String> = if (changed && self.keep_records) || crossing {
            self.selecting(req).iter().map(|p| p.name.clone()).collect()
        } else {
            Vec::new()
        };
        if changed {
            step.emit(self.keep_records, || {
                let mut rec = self.record(now, req, OPERATOR_ACTOR);
                rec.event = LedgerEvent::Decided {
                    verdict: decision.verdict,
                    enforced_verdict: decision.enforced_verdict,
                    mode: decision.mode,
                    policy: decision.policy.clone(),
                    rule: decision.rule.clone(),
                    tier: decision.tier.clone(),
                    reason: decision.reason.clone(),
                    projection: decision.projection.clone(),
                    governing: decision.governing,
                    charged,
                    charged_lineages: if charged.0 > 0.0 {
                        eval.charged_lineages.clone()
                    } else {
                        Vec::new()
                    },
                    selected_by: Some(selected.clone()),
                };
                rec
            });
            if step.decisions.capacity() == 0 {
                // Most steps decide one job: room for one (the first growth
                // would make room for four, ~1.5 KB).
                step.decisions.reserve_exact(1);
            }
            step.decisions.push((req.id.clone(), decision.clone()));
        }
        if crossing {
            self.record_crossings(now, &eval.charged_lineages, Some(&selected));
        }
        if let Some(j) = self.jobs.get_mut(&seq) {
            j.phase = phase;
            if phase == Phase::Admitted {
                j.admitted = Some(Admission {
                    rate: eval.rate,
                    accelerators: u64::from(count),
                    projection: decision.projection.clone(),
                    basis: eval.basis,
                    lineages: eval.charged_lineages.clone(),
                });
            }
            j.throttled_on = if phase == Phase::Queued {
                eval.throttled_on
            } else {
                Vec::new()
            };
            j.throttled_strict = eval.strict;
            j.decision = Some(decision);
        }
        if phase == Phase::Rejected {
            self.bury(seq);
        }
    }

    fn charge(&mut self, now: Timestamp, namespace: &String, lineages: &[String], flop: Flop) {
        if flop.0 <= 0.0 {
            return;
        }
        for (i, l) in lineages.iter().enumerate() {
            // The verdicts of jobs waiting on this lineage's totals may change.
            if let Some(set) = self.quick_by_lineage.get(l.as_str()) {
                let stale: Vec<QueueKey> = set.iter().copied().collect();
                for qk in stale {
                    self.forget_quick(&qk);
                }
            }
            let t = match self.lineages.get_mut(l.as_str()) {
                Some(t) => t,
                None => self.lineages.entry(l.clone()).or_default(),
            };
            t.charged += flop;
            if i == 0 {
                t.own_charged += flop;
            }
        }
        let t = ms(now);
        let cluster = String::new();

        let keys = std::iter::once((BudgetScope::Namespace, namespace))
            .chain(lineages.iter().map(|l| (BudgetScope::Model, l)))
            .chain(std::iter::once((BudgetScope::Cluster, &cluster)));
        for (scope, key) in keys {
            let i = scope_index(scope);
            let lengths = &self.window_lengths[i];
            match self.windows[i].get_mut(key.as_str()) {
                Some(series) => series.push(t, flop.0),
                None => {
                    let mut series = ChargeSeries::with_windows(lengths);
                    series.push(t, flop.0);
                    self.windows[i].insert(key.clone(), series);
                }
            }
        }
        self.dirty_after_charge(t, namespace, lineages);
    }

    /// Records the tier crossings an admission causes, by the rule reports
    /// use (`report::BodyBuilder`): policy P's tier is crossed on a lineage at
    /// the first charge, from a job P selected, after which the lineage's
    /// cumulative total (all charges) exceeds the threshold. `selected` names
    /// the policies that selected the job; `None` (ledger entries written
    /// before `selectedBy` existed) counts toward every policy.
    /// Whether some policy's tier is below one of these lineages' totals and
    /// not yet recorded as crossed on it (what [`Self::record_crossings`]
    /// would record, before asking which policies selected the job).
    fn may_cross(&self, lineages: &[String]) -> bool {
        lineages.iter().any(|l| {
            let total = self.lineage(l).charged;
            let done = self.crossed.get(l.as_str());
            self.policies.values().any(|p| {
                p.spec
                    .tiers
                    .iter()
                    .any(|t| newly_crossed(total, done, &p.name, t))
            })
        })
    }

    fn record_crossings(
        &mut self,
        now: Timestamp,
        lineages: &[String],
        selected: Option<&[String]>,
    ) {
        let mut new = Vec::new();
        for l in lineages {
            let total = self.lineage(l).charged;
            let done = self.crossed.get(l.as_str());
            for p in self.policies.values() {
                if !p.spec.tiers.iter().any(|t| total.0 > t.threshold.0)
                    || selected.is_some_and(|names| !names.contains(&p.name))
                {
                    continue; // below all its tiers, or not selecting the job
                }
                for t in &p.spec.tiers {
                    if !newly_crossed(total, done, &p.name, t) {
                        continue;
                    }
                    let id = (l.clone(), p.name.clone(), t.name.clone());
                    new.push((
                        id,
                        Crossing {
                            lineage: l.clone(),
                            policy: p.name.clone(),
                            tier: t.name.clone(),
                            threshold: t.threshold,
                            at: now,
                            notify_by: t.reporting.as_ref().and_then(|r| {
                                now.checked_add(SignedDuration::from_millis(
                                    r.notify_within.as_millis(),
                                ))
                                .ok()
                            }),
                            regulation: t.reporting.as_ref().map(|r| r.regulation.clone()),
                        },
                    ));
                }
            }
        }
        for (id, c) in new {
            self.crossed.entry(id.0).or_default().push((id.1, id.2));
            self.crossings.push(c);
        }
    }

    /// Evaluates `job` against every selecting policy (pure: no mutation).
    fn evaluate(
        &self,
        now: Timestamp,
        req: &JobRequest,
        approvals_given: &[Principal],
        blocked: &HashSet<String>,
    ) -> Evaluation {
        let policies = self.selecting(req);
        let lineage = req.lineage().to_string();
        let base = req.base_lineage().map(str::to_string);

        if policies.is_empty() {
            let projection = project(&self.base_catalog, req, None).ok();
            let governing = projection
                .as_ref()
                .map_or(Flop::ZERO, |p| p.governing(Basis::UpperBound));
            let mut lineages = vec![lineage.clone()];
            lineages.extend(base);
            let rate = projection.as_ref().map_or(FlopPerSecond::ZERO, |p| p.rate);
            return Evaluation {
                decision: Decision {
                    verdict: Verdict::Admit,
                    enforced_verdict: Verdict::Admit,
                    mode: Mode::Enforce,
                    policy: None,
                    rule: None,
                    reason: format!(
                        "Admitted: no ComputePolicy selects namespace {}; projected {} (upper bound) is recorded on lineage {}.",
                        req.id.namespace, governing, lineage
                    ),
                    warnings: Vec::new(),
                    lineage_total: self.lineage(&lineage).charged + governing,
                    projection,
                    governing,
                    tier: None,
                    approvals: None,
                    queue_position: None,
                },
                throttled_on: Vec::new(),
                strict: false,
                charge: governing,
                charged_lineages: lineages,
                rate,
                basis: Basis::UpperBound,
                wake_at: None,
                watch: Watch::ALWAYS,
                quick: None,
            };
        }

        struct PolicyResult<'a> {
            name: &'a str,
            mode: Mode,
            outcome: RuleOutcome,
            projection: Option<Projection>,
            governing: Flop,
            lineage_total: Flop,
            tier: Option<&'a str>,
            /// For the Admit sentence, written only if this policy decides.
            tier_lineage: &'a str,
            basis: Basis,
            approvals_lifted: bool,
        }
        // Sized exactly: a few hundred bytes each, so growing by doubling
        // would ask the allocator for a block past its fast per-thread cache.
        let mut results: Vec<PolicyResult> = Vec::with_capacity(policies.len());
        let mut constraints = Vec::new();
        let mut throttled_on = Vec::new();
        let mut strict = false;
        let mut charge = Flop::ZERO;
        let mut rate = FlopPerSecond::ZERO;
        let mut charged_lineages = vec![lineage.clone()];
        let mut basis_of_charge = Basis::UpperBound;
        let mut wake_at: Option<i64> = None;
        let mut watch = Watch::ALWAYS;
        let mut cluster_budget = false;
        // The quick re-check's tests, by policy (index into `policies`) and
        // budget (index into its budgets; `usize::MAX`: a cap).
        let mut quick: Option<Vec<(usize, usize, QuickTest)>> = Some(Vec::new());

        // The last projection, by the catalog and utilization it used: policies
        // without accelerator overrides share the base catalog.
        let mut projected: Option<(*const Catalog, Option<f64>, Result<Projection, String>)> = None;
        for (pi, p) in policies.iter().enumerate() {
            let spec = &p.spec;
            let mut outcomes: Vec<RuleOutcome> = Vec::new();
            let reject = |rule: &str, reason: String| RuleOutcome {
                verdict: Verdict::Reject,
                rule: rule.to_string(),
                reason,
                approvals: None,
                constraint: None,
            };
            // 1. Validate and 2. project.
            let projection = if req.count == 0 {
                outcomes.push(reject(
                    "validation/accelerators",
                    "Rejected: spec.replicas × the accelerator resource limit of spec.template is 0; a training job needs at least one accelerator.".into(),
                ));
                None
            } else if req.max_duration.is_zero() {
                outcomes.push(reject(
                    "validation/maxDuration",
                    format!(
                        "Rejected: spec.maxDuration is {}; it must be longer than 0s, e.g. 72h.",
                        req.max_duration
                    ),
                ));
                None
            } else {
                let key = (Arc::as_ptr(&p.catalog), spec.estimate.utilization);
                let result = match &projected {
                    Some((c, u, r)) if (*c, *u) == key => r.clone(),
                    _ => {
                        let r = project(&p.catalog, req, spec.estimate.utilization)
                            .map_err(|e| e.to_string());
                        projected = Some((key.0, key.1, r.clone()));
                        r
                    }
                };
                match result {
                    Ok(pr) => Some(pr),
                    Err(e) => {
                        outcomes.push(reject("validation/accelerator", format!("Rejected: {e}.")));
                        None
                    }
                }
            };
            let governing = projection
                .as_ref()
                .map_or(Flop::ZERO, |pr| pr.governing(spec.estimate.basis));
            if let Some(pr) = &projection
                && pr.opcount_impossible()
                && let Some(op) = pr.opcount
            {
                outcomes.push(reject(
                    "validation/opcount",
                    format!(
                        "Rejected: declared 6·N·D = {} exceeds the upper bound {} of {} × {} at {} for {}; the declaration or the request is wrong.",
                        op, pr.upper_bound, pr.count, pr.accelerator, pr.precision, req.max_duration
                    ),
                ));
            }
            // 3. Tiers on the lineage total after the job.
            let count_base = spec.lineage.count_fine_tunes_toward_base;
            let own_total = self.lineage(&lineage).charged + governing;
            let (tier_lineage, lineage_total) = match (&base, count_base) {
                (Some(b), true) => {
                    let bt = self.lineage(b).charged + governing;
                    if bt.0 > own_total.0 {
                        (b.as_str(), bt)
                    } else {
                        (lineage.as_str(), own_total)
                    }
                }
                _ => (lineage.as_str(), own_total),
            };
            let mut tier_name = None;
            if let Some(t) = spec
                .tiers
                .iter()
                .rev()
                .find(|t| lineage_total.0 > t.threshold.0)
            {
                tier_name = Some(t.name.as_str());
                let rule = format!("tier/{}", t.name);
                let context = || {
                    format!(
                        "lineage {} would reach {} cumulative FLOP with this job's {}, above tier {} at {}",
                        tier_lineage,
                        sci(lineage_total.0),
                        governing,
                        t.name,
                        sci(t.threshold.0)
                    )
                };
                match t.action {
                    TierAction::Admit => {}
                    TierAction::Reject => {
                        outcomes.push(reject(&rule, format!("Rejected: {}.", context())))
                    }
                    TierAction::Escalate => outcomes.push(RuleOutcome {
                        verdict: Verdict::Escalate,
                        rule,
                        reason: format!("Awaiting approval: {}.", context()),
                        approvals: t.approvals.clone(),
                        constraint: None,
                    }),
                }
            }
            // Substantial modification of another lineage.
            if let (Some(b), Some(m)) = (&base, &spec.lineage.modification) {
                let known = self.lineage(b).own_charged;
                let base_flop = if known.0 > 0.0 {
                    known
                } else {
                    m.assumed_base_flop.unwrap_or(Flop::ZERO)
                };
                let own_after = self.lineage(&lineage).own_charged + governing;
                if base_flop.0 > 0.0 && own_after.0 > base_flop.0 * m.fraction_of_base {
                    let context = format!(
                        "fine-tune lineage {} would use {} FLOP, more than {:.4} of its base {}'s {}{}",
                        lineage,
                        sci(own_after.0),
                        m.fraction_of_base,
                        b,
                        base_flop,
                        if known.0 > 0.0 {
                            ""
                        } else {
                            " (assumed: base unknown to the ledger)"
                        }
                    );
                    let rule = format!("lineage/{}", m.name);
                    match m.action {
                        TierAction::Admit => {}
                        TierAction::Reject => {
                            outcomes.push(reject(&rule, format!("Rejected: {context}.")))
                        }
                        TierAction::Escalate => outcomes.push(RuleOutcome {
                            verdict: Verdict::Escalate,
                            rule,
                            reason: format!("Awaiting approval: {context}."),
                            approvals: m.approvals.clone(),
                            constraint: None,
                        }),
                    }
                }
            }
            // 4. Budgets over their windows.
            let need_keys = spec.queueing == Queueing::StrictFIFO && !blocked.is_empty();
            if spec.mode != Mode::Enforce
                || spec.queueing == Queueing::StrictFIFO
                || spec.capacity.as_ref().is_some_and(|c| {
                    [&c.cluster, &c.per_namespace]
                        .iter()
                        .any(|c| c.as_ref().is_some_and(|c| c.max_flop_per_second.is_some()))
                })
            {
                quick = None;
            }
            for (bi, b) in spec.budgets.iter().enumerate() {
                let scope_key: &str = match b.scope {
                    BudgetScope::Namespace => &req.id.namespace,
                    BudgetScope::Model => &lineage,
                    BudgetScope::Cluster => "",
                };
                let window_ms = b.window.as_millis();
                match (&mut quick, b.action) {
                    (Some(tests), BudgetAction::Throttle) => tests.push((
                        pi,
                        bi,
                        QuickTest::Budget {
                            scope: scope_index(b.scope),
                            window_ms,
                            limit: b.limit.0,
                            governing: governing.0,
                        },
                    )),
                    (_, BudgetAction::Throttle) => {}
                    _ => quick = None,
                }
                let series = self.series(b.scope, scope_key);
                let used = series.map_or(0.0, |s| s.window_sum(ms(now), window_ms));
                let constraint = || budget_constraint(&p.name, b, scope_key);
                if need_keys {
                    constraints.push(constraint());
                }
                match b.scope {
                    BudgetScope::Cluster => cluster_budget = true,
                    BudgetScope::Namespace
                        if governing.0 <= b.limit.0 && used + governing.0 <= b.limit.0 =>
                    {
                        watch.ns_budgets.push((window_ms, b.limit.0, governing.0));
                    }
                    _ => {}
                }
                let who = || match b.scope {
                    BudgetScope::Namespace => format!("namespace {scope_key}"),
                    BudgetScope::Model => format!("lineage {scope_key}"),
                    BudgetScope::Cluster => "the cluster".to_string(),
                };
                if governing.0 > b.limit.0 {
                    outcomes.push(reject(
                        &format!("budget/{}", b.name),
                        format!(
                            "Rejected: this job's {} alone exceeds budget {} of {} per {} for {}.",
                            governing,
                            b.name,
                            b.limit,
                            b.window,
                            who()
                        ),
                    ));
                } else if used + governing.0 > b.limit.0 {
                    let rule = format!("budget/{}", b.name);
                    let frees = series.and_then(|s| s.frees_at(window_ms, b.limit.0 - governing.0));
                    let who = who();
                    let constraint = constraint();
                    let context = if self.wording() {
                        format!(
                            "{} has used {} of its {} FLOP budget {} in the last {}; this job needs {}",
                            who,
                            sci(used),
                            sci(b.limit.0),
                            b.name,
                            b.window,
                            governing
                        )
                    } else {
                        String::new()
                    };
                    match b.action {
                        BudgetAction::Reject => {
                            outcomes.push(reject(&rule, format!("Rejected: {context}.")))
                        }
                        BudgetAction::Escalate => outcomes.push(RuleOutcome {
                            verdict: Verdict::Escalate,
                            rule,
                            reason: format!("Awaiting approval: {context}."),
                            approvals: b.approvals.clone(),
                            constraint: None,
                        }),
                        BudgetAction::Throttle => {
                            if let Some(f) = frees {
                                wake_at = Some(wake_at.map_or(f, |w: i64| w.min(f)));
                            }
                            outcomes.push(RuleOutcome {
                                verdict: Verdict::Throttle,
                                rule,
                                reason: if self.wording() {
                                    format!(
                                        "Queued: {context}; enough frees by {}.",
                                        frees.map_or_else(
                                            || "never".to_string(),
                                            |f| from_ms(f).to_string()
                                        )
                                    )
                                } else {
                                    String::new()
                                },
                                approvals: None,
                                constraint: Some(constraint),
                            });
                        }
                    }
                }
            }
            // 5. Escalations satisfied by valid approvals are lifted.
            let mut approvals_lifted = false;
            let escalations: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| o.verdict == Verdict::Escalate)
                .map(|(i, _)| i)
                .collect();
            if !escalations.is_empty()
                && escalations.iter().all(|i| {
                    let need = outcomes[*i]
                        .approvals
                        .clone()
                        .unwrap_or(ApprovalRequirement {
                            required: 1,
                            groups: Vec::new(),
                        });
                    approvals_satisfy(approvals_given, req.submitter.as_ref(), &need)
                })
            {
                approvals_lifted = true;
                outcomes.retain(|o| o.verdict != Verdict::Escalate);
            }
            // 6. Capacity caps.
            let job_rate = projection
                .as_ref()
                .map_or(FlopPerSecond::ZERO, |pr| pr.rate);
            if let Some(cap) = &spec.capacity {
                if spec.mode == Mode::Enforce {
                    let slack = |c: &Option<Cap>| {
                        c.as_ref()
                            .and_then(|c| c.max_accelerators)
                            .map_or(i64::MAX, |m| {
                                i64::try_from(m)
                                    .unwrap_or(i64::MAX)
                                    .saturating_sub(i64::from(req.count))
                            })
                    };
                    watch.cluster_slack = watch.cluster_slack.min(slack(&cap.cluster));
                    watch.ns_slack = watch.ns_slack.min(slack(&cap.per_namespace));
                    if let Some(tests) = &mut quick {
                        for (namespace, c) in [(false, &cap.cluster), (true, &cap.per_namespace)] {
                            if c.as_ref().is_some_and(|c| c.max_accelerators.is_some()) {
                                tests.push((
                                    pi,
                                    usize::MAX,
                                    QuickTest::Cap {
                                        namespace,
                                        slack: slack(c),
                                    },
                                ));
                            }
                        }
                    }
                }
                let ns_usage = self
                    .ns_usage
                    .get(&req.id.namespace)
                    .copied()
                    .unwrap_or_default();
                for (namespace, cap, usage) in [
                    (None, &cap.cluster, self.cluster_usage),
                    (
                        Some(req.id.namespace.as_str()),
                        &cap.per_namespace,
                        ns_usage,
                    ),
                ] {
                    let Some(cap) = cap else { continue };
                    let constraint = || cap_constraint(&p.name, namespace);
                    if need_keys {
                        constraints.push(constraint());
                    }
                    if let Some(o) = check_cap(
                        cap,
                        namespace,
                        usage,
                        job_rate,
                        u64::from(req.count),
                        constraint,
                        self.wording(),
                    ) {
                        outcomes.push(o);
                    }
                }
            }
            // StrictFIFO: nobody passes a queued job blocked on a constraint this job shares.
            if spec.queueing == Queueing::StrictFIFO {
                strict = true;
                if let Some(c) = constraints.iter().find(|c| blocked.contains(*c)) {
                    outcomes.push(RuleOutcome {
                        verdict: Verdict::Throttle,
                        rule: "queueing/StrictFIFO".into(),
                        reason: format!(
                            "Queued: an earlier or higher-priority job waits on {c}, and policy {} queues StrictFIFO.",
                            p.name
                        ),
                        approvals: None,
                        constraint: Some(c.clone()),
                    });
                }
            }
            for o in &outcomes {
                if o.verdict == Verdict::Throttle
                    && let Some(c) = &o.constraint
                {
                    throttled_on.push(c.clone());
                }
            }
            // The strictest outcome of this policy; earlier steps win ties.
            let outcome = outcomes
                .iter()
                .fold(None::<&RuleOutcome>, |acc, o| match acc {
                    Some(a) if a.verdict >= o.verdict => Some(a),
                    _ => Some(o),
                })
                .cloned()
                .unwrap_or_else(|| RuleOutcome {
                    verdict: Verdict::Admit,
                    rule: tier_name
                        .as_ref()
                        .map_or_else(|| "admit".to_string(), |t| format!("tier/{t}")),
                    // Written below if this policy decides (see `admitted`).
                    reason: String::new(),
                    approvals: None,
                    constraint: None,
                });
            if governing.0 > charge.0 {
                charge = governing;
                basis_of_charge = spec.estimate.basis;
            }
            rate = rate.max(job_rate);
            if count_base
                && let Some(b) = &base
                && !charged_lineages.contains(b)
            {
                charged_lineages.push(b.clone());
            }
            results.push(PolicyResult {
                name: &p.name,
                mode: spec.mode,
                outcome,
                projection,
                governing,
                lineage_total,
                tier: tier_name,
                tier_lineage,
                basis: spec.estimate.basis,
                approvals_lifted,
            });
        }
        let admitted = |r: &PolicyResult| {
            format!(
                "Admitted: {} for {} = {} ({}); lineage {} reaches {} cumulative FLOP{}.",
                r.projection.as_ref().map_or_else(
                    || "—".to_string(),
                    |pr| format!("{} × {} at {}", pr.count, pr.accelerator, pr.precision)
                ),
                req.max_duration,
                r.governing,
                r.basis.describe(),
                r.tier_lineage,
                sci(r.lineage_total.0),
                if r.approvals_lifted { ", approved" } else { "" }
            )
        };

        // Strictest across policies: Enforce binds, Warn/DryRun are recorded.
        let strictest = |filter: &dyn Fn(&PolicyResult) -> bool| {
            results
                .iter()
                .filter(|r| filter(r))
                .fold(None::<&PolicyResult>, |acc, r| match acc {
                    Some(a) if a.outcome.verdict >= r.outcome.verdict => Some(a),
                    _ => Some(r),
                })
        };
        let binding = strictest(&|r| r.mode == Mode::Enforce);
        let overall = strictest(&|_| true);
        let verdict = binding.map_or(Verdict::Admit, |r| r.outcome.verdict);
        let enforced_verdict = overall.map_or(Verdict::Admit, |r| r.outcome.verdict);
        // The deciding policy: the binding one when it is strictest, else the strictest overall.
        let decider = match (binding, overall) {
            (Some(b), _) if b.outcome.verdict == verdict && verdict != Verdict::Admit => b,
            (_, Some(o)) => o,
            (Some(b), None) => b,
            (None, None) => return self.evaluate_unreachable(req),
        };
        let mut warnings = Vec::new();
        for r in results.iter().filter(|_| self.wording()) {
            if r.mode != Mode::Enforce && r.outcome.verdict != Verdict::Admit {
                let w = format!(
                    "policy {} ({:?}) would {}: {}",
                    r.name, r.mode, r.outcome.verdict, r.outcome.reason
                );
                if r.mode == Mode::Warn {
                    warnings.push(w);
                }
            }
        }
        let reason = if !self.wording() {
            String::new()
        } else if verdict == Verdict::Admit && decider.outcome.verdict != Verdict::Admit {
            format!(
                "Admitted ({:?} mode): Enforce would {} — {}",
                decider.mode, decider.outcome.verdict, decider.outcome.reason
            )
        } else if decider.outcome.verdict == Verdict::Admit {
            admitted(decider)
        } else {
            decider.outcome.reason.clone()
        };
        let approvals = if verdict == Verdict::Escalate {
            decider.outcome.approvals.as_ref().map(|a| ApprovalNeed {
                required: a.required,
                groups: a.groups.clone(),
                approved_by: approvals_given.iter().map(|p| p.user.clone()).collect(),
            })
        } else {
            None
        };
        Evaluation {
            decision: Decision {
                verdict,
                enforced_verdict,
                mode: decider.mode,
                policy: Some(decider.name.to_string()),
                rule: Some(decider.outcome.rule.clone()),
                reason,
                warnings,
                projection: decider.projection.clone(),
                governing: decider.governing,
                lineage_total: decider.lineage_total,
                tier: decider.tier.map(str::to_string),
                approvals,
                queue_position: None,
            },
            throttled_on,
            strict,
            charge,
            charged_lineages,
            rate,
            basis: basis_of_charge,
            wake_at: if verdict == Verdict::Throttle {
                wake_at
            } else {
                None
            },
            watch: if cluster_budget { Watch::ALWAYS } else { watch },
            quick: quick.filter(|_| verdict == Verdict::Throttle).map(|tests| {
                tests
                    .into_iter()
                    .map(|(pi, bi, test)| {
                        let name = policies.get(pi).map_or("", |p| p.name.as_str());
                        let constraint = match test {
                            QuickTest::Cap { namespace, .. } => {
                                cap_constraint(name, namespace.then_some(req.id.namespace.as_str()))
                            }
                            QuickTest::Budget { .. } => {
                                match policies.get(pi).and_then(|p| p.spec.budgets.get(bi)) {
                                    Some(b) => budget_constraint(
                                        name,
                                        b,
                                        match b.scope {
                                            BudgetScope::Namespace => &req.id.namespace,
                                            BudgetScope::Model => &lineage,
                                            BudgetScope::Cluster => "",
                                        },
                                    ),
                                    None => String::new(),
                                }
                            }
                        };
                        QuickItem { test, constraint }
                    })
                    .collect()
            }),
        }
    }

    fn evaluate_unreachable(&self, req: &JobRequest) -> Evaluation {
        // Only reachable with an empty policy set, which the caller handles first.
        Evaluation {
            decision: Decision {
                verdict: Verdict::Reject,
                enforced_verdict: Verdict::Reject,
                mode: Mode::Enforce,
                policy: None,
                rule: Some("internal".into()),
                reason: format!("Rejected: internal error evaluating {}.", req.id),
                warnings: Vec::new(),
                projection: None,
                governing: Flop::ZERO,
                lineage_total: Flop::ZERO,
                tier: None,
                approvals: None,
                queue_position: None,
            },
            throttled_on: Vec::new(),
            strict: false,
            charge: Flop::ZERO,
            charged_lineages: Vec::new(),
            rate: FlopPerSecond::ZERO,
            basis: Basis::UpperBound,
            wake_at: None,
            watch: Watch::ALWAYS,
            quick: None,
        }
    }
}

/// Whether a lineage at `total` is above `policy`'s tier `t` without the
/// crossing being recorded yet (`done`: the lineage's crossed tiers).
fn newly_crossed(
    total: Flop,
    done: Option<&Vec<(String, String)>>,
    policy: &str,
    t: &crate::policy::Tier,
) -> bool {
    total.0 > t.threshold.0
        && !done.is_some_and(|done| done.iter().any(|(dp, dt)| dp == policy && *dt == t.name))
}

/// Gives back the capacity an admitted job held, cluster-wide and in its
/// namespace.
fn release_usage(
    cluster: &mut Usage,
    namespaces: &mut HashMap<String, Usage>,
    namespace: &str,
    rate: FlopPerSecond,
    accelerators: u64,
) {
    cluster.rate = cluster.rate - rate;
    cluster.accelerators = cluster.accelerators.saturating_sub(accelerators);
    if let Some(u) = namespaces.get_mut(namespace) {
        u.rate = u.rate - rate;
        u.accelerators = u.accelerators.saturating_sub(accelerators);
    }
}

/// Adds `qk` to the set filed under `key`, copying the key only when it is new.
fn add_to(map: &mut HashMap<String, HashSet<QueueKey>>, key: &str, qk: QueueKey) {
    match map.get_mut(key) {
        Some(set) => {
            set.insert(qk);
        }
        None => {
            map.insert(key.to_string(), HashSet::from_iter([qk]));
        }
    }
}

/// The first waiter in queue order after `after` among those filed in `set`
/// with a slack in `lo..=hi`. Walks the distinct slack values (one per
/// accelerator count, so few), taking the first waiter of each: the cost of
/// a step does not grow with the number of waiters.
fn first_by_slack(
    set: &std::collections::BTreeSet<(i64, QueueKey)>,
    lo: i64,
    hi: i64,
    after: Option<QueueKey>,
) -> Option<QueueKey> {
    use std::ops::Bound::{Excluded, Included};
    const FIRST: QueueKey = (Reverse(i32::MAX), Timestamp::MIN, 0);
    const LAST: QueueKey = (Reverse(i32::MIN), Timestamp::MAX, u64::MAX);
    let mut best: Option<QueueKey> = None;
    let mut from = lo;
    while from <= hi {
        let Some(&(slack, _)) = set.range((from, FIRST)..).next() else {
            break;
        };
        if slack > hi {
            break;
        }
        let start = after.map_or(Included((slack, FIRST)), |a| Excluded((slack, a)));
        if let Some(&(_, qk)) = set.range((start, Included((slack, LAST)))).next()
            && best.is_none_or(|b| qk < b)
        {
            best = Some(qk);
        }
        let Some(next) = slack.checked_add(1) else {
            break;
        };
        from = next;
    }
    best
}

/// A ledger record about `req` (its event filled in by the caller).
fn record_of(catalog: &Catalog, now: Timestamp, req: &JobRequest, actor: &str) -> LedgerRecord {
    LedgerRecord {
        time: now,
        job: Some(req.id.clone()),
        lineage: Some(req.lineage().to_string()),
        base_lineage: req.base_lineage().map(str::to_string),
        accelerator: Some(AcceleratorUse {
            kind: catalog
                .get(&req.accelerator.kind)
                .map_or_else(|| req.accelerator.kind.clone(), |e| e.name.clone()),
            count: req.count,
        }),
        actor: actor.to_string(),
        event: LedgerEvent::Started,
    }
}

/// Whether the distinct approvers (not the submitter, in the groups) reach the requirement.
fn approvals_satisfy(
    approvals: &[Principal],
    submitter: Option<&Principal>,
    need: &ApprovalRequirement,
) -> bool {
    let mut users: Vec<&str> = approvals
        .iter()
        .filter(|a| submitter.is_none_or(|s| s.user != a.user))
        .filter(|a| need.groups.is_empty() || a.groups.iter().any(|g| need.groups.contains(g)))
        .map(|a| a.user.as_str())
        .collect();
    users.sort_unstable();
    users.dedup();
    users.len() >= need.required as usize
}

/// Checks one cap; strings are built only when the cap bites.
fn check_cap(
    cap: &Cap,
    namespace: Option<&str>,
    usage: Usage,
    rate: FlopPerSecond,
    accelerators: u64,
    constraint: impl Fn() -> String,
    words: bool,
) -> Option<RuleOutcome> {
    let rate_bites = cap
        .max_flop_per_second
        .is_some_and(|m| usage.rate.0 + rate.0 > m.0);
    let count_bites = cap
        .max_accelerators
        .is_some_and(|m| usage.accelerators + accelerators > m);
    if !rate_bites && !count_bites {
        return None;
    }
    let scope = match namespace {
        None => "cluster".to_string(),
        Some(ns) => format!("namespace {ns}"),
    };
    let rule = format!(
        "capacity/{}",
        if namespace.is_none() {
            "cluster"
        } else {
            "namespace"
        }
    );
    if let Some(max) = cap.max_flop_per_second {
        if rate.0 > max.0 {
            return Some(RuleOutcome {
                verdict: Verdict::Reject,
                rule,
                reason: format!(
                    "Rejected: this job alone runs at {}, above the {} cap of {}; it can never run.",
                    rate, scope, max
                ),
                approvals: None,
                constraint: None,
            });
        }
        if usage.rate.0 + rate.0 > max.0 {
            return Some(RuleOutcome {
                verdict: Verdict::Throttle,
                rule,
                reason: if words {
                    format!(
                        "Queued: {} runs {} of its {} cap; this job needs {}.",
                        scope, usage.rate, max, rate
                    )
                } else {
                    String::new()
                },
                approvals: None,
                constraint: Some(constraint()),
            });
        }
    }
    if let Some(max) = cap.max_accelerators {
        if accelerators > max {
            return Some(RuleOutcome {
                verdict: Verdict::Reject,
                rule,
                reason: format!(
                    "Rejected: this job alone uses {accelerators} accelerators, above the {scope} cap of {max}; it can never run."
                ),
                approvals: None,
                constraint: None,
            });
        }
        if usage.accelerators + accelerators > max {
            return Some(RuleOutcome {
                verdict: Verdict::Throttle,
                rule,
                reason: if words {
                    format!(
                        "Queued: {scope} runs {} of its {max} accelerators; this job needs {accelerators}.",
                        usage.accelerators
                    )
                } else {
                    String::new()
                },
                approvals: None,
                constraint: Some(constraint()),
            });
        }
    }
    None
}

/// The name of a budget as a constraint a job is throttled on.
fn budget_constraint(policy: &str, b: &crate::policy::Budget, scope_key: &str) -> String {
    format!("budget/{}/{}/{:?}/{}", policy, b.name, b.scope, scope_key)
}

/// The name of a cap (the cluster's, or `namespace`'s) as a constraint.
fn cap_constraint(policy: &str, namespace: Option<&str>) -> String {
    match namespace {
        None => format!("capacity/{policy}/cluster"),
        Some(ns) => format!("capacity/{policy}/namespace {ns}"),
    }
}

fn scope_index(scope: BudgetScope) -> usize {
    match scope {
        BudgetScope::Namespace => 0,
        BudgetScope::Model => 1,
        BudgetScope::Cluster => 2,
    }
}

fn policy_record(now: Timestamp, name: &str, hash: String) -> LedgerRecord {
    LedgerRecord {
        time: now,
        job: None,
        lineage: None,
        base_lineage: None,
        accelerator: None,
        actor: OPERATOR_ACTOR.to_string(),
        event: LedgerEvent::PolicyChanged {
            policy: name.to_string(),
            content_hash: hash,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::ChargeSeries;
    use proptest::prelude::*;

    proptest! {
        /// Cursor-based window sums equal brute force, whatever the order of
        /// queries (forward, backward) and pruning.
        #[test]
        fn window_sums_match_brute_force(
            gaps in proptest::collection::vec((0i64..50, 1u32..100), 1..200),
            queries in proptest::collection::vec((0i64..6000, 0usize..3), 1..60),
            prune_at in proptest::option::of(0i64..3000),
        ) {
            let windows = [100i64, 500, 2000];
            let mut s = ChargeSeries::with_windows(&windows);
            let mut points = Vec::new();
            let mut t = 0;
            for (gap, flop) in gaps {
                t += gap;
                s.push(t, f64::from(flop));
                points.push((t, f64::from(flop)));
            }
            if let Some(p) = prune_at {
                s.prune_before(p);
            }
            for (now, w) in queries {
                let w = windows[w];
                let got = s.window_sum(now, w);
                let want: f64 = points.iter().filter(|(pt, _)| *pt > now - w && *pt <= now).map(|p| p.1).sum();
                // Pruned points are only those older than every query window here when prune_at is small.
                if prune_at.is_none_or(|p| p <= now - w) {
                    prop_assert!((got - want).abs() < 1e-6, "now {now} w {w}: {got} vs {want}");
                }
            }
        }
    }
}
