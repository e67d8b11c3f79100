//! Rancher v3 JSON, read and written: only the fields the port types need
//! (everything else in an answer is ignored), the request bodies, and the
//! four error-body shapes of `reference/rancher-api.md` §1.6.
//!
//! Nothing here ever leaks into events: the port types
//! ([`ClusterInfo`], [`NodeInfo`], …) are what the actors see.

use rmm_actors::ports::{
    ApiError, ApiToken, ClusterInfo, Condition, NodeInfo, RegistrationToken, Secret, SteveObject, SteveState,
};
use serde::Deserialize;
use serde_json::{json, Value};

// ---------------------------------------------------------------- bodies

/// `POST /v3-public/localProviders/local?action=login`.
pub fn login_body(username: &str, password: &Secret) -> Value {
    json!({
        "type": "localProvider",
        "username": username,
        "password": password.expose(),
        "responseType": "json",
    })
}

/// `POST /v3/users?action=changepassword`.
pub fn change_password_body(current: &Secret, new: &Secret) -> Value {
    json!({ "currentPassword": current.expose(), "newPassword": new.expose() })
}

/// `POST /v3/token`: `ttl: 0` asks for the server's maximum (never expires
/// up to 2.7; `auth-token-max-ttl-minutes`, 90 days by default, from 2.8).
pub fn create_token_body(description: &str) -> Value {
    json!({ "type": "token", "description": description, "ttl": 0 })
}

