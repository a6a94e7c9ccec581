//! Steps 1 and 2: validate the request and project its compute under one
//! policy's catalog and utilization; a declared 6·N·D above the physical
//! upper bound is rejected.

use std::sync::Arc;

use super::{ProjectionCache, RuleOutcome};
use crate::engine::CompiledPolicy;
use crate::job::JobRequest;
use crate::projection::{Projection, project};

/// The projection of `req` under `p` (`None` when the request is invalid:
/// a rejection is added to `outcomes`). `projected` caches the last
/// projection by catalog and utilization.
pub(super) fn validate_and_project(
    req: &JobRequest,
    p: &CompiledPolicy,
    projected: &mut ProjectionCache,
    outcomes: &mut Vec<RuleOutcome>,
) -> Option<Projection> {
    let spec = &p.spec;
    let projection = if req.count == 0 {
        outcomes.push(RuleOutcome::reject(
            "validation/accelerators",
            "Rejected: spec.replicas × the accelerator resource limit of spec.template is 0; a training job needs at least one accelerator.".into(),
        ));
        None
    } else if req.max_duration.is_zero() {
        outcomes.push(RuleOutcome::reject(
            "validation/maxDuration",
            format!(
                "Rejected: spec.maxDuration is {}; it must be longer than 0s, e.g. 72h.",
                req.max_duration
            ),
        ));
        None
    } else {
        let key = (Arc::as_ptr(&p.catalog), spec.estimate.utilization);
        let result = match projected {
            Some((c, u, r)) if (*c, *u) == key => r.clone(),
            _ => {
                let r =
                    project(&p.catalog, req, spec.estimate.utilization).map_err(|e| e.to_string());
                *projected = Some((key.0, key.1, r.clone()));
                r
            }
        };
        match result {
            Ok(pr) => Some(pr),
            Err(e) => {
                outcomes.push(RuleOutcome::reject(
                    "validation/accelerator",
                    format!("Rejected: {e}."),
                ));
                None
            }
        }
    };
    if let Some(pr) = &projection
        && pr.opcount_impossible()
        && let Some(op) = pr.opcount
    {
        outcomes.push(RuleOutcome::reject(
            "validation/opcount",
            format!(
                "Rejected: declared 6·N·D = {} exceeds the upper bound {} of {} × {} at {} for {}; the declaration or the request is wrong.",
                op, pr.upper_bound, pr.count, pr.accelerator, pr.precision, req.max_duration
            ),
        ));
    }
    projection
}
