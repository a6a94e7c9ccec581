//! HTTP routing and the REST verbs: get, list, watch, create, update, patch,
//! delete, deletecollection, with the write pipeline of kube-apiserver
//! (decode → defaults → mutating admission → validation → validating
//! admission → storage) and its background controllers (garbage collector,
//! namespace finalizer).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Map, Value, json};

use super::admission::{self, AdmissionOp};
use super::auth::{self, Attributes, UserInfo};
use super::error::{ApiError, ApiResult, Cause, qualified};
use super::patch::{self, Scope};
use super::resources::{self, ResKey, ResourceDef};
use super::select::{FieldSelector, LabelSelector};
use super::store::{EventType, Store, meta_str};
use super::table;
use super::{Authorization, Faults, Server};

pub type Body = BoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 3 * 1024 * 1024;

/// etcd's default `--max-request-bytes`.
const MAX_STORED_OBJECT: usize = 1536 * 1024;

pub fn now_rfc3339() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_warnings(resp.headers_mut(), warnings);
    resp
}

fn add_warnings(h: &mut HeaderMap, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.append(http::header::WARNING, v);
        }
    }
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.code, &e.to_status(), &[]);
    if let Some(r) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&r.to_string())
    {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp
}

/// Accepts TLS connections until shutdown.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(server, req).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Parsed query string.
#[derive(Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// How unknown fields are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Per-request context of a write.
pub struct WriteCtx {
    pub user: UserInfo,
    pub dry_run: bool,
    pub manager: String,
    pub validation: FieldValidation,
    pub warnings: Vec<String>,
}

async fn wait_unpaused(server: &Server) {
    let mut rx = server.faults.subscribe();
    loop {
        if !rx.borrow_and_update().paused {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn handle(server: Arc<Server>, req: http::Request<Incoming>) -> Response<Body> {
    let faults = server.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let path = req.uri().path().to_string();
    if faults.paused && !path.starts_with("/_standin/") {
        wait_unpaused(&server).await;
    }
    match handle_inner(&server, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The target of a resource request.
#[derive(Debug, Clone)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub ns: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub legacy_watch: bool,
}

fn parse_target(path: &str) -> Option<Result<Target, ()>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let t = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        group: group.clone(),
        version: version.clone(),
        ns: ns.map(String::from),
        plural: plural.to_string(),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
        legacy_watch,
    };
    Some(Ok(match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            t(None, "namespaces", Some(ns), Some(sub))
        }
        ["namespaces", ns, plural, more @ ..] => {
            if more.len() > 2 {
                return Some(Err(()));
            }
            t(Some(ns), plural, more.first(), more.get(1))
        }
        [plural, more @ ..] => {
            if more.len() > 2 {
                return Some(Err(()));
            }
            t(None, plural, more.first(), more.get(1))
        }
        [] => return Some(Err(())),
    }))
}

fn verb_of(method: &Method, t: &Target, q: &Query) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => {
            if t.legacy_watch || q.flag("watch") {
                "watch"
            } else if t.name.is_some() {
                "get"
            } else {
                "list"
            }
        }
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => {
            if t.name.is_some() {
                "delete"
            } else {
                "deletecollection"
            }
        }
        _ => "unknown",
    }
}

async fn read_body(body: Incoming) -> ApiResult<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|_| {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {MAX_BODY}"),
        )
    })
}

fn decode(bytes: &[u8], content_type: &str) -> ApiResult<Value> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    if content_type.contains("protobuf") {
        return super::protobuf::decode(bytes).map_err(ApiError::unsupported_media);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => Ok(v),
        Err(json_err) => {
            if content_type.contains("yaml") {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
                serde_saphyr::from_str::<Value>(text)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            } else {
                Err(ApiError::bad_request(format!(
                    "couldn't get version/kind; json parse error: {json_err}"
                )))
            }
        }
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn handle_inner(
    server: &Arc<Server>,
    req: http::Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let q = Query::parse(parts.uri.query());
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        let mut r = Response::new(full("ok"));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        return Ok(r);
    }
    let token = bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    let mut user = server
        .tokens
        .authenticate(token)
        .ok_or_else(ApiError::unauthorized)?;
    // Impersonation, allowed to cluster admins (kubectl --as / --as-group).
    if let Some(imp) = parts
        .headers
        .get("Impersonate-User")
        .and_then(|v| v.to_str().ok())
    {
        let attrs = Attributes {
            verb: "impersonate".into(),
            group: String::new(),
            resource: "users".into(),
            subresource: String::new(),
            name: imp.into(),
            namespace: String::new(),
            path: None,
        };
        let allowed = user.is_master()
            || server.authorization == Authorization::AlwaysAllow
            || auth::authorize(&server.lock(), &user, &attrs);
        server.audit.record(&user, &attrs, allowed);
        if !allowed {
            return Err(ApiError::forbidden(format!(
                "users \"{imp}\" is forbidden: User \"{}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
                user.username
            )));
        }
        let mut groups: Vec<String> = parts
            .headers
            .get_all("Impersonate-Group")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect();
        groups.push("system:authenticated".into());
        if let Some(sa) = imp.strip_prefix("system:serviceaccount:") {
            groups.push("system:serviceaccounts".into());
            if let Some((ns, _)) = sa.split_once(':') {
                groups.push(format!("system:serviceaccounts:{ns}"));
            }
        }
        user = UserInfo {
            username: imp.into(),
            uid: parts
                .headers
                .get("Impersonate-Uid")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .into(),
            groups,
        };
    }
    if let Some(admin) = path.strip_prefix("/_standin/") {
        if !user.is_master() {
            return Err(ApiError::forbidden(
                "the stand-in admin API is for cluster admins",
            ));
        }
        let bytes = read_body(body).await?;
        return admin_endpoint(server, &parts.method, admin, &bytes);
    }
    let target = match parse_target(&path) {
        None => {
            authorize_path(server, &user, "get", &path)?;
            return discovery(server, &path, &parts.headers);
        }
        Some(Err(())) => {
            return Err(ApiError::not_found("", "", &path)
                .with_message("the server could not find the requested resource"));
        }
        Some(Ok(t)) => t,
    };
    let verb = verb_of(&parts.method, &target, &q);
    let def = {
        let store = server.lock();
        store
            .registry
            .lookup(&target.group, &target.version, &target.plural)
            .cloned()
    };
    let Some(def) = def else {
        return Err(ApiError::not_found("", "", "")
            .with_message("the server could not find the requested resource"));
    };
    if def.namespaced != target.ns.is_some()
        && !(def.namespaced
            && target.name.is_none()
            && matches!(verb, "list" | "watch" | "create" | "deletecollection"))
    {
        return Err(ApiError::not_found("", "", "")
            .with_message("the server could not find the requested resource"));
    }
    if let Some(sub) = &target.sub {
        let ok = match sub.as_str() {
            "status" => def
                .version(&target.version)
                .is_some_and(|v| v.status_subresource),
            "finalize" => def.group.is_empty() && def.plural == "namespaces",
            _ => false,
        };
        if !ok {
            return Err(ApiError::not_found("", "", "")
                .with_message("the server could not find the requested resource"));
        }
    }
    let attrs = Attributes {
        verb: verb.into(),
        group: def.group.clone(),
        resource: def.plural.clone(),
        subresource: target.sub.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        namespace: target.ns.clone().unwrap_or_default(),
        path: None,
    };
    let allowed = server.authorization == Authorization::AlwaysAllow
        || auth::authorize(&server.lock(), &user, &attrs);
    server.audit.record(&user, &attrs, allowed);
    if !allowed {
        let mut e = ApiError::forbidden(auth::forbidden_message(&user, &attrs));
        e.name = target.name.clone();
        e.group = Some(def.group.clone());
        e.kind = Some(def.plural.clone());
        return Err(e);
    }
    let faults = server.faults();
    if faults.throttle_429 > 0.0 && fastrand::f64() < faults.throttle_429 {
        let mut e = ApiError::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let is_write = matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    );
    if is_write {
        inject_write_fault(&server.faults(), &def, target.name.as_deref().unwrap_or(""))?;
    }
    if def.create_only && verb != "create" {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let table = wants_table(&parts.headers);
    let ns = target.ns.clone().unwrap_or_default();
    let mut ctx = WriteCtx {
        user: user.clone(),
        dry_run: q.get("dryRun") == Some("All"),
        manager: q.get("fieldManager").map(String::from).unwrap_or_else(|| {
            parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .unwrap_or("unknown")
                .to_string()
        }),
        validation: match q.get("fieldValidation") {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
        warnings: Vec::new(),
    };
    if let Some(dr) = q.get("dryRun")
        && dr != "All"
        && !dr.is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "Unsupported value: \"{dr}\": supported values: \"All\""
        )));
    }
    let result = match verb {
        "get" => {
            let name = target.name.clone().unwrap_or_default();
            let obj = server
                .lock()
                .get(&ResKey::new(&def.group, &def.plural), &ns, &name)
                .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, &name))?;
            let obj = convert_version(&def, &target.version, &obj);
            if table {
                let rv = meta_str(&obj, "resourceVersion").to_string();
                (
                    200,
                    table::table(
                        &def,
                        &target.version,
                        &[&obj],
                        &rv,
                        None,
                        q.get("includeObject").unwrap_or("Metadata"),
                    ),
                )
            } else {
                (200, obj)
            }
        }
        "list" => (200, list(server, &def, &target, &q, table)?),
        "watch" => return watch(server.clone(), def, target, &q, table),
        "create" => {
            if def.create_only {
                let body = decode(&read_body(body).await?, &content_type)?;
                return Ok(json_response(
                    201,
                    &access_review(server, &def, &user, body)?,
                    &[],
                ));
            }
            let body = decode(&read_body(body).await?, &content_type)?;
            create(server, &def, &target.version, &ns, body, &mut ctx).await?
        }
        "update" => {
            let body = decode(&read_body(body).await?, &content_type)?;
            let name = target.name.clone().unwrap_or_default();
            update(
                server,
                &def,
                &target.version,
                &ns,
                &name,
                target.sub.as_deref(),
                body,
                &mut ctx,
            )
            .await?
        }
        "patch" => {
            let bytes = read_body(body).await?;
            let name = target.name.clone().unwrap_or_default();
            patch(
                server,
                &def,
                &target.version,
                &ns,
                &name,
                target.sub.as_deref(),
                &content_type,
                &bytes,
                &q,
                &mut ctx,
            )
            .await?
        }
        "delete" => {
            let bytes = read_body(body).await?;
            let opts = decode(&bytes, &content_type)?;
            let name = target.name.clone().unwrap_or_default();
            delete(server, &def, &ns, &name, &opts, &q, &mut ctx).await?
        }
        "deletecollection" => {
            let bytes = read_body(body).await?;
            let opts = decode(&bytes, &content_type)?;
            delete_collection(server, &def, &target, &opts, &q, &mut ctx).await?
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    Ok(json_response(result.0, &result.1, &ctx.warnings))
}