/// `PUT /v3/settings/<name>`.
pub fn setting_body(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

/// `POST /v3/cluster`: an RKE1 custom cluster like the reference script's
/// and Rancher's own RKE1 test configs (x509 auth, canal, nginx). No
/// `kubernetesVersion`: the server fills in its `k8s-version` default (an
/// empty string would mean the same on Rancher, but is refused by stricter
/// validators, so it is left out).
pub fn create_cluster_body(name: &str) -> Value {
    json!({
        "type": "cluster",
        "name": name,
        "dockerRootDir": "/var/lib/docker",
        "enableNetworkPolicy": false,
        "rancherKubernetesEngineConfig": {
            "ignoreDockerVersion": true,
            "authentication": { "strategy": "x509" },
            "network": {
                "plugin": "canal",
                "options": { "flannel_backend_type": "vxlan" }
            },
            "ingress": { "provider": "nginx" }
        }
    })
}

/// `POST /v3/clusterregistrationtoken`.
pub fn create_registration_token_body(cluster_id: &str) -> Value {
    json!({ "type": "clusterRegistrationToken", "clusterId": cluster_id })
}

// ---------------------------------------------------------------- answers

fn decode<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, ApiError> {
    // serde_json's message names a position and the expected type, never
    // the input itself, so it is safe to pass on.
    serde_json::from_slice(body).map_err(|e| ApiError::Decode(format!("{what}: {e}")))
}

/// A string field that may be missing, null or empty: all three are `None`.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// A norman collection: `{"type":"collection","data":[…],"pagination":{…}}`.
#[derive(Deserialize)]
pub struct Collection<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

#[derive(Deserialize)]
pub struct Pagination {
    /// Absolute URL of the next page, when the answer was cut short.
    #[serde(default)]
    pub next: Option<String>,
}

pub fn decode_collection<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<Collection<T>, ApiError> {
    decode(what, body)
}

/// `GET /ping`: exactly `pong` (Rancher sends no newline; tolerate one).
pub fn is_pong(body: &[u8]) -> bool {
    body.trim_ascii() == b"pong"
}

#[derive(Deserialize)]
struct SettingDto {
    #[serde(default)]
    value: Option<String>,
}

/// `GET /v3/settings/cacerts` → `.value`, which must not be empty: an empty
/// `cacerts` means Rancher uses a publicly trusted certificate, and then
/// there is no CA to pin.
pub fn decode_cacerts(body: &[u8]) -> Result<String, ApiError> {
    let s: SettingDto = decode("setting cacerts", body)?;
    non_empty(s.value)
        .ok_or_else(|| {
            ApiError::Decode(format!("{}: this Rancher has no private CA to pin", rmm_actors::ports::EMPTY_CACERTS))
        })
}

#[derive(Deserialize)]
struct TokenDto {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Login (201): only `.token` matters, and it must be a non-empty string
/// (the reference script's `jq` loop accepted an empty one).
pub fn decode_login(body: &[u8]) -> Result<Secret, ApiError> {
    let t: TokenDto = decode("login answer", body)?;
    non_empty(t.token).map(Secret::new).ok_or_else(|| ApiError::Decode("login answer has no token".into()))
}

/// `POST /v3/token` (201) → (`id`, `token`).
pub fn decode_created_token(body: &[u8]) -> Result<(String, Secret), ApiError> {
    let t: TokenDto = decode("token", body)?;
    let token = non_empty(t.token).ok_or_else(|| ApiError::Decode("new token has no token value".into()))?;
    // The bearer string is `<id>:<secret>`; fall back to its name part.
    let id = non_empty(t.id)
        .or_else(|| token.split_once(':').map(|(id, _)| id.to_string()))
        .ok_or_else(|| ApiError::Decode("new token has no id".into()))?;
    Ok((id, Secret::new(token)))
}

/// One entry of `GET /v3/tokens` (the secret part is write-only and never
/// comes back on GET; it is not read even if it does).
pub fn api_token(t: TokenDtoPublic) -> Option<ApiToken> {
    Some(ApiToken { id: non_empty(t.id)?, description: t.description.unwrap_or_default() })
}

#[derive(Deserialize)]
pub struct TokenDtoPublic {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
pub struct ClusterDto {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    transitioning: Option<String>,
    #[serde(default, rename = "transitioningMessage")]
    transitioning_message: Option<String>,
}

impl ClusterDto {
    pub fn into_info(self) -> Result<ClusterInfo, ApiError> {
        Ok(ClusterInfo {
            id: non_empty(self.id).ok_or_else(|| ApiError::Decode("cluster without an id".into()))?,
            name: self.name.unwrap_or_default(),
            state: self.state.unwrap_or_default(),
            transitioning: self.transitioning.unwrap_or_default(),
            transitioning_message: self.transitioning_message.unwrap_or_default(),
        })
    }
}

pub fn decode_cluster(body: &[u8]) -> Result<ClusterInfo, ApiError> {
    decode::<ClusterDto>("cluster", body)?.into_info()
}

/// Picks the cluster called `name` out of `GET /v3/clusters?name=<name>`:
/// an exact match first; else one that differs only in case (Rancher's
/// uniqueness check ignores case, so such a cluster blocks the name).
pub fn pick_cluster(clusters: Vec<ClusterDto>, name: &str) -> Result<Option<ClusterInfo>, ApiError> {
    let infos = clusters.into_iter().map(ClusterDto::into_info).collect::<Result<Vec<_>, _>>()?;
    let exact = infos.iter().position(|c| c.name == name);
    let loose = infos.iter().position(|c| c.name.eq_ignore_ascii_case(name));
    Ok(exact.or(loose).map(|i| infos[i].clone()))
}

#[derive(Deserialize)]
pub struct RegistrationTokenDto {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "clusterId")]
    cluster_id: Option<String>,
    #[serde(default, rename = "nodeCommand")]
    node_command: Option<String>,
    #[serde(default, rename = "insecureNodeCommand")]
    insecure_node_command: Option<String>,
}

impl RegistrationTokenDto {
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    pub fn into_token(self) -> Result<RegistrationToken, ApiError> {
        let id = non_empty(self.id).ok_or_else(|| ApiError::Decode("registration token without an id".into()))?;
        // `clusterId` is always there on Rancher; the namespace part of the
        // id (`c-xxxxx:crt-xxxxx`) says the same.
        let cluster_id =
            non_empty(self.cluster_id).or_else(|| id.split_once(':').map(|(c, _)| c.to_string())).unwrap_or_default();
        Ok(RegistrationToken {
            id,
            cluster_id,
            node_command: non_empty(self.node_command).map(Secret::new),
            insecure_node_command: non_empty(self.insecure_node_command).map(Secret::new),
        })
    }
}

pub fn decode_registration_token(body: &[u8]) -> Result<RegistrationToken, ApiError> {
    decode::<RegistrationTokenDto>("registration token", body)?.into_token()
}

#[derive(Deserialize)]
pub struct NodeDto {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "clusterId")]
    cluster_id: Option<String>,
    #[serde(default, rename = "requestedHostname")]
    requested_hostname: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    etcd: Option<bool>,
    #[serde(default, rename = "controlPlane")]
    control_plane: Option<bool>,
    #[serde(default)]
    worker: Option<bool>,
    #[serde(default, rename = "ipAddress")]
    ip_address: Option<String>,
}

