//! Signed compute reports: what an auditor receives.
//!
//! A report covers a period and a range of ledger entries `[from, to)`; it
//! holds the head hash (the `hash` of entry `to - 1`), the Merkle root over
//! entries `[0, to)` (so `to` is the tree size and consecutive reports have
//! consistency proofs), totals for the range by namespace, lineage,
//! accelerator type and tier, cumulative lineage totals since genesis, every
//! lineage past a reporting threshold with the date it crossed and its
//! notification deadline, the previous report's hash, and an Ed25519
//! signature with the signer's key id.
//!
//! Signed form (`report.json`): the RFC 8785 canonical JSON of
//! `{"apiVersion", "keyId", "kind", "report", "signature"}`. The signature
//! (base64) is over the canonical JSON of the same object without
//! `signature`; as `signature` sorts last, those bytes are the file with its
//! final `,"signature":"…"` member cut out — see `docs/ledger.md` for the
//! `openssl` command.

mod chain;
mod render;
mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};

use base64ct::{Base64, Encoding};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::ledger::{
    CanonicalError, EventFacts, LedgerEntry, LedgerTotals, RecordFacts, Sha256Digest, Sums,
    canonical_json,
};
use crate::merkle;
use crate::policy::Policy;
use crate::signing;
use crate::units::Flop;

pub use chain::*;
pub use render::*;
pub use verify::*;

/// `apiVersion` of the signed report.
pub const REPORT_API_VERSION: &str = "komptroller.dev/v1alpha1";
/// `kind` of the signed report.
pub const REPORT_KIND: &str = "ComputeReport";

/// The signed report, exactly as `report.json` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedReport {
    pub api_version: String,
    /// SHA-256 of the signer's public key (SPKI DER).
    pub key_id: Sha256Digest,
    pub kind: String,
    pub report: ReportBody,
    /// Ed25519 signature (base64) over the canonical JSON of this object without `signature`.
    pub signature: String,
}

/// The signed bytes: the report without `signature`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UnsignedReport<'a> {
    api_version: &'a str,
    key_id: &'a Sha256Digest,
    kind: &'a str,
    report: &'a ReportBody,
}

/// Everything a report states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportBody {
    /// The time span covered; every entry in `range` lies within it.
    pub period: Period,
    /// Ledger entries covered: `seq` in `[from, to)`. `to` is the Merkle tree size.
    pub range: EntryRange,
    /// `hash` of entry `to - 1` (the genesis value for an empty ledger).
    pub head_hash: Sha256Digest,
    /// RFC 6962 Merkle root over the hashes of entries `[0, to)`.
    pub merkle_root: Sha256Digest,
    /// The report this one continues; absent for the first report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousReport>,
    /// Totals of the entries in `range`.
    pub totals: PeriodTotals,
    /// Cumulative totals per lineage over entries `[0, to)`.
    pub cumulative: BTreeMap<String, Sums>,
    /// The reporting thresholds of the policies, as applied below.
    pub reporting_thresholds: Vec<ReportingThreshold>,
    /// Every lineage past a reporting threshold by entry `to - 1`.
    pub threshold_crossings: Vec<ThresholdCrossing>,
    /// The policies' substantial-modification rules that carry a reporting
    /// obligation, as applied below (absent when no policy has one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modification_thresholds: Vec<ModificationThreshold>,
    /// Every fine-tune lineage whose own compute passed its policy's
    /// modification threshold relative to its base by entry `to - 1`
    /// (absent when none did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modification_crossings: Vec<ModificationCrossing>,
    /// The policies in force when the report was made, by content hash.
    pub policies: Vec<PolicyDigest>,
    /// The base lineages each fine-tune lineage declared
    /// (`spec.model.baseModel`) in the decisions of entries `[0, to)`,
    /// sorted (absent when no job declared one): what an auditor merging
    /// several clusters' books needs to list lineages that share a base.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lineage_bases: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Period {
    /// The smallest period holding every entry of `entries` (the Unix epoch when empty).
    pub fn covering(entries: &[LedgerEntry]) -> Period {
        let mut times = entries.iter().map(|e| e.record.time);
        let first = times.next().unwrap_or(Timestamp::UNIX_EPOCH);
        let (from, to) = times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t)));
        Period { from, to }
    }
}

