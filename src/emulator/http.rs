//! Routing, the auth filter, body parsing and collections: the norman side
//! of the emulator. Every request is handled synchronously under one lock;
//! a mutation is written to disk before it is answered.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::rngs::StdRng;
use serde_json::{json, Map, Value};

use super::model::{ApiError, Model, RegisterParams, PUBLIC_SETTINGS, SETTINGS};
use super::render::{self, Ctx};
use super::store;
use super::v1::{self, AgentHeaders, Distro, V1};

pub struct Inner {
    pub model: Model,
    pub rng: StdRng,
}

/// Shared server state.
pub struct App {
    pub inner: Mutex<Inner>,
    pub data_dir: PathBuf,
    /// `/cacerts`: the CA PEM with one trailing newline.
    pub cacerts_file: String,
    /// Used for links when a request has no Host header.
    pub default_host: String,
}

pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(app)
}

/// The header that carries the connection's peer address to the routes
/// (set here, never taken from the client).
pub const PEER_HEADER: &str = "x-rmm-emulator-peer";

async fn handle(
    State(app): State<Arc<App>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    headers.remove(PEER_HEADER);
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert(PEER_HEADER, v);
    }
    if uri.path() == AGENT_BINARY_PATH {
        return agent_binary().await;
    }
    let resp = dispatch(&app, &method, &uri, &headers, &body);
    log_line!(
        "{} [INFO] {} {} {}",
        super::log_time(super::now_ms()),
        method,
        uri.path(),
        resp.status().as_u16()
    );
    resp
}

/// Where the served install script downloads the agent binary from (the
/// real one: `rancher-system-agent-<arch>` under
/// `CATTLE_AGENT_BINARY_BASE_URL`, `<server>/assets`; rancher-current.md
/// §2.7).
pub const AGENT_BINARY_PATH: &str = "/assets/rancher-system-agent-amd64";

/// The agent binary: this executable, whose `emulator system-agent` mode
/// does what the real installer and agent do on the wire
/// (`drivers/local/agent.rs`).
async fn agent_binary() -> Response {
    let bytes = match std::env::current_exe() {
        Ok(exe) => tokio::fs::read(exe).await,
        Err(e) => Err(e),
    };
    match bytes {
        Ok(b) => {
            let mut r = (StatusCode::OK, b).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            r
        }
        Err(_) => empty(StatusCode::NOT_FOUND),
    }
}

// ---- schemas ---------------------------------------------------------------

struct Schema {
    id: &'static str,
    plural: &'static str,
    creatable: bool,
    /// Fields `?field=value` may filter on; any other filter is ignored.
    filters: &'static [&'static str],
}

const SCHEMAS: &[Schema] = &[
    Schema {
        id: "cluster",
        plural: "clusters",
        creatable: true,
        filters: &[
            "id",
            "name",
            "state",
            "transitioning",
            "uuid",
            "creatorId",
            "driver",
            "internal",
        ],
    },
    Schema {
        id: "clusterRegistrationToken",
        plural: "clusterRegistrationTokens",
        creatable: true,
        filters: &["id", "name", "clusterId", "state", "uuid"],
    },
    Schema {
        id: "node",
        plural: "nodes",
        creatable: false,
        filters: &[
            "id",
            "name",
            "clusterId",
            "state",
            "transitioning",
            "uuid",
            "requestedHostname",
            "hostname",
            "nodeName",
            "ipAddress",
            "externalIpAddress",
            "etcd",
            "controlPlane",
            "worker",
            "imported",
        ],
    },
    Schema {
        id: "setting",
        plural: "settings",
        creatable: false,
        filters: &["id", "name", "value", "default", "source", "customized"],
    },
    Schema {
        id: "token",
        plural: "tokens",
        creatable: true,
        filters: &[
            "id",
            "name",
            "description",
            "userId",
            "isDerived",
            "expired",
            "current",
            "clusterId",
            "authProvider",
        ],
    },
    Schema {
        id: "user",
        plural: "users",
        creatable: false,
        filters: &[
            "id",
            "name",
            "username",
            "me",
            "enabled",
            "mustChangePassword",
            "state",
        ],
    },
    Schema {
        id: "schema",
        plural: "schemas",
        creatable: false,
        filters: &["id"],
    },
];

/// norman's lookup: singular or plural, any letter case (§1.1).
fn schema(segment: &str) -> Option<&'static Schema> {
    SCHEMAS
        .iter()
        .find(|s| segment.eq_ignore_ascii_case(s.id) || segment.eq_ignore_ascii_case(s.plural))
}

fn schema_by_id(id: &str) -> &'static Schema {
    SCHEMAS.iter().find(|s| s.id == id).expect("known schema")
}

