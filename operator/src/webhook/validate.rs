//! Pure admission decisions: what the CRD schemas cannot say, because it
//! needs the catalog, the policies, the requester's identity or the object's
//! previous state.
//!
//! Every function here is a plain function of its arguments (objects, the
//! authenticated requester, the current policies, `now`): no I/O, no clock,
//! no Kubernetes client, so each is unit-tested on fixture AdmissionReviews.
//! Every denial names the field, the value and the rule broken.
//!
//! What is mutable in a TrainingJob's spec: everything while the job has not
//! been admitted (phases Pending, Queued, AwaitingApproval) — the job is
//! decided again and approvals bound to the old spec hash lapse; nothing once
//! admitted (Admitted, Running) or finished (Succeeded, Failed, Rejected):
//! delete and resubmit. Metadata (labels, annotations other than
//! `komptroller.dev/submitted-by`, finalizers) stays mutable throughout, so
//! the operator can always remove its finalizer.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::UserInfo;
use komptroller_engine::catalog::Catalog;
use komptroller_engine::decision::{ApprovalNeed, Verdict};
use komptroller_engine::engine::{Engine, Event, Phase};
use komptroller_engine::job::{JobId, JobRequest, Principal};
use komptroller_engine::manifest::training_job::short;
use komptroller_engine::manifest::{Problem, read_spec};
use komptroller_engine::policy::{ComputePolicySpec, Mode, Policy};
use komptroller_engine::spec_hash::{
    Binding, LEGACY_SPEC_HASH_ACCEPTED_UNTIL, binding, legacy_spec_hash,
};
use kube::api::DynamicObject;
use kube::core::admission::Operation;
use serde_json::Value;

use crate::crd::{ComputeApprovalSpec, SUBMITTED_BY, TrainingJobSpec};

/// The authenticated user of an admission request (`request.userInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    pub user: String,
    pub groups: Vec<String>,
}

impl Requester {
    pub fn from_user_info(u: &UserInfo) -> Requester {
        Requester {
            user: u.username.clone().unwrap_or_default(),
            groups: u.groups.clone().unwrap_or_default(),
        }
    }

    /// The principal the mutating webhook stamps.
    pub fn principal(&self) -> Principal {
        Principal {
            user: self.user.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// Why a request is refused: the field, the value found and the rule broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// JSON path of the field, e.g. `spec.accelerator.type`.
    pub field: String,
    /// The value found, as the user wrote it (JSON-quoted strings).
    pub value: String,
    /// The rule broken and what would be right.
    pub rule: String,
    /// The full sentence sent back to `kubectl`.
    pub message: String,
}

impl Denial {
    /// A denial about one field: "`field` `value`: `rule`".
    pub fn field(
        field: impl Into<String>,
        value: impl Into<String>,
        rule: impl Into<String>,
    ) -> Denial {
        let (field, value, rule) = (field.into(), value.into(), rule.into());
        let message = if value.is_empty() {
            format!("{field}: {rule}")
        } else {
            format!("{field} {value}: {rule}")
        };
        Denial {
            field,
            value,
            rule,
            message,
        }
    }

    /// A denial carrying the engine's own sentence (the one the status would
    /// carry), followed by the deciding policy and rule.
    pub fn decision(reason: &str, policy: &str, rule: &str, governing: &str) -> Denial {
        Denial {
            field: "spec".into(),
            value: governing.to_string(),
            rule: format!("ComputePolicy {policy}, rule {rule}"),
            message: format!("{reason} (ComputePolicy {policy}, rule {rule})"),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Denial {}

/// Allowed, with warnings for the requester (`kubectl` prints them).
pub type Verdictless = Result<Vec<String>, Denial>;

/// Quotes a value for a message.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| s.to_string())
}

/// The path of the first difference between two JSON values (`spec.replicas`,
/// `spec.template.spec.containers[0].image`), or `None` when equal.
pub fn first_difference(prefix: &str, a: &Value, b: &Value) -> Option<String> {
    if a == b {
        return None;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                let (va, vb) = (x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null));
                if let Some(p) = first_difference(&format!("{prefix}.{k}"), va, vb) {
                    return Some(p);
                }
            }
            Some(prefix.to_string())
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if let Some(p) = first_difference(&format!("{prefix}[{i}]"), va, vb) {
                    return Some(p);
                }
            }
            Some(prefix.to_string())
        }
        _ => Some(prefix.to_string()),
    }
}

