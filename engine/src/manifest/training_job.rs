//! A TrainingJob's `spec` read into the engine's [`JobRequest`]: the one
//! reading `komptroller project`, the admission webhook and the controller
//! share. The spec is walked as plain JSON (the pod template too), so the
//! engine needs no Kubernetes types, and every problem is collected, each
//! naming the field, the value found and what is allowed, so one pass shows
//! the user everything to fix (as `kubectl`'s validation does).

use std::fmt;

use serde_json::{Map, Value};

use crate::catalog::{AcceleratorEntry, Catalog, Precision};
use crate::duration::{DURATION_SYNTAX, GoDuration};
use crate::job::{AcceleratorSpec, JobId, JobRequest, ModelSpec};
use crate::spec_hash::{HashedSpec, spec_hash};

/// The fields of a TrainingJob spec.
const SPEC_FIELDS: [&str; 6] = [
    "model",
    "accelerator",
    "replicas",
    "maxDuration",
    "priority",
    "template",
];
const ACCELERATOR_FIELDS: [&str; 2] = ["type", "precision"];
const MODEL_FIELDS: [&str; 4] = ["name", "baseModel", "parameters", "tokens"];

/// What a problem leaves of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The spec cannot be read into a request.
    Unreadable,
    /// A request can be built, but the engine rejects it for this alone
    /// (no accelerator, a zero maxDuration, a precision the accelerator has
    /// no peak for), whatever the policies and the ledger hold.
    NeverRuns,
}

/// One thing wrong with a TrainingJob: the field, the value found and the
/// rule broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `spec.accelerator.type`.
    pub field: String,
    /// The value found, as the user wrote it (strings JSON-quoted); empty
    /// when there is nothing to show.
    pub value: String,
    /// The rule broken and what would be right.
    pub rule: String,
    pub severity: Severity,
}

impl Problem {
    /// A problem that leaves nothing to decide ([`Severity::Unreadable`]).
    pub fn new(
        field: impl Into<String>,
        value: impl Into<String>,
        rule: impl Into<String>,
    ) -> Problem {
        Problem {
            field: field.into(),
            value: value.into(),
            rule: rule.into(),
            severity: Severity::Unreadable,
        }
    }

    fn never_runs(mut self) -> Problem {
        self.severity = Severity::NeverRuns;
        self
    }
}

impl fmt::Display for Problem {
    /// "`field` `value`: `rule`", "`field`: `rule`" without a value, the
    /// rule alone for the document as a whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.rule)
        } else if self.value.is_empty() {
            write!(f, "{}: {}", self.field, self.rule)
        } else {
            write!(f, "{} {}: {}", self.field, self.value, self.rule)
        }
    }
}

/// The outcome of reading a spec: the request, when one could be built, and
/// every problem found.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// `None` exactly when a problem is [`Severity::Unreadable`].
    request: Option<JobRequest>,
    pub problems: Vec<Problem>,
}

impl Reading {
    /// For a submission (`kubectl apply` through the webhook, `komptroller
    /// project`): the request only when nothing is wrong.
    pub fn for_submission(self) -> Result<JobRequest, Vec<Problem>> {
        match self.request {
            Some(r) if self.problems.is_empty() => Ok(r),
            _ => Err(self.problems),
        }
    }

    /// For a decision (the controller): the request whenever the spec could
    /// be read; what it cannot run for is left to the engine, which rejects
    /// it with its own sentence.
    pub fn for_decision(self) -> Result<JobRequest, Vec<Problem>> {
        match self.request {
            Some(r) => Ok(r),
            None => Err(self.problems),
        }
    }
}

/// Quotes a string for a message.
pub(crate) fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| s.to_string())
}

/// A value for a message, cut to 120 characters.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        let mut end = 117;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

/// What a value is, for a document that is not a mapping.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "an empty document".to_string(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => format!("the value {}", short(v)),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

fn missing(v: Option<&Value>) -> String {
    v.map_or_else(|| "(missing)".to_string(), short)
}

/// The value of an optional field: absent and `null` alike are `None`.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn unknown_fields(
    obj: &Map<String, Value>,
    prefix: &str,
    known: &[&str],
    what: &str,
    problems: &mut Vec<Problem>,
) {
    for k in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        problems.push(Problem::new(
            format!("{prefix}.{k}"),
            "",
            format!("unknown field; {what} has {}", known.join(", ")),
        ));
    }
}

