//! The accelerator catalog: dense peak FLOP/s per precision for every
//! accelerator komptroller knows, with the source of each figure.
//!
//! The built-in table lives in `engine/catalog/accelerators.yaml` (embedded
//! at compile time) so its citations sit beside the numbers. Policies may add
//! entries or override built-in ones by name (`spec.accelerators`).
//!
//! Lookups accept the catalog key, any alias (GPU Feature Discovery's
//! `nvidia.com/gpu.product` values such as `NVIDIA-H100-80GB-HBM3`, Epoch
//! AI's hardware names) and ignore case, spaces, `_` and `-` differences.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::FlopPerSecond;

/// Numeric precision a job trains in.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp64,
    Fp32,
    Tf32,
    Fp16,
    #[default]
    Bf16,
    Fp8,
    Fp4,
}

impl Precision {
    pub const ALL: [Precision; 7] = [
        Precision::Fp64,
        Precision::Fp32,
        Precision::Tf32,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Fp8,
        Precision::Fp4,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp64 => "fp64",
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
            Precision::Fp4 => "fp4",
        }
    }
    pub fn parse(s: &str) -> Option<Precision> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Dense (not sparse) peak TFLOP/s per chip, by precision. Absent: not supported or not published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeakTflops {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp64: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf32: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp16: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp4: Option<f64>,
}

impl PeakTflops {
    pub fn get(&self, p: Precision) -> Option<f64> {
        match p {
            Precision::Fp64 => self.fp64,
            Precision::Fp32 => self.fp32,
            Precision::Tf32 => self.tf32,
            Precision::Fp16 => self.fp16,
            Precision::Bf16 => self.bf16,
            Precision::Fp8 => self.fp8,
            Precision::Fp4 => self.fp4,
        }
        .filter(|v| *v > 0.0)
    }
}

/// One accelerator of the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcceleratorEntry {
    /// Catalog key, lower-case with dashes, e.g. nvidia-h100-sxm.
    pub name: String,
    /// The Kubernetes extended resource that schedules it, e.g. nvidia.com/gpu.
    pub resource_name: String,
    /// Other names: GPU Feature Discovery product labels, Epoch AI hardware names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Dense peak TFLOP/s per chip by precision.
    pub peak_tflops: PeakTflops,
    /// Utilization assumed for the expected estimate when the policy sets none, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_utilization: Option<f64>,
    /// Where the figures come from, and the choice made where sources disagree.
    #[serde(default)]
    pub source: String,
}

impl AcceleratorEntry {
    /// Dense peak rate of one chip at `p`, if the chip supports it.
    pub fn peak(&self, p: Precision) -> Option<FlopPerSecond> {
        self.peak_tflops.get(p).map(|t| FlopPerSecond(t * 1e12))
    }

    /// The fastest dense precision the hardware supports: the adversarial
    /// ceiling, because the declared precision cannot be verified.
    pub fn fastest(&self) -> Option<(Precision, FlopPerSecond)> {
        Precision::ALL
            .into_iter()
            .filter_map(|p| self.peak(p).map(|r| (p, r)))
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
    }

    pub fn supported(&self) -> Vec<Precision> {
        Precision::ALL
            .into_iter()
            .filter(|p| self.peak(*p).is_some())
            .collect()
    }
}

/// The catalog: built-in entries plus a policy's additions and overrides.
#[derive(Clone, Debug)]
pub struct Catalog {
    entries: BTreeMap<String, AcceleratorEntry>,
    index: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("spec.accelerator.type: unknown accelerator {name:?}; closest catalog keys: {}", closest.join(", "))]
    Unknown { name: String, closest: Vec<String> },
    #[error("spec.accelerator.precision: {accelerator} has no published dense {precision} peak; supported: {}", supported.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "))]
    UnsupportedPrecision {
        accelerator: String,
        precision: Precision,
        supported: Vec<Precision>,
    },
    #[error("built-in catalog is invalid: {0}")]
    Builtin(String),
}