fn pointer_of(path: &str) -> String {
    // "spec.a[0].b" → "/spec/a/0/b" (keys with dots are rare in specs; good enough for values in messages)
    let mut out = String::new();
    for part in path.split('.') {
        let (key, idx) = match part.find('[') {
            Some(i) => (&part[..i], Some(&part[i..])),
            None => (part, None),
        };
        out.push('/');
        out.push_str(&key.replace('~', "~0").replace('/', "~1"));
        if let Some(idx) = idx {
            for i in idx.split(['[', ']']).filter(|s| !s.is_empty()) {
                out.push('/');
                out.push_str(i);
            }
        }
    }
    out
}

fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    obj.pointer(&pointer_of(path))
}

fn annotation<'a>(o: &'a DynamicObject, key: &str) -> Option<&'a str> {
    o.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn spec_of(o: &DynamicObject) -> &Value {
    o.data.get("spec").unwrap_or(&Value::Null)
}

/// The phase recorded in an object's status, if any.
pub fn phase_of(o: &DynamicObject) -> Option<Phase> {
    o.data
        .pointer("/status/phase")
        .cloned()
        .and_then(|p| serde_json::from_value(p).ok())
}

/// Parses the `komptroller.dev/submitted-by` stamp.
pub fn submitter_of(o: &DynamicObject) -> Option<Principal> {
    annotation(o, SUBMITTED_BY).and_then(|s| serde_json::from_str(s).ok())
}

/// The spec hash of a TrainingJob's current spec, as the controller
/// computes it ([`TrainingJobSpec::spec_hash_of`]); `None` when the spec
/// does not read as a TrainingJob spec.
pub fn current_spec_hash(job: &DynamicObject) -> Option<String> {
    TrainingJobSpec::spec_hash_of(spec_of(job))
}

/// How an approval carrying `hash` binds to the job's current spec: its
/// spec hash, or (until [`LEGACY_SPEC_HASH_ACCEPTED_UNTIL`]) the legacy hash
/// of the spec as stored; `None` when it approves some other spec.
pub fn approval_binding(job: &DynamicObject, hash: &str) -> Option<Binding> {
    let stored = spec_of(job);
    match current_spec_hash(job) {
        Some(current) => binding(hash, &current, stored),
        None => (hash == legacy_spec_hash(stored)).then_some(Binding::Legacy),
    }
}

/// What the TrainingJob validator needs to know of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct PolicyView<'a> {
    /// Every ComputePolicy (invalid ones are ignored, as the operator ignores them).
    pub policies: &'a [Policy],
    /// Labels of the job's namespace, for the policies' namespaceSelector.
    pub namespace_labels: &'a BTreeMap<String, String>,
}

/// Rules whose Reject verdict, found on an empty ledger, holds whatever the
/// ledger holds: the job alone breaks them, so it can never run.
const NEVER_RUNS: [&str; 4] = ["tier/", "capacity/", "budget/", "validation/"];