/// Half-open range of sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRange {
    pub from: u64,
    pub to: u64,
}

/// The link to the previous report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousReport {
    /// SHA-256 of the previous report's canonical JSON (its `report.json` bytes).
    pub report_hash: Sha256Digest,
    /// Its tree size (`range.to`).
    pub tree_size: u64,
    /// Its Merkle root.
    pub merkle_root: Sha256Digest,
    /// RFC 6962 consistency proof from its tree to this one.
    pub consistency_proof: Vec<Sha256Digest>,
}

/// Totals of a range of entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeriodTotals {
    pub entries: u64,
    /// Decided entries by verdict.
    pub decisions: BTreeMap<String, u64>,
    pub cluster: Sums,
    pub namespaces: BTreeMap<String, Sums>,
    pub lineages: BTreeMap<String, Sums>,
    pub accelerators: BTreeMap<String, Sums>,
    pub tiers: BTreeMap<String, Sums>,
}

/// A tier with a reporting obligation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportingThreshold {
    pub policy: String,
    pub tier: String,
    /// Crossed when a lineage's cumulative charged FLOP exceeds this.
    pub threshold: Flop,
    pub regulation: String,
    pub notify_within: GoDuration,
}

/// A lineage past a reporting threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdCrossing {
    pub lineage: String,
    pub policy: String,
    pub tier: String,
    pub regulation: String,
    pub threshold: Flop,
    /// Time of the admission that took the lineage past the threshold (when
    /// it "became known that it will be met", EU AI Act Art. 52(1)).
    pub crossed_at: Timestamp,
    /// `seq` of that entry.
    pub crossed_at_seq: u64,
    /// The lineage's cumulative charged FLOP right after it.
    pub charged_at_crossing: Flop,
    /// `crossedAt + notifyWithin`.
    pub notify_by: Timestamp,
}

/// A policy's substantial-modification rule (`spec.lineage.modification`)
/// with a reporting obligation: a fine-tune lineage whose own charged FLOP
/// exceeds `fractionOfBase` of its base lineage's own charged FLOP (or of
/// `assumedBaseFlop` when the base has none on the ledger) must be notified
/// (EU AI Act: the modifier becomes the provider).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModificationThreshold {
    pub policy: String,
    /// The rule's name, e.g. `eu-one-third-modification`.
    pub rule: String,
    pub fraction_of_base: f64,
    /// Base compute assumed when the base lineage has no charged FLOP on the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_base_flop: Option<Flop>,
    pub regulation: String,
    pub notify_within: GoDuration,
}

/// A fine-tune lineage past a modification threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModificationCrossing {
    /// The fine-tune (modification) lineage.
    pub lineage: String,
    /// The lineage it modifies.
    pub base_lineage: String,
    pub policy: String,
    pub rule: String,
    pub regulation: String,
    /// The base lineage's own charged FLOP at the crossing, or the assumed figure.
    pub base_flop: Flop,
    /// Whether `baseFlop` is the policy's assumption (the base has no compute on the ledger).
    pub base_assumed: bool,
    /// `baseFlop × fractionOfBase`.
    pub threshold: Flop,
    /// Time of the admission that took the fine-tune past it.
    pub crossed_at: Timestamp,
    /// `seq` of that entry.
    pub crossed_at_seq: u64,
    /// The fine-tune lineage's own charged FLOP right after it.
    pub charged_at_crossing: Flop,
    /// `crossedAt + notifyWithin`.
    pub notify_by: Timestamp,
}

/// A policy's name and the SHA-256 of its spec's canonical JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDigest {
    pub name: String,
    pub content_hash: Sha256Digest,
}

