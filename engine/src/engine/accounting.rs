//! The books the engine keeps: charges at admission onto lineages and budget
//! windows, capacity taken and given back, metering of runs, tier crossings,
//! and the rebuild of all of them from ledger records after a restart.

use foldhash::HashMap;
use jiff::{SignedDuration, Timestamp};

use super::series::{ChargeSeries, scope_index};
use super::{Crossing, Engine, JobState, Usage, ms};
use crate::ledger::{Effect, LedgerEvent, LedgerRecord, LineageFold, RecordFacts};
use crate::policy::BudgetScope;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds};

impl Engine {
    /// Rebuilds lineage totals, budget windows and threshold crossings from
    /// ledger records, in ledger order, after a restart, by the ledger's
    /// one fold ([`LineageFold`]). Load policies first (crossings are found
    /// against their tiers). Produces no new records.
    pub fn replay_ledger<'a>(&mut self, records: impl IntoIterator<Item = &'a LedgerRecord>) {
        let mut fold = LineageFold::<()>::new();
        for r in records {
            let facts = RecordFacts::of(r);
            let effect = fold.fold(&facts, || ());
            match effect {
                Effect::Charged { charged, lineages } => {
                    // An admission without a job has nothing to charge a
                    // namespace with.
                    if let (Some(job), LedgerEvent::Decided { selected_by, .. }) =
                        (&r.job, &r.event)
                    {
                        let lineages = lineages.to_vec();
                        self.charge(r.time, &job.namespace, &lineages, charged);
                        self.record_crossings(r.time, &lineages, selected_by.as_deref());
                    }
                }
                Effect::Metered {
                    consumed,
                    accelerator_seconds,
                    ..
                } => {
                    for l in effect.metered_onto() {
                        let t = self.lineages.entry(l.to_string()).or_default();
                        t.consumed += consumed;
                        t.accelerator_seconds += accelerator_seconds;
                    }
                }
                Effect::None => {}
            }
        }
    }

    /// Charges `flop` at `now` onto `lineages` (the first is the job's own)
    /// and onto the namespace, model and cluster budget windows.
    pub(super) fn charge(
        &mut self,
        now: Timestamp,
        namespace: &String,
        lineages: &[String],
        flop: Flop,
    ) {
        if flop.0 <= 0.0 {
            return;
        }
        for (i, l) in lineages.iter().enumerate() {
            // The verdicts of jobs waiting on this lineage's totals may change.
            self.waitlist.forget_quick_of_lineage(l);
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
        let ns_series = self.windows[scope_index(BudgetScope::Namespace)].get(namespace.as_str());
        self.waitlist
            .dirty_after_charge(t, namespace, lineages, ns_series);
    }

    /// Meters a job that held capacity and releases it.
    pub(super) fn meter(&mut self, now: Timestamp, seq: u64) -> (AcceleratorSeconds, Flop) {
        let Some(job) = self.jobs.get(&seq) else {
            return (AcceleratorSeconds::ZERO, Flop::ZERO);
        };
        let (acc, flop) = usage(job, now);
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
    pub(super) fn occupy(&mut self, namespace: &str, rate: FlopPerSecond, accelerators: u64) {
        self.cluster_usage.rate += rate;
        self.cluster_usage.accelerators += accelerators;
        let u = match self.ns_usage.get_mut(namespace) {
            Some(u) => u,
            None => self.ns_usage.entry(namespace.to_string()).or_default(),
        };
        u.rate += rate;
        u.accelerators += accelerators;
    }

    pub(super) fn release(&mut self, job: &JobState) {
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

    /// Drops charges older than every budget window (at most once a day).
    pub(super) fn prune(&mut self, now: Timestamp) {
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

    /// Whether some policy's tier is below one of these lineages' totals and
    /// not yet recorded as crossed on it (what [`Self::record_crossings`]
    /// would record, before asking which policies selected the job).
    pub(super) fn may_cross(&self, lineages: &[String]) -> bool {
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

    /// Records the tier crossings an admission causes, by the rule reports
    /// use (`report::BodyBuilder`): policy P's tier is crossed on a lineage at
    /// the first charge, from a job P selected, after which the lineage's
    /// cumulative total (all charges) exceeds the threshold. `selected` names
    /// the policies that selected the job; `None` (ledger entries written
    /// before `selectedBy` existed) counts toward every policy.
    pub(super) fn record_crossings(
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
                    || selected.is_some_and(|names| !names.iter().any(|n| **n == *p.name))
                {
                    continue; // below all its tiers, or not selecting the job
                }
                for t in &p.spec.tiers {
                    if !newly_crossed(total, done, &p.name, t) {
                        continue;
                    }
                    let id = (l.clone(), p.name.to_string(), t.name.clone());
                    new.push((
                        id,
                        Crossing {
                            lineage: l.clone(),
                            policy: p.name.to_string(),
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

/// What a job used from its start up to `now`: accelerator-seconds, and the
/// FLOP its admission's projection charges for that time on the basis it was
/// admitted on. The one metering rule: [`Engine::meter`] books it when the
/// run ends, [`Engine::consumed_so_far`] shows it while the run goes on.
pub(super) fn usage(job: &JobState, now: Timestamp) -> (AcceleratorSeconds, Flop) {
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
    (acc, flop)
}
