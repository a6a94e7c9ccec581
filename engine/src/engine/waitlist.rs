//! The queue of throttled jobs and its wake-up index: which queued jobs an
//! event could help, so a finish or a tick re-evaluates those and not the
//! whole queue.
//!
//! A queued job is filed under what could free it:
//! - a capacity waiter (on a cap, or on something unknown) under the
//!   cluster's waiters or, when only its own namespace's cap holds it, under
//!   that namespace's, by the largest usage at which it would fit (its
//!   slack); a finish re-evaluates the waiters whose slack the freed usage
//!   reaches, and those marked dirty because their lineage totals, namespace
//!   budget or approvals changed;
//! - a budget waiter, by the time its window frees enough for it;
//! - with a quick watch ([`QuickWatch`]) when only budgets and accelerator
//!   caps of Enforce policies can hold it back, so a re-check needs no full
//!   evaluation.
//!
//! Every key filed anywhere is in the queue; [`Waitlist::dequeue`] removes
//! it from every index at once.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::ops::Bound::{Excluded, Included, Unbounded};

use foldhash::{HashMap, HashSet};
use jiff::Timestamp;

use super::constraint::Constraint;
use super::series::{ChargeSeries, scope_index};
use crate::policy::BudgetScope;

/// A queued job's place: priority (higher first), submission time, sequence
/// number (the job is `Engine::jobs[qk.2]`).
pub(super) type QueueKey = (Reverse<i32>, Timestamp, u64);

/// What could change the outcome of a job queued on a capacity cap.
///
/// While an Enforce policy's accelerator cap still bites, the job stays
/// queued on it whatever else is true; re-evaluating it can only change its
/// verdict or what it waits on when its lineage totals change (tiers,
/// modification, model budgets), a namespace budget it is under fills, a
/// budget window it waits on frees, or it gets an approval.
#[derive(Clone, Debug)]
pub(super) struct Watch {
    /// Largest cluster accelerator usage at which it could fit every Enforce
    /// cluster cap (`i64::MAX`: no such cap, or a cluster budget: always
    /// re-evaluate).
    pub(super) cluster_slack: i64,
    /// The same for its namespace's usage and the Enforce namespace caps.
    pub(super) ns_slack: i64,
    /// Namespace budgets it is under: (window ms, limit, its governing FLOP).
    pub(super) ns_budgets: Vec<(i64, f64, f64)>,
}

impl Watch {
    pub(super) const ALWAYS: Watch = Watch {
        cluster_slack: i64::MAX,
        ns_slack: i64::MAX,
        ns_budgets: Vec::new(),
    };
}

/// One constraint of an Enforce policy that a queued job is under, as a
/// test the quick re-check can run without evaluating the job again.
#[derive(Clone, Copy, Debug)]
pub(super) enum QuickTest {
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
pub(super) struct QuickItem {
    pub(super) test: QuickTest,
    pub(super) constraint: Constraint,
}

/// What a queued job was last evaluated against when every policy that
/// selects it is an Enforce policy whose only moving parts are `Throttle`
/// budgets and accelerator caps (no Escalate/Reject budget, no FLOP/s cap,
/// no StrictFIFO): as long as its lineages' totals stand, which of its
/// budgets and caps hold it back is all that can change, so a finish or a
/// budget window freeing can refile it without a full evaluation (see
/// `Engine::quick_check`). A charge to its lineage or base lineage (tiers,
/// modification) drops it: the next visit evaluates the job.
#[derive(Clone, Debug)]
pub(super) struct QuickWatch {
    /// Every budget and cap it is under, in the order `evaluate` meets them.
    pub(super) items: Vec<QuickItem>,
    /// Its lineage and base lineage (where it is filed in `quick_by_lineage`).
    lineages: Vec<String>,
    /// A cluster budget selects it (its capacity index entry is then
    /// `Watch::ALWAYS`, as `evaluate` files it).
    pub(super) cluster_budget: bool,
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
    by_slack: BTreeSet<(i64, QueueKey)>,
    /// Namespace waiters by cluster slack: those the cluster cap starts to
    /// bite move to the cluster's waiters when re-evaluated.
    by_cluster_slack: BTreeSet<(i64, QueueKey)>,
    /// Those whose lineage totals, namespace budget or approvals changed
    /// since they were last evaluated.
    dirty: BTreeSet<QueueKey>,
}

impl Waiters {
    fn is_empty(&self) -> bool {
        self.by_slack.is_empty() && self.dirty.is_empty()
    }
}

/// What the waitlist reads of a queued job to file it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Waiter<'a> {
    pub(super) namespace: &'a str,
    pub(super) lineage: &'a str,
    pub(super) base_lineage: Option<&'a str>,
    /// The constraints it is filed on now.
    pub(super) throttled_on: &'a [Constraint],
}

impl Waiter<'_> {
    fn lineages(&self) -> Vec<String> {
        std::iter::once(self.lineage)
            .chain(self.base_lineage)
            .map(str::to_string)
            .collect()
    }
}