/// Why a report could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReportError {
    #[error(
        "entry seq {seq} at {time} lies outside the report period {from} to {to}; choose a period that covers the entries"
    )]
    OutsidePeriod {
        seq: u64,
        time: Timestamp,
        from: Timestamp,
        to: Timestamp,
    },
    #[error("the report period starts at {from}, after its end {to}")]
    EmptyPeriod { from: Timestamp, to: Timestamp },
    #[error(
        "the previous report covers {previous} entries but only {available} are given; pass the whole ledger from seq 0"
    )]
    PreviousBeyondLedger { previous: u64, available: u64 },
    #[error(
        "the previous report's Merkle root {claimed} is not the root of the first {size} entries ({actual}); it belongs to another ledger"
    )]
    PreviousRootMismatch {
        size: u64,
        claimed: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("entry at position {index} has seq {seq}; pass the ledger from seq 0 in order")]
    NotFromGenesis { index: u64, seq: u64 },
    #[error("deadline {crossed_at} + {within} is out of range")]
    DeadlineOverflow {
        crossed_at: Timestamp,
        within: GoDuration,
    },
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// The reporting thresholds of `policies`: every tier with `reporting`.
pub fn reporting_thresholds(policies: &[Policy]) -> Vec<ReportingThreshold> {
    policies
        .iter()
        .flat_map(|p| {
            p.spec.tiers.iter().filter_map(move |t| {
                t.reporting.as_ref().map(|r| ReportingThreshold {
                    policy: p.name.clone(),
                    tier: t.name.clone(),
                    threshold: t.threshold,
                    regulation: r.regulation.clone(),
                    notify_within: r.notify_within,
                })
            })
        })
        .collect()
}

/// The modification rules of `policies` that carry a reporting obligation.
pub fn modification_thresholds(policies: &[Policy]) -> Vec<ModificationThreshold> {
    policies
        .iter()
        .filter_map(|p| {
            let m = p.spec.lineage.modification.as_ref()?;
            let r = m.reporting.as_ref()?;
            Some(ModificationThreshold {
                policy: p.name.clone(),
                rule: m.name.clone(),
                fraction_of_base: m.fraction_of_base,
                assumed_base_flop: m.assumed_base_flop,
                regulation: r.regulation.clone(),
                notify_within: r.notify_within,
            })
        })
        .collect()
}

/// Name and content hash of each policy.
pub fn policy_digests(policies: &[Policy]) -> Result<Vec<PolicyDigest>, CanonicalError> {
    policies
        .iter()
        .map(|p| {
            Ok(PolicyDigest {
                name: p.name.clone(),
                content_hash: Sha256Digest::of(&canonical_json(&p.spec)?),
            })
        })
        .collect()
}

/// The leaf hashes of `entries` for the Merkle tree.
pub fn leaf_hashes(entries: &[LedgerEntry]) -> Vec<Sha256Digest> {
    entries
        .iter()
        .map(|e| merkle::entry_leaf(&e.hash))
        .collect()
}

/// What a report states about its predecessor, before the consistency proof.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviousLink {
    pub report_hash: Sha256Digest,
    pub tree_size: u64,
    pub merkle_root: Sha256Digest,
}

/// Builds the body of a report over `entries` (the ledger from seq 0; the
/// report covers up to its last entry), continuing `previous` if given.
/// The entries' chain is trusted here (they come from a [`crate::ledger::Ledger`]);
/// the verifier checks it.
pub fn build_report(
    entries: &[LedgerEntry],
    policies: &[Policy],
    period: Period,
    previous: Option<&SignedReport>,
) -> Result<ReportBody, ReportError> {
    let link = previous
        .map(|p| -> Result<PreviousLink, ReportError> {
            Ok(PreviousLink {
                report_hash: p.report_hash()?,
                tree_size: p.report.range.to,
                merkle_root: p.report.merkle_root,
            })
        })
        .transpose()?;
    let mut b = BodyBuilder::new(
        period,
        Thresholds {
            reporting: reporting_thresholds(policies),
            modification: modification_thresholds(policies),
        },
        policy_digests(policies)?,
        link,
    );
    for e in entries {
        b.push(e.seq, &e.hash, &RecordFacts::of(&e.record));
    }
    b.finish()
}

