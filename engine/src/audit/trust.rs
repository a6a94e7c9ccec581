//! The auditor's inputs besides the books: the trust file (which clusters
//! exist, the public keys each signs with and when each key was valid, how
//! often each must report, and the auditor's own thresholds) and the alias
//! file (one model known under different names in different clusters).
//!
//! Both are YAML. Key entries name PEM files relative to the trust file or
//! hold the PEM inline; the caller supplies how a named file is read, so the
//! engine stays free of I/O and a test can hand keys over in memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::duration::GoDuration;
use crate::ledger::Sha256Digest;
use crate::signing;
use crate::units::Flop;

/// Bad auditor input (trust file, alias file, flags): one sentence naming
/// the file, the field, the value and the rule. Exit code 2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuditInputError(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, AuditInputError> {
    Err(AuditInputError(message.into()))
}

/// A threshold the auditor checks the merged lineages against, beside the
/// reporting thresholds the clusters' own reports carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditThreshold {
    /// What obliges the notification, e.g. `EU AI Act Art. 52(1)`.
    pub regulation: String,
    /// Crossed when a lineage's merged cumulative charged FLOP exceeds this.
    pub threshold: Flop,
    /// Time from the crossing to the notification deadline.
    pub notify_within: GoDuration,
}

/// One public key a cluster signs with, and when it was valid.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub key: VerifyingKey,
    pub key_id: Sha256Digest,
    /// Where it came from (a file name, or `inline key N`), for messages.
    pub source: String,
    /// Reports whose period ends before this are not accepted under it.
    pub valid_from: Option<Timestamp>,
    /// Reports whose period ends at or after this are not accepted under it.
    pub valid_until: Option<Timestamp>,
}

impl TrustedKey {
    /// Whether a report whose period ends at `at` may be signed with this key.
    pub fn valid_at(&self, at: Timestamp) -> bool {
        self.valid_from.is_none_or(|f| at >= f) && self.valid_until.is_none_or(|u| at < u)
    }

    /// "valid from A until B" (or "always valid") for messages.
    pub fn validity_text(&self) -> String {
        match (self.valid_from, self.valid_until) {
            (None, None) => "valid at any time".to_string(),
            (Some(f), None) => format!("valid from {f}"),
            (None, Some(u)) => format!("valid until {u}"),
            (Some(f), Some(u)) => format!("valid from {f} until {u}"),
        }
    }
}

/// A cluster the auditor expects books from.
#[derive(Clone, Debug)]
pub struct TrustedCluster {
    pub name: String,
    pub keys: Vec<TrustedKey>,
    /// How often the cluster must report: each report's period is at most
    /// this (plus `grace`) and the newest ends within it of the audit time.
    pub report_every: GoDuration,
    /// Slack on `report_every` (default: a tenth of it).
    pub grace: GoDuration,
}

impl TrustedCluster {
    /// `report_every + grace`: the longest period, and the longest silence, accepted.
    pub fn allowed_gap(&self) -> std::time::Duration {
        self.report_every.0.saturating_add(self.grace.0)
    }
}

/// The parsed, validated trust file.
#[derive(Clone, Debug)]
pub struct Trust {
    pub clusters: Vec<TrustedCluster>,
    pub thresholds: Vec<AuditThreshold>,
}

