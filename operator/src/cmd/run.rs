//! `komptroller run`: the operator. Finds its cluster as kubectl does
//! (`KUBECONFIG`, then in-cluster); configured by flags and environment.
//! Bad configuration fails at start, naming the flag (exit code 2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use komptroller_engine::GoDuration;

use crate::run::{MetricsTls, RunConfig};
use crate::telemetry::LogFormat;

/// Run the operator.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Serves /metrics, /healthz, /readyz and /reports (HOST:PORT).
    #[arg(long, env = "KOMPTROLLER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Serve --metrics-addr over TLS, and /metrics and /reports only to
    /// callers whose bearer token the API server authenticates (TokenReview)
    /// and authorizes for GET on the path (SubjectAccessReview, RBAC
    /// nonResourceURLs). Without it: plain HTTP, for a port a NetworkPolicy guards.
    #[arg(long, env = "KOMPTROLLER_METRICS_SECURE")]
    pub metrics_secure: bool,

    /// With --metrics-secure: the serving certificate (PEM). None: a
    /// self-signed one is generated at start.
    #[arg(
        long,
        env = "KOMPTROLLER_METRICS_CERT_FILE",
        requires = "metrics_key_file"
    )]
    pub metrics_cert_file: Option<PathBuf>,

    /// With --metrics-secure: the serving certificate's private key (PEM).
    #[arg(
        long,
        env = "KOMPTROLLER_METRICS_KEY_FILE",
        requires = "metrics_cert_file"
    )]
    pub metrics_key_file: Option<PathBuf>,

    /// DNS names (or IPs) of the self-signed metrics certificate, comma
    /// separated (localhost and 127.0.0.1 are always included).
    #[arg(long, env = "KOMPTROLLER_METRICS_TLS_NAMES", value_delimiter = ',')]
    pub metrics_tls_names: Vec<String>,

    /// Namespace of the operator's own Lease, key Secret and public-key ConfigMap
    /// (default: POD_NAMESPACE, else the kubeconfig context's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(
        long,
        env = "KOMPTROLLER_LEASE_NAME",
        default_value = "komptroller-leader"
    )]
    pub lease_name: String,

    /// How long a lease is valid without renewal; a standby takes over within it.
    #[arg(long, env = "KOMPTROLLER_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: GoDuration,

    /// The leader renews this long before the lease expires (less than --lease-duration).
    #[arg(long, env = "KOMPTROLLER_LEASE_GRACE", default_value = "5s")]
    pub lease_grace: GoDuration,

    /// This replica's identity in the Lease (default: POD_NAME, else hostname plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How often a signed ComputeReport is written (when the ledger grew).
    #[arg(long, env = "KOMPTROLLER_REPORT_INTERVAL", default_value = "1h")]
    pub report_interval: GoDuration,

    /// Secret (in --namespace) holding the Ed25519 report signing key; generated when absent.
    #[arg(
        long,
        env = "KOMPTROLLER_KEY_SECRET",
        default_value = "komptroller-signing-key"
    )]
    pub key_secret: String,

    /// Log format: text for a terminal, json for the cluster.
    #[arg(
        long,
        env = "KOMPTROLLER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Maximum concurrent reconciles (0: unbounded).
    #[arg(long, env = "KOMPTROLLER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,

    /// Be Kueue's AdmissionCheck controller (`komptroller.dev/compute-governance`):
    /// govern the Workloads of every ClusterQueue that lists such a check.
    /// Needs Kueue's CRDs (kueue.x-k8s.io/v1beta2).
    #[arg(long, env = "KOMPTROLLER_KUEUE")]
    pub kueue: bool,

    // The admission webhook's flags.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

/// The admission webhooks: every replica serves the admission webhooks.
fn webhook_starter(args: crate::webhook::WebhookArgs) -> Option<crate::run::WebhookStarter> {
    Some(Box::new(move |client, stop| {
        Box::pin(async move {
            crate::webhook::serve(args, client, stop)
                .await
                .map_err(|e| e.to_string())
        })
    }))
}

