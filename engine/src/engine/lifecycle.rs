//! What each event does to a job: submit (or resubmit), approve, withdraw
//! an approval, start, finish, delete, and restore after a restart. A job
//! lives in `Engine::jobs` until it ends; then a [`Tombstone`] answers
//! idempotent resubmissions and status queries.

use jiff::Timestamp;

use super::waitlist::{QueueKey, Watch};
use super::{
    Admission, Engine, EngineError, JobState, Outcome, Phase, RestoredJob, Step, Tombstone, key_of,
    request_digest,
};
use crate::job::{JobId, JobRequest, Principal};
use crate::ledger::{LedgerEvent, LedgerRecord, OPERATOR_ACTOR};
use crate::projection::project;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond};

impl Engine {
    /// The sequence number of a live job.
    fn live_seq(&self, id: &JobId) -> Result<u64, EngineError> {
        self.ids
            .get(&key_of(id))
            .copied()
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))
    }

    pub(super) fn submit(
        &mut self,
        now: Timestamp,
        mut req: JobRequest,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        if req.spec_hash.is_empty() {
            req.spec_hash = request_digest(&req);
        }
        let key = key_of(&req.id);
        if let Some(t) = self.ended.get(&key) {
            if t.uid == req.id.uid {
                if t.spec_hash == req.spec_hash {
                    return Ok(()); // idempotent resubmission of an ended job
                }
                return Err(EngineError::Immutable {
                    job: req.id.to_string(),
                    phase: t.phase,
                });
            }
            self.ended.remove(&key); // a new incarnation
        }
        if let Some(existing) = self.live(&key) {
            let same_incarnation = existing.request.id.uid == req.id.uid;
            if same_incarnation && existing.request.spec_hash == req.spec_hash {
                return Ok(()); // idempotent resubmission
            }
            if same_incarnation && (existing.phase.holds_capacity() || existing.phase.is_terminal())
            {
                return Err(EngineError::Immutable {
                    job: req.id.to_string(),
                    phase: existing.phase,
                });
            }
            // A spec change before admission (or a new incarnation): forget the
            // old hold, its approvals and its queue place.
            let old = existing.clone();
            self.unqueue(&old);
            if !same_incarnation && old.phase.holds_capacity() {
                self.release(&old);
            }
            self.jobs.remove(&old.seq);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(key, seq);
        self.jobs.insert(
            seq,
            JobState {
                request: req,
                phase: Phase::Pending,
                submitted_at: now,
                seq,
                decision: None,
                approvals: Vec::new(),
                admitted: None,
                started_at: None,
                throttled_on: Vec::new(),
                throttled_strict: false,
            },
        );
        self.decide(now, seq, step, true);
        Ok(())
    }

    pub(super) fn approve(
        &mut self,
        now: Timestamp,
        id: &JobId,
        approver: Principal,
        spec_hash: &str,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        let seq = self.live_seq(id)?;
        let job = self
            .jobs
            .get(&seq)
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        let err = |reason: String| EngineError::Approval {
            job: id.to_string(),
            reason,
        };
        if let Some(sub) = &job.request.submitter
            && sub.user == approver.user
        {
            return Err(err(format!(
                "spec.approver: {:?} submitted this job and cannot approve it (separation of duties)",
                approver.user
            )));
        }
        if !spec_hash.is_empty() && spec_hash != job.request.spec_hash {
            return Err(err(format!(
                "spec.specHash: {spec_hash} does not match the job's current spec {}; the spec changed after it was reviewed",
                job.request.spec_hash
            )));
        }
        if job.approvals.iter().any(|a| a.user == approver.user) {
            return Ok(());
        }
        if let Some(need) = job.decision.as_ref().and_then(|d| d.approvals.as_ref())
            && !need.groups.is_empty()
            && !approver.groups.iter().any(|g| need.groups.contains(g))
        {
            return Err(err(format!(
                "spec.approver: {:?} is in none of the groups this escalation requires ({})",
                approver.user,
                need.groups.join(", ")
            )));
        }
        step.emit(self.keep_records, || {
            let event = LedgerEvent::Approved {
                approver: approver.user.clone(),
                groups: approver.groups.clone(),
                spec_hash: job.request.spec_hash.clone(),
            };
            self.record(now, &job.request, &approver.user, event)
        });
        let held = job.phase == Phase::AwaitingApproval;
        let qk = job.queue_key();
        if let Some(j) = self.jobs.get_mut(&seq) {
            j.approvals.push(approver);
        }
        // Approvals can lift an escalation: re-evaluate it at the next finish.
        self.waitlist.mark_dirty(&qk);
        if held {
            self.decide(now, seq, step, false);
        }
        Ok(())
    }

    pub(super) fn withdraw(&mut self, now: Timestamp, id: &JobId, approver: &str, step: &mut Step) {
        let Some(&seq) = self.ids.get(&key_of(id)) else {
            return; // ended or unknown: nothing counts any more
        };
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let pending = matches!(
            job.phase,
            Phase::Pending | Phase::Queued | Phase::AwaitingApproval
        );
        if !pending || !job.approvals.iter().any(|a| a.user == approver) {
            return;
        }
        step.emit(self.keep_records, || {
            let event = LedgerEvent::ApprovalWithdrawn {
                approver: approver.to_string(),
            };
            self.record(now, &job.request, OPERATOR_ACTOR, event)
        });
        if let Some(j) = self.jobs.get_mut(&seq) {
            j.approvals.retain(|a| a.user != approver);
        }
        self.decide(now, seq, step, false);
    }

    pub(super) fn start(
        &mut self,
        now: Timestamp,
        id: &JobId,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        let job = self
            .ids
            .get(&key_of(id))
            .and_then(|seq| self.jobs.get_mut(seq))
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        if job.phase != Phase::Admitted {
            return Ok(());
        }
        job.phase = Phase::Running;
        job.started_at = Some(now);
        let catalog = &self.base_catalog;
        step.emit(self.keep_records, || {
            LedgerRecord::about_job(
                catalog,
                now,
                &job.request,
                OPERATOR_ACTOR,
                LedgerEvent::Started,
            )
        });
        Ok(())
    }

    /// Ends a job at `now`, metering its run up to `ended_at` (≤ `now`).
    pub(super) fn finish(
        &mut self,
        now: Timestamp,
        ended_at: Timestamp,
        id: &JobId,
        outcome: Outcome,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        let seq = self.live_seq(id)?;
        let phase = self
            .jobs
            .get(&seq)
            .map(|j| j.phase)
            .ok_or_else(|| EngineError::UnknownJob(id.to_string()))?;
        if !phase.holds_capacity() {
            return Ok(());
        }
        let (acc, flop) = self.meter(ended_at, seq);
        let Some(job) = self.jobs.get_mut(&seq) else {
            return Ok(());
        };
        job.phase = match outcome {
            Outcome::Succeeded => Phase::Succeeded,
            Outcome::Failed | Outcome::DeadlineExceeded => Phase::Failed,
        };
        job.admitted = None;
        let catalog = &self.base_catalog;
        step.emit(self.keep_records, || {
            let event = match outcome {
                Outcome::DeadlineExceeded => LedgerEvent::DeadlineExceeded {
                    accelerator_seconds: acc,
                    consumed: flop,
                },
                o => LedgerEvent::Finished {
                    succeeded: o == Outcome::Succeeded,
                    accelerator_seconds: acc,
                    consumed: flop,
                },
            };
            LedgerRecord::about_job(catalog, now, &job.request, OPERATOR_ACTOR, event)
        });
        self.bury(seq);
        Ok(())
    }

    pub(super) fn delete(
        &mut self,
        now: Timestamp,
        id: &JobId,
        step: &mut Step,
    ) -> Result<(), EngineError> {
        let key = key_of(id);
        let Some(job) = self.live(&key).cloned() else {
            if let Some(t) = self.ended.remove(&key) {
                // An ended job's TrainingJob goes: nothing left to meter, but the
                // deletion is on the books like any other.
                step.emit(self.keep_records, || LedgerRecord {
                    job: Some(JobId {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        uid: t.uid,
                    }),
                    ..LedgerRecord::by_operator(
                        now,
                        LedgerEvent::Deleted {
                            accelerator_seconds: AcceleratorSeconds::ZERO,
                            consumed: Flop::ZERO,
                        },
                    )
                });
                return Ok(());
            }
            return Err(EngineError::UnknownJob(id.to_string()));
        };
        let (acc, flop) = if job.phase.holds_capacity() {
            self.meter(now, job.seq)
        } else {
            (AcceleratorSeconds::ZERO, Flop::ZERO)
        };
        self.unqueue(&job);
        self.jobs.remove(&job.seq);
        self.ids.remove(&key);
        step.emit(self.keep_records, || {
            let event = LedgerEvent::Deleted {
                accelerator_seconds: acc,
                consumed: flop,
            };
            self.record(now, &job.request, OPERATOR_ACTOR, event)
        });
        Ok(())
    }

    /// Moves an ended job to a tombstone.
    pub(super) fn bury(&mut self, seq: u64) {
        if let Some(j) = self.jobs.remove(&seq) {
            let JobState {
                request,
                phase,
                decision,
                ..
            } = j;
            let JobRequest { id, spec_hash, .. } = request;
            let key = (id.namespace, id.name);
            self.ids.remove(&key);
            let keep = phase == Phase::Rejected;
            self.ended.insert(
                key,
                Tombstone {
                    uid: id.uid,
                    spec_hash,
                    phase,
                    decision: if keep { decision.map(Box::new) } else { None },
                },
            );
        }
    }

    /// Re-registers a job the cluster already knows (after a restart), in the
    /// phase its status records, without deciding it again or emitting records.
    /// Admitted and running jobs take their capacity back; queued jobs their
    /// place (by priority, then `submitted_at`).
    pub fn restore_job(&mut self, request: JobRequest, restored: RestoredJob) {
        let key = key_of(&request.id);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut job = JobState {
            request,
            phase: restored.phase,
            submitted_at: restored.submitted_at,
            seq,
            decision: restored.decision,
            approvals: restored.approvals,
            admitted: None,
            started_at: restored.started_at,
            throttled_on: Vec::new(),
            throttled_strict: false,
        };
        if job.phase.holds_capacity() {
            let projection = job
                .decision
                .as_ref()
                .and_then(|d| d.projection.clone())
                .or_else(|| project(&self.base_catalog, &job.request, None).ok());
            let rate = projection.as_ref().map_or(FlopPerSecond::ZERO, |p| p.rate);
            let mut lineages = vec![job.request.lineage().to_string()];
            lineages.extend(job.request.base_lineage().map(str::to_string));
            let accelerators = u64::from(job.request.count);
            self.occupy(&job.request.id.namespace, rate, accelerators);
            let basis = self
                .selecting(&job.request)
                .iter()
                .map(|p| p.spec.estimate.basis)
                .next()
                .unwrap_or_default();
            job.admitted = Some(Admission {
                rate,
                accelerators,
                projection,
                basis,
                lineages,
            });
        }
        if let Some(old) = self.ids.get(&key).and_then(|s| self.jobs.get(s)).cloned() {
            self.unqueue(&old);
            if old.phase.holds_capacity() {
                self.release(&old);
            }
            self.jobs.remove(&old.seq);
        }
        let queued = (job.phase == Phase::Queued).then_some(job.queue_key());
        self.ids.insert(key, seq);
        self.jobs.insert(seq, job);
        if let Some(qk) = queued {
            self.waitlist.enqueue(qk);
            self.set_waits(qk, &[], None, Watch::ALWAYS);
        }
    }

    /// Takes a queued job out of the queue and every index.
    pub(super) fn dequeue(&mut self, qk: &QueueKey) {
        let namespace = self
            .jobs
            .get(&qk.2)
            .map(|j| j.request.id.namespace.as_str());
        self.waitlist.dequeue(qk, namespace);
    }

    pub(super) fn unqueue(&mut self, job: &JobState) {
        if job.phase == Phase::Queued {
            self.dequeue(&job.queue_key());
        }
    }
}
