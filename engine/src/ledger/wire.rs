//! Fast, strict deserialization of ledger entries.
//!
//! serde's derive for the internally tagged `LedgerEvent` buffers every
//! event into an intermediate tree before decoding it a second time, which
//! made reading a ledger several times slower than hashing it. These
//! mirror types decode in one pass and refuse unknown fields at every
//! level, so a verified line holds nothing the typed entry does not.
//! Each conversion builds the real type with a struct literal, so a field
//! added to or removed from `LedgerRecord`, `LedgerEvent`, `JobId`,
//! `AcceleratorUse` or `Projection` fails to compile here until mirrored.
//! Quantities are read as plain JSON numbers (the ledger always writes
//! them so), skipping the units' number-or-string leniency meant for
//! hand-written policy files.

use jiff::Timestamp;
use serde::Deserialize;
use serde::de::Error as _;

use super::entry::LedgerEntry;
use super::facts::{EventFacts, JobRef, RecordFacts, StrList, Text};
use super::record::{AcceleratorUse, LedgerEvent, LedgerRecord};
use crate::catalog::Precision;
use crate::decision::Verdict;
use crate::digest::Sha256Digest;
use crate::job::JobId;
use crate::policy::Mode;
use crate::projection::Projection;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds};

/// A ledger entry decoded without copying its strings: every string
/// borrows the line unless it holds an escape. The same decoder serves the
/// verifier's fast path (borrowed) and [`LedgerEntry`]'s `Deserialize`
/// (converted to owned), so both accept and refuse exactly the same input.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EntryIn<'a> {
    pub(super) seq: u64,
    pub(super) prev_hash: Sha256Digest,
    pub(super) hash: Sha256Digest,
    time: Timestamp,
    #[serde(default, borrow)]
    job: Option<JobIdIn<'a>>,
    #[serde(default, borrow)]
    lineage: Option<Text<'a>>,
    #[serde(default, borrow)]
    base_lineage: Option<Text<'a>>,
    #[serde(default, borrow)]
    accelerator: Option<AcceleratorIn<'a>>,
    #[serde(borrow)]
    actor: Text<'a>,
    #[serde(borrow)]
    event: EventIn<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobIdIn<'a> {
    #[serde(borrow)]
    namespace: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(default, borrow)]
    uid: Text<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceleratorIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProjectionIn<'a> {
    #[serde(borrow)]
    accelerator: Text<'a>,
    count: u32,
    precision: Precision,
    rate: f64,
    upper_bound: f64,
    utilization: f64,
    expected: f64,
    #[serde(default)]
    opcount: Option<f64>,
    ceiling_precision: Precision,
    adversarial_ceiling: f64,
    max_duration: f64,
    accelerator_seconds: f64,
}

#[derive(Deserialize, Clone, Copy)]
enum EventKind {
    Decided,
    Approved,
    ApprovalWithdrawn,
    Started,
    Finished,
    DeadlineExceeded,
    Deleted,
    PolicyChanged,
}

/// Every field of every event kind, flat; which ones may appear depends on `kind`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventIn<'a> {
    kind: EventKind,
    verdict: Option<Verdict>,
    enforced_verdict: Option<Verdict>,
    mode: Option<Mode>,
    #[serde(borrow)]
    policy: Option<Text<'a>>,
    #[serde(borrow)]
    rule: Option<Text<'a>>,
    #[serde(borrow)]
    tier: Option<Text<'a>>,
    #[serde(borrow)]
    reason: Option<Text<'a>>,
    #[serde(borrow)]
    projection: Option<ProjectionIn<'a>>,
    governing: Option<f64>,
    charged: Option<f64>,
    #[serde(borrow)]
    charged_lineages: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    selected_by: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    approver: Option<Text<'a>>,
    #[serde(borrow)]
    groups: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    spec_hash: Option<Text<'a>>,
    succeeded: Option<bool>,
    accelerator_seconds: Option<f64>,
    consumed: Option<f64>,
    #[serde(borrow)]
    content_hash: Option<Text<'a>>,
}

fn need<T, E: serde::de::Error>(v: Option<T>, kind: &str, field: &str) -> Result<T, E> {
    v.ok_or_else(|| E::custom(format!("{kind} event: missing field `{field}`")))
}

fn owned(s: Text<'_>) -> String {
    s.into_owned()
}

