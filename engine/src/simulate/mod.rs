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
//!
//! `trace` reads traces (YAML, JSON, or JSON Lines streamed a batch ahead),
//! this file runs them, `render` prints the text report, and `generate`
//! writes reproducible synthetic traces for benchmarks.

mod generate;
mod render;
mod trace;

pub use generate::generate_trace;
pub use trace::{
    Submission, Trace, TraceApproval, TraceEvent, TraceEvents, TraceHeader, parse_trace,
    read_jsonl_trace,
};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use foldhash::{HashMap, HashMapExt};

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::decision::Verdict;
use crate::duration::GoDuration;
use crate::engine::{Crossing, Engine, EngineError, Event, LineageTotals, Outcome};
use crate::job::{JobId, JobRequest, Principal};
use crate::ledger::LedgerRecord;
use crate::policy::Policy;
use crate::units::Flop;

use trace::job_id;

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
    /// Longest the queue got.
    pub max_queue_depth: u64,
    pub max_queue_wait_seconds: f64,
    pub end: Option<Timestamp>,
}

/// Everything a simulation produced.
#[derive(Debug, Default)]
pub struct Simulation {
    /// Index into `jobs` while the simulation runs (timeline mode).
    job_index: HashMap<(String, String), usize>,
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
    let header = TraceHeader {
        start: Some(trace.start),
        title: trace.title.clone(),
        namespaces: trace.namespaces.clone(),
        policies: trace.policies.clone(),
    };
    // A document trace may list events in any order: replay them by time.
    let mut events: Vec<&TraceEvent> = trace.events.iter().collect();
    events.sort_by_key(|e| e.at);
    simulate_stream(
        catalog,
        policies,
        &header,
        events.into_iter().map(|e| Ok(e.clone())),
        options,
    )
}

/// Per-job facts kept while a job is alive in the simulation.
struct Alive {
    submitted: i64,
    runtime: Option<GoDuration>,
    max: GoDuration,
    fails: bool,
}

