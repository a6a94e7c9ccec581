//! Reading manifests as `kubectl apply` takes them: a `TrainingJob` (its
//! spec read by [`training_job::read_spec`], the one conversion the webhook
//! and the controller use too) and `ComputePolicy` documents. Kubernetes
//! types stay out: the pod template is walked as plain JSON, so the engine
//! and the CLI need no k8s crates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::Catalog;
use crate::job::{JobId, JobRequest, Principal};
use crate::policy::{ComputePolicySpec, Policy};

pub mod training_job;

pub use training_job::{Problem, Reading, Severity, read_spec};

pub const API_VERSION: &str = "komptroller.dev/v1alpha1";
/// Annotation the mutating webhook stamps with the authenticated submitter.
pub const SUBMITTED_BY: &str = "komptroller.dev/submitted-by";

/// A manifest problem: where, what, and what would be right.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ManifestError {
    /// The file (or object) the problem is in.
    pub source_name: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputePolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ComputePolicySpec,
}

fn err(source_name: &str, message: impl Into<String>) -> ManifestError {
    ManifestError {
        source_name: source_name.to_string(),
        message: message.into(),
    }
}

fn check_kind(
    source_name: &str,
    api_version: &str,
    kind: &str,
    want: &str,
) -> Result<(), ManifestError> {
    if kind != want {
        return Err(err(
            source_name,
            format!("kind: expected {want}, got {kind:?}"),
        ));
    }
    if api_version != API_VERSION {
        return Err(err(
            source_name,
            format!("apiVersion: expected {API_VERSION}, got {api_version:?}"),
        ));
    }
    Ok(())
}

/// A YAML error in the user's terms: what is wrong and where ("unexpected
/// end of file at line 3, column 1"), without a snippet.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let formatter = serde_saphyr::UserMessageFormatter;
    let options = serde_saphyr::render_options! {
        formatter: &formatter,
        snippets: serde_saphyr::SnippetMode::Off,
    };
    e.render_with_options(options)
}

/// A document that is not a manifest of `kind`, and what it is instead.
fn not_a_manifest(kind: &str, found: &str) -> String {
    format!(
        "not a {kind} manifest: expected a mapping of apiVersion ({API_VERSION}), kind ({kind}), metadata and spec; found {found}"
    )
}

/// Why YAML could not be read as documents: not YAML at all, or YAML whose
/// keys are not all field names (`: : :` has empty ones; `valid_yaml`).
fn unreadable(kind: &str, e: &serde_saphyr::Error, valid_yaml: bool) -> String {
    if valid_yaml {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        not_a_manifest(kind, &format!("a key that is not a field name{at}"))
    } else {
        format!("not valid YAML: {}", yaml_error(e))
    }
}

/// The manifest's problems as one message: the problem itself when there is
/// one, else a count and one line per problem.
fn problems_message(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  * ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

/// A string field of `metadata`, or a problem when it is not a string.
fn meta_string<'a>(
    metadata: Option<&'a serde_json::Map<String, Value>>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a str> {
    match metadata?.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            problems.push(Problem::new(
                format!("metadata.{key}"),
                training_job::short(v),
                "must be a string",
            ));
            None
        }
    }
}