/// Validates a TrainingJob create or update.
///
/// CREATE: the submitter stamp matches the requester; the accelerator type
/// and precision are known; the template requests the accelerator by its own
/// resource name; replicas × limit > 0; maxDuration > 0; in Enforce mode a job
/// that can never run is refused with the engine's sentence; Warn-mode
/// verdicts and escalations come back as warnings.
/// UPDATE: the stamp is unchanged; a changed spec is allowed only before
/// admission (and is then checked as on create).
pub fn training_job(
    operation: &Operation,
    object: &DynamicObject,
    old: Option<&DynamicObject>,
    requester: &Requester,
    view: PolicyView<'_>,
    now: Timestamp,
) -> Verdictless {
    let mut warnings = Vec::new();
    match operation {
        Operation::Create => {
            match annotation(object, SUBMITTED_BY) {
                Some(raw) => {
                    let stamped: Option<Principal> = serde_json::from_str(raw).ok();
                    if stamped.as_ref().map(|p| (&p.user, &p.groups))
                        != Some((&requester.user, &requester.groups))
                    {
                        return Err(Denial::field(
                            format!("metadata.annotations[{SUBMITTED_BY}]"),
                            q(raw),
                            format!(
                                "must be the authenticated requester {}, as komptroller's mutating webhook stamps it; remove the annotation",
                                q(&requester.user)
                            ),
                        ));
                    }
                }
                None => warnings.push(format!(
                    "komptroller: the {SUBMITTED_BY} stamp is missing (mutating webhook unavailable?); nobody can approve this job until it is resubmitted"
                )),
            }
        }
        Operation::Update => {
            let Some(old) = old else {
                return Err(Denial::field(
                    "oldObject",
                    "null",
                    "an UPDATE review must carry the previous object",
                ));
            };
            let (before, after) = (annotation(old, SUBMITTED_BY), annotation(object, SUBMITTED_BY));
            if before != after {
                return Err(Denial::field(
                    format!("metadata.annotations[{SUBMITTED_BY}]"),
                    after.map_or_else(|| "(removed)".to_string(), q),
                    format!(
                        "is stamped by komptroller at creation ({}) and cannot be changed",
                        before.map_or_else(|| "absent".to_string(), q)
                    ),
                ));
            }
            let (old_spec, new_spec) = (spec_of(old), spec_of(object));
            let Some(path) = first_difference("spec", old_spec, new_spec) else {
                return Ok(warnings); // metadata only: finalizers, labels, annotations
            };
            let phase = phase_of(old);
            if let Some(p) = phase
                && !matches!(p, Phase::Pending | Phase::Queued | Phase::AwaitingApproval)
            {
                return Err(Denial::field(
                    path.clone(),
                    value_at(&object.data, &path).map_or_else(|| "(removed)".to_string(), short),
                    format!(
                        "the spec of a TrainingJob is immutable once admitted (phase {p:?}; was {}); delete it and submit a new one",
                        value_at(&old.data, &path).map_or_else(|| "absent".to_string(), short)
                    ),
                ));
            }
            if phase == Some(Phase::AwaitingApproval) {
                warnings.push(format!(
                    "komptroller: {path} changed while awaiting approval; approvals of the previous spec no longer count"
                ));
            }
        }
        Operation::Delete | Operation::Connect => return Ok(warnings),
    }
    let request = job_request(object, requester, view)?;
    warnings.extend(decide_at_submit(&request, view, now)?);
    Ok(warnings)
}

/// Reads the spec into the engine's [`JobRequest`] by the engine's one
/// reading of a spec, denying every problem it finds: a malformed field, and
/// what the job alone can never run for.
fn job_request(
    object: &DynamicObject,
    requester: &Requester,
    view: PolicyView<'_>,
) -> Result<JobRequest, Denial> {
    let spec = spec_of(object);
    let id = JobId {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
        uid: object.metadata.uid.clone().unwrap_or_default(),
    };
    let catalog = catalog_for(view);
    let mut req = read_spec(id, spec, &catalog)
        .for_submission()
        .map_err(|problems| spec_denial(object, &problems))?;
    req.namespace_labels = Arc::new(view.namespace_labels.clone());
    req.submitter = Some(requester.principal());
    // The hash of the spec as the controller reads it (read_spec hashed the
    // template as sent, quantities possibly as numbers).
    if let Some(hash) = TrainingJobSpec::spec_hash_of(spec) {
        req.spec_hash = hash;
    }
    Ok(req)
}

