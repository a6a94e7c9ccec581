//! Treaty audit: verify the signed books of many clusters under a trust
//! file of their keys, merge their lineages, and say what the union shows
//! that no single cluster's report does: what `komptroller audit` runs.
//!
//! Each cluster signs its own books and its reports list only what crossed
//! a threshold there. A run split over three clusters at 6e24 FLOP each
//! crosses 1e25 in no single report, and a cluster that stops reporting is
//! noticed by nobody. The audit therefore (1) verifies every cluster's
//! reports, their chain and, given the ledger, everything `verify` checks
//! ([`books`]); (2) lists gaps, late reports and silence as findings;
//! (3) merges lineage totals across the verified clusters (by name, plus
//! an alias file) and finds every threshold the union crosses that no
//! cluster's report listed, with the date the union crossed and the
//! notification deadline that follows ([`merge`]); and (4) lists lineages of
//! different names, in different clusters, that share a base model.
//!
//! The result is an [`AuditReport`]: text for people, JSON for tools, and
//! signed by the auditor ([`SignedAuditReport`]) so that the audit itself
//! can be verified in turn. Time is an argument (`as_of`), as everywhere in
//! the engine.

mod books;
mod merge;
mod render;
mod signed;
mod trust;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use books::{
    BooksFailure, BooksFailureKind, ClusterBooks, ClusterResult, LedgerCheck, ReportRef,
};
pub use merge::{ClusterShare, LineageShare, MergedLineage, RelatedLineages, UnionCrossing};
pub use signed::*;
pub use trust::{
    Aliases, AuditInputError, AuditThreshold, Trust, TrustedCluster, TrustedKey, parse_aliases,
    parse_trust,
};

use crate::ledger::Sha256Digest;
use crate::report::{EntryRange, Period};
use crate::units::Flop;

/// Exit code: every cluster verified and nothing was found.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: findings (a union crossing, a gap, a late report, silence).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: a cluster's books fail verification.
pub const EXIT_BOOKS_FAILED: u8 = 3;

/// At most this many clusters' ledgers are checked at once (each check
/// runs on every core as well; this only fills the cores while one
/// ledger's serial steps run).
const LEDGERS_AT_ONCE: usize = 2;

/// What to audit.
#[derive(Clone, Debug)]
pub struct AuditRequest<'a> {
    pub trust: &'a Trust,
    pub aliases: &'a Aliases,
    /// Books by cluster; a trusted cluster without books is silent.
    pub books: &'a [ClusterBooks<'a>],
    /// The audit time: continuity is judged at it.
    pub as_of: Timestamp,
    /// SHA-256 of the trust file and alias file, recorded in the report.
    pub trust_digest: Option<Sha256Digest>,
    pub aliases_digest: Option<Sha256Digest>,
}

/// Something the auditor must look at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Finding {
    /// One sentence with the cluster, the files, the numbers and dates.
    pub message: String,
    pub detail: FindingKind,
}

impl Finding {
    pub fn new(detail: FindingKind, message: String) -> Finding {
        Finding { message, detail }
    }
}

/// The kinds of finding, with their figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum FindingKind {
    /// The merged lineage crossed a threshold that no cluster's report listed.
    UnionCrossing { crossing: UnionCrossing },
    /// No report since `lastReportEnd` (none at all when absent), though one
    /// was expected by `expectedBy`.
    Silent {
        cluster: String,
        last_report_end: Option<Timestamp>,
        expected_by: Option<Timestamp>,
    },
    /// Reports missing from the chain: `entries` (and the time `period`)
    /// lie in no report of the books. `after` is absent when the missing
    /// reports are the first ones.
    MissingReports {
        cluster: String,
        after: Option<String>,
        before: String,
        entries: EntryRange,
        period: Option<Period>,
    },
    /// Two linked reports whose periods leave `gap` uncovered.
    PeriodGap {
        cluster: String,
        after: String,
        before: String,
        gap: Period,
    },
    /// A report whose period is longer than the cluster's reporting period.
    LateReport {
        cluster: String,
        file: String,
        period: Period,
    },
}

/// A threshold the merged lineages were checked against, and who set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsideredThreshold {
    pub regulation: String,
    pub threshold: Flop,
    pub notify_within: crate::duration::GoDuration,
    /// `trust file`, or `CLUSTER: policy P tier T` for each cluster whose
    /// reports carry it.
    pub sources: Vec<String>,
}

/// Counts and the exit code they give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSummary {
    pub clusters: u64,
    pub verified: u64,
    pub failed: u64,
    pub findings: u64,
    pub union_crossings: u64,
    /// 0 clean, 1 findings, 3 a cluster's books failed.
    pub exit_code: u8,
}

/// Everything the audit states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditReport {
    pub as_of: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_file: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_file: Option<Sha256Digest>,
    /// One per cluster of the trust file, in its order.
    pub clusters: Vec<ClusterResult>,
    pub thresholds: Vec<ConsideredThreshold>,
    /// Merged lineages of the verified clusters, by name.
    pub lineages: Vec<MergedLineage>,
    pub findings: Vec<Finding>,
    /// Lineages of different names in different clusters sharing a base model.
    pub possibly_related: Vec<RelatedLineages>,
    pub summary: AuditSummary,
}

