//! The webhook's flags, flattened into `komptroller run` (and the hidden
//! `komptroller webhook`). Every flag has an environment variable so the
//! chart can set it either way. [`WebhookArgs::check`] refuses bad
//! combinations at start, naming the flag.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};
use komptroller_engine::GoDuration;

use super::WebhookError;

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// komptroller creates a CA and a serving certificate in a Secret, writes
    /// the caBundle into its webhook configurations, and renews both.
    #[default]
    #[value(name = "self-managed")]
    SelfManaged,
    /// cert-manager issues the certificate (mounted as files) and its
    /// cainjector fills the caBundle (`cert-manager.io/inject-ca-from`).
    #[value(name = "cert-manager")]
    CertManager,
    /// The user provides the certificate, key and CA as files.
    #[value(name = "provided")]
    Provided,
}

/// A webhook's `failurePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailurePolicy {
    /// The API server refuses the request when the webhook cannot be reached.
    #[value(name = "Fail")]
    Fail,
    /// The API server lets the request through when the webhook cannot be reached.
    #[value(name = "Ignore")]
    Ignore,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// Admission webhook flags.
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Address the admission webhook listens on (HTTPS), e.g. 0.0.0.0:9443. Unset: no webhook.
    #[arg(long, env = "KOMPTROLLER_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,

    /// Base URL the API server calls when the operator runs outside the
    /// cluster, e.g. https://127.0.0.1:9443. Unset: the in-cluster Service.
    #[arg(long, env = "KOMPTROLLER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Service that fronts the webhook in the cluster.
    #[arg(
        long,
        env = "KOMPTROLLER_WEBHOOK_SERVICE",
        default_value = "komptroller-webhook"
    )]
    pub webhook_service: String,

    /// Port of that Service.
    #[arg(long, env = "KOMPTROLLER_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub webhook_service_port: u16,

    /// Namespace of the webhook's Service and certificate Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub webhook_namespace: String,

    /// Where the serving certificate comes from.
    #[arg(long, env = "KOMPTROLLER_CERT_MODE", value_enum, default_value_t = CertMode::SelfManaged)]
    pub cert_mode: CertMode,

    /// Secret holding the self-managed CA and serving certificate.
    #[arg(
        long,
        env = "KOMPTROLLER_WEBHOOK_SECRET",
        default_value = "komptroller-webhook-tls"
    )]
    pub webhook_secret: String,

    /// Serving certificate (PEM) for cert-manager and provided modes; re-read when it changes.
    #[arg(long, env = "KOMPTROLLER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving key (PEM) for cert-manager and provided modes; re-read when it changes.
    #[arg(long, env = "KOMPTROLLER_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// CA bundle (PEM) written into the webhook configurations in provided mode.
    #[arg(long, env = "KOMPTROLLER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// cert-manager Certificate (namespace/name) the cainjector copies the CA from.
    /// Default: <webhook-namespace>/<webhook-service>.
    #[arg(long, env = "KOMPTROLLER_CERT_MANAGER_CERTIFICATE")]
    pub cert_manager_certificate: Option<String>,

    /// Create and keep up to date the Validating/MutatingWebhookConfigurations.
    #[arg(long, env = "KOMPTROLLER_MANAGE_WEBHOOK_CONFIGURATIONS", default_value_t = true, action = ArgAction::Set)]
    pub manage_webhook_configurations: bool,

    /// Name of both webhook configurations.
    #[arg(
        long,
        env = "KOMPTROLLER_WEBHOOK_CONFIGURATION",
        default_value = "komptroller"
    )]
    pub webhook_configuration: String,

    /// failurePolicy of the TrainingJob webhooks.
    #[arg(long, env = "KOMPTROLLER_TRAININGJOB_FAILURE_POLICY", value_enum, default_value_t = FailurePolicy::Fail)]
    pub trainingjob_failure_policy: FailurePolicy,

    /// failurePolicy of the ComputeApproval webhooks.
    #[arg(long, env = "KOMPTROLLER_APPROVAL_FAILURE_POLICY", value_enum, default_value_t = FailurePolicy::Fail)]
    pub approval_failure_policy: FailurePolicy,

    /// failurePolicy of the ComputePolicy webhook (Ignore: the operator also refuses invalid policies, and admins can fix policies while the webhook is down).
    #[arg(long, env = "KOMPTROLLER_POLICY_FAILURE_POLICY", value_enum, default_value_t = FailurePolicy::Ignore)]
    pub policy_failure_policy: FailurePolicy,

    /// timeoutSeconds of every webhook (1–30).
    #[arg(long, env = "KOMPTROLLER_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 5)]
    pub webhook_timeout_seconds: u8,

    /// Lifetime of a self-managed serving certificate.
    #[arg(
        long,
        env = "KOMPTROLLER_WEBHOOK_CERT_VALIDITY",
        default_value = "8760h"
    )]
    pub webhook_cert_validity: GoDuration,

    /// Renew the self-managed serving certificate this long before it expires.
    #[arg(
        long,
        env = "KOMPTROLLER_WEBHOOK_CERT_RENEW_BEFORE",
        default_value = "720h"
    )]
    pub webhook_cert_renew_before: GoDuration,

    /// How often certificates, the Secret and the webhook configurations are checked.
    #[arg(
        long,
        env = "KOMPTROLLER_WEBHOOK_CERT_CHECK_INTERVAL",
        default_value = "1m"
    )]
    pub webhook_cert_check_interval: GoDuration,

    /// Extra DNS names or IP addresses for the self-managed serving certificate.
    #[arg(
        long = "webhook-dns-name",
        env = "KOMPTROLLER_WEBHOOK_DNS_NAMES",
        value_delimiter = ','
    )]
    pub webhook_dns_names: Vec<String>,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        WebhookArgs {
            webhook_addr: None,
            webhook_url: None,
            webhook_service: "komptroller-webhook".into(),
            webhook_service_port: 443,
            webhook_namespace: "default".into(),
            cert_mode: CertMode::SelfManaged,
            webhook_secret: "komptroller-webhook-tls".into(),
            tls_cert_file: None,
            tls_key_file: None,
            ca_file: None,
            cert_manager_certificate: None,
            manage_webhook_configurations: true,
            webhook_configuration: "komptroller".into(),
            trainingjob_failure_policy: FailurePolicy::Fail,
            approval_failure_policy: FailurePolicy::Fail,
            policy_failure_policy: FailurePolicy::Ignore,
            webhook_timeout_seconds: 5,
            webhook_cert_validity: GoDuration::from_secs(365 * 24 * 3600),
            webhook_cert_renew_before: GoDuration::from_secs(30 * 24 * 3600),
            webhook_cert_check_interval: GoDuration::from_secs(60),
            webhook_dns_names: Vec::new(),
        }
    }
}

