//! Authentication by static bearer tokens (kube-apiserver's `--token-auth-file`
//! format) and authorization by the RBAC objects the stand-in holds.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::resources::ResKey;
use super::store::Store;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn to_json(&self) -> Value {
        json!({"username": self.username, "uid": self.uid, "groups": self.groups})
    }

    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// Token → user.
#[derive(Debug, Clone, Default)]
pub struct Tokens(pub HashMap<String, UserInfo>);

/// Errors reading a token file.
#[derive(Debug, thiserror::Error)]
#[error("token file line {line}: {message}")]
pub struct TokenFileError {
    pub line: usize,
    pub message: String,
}

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl Tokens {
    /// Parses `token,user,uid,"group1,group2"` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            if f.len() < 3 {
                return Err(TokenFileError {
                    line: i + 1,
                    message: "expected token,user,uid[,\"groups\"]".into(),
                });
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            map.insert(
                f[0].trim().to_string(),
                UserInfo {
                    username: f[1].trim().into(),
                    uid: f[2].trim().into(),
                    groups,
                },
            );
        }
        Ok(Self(map))
    }

    /// The user for a token, with `system:authenticated` added as the real server does.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        self.0.get(token).map(|u| {
            let mut u = u.clone();
            if !u.groups.iter().any(|g| g == "system:authenticated") {
                u.groups.push("system:authenticated".into());
            }
            u
        })
    }
}

/// What a request wants to do.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub namespace: String,
    /// For non-resource requests.
    pub path: Option<String>,
}

fn contains(list: Option<&Value>, want: &str) -> bool {
    list.and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .any(|v| v.as_str() == Some(want) || v.as_str() == Some("*"))
    })
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !contains(rule.get("verbs"), &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return rule
            .get("nonResourceURLs")
            .and_then(Value::as_array)
            .is_some_and(|urls| {
                urls.iter().filter_map(Value::as_str).any(|u| {
                    u == "*"
                        || u == path
                        || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                })
            });
    }
    if !contains(rule.get("apiGroups"), &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let res_ok = rule
        .get("resources")
        .and_then(Value::as_array)
        .is_some_and(|rs| {
            rs.iter().filter_map(Value::as_str).any(|r| {
                r == "*"
                    || r == combined
                    || (!a.subresource.is_empty() && r == format!("*/{}", a.subresource))
            })
        });
    if !res_ok {
        return false;
    }
    match rule.get("resourceNames").and_then(Value::as_array) {
        Some(names) if !names.is_empty() => {
            names.iter().any(|n| n.as_str() == Some(a.name.as_str()))
        }
        _ => true,
    }
}

fn subject_matches(s: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
    match s.get("kind").and_then(Value::as_str) {
        Some("User") => user.username == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = s
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(binding_ns);
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn role_rules(store: &Store, role_ref: &Value, binding_ns: &str) -> Vec<Value> {
    let name = role_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let role = match role_ref.get("kind").and_then(Value::as_str) {
        Some("ClusterRole") => store.get(
            &ResKey::new("rbac.authorization.k8s.io", "clusterroles"),
            "",
            name,
        ),
        Some("Role") => store.get(
            &ResKey::new("rbac.authorization.k8s.io", "roles"),
            binding_ns,
            name,
        ),
        _ => None,
    };
    let Some(role) = role else {
        return Vec::new();
    };
    let mut rules = role
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    aggregate(store, &role, &mut rules, 0);
    rules
}

/// ClusterRole aggregation: a role with `aggregationRule` also grants the
/// rules of every ClusterRole its selectors match (what the real
/// clusterrole-aggregation controller writes into it).
fn aggregate(store: &Store, role: &Value, rules: &mut Vec<Value>, depth: usize) {
    let Some(selectors) = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    else {
        return;
    };
    if depth > 3 {
        return;
    }
    let me = role.pointer("/metadata/name");
    for cr in store.list(
        &ResKey::new("rbac.authorization.k8s.io", "clusterroles"),
        None,
    ) {
        if cr.pointer("/metadata/name") == me {
            continue;
        }
        if selectors
            .iter()
            .any(|sel| super::select::LabelSelector::from_object(sel).matches(&cr))
        {
            if let Some(r) = cr.get("rules").and_then(Value::as_array) {
                rules.extend(r.iter().cloned());
            }
            aggregate(store, &cr, rules, depth + 1);
        }
    }
}

/// Discovery and health paths every authenticated user may read
/// (`system:discovery`, `system:basic-user`, `system:public-info-viewer`).
fn always_allowed(a: &Attributes) -> bool {
    if let Some(p) = &a.path {
        return a.verb == "get"
            && (p == "/version"
                || p == "/api"
                || p == "/apis"
                || p.starts_with("/api/")
                || p.starts_with("/apis/")
                || p.starts_with("/openapi")
                || p == "/healthz"
                || p == "/livez"
                || p == "/readyz");
    }
    a.group == "authorization.k8s.io"
        && a.resource == "selfsubjectaccessreviews"
        && a.verb == "create"
}

/// RBAC decision: `Ok(())` or the reason it was denied.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> bool {
    if user.is_master() || always_allowed(a) {
        return true;
    }
    let crbs = store.list(
        &ResKey::new("rbac.authorization.k8s.io", "clusterrolebindings"),
        None,
    );
    for b in &crbs {
        let subjects = b
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, user, "")) {
            continue;
        }
        if let Some(r) = b.get("roleRef")
            && role_rules(store, r, "")
                .iter()
                .any(|rule| rule_allows(rule, a))
        {
            return true;
        }
    }
    if !a.namespace.is_empty() && a.path.is_none() {
        let rbs = store.list(
            &ResKey::new("rbac.authorization.k8s.io", "rolebindings"),
            Some(&a.namespace),
        );
        for b in &rbs {
            let subjects = b
                .get("subjects")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !subjects
                .iter()
                .any(|s| subject_matches(s, user, &a.namespace))
            {
                continue;
            }
            if let Some(r) = b.get("roleRef")
                && role_rules(store, r, &a.namespace)
                    .iter()
                    .any(|rule| rule_allows(rule, a))
            {
                return true;
            }
        }
    }
    false
}