/// Reads one TrainingJob manifest into the engine's request, or lists every
/// problem it has (the same problems the admission webhook denies).
pub fn read_training_job(text: &str, catalog: &Catalog) -> Result<JobRequest, Vec<Problem>> {
    let whole = |rule: String| vec![Problem::new("", "", rule)];
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        whole(unreadable(
            "TrainingJob",
            &e,
            serde_saphyr::from_str::<serde::de::IgnoredAny>(text).is_ok(),
        ))
    })?;
    let Some(obj) = doc.as_object() else {
        return Err(whole(not_a_manifest(
            "TrainingJob",
            &training_job::describe(&doc),
        )));
    };
    let mut problems = Vec::new();
    let kind = obj.get("kind").filter(|v| !v.is_null());
    if kind != Some(&Value::from("TrainingJob")) {
        // Anything else is another document altogether: its fields would only be noise.
        return Err(vec![Problem::new(
            "kind",
            kind.map_or_else(|| "(missing)".to_string(), training_job::short),
            "must be TrainingJob (ComputePolicy files go in --policy FILE)",
        )]);
    }
    let api_version = obj.get("apiVersion").filter(|v| !v.is_null());
    if api_version != Some(&Value::from(API_VERSION)) {
        problems.push(Problem::new(
            "apiVersion",
            api_version.map_or_else(|| "(missing)".to_string(), training_job::short),
            format!("must be {API_VERSION}"),
        ));
    }
    let metadata = match obj.get("metadata") {
        Some(Value::Object(m)) => Some(m),
        None | Some(Value::Null) => None,
        Some(v) => {
            problems.push(Problem::new(
                "metadata",
                training_job::short(v),
                "must be an object with name and namespace",
            ));
            None
        }
    };
    let name = meta_string(metadata, "name", &mut problems).unwrap_or_default();
    if name.is_empty() && !problems.iter().any(|p| p.field == "metadata.name") {
        problems.push(Problem::new(
            "metadata.name",
            "(missing)",
            "a TrainingJob needs a name",
        ));
    }
    let id = JobId {
        namespace: meta_string(metadata, "namespace", &mut problems)
            .unwrap_or("default")
            .to_string(),
        name: name.to_string(),
        uid: meta_string(metadata, "uid", &mut problems)
            .unwrap_or_default()
            .to_string(),
    };
    let submitter = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(SUBMITTED_BY))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Principal>(s).ok());
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match read_spec(id, spec, catalog).for_submission() {
        Ok(mut req) if problems.is_empty() => {
            req.submitter = submitter;
            Ok(req)
        }
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more);
            Err(problems)
        }
    }
}

/// Parses one TrainingJob manifest; the error lists every problem.
pub fn parse_training_job(
    text: &str,
    catalog: &Catalog,
    source_name: &str,
) -> Result<JobRequest, ManifestError> {
    read_training_job(text, catalog).map_err(|p| err(source_name, problems_message(&p)))
}