fn owned_list(v: Option<Vec<Text<'_>>>) -> Vec<String> {
    v.map_or_else(Vec::new, |v| v.into_iter().map(owned).collect())
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            EventKind::Decided => "Decided",
            EventKind::Approved => "Approved",
            EventKind::ApprovalWithdrawn => "ApprovalWithdrawn",
            EventKind::Started => "Started",
            EventKind::Finished => "Finished",
            EventKind::DeadlineExceeded => "DeadlineExceeded",
            EventKind::Deleted => "Deleted",
            EventKind::PolicyChanged => "PolicyChanged",
        }
    }
}

impl<'a> EventIn<'a> {
    /// Refuses fields this kind does not have (as the derived decoder of
    /// `LedgerEvent` would) and requires the ones it must have.
    fn check<E: serde::de::Error>(&self) -> Result<(), E> {
        let present: [(&str, bool); 19] = [
            ("verdict", self.verdict.is_some()),
            ("enforcedVerdict", self.enforced_verdict.is_some()),
            ("mode", self.mode.is_some()),
            ("policy", self.policy.is_some()),
            ("rule", self.rule.is_some()),
            ("tier", self.tier.is_some()),
            ("reason", self.reason.is_some()),
            ("projection", self.projection.is_some()),
            ("governing", self.governing.is_some()),
            ("charged", self.charged.is_some()),
            ("chargedLineages", self.charged_lineages.is_some()),
            ("selectedBy", self.selected_by.is_some()),
            ("approver", self.approver.is_some()),
            ("groups", self.groups.is_some()),
            ("specHash", self.spec_hash.is_some()),
            ("succeeded", self.succeeded.is_some()),
            ("acceleratorSeconds", self.accelerator_seconds.is_some()),
            ("consumed", self.consumed.is_some()),
            ("contentHash", self.content_hash.is_some()),
        ];
        let (allowed, required): (&[&str], &[&str]) = match self.kind {
            EventKind::Decided => (
                &[
                    "verdict",
                    "enforcedVerdict",
                    "mode",
                    "policy",
                    "rule",
                    "tier",
                    "reason",
                    "projection",
                    "governing",
                    "charged",
                    "chargedLineages",
                    "selectedBy",
                ],
                &[
                    "verdict",
                    "enforcedVerdict",
                    "mode",
                    "reason",
                    "governing",
                    "charged",
                ],
            ),
            EventKind::Approved => (
                &["approver", "groups", "specHash"],
                &["approver", "specHash"],
            ),
            EventKind::ApprovalWithdrawn => (&["approver"], &["approver"]),
            EventKind::Started => (&[], &[]),
            EventKind::Finished => (
                &["succeeded", "acceleratorSeconds", "consumed"],
                &["succeeded", "acceleratorSeconds", "consumed"],
            ),
            EventKind::DeadlineExceeded | EventKind::Deleted => (
                &["acceleratorSeconds", "consumed"],
                &["acceleratorSeconds", "consumed"],
            ),
            EventKind::PolicyChanged => (&["policy", "contentHash"], &["policy", "contentHash"]),
        };
        let name = self.kind.name();
        if let Some((field, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
            return Err(E::custom(format!("{name} event: unknown field `{field}`")));
        }
        if let Some(field) = required
            .iter()
            .find(|f| present.iter().any(|(g, p)| g == *f && !p))
        {
            return Err(E::custom(format!("{name} event: missing field `{field}`")));
        }
        Ok(())
    }

    fn into_event<E: serde::de::Error>(self) -> Result<LedgerEvent, E> {
        self.check::<E>()?;
        let EventIn {
            kind,
            verdict,
            enforced_verdict,
            mode,
            policy,
            rule,
            tier,
            reason,
            projection,
            governing,
            charged,
            charged_lineages,
            selected_by,
            approver,
            groups,
            spec_hash,
            succeeded,
            accelerator_seconds,
            consumed,
            content_hash,
        } = self;
        let name = kind.name();
        Ok(match kind {
            EventKind::Decided => LedgerEvent::Decided {
                verdict: need(verdict, name, "verdict")?,
                enforced_verdict: need(enforced_verdict, name, "enforcedVerdict")?,
                mode: need(mode, name, "mode")?,
                policy: policy.map(owned),
                rule: rule.map(owned),
                tier: tier.map(owned),
                reason: owned(need(reason, name, "reason")?),
                projection: projection.map(ProjectionIn::into_projection),
                governing: Flop(need(governing, name, "governing")?),
                charged: Flop(need(charged, name, "charged")?),
                charged_lineages: owned_list(charged_lineages),
                selected_by: selected_by.map(|v| v.into_iter().map(owned).collect()),
            },
            EventKind::Approved => LedgerEvent::Approved {
                approver: owned(need(approver, name, "approver")?),
                groups: owned_list(groups),
                spec_hash: owned(need(spec_hash, name, "specHash")?),
            },
            EventKind::ApprovalWithdrawn => LedgerEvent::ApprovalWithdrawn {
                approver: owned(need(approver, name, "approver")?),
            },
            EventKind::Started => LedgerEvent::Started,
            EventKind::Finished => LedgerEvent::Finished {
                succeeded: need(succeeded, name, "succeeded")?,
                accelerator_seconds: AcceleratorSeconds(need(
                    accelerator_seconds,
                    name,
                    "acceleratorSeconds",
                )?),
                consumed: Flop(need(consumed, name, "consumed")?),
            },
            EventKind::DeadlineExceeded => LedgerEvent::DeadlineExceeded {
                accelerator_seconds: AcceleratorSeconds(need(
                    accelerator_seconds,
                    name,
                    "acceleratorSeconds",
                )?),
                consumed: Flop(need(consumed, name, "consumed")?),
            },
            EventKind::Deleted => LedgerEvent::Deleted {
                accelerator_seconds: AcceleratorSeconds(need(
                    accelerator_seconds,
                    name,
                    "acceleratorSeconds",
                )?),
                consumed: Flop(need(consumed, name, "consumed")?),
            },
            EventKind::PolicyChanged => LedgerEvent::PolicyChanged {
                policy: owned(need(policy, name, "policy")?),
                content_hash: owned(need(content_hash, name, "contentHash")?),
            },
        })
    }
}

/// Compile-time guard: a new `LedgerEvent` variant must be mirrored in `EventKind`.
#[allow(dead_code)]
fn kind_of(e: &LedgerEvent) -> EventKind {
    match e {
        LedgerEvent::Decided { .. } => EventKind::Decided,
        LedgerEvent::Approved { .. } => EventKind::Approved,
        LedgerEvent::ApprovalWithdrawn { .. } => EventKind::ApprovalWithdrawn,
        LedgerEvent::Started => EventKind::Started,
        LedgerEvent::Finished { .. } => EventKind::Finished,
        LedgerEvent::DeadlineExceeded { .. } => EventKind::DeadlineExceeded,
        LedgerEvent::Deleted { .. } => EventKind::Deleted,
        LedgerEvent::PolicyChanged { .. } => EventKind::PolicyChanged,
    }
}

impl ProjectionIn<'_> {
    fn into_projection(self) -> Projection {
        Projection {
            accelerator: owned(self.accelerator),
            count: self.count,
            precision: self.precision,
            rate: FlopPerSecond(self.rate),
            upper_bound: Flop(self.upper_bound),
            utilization: self.utilization,
            expected: Flop(self.expected),
            opcount: self.opcount.map(Flop),
            ceiling_precision: self.ceiling_precision,
            adversarial_ceiling: Flop(self.adversarial_ceiling),
            max_duration: Seconds(self.max_duration),
            accelerator_seconds: AcceleratorSeconds(self.accelerator_seconds),
        }
    }
}

