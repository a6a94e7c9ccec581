//! Who may read `/metrics` and `/reports`. Reports name every lineage and
//! its compute, which is confidential to a lab, so with `--metrics-secure`
//! the operator serves them over TLS and only to callers Kubernetes itself
//! vouches for, as controller-runtime's metrics filter does: the bearer
//! token is authenticated by a TokenReview, and the caller authorized by a
//! SubjectAccessReview for `get` on the non-resource URL (RBAC
//! `nonResourceURLs: ["/reports", "/reports/*", "/metrics"]`). No token is
//! 401, a token Kubernetes rejects is 401, a caller RBAC does not allow is
//! 403. `/healthz` and `/readyz` stay open for the kubelet's probes.
//!
//! Decisions are cached for a short while per token and path, so a
//! Prometheus scraping every 15 s costs the API server two reviews a
//! minute at most, and a revoked binding takes effect within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

/// How long an allow or deny is reused for the same token and path.
pub const DECISION_TTL: Duration = Duration::from_secs(30);
/// Cached decisions kept at most (the cache is cleared when full).
const CACHE_LIMIT: usize = 10_000;

/// What the API server said about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        user: String,
    },
    /// 401, with why.
    Unauthenticated(String),
    /// 403, with who and why.
    Forbidden {
        user: String,
        reason: String,
    },
}

/// The bearer token of an `Authorization` header, or why there is none.
pub fn bearer(header: Option<&str>) -> Result<&str, String> {
    let Some(value) = header else {
        return Err("no Authorization header; send Authorization: Bearer <token> (a ServiceAccount token or a user's token)".into());
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err("the Authorization header is not \"Bearer <token>\"".into());
    }
    Ok(token)
}

/// The SubjectAccessReview for `get` on `path` by `user`.
pub fn access_review(user: &UserInfo, path: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_string()),
                verb: Some("get".into()),
            }),
            resource_attributes: None,
        },
        ..Default::default()
    }
}

/// The decision from a TokenReview's answer (`None` for the SubjectAccessReview
/// means: authenticated, ask the authorizer next).
pub fn authenticated(review: &TokenReview) -> Result<UserInfo, Decision> {
    let status = review.status.as_ref();
    if status.and_then(|s| s.authenticated) != Some(true) {
        let why = status
            .and_then(|s| s.error.clone())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the token is not valid (expired, revoked or unknown)".into());
        return Err(Decision::Unauthenticated(why));
    }
    status
        .and_then(|s| s.user.clone())
        .ok_or_else(|| Decision::Unauthenticated("the TokenReview named no user".into()))
}

/// The decision from a SubjectAccessReview's answer.
pub fn authorized(user: &UserInfo, path: &str, review: &SubjectAccessReview) -> Decision {
    let name = user.username.clone().unwrap_or_default();
    match &review.status {
        Some(s) if s.allowed && s.denied != Some(true) => Decision::Allow { user: name },
        Some(s) => Decision::Forbidden {
            reason: format!(
                "{name} may not get {path}{}; an auditor needs a ClusterRole with nonResourceURLs [\"{path}\"] (the chart's auditor role) bound to it",
                s.reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            user: name,
        },
        None => Decision::Forbidden {
            reason: format!("{name} may not get {path}: the SubjectAccessReview gave no answer"),
            user: name,
        },
    }
}

/// Authenticates and authorizes callers through the API server.
pub struct Authorizer {
    client: Client,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, Decision)>>,
}

impl Authorizer {
    pub fn new(client: Client) -> Authorizer {
        Authorizer::with_ttl(client, DECISION_TTL)
    }

    pub fn with_ttl(client: Client, ttl: Duration) -> Authorizer {
        Authorizer {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn key(token: &str, path: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(token.as_bytes());
        h.update([0u8]);
        h.update(path.as_bytes());
        h.finalize().into()
    }

    /// The decision for `token` reading `path`; `Err` when the API server
    /// could not be asked (the caller answers 503, and nothing is cached).
    pub async fn decide(&self, token: &str, path: &str) -> Result<Decision, kube::Error> {
        let key = Authorizer::key(token, path);
        if let Ok(cache) = self.cache.lock()
            && let Some((at, d)) = cache.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(d.clone());
        }
        let decision = self.ask(token, path).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), decision.clone()));
        }
        Ok(decision)
    }

    async fn ask(&self, token: &str, path: &str) -> Result<Decision, kube::Error> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        let user = match authenticated(&answer) {
            Ok(u) => u,
            Err(d) => return Ok(d),
        };
        let sars: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = sars
            .create(&PostParams::default(), &access_review(&user, path))
            .await?;
        Ok(authorized(&user, path, &answer))
    }
}

/// The middleware in front of `/metrics` and `/reports`.
pub async fn guard(State(auth): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let header_value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match bearer(header_value) {
        Ok(t) => t.to_string(),
        Err(why) => return unauthorized(&why),
    };
    match auth.decide(&token, &path).await {
        Ok(Decision::Allow { .. }) => next.run(req).await,
        Ok(Decision::Unauthenticated(why)) => unauthorized(&why),
        Ok(Decision::Forbidden { user, reason }) => {
            tracing::info!(%user, %path, "denied by the SubjectAccessReview");
            (StatusCode::FORBIDDEN, format!("forbidden: {reason}\n")).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, %path, "cannot review the caller's token");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot reach the Kubernetes API to authenticate the request; retry\n",
            )
                .into_response()
        }
    }
}

fn unauthorized(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("unauthorized: {why}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;
    use k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus;

    #[test]
    fn the_bearer_token_is_required_and_named() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert!(
            bearer(None)
                .unwrap_err()
                .contains("no Authorization header")
        );
        assert!(bearer(Some("Basic eDp5")).unwrap_err().contains("Bearer"));
        assert!(bearer(Some("Bearer  ")).is_err());
    }

    fn user() -> UserInfo {
        UserInfo {
            username: Some("system:serviceaccount:audit:auditor".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn the_access_review_asks_for_get_on_the_path() {
        let r = access_review(&user(), "/reports/report-000000000042");
        let attrs = r.spec.non_resource_attributes.unwrap();
        assert_eq!(attrs.path.as_deref(), Some("/reports/report-000000000042"));
        assert_eq!(attrs.verb.as_deref(), Some("get"));
        assert_eq!(
            r.spec.user.as_deref(),
            Some("system:serviceaccount:audit:auditor")
        );
        assert!(r.spec.resource_attributes.is_none());
    }

    #[test]
    fn review_answers_become_decisions() {
        let rejected = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            authenticated(&rejected),
            Err(Decision::Unauthenticated(_))
        ));
        let ok = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                user: Some(user()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let u = authenticated(&ok).unwrap();
        let allowed = SubjectAccessReview {
            status: Some(SubjectAccessReviewStatus {
                allowed: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            authorized(&u, "/metrics", &allowed),
            Decision::Allow { .. }
        ));
        let denied = SubjectAccessReview {
            status: Some(SubjectAccessReviewStatus {
                allowed: false,
                reason: Some("no RBAC policy matched".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        match authorized(&u, "/reports", &denied) {
            Decision::Forbidden { reason, .. } => {
                assert!(reason.contains("may not get /reports"), "{reason}");
                assert!(reason.contains("no RBAC policy matched"), "{reason}");
            }
            d => panic!("{d:?}"),
        }
    }
}
