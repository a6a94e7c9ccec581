//! An in-memory [`Ledger`], and checking a ledger: the chain of entries (sequence, links, hashes), in
//! memory or straight from JSON Lines bytes, naming the first broken entry
//! ([`ChainError`]). Lines are checked in place where they are canonical
//! (the hashed bytes are the line without its `hash` member), on several
//! threads, and in order.

use std::fmt;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::canonical::{CanonicalError, is_canonical_json};
use super::entry::{LedgerEntry, LedgerHead, body_bytes_into, write_jsonl};
use super::facts::RecordFacts;
use super::record::LedgerRecord;
use crate::digest::Sha256Digest;

/// An in-memory ledger: entries in order, appended in O(1).
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    entries: Vec<LedgerEntry>,
    head: LedgerHead,
    scratch: Vec<u8>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Adopts `entries` after verifying their chain (sequence, links, hashes).
    pub fn from_entries(entries: Vec<LedgerEntry>) -> Result<Ledger, ChainError> {
        verify_entries(&entries)?;
        let head = entries
            .last()
            .map_or(LedgerHead::GENESIS, LedgerHead::after);
        Ok(Ledger {
            entries,
            head,
            scratch: Vec::new(),
        })
    }

    /// Appends `record` as the next entry and returns it. Fails only when the
    /// record holds a non-finite number (NaN or ±∞ FLOP), which has no JSON form.
    pub fn append(&mut self, record: LedgerRecord) -> Result<&LedgerEntry, CanonicalError> {
        let entry = self.head.seal_with(record, &mut self.scratch)?;
        self.entries.push(entry);
        // Just pushed, so the vector is not empty.
        let last = self.entries.len() - 1;
        Ok(&self.entries[last])
    }

    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<LedgerEntry> {
        self.entries
    }

    pub fn head(&self) -> LedgerHead {
        self.head
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the ledger as JSON Lines (see [`write_jsonl`]).
    pub fn write_jsonl<W: Write>(&self, out: W) -> io::Result<()> {
        write_jsonl(&self.entries, out)
    }
}

/// The first thing wrong with a ledger, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// A line is not a ledger entry at all.
    Malformed { line: usize, message: String },
    /// The line is a valid entry but not in RFC 8785 canonical form.
    NotCanonical { line: usize, seq: u64 },
    /// The stored `hash` is not the hash of the entry's content.
    HashMismatch {
        line: usize,
        seq: u64,
        stored: Sha256Digest,
        computed: Sha256Digest,
    },
    /// `prevHash` does not equal the previous entry's `hash`.
    BrokenLink {
        line: usize,
        seq: u64,
        stored: Sha256Digest,
        expected: Sha256Digest,
    },
    /// Sequence numbers are not consecutive from 0 (entry deleted, inserted or reordered).
    SeqMismatch {
        line: usize,
        found: u64,
        expected: u64,
    },
    /// The entry holds a number with no JSON form.
    Unencodable {
        line: usize,
        seq: u64,
        message: String,
    },
}

impl ChainError {
    /// The 1-based line (entry position) where the ledger first breaks.
    pub fn line(&self) -> usize {
        match self {
            ChainError::Malformed { line, .. }
            | ChainError::NotCanonical { line, .. }
            | ChainError::HashMismatch { line, .. }
            | ChainError::BrokenLink { line, .. }
            | ChainError::SeqMismatch { line, .. }
            | ChainError::Unencodable { line, .. } => *line,
        }
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Malformed { line, message } => {
                write!(f, "line {line} is not a ledger entry: {message}")
            }
            ChainError::NotCanonical { line, seq } => write!(
                f,
                "entry seq {seq} (line {line}) is not in RFC 8785 canonical form, so its bytes were altered after it was written"
            ),
            ChainError::HashMismatch {
                line,
                seq,
                stored,
                computed,
            } => write!(
                f,
                "entry seq {seq} (line {line}) was altered: its content hashes to {computed} but its hash field says {stored}"
            ),
            ChainError::BrokenLink {
                line,
                seq,
                stored,
                expected,
            } => write!(
                f,
                "entry seq {seq} (line {line}) does not chain to the entry before it: prevHash is {stored}, expected {expected}"
            ),
            ChainError::SeqMismatch {
                line,
                found,
                expected,
            } => write!(
                f,
                "line {line} holds entry seq {found} where seq {expected} was expected, so entries were deleted, inserted or reordered"
            ),
            ChainError::Unencodable { line, seq, message } => {
                write!(
                    f,
                    "entry seq {seq} (line {line}) cannot be encoded: {message}"
                )
            }
        }
    }
}

