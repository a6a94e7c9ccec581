//! The leader term's small loops beside the reconcile, all feeding the same
//! engine: waiting jobs' queue positions, the budget windows' wake-ups
//! (`Engine::next_wakeup`), and the budget-use gauges.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use komptroller_engine::engine::{Event, Phase};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::cache::CachedTrainingJob;
use super::context::Context;

/// Positions shown exactly: the head of the queue, where people wait for
/// the next admission.
const EXACT_POSITIONS: u32 = 10;

/// Whether a waiting job's shown queue position needs a new status: always
/// at the head of the queue ([`EXACT_POSITIONS`]), deeper only once it is
/// off by more than a tenth. Every admission moves every waiting job up one
/// place; rewriting all their statuses each time made the apiserver writes
/// per admission grow with the queue (a queue of 600 cost 600 status writes
/// per admission), so throughput fell as the queue grew. With the tenth,
/// a job at position p is rewritten about every p/10 admissions.
fn position_stale(shown: Option<u32>, want: Option<u32>) -> bool {
    match (shown, want) {
        (Some(s), Some(w)) if s <= EXACT_POSITIONS || w <= EXACT_POSITIONS => s != w,
        (Some(s), Some(w)) => u64::from(s.abs_diff(w)) * 10 > u64::from(w),
        (s, w) => s != w,
    }
}

/// Refreshes waiting jobs' statuses when the queue changed, at most every
/// `period`: the whole queue's positions are read in one walk
/// (`Engine::queue_positions`), and only the jobs whose shown position is
/// stale ([`position_stale`]) or whose queued-ness differs are reconciled;
/// after a policy change every waiting job is (its reason may have changed).
pub(super) async fn queue_refresh_loop(
    ctx: Arc<Context>,
    store: Store<CachedTrainingJob>,
    period: Duration,
) {
    use std::collections::HashMap;
    loop {
        ctx.queue_dirty.notified().await;
        let all = ctx
            .refresh_all_held
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let positions: HashMap<(String, String), u32> = match ctx.books.lock() {
            Ok(b) => b
                .engine
                .queue_positions()
                .map(|(id, p)| ((id.namespace.clone(), id.name.clone()), p))
                .collect(),
            Err(_) => continue,
        };
        let mut triggered = 0usize;
        for tj in store.state() {
            let status = tj.status.as_ref();
            let phase = status.and_then(|s| s.phase);
            let held = matches!(phase, Some(Phase::Queued | Phase::AwaitingApproval));
            let key = (tj.namespace().unwrap_or_default(), tj.name_any());
            let want = positions.get(&key).copied();
            let shown = status.and_then(|s| s.queue_position);
            if (held && all)
                || position_stale(shown, want)
                || (phase == Some(Phase::Queued)) != want.is_some()
            {
                triggered += 1;
                let _ = ctx.trigger.send(ObjectRef::new(&key.1).within(&key.0));
            }
        }
        tracing::debug!(target: "komptroller::timing", queued = positions.len(), triggered, "queue positions refreshed");
        tokio::time::sleep(period).await;
    }
}

/// Sends the engine a Tick when a budget window frees (`next_wakeup`).
pub(super) async fn wakeup_loop(ctx: Arc<Context>) {
    loop {
        let next = ctx.books.lock().ok().and_then(|b| b.engine.next_wakeup());
        let wait = match next {
            Some(t) => {
                let ms = t.as_millisecond() - Timestamp::now().as_millisecond();
                Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0))
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            _ = ctx.wakeup_changed.notified() => continue,
        }
        if next.is_some_and(|t| t <= Timestamp::now()) {
            match ctx.with_books(None, |b| Ok(((), b.apply(Timestamp::now(), Event::Tick)?))) {
                Ok((_, applied)) => {
                    let _ = ctx.persist(&applied).await;
                }
                Err(e) => tracing::warn!(error = %e, "tick failed"),
            }
        }
    }
}

/// Refreshes `komptroller_budget_use_ratio` every `period`: for each
/// policy budget, the charged FLOP in its window over its limit, per
/// namespace (Namespace scope), lineage (Model scope) or the cluster.
pub(super) async fn budget_gauge_loop(ctx: Arc<Context>, period: Duration) {
    use komptroller_engine::policy::BudgetScope;
    loop {
        tokio::time::sleep(period).await;
        let namespaces: Vec<String> = ctx
            .namespaces
            .state()
            .iter()
            .map(|n| n.name_any())
            .collect();
        let Ok(b) = ctx.books.lock() else { continue };
        let now = Timestamp::now();
        let lineages: Vec<String> = b.engine.lineages().into_keys().collect();
        ctx.metrics.budget_use_ratio.reset();
        for (policy, spec) in b.engine.policies() {
            for budget in &spec.budgets {
                if budget.limit.0 <= 0.0 {
                    continue;
                }
                let window = jiff::SignedDuration::from_millis(budget.window.as_millis());
                let keys: Vec<String> = match budget.scope {
                    BudgetScope::Cluster => vec![String::new()],
                    BudgetScope::Namespace => namespaces.clone(),
                    BudgetScope::Model => lineages.clone(),
                };
                for key in keys {
                    let used = b.engine.window_charged(budget.scope, &key, now, window);
                    if used.0 > 0.0 || budget.scope == BudgetScope::Cluster {
                        ctx.metrics
                            .budget_use_ratio
                            .with_label_values(&[policy, budget.name.as_str(), key.as_str()])
                            .set(used.0 / budget.limit.0);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::position_stale;

    #[test]
    fn the_head_of_the_queue_is_always_exact() {
        assert!(position_stale(Some(3), Some(2)));
        assert!(position_stale(Some(11), Some(10)));
        assert!(!position_stale(Some(7), Some(7)));
    }

    #[test]
    fn deeper_positions_wait_until_off_by_a_tenth() {
        assert!(!position_stale(Some(500), Some(460)));
        assert!(!position_stale(Some(500), Some(455)));
        assert!(position_stale(Some(500), Some(450)));
        // A job that jumped back (a higher priority arrived) likewise.
        assert!(!position_stale(Some(100), Some(109)));
        assert!(position_stale(Some(100), Some(112)));
    }

    #[test]
    fn entering_or_leaving_the_queue_is_always_shown() {
        assert!(position_stale(None, Some(400)));
        assert!(position_stale(Some(400), None));
        assert!(!position_stale(None, None));
    }
}
