//! Views of a signed report for people and dashboards: CSV totals, a
//! Markdown summary and an OpenReports `ClusterReport`. Only the canonical
//! JSON is signed; these views carry the report hash so a reader can find
//! the signed original.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::SignedReport;
use crate::ledger::{CanonicalError, Sums};
use crate::units::sci;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV totals (RFC 4180): one row per scope and key, period totals and
/// cumulative lineage totals. FLOP in full `f64` precision.
pub fn to_csv(report: &SignedReport) -> String {
    let mut out =
        String::from("scope,key,charged_flop,consumed_flop,accelerator_seconds,admitted\r\n");
    let b = &report.report;
    let mut row = |scope: &str, key: &str, s: &Sums| {
        let _ = write!(
            out,
            "{},{},{:e},{:e},{},{}\r\n",
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
    out
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
/// notification is due; `pass` otherwise), so policy dashboards list
/// the lineages with obligations.
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