impl std::error::Error for ChainError {}

/// Verifies that in-memory `entries` form a valid chain from genesis.
pub fn verify_entries(entries: &[LedgerEntry]) -> Result<(), ChainError> {
    let mut expected = LedgerHead::GENESIS;
    let mut buf = Vec::with_capacity(1024);
    for (i, e) in entries.iter().enumerate() {
        let line = i + 1;
        check_link(line, e, &expected)?;
        buf.clear();
        body_bytes_into(e.seq, &e.prev_hash, &e.record, &mut buf).map_err(|err| {
            ChainError::Unencodable {
                line,
                seq: e.seq,
                message: err.to_string(),
            }
        })?;
        let computed = Sha256Digest::of(&buf);
        if computed != e.hash {
            return Err(ChainError::HashMismatch {
                line,
                seq: e.seq,
                stored: e.hash,
                computed,
            });
        }
        expected = LedgerHead::after(e);
    }
    Ok(())
}

fn check_link(line: usize, e: &LedgerEntry, expected: &LedgerHead) -> Result<(), ChainError> {
    check_link_parts(line, e.seq, &e.prev_hash, expected)
}

fn check_link_parts(
    line: usize,
    seq: u64,
    prev_hash: &Sha256Digest,
    expected: &LedgerHead,
) -> Result<(), ChainError> {
    if seq != expected.next_seq {
        return Err(ChainError::SeqMismatch {
            line,
            found: seq,
            expected: expected.next_seq,
        });
    }
    if *prev_hash != expected.head {
        return Err(ChainError::BrokenLink {
            line,
            seq,
            stored: *prev_hash,
            expected: expected.head,
        });
    }
    Ok(())
}

/// Parses one line and checks it on its own: valid entry, canonical bytes,
/// hash over its content. Linking to neighbours is checked by the caller.
///
/// The hashed bytes are the canonical line without its `"hash":"<hex>",`
/// member, so once the line is known to be canonical the hash is computed
/// over the line itself, with no re-encoding.
fn check_line(
    line_no: usize,
    line: &[u8],
    hash_member_finder: &memchr::memmem::Finder<'_>,
) -> Result<LedgerEntry, ChainError> {
    let entry = super::wire::entry_from_slice(line).map_err(|e| ChainError::Malformed {
        line: line_no,
        message: e.to_string(),
    })?;
    if !is_canonical_json(line) {
        return Err(ChainError::NotCanonical {
            line: line_no,
            seq: entry.seq,
        });
    }
    let Some(member) = hash_member(line, &entry.hash, hash_member_finder) else {
        return Err(ChainError::NotCanonical {
            line: line_no,
            seq: entry.seq,
        });
    };
    let computed = hash_without_member(line, member);
    if computed != entry.hash {
        return Err(ChainError::HashMismatch {
            line: line_no,
            seq: entry.seq,
            stored: entry.hash,
            computed,
        });
    }
    Ok(entry)
}

/// What precedes the top-level `hash` member of a canonical line.
const HASH_NEEDLE: &[u8] = b",\"hash\":\"";

/// Where the `"hash":"<64 hex>",` member of a canonical line lies, if it
/// holds `hash`: `(start, length without the comma)`.
///
/// `hash` is never the last member (`seq` and `time` always follow it), so
/// it is followed by a comma. The needle contains unescaped quotes, so it
/// cannot occur inside a string value, and `hash` is the only member of that
/// name at the top level of a canonical line, so the first match is it.
fn hash_member(
    line: &[u8],
    hash: &Sha256Digest,
    finder: &memchr::memmem::Finder<'_>,
) -> Option<(usize, usize)> {
    let mut member = Vec::with_capacity(73);
    member.extend_from_slice(b"\"hash\":\"");
    hash.write_hex(&mut member);
    member.push(b'"');
    let at = finder.find(line)? + 1;
    (line.get(at..at + member.len()) == Some(&member[..])
        && line.get(at + member.len()) == Some(&b','))
    .then_some((at, member.len()))
}

