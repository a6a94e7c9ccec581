//! RFC 8785 (JSON Canonicalization Scheme) encoding, the byte form that is
//! hashed and signed everywhere in komptroller.
//!
//! We delegate to the maintained `serde_json_canonicalizer` crate: keys sorted
//! by UTF-16 code units, no whitespace, ECMAScript number formatting
//! (`1e+25`, `300`, `0.5`), minimal string escapes. Non-finite numbers
//! (NaN, ±∞) have no JSON form and are refused.

use serde::Serialize;

/// Why a value has no canonical JSON form.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode as RFC 8785 canonical JSON: {0}")]
pub struct CanonicalError(#[from] serde_json::Error);

/// The RFC 8785 canonical JSON bytes of `value`.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    Ok(serde_json_canonicalizer::to_vec(value)?)
}

/// Appends the RFC 8785 canonical JSON bytes of `value` to `out`.
pub fn canonical_json_into<T: Serialize>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    Ok(serde_json_canonicalizer::to_writer(value, out)?)
}