impl<'a> EntryIn<'a> {
    pub(super) fn into_entry<E: serde::de::Error>(self) -> Result<LedgerEntry, E> {
        Ok(LedgerEntry {
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash: self.hash,
            record: LedgerRecord {
                time: self.time,
                job: self.job.map(|j| JobId {
                    namespace: owned(j.namespace),
                    name: owned(j.name),
                    uid: owned(j.uid),
                }),
                lineage: self.lineage.map(owned),
                base_lineage: self.base_lineage.map(owned),
                accelerator: self.accelerator.map(|a| AcceleratorUse {
                    kind: owned(a.kind),
                    count: a.count,
                }),
                actor: owned(self.actor),
                event: self.event.into_event()?,
            },
        })
    }

    /// Keeps only what totals and reports need (call after [`EntryIn::checked`]),
    /// so a chunk of checked lines stays small.
    pub(super) fn into_facts(self, leaf: Sha256Digest) -> LineFacts<'a> {
        let ev = self.event;
        let event = match ev.kind {
            EventKind::Decided => LineEvent::Decided {
                verdict: ev.verdict.unwrap_or(Verdict::Reject),
                policy: ev.policy,
                tier: ev.tier,
                charged: Flop(ev.charged.unwrap_or(0.0)),
                charged_lineages: ev.charged_lineages.unwrap_or_default(),
                selected_by: ev.selected_by,
            },
            EventKind::Finished | EventKind::DeadlineExceeded | EventKind::Deleted => {
                LineEvent::Metered {
                    consumed: Flop(ev.consumed.unwrap_or(0.0)),
                    accelerator_seconds: AcceleratorSeconds(ev.accelerator_seconds.unwrap_or(0.0)),
                }
            }
            EventKind::Approved
            | EventKind::ApprovalWithdrawn
            | EventKind::Started
            | EventKind::PolicyChanged => LineEvent::Other,
        };
        LineFacts {
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash: self.hash,
            leaf,
            time: self.time,
            job: self.job.map(|j| [j.namespace, j.name, j.uid]),
            lineage: self.lineage,
            base_lineage: self.base_lineage,
            accelerator: self.accelerator.map(|a| a.kind),
            event,
        }
    }

    /// Decodes `line` and checks the event's fields for its kind, borrowing
    /// every string that has no escape. `None` when anything is wrong; the
    /// caller then decodes the line fully to name the problem.
    ///
    /// One pass: the line is read once, checking its RFC 8785 canonical
    /// form while decoding ([`super::jcs::from_canonical_slice`]).
    pub(super) fn checked(line: &'a [u8]) -> Option<EntryIn<'a>> {
        let e: EntryIn<'a> = super::jcs::from_canonical_slice(line).ok()?;
        e.event.check::<serde_json::Error>().ok()?;
        Some(e)
    }
}

