//! RFC 8785 (JSON Canonicalization Scheme) encoding, the byte form that is
//! hashed and signed everywhere in komptroller.
//!
//! [`canonical_json`] uses our single-pass serializer ([`super::jcs`]), which
//! is tested byte for byte against the maintained `serde_json_canonicalizer`
//! crate ([`reference_canonical_json`]) on generated ledgers, reports and
//! arbitrary JSON values. Keys sorted by UTF-16 code units, no whitespace,
//! ECMAScript number formatting (`1e+25`, `300`, `0.5`), minimal string
//! escapes. Non-finite numbers (NaN, ±∞) have no JSON form and are refused.

use serde::Serialize;

use super::jcs::{self, JcsError};

/// Why a value has no canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode as RFC 8785 canonical JSON: {0}")]
pub struct CanonicalError(#[from] JcsError);

/// The RFC 8785 canonical JSON bytes of `value`.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    jcs::to_writer(value, &mut out)?;
    Ok(out)
}

/// Appends the RFC 8785 canonical JSON bytes of `value` to `out`.
pub fn canonical_json_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    let len = out.len();
    jcs::to_writer(value, out).inspect_err(|_| out.truncate(len))?;
    Ok(())
}

/// The RFC 8785 canonical JSON bytes of a job's spec as its `spec_hash`
/// covers it: exactly `canonical_json(&(model, accelerator, count,
/// max_duration, priority))`, written without going through `serde` (it is
/// computed for every submission).
pub fn job_spec_canonical_json(
    model: &crate::job::ModelSpec,
    accelerator: &crate::job::AcceleratorSpec,
    count: u32,
    max_duration: crate::duration::GoDuration,
    priority: i32,
) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(128);
    jcs::write_job_spec(&mut out, model, accelerator, count, max_duration, priority)?;
    Ok(out)
}

/// The same bytes computed by the `serde_json_canonicalizer` crate: the
/// reference our serializer is tested against.
pub fn reference_canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json_canonicalizer::to_vec(value)
}

/// Whether `bytes` are exactly the RFC 8785 canonical encoding of some JSON
/// value (`canonical(parse(bytes)) == bytes`), checked in one pass without
/// building the value.
pub fn is_canonical_json(bytes: &[u8]) -> bool {
    jcs::is_canonical(bytes)
}

/// Decodes `T` from `bytes` that must be exactly RFC 8785 canonical JSON,
/// checking the canonical form while decoding, in one pass: strings without
/// escapes are borrowed, numbers parsed once. Succeeds exactly when
/// [`is_canonical_json`] holds and `serde_json` decodes `T` (with the same
/// value) for structs, options, sequences, maps, numbers, strings, booleans
/// and unit-variant enums written as strings (what the ledger holds). The
/// error does not say what is wrong; decode with `serde_json` to name it.
pub fn from_canonical_json<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<T, CanonicalError> {
    Ok(jcs::from_canonical_slice(bytes)?)
}
