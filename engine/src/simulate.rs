//! `komptroller simulate`: replays a trace of submissions through the same
//! engine the operator runs, on a virtual clock.
//!
//! # Trace format (YAML or JSON)
//!
//! ```yaml
//! start: 2026-01-05T09:00:00Z        # virtual time zero
//! namespaces:                        # labels, for policies' namespaceSelector
//!   research: {team: research}
//! policies: []                       # optional inline ComputePolicy documents
//! events:
//!   - at: 1d2h                       # offset from start (Go duration; d = 24h)
//!     submit:
//!       name: rl-sweep-1
//!       namespace: research
//!       submitter: alice              # the authenticated user
//!       groups: [research]
//!       priority: 0
//!       model: {name: sweeps, baseModel: atlas, parameters: 7e9, tokens: 1e11}
//!       accelerator: {type: nvidia-h100-sxm, precision: bf16}
//!       count: 256                   # accelerators (replicas × per-pod limit)
//!       maxDuration: 48h
//!       runtime: 40h                 # how long it really runs once started;
//!                                    # absent or ≥ maxDuration: stopped at the deadline
//!       fails: false                 # ends Failed instead of Succeeded
//!   - at: 3d
//!     approve: {job: frontier/atlas-3, approver: dana, groups: [safety-board]}
//!   - at: 4d
//!     delete: research/rl-sweep-1
//!   - at: 5d
//!     policy: {apiVersion: komptroller.dev/v1alpha1, kind: ComputePolicy, metadata: {name: p}, spec: {}}
//!   - at: 6d
//!     removePolicy: p
//! ```
//!
//! Admitted jobs start at once (the simulated cluster has the capacity the
//! policies allow) and end after `runtime`, or at `maxDuration` with
//! DeadlineExceeded, exactly as the operator's Job would.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::decision::Verdict;
use crate::duration::GoDuration;
use crate::engine::{Crossing, Engine, EngineError, Event, LineageTotals, Outcome};
use crate::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec, Principal};
use crate::ledger::LedgerRecord;
use crate::manifest::{ComputePolicyDoc, ManifestError};
use crate::policy::Policy;
use crate::units::{Flop, sci};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trace {
    /// Virtual time zero.
    pub start: Timestamp,
    /// A title printed in the summary.
    #[serde(default)]
    pub title: Option<String>,
    /// Namespace labels.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Inline policies, applied at time zero.
    #[serde(default)]
    pub policies: Vec<ComputePolicyDoc>,
    pub events: Vec<TraceEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceEvent {
    /// Offset from `start`.
    pub at: GoDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit: Option<Submission>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<TraceApproval>,
    /// `namespace/name` of a job to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ComputePolicyDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_policy: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Submission {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub submitter: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub model: ModelSpec,
    pub accelerator: AcceleratorSpec,
    pub count: u32,
    pub max_duration: GoDuration,
    #[serde(default)]
    pub runtime: Option<GoDuration>,
    #[serde(default)]
    pub fails: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceApproval {
    /// `namespace/name`.
    pub job: String,
    pub approver: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Parses a trace from YAML or JSON (JSON is much faster for large traces).
pub fn parse_trace(text: &str, source_name: &str) -> Result<Trace, ManifestError> {
    let trimmed = text.trim_start();
    let result = if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    };
    let trace: Trace = result.map_err(|message| ManifestError {
        source_name: source_name.to_string(),
        message,
    })?;
    for (i, e) in trace.events.iter().enumerate() {
        let set = usize::from(e.submit.is_some())
            + usize::from(e.approve.is_some())
            + usize::from(e.delete.is_some())
            + usize::from(e.policy.is_some())
            + usize::from(e.remove_policy.is_some());
        if set != 1 {
            return Err(ManifestError {
                source_name: source_name.to_string(),
                message: format!(
                    "events[{i}]: exactly one of submit, approve, delete, policy, removePolicy must be set, found {set}"
                ),
            });
        }
    }
    Ok(trace)
}

fn job_id(s: &str, field: &str) -> Result<JobId, String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{field}: {s:?} must be namespace/name"))?;
    Ok(JobId {
        namespace: ns.to_string(),
        name: name.to_string(),
        uid: String::new(),
    })
}

/// One line of the timeline.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub at: Timestamp,
    pub job: Option<String>,
    pub what: String,
    pub detail: String,
}