/// SHA-256 of a canonical line with its `hash` member (and comma) cut out.
fn hash_without_member(line: &[u8], (at, len): (usize, usize)) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(&line[..at]);
    h.update(&line[at + len + 1..]);
    Sha256Digest(h.finalize().into())
}

/// [`check_line`] without building the typed entry: one pass that checks
/// the canonical form while decoding, borrowing the line's strings, then one
/// SHA-256. When any check fails the line is decoded fully by
/// [`check_line`], so the error names the field exactly as it always did.
fn check_line_in_place<'a>(
    line_no: usize,
    line: &'a [u8],
    finder: &memchr::memmem::Finder<'_>,
) -> Result<super::wire::LineFacts<'a>, ChainError> {
    let fast = || {
        let e = super::wire::EntryIn::checked(line)?;
        let member = hash_member(line, &e.hash, finder)?;
        let hash = e.hash;
        (hash_without_member(line, member) == hash)
            .then(|| e.into_facts(crate::merkle::entry_leaf(&hash)))
    };
    if let Some(e) = fast() {
        return Ok(e);
    }
    match check_line(line_no, line, finder) {
        Err(err) => Err(err),
        // Both paths use the same decoder and checks, so this cannot happen.
        Ok(_) => Err(ChainError::Malformed {
            line: line_no,
            message: "internal error: the in-place and the full check disagree about this line"
                .into(),
        }),
    }
}

/// Splits JSON Lines into lines. Every line must be terminated by `\n`
/// except possibly the last; empty lines are not allowed.
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::with_capacity(bytes.len() / 512 + 1);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        lines.push(&bytes[start..end]);
        start = end + 1;
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    lines
}

/// Parses and verifies a whole `ledger.jsonl`: every line canonical, every
/// hash right, sequence numbers consecutive from 0 and every `prevHash`
/// linked. Uses all available cores for the per-line work; the error is
/// always the first broken entry in file order.
pub fn verify_jsonl(bytes: &[u8]) -> Result<Vec<LedgerEntry>, ChainError> {
    verify_jsonl_with_threads(bytes, default_threads())
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// [`verify_jsonl`] on at most `threads` threads (1 = on the calling thread).
pub fn verify_jsonl_with_threads(
    bytes: &[u8],
    threads: usize,
) -> Result<Vec<LedgerEntry>, ChainError> {
    let mut entries = Vec::new();
    verify_lines(
        bytes,
        threads,
        check_line,
        |e| (e.seq, e.prev_hash, e.hash),
        |e| entries.push(e),
    )?;
    Ok(entries)
}

/// An entry of a verified ledger, as [`verify_jsonl_facts`] hands it on.
#[derive(Clone, Copy, Debug)]
pub struct CheckedEntry<'a> {
    pub seq: u64,
    pub hash: Sha256Digest,
    /// Its Merkle leaf hash ([`crate::merkle::entry_leaf`] of `hash`).
    pub leaf: Sha256Digest,
    pub facts: RecordFacts<'a>,
}

