//! One cluster's books under the trust file: every report's canonical form
//! and signature under a key the trust file lists as valid when the
//! report's period ended, the chain of reports (each links the previous
//! one by hash, tree size and Merkle root; entry ranges and periods
//! contiguous), continuity against the cluster's reporting period, and,
//! when the ledger is given, everything `komptroller verify` checks of the
//! newest report plus the head hash, Merkle root and cumulative lineage
//! totals of every earlier report, in one pass over the ledger.
//!
//! A broken item fails the cluster (its figures are not merged); a gap in
//! the chain, a report past its period or silence is a finding: the books
//! that are there still verify, but something is missing.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::trust::{TrustedCluster, TrustedKey};
use super::{Finding, FindingKind};
use crate::ledger::{GENESIS_PREV_HASH, LedgerTotals, Sha256Digest, Sums};
use crate::merkle::MerkleBuilder;
use crate::report::{
    EntryRange, FailureClass, NamedInput, Period, ReportParseError, SignedReport, VerifyRequest,
    entries_text, own_link, parse_report, verify_report_with,
};
use crate::signing;
use crate::units::Flop;

/// One cluster's books as the auditor holds them.
#[derive(Clone, Debug)]
pub struct ClusterBooks<'a> {
    /// The cluster's name in the trust file.
    pub cluster: &'a str,
    /// Candidate report files, in any order; JSON files of another kind
    /// (a `/reports` index, an audit report) are skipped.
    pub reports: Vec<NamedInput<'a>>,
    /// The ledger (JSON Lines from seq 0), when the auditor has it.
    pub ledger: Option<NamedInput<'a>>,
}

/// What kind of item broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BooksFailureKind {
    /// A file is not a readable report or ledger.
    Malformed,
    /// Signed by a key the trust file does not list, or not valid then.
    Key,
    /// Altered after signing (signature or canonical form).
    Signature,
    /// The reports do not form one chain (broken link, fork, overlap).
    ReportChain,
    /// The ledger's hash chain is broken.
    LedgerChain,
    /// The ledger is intact but not the one the reports signed.
    LedgerMismatch,
    /// A total or threshold crossing differs from what the entries give.
    Totals,
}

impl BooksFailureKind {
    fn of(class: FailureClass) -> BooksFailureKind {
        match class {
            FailureClass::Input => BooksFailureKind::Malformed,
            FailureClass::Signature => BooksFailureKind::Signature,
            FailureClass::Chain => BooksFailureKind::LedgerChain,
            FailureClass::LedgerMismatch | FailureClass::Inclusion => {
                BooksFailureKind::LedgerMismatch
            }
            FailureClass::Totals => BooksFailureKind::Totals,
            FailureClass::Previous => BooksFailureKind::ReportChain,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BooksFailureKind::Malformed => "malformed",
            BooksFailureKind::Key => "key",
            BooksFailureKind::Signature => "signature",
            BooksFailureKind::ReportChain => "report chain",
            BooksFailureKind::LedgerChain => "ledger chain",
            BooksFailureKind::LedgerMismatch => "ledger mismatch",
            BooksFailureKind::Totals => "totals",
        }
    }
}

/// The first broken item of a cluster's books.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BooksFailure {
    pub kind: BooksFailureKind,
    /// The report or ledger file.
    pub file: String,
    /// One sentence naming the cluster, the file and the entry or field.
    pub message: String,
}

/// The newest verified report of a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportRef {
    pub file: String,
    /// SHA-256 of its canonical JSON (what the next report links).
    pub report_hash: Sha256Digest,
    pub key_id: Sha256Digest,
    pub range: EntryRange,
    pub period: Period,
    pub head_hash: Sha256Digest,
    pub merkle_root: Sha256Digest,
}

/// What was checked of the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LedgerCheck {
    pub file: String,
    pub entries: u64,
    /// Entries after the newest report: chain-checked, not signed, not counted.
    pub unreported_entries: u64,
}

