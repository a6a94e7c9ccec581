//! The audit, signed by the auditor: `audit.json`, the RFC 8785 canonical
//! JSON of `{"apiVersion", "audit", "keyId", "kind", "signature"}` with the
//! Ed25519 signature (base64) over the same object without `signature`,
//! exactly as a cluster signs its `report.json` — so the same `openssl`
//! command and `komptroller verify` check it, and a second auditor can
//! re-run the audit on the same books and compare field by field.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{AuditReport, FindingKind, exit_code_for};
use crate::ledger::{CanonicalError, Sha256Digest, Sums, canonical_json};
use crate::report::{
    REPORT_API_VERSION, ReportParseError, SignatureError, check_signature, parse_canonical,
    sign_base64,
};
use crate::signing;

/// `kind` of the signed audit report.
pub const AUDIT_KIND: &str = "ComputeAuditReport";

/// The signed audit, exactly as `audit.json` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedAuditReport {
    pub api_version: String,
    pub audit: AuditReport,
    /// SHA-256 of the auditor's public key (SPKI DER).
    pub key_id: Sha256Digest,
    pub kind: String,
    /// Ed25519 signature (base64) over the canonical JSON without `signature`.
    pub signature: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UnsignedAudit<'a> {
    api_version: &'a str,
    audit: &'a AuditReport,
    key_id: &'a Sha256Digest,
    kind: &'a str,
}

impl AuditReport {
    /// Signs the audit with the auditor's key.
    pub fn sign(self, key: &SigningKey) -> Result<SignedAuditReport, CanonicalError> {
        let key_id = signing::key_id(&key.verifying_key());
        let message = canonical_json(&UnsignedAudit {
            api_version: REPORT_API_VERSION,
            audit: &self,
            key_id: &key_id,
            kind: AUDIT_KIND,
        })?;
        let signature = sign_base64(key, &message);
        Ok(SignedAuditReport {
            api_version: REPORT_API_VERSION.to_string(),
            audit: self,
            key_id,
            kind: AUDIT_KIND.to_string(),
            signature,
        })
    }
}

impl SignedAuditReport {
    /// The bytes the signature is over.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical_json(&UnsignedAudit {
            api_version: &self.api_version,
            audit: &self.audit,
            key_id: &self.key_id,
            kind: &self.kind,
        })
    }

    /// The content of `audit.json`.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical_json(self)
    }

    /// Checks the kind, the key id and the signature.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), SignatureError> {
        if self.api_version != REPORT_API_VERSION || self.kind != AUDIT_KIND {
            return Err(SignatureError::WrongKind(format!(
                "{} {} (an audit report is {REPORT_API_VERSION} {AUDIT_KIND})",
                self.api_version, self.kind
            )));
        }
        check_signature(&self.key_id, &self.signature, &self.signed_bytes()?, key)
    }
}

/// Parses `audit.json`, which must be exactly its canonical JSON.
pub fn parse_audit_report(bytes: &[u8]) -> Result<SignedAuditReport, ReportParseError> {
    parse_canonical(bytes)
}

