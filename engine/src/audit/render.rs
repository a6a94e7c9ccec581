//! The audit for people: what failed, what was found, then the merged
//! lineages and possibly related ones. JSON (the [`AuditReport`] itself)
//! is for tools.

use std::fmt::Write as _;

use super::{AuditReport, FindingKind};
use crate::report::entries_text;
use crate::units::sci;

impl AuditReport {
    /// Text output; `limit` bounds the merged lineages listed (largest first).
    pub fn render_text(&self, limit: usize) -> String {
        let mut out = String::new();
        let s = &self.summary;
        let _ = writeln!(
            out,
            "komptroller audit as of {}: {} cluster{}, {} verified, {} failed; {} finding{} ({} union crossing{} no cluster reported)",
            self.as_of,
            s.clusters,
            plural(s.clusters),
            s.verified,
            s.failed,
            s.findings,
            plural(s.findings),
            s.union_crossings,
            plural(s.union_crossings)
        );
        out.push_str("\nClusters\n");
        for c in &self.clusters {
            match &c.failure {
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "  FAIL  {}: {}: {}",
                        c.name,
                        f.kind.as_str(),
                        f.message
                    );
                }
                None => {
                    let span = match (&c.period, &c.newest_report) {
                        (Some(p), Some(n)) => format!(
                            "{} report{}, {}, {} to {}",
                            c.reports,
                            plural(c.reports),
                            entries_text(0, n.range.to),
                            p.from,
                            p.to
                        ),
                        _ => "no reports".to_string(),
                    };
                    let ledger = match &c.ledger {
                        Some(l) => format!("; ledger {} verified ({} entries)", l.file, l.entries),
                        None => "; reports only".to_string(),
                    };
                    let _ = writeln!(out, "  ok    {}: {span}{ledger}", c.name);
                }
            }
        }
        out.push_str("\nFindings\n");
        if self.findings.is_empty() {
            out.push_str("  none\n");
        }
        for (i, f) in self.findings.iter().enumerate() {
            let tag = match &f.detail {
                FindingKind::UnionCrossing { .. } => "union crossing",
                FindingKind::Silent { .. } => "silent",
                FindingKind::MissingReports { .. } => "missing reports",
                FindingKind::PeriodGap { .. } => "period gap",
                FindingKind::LateReport { .. } => "late report",
            };
            let _ = writeln!(out, "  {}. [{tag}] {}", i + 1, f.message);
        }
        out.push_str("\nThresholds checked on the merged lineages\n");
        if self.thresholds.is_empty() {
            out.push_str("  none (no cluster's report carries one and the trust file adds none)\n");
        }
        for t in &self.thresholds {
            let _ = writeln!(
                out,
                "  {} FLOP  {} (notify within {}) from {}",
                sci(t.threshold.get()),
                t.regulation,
                t.notify_within,
                t.sources.join("; ")
            );
        }
        let mut lineages: Vec<_> = self.lineages.iter().collect();
        lineages.sort_by(|a, b| {
            b.total
                .charged
                .get()
                .total_cmp(&a.total.charged.get())
                .then_with(|| a.lineage.cmp(&b.lineage))
        });
        let _ = writeln!(
            out,
            "\nMerged lineages (cumulative charged FLOP; {} of {})",
            lineages.len().min(limit),
            lineages.len()
        );
        for l in lineages.iter().take(limit) {
            let parts: Vec<String> = l
                .clusters
                .iter()
                .map(|s| {
                    let names = if s.names.len() == 1 && s.names[0] == l.lineage {
                        String::new()
                    } else {
                        format!(" as {}", s.names.join(", "))
                    };
                    format!("{}{names} {}", s.cluster, sci(s.sums.charged.get()))
                })
                .collect();
            let _ = writeln!(
                out,
                "  {}  {} FLOP = {}",
                l.lineage,
                sci(l.total.charged.get()),
                parts.join(" + ")
            );
            for x in &l.crossings {
                let by = if x.reported_by.is_empty() {
                    "reported by no cluster".to_string()
                } else {
                    format!(
                        "reported by {}",
                        x.reported_by
                            .iter()
                            .map(|r| format!("{} (crossed there {})", r.cluster, r.crossed_at))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let _ = writeln!(
                    out,
                    "      crossed {} FLOP ({}) at {}, notify by {}; {by}",
                    sci(x.threshold.get()),
                    x.regulation,
                    x.crossed_at,
                    x.notify_by
                );
            }
        }
        if !self.possibly_related.is_empty() {
            out.push_str(
                "\nPossibly related (different names, same base model, different clusters)\n",
            );
            for r in &self.possibly_related {
                let members: Vec<String> = r
                    .members
                    .iter()
                    .map(|m| format!("{}/{} {}", m.cluster, m.lineage, sci(m.charged.get())))
                    .collect();
                let cross = if r.would_cross.is_empty() {
                    String::new()
                } else {
                    format!("; together past {}", r.would_cross.join(", "))
                };
                let _ = writeln!(
                    out,
                    "  base {}: {}; combined {} FLOP{cross}",
                    r.base,
                    members.join(", "),
                    sci(r.combined_charged.get())
                );
            }
        }
        out
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
