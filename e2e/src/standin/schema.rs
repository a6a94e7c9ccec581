//! Structural OpenAPI v3 schemas of CustomResourceDefinitions: the
//! structural check at CRD creation, and pruning, defaulting and validation
//! (including `x-kubernetes-validations` CEL rules) of custom resources.
//!
//! Order per write, as in apiextensions-apiserver: prune unknown fields (or
//! reject them under `fieldValidation=Strict`), apply defaults, validate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use super::error::Cause;

/// A compiled CEL rule.
pub struct Rule {
    pub source: String,
    program: cel::Program,
    pub message: String,
    pub field_path: String,
    pub reason: String,
    pub uses_old_self: bool,
}

/// A schema node with its regexes and CEL programs compiled.
#[derive(Default)]
pub struct Node {
    pub type_: Option<String>,
    pub nullable: bool,
    pub int_or_string: bool,
    pub preserve_unknown: bool,
    pub embedded: bool,
    pub properties: BTreeMap<String, Node>,
    pub additional: Option<Box<Node>>,
    /// `additionalProperties: true`
    pub additional_any: bool,
    pub items: Option<Box<Node>>,
    pub required: Vec<String>,
    pub enum_: Option<Vec<Value>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub pattern: Option<(String, Regex)>,
    pub default: Option<Value>,
    pub rules: Vec<Rule>,
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
    pub format: Option<String>,
}

/// A compiled root schema.
pub struct CompiledSchema {
    pub root: Node,
}

/// Checks the structural-schema rules the real server enforces on CRDs
/// (`apiextensions-apiserver/pkg/apiserver/schema/validation.go`).
pub fn structural_errors(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    check_structural(schema, path, true, &mut out);
    out
}

fn check_structural(s: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let Some(m) = s.as_object() else {
        out.push(Cause::new(
            path,
            "FieldValueInvalid",
            "Invalid value: must be an object",
        ));
        return;
    };
    let int_or_string = m.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    let preserve = m
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let type_ = m.get("type").and_then(Value::as_str).unwrap_or_default();
    if m.contains_key("$ref") {
        out.push(Cause::new(
            format!("{path}.$ref"),
            "FieldValueForbidden",
            "Forbidden: $ref is not allowed",
        ));
    }
    if type_.is_empty() && !int_or_string && !preserve {
        out.push(Cause::new(
            format!("{path}.type"),
            "FieldValueRequired",
            "Required value: must not be empty for specified object fields",
        ));
    }
    if int_or_string && !type_.is_empty() {
        out.push(Cause::new(
            format!("{path}.type"),
            "FieldValueForbidden",
            "Forbidden: must be empty if x-kubernetes-int-or-string is true",
        ));
    }
    if root && type_ != "object" {
        out.push(Cause::new(
            format!("{path}.type"),
            "FieldValueInvalid",
            format!("Invalid value: \"{type_}\": must be object at the root"),
        ));
    }
    if m.contains_key("properties")
        && matches!(
            m.get("additionalProperties"),
            Some(Value::Object(_)) | Some(Value::Bool(true))
        )
    {
        out.push(Cause::new(
            format!("{path}.additionalProperties"),
            "FieldValueForbidden",
            "Forbidden: additionalProperties and properties are mutual exclusive",
        ));
    }
    if type_ == "array" && !m.contains_key("items") {
        out.push(Cause::new(
            format!("{path}.items"),
            "FieldValueRequired",
            "Required value: must be specified",
        ));
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        let subs: Vec<&Value> = match m.get(junctor) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => continue,
        };
        for (i, sub) in subs.iter().enumerate() {
            for forbidden in [
                "type",
                "additionalProperties",
                "default",
                "nullable",
                "description",
                "title",
            ] {
                if sub.get(forbidden).is_some() {
                    let at = if junctor == "not" {
                        format!("{path}.not.{forbidden}")
                    } else {
                        format!("{path}.{junctor}[{i}].{forbidden}")
                    };
                    out.push(Cause::new(
                        at,
                        "FieldValueForbidden",
                        "Forbidden: must be empty to be structural",
                    ));
                }
            }
        }
    }
    if root && let Some(meta) = m.get("properties").and_then(|p| p.get("metadata")) {
        if let Some(props) = meta.get("properties").and_then(Value::as_object) {
            for k in props.keys() {
                if k != "name" && k != "generateName" {
                    out.push(Cause::new(
                        format!("{path}.properties[metadata].properties[{k}]"),
                        "FieldValueForbidden",
                        "Forbidden: must not be specified",
                    ));
                }
            }
        }
        if meta.get("default").is_some() {
            out.push(Cause::new(
                format!("{path}.properties[metadata].default"),
                "FieldValueForbidden",
                "Forbidden: must not be specified",
            ));
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            if root && k == "metadata" {
                continue;
            }
            check_structural(v, &format!("{path}.properties[{k}]"), false, out);
        }
    }
    if let Some(items) = m.get("items") {
        check_structural(items, &format!("{path}.items"), false, out);
    }
    if let Some(ap @ Value::Object(_)) = m.get("additionalProperties") {
        check_structural(ap, &format!("{path}.additionalProperties"), false, out);
    }
}

