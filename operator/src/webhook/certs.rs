//! Serving certificates and the webhook configurations that trust them.
//!
//! Three modes (`--cert-mode`):
//! - **self-managed** (default): a CA and a serving certificate live in a
//!   Secret (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`, and `ca-previous.crt`
//!   during a CA rotation). Every replica reads it; the first to find it
//!   missing creates it (`create`: a racing replica gets 409 and re-reads),
//!   and the first to find it due for renewal replaces it with the
//!   resourceVersion it read (a racing replica gets 409 and re-reads). So all
//!   replicas converge on one certificate without leadership. The serving
//!   certificate is renewed `--webhook-cert-renew-before` its expiry; the CA
//!   lives ten certificate lifetimes and is rotated, with the previous CA kept
//!   in the caBundle, when it would not outlive a fresh serving certificate.
//! - **cert-manager**: the certificate and key are files (a mounted Secret
//!   that cert-manager renews); the configurations carry
//!   `cert-manager.io/inject-ca-from` and cainjector fills the caBundle.
//! - **provided**: certificate, key and CA bundle are files.
//!
//! In every mode the serving certificate is hot-reloaded: TLS handshakes ask
//! [`ReloadingResolver`] for the current key, which the maintenance loop
//! swaps when the Secret or the files change. The Validating and Mutating
//! webhook configurations are written by server-side apply with the fixed
//! field manager [`FIELD_MANAGER`], so replicas applying the same content
//! agree and drift is repaired on every check.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use base64ct::{Base64, Encoding};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};

use super::WebhookError;
use super::config::{CertMode, FailurePolicy, WebhookArgs};
use super::review::Route;

/// The field manager of everything the webhook writes.
pub const FIELD_MANAGER: &str = "komptroller-webhook";

const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_PREVIOUS: &str = "ca-previous.crt";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// A serving certificate and key (PEM) and the CA bundle that verifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    /// PEM bundle for the configurations' caBundle; `None` when another party writes it (cert-manager).
    pub ca_bundle: Option<String>,
}