const BUILTIN: &str = include_str!("../catalog/accelerators.yaml");

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Catalog {
    /// The built-in catalog (`engine/catalog/accelerators.yaml`), parsed once
    /// per process and cloned.
    pub fn builtin() -> Catalog {
        static PARSED: OnceLock<Catalog> = OnceLock::new();
        // The embedded file is checked by the `builtin_catalog_parses` test;
        // a parse failure here would be a build defect, never input-derived.
        PARSED
            .get_or_init(|| {
                Catalog::from_yaml(BUILTIN).unwrap_or_else(|_| Catalog::from_entries(Vec::new()))
            })
            .clone()
    }

    pub fn from_yaml(text: &str) -> Result<Catalog, CatalogError> {
        let entries: Vec<AcceleratorEntry> =
            serde_saphyr::from_str(text).map_err(|e| CatalogError::Builtin(e.to_string()))?;
        Ok(Catalog::from_entries(entries))
    }

    pub fn from_entries(entries: Vec<AcceleratorEntry>) -> Catalog {
        let mut c = Catalog {
            entries: BTreeMap::new(),
            index: BTreeMap::new(),
        };
        for e in entries {
            c.upsert(e);
        }
        c
    }

    /// Adds or replaces an entry (a policy's `spec.accelerators`).
    pub fn upsert(&mut self, entry: AcceleratorEntry) {
        let key = entry.name.clone();
        self.index.insert(normalize(&key), key.clone());
        for a in &entry.aliases {
            self.index.insert(normalize(a), key.clone());
        }
        self.entries.insert(key, entry);
    }

    /// This catalog with a policy's entries applied over it.
    pub fn with_overrides(&self, overrides: &[AcceleratorEntry]) -> Catalog {
        let mut c = self.clone();
        for e in overrides {
            c.upsert(e.clone());
        }
        c
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &AcceleratorEntry> {
        self.entries.values()
    }

    /// Finds an entry by key or alias.
    pub fn get(&self, name: &str) -> Option<&AcceleratorEntry> {
        self.entries.get(name).or_else(|| {
            self.index
                .get(&normalize(name))
                .and_then(|k| self.entries.get(k))
        })
    }

    /// Finds an entry or explains which keys are closest.
    pub fn resolve(&self, name: &str) -> Result<&AcceleratorEntry, CatalogError> {
        self.get(name).ok_or_else(|| CatalogError::Unknown {
            name: name.to_string(),
            closest: self.closest(name, 3),
        })
    }

    /// Dense peak of one chip of `name` at `precision`.
    pub fn peak(&self, name: &str, precision: Precision) -> Result<FlopPerSecond, CatalogError> {
        let e = self.resolve(name)?;
        e.peak(precision)
            .ok_or_else(|| CatalogError::UnsupportedPrecision {
                accelerator: e.name.clone(),
                precision,
                supported: e.supported(),
            })
    }

    /// The `n` catalog keys nearest to `name`.
    pub fn closest(&self, name: &str, n: usize) -> Vec<String> {
        let target = normalize(name);
        let mut scored: Vec<(usize, &String)> = self
            .index
            .iter()
            .map(|(alias, key)| {
                let d = edit_distance(&target, alias);
                let bonus = if alias.contains(&target) || target.contains(alias.as_str()) {
                    d / 2
                } else {
                    d
                };
                (bonus, key)
            })
            .collect();
        scored.sort();
        let mut out: Vec<String> = Vec::new();
        for (_, k) in scored {
            if !out.contains(k) {
                out.push(k.clone());
            }
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// The accelerator resource names the catalog knows (`nvidia.com/gpu`, …).
    pub fn resource_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .entries
            .values()
            .map(|e| e.resource_name.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses() {
        Catalog::from_yaml(BUILTIN).expect("engine/catalog/accelerators.yaml must parse");
        assert!(!Catalog::builtin().is_empty());
    }

    #[test]
    fn unknown_names_closest_keys() {
        let c = Catalog::builtin();
        let err = c.resolve("nvidia-h100-sxn").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nvidia-h100-sxm"), "{msg}");
        assert!(msg.contains("spec.accelerator.type"), "{msg}");
    }

    #[test]
    fn aliases_and_case_resolve() {
        let c = Catalog::builtin();
        assert_eq!(
            c.get("NVIDIA-H100-80GB-HBM3").unwrap().name,
            "nvidia-h100-sxm"
        );
        assert_eq!(c.get("Nvidia H100 SXM").unwrap().name, "nvidia-h100-sxm");
    }
}
