//! Merging the verified clusters: lineage totals across clusters, the
//! thresholds the union crosses, and lineages that may be one model.
//!
//! Rules:
//! - A lineage is identified across clusters by its name, or by the alias
//!   file's merged name. Its merged total is the sum of the clusters'
//!   cumulative totals from their newest reports, which already count
//!   fine-tunes toward their base wherever that cluster's policies say so.
//!   Aliases name one model: aliasing a fine-tune onto its own base counts
//!   its compute twice where its policy already charges the base.
//! - The thresholds are the auditor's (trust file) and every reporting
//!   threshold the verified clusters' reports carry, by regulation, FLOP
//!   and notification period. The union crosses one when the sum over the
//!   clusters of the lineage's cumulative charged FLOP first exceeds it.
//!   With a verified ledger the moment is the admission that took it over
//!   (exact); with reports only it is the end of the report period in
//!   which the cluster's total grew (the union had crossed by then at the
//!   latest; `crossedAfter` is the period's start). The deadline is the
//!   crossing plus the notification period.
//! - A crossing is a finding unless a cluster's report lists the same
//!   lineage (by merged name) past the same threshold of the same
//!   regulation.
//! - Lineages of different merged names, in different clusters, whose jobs
//!   declared the same base model are listed as possibly related.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::books::{CheckedReports, ClusterBooks, ClusterResult, LedgerSeries};
use super::trust::{Aliases, Trust, TrustedCluster};
use super::{ConsideredThreshold, Finding, FindingKind};
use crate::duration::GoDuration;
use crate::ledger::Sums;
use crate::report::deadline;
use crate::units::{Flop, sci};

/// A cluster during the audit.
pub(super) struct ClusterState<'t, 'b, 'a> {
    pub trusted: &'t TrustedCluster,
    pub books: &'b ClusterBooks<'a>,
    pub result: ClusterResult,
    pub checked: Option<CheckedReports>,
    pub ledger: Option<LedgerSeries>,
}

impl ClusterState<'_, '_, '_> {
    /// The verified reports, when the cluster's books hold.
    fn verified(&self) -> Option<&CheckedReports> {
        if self.result.failure.is_some() {
            None
        } else {
            self.checked.as_ref()
        }
    }
}

/// One cluster's part of a merged lineage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineageShare {
    pub cluster: String,
    /// The lineage names in that cluster merged here.
    pub names: Vec<String>,
    pub sums: Sums,
}

/// A lineage merged across clusters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MergedLineage {
    pub lineage: String,
    pub total: Sums,
    pub clusters: Vec<LineageShare>,
    /// Every threshold the union crossed, reported by a cluster or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crossings: Vec<UnionCrossing>,
}

/// How exactly the crossing time is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CrossingBasis {
    /// The admission in a verified ledger that took the union over.
    Ledger,
    /// The end of the report period in which a cluster's total grew.
    Reports,
}

/// A cluster's charge on a lineage when the union crossed, and now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterShare {
    pub cluster: String,
    pub charged_at_crossing: Flop,
    pub charged: Flop,
}

/// A cluster's own report of the same crossing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportedCrossing {
    pub cluster: String,
    /// The lineage as that cluster names it.
    pub lineage: String,
    pub policy: String,
    pub tier: String,
    pub crossed_at: Timestamp,
    pub notify_by: Timestamp,
}

/// A threshold the merged lineage crossed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnionCrossing {
    pub lineage: String,
    pub regulation: String,
    pub threshold: Flop,
    pub notify_within: GoDuration,
    /// When the union first exceeded the threshold (see `basis`).
    pub crossed_at: Timestamp,
    /// With `basis: reports`: the start of the period it happened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossed_after: Option<Timestamp>,
    pub basis: CrossingBasis,
    /// `crossedAt + notifyWithin`.
    pub notify_by: Timestamp,
    /// The union's cumulative charged FLOP right after the crossing.
    pub charged_at_crossing: Flop,
    pub clusters: Vec<ClusterShare>,
    /// Clusters whose own report lists it; empty makes it a finding.
    pub reported_by: Vec<ReportedCrossing>,
}

/// One lineage of a possibly related group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelatedMember {
    pub cluster: String,
    /// As the cluster names it.
    pub lineage: String,
    /// Its merged name.
    pub merged_as: String,
    /// Its cumulative charged FLOP in that cluster.
    pub charged: Flop,
}

