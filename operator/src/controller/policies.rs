//! ComputePolicies: the watch that keeps the engine's policies in step with
//! the cluster's, and each policy's status (loaded, or why not).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use komptroller_engine::engine::{Event, content_hash};
use komptroller_engine::policy::Policy;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::books::Applied;
use super::context::{Context, FIELD_MANAGER};
use crate::crd::ComputePolicy;

/// Policies as the engine takes them (invalid ones are reported on their status).
pub fn engine_policy(p: &ComputePolicy) -> Policy {
    Policy {
        name: p.name_any(),
        spec: p.spec.inner.clone(),
    }
}

async fn write_policy_status(
    client: &Client,
    p: &ComputePolicy,
    result: std::result::Result<(), String>,
) {
    let api: Api<ComputePolicy> = Api::all(client.clone());
    let (ok, reason, message) = match &result {
        Ok(()) => (
            true,
            "Loaded",
            "The policy is valid and in force.".to_string(),
        ),
        Err(m) => (false, "Invalid", m.clone()),
    };
    let status = json!({
        "apiVersion": "komptroller.dev/v1alpha1",
        "kind": "ComputePolicy",
        "metadata": {"name": p.name_any()},
        "status": {
            "contentHash": content_hash(&p.spec.inner),
            "tiers": p.spec.inner.tiers.len(),
            "budgets": p.spec.inner.budgets.len(),
            "observedGeneration": p.meta().generation,
            "conditions": [{
                "type": "Accepted",
                "status": if ok { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "observedGeneration": p.meta().generation,
                "lastTransitionTime": Timestamp::now().to_string(),
            }],
        },
    });
    if p.status.as_ref().and_then(|s| s.content_hash.as_deref())
        == Some(content_hash(&p.spec.inner).as_str())
        && p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && (c.status == "True") == ok)
        })
    {
        return;
    }
    if let Err(e) = api
        .patch_status(
            &p.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
    {
        tracing::warn!(policy = %p.name_any(), error = %e, "could not write ComputePolicy status");
    }
}

/// Keeps the engine's policies in step with the cluster's ComputePolicies.
pub(super) async fn policy_loop(ctx: Arc<Context>) {
    let api: Api<ComputePolicy> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut init: Vec<String> = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "ComputePolicy watch error; retrying");
                continue;
            }
        };
        match ev {
            WatchEvent::Init => init.clear(),
            WatchEvent::InitApply(p) => {
                init.push(p.name_any());
                upsert_policy(&ctx, &p).await;
                seen.insert(p.name_any(), ());
            }
            WatchEvent::Apply(p) => {
                upsert_policy(&ctx, &p).await;
                seen.insert(p.name_any(), ());
            }
            WatchEvent::InitDone => {
                let gone: Vec<String> =
                    seen.keys().filter(|k| !init.contains(k)).cloned().collect();
                for name in gone {
                    remove_policy(&ctx, &name).await;
                    seen.remove(&name);
                }
            }
            WatchEvent::Delete(p) => {
                remove_policy(&ctx, &p.name_any()).await;
                seen.remove(&p.name_any());
            }
        }
    }
}

async fn upsert_policy(ctx: &Context, p: &ComputePolicy) {
    let policy = engine_policy(p);
    let hash = content_hash(&policy.spec);
    let name = policy.name.clone();
    let result = ctx.with_books(None, |b| {
        if b.policy_hashes.get(&name) == Some(&hash) {
            return Ok((false, Applied::default()));
        }
        let a = b.apply(Timestamp::now(), Event::UpsertPolicy(policy))?;
        b.policy_hashes.insert(name.clone(), hash);
        Ok((true, a))
    });
    match result {
        Ok((changed, applied)) => {
            if changed {
                tracing::info!(policy = %name, "ComputePolicy loaded");
                // Held jobs were re-evaluated; waiting jobs may have moved.
                trigger_held(ctx);
            }
            let _ = ctx.persist(&applied).await;
            write_policy_status(&ctx.client, p, Ok(())).await;
        }
        Err(e) => {
            tracing::warn!(policy = %name, error = %e, "ComputePolicy refused");
            write_policy_status(&ctx.client, p, Err(e.to_string())).await;
        }
    }
}

async fn remove_policy(ctx: &Context, name: &str) {
    let result = ctx.with_books(None, |b| {
        if b.policy_hashes.remove(name).is_none() {
            return Ok(((), Applied::default()));
        }
        let a = b.apply(
            Timestamp::now(),
            Event::RemovePolicy {
                name: name.to_string(),
            },
        )?;
        Ok(((), a))
    });
    if let Ok((_, applied)) = result {
        tracing::info!(policy = %name, "ComputePolicy removed");
        trigger_held(ctx);
        let _ = ctx.persist(&applied).await;
    }
}

/// Triggers every TrainingJob that waits (queued or awaiting approval), so
/// their status shows the new reason and position.
fn trigger_held(ctx: &Context) {
    ctx.refresh_all_held
        .store(true, std::sync::atomic::Ordering::Relaxed);
    ctx.queue_dirty.notify_one();
}
