//! A chain of periodic reports over one ledger, as the operator writes one
//! report per interval: `simulate --out DIR --report-every 1d` writes such a
//! chain so that an audit has a year of daily books to check, and tests
//! build clusters with key rotations and missing reports from it.
//!
//! Report `k` covers the period `[start + k·every, start + (k+1)·every]`
//! and the ledger prefix of the entries up to its end; a period without
//! entries gives a report with no entries (a heartbeat: silence is
//! distinguishable from a quiet cluster). Each report is signed before the
//! next is built, since the next links its hash. Every report is built
//! from genesis by [`build_report`], so the cost is reports × entries.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use jiff::{SignedDuration, Timestamp};

use super::{Period, ReportError, SignedReport, build_report};
use crate::ledger::LedgerEntry;
use crate::policy::Policy;

/// Why a chain could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainBuildError {
    #[error("the report interval must be positive")]
    ZeroInterval,
    #[error(
        "entry seq {seq} at {time} is earlier than the chain's start {start}; start the chain at or before the first entry"
    )]
    BeforeStart {
        seq: u64,
        time: Timestamp,
        start: Timestamp,
    },
    #[error(
        "entry seq {seq} at {time} is earlier than entry seq {previous_seq} at {previous}; periodic reports need a ledger in time order"
    )]
    OutOfOrder {
        seq: u64,
        time: Timestamp,
        previous_seq: u64,
        previous: Timestamp,
    },
    #[error("the chain would need more than {0} reports; choose a longer interval")]
    TooMany(usize),
    #[error("time out of range after {0}")]
    Overflow(Timestamp),
    #[error("report {index}: {source}")]
    Report { index: usize, source: ReportError },
}

/// At most this many reports (ten years of hourly reports).
pub const MAX_CHAIN_REPORTS: usize = 87_600;

/// Builds and signs reports every `every` from `start` until one ends at
/// or after `until` and the last entry. `key_at(period_end)` gives the key
/// each report is signed with (a rotation changes it from some time on).
pub fn sign_report_chain<'k>(
    entries: &[LedgerEntry],
    policies: &[Policy],
    start: Timestamp,
    every: Duration,
    until: Timestamp,
    mut key_at: impl FnMut(Timestamp) -> &'k SigningKey,
) -> Result<Vec<SignedReport>, ChainBuildError> {
    if every.is_zero() {
        return Err(ChainBuildError::ZeroInterval);
    }
    let step = SignedDuration::try_from(every).map_err(|_| ChainBuildError::Overflow(start))?;
    let mut previous_time: Option<(u64, Timestamp)> = None;
    for e in entries {
        if e.record.time < start {
            return Err(ChainBuildError::BeforeStart {
                seq: e.seq,
                time: e.record.time,
                start,
            });
        }
        if let Some((previous_seq, previous)) = previous_time
            && e.record.time < previous
        {
            return Err(ChainBuildError::OutOfOrder {
                seq: e.seq,
                time: e.record.time,
                previous_seq,
                previous,
            });
        }
        previous_time = Some((e.seq, e.record.time));
    }
    let last = entries.last().map_or(start, |e| e.record.time).max(until);
    let mut out: Vec<SignedReport> = Vec::new();
    let mut from = start;
    let mut covered = 0usize;
    loop {
        if out.len() >= MAX_CHAIN_REPORTS {
            return Err(ChainBuildError::TooMany(MAX_CHAIN_REPORTS));
        }
        let to = from
            .checked_add(step)
            .map_err(|_| ChainBuildError::Overflow(from))?;
        while covered < entries.len() && entries[covered].record.time <= to {
            covered += 1;
        }
        let index = out.len();
        let body = build_report(
            &entries[..covered],
            policies,
            Period { from, to },
            out.last(),
        )
        .map_err(|source| ChainBuildError::Report { index, source })?;
        let signed = body.sign(key_at(to)).map_err(|e| ChainBuildError::Report {
            index,
            source: ReportError::Canonical(e),
        })?;
        out.push(signed);
        if to >= last {
            return Ok(out);
        }
        from = to;
    }
}
