//! Prometheus metrics, prefix `komptroller_`, served at `/metrics`.
//!
//! The books (projected and consumed FLOP, accelerator-seconds, decisions)
//! are counted from ledger entries as the leader persists them, and rebuilt
//! from the whole ledger when a replica becomes leader, so `sum()` of a
//! counter equals the ledger's total. Only the leader exports the books and
//! every other series derived from its state ([`exported_by_every_replica`]
//! says which are not): a follower's `/metrics` carries only
//! `komptroller_is_leader` (0) and its own reconcile series, never zeros
//! standing in for the books, so `sum()` across replicas is the leader's
//! value. (Keeping followers' books current from the ledger would make
//! `sum()` count every replica; a follower knows nothing current about the
//! queue or running jobs either.)
//!
//! Cardinality is bounded: `namespace` by the namespaces that run training
//! jobs; `lineage` by [`MAX_LINEAGES`] distinct values (later ones are
//! reported as `_other`); `accelerator` by the catalog; `tier` by the tiers
//! of the policies (plus `(none)`); `verdict`, `mode` and `error` by their
//! enums. `docs/metrics.md` is generated from [`METRICS`] (see
//! `reference_markdown`) and checked by a test.

use std::collections::HashSet;
use std::sync::Mutex;

use komptroller_engine::decision::Verdict;
use komptroller_engine::ledger::{Effect, LedgerEntry, LedgerEvent, LineageFold, RecordFacts};
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Distinct lineage label values before further ones become `_other`.
pub const MAX_LINEAGES: usize = 1000;
/// The lineage label value beyond [`MAX_LINEAGES`].
pub const OTHER: &str = "_other";
/// The tier label value when no tier applied.
pub const NO_TIER: &str = "(none)";

/// What a metric is, for registration and for `docs/metrics.md`.
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

const BOOK_LABELS: &[&str] = &["namespace", "lineage", "accelerator", "tier"];

/// Every metric the operator exports.
pub const METRICS: &[MetricDoc] = &[
    MetricDoc {
        name: "komptroller_projected_flop_total",
        kind: "counter",
        help: "FLOP charged at admission (the governing projection), cumulative since the ledger began.",
        labels: BOOK_LABELS,
    },
    MetricDoc {
        name: "komptroller_projected_accelerator_seconds_total",
        kind: "counter",
        help: "Accelerator-seconds projected at admission (count x maxDuration), cumulative.",
        labels: BOOK_LABELS,
    },
    MetricDoc {
        name: "komptroller_consumed_flop_total",
        kind: "counter",
        help: "FLOP metered from finished, deadline-exceeded or deleted workloads, cumulative; equals the ledger's consumed total.",
        labels: BOOK_LABELS,
    },
    MetricDoc {
        name: "komptroller_consumed_accelerator_seconds_total",
        kind: "counter",
        help: "Accelerator-seconds metered from workloads' run time, cumulative.",
        labels: BOOK_LABELS,
    },
    MetricDoc {
        name: "komptroller_decisions_total",
        kind: "counter",
        help: "Decisions recorded in the ledger, by effective verdict, the verdict Enforce mode gives, and mode.",
        labels: &["verdict", "enforced_verdict", "mode"],
    },
    MetricDoc {
        name: "komptroller_lineage_charged_flop",
        kind: "gauge",
        help: "Cumulative FLOP charged to a model lineage (what tiers are evaluated on).",
        labels: &["lineage"],
    },
    MetricDoc {
        name: "komptroller_queue_depth",
        kind: "gauge",
        help: "TrainingJobs queued (throttled) waiting for capacity or a budget window.",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_pending_approvals",
        kind: "gauge",
        help: "TrainingJobs awaiting approval.",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_running_flop_per_second",
        kind: "gauge",
        help: "Peak FLOP/s of admitted, unfinished jobs (what capacity caps limit).",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_running_accelerators",
        kind: "gauge",
        help: "Accelerators of admitted, unfinished jobs.",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_budget_use_ratio",
        kind: "gauge",
        help: "Charged FLOP in a budget's rolling window divided by its limit, per policy, budget and scope key (namespace, lineage, or empty for Cluster).",
        labels: &["policy", "budget", "key"],
    },
    MetricDoc {
        name: "komptroller_ledger_head_sequence",
        kind: "gauge",
        help: "Sequence number of the last ledger entry persisted (-1 when empty).",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_ledger_conflicts_total",
        kind: "counter",
        help: "Ledger entries found already written with different content (another writer); any increase needs a human.",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_last_report_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the last signed ComputeReport.",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_reconcile_duration_seconds",
        kind: "histogram",
        help: "Time of one TrainingJob reconcile.",
        labels: &[],
    },
    MetricDoc {
        name: "komptroller_reconcile_errors_total",
        kind: "counter",
        help: "Failed reconciles by error kind.",
        labels: &["error"],
    },
    MetricDoc {
        name: "komptroller_is_leader",
        kind: "gauge",
        help: "1 while this replica holds the lease and writes, else 0.",
        labels: &[],
    },
];