/// Computes a report body from entries pushed in ledger order, from seq 0,
/// in one pass and without keeping the entries. [`build_report`] pushes
/// typed entries; the verifier pushes what it reads from each verified line
/// with the signed report's own period, thresholds, policies and previous
/// link, and compares the result field by field.
#[derive(Debug)]
pub struct BodyBuilder {
    period: Period,
    reporting_thresholds: Vec<ReportingThreshold>,
    modification_thresholds: Vec<ModificationThreshold>,
    /// Own charged FLOP per lineage (admissions whose first charged lineage
    /// it is), for modification crossings.
    own: HashMap<String, Flop>,
    modified: HashSet<(String, usize)>,
    modification_crossings: Vec<ModificationCrossing>,
    policies: Vec<PolicyDigest>,
    /// Base lineages declared per lineage, for `lineageBases`.
    bases: BTreeMap<String, Vec<String>>,
    previous: Option<PreviousLink>,
    /// `range.from`: the previous report's tree size.
    from: u64,
    count: u64,
    leaves: Vec<Sha256Digest>,
    /// The root over the first `.0` leaves, once computed.
    root: Option<(u64, Sha256Digest)>,
    head: Sha256Digest,
    totals: LedgerTotals,
    decisions: BTreeMap<String, u64>,
    /// Cumulative charged FLOP per lineage, for threshold crossings.
    charged: HashMap<String, Flop>,
    crossed: HashSet<(String, usize)>,
    threshold_crossings: Vec<ThresholdCrossing>,
    /// The first error of each kind, reported by [`BodyBuilder::finish`] in
    /// the order the checks are documented.
    not_from_genesis: Option<ReportError>,
    outside_period: Option<ReportError>,
    deadline: Option<ReportError>,
}

/// The obligations a report applies to the entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub reporting: Vec<ReportingThreshold>,
    pub modification: Vec<ModificationThreshold>,
}

impl BodyBuilder {
    pub fn new(
        period: Period,
        thresholds: Thresholds,
        policies: Vec<PolicyDigest>,
        previous: Option<PreviousLink>,
    ) -> BodyBuilder {
        BodyBuilder {
            period,
            reporting_thresholds: thresholds.reporting,
            modification_thresholds: thresholds.modification,
            own: HashMap::new(),
            modified: HashSet::new(),
            modification_crossings: Vec::new(),
            policies,
            bases: BTreeMap::new(),
            from: previous.as_ref().map_or(0, |p| p.tree_size),
            previous,
            count: 0,
            leaves: Vec::new(),
            root: None,
            head: crate::ledger::GENESIS_PREV_HASH,
            totals: LedgerTotals::for_report(),
            decisions: BTreeMap::new(),
            charged: HashMap::new(),
            crossed: HashSet::new(),
            threshold_crossings: Vec::new(),
            not_from_genesis: None,
            outside_period: None,
            deadline: None,
        }
    }

    /// Adds the next entry (`seq` must be the number of entries pushed so far).
    pub fn push(&mut self, seq: u64, hash: &Sha256Digest, r: &RecordFacts<'_>) {
        self.push_leaf(seq, hash, merkle::entry_leaf(hash), r);
    }

    /// [`BodyBuilder::push`] with the entry's Merkle leaf hash already
    /// computed (`merkle::entry_leaf(hash)`; the verifier's threads do that).
    pub fn push_leaf(
        &mut self,
        seq: u64,
        hash: &Sha256Digest,
        leaf: Sha256Digest,
        r: &RecordFacts<'_>,
    ) {
        let index = self.count;
        self.count += 1;
        if seq != index && self.not_from_genesis.is_none() {
            self.not_from_genesis = Some(ReportError::NotFromGenesis { index, seq });
        }
        self.leaves.push(leaf);
        self.head = *hash;
        let in_range = index >= self.from;
        if in_range
            && (r.time < self.period.from || r.time > self.period.to)
            && self.outside_period.is_none()
        {
            self.outside_period = Some(ReportError::OutsidePeriod {
                seq,
                time: r.time,
                from: self.period.from,
                to: self.period.to,
            });
        }
        self.totals.apply_facts(r, in_range);
        if let EventFacts::Decided { verdict, .. } = r.event {
            if in_range {
                if let Some(n) = self.decisions.get_mut(verdict.as_str()) {
                    *n += 1;
                } else {
                    self.decisions.insert(verdict.as_str().to_string(), 1);
                }
            }
            if let (Some(lineage), Some(base)) = (r.lineage, r.base_lineage) {
                note_base(&mut self.bases, lineage, base);
            }
        }
        if let Some((amount, lineages)) = r.admitted() {
            let mut own = None;
            for l in lineages {
                own.get_or_insert(l);
                self.crossings(seq, r, l, amount);
            }
            if let Some(own) = own {
                self.modifications(seq, r, own, amount);
            }
        }
    }

