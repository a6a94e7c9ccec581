//! Offline verification of a signed report, optionally against its ledger
//! and its predecessor: what `komptroller verify` runs. Checks stop at the
//! first failure, which is named in one sentence with its class (each class
//! is a distinct exit code).

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use super::{
    BodyBuilder, PreviousLink, ReportBody, ReportError, ReportParseError, SignatureError,
    SignedReport, Thresholds, parse_report,
};
use crate::ledger::{ChainError, CheckedEntry, Sha256Digest, verify_jsonl_facts};
use crate::merkle;
use crate::signing;

/// What kind of check failed; each maps to its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// An input file is unreadable or malformed (not JSON, wrong key format…). Exit 2.
    Input,
    /// The report's signature, key id or canonical form does not hold. Exit 3.
    Signature,
    /// The ledger's hash chain is broken. Exit 4.
    Chain,
    /// The ledger is intact but not the one the report signed (size, head hash, Merkle root). Exit 5.
    LedgerMismatch,
    /// Totals, threshold crossings or period differ from what the entries give. Exit 6.
    Totals,
    /// The link or consistency proof to the previous report does not hold. Exit 7.
    Previous,
    /// The entry's inclusion proof does not lead to the signed root. Exit 8.
    Inclusion,
}

impl FailureClass {
    pub fn exit_code(self) -> u8 {
        match self {
            FailureClass::Input => 2,
            FailureClass::Signature => 3,
            FailureClass::Chain => 4,
            FailureClass::LedgerMismatch => 5,
            FailureClass::Totals => 6,
            FailureClass::Previous => 7,
            FailureClass::Inclusion => 8,
        }
    }
}

/// The first check that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    pub class: FailureClass,
    /// One sentence naming the file and the first broken entry or field.
    pub message: String,
}

fn fail<T>(class: FailureClass, message: impl Into<String>) -> Result<T, VerifyFailure> {
    Err(VerifyFailure {
        class,
        message: message.into(),
    })
}

/// A file's name (for messages) and content.
#[derive(Clone, Copy, Debug)]
pub struct NamedInput<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

/// What to verify.
#[derive(Clone, Copy, Debug)]
pub struct VerifyRequest<'a> {
    pub report: NamedInput<'a>,
    /// The signers' public keys: SPKI PEM files, each holding one key or a
    /// bundle of several. The report's (and the previous report's) `keyId`
    /// selects the key, so a key rotation between reports verifies.
    pub public_keys: &'a [NamedInput<'a>],
    pub ledger: Option<NamedInput<'a>>,
    pub previous: Option<NamedInput<'a>>,
    /// Produce and check the inclusion proof of this entry (needs `ledger`).
    pub entry: Option<u64>,
    /// Accept a ledger longer than the report (entries after it are chain-checked only).
    pub allow_longer_ledger: bool,
}

/// An RFC 6962 inclusion proof for one entry, in a form a third party can re-check.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    pub seq: u64,
    pub tree_size: u64,
    pub entry_hash: Sha256Digest,
    /// `SHA-256(0x00 ‖ entryHash)`.
    pub leaf_hash: Sha256Digest,
    pub merkle_root: Sha256Digest,
    pub audit_path: Vec<Sha256Digest>,
}

/// What held.
#[derive(Clone, Debug)]
pub struct Verified {
    pub report: SignedReport,
    /// One line per check that passed.
    pub checks: Vec<String>,
    pub inclusion: Option<InclusionProof>,
}

fn load_report(
    input: NamedInput<'_>,
    class_if_altered: FailureClass,
) -> Result<SignedReport, VerifyFailure> {
    match parse_report(input.bytes) {
        Ok(r) => Ok(r),
        Err(ReportParseError::Malformed(m)) => {
            fail(FailureClass::Input, format!("{}: {m}", input.name))
        }
        Err(e @ ReportParseError::NotCanonical { .. }) => {
            fail(class_if_altered, format!("{} is {e}", input.name))
        }
    }
}

/// The given public keys, by key id.
struct KeyRing<'a> {
    /// (key id, key, file it came from), in the order given.
    keys: Vec<(Sha256Digest, VerifyingKey, &'a str)>,
}

