//! The one komptroller binary: the operator (`run`) and its offline tools.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use komptroller::cmd;

/// mimalloc (without transparent huge pages) instead of glibc malloc:
/// allocation was a quarter of `simulate`'s time, and `run` uses less CPU per
/// decision with no more peak memory (BENCHMARKS.md "Engine", "Operator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// komptroller governs AI training by the compute it spends.
#[derive(Parser, Debug)]
#[command(name = "komptroller", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: controller, leader election, metrics, reports, webhook.
    Run(Box<cmd::run::RunArgs>),
    /// Project one TrainingJob's compute and decide it offline.
    Project(cmd::project::ProjectArgs),
    /// Replay a trace of submissions through the engine on a virtual clock.
    Simulate(cmd::simulate::SimulateArgs),
    /// Verify a signed compute report (and optionally its ledger) offline.
    Verify(cmd::verify::VerifyArgs),
    /// Audit many clusters' signed books under a trust file and merge what they show.
    Audit(cmd::audit::AuditArgs),
    /// Generate an Ed25519 signing key pair (PKCS#8 / SPKI PEM).
    Keygen(cmd::keygen::KeygenArgs),
    /// Render a report from a ledger as JSON, CSV or Markdown.
    Report(cmd::report::ReportArgs),
    /// Write a reproducible synthetic trace (JSON Lines) for benchmarks.
    GenTrace(cmd::simulate::GenTraceArgs),
    /// Print or write the CustomResourceDefinitions generated from the types.
    Crd(cmd::crd::CrdArgs),
    /// Serve only the admission webhooks (e2e tests; `run` serves them too).
    #[command(hide = true)]
    Webhook(cmd::webhook::WebhookCmdArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => cmd::run::run(*a),
        Command::Project(a) => cmd::project::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Crd(a) => cmd::crd::run(a),
        Command::GenTrace(a) => cmd::simulate::gen_trace(a),
        Command::Webhook(a) => cmd::webhook::run(a),
    }
}