/// Parses one or more ComputePolicy documents and validates each.
pub fn parse_policies(text: &str, source_name: &str) -> Result<Vec<Policy>, ManifestError> {
    // Read as plain documents first, so that what is not a manifest at all
    // is said in those terms rather than a field's.
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let valid_yaml = serde_saphyr::from_multiple::<serde::de::IgnoredAny>(text).is_ok();
        err(source_name, unreadable("ComputePolicy", &e, valid_yaml))
    })?;
    if let Some(v) = values.iter().find(|v| !v.is_object()) {
        return Err(err(
            source_name,
            not_a_manifest("ComputePolicy", &training_job::describe(v)),
        ));
    }
    let docs: Vec<ComputePolicyDoc> =
        serde_saphyr::from_multiple(text).map_err(|e| err(source_name, yaml_error(&e)))?;
    let mut out = Vec::new();
    for d in docs {
        check_kind(source_name, &d.api_version, &d.kind, "ComputePolicy")?;
        if d.metadata.name.is_empty() {
            return Err(err(source_name, "metadata.name: missing"));
        }
        d.spec
            .validate(&d.metadata.name)
            .map_err(|e| err(source_name, e.to_string()))?;
        out.push(Policy {
            name: d.metadata.name,
            spec: d.spec,
        });
    }
    if out.is_empty() {
        return Err(err(source_name, "no ComputePolicy document found"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: komptroller.dev/v1alpha1
kind: TrainingJob
metadata:
  name: llama-ft
  namespace: research
  annotations:
    komptroller.dev/submitted-by: '{"user":"alice","groups":["ml"]}'
spec:
  model: {name: llama-chat, parameters: 7.0e10, tokens: 1.0e10}
  accelerator: {type: nvidia-h100-sxm, precision: bf16}
  replicas: 4
  maxDuration: 72h
  template:
    spec:
      containers:
      - name: trainer
        image: x
        resources: {limits: {nvidia.com/gpu: 8}}
"#;

    fn message(text: &str) -> String {
        parse_training_job(text, &Catalog::builtin(), "job.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_manifest_reads_into_the_request() {
        let req = parse_training_job(GOOD, &Catalog::builtin(), "job.yaml").unwrap();
        assert_eq!(req.id.to_string(), "research/llama-ft");
        assert_eq!(req.count, 32);
        assert_eq!(req.model.parameters, Some(7.0e10));
        assert_eq!(req.submitter.map(|p| p.user).as_deref(), Some("alice"));
    }

    #[test]
    fn the_namespace_defaults_to_default() {
        let text = GOOD.replace("  namespace: research\n", "");
        let req = parse_training_job(&text, &Catalog::builtin(), "job.yaml").unwrap();
        assert_eq!(req.id.namespace, "default");
    }

    #[test]
    fn a_file_that_is_no_manifest_says_what_is_expected() {
        for (text, found) in [
            (
                ": : :",
                "a key that is not a field name at line 1, column 1",
            ),
            ("", "an empty document"),
            ("- a\n- b", "a list"),
            ("hello", "the value \"hello\""),
        ] {
            assert_eq!(
                message(text),
                format!(
                    "job.yaml: not a TrainingJob manifest: expected a mapping of apiVersion (komptroller.dev/v1alpha1), kind (TrainingJob), metadata and spec; found {found}"
                ),
                "{text:?}"
            );
        }
        assert_eq!(
            message("spec: {}"),
            "job.yaml: kind (missing): must be TrainingJob (ComputePolicy files go in --policy FILE)"
        );
    }

    #[test]
    fn yaml_syntax_errors_say_where() {
        let m = message("kind: TrainingJob\nspec: {accelerator: {type: x\n");
        assert!(m.starts_with("job.yaml: not valid YAML: "), "{m}");
        assert!(m.contains("line") && m.contains("column"), "{m}");
        assert!(!m.contains("error"), "{m}");
    }

    #[test]
    fn the_kind_and_api_version_are_checked() {
        assert_eq!(
            message(&GOOD.replace("kind: TrainingJob", "kind: ComputePolicy")),
            "job.yaml: kind \"ComputePolicy\": must be TrainingJob (ComputePolicy files go in --policy FILE)"
        );
        assert_eq!(
            message(&GOOD.replace("komptroller.dev/v1alpha1", "batch/v1")),
            "job.yaml: apiVersion \"batch/v1\": must be komptroller.dev/v1alpha1"
        );
        assert_eq!(
            message(&GOOD.replace("  name: llama-ft\n", "")),
            "job.yaml: metadata.name (missing): a TrainingJob needs a name"
        );
        assert_eq!(
            message(&GOOD.replace("name: llama-ft", "name: [a]")),
            "job.yaml: metadata.name [\"a\"]: must be a string"
        );
    }

    #[test]
    fn every_problem_of_a_manifest_is_listed_once() {
        let text = GOOD
            .replace("precision: bf16", "precision: fp9")
            .replace("maxDuration: 72h", "maxDuration: -1h")
            .replace("nvidia.com/gpu: 8", "nvidia.com/gpu: eight")
            .replace("  name: llama-ft\n", "");
        assert_eq!(
            message(&text),
            "job.yaml: 4 problems:\n  \
             * metadata.name (missing): a TrainingJob needs a name\n  \
             * spec.accelerator.precision \"fp9\": unknown precision; use one of fp64, fp32, tf32, fp16, bf16, fp8, fp4\n  \
             * spec.maxDuration \"-1h\": cannot be negative; use a Go duration such as 72h\n  \
             * spec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"] \"eight\": is not a whole number of devices; write a count such as 8"
        );
    }

    #[test]
    fn what_the_job_alone_cannot_run_for_is_refused() {
        let m = message(&GOOD.replace("maxDuration: 72h", "maxDuration: 0s"));
        assert_eq!(
            m,
            "job.yaml: spec.maxDuration \"0s\": must be longer than 0s, e.g. 72h"
        );
    }

    #[test]
    fn a_policy_file_that_is_no_manifest_says_what_a_manifest_is() {
        for (text, found) in [
            (
                ": : :",
                "a key that is not a field name at line 1, column 1",
            ),
            ("- a", "a list"),
        ] {
            assert_eq!(
                parse_policies(text, "p.yaml").unwrap_err().to_string(),
                format!(
                    "p.yaml: not a ComputePolicy manifest: expected a mapping of apiVersion (komptroller.dev/v1alpha1), kind (ComputePolicy), metadata and spec; found {found}"
                )
            );
        }
    }

    #[test]
    fn policy_yaml_errors_say_where_without_saying_error() {
        let m = parse_policies("kind: [ComputePolicy\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("p.yaml: "), "{m}");
        assert!(m.contains("line") && m.contains("column"), "{m}");
        assert!(!m.contains("error"), "{m}");
    }
}