/// The TLS certificate handed to each handshake; swapped on renewal without
/// restarting the listener.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingResolver {
    pub fn new(key: Arc<CertifiedKey>) -> ReloadingResolver {
        ReloadingResolver {
            current: RwLock::new(key),
        }
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the value is whole.
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls key from PEM certificate chain and private key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, WebhookError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| WebhookError::Tls(format!("serving certificate: {e}")))?;
    if chain.is_empty() {
        return Err(WebhookError::Tls(
            "serving certificate: no certificate in PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| WebhookError::Tls(format!("serving key: {e}")))?;
    let signer =
        any_supported_type(&key).map_err(|e| WebhookError::Tls(format!("serving key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    // A certificate rotated without its key (files replaced one at a time)
    // must not be served: every handshake would fail. The caller keeps the
    // previous pair and tries again at the next check.
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(e) => Err(WebhookError::Tls(format!(
            "the serving key does not belong to the serving certificate ({e}); a rotation that replaced one file but not yet the other?"
        ))),
    }
}

/// notAfter of the first certificate of a PEM text.
pub fn not_after(pem: &str) -> Option<Timestamp> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}

/// DNS names and IP addresses in the first certificate's subjectAltName.
pub fn subject_alt_names(pem: &str) -> Vec<String> {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => {
                        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                        out.push(IpAddr::from(a).to_string());
                    }
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        out.push(IpAddr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    out
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, WebhookError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|e| WebhookError::Tls(format!("time out of range: {e}")))
}

fn rcgen_err(e: rcgen::Error) -> WebhookError {
    WebhookError::Tls(format!("certificate generation: {e}"))
}

/// A fresh CA valid from `now` (back-dated five minutes for clock skew) for `validity_secs`.
pub fn generate_ca(now: Timestamp, validity_secs: i64) -> Result<(String, String), WebhookError> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(
        DnType::CommonName,
        format!("komptroller-webhook-ca-{}", now.as_second()),
    );
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - jiff::SignedDuration::from_mins(5))?;
    params.not_after = offset(now + jiff::SignedDuration::from_secs(validity_secs))?;
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by the CA.
pub fn issue_serving(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    now: Timestamp,
    validity_secs: i64,
) -> Result<(String, String), WebhookError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(rcgen_err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(rcgen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "komptroller-webhook".into()),
    );
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()
        .map_err(rcgen_err)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = offset(now - jiff::SignedDuration::from_mins(5))?;
    params.not_after = offset(now + jiff::SignedDuration::from_secs(validity_secs))?;
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The self-managed bundle as the Secret holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfManaged {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub previous_ca_pem: Option<String>,
}

impl SelfManaged {
    fn from_secret(s: &Secret) -> Option<SelfManaged> {
        let data = s.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.is_empty())
        };
        Some(SelfManaged {
            ca_pem: get(CA_CRT)?,
            ca_key_pem: get(CA_KEY)?,
            cert_pem: get(TLS_CRT)?,
            key_pem: get(TLS_KEY)?,
            previous_ca_pem: get(CA_PREVIOUS),
        })
    }

    fn secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut m = BTreeMap::new();
        m.insert(CA_CRT.into(), ByteString(self.ca_pem.clone().into_bytes()));
        m.insert(
            CA_KEY.into(),
            ByteString(self.ca_key_pem.clone().into_bytes()),
        );
        m.insert(
            TLS_CRT.into(),
            ByteString(self.cert_pem.clone().into_bytes()),
        );
        m.insert(
            TLS_KEY.into(),
            ByteString(self.key_pem.clone().into_bytes()),
        );
        if let Some(p) = &self.previous_ca_pem {
            m.insert(CA_PREVIOUS.into(), ByteString(p.clone().into_bytes()));
        }
        m
    }

    /// The caBundle: the current CA, and the previous one while certificates it signed may still be served.
    pub fn ca_bundle(&self, now: Timestamp) -> String {
        let mut b = self.ca_pem.clone();
        if let Some(p) = &self.previous_ca_pem
            && not_after(p).is_some_and(|t| t > now)
        {
            if !b.ends_with('\n') {
                b.push('\n');
            }
            b.push_str(p);
        }
        b
    }

    pub fn material(&self, now: Timestamp) -> ServingMaterial {
        ServingMaterial {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_bundle: Some(self.ca_bundle(now)),
        }
    }
}

/// Lifetimes of self-managed certificates.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub serving_secs: i64,
    pub renew_before_secs: i64,
}

impl Lifetimes {
    fn ca_secs(self) -> i64 {
        self.serving_secs.saturating_mul(10)
    }
}

/// Why a self-managed bundle must be renewed, if it must.
pub fn renewal_due(
    b: &SelfManaged,
    names: &[String],
    now: Timestamp,
    life: Lifetimes,
) -> Option<String> {
    let Some(ca_end) = not_after(&b.ca_pem) else {
        return Some("the CA certificate does not parse".into());
    };
    // A fresh serving certificate must not outlive its CA.
    if ca_end.as_second() - now.as_second() < life.serving_secs + life.renew_before_secs {
        return Some(format!("the CA expires at {ca_end}"));
    }
    let Some(end) = not_after(&b.cert_pem) else {
        return Some("the serving certificate does not parse".into());
    };
    if end.as_second() - now.as_second() <= life.renew_before_secs {
        return Some(format!("the serving certificate expires at {end}"));
    }
    let have = subject_alt_names(&b.cert_pem);
    if let Some(missing) = names.iter().find(|n| !have.contains(n)) {
        return Some(format!("the serving certificate does not name {missing}"));
    }
    if certified_key(&b.cert_pem, &b.key_pem).is_err() {
        return Some("the serving key does not load".into());
    }
    None
}