/// Per-job outcome.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub job: String,
    pub lineage: String,
    pub submitted: Option<Timestamp>,
    pub admitted: Option<Timestamp>,
    pub ended: Option<Timestamp>,
    pub final_verdict: Option<Verdict>,
    /// Seconds between submission and admission.
    pub queue_wait_seconds: Option<f64>,
}

/// Aggregate results.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulationSummary {
    pub title: Option<String>,
    pub submissions: u64,
    pub decisions: BTreeMap<String, u64>,
    pub admitted: u64,
    pub rejected: u64,
    pub still_queued: u64,
    pub awaiting_approval: u64,
    pub approvals_refused: u64,
    pub ledger_records: u64,
    pub lineages: BTreeMap<String, LineageTotals>,
    pub crossings: Vec<Crossing>,
    pub mean_queue_wait_seconds: f64,
    pub max_queue_wait_seconds: f64,
    pub end: Option<Timestamp>,
}

/// Everything a simulation produced.
#[derive(Debug, Default)]
pub struct Simulation {
    pub summary: SimulationSummary,
    pub timeline: Vec<TimelineEntry>,
    pub jobs: Vec<JobSummary>,
    pub records: Vec<LedgerRecord>,
    pub policies: Vec<Policy>,
}

/// Options for a run.
#[derive(Clone, Debug, Default)]
pub struct SimulateOptions {
    /// Keep a timeline (costs memory on huge traces).
    pub timeline: bool,
    /// Keep ledger records.
    pub records: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    /// Index into trace events.
    Trace(usize),
    Finish(String, String, u8),
    Wake,
}