/// Verifies a whole `ledger.jsonl` exactly as [`verify_jsonl`] does (same
/// checks, same first error) without building typed entries: each line is
/// checked and decoded in place, borrowing its strings, and `visit` gets
/// every entry's `seq`, `hash`, Merkle leaf and [`RecordFacts`] in ledger
/// order, on the calling thread while other threads check the lines ahead.
/// Only a broken line is decoded fully, to name what is wrong with it.
/// Returns the number of entries.
pub fn verify_jsonl_facts(
    bytes: &[u8],
    threads: usize,
    mut visit: impl FnMut(&CheckedEntry<'_>),
) -> Result<u64, ChainError> {
    verify_lines(
        bytes,
        threads,
        check_line_in_place,
        |e| (e.seq, e.prev_hash, e.hash),
        |e| {
            visit(&CheckedEntry {
                seq: e.seq,
                hash: e.hash,
                leaf: e.leaf,
                facts: e.facts(),
            })
        },
    )
}

/// Checks every line with `check` (on up to `threads` threads), then, in
/// order, that `seq` runs from 0 and every `prevHash` links (`link` gives
/// `(seq, prevHash, hash)`), handing each entry to `visit`. The error is
/// the first broken entry in file order. Returns the number of entries.
fn verify_lines<'b, T: Send>(
    bytes: &'b [u8],
    threads: usize,
    check: impl Fn(usize, &'b [u8], &memchr::memmem::Finder<'_>) -> Result<T, ChainError> + Sync,
    link: impl Fn(&T) -> (u64, Sha256Digest, Sha256Digest),
    mut visit: impl FnMut(T),
) -> Result<u64, ChainError> {
    let lines = split_lines(bytes);
    let mut expected = LedgerHead::GENESIS;
    let finder = memchr::memmem::Finder::new(HASH_NEEDLE);
    let mut failure = None;
    in_order(
        &lines,
        threads,
        |first, part| {
            let mut out = Vec::with_capacity(part.len());
            for (i, line) in part.iter().enumerate() {
                match check(first + i + 1, line, &finder) {
                    Ok(e) => out.push(e),
                    Err(err) => return (out, Some(err)),
                }
            }
            (out, None)
        },
        |(part, error)| {
            for e in part {
                let (seq, prev_hash, hash) = link(&e);
                let line = usize::try_from(expected.next_seq).unwrap_or(usize::MAX) + 1;
                if let Err(err) = check_link_parts(line, seq, &prev_hash, &expected) {
                    failure = Some(err);
                    return false;
                }
                expected = LedgerHead {
                    next_seq: seq + 1,
                    head: hash,
                };
                visit(e);
            }
            failure = error;
            failure.is_none()
        },
    )?;
    match failure {
        Some(err) => Err(err),
        None => Ok(expected.next_seq),
    }
}

/// Lines per unit of work handed to a thread.
const CHUNK: usize = 4096;

/// Runs `work` over chunks of `lines` on up to `threads` threads and hands
/// the results to `consume` on the calling thread in chunk order, as they
/// become available. `consume` returns false to stop early. Threads take
/// chunks on demand (a thread slowed by other load does not hold the others
/// up) but stay within a window of the consumer, bounding memory.
fn in_order<'l, T: Send>(
    lines: &[&'l [u8]],
    threads: usize,
    work: impl Fn(usize, &[&'l [u8]]) -> T + Sync,
    mut consume: impl FnMut(T) -> bool,
) -> Result<(), ChainError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let chunks: Vec<&[&[u8]]> = lines.chunks(CHUNK).collect();
    let threads = threads.clamp(1, 16).min(chunks.len());
    if threads <= 1 {
        for (i, part) in chunks.iter().enumerate() {
            if !consume(work(i * CHUNK, part)) {
                break;
            }
        }
        return Ok(());
    }
    let window = 4 * threads;
    let next = AtomicUsize::new(0);
    let consumed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut complete = true;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, T)>(window);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let tx = tx.clone();
                let (next, consumed, stop, chunks, work) =
                    (&next, &consumed, &stop, &chunks, &work);
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(part) = chunks.get(i) else {
                            break;
                        };
                        while i >= consumed.load(Ordering::Acquire) + window {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_micros(100));
                        }
                        if stop.load(Ordering::Relaxed)
                            || tx.send((i, work(i * CHUNK, part))).is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut want = 0;
        let mut stopped = false;
        'receive: for (i, r) in rx.iter() {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&want) {
                want += 1;
                consumed.store(want, Ordering::Release);
                if !consume(r) {
                    stopped = true;
                    break 'receive;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks any thread waiting to send.
        drop(rx);
        // A thread only panics on a bug; its chunks then never arrive.
        for w in workers {
            complete &= w.join().is_ok();
        }
        complete &= stopped || want == chunks.len();
    });
    if complete {
        Ok(())
    } else {
        Err(ChainError::Malformed {
            line: 0,
            message: "internal error: a verifier thread panicked".into(),
        })
    }
}

/// Parses JSON Lines into entries without verifying anything (for tools
/// that verify separately). Errors name the 1-based line.
pub fn read_jsonl(bytes: &[u8]) -> Result<Vec<LedgerEntry>, ChainError> {
    split_lines(bytes)
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| ChainError::Malformed {
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}