impl ApiError {
    fn with_message(mut self, m: &str) -> Self {
        self.message = m.to_string();
        self.name = None;
        self.group = None;
        self.kind = None;
        self
    }
}

fn inject_write_fault(f: &Faults, def: &ResourceDef, name: &str) -> ApiResult<()> {
    if f.write_error_500 > 0.0 && fastrand::f64() < f.write_error_500 {
        return Err(ApiError::internal(
            "Internal error occurred: injected fault (kube-standin)",
        ));
    }
    if f.write_error_409 > 0.0 && fastrand::f64() < f.write_error_409 {
        return Err(ApiError::stale(&def.group, &def.plural, name));
    }
    Ok(())
}

fn authorize_create_by_apply(
    server: &Server,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    user: &UserInfo,
) -> ApiResult<()> {
    let attrs = Attributes {
        verb: "create".into(),
        group: def.group.clone(),
        resource: def.plural.clone(),
        subresource: String::new(),
        name: name.into(),
        namespace: ns.into(),
        path: None,
    };
    let allowed = server.authorization == Authorization::AlwaysAllow
        || auth::authorize(&server.lock(), user, &attrs);
    server.audit.record(user, &attrs, allowed);
    if allowed {
        return Ok(());
    }
    let mut e = ApiError::forbidden(auth::forbidden_message(user, &attrs));
    e.name = Some(name.into());
    e.group = Some(def.group.clone());
    e.kind = Some(def.plural.clone());
    Err(e)
}

fn authorize_path(server: &Server, user: &UserInfo, verb: &str, path: &str) -> ApiResult<()> {
    if server.authorization != Authorization::Rbac {
        return Ok(());
    }
    let a = Attributes {
        verb: verb.into(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        name: String::new(),
        namespace: String::new(),
        path: Some(path.into()),
    };
    let allowed = auth::authorize(&server.lock(), user, &a);
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(auth::forbidden_message(user, &a)))
    }
}

fn discovery(server: &Server, path: &str, _headers: &HeaderMap) -> ApiResult<Response<Body>> {
    let store = server.lock();
    let nf = || {
        ApiError::not_found("", "", "")
            .with_message("the server could not find the requested resource")
    };
    let doc = match path.trim_end_matches('/') {
        "/version" => json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-standin",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
            "platform": "linux/amd64",
        }),
        "/api" => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server.base_url.trim_start_matches("https://")}],
        }),
        "/apis" => store.registry.api_group_list(),
        "/openapi/v3" => store.registry.openapi_v3_root(),
        "/openapi/v2" => {
            return Err(
                ApiError::not_found("", "", "").with_message("the stand-in serves OpenAPI v3 only")
            );
        }
        p => {
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            match segs.as_slice() {
                ["api", v] => store.registry.resource_list("", v).ok_or_else(nf)?,
                ["apis", g] => store.registry.api_group(g).ok_or_else(nf)?,
                ["apis", g, v] => store.registry.resource_list(g, v).ok_or_else(nf)?,
                ["openapi", "v3", "api", v] => {
                    store.registry.openapi_v3_gv("", v).ok_or_else(nf)?
                }
                ["openapi", "v3", "apis", g, v] => {
                    store.registry.openapi_v3_gv(g, v).ok_or_else(nf)?
                }
                _ => return Err(nf()),
            }
        }
    };
    Ok(json_response(200, &doc, &[]))
}

fn admin_endpoint(
    server: &Server,
    method: &Method,
    path: &str,
    body: &[u8],
) -> ApiResult<Response<Body>> {
    match (method, path) {
        (&Method::GET, "faults") => Ok(json_response(
            200,
            &serde_json::to_value(server.faults()).unwrap_or_default(),
            &[],
        )),
        (&Method::PUT | &Method::POST, "faults") => {
            let f: Faults = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("faults: {e}")))?;
            server.faults.send_replace(f.clone());
            Ok(json_response(
                200,
                &serde_json::to_value(f).unwrap_or_default(),
                &[],
            ))
        }
        (&Method::POST, "close-watches") => {
            server.watch_epoch.send_modify(|e| *e += 1);
            Ok(json_response(200, &json!({"closed": true}), &[]))
        }
        (&Method::POST, "compact") => {
            let mut s = server.lock();
            s.compact();
            Ok(json_response(
                200,
                &json!({"compactedResourceVersion": s.compacted_rv.to_string()}),
                &[],
            ))
        }
        (&Method::GET, "audit") => Ok(json_response(
            200,
            &json!({"records": server.audit.records()}),
            &[],
        )),
        (&Method::DELETE, "audit") => {
            server.audit.clear();
            Ok(json_response(200, &json!({"cleared": true}), &[]))
        }
        (&Method::GET, "stats") => {
            let s = server.lock();
            Ok(json_response(
                200,
                &json!({"objects": s.count(), "resourceVersion": s.rv.to_string(), "history": s.history.len(), "compactedResourceVersion": s.compacted_rv.to_string()}),
                &[],
            ))
        }
        _ => Err(ApiError::not_found("", "", path).with_message("unknown stand-in admin endpoint")),
    }
}

/// Rewrites apiVersion for a CRD version other than the stored one
/// (conversion strategy `None`).
fn convert_version(def: &ResourceDef, version: &str, obj: &Arc<Value>) -> Value {
    let mut o = (**obj).clone();
    if def.is_custom() && def.storage_version() != version {
        o["apiVersion"] = json!(def.api_version(version));
    }
    o
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"rv": rv, "ns": ns, "name": name})).unwrap_or_default())
}

fn decode_continue(s: &str) -> ApiResult<(u64, String, String)> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?,
        v.get("ns")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
    ))
}