impl NodeDto {
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    pub fn into_info(self) -> Result<NodeInfo, ApiError> {
        Ok(NodeInfo {
            id: non_empty(self.id).ok_or_else(|| ApiError::Decode("node without an id".into()))?,
            requested_hostname: self.requested_hostname.unwrap_or_default(),
            state: self.state.unwrap_or_default(),
            etcd: self.etcd.unwrap_or(false),
            control_plane: self.control_plane.unwrap_or(false),
            worker: self.worker.unwrap_or(false),
            ip_address: non_empty(self.ip_address),
        })
    }
}

// ---------------------------------------------------------------- v1 (Steve)

/// The namespace of v1 provisioning clusters and CAPI machines
/// (reference/rancher-current.md §1.3, §2.4, §2.8).
pub const FLEET_DEFAULT: &str = "fleet-default";

/// The label that ties a CAPI machine to its cluster (§2.8).
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// `POST /v1-public/login` (§2.2): same body as the v3 login, plus the
/// description; `responseType` stays out (`cookie` would mean no body).
pub fn login_public_body(username: &str, password: &Secret) -> Value {
    json!({
        "type": "localProvider",
        "username": username,
        "password": password.expose(),
        "description": "rmm",
    })
}

/// `POST /v1/provisioning.cattle.io.clusters` (§2.4): the shape Rancher's
/// own custom-cluster tests create, an `rkeConfig` with no machine pools
/// plus the version (whose `+rke2`/`+k3s` suffix selects the distribution).
pub fn create_v1_cluster_body(name: &str, kubernetes_version: &str, run: &str) -> Value {
    json!({
        "type": "provisioning.cattle.io.cluster",
        "apiVersion": "provisioning.cattle.io/v1",
        "kind": "Cluster",
        "metadata": { "name": name, "namespace": FLEET_DEFAULT, "annotations": { rmm_actors::ports::RUN_ANNOTATION: run } },
        "spec": {
            "kubernetesVersion": kubernetes_version,
            "rkeConfig": {}
        }
    })
}

#[derive(Deserialize)]
struct VersionDto {
    #[serde(default, rename = "Version", alias = "version")]
    version: Option<String>,
}

/// `GET /rancherversion` → `Version` (`v2.15.1`). (The JSON shape is
/// Rancher's `{"Version":…,"GitCommit":…,"RancherPrime":…}`; §2.1 lists the
/// route, §8 says live bodies were not captured.)
pub fn decode_rancher_version(body: &[u8]) -> Result<String, ApiError> {
    let v: VersionDto = decode("rancherversion", body)?;
    non_empty(v.version).ok_or_else(|| ApiError::Decode("/rancherversion has no Version".into()))
}

/// `GET /v3/settings/<name>` → `.value`, empty when unset.
pub fn decode_setting_value(body: &[u8]) -> Result<String, ApiError> {
    let s: SettingDto = decode("setting", body)?;
    Ok(s.value.unwrap_or_default())
}