    /// Adds `amount` to `lineage`'s own charge (it was the admitted job's
    /// own lineage) and, when the job fine-tunes a base lineage under a
    /// policy with a modification threshold, records the threshold's first
    /// crossing. Mirrors the engine's rule: the base's own charged FLOP (or
    /// the assumed figure when it has none) times `fractionOfBase`, against
    /// the fine-tune's own charged FLOP after the admission.
    fn modifications(&mut self, seq: u64, r: &RecordFacts<'_>, lineage: &str, amount: Flop) {
        if self.modification_thresholds.is_empty() {
            return;
        }
        let own_after = add_to(&mut self.own, lineage, amount);
        let Some(base) = r.base_lineage else {
            return;
        };
        // The rules of the policies that selected the job; in entries
        // written before `selectedBy` existed, the deciding policy's.
        let applies = |policy: &str| match r.event {
            EventFacts::Decided {
                selected_by: Some(list),
                ..
            } => list.contains(policy),
            EventFacts::Decided {
                selected_by: None,
                policy: Some(decider),
                ..
            } => decider == policy,
            _ => false,
        };
        let known = self.own.get(base).copied().unwrap_or(Flop::ZERO);
        for (i, m) in self.modification_thresholds.iter().enumerate() {
            if !applies(&m.policy) {
                continue;
            }
            let (base_flop, base_assumed) = if known.get() > 0.0 {
                (known, false)
            } else {
                (m.assumed_base_flop.unwrap_or(Flop::ZERO), true)
            };
            let threshold = base_flop.get() * m.fraction_of_base;
            if base_flop.get() <= 0.0
                || own_after.get() <= threshold
                || self.modified.contains(&(lineage.to_string(), i))
            {
                continue;
            }
            self.modified.insert((lineage.to_string(), i));
            let notify_by = match deadline(r.time, m.notify_within) {
                Ok(d) => d,
                Err(e) => {
                    self.deadline.get_or_insert(e);
                    continue;
                }
            };
            self.modification_crossings.push(ModificationCrossing {
                lineage: lineage.to_string(),
                base_lineage: base.to_string(),
                policy: m.policy.clone(),
                rule: m.rule.clone(),
                regulation: m.regulation.clone(),
                base_flop,
                base_assumed,
                threshold: Flop(threshold),
                crossed_at: r.time,
                crossed_at_seq: seq,
                charged_at_crossing: own_after,
                notify_by,
            });
        }
    }

    /// Adds `amount` to `lineage`'s cumulative charge (every admission
    /// counts toward it) and records every reporting threshold it is past
    /// for the first time at an admission of a job its policy selected
    /// ([`RecordFacts::selected_by`]): a policy's tiers apply only in the
    /// namespaces it selects.
    fn crossings(&mut self, seq: u64, r: &RecordFacts<'_>, lineage: &str, amount: Flop) {
        if self.reporting_thresholds.is_empty() {
            return;
        }
        let time = r.time;
        let total = add_to(&mut self.charged, lineage, amount);
        for (i, t) in self.reporting_thresholds.iter().enumerate() {
            if total.get() > t.threshold.get()
                && r.selected_by(&t.policy)
                && !self.crossed.contains(&(lineage.to_string(), i))
            {
                self.crossed.insert((lineage.to_string(), i));
                let notify_by = match deadline(time, t.notify_within) {
                    Ok(d) => d,
                    Err(e) => {
                        self.deadline.get_or_insert(e);
                        continue;
                    }
                };
                self.threshold_crossings.push(ThresholdCrossing {
                    lineage: lineage.to_string(),
                    policy: t.policy.clone(),
                    tier: t.tier.clone(),
                    regulation: t.regulation.clone(),
                    threshold: t.threshold,
                    crossed_at: time,
                    crossed_at_seq: seq,
                    charged_at_crossing: total,
                    notify_by,
                });
            }
        }
    }

    /// The leaf hashes of the entries pushed so far.
    pub fn leaves(&self) -> &[Sha256Digest] {
        &self.leaves
    }

    /// The Merkle root over the entries pushed so far (computed once, and
    /// reused by [`BodyBuilder::finish`] unless more entries are pushed).
    pub fn merkle_root(&mut self) -> Sha256Digest {
        match self.root {
            Some((n, root)) if n == self.count => root,
            _ => {
                let root = merkle::root(&self.leaves);
                self.root = Some((self.count, root));
                root
            }
        }
    }

    /// The `hash` of the last entry pushed (the genesis value when none).
    pub fn head(&self) -> Sha256Digest {
        self.head
    }

