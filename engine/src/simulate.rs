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
use std::collections::{BTreeMap, BinaryHeap};

use foldhash::{HashMap, HashMapExt};

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
    /// Boxed: rare, and large enough to make every event large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Box<ComputePolicyDoc>>,
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
    /// The job's spec hash, computed by the trace reader on its own thread
    /// (never read from or written to a trace).
    #[serde(skip)]
    pub spec_hash: Option<String>,
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

/// The header of a trace (everything but its events).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceHeader {
    pub start: Option<Timestamp>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub policies: Vec<ComputePolicyDoc>,
}

/// Trace events read one at a time; an error names the line.
pub type TraceEvents = Box<dyn Iterator<Item = Result<TraceEvent, String>>>;

/// Reads a JSON Lines trace: the first line is the header (`start`, `title`,
/// `namespaces`, `policies`), each further line one event, in time order.
/// Events are read and parsed on a thread of their own, a few thousand ahead
/// of the consumer (the engine runs on the caller's), so a trace of millions
/// of submissions needs no more memory than the jobs alive at once. Reading
/// stops at the first line that does not parse; that error is the last item.
pub fn read_jsonl_trace<R: std::io::BufRead + Send + 'static>(
    mut reader: R,
    source_name: &str,
) -> Result<(TraceHeader, TraceEvents), ManifestError> {
    let mut first = String::new();
    reader.read_line(&mut first).map_err(|e| ManifestError {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    let header: TraceHeader = serde_json::from_str(&first).map_err(|e| ManifestError {
        source_name: source_name.to_string(),
        message: format!("line 1 (header): {e}"),
    })?;
    let name = source_name.to_string();
    let events = reader
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| match line {
            Err(e) => Some(Err(format!("{name}: line {}: {e}", i + 2))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(
                serde_json::from_str::<TraceEvent>(&l)
                    .map(|mut e| {
                        // Hashed here, on the reader's thread, not the engine's.
                        if let Some(s) = &mut e.submit {
                            s.spec_hash = Some(crate::engine::spec_hash_of(
                                &s.model,
                                &s.accelerator,
                                s.count,
                                s.max_duration,
                                s.priority,
                            ));
                        }
                        e
                    })
                    .map_err(|e| format!("{name}: line {}: {e}", i + 2)),
            ),
        });
    Ok((header, read_ahead(events)))
}

/// Runs `events` on a thread of its own, handing them over in batches
/// through a bounded channel; stops at the first error, or when the consumer
/// drops the iterator.
fn read_ahead(
    events: impl Iterator<Item = Result<TraceEvent, String>> + Send + 'static,
) -> TraceEvents {
    // Small batches (tens of KB): freeing a block past 64 KB makes glibc
    // consolidate its free lists, on the engine's thread.
    const BATCH: usize = 32;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Result<TraceEvent, String>>>(128);
    let spawned = std::thread::Builder::new()
        .name("trace-reader".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for item in events {
                let failed = item.is_err();
                batch.push(item);
                if failed {
                    break;
                }
                if batch.len() == BATCH
                    && tx
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    return; // the consumer is gone
                }
            }
            let _ = tx.send(batch);
        });
    match spawned {
        Ok(_) => Box::new(rx.into_iter().flatten()),
        Err(e) => Box::new(std::iter::once(Err(format!(
            "could not start a thread to read the trace: {e}"
        )))),
    }
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

    /// Total charged FLOP across lineages (a lineage and its fine-tunes overlap).
    pub fn total_charged(&self) -> Flop {
        self.summary.lineages.values().map(|t| t.charged).sum()
    }
}

/// A small deterministic generator (SplitMix64), so a generated trace is the
/// same on every machine for the same seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The policy embedded in generated traces: EU-style tiers with approvals,
/// 30-day budgets on half the namespaces, cluster and namespace caps.
const GENERATED_POLICY: &str = r#"{"apiVersion":"komptroller.dev/v1alpha1","kind":"ComputePolicy","metadata":{"name":"generated"},"spec":{"tiers":[{"name":"gpai","threshold":1e23,"action":"Admit"},{"name":"systemic","threshold":1e25,"action":"Escalate","approvals":{"required":2,"groups":["safety"]},"reporting":{"regulation":"EU AI Act Art. 52(1)","notifyWithin":"14d"}},{"name":"frontier","threshold":1e26,"action":"Reject"}],"capacity":{"cluster":{"maxAccelerators":180000},"perNamespace":{"maxAccelerators":12000}}}}"#;
const GENERATED_BUDGETS: &str = r#"{"apiVersion":"komptroller.dev/v1alpha1","kind":"ComputePolicy","metadata":{"name":"generated-budgets"},"spec":{"namespaceSelector":{"matchLabels":{"budgeted":"true"}},"budgets":[{"name":"ns-30d","scope":"Namespace","window":"30d","limit":8e24,"action":"Throttle"}]}}"#;

