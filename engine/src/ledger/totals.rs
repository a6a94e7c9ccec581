//! Totals derived from the ledger alone: what was charged (reserved at
//! admission) and consumed (metered), by lineage, namespace, accelerator
//! type and tier, plus charges over time for rolling-window budgets.
//!
//! The engine keeps the same figures incrementally; [`LedgerTotals::rebuild`]
//! recomputes them from entries so a restart, an auditor or a test can check
//! that the books and the live state agree. Both paths use
//! [`LedgerTotals::apply`], in entry order, so the floating-point sums are
//! bit-identical.
//!
//! Accounting (see `LedgerEvent::Decided`):
//! - A Decided record with verdict Admit charges `charged` FLOP at its `time`
//!   on every lineage in `chargedLineages` (its own lineage when that list is
//!   empty), and once on its namespace, accelerator type, tier and the cluster.
//!   Reservations are never returned.
//! - Finished, DeadlineExceeded and Deleted add `consumed` FLOP and
//!   accelerator-seconds to the lineages, namespace, accelerator type and tier
//!   the job was last admitted under (its own lineage if it never was).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::entry::LedgerEntry;
use super::record::{LedgerEvent, LedgerRecord};
use crate::decision::Verdict;
use crate::job::JobId;
use crate::units::{AcceleratorSeconds, Flop};

/// The tier key for admissions that matched no tier.
pub const NO_TIER: &str = "(none)";

/// FLOP charged and consumed, and accelerator-seconds metered, for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sums {
    /// Reserved at admission (the governing figure of admitted jobs).
    pub charged: Flop,
    /// Metered from runs that ended or were stopped.
    pub consumed: Flop,
    /// Accelerator-seconds metered.
    pub accelerator_seconds: AcceleratorSeconds,
    /// Jobs admitted.
    pub admitted: u64,
}

/// What a budget window is counted over.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScopeKey {
    Namespace(String),
    Model(String),
    Cluster,
}

/// What the ledger remembers of an admitted job, to attribute its consumption.
#[derive(Clone, Debug, Default)]
struct Admission {
    lineages: Vec<String>,
    namespace: String,
    accelerator: Option<String>,
    tier: String,
}

/// Totals derivable from ledger entries alone.
#[derive(Clone, Debug, Default)]
pub struct LedgerTotals {
    lineages: BTreeMap<String, Sums>,
    namespaces: BTreeMap<String, Sums>,
    accelerators: BTreeMap<String, Sums>,
    tiers: BTreeMap<String, Sums>,
    cluster: Sums,
    /// Charges in entry order, per budget scope.
    charges: HashMap<ScopeKey, Vec<(Timestamp, Flop)>>,
    admissions: HashMap<JobId, Admission>,
    entries: u64,
    /// Reports need no window series; skipping them saves an allocation per charge.
    no_windows: bool,
}

/// Applies `f` to the sums for `key`, inserting zeros first if absent
/// (cloning the key only then).
fn with_entry(map: &mut BTreeMap<String, Sums>, key: &str, f: impl Fn(&mut Sums)) {
    if let Some(s) = map.get_mut(key) {
        f(s);
    } else {
        let mut s = Sums::default();
        f(&mut s);
        map.insert(key.to_string(), s);
    }
}

impl LedgerTotals {
    pub fn new() -> LedgerTotals {
        LedgerTotals::default()
    }

    /// Recomputes every total from `entries`, in order.
    pub fn rebuild(entries: &[LedgerEntry]) -> LedgerTotals {
        let mut t = LedgerTotals::new();
        for e in entries {
            t.apply(&e.record);
        }
        t
    }

