//! Charges over time, for rolling-window budgets: one series per budget
//! scope key (a namespace, a lineage, the cluster).

use std::collections::VecDeque;

use crate::policy::BudgetScope;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

/// Charges over time with prefix sums. A rolling-window sum is the
/// difference of two prefix sums; the window's start only moves forward with
/// time, so each registered window keeps a cursor and finds its start in
/// amortised O(1) instead of a binary search over the whole history.
#[derive(Debug, Default)]
pub(super) struct ChargeSeries {
    /// (time in ms, cumulative FLOP including this charge)
    points: VecDeque<(i64, f64)>,
    /// Cumulative FLOP of points pruned from the front.
    pruned: f64,
    /// Absolute index of `points[0]` (points pruned so far).
    popped: usize,
    /// Per window length (ms): absolute index of the first point after the
    /// window start, as of the last query. Atomics keep `&self` queries
    /// lock-free and the engine `Sync`.
    cursors: Vec<(i64, AtomicUsize)>,
}

impl Clone for ChargeSeries {
    fn clone(&self) -> Self {
        ChargeSeries {
            points: self.points.clone(),
            pruned: self.pruned,
            popped: self.popped,
            cursors: self
                .cursors
                .iter()
                .map(|(w, c)| (*w, AtomicUsize::new(c.load(AtomicOrdering::Relaxed))))
                .collect(),
        }
    }
}

impl ChargeSeries {
    pub(super) fn with_windows(windows: &[i64]) -> ChargeSeries {
        let mut s = ChargeSeries::default();
        for w in windows {
            s.register(*w);
        }
        s
    }
    pub(super) fn register(&mut self, window_ms: i64) {
        if !self.cursors.iter().any(|(w, _)| *w == window_ms) {
            self.cursors
                .push((window_ms, AtomicUsize::new(self.popped)));
        }
    }
    pub(super) fn push(&mut self, t: i64, flop: f64) {
        let last = self.points.back().map_or(self.pruned, |p| p.1);
        self.points.push_back((t, last + flop));
    }
    fn total(&self) -> f64 {
        self.points.back().map_or(self.pruned, |p| p.1)
    }
    fn cum_before(&self, i: usize) -> f64 {
        if i == 0 {
            self.pruned
        } else {
            self.points[i - 1].1
        }
    }
    /// Cumulative sum of charges at or before `t`.
    fn cum_at(&self, t: i64) -> f64 {
        if self.points.back().is_none_or(|p| p.0 <= t) {
            return self.total();
        }
        self.cum_before(self.points.partition_point(|p| p.0 <= t))
    }
    /// Cumulative sum at or before `t`, using the cursor of `window_ms`.
    fn cum_at_window_start(&self, t: i64, window_ms: i64) -> f64 {
        let Some((_, cursor)) = self.cursors.iter().find(|(w, _)| *w == window_ms) else {
            return self.cum_at(t);
        };
        let len = self.points.len();
        let mut i = cursor
            .load(AtomicOrdering::Relaxed)
            .saturating_sub(self.popped)
            .min(len);
        if i > 0 && self.points[i - 1].0 > t {
            // Asked about the past: search instead of walking back.
            i = self.points.partition_point(|p| p.0 <= t);
        } else {
            while i < len && self.points[i].0 <= t {
                i += 1;
            }
        }
        cursor.store(i + self.popped, AtomicOrdering::Relaxed);
        self.cum_before(i)
    }
    /// Sum of charges in (now - window, now].
    pub(super) fn window_sum(&self, now: i64, window_ms: i64) -> f64 {
        self.cum_at(now) - self.cum_at_window_start(now.saturating_sub(window_ms), window_ms)
    }
    /// Earliest time at which the window sum drops to `target` or below,
    /// assuming no new charges.
    pub(super) fn frees_at(&self, window_ms: i64, target: f64) -> Option<i64> {
        let total = self.total();
        if total - self.pruned <= target {
            return None;
        }
        // The first point i such that total - cum[i] <= target: once it leaves the window the sum fits.
        let i = self.points.partition_point(|p| total - p.1 > target);
        self.points.get(i).map(|p| p.0.saturating_add(window_ms))
    }
    pub(super) fn prune_before(&mut self, t: i64) {
        while let Some(&(pt, cum)) = self.points.front() {
            if pt < t && self.points.len() > 1 {
                self.pruned = cum;
                self.points.pop_front();
                self.popped += 1;
            } else {
                break;
            }
        }
    }
}

/// The index of a budget scope's series in `Engine::windows`.
pub(super) fn scope_index(scope: BudgetScope) -> usize {
    match scope {
        BudgetScope::Namespace => 0,
        BudgetScope::Model => 1,
        BudgetScope::Cluster => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::ChargeSeries;
    use proptest::prelude::*;

    proptest! {
        /// Cursor-based window sums equal brute force, whatever the order of
        /// queries (forward, backward) and pruning.
        #[test]
        fn window_sums_match_brute_force(
            gaps in proptest::collection::vec((0i64..50, 1u32..100), 1..200),
            queries in proptest::collection::vec((0i64..6000, 0usize..3), 1..60),
            prune_at in proptest::option::of(0i64..3000),
        ) {
            let windows = [100i64, 500, 2000];
            let mut s = ChargeSeries::with_windows(&windows);
            let mut points = Vec::new();
            let mut t = 0;
            for (gap, flop) in gaps {
                t += gap;
                s.push(t, f64::from(flop));
                points.push((t, f64::from(flop)));
            }
            if let Some(p) = prune_at {
                s.prune_before(p);
            }
            for (now, w) in queries {
                let w = windows[w];
                let got = s.window_sum(now, w);
                let want: f64 = points.iter().filter(|(pt, _)| *pt > now - w && *pt <= now).map(|p| p.1).sum();
                // Pruned points are only those older than every query window here when prune_at is small.
                if prune_at.is_none_or(|p| p <= now - w) {
                    prop_assert!((got - want).abs() < 1e-6, "now {now} w {w}: {got} vs {want}");
                }
            }
        }
    }
}
