//! Admission webhooks: registered Mutating- and ValidatingWebhookConfigurations
//! are called over TLS (trusting their `caBundle`) with an AdmissionReview v1
//! carrying `userInfo`; `failurePolicy`, `timeoutSeconds`, selectors, JSONPatch
//! responses and warnings are honoured. `matchConditions` are not evaluated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::Server;
use super::api::WriteCtx;
use super::error::{ApiError, ApiResult};
use super::resources::{ResKey, ResourceDef};
use super::select::LabelSelector;
use super::store::meta_str;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionOp {
    Create,
    Update,
    Delete,
}

impl AdmissionOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

fn list_has(v: Option<&Value>, want: &str) -> bool {
    v.and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str() == Some(want) || x.as_str() == Some("*"))
    })
}

fn rule_matches(
    rule: &Value,
    def: &ResourceDef,
    version: &str,
    sub: Option<&str>,
    op: AdmissionOp,
) -> bool {
    if !list_has(rule.get("operations"), op.as_str()) {
        return false;
    }
    if !list_has(rule.get("apiGroups"), &def.group) || !list_has(rule.get("apiVersions"), version) {
        return false;
    }
    let combined = match sub {
        Some(s) => format!("{}/{s}", def.plural),
        None => def.plural.clone(),
    };
    let res_ok = rule
        .get("resources")
        .and_then(Value::as_array)
        .is_some_and(|rs| {
            rs.iter().filter_map(Value::as_str).any(|r| {
                r == combined
                    || (r == "*" && sub.is_none())
                    || r == "*/*"
                    || sub.is_some_and(|s| r == format!("*/{s}"))
            })
        });
    if !res_ok {
        return false;
    }
    match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        "Namespaced" => def.namespaced,
        "Cluster" => !def.namespaced,
        _ => true,
    }
}

struct Hook {
    config: String,
    hook: Value,
}

