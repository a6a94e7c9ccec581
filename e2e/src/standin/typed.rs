//! Unknown-field detection and type checking for built-in kinds, by a round
//! trip through the k8s-openapi types: what the typed struct does not keep is
//! an unknown field (pruned, warned about, or refused under
//! `fieldValidation=Strict`, as the real server does), and a value of the
//! wrong type is a decoding error (400).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

/// The object as the typed struct keeps it; `None` for kinds without a type here.
fn typed_roundtrip(group: &str, plural: &str, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, batch::v1 as batch,
        coordination::v1 as coord, core::v1 as core, events::v1 as events, policy::v1 as policy,
        rbac::v1 as rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    Some(match (group, plural) {
        ("", "namespaces") => roundtrip::<core::Namespace>(obj),
        ("", "configmaps") => roundtrip::<core::ConfigMap>(obj),
        ("", "secrets") => roundtrip::<core::Secret>(obj),
        ("", "serviceaccounts") => roundtrip::<core::ServiceAccount>(obj),
        ("", "events") => roundtrip::<core::Event>(obj),
        ("", "services") => roundtrip::<core::Service>(obj),
        ("", "pods") => roundtrip::<core::Pod>(obj),
        ("", "endpoints") => roundtrip::<core::Endpoints>(obj),
        ("apps", "deployments") => roundtrip::<apps::Deployment>(obj),
        ("batch", "jobs") => roundtrip::<batch::Job>(obj),
        ("events.k8s.io", "events") => roundtrip::<events::Event>(obj),
        ("coordination.k8s.io", "leases") => roundtrip::<coord::Lease>(obj),
        ("policy", "poddisruptionbudgets") => roundtrip::<policy::PodDisruptionBudget>(obj),
        ("rbac.authorization.k8s.io", "roles") => roundtrip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "rolebindings") => roundtrip::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "clusterroles") => roundtrip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            roundtrip::<rbac::ClusterRoleBinding>(obj)
        }
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations") => {
            roundtrip::<adm::ValidatingWebhookConfiguration>(obj)
        }
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => {
            roundtrip::<adm::MutatingWebhookConfiguration>(obj)
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            roundtrip::<apiext::CustomResourceDefinition>(obj)
        }
        _ => return None,
    })
}

fn prune(orig: &mut Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, kept) {
        (Value::Object(a), Value::Object(b)) => {
            let unknown: Vec<String> = a
                .iter()
                .filter(|(k, v)| !v.is_null() && !b.contains_key(*k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in unknown {
                a.remove(&k);
                out.push(if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                });
            }
            for (k, v) in a.iter_mut() {
                if let Some(bv) = b.get(k) {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    prune(v, bv, &sub, out);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter_mut().zip(b).enumerate() {
                prune(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Removes fields the built-in type does not have and returns their paths;
/// `Err` when the object does not decode into its type.
pub fn prune_unknown(group: &str, plural: &str, obj: &mut Value) -> Result<Vec<String>, String> {
    let Some(kept) = typed_roundtrip(group, plural, obj) else {
        return Ok(Vec::new());
    };
    let kept = kept?;
    let mut out = Vec::new();
    prune(obj, &kept, "", &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_of_a_job() {
        let mut job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "bogus": 1},
            "spec": {"activeDeadlineSeconds": 10, "paralelism": 2, "template": {"spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always", "cmd": ["a"]}]}}}});
        let unknown = prune_unknown("batch", "jobs", &mut job).unwrap();
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus",
                "spec.paralelism",
                "spec.template.spec.containers[0].cmd"
            ]
        );
        assert!(job["spec"].get("paralelism").is_none());
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 10);
        let mut bad = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"activeDeadlineSeconds": "ten"}});
        assert!(prune_unknown("batch", "jobs", &mut bad).is_err());
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        assert!(prune_unknown("", "configmaps", &mut cm).unwrap().is_empty());
    }
}
