//! Pure mutations: identity stamps the operator trusts, taken from the
//! authenticated request (`userInfo`) and never from what the user wrote.
//!
//! - TrainingJob CREATE: `metadata.annotations["komptroller.dev/submitted-by"]`
//!   = `{"user": …, "groups": [...]}`; a user-supplied value is refused. On
//!   UPDATE a stamp dropped by the client (server-side apply drops fields the
//!   applier does not list) is put back; a changed one is refused.
//! - ComputeApproval CREATE: `spec.approver` and `spec.approverGroups` = the
//!   requester; a different user-supplied value is forged and refused. A
//!   `spec.specHash` that is the legacy hash of the job's current spec
//!   (accepted until `LEGACY_SPEC_HASH_ACCEPTED_UNTIL`) is replaced by its
//!   spec hash, so the stored approval binds to the one hash the controller
//!   counts.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use kube::api::DynamicObject;
use kube::core::admission::Operation;
use serde_json::{Value, json};

use komptroller_engine::spec_hash::Binding;

use super::validate::{Denial, Requester, approval_binding, current_spec_hash};
use crate::crd::SUBMITTED_BY;

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| s.to_string())
}

fn annotation<'a>(o: &'a DynamicObject, key: &str) -> Option<&'a str> {
    o.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// The operations that set one annotation, creating the map when absent.
fn set_annotation(o: &DynamicObject, key: &str, value: &str) -> Vec<PatchOperation> {
    if o.metadata.annotations.is_some() {
        vec![add(&["metadata", "annotations", key], json!(value))]
    } else {
        vec![add(&["metadata", "annotations"], json!({ key: value }))]
    }
}

/// The stamp value for a requester.
pub fn submitter_stamp(requester: &Requester) -> String {
    serde_json::to_string(&requester.principal()).unwrap_or_default()
}

/// Stamps the submitter of a TrainingJob.
pub fn training_job(
    operation: &Operation,
    object: &DynamicObject,
    old: Option<&DynamicObject>,
    requester: &Requester,
) -> Result<Patch, Denial> {
    let field = format!("metadata.annotations[{SUBMITTED_BY}]");
    match operation {
        Operation::Create => {
            if let Some(v) = annotation(object, SUBMITTED_BY) {
                return Err(Denial::field(
                    field,
                    q(v),
                    format!(
                        "is stamped by komptroller from the authenticated requester ({}); a user-supplied value is refused — remove the annotation",
                        q(&requester.user)
                    ),
                ));
            }
            Ok(Patch(set_annotation(
                object,
                SUBMITTED_BY,
                &submitter_stamp(requester),
            )))
        }
        Operation::Update => {
            let before = old.and_then(|o| annotation(o, SUBMITTED_BY));
            let after = annotation(object, SUBMITTED_BY);
            match (before, after) {
                (Some(b), None) => Ok(Patch(set_annotation(object, SUBMITTED_BY, b))),
                (b, Some(a)) if b != Some(a) => Err(Denial::field(
                    field,
                    q(a),
                    format!(
                        "is stamped by komptroller at creation ({}) and cannot be set or changed",
                        b.map_or_else(|| "absent".to_string(), q)
                    ),
                )),
                _ => Ok(Patch(Vec::new())),
            }
        }
        Operation::Delete | Operation::Connect => Ok(Patch(Vec::new())),
    }
}

/// Stamps the approver of a ComputeApproval, and binds a legacy hash of
/// `job`'s current spec (the TrainingJob it names, when it could be read)
/// to the spec hash.
pub fn compute_approval(
    operation: &Operation,
    object: &DynamicObject,
    requester: &Requester,
    job: Option<&DynamicObject>,
) -> Result<Patch, Denial> {
    if *operation != Operation::Create {
        return Ok(Patch(Vec::new()));
    }
    let Some(spec) = object.data.get("spec").and_then(Value::as_object) else {
        return Ok(Patch(Vec::new())); // the schema and the validator refuse it
    };
    match spec.get("approver") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) if *a == requester.user => {}
        Some(other) => {
            return Err(Denial::field(
                "spec.approver",
                other.to_string(),
                format!(
                    "forged: the approver is the authenticated requester {}; leave spec.approver empty and komptroller stamps it",
                    q(&requester.user)
                ),
            ));
        }
    }
    let mut mine = requester.groups.clone();
    mine.sort();
    match spec.get("approverGroups") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let mut given: Option<Vec<String>> = serde_json::from_value(v.clone()).ok();
            if let Some(g) = given.as_mut() {
                g.sort();
            }
            if given.as_ref() != Some(&mine) && given.as_ref().is_none_or(|g| !g.is_empty()) {
                return Err(Denial::field(
                    "spec.approverGroups",
                    v.to_string(),
                    format!(
                        "forged: the approver's groups are stamped from the authenticated request ({}); leave them empty",
                        json!(requester.groups)
                    ),
                ));
            }
        }
    }
    let op = |key: &str, value: Value| {
        let path = PointerBuf::from_tokens(["spec", key]);
        if spec.contains_key(key) {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        }
    };
    let mut ops = vec![
        op("approver", json!(requester.user)),
        op("approverGroups", json!(requester.groups)),
    ];
    if let (Some(job), Some(Value::String(hash))) = (job, spec.get("specHash"))
        && approval_binding(job, hash) == Some(Binding::Legacy)
        && let Some(current) = current_spec_hash(job)
    {
        ops.push(op("specHash", json!(current)));
    }
    Ok(Patch(ops))
}
