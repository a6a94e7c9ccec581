//! Traces: a YAML or JSON document of timed events, or a JSON Lines file
//! (a header line, then one event a line) read on a thread of its own a
//! batch ahead of the engine.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::job::{AcceleratorSpec, JobId, ModelSpec};
use crate::manifest::{ComputePolicyDoc, ManifestError};

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
    /// The job's [`crate::engine::request_digest`], computed by the trace
    /// reader on its own thread (never read from or written to a trace).
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

pub(super) fn job_id(s: &str, field: &str) -> Result<JobId, String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{field}: {s:?} must be namespace/name"))?;
    Ok(JobId {
        namespace: ns.to_string(),
        name: name.to_string(),
        uid: String::new(),
    })
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
                            s.spec_hash = Some(crate::engine::request_digest_of(
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