fn matching_hooks(
    server: &Server,
    kind: &str,
    def: &ResourceDef,
    version: &str,
    sub: Option<&str>,
    op: AdmissionOp,
    obj: &Value,
) -> Vec<Hook> {
    if def.group == "admissionregistration.k8s.io" {
        return Vec::new();
    }
    let store = server.lock();
    let configs = store.list(&ResKey::new("admissionregistration.k8s.io", kind), None);
    let ns_labels = if def.namespaced {
        store
            .get(
                &ResKey::new("", "namespaces"),
                "",
                meta_str(obj, "namespace"),
            )
            .and_then(|n| n.pointer("/metadata/labels").cloned())
    } else if def.group.is_empty() && def.plural == "namespaces" {
        obj.pointer("/metadata/labels").cloned()
    } else {
        None
    };
    let mut out = Vec::new();
    for c in configs {
        let Some(hooks) = c.get("webhooks").and_then(Value::as_array) else {
            continue;
        };
        for h in hooks {
            let rules = h
                .get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !rules.iter().any(|r| rule_matches(r, def, version, sub, op)) {
                continue;
            }
            if let Some(sel) = h.get("namespaceSelector") {
                let applies =
                    def.namespaced || (def.group.is_empty() && def.plural == "namespaces");
                if applies && !LabelSelector::from_object(sel).matches_labels(ns_labels.as_ref()) {
                    continue;
                }
            }
            if let Some(sel) = h.get("objectSelector")
                && !LabelSelector::from_object(sel).matches(obj)
            {
                continue;
            }
            out.push(Hook {
                config: meta_str(&c, "name").to_string(),
                hook: h.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.config.cmp(&b.config));
    out
}

fn review(
    def: &ResourceDef,
    version: &str,
    sub: Option<&str>,
    op: AdmissionOp,
    new: &Value,
    old: Option<&Value>,
    ctx: &WriteCtx,
) -> Value {
    let subject = if new.is_null() {
        old.unwrap_or(&Value::Null)
    } else {
        new
    };
    let gvk = json!({"group": def.group, "version": version, "kind": def.kind});
    let gvr = json!({"group": def.group, "version": version, "resource": def.plural});
    let mut req = json!({
        "uid": uuid::Uuid::new_v4().to_string(),
        "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": meta_str(subject, "name"),
        "operation": op.as_str(),
        "userInfo": ctx.user.to_json(),
        "object": if new.is_null() { Value::Null } else { new.clone() },
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": ctx.dry_run,
        "options": match op {
            AdmissionOp::Create => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": ctx.manager}),
            AdmissionOp::Update => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": ctx.manager}),
            AdmissionOp::Delete => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
        },
    });
    if def.namespaced {
        req["namespace"] = json!(meta_str(subject, "namespace"));
    }
    if let Some(s) = sub {
        req["subResource"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// Calls one webhook; returns the AdmissionReview response.
async fn call(server: &Server, hook: &Value, body: &Value) -> Result<Value, String> {
    let cc = hook.get("clientConfig").cloned().unwrap_or(Value::Null);
    let (addr, host, path, url_text): (SocketAddr, String, String, String) =
        if let Some(url) = cc.get("url").and_then(Value::as_str) {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("invalid webhook URL {url}: {e}"))?;
            if uri.scheme_str() != Some("https") {
                return Err(format!("webhook URL {url} must use https"));
            }
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?
                .next()
                .ok_or_else(|| format!("dial tcp {host}:{port}: no address"))?;
            let path = uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            (addr, host, path, url.to_string())
        } else if let Some(svc) = cc.get("service") {
            let ns = svc
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let name = svc
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let port = svc.get("port").and_then(Value::as_u64).unwrap_or(443) as u16;
            let path = svc
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            let addr = server
                .webhook_services
                .get(&(ns.clone(), name.clone()))
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
            let host = format!("{name}.{ns}.svc");
            (
                addr,
                host.clone(),
                path.clone(),
                format!("https://{host}:{port}{path}"),
            )
        } else {
            return Err("webhook has neither clientConfig.url nor clientConfig.service".into());
        };
    let ca = cc
        .get("caBundle")
        .and_then(Value::as_str)
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| format!("caBundle is not base64: {e}"))?
        .ok_or_else(|| format!("Post \"{url_text}\": no caBundle, and the stand-in has no system roots for webhooks"))?;
    let tls =
        crate::tls::client_config_for_ca(&ca).map_err(|e| format!("Post \"{url_text}\": {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Post \"{url_text}\": dial tcp {addr}: {e}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("Post \"{url_text}\": bad server name {host}: {e}"))?;
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("Post \"{url_text}\": tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("Post \"{url_text}\": {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("Post \"{url_text}\": {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("Post \"{url_text}\": {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "Post \"{url_text}\": expected webhook response status 200, got {status}"
        ));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("Post \"{url_text}\": invalid AdmissionReview: {e}"))?;
    v.get("response")
        .cloned()
        .ok_or_else(|| "webhook response was absent".to_string())
}

async fn call_with_policy(server: &Server, h: &Hook, body: &Value) -> ApiResult<Option<Value>> {
    let name = h
        .hook
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let timeout = h
        .hook
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(10)
        .clamp(1, 30);
    let fail_open = h.hook.get("failurePolicy").and_then(Value::as_str) == Some("Ignore");
    let request = body.get("request").cloned().unwrap_or(Value::Null);
    // matchConditions (CEL over object, oldObject, request): all must hold.
    if let Some(conds) = h.hook.get("matchConditions").and_then(Value::as_array) {
        for cond in conds {
            let expr = cond
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or("true");
            let cname = cond.get("name").and_then(Value::as_str).unwrap_or_default();
            match eval_match_condition(expr, &request) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(_) if fail_open => return Ok(None),
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "Internal error occurred: failed calling webhook \"{name}\": failed to evaluate match condition {cname:?}: {e}"
                    )));
                }
            }
        }
    }
    let side_effects = h
        .hook
        .get("sideEffects")
        .and_then(Value::as_str)
        .unwrap_or("Unknown");
    if request.get("dryRun").and_then(Value::as_bool) == Some(true)
        && side_effects != "None"
        && side_effects != "NoneOnDryRun"
    {
        return Err(ApiError::bad_request(format!(
            "admission webhook \"{name}\" does not support dry run"
        )));
    }
    let r = match tokio::time::timeout(Duration::from_secs(timeout), call(server, &h.hook, body))
        .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("context deadline exceeded (timeout {timeout}s)")),
    };
    match r {
        Ok(resp) => Ok(Some(resp)),
        Err(_) if fail_open => Ok(None),
        Err(e) => Err(ApiError::internal(format!(
            "Internal error occurred: failed calling webhook \"{name}\": failed to call webhook: {e}"
        ))),
    }
}