impl WebhookArgs {
    /// Refuses bad combinations, naming the flag.
    pub fn check(&self) -> Result<(), WebhookError> {
        let bad =
            |flag: &str, message: String| Err(WebhookError::Config(format!("--{flag}: {message}")));
        if !(1..=30).contains(&self.webhook_timeout_seconds) {
            return bad(
                "webhook-timeout-seconds",
                format!(
                    "{} is outside 1–30 (the API server's limits)",
                    self.webhook_timeout_seconds
                ),
            );
        }
        if let Some(u) = &self.webhook_url {
            match u.parse::<axum::http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
                _ => {
                    return bad(
                        "webhook-url",
                        format!("{u:?} is not an https URL such as https://127.0.0.1:9443"),
                    );
                }
            }
        }
        match self.cert_mode {
            CertMode::SelfManaged => {
                if self.webhook_cert_validity.is_zero() {
                    return bad("webhook-cert-validity", "must be longer than 0s".into());
                }
                if self.webhook_cert_renew_before.as_millis()
                    >= self.webhook_cert_validity.as_millis()
                {
                    return bad(
                        "webhook-cert-renew-before",
                        format!(
                            "{} must be shorter than --webhook-cert-validity {}",
                            self.webhook_cert_renew_before, self.webhook_cert_validity
                        ),
                    );
                }
            }
            CertMode::CertManager | CertMode::Provided => {
                if self.tls_cert_file.is_none() {
                    return bad(
                        "tls-cert-file",
                        "is required with --cert-mode cert-manager or provided".into(),
                    );
                }
                if self.tls_key_file.is_none() {
                    return bad(
                        "tls-key-file",
                        "is required with --cert-mode cert-manager or provided".into(),
                    );
                }
                if self.cert_mode == CertMode::Provided
                    && self.manage_webhook_configurations
                    && self.ca_file.is_none()
                {
                    return bad(
                        "ca-file",
                        "is required with --cert-mode provided while komptroller manages its webhook configurations".into(),
                    );
                }
            }
        }
        if self.webhook_cert_check_interval.is_zero() {
            return bad(
                "webhook-cert-check-interval",
                "must be longer than 0s".into(),
            );
        }
        Ok(())
    }

    /// The namespace/name cert-manager's cainjector reads.
    pub fn cert_manager_certificate(&self) -> String {
        self.cert_manager_certificate
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.webhook_namespace, self.webhook_service))
    }
}