impl Trust {
    pub fn cluster(&self, name: &str) -> Option<&TrustedCluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTrust {
    clusters: Vec<RawCluster>,
    #[serde(default)]
    thresholds: Vec<AuditThreshold>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCluster {
    name: String,
    keys: Vec<RawKey>,
    report_every: GoDuration,
    #[serde(default)]
    grace: Option<GoDuration>,
}

/// A key entry: a string (a PEM file path relative to the trust file, or
/// inline PEM) or `{key, validFrom, validUntil}`.
struct RawKey {
    key: String,
    valid_from: Option<Timestamp>,
    valid_until: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDatedKey {
    key: String,
    #[serde(default)]
    valid_from: Option<Timestamp>,
    #[serde(default)]
    valid_until: Option<Timestamp>,
}

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a PEM file path, inline PEM, or {key, validFrom, validUntil} (RFC 3339 times)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
                Ok(RawKey {
                    key: v.to_string(),
                    valid_from: None,
                    valid_until: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawKey, A::Error> {
                let k = RawDatedKey::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawKey {
                    key: k.key,
                    valid_from: k.valid_from,
                    valid_until: k.valid_until,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses and validates a trust file. `read_key` reads a key file named by
/// a path relative to the trust file (inline PEM is recognised by its
/// `-----BEGIN` line and needs no reading).
pub fn parse_trust(
    text: &str,
    source: &str,
    mut read_key: impl FnMut(&str) -> Result<String, String>,
) -> Result<Trust, AuditInputError> {
    let raw: RawTrust = serde_saphyr::from_str(text).map_err(|e| {
        AuditInputError(format!(
            "{source}: not a trust file (clusters: [{{name, keys, reportEvery}}]): {e}"
        ))
    })?;
    if raw.clusters.is_empty() {
        return bad(format!(
            "{source}: field clusters is empty; name at least one cluster to audit"
        ));
    }
    let mut clusters: Vec<TrustedCluster> = Vec::new();
    for (i, c) in raw.clusters.into_iter().enumerate() {
        let at = format!("{source}: clusters[{i}]");
        check_name(&c.name, &format!("{at}.name"))?;
        if clusters.iter().any(|o| o.name == c.name) {
            return bad(format!(
                "{at}.name: cluster {:?} is listed twice; each cluster appears once with all its keys",
                c.name
            ));
        }
        if c.report_every.is_zero() {
            return bad(format!(
                "{at}.reportEvery: is 0; give how often the cluster reports, e.g. 1d"
            ));
        }
        if c.keys.is_empty() {
            return bad(format!(
                "{at}.keys: cluster {:?} has no key; list the public key(s) its reports are signed with",
                c.name
            ));
        }
        let mut keys = Vec::new();
        for (k, raw_key) in c.keys.into_iter().enumerate() {
            let field = format!("{at}.keys[{k}]");
            if let (Some(f), Some(u)) = (raw_key.valid_from, raw_key.valid_until)
                && f >= u
            {
                return bad(format!(
                    "{field}: validFrom {f} is not before validUntil {u}; the key would never be valid"
                ));
            }
            let (pem, origin) = if raw_key.key.contains("-----BEGIN") {
                (raw_key.key.clone(), format!("inline key {field}"))
            } else {
                let path = raw_key.key.trim();
                if path.is_empty() {
                    return bad(format!(
                        "{field}: is empty; give a PEM file path or the PEM text"
                    ));
                }
                (
                    read_key(path).map_err(|e| AuditInputError(format!("{field}: {e}")))?,
                    path.to_string(),
                )
            };
            let parsed = signing::parse_public_keys_pem(&pem)
                .map_err(|e| AuditInputError(format!("{field} ({origin}): {e}")))?;
            for key in parsed {
                keys.push(TrustedKey {
                    key_id: signing::key_id(&key),
                    key,
                    source: origin.clone(),
                    valid_from: raw_key.valid_from,
                    valid_until: raw_key.valid_until,
                });
            }
        }
        let grace = c.grace.unwrap_or(GoDuration(c.report_every.0 / 10));
        clusters.push(TrustedCluster {
            name: c.name,
            keys,
            report_every: c.report_every,
            grace,
        });
    }
    for (i, t) in raw.thresholds.iter().enumerate() {
        let at = format!("{source}: thresholds[{i}]");
        if !(t.threshold.get().is_finite() && t.threshold.get() > 0.0) {
            return bad(format!(
                "{at}.threshold: {} is not a positive FLOP count such as 1e25",
                t.threshold.get()
            ));
        }
        if t.regulation.trim().is_empty() {
            return bad(format!(
                "{at}.regulation: is empty; say what obliges the notification"
            ));
        }
    }
    Ok(Trust {
        clusters,
        thresholds: raw.thresholds,
    })
}

fn check_name(name: &str, field: &str) -> Result<(), AuditInputError> {
    if name.is_empty() {
        return bad(format!("{field}: is empty; every cluster needs a name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return bad(format!(
            "{field}: {name:?} contains {c:?}; a cluster name uses letters, digits, '-', '_' and '.' (it is also the NAME of --books NAME=PATH)"
        ));
    }
    Ok(())
}

/// One model known under different names: lineage names, each in every
/// cluster or in one cluster only, that the audit merges under `lineage`.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    /// `(cluster, name)` → canonical lineage (cluster-specific names).
    in_cluster: HashMap<(String, String), String>,
    /// `name` → canonical lineage (names meant in every cluster).
    everywhere: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAliases {
    aliases: Vec<RawAlias>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    lineage: String,
    names: Vec<RawAliasName>,
}

/// `name` (every cluster) or `{cluster, lineage}`.
struct RawAliasName {
    cluster: Option<String>,
    lineage: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScopedName {
    cluster: String,
    lineage: String,
}

impl<'de> Deserialize<'de> for RawAliasName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAliasName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a lineage name, or {cluster, lineage}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAliasName, E> {
                Ok(RawAliasName {
                    cluster: None,
                    lineage: v.to_string(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAliasName, A::Error> {
                let n = RawScopedName::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawAliasName {
                    cluster: Some(n.cluster),
                    lineage: n.lineage,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Aliases {
    /// No aliases: lineages are merged by name only.
    pub fn none() -> Aliases {
        Aliases::default()
    }

    /// The canonical lineage for `lineage` as `cluster` names it.
    pub fn canonical<'a>(&'a self, cluster: &str, lineage: &'a str) -> &'a str {
        // A cluster-specific alias wins over one meant in every cluster.
        if let Some(c) = self
            .in_cluster
            .get(&(cluster.to_string(), lineage.to_string()))
        {
            return c;
        }
        self.everywhere.get(lineage).map_or(lineage, String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.in_cluster.is_empty() && self.everywhere.is_empty()
    }
}

/// Parses an alias file:
/// `aliases: [{lineage: NAME, names: [OTHER, {cluster: C, lineage: OTHER}]}]`.
/// `trust` names the clusters a scoped name may refer to.
pub fn parse_aliases(text: &str, source: &str, trust: &Trust) -> Result<Aliases, AuditInputError> {
    let raw: RawAliases = serde_saphyr::from_str(text).map_err(|e| {
        AuditInputError(format!(
            "{source}: not an alias file (aliases: [{{lineage, names}}]): {e}"
        ))
    })?;
    let mut out = Aliases::default();
    // Where each name was first given, to name both places of a conflict.
    let mut seen: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
    for (i, a) in raw.aliases.into_iter().enumerate() {
        let at = format!("{source}: aliases[{i}]");
        if a.lineage.trim().is_empty() {
            return bad(format!("{at}.lineage: is empty; give the model's name"));
        }
        if a.names.is_empty() {
            return bad(format!(
                "{at}.names: is empty; list the other names of lineage {:?}",
                a.lineage
            ));
        }
        for (j, n) in a.names.into_iter().enumerate() {
            let field = format!("{at}.names[{j}]");
            if n.lineage.trim().is_empty() {
                return bad(format!("{field}: the lineage name is empty"));
            }
            if let Some(c) = &n.cluster
                && trust.cluster(c).is_none()
            {
                return bad(format!(
                    "{field}.cluster: {c:?} is not a cluster of the trust file ({})",
                    trust
                        .clusters
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let key = (n.cluster.clone(), n.lineage.clone());
            if let Some(first) = seen.get(&key) {
                return bad(format!(
                    "{field}: {} is already an alias at {first}; a name belongs to one lineage",
                    describe(&n)
                ));
            }
            seen.insert(key, field.clone());
            match n.cluster {
                Some(c) => {
                    out.in_cluster.insert((c, n.lineage), a.lineage.clone());
                }
                None => {
                    out.everywhere.insert(n.lineage, a.lineage.clone());
                }
            }
        }
    }
    // Aliases are one step: a merged name must not itself be renamed.
    for canonical in out.everywhere.values().chain(out.in_cluster.values()) {
        if let Some(other) = out.everywhere.get(canonical).filter(|o| *o != canonical) {
            return bad(format!(
                "{source}: lineage {canonical:?} is both a merged name and an alias of {other:?}; list all names of one model in one entry"
            ));
        }
    }
    Ok(out)
}

fn describe(n: &RawAliasName) -> String {
    match &n.cluster {
        Some(c) => format!("lineage {:?} in cluster {c:?}", n.lineage),
        None => format!("lineage {:?}", n.lineage),
    }
}
