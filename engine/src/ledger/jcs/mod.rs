//! A fast, single-pass RFC 8785 serializer for serde types.
//!
//! `serde_json_canonicalizer` (the reference we test against, byte for byte,
//! in `engine/tests/ledger_canonical.rs`) buffers every object member in its
//! own allocation and re-parses each key to sort it; that costs ~8 µs per
//! ledger entry, more than the whole 5 µs append budget. This serializer
//! writes straight into one buffer, remembers where each member starts, and
//! only moves bytes when an object's keys were not already in order (our
//! wire structs declare their fields sorted, so usually nothing moves).
//!
//! RFC 8785 rules implemented here: members sorted by the UTF-16 code units
//! of their names; no whitespace; strings with only `"`, `\\` and control
//! characters escaped (`\b \t \n \f \r`, else `\u00xx` lowercase); numbers
//! in ECMAScript `Number.prototype.toString` form (via `ryu-js`), `-0` as
//! `0`; NaN and ±∞ refused; duplicate keys refused.
//!
//! Three parts: `write` serializes ([`to_writer`], [`write_job_spec`]),
//! `check` tells whether bytes are canonical ([`is_canonical`]), and
//! `decode` reads a value back from canonical bytes while checking them in
//! the same pass ([`from_canonical_slice`]).

mod check;
mod decode;
mod write;

pub use check::is_canonical;
pub use decode::from_canonical_slice;
pub use write::{to_writer, write_job_spec};

use std::fmt::Display;

use serde::de;
use serde::ser;

/// Why a value has no canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JcsError(String);

impl ser::Error for JcsError {
    fn custom<T: Display>(msg: T) -> Self {
        JcsError(msg.to_string())
    }
}

impl de::Error for JcsError {
    fn custom<T: Display>(msg: T) -> Self {
        JcsError(msg.to_string())
    }
}
