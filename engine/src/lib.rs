//! The komptroller engine: a pure, synchronous core that turns training-job
//! specifications and compute policies into decisions.
//!
//! Nothing here knows about Kubernetes, async runtimes or the wall clock:
//! time is always an argument. The operator, the admission webhook,
//! `komptroller simulate` and the tests all drive this same code, so a
//! what-if simulation is a faithful preview of the live operator.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod catalog;
pub mod decision;
pub mod digest;
pub mod duration;
pub mod engine;
pub mod job;
pub mod ledger;
pub mod manifest;
pub mod merkle;
pub mod policy;
pub mod projection;
pub mod report;
pub mod signing;
pub mod simulate;
pub mod spec_hash;
pub mod units;

pub use duration::GoDuration;
pub use units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds};
