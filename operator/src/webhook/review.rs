//! From an AdmissionReview body to an AdmissionReview answer: decode, pick
//! the pure function for the endpoint, encode. Never panics and always
//! answers with an AdmissionReview (a body that is not one gets a 400 with
//! an `invalid` response), so the API server reports the reason.

use std::collections::BTreeMap;
use std::future::Future;

use base64ct::{Base64, Encoding};
use jiff::Timestamp;
use komptroller_engine::policy::Policy;
use kube::api::DynamicObject;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::validate::{self, Denial, PolicyView, Requester};
use super::{mutate, validate::approval_target};

/// The endpoints, one per webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    MutateTrainingJob,
    ValidateTrainingJob,
    MutateComputeApproval,
    ValidateComputeApproval,
    ValidateComputePolicy,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::MutateTrainingJob,
        Route::ValidateTrainingJob,
        Route::MutateComputeApproval,
        Route::ValidateComputeApproval,
        Route::ValidateComputePolicy,
    ];

    /// The URL path the API server posts to.
    pub fn path(self) -> &'static str {
        match self {
            Route::MutateTrainingJob => "/mutate/trainingjobs",
            Route::ValidateTrainingJob => "/validate/trainingjobs",
            Route::MutateComputeApproval => "/mutate/computeapprovals",
            Route::ValidateComputeApproval => "/validate/computeapprovals",
            Route::ValidateComputePolicy => "/validate/computepolicies",
        }
    }

    /// The kind the endpoint reviews.
    pub fn kind(self) -> &'static str {
        match self {
            Route::MutateTrainingJob | Route::ValidateTrainingJob => "TrainingJob",
            Route::MutateComputeApproval | Route::ValidateComputeApproval => "ComputeApproval",
            Route::ValidateComputePolicy => "ComputePolicy",
        }
    }

    /// The plural resource name in webhook rules.
    pub fn resource(self) -> &'static str {
        match self {
            Route::MutateTrainingJob | Route::ValidateTrainingJob => "trainingjobs",
            Route::MutateComputeApproval | Route::ValidateComputeApproval => "computeapprovals",
            Route::ValidateComputePolicy => "computepolicies",
        }
    }

    pub fn mutating(self) -> bool {
        matches!(
            self,
            Route::MutateTrainingJob | Route::MutateComputeApproval
        )
    }
}

/// What the handlers read of the cluster. The server implements it with
/// reflector caches and a client; tests and the benchmark with fixed values.
pub trait ClusterView: Send + Sync {
    /// Every ComputePolicy.
    fn policies(&self) -> Vec<Policy>;
    /// Labels of a namespace (empty when unknown).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String>;
    /// The TrainingJob `namespace/name`, read fresh (approvals must see the current spec).
    fn training_job(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<DynamicObject>, String>> + Send;
}

/// An encoded answer: HTTP status and AdmissionReview JSON.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// Whether the request was allowed (for logs and metrics).
    pub allowed: bool,
}

fn encode(response: AdmissionResponse, status: u16) -> Answer {
    let allowed = response.allowed;
    // kube serializes the patch as an array of bytes; the API server's
    // convention (Go's []byte) is a base64 string, which every client reads.
    let body = serde_json::to_value(response.into_review())
        .map(|mut v| {
            // We register admissionReviewVersions ["v1"] only: always answer v1.
            v["apiVersion"] = serde_json::Value::from("admission.k8s.io/v1");
            v["kind"] = serde_json::Value::from("AdmissionReview");
            if let Some(p) = v.pointer_mut("/response/patch")
                && let Some(bytes) = p.as_array().map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect::<Vec<u8>>()
                })
            {
                *p = serde_json::Value::String(Base64::encode_string(&bytes));
            }
            v
        })
        .and_then(|v| serde_json::to_vec(&v));
    let body = body.unwrap_or_else(|_| {
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":false,"status":{"message":"komptroller: could not encode the response"}}}"#.to_vec()
    });
    Answer {
        status,
        body,
        allowed,
    }
}

