//! `kube-standin`: runs the API-server stand-in until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use e2e::standin::auth::Tokens;
use e2e::standin::{Authorization, Options, StandIn};

/// A stand-in for kube-apiserver, for end-to-end tests.
#[derive(Parser, Debug)]
#[command(name = "kube-standin", version)]
struct Cli {
    /// Where to write a kubeconfig whose default user is a cluster admin.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Static token file (`token,user,uid,"group1,group2"` per line).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// How requests are authorized.
    #[arg(long, value_enum, default_value = "AlwaysAllow")]
    authorization: Authorization,
    /// Simulated time runs N times faster (Job runtimes and deadlines).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Port to listen on (127.0.0.1); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5.0)]
    bookmark_interval: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tokens = match &cli.tokens {
        None => Tokens::default(),
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| Tokens::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("kube-standin: cannot read tokens from {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    if cli.time_scale.is_nan() || cli.time_scale <= 0.0 {
        eprintln!("kube-standin: --time-scale must be positive");
        return ExitCode::from(2);
    }
    let opts = Options {
        kubeconfig: Some(cli.kubeconfig.clone()),
        tokens,
        authorization: cli.authorization,
        time_scale: cli.time_scale,
        port: cli.port,
        bookmark_interval: Duration::from_secs_f64(cli.bookmark_interval.max(0.05)),
        ..Options::default()
    };
    let standin = match StandIn::start(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kube-standin: failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "kube-standin ready at {} (kubeconfig {})",
        standin.base_url,
        standin.kubeconfig.display()
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-standin: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    });
    standin.stop();
    ExitCode::SUCCESS
}
