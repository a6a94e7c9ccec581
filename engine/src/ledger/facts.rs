//! The part of a ledger record that totals and reports read, borrowed.
//!
//! Totals ([`super::LedgerTotals`]) and reports (`crate::report`) are
//! computed from [`RecordFacts`], which borrow either a typed
//! [`LedgerRecord`] (the engine, report building) or the verified line
//! itself (the verifier's fast path, which never builds typed entries). One
//! accounting code path serves both, so the verifier recomputes exactly
//! what the report builder computed.

use std::borrow::Cow;

use jiff::Timestamp;

use super::record::{LedgerEvent, LedgerRecord};
use crate::decision::Verdict;
use crate::job::JobId;
use crate::units::{AcceleratorSeconds, Flop};

/// A job's identity, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

impl<'a> JobRef<'a> {
    pub fn of(j: &'a JobId) -> JobRef<'a> {
        JobRef {
            namespace: &j.namespace,
            name: &j.name,
            uid: &j.uid,
        }
    }
}

/// A string read from a ledger line: borrowed from the line unless it
/// holds an escape (then decoded into its own allocation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Text<'_> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

/// A list of strings, owned by a typed record or read from a line.
#[derive(Clone, Copy, Debug)]
pub enum StrList<'a> {
    Owned(&'a [String]),
    Text(&'a [Text<'a>]),
}

impl<'a> StrList<'a> {
    pub fn is_empty(&self) -> bool {
        match self {
            StrList::Owned(v) => v.is_empty(),
            StrList::Text(v) => v.is_empty(),
        }
    }

    pub fn contains(&self, s: &str) -> bool {
        self.iter().any(|x| x == s)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let (owned, text): (&'a [String], &'a [Text<'a>]) = match *self {
            StrList::Owned(v) => (v, &[]),
            StrList::Text(v) => (&[], v),
        };
        owned
            .iter()
            .map(String::as_str)
            .chain(text.iter().map(|c| &*c.0))
    }
}

/// What accounting needs from an event.
#[derive(Clone, Copy, Debug)]
pub enum EventFacts<'a> {
    Decided {
        verdict: Verdict,
        policy: Option<&'a str>,
        tier: Option<&'a str>,
        charged: Flop,
        charged_lineages: StrList<'a>,
        /// `selectedBy`; `None` in entries written before it existed.
        selected_by: Option<StrList<'a>>,
    },
    /// Finished, DeadlineExceeded or Deleted: metered compute.
    Metered {
        consumed: Flop,
        accelerator_seconds: AcceleratorSeconds,
    },
    /// Approved, ApprovalWithdrawn, Started, PolicyChanged: no effect on totals.
    Other,
}

/// What accounting needs from a record.
#[derive(Clone, Copy, Debug)]
pub struct RecordFacts<'a> {
    pub time: Timestamp,
    pub job: Option<JobRef<'a>>,
    pub lineage: Option<&'a str>,
    pub base_lineage: Option<&'a str>,
    /// Accelerator type (catalog key).
    pub accelerator: Option<&'a str>,
    pub event: EventFacts<'a>,
}

impl<'a> RecordFacts<'a> {
    pub fn of(r: &'a LedgerRecord) -> RecordFacts<'a> {
        let event = match &r.event {
            LedgerEvent::Decided {
                verdict,
                policy,
                tier,
                charged,
                charged_lineages,
                selected_by,
                ..
            } => EventFacts::Decided {
                verdict: *verdict,
                policy: policy.as_deref(),
                tier: tier.as_deref(),
                charged: *charged,
                charged_lineages: StrList::Owned(charged_lineages),
                selected_by: selected_by.as_deref().map(StrList::Owned),
            },
            other => match other.metered() {
                Some((accelerator_seconds, consumed)) => EventFacts::Metered {
                    consumed,
                    accelerator_seconds,
                },
                None => EventFacts::Other,
            },
        };
        RecordFacts {
            time: r.time,
            job: r.job.as_ref().map(JobRef::of),
            lineage: r.lineage.as_deref(),
            base_lineage: r.base_lineage.as_deref(),
            accelerator: r.accelerator.as_ref().map(|a| a.kind.as_str()),
            event,
        }
    }

    /// Whether `policy` selected the job of this Decided record: it is in
    /// `selectedBy`, or the record predates that field (then every policy
    /// counts, as before it existed). `false` for other events.
    pub fn selected_by(&self, policy: &str) -> bool {
        match self.event {
            EventFacts::Decided {
                selected_by: Some(list),
                ..
            } => list.contains(policy),
            EventFacts::Decided {
                selected_by: None, ..
            } => true,
            _ => false,
        }
    }
}