impl RunArgs {
    /// Checks the flags; the error names the flag and says what is wrong.
    pub fn validate(&self) -> Result<RunConfig, String> {
        let whole_secs = |flag: &str, d: GoDuration| -> Result<u64, String> {
            let s = d.0.as_secs();
            if s == 0 || d.0.subsec_nanos() != 0 {
                return Err(format!(
                    "{flag} {d}: must be a whole number of seconds, at least 1s"
                ));
            }
            Ok(s)
        };
        let duration = whole_secs("--lease-duration", self.lease_duration)?;
        let grace = whole_secs("--lease-grace", self.lease_grace)?;
        if grace >= duration {
            return Err(format!(
                "--lease-grace {}: must be shorter than --lease-duration {}",
                self.lease_grace, self.lease_duration
            ));
        }
        if self.report_interval.0 < Duration::from_secs(1) {
            return Err(format!(
                "--report-interval {}: must be at least 1s",
                self.report_interval
            ));
        }
        let dns_name = |flag: &str, v: &str| -> Result<(), String> {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !v.starts_with(['-', '.'])
                && !v.ends_with(['-', '.']);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{flag} {v:?}: must be a Kubernetes object name (lowercase letters, digits, '-' and '.')"
                ))
            }
        };
        dns_name("--lease-name", &self.lease_name)?;
        dns_name("--key-secret", &self.key_secret)?;
        if let Some(ns) = &self.namespace {
            dns_name("--namespace (or POD_NAMESPACE)", ns)?;
        }
        let identity = match &self.identity {
            Some(i) if !i.is_empty() => i.clone(),
            _ => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "komptroller".into());
                let mut r = [0u8; 4];
                let _ = getrandom::fill(&mut r);
                format!("{host}-{}", hex::encode(r))
            }
        };
        if !self.metrics_secure
            && (self.metrics_cert_file.is_some() || !self.metrics_tls_names.is_empty())
        {
            return Err(
                "--metrics-cert-file / --metrics-tls-names: only apply with --metrics-secure (TLS on the metrics port)"
                    .into(),
            );
        }
        let metrics_secure = self.metrics_secure.then(|| {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            for n in &self.metrics_tls_names {
                let n = n.trim();
                if !n.is_empty() && !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
            }
            MetricsTls {
                files: self
                    .metrics_cert_file
                    .clone()
                    .zip(self.metrics_key_file.clone()),
                names,
            }
        });
        Ok(RunConfig {
            metrics_addr: self.metrics_addr,
            metrics_secure,
            namespace: self.namespace.clone().filter(|n| !n.is_empty()),
            lease_name: self.lease_name.clone(),
            lease_duration_secs: duration,
            lease_grace_secs: grace,
            identity,
            report_interval: self.report_interval.0,
            key_secret: self.key_secret.clone(),
            concurrency: self.concurrency,
            kueue: self.kueue,
        })
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    crate::telemetry::init(args.log_format);
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => return super::fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::fail(&format!("starting the async runtime: {e}")),
    };
    match runtime.block_on(crate::run::run(config, webhook_starter(args.webhook))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(crate::error::Error::Config(m)) => super::fail(&m),
        Err(e) => {
            tracing::error!(error = %e, "komptroller stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let mut v = vec!["komptroller"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .run
            .validate()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.lease_duration_secs, 15);
        assert_eq!(c.lease_grace_secs, 5);
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(
            parse(&["--lease-grace", "20s"])
                .unwrap_err()
                .contains("--lease-grace")
        );
        assert!(
            parse(&["--report-interval", "0s"])
                .unwrap_err()
                .contains("--report-interval")
        );
        assert!(
            parse(&["--lease-name", "Bad_Name"])
                .unwrap_err()
                .contains("--lease-name")
        );
        assert!(
            parse(&["--metrics-addr", "nope"])
                .unwrap_err()
                .contains("--metrics-addr")
        );
        assert!(
            parse(&["--log-format", "xml"])
                .unwrap_err()
                .contains("--log-format")
        );
        assert!(
            parse(&[
                "--metrics-cert-file",
                "c.pem",
                "--metrics-key-file",
                "k.pem"
            ])
            .unwrap_err()
            .contains("--metrics-secure")
        );
        assert!(
            parse(&["--metrics-cert-file", "c.pem", "--metrics-secure"])
                .unwrap_err()
                .contains("--metrics-key-file")
        );
        let secure = parse(&["--metrics-secure", "--metrics-tls-names", "svc,svc.ns.svc"])
            .unwrap()
            .metrics_secure
            .unwrap();
        assert_eq!(
            secure.names,
            ["localhost", "127.0.0.1", "svc", "svc.ns.svc"]
        );
        assert!(secure.files.is_none());
    }
}
