//! The resource registry: built-in kinds the product touches, and kinds
//! registered at runtime by CustomResourceDefinitions. Discovery documents
//! are rendered from it so kubectl and kube-rs see exactly what is served.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::schema::{CompiledSchema, structural_errors};

/// A column of `kubectl get` output.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served version of a resource.
#[derive(Clone)]
pub struct VersionDef {
    pub name: String,
    pub served: bool,
    pub storage: bool,
    pub status_subresource: bool,
    pub schema: Option<Arc<CompiledSchema>>,
    /// The schema as written in the CRD (for OpenAPI publishing).
    pub raw_schema: Option<Arc<Value>>,
    pub columns: Vec<Column>,
}

/// A resource (a plural name in an API group).
#[derive(Clone)]
pub struct ResourceDef {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub versions: Vec<VersionDef>,
    /// Whether `metadata.generation` is maintained.
    pub has_generation: bool,
    /// `Some(name)` when registered by a CRD.
    pub crd: Option<String>,
    /// Only `create` is served (access reviews).
    pub create_only: bool,
}

impl ResourceDef {
    pub fn version(&self, v: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|x| x.name == v && x.served)
    }

    pub fn storage_version(&self) -> &str {
        self.versions
            .iter()
            .find(|v| v.storage)
            .or(self.versions.first())
            .map_or("v1", |v| v.name.as_str())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }
}

/// Resource identity: API group and plural.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

impl ResKey {
    pub fn new(group: &str, plural: &str) -> Self {
        Self {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    generation: bool,
    categories: &'static [&'static str],
}

#[allow(clippy::too_many_arguments)]
const fn b(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    generation: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced,
        short,
        status,
        generation,
        categories: &[],
    }
}

const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        &["ns"],
        true,
        false,
    ),
    b(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        true,
        &["cm"],
        false,
        false,
    ),
    b("", "v1", "secrets", "Secret", true, &[], false, false),
    b(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        false,
    ),
    b("", "v1", "events", "Event", true, &["ev"], false, false),
    b("", "v1", "services", "Service", true, &["svc"], true, false),
    b("", "v1", "pods", "Pod", true, &["po"], true, false),
    b(
        "",
        "v1",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
        false,
    ),
    b(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        true,
    ),
    b("batch", "v1", "jobs", "Job", true, &[], true, true),
    b(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        &["ev"],
        false,
        false,
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
        false,
    ),
    b(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
        true,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
        false,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        &[],
        false,
        true,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        &[],
        false,
        true,
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
        true,
    ),
    b(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        &[],
        false,
        false,
    ),
    b(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
        &[],
        false,
        false,
    ),
];

/// Built-in columns for a few kinds kubectl users look at.
fn builtin_columns(group: &str, plural: &str) -> Vec<Column> {
    let col = |name: &str, type_: &str, path: &str| Column {
        name: name.into(),
        type_: type_.into(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        json_path: path.into(),
    };
    match (group, plural) {
        ("", "namespaces") => vec![col("Status", "string", ".status.phase")],
        ("batch", "jobs") => vec![
            col("Status", "string", "@jobstatus"),
            col("Completions", "string", "@jobcompletions"),
            col("Duration", "string", "@jobduration"),
        ],
        ("coordination.k8s.io", "leases") => vec![col("Holder", "string", ".spec.holderIdentity")],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![col("Created At", "string", ".metadata.creationTimestamp")]
        }
        _ => Vec::new(),
    }
}

