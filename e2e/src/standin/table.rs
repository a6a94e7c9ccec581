//! `meta.k8s.io/v1 Table` rendering of objects for `kubectl get`, from a
//! resource's printer columns (simple JSONPath: dotted fields, `[n]`, and
//! `[?(@.field=="value")]` filters).

use serde_json::{Value, json};

use super::resources::{Column, ResourceDef};

/// Evaluates a printer-column JSONPath.
pub fn eval_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim().trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|x| x.get(field.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                let i: usize = inner.trim().parse().ok()?;
                cur = cur.as_array()?.get(i)?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Human age as kubectl prints it (`5s`, `3m2s`, `4h`, `2d`).
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 3 * 3600 {
        format!("{}m", s / 60)
    } else if s < 8 * 3600 {
        let h = s / 3600;
        let m = (s % 3600) / 60;
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else if s < 8 * 86400 {
        let d = s / 86400;
        let h = (s % 86400) / 3600;
        if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        }
    } else if s < 365 * 86400 {
        format!("{}d", s / 86400)
    } else {
        format!("{}y{}d", s / (365 * 86400), (s % (365 * 86400)) / 86400)
    }
}

fn age_of(ts: &str) -> Option<String> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    Some(human_age(secs))
}

fn job_cell(obj: &Value, which: &str) -> Value {
    let status = obj.get("status").cloned().unwrap_or(Value::Null);
    let cond = |t: &str| {
        status
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some(t)
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
    };
    match which {
        "@jobstatus" => {
            let s = if cond("Complete") {
                "Complete"
            } else if cond("Failed") {
                "Failed"
            } else if cond("Suspended") {
                "Suspended"
            } else if status.get("startTime").is_some() {
                "Running"
            } else {
                "Pending"
            };
            json!(s)
        }
        "@jobcompletions" => {
            let done = status.get("succeeded").and_then(Value::as_i64).unwrap_or(0);
            let want = obj
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            json!(format!("{done}/{want}"))
        }
        "@jobduration" => {
            let start = status
                .get("startTime")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<jiff::Timestamp>().ok());
            let end = status
                .get("completionTime")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .unwrap_or_else(jiff::Timestamp::now);
            match start {
                Some(s) => json!(human_age(end.as_second() - s.as_second())),
                None => json!(""),
            }
        }
        _ => Value::Null,
    }
}

fn cell(obj: &Value, col: &Column) -> Value {
    if col.json_path.starts_with("@job") {
        return job_cell(obj, &col.json_path);
    }
    let Some(v) = eval_path(obj, &col.json_path) else {
        return Value::Null;
    };
    match col.type_.as_str() {
        "date" => v
            .as_str()
            .and_then(age_of)
            .map_or(Value::Null, Value::String),
        "integer" => v.as_i64().map_or_else(|| v.clone(), |i| json!(i)),
        "number" => v.as_f64().map_or_else(|| v.clone(), |f| json!(f)),
        "boolean" => v.as_bool().map_or_else(|| v.clone(), |b| json!(b)),
        _ => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

fn columns_for(def: &ResourceDef, version: &str) -> Vec<Column> {
    let mut cols = vec![Column {
        name: "Name".into(),
        type_: "string".into(),
        format: "name".into(),
        description: "Name must be unique within a namespace.".into(),
        priority: 0,
        json_path: ".metadata.name".into(),
    }];
    let declared = def
        .version(version)
        .map(|v| v.columns.clone())
        .unwrap_or_default();
    let has_age = declared
        .iter()
        .any(|c| c.json_path == ".metadata.creationTimestamp");
    cols.extend(declared);
    if !def.is_custom() && !has_age {
        cols.push(Column {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: "CreationTimestamp".into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        });
    }
    cols
}

fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A Table of `objs`; `include_object` is `None`, `Metadata` (default) or `Object`.
pub fn table(
    def: &ResourceDef,
    version: &str,
    objs: &[&Value],
    rv: &str,
    cont: Option<&str>,
    include_object: &str,
) -> Value {
    let cols = columns_for(def, version);
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
                   "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(o, c)).collect();
            let mut row = json!({"cells": cells});
            match include_object {
                "None" => {}
                "Object" => row["object"] = (*o).clone(),
                _ => row["object"] = partial_metadata(o),
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
