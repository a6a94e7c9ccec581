//! The tamper-evident ledger: every event the engine produces, hash-chained.
//!
//! The engine emits [`LedgerRecord`]s (what happened); the ledger gives each a
//! sequence number and chains it (`prevHash`, `hash`) into a [`LedgerEntry`].

mod record;

pub use record::*;