/// The registry of served resources.
#[derive(Clone, Default)]
pub struct Registry {
    pub resources: BTreeMap<ResKey, ResourceDef>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut resources = BTreeMap::new();
        for bi in BUILTINS {
            let categories: Vec<String> =
                if matches!(bi.plural, "jobs" | "deployments" | "pods" | "services") {
                    vec!["all".into()]
                } else {
                    bi.categories.iter().map(|s| s.to_string()).collect()
                };
            let def = ResourceDef {
                group: bi.group.into(),
                plural: bi.plural.into(),
                singular: bi.kind.to_lowercase(),
                kind: bi.kind.into(),
                list_kind: format!("{}List", bi.kind),
                namespaced: bi.namespaced,
                short_names: bi.short.iter().map(|s| s.to_string()).collect(),
                categories,
                versions: vec![VersionDef {
                    name: bi.version.into(),
                    served: true,
                    storage: true,
                    status_subresource: bi.status,
                    schema: None,
                    raw_schema: None,
                    columns: builtin_columns(bi.group, bi.plural),
                }],
                has_generation: bi.generation,
                crd: None,
                create_only: bi.plural.ends_with("accessreviews"),
            };
            resources.insert(ResKey::new(bi.group, bi.plural), def);
        }
        Self { resources }
    }

    pub fn get(&self, key: &ResKey) -> Option<&ResourceDef> {
        self.resources.get(key)
    }

    /// Finds a served resource by group, version and plural.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .get(&ResKey::new(group, plural))
            .filter(|d| d.version(version).is_some())
    }

    /// Groups and their served versions, in a stable order (built-ins first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for def in self.resources.values() {
            if def.group.is_empty() {
                continue;
            }
            let entry = match out.iter_mut().position(|(g, _)| *g == def.group) {
                Some(i) => &mut out[i].1,
                None => {
                    out.push((def.group.clone(), Vec::new()));
                    let last = out.len() - 1;
                    &mut out[last].1
                }
            };
            // Storage (preferred) version first.
            let mut versions: Vec<&VersionDef> = def.versions.iter().filter(|v| v.served).collect();
            versions.sort_by_key(|v| !v.storage);
            for v in versions {
                if !entry.contains(&v.name) {
                    entry.push(v.name.clone());
                }
            }
        }
        out
    }

    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(g, versions)| group_doc(&g, &versions))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    pub fn api_group(&self, group: &str) -> Option<Value> {
        self.groups()
            .into_iter()
            .find(|(g, _)| g == group)
            .map(|(g, versions)| {
                let mut doc = group_doc(&g, &versions);
                doc["kind"] = json!("APIGroup");
                doc["apiVersion"] = json!("v1");
                doc
            })
    }

    /// `APIResourceList` for one group version, or `None` if nothing is served there.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for def in self.resources.values().filter(|d| d.group == group) {
            let Some(v) = def.version(version) else {
                continue;
            };
            let verbs: Vec<&str> = if def.create_only {
                vec!["create"]
            } else {
                vec![
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ]
            };
            let mut r = json!({
                "name": def.plural,
                "singularName": def.singular,
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": verbs,
            });
            if !def.short_names.is_empty() {
                r["shortNames"] = json!(def.short_names);
            }
            if !def.categories.is_empty() {
                r["categories"] = json!(def.categories);
            }
            resources.push(r);
            if v.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", def.plural),
                    "singularName": "",
                    "namespaced": def.namespaced,
                    "kind": def.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if group.is_empty() && def.plural == "namespaces" {
                resources.push(json!({
                    "name": "namespaces/finalize", "singularName": "", "namespaced": false,
                    "kind": "Namespace", "verbs": ["update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }))
    }

    /// Registers (or replaces) the resource defined by an accepted CRD.
    pub fn register_crd(&mut self, def: ResourceDef) {
        self.resources
            .insert(ResKey::new(&def.group, &def.plural), def);
    }

    pub fn unregister_crd(&mut self, group: &str, plural: &str) {
        self.resources.remove(&ResKey::new(group, plural));
    }
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": vs, "preferredVersion": preferred})
}

/// Validates a CRD object as the real apiextensions-apiserver does (the subset
/// that matters) and builds the resource it defines.
pub fn crd_to_resource(crd: &Value) -> Result<ResourceDef, Vec<Cause>> {
    let mut causes = Vec::new();
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if group.is_empty() {
        causes.push(Cause::new(
            "spec.group",
            "FieldValueRequired",
            "Required value",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::new(
            "spec.names.plural",
            "FieldValueRequired",
            "Required value",
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::new(
            "spec.names.kind",
            "FieldValueRequired",
            "Required value",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::new(
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = spec
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::new(
            "spec.scope",
            "FieldValueNotSupported",
            format!(
                "Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        ));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::new(
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: null: must have exactly one version marked as storage version",
        ));
    }
    let storage_count = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage_count != 1 {
        causes.push(Cause::new(
            "spec.versions",
            "FieldValueInvalid",
            format!("Invalid value: {storage_count}: must have exactly one version marked as storage version"),
        ));
    }
    let mut vdefs = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let vname = v.get("name").and_then(Value::as_str).unwrap_or_default();
        let base = format!("spec.versions[{i}]");
        let schema = v.pointer("/schema/openAPIV3Schema");
        let compiled = match schema {
            None => {
                causes.push(Cause::new(
                    format!("{base}.schema.openAPIV3Schema"),
                    "FieldValueRequired",
                    "Required value: schemas are required",
                ));
                None
            }
            Some(s) => {
                let errs = structural_errors(s, &format!("{base}.schema.openAPIV3Schema"));
                if errs.is_empty() {
                    match CompiledSchema::compile(s) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(mut e) => {
                            for c in &mut e {
                                c.field = format!("{base}.schema.openAPIV3Schema{}", c.field);
                            }
                            causes.extend(e);
                            None
                        }
                    }
                } else {
                    causes.extend(errs);
                    None
                }
            }
        };
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| Column {
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .into(),
                        format: c
                            .get("format")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_else(|| {
                vec![Column {
                    name: "Age".into(),
                    type_: "date".into(),
                    format: String::new(),
                    description: String::new(),
                    priority: 0,
                    json_path: ".metadata.creationTimestamp".into(),
                }]
            });
        vdefs.push(VersionDef {
            name: vname.into(),
            served: v.get("served").and_then(Value::as_bool).unwrap_or(false),
            storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
            status_subresource: v.pointer("/subresources/status").is_some(),
            schema: compiled,
            raw_schema: schema.map(|s| Arc::new(s.clone())),
            columns,
        });
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let strs = |k: &str| -> Vec<String> {
        names
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ResourceDef {
        group: group.into(),
        plural: plural.into(),
        singular: names
            .get("singular")
            .and_then(Value::as_str)
            .map_or_else(|| kind.to_lowercase(), String::from),
        kind: kind.into(),
        list_kind: names
            .get("listKind")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{kind}List"), String::from),
        namespaced: scope == "Namespaced",
        short_names: strs("shortNames"),
        categories: strs("categories"),
        versions: vdefs,
        has_generation: true,
        crd: Some(name.into()),
        create_only: false,
    })
}

/// The CRD status the real server writes once names are accepted.
pub fn crd_status(crd: &Value, now: &str) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if accepted.get("singular").is_none()
        && let Some(k) = names.get("kind").and_then(Value::as_str)
    {
        accepted["singular"] = json!(k.to_lowercase());
    }
    if accepted.get("listKind").is_none()
        && let Some(k) = names.get("kind").and_then(Value::as_str)
    {
        accepted["listKind"] = json!(format!("{k}List"));
    }
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": stored,
    })
}

/// The error for a CRD the server refuses.
pub fn crd_invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        name,
        causes,
    )
}

impl Registry {
    /// `/openapi/v3`: the list of group-version documents.
    pub fn openapi_v3_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        let mut gvs: Vec<(String, String)> = Vec::new();
        for def in self.resources.values() {
            for v in def.versions.iter().filter(|v| v.served) {
                let gv = (def.group.clone(), v.name.clone());
                if !gvs.contains(&gv) {
                    gvs.push(gv);
                }
            }
        }
        for (g, v) in gvs {
            let key = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=standin")}),
            );
        }
        json!({"paths": paths})
    }

    /// `/openapi/v3/apis/{g}/{v}`: operations of a group version, enough for
    /// kubectl to learn that the server validates fields itself
    /// (`fieldValidation`). Schemas of custom resources are included; built-in
    /// kinds get an open object schema.
    pub fn openapi_v3_gv(&self, group: &str, version: &str) -> Option<Value> {
        let mut paths = serde_json::Map::new();
        let mut schemas = serde_json::Map::new();
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        for def in self.resources.values().filter(|d| d.group == group) {
            if def.version(version).is_none() {
                continue;
            }
            let gvk = json!({"group": group, "version": version, "kind": def.kind});
            let params = json!([
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ]);
            let op = |action: &str| {
                json!({
                    "operationId": format!("{action}{}", def.kind),
                    "parameters": params,
                    "x-kubernetes-action": action,
                    "x-kubernetes-group-version-kind": gvk,
                    "responses": {"200": {"description": "OK"}},
                })
            };
            let item = if def.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", def.plural)
            } else {
                format!("{prefix}/{}/{{name}}", def.plural)
            };
            let coll = if def.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}", def.plural)
            } else {
                format!("{prefix}/{}", def.plural)
            };
            if def.create_only {
                // The real document has only `post` here, and kubectl then falls back
                // to OpenAPI v2, which the stand-in does not serve; a `patch`
                // entry tells kubectl the server validates fields itself.
                paths.insert(coll, json!({"post": op("post"), "patch": op("patch")}));
                continue;
            }
            paths.insert(item, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
            paths.insert(coll, json!({"get": op("list"), "post": op("post")}));
            let schema_name = format!(
                "{}.{}.{}",
                if group.is_empty() {
                    "io.k8s.api.core"
                } else {
                    group
                },
                version,
                def.kind
            );
            let mut schema = json!({"type": "object", "x-kubernetes-group-version-kind": [gvk]});
            if let Some(raw) = def.version(version).and_then(|v| v.raw_schema.clone()) {
                schema = (*raw).clone();
                schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            }
            schemas.insert(schema_name, schema);
        }
        if paths.is_empty() {
            return None;
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0-kube-standin"},
            "paths": paths,
            "components": {"schemas": schemas},
        }))
    }
}
