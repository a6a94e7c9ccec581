//! ComputeApprovals, as the reconcile reads them: from the leader term's
//! watch cache (never a LIST per reconcile), reduced to the approvals that
//! can count (stamped by the admission webhook, not expired), and the
//! ComputeApproval status that tells the approver whether theirs counted.

use jiff::Timestamp;
use komptroller_engine::job::Principal;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::context::{Context, FIELD_MANAGER};
use crate::crd::ComputeApproval;

/// An approval that can be handed to the engine.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The ComputeApproval's name.
    pub name: String,
    /// The approver as the webhook stamped them.
    pub approver: Principal,
    /// The spec hash the approver reviewed.
    pub spec_hash: String,
}

/// A ComputeApproval's verdict on itself: counted, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub result: Result<(), String>,
}

/// The approvals of job `job` in namespace `ns` from the cache: those that
/// can count, and the refusals (unstamped, expired, unreadable expiry) whose
/// status must say so.
pub fn for_job(
    store: &Store<ComputeApproval>,
    ns: &str,
    job: &str,
    now: Timestamp,
) -> (Vec<Candidate>, Vec<Outcome>) {
    let mut candidates = Vec::new();
    let mut refused = Vec::new();
    let mut mine: Vec<_> = store
        .state()
        .into_iter()
        .filter(|a| a.spec.training_job_name == job && a.namespace().as_deref() == Some(ns))
        .collect();
    // The cache's order is a hash order; approvals are counted by name.
    mine.sort_by_key(|a| a.name_any());
    for a in mine {
        let name = a.name_any();
        match check(&a, now) {
            Ok(approver) => candidates.push(Candidate {
                name,
                approver,
                spec_hash: a.spec.spec_hash.clone(),
            }),
            Err(message) => {
                if !shows(&a, &Err(message.clone())) {
                    refused.push(Outcome {
                        name,
                        result: Err(message),
                    });
                }
            }
        }
    }
    (candidates, refused)
}

/// Whether a ComputeApproval can count at `now`: the approver the webhook
/// stamped, unless it expired.
fn check(a: &ComputeApproval, now: Timestamp) -> Result<Principal, String> {
    let Some(user) = a.spec.approver.clone().filter(|u| !u.is_empty()) else {
        return Err("spec.approver is empty: approvals count only when the admission webhook stamped the authenticated approver".into());
    };
    if let Some(exp) = &a.spec.expires {
        match exp.parse::<Timestamp>() {
            Ok(t) if t <= now => return Err(format!("spec.expires: the approval expired at {t}")),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "spec.expires: {exp:?} is not an RFC 3339 time: {e}"
                ));
            }
        }
    }
    Ok(Principal {
        user,
        groups: a.spec.approver_groups.clone(),
    })
}

/// The status a ComputeApproval shows for `result`.
fn status_of(result: &Result<(), String>) -> (bool, String) {
    match result {
        Ok(()) => (true, "Counted towards the job's escalation.".to_string()),
        Err(m) => (false, m.clone()),
    }
}

/// Whether the cached ComputeApproval already shows `result` (no write needed).
fn shows(a: &ComputeApproval, result: &Result<(), String>) -> bool {
    let (accepted, message) = status_of(result);
    a.status.as_ref().is_some_and(|s| {
        s.accepted == Some(accepted) && s.message.as_deref() == Some(message.as_str())
    })
}

/// Writes each outcome onto its ComputeApproval's status (server-side
/// apply), skipping those the cache shows already. A failed write is logged:
/// the status is for people, the engine already has the approval.
pub async fn write_outcomes(ctx: &Context, ns: &str, outcomes: Vec<Outcome>) {
    if outcomes.is_empty() {
        return;
    }
    let api: Api<ComputeApproval> = Api::namespaced(ctx.client.clone(), ns);
    for o in outcomes {
        let cached = ctx
            .approvals
            .get(&kube::runtime::reflector::ObjectRef::new(&o.name).within(ns));
        if cached.is_some_and(|a| shows(&a, &o.result)) {
            continue;
        }
        let (accepted, message) = status_of(&o.result);
        let patch = json!({
            "apiVersion": "komptroller.dev/v1alpha1",
            "kind": "ComputeApproval",
            "metadata": {"name": o.name, "namespace": ns},
            "status": {"accepted": accepted, "message": message},
        });
        if let Err(e) = api
            .patch_status(
                &o.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            tracing::warn!(approval = %o.name, error = %e, "could not write ComputeApproval status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ComputeApprovalSpec, ComputeApprovalStatus};
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn approval(
        name: &str,
        job: &str,
        approver: Option<&str>,
        expires: Option<&str>,
    ) -> ComputeApproval {
        let mut a = ComputeApproval::new(
            name,
            ComputeApprovalSpec {
                training_job_name: job.into(),
                spec_hash: "h".into(),
                approver: approver.map(String::from),
                approver_groups: vec!["safety".into()],
                expires: expires.map(String::from),
                comment: None,
            },
        );
        a.metadata.namespace = Some("ml".into());
        a
    }

    fn store_of(items: Vec<ComputeApproval>) -> Store<ComputeApproval> {
        let (store, mut writer) = reflector::store();
        for a in items {
            writer.apply_watcher_event(&Event::Apply(a));
        }
        store
    }

    #[test]
    fn only_stamped_unexpired_approvals_of_the_job_count() {
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let store = store_of(vec![
            approval("b-ok", "train", Some("alice"), Some("2026-07-01T00:00:00Z")),
            approval("a-ok", "train", Some("bob"), None),
            approval("other-job", "eval", Some("carol"), None),
            approval("unstamped", "train", None, None),
            approval(
                "expired",
                "train",
                Some("dave"),
                Some("2026-05-01T00:00:00Z"),
            ),
            approval("garbled", "train", Some("erin"), Some("next tuesday")),
        ]);
        let (ok, refused) = for_job(&store, "ml", "train", now);
        let names: Vec<&str> = ok.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a-ok", "b-ok"]);
        assert_eq!(ok[0].approver.user, "bob");
        assert_eq!(ok[0].approver.groups, ["safety"]);
        let mut refused_names: Vec<&str> = refused.iter().map(|o| o.name.as_str()).collect();
        refused_names.sort();
        assert_eq!(refused_names, ["expired", "garbled", "unstamped"]);
        let expired = refused.iter().find(|o| o.name == "expired").unwrap();
        assert_eq!(
            expired.result,
            Err("spec.expires: the approval expired at 2026-05-01T00:00:00Z".into())
        );
        // Another namespace's approval of a same-named job does not count.
        let (ok, _) = for_job(&store, "other", "train", now);
        assert!(ok.is_empty());
    }

    #[test]
    fn a_refusal_the_status_already_shows_is_not_written_again() {
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let mut a = approval("unstamped", "train", None, None);
        let (_, refused) = for_job(&store_of(vec![a.clone()]), "ml", "train", now);
        assert_eq!(refused.len(), 1);
        let (accepted, message) = status_of(&refused[0].result);
        a.status = Some(ComputeApprovalStatus {
            accepted: Some(accepted),
            message: Some(message),
        });
        let (_, refused) = for_job(&store_of(vec![a]), "ml", "train", now);
        assert!(refused.is_empty(), "{refused:?}");
    }
}
