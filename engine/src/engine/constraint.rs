//! What a throttled job waits on: one policy's budget over one scope key, or
//! one policy's capacity cap. A queued job lists the constraints it waits
//! on; StrictFIFO holds later jobs back on the constraints earlier ones wait
//! on, and the wake-up index files a job by the kinds it waits on (a finish
//! frees caps, time frees budget windows).

use std::fmt;
use std::sync::Arc;

use crate::policy::BudgetScope;

/// One constraint a job can be throttled on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Constraint {
    /// A policy's budget over one scope key: a namespace, a lineage, or the
    /// cluster (an empty key).
    Budget {
        policy: Arc<str>,
        budget: Arc<str>,
        scope: BudgetScope,
        key: String,
    },
    /// A policy's cap on the cluster (`namespace` `None`) or on one namespace.
    Cap {
        policy: Arc<str>,
        namespace: Option<String>,
    },
}

impl Constraint {
    /// The constraint of a policy's budget for `key` (see [`Constraint::Budget`]).
    pub(super) fn budget(
        policy: &Arc<str>,
        budget: &Arc<str>,
        scope: BudgetScope,
        key: &str,
    ) -> Self {
        Constraint::Budget {
            policy: Arc::clone(policy),
            budget: Arc::clone(budget),
            scope,
            key: key.to_string(),
        }
    }

    /// The constraint of a policy's cap: the cluster's, or `namespace`'s.
    pub(super) fn cap(policy: &Arc<str>, namespace: Option<&str>) -> Self {
        Constraint::Cap {
            policy: Arc::clone(policy),
            namespace: namespace.map(str::to_string),
        }
    }

    /// A budget window (which only time frees).
    pub(super) fn is_budget(&self) -> bool {
        matches!(self, Constraint::Budget { .. })
    }

    /// A capacity cap (which only a finish frees).
    pub(super) fn is_cap(&self) -> bool {
        matches!(self, Constraint::Cap { .. })
    }

    /// A cap on `namespace` itself (not the cluster's): only that
    /// namespace's finishing jobs free it.
    pub(super) fn is_cap_of(&self, namespace: &str) -> bool {
        matches!(self, Constraint::Cap { namespace: Some(ns), .. } if ns == namespace)
    }
}

/// How a constraint is named in a StrictFIFO reason.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Budget {
                policy,
                budget,
                scope,
                key,
            } => write!(f, "budget/{policy}/{budget}/{scope:?}/{key}"),
            Constraint::Cap {
                policy,
                namespace: None,
            } => write!(f, "capacity/{policy}/cluster"),
            Constraint::Cap {
                policy,
                namespace: Some(ns),
            } => write!(f, "capacity/{policy}/namespace {ns}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_in_reasons() {
        let p: Arc<str> = Arc::from("org");
        let b: Arc<str> = Arc::from("monthly");
        let cases = [
            (
                Constraint::budget(&p, &b, BudgetScope::Namespace, "research"),
                "budget/org/monthly/Namespace/research",
            ),
            (
                Constraint::budget(&p, &b, BudgetScope::Cluster, ""),
                "budget/org/monthly/Cluster/",
            ),
            (Constraint::cap(&p, None), "capacity/org/cluster"),
            (
                Constraint::cap(&p, Some("research")),
                "capacity/org/namespace research",
            ),
        ];
        for (c, want) in cases {
            assert_eq!(c.to_string(), want);
        }
        assert!(Constraint::cap(&p, Some("research")).is_cap_of("research"));
        assert!(!Constraint::cap(&p, None).is_cap_of("research"));
        assert!(!Constraint::cap(&p, Some("research")).is_cap_of("vision"));
    }
}
