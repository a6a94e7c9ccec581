//! The leader's books: the engine and the ledger head, behind one lock.
//! Every event goes through [`Books::apply`], which seals the engine's
//! records in the engine's order; the caller hands the entries to the ledger
//! writer while still holding the lock, so the ledger order is the decision
//! order. Sealed entries are not kept here (memory grows with the jobs):
//! reports read the persisted ledger back from the cluster
//! (`reports::write_report`).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use komptroller_engine::decision::Decision;
use komptroller_engine::engine::{Engine, EngineError, Event, Step};
use komptroller_engine::job::{JobId, JobRequest};
use komptroller_engine::ledger::{LedgerEntry, LedgerEvent, LedgerHead, LedgerRecord};

use crate::crd::ConsumedStatus;
use crate::error::{Error, Result};

/// What one event produced, sealed.
#[derive(Debug, Default)]
pub struct Applied {
    pub decisions: Vec<(JobId, Decision)>,
    pub entries: Vec<LedgerEntry>,
}

impl Applied {
    pub fn extend(&mut self, other: Applied) {
        self.decisions.extend(other.decisions);
        self.entries.extend(other.entries);
    }
    /// Sequence number after the last entry (what to wait for), if any.
    pub fn next_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.seq + 1)
    }
}

pub struct Books {
    pub engine: Engine,
    pub head: LedgerHead,
    /// Engine time never goes backwards (budget windows assume it).
    last: Timestamp,
    /// Content hash of each loaded policy, to ignore re-lists.
    pub policy_hashes: BTreeMap<String, String>,
    /// Sequence of each job's latest Decided entry.
    pub decided_seq: HashMap<JobId, u64>,
    /// Final metering of ended jobs.
    pub consumed: HashMap<JobId, ConsumedStatus>,
}

impl Books {
    /// Books over the ledger `entries` (in sequence order), which are
    /// indexed, not kept.
    pub fn new(engine: Engine, entries: &[LedgerEntry]) -> Books {
        let head = entries
            .last()
            .map(LedgerHead::after)
            .unwrap_or(LedgerHead::GENESIS);
        let last = entries
            .iter()
            .map(|e| e.record.time)
            .max()
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let mut books = Books {
            engine,
            head,
            last,
            policy_hashes: BTreeMap::new(),
            decided_seq: HashMap::new(),
            consumed: HashMap::new(),
        };
        for e in entries {
            books.index(e);
        }
        books
    }

    /// Engine time for an event that happened at `t`: never before the last
    /// event, never after the wall clock (a cluster component whose clock
    /// runs ahead of ours can report completion times in our future).
    pub fn at(&mut self, t: Timestamp) -> Timestamp {
        let now = Timestamp::now();
        let t = t.min(now).max(self.last);
        self.last = t;
        t
    }

    /// Applies one event at (clamped) time `t` and seals its records.
    pub fn apply(&mut self, t: Timestamp, event: Event) -> Result<Applied> {
        let t = self.at(t);
        let step = self.engine.apply(t, event)?;
        self.seal(step)
    }

    /// Submits a job's request at `t`. A spec change the engine refuses
    /// after admission is not an error of the reconcile: it is returned as
    /// the problem the job's status (or check) shows, with nothing applied.
    pub fn submit(
        &mut self,
        t: Timestamp,
        request: JobRequest,
    ) -> Result<(Applied, Option<String>)> {
        match self.apply(t, Event::Submit(request)) {
            Ok(a) => Ok((a, None)),
            Err(Error::Engine(e @ EngineError::Immutable { .. })) => {
                Ok((Applied::default(), Some(e.to_string())))
            }
            Err(e) => Err(e),
        }
    }

    /// Seals a step's records.
    pub fn seal(&mut self, step: Step) -> Result<Applied> {
        let entries = self.seal_records(step.records)?;
        Ok(Applied {
            decisions: step.decisions,
            entries,
        })
    }

    pub fn seal_records(&mut self, records: Vec<LedgerRecord>) -> Result<Vec<LedgerEntry>> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let e = self
                .head
                .seal(r)
                .map_err(|e| Error::Ledger(e.to_string()))?;
            self.index(&e);
            out.push(e);
        }
        Ok(out)
    }

    fn index(&mut self, e: &LedgerEntry) {
        let Some(job) = &e.record.job else {
            return;
        };
        match &e.record.event {
            LedgerEvent::Decided { .. } => {
                self.decided_seq.insert(job.clone(), e.seq);
            }
            LedgerEvent::Finished {
                accelerator_seconds,
                consumed,
                ..
            }
            | LedgerEvent::DeadlineExceeded {
                accelerator_seconds,
                consumed,
            } => {
                self.consumed.insert(
                    job.clone(),
                    ConsumedStatus {
                        accelerator_seconds: *accelerator_seconds,
                        flop: *consumed,
                    },
                );
            }
            LedgerEvent::Deleted { .. } => {
                self.decided_seq.remove(job);
                self.consumed.remove(job);
            }
            _ => {}
        }
    }
}