    /// The body over every entry pushed.
    pub fn finish(mut self) -> Result<ReportBody, ReportError> {
        let period = self.period;
        if period.from > period.to {
            return Err(ReportError::EmptyPeriod {
                from: period.from,
                to: period.to,
            });
        }
        if let Some(e) = self.not_from_genesis {
            return Err(e);
        }
        let to = self.count;
        let from = self.from;
        if from > to {
            return Err(ReportError::PreviousBeyondLedger {
                previous: from,
                available: to,
            });
        }
        if let Some(e) = self.outside_period {
            return Err(e);
        }
        let merkle_root = self.merkle_root();
        let leaves = &self.leaves;
        let previous = match self.previous {
            None => None,
            Some(link) => {
                let from_index = usize::try_from(from).unwrap_or(usize::MAX);
                let actual = merkle::root(&leaves[..from_index.min(leaves.len())]);
                if actual != link.merkle_root {
                    return Err(ReportError::PreviousRootMismatch {
                        size: link.tree_size,
                        claimed: link.merkle_root,
                        actual,
                    });
                }
                Some(PreviousReport {
                    report_hash: link.report_hash,
                    tree_size: link.tree_size,
                    merkle_root: link.merkle_root,
                    consistency_proof: merkle::consistency_proof(leaves, link.tree_size)
                        .unwrap_or_default(),
                })
            }
        };
        if let Some(e) = self.deadline {
            return Err(e);
        }
        let t = self.totals;
        Ok(ReportBody {
            period,
            range: EntryRange { from, to },
            head_hash: self.head,
            merkle_root,
            previous,
            totals: PeriodTotals {
                entries: to - from,
                decisions: self.decisions,
                cluster: t.cluster(),
                namespaces: t.namespaces().clone(),
                lineages: t.lineages().clone(),
                accelerators: t.accelerators().clone(),
                tiers: t.tiers().clone(),
            },
            cumulative: t.cumulative().clone(),
            reporting_thresholds: self.reporting_thresholds,
            threshold_crossings: self.threshold_crossings,
            modification_thresholds: self.modification_thresholds,
            modification_crossings: self.modification_crossings,
            policies: self.policies,
            lineage_bases: self.bases,
        })
    }
}

/// Adds `amount` to `key`'s sum (from zero) and returns the new sum; the
/// key is copied only when new.
fn add_to(map: &mut HashMap<String, Flop>, key: &str, amount: Flop) -> Flop {
    match map.get_mut(key) {
        Some(t) => {
            *t += amount;
            *t
        }
        None => {
            let t = Flop::ZERO + amount;
            map.insert(key.to_string(), t);
            t
        }
    }
}

/// Records that `lineage` declared `base` (kept sorted, without repeats;
/// allocates only for a pair not seen before).
fn note_base(bases: &mut BTreeMap<String, Vec<String>>, lineage: &str, base: &str) {
    match bases.get_mut(lineage) {
        Some(list) => {
            if let Err(at) = list.binary_search_by(|b| b.as_str().cmp(base)) {
                list.insert(at, base.to_string());
            }
        }
        None => {
            bases.insert(lineage.to_string(), vec![base.to_string()]);
        }
    }
}

/// `crossed_at + within`, the notification deadline.
pub(crate) fn deadline(
    crossed_at: Timestamp,
    within: GoDuration,
) -> Result<Timestamp, ReportError> {
    let overflow = || ReportError::DeadlineOverflow { crossed_at, within };
    let d = jiff::SignedDuration::try_from(within.0).map_err(|_| overflow())?;
    crossed_at.checked_add(d).map_err(|_| overflow())
}

impl ReportBody {
    /// Signs the body with `key`.
    pub fn sign(self, key: &SigningKey) -> Result<SignedReport, CanonicalError> {
        let key_id = signing::key_id(&key.verifying_key());
        let message = canonical_json(&UnsignedReport {
            api_version: REPORT_API_VERSION,
            key_id: &key_id,
            kind: REPORT_KIND,
            report: &self,
        })?;
        let signature = sign_base64(key, &message);
        Ok(SignedReport {
            api_version: REPORT_API_VERSION.to_string(),
            key_id,
            kind: REPORT_KIND.to_string(),
            report: self,
            signature,
        })
    }
}