/// Reads a TrainingJob's `spec` (as JSON) into the engine's request for job
/// `id`, against `catalog` (the built-in one with the policies' additions).
/// The accelerator count is replicas × the template's limit of the
/// accelerator's own resource; the spec hash is that of the spec with its
/// defaults filled in. The submitter and the namespace labels are the
/// caller's to set.
pub fn read_spec(id: JobId, spec: &Value, catalog: &Catalog) -> Reading {
    let mut problems = Vec::new();
    let Some(obj) = spec.as_object() else {
        problems.push(Problem::new(
            "spec",
            missing(Some(spec).filter(|v| !v.is_null())),
            "must be an object with accelerator, maxDuration and template",
        ));
        return Reading {
            request: None,
            problems,
        };
    };
    unknown_fields(
        obj,
        "spec",
        &SPEC_FIELDS,
        "a TrainingJob spec",
        &mut problems,
    );
    let (kind, precision, entry) = accelerator(obj, catalog, &mut problems);
    let replicas = replicas(obj, &mut problems);
    let max_duration = max_duration(obj, &mut problems);
    let model = model(obj, &mut problems);
    let priority = priority(obj, &mut problems);
    let template = obj.get("template").unwrap_or(&Value::Null);
    let per_pod = accelerators_per_pod(
        template,
        entry.map(|e| e.resource_name.as_str()),
        &catalog.resource_names(),
        &mut problems,
    );
    let count = match (entry, replicas, per_pod) {
        (Some(entry), Some(replicas), Some(per_pod)) => {
            count(&entry.resource_name, replicas, per_pod, &mut problems)
        }
        _ => None,
    };
    let request = match (
        kind,
        precision,
        replicas,
        max_duration,
        model,
        priority,
        count,
    ) {
        (
            Some(kind),
            Some(precision),
            Some(replicas),
            Some(max_duration),
            Some(model),
            Some(priority),
            Some(count),
        ) if problems.iter().all(|p| p.severity == Severity::NeverRuns) => {
            let accelerator = AcceleratorSpec { kind, precision };
            let spec_hash = spec_hash(&HashedSpec {
                model: &model,
                accelerator: &accelerator,
                replicas,
                max_duration,
                priority,
                template,
            });
            Some(JobRequest {
                id,
                namespace_labels: Default::default(),
                model,
                accelerator,
                count,
                max_duration,
                priority,
                submitter: None,
                spec_hash,
            })
        }
        _ => None,
    };
    Reading { request, problems }
}