fn list(
    server: &Server,
    def: &ResourceDef,
    t: &Target,
    q: &Query,
    table: bool,
) -> ApiResult<Value> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), def.is_custom())?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let cont = q
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(decode_continue)
        .transpose()?;
    let store = server.lock();
    if let Some((rv, _, _)) = &cont
        && *rv < store.compacted_rv
    {
        return Err(ApiError::gone(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        ));
    }
    let all = store.list(&ResKey::new(&def.group, &def.plural), t.ns.as_deref());
    let rv = cont.as_ref().map_or(store.rv, |c| c.0);
    drop(store);
    let mut items = Vec::new();
    let mut next = None;
    let mut remaining = 0usize;
    for o in &all {
        if let Some((_, cns, cname)) = &cont {
            let k = (meta_str(o, "namespace"), meta_str(o, "name"));
            if k <= (cns.as_str(), cname.as_str()) {
                continue;
            }
        }
        if !labels.matches(o) || !fields.matches(o) {
            continue;
        }
        if let Some(l) = limit
            && items.len() == l
        {
            if next.is_none()
                && let Some(last) = items.last()
            {
                let last: &Arc<Value> = last;
                next = Some(encode_continue(
                    rv,
                    meta_str(last, "namespace"),
                    meta_str(last, "name"),
                ));
            }
            remaining += 1;
            continue;
        }
        items.push(o.clone());
    }
    let rv_s = rv.to_string();
    if table {
        let converted: Vec<Value> = items
            .iter()
            .map(|o| convert_version(def, &t.version, o))
            .collect();
        let refs: Vec<&Value> = converted.iter().collect();
        return Ok(table::table(
            def,
            &t.version,
            &refs,
            &rv_s,
            next.as_deref(),
            q.get("includeObject").unwrap_or("Metadata"),
        ));
    }
    let items: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut v = convert_version(def, &t.version, o);
            if !def.is_custom() {
                // Typed lists of built-ins carry no per-item kind/apiVersion.
                if let Some(m) = v.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
            }
            v
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv_s});
    if let Some(n) = next {
        meta["continue"] = json!(n);
        meta["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": def.list_kind,
        "apiVersion": def.api_version(&t.version),
        "metadata": meta,
        "items": items,
    }))
}

// ---------------------------------------------------------------- watch

fn watch_frame(type_: &str, obj: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(obj.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(type_.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(obj);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn watch(
    server: Arc<Server>,
    def: ResourceDef,
    t: Target,
    q: &Query,
    table: bool,
) -> ApiResult<Response<Body>> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), def.is_custom())?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv_param = q.get("resourceVersion").unwrap_or_default().to_string();
    let include_object = q.get("includeObject").unwrap_or("Metadata").to_string();
    let res = ResKey::new(&def.group, &def.plural);
    server
        .watch_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(1024);
    let matches = {
        let labels = labels.clone();
        let fields = fields.clone();
        let ns = t.ns.clone();
        move |o: &Value| {
            ns.as_deref().is_none_or(|n| meta_str(o, "namespace") == n)
                && labels.matches(o)
                && fields.matches(o)
        }
    };
    // Set up the starting point under the lock so no event is missed.
    enum Start {
        Gone(u64, u64),
        Ready(
            Vec<(EventType, Arc<Value>)>,
            Vec<Arc<super::store::Event>>,
            tokio::sync::broadcast::Receiver<Arc<super::store::Event>>,
            u64,
        ),
    }
    let start = {
        let store = server.lock();
        if rv_param.is_empty() || rv_param == "0" || send_initial {
            let initial: Vec<(EventType, Arc<Value>)> = store
                .list(&res, t.ns.as_deref())
                .into_iter()
                .filter(|o| matches(o))
                .map(|o| (EventType::Added, o))
                .collect();
            Start::Ready(initial, Vec::new(), store.tx.subscribe(), store.rv)
        } else {
            let from: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {rv_param}"))
            })?;
            match store.subscribe_from(&res, from) {
                Some((backlog, rx)) => Start::Ready(Vec::new(), backlog, rx, from),
                None => Start::Gone(from, store.compacted_rv),
            }
        }
    };
    let version = t.version.clone();
    let server2 = server.clone();
    tokio::spawn(async move {
        let mut tx = tx;
        let render = |type_: &str, obj: &Value, raw: Option<Bytes>| -> Bytes {
            if table {
                let rv = meta_str(obj, "resourceVersion").to_string();
                let tb = table::table(&def, &version, &[obj], &rv, None, &include_object);
                watch_frame(type_, &serde_json::to_vec(&tb).unwrap_or_default())
            } else if def.is_custom() && def.storage_version() != version {
                let mut o = obj.clone();
                o["apiVersion"] = json!(def.api_version(&version));
                watch_frame(type_, &serde_json::to_vec(&o).unwrap_or_default())
            } else {
                match raw {
                    Some(b) => watch_frame(type_, &b),
                    None => watch_frame(type_, &serde_json::to_vec(obj).unwrap_or_default()),
                }
            }
        };
        let (initial, backlog, mut rx, mut last_rv) = match start {
            Start::Gone(from, compacted) => {
                server2
                    .watch_gone
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let status =
                    ApiError::gone(format!("too old resource version: {from} ({compacted})"))
                        .to_status();
                let _ = tx
                    .send(watch_frame(
                        "ERROR",
                        &serde_json::to_vec(&status).unwrap_or_default(),
                    ))
                    .await;
                return;
            }
            Start::Ready(i, b, rx, rv) => (i, b, rx, rv),
        };
        let bookmark = |rv: u64, initial_end: bool| -> Bytes {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            let obj = json!({"kind": def.kind, "apiVersion": def.api_version(&version), "metadata": meta});
            watch_frame("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
        };
        for (ty, o) in &initial {
            if tx.send(render(ty.as_str(), o, None)).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks && tx.send(bookmark(last_rv, true)).await.is_err() {
            return;
        }
        let mut queue: std::collections::VecDeque<Arc<super::store::Event>> = backlog.into();
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut epoch_rx = server2.watch_epoch.subscribe();
        epoch_rx.borrow_and_update();
        let mut bookmark_tick = tokio::time::interval(server2.bookmark_interval);
        bookmark_tick.tick().await;
        let mut faults_rx = server2.faults.subscribe();
        loop {
            while let Some(ev) = queue.pop_front() {
                last_rv = last_rv.max(ev.rv);
                if ev.res != res {
                    continue;
                }
                let now_match = matches(&ev.obj);
                let was_match = ev.prev.as_deref().is_some_and(&matches);
                let ty = match (ev.type_, was_match, now_match) {
                    (EventType::Deleted, true, _) => Some("DELETED"),
                    (EventType::Deleted, false, _) => None,
                    (_, false, true) => Some("ADDED"),
                    (EventType::Modified, true, true) => Some("MODIFIED"),
                    (EventType::Modified, true, false) => Some("DELETED"),
                    _ => None,
                };
                if let Some(ty) = ty
                    && tx
                        .send(render(ty, &ev.obj, Some(ev.obj_json())))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if faults_rx.borrow().paused {
                if faults_rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // Re-read so that changing the fault also affects open watches.
            let close_at = server2
                .faults()
                .watch_close_every_secs
                .filter(|s| *s > 0.0)
                .map(|s| started + Duration::from_secs_f64(s));
            let sleep_until = close_at.map_or(deadline, |c| c.min(deadline));
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => queue.push_back(ev),
                    // A watcher too slow for the event rate is closed, as the real
                    // server closes watchers that fall behind; the client resumes.
                    Err(_) => return,
                },
                _ = bookmark_tick.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = faults_rx.changed() => {}
                _ = epoch_rx.changed() => return,
                _ = tokio::time::sleep_until(sleep_until) => return,
            }
        }
    });
    let stream = rx.map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

// ---------------------------------------------------------------- writes

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        // Unreachable: metadata was just made an object.
        None => unreachable_meta(),
    }
}

#[allow(clippy::panic)]
fn unreachable_meta() -> &'static mut Map<String, Value> {
    panic!("metadata is an object")
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// A label value or the name part of a label key (`[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`).
fn qualified_name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn dns_subdomain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn qualified_key_ok(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => dns_subdomain_ok(prefix) && qualified_name_part_ok(name),
        None => qualified_name_part_ok(k),
    }
}

