//! The text report `komptroller simulate` prints.

use super::{JobSummary, Simulation};
use crate::duration::GoDuration;
use crate::engine::LineageTotals;
use crate::units::sci;

impl Simulation {
    /// The readable report `simulate` prints.
    pub fn render_text(&self, timeline_limit: usize) -> String {
        let mut out = String::new();
        let s = &self.summary;
        let title = s.title.clone().unwrap_or_else(|| "trace".into());
        out.push_str(&format!("komptroller simulate — {title}\n"));
        out.push_str(&format!(
            "policies: {}\n",
            self.policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push_str(&format!(
            "{} submissions, {} admitted, {} rejected, {} still queued, {} awaiting approval, {} approvals refused; {} ledger records\n",
            s.submissions, s.admitted, s.rejected, s.still_queued, s.awaiting_approval, s.approvals_refused, s.ledger_records
        ));
        if !self.timeline.is_empty() {
            out.push_str("\nTIMELINE\n");
            for e in self.timeline.iter().take(timeline_limit) {
                let when = e.at.strftime("%Y-%m-%d %H:%M");
                out.push_str(&format!(
                    "{when}  {:<34} {:<16} {}\n",
                    e.job.as_deref().unwrap_or("-"),
                    e.what,
                    e.detail
                ));
            }
            if self.timeline.len() > timeline_limit {
                out.push_str(&format!(
                    "… {} more lines (use -o json for all)\n",
                    self.timeline.len() - timeline_limit
                ));
            }
        }
        let waited: Vec<&JobSummary> = self
            .jobs
            .iter()
            .filter(|j| j.queue_wait_seconds.is_some_and(|w| w > 0.0))
            .collect();
        out.push_str("\nQUEUE WAITS\n");
        if self.jobs.is_empty() && self.summary.submissions > 0 {
            // A run that kept no per-job lines (--summary-only).
            out.push_str("per-job waits not kept (summary only)\n");
        } else if waited.is_empty() {
            out.push_str("no job waited\n");
        }
        for j in waited.iter().take(timeline_limit) {
            out.push_str(&format!(
                "{:<34} waited {}\n",
                j.job,
                GoDuration::from_secs(j.queue_wait_seconds.unwrap_or(0.0) as u64)
            ));
        }
        out.push_str(&format!(
            "mean wait of admitted jobs {}, longest {}; queue depth at most {}\n",
            GoDuration::from_secs(s.mean_queue_wait_seconds as u64),
            GoDuration::from_secs(s.max_queue_wait_seconds as u64),
            s.max_queue_depth
        ));
        out.push_str("\nLINEAGE TOTALS (charged = reserved at admission, never returned; consumed = metered)\n");
        out.push_str(&format!(
            "{:<28} {:>12} {:>12} {:>16}\n",
            "lineage", "charged", "consumed", "accel-hours"
        ));
        let mut lineages: Vec<(&String, &LineageTotals)> = s.lineages.iter().collect();
        lineages.sort_by(|a, b| b.1.charged.0.total_cmp(&a.1.charged.0));
        for (name, t) in lineages.iter().take(timeline_limit) {
            out.push_str(&format!(
                "{:<28} {:>12} {:>12} {:>16.0}\n",
                name,
                sci(t.charged.0),
                sci(t.consumed.0),
                t.accelerator_seconds.0 / 3600.0
            ));
        }
        out.push_str("\nTHRESHOLD CROSSINGS\n");
        if s.crossings.is_empty() {
            out.push_str("none\n");
        }
        for c in &s.crossings {
            out.push_str(&format!(
                "{} crossed {} ({} FLOP, policy {}) on {}{}\n",
                c.lineage,
                c.tier,
                sci(c.threshold.0),
                c.policy,
                c.at.strftime("%Y-%m-%d %H:%M"),
                match (&c.notify_by, &c.regulation) {
                    (Some(n), Some(r)) =>
                        format!("; notify under {r} by {}", n.strftime("%Y-%m-%d")),
                    _ => String::new(),
                }
            ));
        }
        out
    }
}