/// Why a report's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the report was signed by key {report_key_id}, not by the given key {given_key_id}")]
    WrongKey {
        report_key_id: Sha256Digest,
        given_key_id: Sha256Digest,
    },
    #[error("field signature is not base64: {0}")]
    NotBase64(String),
    #[error("field signature is {0} bytes long; an Ed25519 signature is 64")]
    WrongLength(usize),
    #[error(
        "the signature does not match the report's content: the report was altered after it was signed"
    )]
    Invalid,
    #[error("apiVersion/kind is {0}, expected komptroller.dev/v1alpha1 ComputeReport")]
    WrongKind(String),
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

impl SignedReport {
    /// The bytes the signature is over: canonical JSON without `signature`.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical_json(&UnsignedReport {
            api_version: &self.api_version,
            key_id: &self.key_id,
            kind: &self.kind,
            report: &self.report,
        })
    }

    /// The canonical JSON of the whole report: the content of `report.json`.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical_json(self)
    }

    /// SHA-256 of [`SignedReport::canonical_bytes`]; the next report's `previous.reportHash`.
    pub fn report_hash(&self) -> Result<Sha256Digest, CanonicalError> {
        Ok(Sha256Digest::of(&self.canonical_bytes()?))
    }

    /// Checks the key id and the signature.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), SignatureError> {
        if self.api_version != REPORT_API_VERSION || self.kind != REPORT_KIND {
            return Err(SignatureError::WrongKind(format!(
                "{} {}",
                self.api_version, self.kind
            )));
        }
        check_signature(&self.key_id, &self.signature, &self.signed_bytes()?, key)
    }
}

/// Checks a detached signature as every signed komptroller document
/// carries it: `keyId` names `key`, `signature` is the canonical base64 of
/// 64 bytes, and it is a valid Ed25519 signature of `message`.
pub(crate) fn check_signature(
    key_id: &Sha256Digest,
    signature: &str,
    message: &[u8],
    key: &VerifyingKey,
) -> Result<(), SignatureError> {
    let given = signing::key_id(key);
    if given != *key_id {
        return Err(SignatureError::WrongKey {
            report_key_id: *key_id,
            given_key_id: given,
        });
    }
    let sig =
        Base64::decode_vec(signature).map_err(|e| SignatureError::NotBase64(e.to_string()))?;
    if sig.len() != 64 {
        return Err(SignatureError::WrongLength(sig.len()));
    }
    // Base64 has several spellings of the same bytes (padding bits);
    // only the canonical one is accepted, so the file stays canonical.
    if Base64::encode_string(&sig) != signature {
        return Err(SignatureError::NotBase64(
            "non-canonical base64 encoding".into(),
        ));
    }
    if signing::verify(key, message, &sig) {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

/// The canonical base64 of `key`'s Ed25519 signature of `message`.
pub(crate) fn sign_base64(key: &SigningKey, message: &[u8]) -> String {
    Base64::encode_string(&signing::sign(key, message))
}

/// Why a file is not a signed report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportParseError {
    #[error("not a komptroller report: {0}")]
    Malformed(String),
    #[error(
        "not in RFC 8785 canonical form (byte {offset} differs from the canonical encoding), so the file was altered after it was written"
    )]
    NotCanonical { offset: usize },
}

/// Parses `report.json`, which must be exactly the canonical JSON of a
/// report (a single trailing newline is tolerated).
pub fn parse_report(bytes: &[u8]) -> Result<SignedReport, ReportParseError> {
    parse_canonical(bytes)
}

/// Parses a signed document that must be exactly its own canonical JSON
/// (a single trailing newline is tolerated).
pub(crate) fn parse_canonical<T: serde::de::DeserializeOwned + Serialize>(
    bytes: &[u8],
) -> Result<T, ReportParseError> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let doc: T =
        serde_json::from_slice(body).map_err(|e| ReportParseError::Malformed(e.to_string()))?;
    let canonical = canonical_json(&doc).map_err(|e| ReportParseError::Malformed(e.to_string()))?;
    if canonical != body {
        let offset = canonical
            .iter()
            .zip(body)
            .position(|(a, b)| a != b)
            .unwrap_or(canonical.len().min(body.len()));
        return Err(ReportParseError::NotCanonical { offset });
    }
    Ok(doc)
}