/// A renewed bundle: a new serving certificate, and a new CA when the CA is due.
pub fn renew(
    old: Option<&SelfManaged>,
    names: &[String],
    now: Timestamp,
    life: Lifetimes,
) -> Result<SelfManaged, WebhookError> {
    let ca_ok = old
        .and_then(|b| not_after(&b.ca_pem).map(|t| (b, t)))
        .filter(|(_, t)| {
            t.as_second() - now.as_second() >= life.serving_secs + life.renew_before_secs
        });
    let (ca_pem, ca_key_pem, previous_ca_pem) = match ca_ok {
        Some((b, _)) if KeyPair::from_pem(&b.ca_key_pem).is_ok() => (
            b.ca_pem.clone(),
            b.ca_key_pem.clone(),
            b.previous_ca_pem.clone(),
        ),
        _ => {
            let (c, k) = generate_ca(now, life.ca_secs())?;
            (c, k, old.map(|b| b.ca_pem.clone()))
        }
    };
    let (cert_pem, key_pem) = issue_serving(&ca_pem, &ca_key_pem, names, now, life.serving_secs)?;
    Ok(SelfManaged {
        ca_pem,
        ca_key_pem,
        cert_pem,
        key_pem,
        previous_ca_pem,
    })
}

/// The names the serving certificate must carry: the Service's DNS names,
/// the `--webhook-url` host and `--webhook-dns-name`s.
pub fn serving_names(args: &WebhookArgs) -> Vec<String> {
    let (svc, ns) = (&args.webhook_service, &args.webhook_namespace);
    let mut names = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
        svc.clone(),
    ];
    if let Some(host) = args
        .webhook_url
        .as_deref()
        .and_then(|u| u.parse::<axum::http::Uri>().ok())
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
    {
        names.insert(0, host);
    }
    names.extend(args.webhook_dns_names.iter().cloned());
    let mut seen = Vec::new();
    names.retain(|n| {
        let fresh = !seen.contains(n);
        seen.push(n.clone());
        fresh
    });
    names
}