/// One cluster's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterResult {
    pub name: String,
    /// Every report (and the ledger, when given) verified.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<BooksFailure>,
    /// Distinct reports found.
    pub reports: u64,
    /// The span the reports cover, first to newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_report: Option<ReportRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerCheck>,
    /// Keys that signed the reports.
    pub key_ids: Vec<Sha256Digest>,
    pub report_every: crate::duration::GoDuration,
    /// Files skipped as not reports (another `kind`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
    /// One line per check that held.
    pub checks: Vec<String>,
}

/// A cluster's reports, verified and ordered along their chain.
pub(super) struct CheckedReports {
    loaded: Vec<Loaded>,
    /// Indices into `loaded`, oldest first.
    order: Vec<usize>,
}

impl CheckedReports {
    pub fn newest(&self) -> &SignedReport {
        &self.loaded[self.order[self.order.len() - 1]].report
    }

    /// Each report's (previous period end, period end, cumulative totals), oldest first.
    pub fn snapshots(
        &self,
    ) -> impl Iterator<Item = (Option<Timestamp>, Timestamp, &BTreeMap<String, Sums>)> {
        let mut after = None;
        self.order.iter().map(move |&i| {
            let b = &self.loaded[i].report.report;
            let item = (after, b.period.to, &b.cumulative);
            after = Some(b.period.to);
            item
        })
    }
}

/// The admissions of a verified ledger (up to the newest report) that
/// charged a lineage of interest, in ledger order.
#[derive(Clone, Debug, Default)]
pub(super) struct LedgerSeries {
    /// Lineage names, indexed by `lineages` below.
    pub names: Vec<String>,
    pub admissions: Vec<Admission>,
    /// Lineage indices of every admission; `Admission::from..to` slices it.
    pub lineages: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Admission {
    pub time: Timestamp,
    pub charged: Flop,
    pub from: u32,
    pub to: u32,
}

struct Loaded {
    file: String,
    bytes_index: usize,
    report: SignedReport,
    hash: Sha256Digest,
}

/// Only the `kind` of a JSON document, to skip files that are not reports.
#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<String>,
}

fn failed(
    cluster: &TrustedCluster,
    kind: BooksFailureKind,
    file: &str,
    message: String,
) -> BooksFailure {
    BooksFailure {
        kind,
        file: file.to_string(),
        message: format!("cluster {}: {message}", cluster.name),
    }
}

/// An empty result for `cluster`, filled in by the checks.
pub(super) fn new_result(cluster: &TrustedCluster) -> ClusterResult {
    ClusterResult {
        name: cluster.name.clone(),
        verified: false,
        failure: None,
        reports: 0,
        period: None,
        newest_report: None,
        ledger: None,
        key_ids: Vec::new(),
        report_every: cluster.report_every,
        ignored: Vec::new(),
        checks: Vec::new(),
    }
}

/// Verifies a cluster's reports: keys, signatures, chain, continuity.
/// `Ok(None)` when the books hold no report (a finding, not a failure).
pub(super) fn check_reports(
    cluster: &TrustedCluster,
    books: &ClusterBooks<'_>,
    as_of: Timestamp,
    result: &mut ClusterResult,
    findings: &mut Vec<Finding>,
) -> Result<Option<CheckedReports>, BooksFailure> {
    let loaded = load_reports(cluster, books, result)?;
    result.reports = loaded.len() as u64;
    if loaded.is_empty() {
        findings.push(Finding::new(
            FindingKind::Silent {
                cluster: cluster.name.clone(),
                last_report_end: None,
                expected_by: None,
            },
            format!(
                "cluster {}: no report found in its books; a cluster that does not report is not a cluster that did nothing",
                cluster.name
            ),
        ));
        if let Some(l) = &books.ledger {
            return Err(failed(
                cluster,
                BooksFailureKind::LedgerMismatch,
                l.name,
                format!(
                    "{}: a ledger without any signed report cannot be verified",
                    l.name
                ),
            ));
        }
        return Ok(None);
    }
    for r in &loaded {
        check_key_and_signature(cluster, r)?;
        if !result.key_ids.contains(&r.report.key_id) {
            result.key_ids.push(r.report.key_id);
        }
        check_own_link(cluster, r)?;
    }
    result.checks.push(format!(
        "signatures: {} reports, each signed by a key the trust file lists as valid when its period ended ({} key{})",
        loaded.len(),
        result.key_ids.len(),
        if result.key_ids.len() == 1 { "" } else { "s" }
    ));
    let before = findings.len();
    let order = chain(cluster, &loaded, findings)?;
    result.checks.push(format!(
        "chain: {} reports ordered by their links{}",
        order.len(),
        if findings.len() == before {
            ", entry ranges and periods contiguous"
        } else {
            "; gaps listed as findings"
        }
    ));
    continuity(cluster, &loaded, &order, as_of, findings);
    let first = &loaded[order[0]];
    let newest = &loaded[order[order.len() - 1]];
    let nb = &newest.report.report;
    result.period = Some(Period {
        from: first.report.report.period.from,
        to: nb.period.to,
    });
    result.newest_report = Some(ReportRef {
        file: newest.file.clone(),
        report_hash: newest.hash,
        key_id: newest.report.key_id,
        range: nb.range,
        period: nb.period,
        head_hash: nb.head_hash,
        merkle_root: nb.merkle_root,
    });
    Ok(Some(CheckedReports { loaded, order }))
}

