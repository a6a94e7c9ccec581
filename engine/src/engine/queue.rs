//! Deciding and re-deciding: committing an evaluation's verdict to a job,
//! and walking the queue when something freed up, re-evaluating in queue
//! order only the jobs the [`Trigger`] could help (the waitlist says which)
//! and admitting those that now fit.

use foldhash::{HashSet, HashSetExt};
use jiff::Timestamp;

use super::constraint::Constraint;
use super::evaluate::Evaluation;
use super::waitlist::{QueueKey, QuickItem, QuickTest, Watch};
use super::{Admission, Engine, Phase, Step, Trigger, Usage, ms, waiter};
use crate::decision::Verdict;
use crate::ledger::{LedgerEvent, OPERATOR_ACTOR};
use crate::units::Flop;

impl Engine {
    /// Re-evaluates everything held: queued jobs and jobs awaiting approval.
    pub(super) fn reevaluate_held(&mut self, now: Timestamp, step: &mut Step) {
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
    pub(super) fn drain_queue(&mut self, now: Timestamp, step: &mut Step, trigger: Trigger<'_>) {
        if self.waitlist.is_empty() {
            return;
        }
        let mut blocked: HashSet<Constraint> = HashSet::new();
        // Without StrictFIFO, nobody blocks anybody: scan only the jobs the
        // trigger could help. With it, every queued job ahead matters.
        let strict = self.any_strict();
        let qks: Vec<QueueKey> = match (trigger, strict) {
            (Trigger::Capacity(ns), false) if !self.naive_wakeups => {
                return self.drain_capacity(now, step, ns);
            }
            (Trigger::Capacity(ns), false) => self.waitlist.capacity_waiters_of(ns),
            // Only jobs whose window has freed by now; admitted in queue order.
            (Trigger::Time, false) => self.waitlist.budget_due(ms(now)),
            _ => self.waitlist.iter().copied().collect(),
        };
        for qk in qks {
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
        let acc = |u: Usage| i64::try_from(u.accelerators).unwrap_or(i64::MAX);
        // Those whose budget window has freed.
        let budget_due = self.waitlist.capacity_budget_due(ms(now), ns);
        let mut blocked = HashSet::new();
        let mut cursor: Option<QueueKey> = None;
        loop {
            // Usage only grows during the walk (admissions), so a waiter
            // passed over because it did not fit still does not fit.
            let cluster_used = acc(self.cluster_usage);
            let ns_used = acc(self.ns_usage.get(ns).copied().unwrap_or_default());
            let Some(qk) = self.waitlist.next_capacity_candidate(
                ns,
                cluster_used,
                ns_used,
                cursor,
                &budget_due,
            ) else {
                break;
            };
            cursor = Some(qk);
            self.visit(now, step, Trigger::Capacity(ns), qk, &mut blocked);
        }
    }

    /// For a queued job with a quick watch whose lineages' totals still
    /// stand: what evaluating it now would give while it stays throttled (the
    /// constraints that hold it back, as a bit per item of the watch; when a
    /// budget window frees enough for it; how to file it), from its budgets'
    /// windows and the current usage alone. `None`: nothing holds it back
    /// any more (or it has no quick watch, or its lineages were charged
    /// since): evaluate it.
    fn quick_check(&self, now: Timestamp, qk: QueueKey) -> Option<(u64, Option<i64>, Watch)> {
        let w = self.waitlist.quick(&qk)?;
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
        blocked: &mut HashSet<Constraint>,
    ) {
        let seq = qk.2;
        let Some(job) = self.queued(&qk) else {
            return;
        };
        // Freed capacity cannot help a job waiting only on a budget window,
        // and time passing cannot help one waiting only on capacity.
        let waits_only_on = |kind: fn(&Constraint) -> bool| {
            !job.throttled_on.is_empty() && job.throttled_on.iter().all(kind)
        };
        let hopeless = match trigger {
            Trigger::Capacity(_) => waits_only_on(Constraint::is_budget),
            Trigger::Time => waits_only_on(Constraint::is_cap),
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
            return self.refile(qk, held, wake_at, watch);
        }
        let mut eval = self.evaluate(now, &job.request, &job.approvals, blocked);
        if eval.decision.verdict == Verdict::Throttle {
            if eval.strict {
                blocked.extend(eval.throttled_on.iter().cloned());
            }
            if let Some(w) = eval.wake_at {
                self.waitlist.wake_at(w);
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

    /// Refiles a queued job the quick re-check found still held back, by the
    /// items of its quick watch in `held` (a bit each).
    fn refile(&mut self, qk: QueueKey, held: u64, wake_at: Option<i64>, watch: Watch) {
        if let Some(w) = wake_at {
            self.waitlist.wake_at(w);
        }
        let Some(items) = self.waitlist.quick(&qk).map(|w| &w.items) else {
            return;
        };
        let holding = || {
            items
                .iter()
                .enumerate()
                .filter(|(i, _)| held & (1 << i) != 0)
                .map(|(_, item)| &item.constraint)
        };
        let current = self.jobs.get(&qk.2).map(|j| &j.throttled_on);
        let budgets_as_before = current
            .is_some_and(|on| holding().eq(on.iter()) && on.iter().all(Constraint::is_budget));
        if budgets_as_before {
            // Held by the same budgets only: what `set_waits` would do
            // comes down to its new wake-up.
            self.waitlist
                .file_budget_waiter(qk, wake_at.unwrap_or(i64::MAX));
            return;
        }
        let held: Vec<Constraint> = holding().cloned().collect();
        self.set_waits(qk, &held, wake_at, watch);
        if let Some(j) = self.jobs.get_mut(&qk.2) {
            j.throttled_on = held;
        }
    }

    /// Evaluates a job and applies the verdict.
    pub(super) fn decide(&mut self, now: Timestamp, seq: u64, step: &mut Step, fresh: bool) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let blocked = self.blocked_ahead(job.queue_key());
        let eval = self.evaluate(now, &job.request, &job.approvals, &blocked);
        self.commit(now, seq, eval, step, fresh);
    }

    /// Constraints blocked by queued jobs ahead of `qk` (StrictFIFO).
    pub(super) fn blocked_ahead(&self, qk: QueueKey) -> HashSet<Constraint> {
        let mut out = HashSet::new();
        if self.waitlist.is_empty() || !self.any_strict() {
            return out;
        }
        for other in self.waitlist.ahead(qk) {
            if let Some(o) = self.jobs.get(&other.2) {
                out.extend(o.throttled_on.iter().cloned());
            }
        }
        out
    }

    /// Files a queued job in the waitlist under what could free it.
    pub(super) fn set_waits(
        &mut self,
        qk: QueueKey,
        throttled_on: &[Constraint],
        wake_at: Option<i64>,
        watch: Watch,
    ) {
        let job = waiter(&self.jobs, &qk);
        self.waitlist
            .set_waits(qk, job, throttled_on, wake_at, watch);
    }

    /// Keeps (or forgets) what a queued job was just evaluated against.
    fn watch_quick(&mut self, qk: QueueKey, quick: Option<Vec<QuickItem>>) {
        let job = waiter(&self.jobs, &qk);
        self.waitlist.watch_quick(qk, job, quick);
    }

    /// Applies an evaluation's verdict to a job: its phase, its place in the
    /// queue, the charge and capacity of an admission, the ledger record of
    /// a changed verdict (`fresh`: a new submission, always recorded) and
    /// the crossings it causes.
    fn commit(&mut self, now: Timestamp, seq: u64, eval: Evaluation, step: &mut Step, fresh: bool) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let previous = job.decision.as_ref().map(|d| d.verdict);
        let count = job.request.count;
        let namespace = job.request.id.namespace.clone();
        let mut decision = eval.decision;
        let phase = match decision.verdict {
            Verdict::Admit => Phase::Admitted,
            Verdict::Throttle => Phase::Queued,
            Verdict::Escalate => Phase::AwaitingApproval,
            Verdict::Reject => Phase::Rejected,
        };
        let was_queued = job.phase == Phase::Queued;
        let qk = job.queue_key();
        if phase == Phase::Queued {
            if !was_queued {
                self.waitlist.enqueue(qk);
            }
            // Queued from here on (`queued` finds it by its phase).
            if let Some(j) = self.jobs.get_mut(&seq) {
                j.phase = Phase::Queued;
            }
            self.set_waits(qk, &eval.throttled_on, eval.wake_at, eval.watch.clone());
            self.watch_quick(qk, eval.quick.clone());
            decision.queue_position = self.waitlist.position(qk);
            if let Some(w) = eval.wake_at {
                self.waitlist.wake_at(w);
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
        let req = match self.jobs.get(&seq) {
            Some(j) => &j.request,
            None => return,
        };
        // Names of the policies that selected the job: for the ledger entry
        // and for the crossings an admission causes (computed once). An
        // admission crosses a tier only now and then: the names are not
        // needed otherwise unless a ledger entry records them.
        let crossing = phase == Phase::Admitted && self.may_cross(&eval.charged_lineages);
        let selected: Vec<String> = if (changed && self.keep_records) || crossing {
            self.selecting(req)
                .iter()
                .map(|p| p.name.to_string())
                .collect()
        } else {
            Vec::new()
        };
        if changed {
            step.emit(self.keep_records, || {
                let event = LedgerEvent::Decided {
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
                self.record(now, req, OPERATOR_ACTOR, event)
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
}
