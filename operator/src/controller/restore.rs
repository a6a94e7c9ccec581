//! Rebuilding the books when a replica becomes leader: the ledger (lineage
//! totals, budget windows, crossings) is replayed, then every TrainingJob the
//! ledger has decided is re-registered in the phase the ledger says it is in
//! — the ledger, not the status, is the truth, because entries are written
//! before statuses and Jobs. Queued jobs keep their place (their first
//! decision time is their submission time); admitted and running jobs take
//! their capacity back; nothing is decided twice and no entry is repeated.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use komptroller_engine::decision::{Decision, Verdict};
use komptroller_engine::engine::{Engine, Event, Phase, RestoredJob, content_hash};
use komptroller_engine::job::{JobId, JobRequest, Principal};
use komptroller_engine::ledger::{LedgerEntry, LedgerEvent};
use komptroller_engine::policy::Policy;

use super::books::Books;
use crate::error::Result;

/// What the ledger says about one job incarnation.
#[derive(Clone, Debug, Default)]
pub struct JobHistory {
    pub first_decided: Option<Timestamp>,
    pub decision: Option<Decision>,
    pub approvals: Vec<Principal>,
    pub started_at: Option<Timestamp>,
    pub ended: Option<Phase>,
    pub deleted: bool,
}

/// Folds the ledger into per-job histories (keyed by namespace, name and uid).
pub fn histories(entries: &[LedgerEntry]) -> HashMap<JobId, JobHistory> {
    let mut out: HashMap<JobId, JobHistory> = HashMap::new();
    for e in entries {
        let Some(job) = &e.record.job else {
            continue;
        };
        let h = out.entry(job.clone()).or_default();
        match &e.record.event {
            LedgerEvent::Decided {
                verdict,
                enforced_verdict,
                mode,
                policy,
                rule,
                tier,
                reason,
                projection,
                governing,
                ..
            } => {
                h.first_decided.get_or_insert(e.record.time);
                h.decision = Some(Decision {
                    verdict: *verdict,
                    enforced_verdict: *enforced_verdict,
                    mode: *mode,
                    policy: policy.clone(),
                    rule: rule.clone(),
                    reason: reason.clone(),
                    warnings: Vec::new(),
                    projection: projection.clone(),
                    governing: *governing,
                    lineage_total: Default::default(),
                    tier: tier.clone(),
                    approvals: None,
                    queue_position: None,
                });
            }
            LedgerEvent::Approved {
                approver, groups, ..
            } => h.approvals.push(Principal {
                user: approver.clone(),
                groups: groups.clone(),
            }),
            LedgerEvent::ApprovalWithdrawn { approver } => {
                h.approvals.retain(|p| p.user != *approver)
            }
            LedgerEvent::Started => h.started_at = Some(e.record.time),
            LedgerEvent::Finished { succeeded, .. } => {
                h.ended = Some(if *succeeded {
                    Phase::Succeeded
                } else {
                    Phase::Failed
                })
            }
            LedgerEvent::DeadlineExceeded { .. } => h.ended = Some(Phase::Failed),
            LedgerEvent::Deleted { .. } => h.deleted = true,
            LedgerEvent::PolicyChanged { .. } => {}
        }
    }
    out
}

impl JobHistory {
    /// The phase the ledger puts the job in, if it was ever decided.
    pub fn phase(&self) -> Option<Phase> {
        if self.deleted {
            return None;
        }
        if let Some(p) = self.ended {
            return Some(p);
        }
        let d = self.decision.as_ref()?;
        Some(match d.verdict {
            Verdict::Admit if self.started_at.is_some() => Phase::Running,
            Verdict::Admit => Phase::Admitted,
            Verdict::Throttle => Phase::Queued,
            Verdict::Escalate => Phase::AwaitingApproval,
            Verdict::Reject => Phase::Rejected,
        })
    }
}

/// The content hash each policy had in its last PolicyChanged entry.
pub fn ledger_policy_hashes(entries: &[LedgerEntry]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in entries {
        if let LedgerEvent::PolicyChanged {
            policy,
            content_hash,
        } = &e.record.event
        {
            if content_hash.is_empty() {
                out.remove(policy);
            } else {
                out.insert(policy.clone(), content_hash.clone());
            }
        }
    }
    out
}

/// Builds the books from the ledger, the current policies and the
/// TrainingJobs (as engine requests). Returns the books and the entries
/// produced by what changed while nobody led (policies edited, queued jobs
/// that now fit), which the caller must persist.
pub fn rebuild(
    engine: Engine,
    entries: Vec<LedgerEntry>,
    policies: Vec<Policy>,
    jobs: Vec<JobRequest>,
    now: Timestamp,
) -> Result<(Books, Vec<LedgerEntry>)> {
    let known = ledger_policy_hashes(&entries);
    let hist = histories(&entries);
    let mut books = Books::new(engine, &entries);
    let mut fresh = Vec::new();
    // 1. Policies first (the replay finds crossings against their tiers). A
    //    policy unchanged since its last ledger entry is loaded silently.
    for p in policies {
        let hash = content_hash(&p.spec);
        let name = p.name.clone();
        let t = books.at(now);
        match books.engine.apply(t, Event::UpsertPolicy(p)) {
            Ok(step) => {
                if known.get(&name) != Some(&hash) {
                    fresh.extend(books.seal(step)?.entries);
                }
                books.policy_hashes.insert(name, hash);
            }
            Err(e) => {
                tracing::warn!(policy = %name, error = %e, "invalid ComputePolicy not loaded")
            }
        }
    }
    for name in known.keys() {
        if !books.policy_hashes.contains_key(name) {
            // Deleted while nobody led.
            let t = books.at(now);
            let step = books
                .engine
                .apply(t, Event::RemovePolicy { name: name.clone() })?;
            let mut step = step;
            if step.records.is_empty() {
                // The engine never had it: record the removal ourselves.
                step.records.push(komptroller_engine::ledger::LedgerRecord {
                    time: t,
                    job: None,
                    lineage: None,
                    base_lineage: None,
                    accelerator: None,
                    actor: komptroller_engine::engine::OPERATOR_ACTOR.into(),
                    event: LedgerEvent::PolicyChanged {
                        policy: name.clone(),
                        content_hash: String::new(),
                    },
                });
            }
            fresh.extend(books.seal(step)?.entries);
        }
    }
    // 2. Totals, windows and crossings from the ledger.
    books
        .engine
        .replay_ledger(entries.iter().chain(fresh.iter()).map(|e| &e.record));
    // 3. The jobs the ledger decided, in the phase it records.
    let mut restored: Vec<(Timestamp, JobRequest, RestoredJob)> = Vec::new();
    for req in jobs {
        let Some(h) = hist.get(&req.id) else {
            continue;
        };
        let Some(phase) = h.phase() else {
            continue;
        };
        let submitted_at = h.first_decided.unwrap_or(now);
        restored.push((
            submitted_at,
            req,
            RestoredJob {
                phase,
                submitted_at,
                decision: h.decision.clone(),
                approvals: h.approvals.clone(),
                started_at: h.started_at,
            },
        ));
    }
    restored.sort_by_key(|(t, r, _)| (*t, r.id.clone()));
    for (_, req, r) in restored {
        books.engine.restore_job(req, r);
    }
    // 4. What fits now (a window freed, a job finished while nobody led).
    let t = books.at(now);
    let step = books.engine.resume(t);
    fresh.extend(books.seal(step)?.entries);
    Ok((books, fresh))
}
