//! A TrainingJob's status, written by server-side apply, and the Event an
//! ML engineer sees when the verdict changed.

use komptroller_engine::engine::Phase;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::build;
use super::context::{Context, FIELD_MANAGER};
use crate::crd::{TrainingJob, TrainingJobStatus};
use crate::error::Result;

/// Writes the status (server-side apply, forced) when it changed, and an
/// Event for the ML engineer when the verdict changed.
pub(super) async fn write_status(
    ctx: &Context,
    api: &Api<TrainingJob>,
    tj: &TrainingJob,
    status: TrainingJobStatus,
) -> Result<()> {
    let old = tj.status.clone().unwrap_or_default();
    if build::same_status(&old, &status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": tj.name_any(), "namespace": tj.namespace()},
        "status": status,
    });
    api.patch_status(
        &tj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let old_verdict = old.decision.as_ref().and_then(|d| d.verdict);
    let new = status.decision.as_ref();
    let new_verdict = new.and_then(|d| d.verdict);
    if new_verdict.is_some()
        && (old_verdict != new_verdict
            || old.phase != status.phase && status.phase.is_some_and(|p| p.is_terminal()))
    {
        let reason = match status.phase {
            Some(Phase::Queued) => "Queued",
            Some(Phase::AwaitingApproval) => "AwaitingApproval",
            Some(Phase::Rejected) => "Rejected",
            Some(Phase::Succeeded) => "Succeeded",
            Some(Phase::Failed) => "Failed",
            _ => "Admitted",
        };
        let warning = matches!(status.phase, Some(Phase::Rejected | Phase::Failed))
            || new.and_then(|d| d.enforced_verdict) != new_verdict;
        let note = new.and_then(|d| d.message.clone()).unwrap_or_default();
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Decide".into(),
            secondary: None,
        };
        // Published in the background: the Event is for people, and the
        // reconcile's slot is better spent on the next decision.
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let reference = tj.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, "could not publish Event");
            }
        });
    }
    Ok(())
}