/// ObjectMeta rules every kind gets: label keys and values, annotation keys,
/// and the 256 KiB limit on all annotations together.
fn validate_object_meta(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !qualified_key_ok(k) {
                out.push(Cause::new("metadata.labels", "FieldValueInvalid", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (63 characters at most), with an optional DNS subdomain prefix and '/'")));
            }
            let val = v.as_str().unwrap_or_default();
            if !val.is_empty() && !qualified_name_part_ok(val) {
                out.push(Cause::new("metadata.labels", "FieldValueInvalid", format!("Invalid value: \"{val}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, and be at most 63 characters")));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0usize;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !qualified_key_ok(&k.to_lowercase()) {
                out.push(Cause::new(
                    "metadata.annotations",
                    "FieldValueInvalid",
                    format!("Invalid value: \"{k}\": annotation keys must be qualified names"),
                ));
            }
        }
        if total > 262_144 {
            out.push(Cause::new(
                "metadata.annotations",
                "FieldValueTooLong",
                "Too long: may not be more than 262144 bytes",
            ));
        }
    }
    out
}

fn validate_name(def: &ResourceDef, name: &str) -> Option<Cause> {
    let label = def.plural == "namespaces" && def.group.is_empty();
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    // RBAC objects and a few others accept path-segment names such as `system:foo`.
    let lenient = def.group == "rbac.authorization.k8s.io";
    let lenient_ok = lenient && !name.contains('/') && !name.is_empty();
    if name.len() > max || !(ok_chars || lenient_ok) {
        let what = if label {
            "RFC 1123 label"
        } else {
            "RFC 1123 subdomain"
        };
        return Some(Cause::new(
            "metadata.name",
            "FieldValueInvalid",
            format!(
                "Invalid value: \"{name}\": a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    None
}

/// The parts of an object a status write may not touch, and vice versa.
fn split_scope(def: &ResourceDef, version: &str, sub: Option<&str>) -> Scope {
    let has_status = def.version(version).is_some_and(|v| v.status_subresource);
    match sub {
        Some("status") => Scope::Status,
        _ if has_status => Scope::Main,
        _ => Scope::All,
    }
}

fn spec_changed(def: &ResourceDef, old: &Value, new: &Value) -> bool {
    if def.is_custom() {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        strip(old) != strip(new)
    } else {
        old.get("spec") != new.get("spec")
            || (def.plural == "customresourcedefinitions" && old.get("spec") != new.get("spec"))
    }
}

/// Equal but for managedFields and resourceVersion (a no-op write), compared
/// without cloning either object.
fn same_but_volatile(a: &Value, b: &Value) -> bool {
    let (Some(am), Some(bm)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let volatile = |k: &str| k == "managedFields" || k == "resourceVersion";
    let meta_eq = |x: Option<&Value>, y: Option<&Value>| match (
        x.and_then(Value::as_object),
        y.and_then(Value::as_object),
    ) {
        (Some(xm), Some(ym)) => {
            xm.iter().filter(|(k, _)| !volatile(k)).count()
                == ym.iter().filter(|(k, _)| !volatile(k)).count()
                && xm
                    .iter()
                    .filter(|(k, _)| !volatile(k))
                    .all(|(k, v)| ym.get(k) == Some(v))
        }
        _ => x == y,
    };
    am.len() == bm.len()
        && am.iter().all(|(k, v)| {
            if k == "metadata" {
                meta_eq(Some(v), bm.get(k))
            } else {
                bm.get(k) == Some(v)
            }
        })
}

/// Custom-resource schema: prune or reject unknown fields, default, validate.
fn apply_schema(
    def: &ResourceDef,
    version: &str,
    obj: &mut Value,
    old: Option<&Value>,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    let Some(schema) = def.version(version).and_then(|v| v.schema.clone()) else {
        return Ok(());
    };
    let unknown = schema.prune_and_default(obj);
    if !unknown.is_empty() {
        match ctx.validation {
            FieldValidation::Strict => {
                let list = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
                    def.kind,
                    def.api_version(version),
                    def.kind
                )));
            }
            FieldValidation::Warn => ctx
                .warnings
                .extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
            FieldValidation::Ignore => {}
        }
    }
    let causes = schema.validate(obj, old);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &def.kind,
            &def.group,
            meta_str(obj, "name"),
            causes,
        ))
    }
}

/// How a list at a managed-fields path is merged: from the CRD schema for
/// custom resources, from the Go types' markers for built-ins and metadata.
fn list_kind(def: &ResourceDef, version: &str, path: &[String]) -> patch::ListKind {
    match def.version(version).and_then(|v| v.schema.clone()) {
        Some(schema) if path.first().map(String::as_str) != Some("f:metadata") => {
            schema.list_kind_at(path)
        }
        _ => patch::builtin_list_kind(path),
    }
}

/// Unknown fields and type errors of built-in kinds (through k8s-openapi).
fn prune_builtin(
    def: &ResourceDef,
    version: &str,
    obj: &mut Value,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    let cannot = |detail: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {detail}",
            def.kind,
            def.api_version(version),
            def.kind
        ))
    };
    let unknown = super::typed::prune_unknown(&def.group, &def.plural, obj).map_err(cannot)?;
    if unknown.is_empty() {
        return Ok(());
    }
    let list = || {
        unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect::<Vec<_>>()
    };
    match ctx.validation {
        FieldValidation::Strict => Err(cannot(format!(
            "strict decoding error: {}",
            list().join(", ")
        ))),
        FieldValidation::Warn => {
            ctx.warnings.extend(list());
            Ok(())
        }
        FieldValidation::Ignore => Ok(()),
    }
}