/// The denial for a spec's problems: the problem itself when there is one;
/// with several, the first one's field and every problem in the message.
fn spec_denial(object: &DynamicObject, problems: &[Problem]) -> Denial {
    let Some((first, rest)) = problems.split_first() else {
        return Denial::field("spec", "", "cannot be read");
    };
    let mut denial = Denial::field(&first.field, &first.value, &first.rule);
    if !rest.is_empty() {
        denial.message = format!(
            "TrainingJob {} is invalid: {}",
            q(object.metadata.name.as_deref().unwrap_or_default()),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    denial
}

/// The built-in catalog, parsed once.
fn builtin() -> &'static Catalog {
    static BUILTIN: OnceLock<Catalog> = OnceLock::new();
    BUILTIN.get_or_init(Catalog::builtin)
}

/// The built-in catalog with the additions of every policy selecting the
/// namespace (borrowed when there are none, the common case).
fn catalog_for(view: PolicyView<'_>) -> Cow<'static, Catalog> {
    let mut catalog = Cow::Borrowed(builtin());
    for p in selecting(view) {
        for a in &p.spec.accelerators {
            catalog.to_mut().upsert(a.clone());
        }
    }
    catalog
}

/// A scratch engine holding `policies` and an empty ledger. Memoized on the
/// policies themselves (they change rarely; requests come often), so the
/// answer is exactly that of a fresh engine.
fn scratch_engine(policies: &[&Policy], now: Timestamp) -> Arc<Engine> {
    static CACHE: Mutex<Option<(String, Arc<Engine>)>> = Mutex::new(None);
    let key = format!("{policies:?}");
    if let Ok(guard) = CACHE.lock()
        && let Some((k, e)) = guard.as_ref()
        && *k == key
    {
        return e.clone();
    }
    let mut engine = Engine::new(builtin().clone());
    for p in policies {
        let _ = engine.apply(now, Event::UpsertPolicy((*p).clone()));
    }
    let engine = Arc::new(engine);
    if let Ok(mut guard) = CACHE.lock() {
        *guard = Some((key, engine.clone()));
    }
    engine
}

fn selecting(view: PolicyView<'_>) -> impl Iterator<Item = &Policy> {
    view.policies.iter().filter(move |p| {
        p.spec.problems().is_empty() && p.spec.namespace_selector.matches(view.namespace_labels)
    })
}

/// Runs the job through a scratch engine holding the current policies and an
/// empty ledger. A Reject there (from a tier, a budget or a cap the job alone
/// exceeds) holds whatever the ledger holds, so in Enforce mode the request
/// is denied with the very sentence the status would carry. Warn-mode
/// verdicts and escalations are returned as warnings.
fn decide_at_submit(
    request: &JobRequest,
    view: PolicyView<'_>,
    now: Timestamp,
) -> Result<Vec<String>, Denial> {
    let valid: Vec<&Policy> = view
        .policies
        .iter()
        .filter(|p| p.spec.problems().is_empty())
        .collect();
    if !valid
        .iter()
        .any(|p| p.spec.namespace_selector.matches(view.namespace_labels))
    {
        return Ok(Vec::new());
    }
    let engine = scratch_engine(&valid, now);
    let d = engine.preview(now, request);
    let d = &d;
    let rule = d.rule.clone().unwrap_or_default();
    let policy = d.policy.clone().unwrap_or_default();
    if d.verdict == Verdict::Reject && NEVER_RUNS.iter().any(|p| rule.starts_with(p)) {
        return Err(Denial::decision(
            &d.reason,
            &policy,
            &rule,
            &d.governing.to_string(),
        ));
    }
    let mut warnings: Vec<String> = d
        .warnings
        .iter()
        .map(|w| format!("komptroller: {w}"))
        .collect();
    if d.verdict == Verdict::Escalate {
        let who = d.approvals.as_ref().map_or_else(String::new, approvers);
        warnings.push(format!("komptroller: {}{who}", d.reason));
    }
    if d.mode == Mode::Warn && warnings.is_empty() && d.enforced_verdict != Verdict::Admit {
        warnings.push(format!("komptroller: {}", d.reason));
    }
    Ok(warnings)
}

fn approvers(need: &ApprovalNeed) -> String {
    if need.groups.is_empty() {
        format!(
            " It needs {} approval(s) by anyone but the submitter.",
            need.required
        )
    } else {
        format!(
            " It needs {} approval(s) by members of {}.",
            need.required,
            need.groups.join(", ")
        )
    }
}

/// Validates a ComputePolicy: the spec parses (each wrong field named with
/// its path) and the engine finds no problem — tiers sorted and distinct,
/// windows and limits positive, selectors valid, approvals for escalations —
/// and entries of `spec.accelerators` are named unambiguously.
pub fn compute_policy(operation: &Operation, object: &DynamicObject) -> Verdictless {
    if matches!(operation, Operation::Delete | Operation::Connect) {
        return Ok(Vec::new());
    }
    let name = object.metadata.name.clone().unwrap_or_default();
    let spec = spec_of(object);
    let parsed: ComputePolicySpec = serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        let value = value_at(object.data.get("spec").unwrap_or(&Value::Null), &path)
            .map_or_else(String::new, short);
        Denial::field(field, value, e.into_inner().to_string())
    })?;
    let mut problems: Vec<(String, String)> = parsed
        .problems()
        .into_iter()
        .map(|p| (p.field, p.message))
        .collect();
    let builtin = builtin();
    for (i, a) in parsed.accelerators.iter().enumerate() {
        if let Some(e) = builtin.get(&a.name)
            && e.name != a.name
        {
            problems.push((
                format!("spec.accelerators[{i}].name"),
                format!(
                    "{} is an alias of the built-in {}; use {} to override it, or a new name to add an accelerator",
                    q(&a.name),
                    q(&e.name),
                    q(&e.name)
                ),
            ));
        }
        if !a.resource_name.contains('/') || a.resource_name.trim() != a.resource_name {
            problems.push((
                format!("spec.accelerators[{i}].resourceName"),
                format!(
                    "{} is not an extended resource name such as nvidia.com/gpu",
                    q(&a.resource_name)
                ),
            ));
        }
    }
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    let (field, first) = problems[0].clone();
    let all = problems
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(Denial {
        value: value_at(&object.data, &field).map_or_else(String::new, short),
        field,
        rule: first,
        message: format!("ComputePolicy {} is invalid: {all}", q(&name)),
    })
}