impl<'a> KeyRing<'a> {
    fn load(inputs: &[NamedInput<'a>]) -> Result<KeyRing<'a>, VerifyFailure> {
        if inputs.is_empty() {
            return fail(
                FailureClass::Input,
                "no public key given: pass --key with the signer's public-key.pem",
            );
        }
        let mut keys = Vec::new();
        for input in inputs {
            let text = std::str::from_utf8(input.bytes).map_err(|_| VerifyFailure {
                class: FailureClass::Input,
                message: format!(
                    "{}: not a PEM text file (expected -----BEGIN PUBLIC KEY-----)",
                    input.name
                ),
            })?;
            let parsed = signing::parse_public_keys_pem(text).map_err(|e| VerifyFailure {
                class: FailureClass::Input,
                message: format!("{}: {e}", input.name),
            })?;
            for k in parsed {
                keys.push((signing::key_id(&k), k, input.name));
            }
        }
        Ok(KeyRing { keys })
    }

    /// Checks `report`'s signature with the given key its `keyId` names.
    fn verify(
        &self,
        report: &SignedReport,
        name: &str,
        class: FailureClass,
    ) -> Result<&'a str, VerifyFailure> {
        let failed = |e: SignatureError| VerifyFailure {
            class,
            message: format!("{name}: {e}"),
        };
        match self.keys.iter().find(|(id, _, _)| *id == report.key_id) {
            Some((_, key, file)) => {
                report.verify_signature(key).map_err(failed)?;
                Ok(*file)
            }
            // One key: the error names both ids, as before rotation existed.
            None if self.keys.len() == 1 => {
                let (_, key, _) = &self.keys[0];
                report.verify_signature(key).map_err(failed)?;
                Ok(self.keys[0].2)
            }
            None => Err(VerifyFailure {
                class,
                message: format!(
                    "{name}: the report was signed by key {}, which is none of the {} given keys ({})",
                    report.key_id,
                    self.keys.len(),
                    self.keys
                        .iter()
                        .map(|(id, _, file)| format!("{id} from {file}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

/// Runs every requested check, in order: signature, previous report,
/// ledger chain, ledger-to-report match, totals, inclusion.
pub fn verify_report(req: &VerifyRequest<'_>) -> Result<Verified, VerifyFailure> {
    verify_report_with(req, |_| {})
}

/// [`verify_report`], handing every verified ledger entry (also those after
/// the report's range) to `visit` in ledger order during the one pass over
/// the ledger, so a caller checking more than this report (`audit`: the
/// earlier reports of a chain) reads the ledger once. Entries are handed on
/// before the checks that follow the pass: use what `visit` saw only when
/// the result is `Ok`.
pub fn verify_report_with(
    req: &VerifyRequest<'_>,
    mut visit: impl FnMut(&CheckedEntry<'_>),
) -> Result<Verified, VerifyFailure> {
    let mut checks = Vec::new();
    let keys = KeyRing::load(req.public_keys)?;

    let report = load_report(req.report, FailureClass::Signature)?;
    let key_file = keys.verify(&report, req.report.name, FailureClass::Signature)?;
    checks.push(format!(
        "signature: valid Ed25519 signature by key {} ({key_file})",
        report.key_id
    ));
    let b = &report.report;

    // The report's own link to its predecessor.
    match own_link(b) {
        Ok(Some(check)) => checks.push(check),
        Ok(None) => {}
        Err((class, m)) => return fail(class, format!("{}: {m}", req.report.name)),
    }

    if let Some(prev_input) = req.previous {
        let prev = load_report(prev_input, FailureClass::Previous)?;
        keys.verify(&prev, prev_input.name, FailureClass::Previous)?;
        let Some(link) = &b.previous else {
            return fail(
                FailureClass::Previous,
                format!(
                    "{}: field report.previous is absent, so it does not continue {}",
                    req.report.name, prev_input.name
                ),
            );
        };
        let prev_hash = prev.report_hash().map_err(|e| VerifyFailure {
            class: FailureClass::Input,
            message: format!("{}: {e}", prev_input.name),
        })?;
        if link.report_hash != prev_hash {
            return fail(
                FailureClass::Previous,
                format!(
                    "{}: field report.previous.reportHash is {} but {} hashes to {}",
                    req.report.name, link.report_hash, prev_input.name, prev_hash
                ),
            );
        }
        if link.tree_size != prev.report.range.to || link.merkle_root != prev.report.merkle_root {
            return fail(
                FailureClass::Previous,
                format!(
                    "{}: field report.previous states {} entries with root {} but {} has {} entries with root {}",
                    req.report.name,
                    link.tree_size,
                    link.merkle_root,
                    prev_input.name,
                    prev.report.range.to,
                    prev.report.merkle_root
                ),
            );
        }
        if b.period.from < prev.report.period.to {
            return fail(
                FailureClass::Previous,
                format!(
                    "{}: field report.period.from ({}) is before the end of the previous report's period ({})",
                    req.report.name, b.period.from, prev.report.period.to
                ),
            );
        }
        checks.push(format!(
            "previous: continues {} (hash {prev_hash}, signed by key {})",
            prev_input.name, prev.key_id
        ));
    }

    let mut inclusion = None;
    if let Some(ledger_input) = req.ledger {
        let to = b.range.to;
        let link = b.previous.as_ref().map(|p| PreviousLink {
            report_hash: p.report_hash,
            tree_size: p.tree_size,
            merkle_root: p.merkle_root,
        });
        // One pass over the ledger: every line checked (on all cores) and,
        // in order, fed to the same computation that built the report.
        let mut builder = BodyBuilder::new(
            b.period,
            Thresholds {
                reporting: b.reporting_thresholds.clone(),
                modification: b.modification_thresholds.clone(),
            },
            b.policies.clone(),
            link,
        );
        let mut entry_hash = None;
        let n = verify_jsonl_facts(ledger_input.bytes, threads(), |e| {
            if e.seq < to {
                builder.push_leaf(e.seq, &e.hash, e.leaf, &e.facts);
                if Some(e.seq) == req.entry {
                    entry_hash = Some(e.hash);
                }
            }
            visit(e);
        })
        .map_err(|e| VerifyFailure {
            class: match e {
                ChainError::Malformed { .. } => FailureClass::Input,
                _ => FailureClass::Chain,
            },
            message: format!("{}: {e}", ledger_input.name),
        })?;
        checks.push(format!("chain: {n} entries, every hash and link intact"));
        if n < to {
            return fail(
                FailureClass::LedgerMismatch,
                format!(
                    "{}: holds {n} entries but the report covers {to}; entries from seq {n} are missing",
                    ledger_input.name
                ),
            );
        }
        if n > to && !req.allow_longer_ledger {
            return fail(
                FailureClass::LedgerMismatch,
                format!(
                    "{}: holds {n} entries but the report covers only {to}; entry seq {to} and later are not covered by this report (pass --allow-longer-ledger to verify a prefix)",
                    ledger_input.name
                ),
            );
        }
        let head = builder.head();
        if head != b.head_hash {
            return fail(
                FailureClass::LedgerMismatch,
                format!(
                    "{}: entry seq {} has hash {head} but the report's field report.headHash is {}",
                    ledger_input.name,
                    to.saturating_sub(1),
                    b.head_hash
                ),
            );
        }
        let root = builder.merkle_root();
        if root != b.merkle_root {
            return fail(
                FailureClass::LedgerMismatch,
                format!(
                    "{}: the Merkle root of entries 0 to {} is {root} but the report's field report.merkleRoot is {}",
                    ledger_input.name,
                    to.saturating_sub(1),
                    b.merkle_root
                ),
            );
        }
        checks.push(format!(
            "ledger: head hash and Merkle root of {} match the report",
            entries_text(0, to)
        ));
        let inclusion_path = match req.entry {
            Some(seq) if seq < to => {
                let leaves = builder.leaves();
                let idx = usize::try_from(seq).unwrap_or(usize::MAX);
                leaves.get(idx).map(|leaf| {
                    (
                        *leaf,
                        merkle::inclusion_proof(leaves, seq).unwrap_or_default(),
                    )
                })
            }
            _ => None,
        };

        let recomputed = builder.finish().map_err(|e| VerifyFailure {
            class: match e {
                ReportError::PreviousRootMismatch { .. }
                | ReportError::PreviousBeyondLedger { .. } => FailureClass::Previous,
                _ => FailureClass::Totals,
            },
            message: format!("{}: {e}", req.report.name),
        })?;
        if recomputed.previous != b.previous {
            return fail(
                FailureClass::Previous,
                format!(
                    "{}: field report.previous does not match the link recomputed from {}",
                    req.report.name, ledger_input.name
                ),
            );
        }
        if recomputed != *b {
            let stated = serde_json::to_value(b).unwrap_or(Value::Null);
            let derived = serde_json::to_value(&recomputed).unwrap_or(Value::Null);
            let (path, s, d) = first_difference("report", &stated, &derived)
                .unwrap_or_else(|| ("report".into(), "one value".into(), "another".into()));
            return fail(
                FailureClass::Totals,
                format!(
                    "{}: field {path} says {s} but the entries in {} give {d}",
                    req.report.name, ledger_input.name
                ),
            );
        }
        checks.push(format!(
            "totals: every total, threshold crossing and deadline recomputed from {to} entries matches"
        ));

        if let Some(seq) = req.entry {
            let (Some((leaf, path)), Some(entry_hash)) = (inclusion_path, entry_hash) else {
                return fail(
                    FailureClass::Input,
                    format!(
                        "--entry {seq}: not covered by the report, which holds {}",
                        entries_text(0, to)
                    ),
                );
            };
            if !merkle::verify_inclusion(&leaf, seq, to, &path, &b.merkle_root) {
                return fail(
                    FailureClass::Inclusion,
                    format!(
                        "entry seq {seq}: its inclusion proof does not lead to the report's Merkle root {}",
                        b.merkle_root
                    ),
                );
            }
            checks.push(format!(
                "inclusion: entry seq {seq} is in the signed tree ({} proof hashes)",
                path.len()
            ));
            inclusion = Some(InclusionProof {
                seq,
                tree_size: to,
                entry_hash,
                leaf_hash: leaf,
                merkle_root: b.merkle_root,
                audit_path: path,
            });
        }
    } else if req.entry.is_some() {
        return fail(
            FailureClass::Input,
            "--entry needs --ledger: the inclusion proof is computed from the ledger's entry hashes",
        );
    }
    Ok(Verified {
        report,
        checks,
        inclusion,
    })
}

/// What a report's own fields prove without its predecessor: its range
/// starts where its `previous` link ends (at 0 without one), runs forwards,
/// and the link's consistency proof leads from the previous tree to this
/// one. `Ok(Some(line))` names the proof that held.
pub fn own_link(b: &ReportBody) -> Result<Option<String>, (FailureClass, String)> {
    let checked = match &b.previous {
        Some(p) => {
            if b.range.from != p.tree_size {
                return Err((
                    FailureClass::Previous,
                    format!(
                        "field report.range.from is {} but the previous report ends at entry {}",
                        b.range.from, p.tree_size
                    ),
                ));
            }
            if !merkle::verify_consistency(
                p.tree_size,
                b.range.to,
                &p.merkle_root,
                &b.merkle_root,
                &p.consistency_proof,
            ) {
                return Err((
                    FailureClass::Previous,
                    format!(
                        "field report.previous.consistencyProof does not prove that the tree of {} entries (root {}) is a prefix of this report's tree of {} entries",
                        p.tree_size, p.merkle_root, b.range.to
                    ),
                ));
            }
            Some(format!(
                "consistency: the previous tree ({} entries) is a prefix of this one ({} entries)",
                p.tree_size, b.range.to
            ))
        }
        None if b.range.from != 0 => {
            return Err((
                FailureClass::Previous,
                format!(
                    "the report names no previous report but its range starts at entry {}, not 0",
                    b.range.from
                ),
            ));
        }
        None => None,
    };
    if b.range.from > b.range.to {
        return Err((
            FailureClass::Totals,
            format!(
                "field report.range runs backwards ({} to {})",
                b.range.from, b.range.to
            ),
        ));
    }
    Ok(checked)
}

/// Every hardware thread checks ledger lines.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// "entries 3 to 9" or "no entries" for the half-open range `[from, to)`.
pub fn entries_text(from: u64, to: u64) -> String {
    if to <= from {
        "no entries".to_string()
    } else {
        format!("entries {from} to {}", to - 1)
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// The first path where `stated` and `derived` differ, with both values.
pub(crate) fn first_difference(
    path: &str,
    stated: &Value,
    derived: &Value,
) -> Option<(String, String, String)> {
    match (stated, derived) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = first_difference(&p, x, y) {
                            return Some(d);
                        }
                    }
                    (Some(x), None) => return Some((p, short(x), "nothing".into())),
                    (None, Some(y)) => return Some((p, "nothing".into(), short(y))),
                    (None, None) => {}
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(d) = first_difference(&format!("{path}[{i}]"), x, y) {
                    return Some(d);
                }
            }
            if a.len() != b.len() {
                return Some((
                    format!("{path} (length)"),
                    format!("{} items", a.len()),
                    format!("{} items", b.len()),
                ));
            }
            None
        }
        (x, y) if x == y => None,
        (x, y) => Some((path.to_string(), short(x), short(y))),
    }
}
