//! The spec hash: the one hash of a TrainingJob's spec. The controller
//! shows it as `status.specHash` and compares resubmissions by it, a
//! ComputeApproval binds to it (`spec.specHash`), the admission webhook
//! checks approvals against it and `komptroller project` prints it.
//!
//! It covers the spec as read, defaults filled in (so `kubectl apply` with
//! or without `priority: 0` hashes alike): the model, the accelerator type
//! as written and its precision, replicas, maxDuration and the pod template.
//! The template is hashed as given; every caller hands it over in the form
//! the operator's typed read of the object gives (quantities as strings,
//! unknown fields dropped), which is what the controller sees.
//!
//! Before v0.2 the webhook also accepted the hash of the spec exactly as
//! stored; [`legacy_spec_hash`] keeps such approvals valid until
//! [`LEGACY_SPEC_HASH_ACCEPTED_UNTIL`].

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::duration::GoDuration;
use crate::job::{AcceleratorSpec, ModelSpec};
use crate::ledger::canonical_json;

/// What the spec hash covers. Serialized, it is the spec with its defaults
/// filled in: the keys and values a TrainingJob spec has.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HashedSpec<'a> {
    pub model: &'a ModelSpec,
    pub accelerator: &'a AcceleratorSpec,
    pub replicas: u32,
    pub max_duration: GoDuration,
    pub priority: i32,
    pub template: &'a Value,
}

/// The spec hash: SHA-256 (hex) of the RFC 8785 canonical JSON of
/// [`HashedSpec`]. A spec with no canonical form (a non-finite number in
/// the template) hashes as empty input.
pub fn spec_hash(spec: &HashedSpec<'_>) -> String {
    sha256_hex(&canonical_json(spec).unwrap_or_default())
}

/// The release from which approvals carrying a [`legacy_spec_hash`] are
/// refused. Remove [`legacy_spec_hash`], [`Binding::Legacy`] and their
/// callers in that release.
pub const LEGACY_SPEC_HASH_ACCEPTED_UNTIL: &str = "v0.3";

/// Legacy, accepted until [`LEGACY_SPEC_HASH_ACCEPTED_UNTIL`]: the hash of
/// the spec exactly as stored (no defaults filled in, quantities as
/// written), which the webhook accepted besides the spec hash before v0.2.
pub fn legacy_spec_hash(stored_spec: &Value) -> String {
    sha256_hex(&canonical_json(stored_spec).unwrap_or_default())
}

/// How an approval's `spec.specHash` relates to a job's current spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The spec hash of the current spec.
    Current,
    /// The [`legacy_spec_hash`] of the current spec: the approval binds to
    /// the current spec hash (until [`LEGACY_SPEC_HASH_ACCEPTED_UNTIL`]).
    Legacy,
}

/// Whether an approval carrying `hash` approves the spec whose spec hash is
/// `current` and which is stored as `stored_spec`; `None` when it approves
/// some other spec.
pub fn binding(hash: &str, current: &str, stored_spec: &Value) -> Option<Binding> {
    if hash == current {
        Some(Binding::Current)
    } else if hash == legacy_spec_hash(stored_spec) {
        Some(Binding::Legacy)
    } else {
        None
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::Precision;
    use crate::engine::content_hash;

    fn template() -> Value {
        json!({"spec": {"containers": [{"name": "t", "image": "x",
            "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}})
    }

    #[test]
    fn the_hash_is_that_of_the_spec_with_defaults_filled_in() {
        let template = template();
        let model = ModelSpec {
            name: Some("llama".into()),
            ..Default::default()
        };
        let accelerator = AcceleratorSpec {
            kind: "nvidia-h100-sxm".into(),
            precision: Precision::Bf16,
        };
        let hashed = HashedSpec {
            model: &model,
            accelerator: &accelerator,
            replicas: 4,
            max_duration: GoDuration::from_secs(72 * 3600),
            priority: 0,
            template: &template,
        };
        let as_json = json!({
            "model": {"name": "llama"},
            "accelerator": {"type": "nvidia-h100-sxm", "precision": "bf16"},
            "replicas": 4, "maxDuration": "3d", "priority": 0,
            "template": template,
        });
        // The value status.specHash had before this module existed.
        assert_eq!(spec_hash(&hashed), content_hash(&as_json));
        assert_eq!(
            spec_hash(&HashedSpec {
                replicas: 5,
                ..hashed
            })
            .len(),
            64
        );
        assert_ne!(
            spec_hash(&HashedSpec {
                replicas: 5,
                ..hashed
            }),
            spec_hash(&hashed)
        );
    }

    #[test]
    fn an_approval_binds_to_the_current_hash_or_the_legacy_one_of_the_same_spec() {
        let stored = json!({"accelerator": {"type": "nvidia-h100-sxm"}, "maxDuration": "72h",
            "template": {"spec": {"containers": [{"name": "t",
                "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}});
        let current = "c".repeat(64);
        let legacy = legacy_spec_hash(&stored);
        assert_ne!(legacy, current);
        assert_eq!(binding(&current, &current, &stored), Some(Binding::Current));
        assert_eq!(binding(&legacy, &current, &stored), Some(Binding::Legacy));
        let mut other = stored.clone();
        other["maxDuration"] = json!("96h");
        assert_eq!(binding(&legacy_spec_hash(&other), &current, &stored), None);
        assert_eq!(binding("", &current, &stored), None);
    }
}