/// The metrics every replica exports; all others only the leader does.
pub const REPLICA_METRICS: &[&str] = &[
    "komptroller_is_leader",
    "komptroller_reconcile_duration_seconds",
    "komptroller_reconcile_errors_total",
];

/// Whether a follower exports the metric `name` too.
pub fn exported_by_every_replica(name: &str) -> bool {
    REPLICA_METRICS.contains(&name)
}

fn doc(name: &str) -> &'static MetricDoc {
    // METRICS is a constant table; every name used below is in it (tested).
    METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or(&METRICS[0])
}

fn opts(name: &str) -> Opts {
    let d = doc(name);
    Opts::new(d.name, d.help)
}

/// Labels of a job's books, remembered from its admission.
#[derive(Clone, Debug)]
struct BookLabels {
    namespace: String,
    lineage: String,
    accelerator: String,
    tier: String,
}

/// The operator's metrics.
pub struct Metrics {
    pub registry: Registry,
    projected_flop: CounterVec,
    projected_acc: CounterVec,
    consumed_flop: CounterVec,
    consumed_acc: CounterVec,
    decisions: IntCounterVec,
    lineage_charged: GaugeVec,
    pub queue_depth: IntGauge,
    pub pending_approvals: IntGauge,
    pub running_flop_per_second: Gauge,
    pub running_accelerators: IntGauge,
    pub budget_use_ratio: GaugeVec,
    pub ledger_head_sequence: IntGauge,
    pub ledger_conflicts: prometheus::IntCounter,
    pub last_report: Gauge,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub is_leader: IntGauge,
    jobs: Mutex<BookState>,
}