/// Whether a JSON document is an audit report (by its `kind`), so one
/// `verify` command can take either kind of signed file.
pub fn is_audit_report(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct KindOnly {
        #[serde(default)]
        kind: Option<String>,
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    serde_json::from_slice::<KindOnly>(body).is_ok_and(|k| k.kind.as_deref() == Some(AUDIT_KIND))
}

/// Checks what an audit report states about itself: merged totals are
/// the sums of their clusters' shares, every crossing is past its
/// threshold with the deadline its notification period gives, the
/// crossings no cluster reported are exactly the union-crossing findings,
/// a cluster is verified exactly when it names no failure, and the counts
/// and exit code follow. Returns one line per check, or the first broken
/// field.
pub fn check_audit_consistency(a: &AuditReport) -> Result<Vec<String>, String> {
    let mut checks = Vec::new();
    for (i, c) in a.clusters.iter().enumerate() {
        if c.verified == c.failure.is_some() {
            return Err(format!(
                "field audit.clusters[{i}] ({}): verified is {} but failure is {}",
                c.name,
                c.verified,
                if c.failure.is_some() {
                    "given"
                } else {
                    "absent"
                }
            ));
        }
    }
    let mut unreported = 0u64;
    for (i, l) in a.lineages.iter().enumerate() {
        let mut sum = Sums::default();
        for s in &l.clusters {
            sum.charged += s.sums.charged;
            sum.consumed += s.sums.consumed;
            sum.accelerator_seconds += s.sums.accelerator_seconds;
            sum.admitted += s.sums.admitted;
        }
        if sum != l.total {
            return Err(format!(
                "field audit.lineages[{i}].total ({}): states charged {} FLOP, {} admitted, but its clusters sum to charged {} FLOP, {} admitted",
                l.lineage,
                l.total.charged.get(),
                l.total.admitted,
                sum.charged.get(),
                sum.admitted
            ));
        }
        for (j, x) in l.crossings.iter().enumerate() {
            let at = format!("field audit.lineages[{i}].crossings[{j}] ({})", l.lineage);
            if x.charged_at_crossing.get() <= x.threshold.get() {
                return Err(format!(
                    "{at}: chargedAtCrossing {} FLOP is not above threshold {} FLOP",
                    x.charged_at_crossing.get(),
                    x.threshold.get()
                ));
            }
            match crate::report::deadline(x.crossed_at, x.notify_within) {
                Ok(d) if d == x.notify_by => {}
                _ => {
                    return Err(format!(
                        "{at}: notifyBy {} is not crossedAt {} + notifyWithin {}",
                        x.notify_by, x.crossed_at, x.notify_within
                    ));
                }
            }
            if x.reported_by.is_empty() {
                unreported += 1;
                let found = a.findings.iter().any(
                    |f| matches!(&f.detail, FindingKind::UnionCrossing { crossing } if crossing == x),
                );
                if !found {
                    return Err(format!(
                        "{at}: no cluster reported it, but audit.findings holds no unionCrossing for it"
                    ));
                }
            }
        }
    }
    let crossing_findings = a
        .findings
        .iter()
        .filter(|f| matches!(f.detail, FindingKind::UnionCrossing { .. }))
        .count() as u64;
    if crossing_findings != unreported {
        return Err(format!(
            "field audit.findings: holds {crossing_findings} unionCrossing findings but the lineages hold {unreported} crossings no cluster reported"
        ));
    }
    checks.push(format!(
        "totals: {} merged lineages sum their clusters; {} crossings past their thresholds with their deadlines",
        a.lineages.len(),
        a.lineages.iter().map(|l| l.crossings.len()).sum::<usize>()
    ));
    let failed = a.clusters.iter().filter(|c| !c.verified).count() as u64;
    let s = &a.summary;
    let expected = super::AuditSummary {
        clusters: a.clusters.len() as u64,
        verified: a.clusters.len() as u64 - failed,
        failed,
        findings: a.findings.len() as u64,
        union_crossings: unreported,
        exit_code: exit_code_for(failed, a.findings.len() as u64),
    };
    if *s != expected {
        return Err(format!(
            "field audit.summary: states {} clusters, {} failed, {} findings, {} union crossings, exit code {}; the report's contents give {}, {}, {}, {}, {}",
            s.clusters,
            s.failed,
            s.findings,
            s.union_crossings,
            s.exit_code,
            expected.clusters,
            expected.failed,
            expected.findings,
            expected.union_crossings,
            expected.exit_code
        ));
    }
    checks.push(format!(
        "summary: {} clusters ({} failed), {} findings, exit code {}",
        s.clusters, s.failed, s.findings, s.exit_code
    ));
    Ok(checks)
}

/// The first field where a re-run of the audit differs from the signed one:
/// `(path, signed value, re-run value)`.
pub fn audit_difference(
    signed: &AuditReport,
    rerun: &AuditReport,
) -> Option<(String, String, String)> {
    let a = serde_json::to_value(signed).ok()?;
    let b = serde_json::to_value(rerun).ok()?;
    crate::report::first_difference("audit", &a, &b)
}