/// Runs a trace through a fresh engine with `policies` (plus the trace's own).
pub fn simulate(
    catalog: Catalog,
    policies: Vec<Policy>,
    trace: &Trace,
    options: &SimulateOptions,
) -> Result<Simulation, String> {
    let mut engine = Engine::new(catalog);
    let mut sim = Simulation::default();
    sim.summary.title = trace.title.clone();
    let start = trace.start;
    let mut all_policies = policies;
    for d in &trace.policies {
        all_policies.push(Policy {
            name: d.metadata.name.clone(),
            spec: d.spec.clone(),
        });
    }
    let mut now = start;
    for p in &all_policies {
        let step = engine
            .apply(now, Event::UpsertPolicy(p.clone()))
            .map_err(|e| e.to_string())?;
        sim.absorb(
            &mut engine,
            now,
            step.records,
            step.decisions,
            options,
            &mut HashMap::new(),
            &mut BinaryHeap::new(),
            &HashMap::new(),
        );
    }
    sim.policies = all_policies;

    let mut heap: BinaryHeap<Reverse<(i64, u64, Pending)>> = BinaryHeap::new();
    let mut order = 0u64;
    for (i, e) in trace.events.iter().enumerate() {
        let at = start
            .checked_add(SignedDuration::from_millis(e.at.as_millis()))
            .map_err(|e| format!("events[{i}].at: {e}"))?;
        heap.push(Reverse((at.as_millisecond(), order, Pending::Trace(i))));
        order += 1;
    }
    let mut summaries: HashMap<(String, String), JobSummary> = HashMap::new();
    let mut runtimes: HashMap<(String, String), (Option<GoDuration>, GoDuration, bool)> =
        HashMap::new();
    let mut scheduled_wake: Option<i64> = None;
    let mut finishes: BinaryHeap<Reverse<(i64, u64, Pending)>> = BinaryHeap::new();

    loop {
        // Merge the two heaps: trace events and engine-driven events.
        let next_is_trace = match (heap.peek(), finishes.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Reverse(a)), Some(Reverse(b))) => (a.0, a.1) <= (b.0, b.1),
        };
        let Some(Reverse((t, _, pending))) = (if next_is_trace {
            heap.pop()
        } else {
            finishes.pop()
        }) else {
            break;
        };
        now = Timestamp::from_millisecond(t).map_err(|e| e.to_string())?;
        let result: Result<crate::engine::Step, EngineError> = match pending {
            Pending::Wake => {
                scheduled_wake = None;
                engine.apply(now, Event::Tick)
            }
            Pending::Finish(ns, name, outcome) => {
                let outcome = match outcome {
                    0 => Outcome::Succeeded,
                    1 => Outcome::Failed,
                    _ => Outcome::DeadlineExceeded,
                };
                let key = (ns.clone(), name.clone());
                let job = JobId {
                    namespace: ns,
                    name,
                    uid: String::new(),
                };
                if engine.phase(&job).is_none() {
                    // Deleted while running: already metered at deletion.
                    continue;
                }
                let r = engine.apply(now, Event::Finish { job, outcome });
                if let Some(s) = summaries.get_mut(&key)
                    && s.ended.is_none()
                {
                    s.ended = Some(now);
                }
                if options.timeline {
                    sim.timeline.push(TimelineEntry {
                        at: now,
                        job: Some(format!("{}/{}", key.0, key.1)),
                        what: format!("{outcome:?}"),
                        detail: String::new(),
                    });
                }
                r
            }
            Pending::Trace(i) => {
                let e = &trace.events[i];
                if let Some(s) = &e.submit {
                    sim.summary.submissions += 1;
                    let id = JobId {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                        uid: String::new(),
                    };
                    let req = JobRequest {
                        namespace_labels: trace
                            .namespaces
                            .get(&s.namespace)
                            .cloned()
                            .unwrap_or_default(),
                        model: s.model.clone(),
                        accelerator: s.accelerator.clone(),
                        count: s.count,
                        max_duration: s.max_duration,
                        priority: s.priority,
                        submitter: s.submitter.as_ref().map(|u| Principal {
                            user: u.clone(),
                            groups: s.groups.clone(),
                        }),
                        spec_hash: String::new(),
                        id: id.clone(),
                    };
                    let key = (s.namespace.clone(), s.name.clone());
                    summaries.insert(
                        key.clone(),
                        JobSummary {
                            job: id.to_string(),
                            lineage: req.lineage().to_string(),
                            submitted: Some(now),
                            ..JobSummary::default()
                        },
                    );
                    runtimes.insert(key, (s.runtime, s.max_duration, s.fails));
                    engine.apply(now, Event::Submit(req))
                } else if let Some(a) = &e.approve {
                    let id = job_id(&a.job, &format!("events[{i}].approve.job"))?;
                    let spec_hash = String::new();
                    let r = engine.apply(
                        now,
                        Event::Approve {
                            job: id,
                            approver: Principal {
                                user: a.approver.clone(),
                                groups: a.groups.clone(),
                            },
                            spec_hash,
                        },
                    );
                    match r {
                        Err(err @ EngineError::Approval { .. }) => {
                            sim.summary.approvals_refused += 1;
                            if options.timeline {
                                sim.timeline.push(TimelineEntry {
                                    at: now,
                                    job: Some(a.job.clone()),
                                    what: "ApprovalRefused".into(),
                                    detail: err.to_string(),
                                });
                            }
                            Ok(crate::engine::Step::default())
                        }
                        Ok(step) => {
                            if options.timeline {
                                sim.timeline.push(TimelineEntry {
                                    at: now,
                                    job: Some(a.job.clone()),
                                    what: "Approved".into(),
                                    detail: format!("by {}", a.approver),
                                });
                            }
                            Ok(step)
                        }
                        other => other,
                    }
                } else if let Some(d) = &e.delete {
                    let id = job_id(d, &format!("events[{i}].delete"))?;
                    if options.timeline {
                        sim.timeline.push(TimelineEntry {
                            at: now,
                            job: Some(d.clone()),
                            what: "Deleted".into(),
                            detail: "its compute stays on the books".into(),
                        });
                    }
                    let key = (id.namespace.clone(), id.name.clone());
                    if let Some(s) = summaries.get_mut(&key)
                        && s.admitted.is_some()
                        && s.ended.is_none()
                    {
                        s.ended = Some(now);
                    }
                    engine.apply(now, Event::Delete { job: id })
                } else if let Some(p) = &e.policy {
                    let policy = Policy {
                        name: p.metadata.name.clone(),
                        spec: p.spec.clone(),
                    };
                    if options.timeline {
                        sim.timeline.push(TimelineEntry {
                            at: now,
                            job: None,
                            what: "PolicyChanged".into(),
                            detail: format!("ComputePolicy {}", policy.name),
                        });
                    }
                    sim.policies.retain(|q| q.name != policy.name);
                    sim.policies.push(policy.clone());
                    engine.apply(now, Event::UpsertPolicy(policy))
                } else if let Some(name) = &e.remove_policy {
                    engine.apply(now, Event::RemovePolicy { name: name.clone() })
                } else {
                    Ok(crate::engine::Step::default())
                }
            }
        };
        let step = result.map_err(|e| format!("at {now}: {e}"))?;
        sim.absorb(
            &mut engine,
            now,
            step.records,
            step.decisions,
            options,
            &mut summaries,
            &mut finishes,
            &runtimes,
        );
        if let Some(w) = engine.next_wakeup() {
            let w = w.as_millisecond().max(now.as_millisecond());
            if scheduled_wake.is_none_or(|s| w < s) {
                scheduled_wake = Some(w);
                finishes.push(Reverse((w, order, Pending::Wake)));
                order += 1;
            }
        }
    }

    sim.summary.end = Some(now);
    sim.summary.lineages = engine.lineages();
    sim.summary.crossings = engine.crossings().to_vec();
    sim.summary.still_queued = engine.queue_len() as u64;
    sim.summary.awaiting_approval = engine.pending_approvals() as u64;
    let mut jobs: Vec<JobSummary> = summaries.into_values().collect();
    jobs.sort_by(|a, b| (a.submitted, &a.job).cmp(&(b.submitted, &b.job)));
    let waits: Vec<f64> = jobs.iter().filter_map(|j| j.queue_wait_seconds).collect();
    if !waits.is_empty() {
        sim.summary.mean_queue_wait_seconds = waits.iter().sum::<f64>() / waits.len() as f64;
        sim.summary.max_queue_wait_seconds = waits.iter().copied().fold(0.0, f64::max);
    }
    sim.jobs = jobs;
    Ok(sim)
}