/// The message of a 403, worded as kube-apiserver words it.
pub fn forbidden_message(user: &UserInfo, a: &Attributes) -> String {
    if let Some(p) = &a.path {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{p}\"",
            user.username, a.verb
        );
    }
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let what = if a.group.is_empty() {
        format!("resource \"{res}\" in API group \"\"")
    } else {
        format!("resource \"{res}\" in API group \"{}\"", a.group)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let named = if a.name.is_empty() {
        String::new()
    } else {
        format!(
            "{} \"{}\" is forbidden: ",
            qualified_res(&a.group, &a.resource),
            a.name
        )
    };
    let prefix = if named.is_empty() {
        format!("{} is forbidden: ", qualified_res(&a.group, &a.resource))
    } else {
        named
    };
    format!(
        "{prefix}User \"{}\" cannot {} {what} {scope}",
        user.username, a.verb
    )
}

fn qualified_res(group: &str, res: &str) -> String {
    if group.is_empty() {
        res.to_string()
    } else {
        format!("{res}.{group}")
    }
}

/// One line of the request audit log: who asked to do what, where. Requests
/// with the same key are counted together, so the log stays small under load.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditKey {
    pub user: String,
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
}

/// How often a key was allowed and denied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditCount {
    pub allowed: u64,
    pub denied: u64,
}

/// An audit-log line as [`crate::standin::StandIn::audit`] and
/// `GET /_standin/audit` return it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    #[serde(flatten)]
    pub key: AuditKey,
    pub allowed: u64,
    pub denied: u64,
}

/// The authorization decisions on resource requests (and impersonation),
/// recorded whatever the authorization mode (under AlwaysAllow every
/// request is allowed).
#[derive(Debug, Default)]
pub struct AuditLog(std::sync::Mutex<HashMap<AuditKey, AuditCount>>);

impl AuditLog {
    pub fn record(&self, user: &UserInfo, a: &Attributes, allowed: bool) {
        if a.path.is_some() {
            return;
        }
        let key = AuditKey {
            user: user.username.clone(),
            verb: a.verb.clone(),
            api_group: a.group.clone(),
            resource: a.resource.clone(),
            subresource: a.subresource.clone(),
            namespace: a.namespace.clone(),
        };
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = m.entry(key).or_default();
        if allowed {
            c.allowed += 1;
        } else {
            c.denied += 1;
        }
    }

    /// Every key seen, sorted (user, verb, group, resource, subresource, namespace).
    pub fn records(&self) -> Vec<AuditRecord> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<AuditRecord> = m
            .iter()
            .map(|(k, c)| AuditRecord {
                key: k.clone(),
                allowed: c.allowed,
                denied: c.denied,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}