/// RBAC rule validation: verbs required; resource rules need API groups and
/// resources; non-resource URLs only in ClusterRoles and without groups.
fn rbac_rule_causes(obj: &Value) -> Vec<Cause> {
    let cluster = obj.get("kind").and_then(Value::as_str) == Some("ClusterRole");
    let mut out = Vec::new();
    let rules = obj
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let non_empty = |r: &Value, k: &str| {
        r.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    for (i, r) in rules.iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if !non_empty(r, "verbs") {
            out.push(Cause::new(
                at("verbs"),
                "FieldValueRequired",
                "Required value: verbs must contain at least one value",
            ));
        }
        let urls = non_empty(r, "nonResourceURLs");
        if urls {
            if !cluster {
                out.push(Cause::new(
                    at("nonResourceURLs"),
                    "FieldValueInvalid",
                    "Invalid value: namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if non_empty(r, "apiGroups")
                || non_empty(r, "resources")
                || non_empty(r, "resourceNames")
            {
                out.push(Cause::new(at("nonResourceURLs"), "FieldValueInvalid", "Invalid value: rules cannot apply to both regular resources and non-resource URLs"));
            }
            continue;
        }
        if !non_empty(r, "apiGroups") {
            out.push(Cause::new(
                at("apiGroups"),
                "FieldValueRequired",
                "Required value: resource rules must supply at least one api group",
            ));
        }
        if !non_empty(r, "resources") {
            out.push(Cause::new(
                at("resources"),
                "FieldValueRequired",
                "Required value: resource rules must supply at least one resource",
            ));
        }
    }
    out
}

/// Defaults and validation of admission webhook configurations (v1), as
/// kube-apiserver applies them; a chart with a malformed webhook fails here.
fn default_and_validate_webhooks(obj: &mut Value, mutating: bool) -> Vec<Cause> {
    let mut out = Vec::new();
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return out;
    };
    let mut names: Vec<String> = Vec::new();
    for (i, h) in hooks.iter_mut().enumerate() {
        let at = |f: &str| format!("webhooks[{i}].{f}");
        let Some(m) = h.as_object_mut() else {
            continue;
        };
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            out.push(Cause::new(
                at("name"),
                "FieldValueRequired",
                "Required value",
            ));
        } else if name.split('.').count() < 3 || !dns_subdomain_ok(&name) {
            out.push(Cause::new(at("name"), "FieldValueInvalid", format!("Invalid value: \"{name}\": should be a domain with at least three segments separated by dots")));
        } else if names.contains(&name) {
            out.push(Cause::new(
                at("name"),
                "FieldValueDuplicate",
                format!("Duplicate value: \"{name}\""),
            ));
        }
        names.push(name);
        match m.get("admissionReviewVersions").and_then(Value::as_array) {
            Some(v) if v.iter().any(|x| x == "v1" || x == "v1beta1") => {}
            _ => out.push(Cause::new(
                at("admissionReviewVersions"),
                "FieldValueRequired",
                "Required value: must specify one of v1, v1beta1",
            )),
        }
        match m.get("sideEffects").and_then(Value::as_str) {
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => out.push(Cause::new(
                at("sideEffects"),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: \"{other}\": supported values: \"None\", \"NoneOnDryRun\""
                ),
            )),
            None => out.push(Cause::new(
                at("sideEffects"),
                "FieldValueRequired",
                "Required value: must specify one of None, NoneOnDryRun",
            )),
        }
        m.entry("failurePolicy").or_insert(json!("Fail"));
        m.entry("matchPolicy").or_insert(json!("Equivalent"));
        m.entry("timeoutSeconds").or_insert(json!(10));
        m.entry("namespaceSelector").or_insert(json!({}));
        m.entry("objectSelector").or_insert(json!({}));
        if mutating {
            m.entry("reinvocationPolicy").or_insert(json!("Never"));
        }
        match m.get("failurePolicy").and_then(Value::as_str) {
            Some("Fail" | "Ignore") => {}
            other => out.push(Cause::new(
                at("failurePolicy"),
                "FieldValueNotSupported",
                format!("Unsupported value: {other:?}: supported values: \"Fail\", \"Ignore\""),
            )),
        }
        if let Some(t) = m.get("timeoutSeconds").and_then(Value::as_i64)
            && !(1..=30).contains(&t)
        {
            out.push(Cause::new(
                at("timeoutSeconds"),
                "FieldValueInvalid",
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        let cc = m.entry("clientConfig").or_insert(json!({}));
        let url = cc.get("url").and_then(Value::as_str).map(String::from);
        let has_service = cc.get("service").is_some();
        match (url, has_service) {
            (Some(_), true) | (None, false) => out.push(Cause::new(
                at("clientConfig"),
                "FieldValueRequired",
                "Required value: exactly one of url or service is required",
            )),
            (Some(u), false) => {
                if !u.starts_with("https://") {
                    out.push(Cause::new(
                        at("clientConfig.url"),
                        "FieldValueInvalid",
                        format!("Invalid value: \"{u}\": 'https' is the only allowed URL scheme"),
                    ));
                }
                if u.contains('#') || u.contains('?') {
                    out.push(Cause::new(
                        at("clientConfig.url"),
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: \"{u}\": fragments and query parameters are not allowed"
                        ),
                    ));
                }
            }
            (None, true) => {
                if let Some(svc) = cc.get_mut("service").and_then(Value::as_object_mut) {
                    svc.entry("port").or_insert(json!(443));
                    if svc
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                    {
                        out.push(Cause::new(
                            at("clientConfig.service.name"),
                            "FieldValueRequired",
                            "Required value: service name is required",
                        ));
                    }
                    if svc
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                    {
                        out.push(Cause::new(
                            at("clientConfig.service.namespace"),
                            "FieldValueRequired",
                            "Required value: service namespace is required",
                        ));
                    }
                    if let Some(p) = svc.get("path").and_then(Value::as_str)
                        && !p.starts_with('/')
                    {
                        out.push(Cause::new(
                            at("clientConfig.service.path"),
                            "FieldValueInvalid",
                            format!("Invalid value: \"{p}\": must start with a '/'"),
                        ));
                    }
                    if let Some(port) = svc.get("port").and_then(Value::as_i64)
                        && !(1..=65535).contains(&port)
                    {
                        out.push(Cause::new(
                            at("clientConfig.service.port"),
                            "FieldValueInvalid",
                            format!("Invalid value: {port}: port is not valid"),
                        ));
                    }
                }
            }
        }
        if let Some(rules) = m.get_mut("rules").and_then(Value::as_array_mut) {
            for (j, r) in rules.iter_mut().enumerate() {
                if let Some(rm) = r.as_object_mut() {
                    rm.entry("scope").or_insert(json!("*"));
                    for f in ["operations", "apiGroups", "apiVersions", "resources"] {
                        if rm
                            .get(f)
                            .and_then(Value::as_array)
                            .is_none_or(Vec::is_empty)
                        {
                            out.push(Cause::new(
                                format!("webhooks[{i}].rules[{j}].{f}"),
                                "FieldValueRequired",
                                "Required value",
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Defaults and validation of built-in kinds that the product relies on.
fn builtin_rules(def: &ResourceDef, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
    let name = meta_str(obj, "name").to_string();
    match (def.group.as_str(), def.plural.as_str()) {
        ("batch", "jobs") => {
            let uid = meta_str(obj, "uid").to_string();
            let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
            let Some(spec) = spec else {
                return Err(ApiError::invalid(
                    "Job",
                    "batch",
                    &name,
                    vec![Cause::new(
                        "spec.template",
                        "FieldValueRequired",
                        "Required value",
                    )],
                ));
            };
            let mut causes = Vec::new();
            if old.is_none() {
                spec.entry("parallelism").or_insert(json!(1));
                let mode = spec
                    .get("completionMode")
                    .and_then(Value::as_str)
                    .unwrap_or("NonIndexed")
                    .to_string();
                spec.insert("completionMode".into(), json!(mode));
                if mode == "Indexed" && spec.get("completions").is_none() {
                    causes.push(Cause::new(
                        "spec.completions",
                        "FieldValueRequired",
                        "Required value: when completion mode is Indexed",
                    ));
                }
                spec.entry("completions").or_insert(json!(1));
                spec.entry("backoffLimit").or_insert(json!(6));
                spec.entry("suspend").or_insert(json!(false));
                spec.entry("manualSelector").or_insert(json!(false));
                spec.entry("podReplacementPolicy")
                    .or_insert(json!("TerminatingOrFailed"));
                spec.insert(
                    "selector".into(),
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
                if let Some(tmeta) = spec.get_mut("template").and_then(|t| t.as_object_mut()) {
                    let m = tmeta.entry("metadata").or_insert(json!({}));
                    if let Some(m) = m.as_object_mut() {
                        let labels = m.entry("labels").or_insert(json!({}));
                        if let Some(l) = labels.as_object_mut() {
                            l.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
                            l.insert("batch.kubernetes.io/job-name".into(), json!(name));
                            l.insert("controller-uid".into(), json!(uid));
                            l.insert("job-name".into(), json!(name));
                        }
                    }
                }
            } else if let Some(o) = old {
                for immutable in ["completions", "completionMode", "selector", "template"] {
                    let before = o.pointer(&format!("/spec/{immutable}"));
                    if spec.get(immutable) != before
                        && !(immutable == "template"
                            && o.pointer("/spec/suspend") == Some(&json!(true)))
                    {
                        causes.push(Cause::new(
                            format!("spec.{immutable}"),
                            "FieldValueInvalid",
                            "Invalid value: field is immutable",
                        ));
                    }
                }
            }
            let containers = spec
                .get("template")
                .and_then(|t| t.pointer("/spec/containers"))
                .and_then(Value::as_array);
            if containers.is_none_or(Vec::is_empty) {
                causes.push(Cause::new(
                    "spec.template.spec.containers",
                    "FieldValueRequired",
                    "Required value",
                ));
            }
            let rp = spec
                .get("template")
                .and_then(|t| t.pointer("/spec/restartPolicy"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if rp != "Never" && rp != "OnFailure" {
                causes.push(Cause::new(
                    "spec.template.spec.restartPolicy",
                    "FieldValueRequired",
                    format!(
                        "Unsupported value: \"{rp}\": supported values: \"OnFailure\", \"Never\""
                    ),
                ));
            }
            for f in [
                "parallelism",
                "completions",
                "backoffLimit",
                "activeDeadlineSeconds",
            ] {
                if let Some(n) = spec.get(f).and_then(Value::as_i64)
                    && (n < 0 || (f == "activeDeadlineSeconds" && n == 0))
                {
                    causes.push(Cause::new(
                        format!("spec.{f}"),
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {n}: must be greater than {}",
                            if f == "activeDeadlineSeconds" {
                                "0"
                            } else {
                                "or equal to 0"
                            }
                        ),
                    ));
                }
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid("Job", "batch", &name, causes));
            }
        }
        ("", "namespaces") if old.is_none() => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
            let labels = meta_mut(obj).entry("labels").or_insert(json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        ("coordination.k8s.io", "leases") => {
            if let Some(d) = obj
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                && d <= 0
            {
                return Err(ApiError::invalid(
                    "Lease",
                    "coordination.k8s.io",
                    &name,
                    vec![Cause::new(
                        "spec.leaseDurationSeconds",
                        "FieldValueInvalid",
                        format!("Invalid value: {d}: must be greater than 0"),
                    )],
                ));
            }
        }
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            let causes = rbac_rule_causes(obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(&def.kind, &def.group, &name, causes));
            }
        }
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations" | "mutatingwebhookconfigurations",
        ) => {
            let mutating = def.plural == "mutatingwebhookconfigurations";
            let causes = default_and_validate_webhooks(obj, mutating);
            if !causes.is_empty() {
                return Err(ApiError::invalid(&def.kind, &def.group, &name, causes));
            }
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            if let Some(o) = old
                && o.get("roleRef") != obj.get("roleRef")
            {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    &name,
                    vec![Cause::new(
                        "roleRef",
                        "FieldValueInvalid",
                        "Invalid value: cannot change roleRef",
                    )],
                ));
            }
            if obj.get("roleRef").is_none() {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    &name,
                    vec![Cause::new(
                        "roleRef.kind",
                        "FieldValueNotSupported",
                        "Unsupported value: \"\": supported values: \"Role\", \"ClusterRole\"",
                    )],
                ));
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let rd =
                resources::crd_to_resource(obj).map_err(|c| resources::crd_invalid(&name, c))?;
            if let Some(o) = old {
                let before = resources::crd_to_resource(o).ok();
                if let Some(b) = before {
                    if b.group != rd.group || b.plural != rd.plural {
                        return Err(resources::crd_invalid(
                            &name,
                            vec![Cause::new(
                                "spec.names.plural",
                                "FieldValueInvalid",
                                "Invalid value: field is immutable",
                            )],
                        ));
                    }
                    if b.namespaced != rd.namespaced {
                        return Err(resources::crd_invalid(
                            &name,
                            vec![Cause::new(
                                "spec.scope",
                                "FieldValueInvalid",
                                "Invalid value: field is immutable",
                            )],
                        ));
                    }
                }
            }
            if old.is_none()
                || obj
                    .get("status")
                    .is_none_or(|s| s.get("conditions").is_none())
            {
                obj["status"] = resources::crd_status(obj, &now_rfc3339());
            }
        }
        _ => {}
    }
    Ok(())
}

enum Commit {
    Done(Value),
    Retry,
}

/// The shared tail of create/update/patch: metadata rules, schema, admission,
/// generation, managed fields, storage.
#[allow(clippy::too_many_arguments)]
async fn finish_write(
    server: &Arc<Server>,
    def: &ResourceDef,
    version: &str,
    ns: &str,
    old: Option<Arc<Value>>,
    mut new: Value,
    sub: Option<&str>,
    ssa_done: bool,
    ctx: &mut WriteCtx,
) -> ApiResult<Commit> {
    let scope = split_scope(def, version, sub);
    let res = ResKey::new(&def.group, &def.plural);
    let now = now_rfc3339();
    // Request metadata the server owns.
    {
        let m = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            m.remove(k);
        }
        if !ssa_done {
            m.remove("managedFields");
        }
        if def.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
    }
    new["apiVersion"] = json!(def.api_version(def.storage_version()));
    new["kind"] = json!(def.kind);
    match &old {
        None => {
            let m = meta_mut(&mut new);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
            if def.has_generation {
                m.insert("generation".into(), json!(1));
            }
            if scope == Scope::Main
                && let Some(o) = new.as_object_mut()
            {
                o.remove("status");
            }
        }
        Some(o) => {
            let om = o.get("metadata").cloned().unwrap_or(json!({}));
            if scope == Scope::Status {
                // A status write changes status only.
                let status = new.get("status").cloned();
                let mf = new.pointer("/metadata/managedFields").cloned();
                new = (**o).clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                let m = meta_mut(&mut new);
                m.remove("managedFields");
                if let (Some(mf), true) = (mf, ssa_done) {
                    m.insert("managedFields".into(), mf);
                }
            } else {
                if scope == Scope::Main {
                    match o.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                let m = meta_mut(&mut new);
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    if let Some(v) = om.get(k) {
                        m.insert(k.into(), v.clone());
                    }
                }
            }
            if old
                .as_ref()
                .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some())
            {
                let before = finalizers(o);
                let added: Vec<String> = finalizers(&new)
                    .into_iter()
                    .filter(|f| !before.contains(f))
                    .collect();
                if !added.is_empty() {
                    return Err(ApiError::invalid(
                        &def.kind,
                        &def.group,
                        meta_str(o, "name"),
                        vec![Cause::new(
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            format!(
                                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{\"{}\"}}",
                                added.join("\", \"")
                            ),
                        )],
                    ));
                }
            }
        }
    }
    if def.is_custom() {
        apply_schema(def, version, &mut new, old.as_deref(), ctx)?;
    } else {
        prune_builtin(def, version, &mut new, ctx)?;
        builtin_rules(def, &mut new, old.as_deref())?;
    }
    let op = if old.is_none() {
        AdmissionOp::Create
    } else {
        AdmissionOp::Update
    };
    // Mutating admission, then validation of what the webhooks produced.
    let mutated =
        admission::mutate(server, def, version, sub, op, &mut new, old.as_deref(), ctx).await?;
    if mutated {
        if def.is_custom() {
            apply_schema(def, version, &mut new, old.as_deref(), ctx)?;
        } else {
            builtin_rules(def, &mut new, old.as_deref())?;
        }
    }
    let meta_causes = validate_object_meta(&new);
    if !meta_causes.is_empty() {
        return Err(ApiError::invalid(
            &def.kind,
            &def.group,
            meta_str(&new, "name"),
            meta_causes,
        ));
    }
    if let Some(o) = &old {
        if def.has_generation && spec_changed(def, o, &new) {
            let g = o
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if same_but_volatile(o, &new)
            && !(ssa_done
                && o.pointer("/metadata/managedFields") != new.pointer("/metadata/managedFields"))
        {
            // A no-op write changes nothing, not even the resourceVersion.
            return Ok(Commit::Done((**o).clone()));
        }
    }
    if !ssa_done {
        patch::record_update(
            old.as_deref(),
            &mut new,
            &ctx.manager,
            &def.api_version(version),
            sub.unwrap_or(""),
            scope,
            &|p: &[String]| list_kind(def, version, p),
            &now,
        );
    }
    admission::validate(server, def, version, sub, op, &new, old.as_deref(), ctx).await?;
    if ctx.dry_run {
        return Ok(Commit::Done(new));
    }
    // etcd's request limit (1.5 MiB); custom resources are stored as JSON,
    // built-ins as (smaller) protobuf, so this is exact for the former only.
    let size = serde_json::to_vec(&new).map_or(0, |b| b.len());
    if size > MAX_STORED_OBJECT {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "etcdserver: request is too large",
        ));
    }
    let name = meta_str(&new, "name").to_string();
    let mut store = server.lock();
    let current = store.get(&res, ns, &name);
    match (&old, &current) {
        (None, Some(_)) => return Err(ApiError::already_exists(&def.group, &def.plural, &name)),
        (Some(o), Some(c)) if meta_str(o, "resourceVersion") != meta_str(c, "resourceVersion") => {
            return Ok(Commit::Retry);
        }
        (Some(_), None) => return Err(ApiError::not_found(&def.group, &def.plural, &name)),
        _ => {}
    }
    if def.namespaced && old.is_none() {
        match store.get(&ResKey::new("", "namespaces"), "", ns) {
            None => return Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                let mut e = ApiError::forbidden(format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    qualified(&def.group, &def.plural)
                ));
                e.name = Some(name.clone());
                e.group = Some(def.group.clone());
                e.kind = Some(def.plural.clone());
                e.causes = vec![Cause::new(
                    "",
                    "NamespaceTerminating",
                    format!("namespace {ns} is being terminated"),
                )];
                return Err(e);
            }
            Some(_) => {}
        }
    }
    let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
    if deleting && finalizers(&new).is_empty() {
        let last = store.remove(&res, ns, &name);
        let uid = meta_str(&new, "uid").to_string();
        after_removal(server, &mut store, def, &uid, &name);
        drop(store);
        return Ok(Commit::Done(last.map_or(new, |l| (*l).clone())));
    }
    let stored = store.put(&res, new);
    if def.group == "apiextensions.k8s.io"
        && def.plural == "customresourcedefinitions"
        && let Ok(rd) = resources::crd_to_resource(&stored)
    {
        store.registry.register_crd(rd);
    }
    if def.group.is_empty() && def.plural == "namespaces" && old.is_none() {
        // The service-account controller's default account.
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now}});
        store.put(&ResKey::new("", "serviceaccounts"), sa);
    }
    Ok(Commit::Done((*stored).clone()))
}