/// Writes a JSON Lines trace of `submissions` jobs (plus approvals and a few
/// deletions) arriving on average every 30 s: 60 namespaces, 3,000
/// lineages, H100/A100/MI300X jobs of 8–512 accelerators for 1–48 h.
/// `komptroller gen-trace` exposes it; BENCHMARKS.md uses it.
pub fn generate_trace<W: std::io::Write>(
    submissions: u64,
    seed: u64,
    mut out: W,
) -> std::io::Result<()> {
    let mut rng = SplitMix(seed);
    let mut namespaces = serde_json::Map::new();
    for n in 0..60 {
        let mut labels = serde_json::Map::new();
        labels.insert("team".into(), format!("team-{n}").into());
        labels.insert(
            "budgeted".into(),
            (if n % 2 == 0 { "true" } else { "false" }).into(),
        );
        namespaces.insert(format!("team-{n}"), serde_json::Value::Object(labels));
    }
    let policies: Vec<serde_json::Value> = [GENERATED_POLICY, GENERATED_BUDGETS]
        .iter()
        .map(|p| serde_json::from_str(p))
        .collect::<Result<_, _>>()?;
    let header = serde_json::json!({
        "start": "2026-01-01T00:00:00Z",
        "title": format!("generated trace: {submissions} submissions, seed {seed}"),
        "namespaces": namespaces,
        "policies": policies,
    });
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let accelerators = ["nvidia-h100-sxm", "nvidia-a100-sxm4-80gb", "amd-mi300x"];
    let mut t_ms: i64 = 0;
    // Approvals and deletions due later, written once the clock reaches them.
    let mut later: Vec<(i64, serde_json::Value)> = Vec::new();
    let flush = |until: i64,
                 later: &mut Vec<(i64, serde_json::Value)>,
                 out: &mut W|
     -> std::io::Result<()> {
        later.sort_by_key(|(at, _)| *at);
        let due = later.partition_point(|(at, _)| *at <= until);
        for (_, ev) in later.drain(..due) {
            serde_json::to_writer(&mut *out, &ev)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    for i in 0..submissions {
        // Exponential inter-arrival times, mean 30 s.
        t_ms += (-(1.0 - rng.unit()).ln() * 30_000.0) as i64;
        flush(t_ms, &mut later, &mut out)?;
        let ns = rng.below(60);
        let frontier = ns == 0 && rng.below(20) == 0;
        let count = if frontier {
            4096
        } else {
            8u64 << rng.below(7).min(rng.below(7))
        };
        let hours = if frontier { 72 } else { 1 + rng.below(48) };
        let runtime_min = (hours as f64 * 60.0 * (0.3 + 0.8 * rng.unit())) as u64;
        let lineage = if frontier {
            format!("frontier-{}", rng.below(3))
        } else {
            format!("lineage-{}", rng.below(3000))
        };
        let name = format!("job-{i}");
        let job = format!("team-{ns}/{name}");
        let mut model = serde_json::json!({"name": lineage});
        if !frontier && rng.below(10) == 0 {
            model["baseModel"] = format!("lineage-{}", rng.below(3000)).into();
        }
        let ev = serde_json::json!({
            "at": format!("{t_ms}ms"),
            "submit": {
                "name": name,
                "namespace": format!("team-{ns}"),
                "submitter": format!("user-{}", rng.below(500)),
                "priority": rng.below(3),
                "model": model,
                "accelerator": {"type": accelerators[rng.below(3) as usize]},
                "count": count,
                "maxDuration": format!("{hours}h"),
                "runtime": format!("{runtime_min}m"),
            }
        });
        serde_json::to_writer(&mut out, &ev)?;
        out.write_all(b"\n")?;
        if frontier {
            let at = t_ms + 3_600_000;
            for approver in ["safety-dana", "safety-erin"] {
                later.push((
                    at,
                    serde_json::json!({"at": format!("{at}ms"), "approve": {"job": job, "approver": approver, "groups": ["safety"]}}),
                ));
            }
        } else if rng.below(500) == 0 {
            let at = t_ms + 60_000;
            later.push((
                at,
                serde_json::json!({"at": format!("{at}ms"), "delete": job}),
            ));
        }
    }
    flush(i64::MAX, &mut later, &mut out)?;
    Ok(())
}
