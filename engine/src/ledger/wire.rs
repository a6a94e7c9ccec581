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

use super::digest::Sha256Digest;
use super::entry::LedgerEntry;
use super::record::{AcceleratorUse, LedgerEvent, LedgerRecord};
use crate::catalog::Precision;
use crate::decision::Verdict;
use crate::job::JobId;
use crate::policy::Mode;
use crate::projection::Projection;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EntryIn {
    seq: u64,
    prev_hash: Sha256Digest,
    hash: Sha256Digest,
    time: Timestamp,
    #[serde(default)]
    job: Option<JobIdIn>,
    #[serde(default)]
    lineage: Option<String>,
    #[serde(default)]
    base_lineage: Option<String>,
    #[serde(default)]
    accelerator: Option<AcceleratorIn>,
    actor: String,
    event: EventIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobIdIn {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceleratorIn {
    #[serde(rename = "type")]
    kind: String,
    count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProjectionIn {
    accelerator: String,
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
    Started,
    Finished,
    DeadlineExceeded,
    Deleted,
    PolicyChanged,
}

/// Every field of every event kind, flat; which ones may appear depends on `kind`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventIn {
    kind: EventKind,
    verdict: Option<Verdict>,
    enforced_verdict: Option<Verdict>,
    mode: Option<Mode>,
    policy: Option<String>,
    rule: Option<String>,
    tier: Option<String>,
    reason: Option<String>,
    projection: Option<ProjectionIn>,
    governing: Option<f64>,
    charged: Option<f64>,
    charged_lineages: Option<Vec<String>>,
    approver: Option<String>,
    groups: Option<Vec<String>>,
    spec_hash: Option<String>,
    succeeded: Option<bool>,
    accelerator_seconds: Option<f64>,
    consumed: Option<f64>,
    content_hash: Option<String>,
}

fn need<T, E: serde::de::Error>(v: Option<T>, kind: &str, field: &str) -> Result<T, E> {
    v.ok_or_else(|| E::custom(format!("{kind} event: missing field `{field}`")))
}

impl EventIn {
    fn into_event<E: serde::de::Error>(self) -> Result<LedgerEvent, E> {
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
            approver,
            groups,
            spec_hash,
            succeeded,
            accelerator_seconds,
            consumed,
            content_hash,
        } = self;
        // Fields present that this kind does not have are refused, as the derived decoder would.
        let present: [(&str, bool); 18] = [
            ("verdict", verdict.is_some()),
            ("enforcedVerdict", enforced_verdict.is_some()),
            ("mode", mode.is_some()),
            ("policy", policy.is_some()),
            ("rule", rule.is_some()),
            ("tier", tier.is_some()),
            ("reason", reason.is_some()),
            ("projection", projection.is_some()),
            ("governing", governing.is_some()),
            ("charged", charged.is_some()),
            ("chargedLineages", charged_lineages.is_some()),
            ("approver", approver.is_some()),
            ("groups", groups.is_some()),
            ("specHash", spec_hash.is_some()),
            ("succeeded", succeeded.is_some()),
            ("acceleratorSeconds", accelerator_seconds.is_some()),
            ("consumed", consumed.is_some()),
            ("contentHash", content_hash.is_some()),
        ];
        let allowed: &[&str] = match kind {
            EventKind::Decided => &[
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
            ],
            EventKind::Approved => &["approver", "groups", "specHash"],
            EventKind::Started => &[],
            EventKind::Finished => &["succeeded", "acceleratorSeconds", "consumed"],
            EventKind::DeadlineExceeded | EventKind::Deleted => &["acceleratorSeconds", "consumed"],
            EventKind::PolicyChanged => &["policy", "contentHash"],
        };
        let name = match kind {
            EventKind::Decided => "Decided",
            EventKind::Approved => "Approved",
            EventKind::Started => "Started",
            EventKind::Finished => "Finished",
            EventKind::DeadlineExceeded => "DeadlineExceeded",
            EventKind::Deleted => "Deleted",
            EventKind::PolicyChanged => "PolicyChanged",
        };
        if let Some((field, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
            return Err(E::custom(format!("{name} event: unknown field `{field}`")));
        }
        Ok(match kind {
            EventKind::Decided => LedgerEvent::Decided {
                verdict: need(verdict, name, "verdict")?,
                enforced_verdict: need(enforced_verdict, name, "enforcedVerdict")?,
                mode: need(mode, name, "mode")?,
                policy,
                rule,
                tier,
                reason: need(reason, name, "reason")?,
                projection: projection.map(ProjectionIn::into_projection),
                governing: Flop(need(governing, name, "governing")?),
                charged: Flop(need(charged, name, "charged")?),
                charged_lineages: charged_lineages.unwrap_or_default(),
            },
            EventKind::Approved => LedgerEvent::Approved {
                approver: need(approver, name, "approver")?,
                groups: groups.unwrap_or_default(),
                spec_hash: need(spec_hash, name, "specHash")?,
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
                policy: need(policy, name, "policy")?,
                content_hash: need(content_hash, name, "contentHash")?,
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
        LedgerEvent::Started => EventKind::Started,
        LedgerEvent::Finished { .. } => EventKind::Finished,
        LedgerEvent::DeadlineExceeded { .. } => EventKind::DeadlineExceeded,
        LedgerEvent::Deleted { .. } => EventKind::Deleted,
        LedgerEvent::PolicyChanged { .. } => EventKind::PolicyChanged,
    }
}

impl ProjectionIn {
    fn into_projection(self) -> Projection {
        Projection {
            accelerator: self.accelerator,
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

impl EntryIn {
    pub(super) fn into_entry<E: serde::de::Error>(self) -> Result<LedgerEntry, E> {
        Ok(LedgerEntry {
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash: self.hash,
            record: LedgerRecord {
                time: self.time,
                job: self.job.map(|j| JobId {
                    namespace: j.namespace,
                    name: j.name,
                    uid: j.uid,
                }),
                lineage: self.lineage,
                base_lineage: self.base_lineage,
                accelerator: self.accelerator.map(|a| AcceleratorUse {
                    kind: a.kind,
                    count: a.count,
                }),
                actor: self.actor,
                event: self.event.into_event()?,
            },
        })
    }
}

/// Decodes a ledger entry from JSON.
pub(super) fn entry_from_slice(bytes: &[u8]) -> Result<LedgerEntry, serde_json::Error> {
    let e: EntryIn = serde_json::from_slice(bytes)?;
    e.into_entry::<serde_json::Error>()
        .map_err(|e| serde_json::Error::custom(e.to_string()))
}