/// Runs events (in time order) through a fresh engine.
pub fn simulate_stream(
    catalog: Catalog,
    policies: Vec<Policy>,
    header: &TraceHeader,
    events: impl Iterator<Item = Result<TraceEvent, String>>,
    options: &SimulateOptions,
) -> Result<Simulation, String> {
    let start = header
        .start
        .ok_or("trace: start is missing (the virtual time zero, e.g. 2026-01-05T09:00:00Z)")?;
    let mut engine = Engine::new(catalog);
    engine.keep_records(options.records);
    engine.keep_reasons(options.timeline);
    let mut sim = Simulation::default();
    sim.summary.title = header.title.clone();
    let mut all_policies = policies;
    for d in &header.policies {
        all_policies.push(Policy {
            name: d.metadata.name.clone(),
            spec: d.spec.clone(),
        });
    }
    let mut alive: HashMap<(String, String), Alive> = HashMap::new();
    // Each namespace's labels, shared by all its jobs.
    let labels: HashMap<String, std::sync::Arc<BTreeMap<String, String>>> = header
        .namespaces
        .iter()
        .map(|(ns, l)| (ns.clone(), std::sync::Arc::new(l.clone())))
        .collect();
    let mut finishes: BinaryHeap<Reverse<(i64, u64, Pending)>> = BinaryHeap::new();
    let mut waits = WaitStats::default();
    let mut order = 0u64;
    let mut now = start;
    for p in &all_policies {
        let step = engine
            .apply(now, Event::UpsertPolicy(p.clone()))
            .map_err(|e| e.to_string())?;
        sim.absorb(
            &mut engine,
            now,
            step,
            options,
            &mut alive,
            &mut finishes,
            &mut waits,
        );
    }
    sim.policies = all_policies;

    let mut events = events.enumerate().peekable();
    let mut last_at = 0i64;
    let mut scheduled_wake: Option<i64> = None;
    loop {
        let next_trace = match events.peek() {
            Some((_, Ok(e))) => Some(e.at.as_millis()),
            Some((i, Err(e))) => return Err(format!("events[{i}]: {e}")),
            None => None,
        };
        let next_internal = finishes
            .peek()
            .map(|Reverse((t, _, _))| *t - start.as_millisecond());
        let take_trace = match (next_trace, next_internal) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => a <= b,
        };
        let step = if take_trace {
            let Some((i, Ok(e))) = events.next() else {
                break;
            };
            let at = e.at.as_millis();
            if at < last_at {
                return Err(format!(
                    "events[{i}].at: {} comes before the previous event at {}; a streamed trace must be in time order",
                    e.at,
                    GoDuration(std::time::Duration::from_millis(last_at.max(0) as u64))
                ));
            }
            last_at = at;
            now = start
                .checked_add(SignedDuration::from_millis(at))
                .map_err(|err| format!("events[{i}].at: {err}"))?;
            sim.trace_event(&mut engine, now, i, e, &labels, options, &mut alive)?
        } else {
            let Some(Reverse((t, _, pending))) = finishes.pop() else {
                break;
            };
            now = Timestamp::from_millisecond(t).map_err(|e| e.to_string())?;
            match pending {
                Pending::Wake => {
                    scheduled_wake = None;
                    engine
                        .apply(now, Event::Tick)
                        .map_err(|e| format!("at {now}: {e}"))?
                }
                Pending::Finish(ns, name, code) => {
                    let outcome = match code {
                        0 => Outcome::Succeeded,
                        1 => Outcome::Failed,
                        _ => Outcome::DeadlineExceeded,
                    };
                    let key = (ns, name);
                    if alive.remove(&key).is_none() {
                        continue; // deleted while running: already metered
                    }
                    if options.timeline {
                        sim.timeline.push(TimelineEntry {
                            at: now,
                            job: Some(format!("{}/{}", key.0, key.1)),
                            what: format!("{outcome:?}"),
                            detail: String::new(),
                        });
                        if let Some(j) = sim.job_index.get(&key).and_then(|i| sim.jobs.get_mut(*i))
                        {
                            j.ended = Some(now);
                        }
                    }
                    let job = JobId {
                        namespace: key.0,
                        name: key.1,
                        uid: String::new(),
                    };
                    engine
                        .apply(now, Event::Finish { job, outcome })
                        .map_err(|e| format!("at {now}: {e}"))?
                }
            }
        };
        sim.absorb(
            &mut engine,
            now,
            step,
            options,
            &mut alive,
            &mut finishes,
            &mut waits,
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
    if waits.count > 0 {
        sim.summary.mean_queue_wait_seconds = waits.sum / waits.count as f64;
        sim.summary.max_queue_wait_seconds = waits.max;
    }
    sim.job_index.clear();
    // Freeing the state of a million jobs takes a while and the result does
    // not depend on it: do it on another thread (or here, if none starts).
    let _ = std::thread::Builder::new()
        .name("engine-drop".into())
        .spawn(move || drop(engine));
    Ok(sim)
}

#[derive(Default)]
struct WaitStats {
    count: u64,
    sum: f64,
    max: f64,
}

impl Simulation {
    #[allow(clippy::too_many_arguments)]
    fn trace_event(
        &mut self,
        engine: &mut Engine,
        now: Timestamp,
        i: usize,
        e: TraceEvent,
        namespaces: &HashMap<String, std::sync::Arc<BTreeMap<String, String>>>,
        options: &SimulateOptions,
        alive: &mut HashMap<(String, String), Alive>,
    ) -> Result<crate::engine::Step, String> {
        let fail = |err: EngineError| format!("at {now}: {err}");
        if let Some(s) = e.submit {
            self.summary.submissions += 1;
            let key = (s.namespace.clone(), s.name.clone());
            let req = JobRequest {
                namespace_labels: namespaces.get(&s.namespace).cloned().unwrap_or_default(),
                model: s.model,
                accelerator: s.accelerator,
                count: s.count,
                max_duration: s.max_duration,
                priority: s.priority,
                submitter: s.submitter.map(|user| Principal {
                    user,
                    groups: s.groups,
                }),
                spec_hash: s.spec_hash.unwrap_or_default(),
                id: JobId {
                    namespace: s.namespace,
                    name: s.name,
                    uid: String::new(),
                },
            };
            if options.timeline {
                self.job_index.insert(key.clone(), self.jobs.len());
                self.jobs.push(JobSummary {
                    job: req.id.to_string(),
                    lineage: req.lineage().to_string(),
                    submitted: Some(now),
                    ..JobSummary::default()
                });
            }
            alive.insert(
                key,
                Alive {
                    submitted: now.as_millisecond(),
                    runtime: s.runtime,
                    max: s.max_duration,
                    fails: s.fails,
                },
            );
            return engine.apply(now, Event::Submit(req)).map_err(fail);
        }
        if let Some(a) = &e.approve {
            let id = job_id(&a.job, &format!("events[{i}].approve.job"))?;
            let r = engine.apply(
                now,
                Event::Approve {
                    job: id,
                    approver: Principal {
                        user: a.approver.clone(),
                        groups: a.groups.clone(),
                    },
                    spec_hash: String::new(),
                },
            );
            return match r {
                Err(err @ EngineError::Approval { .. }) => {
                    self.summary.approvals_refused += 1;
                    if options.timeline {
                        self.timeline.push(TimelineEntry {
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
                        self.timeline.push(TimelineEntry {
                            at: now,
                            job: Some(a.job.clone()),
                            what: "Approved".into(),
                            detail: format!("by {}", a.approver),
                        });
                    }
                    Ok(step)
                }
                Err(other) => Err(fail(other)),
            };
        }
        if let Some(d) = &e.delete {
            let id = job_id(d, &format!("events[{i}].delete"))?;
            if options.timeline {
                self.timeline.push(TimelineEntry {
                    at: now,
                    job: Some(d.clone()),
                    what: "Deleted".into(),
                    detail: "its compute stays on the books".into(),
                });
            }
            let key = (id.namespace.clone(), id.name.clone());
            alive.remove(&key);
            if let Some(j) = self.job_index.get(&key).and_then(|i| self.jobs.get_mut(*i))
                && j.admitted.is_some()
                && j.ended.is_none()
            {
                j.ended = Some(now);
            }
            return engine.apply(now, Event::Delete { job: id }).map_err(fail);
        }
        if let Some(p) = &e.policy {
            let policy = Policy {
                name: p.metadata.name.clone(),
                spec: p.spec.clone(),
            };
            if options.timeline {
                self.timeline.push(TimelineEntry {
                    at: now,
                    job: None,
                    what: "PolicyChanged".into(),
                    detail: format!("ComputePolicy {}", policy.name),
                });
            }
            self.policies.retain(|q| q.name != policy.name);
            self.policies.push(policy.clone());
            return engine.apply(now, Event::UpsertPolicy(policy)).map_err(fail);
        }
        if let Some(name) = &e.remove_policy {
            self.policies.retain(|q| &q.name != name);
            return engine
                .apply(now, Event::RemovePolicy { name: name.clone() })
                .map_err(fail);
        }
        Ok(crate::engine::Step::default())
    }

    #[allow(clippy::too_many_arguments)]
    fn absorb(
        &mut self,
        engine: &mut Engine,
        now: Timestamp,
        step: crate::engine::Step,
        options: &SimulateOptions,
        alive: &mut HashMap<(String, String), Alive>,
        finishes: &mut BinaryHeap<Reverse<(i64, u64, Pending)>>,
        waits: &mut WaitStats,
    ) {
        self.summary.ledger_records += step.record_count();
        if options.records {
            self.records.extend(step.records);
        }
        self.summary.max_queue_depth = self.summary.max_queue_depth.max(engine.queue_len() as u64);
        for (id, d) in step.decisions {
            match self.summary.decisions.get_mut(d.verdict.as_str()) {
                Some(n) => *n += 1,
                None => {
                    self.summary.decisions.insert(d.verdict.to_string(), 1);
                }
            }
            let key = (id.namespace.clone(), id.name.clone());
            if let Some(j) = self.job_index.get(&key).and_then(|i| self.jobs.get_mut(*i)) {
                j.final_verdict = Some(d.verdict);
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
                    let Some(a) = alive.get(&key) else { continue };
                    let wait = (now.as_millisecond() - a.submitted) as f64 / 1000.0;
                    waits.count += 1;
                    waits.sum += wait;
                    waits.max = waits.max.max(wait);
                    if let Some(j) = self.job_index.get(&key).and_then(|i| self.jobs.get_mut(*i)) {
                        j.admitted = Some(now);
                        j.queue_wait_seconds = Some(wait);
                    }
                    // The simulated cluster starts the Job at once.
                    if let Ok(st) = engine.apply(now, Event::Start { job: id }) {
                        self.summary.ledger_records += st.record_count();
                        if options.records {
                            self.records.extend(st.records);
                        }
                    }
                    let (dur, code) = match a.runtime {
                        Some(r) if r < a.max => (r, u8::from(a.fails)),
                        _ => (a.max, 2),
                    };
                    let end = now.as_millisecond().saturating_add(dur.as_millis());
                    finishes.push(Reverse((
                        end,
                        u64::MAX,
                        Pending::Finish(key.0, key.1, code),
                    )));
                }
                Verdict::Reject => {
                    self.summary.rejected += 1;
                    alive.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// Total charged FLOP across lineages (a lineage and its fine-tunes overlap).
    pub fn total_charged(&self) -> Flop {
        self.summary.lineages.values().map(|t| t.charged).sum()
    }
}