impl CompiledSchema {
    /// The list kind (`x-kubernetes-list-type`) at a managed-fields path.
    pub fn list_kind_at(&self, path: &[String]) -> super::patch::ListKind {
        use super::patch::ListKind;
        let mut node = &self.root;
        for seg in path {
            let next = if let Some(k) = seg.strip_prefix("f:") {
                node.properties.get(k).or(node.additional.as_deref())
            } else {
                node.items.as_deref()
            };
            match next {
                Some(n) => node = n,
                None => return ListKind::Atomic,
            }
        }
        match node.list_type.as_deref() {
            Some("set") => ListKind::Set,
            Some("map") if !node.list_map_keys.is_empty() => {
                ListKind::Map(node.list_map_keys.clone())
            }
            _ => ListKind::Atomic,
        }
    }

    pub fn compile(schema: &Value) -> Result<Self, Vec<Cause>> {
        let mut errors = Vec::new();
        let root = compile_node(schema, "", &mut errors);
        if errors.is_empty() {
            Ok(Self { root })
        } else {
            Err(errors)
        }
    }

    /// Prunes unknown fields (returned as paths) and applies defaults.
    pub fn prune_and_default(&self, obj: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        if let Value::Object(m) = obj {
            for (k, v) in m.iter_mut() {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(node) = self.root.properties.get(k) {
                    prune(v, node, k, &mut unknown);
                }
            }
            if !self.root.preserve_unknown {
                let keys: Vec<String> = m
                    .keys()
                    .filter(|k| {
                        !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                            && !self.root.properties.contains_key(*k)
                    })
                    .cloned()
                    .collect();
                for k in keys {
                    m.remove(&k);
                    unknown.push(k);
                }
            }
        }
        apply_defaults(obj, &self.root, true);
        unknown
    }

    /// Validates a (pruned, defaulted) object; `old` enables transition rules.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut out = Vec::new();
        if let Value::Object(m) = obj {
            for req in &self.root.required {
                if !m.contains_key(req) {
                    out.push(Cause::new(
                        req.clone(),
                        "FieldValueRequired",
                        "Required value",
                    ));
                }
            }
            for (k, v) in m {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(node) = self.root.properties.get(k) {
                    validate(v, old.and_then(|o| o.get(k)), node, k, &mut out);
                }
            }
            // Root-level rules see the whole object.
            run_rules(obj, old, &self.root, "", &mut out);
        }
        out
    }
}

fn num(m: &Map<String, Value>, k: &str) -> Option<f64> {
    m.get(k).and_then(Value::as_f64)
}

fn unum(m: &Map<String, Value>, k: &str) -> Option<u64> {
    m.get(k).and_then(Value::as_u64)
}

