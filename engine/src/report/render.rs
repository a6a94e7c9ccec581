//! Views of a signed report for people and dashboards: CSV totals, a
//! Markdown summary and an OpenReports `ClusterReport`. Only the canonical
//! JSON is signed; these views carry the report hash so a reader can find
//! the signed original.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use jiff::Timestamp;

use super::SignedReport;
use crate::ledger::{CanonicalError, Sums};
use crate::units::{Flop, sci};

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV header: totals columns, then the columns of obligation rows.
pub const CSV_HEADER: &str = "scope,key,charged_flop,consumed_flop,accelerator_seconds,admitted,\
base_lineage,policy,rule,regulation,threshold_flop,crossed_at,crossed_at_seq,notify_by";

/// CSV (RFC 4180), one table: a row per scope and key with the period
/// totals and cumulative lineage totals (the obligation columns empty),
/// then a row per obligation: `threshold_crossing` (a lineage past a
/// reporting threshold; `rule` is the tier) and `modification_crossing` (a
/// fine-tune lineage past its policy's modification threshold relative to
/// `base_lineage`), with `charged_flop` the lineage's charged FLOP right
/// after the crossing. FLOP in full `f64` precision.
pub fn to_csv(report: &SignedReport) -> String {
    let mut out = format!("{CSV_HEADER}\r\n");
    let b = &report.report;
    let mut row = |scope: &str, key: &str, s: &Sums| {
        let _ = write!(
            out,
            "{},{},{:e},{:e},{},{},,,,,,,,\r\n",
            scope,
            csv_field(key),
            s.charged.get(),
            s.consumed.get(),
            s.accelerator_seconds.get(),
            s.admitted
        );
    };
    row("cluster", "", &b.totals.cluster);
    let sections: [(&str, &BTreeMap<String, Sums>); 5] = [
        ("namespace", &b.totals.namespaces),
        ("lineage", &b.totals.lineages),
        ("accelerator", &b.totals.accelerators),
        ("tier", &b.totals.tiers),
        ("lineage_cumulative", &b.cumulative),
    ];
    for (scope, map) in sections {
        for (k, s) in map {
            row(scope, k, s);
        }
    }
    let mut obligation = |scope: &str, c: Obligation<'_>| {
        let _ = write!(
            out,
            "{scope},{},{:e},,,,{},{},{},{},{:e},{},{},{}\r\n",
            csv_field(c.lineage),
            c.charged.get(),
            csv_field(c.base_lineage),
            csv_field(c.policy),
            csv_field(c.rule),
            csv_field(c.regulation),
            c.threshold.get(),
            c.crossed_at,
            c.crossed_at_seq,
            c.notify_by
        );
    };
    for c in &b.threshold_crossings {
        obligation(
            "threshold_crossing",
            Obligation {
                lineage: &c.lineage,
                charged: c.charged_at_crossing,
                base_lineage: "",
                policy: &c.policy,
                rule: &c.tier,
                regulation: &c.regulation,
                threshold: c.threshold,
                crossed_at: c.crossed_at,
                crossed_at_seq: c.crossed_at_seq,
                notify_by: c.notify_by,
            },
        );
    }
    for c in &b.modification_crossings {
        obligation(
            "modification_crossing",
            Obligation {
                lineage: &c.lineage,
                charged: c.charged_at_crossing,
                base_lineage: &c.base_lineage,
                policy: &c.policy,
                rule: &c.rule,
                regulation: &c.regulation,
                threshold: c.threshold,
                crossed_at: c.crossed_at,
                crossed_at_seq: c.crossed_at_seq,
                notify_by: c.notify_by,
            },
        );
    }
    out
}

