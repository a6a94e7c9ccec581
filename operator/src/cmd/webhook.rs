//! `komptroller webhook` (hidden): only the admission webhook server, for
//! e2e tests and for running the webhook apart from the controller. The
//! operator (`komptroller run`) serves the same webhook with the same flags.

use std::process::ExitCode;

use crate::webhook::{self, WebhookArgs};

/// Serve the admission webhooks only.
#[derive(clap::Args, Debug)]
pub struct WebhookCmdArgs {
    #[command(flatten)]
    pub webhook: WebhookArgs,
}

pub fn run(args: WebhookCmdArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    if let Err(e) = args.webhook.check() {
        return super::fail(&e.to_string());
    }
    if args.webhook.webhook_addr.is_none() {
        return super::fail("--webhook-addr: required by `komptroller webhook`");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::fail(&format!("starting the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                return super::fail(&format!(
                    "connecting to the cluster (KUBECONFIG, then in-cluster): {e}"
                ));
            }
        };
        match webhook::serve(args.webhook, client, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
