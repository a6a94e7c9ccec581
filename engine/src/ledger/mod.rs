//! The tamper-evident ledger: every event the engine produces, hash-chained.
//!
//! The engine emits [`LedgerRecord`]s (what happened); the ledger gives each a
//! sequence number and chains it (`prevHash`, `hash`) into a [`LedgerEntry`].
//! [`LedgerTotals`] derives lineage, namespace, accelerator, tier and window
//! totals from entries alone, by the one fold of entries into lineage totals
//! ([`LineageFold`]). The format is specified in `docs/ledger.md`.

mod canonical;
mod chain;

mod entry;
mod facts;
mod fold;
mod jcs;
mod record;
#[doc(hidden)]
pub mod sample;
mod totals;
mod wire;

pub use crate::digest::*;
pub use canonical::*;
pub use chain::*;
pub use entry::*;
pub use facts::*;
pub use fold::*;
pub use record::*;
pub use totals::*;