/// One obligation row of the CSV.
struct Obligation<'a> {
    lineage: &'a str,
    charged: Flop,
    base_lineage: &'a str,
    policy: &'a str,
    rule: &'a str,
    regulation: &'a str,
    threshold: Flop,
    crossed_at: Timestamp,
    crossed_at_seq: u64,
    notify_by: Timestamp,
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A Markdown summary a person can read.
pub fn to_markdown(report: &SignedReport) -> Result<String, CanonicalError> {
    let b = &report.report;
    let mut o = String::new();
    let _ = writeln!(o, "# Compute report {} – {}\n", b.period.from, b.period.to);
    let _ = writeln!(
        o,
        "Covers {} of the ledger ({} in all). Signed with Ed25519 key `{}`.\n",
        super::entries_text(b.range.from, b.range.to),
        b.totals.entries,
        report.key_id
    );
    let _ = writeln!(o, "## Threshold crossings\n");
    if b.threshold_crossings.is_empty() {
        let _ = writeln!(
            o,
            "No lineage has passed a reporting threshold ({} thresholds checked).\n",
            b.reporting_thresholds.len()
        );
    } else {
        let _ = writeln!(
            o,
            "| lineage | threshold | policy / tier | regulation | crossed at (entry) | notify by |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for c in &b.threshold_crossings {
            let _ = writeln!(
                o,
                "| {} | {} FLOP | {} / {} | {} | {} (#{}) | **{}** |",
                md_cell(&c.lineage),
                sci(c.threshold.get()),
                md_cell(&c.policy),
                md_cell(&c.tier),
                md_cell(&c.regulation),
                c.crossed_at,
                c.crossed_at_seq,
                c.notify_by
            );
        }
        let _ = writeln!(o);
    }
    if !b.modification_thresholds.is_empty() || !b.modification_crossings.is_empty() {
        let _ = writeln!(o, "## Substantial modifications\n");
        if b.modification_crossings.is_empty() {
            let _ = writeln!(
                o,
                "No fine-tune lineage has passed a modification threshold relative to its base ({} rules checked).\n",
                b.modification_thresholds.len()
            );
        } else {
            let _ = writeln!(
                o,
                "| fine-tune lineage | base lineage | threshold | policy / rule | regulation | crossed at (entry) | notify by |"
            );
            let _ = writeln!(o, "|---|---|---|---|---|---|---|");
            for c in &b.modification_crossings {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} FLOP ({} of {} FLOP{}) | {} / {} | {} | {} (#{}) | **{}** |",
                    md_cell(&c.lineage),
                    md_cell(&c.base_lineage),
                    sci(c.threshold.get()),
                    fraction(c),
                    sci(c.base_flop.get()),
                    if c.base_assumed { ", assumed" } else { "" },
                    md_cell(&c.policy),
                    md_cell(&c.rule),
                    md_cell(&c.regulation),
                    c.crossed_at,
                    c.crossed_at_seq,
                    c.notify_by
                );
            }
            let _ = writeln!(o);
        }
    }
    let _ = writeln!(o, "## Totals for the period\n");
    let c = &b.totals.cluster;
    let _ = writeln!(
        o,
        "Cluster: {} FLOP charged at admission, {} FLOP consumed, {} accelerator-seconds, {} jobs admitted.\n",
        sci(c.charged.get()),
        sci(c.consumed.get()),
        sci(c.accelerator_seconds.get()),
        c.admitted
    );
    if !b.totals.decisions.is_empty() {
        let d: Vec<String> = b
            .totals
            .decisions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "Decisions: {}.\n", d.join(", "));
    }
    let sections: [(&str, &BTreeMap<String, Sums>); 5] = [
        ("Namespace", &b.totals.namespaces),
        ("Lineage", &b.totals.lineages),
        ("Accelerator", &b.totals.accelerators),
        ("Tier", &b.totals.tiers),
        ("Lineage (cumulative since the first entry)", &b.cumulative),
    ];
    for (title, map) in sections {
        if map.is_empty() {
            continue;
        }
        let _ = writeln!(o, "### {title}\n");
        let _ = writeln!(
            o,
            "| key | charged FLOP | consumed FLOP | accelerator-seconds | admitted |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        for (k, s) in map {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                md_cell(k),
                sci(s.charged.get()),
                sci(s.consumed.get()),
                sci(s.accelerator_seconds.get()),
                s.admitted
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "## Integrity\n");
    let _ = writeln!(o, "| field | value |\n|---|---|");
    let _ = writeln!(
        o,
        "| report hash (SHA-256 of report.json) | `{}` |",
        report.report_hash()?
    );
    let _ = writeln!(
        o,
        "| head hash (entry {}) | `{}` |",
        b.range.to.saturating_sub(1),
        b.head_hash
    );
    let _ = writeln!(
        o,
        "| Merkle root (RFC 6962, {} entries) | `{}` |",
        b.range.to, b.merkle_root
    );
    match &b.previous {
        Some(p) => {
            let _ = writeln!(
                o,
                "| previous report | `{}` ({} entries, root `{}`) |",
                p.report_hash, p.tree_size, p.merkle_root
            );
        }
        None => {
            let _ = writeln!(o, "| previous report | none (first report) |");
        }
    }
    let _ = writeln!(o, "| signing key id | `{}` |", report.key_id);
    for p in &b.policies {
        let _ = writeln!(
            o,
            "| policy `{}` | `{}` |",
            md_cell(&p.name),
            p.content_hash
        );
    }
    let _ = writeln!(
        o,
        "\nVerify offline: `komptroller verify --report report.json --key public-key.pem --ledger ledger.jsonl`."
    );
    Ok(o)
}

