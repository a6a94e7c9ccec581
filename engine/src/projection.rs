//! Compute projection: what a job will spend, from the accelerators it will
//! really get.
//!
//! - rate = count × dense peak at the declared precision
//! - upper bound = rate × maxDuration (utilization 1.0)
//! - expected = upper bound × utilization
//! - opcount = 6·N·D when parameters and tokens are declared (Epoch AI's
//!   arithmetic method; dense transformers, active parameters for MoE)
//! - adversarial ceiling = count × the fastest dense peak the hardware
//!   supports × maxDuration, because the declared precision cannot be
//!   verified (DOMAIN.md B, "Recommended defaults").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, Precision};
use crate::job::JobRequest;
use crate::policy::Basis;
use crate::units::{AcceleratorSeconds, Flop, FlopPerSecond, Seconds};

/// Utilization assumed for the expected estimate when neither the policy nor
/// the catalog entry sets one: Epoch AI's recommendation for language models
/// when MFU is unknown (DOMAIN.md B, [E2]).
pub const FALLBACK_UTILIZATION: f64 = 0.3;

/// The figures of one job's projection, all named plainly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Projection {
    /// Catalog key of the accelerator.
    pub accelerator: String,
    /// Number of accelerators (replicas × per-pod limit).
    pub count: u32,
    /// Declared precision.
    pub precision: Precision,
    /// count × dense peak at the declared precision.
    pub rate: FlopPerSecond,
    /// rate × maxDuration.
    pub upper_bound: Flop,
    /// Utilization applied for the expected estimate.
    pub utilization: f64,
    /// upper bound × utilization.
    pub expected: Flop,
    /// 6 × parameters × tokens, when both are declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcount: Option<Flop>,
    /// The fastest dense precision the hardware supports.
    pub ceiling_precision: Precision,
    /// count × peak at ceiling_precision × maxDuration.
    pub adversarial_ceiling: Flop,
    /// maxDuration in seconds.
    pub max_duration: Seconds,
    /// count × maxDuration.
    pub accelerator_seconds: AcceleratorSeconds,
}

impl Projection {
    /// The figure a policy with `basis` governs by: never below the declared opcount.
    pub fn governing(&self, basis: Basis) -> Flop {
        let base = match basis {
            Basis::UpperBound => self.upper_bound,
            Basis::Expected => self.expected,
            Basis::AdversarialCeiling => self.adversarial_ceiling,
        };
        match self.opcount {
            Some(op) => base.max(op),
            None => base,
        }
    }

    /// FLOP consumed by running for `elapsed` at this projection's rate,
    /// under the same basis as decisions (so consumed and projected compare).
    pub fn consumed(&self, elapsed: Seconds, basis: Basis) -> Flop {
        match basis {
            Basis::UpperBound => self.rate * elapsed,
            Basis::Expected => self.rate * elapsed * self.utilization,
            Basis::AdversarialCeiling => {
                if self.max_duration.0 > 0.0 {
                    self.adversarial_ceiling * (elapsed.0 / self.max_duration.0)
                } else {
                    Flop::ZERO
                }
            }
        }
    }

    /// Whether a declared opcount exceeds the upper bound at the declared
    /// precision: the job could not do that much work in maxDuration, so the
    /// declaration or the request is wrong (DESIGN.md, decision step 2).
    pub fn opcount_impossible(&self) -> bool {
        self.opcount
            .is_some_and(|op| op.0 > self.upper_bound.0 * (1.0 + 1e-9))
    }
}

/// Projects `job` with `catalog`; `utilization` overrides the catalog default.
pub fn project(
    catalog: &Catalog,
    job: &JobRequest,
    utilization: Option<f64>,
) -> Result<Projection, CatalogError> {
    let entry = catalog.resolve(&job.accelerator.kind)?;
    let precision = job.accelerator.precision;
    let peak = catalog.peak(&entry.name, precision)?;
    let (ceiling_precision, fastest) = entry.fastest().unwrap_or((precision, peak));
    let count = f64::from(job.count);
    let duration = job.max_duration.seconds();
    let rate = FlopPerSecond(peak.0 * count);
    let upper_bound = rate * duration;
    let utilization = utilization
        .or(entry.default_utilization)
        .unwrap_or(FALLBACK_UTILIZATION);
    let opcount = match (job.model.parameters, job.model.tokens) {
        (Some(n), Some(d)) if n > 0.0 && d > 0.0 => Some(Flop(6.0 * n * d)),
        _ => None,
    };
    Ok(Projection {
        accelerator: entry.name.clone(),
        count: job.count,
        precision,
        rate,
        upper_bound,
        utilization,
        expected: upper_bound * utilization,
        opcount,
        ceiling_precision,
        adversarial_ceiling: FlopPerSecond(fastest.0 * count) * duration,
        max_duration: duration,
        accelerator_seconds: AcceleratorSeconds::of(job.count, duration),
    })
}
