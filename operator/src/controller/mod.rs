//! The TrainingJob controller: a thin shell around the engine.
//!
//! A reconcile ([`reconcile`]) runs five named steps, top to bottom
//! (in `reconcile.rs`): dereference the TrainingJob and
//! its Job, decide (every event for the engine in one books section at one
//! time), persist (the ledger entries, and the finalizer), update the
//! status, and apply the workload (the batch/v1 Job of an admitted job).
//!
//! Decisions about *other* jobs (a queued job admitted when this one
//! finished) are reconciled by triggering those jobs ([`Context::with_books`]).
//! Policies ([`policies`]), budget windows' wake-ups and waiting jobs' queue
//! positions ([`loops`]) feed the same engine. Only the leader runs any of
//! this, for one leader term at a time ([`term::run_term`]).

pub mod approvals;
pub mod books;
pub mod build;
pub mod cache;
pub mod context;
pub mod loops;
pub mod policies;
pub mod reconcile;
pub mod restore;
pub mod status;
pub mod term;
pub mod workloads;

pub use self::cache::{CACHED_SPEC_HASH, slim};
pub use self::context::{Context, FIELD_MANAGER};
pub use self::policies::engine_policy;
pub use self::reconcile::{error_policy, reconcile, reconcile_cached};
pub use self::term::{TermConfig, run_term};