/// Lineages that declared the same base model in different clusters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelatedLineages {
    /// The base model's merged name.
    pub base: String,
    pub members: Vec<RelatedMember>,
    pub combined_charged: Flop,
    /// Thresholds the combined charge exceeds, were they one model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_cross: Vec<String>,
}

pub(super) struct Merged {
    pub lineages: Vec<MergedLineage>,
    pub findings: Vec<Finding>,
    pub related: Vec<RelatedLineages>,
}

/// The auditor's thresholds and those of the clusters whose reports
/// verified, one per (regulation, FLOP, notification period), ascending.
pub(super) fn considered_thresholds(
    trust: &Trust,
    clusters: &[ClusterState<'_, '_, '_>],
) -> Vec<ConsideredThreshold> {
    let mut out: Vec<ConsideredThreshold> = Vec::new();
    let mut add = |regulation: &str, threshold: Flop, within: GoDuration, source: String| match out
        .iter_mut()
        .find(|t| {
            t.regulation == regulation && t.threshold == threshold && t.notify_within == within
        }) {
        Some(t) => {
            if !t.sources.contains(&source) {
                t.sources.push(source);
            }
        }
        None => out.push(ConsideredThreshold {
            regulation: regulation.to_string(),
            threshold,
            notify_within: within,
            sources: vec![source],
        }),
    };
    for t in &trust.thresholds {
        add(
            &t.regulation,
            t.threshold,
            t.notify_within,
            "trust file".into(),
        );
    }
    for c in clusters {
        let Some(checked) = c.verified() else {
            continue;
        };
        for t in &checked.newest().report.reporting_thresholds {
            add(
                &t.regulation,
                t.threshold,
                t.notify_within,
                format!("{}: policy {} tier {}", c.trusted.name, t.policy, t.tier),
            );
        }
    }
    out.sort_by(|a, b| {
        a.threshold
            .get()
            .total_cmp(&b.threshold.get())
            .then_with(|| a.regulation.cmp(&b.regulation))
            .then_with(|| a.notify_within.cmp(&b.notify_within))
    });
    out
}

/// Merged totals per merged name, from the newest reports.
fn union_totals<'c>(
    aliases: &'c Aliases,
    clusters: &'c [ClusterState<'_, '_, '_>],
) -> BTreeMap<&'c str, Vec<(usize, &'c str, &'c Sums)>> {
    let mut out: BTreeMap<&str, Vec<(usize, &str, &Sums)>> = BTreeMap::new();
    for (i, c) in clusters.iter().enumerate() {
        let Some(checked) = c.verified() else {
            continue;
        };
        for (l, s) in &checked.newest().report.cumulative {
            out.entry(aliases.canonical(&c.trusted.name, l))
                .or_default()
                .push((i, l.as_str(), s));
        }
    }
    out
}

/// Merged names whose union total exceeds the smallest threshold: only
/// their admissions need to be read from the ledgers.
pub(super) fn candidates(
    aliases: &Aliases,
    clusters: &[ClusterState<'_, '_, '_>],
    thresholds: &[ConsideredThreshold],
) -> HashSet<String> {
    let Some(lowest) = thresholds.first().map(|t| t.threshold.get()) else {
        return HashSet::new();
    };
    union_totals(aliases, clusters)
        .into_iter()
        .filter(|(_, parts)| parts.iter().map(|(_, _, s)| s.charged.get()).sum::<f64>() > lowest)
        .map(|(l, _)| l.to_string())
        .collect()
}

fn add_sums(a: &mut Sums, b: &Sums) {
    a.charged += b.charged;
    a.consumed += b.consumed;
    a.accelerator_seconds += b.accelerator_seconds;
    a.admitted += b.admitted;
}

/// A change of one cluster's charge on a merged lineage.
#[derive(Clone, Copy, Debug)]
struct Step {
    at: Timestamp,
    after: Option<Timestamp>,
    cluster: usize,
    /// The cluster's cumulative charged FLOP on the lineage after it.
    value: f64,
}

/// Every change of the lineage's charge in every verified cluster, in time order.
fn steps(aliases: &Aliases, clusters: &[ClusterState<'_, '_, '_>], lineage: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let Some(checked) = c.verified() else {
            continue;
        };
        let name = c.trusted.name.as_str();
        match &c.ledger {
            Some(series) => {
                let hits: Vec<bool> = series
                    .names
                    .iter()
                    .map(|l| aliases.canonical(name, l) == lineage)
                    .collect();
                let mut value = 0.0;
                for a in &series.admissions {
                    let n = series.lineages[a.from as usize..a.to as usize]
                        .iter()
                        .filter(|&&l| hits[l as usize])
                        .count();
                    for _ in 0..n {
                        value += a.charged.get();
                    }
                    if n > 0 {
                        out.push(Step {
                            at: a.time,
                            after: None,
                            cluster: i,
                            value,
                        });
                    }
                }
            }
            None => {
                let mut last = 0.0;
                for (after, at, cumulative) in checked.snapshots() {
                    let value: f64 = cumulative
                        .iter()
                        .filter(|(l, _)| aliases.canonical(name, l) == lineage)
                        .map(|(_, s)| s.charged.get())
                        .sum();
                    if value != last {
                        out.push(Step {
                            at,
                            after,
                            cluster: i,
                            value,
                        });
                        last = value;
                    }
                }
            }
        }
    }
    // Stable: equal times keep cluster order and ledger order.
    out.sort_by_key(|s| s.at);
    out
}