#[derive(Default)]
struct BookState {
    /// Each admitted job's labels, until it is metered.
    fold: LineageFold<BookLabels>,
    lineages: HashSet<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // The definitions are the constants of METRICS: prometheus refuses only
    // invalid or duplicate names, which `every_metric_is_registered_once`
    // rules out, so these `expect`s cannot fire.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("constant metric definitions register once");
            c
        }
        let labels = |name: &str| doc(name).labels;
        let counter_vec = |name: &str| {
            reg(
                &registry,
                CounterVec::new(opts(name), labels(name)).expect("valid constant metric"),
            )
        };
        let int_counter_vec = |name: &str| {
            reg(
                &registry,
                IntCounterVec::new(opts(name), labels(name)).expect("valid constant metric"),
            )
        };
        let gauge_vec = |name: &str| {
            reg(
                &registry,
                GaugeVec::new(opts(name), labels(name)).expect("valid constant metric"),
            )
        };
        let int_gauge = |name: &str| {
            reg(
                &registry,
                IntGauge::with_opts(opts(name)).expect("valid constant metric"),
            )
        };
        let gauge = |name: &str| {
            reg(
                &registry,
                Gauge::with_opts(opts(name)).expect("valid constant metric"),
            )
        };
        let m = Metrics {
            projected_flop: counter_vec("komptroller_projected_flop_total"),
            projected_acc: counter_vec("komptroller_projected_accelerator_seconds_total"),
            consumed_flop: counter_vec("komptroller_consumed_flop_total"),
            consumed_acc: counter_vec("komptroller_consumed_accelerator_seconds_total"),
            decisions: int_counter_vec("komptroller_decisions_total"),
            lineage_charged: gauge_vec("komptroller_lineage_charged_flop"),
            queue_depth: int_gauge("komptroller_queue_depth"),
            pending_approvals: int_gauge("komptroller_pending_approvals"),
            running_flop_per_second: gauge("komptroller_running_flop_per_second"),
            running_accelerators: int_gauge("komptroller_running_accelerators"),
            budget_use_ratio: gauge_vec("komptroller_budget_use_ratio"),
            ledger_head_sequence: int_gauge("komptroller_ledger_head_sequence"),
            ledger_conflicts: reg(
                &registry,
                prometheus::IntCounter::with_opts(opts("komptroller_ledger_conflicts_total"))
                    .expect("valid constant metric"),
            ),
            last_report: gauge("komptroller_last_report_timestamp_seconds"),
            reconcile_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "komptroller_reconcile_duration_seconds",
                        doc("komptroller_reconcile_duration_seconds").help,
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                    &[],
                )
                .expect("valid constant metric"),
            ),
            reconcile_errors: int_counter_vec("komptroller_reconcile_errors_total"),
            is_leader: int_gauge("komptroller_is_leader"),
            jobs: Mutex::new(BookState::default()),
            registry,
        };
        m.ledger_head_sequence.set(-1);
        m
    }

    /// The text exposition format. A follower (`komptroller_is_leader` 0)
    /// leaves out the leader's series.
    pub fn render(&self) -> String {
        let leader = self.is_leader.get() == 1;
        let families: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|f| leader || exported_by_every_replica(f.name()))
            .collect();
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Forgets the books (on losing the lease; rebuilt from the ledger on winning it).
    pub fn reset_books(&self) {
        self.projected_flop.reset();
        self.projected_acc.reset();
        self.consumed_flop.reset();
        self.consumed_acc.reset();
        self.decisions.reset();
        self.lineage_charged.reset();
        self.budget_use_ratio.reset();
        if let Ok(mut s) = self.jobs.lock() {
            *s = BookState::default();
        }
        self.ledger_head_sequence.set(-1);
    }

    /// Counts one persisted ledger entry into the books.
    pub fn observe_entry(&self, entry: &LedgerEntry) {
        self.ledger_head_sequence
            .set(i64::try_from(entry.seq).unwrap_or(i64::MAX));
        let r = &entry.record;
        let Ok(mut guard) = self.jobs.lock() else {
            return;
        };
        let state = &mut *guard;
        let lineage_label = |l: &str, seen: &mut HashSet<String>| -> String {
            if seen.contains(l) {
                l.to_string()
            } else if seen.len() < MAX_LINEAGES {
                seen.insert(l.to_string());
                l.to_string()
            } else {
                OTHER.to_string()
            }
        };
        let own_labels = |lineage: String| BookLabels {
            namespace: r
                .job
                .as_ref()
                .map(|j| j.namespace.clone())
                .unwrap_or_default(),
            lineage,
            accelerator: r
                .accelerator
                .as_ref()
                .map(|a| a.kind.clone())
                .unwrap_or_default(),
            tier: NO_TIER.to_string(),
        };
        // An admission's labels (its own lineage, its tier), taken before the
        // lineages it charges so lineage labels are handed out in that order.
        let mut admission = None;
        if let LedgerEvent::Decided {
            verdict,
            enforced_verdict,
            mode,
            tier,
            projection,
            ..
        } = &r.event
        {
            self.decisions
                .with_label_values(&[verdict.as_str(), enforced_verdict.as_str(), mode_str(*mode)])
                .inc();
            if *verdict == Verdict::Admit {
                let lineage = r.lineage.clone().unwrap_or_default();
                let labels = BookLabels {
                    lineage: lineage_label(&lineage, &mut state.lineages),
                    tier: tier.clone().unwrap_or_else(|| NO_TIER.to_string()),
                    ..own_labels(String::new())
                };
                admission = Some((labels, projection.as_ref()));
            }
        }
        let facts = RecordFacts::of(r);
        let effect = state.fold.fold(&facts, || {
            admission
                .as_ref()
                .map(|(labels, _)| labels.clone())
                .unwrap_or_else(|| own_labels(String::new()))
        });
        match effect {
            Effect::Charged { charged, lineages } => {
                let Some((labels, projection)) = &admission else {
                    return;
                };
                let values = labels.values();
                self.projected_flop
                    .with_label_values(&values)
                    .inc_by(charged.0.max(0.0));
                if let Some(p) = projection {
                    self.projected_acc
                        .with_label_values(&values)
                        .inc_by(p.accelerator_seconds.0.max(0.0));
                }
                for l in lineages.iter() {
                    let label = lineage_label(l, &mut state.lineages);
                    self.lineage_charged
                        .with_label_values(&[label.as_str()])
                        .add(charged.0.max(0.0));
                }
            }
            // Finished, DeadlineExceeded, Deleted: what was metered, under
            // the labels of the job's admission (its own if it had none).
            Effect::Metered {
                consumed,
                accelerator_seconds,
                admitted,
                ..
            } => {
                if consumed.0 <= 0.0 && accelerator_seconds.0 <= 0.0 {
                    if matches!(r.event, LedgerEvent::Deleted { .. })
                        && let Some(job) = &facts.job
                    {
                        state.fold.forget(job);
                    }
                    return;
                }
                let labels = admitted.map_or_else(
                    || own_labels(r.lineage.clone().unwrap_or_default()),
                    |a| a.extra.clone(),
                );
                let values = labels.values();
                self.consumed_flop
                    .with_label_values(&values)
                    .inc_by(consumed.0.max(0.0));
                self.consumed_acc
                    .with_label_values(&values)
                    .inc_by(accelerator_seconds.0.max(0.0));
                // Metered once: the memory is kept only for jobs not yet ended.
                if let Some(job) = &facts.job {
                    state.fold.forget(job);
                }
            }
            Effect::None => {}
        }
    }
}