/// The TrainingJob an approval names, if the spec says.
pub fn approval_target(object: &DynamicObject) -> Option<String> {
    spec_of(object)
        .get("trainingJobName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Validates a ComputeApproval.
///
/// CREATE: the approver is the authenticated requester (the mutating webhook
/// stamps it; anything else is forged); the job exists, carries a submitter
/// stamp, and was not submitted by the requester; the spec hash is the job's
/// current one; the job awaits approval and the requester is in one of the
/// groups its escalation requires and has not approved it already; `expires`,
/// if set, is RFC 3339 and in the future.
/// UPDATE: the spec is immutable.
pub fn compute_approval(
    operation: &Operation,
    object: &DynamicObject,
    old: Option<&DynamicObject>,
    requester: &Requester,
    job: Option<&DynamicObject>,
    now: Timestamp,
) -> Verdictless {
    match operation {
        Operation::Create => {}
        Operation::Update => {
            let old_spec = old.map_or(&Value::Null, spec_of);
            return match first_difference("spec", old_spec, spec_of(object)) {
                None => Ok(Vec::new()),
                Some(path) => Err(Denial::field(
                    path.clone(),
                    value_at(&object.data, &path).map_or_else(|| "(removed)".to_string(), short),
                    "a ComputeApproval is immutable; delete it and create another",
                )),
            };
        }
        Operation::Delete | Operation::Connect => return Ok(Vec::new()),
    }
    let spec_value = spec_of(object);
    let spec: ComputeApprovalSpec = serde_path_to_error::deserialize(spec_value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        Denial::field(field, "", e.into_inner().to_string())
    })?;
    match &spec.approver {
        Some(a) if *a == requester.user => {}
        Some(a) => {
            return Err(Denial::field(
                "spec.approver",
                q(a),
                format!(
                    "forged: the approver is the authenticated requester {}; leave spec.approver empty and komptroller stamps it",
                    q(&requester.user)
                ),
            ));
        }
        None => {
            return Err(Denial::field(
                "spec.approver",
                "(missing)",
                format!(
                    "must be the authenticated requester {}, stamped by komptroller's mutating webhook",
                    q(&requester.user)
                ),
            ));
        }
    }
    let mut stamped_groups = spec.approver_groups.clone();
    stamped_groups.sort();
    let mut groups = requester.groups.clone();
    groups.sort();
    if stamped_groups != groups {
        return Err(Denial::field(
            "spec.approverGroups",
            short(&serde_json::json!(spec.approver_groups)),
            format!(
                "forged: must be the requester's groups {}",
                short(&serde_json::json!(requester.groups))
            ),
        ));
    }
    if let Some(expires) = &spec.expires {
        let t: Timestamp = expires.parse().map_err(|e| {
            Denial::field(
                "spec.expires",
                q(expires),
                format!("not an RFC 3339 time: {e}"),
            )
        })?;
        if t <= now {
            return Err(Denial::field(
                "spec.expires",
                q(expires),
                format!("is not in the future (now {now})"),
            ));
        }
    }
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let Some(job) = job else {
        return Err(Denial::field(
            "spec.trainingJobName",
            q(&spec.training_job_name),
            format!("no such TrainingJob in namespace {}", q(&namespace)),
        ));
    };
    let Some(submitter) = submitter_of(job) else {
        return Err(Denial::field(
            "spec.trainingJobName",
            q(&spec.training_job_name),
            format!(
                "the job carries no valid {SUBMITTED_BY} stamp, so separation of duties cannot be checked; resubmit the job while komptroller's webhook runs"
            ),
        ));
    };
    if submitter.user == requester.user {
        return Err(Denial::field(
            "spec.approver",
            q(&requester.user),
            format!(
                "submitted TrainingJob {} and cannot approve it (separation of duties)",
                q(&spec.training_job_name)
            ),
        ));
    }
    let Some(bound) = approval_binding(job, &spec.spec_hash) else {
        return Err(Denial::field(
            "spec.specHash",
            q(&spec.spec_hash),
            format!(
                "does not match the current spec of TrainingJob {} (status.specHash {}); the spec changed after it was reviewed — review it again",
                q(&spec.training_job_name),
                current_spec_hash(job).as_deref().unwrap_or("unknown")
            ),
        ));
    };
    let mut warnings = Vec::new();
    if bound == Binding::Legacy {
        warnings.push(legacy_warning(job));
    }
    let phase = phase_of(job);
    let need: Option<ApprovalNeed> = job
        .data
        .pointer("/status/decision/approvals")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok());
    let Some(need) = need.filter(|_| phase == Some(Phase::AwaitingApproval)) else {
        return Err(Denial::field(
            "spec.trainingJobName",
            q(&spec.training_job_name),
            format!(
                "the job is not awaiting approval (phase {}); approve it once its status shows AwaitingApproval",
                phase.map_or_else(|| "not yet decided".to_string(), |p| format!("{p:?}"))
            ),
        ));
    };
    if !need.groups.is_empty() && !requester.groups.iter().any(|g| need.groups.contains(g)) {
        return Err(Denial::field(
            "spec.approver",
            q(&requester.user),
            format!(
                "is in none of the groups this escalation requires ({}); the requester's groups are {}",
                need.groups.join(", "),
                if requester.groups.is_empty() {
                    "none".to_string()
                } else {
                    requester.groups.join(", ")
                }
            ),
        ));
    }
    if need.approved_by.contains(&requester.user) {
        return Err(Denial::field(
            "spec.approver",
            q(&requester.user),
            "has already approved this spec; approvals count distinct approvers",
        ));
    }
    Ok(warnings)
}

