//! Sequencing and chaining: a [`LedgerRecord`] becomes a [`LedgerEntry`]
//! with a sequence number, the previous entry's hash and its own hash.
//!
//! The format (see `docs/ledger.md`):
//! - `seq` starts at [`FIRST_SEQ`] (0) and increases by one, so an entry's
//!   `seq` is also its leaf index in the Merkle tree.
//! - `prevHash` of the first entry is [`GENESIS_PREV_HASH`] (64 zeros).
//! - `hash` = SHA-256 over the RFC 8785 canonical JSON of the entry without
//!   its `hash` member (that is: `seq`, `prevHash` and every field of the
//!   record).
//! - On disk (JSON Lines) each line is the canonical JSON of the whole entry,
//!   `hash` included, followed by `\n`. Because the line is canonical, the
//!   hashed bytes are the line with its `"hash":"…",` member cut out, which
//!   is what the verifier checks, byte for byte.

use std::io::{self, Write};

use jiff::Timestamp;
use serde::Serialize;

use super::canonical::{CanonicalError, canonical_json_into};
use super::record::{AcceleratorUse, LedgerEvent, LedgerRecord};
use crate::digest::Sha256Digest;
use crate::job::JobId;

/// The sequence number of the first entry.
pub const FIRST_SEQ: u64 = 0;

/// The `prevHash` of the first entry: 32 zero bytes.
pub const GENESIS_PREV_HASH: Sha256Digest = Sha256Digest::ZERO;

/// A sequenced, hash-chained ledger record.
///
/// JSON form: the record's fields (`time`, `job`, `lineage`, `baseLineage`,
/// `accelerator`, `actor`, `event`) beside `seq`, `prevHash` and `hash`, in
/// one flat object. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerEntry {
    /// Position in the ledger, from [`FIRST_SEQ`]; also the Merkle leaf index.
    pub seq: u64,
    /// `hash` of the previous entry, or [`GENESIS_PREV_HASH`] for the first.
    pub prev_hash: Sha256Digest,
    /// SHA-256 of the canonical JSON of this entry without `hash`.
    pub hash: Sha256Digest,
    pub record: LedgerRecord,
}

/// The wire form, fields declared in canonical (sorted) order so the
/// canonical serializer never has to move bytes. `hash: None` is the hashed body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    accelerator: Option<&'a AcceleratorUse>,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_lineage: Option<&'a str>,
    event: &'a LedgerEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'a Sha256Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lineage: Option<&'a str>,
    prev_hash: &'a Sha256Digest,
    seq: u64,
    time: &'a Timestamp,
}

impl<'a> EntryOut<'a> {
    fn new(
        seq: u64,
        prev_hash: &'a Sha256Digest,
        hash: Option<&'a Sha256Digest>,
        r: &'a LedgerRecord,
    ) -> Self {
        // Destructured so that a field added to LedgerRecord fails to compile here.
        let LedgerRecord {
            time,
            job,
            lineage,
            base_lineage,
            accelerator,
            actor,
            event,
        } = r;
        EntryOut {
            accelerator: accelerator.as_ref(),
            actor,
            base_lineage: base_lineage.as_deref(),
            event,
            hash,
            job: job.as_ref(),
            lineage: lineage.as_deref(),
            prev_hash,
            seq,
            time,
        }
    }
}

impl Serialize for LedgerEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EntryOut::new(self.seq, &self.prev_hash, Some(&self.hash), &self.record).serialize(s)
    }
}

impl LedgerEntry {
    /// The canonical JSON bytes that `hash` is computed over.
    pub fn body_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        let mut out = Vec::with_capacity(512);
        body_bytes_into(self.seq, &self.prev_hash, &self.record, &mut out)?;
        Ok(out)
    }

    /// Recomputes the hash from the content (ignores the stored `hash`).
    pub fn compute_hash(&self) -> Result<Sha256Digest, CanonicalError> {
        Ok(Sha256Digest::of(&self.body_bytes()?))
    }

    /// The canonical JSON of the whole entry: one line of `ledger.jsonl`, without the newline.
    pub fn canonical_line(&self) -> Result<Vec<u8>, CanonicalError> {
        let mut out = Vec::with_capacity(600);
        canonical_json_into(self, &mut out)?;
        Ok(out)
    }
}

pub(super) fn body_bytes_into(
    seq: u64,
    prev_hash: &Sha256Digest,
    record: &LedgerRecord,
    out: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    canonical_json_into(&EntryOut::new(seq, prev_hash, None, record), out)
}

/// The tip of a chain: what is needed to seal the next record. An operator
/// that stores entries elsewhere (one object per entry) keeps only this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerHead {
    /// The `seq` the next entry gets.
    pub next_seq: u64,
    /// The `hash` of the last entry ([`GENESIS_PREV_HASH`] when empty).
    pub head: Sha256Digest,
}

impl Default for LedgerHead {
    fn default() -> Self {
        LedgerHead::GENESIS
    }
}

impl LedgerHead {
    /// The head of an empty ledger.
    pub const GENESIS: LedgerHead = LedgerHead {
        next_seq: FIRST_SEQ,
        head: GENESIS_PREV_HASH,
    };

    /// The head after `entry` (trusting it; verify the chain first).
    pub fn after(entry: &LedgerEntry) -> LedgerHead {
        LedgerHead {
            next_seq: entry.seq + 1,
            head: entry.hash,
        }
    }

    /// Sequences and chains `record`, advancing the head. O(1): one canonical
    /// encoding and one SHA-256 of a few hundred bytes.
    pub fn seal(&mut self, record: LedgerRecord) -> Result<LedgerEntry, CanonicalError> {
        let mut buf = Vec::with_capacity(512);
        self.seal_with(record, &mut buf)
    }

    pub(super) fn seal_with(
        &mut self,
        record: LedgerRecord,
        buf: &mut Vec<u8>,
    ) -> Result<LedgerEntry, CanonicalError> {
        buf.clear();
        body_bytes_into(self.next_seq, &self.head, &record, buf)?;
        let hash = Sha256Digest::of(buf);
        let entry = LedgerEntry {
            seq: self.next_seq,
            prev_hash: self.head,
            hash,
            record,
        };
        self.next_seq += 1;
        self.head = hash;
        Ok(entry)
    }
}

/// Writes `entries` as JSON Lines: each line the canonical JSON of one entry.
pub fn write_jsonl<W: Write>(entries: &[LedgerEntry], mut out: W) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    for e in entries {
        buf.clear();
        canonical_json_into(e, &mut buf).map_err(io::Error::other)?;
        buf.push(b'\n');
        out.write_all(&buf)?;
    }
    out.flush()
}
