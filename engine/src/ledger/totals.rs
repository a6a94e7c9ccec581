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
//! Accounting: lineages are charged and metered by the ledger's one fold
//! ([`super::LineageFold`]); besides, a Decided record with verdict Admit
//! charges `charged` FLOP at its `time` once on its namespace, accelerator
//! type, tier and the cluster (reservations are never returned), and
//! Finished, DeadlineExceeded and Deleted add `consumed` FLOP and
//! accelerator-seconds to the namespace, accelerator type and tier the job
//! was last admitted under (its own, and no tier, if it never was).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::entry::LedgerEntry;
use super::facts::{EventFacts, RecordFacts};
use super::fold::{Effect, LineageFold};
use super::record::LedgerRecord;
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

/// What the totals remember of an admitted job besides its lineages, to
/// attribute its metering.
#[derive(Clone, Debug, Default)]
struct Attribution {
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
    /// The lineages (and the rest) each job was admitted under.
    fold: LineageFold<Attribution>,
    entries: u64,
    /// Reports need no window series; skipping them saves an allocation per charge.
    no_windows: bool,
    /// Per-lineage sums over every record applied, counted or not (reports' `cumulative`).
    cumulative: Option<BTreeMap<String, Sums>>,
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

/// Appends a charge to its scope's window series, unless windows are not
/// kept (then the key is not even built).
fn push_charge(
    charges: &mut HashMap<ScopeKey, Vec<(Timestamp, Flop)>>,
    no_windows: bool,
    key: impl FnOnce() -> ScopeKey,
    at: Timestamp,
    flop: Flop,
) {
    if !no_windows {
        charges.entry(key()).or_default().push((at, flop));
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
        let mut t = LedgerTotals::for_report();
        for (i, e) in entries.iter().enumerate() {
            t.apply_facts(&RecordFacts::of(&e.record), i >= from);
        }
        t
    }

    /// Empty totals for a report: no window series, and per-lineage sums
    /// over every record applied ([`LedgerTotals::cumulative`]) beside the
    /// counted ones.
    pub fn for_report() -> LedgerTotals {
        LedgerTotals {
            no_windows: true,
            cumulative: Some(BTreeMap::new()),
            ..LedgerTotals::default()
        }
    }

    /// Adds one record's effect. Call in ledger order.
    pub fn apply(&mut self, r: &LedgerRecord) {
        self.apply_facts(&RecordFacts::of(r), true);
    }

    /// Adds one record's effect, read from its [`RecordFacts`]. With `count`
    /// false the record only counts toward [`LedgerTotals::cumulative`] and
    /// is remembered for attribution (records before a report's period).
    pub fn apply_facts(&mut self, r: &RecordFacts<'_>, count: bool) {
        if count {
            self.entries += 1;
        }
        let tier = match r.event {
            EventFacts::Decided { tier, .. } => tier.unwrap_or(NO_TIER),
            _ => NO_TIER,
        };
        let effect = self.fold.fold(r, || Attribution {
            namespace: r.job.map(|j| j.namespace.to_string()).unwrap_or_default(),
            accelerator: r.accelerator.map(str::to_string),
            tier: tier.to_string(),
        });
        match effect {
            Effect::Charged { charged, lineages } => {
                let charge = |s: &mut Sums| {
                    s.charged += charged;
                    s.admitted += 1;
                };
                if let Some(c) = &mut self.cumulative {
                    for l in lineages.iter() {
                        with_entry(c, l, charge);
                    }
                }
                if count {
                    let (charges, no_windows) = (&mut self.charges, self.no_windows);
                    for l in lineages.iter() {
                        with_entry(&mut self.lineages, l, charge);
                        push_charge(
                            charges,
                            no_windows,
                            || ScopeKey::Model(l.to_string()),
                            r.time,
                            charged,
                        );
                    }
                    if let Some(job) = &r.job {
                        with_entry(&mut self.namespaces, job.namespace, charge);
                        push_charge(
                            charges,
                            no_windows,
                            || ScopeKey::Namespace(job.namespace.to_string()),
                            r.time,
                            charged,
                        );
                    }
                    if let Some(a) = r.accelerator {
                        with_entry(&mut self.accelerators, a, charge);
                    }
                    with_entry(&mut self.tiers, tier, charge);
                    charge(&mut self.cluster);
                    push_charge(charges, no_windows, || ScopeKey::Cluster, r.time, charged);
                }
            }
            Effect::Metered {
                consumed,
                accelerator_seconds,
                admitted,
                ..
            } => {
                let consume = |s: &mut Sums| {
                    s.consumed += consumed;
                    s.accelerator_seconds += accelerator_seconds;
                };
                if let Some(c) = &mut self.cumulative {
                    for l in effect.metered_onto() {
                        with_entry(c, l, consume);
                    }
                }
                if count {
                    for l in effect.metered_onto() {
                        with_entry(&mut self.lineages, l, consume);
                    }
                    match admitted {
                        Some(a) => {
                            let a = &a.extra;
                            with_entry(&mut self.namespaces, &a.namespace, consume);
                            if let Some(acc) = &a.accelerator {
                                with_entry(&mut self.accelerators, acc, consume);
                            }
                            with_entry(&mut self.tiers, &a.tier, consume);
                        }
                        // Never admitted: its own namespace and accelerator, no tier.
                        None => {
                            if let Some(j) = &r.job {
                                with_entry(&mut self.namespaces, j.namespace, consume);
                            }
                            if let Some(acc) = r.accelerator {
                                with_entry(&mut self.accelerators, acc, consume);
                            }
                            with_entry(&mut self.tiers, NO_TIER, consume);
                        }
                    }
                    consume(&mut self.cluster);
                }
            }
            Effect::None => {}
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

    /// Per-lineage sums over every record applied, counted or not (only
    /// for [`LedgerTotals::for_report`] totals; empty otherwise).
    pub fn cumulative(&self) -> &BTreeMap<String, Sums> {
        static EMPTY: BTreeMap<String, Sums> = BTreeMap::new();
        self.cumulative.as_ref().unwrap_or(&EMPTY)
    }
}