/// Decodes a ledger entry from JSON.
pub(super) fn entry_from_slice(bytes: &[u8]) -> Result<LedgerEntry, serde_json::Error> {
    let e: EntryIn<'_> = serde_json::from_slice(bytes)?;
    e.into_entry::<serde_json::Error>()
        .map_err(|e| serde_json::Error::custom(e.to_string()))
}

/// A checked line, reduced to what totals and reports read.
pub(super) struct LineFacts<'a> {
    pub(super) seq: u64,
    pub(super) prev_hash: Sha256Digest,
    pub(super) hash: Sha256Digest,
    /// The Merkle leaf hash of `hash`.
    pub(super) leaf: Sha256Digest,
    time: Timestamp,
    /// namespace, name, uid.
    job: Option<[Text<'a>; 3]>,
    lineage: Option<Text<'a>>,
    base_lineage: Option<Text<'a>>,
    accelerator: Option<Text<'a>>,
    event: LineEvent<'a>,
}

enum LineEvent<'a> {
    Decided {
        verdict: Verdict,
        policy: Option<Text<'a>>,
        tier: Option<Text<'a>>,
        charged: Flop,
        charged_lineages: Vec<Text<'a>>,
        selected_by: Option<Vec<Text<'a>>>,
    },
    Metered {
        consumed: Flop,
        accelerator_seconds: AcceleratorSeconds,
    },
    Other,
}

impl LineFacts<'_> {
    pub(super) fn facts(&self) -> RecordFacts<'_> {
        RecordFacts {
            time: self.time,
            job: self.job.as_ref().map(|[namespace, name, uid]| JobRef {
                namespace,
                name,
                uid,
            }),
            lineage: self.lineage.as_deref(),
            base_lineage: self.base_lineage.as_deref(),
            accelerator: self.accelerator.as_deref(),
            event: match &self.event {
                LineEvent::Decided {
                    verdict,
                    policy,
                    tier,
                    charged,
                    charged_lineages,
                    selected_by,
                } => EventFacts::Decided {
                    verdict: *verdict,
                    policy: policy.as_deref(),
                    tier: tier.as_deref(),
                    charged: *charged,
                    charged_lineages: StrList::Text(charged_lineages),
                    selected_by: selected_by.as_deref().map(StrList::Text),
                },
                LineEvent::Metered {
                    consumed,
                    accelerator_seconds,
                } => EventFacts::Metered {
                    consumed: *consumed,
                    accelerator_seconds: *accelerator_seconds,
                },
                LineEvent::Other => EventFacts::Other,
            },
        }
    }
}

impl<'de> Deserialize<'de> for LedgerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EntryIn::deserialize(d)?.into_entry()
    }
}