/// Reads the Secret, creating or renewing it when needed; races with other
/// replicas end in everyone using the winner's bundle.
pub async fn ensure_secret(
    api: &Api<Secret>,
    name: &str,
    names: &[String],
    life: Lifetimes,
) -> Result<SelfManaged, WebhookError> {
    for _ in 0..5 {
        let now = Timestamp::now();
        match api.get_opt(name).await? {
            None => {
                let bundle = renew(None, names, now, life)?;
                let secret = secret_object(name, &bundle);
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(
                            secret = name,
                            "created the webhook CA and serving certificate"
                        );
                        return Ok(bundle);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(existing) => {
                let current = SelfManaged::from_secret(&existing);
                let due = match &current {
                    Some(b) => renewal_due(b, names, now, life),
                    None => Some("the Secret lacks a key".into()),
                };
                let Some(reason) = due else {
                    if let Some(b) = current {
                        return Ok(b);
                    }
                    continue;
                };
                let bundle = renew(current.as_ref(), names, now, life)?;
                let mut secret = secret_object(name, &bundle);
                secret.metadata.resource_version = existing.metadata.resource_version.clone();
                match api.replace(name, &PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(
                            secret = name,
                            reason,
                            "renewed the webhook serving certificate"
                        );
                        return Ok(bundle);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(WebhookError::Tls(format!(
        "Secret {name}: gave up after 5 conflicting writes by other replicas"
    )))
}

fn secret_object(name: &str, b: &SelfManaged) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "komptroller".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(b.secret_data()),
        ..Default::default()
    }
}

/// Serving material from files (cert-manager and provided modes).
pub fn read_files(args: &WebhookArgs) -> Result<ServingMaterial, WebhookError> {
    let read = |flag: &str, p: &Option<std::path::PathBuf>| -> Result<String, WebhookError> {
        let p = p
            .as_ref()
            .ok_or_else(|| WebhookError::Config(format!("--{flag} is required")))?;
        std::fs::read_to_string(p)
            .map_err(|e| WebhookError::Config(format!("--{flag} {}: {e}", p.display())))
    };
    let cert_pem = read("tls-cert-file", &args.tls_cert_file)?;
    let key_pem = read("tls-key-file", &args.tls_key_file)?;
    let ca_bundle = match args.cert_mode {
        CertMode::Provided if args.ca_file.is_some() => Some(read("ca-file", &args.ca_file)?),
        _ => None,
    };
    Ok(ServingMaterial {
        cert_pem,
        key_pem,
        ca_bundle,
    })
}

fn client_config(args: &WebhookArgs, route: Route, ca_bundle: Option<&str>) -> Value {
    let mut cc = match &args.webhook_url {
        Some(base) => json!({"url": format!("{}{}", base.trim_end_matches('/'), route.path())}),
        None => json!({"service": {
            "namespace": args.webhook_namespace,
            "name": args.webhook_service,
            "port": args.webhook_service_port,
            "path": route.path(),
        }}),
    };
    if let Some(ca) = ca_bundle {
        cc["caBundle"] = json!(Base64::encode_string(ca.as_bytes()));
    }
    cc
}

fn failure_policy(args: &WebhookArgs, route: Route) -> FailurePolicy {
    match route {
        Route::MutateTrainingJob | Route::ValidateTrainingJob => args.trainingjob_failure_policy,
        Route::MutateComputeApproval | Route::ValidateComputeApproval => {
            args.approval_failure_policy
        }
        Route::ValidateComputePolicy => args.policy_failure_policy,
    }
}

fn webhook(args: &WebhookArgs, route: Route, ca_bundle: Option<&str>) -> Value {
    let operations = match route {
        Route::MutateComputeApproval => json!(["CREATE"]),
        _ => json!(["CREATE", "UPDATE"]),
    };
    let scope = if route == Route::ValidateComputePolicy {
        "Cluster"
    } else {
        "Namespaced"
    };
    let verb = if route.mutating() {
        "mutate"
    } else {
        "validate"
    };
    let mut w = json!({
        "name": format!("{}.{verb}.{}", route.resource(), crate::crd::GROUP),
        "clientConfig": client_config(args, route, ca_bundle),
        "rules": [{
            "apiGroups": [crate::crd::GROUP],
            "apiVersions": [crate::crd::VERSION],
            "operations": operations,
            "resources": [route.resource()],
            "scope": scope,
        }],
        "failurePolicy": failure_policy(args, route).as_str(),
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": args.webhook_timeout_seconds,
        "admissionReviewVersions": ["v1"],
    });
    if route.mutating() {
        w["reinvocationPolicy"] = json!("Never");
    }
    w
}

/// The MutatingWebhookConfiguration and ValidatingWebhookConfiguration to apply.
pub fn configurations(args: &WebhookArgs, ca_bundle: Option<&str>) -> (Value, Value) {
    let mut metadata = json!({
        "name": args.webhook_configuration,
        "labels": {"app.kubernetes.io/managed-by": "komptroller"},
    });
    if args.cert_mode == CertMode::CertManager {
        metadata["annotations"] =
            json!({"cert-manager.io/inject-ca-from": args.cert_manager_certificate()});
    }
    let hooks = |mutating: bool| -> Vec<Value> {
        Route::ALL
            .into_iter()
            .filter(|r| r.mutating() == mutating)
            .map(|r| webhook(args, r, ca_bundle))
            .collect()
    };
    (
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": metadata,
            "webhooks": hooks(true),
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": metadata,
            "webhooks": hooks(false),
        }),
    )
}

/// Server-side applies both configurations (idempotent; safe when replicas race).
pub async fn apply_configurations(
    client: &Client,
    args: &WebhookArgs,
    ca_bundle: Option<&str>,
) -> Result<(), WebhookError> {
    let (mutating, validating) = configurations(args, ca_bundle);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    // Replicas applying at the same instant may race on the create; the
    // loser gets 409 and applies again over the winner's (identical) object.
    for attempt in 1..=5 {
        let r = async {
            m.patch(&args.webhook_configuration, &pp, &Patch::Apply(&mutating))
                .await?;
            v.patch(&args.webhook_configuration, &pp, &Patch::Apply(&validating))
                .await?;
            Ok::<(), kube::Error>(())
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => {
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where serving material comes from, per `--cert-mode`.
pub struct CertSource {
    args: WebhookArgs,
    client: Client,
}

impl CertSource {
    pub fn new(args: WebhookArgs, client: Client) -> CertSource {
        CertSource { args, client }
    }

    fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            serving_secs: self.args.webhook_cert_validity.as_millis() / 1000,
            renew_before_secs: self.args.webhook_cert_renew_before.as_millis() / 1000,
        }
    }

    /// The current serving material, creating or renewing it in self-managed mode.
    pub async fn load(&self) -> Result<ServingMaterial, WebhookError> {
        match self.args.cert_mode {
            CertMode::SelfManaged => {
                let api: Api<Secret> =
                    Api::namespaced(self.client.clone(), &self.args.webhook_namespace);
                let names = serving_names(&self.args);
                let b = ensure_secret(&api, &self.args.webhook_secret, &names, self.lifetimes())
                    .await?;
                Ok(b.material(Timestamp::now()))
            }
            CertMode::CertManager | CertMode::Provided => read_files(&self.args),
        }
    }

    /// One maintenance pass: reload the material if it changed, and apply the
    /// configurations. Returns the material now served.
    pub async fn refresh(
        &self,
        resolver: &ReloadingResolver,
        served: &ServingMaterial,
    ) -> Result<ServingMaterial, WebhookError> {
        let now = self.load().await?;
        if now.cert_pem != served.cert_pem || now.key_pem != served.key_pem {
            resolver.set(certified_key(&now.cert_pem, &now.key_pem)?);
            tracing::info!(
                not_after = %not_after(&now.cert_pem).map_or_else(|| "unknown".to_string(), |t| t.to_string()),
                "reloaded the webhook serving certificate"
            );
        }
        if self.args.manage_webhook_configurations {
            apply_configurations(&self.client, &self.args, now.ca_bundle.as_deref()).await?;
        }
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_managed_bundle_renews_before_expiry_and_rotates_the_ca() {
        let now = Timestamp::now();
        let names = vec![
            "127.0.0.1".to_string(),
            "komptroller-webhook.ns.svc".to_string(),
        ];
        let life = Lifetimes {
            serving_secs: 3600,
            renew_before_secs: 600,
        };
        let b = renew(None, &names, now, life).unwrap();
        assert_eq!(renewal_due(&b, &names, now, life), None);
        assert!(subject_alt_names(&b.cert_pem).contains(&"127.0.0.1".to_string()));
        certified_key(&b.cert_pem, &b.key_pem).unwrap();
        // Near the serving certificate's end: renew it, keep the CA.
        let later = now + jiff::SignedDuration::from_secs(3100);
        assert!(renewal_due(&b, &names, later, life).is_some());
        let r = renew(Some(&b), &names, later, life).unwrap();
        assert_eq!(r.ca_pem, b.ca_pem);
        assert_ne!(r.cert_pem, b.cert_pem);
        // A key that is not the certificate's is refused.
        let other = renew(None, &names, now, life).unwrap();
        let e = certified_key(&b.cert_pem, &other.key_pem).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        // A new name: renew.
        let more = vec!["127.0.0.1".to_string(), "other.example".to_string()];
        assert!(
            renewal_due(&b, &more, now, life)
                .unwrap()
                .contains("other.example")
        );
        // Near the CA's end: a new CA, the old one kept in the bundle.
        let ca_end = now + jiff::SignedDuration::from_secs(36000 - 3000);
        let r = renew(Some(&b), &names, ca_end, life).unwrap();
        assert_ne!(r.ca_pem, b.ca_pem);
        assert_eq!(r.previous_ca_pem.as_deref(), Some(b.ca_pem.as_str()));
        assert!(r.ca_bundle(ca_end).contains(&b.ca_pem));
    }
}