fn after_removal(server: &Server, store: &mut Store, def: &ResourceDef, uid: &str, name: &str) {
    if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
        let (g, p) = name
            .split_once('.')
            .map(|(p, g)| (g.to_string(), p.to_string()))
            .unwrap_or_default();
        let key = ResKey::new(&g, &p);
        for o in store.list(&key, None) {
            store.remove(&key, meta_str(&o, "namespace"), meta_str(&o, "name"));
        }
        store.registry.unregister_crd(&g, &p);
    }
    server
        .gc_queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(uid.to_string());
    server.gc_notify.notify_one();
}

async fn create(
    server: &Arc<Server>,
    def: &ResourceDef,
    version: &str,
    ns: &str,
    mut body: Value,
    ctx: &mut WriteCtx,
) -> ApiResult<(u16, Value)> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    }
    check_type(def, version, &body)?;
    let body_ns = meta_str(&body, "namespace").to_string();
    if def.namespaced && !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut name = meta_str(&body, "name").to_string();
    if name.is_empty() {
        let gen_name = meta_str(&body, "generateName").to_string();
        if gen_name.is_empty() {
            return Err(ApiError::invalid(
                &def.kind,
                &def.group,
                "",
                vec![Cause::new(
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                )],
            ));
        }
        name = format!("{gen_name}{}", random_suffix());
        meta_mut(&mut body).insert("name".into(), json!(name));
    }
    if let Some(c) = validate_name(def, &name) {
        return Err(ApiError::invalid(&def.kind, &def.group, &name, vec![c]));
    }
    match finish_write(server, def, version, ns, None, body, None, false, ctx).await? {
        Commit::Done(v) => Ok((201, convert_version(def, version, &Arc::new(v)))),
        Commit::Retry => Err(ApiError::already_exists(&def.group, &def.plural, &name)),
    }
}