/// What an approver who gave the legacy hash is told.
pub fn legacy_warning(job: &DynamicObject) -> String {
    format!(
        "spec.specHash is the legacy hash of the spec as stored, accepted until komptroller {LEGACY_SPEC_HASH_ACCEPTED_UNTIL}; the approval is bound to the spec hash {} (status.specHash): use that one",
        current_spec_hash(job).as_deref().unwrap_or("unknown")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_difference_names_the_path() {
        let a = json!({"a": {"b": [1, {"c": 2}]}});
        let b = json!({"a": {"b": [1, {"c": 3}]}});
        assert_eq!(
            first_difference("spec", &a, &b).as_deref(),
            Some("spec.a.b[1].c")
        );
        assert_eq!(first_difference("spec", &a, &a), None);
        assert_eq!(
            value_at(&json!({"spec": b}), "spec.a.b[1].c"),
            Some(&json!(3))
        );
    }

    #[test]
    fn a_spec_with_several_problems_is_denied_with_all_of_them() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "komptroller.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "run", "namespace": "ml"},
            "spec": {
                "accelerator": {"type": "nvidia-h100-sxm", "precision": "fp9"},
                "maxDuration": "-1h",
                "template": {"spec": {"containers": [{"name": "t", "image": "x",
                    "resources": {"limits": {"nvidia.com/gpu": "eight"}}}]}}
            }
        }))
        .unwrap();
        let labels = BTreeMap::new();
        let view = PolicyView {
            policies: &[],
            namespace_labels: &labels,
        };
        let denial = job_request(&object, &Requester::default(), view).unwrap_err();
        assert_eq!(denial.field, "spec.accelerator.precision");
        assert_eq!(denial.value, "\"fp9\"");
        assert_eq!(
            denial.message,
            "TrainingJob \"run\" is invalid: \
             spec.accelerator.precision \"fp9\": unknown precision; use one of fp64, fp32, tf32, fp16, bf16, fp8, fp4; \
             spec.maxDuration \"-1h\": cannot be negative; use a Go duration such as 72h; \
             spec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"] \"eight\": \
             is not a whole number of devices; write a count such as 8"
        );
    }

    #[test]
    fn denial_message_names_field_value_rule() {
        let d = Denial::field("spec.replicas", "0", "must be at least 1");
        assert_eq!(d.to_string(), "spec.replicas 0: must be at least 1");
    }
}
