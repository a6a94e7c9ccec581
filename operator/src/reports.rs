//! Periodic signed ComputeReports.
//!
//! The signing key is an Ed25519 key in a Secret (`--key-secret`, key
//! `signing-key.pem`, PKCS#8 PEM) in the operator's namespace, generated on
//! first start when absent; its public key and key id are published in the
//! ConfigMap `<secret>-public` so an auditor can verify without cluster
//! secrets. The leader writes one cluster-scoped `ComputeReport`, named
//! `report-<last sequence, 12 digits>`, per interval in which the ledger
//! grew, each chained to the previous one. Every replica serves them over
//! HTTP (`/reports`, `/reports/{name}`) from the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use komptroller_engine::policy::Policy;
use komptroller_engine::report::{Period, SignedReport, build_report, parse_report};
use komptroller_engine::signing;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::controller::{Context, FIELD_MANAGER};
use crate::crd::{ComputeReport, ComputeReportSpec};
use crate::error::{Error, Result};

/// Key of the private key in the Secret.
pub const PRIVATE_KEY: &str = "signing-key.pem";
/// Key of the public key in the ConfigMap.
pub const PUBLIC_KEY: &str = "public-key.pem";

/// Name of a report covering entries up to `last_seq`.
pub fn report_name(last_seq: u64) -> String {
    format!("report-{last_seq:012}")
}

/// Loads the signing key from the Secret, generating and storing it when
/// absent (a race between replicas is settled by the create: the loser
/// reads the winner's key), and publishes the public key.
pub async fn signing_key(client: &Client, namespace: &str, secret: &str) -> Result<SigningKey> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let key = loop {
        if let Some(s) = secrets.get_opt(secret).await? {
            let pem = s
                .data
                .as_ref()
                .and_then(|d| d.get(PRIVATE_KEY))
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
                .ok_or_else(|| {
                    Error::Report(format!(
                        "--key-secret {namespace}/{secret}: has no {PRIVATE_KEY} key"
                    ))
                })?;
            break signing::parse_private_key_pem(&pem).map_err(|e| {
                Error::Report(format!(
                    "--key-secret {namespace}/{secret}: {PRIVATE_KEY}: {e}"
                ))
            })?;
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Report(format!("randomness: {e}")))?;
        let key = signing::signing_key_from_seed(&seed);
        let pem = signing::private_key_pem(&key).map_err(|e| Error::Report(e.to_string()))?;
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(secret.into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "komptroller".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                PRIVATE_KEY.to_string(),
                ByteString(pem.into_bytes()),
            )])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &s).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{secret}"), "generated the report signing key");
                break key;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    };
    publish_public_key(client, namespace, secret, &key).await?;
    Ok(key)
}

async fn publish_public_key(
    client: &Client,
    namespace: &str,
    secret: &str,
    key: &SigningKey,
) -> Result<()> {
    let vk = key.verifying_key();
    let pem = signing::public_key_pem(&vk).map_err(|e| Error::Report(e.to_string()))?;
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": format!("{secret}-public"), "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "komptroller"}},
        "data": {PUBLIC_KEY: pem, "keyId": signing::key_id(&vk).to_hex()},
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &format!("{secret}-public"),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

/// The newest report in the cluster (by last sequence).
pub async fn latest(client: &Client) -> Result<Option<SignedReport>> {
    let api: Api<ComputeReport> = Api::all(client.clone());
    let newest = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .max_by_key(|r| r.spec.to_sequence);
    newest
        .map(|r| {
            parse_report(r.spec.report.as_bytes())
                .map_err(|e| Error::Report(format!("{}: {e}", r.name_any())))
        })
        .transpose()
}

/// Writes a report when the ledger grew since the previous one, every `interval`.
pub async fn report_loop(
    client: Client,
    ctx: Arc<Context>,
    key: SigningKey,
    interval: Duration,
) -> Result<()> {
    let mut previous = latest(&client).await?;
    loop {
        tokio::time::sleep(interval).await;
        match write_report(&client, &ctx, &key, previous.as_ref()).await {
            Ok(Some(r)) => previous = Some(r),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "writing the ComputeReport failed; retrying next interval")
            }
        }
    }
}

/// Builds, signs and stores one report over the persisted ledger.
pub async fn write_report(
    client: &Client,
    ctx: &Context,
    key: &SigningKey,
    previous: Option<&SignedReport>,
) -> Result<Option<SignedReport>> {
    let persisted = ctx.ledger.persisted();
    let from = previous.map_or(0, |p| p.report.range.to);
    if persisted == 0 || persisted <= from {
        return Ok(None);
    }
    // The ledger is read back from the cluster (what an auditor verifies),
    // rather than kept in memory between reports.
    let policies: Vec<Policy> = {
        let b = ctx
            .books
            .lock()
            .map_err(|_| Error::Report("books lock poisoned".into()))?;
        b.engine
            .policies()
            .map(|(name, spec)| Policy {
                name: name.to_string(),
                spec: spec.clone(),
            })
            .collect()
    };
    let entries = crate::ledger_store::read_persisted(client, persisted).await?;
    let first = usize::try_from(from).unwrap_or(0).min(entries.len());
    let mut period = Period::covering(&entries[first..]);
    if let Some(p) = previous {
        period.from = period
            .from
            .min(p.report.period.to)
            .max(p.report.period.from);
    }
    period.to = period.to.max(Timestamp::now()).max(period.from);
    let body = build_report(&entries, &policies, period, previous)
        .map_err(|e| Error::Report(e.to_string()))?;
    let signed = body.sign(key).map_err(|e| Error::Report(e.to_string()))?;
    let canonical = signed
        .canonical_bytes()
        .map_err(|e| Error::Report(e.to_string()))?;
    let last = signed.report.range.to.saturating_sub(1);
    let obj = ComputeReport {
        metadata: ObjectMeta {
            name: Some(report_name(last)),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "komptroller".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: ComputeReportSpec {
            from_sequence: signed.report.range.from,
            to_sequence: last,
            period_start: signed.report.period.from.to_string(),
            period_end: signed.report.period.to.to_string(),
            head_hash: signed.report.head_hash.to_hex(),
            merkle_root: signed.report.merkle_root.to_hex(),
            key_id: signed.key_id.to_hex(),
            report: String::from_utf8(canonical).map_err(|e| Error::Report(e.to_string()))?,
        },
    };
    let api: Api<ComputeReport> = Api::all(client.clone());
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Written by an earlier term or attempt: continue the chain from it.
            return latest(client).await;
        }
        Err(e) => return Err(e.into()),
    }
    ctx.metrics
        .last_report
        .set(Timestamp::now().as_millisecond() as f64 / 1000.0);
    tracing::info!(report = %report_name(last), from = signed.report.range.from, to = signed.report.range.to, "signed ComputeReport written");
    Ok(Some(signed))
}