#[derive(Deserialize)]
struct ReleaseDto {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// `GET /v1-<distro>-release/releases` (§2.4): a collection whose entries
/// name a version (`version`, else `id`). Order kept, duplicates dropped.
pub fn decode_releases(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let c: Collection<ReleaseDto> = decode("releases", body)?;
    let mut out: Vec<String> = Vec::new();
    for r in c.data {
        if let Some(v) = non_empty(r.version).or(non_empty(r.id)) {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
struct MetaDto {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    state: Option<StateDto>,
}

#[derive(Deserialize, Default)]
struct StateDto {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<bool>,
    #[serde(default)]
    transitioning: Option<bool>,
}

#[derive(Deserialize, Default)]
struct ConditionDto {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct NodeRefDto {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct SteveStatusDto {
    #[serde(default)]
    ready: Option<bool>,
    #[serde(default, rename = "observedGeneration")]
    observed_generation: Option<i64>,
    #[serde(default, rename = "clusterName")]
    cluster_name: Option<String>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "nodeRef")]
    node_ref: Option<NodeRefDto>,
    #[serde(default, rename = "failureMessage")]
    failure_message: Option<String>,
    #[serde(default, rename = "failureReason")]
    failure_reason: Option<String>,
    #[serde(default)]
    conditions: Option<Vec<ConditionDto>>,
}

/// A Steve object (§2.0): `metadata.{name,generation,labels,annotations,
/// state}` and the `status` fields of §2.4/§2.8/§2.9. Unknown fields are
/// ignored; a `status` that is missing or `null` reads as empty.
#[derive(Deserialize)]
pub struct SteveDto {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    metadata: Option<MetaDto>,
    #[serde(default)]
    status: Option<SteveStatusDto>,
}

impl SteveDto {
    pub fn into_object(self) -> Result<SteveObject, ApiError> {
        let meta = self.metadata.unwrap_or_default();
        // `id` is `<ns>/<name>` for namespaced objects (§2.0).
        let name = non_empty(meta.name)
            .or_else(|| non_empty(self.id).map(|id| id.rsplit('/').next().unwrap_or_default().to_string()))
            .ok_or_else(|| ApiError::Decode("v1 object without a name".into()))?;
        let st = meta.state.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        let failure = match (non_empty(status.failure_reason), non_empty(status.failure_message)) {
            (Some(r), Some(m)) => Some(format!("{r}: {m}")),
            (r, m) => m.or(r),
        };
        Ok(SteveObject {
            name,
            generation: meta.generation.unwrap_or(0),
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            state: SteveState {
                name: st.name.unwrap_or_default(),
                message: st.message.unwrap_or_default(),
                error: st.error.unwrap_or(false),
                transitioning: st.transitioning.unwrap_or(false),
            },
            conditions: status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| Condition {
                    kind: c.kind.unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                    reason: c.reason.unwrap_or_default(),
                    message: c.message.unwrap_or_default(),
                })
                .collect(),
            ready: status.ready.unwrap_or(false),
            observed_generation: status.observed_generation.unwrap_or(0),
            cluster_name: non_empty(status.cluster_name),
            phase: non_empty(status.phase),
            node_ref: status.node_ref.and_then(|r| non_empty(r.name)),
            failure,
        })
    }
}

pub fn decode_steve(what: &str, body: &[u8]) -> Result<SteveObject, ApiError> {
    decode::<SteveDto>(what, body)?.into_object()
}

// ---------------------------------------------------------------- errors

/// The union of the four error shapes (§1.6): norman's
/// `{"type":"error","status":422,"code":…,"message":…,"fieldName":…}`, the
/// auth filter's `{"type":"error","status":"401","message":…}` (status a
/// string, no code), 2.13+ login errors (message may be missing) and
/// steve's `{"type":"error","status":409,"code":"AlreadyExists",…}`.
#[derive(Deserialize, Default)]
struct ErrorDto {
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "fieldName")]
    field_name: Option<String>,
}

/// `status` as norman writes it (an integer) or as the auth filter writes
/// it (a string).
fn status_number(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What an error answer says: (status, code, message). `http_status` wins
/// over the body's `status`; the body's is used only when the HTTP one is
/// not an error (which Rancher never does, but a proxy might).
pub fn parse_error(http_status: u16, body: &[u8]) -> (u16, Option<String>, String) {
    let dto: Option<ErrorDto> = serde_json::from_slice(body).ok();
    let Some(dto) = dto else {
        // Not JSON (a proxy's HTML page, a plain-text 404 …): keep a short,
        // single-line excerpt so the user sees what answered.
        let text = String::from_utf8_lossy(body);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        let excerpt: String = line.chars().take(160).collect();
        let message = if excerpt.is_empty() { reason(http_status).to_string() } else { excerpt };
        return (http_status, None, message);
    };
    let status = if http_status >= 400 {
        http_status
    } else {
        dto.status.as_ref().and_then(status_number).unwrap_or(http_status)
    };
    let message = non_empty(dto.message);
    let field = non_empty(dto.field_name);
    let message = match (message, field) {
        (Some(m), Some(f)) => format!("{m} (field: {f})"),
        (Some(m), None) => m,
        (None, Some(f)) => format!("field: {f}"),
        (None, None) => reason(status).to_string(),
    };
    (status, non_empty(dto.code), message)
}

/// The port error for a 4xx answer.
pub fn status_error(http_status: u16, body: &[u8]) -> ApiError {
    let (status, code, message) = parse_error(http_status, body);
    ApiError::Status { status, code, message }
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norman_error_with_integer_status_and_code() {
        let body = br#"{"baseType":"error","type":"error","status":422,"code":"InvalidBodyContent","message":"invalid current password"}"#;
        assert_eq!(
            status_error(422, body),
            ApiError::Status {
                status: 422,
                code: Some("InvalidBodyContent".into()),
                message: "invalid current password".into()
            }
        );
    }

    #[test]
    fn auth_filter_401_has_a_string_status_and_no_code() {
        let body = br#"{"type":"error","status":"401","message":"Unauthorized 401: must authenticate"}"#;
        let e = status_error(401, body);
        assert_eq!(e.status(), Some(401));
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "Rancher answered 401: Unauthorized 401: must authenticate");
    }

    #[test]
    fn login_error_of_2_13_may_have_no_message() {
        let body = br#"{"code":"Unauthorized","status":401,"type":"error","baseType":"error"}"#;
        assert_eq!(
            status_error(401, body),
            ApiError::Status { status: 401, code: Some("Unauthorized".into()), message: "Unauthorized".into() }
        );
    }

    #[test]
    fn steve_conflict_keeps_the_k8s_reason_as_code() {
        let body = br#"{"type":"error","status":409,"code":"AlreadyExists","message":"clusters \"x\" already exists"}"#;
        let e = status_error(409, body);
        assert_eq!(e.code(), Some("AlreadyExists"));
        assert!(!e.is_retryable());
    }

    #[test]
    fn duplicate_cluster_is_422_not_unique_with_its_field_name() {
        let body = br#"{"type":"error","status":422,"code":"NotUnique","fieldName":"Cluster name","message":""}"#;
        assert_eq!(
            status_error(422, body),
            ApiError::Status { status: 422, code: Some("NotUnique".into()), message: "field: Cluster name".into() }
        );
    }

    #[test]
    fn a_body_status_is_used_only_when_http_did_not_say_error() {
        assert_eq!(parse_error(200, br#"{"type":"error","status":"404"}"#).0, 404);
        assert_eq!(parse_error(403, br#"{"type":"error","status":"404"}"#).0, 403);
    }

    #[test]
    fn non_json_error_bodies_give_a_short_first_line() {
        let (s, c, m) = parse_error(404, b"\n  404 page not found\nmore");
        assert_eq!((s, c, m.as_str()), (404, None, "404 page not found"));
        let (_, _, m) = parse_error(418, b"");
        assert_eq!(m, "I'm a teapot");
        let long = "x".repeat(1000);
        assert_eq!(parse_error(400, long.as_bytes()).2.len(), 160);
    }

    #[test]
    fn login_needs_a_non_empty_token() {
        let ok = br#"{"type":"token","id":"token-7x9kq","token":"token-7x9kq:abc","userId":"user-1","ttl":57600000}"#;
        assert_eq!(decode_login(ok).unwrap().expose(), "token-7x9kq:abc");
        for bad in [&br#"{"token":""}"#[..], br#"{"token":null}"#, br#"{"id":"token-1"}"#] {
            assert!(matches!(decode_login(bad), Err(ApiError::Decode(_))));
        }
        assert!(matches!(decode_login(b"<html>"), Err(ApiError::Decode(_))));
    }

    #[test]
    fn decode_errors_do_not_echo_the_body() {
        let e = decode_login(br#"{"token": 12345678901234567890123}"#).unwrap_err();
        assert!(!e.to_string().contains("12345678901234567890123"), "{e}");
    }

    #[test]
    fn created_token_gives_id_and_bearer() {
        let body = br#"{"type":"token","id":"token-x69qs","name":"token-x69qs","token":"token-x69qs:twfj","isDerived":true,"ttl":0,"description":"rmm run 1"}"#;
        let (id, t) = decode_created_token(body).unwrap();
        assert_eq!((id.as_str(), t.expose()), ("token-x69qs", "token-x69qs:twfj"));
        let (id, _) = decode_created_token(br#"{"token":"token-abcde:s"}"#).unwrap();
        assert_eq!(id, "token-abcde");
    }

    #[test]
    fn cacerts_value_must_not_be_empty() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let body = json!({"type":"setting","id":"cacerts","value":pem}).to_string();
        assert_eq!(decode_cacerts(body.as_bytes()).unwrap(), pem);
        assert!(decode_cacerts(br#"{"id":"cacerts","value":""}"#).is_err());
    }

    #[test]
    fn ping_wants_pong() {
        assert!(is_pong(b"pong"));
        assert!(is_pong(b"pong\n"));
        assert!(!is_pong(b"{\"pong\":1}"));
    }

    #[test]
    fn cluster_fields_map_and_unknown_fields_are_ignored() {
        let body = br#"{"type":"cluster","baseType":"cluster","id":"c-7kx2q","name":"tinysetup",
            "state":"provisioning","transitioning":"yes","transitioningMessage":"waiting for etcd, controlplane and worker nodes to be registered",
            "conditions":[{"type":"Pending","status":"True"}],"links":{"self":"x"},"createdTS":1}"#;
        assert_eq!(
            decode_cluster(body).unwrap(),
            ClusterInfo {
                id: "c-7kx2q".into(),
                name: "tinysetup".into(),
                state: "provisioning".into(),
                transitioning: "yes".into(),
                transitioning_message: "waiting for etcd, controlplane and worker nodes to be registered".into(),
            }
        );
        let bare = decode_cluster(br#"{"id":"c-1"}"#).unwrap();
        assert_eq!((bare.state.as_str(), bare.transitioning_message.as_str()), ("", ""));
        assert!(decode_cluster(br#"{"name":"x"}"#).is_err());
    }

    #[test]
    fn find_cluster_prefers_the_exact_name() {
        let list: Collection<ClusterDto> = decode_collection(
            "clusters",
            br#"{"type":"collection","data":[{"id":"c-1","name":"TinySetup"},{"id":"c-2","name":"tinysetup"}]}"#,
        )
        .unwrap();
        assert_eq!(pick_cluster(list.data, "tinysetup").unwrap().unwrap().id, "c-2");
        let list: Collection<ClusterDto> =
            decode_collection("clusters", br#"{"data":[{"id":"c-1","name":"TinySetup"}]}"#).unwrap();
        assert_eq!(pick_cluster(list.data, "tinysetup").unwrap().unwrap().id, "c-1");
        let list: Collection<ClusterDto> = decode_collection("clusters", br#"{"data":[]}"#).unwrap();
        assert_eq!(pick_cluster(list.data, "tinysetup").unwrap(), None);
    }

    #[test]
    fn node_command_missing_null_and_empty_are_none() {
        for body in [
            &br#"{"id":"c-1:crt-abcde","clusterId":"c-1"}"#[..],
            br#"{"id":"c-1:crt-abcde","clusterId":"c-1","nodeCommand":null}"#,
            br#"{"id":"c-1:crt-abcde","clusterId":"c-1","nodeCommand":""}"#,
        ] {
            let t = decode_registration_token(body).unwrap();
            assert_eq!((t.id.as_str(), t.cluster_id.as_str(), t.node_command), ("c-1:crt-abcde", "c-1", None));
        }
        let t = decode_registration_token(
            br#"{"id":"c-1:default-token","nodeCommand":"sudo docker run rancher/rancher-agent:v2.6.14 --token abc"}"#,
        )
        .unwrap();
        assert_eq!(t.cluster_id, "c-1");
        assert!(t.node_command.unwrap().expose().contains("--token abc"));
    }

    #[test]
    fn nodes_map_camel_case_roles_and_address() {
        let list: Collection<NodeDto> = decode_collection(
            "nodes",
            br#"{"type":"collection","pagination":{"limit":1000,"total":2},"data":[
              {"id":"c-1:m-0123456789ab","clusterId":"c-1","requestedHostname":"master01","state":"registering",
               "etcd":true,"controlPlane":true,"worker":false,"ipAddress":"127.3.4.2","customConfig":{"address":"127.3.4.2"}},
              {"id":"c-1:m-ba9876543210","requestedHostname":"worker01","state":"active","worker":true,"ipAddress":""}]}"#,
        )
        .unwrap();
        let nodes: Vec<NodeInfo> = list.data.into_iter().map(|n| n.into_info().unwrap()).collect();
        assert_eq!(
            nodes[0],
            NodeInfo {
                id: "c-1:m-0123456789ab".into(),
                requested_hostname: "master01".into(),
                state: "registering".into(),
                etcd: true,
                control_plane: true,
                worker: false,
                ip_address: Some("127.3.4.2".into()),
            }
        );
        assert_eq!((nodes[1].etcd, nodes[1].worker, nodes[1].ip_address.clone()), (false, true, None));
    }

    #[test]
    fn tokens_list_reads_id_and_description() {
        let list: Collection<TokenDtoPublic> = decode_collection(
            "tokens",
            br#"{"data":[{"id":"token-1","description":"rmm run r1"},{"id":"token-2","description":null},{"description":"no id"}],
                "pagination":{"next":"https://h/v3/tokens?marker=token-2"}}"#,
        )
        .unwrap();
        assert_eq!(
            list.pagination.as_ref().and_then(|p| p.next.as_deref()),
            Some("https://h/v3/tokens?marker=token-2")
        );
        let tokens: Vec<ApiToken> = list.data.into_iter().filter_map(api_token).collect();
        assert_eq!(
            tokens,
            vec![
                ApiToken { id: "token-1".into(), description: "rmm run r1".into() },
                ApiToken { id: "token-2".into(), description: String::new() }
            ]
        );
    }

    #[test]
    fn cluster_body_is_an_rke_custom_cluster_without_a_version() {
        let b = create_cluster_body("tinysetup");
        assert_eq!(b["name"], "tinysetup");
        let rke = &b["rancherKubernetesEngineConfig"];
        assert_eq!(rke["network"]["plugin"], "canal");
        assert_eq!(rke["ingress"]["provider"], "nginx");
        assert!(rke.get("kubernetesVersion").is_none());
        assert_eq!(create_token_body("d"), json!({"type":"token","description":"d","ttl":0}));
        assert_eq!(setting_body("server-url", "https://x"), json!({"name":"server-url","value":"https://x"}));
    }
}