fn check_type(def: &ResourceDef, version: &str, body: &Value) -> ApiResult<()> {
    let av = body
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    if !av.is_empty() && av != def.api_version(version) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            def.api_version(version)
        )));
    }
    if !kind.is_empty() && kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn update(
    server: &Arc<Server>,
    def: &ResourceDef,
    version: &str,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    body: Value,
    ctx: &mut WriteCtx,
) -> ApiResult<(u16, Value)> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request was in an unknown format",
        ));
    }
    check_type(def, version, &body)?;
    let body_name = meta_str(&body, "name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let res = ResKey::new(&def.group, &def.plural);
    let old = server
        .lock()
        .get(&res, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    let want_rv = meta_str(&body, "resourceVersion").to_string();
    if want_rv.is_empty() && def.is_custom() {
        return Err(ApiError::invalid(
            &def.kind,
            &def.group,
            name,
            vec![Cause::new(
                "metadata.resourceVersion",
                "FieldValueInvalid",
                "Invalid value: 0x0: must be specified for an update",
            )],
        ));
    }
    if !want_rv.is_empty() && want_rv != meta_str(&old, "resourceVersion") {
        return Err(ApiError::stale(&def.group, &def.plural, name));
    }
    let mut body = body;
    meta_mut(&mut body).insert("name".into(), json!(name));
    match finish_write(server, def, version, ns, Some(old), body, sub, false, ctx).await? {
        Commit::Done(v) => Ok((200, convert_version(def, version, &Arc::new(v)))),
        Commit::Retry => Err(ApiError::stale(&def.group, &def.plural, name)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn patch(
    server: &Arc<Server>,
    def: &ResourceDef,
    version: &str,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    bytes: &[u8],
    q: &Query,
    ctx: &mut WriteCtx,
) -> ApiResult<(u16, Value)> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    let body = decode(bytes, ct)?;
    let res = ResKey::new(&def.group, &def.plural);
    let scope = split_scope(def, version, sub);
    for _attempt in 0..8 {
        let old = server.lock().get(&res, ns, name);
        let (new, ssa) = match ct {
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(ApiError::bad_request(
                        "PATCH, application/apply-patch+yaml: fieldManager must be set for apply requests",
                    ));
                };
                if !body.is_object() {
                    return Err(ApiError::bad_request("apply patch must be an object"));
                }
                check_type(def, version, &body)?;
                let bn = meta_str(&body, "name");
                // kube-apiserver merges an apply configuration without a name
                // into the existing object (kube-lease-manager relies on it).
                if bn != name && !(bn.is_empty() && old.is_some()) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({bn}) does not match the name on the URL ({name})"
                    )));
                }
                if old.is_none() && sub.is_some() {
                    return Err(ApiError::not_found(&def.group, &def.plural, name));
                }
                if old.is_none() {
                    // kube-apiserver authorizes an apply that creates the
                    // object as `create` too (api-concepts, "Patch and apply").
                    authorize_create_by_apply(server, def, ns, name, &ctx.user)?;
                }
                let applied = body.clone();
                if def.is_custom() && ctx.validation == FieldValidation::Strict {
                    // Unknown fields are detected on a copy; the apply configuration
                    // itself stays undefaulted so defaults are not owned by the applier.
                    if let Some(schema) = def.version(version).and_then(|v| v.schema.clone()) {
                        let mut probe = applied.clone();
                        let unknown = schema.prune_and_default(&mut probe);
                        if !unknown.is_empty() {
                            return Err(ApiError::bad_request(format!(
                                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                                def.kind,
                                def.api_version(version),
                                def.kind,
                                unknown
                                    .iter()
                                    .map(|u| format!("unknown field \"{u}\""))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                    }
                }
                let force = q.flag("force");
                let merged = patch::server_side_apply(
                    old.as_deref(),
                    &applied,
                    manager,
                    &def.api_version(version),
                    sub.unwrap_or(""),
                    scope,
                    &|p: &[String]| list_kind(def, version, p),
                    force,
                    &now_rfc3339(),
                )
                .map_err(|mut e| {
                    e.name = Some(name.into());
                    e.group = Some(def.group.clone());
                    e.kind = Some(def.plural.clone());
                    e
                })?;
                ctx.manager = manager.to_string();
                (merged, true)
            }
            _ => {
                let Some(o) = &old else {
                    return Err(ApiError::not_found(&def.group, &def.plural, name));
                };
                let mut target = (**o).clone();
                match ct {
                    "application/merge-patch+json" => patch::merge_patch(&mut target, &body),
                    "application/json-patch+json" => patch::json_patch(&mut target, &body)?,
                    "application/strategic-merge-patch+json" => {
                        if def.is_custom() {
                            return Err(ApiError::unsupported_media("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".to_string()));
                        }
                        patch::strategic_merge(&mut target, &body, "");
                    }
                    other => {
                        return Err(ApiError::unsupported_media(format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"
                        )));
                    }
                }
                // A resourceVersion in the patch is a precondition.
                let prv = meta_str(&target, "resourceVersion");
                if !prv.is_empty() && prv != meta_str(o, "resourceVersion") {
                    return Err(ApiError::stale(&def.group, &def.plural, name));
                }
                if meta_str(&target, "name") != name {
                    return Err(ApiError::bad_request(
                        "metadata.name cannot be changed by a patch",
                    ));
                }
                (target, false)
            }
        };
        let created = old.is_none();
        if created && let Some(c) = validate_name(def, name) {
            return Err(ApiError::invalid(&def.kind, &def.group, name, vec![c]));
        }
        match finish_write(server, def, version, ns, old, new, sub, ssa, ctx).await? {
            Commit::Done(v) => {
                return Ok((
                    if created { 201 } else { 200 },
                    convert_version(def, version, &Arc::new(v)),
                ));
            }
            Commit::Retry => continue,
        }
    }
    Err(ApiError::stale(&def.group, &def.plural, name))
}

fn delete_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid},
    })
}

/// Deletes or marks for deletion under the lock. Returns the stored object
/// when finalizers keep it, `None` when it is gone.
fn delete_locked(
    server: &Server,
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    propagation: &str,
) -> Option<Arc<Value>> {
    let res = ResKey::new(&def.group, &def.plural);
    let cur = store.get(&res, ns, name)?;
    let uid = meta_str(&cur, "uid").to_string();
    let mut fins = finalizers(&cur);
    let extra = match propagation {
        "Foreground" => Some("foregroundDeletion"),
        "Orphan" => Some("orphan"),
        _ => None,
    };
    let has_dependents = store.dependents.get(&uid).is_some_and(|d| !d.is_empty());
    if let Some(f) = extra
        && has_dependents
        && !fins.iter().any(|x| x == f)
    {
        fins.push(f.to_string());
    }
    let ns_finalizers = def.group.is_empty() && def.plural == "namespaces";
    if fins.is_empty() && !ns_finalizers {
        store.remove(&res, ns, name);
        after_removal(server, store, def, &uid, name);
        return None;
    }
    if cur.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&cur) == fins {
        return Some(cur);
    }
    let mut o = (*cur).clone();
    let m = meta_mut(&mut o);
    m.entry("deletionTimestamp").or_insert(json!(now_rfc3339()));
    m.entry("deletionGracePeriodSeconds").or_insert(json!(0));
    if fins.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(fins));
    }
    if ns_finalizers {
        o["status"] = json!({"phase": "Terminating"});
    }
    let stored = store.put(&res, o);
    if extra.is_some() {
        server
            .gc_queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(uid);
        server.gc_notify.notify_one();
    }
    Some(stored)
}

async fn delete(
    server: &Arc<Server>,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    opts: &Value,
    q: &Query,
    ctx: &mut WriteCtx,
) -> ApiResult<(u16, Value)> {
    let res = ResKey::new(&def.group, &def.plural);
    let cur = server
        .lock()
        .get(&res, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    if let Some(pre) = opts.get("preconditions") {
        if let Some(uid) = pre.get("uid").and_then(Value::as_str)
            && uid != meta_str(&cur, "uid")
        {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&cur, "uid")
                ),
            ));
        }
        if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
            && rv != meta_str(&cur, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&cur, "resourceVersion")
                ),
            ));
        }
    }
    let dry = ctx.dry_run
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    admission::validate(
        server,
        def,
        def.storage_version(),
        None,
        AdmissionOp::Delete,
        &Value::Null,
        Some(&cur),
        ctx,
    )
    .await?;
    if dry {
        return Ok((200, (*cur).clone()));
    }
    let propagation = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(q.get("propagationPolicy"))
        .unwrap_or("Background")
        .to_string();
    if propagation == "Orphan" {
        orphan_dependents(server, meta_str(&cur, "uid"));
    }
    let mut store = server.lock();
    match delete_locked(server, &mut store, def, ns, name, &propagation) {
        Some(obj) => Ok((200, (*obj).clone())),
        None => Ok((200, delete_status(def, name, meta_str(&cur, "uid")))),
    }
}

