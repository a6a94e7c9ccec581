//! komptroller's operator crate: the Kubernetes shell around the engine
//! (CRDs, controller, webhook, metrics) and the CLI's subcommands.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cmd;
pub mod controller;
pub mod crd;
pub mod error;
pub mod http;
pub mod http_auth;
pub mod kueue;
pub mod ledger_store;
pub mod metrics;
pub mod reports;
pub mod run;
pub mod telemetry;
pub mod webhook;
