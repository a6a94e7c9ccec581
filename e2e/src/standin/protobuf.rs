//! Decoding of the Kubernetes protobuf envelope for the few kinds kubectl
//! sends as protobuf (its `create namespace|configmap|secret|serviceaccount`
//! generators and `auth can-i`). Responses are always JSON, which kubectl
//! accepts. Other kinds are refused with 415.

use base64::Engine;
use serde_json::{Map, Value, json};

enum F {
    Str(&'static str),
    Int(&'static str),
    Bool(&'static str),
    RepStr(&'static str),
    MapStr(&'static str),
    MapBytes(&'static str),
    Msg(&'static str, &'static [(u64, F)]),
}

const OBJECT_META: &[(u64, F)] = &[
    (1, F::Str("name")),
    (2, F::Str("generateName")),
    (3, F::Str("namespace")),
    (5, F::Str("uid")),
    (6, F::Str("resourceVersion")),
    (7, F::Int("generation")),
    (11, F::MapStr("labels")),
    (12, F::MapStr("annotations")),
    (14, F::RepStr("finalizers")),
];

const NAMESPACE: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::Msg("spec", &[(1, F::RepStr("finalizers"))])),
];

const CONFIG_MAP: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::MapStr("data")),
    (3, F::MapBytes("binaryData")),
    (4, F::Bool("immutable")),
];

const SECRET: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::MapBytes("data")),
    (3, F::Str("type")),
    (4, F::MapStr("stringData")),
    (5, F::Bool("immutable")),
];

const SERVICE_ACCOUNT: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (4, F::Bool("automountServiceAccountToken")),
];

const RESOURCE_ATTRIBUTES: &[(u64, F)] = &[
    (1, F::Str("namespace")),
    (2, F::Str("verb")),
    (3, F::Str("group")),
    (4, F::Str("version")),
    (5, F::Str("resource")),
    (6, F::Str("subresource")),
    (7, F::Str("name")),
];

const SSAR_SPEC: &[(u64, F)] = &[
    (1, F::Msg("resourceAttributes", RESOURCE_ATTRIBUTES)),
    (
        2,
        F::Msg(
            "nonResourceAttributes",
            &[(1, F::Str("path")), (2, F::Str("verb"))],
        ),
    ),
];

const SSAR: &[(u64, F)] = &[
    (1, F::Msg("metadata", OBJECT_META)),
    (2, F::Msg("spec", SSAR_SPEC)),
];

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i).ok_or("truncated varint")?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                let end = self
                    .i
                    .checked_add(len)
                    .filter(|e| *e <= self.b.len())
                    .ok_or("truncated field")?;
                let s = &self.b[self.i..end];
                self.i = end;
                Wire::Bytes(s)
            }
            1 => {
                self.i += 8;
                Wire::Fixed
            }
            5 => {
                self.i += 4;
                Wire::Fixed
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut r = Reader { b, i: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(s)) => k = utf8(s)?,
            (2, Wire::Bytes(s)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(s))
            }
            (2, Wire::Bytes(s)) => v = json!(utf8(s)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn message(b: &[u8], schema: &[(u64, F)]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { b, i: 0 };
    while let Some((field, wire)) = r.next()? {
        let Some((_, f)) = schema.iter().find(|(n, _)| *n == field) else {
            continue;
        };
        match (f, wire) {
            (F::Str(name), Wire::Bytes(s)) if !s.is_empty() => {
                out.insert((*name).into(), json!(utf8(s)?));
            }
            (F::Int(name), Wire::Varint(v)) if v != 0 => {
                out.insert((*name).into(), json!(v));
            }
            (F::Bool(name), Wire::Varint(v)) => {
                out.insert((*name).into(), json!(v != 0));
            }
            (F::RepStr(name), Wire::Bytes(s)) => {
                let e = out.entry(*name).or_insert_with(|| json!([]));
                if let Some(a) = e.as_array_mut() {
                    a.push(json!(utf8(s)?));
                }
            }
            (F::MapStr(name) | F::MapBytes(name), Wire::Bytes(s)) => {
                let (k, v) = map_entry(s, matches!(f, F::MapBytes(_)))?;
                let e = out.entry(*name).or_insert_with(|| json!({}));
                if let Some(m) = e.as_object_mut() {
                    m.insert(k, v);
                }
            }
            (F::Msg(name, sub), Wire::Bytes(s)) => {
                let m = message(s, sub)?;
                if !m.is_empty() {
                    out.insert((*name).into(), Value::Object(m));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body into the JSON object it encodes.
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let body = bytes
        .strip_prefix(b"k8s\0")
        .ok_or("missing the k8s protobuf magic")?;
    let mut r = Reader { b: body, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(tm)) => {
                let mut t = Reader { b: tm, i: 0 };
                while let Some((tf, tw)) = t.next()? {
                    match (tf, tw) {
                        (1, Wire::Bytes(s)) => api_version = utf8(s)?,
                        (2, Wire::Bytes(s)) => kind = utf8(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(s)) => raw = s,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SSAR,
        _ => {
            return Err(format!(
                "protobuf bodies of {api_version} {kind} are not supported by the stand-in; send JSON"
            ));
        }
    };
    let mut obj = message(raw, schema)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    obj.entry("metadata").or_insert_with(|| json!({}));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decodes_what_kubectl_sends() {
        // `kubectl create namespace foo`, as captured with -v=9.
        let bytes: &[u8] = &[
            0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x4e, 0x61,
            0x6d, 0x65, 0x73, 0x70, 0x61, 0x63, 0x65, 0x12, 0x1b, 0x0a, 0x13, 0x0a, 0x03, 0x66,
            0x6f, 0x6f, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00,
            0x42, 0x00, 0x12, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00,
        ];
        let v = decode(bytes).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"}})
        );
        assert!(decode(b"nope").is_err());
        assert!(decode(b"k8s\0\x0a\x05").is_err(), "truncated");
    }
}