impl AuditReport {
    pub fn exit_code(&self) -> u8 {
        self.summary.exit_code
    }
}

/// The exit code for these counts.
pub fn exit_code_for(failed: u64, findings: u64) -> u8 {
    if failed > 0 {
        EXIT_BOOKS_FAILED
    } else if findings > 0 {
        EXIT_FINDINGS
    } else {
        EXIT_CLEAN
    }
}

/// Runs the audit. Bad input (books for a cluster the trust file does not
/// name, a cluster's books given twice) is an error; everything about the
/// books themselves is in the report.
pub fn audit(req: &AuditRequest<'_>) -> Result<AuditReport, AuditInputError> {
    for (i, b) in req.books.iter().enumerate() {
        if req.trust.cluster(b.cluster).is_none() {
            return Err(AuditInputError(format!(
                "--books {}=...: cluster {:?} is not in the trust file, which names {}; add it with its keys or fix the name",
                b.cluster,
                b.cluster,
                req.trust
                    .clusters
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if req.books[..i].iter().any(|o| o.cluster == b.cluster) {
            return Err(AuditInputError(format!(
                "--books {}=...: the cluster's books are given twice; pass all its files in one ClusterBooks",
                b.cluster
            )));
        }
    }
    let empty: Vec<ClusterBooks<'_>> = req
        .trust
        .clusters
        .iter()
        .map(|c| ClusterBooks {
            cluster: &c.name,
            reports: Vec::new(),
            ledger: None,
        })
        .collect();
    let mut clusters = Vec::with_capacity(req.trust.clusters.len());
    let mut findings = Vec::new();
    // Phase 1: every cluster's reports (cheap), so the lineages that can
    // cross anything are known before any ledger is read.
    for (c, none) in req.trust.clusters.iter().zip(&empty) {
        let books = req
            .books
            .iter()
            .find(|b| b.cluster == c.name)
            .unwrap_or(none);
        let mut result = books::new_result(c);
        let checked = match books::check_reports(c, books, req.as_of, &mut result, &mut findings) {
            Ok(checked) => checked,
            Err(f) => {
                result.failure = Some(f);
                None
            }
        };
        clusters.push(merge::ClusterState {
            trusted: c,
            books,
            result,
            checked,
            ledger: None,
        });
    }
    let thresholds = merge::considered_thresholds(req.trust, &clusters);
    let candidates = merge::candidates(req.aliases, &clusters, &thresholds);
    // Phase 2: ledgers, recording the admissions of those lineages only.
    // Clusters are independent: several ledgers are checked at once, each
    // on its own threads, so one ledger's in-order pass (and its serial
    // end: Merkle root, report comparison) overlaps another's line checks.
    let pending: Vec<std::sync::Mutex<&mut merge::ClusterState<'_, '_, '_>>> = clusters
        .iter_mut()
        .filter(|s| s.result.failure.is_none() && s.checked.is_some() && s.books.ledger.is_some())
        .map(std::sync::Mutex::new)
        .collect();
    let check = |state: &mut merge::ClusterState<'_, '_, '_>| {
        let (Some(checked), Some(ledger)) = (&state.checked, state.books.ledger) else {
            return;
        };
        let name = state.trusted.name.as_str();
        let interest = |l: &str| candidates.contains(req.aliases.canonical(name, l));
        match books::check_ledger(
            state.trusted,
            state.books,
            checked,
            ledger,
            interest,
            &mut state.result,
        ) {
            Ok(series) => state.ledger = Some(series),
            Err(f) => state.result.failure = Some(f),
        }
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        while let Some(m) = pending.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            // Each item is taken by one thread only; a poisoned lock means
            // another check panicked, which the scope re-raises anyway.
            if let Ok(mut state) = m.lock() {
                check(&mut state);
            }
        }
    };
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(LEDGERS_AT_ONCE)
        .min(pending.len());
    if parallel <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 1..parallel {
                s.spawn(work);
            }
            work();
        });
    }
    drop(pending);
    for state in &mut clusters {
        state.result.verified = state.result.failure.is_none();
    }
    let merged = merge::merge(req.aliases, &clusters, &thresholds);
    let union_crossings = merged
        .lineages
        .iter()
        .flat_map(|l| &l.crossings)
        .filter(|c| c.reported_by.is_empty())
        .count() as u64;
    findings.extend(merged.findings);
    let failed = clusters.iter().filter(|c| !c.result.verified).count() as u64;
    let results: Vec<ClusterResult> = clusters.into_iter().map(|c| c.result).collect();
    let summary = AuditSummary {
        clusters: results.len() as u64,
        verified: results.len() as u64 - failed,
        failed,
        findings: findings.len() as u64,
        union_crossings,
        exit_code: exit_code_for(failed, findings.len() as u64),
    };
    Ok(AuditReport {
        as_of: req.as_of,
        trust_file: req.trust_digest,
        alias_file: req.aliases_digest,
        clusters: results,
        thresholds,
        lineages: merged.lineages,
        findings,
        possibly_related: merged.related,
        summary,
    })
}