/// The queue and its wake-up index.
#[derive(Clone, Debug, Default)]
pub(super) struct Waitlist {
    /// Queued jobs in order.
    queue: BTreeSet<QueueKey>,
    /// Queued jobs that freed capacity could help (waiting on a cap, or unknown).
    capacity_waiters: BTreeSet<QueueKey>,
    /// Queued jobs waiting only on their own namespace's cap, by namespace.
    ns_capacity_waiters: HashMap<String, BTreeSet<QueueKey>>,
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
    /// Queued jobs that time could help (waiting on a budget window, or unknown).
    budget_waiters: BTreeSet<(i64, QueueKey)>,
    /// When each budget waiter's window frees enough (ms; i64::MIN: unknown, re-check).
    budget_wake: HashMap<QueueKey, i64>,
    /// Queued jobs' budgets and caps, for the quick re-check.
    quick_watch: HashMap<QueueKey, QuickWatch>,
    /// Jobs with a quick watch, by their lineage and base lineage.
    quick_by_lineage: HashMap<String, HashSet<QueueKey>>,
    /// Earliest times a throttled job's budget window frees (ms).
    wakeups: BTreeSet<i64>,
}

impl Waitlist {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queued jobs in queue order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &QueueKey> + '_ {
        self.queue.iter()
    }

    /// Queued jobs ahead of `qk`.
    pub(super) fn ahead(&self, qk: QueueKey) -> impl Iterator<Item = &QueueKey> + '_ {
        self.queue.range(..qk)
    }

    /// 1-based position of `qk` in the queue.
    pub(super) fn position(&self, qk: QueueKey) -> Option<u32> {
        u32::try_from(self.queue.range(..qk).count() + 1).ok()
    }

    /// Takes a place in the queue (filed nowhere yet: see [`Self::set_waits`]).
    pub(super) fn enqueue(&mut self, qk: QueueKey) {
        self.queue.insert(qk);
    }

    /// Leaves the queue and every index. `namespace`: the job's.
    pub(super) fn dequeue(&mut self, qk: &QueueKey, namespace: Option<&str>) {
        if let Some(ns) = namespace {
            self.unfile_ns_waiter(qk, ns);
        }
        self.queue.remove(qk);
        self.capacity_waiters.remove(qk);
        self.unindex_cap(qk);
        self.unfile_budget_waiter(qk);
        self.forget_quick(qk);
    }

    /// Remembers that a budget window frees at `w` (ms): a Tick then could
    /// admit a throttled job.
    pub(super) fn wake_at(&mut self, w: i64) {
        self.wakeups.insert(w);
    }

    /// The earliest future time at which a Tick could admit a throttled job.
    pub(super) fn next_wakeup(&self) -> Option<i64> {
        self.wakeups.iter().next().copied()
    }

    /// Forgets the wake-ups at or before `now_ms`.
    pub(super) fn pass_time(&mut self, now_ms: i64) {
        self.wakeups = self.wakeups.split_off(&(now_ms + 1));
    }

    /// Files a queued job under what could free it: `throttled_on` (empty:
    /// unknown, so everything), the budget window's wake-up `wake_at`, and
    /// the slack of its caps (`watch`). `job`: the job as it stands (`None`:
    /// not queued).
    pub(super) fn set_waits(
        &mut self,
        qk: QueueKey,
        job: Option<Waiter<'_>>,
        throttled_on: &[Constraint],
        wake_at: Option<i64>,
        watch: Watch,
    ) {
        let on_budget = throttled_on.iter().any(Constraint::is_budget);
        let on_other = throttled_on.iter().any(|c| !c.is_budget());
        let unknown = throttled_on.is_empty();
        // Re-queued on the same constraints with the same slack: its place in
        // the wake-up index stands (only its dirty mark goes, as refiling does).
        let cap_watch = if unknown { &Watch::ALWAYS } else { &watch };
        let same_cap = (on_other || unknown)
            && job.is_some_and(|j| j.throttled_on == throttled_on)
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
            if let Some(j) = job {
                self.unfile_ns_waiter(&qk, j.namespace);
            }
        }
        if (on_other || unknown) && !same_cap {
            // Waiting only on its own namespace's cap: only that namespace's
            // finishing jobs can help it.
            let home = job.map(|j| j.namespace);
            let only_ns = home.is_some_and(|ns| {
                !unknown
                    && throttled_on
                        .iter()
                        .filter(|c| !c.is_budget())
                        .all(|c| c.is_cap_of(ns))
            });
            match (home, job) {
                (Some(ns), Some(j)) if only_ns => {
                    match self.ns_capacity_waiters.get_mut(ns) {
                        Some(set) => {
                            set.insert(qk);
                        }
                        None => {
                            self.ns_capacity_waiters
                                .insert(ns.to_string(), BTreeSet::from([qk]));
                        }
                    }
                    self.index_cap(qk, j, watch, true);
                }
                _ => {
                    self.capacity_waiters.insert(qk);
                    if let Some(j) = job {
                        self.index_cap(qk, j, if unknown { Watch::ALWAYS } else { watch }, false);
                    }
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
    pub(super) fn file_budget_waiter(&mut self, qk: QueueKey, w: i64) {
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
    pub(super) fn watch_quick(
        &mut self,
        qk: QueueKey,
        job: Option<Waiter<'_>>,
        quick: Option<Vec<QuickItem>>,
    ) {
        self.forget_quick(&qk);
        let (Some(items), Some(job)) = (quick, job) else {
            return;
        };
        let lineages = job.lineages();
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

    /// A queued job's quick watch, if it has one.
    pub(super) fn quick(&self, qk: &QueueKey) -> Option<&QuickWatch> {
        self.quick_watch.get(qk)
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

    /// Drops the quick watches of the jobs of `lineage`: a charge to it may
    /// change their verdicts (tiers, modification).
    pub(super) fn forget_quick_of_lineage(&mut self, lineage: &str) {
        if let Some(set) = self.quick_by_lineage.get(lineage) {
            let stale: Vec<QueueKey> = set.iter().copied().collect();
            for qk in stale {
                self.forget_quick(&qk);
            }
        }
    }

    /// Files a capacity waiter in the wake-up index.
    fn index_cap(&mut self, qk: QueueKey, job: Waiter<'_>, watch: Watch, ns_home: bool) {
        let lineages = job.lineages();
        let namespace = job.namespace.to_string();
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

    fn unfile_ns_waiter(&mut self, qk: &QueueKey, namespace: &str) {
        if let Some(set) = self.ns_capacity_waiters.get_mut(namespace) {
            set.remove(qk);
            if set.is_empty() {
                self.ns_capacity_waiters.remove(namespace);
            }
        }
    }

    /// Marks a capacity waiter for re-evaluation at the next finish that
    /// re-evaluates its kind of waiters.
    pub(super) fn mark_dirty(&mut self, qk: &QueueKey) {
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
    /// lineages, and those whose namespace budget it fills past their need
    /// (`ns_series`: the namespace's charges, the charge included).
    pub(super) fn dirty_after_charge(
        &mut self,
        now: i64,
        namespace: &str,
        lineages: &[String],
        ns_series: Option<&ChargeSeries>,
    ) {
        let mut dirty: Vec<QueueKey> = Vec::new();
        for l in lineages {
            if let Some(set) = self.cap_by_lineage.get(l) {
                dirty.extend(set.iter().copied());
            }
        }
        if let Some(set) = self.cap_ns_budget.get(namespace)
            && let Some(series) = ns_series
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

    /// Every capacity waiter a finish in `ns` could help, in queue order:
    /// the reference scan that the wake-up index is tested against.
    pub(super) fn capacity_waiters_of(&self, ns: &str) -> Vec<QueueKey> {
        let mut due: Vec<QueueKey> = self.capacity_waiters.iter().copied().collect();
        if let Some(set) = self.ns_capacity_waiters.get(ns) {
            due.extend(set.iter().copied());
            due.sort();
        }
        due
    }

    /// Budget waiters whose window has freed by `now_ms`, in queue order.
    pub(super) fn budget_due(&self, now_ms: i64) -> Vec<QueueKey> {
        let mut due: Vec<QueueKey> = self
            .budget_waiters
            .iter()
            .take_while(|(w, _)| *w <= now_ms)
            .map(|(_, qk)| *qk)
            .collect();
        due.sort();
        due
    }

    /// Capacity waiters of the cluster or of `ns` whose budget window has
    /// freed by `now_ms`.
    pub(super) fn capacity_budget_due(&self, now_ms: i64, ns: &str) -> BTreeSet<QueueKey> {
        let own = self.ns_capacity_waiters.get(ns);
        self.budget_waiters
            .iter()
            .take_while(|(w, _)| *w <= now_ms)
            .map(|(_, qk)| *qk)
            .filter(|qk| self.capacity_waiters.contains(qk) || own.is_some_and(|s| s.contains(qk)))
            .collect()
    }

    /// The next job after `cursor` in queue order that a finish in `ns`
    /// could help at today's usage (`cluster_used`, `ns_used` accelerators):
    /// cluster-cap waiters that fit every Enforce cap (slack ≥ used), `ns`'s
    /// own that fit its caps, `ns`'s own that the cluster cap now bites (to
    /// be refiled), those in `budget_due`, and those marked dirty.
    pub(super) fn next_capacity_candidate(
        &self,
        ns: &str,
        cluster_used: i64,
        ns_used: i64,
        cursor: Option<QueueKey>,
        budget_due: &BTreeSet<QueueKey>,
    ) -> Option<QueueKey> {
        let no_waiters = Waiters::default();
        let after = cursor.map_or(Unbounded, Excluded);
        let home = self.ns_waiters.get(ns).unwrap_or(&no_waiters);
        [
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
        .min()
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
    set: &BTreeSet<(i64, QueueKey)>,
    lo: i64,
    hi: i64,
    after: Option<QueueKey>,
) -> Option<QueueKey> {
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