fn orphan_dependents(server: &Server, owner_uid: &str) {
    let mut store = server.lock();
    let deps: Vec<String> = store
        .dependents
        .get(owner_uid)
        .map(|d| d.iter().cloned().collect())
        .unwrap_or_default();
    for d in deps {
        if let Some((res, obj)) = store.get_by_uid(&d) {
            let mut o = (*obj).clone();
            if let Some(refs) = o
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
            }
            store.put(&res, o);
        }
    }
}

async fn delete_collection(
    server: &Arc<Server>,
    def: &ResourceDef,
    t: &Target,
    opts: &Value,
    q: &Query,
    ctx: &mut WriteCtx,
) -> ApiResult<(u16, Value)> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), def.is_custom())?;
    let objs: Vec<Arc<Value>> = server
        .lock()
        .list(&ResKey::new(&def.group, &def.plural), t.ns.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    let mut items = Vec::new();
    for o in objs {
        let (_, v) = delete(
            server,
            def,
            meta_str(&o, "namespace"),
            meta_str(&o, "name"),
            opts,
            q,
            ctx,
        )
        .await?;
        if v.get("kind").and_then(Value::as_str) != Some("Status") {
            items.push(v);
        } else {
            items.push((*o).clone());
        }
    }
    Ok((
        200,
        json!({"kind": def.list_kind, "apiVersion": def.api_version(&t.version), "metadata": {}, "items": items}),
    ))
}

fn access_review(
    server: &Server,
    def: &ResourceDef,
    user: &UserInfo,
    mut body: Value,
) -> ApiResult<Value> {
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let (subject, attrs_src) = if def.plural == "selfsubjectaccessreviews" {
        (user.clone(), spec.clone())
    } else {
        (
            UserInfo {
                username: spec
                    .get("user")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                uid: spec
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                groups: spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            spec.clone(),
        )
    };
    let attrs = if let Some(r) = attrs_src.get("resourceAttributes") {
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Attributes {
            verb: s("verb"),
            group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            name: s("name"),
            namespace: s("namespace"),
            path: None,
        }
    } else if let Some(n) = attrs_src.get("nonResourceAttributes") {
        let s = |k: &str| {
            n.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Attributes {
            verb: s("verb"),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            namespace: String::new(),
            path: Some(s("path")),
        }
    } else {
        return Err(ApiError::invalid(
            &def.kind,
            &def.group,
            "",
            vec![Cause::new(
                "spec.resourceAttributes",
                "FieldValueRequired",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    let allowed = server.authorization == Authorization::AlwaysAllow
        || auth::authorize(&server.lock(), &subject, &attrs);
    body["status"] = json!({"allowed": allowed});
    body["metadata"] = json!({"creationTimestamp": null});
    Ok(body)
}

// ---------------------------------------------------------------- controllers

/// Creates the namespaces and RBAC objects every cluster has.
pub fn bootstrap(server: &Server) {
    let mut store = server.lock();
    let now = now_rfc3339();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now, "labels": {"kubernetes.io/metadata.name": ns}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        store.put(&ResKey::new("", "namespaces"), obj);
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now}});
        store.put(&ResKey::new("", "serviceaccounts"), sa);
    }
    let rbac = "rbac.authorization.k8s.io";
    let roles = [
        (
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        (
            "view",
            json!([{"apiGroups": ["", "batch", "apps", "coordination.k8s.io", "events.k8s.io", "policy"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]),
        ),
        (
            "edit",
            json!([{"apiGroups": ["", "batch", "apps", "coordination.k8s.io", "events.k8s.io", "policy"], "resources": ["*"], "verbs": ["*"]}]),
        ),
        (
            "admin",
            json!([{"apiGroups": ["", "batch", "apps", "coordination.k8s.io", "events.k8s.io", "policy", "rbac.authorization.k8s.io"], "resources": ["*"], "verbs": ["*"]}]),
        ),
    ];
    for (name, rules) in roles {
        let mut obj = json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRole", "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules});
        if name != "cluster-admin" {
            // admin ⊇ edit ⊇ view, and roles labelled aggregate-to-<name> join in.
            let mut selectors = vec![
                json!({"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}),
            ];
            if name == "admin" {
                selectors.push(
                    json!({"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}}),
                );
            }
            if name != "view" {
                selectors.push(
                    json!({"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}),
                );
            }
            obj["aggregationRule"] = json!({"clusterRoleSelectors": selectors});
        }
        store.put(&ResKey::new(rbac, "clusterroles"), obj);
    }
    let crb = json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin", "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now}, "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:masters"}]});
    store.put(&ResKey::new(rbac, "clusterrolebindings"), crb);
}

/// Background garbage collection through ownerReferences.
pub async fn gc_loop(server: Arc<Server>) {
    loop {
        server.gc_notify.notified().await;
        // Real GC is asynchronous; a short delay keeps that visible to tests.
        tokio::time::sleep(Duration::from_millis(20)).await;
        loop {
            let batch: Vec<String> = std::mem::take(
                &mut *server
                    .gc_queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if batch.is_empty() {
                break;
            }
            gc_pass(&server, batch);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn gc_pass(server: &Arc<Server>, batch: Vec<String>) {
    let mut store = server.lock();
    let server: &Server = server;
    for owner in batch {
        let owner_exists = store.get_by_uid(&owner);
        let deps: Vec<String> = store
            .dependents
            .get(&owner)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        match owner_exists {
            Some((ores, oobj)) => {
                // Foreground/orphan deletion in progress: finish it when dependents are gone.
                let fins = finalizers(&oobj);
                if oobj.pointer("/metadata/deletionTimestamp").is_some() {
                    if fins.iter().any(|f| f == "foregroundDeletion") {
                        for d in &deps {
                            if let Some((dres, dobj)) = store.get_by_uid(d)
                                && let Some(ddef) = store.registry.get(&dres).cloned()
                            {
                                delete_locked(
                                    server,
                                    &mut store,
                                    &ddef,
                                    meta_str(&dobj, "namespace"),
                                    meta_str(&dobj, "name"),
                                    "Background",
                                );
                            }
                        }
                    }
                    let remaining = store.dependents.get(&owner).is_some_and(|d| !d.is_empty());
                    if !remaining || fins.iter().any(|f| f == "orphan") {
                        let mut o = (*oobj).clone();
                        let left: Vec<String> = fins
                            .into_iter()
                            .filter(|f| f != "foregroundDeletion" && f != "orphan")
                            .collect();
                        if left.is_empty() {
                            let (ns, name) = (
                                meta_str(&o, "namespace").to_string(),
                                meta_str(&o, "name").to_string(),
                            );
                            store.remove(&ores, &ns, &name);
                            if let Some(odef) = store.registry.get(&ores).cloned() {
                                after_removal(server, &mut store, &odef, &owner, &name);
                            }
                        } else {
                            meta_mut(&mut o).insert("finalizers".into(), json!(left));
                            store.put(&ores, o);
                        }
                    } else {
                        server
                            .gc_queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(owner.clone());
                    }
                }
            }
            None => {
                for d in deps {
                    let Some((dres, dobj)) = store.get_by_uid(&d) else {
                        continue;
                    };
                    let any_owner_left = dobj
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                                .any(|u| store.uid_exists(u))
                        });
                    if any_owner_left {
                        continue;
                    }
                    if let Some(ddef) = store.registry.get(&dres).cloned() {
                        delete_locked(
                            server,
                            &mut store,
                            &ddef,
                            meta_str(&dobj, "namespace"),
                            meta_str(&dobj, "name"),
                            "Background",
                        );
                    }
                }
            }
        }
    }
}

/// The namespace controller: empties terminating namespaces, then removes them.
pub async fn namespace_loop(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let mut store = server.lock();
        let ns_key = ResKey::new("", "namespaces");
        let terminating: Vec<String> = store
            .list(&ns_key, None)
            .iter()
            .filter(|n| n.pointer("/metadata/deletionTimestamp").is_some())
            .map(|n| meta_str(n, "name").to_string())
            .collect();
        for ns in terminating {
            let defs: Vec<ResourceDef> = store
                .registry
                .resources
                .values()
                .filter(|d| d.namespaced)
                .cloned()
                .collect();
            let mut remaining = 0;
            for def in defs {
                let objs = store.list(&ResKey::new(&def.group, &def.plural), Some(&ns));
                for o in objs {
                    if delete_locked(
                        &server,
                        &mut store,
                        &def,
                        &ns,
                        meta_str(&o, "name"),
                        "Background",
                    )
                    .is_some()
                    {
                        remaining += 1;
                    }
                }
            }
            if remaining == 0
                && let Some(n) = store.get(&ns_key, "", &ns)
            {
                let fins = finalizers(&n);
                if fins.is_empty() {
                    store.remove(&ns_key, "", &ns);
                }
            }
        }
    }
}