/// `threshold / baseFlop` as written in the policy (e.g. 0.3333).
fn fraction(c: &super::ModificationCrossing) -> String {
    if c.base_flop.get() > 0.0 {
        format!("{:.4}", c.threshold.get() / c.base_flop.get())
    } else {
        "0".to_string()
    }
}

/// OpenReports `ClusterReport` (openreports.io/v1alpha1).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterReport {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    source: &'static str,
    summary: Summary,
    results: Vec<ReportResult>,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Default)]
struct Summary {
    pass: u64,
    fail: u64,
    warn: u64,
    error: u64,
    skip: u64,
}

#[derive(Serialize)]
struct ReportResult {
    source: &'static str,
    policy: String,
    rule: String,
    category: &'static str,
    severity: &'static str,
    timestamp: MetaTimestamp,
    result: &'static str,
    scored: bool,
    message: String,
    properties: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct MetaTimestamp {
    seconds: i64,
    nanos: i32,
}

/// An OpenReports `ClusterReport` YAML view: one result per lineage and
/// reporting threshold (`warn` when the lineage crossed it, i.e. a
/// notification is due; `pass` otherwise) and one `warn` result per
/// fine-tune lineage past a modification threshold, so policy dashboards
/// list the lineages with obligations.
pub fn to_openreports_yaml(report: &SignedReport) -> Result<String, String> {
    let b = &report.report;
    let report_hash = report.report_hash().map_err(|e| e.to_string())?;
    let ts = MetaTimestamp {
        seconds: b.period.to.as_second(),
        nanos: b.period.to.subsec_nanosecond(),
    };
    let mut results = Vec::new();
    let mut summary = Summary::default();
    for (lineage, sums) in &b.cumulative {
        for t in &b.reporting_thresholds {
            let crossing = b
                .threshold_crossings
                .iter()
                .find(|c| &c.lineage == lineage && c.policy == t.policy && c.tier == t.tier);
            let mut properties = BTreeMap::from([
                ("lineage".to_string(), lineage.clone()),
                ("thresholdFlop".to_string(), sci(t.threshold.get())),
                ("cumulativeChargedFlop".to_string(), sci(sums.charged.get())),
                (
                    "cumulativeConsumedFlop".to_string(),
                    sci(sums.consumed.get()),
                ),
                ("regulation".to_string(), t.regulation.clone()),
                ("reportHash".to_string(), report_hash.to_hex()),
            ]);
            let (result, message) = match crossing {
                Some(c) => {
                    properties.insert("crossedAt".into(), c.crossed_at.to_string());
                    properties.insert("crossedAtSeq".into(), c.crossed_at_seq.to_string());
                    properties.insert("notifyBy".into(), c.notify_by.to_string());
                    summary.warn += 1;
                    (
                        "warn",
                        format!(
                            "Lineage {lineage} passed {} FLOP on {} (ledger entry {}); notify under {} by {}.",
                            sci(t.threshold.get()),
                            c.crossed_at,
                            c.crossed_at_seq,
                            t.regulation,
                            c.notify_by
                        ),
                    )
                }
                None => {
                    summary.pass += 1;
                    (
                        "pass",
                        format!(
                            "Lineage {lineage} is at {} FLOP charged, below {} FLOP ({}).",
                            sci(sums.charged.get()),
                            sci(t.threshold.get()),
                            t.regulation
                        ),
                    )
                }
            };
            results.push(ReportResult {
                source: "komptroller",
                policy: t.policy.clone(),
                rule: t.tier.clone(),
                category: "Training compute",
                severity: if crossing.is_some() { "high" } else { "info" },
                timestamp: MetaTimestamp {
                    seconds: ts.seconds,
                    nanos: ts.nanos,
                },
                result,
                scored: true,
                message,
                properties,
            });
        }
    }
    // Every fine-tune lineage past a modification threshold: a notification is due.
    for c in &b.modification_crossings {
        let properties = BTreeMap::from([
            ("lineage".to_string(), c.lineage.clone()),
            ("baseLineage".to_string(), c.base_lineage.clone()),
            ("baseFlop".to_string(), sci(c.base_flop.get())),
            ("baseAssumed".to_string(), c.base_assumed.to_string()),
            ("thresholdFlop".to_string(), sci(c.threshold.get())),
            (
                "chargedAtCrossingFlop".to_string(),
                sci(c.charged_at_crossing.get()),
            ),
            ("regulation".to_string(), c.regulation.clone()),
            ("crossedAt".to_string(), c.crossed_at.to_string()),
            ("crossedAtSeq".to_string(), c.crossed_at_seq.to_string()),
            ("notifyBy".to_string(), c.notify_by.to_string()),
            ("reportHash".to_string(), report_hash.to_hex()),
        ]);
        summary.warn += 1;
        results.push(ReportResult {
            source: "komptroller",
            policy: c.policy.clone(),
            rule: c.rule.clone(),
            category: "Training compute",
            severity: "high",
            timestamp: MetaTimestamp {
                seconds: ts.seconds,
                nanos: ts.nanos,
            },
            result: "warn",
            scored: true,
            message: format!(
                "Fine-tune lineage {} passed {} FLOP, {} of base lineage {}'s {} FLOP{}, on {} (ledger entry {}); notify under {} by {}.",
                c.lineage,
                sci(c.threshold.get()),
                fraction(c),
                c.base_lineage,
                sci(c.base_flop.get()),
                if c.base_assumed {
                    " (assumed: the base has no compute on the ledger)"
                } else {
                    ""
                },
                c.crossed_at,
                c.crossed_at_seq,
                c.regulation,
                c.notify_by
            ),
            properties,
        });
    }
    let cr = ClusterReport {
        api_version: "openreports.io/v1alpha1",
        kind: "ClusterReport",
        metadata: Metadata {
            name: format!("komptroller-compute-{}-{}", b.range.from, b.range.to),
            labels: BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "komptroller".to_string(),
            )]),
            annotations: BTreeMap::from([
                (
                    "komptroller.dev/report-hash".to_string(),
                    report_hash.to_hex(),
                ),
                (
                    "komptroller.dev/merkle-root".to_string(),
                    b.merkle_root.to_hex(),
                ),
                (
                    "komptroller.dev/head-hash".to_string(),
                    b.head_hash.to_hex(),
                ),
                ("komptroller.dev/key-id".to_string(), report.key_id.to_hex()),
                (
                    "komptroller.dev/entries".to_string(),
                    format!("{}-{}", b.range.from, b.range.to),
                ),
                (
                    "komptroller.dev/period-from".to_string(),
                    b.period.from.to_string(),
                ),
                (
                    "komptroller.dev/period-to".to_string(),
                    b.period.to.to_string(),
                ),
            ]),
        },
        source: "komptroller",
        summary,
        results,
    };
    serde_saphyr::to_string(&cr).map_err(|e| e.to_string())
}