impl BookLabels {
    fn values(&self) -> [&str; 4] {
        [
            self.namespace.as_str(),
            self.lineage.as_str(),
            self.accelerator.as_str(),
            self.tier.as_str(),
        ]
    }
}

fn mode_str(m: komptroller_engine::policy::Mode) -> &'static str {
    match m {
        komptroller_engine::policy::Mode::Enforce => "Enforce",
        komptroller_engine::policy::Mode::Warn => "Warn",
        komptroller_engine::policy::Mode::DryRun => "DryRun",
    }
}

/// `docs/metrics.md`, generated from [`METRICS`].
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Metrics reference\n\n\
         Generated from `operator/src/metrics.rs` (`METRICS`); do not edit by hand.\n\
         Regenerate with `UPDATE_DOCS=1 cargo test -p komptroller --lib metrics`.\n\n\
         Served by `komptroller run` at `http://<--metrics-addr>/metrics`.\n\n\
         | name | type | labels | exported by | meaning |\n|---|---|---|---|---|\n",
    );
    for m in METRICS {
        let labels = if m.labels.is_empty() {
            "—".to_string()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let by = if exported_by_every_replica(m.name) {
            "every replica"
        } else {
            "the leader"
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name, m.kind, labels, by, m.help
        ));
    }
    out.push_str(&format!(
        "\n## Label cardinality\n\n\
         | label | values | bound |\n|---|---|---|\n\
         | `namespace` | namespaces that ran admitted TrainingJobs | the cluster's namespaces |\n\
         | `lineage` | model lineages (`spec.model.name`) | at most {MAX_LINEAGES} distinct values per leader term; later lineages are counted under `{OTHER}` |\n\
         | `accelerator` | catalog keys | the catalog (about 60) plus policy additions |\n\
         | `tier` | tier names of the policies, `{NO_TIER}` below every tier | the policies' tiers |\n\
         | `verdict`, `enforced_verdict` | Admit, Throttle, Escalate, Reject | 4 |\n\
         | `mode` | Enforce, Warn, DryRun | 3 |\n\
         | `policy`, `budget`, `key` | policy and budget names; the namespace or lineage a budget is counted on | policies × budgets × keys in their windows |\n\
         | `error` | {} | {} |\n\n\
         The book counters are rebuilt from the ledger when a replica becomes leader, so\n\
         `sum(komptroller_consumed_flop_total)` equals the ledger's consumed FLOP total.\n\
         \n\
         ## Replicas\n\n\
         Only the leader (the replica holding the Lease) exports the metrics marked\n\
         \"the leader\": a follower leaves them out entirely rather than exporting\n\
         zeros, so `sum()` across replicas equals the leader's value and needs no\n\
         `max by`. Every replica exports `komptroller_is_leader` (1 on the leader, 0\n\
         elsewhere) and its own reconcile series. After a failover the new leader\n\
         rebuilds the books from the ledger before exporting them.\n",
        crate::error::Error::LABELS.join(", "),
        crate::error::Error::LABELS.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_books_fold_the_ledger_as_the_report_totals_do() {
        use komptroller_engine::ledger::{LedgerHead, LedgerTotals, sample::sample_records};
        let mut head = LedgerHead::GENESIS;
        let entries: Vec<LedgerEntry> = sample_records(3000, 11, jiff::Timestamp::UNIX_EPOCH)
            .into_iter()
            .map(|r| head.seal(r).unwrap())
            .collect();
        let m = Metrics::new();
        for e in &entries {
            m.observe_entry(e);
        }
        let totals = LedgerTotals::rebuild(&entries);
        assert!(totals.lineages().len() > 2);
        // Charges land on the same lineages (a fine-tune's base too), added
        // in the same order: the same bits.
        for (lineage, sums) in totals.lineages() {
            assert!(sums.charged.0 > 0.0, "{lineage}");
            assert_eq!(
                m.lineage_charged.with_label_values(&[lineage]).get(),
                sums.charged.0,
                "{lineage}"
            );
        }
        // Metering goes under the namespace and tier of the admission.
        let families = m.registry.gather();
        let consumed = families
            .iter()
            .find(|f| f.name() == "komptroller_consumed_flop_total")
            .expect("consumed family");
        let by = |label: &str, value: &str| -> f64 {
            consumed
                .get_metric()
                .iter()
                .filter(|c| {
                    c.get_label()
                        .iter()
                        .any(|l| l.name() == label && l.value() == value)
                })
                .map(|c| c.get_counter().get_value())
                .sum()
        };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        for (ns, sums) in totals.namespaces() {
            assert!(close(by("namespace", ns), sums.consumed.0), "{ns}");
        }
        for (tier, sums) in totals.tiers() {
            assert!(close(by("tier", tier), sums.consumed.0), "{tier}");
        }
    }

    #[test]
    fn every_metric_is_registered_once() {
        let m = Metrics::new();
        // Touch the vectors so they appear in the output.
        m.reconcile_errors.with_label_values(&["kube"]).inc();
        m.reconcile_duration
            .with_label_values::<&str>(&[])
            .observe(0.1);
        let names: HashSet<&str> = METRICS.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), METRICS.len(), "duplicate metric names");
        assert!(names.iter().all(|n| n.starts_with("komptroller_")));
        let families: HashSet<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for d in METRICS {
            assert!(
                families.contains(d.name) || !d.labels.is_empty(),
                "{} not registered",
                d.name
            );
        }
        assert!(!families.contains("komptroller_fallback"));
    }

    #[test]
    fn a_follower_exports_no_book_series() {
        let m = Metrics::new();
        m.is_leader.set(1);
        m.lineage_charged.with_label_values(&["llama"]).set(1e24);
        m.queue_depth.set(3);
        m.reconcile_errors.with_label_values(&["kube"]).inc();
        let leader = m.render();
        assert!(leader.contains("komptroller_lineage_charged_flop{lineage=\"llama\"}"));
        assert!(leader.contains("komptroller_queue_depth 3"));
        m.is_leader.set(0);
        let follower = m.render();
        assert!(follower.contains("komptroller_is_leader 0"), "{follower}");
        assert!(follower.contains("komptroller_reconcile_errors_total"));
        for d in METRICS {
            if !exported_by_every_replica(d.name) {
                assert!(
                    !follower.contains(d.name),
                    "a follower exports {}:\n{follower}",
                    d.name
                );
            }
        }
        for name in REPLICA_METRICS {
            assert!(
                METRICS.iter().any(|d| d.name == *name),
                "{name} undocumented"
            );
        }
    }

    #[test]
    fn docs_metrics_md_is_generated_from_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let want = reference_markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/metrics.md is stale: run UPDATE_DOCS=1 cargo test -p komptroller --lib metrics"
        );
    }
}