// ---- small parsers -----------------------------------------------------------

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b&c=d` (query strings and form bodies).
fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The raw JSON body of the login, token and changepassword handlers. A bad
/// body is a 422 `code`; its message is `prefix` + the parse error, or empty
/// when there is no prefix (the login handler).
fn raw_json(
    body: &[u8],
    code: &'static str,
    prefix: Option<&str>,
) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let error = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => return Ok(m),
        Ok(_) => "json: cannot unmarshal into an object".to_string(),
        Err(e) => e.to_string(),
    };
    let message = prefix.map(|p| format!("{p}{error}")).unwrap_or_default();
    Err(ApiError::new(422, code, message))
}

/// norman's `parse.Body`: a form-encoded body is read as a form (so JSON sent
/// as curl's default `--data` loses all its fields), anything else as JSON.
fn norman_body(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let ct = header_str(headers, "content-type").to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        let form = parse_form(&String::from_utf8_lossy(body));
        return Ok(form
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect());
    }
    raw_json(body, "InvalidBodyContent", Some("Failed to parse body: "))
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

// ---- responses -----------------------------------------------------------------

fn json_resp(status: u16, v: &Value, base: &str) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        v.to_string(),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/v3/schemas")) {
        h.insert("x-api-schemas", v);
    }
    h.insert(
        header::EXPIRES,
        HeaderValue::from_static("Wed 24 Feb 1982 18:42:00 GMT"),
    );
    r
}

fn err_resp(e: &ApiError, base: &str) -> Response {
    json_resp(e.status, &render::error(e), base)
}

fn text_resp(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllow",
        format!("Method {method} not supported"),
    )
}

fn invalid_action(action: &str) -> ApiError {
    ApiError::new(422, "InvalidAction", format!("Invalid action: {action}"))
}

// ---- the request -----------------------------------------------------------

struct Req<'a> {
    app: &'a App,
    method: Method,
    /// Decoded path segments after `/v3` or `/v3-public`.
    segs: Vec<String>,
    query: Vec<(String, String)>,
    headers: &'a HeaderMap,
    body: &'a [u8],
    base: String,
    self_url: String,
    now: u64,
}

impl Req<'_> {
    /// What rendering a resource for this request needs.
    fn ctx<'m>(&self, model: &'m Model) -> Ctx<'m> {
        Ctx { model, base: self.base.clone(), now: self.now }
    }
}

impl Req<'_> {
    fn action(&self) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == "action")
            .map(|(_, v)| v.as_str())
    }
}

/// Who is calling: the token that authenticated the request.
struct Caller {
    token: String,
    user_id: String,
    is_derived: bool,
}

/// The authentication filter: who the request's credentials name, if any.
fn caller_of(model: &crate::emulator::model::Model, req: &Req) -> Option<Caller> {
    credentials(req.headers).and_then(|c| {
        model.authenticate(req.now, &c).map(|t| Caller {
            token: t.name.clone(),
            user_id: t.user_id.clone(),
            is_derived: t.is_derived,
        })
    })
}

/// Bearer, Basic (name:secret) or the `R_SESS` cookie (§1.2).
fn credentials(headers: &HeaderMap) -> Option<String> {
    let auth = header_str(headers, "authorization").trim();
    if let Some((scheme, rest)) = auth.split_once(' ') {
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim().to_string());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            return String::from_utf8(raw).ok();
        }
    }
    cookie(headers, "R_SESS")
}

/// norman's CSRF check: only for browser-like requests (§1.2).
fn check_csrf(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let ua = header_str(headers, "user-agent").to_ascii_lowercase();
    let browser = ua.contains("mozilla") && header_str(headers, "accept").contains("*/*");
    if !browser || matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    match cookie(headers, "CSRF") {
        Some(c) if !c.is_empty() && c == header_str(headers, "x-api-csrf") => Ok(()),
        _ => Err(ApiError::new(422, "InvalidCSRFToken", "Invalid CSRF token")),
    }
}

fn dispatch(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let path = uri.path();
    if path == "/ping" || path == "/healthz" {
        return text_resp("pong".into());
    }
    if path == "/cacerts" {
        return text_resp(app.cacerts_file.clone());
    }
    if path == "/rancherversion" {
        // §2.1: an unauthenticated probe; the body is pkg/version's
        // (not in the sheet): Version, GitCommit, RancherPrime.
        let inner = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        let v = json!({"Version": inner.model.line.version(), "GitCommit": "rmm-emulator", "RancherPrime": "false"});
        return json_resp(200, &v, "");
    }
    if path == "/system-agent-install.sh" {
        let inner = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        return text_resp(v1::install_script(&inner.model));
    }
    let host = match header_str(headers, "host") {
        "" => app.default_host.as_str(),
        h => h,
    };
    let base = format!("https://{host}");
    let mut segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let root = if segs.is_empty() {
        String::new()
    } else {
        segs.remove(0)
    };
    let mut req = Req {
        app,
        method: method.clone(),
        segs,
        query: parse_form(uri.query().unwrap_or("")),
        headers,
        body,
        self_url: format!(
            "{base}{}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or(path)
        ),
        base,
        now: super::now_ms(),
    };
    // `?action=remove` is a DELETE
    if req.method == Method::POST && req.action() == Some("remove") && req.segs.len() == 2 {
        req.method = Method::DELETE;
        req.query.retain(|(k, _)| k != "action");
    }
    // Deletions that finished by now (the controllers' clock): gone for
    // every route below.
    {
        let mut inner = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.model.deletion_due(req.now) {
            let now = req.now;
            if let Err(e) = mutate(app, &mut inner, |m, _| Ok(m.purge_deleted(now))) {
                return err_resp(&e, &req.base);
            }
        }
    }
    let has_rke1 = app.inner.lock().unwrap_or_else(|p| p.into_inner()).model.line.has_rke1();
    let result = match root.as_str() {
        // 2.12 removed the RKE1 node agent path (§1.1 #50518)
        "v3" if req.segs.len() == 2 && req.segs[0] == "connect" && req.segs[1] == "register" && !has_rke1 => {
            return not_found_page()
        }
        "v3" if req.segs.len() == 2 && req.segs[0] == "connect" && req.segs[1] == "register" => {
            return register(&req)
        }
        "v3" if req.segs.len() == 2 && req.segs[0] == "connect" && req.segs[1] == "agent" => {
            return connect_agent(&req)
        }
        "v1" => v1_api(&req),
        "v1-public" => return v1_public(&req),
        "v1-rke2-release" | "v1-k3s-release" => return channel_server(&req, &root),
        "k8s" => return plan_secret(&req),
        "v3" => v3(&req),
        "v3-public" => check_csrf(method, headers).and_then(|()| v3_public(&req)),
        _ => Err(ApiError::not_found("not found")),
    };
    result.unwrap_or_else(|e| err_resp(&e, &req.base))
}

// ---- mutations -----------------------------------------------------------------

/// Run `f` on the model; if it succeeds, persist the new state before
/// answering. On any failure the in-memory state is left as it was.
fn mutate<T>(
    app: &App,
    inner: &mut Inner,
    f: impl FnOnce(&mut Model, &mut StdRng) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let before = inner.model.state.clone();
    let result = f(&mut inner.model, &mut inner.rng).and_then(|v| {
        store::save(&app.data_dir, &inner.model.state)
            .map(|()| v)
            .map_err(|e| ApiError::server(format!("saving state: {e:#}")))
    });
    if result.is_err() {
        inner.model.state = before;
    }
    result
}

// ---- /v3/connect/register ------------------------------------------------------

/// What the agent's tunnel does: authenticate with the registration token and
/// create or update its node.
fn register(req: &Req) -> Response {
    let unauthorized = || json_resp(401, &render::filter_401(), &req.base);
    if !matches!(req.method, Method::GET | Method::POST) {
        return err_resp(&method_not_allowed(&req.method), &req.base);
    }
    let token = header_str(req.headers, "x-api-tunnel-token")
        .trim()
        .to_string();
    let raw = header_str(req.headers, "x-api-tunnel-params").trim();
    let decoded = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ]
    .iter()
    .find_map(|e| e.decode(raw).ok());
    let mut inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    if !inner
        .model
        .state
        .registration_tokens
        .iter()
        .any(|t| !token.is_empty() && t.token == token)
    {
        return unauthorized();
    }
    let params: RegisterParams = match decoded.and_then(|d| serde_json::from_slice(&d).ok()) {
        Some(p) => p,
        None => {
            return json_resp(
                400,
                &json!({"type": "error", "status": "400", "message": "invalid X-API-Tunnel-Params"}),
                &req.base,
            )
        }
    };
    let now = req.now;
    match mutate(req.app, &mut inner, |m, rng| {
        m.register_node(rng, now, &token, &params)
    }) {
        Ok(id) => {
            let m = &inner.model;
            let node = m
                .state
                .nodes
                .iter()
                .find(|n| n.id() == id)
                .expect("registered node");
            json_resp(
                200,
                &Ctx {
                    model: m,
                    base: req.base.clone(),
                    now,
                }
                .node(node),
                &req.base,
            )
        }
        Err(e) if e.status == 401 => unauthorized(),
        Err(e) => json_resp(
            e.status,
            &json!({"type": "error", "status": e.status.to_string(), "message": e.message}),
            &req.base,
        ),
    }
}

// ---- /v3-public ------------------------------------------------------------------

fn v3_public(req: &Req) -> Result<Response, ApiError> {
    let ok_type = req.segs.first().is_some_and(|s| {
        s.eq_ignore_ascii_case("localprovider") || s.eq_ignore_ascii_case("localproviders")
    });
    if !ok_type || req.segs.len() > 2 {
        return Err(ApiError::not_found("not found"));
    }
    let provider = json!({
        "id": "local", "type": "localProvider", "baseType": "authProvider", "name": "local",
        "links": {"self": format!("{}/v3-public/localProviders/local", req.base)},
        "actions": {"login": format!("{}/v3-public/localProviders/local?action=login", req.base)},
    });
    match (
        req.segs.get(1).map(String::as_str),
        &req.method,
        req.action(),
    ) {
        (None, &Method::GET, None) => {
            let data = vec![provider];
            Ok(json_resp(
                200,
                &collection(req, "localProvider", &[], data, None),
                &req.base,
            ))
        }
        (Some("local"), &Method::GET, None) => Ok(json_resp(200, &provider, &req.base)),
        (Some("local"), &Method::POST, Some("login")) => login(req),
        (Some("local"), &Method::POST, Some(a)) => Err(invalid_action(a)),
        (Some("local") | None, m, _) => Err(method_not_allowed(m)),
        (Some(id), _, _) => Err(ApiError::not_found(format!(
            "localProvider \"{id}\" not found"
        ))),
    }
}

fn login(req: &Req) -> Result<Response, ApiError> {
    login_window(req)?;
    let body = raw_json(req.body, "InvalidBodyContent", None)?;
    let (user, pass, desc) = (
        str_field(&body, "username"),
        str_field(&body, "password"),
        str_field(&body, "description"),
    );
    let mut inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let now = req.now;
    let token = mutate(req.app, &mut inner, |m, rng| {
        m.login(rng, now, user, pass, desc)
    })?;
    if inner.model.line.has_v1_public_login() {
        return Ok(json_resp(201, &short_login(&token), &req.base));
    }
    let ctx = req.ctx(&inner.model);
    Ok(json_resp(201, &ctx.token(&token, true, false), &req.base))
}

/// 2.13+: the login response is cut down (rancher-api.md §2.2).
fn short_login(t: &super::model::Token) -> Value {
    json!({"token": t.bearer(), "expiresAt": t.expires_ms().map(render::rfc3339).unwrap_or_default(),
           "id": t.name, "baseType": "token", "type": "token"})
}

/// RMM_LOCAL_LOGIN_WINDOW_MS: `/ping` answers but the local auth provider
/// is not up yet. The sheet does not give the real answer; 503 says
/// "try again" without claiming the password is wrong.
fn login_window(req: &Req) -> Result<(), ApiError> {
    let inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    if req.now < inner.model.started_ms + inner.model.knobs.login_window_ms {
        return Err(ApiError::new(503, "ServiceUnavailable", "the local auth provider is not ready yet"));
    }
    Ok(())
}

/// A route that does not exist: the Go mux's plain 404.
fn not_found_page() -> Response {
    let mut r = (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

// ---- /v1-public, channel server, /v3/connect/agent, plan secrets ---------------------

/// `POST /v1-public/login` from 2.13 (§2.2); 404 before.
fn v1_public(req: &Req) -> Response {
    let line = req.app.inner.lock().unwrap_or_else(|p| p.into_inner()).model.line;
    if !line.has_v1_public_login() || req.segs != ["login"] {
        return not_found_page();
    }
    if req.method != Method::POST {
        return err_resp(&method_not_allowed(&req.method), &req.base);
    }
    let result = raw_json(req.body, "InvalidBodyContent", None).and_then(|body| {
        if str_field(&body, "type") != "localProvider" {
            return Err(ApiError::new(422, "InvalidBodyContent", "unsupported auth provider type"));
        }
        login(req)
    });
    result.unwrap_or_else(|e| err_resp(&e, &req.base))
}

/// `GET /v1-rke2-release/releases|channels`, unauthenticated (§2.4).
fn channel_server(req: &Req, root: &str) -> Response {
    let line = req.app.inner.lock().unwrap_or_else(|p| p.into_inner()).model.line;
    let distro = if root == "v1-k3s-release" { Distro::K3s } else { Distro::Rke2 };
    match req.segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["releases"] => json_resp(200, &v1::releases(line, distro, &req.base), &req.base),
        ["channels"] => json_resp(200, &v1::channels(line, distro, &req.base), &req.base),
        _ => not_found_page(),
    }
}

/// `GET /v3/connect/agent` as the system-agent installer calls it (§2.7):
/// the bearer is the registration token, the node in `X-Cattle-*`.
fn connect_agent(req: &Req) -> Response {
    let bool_h = |n: &str| header_str(req.headers, n).trim().eq_ignore_ascii_case("true");
    let h = AgentHeaders {
        id: header_str(req.headers, "x-cattle-id").to_string(),
        etcd: bool_h("x-cattle-role-etcd"),
        control_plane: bool_h("x-cattle-role-control-plane"),
        worker: bool_h("x-cattle-role-worker"),
        node_name: header_str(req.headers, "x-cattle-node-name").trim().to_string(),
        address: header_str(req.headers, "x-cattle-address").trim().to_string(),
        internal_address: header_str(req.headers, "x-cattle-internal-address").trim().to_string(),
        peer: header_str(req.headers, PEER_HEADER).to_string(),
        labels: header_str(req.headers, "x-cattle-labels")
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    };
    let token = header_str(req.headers, "authorization")
        .trim()
        .strip_prefix("Bearer ")
        .unwrap_or("")
        .trim()
        .to_string();
    let mut inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let now = req.now;
    match mutate(req.app, &mut inner, |m, rng| m.connect_agent(rng, now, &token, &h)) {
        Ok(i) => {
            let m = &inner.model;
            json_resp(200, &v1::connection_info(m, &req.base, &m.state.machines[i]), &req.base)
        }
        Err(e) if e.status == 401 => json_resp(401, &render::filter_401(), &req.base),
        Err(e) => err_resp(&e, &req.base),
    }
}

/// The system-agent reading its plan secret through the local cluster:
/// `GET /k8s/clusters/local/api/v1/namespaces/<ns>/secrets/<name>`.
fn plan_secret(req: &Req) -> Response {
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let ["clusters", "local", "api", "v1", "namespaces", ns, "secrets", name] = segs.as_slice() else {
        return not_found_page();
    };
    let bearer = header_str(req.headers, "authorization").trim().strip_prefix("Bearer ").unwrap_or("").trim().to_string();
    let mut inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let now = req.now;
    // The agent's service, while it runs (`?watch=true`, every second):
    // seen now; its first also checks in.
    if req.query.iter().any(|(k, v)| k == "watch" && v == "true") && inner.model.agent_seen(now, &bearer, name) {
        let first = inner.model.state.machines.iter().any(|m| m.plan_token == bearer && m.checked_in_ms.is_none());
        if first {
            if let Err(e) = mutate(req.app, &mut inner, |m, _| Ok(m.check_in(now, &bearer, name))) {
                return err_resp(&e, &req.base);
            }
        }
        return json_resp(200, &json!({"type": "BOOKMARK", "object": {"kind": "Secret", "metadata": {"name": name, "namespace": ns}}}), &req.base);
    }
    match mutate(req.app, &mut inner, |m, _| Ok(m.check_in(now, &bearer, name))) {
        Ok(true) => json_resp(
            200,
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "rke.cattle.io/machine-plan",
                    "metadata": {"name": name, "namespace": ns}, "data": {}}),
            &req.base,
        ),
        Ok(false) => json_resp(401, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "message": "Unauthorized", "reason": "Unauthorized", "code": 401}), &req.base),
        Err(e) => err_resp(&e, &req.base),
    }
}

// ---- /v1 (Steve) ------------------------------------------------------------------

/// Steve's type lookup: schema id or plural, any case (§2.0).
fn steve_type(seg: &str) -> Option<&'static str> {
    const TYPES: &[&str] = &[
        "provisioning.cattle.io.cluster",
        "management.cattle.io.cluster",
        "management.cattle.io.clusterregistrationtoken",
        "cluster.x-k8s.io.machine",
        "management.cattle.io.user",
    ];
    let s = seg.to_ascii_lowercase();
    TYPES.iter().copied().find(|t| s == *t || s == format!("{t}s"))
}

fn steve_collection(req: &Req, ty: &str, mut data: Vec<Value>, creatable: bool) -> Value {
    // `?labelSelector=k=v[,k=v]` on metadata.labels (equality only; the
    // sheet leaves Steve's support open, §8, so a client may also filter
    // itself)
    if let Some((_, sel)) = req.query.iter().find(|(k, _)| k == "labelSelector") {
        let wanted: Vec<(&str, &str)> = sel.split(',').filter_map(|p| p.split_once('=')).collect();
        data.retain(|o| wanted.iter().all(|(k, v)| o["metadata"]["labels"][*k].as_str() == Some(*v)));
    }
    let create = if creatable { json!({ty: format!("{}/v1/{ty}s", req.base)}) } else { json!({}) };
    json!({"type": "collection", "links": {"self": req.self_url}, "createTypes": create, "actions": {},
           "resourceType": ty, "revision": req.now.to_string(), "count": data.len(), "data": data})
}

fn v1_api(req: &Req) -> Result<Response, ApiError> {
    let mut inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let caller = caller_of(&inner.model, req);
    let Some(caller) = caller else {
        return Ok(json_resp(401, &render::filter_401(), &req.base));
    };
    let _ = (&caller.token, caller.is_derived);
    // The webhook window: Steve's API is not available yet (the reads the
    // dashboard's readiness script waits for, §2.1) and creates are
    // refused with the webhook's error.
    if req.now < inner.model.started_ms + inner.model.knobs.webhook_window_ms {
        if req.method == Method::POST {
            return Err(v1::webhook_not_ready());
        }
        return Err(ApiError::new(503, "ServiceUnavailable", "the server is currently unable to handle the request"));
    }
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let Some(ty) = segs.first().and_then(|s| steve_type(s)) else {
        return Err(ApiError::not_found(format!("schema {} not found", segs.first().unwrap_or(&""))));
    };
    let rest = &segs[1..];
    let now = req.now;
    fn view<'a>(inner: &'a Inner, req: &Req, now: u64) -> V1<'a> {
        V1 { model: &inner.model, base: req.base.clone(), now }
    }
    let not_found = |what: &str, name: &str| ApiError::not_found(format!("{what} \"{name}\" not found"));
    match ty {
        "provisioning.cattle.io.cluster" => match (&req.method, rest) {
            (&Method::POST, [] | [_]) => {
                let body: Value = serde_json::from_slice(req.body)
                    .map_err(|e| ApiError::new(422, "InvalidBodyContent", format!("Failed to parse body: {e}")))?;
                let ns = rest.first().copied();
                let id = mutate(req.app, &mut inner, |m, rng| m.create_prov_cluster(rng, now, &caller.user_id, &body, ns))?;
                let (ns, name) = id.split_once('/').expect("ns/name");
                let pc = inner.model.prov(ns, name).expect("created");
                Ok(json_resp(201, &view(&inner, req, now).prov_cluster(pc), &req.base))
            }
            (&Method::GET, [] | [_]) => {
                let v = view(&inner, req, now);
                let data = inner.model.state.prov_clusters.iter()
                    .filter(|c| rest.first().is_none_or(|ns| c.namespace == *ns))
                    .map(|c| v.prov_cluster(c)).collect();
                Ok(json_resp(200, &steve_collection(req, ty, data, true), &req.base))
            }
            (&Method::GET, [ns, name]) => {
                let pc = inner.model.prov(ns, name).ok_or_else(|| not_found("clusters.provisioning.cattle.io", name))?;
                Ok(json_resp(200, &view(&inner, req, now).prov_cluster(pc), &req.base))
            }
            // Kubernetes deletes with finalizers: the object gets its
            // deletionTimestamp and stays (state `removing`) while Rancher's
            // remove handler deletes the management cluster; only then does
            // it go (`purge_deleted`). A second DELETE changes nothing.
            (&Method::DELETE, [ns, name]) => {
                let (ns, name) = (ns.to_string(), name.to_string());
                inner.model.prov(&ns, &name).ok_or_else(|| not_found("clusters.provisioning.cattle.io", &name))?;
                mutate(req.app, &mut inner, |m, _| {
                    if let Some(c) = m.state.prov_clusters.iter_mut().find(|c| c.namespace == ns && c.name == name) {
                        c.deleting_ms.get_or_insert(now);
                    }
                    Ok(())
                })?;
                let pc = inner.model.prov(&ns, &name).expect("still there");
                Ok(json_resp(200, &view(&inner, req, now).prov_cluster(pc), &req.base))
            }
            (m, _) => Err(method_not_allowed(m)),
        },
        "management.cattle.io.cluster" => {
            read_only(req)?;
            let v = view(&inner, req, now);
            let named = inner.model.state.prov_clusters.iter().filter(|c| inner.model.view(c, now).named && !inner.model.mgmt_gone(c, now));
            match rest {
                [] => {
                    let data = named.map(|c| v.mgmt_cluster(c)).collect();
                    Ok(json_resp(200, &steve_collection(req, ty, data, false), &req.base))
                }
                [id] => named.clone().find(|c| c.mgmt_id == *id)
                    .map(|c| json_resp(200, &v.mgmt_cluster(c), &req.base))
                    .ok_or_else(|| not_found("clusters.management.cattle.io", id)),
                _ => Err(ApiError::not_found("not found")),
            }
        }
        "management.cattle.io.clusterregistrationtoken" => {
            read_only(req)?;
            let v = view(&inner, req, now);
            let visible: Vec<&super::model::RegistrationToken> =
                inner.model.state.registration_tokens.iter().filter(|t| t.created_ms <= now).collect();
            match rest {
                [] | [_] => {
                    let data = visible.iter().filter(|t| rest.first().is_none_or(|ns| t.cluster_id == *ns))
                        .map(|t| v.crt(t)).collect();
                    Ok(json_resp(200, &steve_collection(req, ty, data, false), &req.base))
                }
                [ns, name] => visible.iter().find(|t| t.cluster_id == *ns && t.name == *name)
                    .map(|t| json_resp(200, &v.crt(t), &req.base))
                    .ok_or_else(|| not_found("clusterregistrationtokens.management.cattle.io", name)),
                _ => Err(ApiError::not_found("not found")),
            }
        }
        // Deleting a CAPI machine (how Rancher removes a custom node,
        // rancher/rancher#43686): 404 when there is none; else it gets its
        // deletionTimestamp and stays (phase `Deleting`) until its
        // finalizer is done, then is gone. A second DELETE changes nothing.
        "cluster.x-k8s.io.machine" if req.method == Method::DELETE => {
            let [ns, name] = rest else { return Err(method_not_allowed(&req.method)) };
            let (ns, name) = (ns.to_string(), name.to_string());
            let found = inner.model.state.machines.iter().position(|m| m.namespace == ns && m.name == name && !inner.model.machine_gone(m, now));
            let i = found.ok_or_else(|| not_found("machines.cluster.x-k8s.io", &name))?;
            mutate(req.app, &mut inner, |m, _| {
                m.state.machines[i].deleting_ms.get_or_insert(now);
                Ok(())
            })?;
            let m = &inner.model.state.machines[i];
            let mv = super::v1::MachineView { phase: "Deleting", message: "draining and deleting the node".into(), running_ms: None };
            Ok(json_resp(200, &view(&inner, req, now).machine(m, &mv), &req.base))
        }
        "cluster.x-k8s.io.machine" => {
            read_only(req)?;
            let v = view(&inner, req, now);
            let mut all = vec![];
            for pc in &inner.model.state.prov_clusters {
                for (i, mv) in inner.model.view(pc, now).machines {
                    all.push((&inner.model.state.machines[i], mv));
                }
            }
            match rest {
                [] | [_] => {
                    let data = all.iter().filter(|(m, _)| rest.first().is_none_or(|ns| m.namespace == *ns))
                        .map(|(m, mv)| v.machine(m, mv)).collect();
                    Ok(json_resp(200, &steve_collection(req, ty, data, false), &req.base))
                }
                [ns, name] => all.iter().find(|(m, _)| m.namespace == *ns && m.name == *name)
                    .map(|(m, mv)| json_resp(200, &v.machine(m, mv), &req.base))
                    .ok_or_else(|| not_found("machines.cluster.x-k8s.io", name)),
                _ => Err(ApiError::not_found("not found")),
            }
        }
        _ => {
            // users: what the readiness check reads (§2.1)
            read_only(req)?;
            let data = inner.model.state.users.iter().map(|u| json!({
                "id": u.id, "type": ty, "apiVersion": "management.cattle.io/v3", "kind": "User",
                "metadata": {"name": u.id, "creationTimestamp": render::rfc3339(u.created_ms)},
                "username": u.username, "displayName": u.display_name, "mustChangePassword": u.must_change_password,
            })).collect();
            Ok(json_resp(200, &steve_collection(req, ty, data, false), &req.base))
        }
    }
}

// ---- /v3 ----------------------------------------------------------------------------

fn v3(req: &Req) -> Result<Response, ApiError> {
    let mut inner = req.app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let segs = &req.segs;
    let is_setting = segs
        .first()
        .and_then(|s| schema(s))
        .is_some_and(|s| s.id == "setting");
    // settings readable without authentication
    if req.method == Method::GET
        && is_setting
        && segs.len() == 2
        && PUBLIC_SETTINGS.contains(&segs[1].as_str())
    {
        let ctx = req.ctx(&inner.model);
        let v = ctx.setting(&segs[1]).expect("public settings are known");
        return Ok(json_resp(200, &v, &req.base));
    }
    // the authentication filter
    let caller = caller_of(&inner.model, req);
    let Some(caller) = caller else {
        return Ok(json_resp(401, &render::filter_401(), &req.base));
    };
    check_csrf(&req.method, req.headers)?;
    if segs.is_empty() {
        let links: Map<String, Value> =
            std::iter::once(("self".to_string(), json!(format!("{}/v3", req.base))))
                .chain(SCHEMAS.iter().map(|s| {
                    (
                        s.plural.to_string(),
                        json!(format!("{}/v3/{}", req.base, s.plural)),
                    )
                }))
                .collect();
        return Ok(json_resp(
            200,
            &json!({"id": "v3", "type": "apiRoot", "baseType": "apiRoot", "links": links}),
            &req.base,
        ));
    }
    let schema = schema(&segs[0])
        .ok_or_else(|| ApiError::not_found(format!("Invalid schema {}", segs[0])))?;
    let id = segs.get(1).map(String::as_str);
    match segs.len() {
        1 | 2 => {}
        3 if schema.id == "cluster" => {
            return cluster_link(req, &inner, id.unwrap_or(""), &segs[2])
        }
        _ => return Err(ApiError::not_found("not found")),
    }
    match schema.id {
        "token" => tokens(req, &mut inner, &caller, id),
        "user" => users(req, &mut inner, &caller, id),
        "setting" => settings(req, &mut inner, id),
        "cluster" => clusters(req, &mut inner, &caller, id),
        "clusterRegistrationToken" => registration_tokens(req, &mut inner, id),
        // rke1 scale down: a node DELETE (norman answers with the node, now
        // `removing`); it is gone once Rancher has cleaned it up.
        "node" if req.method == Method::DELETE => {
            let now = req.now;
            let id = id.unwrap_or("").to_string();
            let i = inner.model.state.nodes.iter().position(|n| n.id() == id && n.registered_ms.saturating_add(inner.model.node_ready_ms) <= now && !inner.model.node_gone(n, now));
            let i = i.ok_or_else(|| ApiError::not_found(format!("nodes \"{id}\" not found")))?;
            mutate(req.app, &mut inner, |m, _| {
                m.state.nodes[i].deleting_ms.get_or_insert(now);
                Ok(())
            })?;
            let ctx = req.ctx(&inner.model);
            Ok(json_resp(200, &ctx.node(&inner.model.state.nodes[i]), &req.base))
        }
        "node" => nodes(req, &inner, id),
        _ => schemas(req, id),
    }
}

/// A GET on a collection or a resource; anything else is 405 (or 422 for an action).
fn read_only(req: &Req) -> Result<(), ApiError> {
    match (&req.method, req.action()) {
        (&Method::GET, _) => Ok(()),
        (&Method::POST, Some(a)) => Err(invalid_action(a)),
        (m, _) => Err(method_not_allowed(m)),
    }
}

fn list_or_get(
    req: &Req,
    schema: &Schema,
    id: Option<&str>,
    items: Vec<(String, Value)>,
    actions: Option<Value>,
) -> Result<Response, ApiError> {
    match id {
        Some(id) => items
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, v)| json_resp(200, &v, &req.base))
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} \"{id}\" not found",
                    schema.plural.to_ascii_lowercase()
                ))
            }),
        None => {
            let data = items.into_iter().map(|(_, v)| v).collect();
            Ok(json_resp(
                200,
                &collection(req, schema.id, schema.filters, data, actions),
                &req.base,
            ))
        }
    }
}

fn tokens(
    req: &Req,
    inner: &mut Inner,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Response, ApiError> {
    let now = req.now;
    match (&req.method, id, req.action()) {
        (&Method::POST, None, None) => {
            let body = raw_json(req.body, "InvalidFormat", Some(""))?;
            let desc = str_field(&body, "description").to_string();
            let ttl = body
                .get("ttl")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
                .max(0.0) as u64;
            let cluster = body
                .get("clusterId")
                .and_then(Value::as_str)
                .map(str::to_string);
            let t = mutate(req.app, inner, |m, rng| {
                m.derive_token(rng, now, &caller.token, &desc, ttl, cluster)
            })?;
            let ctx = req.ctx(&inner.model);
            Ok(json_resp(201, &ctx.token(&t, true, false), &req.base))
        }
        (&Method::DELETE, Some(id), None) => {
            mutate(req.app, inner, |m, _| m.delete_token(&caller.token, id))?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => {
            read_only(req)?;
            let ctx = req.ctx(&inner.model);
            let items = inner
                .model
                .state
                .tokens
                .iter()
                .filter(|t| t.user_id == caller.user_id)
                .map(|t| {
                    (
                        t.name.clone(),
                        ctx.token(t, false, t.name == caller.token && !caller.is_derived),
                    )
                })
                .collect();
            list_or_get(req, schema_by_id("token"), id, items, None)
        }
    }
}

fn users(
    req: &Req,
    inner: &mut Inner,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Response, ApiError> {
    match (&req.method, id, req.action()) {
        (&Method::POST, None, Some("changepassword")) => {
            let body = raw_json(
                req.body,
                "InvalidBodyContent",
                Some("Failed to parse body: "),
            )?;
            let (cur, new) = (
                str_field(&body, "currentPassword"),
                str_field(&body, "newPassword"),
            );
            mutate(req.app, inner, |m, rng| {
                m.change_password(rng, &caller.user_id, cur, new)
            })?;
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, Some(uid), Some("setpassword")) => {
            let body = raw_json(
                req.body,
                "InvalidBodyContent",
                Some("Failed to parse body: "),
            )?;
            let new = str_field(&body, "newPassword");
            mutate(req.app, inner, |m, rng| m.set_password(rng, uid, new))?;
            let ctx = req.ctx(&inner.model);
            let u = inner.model.user(uid).expect("user exists");
            Ok(json_resp(
                200,
                &ctx.user(u, u.id == caller.user_id),
                &req.base,
            ))
        }
        _ => {
            read_only(req)?;
            let ctx = req.ctx(&inner.model);
            let items = inner
                .model
                .state
                .users
                .iter()
                .map(|u| (u.id.clone(), ctx.user(u, u.id == caller.user_id)))
                .collect();
            let actions =
                json!({"changepassword": format!("{}/v3/users?action=changepassword", req.base)});
            list_or_get(req, schema_by_id("user"), id, items, Some(actions))
        }
    }
}

fn settings(req: &Req, inner: &mut Inner, id: Option<&str>) -> Result<Response, ApiError> {
    match (&req.method, id) {
        (&Method::PUT, Some(name)) => {
            let body = norman_body(req.headers, req.body)?;
            let value = match body.get("value") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            };
            mutate(req.app, inner, |m, _| m.put_setting(name, value.as_deref()))?;
            let ctx = req.ctx(&inner.model);
            Ok(json_resp(
                200,
                &ctx.setting(name).expect("known setting"),
                &req.base,
            ))
        }
        _ => {
            read_only(req)?;
            let ctx = req.ctx(&inner.model);
            let items = SETTINGS
                .iter()
                .filter_map(|(n, _)| Some((n.to_string(), ctx.setting(n)?)))
                .collect();
            list_or_get(req, schema_by_id("setting"), id, items, None)
        }
    }
}

fn clusters(
    req: &Req,
    inner: &mut Inner,
    caller: &Caller,
    id: Option<&str>,
) -> Result<Response, ApiError> {
    let now = req.now;
    match (&req.method, id, req.action()) {
        (&Method::POST, None, None) => {
            if now < inner.model.started_ms + inner.model.knobs.webhook_window_ms {
                return Err(v1::webhook_not_ready());
            }
            let body = norman_body(req.headers, req.body)?;
            let cid = mutate(req.app, inner, |m, rng| {
                m.create_cluster(rng, now, &caller.user_id, &body)
            })?;
            let ctx = req.ctx(&inner.model);
            Ok(json_resp(
                201,
                &ctx.cluster(inner.model.cluster(&cid).expect("created")),
                &req.base,
            ))
        }
        (&Method::POST, Some(cid), Some("generateKubeconfig")) => {
            generate_kubeconfig(req, inner, caller, cid)
        }
        _ => {
            read_only(req)?;
            let ctx = req.ctx(&inner.model);
            let mut items: Vec<(String, Value)> = inner
                .model
                .state
                .clusters
                .iter()
                .map(|c| (c.id.clone(), ctx.cluster(c)))
                .collect();
            // the management clusters of v1 clusters, once named (§2.5)
            let v = V1 { model: &inner.model, base: req.base.clone(), now };
            items.extend(
                inner.model.state.prov_clusters.iter()
                    .filter(|pc| inner.model.view(pc, now).named && !inner.model.mgmt_gone(pc, now))
                    .map(|pc| (pc.mgmt_id.clone(), v.v3_mgmt_cluster(pc))),
            );
            list_or_get(req, schema_by_id("cluster"), id, items, None)
        }
    }
}

/// `POST /v3/clusters/<id>?action=generateKubeconfig` → `{config}`
/// (§2.10), with a new token for the caller's user, on an active cluster.
fn generate_kubeconfig(req: &Req, inner: &mut Inner, caller: &Caller, cid: &str) -> Result<Response, ApiError> {
    let now = req.now;
    let exists = inner.model.cluster(cid).is_some()
        || inner.model.prov_by_mgmt(cid).is_some_and(|pc| inner.model.view(pc, now).named);
    if !exists {
        return Err(ApiError::not_found(format!("clusters \"{cid}\" not found")));
    }
    let name = inner.model.prov_by_mgmt(cid).map(|pc| pc.name.clone())
        .or_else(|| inner.model.cluster(cid).map(|c| c.name.clone())).unwrap_or_default();
    let t = mutate(req.app, inner, |m, rng| {
        m.derive_token(rng, now, &caller.token, "Kubeconfig token", 0, Some(cid.to_string()))
    })?;
    let ca = base64::engine::general_purpose::STANDARD.encode(format!("{}\n", inner.model.cacerts));
    // the server is `server-url` (what Rancher writes), else this request's host
    let server = super::model::root_url(&inner.model.setting("server-url").map(|s| s.0).unwrap_or_default());
    let base = if server.is_empty() { req.base.clone() } else { server };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"{name}\"\n  cluster:\n    server: \"{base}/k8s/clusters/{cid}\"\n    certificate-authority-data: \"{ca}\"\n\nusers:\n- name: \"{name}\"\n  user:\n    token: \"{tok}\"\n\ncontexts:\n- name: \"{name}\"\n  context:\n    user: \"{name}\"\n    cluster: \"{name}\"\n\ncurrent-context: \"{name}\"\n",
        tok = t.bearer()
    );
    Ok(json_resp(200, &json!({"type": "generateKubeConfigOutput", "baseType": "generateKubeConfigOutput", "config": config}), &req.base))
}

fn registration_tokens(
    req: &Req,
    inner: &mut Inner,
    id: Option<&str>,
) -> Result<Response, ApiError> {
    let now = req.now;
    match (&req.method, id, req.action()) {
        (&Method::POST, None, None) => {
            let body = norman_body(req.headers, req.body)?;
            let cluster = body
                .get("clusterId")
                .and_then(Value::as_str)
                .map(str::to_string);
            let rid = mutate(req.app, inner, |m, rng| {
                m.create_registration_token(rng, now, cluster.as_deref())
            })?;
            let ctx = req.ctx(&inner.model);
            let rt = inner.model.registration_token(&rid).expect("created");
            Ok(json_resp(
                201,
                &ctx.registration_token(rt, false),
                &req.base,
            ))
        }
        _ => {
            read_only(req)?;
            let ctx = req.ctx(&inner.model);
            let items = inner
                .model
                .state
                .registration_tokens
                .iter()
                .filter(|t| t.created_ms <= now)
                .map(|t| (t.id(), ctx.registration_token(t, true)))
                .collect();
            list_or_get(
                req,
                schema_by_id("clusterRegistrationToken"),
                id,
                items,
                None,
            )
        }
    }
}

fn node_items(req: &Req, inner: &Inner) -> Vec<(String, Value)> {
    let ctx = req.ctx(&inner.model);
    let mut items: Vec<(String, Value)> = inner
        .model
        .listed_nodes(req.now)
        .map(|n| (n.id(), ctx.node(n)))
        .collect();
    // the nodes of v1 clusters' machines, once they run
    let v = V1 { model: &inner.model, base: req.base.clone(), now: req.now };
    for pc in &inner.model.state.prov_clusters {
        for (i, mv) in inner.model.view(pc, req.now).machines {
            items.extend(v.v3_node(pc, &inner.model.state.machines[i], &mv));
        }
    }
    items
}

fn nodes(req: &Req, inner: &Inner, id: Option<&str>) -> Result<Response, ApiError> {
    read_only(req)?;
    list_or_get(req, schema_by_id("node"), id, node_items(req, inner), None)
}

/// `/v3/clusters/<id>/<link>`: the cluster's nodes or registration tokens.
fn cluster_link(
    req: &Req,
    inner: &Inner,
    cluster_id: &str,
    link: &str,
) -> Result<Response, ApiError> {
    read_only(req)?;
    let named_v1 = inner.model.prov_by_mgmt(cluster_id).is_some_and(|pc| inner.model.view(pc, req.now).named);
    if inner.model.cluster(cluster_id).is_none() && !named_v1 {
        return Err(ApiError::not_found(format!(
            "clusters \"{cluster_id}\" not found"
        )));
    }
    let target = schema(link).filter(|s| matches!(s.id, "node" | "clusterRegistrationToken"));
    let target = target.ok_or_else(|| ApiError::not_found(format!("link {link} not found")))?;
    let ctx = req.ctx(&inner.model);
    let data: Vec<Value> = if target.id == "node" {
        node_items(req, inner).into_iter().map(|(_, v)| v).collect()
    } else {
        inner
            .model
            .state
            .registration_tokens
            .iter()
            .filter(|t| t.created_ms <= req.now)
            .map(|t| ctx.registration_token(t, true))
            .collect()
    };
    let data = data
        .into_iter()
        .filter(|v| v["clusterId"] == cluster_id)
        .collect();
    Ok(json_resp(
        200,
        &collection(req, target.id, target.filters, data, None),
        &req.base,
    ))
}

fn schemas(req: &Req, id: Option<&str>) -> Result<Response, ApiError> {
    read_only(req)?;
    let items = SCHEMAS
        .iter()
        .map(|s| {
            let v = json!({
                "id": s.id, "type": "schema", "baseType": "schema", "pluralName": s.plural,
                "collectionMethods": if s.creatable { json!(["GET", "POST"]) } else { json!(["GET"]) },
                "resourceMethods": json!(["GET"]),
                "links": {"self": format!("{}/v3/schemas/{}", req.base, s.id),
                          "collection": format!("{}/v3/{}", req.base, s.plural)},
            });
            (s.id.to_string(), v)
        })
        .collect();
    list_or_get(req, schema_by_id("schema"), id, items, None)
}

// ---- collections -----------------------------------------------------------------

fn field_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

const MODIFIERS: &[&str] = &["ne", "in", "notin", "null", "notnull", "prefix", "eq"];
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// A norman collection (§1.5): filters on the schema's filterable fields
/// (others are ignored), default limit 1000, `marker` paging.
fn collection(
    req: &Req,
    ty: &str,
    filterable: &[&str],
    mut data: Vec<Value>,
    actions: Option<Value>,
) -> Value {
    // parse the filters
    let mut applied: Vec<(String, String, String)> = Vec::new(); // field, modifier, value
    for (k, v) in &req.query {
        let (field, modifier) = match k.rsplit_once('_') {
            Some((f, m)) if MODIFIERS.contains(&m) => (f, m),
            _ => (k.as_str(), "eq"),
        };
        if filterable.contains(&field) {
            applied.push((field.to_string(), modifier.to_string(), v.clone()));
        }
    }
    data.retain(|item| {
        applied.iter().all(|(field, modifier, value)| {
            let have = field_string(&item[field.as_str()]);
            match modifier.as_str() {
                "ne" => have.as_deref() != Some(value.as_str()),
                "in" => have.is_some_and(|h| value.split(',').any(|v| v == h)),
                "notin" => !have.is_some_and(|h| value.split(',').any(|v| v == h)),
                "null" => have.is_none(),
                "notnull" => have.is_some(),
                "prefix" => have.is_some_and(|h| h.starts_with(value.as_str())),
                _ => have.as_deref() == Some(value.as_str()),
            }
        })
    });
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let total = data.len();
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let limit = match q("limit").and_then(|l| l.parse::<i64>().ok()) {
        Some(-1) => MAX_LIMIT,
        Some(l) if l > 0 => (l as usize).min(MAX_LIMIT),
        _ => DEFAULT_LIMIT,
    };
    if let Some(marker) = q("marker") {
        if let Some(pos) = data.iter().position(|v| v["id"] == marker.as_str()) {
            data.drain(..pos);
        }
    }
    let mut pagination = json!({"limit": limit, "total": total});
    if data.len() > limit {
        let next_id = data[limit]["id"].as_str().unwrap_or("").to_string();
        data.truncate(limit);
        let sep = if req.self_url.contains('?') { '&' } else { '?' };
        pagination["partial"] = json!(true);
        pagination["next"] = json!(format!("{}{sep}marker={next_id}", req.self_url));
    }
    let filters: Map<String, Value> = filterable
        .iter()
        .map(|f| {
            let conds: Vec<Value> = applied
                .iter()
                .filter(|(field, _, _)| field == f)
                .map(|(_, m, v)| json!({"modifier": m, "value": v}))
                .collect();
            (
                f.to_string(),
                if conds.is_empty() {
                    Value::Null
                } else {
                    Value::Array(conds)
                },
            )
        })
        .collect();
    let schema = SCHEMAS.iter().find(|s| s.id == ty);
    let create_types = match schema {
        Some(s) if s.creatable => {
            json!({ ty: format!("{}/v3/{}", req.base, s.plural.to_ascii_lowercase()) })
        }
        _ => json!({}),
    };
    let sep = if req.self_url.contains('?') { '&' } else { '?' };
    json!({
        "type": "collection",
        "resourceType": ty,
        "links": {"self": req.self_url},
        "createTypes": create_types,
        "actions": actions.unwrap_or_else(|| json!({})),
        "pagination": pagination,
        "sort": {"order": "asc", "reverse": format!("{}{sep}order=desc", req.self_url), "links": {}},
        "filters": filters,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_helpers() {
        assert_eq!(
            percent_decode("c-abcde%3Acrt-xyz12", false),
            "c-abcde:crt-xyz12"
        );
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
        assert_eq!(percent_decode("%", false), "%");
        assert_eq!(
            parse_form("clusterId=c-1&name=a%20b&x"),
            vec![
                ("clusterId".to_string(), "c-1".to_string()),
                ("name".to_string(), "a b".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        assert_eq!(
            schema("ClusterRegistrationTokens").unwrap().id,
            "clusterRegistrationToken"
        );
        assert_eq!(schema("cluster").unwrap().id, "cluster");
        assert!(schema("clusterz").is_none());
    }

    #[test]
    fn csrf_only_for_browsers() {
        let mut h = HeaderMap::new();
        assert!(check_csrf(&Method::POST, &h).is_ok());
        h.insert("user-agent", HeaderValue::from_static("Mozilla/5.0"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(check_csrf(&Method::GET, &h).is_ok());
        assert_eq!(
            check_csrf(&Method::POST, &h).unwrap_err().code,
            "InvalidCSRFToken"
        );
        h.insert("cookie", HeaderValue::from_static("CSRF=abc"));
        h.insert("x-api-csrf", HeaderValue::from_static("abc"));
        assert!(check_csrf(&Method::POST, &h).is_ok());
    }
}