/// A response refusing the request with the denial as message (403 Forbidden).
fn deny(response: AdmissionResponse, denial: &Denial) -> AdmissionResponse {
    let mut r = response.deny(&denial.message);
    r.result = Status::failure(&denial.message, "Forbidden").with_code(403);
    r
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// Answers one AdmissionReview body posted to `route`.
pub async fn handle<V: ClusterView>(route: Route, body: &[u8], view: &V, now: Timestamp) -> Answer {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return encode(
                AdmissionResponse::invalid(format!("komptroller: not an AdmissionReview: {e}")),
                400,
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return encode(
                AdmissionResponse::invalid(format!(
                    "komptroller: AdmissionReview without a request: {e}"
                )),
                400,
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    let response = match answer(route, &request, view, now).await {
        Ok(Reply::Allow(warnings)) => with_warnings(response, warnings),
        Ok(Reply::Patch(patch, warnings)) => {
            let r = if patch.0.is_empty() {
                Ok(response.clone())
            } else {
                response.clone().with_patch(patch)
            };
            match r {
                Ok(r) => with_warnings(r, warnings),
                Err(e) => deny(
                    response,
                    &Denial::field("(patch)", "", format!("could not encode the patch: {e}")),
                ),
            }
        }
        Err(d) => deny(response, &d),
    };
    encode(response, 200)
}

enum Reply {
    Allow(Vec<String>),
    Patch(json_patch::Patch, Vec<String>),
}

async fn answer<V: ClusterView>(
    route: Route,
    request: &AdmissionRequest<DynamicObject>,
    view: &V,
    now: Timestamp,
) -> Result<Reply, Denial> {
    if matches!(request.operation, Operation::Delete | Operation::Connect) {
        return Ok(Reply::Allow(Vec::new()));
    }
    if request.kind.kind != route.kind() || request.kind.group != crate::crd::GROUP {
        return Err(Denial::field(
            "request.kind",
            format!("{}/{}", request.kind.group, request.kind.kind),
            format!(
                "{} reviews {}.{} only; check the webhook configuration's rules",
                route.path(),
                route.kind(),
                crate::crd::GROUP
            ),
        ));
    }
    let Some(object) = request.object.as_ref() else {
        return Err(Denial::field(
            "request.object",
            "null",
            format!("a {:?} review must carry the object", request.operation),
        ));
    };
    let requester = Requester::from_user_info(&request.user_info);
    let old = request.old_object.as_ref();
    match route {
        Route::MutateTrainingJob => {
            mutate::training_job(&request.operation, object, old, &requester)
                .map(|p| Reply::Patch(p, Vec::new()))
        }
        Route::MutateComputeApproval => {
            // The job, to bind a legacy spec hash; if it cannot be read the
            // validating webhook refuses the approval with the reason.
            let job = match (&request.operation, approval_target(object)) {
                (Operation::Create, Some(name)) => {
                    let namespace = request
                        .namespace
                        .clone()
                        .or_else(|| object.metadata.namespace.clone())
                        .unwrap_or_default();
                    view.training_job(&namespace, &name).await.ok().flatten()
                }
                _ => None,
            };
            mutate::compute_approval(&request.operation, object, &requester, job.as_ref())
                .map(|p| Reply::Patch(p, Vec::new()))
        }
        Route::ValidateTrainingJob => {
            let namespace = request
                .namespace
                .clone()
                .or_else(|| object.metadata.namespace.clone())
                .unwrap_or_default();
            let mut object = object.clone();
            object.metadata.namespace = Some(namespace.clone());
            if object.metadata.name.is_none() {
                object.metadata.name = Some(request.name.clone());
            }
            let policies = view.policies();
            let labels = view.namespace_labels(&namespace);
            let pv = PolicyView {
                policies: &policies,
                namespace_labels: &labels,
            };
            validate::training_job(&request.operation, &object, old, &requester, pv, now)
                .map(Reply::Allow)
        }
        Route::ValidateComputePolicy => {
            validate::compute_policy(&request.operation, object).map(Reply::Allow)
        }
        Route::ValidateComputeApproval => {
            let job = if request.operation == Operation::Create {
                match approval_target(object) {
                    Some(name) => {
                        let namespace = request
                            .namespace
                            .clone()
                            .or_else(|| object.metadata.namespace.clone())
                            .unwrap_or_default();
                        view.training_job(&namespace, &name).await.map_err(|e| {
                            Denial::field(
                                "spec.trainingJobName",
                                format!("{name:?}"),
                                format!("could not read the TrainingJob: {e}"),
                            )
                        })?
                    }
                    None => {
                        return Err(Denial::field(
                            "spec.trainingJobName",
                            "(missing)",
                            "must name the TrainingJob approved, in this namespace",
                        ));
                    }
                }
            } else {
                None
            };
            let mut object = object.clone();
            if object.metadata.namespace.is_none() {
                object.metadata.namespace = request.namespace.clone();
            }
            validate::compute_approval(
                &request.operation,
                &object,
                old,
                &requester,
                job.as_ref(),
                now,
            )
            .map(Reply::Allow)
        }
    }
}
