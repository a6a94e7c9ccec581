//! Patches (JSON merge, JSON, strategic-merge as an approximation) and
//! server-side apply with managed fields.
//!
//! Field ownership is tracked at leaf granularity: a path of map keys down
//! to a scalar, an atomic list or an empty map. `listType=set` lists are owned
//! per value (`v:` segments) and `listType=map` lists per item (`k:{...}`
//! segments, the real fieldsV1 notation), from the CRD schema or, for built-in
//! kinds, from a table of the keyed lists the product uses.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult, Cause};

/// A field path: `f:name` for map keys, `v:<json>` for set items.
pub type FieldPath = Vec<String>;

/// A managedFields entry.
#[derive(Debug, Clone)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: BTreeSet<FieldPath>,
}

/// How a list is merged and owned (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Owned and replaced whole.
    Atomic,
    /// Scalars owned one by one (`v:<value>`).
    Set,
    /// Maps owned per item, identified by these key fields (`k:{...}`).
    Map(Vec<String>),
}

/// Which lists of an object are sets or maps, by field path.
pub type ListKinds<'a> = &'a dyn Fn(&[String]) -> ListKind;

/// List kinds of built-in types the product touches (metadata of every kind,
/// conditions, containers, env, volumes), as their Go types declare them.
pub fn builtin_list_kind(path: &[String]) -> ListKind {
    let last = path.last().map(String::as_str).unwrap_or_default();
    match (path.len(), path.first().map(String::as_str), last) {
        (2, Some("f:metadata"), "f:finalizers") => ListKind::Set,
        // Mutating/ValidatingWebhookConfiguration (`listType=map`, key `name`),
        // so cert-manager's cainjector and an applier co-own a webhook.
        (1, _, "f:webhooks") => ListKind::Map(vec!["name".into()]),
        (2, Some("f:metadata"), "f:ownerReferences") => ListKind::Map(vec!["uid".into()]),
        (_, Some("f:status"), "f:conditions") => ListKind::Map(vec!["type".into()]),
        (
            _,
            Some("f:spec"),
            "f:containers" | "f:initContainers" | "f:env" | "f:volumes" | "f:volumeMounts"
            | "f:imagePullSecrets",
        ) => ListKind::Map(vec!["name".into()]),
        _ => ListKind::Atomic,
    }
}

/// The leaves of an object that are subject to ownership.
pub fn leaves(obj: &Value, scope: Scope, lists: ListKinds) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if scope == Scope::Status {
                    continue;
                }
                if let Some(meta) = v.as_object() {
                    for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(mv) = meta.get(mk) {
                            collect(
                                mv,
                                vec!["f:metadata".into(), format!("f:{mk}")],
                                lists,
                                &mut out,
                            );
                        }
                    }
                }
            }
            "status" if scope == Scope::Main => {}
            _ if scope == Scope::Status && k != "status" => {}
            _ => collect(v, vec![format!("f:{k}")], lists, &mut out),
        }
    }
    out
}

/// Which part of an object a request may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (no status subresource).
    All,
    /// Everything but status.
    Main,
    /// Only status.
    Status,
}

/// The `k:{...}` segment of a keyed list item, if it has every key.
fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(m)))
}

fn item_matches(item: &Value, seg: &str) -> bool {
    let Some(Ok(Value::Object(want))) = seg.strip_prefix("k:").map(serde_json::from_str::<Value>)
    else {
        return false;
    };
    want.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn collect(v: &Value, path: FieldPath, lists: ListKinds, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                collect(c, p, lists, out);
            }
        }
        // An empty set or keyed list owns no items (and so conflicts with none).
        Value::Array(a) if a.is_empty() && lists(&path) != ListKind::Atomic => {}
        Value::Array(a) if !a.is_empty() => match lists(&path) {
            ListKind::Set if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
                for item in a {
                    let mut p = path.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
            }
            ListKind::Map(keys)
                if a.iter()
                    .all(|x| x.is_object() && item_key(x, &keys).is_some()) =>
            {
                for item in a {
                    let mut p = path.clone();
                    p.push(item_key(item, &keys).unwrap_or_default());
                    collect(item, p, lists, out);
                }
            }
            _ => {
                out.insert(path);
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// The value at a field path.
pub fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        if let Some(k) = seg.strip_prefix("f:") {
            cur = cur.get(k)?;
        } else if seg.starts_with("k:") {
            cur = cur.as_array()?.iter().find(|x| item_matches(x, seg))?;
        } else if let Some(item) = seg.strip_prefix("v:") {
            let want: Value = serde_json::from_str(item).ok()?;
            let arr = cur.as_array()?;
            return if arr.contains(&want) && i == path.len() - 1 {
                arr.iter().find(|x| **x == want)
            } else {
                None
            };
        }
    }
    Some(cur)
}

