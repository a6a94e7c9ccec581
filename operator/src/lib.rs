//! komptroller's operator crate: the Kubernetes shell around the engine
//! (CRDs, controller, webhook, metrics) and the CLI's subcommands.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cmd;
pub mod crd;
pub mod webhook;