pub(super) fn merge(
    aliases: &Aliases,
    clusters: &[ClusterState<'_, '_, '_>],
    thresholds: &[ConsideredThreshold],
) -> Merged {
    let mut lineages = Vec::new();
    let mut findings = Vec::new();
    for (name, parts) in union_totals(aliases, clusters) {
        let mut total = Sums::default();
        let mut shares: Vec<LineageShare> = Vec::new();
        for (i, l, s) in parts {
            add_sums(&mut total, s);
            let cluster = &clusters[i].trusted.name;
            match shares.iter_mut().find(|sh| &sh.cluster == cluster) {
                Some(sh) => {
                    sh.names.push(l.to_string());
                    add_sums(&mut sh.sums, s);
                }
                None => shares.push(LineageShare {
                    cluster: cluster.clone(),
                    names: vec![l.to_string()],
                    sums: *s,
                }),
            }
        }
        let crossings = if thresholds
            .first()
            .is_some_and(|t| total.charged.get() > t.threshold.get())
        {
            crossings_of(aliases, clusters, thresholds, name, &shares)
        } else {
            Vec::new()
        };
        for c in crossings.iter().filter(|c| c.reported_by.is_empty()) {
            findings.push(Finding::new(
                FindingKind::UnionCrossing {
                    crossing: c.clone(),
                },
                crossing_message(c),
            ));
        }
        lineages.push(MergedLineage {
            lineage: name.to_string(),
            total,
            clusters: shares,
            crossings,
        });
    }
    let related = related(aliases, clusters, thresholds, &lineages);
    Merged {
        lineages,
        findings,
        related,
    }
}

fn crossings_of(
    aliases: &Aliases,
    clusters: &[ClusterState<'_, '_, '_>],
    thresholds: &[ConsideredThreshold],
    lineage: &str,
    shares: &[LineageShare],
) -> Vec<UnionCrossing> {
    let steps = steps(aliases, clusters, lineage);
    let mut values = vec![0.0f64; clusters.len()];
    let mut out = Vec::new();
    let mut next = 0;
    for s in steps {
        values[s.cluster] = s.value;
        let union: f64 = values.iter().sum();
        while let Some(t) = thresholds.get(next) {
            if union <= t.threshold.get() {
                break;
            }
            next += 1;
            let Ok(notify_by) = deadline(s.at, t.notify_within) else {
                continue;
            };
            let cluster_shares = shares
                .iter()
                .filter_map(|sh| {
                    let i = clusters.iter().position(|c| c.trusted.name == sh.cluster)?;
                    Some(ClusterShare {
                        cluster: sh.cluster.clone(),
                        charged_at_crossing: Flop(values[i]),
                        charged: sh.sums.charged,
                    })
                })
                .collect();
            out.push(UnionCrossing {
                lineage: lineage.to_string(),
                regulation: t.regulation.clone(),
                threshold: t.threshold,
                notify_within: t.notify_within,
                crossed_at: s.at,
                crossed_after: s.after,
                basis: if s.after.is_some() || clusters[s.cluster].ledger.is_none() {
                    CrossingBasis::Reports
                } else {
                    CrossingBasis::Ledger
                },
                notify_by,
                charged_at_crossing: Flop(union),
                clusters: cluster_shares,
                reported_by: reported_by(aliases, clusters, lineage, &t.regulation, t.threshold),
            });
        }
    }
    out
}

fn reported_by(
    aliases: &Aliases,
    clusters: &[ClusterState<'_, '_, '_>],
    lineage: &str,
    regulation: &str,
    threshold: Flop,
) -> Vec<ReportedCrossing> {
    let mut out = Vec::new();
    for c in clusters {
        let Some(checked) = c.verified() else {
            continue;
        };
        for x in &checked.newest().report.threshold_crossings {
            if x.regulation == regulation
                && x.threshold == threshold
                && aliases.canonical(&c.trusted.name, &x.lineage) == lineage
            {
                out.push(ReportedCrossing {
                    cluster: c.trusted.name.clone(),
                    lineage: x.lineage.clone(),
                    policy: x.policy.clone(),
                    tier: x.tier.clone(),
                    crossed_at: x.crossed_at,
                    notify_by: x.notify_by,
                });
            }
        }
    }
    out
}

fn crossing_message(c: &UnionCrossing) -> String {
    let parts: Vec<String> = c
        .clusters
        .iter()
        .map(|s| format!("{} {} FLOP", s.cluster, sci(s.charged_at_crossing.get())))
        .collect();
    let when = match (c.basis, c.crossed_after) {
        (CrossingBasis::Reports, Some(after)) => {
            format!("between {after} and {} (from reports)", c.crossed_at)
        }
        (CrossingBasis::Reports, None) => format!("by {} (from reports)", c.crossed_at),
        (CrossingBasis::Ledger, _) => format!("at {} (from the ledger)", c.crossed_at),
    };
    format!(
        "lineage {}: the union of {} cluster{} crossed {} FLOP ({}) {when}, with {} FLOP ({}), which no cluster's report lists; notify by {}",
        c.lineage,
        c.clusters.len(),
        if c.clusters.len() == 1 { "" } else { "s" },
        sci(c.threshold.get()),
        c.regulation,
        sci(c.charged_at_crossing.get()),
        parts.join(" + "),
        c.notify_by
    )
}

fn related(
    aliases: &Aliases,
    clusters: &[ClusterState<'_, '_, '_>],
    thresholds: &[ConsideredThreshold],
    merged: &[MergedLineage],
) -> Vec<RelatedLineages> {
    // base (merged name) → members
    let mut by_base: BTreeMap<String, Vec<RelatedMember>> = BTreeMap::new();
    for c in clusters {
        let Some(checked) = c.verified() else {
            continue;
        };
        let name = c.trusted.name.as_str();
        let report = &checked.newest().report;
        for (l, bases) in &report.lineage_bases {
            for b in bases {
                let charged = report.cumulative.get(l).map_or(Flop::ZERO, |s| s.charged);
                by_base
                    .entry(aliases.canonical(name, b).to_string())
                    .or_default()
                    .push(RelatedMember {
                        cluster: name.to_string(),
                        lineage: l.clone(),
                        merged_as: aliases.canonical(name, l).to_string(),
                        charged,
                    });
            }
        }
    }
    let totals: HashMap<&str, Flop> = merged
        .iter()
        .map(|m| (m.lineage.as_str(), m.total.charged))
        .collect();
    let mut out = Vec::new();
    for (base, members) in by_base {
        let names: BTreeSet<&str> = members.iter().map(|m| m.merged_as.as_str()).collect();
        let in_clusters: BTreeSet<&str> = members.iter().map(|m| m.cluster.as_str()).collect();
        if names.len() < 2 || in_clusters.len() < 2 {
            continue;
        }
        // Each merged lineage once, at its merged total.
        let combined = names
            .iter()
            .map(|n| totals.get(n).copied().unwrap_or(Flop::ZERO))
            .fold(Flop::ZERO, |a, b| a + b);
        let would_cross = thresholds
            .iter()
            .filter(|t| combined.get() > t.threshold.get())
            .map(|t| format!("{} ({} FLOP)", t.regulation, sci(t.threshold.get())))
            .collect();
        out.push(RelatedLineages {
            base,
            members,
            combined_charged: combined,
            would_cross,
        });
    }
    out
}