fn load_reports(
    cluster: &TrustedCluster,
    books: &ClusterBooks<'_>,
    result: &mut ClusterResult,
) -> Result<Vec<Loaded>, BooksFailure> {
    let mut inputs: Vec<(usize, &NamedInput<'_>)> = books.reports.iter().enumerate().collect();
    // Order does not matter to the result; sorting makes "the first broken
    // item" the same whatever order the files were listed in.
    inputs.sort_by(|a, b| a.1.name.cmp(b.1.name));
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut by_hash: HashMap<Sha256Digest, usize> = HashMap::new();
    for (index, input) in inputs {
        let body = input.bytes.strip_suffix(b"\n").unwrap_or(input.bytes);
        if let Ok(k) = serde_json::from_slice::<KindOnly>(body)
            && k.kind.as_deref() != Some(crate::report::REPORT_KIND)
        {
            result.ignored.push(input.name.to_string());
            continue;
        }
        let report = parse_report(input.bytes).map_err(|e| match e {
            ReportParseError::Malformed(m) => failed(
                cluster,
                BooksFailureKind::Malformed,
                input.name,
                format!("{}: {m}", input.name),
            ),
            e @ ReportParseError::NotCanonical { .. } => failed(
                cluster,
                BooksFailureKind::Signature,
                input.name,
                format!("{} is {e}", input.name),
            ),
        })?;
        // The file is canonical (checked above), so its hash is its bytes' hash.
        let hash = Sha256Digest::of(body);
        if by_hash.contains_key(&hash) {
            continue;
        }
        by_hash.insert(hash, loaded.len());
        loaded.push(Loaded {
            file: input.name.to_string(),
            bytes_index: index,
            report,
            hash,
        });
    }
    Ok(loaded)
}

fn check_key_and_signature(cluster: &TrustedCluster, r: &Loaded) -> Result<(), BooksFailure> {
    let at = r.report.report.period.to;
    let candidates: Vec<&TrustedKey> = cluster
        .keys
        .iter()
        .filter(|k| k.key_id == r.report.key_id)
        .collect();
    if candidates.is_empty() {
        return Err(failed(
            cluster,
            BooksFailureKind::Key,
            &r.file,
            format!(
                "{}: field keyId is {}, which the trust file does not list for this cluster (it lists {})",
                r.file,
                r.report.key_id,
                cluster
                    .keys
                    .iter()
                    .map(|k| format!("{} from {}", k.key_id, k.source))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let Some(key) = candidates.iter().find(|k| k.valid_at(at)) else {
        return Err(failed(
            cluster,
            BooksFailureKind::Key,
            &r.file,
            format!(
                "{}: signed by key {} ({}), {}, but the report's period ends at {} (field report.period.to)",
                r.file,
                r.report.key_id,
                candidates[0].source,
                candidates
                    .iter()
                    .map(|k| k.validity_text())
                    .collect::<Vec<_>>()
                    .join(" or "),
                at
            ),
        ));
    };
    r.report.verify_signature(&key.key).map_err(|e| {
        failed(
            cluster,
            BooksFailureKind::Signature,
            &r.file,
            format!("{}: {e}", r.file),
        )
    })
}

/// The checks `verify` makes of a report's own fields, and a period that
/// runs forwards.
fn check_own_link(cluster: &TrustedCluster, r: &Loaded) -> Result<(), BooksFailure> {
    let b = &r.report.report;
    let broken = |m: String| {
        Err(failed(
            cluster,
            BooksFailureKind::ReportChain,
            &r.file,
            format!("{}: {m}", r.file),
        ))
    };
    if let Err((_, m)) = own_link(b) {
        return broken(m);
    }
    if b.period.from > b.period.to {
        return broken(format!(
            "field report.period runs backwards ({} to {})",
            b.period.from, b.period.to
        ));
    }
    Ok(())
}

/// Orders the reports along their links and checks them; returns indices
/// into `loaded`, oldest first. Gaps (a linked report that is missing) are
/// findings; forks, overlaps and broken links fail the cluster.
fn chain(
    cluster: &TrustedCluster,
    loaded: &[Loaded],
    findings: &mut Vec<Finding>,
) -> Result<Vec<usize>, BooksFailure> {
    let by_hash: HashMap<Sha256Digest, usize> = loaded
        .iter()
        .enumerate()
        .map(|(i, r)| (r.hash, i))
        .collect();
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut starts = Vec::new();
    let mut genesis: Option<usize> = None;
    for (i, r) in loaded.iter().enumerate() {
        match &r.report.report.previous {
            None => {
                if let Some(g) = genesis {
                    return Err(failed(
                        cluster,
                        BooksFailureKind::ReportChain,
                        &r.file,
                        format!(
                            "{} and {} both start the books (no field report.previous): two chains of reports for one cluster",
                            loaded[g].file, r.file
                        ),
                    ));
                }
                genesis = Some(i);
                starts.push(i);
            }
            Some(p) => match by_hash.get(&p.report_hash) {
                Some(&prev) => {
                    if let Some(&other) = next.get(&prev) {
                        return Err(failed(
                            cluster,
                            BooksFailureKind::ReportChain,
                            &r.file,
                            format!(
                                "{} and {} both continue {}: the cluster signed two different continuations of its books",
                                loaded[other].file, r.file, loaded[prev].file
                            ),
                        ));
                    }
                    next.insert(prev, i);
                }
                None => starts.push(i),
            },
        }
    }
    // Each start begins a run of linked reports; runs are ordered by where
    // their entries and periods begin.
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for &s in &starts {
        let mut run = vec![s];
        let mut at = s;
        while let Some(&n) = next.get(&at) {
            if run.len() > loaded.len() {
                break;
            }
            run.push(n);
            at = n;
        }
        runs.push(run);
    }
    runs.sort_by_key(|run| {
        let b = &loaded[run[0]].report.report;
        (b.range.from, b.period.from)
    });
    let mut order = Vec::with_capacity(loaded.len());
    for (k, run) in runs.iter().enumerate() {
        let head = &loaded[run[0]];
        let hb = &head.report.report;
        match (k, &hb.previous) {
            (0, Some(p)) => findings.push(Finding::new(
                FindingKind::MissingReports {
                    cluster: cluster.name.clone(),
                    after: None,
                    before: head.file.clone(),
                    entries: EntryRange {
                        from: 0,
                        to: p.tree_size,
                    },
                    period: None,
                },
                format!(
                    "cluster {}: the reports before {} are missing: it continues report {} ({} of the ledger), which is not in the books",
                    cluster.name,
                    head.file,
                    p.report_hash,
                    entries_text(0, p.tree_size)
                ),
            )),
            (0, None) => {}
            (_, None) => {
                // Only the first run can start at genesis (two would have failed above).
                return Err(failed(
                    cluster,
                    BooksFailureKind::ReportChain,
                    &head.file,
                    format!(
                        "{} starts the books (no field report.previous) after other reports",
                        head.file
                    ),
                ));
            }
            (_, Some(p)) => {
                let last_index = order[order.len() - 1];
                let last: &Loaded = &loaded[last_index];
                let lb = &last.report.report;
                if p.tree_size < lb.range.to
                    || hb.period.from < lb.period.to
                    || (p.tree_size == lb.range.to
                        && (p.merkle_root != lb.merkle_root || hb.period.from == lb.period.to))
                {
                    return Err(failed(
                        cluster,
                        BooksFailureKind::ReportChain,
                        &head.file,
                        format!(
                            "{}: field report.previous names report {} ({} entries, period ending before {}), which does not continue {} ({} entries, root {}, period ending {}): the reports overlap or fork",
                            head.file,
                            p.report_hash,
                            p.tree_size,
                            hb.period.from,
                            last.file,
                            lb.range.to,
                            lb.merkle_root,
                            lb.period.to
                        ),
                    ));
                }
                findings.push(Finding::new(
                    FindingKind::MissingReports {
                        cluster: cluster.name.clone(),
                        after: Some(last.file.clone()),
                        before: head.file.clone(),
                        entries: EntryRange {
                            from: lb.range.to,
                            to: p.tree_size,
                        },
                        period: Some(Period {
                            from: lb.period.to,
                            to: hb.period.from,
                        }),
                    },
                    format!(
                        "cluster {}: report(s) missing between {} and {}: {} and the time from {} to {} are in no report of the books",
                        cluster.name,
                        last.file,
                        head.file,
                        entries_text(lb.range.to, p.tree_size),
                        lb.period.to,
                        hb.period.from
                    ),
                ));
            }
        }
        for pair in run.windows(2) {
            let (a, b) = (&loaded[pair[0]], &loaded[pair[1]]);
            let (ab, bb) = (&a.report.report, &b.report.report);
            let Some(p) = &bb.previous else { continue };
            if p.tree_size != ab.range.to || p.merkle_root != ab.merkle_root {
                return Err(failed(
                    cluster,
                    BooksFailureKind::ReportChain,
                    &b.file,
                    format!(
                        "{}: field report.previous states {} entries with root {} but {}, which it links by hash, has {} entries with root {}",
                        b.file, p.tree_size, p.merkle_root, a.file, ab.range.to, ab.merkle_root
                    ),
                ));
            }
            if bb.period.from < ab.period.to {
                return Err(failed(
                    cluster,
                    BooksFailureKind::ReportChain,
                    &b.file,
                    format!(
                        "{}: field report.period.from ({}) is before the end of the previous report's period ({}, {})",
                        b.file, bb.period.from, ab.period.to, a.file
                    ),
                ));
            }
            if bb.period.from > ab.period.to {
                findings.push(Finding::new(
                    FindingKind::PeriodGap {
                        cluster: cluster.name.clone(),
                        after: a.file.clone(),
                        before: b.file.clone(),
                        gap: Period {
                            from: ab.period.to,
                            to: bb.period.from,
                        },
                    },
                    format!(
                        "cluster {}: no report covers {} to {} ({} ends, {} begins)",
                        cluster.name, ab.period.to, bb.period.from, a.file, b.file
                    ),
                ));
            }
        }
        order.extend_from_slice(run);
    }
    Ok(order)
}

/// Reports past the cluster's period, and silence at the audit time.
fn continuity(
    cluster: &TrustedCluster,
    loaded: &[Loaded],
    order: &[usize],
    as_of: Timestamp,
    findings: &mut Vec<Finding>,
) {
    let allowed = cluster.allowed_gap();
    let allowed_ms = i64::try_from(allowed.as_millis()).unwrap_or(i64::MAX);
    for &i in order {
        let r = &loaded[i];
        let p = r.report.report.period;
        let length =
            p.to.as_millisecond()
                .saturating_sub(p.from.as_millisecond());
        if length > allowed_ms {
            findings.push(Finding::new(
                FindingKind::LateReport {
                    cluster: cluster.name.clone(),
                    file: r.file.clone(),
                    period: p,
                },
                format!(
                    "cluster {}: {} covers {} to {} ({}), longer than its reporting period {} (grace {}): the report came late",
                    cluster.name,
                    r.file,
                    p.from,
                    p.to,
                    human_ms(length),
                    cluster.report_every,
                    cluster.grace
                ),
            ));
        }
    }
    if let Some(&last) = order.last() {
        let end = loaded[last].report.report.period.to;
        let silent_ms = as_of.as_millisecond().saturating_sub(end.as_millisecond());
        if silent_ms > allowed_ms {
            let expected_by = jiff::SignedDuration::try_from(allowed)
                .ok()
                .and_then(|d| end.checked_add(d).ok());
            findings.push(Finding::new(
                FindingKind::Silent {
                    cluster: cluster.name.clone(),
                    last_report_end: Some(end),
                    expected_by,
                },
                format!(
                    "cluster {}: silent since {end}: its newest report ({}) ended {} before the audit time {as_of}; it reports every {} (grace {})",
                    cluster.name,
                    loaded[last].file,
                    human_ms(silent_ms),
                    cluster.report_every,
                    cluster.grace
                ),
            ));
        }
    }
}

/// `3d 4h`, `5h 2m`, `40s` for a span in milliseconds.
pub(super) fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// What the one pass over the ledger checks of the earlier reports.
struct Boundaries<'r> {
    /// (tree size, report), by tree size.
    reports: Vec<(u64, &'r Loaded)>,
    next: usize,
    merkle: MerkleBuilder,
    totals: LedgerTotals,
    head: Sha256Digest,
    first_failure: Option<(String, String, BooksFailureKind)>,
}

impl<'r> Boundaries<'r> {
    /// Checks every report ending at the current size.
    fn check(&mut self) {
        let size = self.merkle.size();
        while let Some(&(to, r)) = self.reports.get(self.next) {
            if to != size {
                break;
            }
            self.next += 1;
            if self.first_failure.is_some() {
                continue;
            }
            let b = &r.report.report;
            let fail = |m: String, kind| Some((r.file.clone(), m, kind));
            if b.head_hash != self.head {
                self.first_failure = fail(
                    format!(
                        "entry seq {} has hash {} but {}'s field report.headHash is {}",
                        size.saturating_sub(1),
                        self.head,
                        r.file,
                        b.head_hash
                    ),
                    BooksFailureKind::LedgerMismatch,
                );
                continue;
            }
            let root = self.merkle.root();
            if root != b.merkle_root {
                self.first_failure = fail(
                    format!(
                        "the Merkle root of {} is {root} but {}'s field report.merkleRoot is {}",
                        entries_text(0, size),
                        r.file,
                        b.merkle_root
                    ),
                    BooksFailureKind::LedgerMismatch,
                );
                continue;
            }
            if let Some((lineage, stated, derived)) =
                first_cumulative_difference(&b.cumulative, self.totals.cumulative())
            {
                self.first_failure = fail(
                    format!(
                        "field report.cumulative.{lineage} of {} says {stated} but {} give {derived}",
                        r.file,
                        entries_text(0, size)
                    ),
                    BooksFailureKind::Totals,
                );
            }
        }
    }
}

fn first_cumulative_difference(
    stated: &BTreeMap<String, Sums>,
    derived: &BTreeMap<String, Sums>,
) -> Option<(String, String, String)> {
    let describe = |s: Option<&Sums>| match s {
        None => "nothing".to_string(),
        Some(s) => format!(
            "charged {} FLOP, consumed {} FLOP, {} accelerator-seconds, {} admitted",
            s.charged.get(),
            s.consumed.get(),
            s.accelerator_seconds.get(),
            s.admitted
        ),
    };
    for l in stated.keys().chain(derived.keys()) {
        let (a, b) = (stated.get(l), derived.get(l));
        if a != b {
            return Some((l.clone(), describe(a), describe(b)));
        }
    }
    None
}

/// Verifies the ledger against the reports in one pass: everything
/// `komptroller verify` checks of the newest report (with its predecessor
/// when the books hold it), and the head hash, Merkle root and cumulative
/// lineage totals of every earlier report at its tree size. Records the
/// admissions that charged a lineage for which `interest` holds.
pub(super) fn check_ledger(
    cluster: &TrustedCluster,
    books: &ClusterBooks<'_>,
    checked: &CheckedReports,
    ledger: NamedInput<'_>,
    interest: impl Fn(&str) -> bool,
    result: &mut ClusterResult,
) -> Result<LedgerSeries, BooksFailure> {
    let loaded = &checked.loaded;
    let order = &checked.order;
    let newest = &loaded[order[order.len() - 1]];
    let previous = (order.len() >= 2)
        .then(|| &loaded[order[order.len() - 2]])
        .filter(|p| {
            newest
                .report
                .report
                .previous
                .as_ref()
                .is_some_and(|link| link.report_hash == p.hash)
        });
    let keys: Vec<(String, Vec<u8>)> = cluster
        .keys
        .iter()
        .filter_map(|k| {
            signing::public_key_pem(&k.key)
                .ok()
                .map(|pem| (k.source.clone(), pem.into_bytes()))
        })
        .collect();
    let key_inputs: Vec<NamedInput<'_>> = keys
        .iter()
        .map(|(name, bytes)| NamedInput { name, bytes })
        .collect();
    let mut reports: Vec<(u64, &Loaded)> = loaded
        .iter()
        .map(|r| (r.report.report.range.to, r))
        .collect();
    reports.sort_by_key(|(to, r)| (*to, r.report.report.period.to));
    let mut bounds = Boundaries {
        reports,
        next: 0,
        merkle: MerkleBuilder::new(),
        totals: LedgerTotals::for_report(),
        head: GENESIS_PREV_HASH,
        first_failure: None,
    };
    bounds.check();
    let to = newest.report.report.range.to;
    let mut names: Vec<String> = Vec::new();
    // Each lineage name's index in `names`, or `None` when it is of no
    // interest: `interest` (an alias lookup and a set lookup) runs once per
    // distinct name, not once per admission.
    let mut index: foldhash::HashMap<String, Option<u32>> = foldhash::HashMap::default();
    let mut entries: u64 = 0;
    let mut admissions = Vec::new();
    let mut lineages: Vec<u32> = Vec::new();
    let req = VerifyRequest {
        report: NamedInput {
            name: &newest.file,
            bytes: books.reports[newest.bytes_index].bytes,
        },
        public_keys: &key_inputs,
        ledger: Some(ledger),
        previous: previous.map(|p| NamedInput {
            name: &p.file,
            bytes: books.reports[p.bytes_index].bytes,
        }),
        entry: None,
        allow_longer_ledger: true,
    };
    let verified = verify_report_with(&req, |e| {
        // Every entry of the ledger comes here once, in order.
        entries = e.seq + 1;
        if e.seq >= to {
            return;
        }
        bounds.merkle.push(e.leaf);
        bounds.head = e.hash;
        bounds.totals.apply_facts(&e.facts, false);
        if let Some((charged, ls)) = e.facts.admitted() {
            let from = lineages.len() as u32;
            for l in ls {
                let i = match index.get(l) {
                    Some(&i) => i,
                    None => {
                        let i = interest(l).then(|| {
                            names.push(l.to_string());
                            (names.len() - 1) as u32
                        });
                        index.insert(l.to_string(), i);
                        i
                    }
                };
                if let Some(i) = i {
                    lineages.push(i);
                }
            }
            if lineages.len() as u32 > from {
                admissions.push(Admission {
                    time: e.facts.time,
                    charged,
                    from,
                    to: lineages.len() as u32,
                });
            }
        }
        bounds.check();
    });
    if let Err(f) = verified {
        let kind = BooksFailureKind::of(f.class);
        let file = if f.message.starts_with(ledger.name) {
            ledger.name
        } else {
            &newest.file
        };
        return Err(failed(cluster, kind, file, f.message));
    }
    if let Some((file, message, kind)) = bounds.first_failure {
        return Err(failed(
            cluster,
            kind,
            &file,
            format!("{}: {message}", ledger.name),
        ));
    }
    // A verified ledger holds one entry per line, seq 0 to entries - 1.
    let check = LedgerCheck {
        file: ledger.name.to_string(),
        entries,
        unreported_entries: entries.saturating_sub(to),
    };
    result.checks.push(format!(
        "ledger: {entries} entries; every check of komptroller verify holds for the newest report, and the head hash, Merkle root and cumulative lineage totals of all {} reports match",
        loaded.len()
    ));
    if check.unreported_entries > 0 {
        result.checks.push(format!(
            "ledger: {} entries after the newest report are chain-checked but not yet signed, so not counted",
            check.unreported_entries
        ));
    }
    result.ledger = Some(check);
    Ok(LedgerSeries {
        names,
        admissions,
        lineages,
    })
}