fn compile_node(s: &Value, path: &str, errors: &mut Vec<Cause>) -> Node {
    let Some(m) = s.as_object() else {
        return Node::default();
    };
    let mut n = Node {
        type_: m.get("type").and_then(Value::as_str).map(String::from),
        nullable: m.get("nullable").and_then(Value::as_bool) == Some(true),
        int_or_string: m.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true),
        preserve_unknown: m
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true),
        embedded: m
            .get("x-kubernetes-embedded-resource")
            .and_then(Value::as_bool)
            == Some(true),
        required: m
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        enum_: m.get("enum").and_then(Value::as_array).cloned(),
        minimum: num(m, "minimum"),
        maximum: num(m, "maximum"),
        exclusive_minimum: m.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true),
        exclusive_maximum: m.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true),
        min_length: unum(m, "minLength"),
        max_length: unum(m, "maxLength"),
        min_items: unum(m, "minItems"),
        max_items: unum(m, "maxItems"),
        min_properties: unum(m, "minProperties"),
        max_properties: unum(m, "maxProperties"),
        default: m.get("default").cloned(),
        format: m.get("format").and_then(Value::as_str).map(String::from),
        list_type: m
            .get("x-kubernetes-list-type")
            .and_then(Value::as_str)
            .map(String::from),
        list_map_keys: m
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        ..Node::default()
    };
    if let Some(p) = m.get("pattern").and_then(Value::as_str) {
        match Regex::new(p) {
            Ok(r) => n.pattern = Some((p.to_string(), r)),
            Err(e) => errors.push(Cause::new(
                format!("{path}.pattern"),
                "FieldValueInvalid",
                format!(
                    "Invalid value: \"{p}\": must be a valid regular expression, but isn't: {e}"
                ),
            )),
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            n.properties.insert(
                k.clone(),
                compile_node(v, &format!("{path}.properties[{k}]"), errors),
            );
        }
    }
    match m.get("additionalProperties") {
        Some(v @ Value::Object(_)) => {
            n.additional = Some(Box::new(compile_node(
                v,
                &format!("{path}.additionalProperties"),
                errors,
            )));
        }
        Some(Value::Bool(true)) => n.additional_any = true,
        _ => {}
    }
    if let Some(items) = m.get("items") {
        n.items = Some(Box::new(compile_node(
            items,
            &format!("{path}.items"),
            errors,
        )));
    }
    if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
        for (i, r) in rules.iter().enumerate() {
            let Some(src) = r.get("rule").and_then(Value::as_str) else {
                errors.push(Cause::new(
                    format!("{path}.x-kubernetes-validations[{i}].rule"),
                    "FieldValueRequired",
                    "Required value",
                ));
                continue;
            };
            match cel::Program::compile(src) {
                Ok(program) => {
                    let uses_old_self = program.references().has_variable("oldSelf");
                    n.rules.push(Rule {
                        source: src.to_string(),
                        program,
                        message: r
                            .get("message")
                            .and_then(Value::as_str)
                            .map_or_else(|| format!("failed rule: {src}"), String::from),
                        field_path: r
                            .get("fieldPath")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        reason: r
                            .get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("FieldValueInvalid")
                            .into(),
                        uses_old_self,
                    });
                }
                Err(e) => errors.push(Cause::new(
                    format!("{path}.x-kubernetes-validations[{i}].rule"),
                    "FieldValueInvalid",
                    format!("Invalid value: \"{src}\": compilation failed: {e}"),
                )),
            }
        }
    }
    n
}