/// `spec.accelerator`: the type as written, the precision, and the catalog
/// entry the type names.
fn accelerator<'c>(
    obj: &Map<String, Value>,
    catalog: &'c Catalog,
    problems: &mut Vec<Problem>,
) -> (
    Option<String>,
    Option<Precision>,
    Option<&'c AcceleratorEntry>,
) {
    let accel = match present(obj, "accelerator") {
        None => None,
        Some(Value::Object(a)) => Some(a),
        Some(v) => {
            problems.push(Problem::new(
                "spec.accelerator",
                short(v),
                "must be an object such as {type: nvidia-h100-sxm, precision: bf16}",
            ));
            return (None, None, None);
        }
    };
    if let Some(a) = accel {
        unknown_fields(
            a,
            "spec.accelerator",
            &ACCELERATOR_FIELDS,
            "an accelerator",
            problems,
        );
    }
    let precision = match accel.and_then(|a| present(a, "precision")) {
        None => Some(Precision::default()),
        Some(Value::String(s)) => {
            let p = Precision::parse(s);
            if p.is_none() {
                problems.push(Problem::new(
                    "spec.accelerator.precision",
                    quote(s),
                    format!(
                        "unknown precision; use one of {}",
                        Precision::ALL.map(Precision::as_str).join(", ")
                    ),
                ));
            }
            p
        }
        Some(v) => {
            problems.push(Problem::new(
                "spec.accelerator.precision",
                short(v),
                "must be a string such as bf16",
            ));
            None
        }
    };
    let kind = match accel.and_then(|a| a.get("type")) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        other => {
            problems.push(Problem::new(
                "spec.accelerator.type",
                missing(other.filter(|v| !v.is_null())),
                "must name an accelerator of the catalog, e.g. nvidia-h100-sxm",
            ));
            return (None, precision, None);
        }
    };
    let Some(entry) = catalog.get(&kind) else {
        problems.push(Problem::new(
            "spec.accelerator.type",
            quote(&kind),
            format!(
                "unknown accelerator; the closest catalog keys are {} (a ComputePolicy's spec.accelerators can add one)",
                catalog.closest(&kind, 3).join(", ")
            ),
        ));
        return (Some(kind), precision, None);
    };
    if let Some(p) = precision
        && entry.peak(p).is_none()
    {
        problems.push(
            Problem::new(
                "spec.accelerator.precision",
                quote(p.as_str()),
                format!(
                    "{} has no published dense peak at {p}; it supports {}",
                    entry.name,
                    entry
                        .supported()
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .never_runs(),
        );
    }
    (Some(kind), precision, Some(entry))
}

fn replicas(obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<u32> {
    let Some(v) = present(obj, "replicas") else {
        return Some(1);
    };
    let n = v.as_u64().and_then(|n| u32::try_from(n).ok());
    if n.is_none() {
        problems.push(Problem::new(
            "spec.replicas",
            short(v),
            "must be a whole number from 1 to 4294967295",
        ));
    }
    n
}

fn max_duration(obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<GoDuration> {
    let d = match present(obj, "maxDuration") {
        Some(Value::String(s)) => match s.parse::<GoDuration>() {
            Ok(d) => d,
            Err(_) => {
                let rule = if s.trim_start().starts_with('-') {
                    "cannot be negative; use a Go duration such as 72h".to_string()
                } else {
                    format!("is not a duration; use {DURATION_SYNTAX}")
                };
                problems.push(Problem::new("spec.maxDuration", quote(s), rule));
                return None;
            }
        },
        other => {
            problems.push(Problem::new(
                "spec.maxDuration",
                missing(other),
                "must be a Go duration such as 72h",
            ));
            return None;
        }
    };
    if d.is_zero() {
        problems.push(
            Problem::new(
                "spec.maxDuration",
                quote(&d.to_string()),
                "must be longer than 0s, e.g. 72h",
            )
            .never_runs(),
        );
    }
    Some(d)
}

fn model(obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<ModelSpec> {
    let m = match present(obj, "model") {
        None => return Some(ModelSpec::default()),
        Some(Value::Object(m)) => m,
        Some(v) => {
            problems.push(Problem::new(
                "spec.model",
                short(v),
                "must be an object such as {name: llama-chat, parameters: 7e10, tokens: 1e12}",
            ));
            return None;
        }
    };
    let before = problems.len();
    unknown_fields(m, "spec.model", &MODEL_FIELDS, "a model", problems);
    let mut text = |key: &str| match present(m, key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            problems.push(Problem::new(
                format!("spec.model.{key}"),
                short(v),
                "must be a string naming a model lineage, e.g. llama-3-70b",
            ));
            None
        }
    };
    let (name, base_model) = (text("name"), text("baseModel"));
    let mut number = |key: &str| match present(m, key) {
        None => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(v) => {
            problems.push(Problem::new(
                format!("spec.model.{key}"),
                short(v),
                "must be a number such as 7e10",
            ));
            None
        }
    };
    let (parameters, tokens) = (number("parameters"), number("tokens"));
    (problems.len() == before).then_some(ModelSpec {
        name,
        base_model,
        parameters,
        tokens,
    })
}

fn priority(obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<i32> {
    let Some(v) = present(obj, "priority") else {
        return Some(0);
    };
    let n = v.as_i64().and_then(|n| i32::try_from(n).ok());
    if n.is_none() {
        problems.push(Problem::new(
            "spec.priority",
            short(v),
            "must be a 32-bit integer",
        ));
    }
    n
}

/// replicas × the per-pod limit, at least one and at most `u32::MAX`.
fn count(resource: &str, replicas: u32, per_pod: u64, problems: &mut Vec<Problem>) -> Option<u32> {
    let count = u64::from(replicas).saturating_mul(per_pod);
    let field = format!("spec.replicas × spec.template limits[{}]", quote(resource));
    if count == 0 {
        problems.push(
            Problem::new(
                field,
                format!("{replicas} × {per_pod} = 0"),
                format!(
                    "a training job needs at least one accelerator; set resources.limits[{}] on a container",
                    quote(resource)
                ),
            )
            .never_runs(),
        );
        return Some(0);
    }
    let n = u32::try_from(count).ok();
    if n.is_none() {
        problems.push(Problem::new(
            field,
            format!("{replicas} × {per_pod} = {count}"),
            "is more accelerators than komptroller counts (at most 4294967295)",
        ));
    }
    n
}

/// A Kubernetes resource quantity that is a whole number of devices ("8",
/// 8; "1k" and "0.5" are refused).
fn device_quantity(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Sums the limit of `resource` over the template's containers (`None` when
/// the template has a problem, each one added to `problems`). Other
/// accelerator resources the catalog knows, requested instead, are refused:
/// the count must come from the accelerator's own resource. With no
/// `resource` (the accelerator is unknown) only the shape is checked.
fn accelerators_per_pod(
    template: &Value,
    resource: Option<&str>,
    known_resources: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    let Some(containers) = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
    else {
        problems.push(Problem::new(
            "spec.template.spec.containers",
            "(missing)",
            "a pod template needs at least one container",
        ));
        return None;
    };
    let before = problems.len();
    let mut total = 0u64;
    let mut others = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        for section in ["limits", "requests"] {
            let Some(map) = c
                .pointer(&format!("/resources/{section}"))
                .and_then(Value::as_object)
            else {
                continue;
            };
            for (k, v) in map {
                if Some(k.as_str()) == resource {
                    if section != "limits" {
                        continue;
                    }
                    match device_quantity(v) {
                        Some(n) => total = total.saturating_add(n),
                        None => problems.push(Problem::new(
                            format!(
                                "spec.template.spec.containers[{i}].resources.limits[{}]",
                                quote(k)
                            ),
                            short(v),
                            "is not a whole number of devices; write a count such as 8",
                        )),
                    }
                } else if known_resources.contains(&k.as_str()) {
                    others.push(format!("containers[{i}].resources.{section}[{}]", quote(k)));
                }
            }
        }
    }
    if let Some(resource) = resource
        && !others.is_empty()
    {
        problems.push(Problem::new(
            "spec.template.spec",
            "",
            format!(
                "requests {} but the accelerator is scheduled by {}; the count must come from the accelerator's own resource",
                others.join(", "),
                quote(resource)
            ),
        ));
    }
    (problems.len() == before && resource.is_some()).then_some(total)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id() -> JobId {
        JobId {
            namespace: "ml".into(),
            name: "run".into(),
            uid: "u".into(),
        }
    }

    fn good() -> Value {
        json!({
            "model": {"name": "llama", "parameters": 7e10, "tokens": 1e10},
            "accelerator": {"type": "nvidia-h100-sxm", "precision": "bf16"},
            "replicas": 4,
            "maxDuration": "72h",
            "template": {"spec": {"containers": [{"name": "t", "image": "x",
                "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}
        })
    }

    fn with(path: &str, v: Value) -> Value {
        let mut spec = good();
        let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
        let key = key.replace("~1", "/");
        let key = key.as_str();
        let target = if parent.is_empty() {
            &mut spec
        } else {
            spec.pointer_mut(parent).unwrap()
        };
        if v.is_null() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            target[key] = v;
        }
        spec
    }

    fn problems(spec: &Value) -> Vec<String> {
        read_spec(id(), spec, &Catalog::builtin())
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The one problem of `spec`, as the user reads it.
    fn only(spec: &Value) -> String {
        let p = problems(spec);
        assert_eq!(p.len(), 1, "{p:#?}");
        p[0].clone()
    }

    #[test]
    fn a_good_spec_reads_into_the_request() {
        let req = read_spec(id(), &good(), &Catalog::builtin())
            .for_submission()
            .unwrap();
        assert_eq!(req.id, id());
        assert_eq!(req.count, 32);
        assert_eq!(req.accelerator.kind, "nvidia-h100-sxm");
        assert_eq!(req.accelerator.precision, Precision::Bf16);
        assert_eq!(req.max_duration, GoDuration::from_secs(72 * 3600));
        assert_eq!(req.model.name.as_deref(), Some("llama"));
        assert_eq!(req.model.parameters, Some(7e10));
        assert_eq!(req.priority, 0);
        assert_eq!(req.submitter, None);
        assert_eq!(req.spec_hash.len(), 64);
    }

    #[test]
    fn the_hash_covers_the_spec_with_defaults_filled_in() {
        let hash = |spec: &Value| {
            read_spec(id(), spec, &Catalog::builtin())
                .for_submission()
                .unwrap()
                .spec_hash
        };
        let explicit = with("priority", json!(0));
        let explicit = {
            let mut s = explicit;
            s["accelerator"]["precision"] = json!("bf16");
            s
        };
        assert_eq!(hash(&good()), hash(&explicit));
        let no_precision = with("/accelerator/precision", Value::Null);
        assert_eq!(hash(&good()), hash(&no_precision));
        assert_ne!(hash(&good()), hash(&with("replicas", json!(2))));
        // The hash of the value a TrainingJobSpec with these defaults
        // serializes to (durations in their canonical form): what
        // status.specHash has always shown.
        let normalized = json!({
            "model": {"name": "llama", "parameters": 7e10, "tokens": 1e10},
            "accelerator": {"type": "nvidia-h100-sxm", "precision": "bf16"},
            "replicas": 4, "maxDuration": "3d", "priority": 0,
            "template": good()["template"],
        });
        assert_eq!(hash(&good()), crate::engine::content_hash(&normalized));
    }

    #[test]
    fn the_spec_must_be_an_object() {
        assert_eq!(
            only(&Value::Null),
            "spec (missing): must be an object with accelerator, maxDuration and template"
        );
        assert_eq!(
            only(&json!("big")),
            "spec \"big\": must be an object with accelerator, maxDuration and template"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(
            only(&with("gpus", json!(8))),
            "spec.gpus: unknown field; a TrainingJob spec has model, accelerator, replicas, maxDuration, priority, template"
        );
        assert_eq!(
            only(&with("/accelerator/count", json!(8))),
            "spec.accelerator.count: unknown field; an accelerator has type, precision"
        );
        assert_eq!(
            only(&with("/model/size", json!(8))),
            "spec.model.size: unknown field; a model has name, baseModel, parameters, tokens"
        );
    }

    #[test]
    fn accelerator_messages() {
        assert_eq!(
            only(&with("accelerator", json!("h100"))),
            "spec.accelerator \"h100\": must be an object such as {type: nvidia-h100-sxm, precision: bf16}"
        );
        assert_eq!(
            only(&with("/accelerator/type", Value::Null)),
            "spec.accelerator.type (missing): must name an accelerator of the catalog, e.g. nvidia-h100-sxm"
        );
        assert_eq!(
            only(&with("/accelerator/type", json!(7))),
            "spec.accelerator.type 7: must name an accelerator of the catalog, e.g. nvidia-h100-sxm"
        );
        let typo = only(&with("/accelerator/type", json!("nvidia-h100-sxn")));
        assert!(
            typo.starts_with("spec.accelerator.type \"nvidia-h100-sxn\": unknown accelerator; the closest catalog keys are nvidia-h100-sxm"),
            "{typo}"
        );
        assert!(typo.ends_with("(a ComputePolicy's spec.accelerators can add one)"));
        assert_eq!(
            only(&with("/accelerator/precision", json!("fp9"))),
            "spec.accelerator.precision \"fp9\": unknown precision; use one of fp64, fp32, tf32, fp16, bf16, fp8, fp4"
        );
        assert_eq!(
            only(&with("/accelerator/precision", json!(16))),
            "spec.accelerator.precision 16: must be a string such as bf16"
        );
    }

    #[test]
    fn an_unsupported_precision_is_left_to_the_engine() {
        let mut spec = with("/accelerator/type", json!("nvidia-a100-sxm4-80gb"));
        spec["accelerator"]["precision"] = json!("fp4");
        let reading = read_spec(id(), &spec, &Catalog::builtin());
        assert_eq!(reading.problems.len(), 1);
        let p = &reading.problems[0];
        assert_eq!(p.severity, Severity::NeverRuns);
        assert_eq!(p.field, "spec.accelerator.precision");
        assert_eq!(p.value, "\"fp4\"");
        assert!(
            p.rule.starts_with(
                "nvidia-a100-sxm4-80gb has no published dense peak at fp4; it supports"
            ),
            "{p}"
        );
        // Refused at submission; the controller lets the engine reject it.
        assert!(reading.clone().for_submission().is_err());
        let req = reading.for_decision().unwrap();
        assert_eq!(req.accelerator.precision, Precision::Fp4);
    }

    #[test]
    fn replicas_priority_and_duration_messages() {
        assert_eq!(
            only(&with("replicas", json!(-1))),
            "spec.replicas -1: must be a whole number from 1 to 4294967295"
        );
        assert_eq!(
            only(&with("replicas", json!("4"))),
            "spec.replicas \"4\": must be a whole number from 1 to 4294967295"
        );
        assert_eq!(
            only(&with("priority", json!(1.5))),
            "spec.priority 1.5: must be a 32-bit integer"
        );
        assert_eq!(
            only(&with("maxDuration", Value::Null)),
            "spec.maxDuration (missing): must be a Go duration such as 72h"
        );
        assert_eq!(
            only(&with("maxDuration", json!(72))),
            "spec.maxDuration 72: must be a Go duration such as 72h"
        );
        assert_eq!(
            only(&with("maxDuration", json!("-1h"))),
            "spec.maxDuration \"-1h\": cannot be negative; use a Go duration such as 72h"
        );
        assert_eq!(
            only(&with("maxDuration", json!("3 days"))),
            format!("spec.maxDuration \"3 days\": is not a duration; use {DURATION_SYNTAX}")
        );
    }

    #[test]
    fn a_zero_duration_or_count_is_left_to_the_engine() {
        let zero = read_spec(id(), &with("maxDuration", json!("0s")), &Catalog::builtin());
        assert_eq!(
            zero.problems[0].to_string(),
            "spec.maxDuration \"0s\": must be longer than 0s, e.g. 72h"
        );
        assert!(zero.for_decision().unwrap().max_duration.is_zero());
        let spec = with("/template/spec/containers/0/resources/limits", json!({}));
        let none = read_spec(id(), &spec, &Catalog::builtin());
        assert_eq!(
            none.problems[0].to_string(),
            "spec.replicas × spec.template limits[\"nvidia.com/gpu\"] 4 × 0 = 0: a training job needs at least one accelerator; set resources.limits[\"nvidia.com/gpu\"] on a container"
        );
        assert_eq!(none.problems[0].severity, Severity::NeverRuns);
        assert_eq!(none.for_decision().unwrap().count, 0);
    }

    #[test]
    fn model_messages() {
        assert_eq!(
            only(&with("model", json!("llama"))),
            "spec.model \"llama\": must be an object such as {name: llama-chat, parameters: 7e10, tokens: 1e12}"
        );
        assert_eq!(
            only(&with("/model/name", json!(["a"]))),
            "spec.model.name [\"a\"]: must be a string naming a model lineage, e.g. llama-3-70b"
        );
        assert_eq!(
            only(&with("/model/tokens", json!("many"))),
            "spec.model.tokens \"many\": must be a number such as 7e10"
        );
    }

    #[test]
    fn template_messages() {
        assert_eq!(
            only(&with("template", Value::Null)),
            "spec.template.spec.containers (missing): a pod template needs at least one container"
        );
        assert_eq!(
            only(&with(
                "/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
                json!("eight")
            )),
            "spec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"] \"eight\": is not a whole number of devices; write a count such as 8"
        );
        assert_eq!(
            only(&with(
                "/template/spec/containers/0/resources/limits",
                json!({"nvidia.com/gpu": 8, "amd.com/gpu": 8})
            )),
            "spec.template.spec: requests containers[0].resources.limits[\"amd.com/gpu\"] but the accelerator is scheduled by \"nvidia.com/gpu\"; the count must come from the accelerator's own resource"
        );
        let too_many = with("replicas", json!(u32::MAX));
        assert_eq!(
            only(&too_many),
            "spec.replicas × spec.template limits[\"nvidia.com/gpu\"] 4294967295 × 8 = 34359738360: is more accelerators than komptroller counts (at most 4294967295)"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let mut spec = with("/accelerator/precision", json!("fp9"));
        spec["maxDuration"] = json!("-1h");
        spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] =
            json!("eight");
        spec["replicas"] = json!(0.5);
        let reading = read_spec(id(), &spec, &Catalog::builtin());
        let fields: Vec<&str> = reading.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.accelerator.precision",
                "spec.replicas",
                "spec.maxDuration",
                "spec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"]",
            ]
        );
        assert!(
            reading
                .problems
                .iter()
                .all(|p| p.severity == Severity::Unreadable)
        );
        assert_eq!(reading.for_decision().unwrap_err().len(), 4);
    }
}