fn set_path(obj: &mut Value, path: &[String], val: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        if let Some(k) = seg.strip_prefix("f:") {
            if !cur.is_object() {
                *cur = Value::Object(Map::new());
            }
            let Some(m) = cur.as_object_mut() else {
                return;
            };
            cur = m
                .entry(k.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
        } else if let Some(Ok(Value::Object(keys))) =
            seg.strip_prefix("k:").map(serde_json::from_str::<Value>)
        {
            if !cur.is_array() {
                *cur = Value::Array(Vec::new());
            }
            let Some(a) = cur.as_array_mut() else {
                return;
            };
            let idx = match a.iter().position(|x| item_matches(x, seg)) {
                Some(i) => i,
                None => {
                    a.push(Value::Object(keys));
                    a.len() - 1
                }
            };
            cur = &mut a[idx];
        } else {
            return;
        }
    }
    if let Some(k) = last.strip_prefix("f:") {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        if let Some(m) = cur.as_object_mut() {
            m.insert(k.to_string(), val);
        }
    } else if last.starts_with("k:") {
        if !cur.is_array() {
            *cur = Value::Array(Vec::new());
        }
        if let Some(a) = cur.as_array_mut() {
            match a.iter().position(|x| item_matches(x, last)) {
                Some(i) => a[i] = val,
                None => a.push(val),
            }
        }
    } else if last.starts_with("v:") {
        if !cur.is_array() {
            *cur = Value::Array(Vec::new());
        }
        if let Some(a) = cur.as_array_mut()
            && !a.contains(&val)
        {
            a.push(val);
        }
    }
}

fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *obj;
    for seg in parents {
        let next = if let Some(k) = seg.strip_prefix("f:") {
            cur.get_mut(k)
        } else if seg.starts_with("k:") {
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|x| item_matches(x, seg)))
        } else {
            None
        };
        let Some(next) = next else {
            return;
        };
        cur = next;
    }
    if let Some(k) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(k);
        }
    } else if last.starts_with("k:") {
        if let Some(a) = cur.as_array_mut() {
            a.retain(|x| !item_matches(x, last));
        }
    } else if let Some(item) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(item), cur.as_array_mut())
    {
        a.retain(|x| *x != want);
    }
    // Drop maps emptied by the removal, as the real server does for applied maps.
    let parents_len = parents.len();
    if parents_len > 0 {
        let parent_path = &path[..parents_len];
        let emptied = get_path(obj, parent_path).is_some_and(|v| {
            v.as_object().is_some_and(Map::is_empty)
                || (!last.starts_with("f:") && v.as_array().is_some_and(Vec::is_empty))
        });
        if emptied {
            remove_path(obj, parent_path);
        }
    }
}

/// fieldsV1 JSON from a set of paths.
pub fn fields_to_json(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for seg in p {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry.as_object_mut() {
                Some(m) => cur = m,
                None => break,
            }
        }
    }
    Value::Object(root)
}

/// Paths from fieldsV1 JSON (the `.` marker of non-leaf ownership is ignored).
pub fn json_to_fields(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    fn walk(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
        match v.as_object() {
            Some(m) if m.keys().any(|k| k != ".") => {
                for (k, c) in m {
                    if k == "." {
                        continue;
                    }
                    let mut p = path.clone();
                    p.push(k.clone());
                    walk(c, p, out);
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path);
                }
            }
        }
    }
    walk(v, Vec::new(), &mut out);
    out
}