fn denial(hook_name: &str, resp: &Value) -> ApiError {
    let status = resp.get("status").cloned().unwrap_or(Value::Null);
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .map_or(403, |c| c as u16);
    let msg = status
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reason = match status.get("reason").and_then(Value::as_str) {
        Some("Invalid") => "Invalid",
        Some("Conflict") => "Conflict",
        Some("NotFound") => "NotFound",
        Some("BadRequest") => "BadRequest",
        _ => "Forbidden",
    };
    let text = if msg.is_empty() {
        format!("admission webhook \"{hook_name}\" denied the request without explanation")
    } else {
        format!("admission webhook \"{hook_name}\" denied the request: {msg}")
    };
    ApiError::new(code, reason, text)
}

fn collect_warnings(resp: &Value, ctx: &mut WriteCtx) {
    if let Some(ws) = resp.get("warnings").and_then(Value::as_array) {
        ctx.warnings
            .extend(ws.iter().filter_map(Value::as_str).map(String::from));
    }
}

/// Runs mutating webhooks in name order; returns whether the object changed.
#[allow(clippy::too_many_arguments)]
pub async fn mutate(
    server: &Arc<Server>,
    def: &ResourceDef,
    version: &str,
    sub: Option<&str>,
    op: AdmissionOp,
    new: &mut Value,
    old: Option<&Value>,
    ctx: &mut WriteCtx,
) -> ApiResult<bool> {
    let hooks = matching_hooks(
        server,
        "mutatingwebhookconfigurations",
        def,
        version,
        sub,
        op,
        new,
    );
    let mut changed = false;
    for h in hooks {
        let body = review(def, version, sub, op, new, old, ctx);
        let Some(resp) = call_with_policy(server, &h, &body).await? else {
            continue;
        };
        let name = h
            .hook
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        collect_warnings(&resp, ctx);
        if resp.get("allowed").and_then(Value::as_bool) != Some(true) {
            return Err(denial(name, &resp));
        }
        if let Some(p) = resp.get("patch").and_then(Value::as_str) {
            if resp.get("patchType").and_then(Value::as_str) != Some("JSONPatch") {
                return Err(ApiError::internal(format!(
                    "Internal error occurred: webhook \"{name}\" returned a patch without patchType JSONPatch"
                )));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| {
                    ApiError::internal(format!(
                        "Internal error occurred: webhook \"{name}\" patch is not base64: {e}"
                    ))
                })?;
            let patch: json_patch::Patch = serde_json::from_slice(&raw).map_err(|e| {
                ApiError::internal(format!(
                    "Internal error occurred: webhook \"{name}\" patch is not a JSON patch: {e}"
                ))
            })?;
            json_patch::patch(new, &patch).map_err(|e| {
                ApiError::internal(format!(
                    "Internal error occurred: webhook \"{name}\" patch failed to apply: {e}"
                ))
            })?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Runs validating webhooks.
#[allow(clippy::too_many_arguments)]
pub async fn validate(
    server: &Arc<Server>,
    def: &ResourceDef,
    version: &str,
    sub: Option<&str>,
    op: AdmissionOp,
    new: &Value,
    old: Option<&Value>,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    let subject = if new.is_null() {
        old.unwrap_or(&Value::Null)
    } else {
        new
    };
    let hooks = matching_hooks(
        server,
        "validatingwebhookconfigurations",
        def,
        version,
        sub,
        op,
        subject,
    );
    for h in hooks {
        let body = review(def, version, sub, op, new, old, ctx);
        let Some(resp) = call_with_policy(server, &h, &body).await? else {
            continue;
        };
        collect_warnings(&resp, ctx);
        if resp.get("allowed").and_then(Value::as_bool) != Some(true) {
            let name = h
                .hook
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(denial(name, &resp));
        }
    }
    Ok(())
}

/// Evaluates a webhook `matchConditions` expression.
fn eval_match_condition(expr: &str, request: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(expr).map_err(|e| e.to_string())?;
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value(
        "object",
        super::schema::to_cel(request.get("object").unwrap_or(&Value::Null)),
    );
    ctx.add_variable_from_value(
        "oldObject",
        super::schema::to_cel(request.get("oldObject").unwrap_or(&Value::Null)),
    );
    ctx.add_variable_from_value("request", super::schema::to_cel(request));
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expression returned {other:?}, not a bool")),
        Err(e) => Err(e.to_string()),
    }
}