impl Simulation {
    #[allow(clippy::too_many_arguments)]
    fn absorb(
        &mut self,
        engine: &mut Engine,
        now: Timestamp,
        records: Vec<LedgerRecord>,
        decisions: Vec<(JobId, crate::decision::Decision)>,
        options: &SimulateOptions,
        summaries: &mut HashMap<(String, String), JobSummary>,
        finishes: &mut BinaryHeap<Reverse<(i64, u64, Pending)>>,
        runtimes: &HashMap<(String, String), (Option<GoDuration>, GoDuration, bool)>,
    ) {
        self.summary.ledger_records += records.len() as u64;
        if options.records {
            self.records.extend(records);
        }
        for (id, d) in decisions {
            *self
                .summary
                .decisions
                .entry(d.verdict.to_string())
                .or_default() += 1;
            let key = (id.namespace.clone(), id.name.clone());
            if let Some(s) = summaries.get_mut(&key) {
                s.final_verdict = Some(d.verdict);
            }
            if options.timeline {
                let mut detail = d.reason.clone();
                if let Some(p) = d.queue_position {
                    detail.push_str(&format!(" (queue position {p})"));
                }
                if let Some(a) = &d.approvals {
                    detail.push_str(&format!(
                        " Needs {} approval(s) from {}.",
                        a.required,
                        if a.groups.is_empty() {
                            "anyone but the submitter".to_string()
                        } else {
                            a.groups.join(", ")
                        }
                    ));
                }
                self.timeline.push(TimelineEntry {
                    at: now,
                    job: Some(id.to_string()),
                    what: d.verdict.to_string(),
                    detail,
                });
            }
            match d.verdict {
                Verdict::Admit => {
                    self.summary.admitted += 1;
                    if let Some(s) = summaries.get_mut(&key) {
                        s.admitted = Some(now);
                        s.queue_wait_seconds = s.submitted.map(|sub| {
                            (now.as_millisecond() - sub.as_millisecond()) as f64 / 1000.0
                        });
                    }
                    // The simulated cluster starts the Job at once.
                    let _ = engine
                        .apply(now, Event::Start { job: id.clone() })
                        .map(|st| {
                            self.summary.ledger_records += st.records.len() as u64;
                            if options.records {
                                self.records.extend(st.records);
                            }
                        });
                    if let Some((runtime, max, fails)) = runtimes.get(&key) {
                        let (dur, code) = match runtime {
                            Some(r) if r < max => (*r, u8::from(*fails)),
                            _ => (*max, 2),
                        };
                        let end = now.as_millisecond().saturating_add(dur.as_millis());
                        finishes.push(Reverse((
                            end,
                            u64::MAX,
                            Pending::Finish(key.0, key.1, code),
                        )));
                    }
                }
                Verdict::Reject => self.summary.rejected += 1,
                _ => {}
            }
        }
    }

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
        if waited.is_empty() {
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
            "mean wait of admitted jobs {}, longest {}\n",
            GoDuration::from_secs(s.mean_queue_wait_seconds as u64),
            GoDuration::from_secs(s.max_queue_wait_seconds as u64)
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

    /// Total charged FLOP across lineages (a lineage and its fine-tunes overlap).
    pub fn total_charged(&self) -> Flop {
        self.summary.lineages.values().map(|t| t.charged).sum()
    }
}