pub fn read_managed(obj: &Value) -> Vec<Managed> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Managed {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .into(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                    time: e
                        .get("time")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                    fields: e.get("fieldsV1").map(json_to_fields).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_managed(obj: &mut Value, managed: &[Managed]) {
    let entries: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_json(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Records an Update-operation write: fields that changed move to `manager`.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
    scope: Scope,
    lists: ListKinds,
    now: &str,
) {
    let mut managed = old.map(read_managed).unwrap_or_default();
    let new_leaves = leaves(new, scope, lists);
    let old_leaves = old.map(|o| leaves(o, scope, lists)).unwrap_or_default();
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .cloned()
        .collect();
    let removed: Vec<&FieldPath> = old_leaves.difference(&new_leaves).collect();
    for m in &mut managed {
        m.fields.retain(|p| {
            !removed.iter().any(|r| overlaps(p, r))
                && !if m.manager != manager || m.operation != "Update" {
                    changed.iter().any(|c| overlaps(p, c))
                } else {
                    false
                }
        });
    }
    if !changed.is_empty() {
        match managed.iter_mut().find(|m| {
            m.manager == manager && m.operation == "Update" && m.subresource == subresource
        }) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.to_string();
                m.api_version = api_version.to_string();
            }
            None => managed.push(Managed {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    write_managed(new, &managed);
}

/// Server-side apply of `applied` onto `current` (or onto nothing: create).
#[allow(clippy::too_many_arguments)]
pub fn server_side_apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
    scope: Scope,
    lists: ListKinds,
    force: bool,
    now: &str,
) -> ApiResult<Value> {
    let mut managed = current.map(read_managed).unwrap_or_default();
    let applied_leaves = leaves(applied, scope, lists);
    let mut conflicts = Vec::new();
    if let Some(cur) = current {
        for p in &applied_leaves {
            for m in &managed {
                if m.manager == manager {
                    continue;
                }
                for owned in &m.fields {
                    if !overlaps(owned, p) {
                        continue;
                    }
                    let shorter = if owned.len() < p.len() { owned } else { p };
                    if get_path(cur, shorter) != get_path(applied, shorter) {
                        conflicts.push((m.manager.clone(), m.api_version.clone(), owned.clone()));
                    }
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(mgr, av, p)| {
                Cause::new(
                    dotted(p),
                    "FieldManagerConflict",
                    format!("conflict with \"{mgr}\" using {av}"),
                )
            })
            .collect();
        let text = if causes.len() == 1 {
            format!(
                "Apply failed with 1 conflict: {}: {}",
                causes[0].message, causes[0].field
            )
        } else {
            let list = causes
                .iter()
                .map(|c| format!("{}: {}", c.message, c.field))
                .collect::<Vec<_>>()
                .join("\n- ");
            format!("Apply failed with {} conflicts: \n- {list}", causes.len())
        };
        let mut e = ApiError::new(409, "Conflict", text);
        e.causes = causes;
        return Err(e);
    }
    for (mgr, _, p) in &conflicts {
        for m in managed.iter_mut().filter(|m| &m.manager == mgr) {
            m.fields.retain(|x| !overlaps(x, p));
        }
    }
    let mut result = match current {
        Some(c) => c.clone(),
        None => {
            let mut base = json!({"apiVersion": applied.get("apiVersion"), "kind": applied.get("kind"), "metadata": {}});
            if let Some(meta) = applied.get("metadata") {
                for k in ["name", "namespace", "generateName"] {
                    if let Some(v) = meta.get(k) {
                        base["metadata"][k] = v.clone();
                    }
                }
            }
            base
        }
    };
    let previously: BTreeSet<FieldPath> = managed
        .iter()
        .filter(|m| m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let others = |prefix: &[String]| {
        managed
            .iter()
            .filter(|m| !(m.manager == manager && m.operation == "Apply"))
            .any(|m| m.fields.iter().any(|o| overlaps(o, prefix)))
    };
    'paths: for p in previously.difference(&applied_leaves) {
        // An item of a keyed list dropped from the configuration goes whole,
        // unless another manager owns part of it.
        for (i, seg) in p.iter().enumerate() {
            if !seg.starts_with("k:") {
                continue;
            }
            let item = &p[..=i];
            if !applied_leaves.iter().any(|a| a.starts_with(item)) {
                if !others(item) {
                    remove_path(&mut result, item);
                }
                continue 'paths;
            }
        }
        // Key fields stay while their item does.
        let is_key = p.len() >= 2
            && p[p.len() - 2].starts_with("k:")
            && p.last()
                .and_then(|l| l.strip_prefix("f:"))
                .is_some_and(|f| p[p.len() - 2].contains(&format!("\"{f}\":")));
        if !is_key && !others(p) {
            remove_path(&mut result, p);
        }
    }
    for p in &applied_leaves {
        if let Some(v) = get_path(applied, p) {
            set_path(&mut result, p, v.clone());
        }
    }
    managed.retain(|m| {
        !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
    });
    managed.push(Managed {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: subresource.into(),
        fields: applied_leaves,
    });
    write_managed(&mut result, &managed);
    Ok(result)
}

/// `.spec.replicas` style rendering of a path.
pub fn dotted(p: &FieldPath) -> String {
    p.iter()
        .map(|s| match s.strip_prefix("f:") {
            Some(k) => format!(".{k}"),
            None => format!("[{}]", s.trim_start_matches("v:")),
        })
        .collect()
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &p).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// Strategic merge patch, approximated: maps merge, `null` deletes, lists of
/// maps with a `name` (or `type` under `conditions`) key merge by that key,
/// `metadata.finalizers` merges as a set, other lists are replaced; the
/// directives `$patch`, `$deleteFromPrimitiveList/…`, `$setElementOrder/…`
/// and `$retainKeys` are honoured or stripped.
pub fn strategic_merge(target: &mut Value, patch: &Value, key_hint: &str) {
    let Value::Object(pm) = patch else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        if let Some(m) = p.as_object_mut() {
            m.remove("$patch");
        }
        *target = p;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    for (k, pv) in pm {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (tm.get_mut(list), pv.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            tm.remove(k);
            continue;
        }
        match (tm.get_mut(k), pv) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => strategic_merge(tv, pv, k),
            (Some(Value::Array(ta)), Value::Array(pa)) => {
                let key = if k == "conditions" { "type" } else { "name" };
                let keyed = pa.iter().all(|x| x.get(key).is_some())
                    && ta.iter().all(|x| x.get(key).is_some())
                    && !pa.is_empty();
                if k == "finalizers" && key_hint == "metadata" {
                    for x in pa {
                        if !ta.contains(x) {
                            ta.push(x.clone());
                        }
                    }
                } else if keyed {
                    for item in pa {
                        let id = item.get(key).cloned();
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match ta.iter().position(|x| x.get(key).cloned() == id) {
                            Some(i) if delete => {
                                ta.remove(i);
                            }
                            Some(i) => strategic_merge(&mut ta[i], item, k),
                            None if delete => {}
                            None => {
                                let mut fresh = Value::Object(Map::new());
                                strategic_merge(&mut fresh, item, k);
                                ta.push(fresh);
                            }
                        }
                    }
                } else {
                    *ta = pa.clone();
                }
            }
            _ => {
                let mut fresh = if pv.is_object() {
                    Value::Object(Map::new())
                } else {
                    Value::Null
                };
                if pv.is_object() {
                    strategic_merge(&mut fresh, pv, k);
                } else {
                    fresh = pv.clone();
                }
                tm.insert(k.clone(), fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn leaves_and_fields_round_trip() {
        let o = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "labels": {"a": "1"}, "finalizers": ["f1", "f2"]},
                       "spec": {"a": 1, "b": {"c": [1, 2]}, "e": {}}, "status": {"s": 1}});
        let l = leaves(&o, Scope::Main, &builtin_list_kind);
        let dotted_all: Vec<String> = l.iter().map(dotted).collect();
        assert_eq!(
            dotted_all,
            vec![
                ".metadata.finalizers[\"f1\"]",
                ".metadata.finalizers[\"f2\"]",
                ".metadata.labels.a",
                ".spec.a",
                ".spec.b.c",
                ".spec.e"
            ]
        );
        assert_eq!(json_to_fields(&fields_to_json(&l)), l);
        assert_eq!(
            leaves(&o, Scope::Status, &builtin_list_kind)
                .iter()
                .map(dotted)
                .collect::<Vec<_>>(),
            vec![".status.s"]
        );
    }

    #[test]
    fn strategic_merge_by_key() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}, "metadata": {"finalizers": ["x"]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "a", "$patch": "delete"}]}, "metadata": {"finalizers": ["y"]}}),
            "",
        );
        assert_eq!(
            t["spec"]["containers"],
            json!([{"name": "b", "image": "2"}])
        );
        assert_eq!(t["metadata"]["finalizers"], json!(["x", "y"]));
        strategic_merge(
            &mut t,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
            "",
        );
        assert_eq!(t["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn apply_removes_only_unshared_fields() {
        let now = "2026-01-01T00:00:00Z";
        let a1 = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"a": 1, "b": 2}});
        let o = server_side_apply(
            None,
            &a1,
            "m1",
            "v1",
            "",
            Scope::All,
            &builtin_list_kind,
            false,
            now,
        )
        .unwrap();
        let b =
            json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"b": 2}});
        let o = server_side_apply(
            Some(&o),
            &b,
            "m2",
            "v1",
            "",
            Scope::All,
            &builtin_list_kind,
            false,
            now,
        )
        .unwrap();
        let a2 =
            json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"a": 1}});
        let o = server_side_apply(
            Some(&o),
            &a2,
            "m1",
            "v1",
            "",
            Scope::All,
            &builtin_list_kind,
            false,
            now,
        )
        .unwrap();
        assert_eq!(o["spec"], json!({"a": 1, "b": 2}), "b is still owned by m2");
        let none = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}});
        let o = server_side_apply(
            Some(&o),
            &none,
            "m2",
            "v1",
            "",
            Scope::All,
            &builtin_list_kind,
            false,
            now,
        )
        .unwrap();
        assert_eq!(o["spec"], json!({"a": 1}));
        let conflict =
            json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"a": 5}});
        let e = server_side_apply(
            Some(&o),
            &conflict,
            "m3",
            "v1",
            "",
            Scope::All,
            &builtin_list_kind,
            false,
            now,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"m1\" using v1: .spec.a"
        );
    }

    #[test]
    fn keyed_lists_are_owned_per_item() {
        let now = "2026-01-01T00:00:00Z";
        let kinds = |p: &[String]| {
            if p.last().map(String::as_str) == Some("f:conditions") {
                ListKind::Map(vec!["type".into()])
            } else {
                ListKind::Atomic
            }
        };
        let cfg = |conds: Value| json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "status": {"conditions": conds}});
        let o = server_side_apply(
            None,
            &cfg(json!([{"type": "A", "status": "True"}])),
            "m1",
            "v1",
            "",
            Scope::All,
            &kinds,
            false,
            now,
        )
        .unwrap();
        let o = server_side_apply(
            Some(&o),
            &cfg(json!([{"type": "B", "status": "False"}])),
            "m2",
            "v1",
            "",
            Scope::All,
            &kinds,
            false,
            now,
        )
        .unwrap();
        assert_eq!(
            o["status"]["conditions"],
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]),
            "both items kept"
        );
        let fields = read_managed(&o);
        assert!(
            fields[0]
                .fields
                .iter()
                .any(|p| p.contains(&"k:{\"type\":\"A\"}".to_string())),
            "{fields:?}"
        );
        // m2 changing A's status conflicts with m1; its own item does not.
        let e = server_side_apply(
            Some(&o),
            &cfg(json!([{"type": "A", "status": "False"}, {"type": "B", "status": "False"}])),
            "m2",
            "v1",
            "",
            Scope::All,
            &kinds,
            false,
            now,
        )
        .unwrap_err();
        assert!(e.message.contains("conflict with \"m1\""), "{}", e.message);
        // m1 drops its item: removed; m2's stays.
        let o = server_side_apply(
            Some(&o),
            &cfg(json!([])),
            "m1",
            "v1",
            "",
            Scope::All,
            &kinds,
            false,
            now,
        )
        .unwrap();
        assert_eq!(
            o["status"]["conditions"],
            json!([{"type": "B", "status": "False"}])
        );
        // m2 drops one field of its item: the item stays with its key.
        let o = server_side_apply(
            Some(&o),
            &cfg(json!([{"type": "B"}])),
            "m2",
            "v1",
            "",
            Scope::All,
            &kinds,
            false,
            now,
        )
        .unwrap();
        assert_eq!(o["status"]["conditions"], json!([{"type": "B"}]));
    }
}