    /// Same as [`LedgerTotals::rebuild`] over records not yet sealed.
    pub fn rebuild_records<'a>(
        records: impl IntoIterator<Item = &'a LedgerRecord>,
    ) -> LedgerTotals {
        let mut t = LedgerTotals::new();
        for r in records {
            t.apply(r);
        }
        t
    }

    /// Totals of `entries[from..]` only, attributing consumption to
    /// admissions recorded earlier in `entries` (for a report's period).
    /// Window series are not kept ([`LedgerTotals::window_charged`] is 0).
    pub fn rebuild_from(entries: &[LedgerEntry], from: usize) -> LedgerTotals {
        let mut t = LedgerTotals {
            no_windows: true,
            ..LedgerTotals::default()
        };
        for (i, e) in entries.iter().enumerate() {
            t.apply_inner(&e.record, i >= from);
        }
        t
    }

    /// Adds one record's effect. Call in ledger order.
    pub fn apply(&mut self, r: &LedgerRecord) {
        self.apply_inner(r, true);
    }

    /// With `count` false only remembers admissions (for attribution).
    fn apply_inner(&mut self, r: &LedgerRecord, count: bool) {
        if !count {
            if let (
                LedgerEvent::Decided {
                    verdict: Verdict::Admit,
                    charged_lineages,
                    tier,
                    ..
                },
                Some(job),
            ) = (&r.event, &r.job)
            {
                let lineages = if charged_lineages.is_empty() {
                    r.lineage.iter().cloned().collect()
                } else {
                    charged_lineages.clone()
                };
                self.admissions.insert(
                    job.clone(),
                    Admission {
                        lineages,
                        namespace: job.namespace.clone(),
                        accelerator: r.accelerator.as_ref().map(|a| a.kind.clone()),
                        tier: tier.clone().unwrap_or_else(|| NO_TIER.to_string()),
                    },
                );
            }
            return;
        }
        self.entries += 1;
        match &r.event {
            LedgerEvent::Decided {
                verdict: Verdict::Admit,
                charged,
                charged_lineages,
                tier,
                ..
            } => {
                let lineages: Vec<String> = if charged_lineages.is_empty() {
                    r.lineage.iter().cloned().collect()
                } else {
                    charged_lineages.clone()
                };
                let namespace = r.job.as_ref().map(|j| j.namespace.clone());
                let tier = tier.clone().unwrap_or_else(|| NO_TIER.to_string());
                let accelerator = r.accelerator.as_ref().map(|a| a.kind.clone());
                let charge = |s: &mut Sums| {
                    s.charged += *charged;
                    s.admitted += 1;
                };
                for l in &lineages {
                    charge(self.lineages.entry(l.clone()).or_default());
                    self.push_charge(ScopeKey::Model(l.clone()), r.time, *charged);
                }
                if let Some(ns) = &namespace {
                    charge(self.namespaces.entry(ns.clone()).or_default());
                    self.push_charge(ScopeKey::Namespace(ns.clone()), r.time, *charged);
                }
                if let Some(a) = &accelerator {
                    charge(self.accelerators.entry(a.clone()).or_default());
                }
                charge(self.tiers.entry(tier.clone()).or_default());
                charge(&mut self.cluster);
                self.push_charge(ScopeKey::Cluster, r.time, *charged);
                if let Some(job) = &r.job {
                    self.admissions.insert(
                        job.clone(),
                        Admission {
                            lineages,
                            namespace: job.namespace.clone(),
                            accelerator,
                            tier,
                        },
                    );
                }
            }
            LedgerEvent::Finished {
                accelerator_seconds,
                consumed,
                ..
            }
            | LedgerEvent::DeadlineExceeded {
                accelerator_seconds,
                consumed,
            }
            | LedgerEvent::Deleted {
                accelerator_seconds,
                consumed,
            } => {
                let fallback;
                let admission = match r.job.as_ref().and_then(|j| self.admissions.get(j)) {
                    Some(a) => a,
                    None => {
                        fallback = Admission {
                            lineages: r.lineage.iter().cloned().collect(),
                            namespace: r
                                .job
                                .as_ref()
                                .map(|j| j.namespace.clone())
                                .unwrap_or_default(),
                            accelerator: r.accelerator.as_ref().map(|a| a.kind.clone()),
                            tier: NO_TIER.to_string(),
                        };
                        &fallback
                    }
                };
                let consume = |s: &mut Sums| {
                    s.consumed += *consumed;
                    s.accelerator_seconds += *accelerator_seconds;
                };
                for l in &admission.lineages {
                    with_entry(&mut self.lineages, l, consume);
                }
                if r.job.is_some() {
                    with_entry(&mut self.namespaces, &admission.namespace, consume);
                }
                if let Some(a) = &admission.accelerator {
                    with_entry(&mut self.accelerators, a, consume);
                }
                with_entry(&mut self.tiers, &admission.tier, consume);
                consume(&mut self.cluster);
            }
            _ => {}
        }
    }

    fn push_charge(&mut self, key: ScopeKey, at: Timestamp, flop: Flop) {
        if !self.no_windows {
            self.charges.entry(key).or_default().push((at, flop));
        }
    }

    /// Number of records applied.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// FLOP charged on a lineage since genesis (including fine-tunes counted toward it).
    pub fn lineage_charged(&self, lineage: &str) -> Flop {
        self.lineages.get(lineage).map_or(Flop::ZERO, |s| s.charged)
    }

    /// FLOP consumed on a lineage since genesis.
    pub fn lineage_consumed(&self, lineage: &str) -> Flop {
        self.lineages
            .get(lineage)
            .map_or(Flop::ZERO, |s| s.consumed)
    }

    /// FLOP charged on `scope` by admissions with `from < time <= to`: the
    /// rolling window of length `to - from` that ends at (and includes) `to`.
    pub fn window_charged(&self, scope: &ScopeKey, from: Timestamp, to: Timestamp) -> Flop {
        let Some(charges) = self.charges.get(scope) else {
            return Flop::ZERO;
        };
        charges
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .fold(Flop::ZERO, |acc, (_, f)| acc + *f)
    }

    pub fn lineages(&self) -> &BTreeMap<String, Sums> {
        &self.lineages
    }

    pub fn namespaces(&self) -> &BTreeMap<String, Sums> {
        &self.namespaces
    }

    /// Keyed by accelerator type (catalog key).
    pub fn accelerators(&self) -> &BTreeMap<String, Sums> {
        &self.accelerators
    }

    /// Keyed by tier name; [`NO_TIER`] for admissions below every tier.
    pub fn tiers(&self) -> &BTreeMap<String, Sums> {
        &self.tiers
    }

    pub fn cluster(&self) -> Sums {
        self.cluster
    }
}