fn prune(v: &mut Value, node: &Node, path: &str, unknown: &mut Vec<String>) {
    if node.preserve_unknown
        && node.properties.is_empty()
        && node.items.is_none()
        && node.additional.is_none()
    {
        return;
    }
    match v {
        Value::Object(m) => {
            if node.embedded {
                // apiVersion, kind and metadata of embedded resources are kept.
            }
            let keep_all = node.preserve_unknown || node.additional_any;
            let mut remove = Vec::new();
            for (k, child) in m.iter_mut() {
                let sub = format!("{path}.{k}");
                if let Some(p) = node.properties.get(k) {
                    prune(child, p, &sub, unknown);
                } else if let Some(ap) = &node.additional {
                    prune(child, ap, &sub, unknown);
                } else if node.embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                {
                } else if !keep_all {
                    remove.push(k.clone());
                }
            }
            for k in remove {
                m.remove(&k);
                unknown.push(format!("{path}.{k}"));
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for (i, child) in a.iter_mut().enumerate() {
                    prune(child, items, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(v: &mut Value, node: &Node, root: bool) {
    match v {
        Value::Object(m) => {
            for (k, p) in &node.properties {
                if root && k == "metadata" {
                    continue;
                }
                let missing = match m.get(k) {
                    None => true,
                    Some(Value::Null) => !p.nullable,
                    Some(_) => false,
                };
                if missing {
                    if let Some(d) = &p.default {
                        m.insert(k.clone(), d.clone());
                    } else if m.get(k) == Some(&Value::Null) {
                        // Non-nullable null without default is pruned, as the real server does.
                        m.remove(k);
                    }
                }
                if let Some(child) = m.get_mut(k) {
                    apply_defaults(child, p, false);
                }
            }
            if let Some(ap) = &node.additional {
                for child in m.values_mut() {
                    apply_defaults(child, ap, false);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for child in a.iter_mut() {
                    apply_defaults(child, items, false);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value as the real server quotes it in messages.
fn shown(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn validate(v: &Value, old: Option<&Value>, node: &Node, path: &str, out: &mut Vec<Cause>) {
    let actual = type_name(v);
    if v.is_null() {
        if !node.nullable
            && let Some(t) = &node.type_
        {
            out.push(Cause::new(
                path,
                "FieldValueTypeInvalid",
                format!("Invalid value: \"null\": {path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    if node.int_or_string {
        if actual != "integer" && actual != "string" {
            out.push(Cause::new(
                path,
                "FieldValueTypeInvalid",
                format!("Invalid value: {}: {path} in body must be of type integer,string: \"{actual}\"", shown(v)),
            ));
            return;
        }
    } else if let Some(t) = &node.type_ {
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            out.push(Cause::new(
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: {}: {path} in body must be of type {t}: \"{actual}\"",
                    shown(v)
                ),
            ));
            return;
        }
    }
    if let Some(e) = &node.enum_
        && !e.contains(v)
    {
        let supported = e
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Cause::new(
            path,
            "FieldValueNotSupported",
            format!("Unsupported value: {}: supported values: {supported}", v),
        ));
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = node.minimum
            && (x < min || (node.exclusive_minimum && x <= min))
        {
            let rel = if node.exclusive_minimum {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {v}: {path} in body should be {rel} {min}"),
            ));
        }
        if let Some(max) = node.maximum
            && (x > max || (node.exclusive_maximum && x >= max))
        {
            let rel = if node.exclusive_maximum {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {v}: {path} in body should be {rel} {max}"),
            ));
        }
    }
    if let Value::String(s) = v {
        let len = s.chars().count() as u64;
        if let Some(min) = node.min_length
            && len < min
        {
            out.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {v}: {path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = node.max_length
            && len > max
        {
            out.push(Cause::new(
                path,
                "FieldValueTooLong",
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(f) = &node.format
            && !format_ok(f, s)
        {
            out.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {v}: {path} in body must be of type {f}: {v}"),
            ));
        }
        if let Some((p, re)) = &node.pattern
            && (!node.int_or_string || actual == "string")
            && !re.is_match(s)
        {
            out.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {v}: {path} in body should match '{p}'"),
            ));
        }
    }
    match v {
        Value::Object(m) => {
            for req in &node.required {
                if !m.contains_key(req) {
                    out.push(Cause::new(
                        format!("{path}.{req}"),
                        "FieldValueRequired",
                        "Required value",
                    ));
                }
            }
            let count = m.len() as u64;
            if node.min_properties.is_some_and(|min| count < min) {
                out.push(Cause::new(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {count}: {path} in body should have at least {} properties",
                        node.min_properties.unwrap_or(0)
                    ),
                ));
            }
            if node.max_properties.is_some_and(|max| count > max) {
                out.push(Cause::new(
                    path,
                    "FieldValueTooMany",
                    format!(
                        "Too many: {count}: must have at most {} items",
                        node.max_properties.unwrap_or(0)
                    ),
                ));
            }
            for (k, child) in m {
                let old_child = old.and_then(|o| o.get(k));
                let sub = format!("{path}.{k}");
                if let Some(p) = node.properties.get(k) {
                    validate(child, old_child, p, &sub, out);
                } else if let Some(ap) = &node.additional {
                    validate(child, old_child, ap, &sub, out);
                }
            }
        }
        Value::Array(a) => {
            let count = a.len() as u64;
            if node.min_items.is_some_and(|min| count < min) {
                out.push(Cause::new(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {count}: {path} in body should have at least {} items",
                        node.min_items.unwrap_or(0)
                    ),
                ));
            }
            if node.max_items.is_some_and(|max| count > max) {
                out.push(Cause::new(
                    path,
                    "FieldValueTooMany",
                    format!(
                        "Too many: {count}: must have at most {} items",
                        node.max_items.unwrap_or(0)
                    ),
                ));
            }
            if node.list_type.as_deref() == Some("set") {
                for (i, x) in a.iter().enumerate() {
                    if a[..i].contains(x) {
                        out.push(Cause::new(
                            format!("{path}[{i}]"),
                            "FieldValueDuplicate",
                            format!("Duplicate value: {x}"),
                        ));
                    }
                }
            }
            if node.list_type.as_deref() == Some("map") && !node.list_map_keys.is_empty() {
                let keys: Vec<Vec<Option<&Value>>> = a
                    .iter()
                    .map(|x| node.list_map_keys.iter().map(|k| x.get(k)).collect())
                    .collect();
                for i in 0..keys.len() {
                    if keys[..i].contains(&keys[i]) {
                        out.push(Cause::new(
                            format!("{path}[{i}]"),
                            "FieldValueDuplicate",
                            "Duplicate value: map key already present",
                        ));
                    }
                }
            }
            if let Some(items) = &node.items {
                for (i, child) in a.iter().enumerate() {
                    validate(child, None, items, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
    run_rules(v, old, node, path, out);
}

fn run_rules(v: &Value, old: Option<&Value>, node: &Node, path: &str, out: &mut Vec<Cause>) {
    for rule in &node.rules {
        if rule.uses_old_self && old.is_none() {
            continue;
        }
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("self", to_cel(v));
        if let Some(o) = old {
            ctx.add_variable_from_value("oldSelf", to_cel(o));
        }
        let field = if rule.field_path.is_empty() {
            path.to_string()
        } else if path.is_empty() {
            rule.field_path.trim_start_matches('.').to_string()
        } else {
            format!("{path}{}", rule.field_path)
        };
        let reason: &'static str = match rule.reason.as_str() {
            "FieldValueRequired" => "FieldValueRequired",
            "FieldValueDuplicate" => "FieldValueDuplicate",
            "FieldValueForbidden" => "FieldValueForbidden",
            _ => "FieldValueInvalid",
        };
        match rule.program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => {
                let msg = match reason {
                    "FieldValueForbidden" => format!("Forbidden: {}", rule.message),
                    "FieldValueRequired" => format!("Required value: {}", rule.message),
                    _ => format!("Invalid value: {}: {}", shown(v), rule.message),
                };
                out.push(Cause::new(field, reason, msg));
            }
            Ok(other) => out.push(Cause::new(
                field,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: rule {} evaluated to {other:?}, not a bool",
                    shown(v),
                    rule.source
                ),
            )),
            Err(e) => out.push(Cause::new(
                field,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: rule {} failed to evaluate: {e}",
                    shown(v),
                    rule.source
                ),
            )),
        }
    }
}

/// JSON to CEL, with integers as `int` (CEL's int64) as Kubernetes does.
pub fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<cel::objects::Key, cel::Value> = m
                .iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

/// String formats validated by the real server (a subset: the ones CRDs
/// commonly use). Unknown formats, and formats of non-strings, are not checked.
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok(),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        assert!(format_ok("date-time", "2026-01-02T03:04:05Z"));
        assert!(!format_ok("date-time", "yesterday"));
        assert!(format_ok("date", "2026-01-02"));
        assert!(!format_ok("uuid", "nope"));
        assert!(format_ok("int", "anything"));
    }

    #[test]
    fn structural_rules() {
        let ok = json!({"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "port": {"x-kubernetes-int-or-string": true}}});
        assert!(structural_errors(&ok, "s").is_empty());
        let both = json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": {"type": "string"}}}});
        assert_eq!(
            structural_errors(&both, "s")[0].field,
            "s.properties[a].additionalProperties"
        );
        let junctor = json!({"type": "object", "anyOf": [{"type": "string"}]});
        assert_eq!(structural_errors(&junctor, "s")[0].field, "s.anyOf[0].type");
        let meta = json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}});
        assert_eq!(
            structural_errors(&meta, "s")[0].field,
            "s.properties[metadata].properties[labels]"
        );
        let array = json!({"type": "object", "properties": {"a": {"type": "array"}}});
        assert_eq!(
            structural_errors(&array, "s")[0].field,
            "s.properties[a].items"
        );
    }

    #[test]
    fn prune_default_validate_order() {
        let schema = CompiledSchema::compile(&json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "integer", "default": 3},
            "t": {"type": "string", "format": "date-time"},
            "n": {"type": "object", "default": {}, "properties": {"x": {"type": "string", "default": "d"}}}
        }}}})).unwrap();
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"zzz": 1, "t": "bad"}});
        let unknown = schema.prune_and_default(&mut obj);
        assert_eq!(unknown, vec!["spec.zzz"]);
        assert_eq!(obj["spec"]["a"], 3);
        assert_eq!(
            obj["spec"]["n"]["x"], "d",
            "defaults inside defaulted objects"
        );
        let causes = schema.validate(&obj, None);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.t");
    }

    #[test]
    fn cel_integers_maps_and_macros() {
        let schema = CompiledSchema::compile(&json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.items.all(i, i.n > 0)", "message": "positive"},
                {"rule": "has(self.name) && self.name.startsWith('a')", "message": "starts with a"},
                {"rule": "size(self.items) <= 2", "message": "at most two"}
            ],
            "properties": {"name": {"type": "string"}, "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}}}}})).unwrap();
        let ok = json!({"spec": {"name": "abc", "items": [{"n": 1}, {"n": 2}]}});
        assert!(
            schema.validate(&ok, None).is_empty(),
            "{:?}",
            schema.validate(&ok, None)
        );
        let bad = json!({"spec": {"name": "xyz", "items": [{"n": 0}, {"n": 2}, {"n": 3}]}});
        let msgs: Vec<String> = schema
            .validate(&bad, None)
            .into_iter()
            .map(|c| c.message)
            .collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
    }
}
