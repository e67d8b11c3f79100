//! The emulated Rancher's state and its transitions, with no I/O.
//!
//! Everything that depends on time takes `now` (epoch milliseconds) and
//! everything random takes an `Rng`, so the rules can be unit-tested. What the
//! API *shows* (JSON) is in `render`; what it *is* lives here.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// k8s `utilrand` / wrangler `randomtoken` alphabet.
pub const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// The Rancher release this emulator stands for.
pub const RANCHER_VERSION: &str = "v2.11.3";
pub const AGENT_IMAGE: &str = "rancher/rancher-agent:v2.11.3";
/// The `k8s-version` setting: the RKE1 default used when a cluster asks for none.
pub const DEFAULT_K8S_VERSION: &str = "v1.32.5-rancher1-1";
/// `auth-user-session-ttl-minutes` (960) in ms: the TTL of login tokens.
pub const LOGIN_TTL_MS: u64 = 960 * 60 * 1000;
/// `auth-token-max-ttl-minutes` (129600, the 2.8+ default) in ms.
pub const MAX_TOKEN_TTL_MS: u64 = 129_600 * 60 * 1000;
pub const WAITING_FOR_NODES: &str =
    "waiting for etcd, controlplane and worker nodes to be registered";
pub const NODE_WAITING: &str = "waiting to register with Kubernetes";
/// Current on-disk format of [`State`].
pub const STATE_FORMAT: u32 = 1;

/// Known settings and their defaults. `cacerts` is filled from the CA.
pub const SETTINGS: &[(&str, &str)] = &[
    ("agent-image", AGENT_IMAGE),
    ("auth-token-max-ttl-minutes", "129600"),
    ("auth-user-session-ttl-minutes", "960"),
    ("cacerts", ""),
    ("eula-agreed", ""),
    ("first-login", "true"),
    ("k3s-default-version", ""),
    ("k8s-version", DEFAULT_K8S_VERSION),
    ("password-min-length", "12"),
    ("rke2-default-version", ""),
    ("server-url", ""),
    ("server-version", RANCHER_VERSION),
    ("telemetry-opt", ""),
    ("ui-banners", "{}"),
    ("ui-default-landing", "vue"),
    ("ui-issues", ""),
    ("ui-pl", "rancher"),
];
/// Settings readable without authentication.
pub const PUBLIC_SETTINGS: &[&str] = &[
    "cacerts",
    "first-login",
    "ui-banners",
    "ui-issues",
    "ui-pl",
    "ui-default-landing",
];

/// `n` characters from [`ALPHABET`].
pub fn random_string(rng: &mut impl Rng, n: usize) -> String {
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A k8s-style (v4) uuid.
pub fn random_uuid(rng: &mut impl Rng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .to_string()
}

/// The custom node's object name: `m-` + the first 12 hex digits of md5(hostname).
pub fn node_name(requested_hostname: &str) -> String {
    use md5::{Digest, Md5};
    let digest = hex::encode(Md5::digest(requested_hostname.as_bytes()));
    format!("m-{}", &digest[..12])
}

fn sha256_hex(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Scheme and host of a URL, the way Rancher's `getRootURL` drops any path.
pub fn root_url(url: &str) -> String {
    let url = url.trim();
    match url.find("://") {
        Some(i) => match url[i + 3..].find('/') {
            Some(j) => url[..i + 3 + j].to_string(),
            None => url.to_string(),
        },
        None => url.trim_end_matches('/').to_string(),
    }
}

/// A norman API error (§1.6 shape 1). The HTTP layer turns 401s from the
/// auth filter and the tunnel into shape 2 itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field_name: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field_name: None,
        }
    }
    pub fn field(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: 422,
            code,
            message: message.into(),
            field_name: Some(field.to_string()),
        }
    }
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(422, "InvalidBodyContent", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "Unauthorized", message)
    }
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(500, "ServerError", message)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordHash {
    pub salt: String,
    pub sha256: String,
}

impl PasswordHash {
    pub fn new(rng: &mut impl Rng, password: &str) -> Self {
        let salt = random_string(rng, 16);
        let sha256 = sha256_hex(&[&salt, password]);
        PasswordHash { salt, sha256 }
    }
    pub fn verify(&self, password: &str) -> bool {
        sha256_hex(&[&self.salt, password]) == self.sha256
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password: PasswordHash,
    pub must_change_password: bool,
    pub created_ms: u64,
    pub uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// `token-xxxxx`
    pub name: String,
    /// The 54-character secret.
    pub secret: String,
    pub user_id: String,
    pub is_derived: bool,
    pub description: String,
    /// 0 = never expires.
    pub ttl_ms: u64,
    pub cluster_id: Option<String>,
    pub created_ms: u64,
    pub uuid: String,
}

impl Token {
    /// The bearer string `token-xxxxx:<secret>`.
    pub fn bearer(&self) -> String {
        format!("{}:{}", self.name, self.secret)
    }
    pub fn expires_ms(&self) -> Option<u64> {
        (self.ttl_ms > 0).then(|| self.created_ms + self.ttl_ms)
    }
    pub fn expired(&self, now: u64) -> bool {
        self.expires_ms().is_some_and(|e| now >= e)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// `c-xxxxx`
    pub id: String,
    /// The display name.
    pub name: String,
    pub creator_id: String,
    pub created_ms: u64,
    pub uuid: String,
    /// The spec fields kept from the create body (see [`CLUSTER_SPEC_FIELDS`]).
    pub spec: Map<String, Value>,
}

/// Fields of a cluster create body that are kept; the rest are ignored.
pub const CLUSTER_SPEC_FIELDS: &[&str] = &[
    "description",
    "rancherKubernetesEngineConfig",
    "dockerRootDir",
    "enableNetworkPolicy",
    "enableClusterAlerting",
    "enableClusterMonitoring",
    "defaultPodSecurityPolicyTemplateId",
    "localClusterAuthEndpoint",
    "agentEnvVars",
    "labels",
    "annotations",
    "windowsPreferedCluster",
    "fleetWorkspaceName",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationToken {
    pub cluster_id: String,
    /// `crt-xxxxx` or `default-token`
    pub name: String,
    /// The 54-character registration secret.
    pub token: String,
    pub created_ms: u64,
    pub uuid: String,
}

impl RegistrationToken {
    pub fn id(&self) -> String {
        format!("{}:{}", self.cluster_id, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub cluster_id: String,
    /// `m-<md5[:12]>`
    pub name: String,
    pub requested_hostname: String,
    pub address: String,
    pub internal_address: String,
    pub roles: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    /// First registration: the node is listed `node_ready_ms` after this.
    pub registered_ms: u64,
    pub updated_ms: u64,
    pub uuid: String,
    /// When a `DELETE /v3/nodes/<id>` asked for its removal: the node is
    /// `removing` while Rancher's node controller cleans it up (its
    /// finalizer: the Kubernetes node and, for etcd, the member go), and
    /// is gone (404) [`Model::node_removal_ms`] later — never at once.
    #[serde(default)]
    pub deleting_ms: Option<u64>,
}

impl Node {
    pub fn id(&self) -> String {
        format!("{}:{}", self.cluster_id, self.name)
    }
}

/// What the agent sends in `X-API-Tunnel-Params` (base64 JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterParams {
    pub custom_config: Option<CustomConfig>,
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    pub requested_hostname: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomConfig {
    pub address: String,
    pub internal_address: String,
    pub roles: Vec<String>,
    pub label: BTreeMap<String, String>,
}

/// Everything that survives a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub format: u32,
    pub users: Vec<User>,
    pub tokens: Vec<Token>,
    /// Values that were set; unset settings show their default.
    pub settings: BTreeMap<String, String>,
    pub clusters: Vec<Cluster>,
    pub registration_tokens: Vec<RegistrationToken>,
    pub nodes: Vec<Node>,
    /// `provisioning.cattle.io/v1` clusters (2.6+; the only kind from 2.12).
    #[serde(default)]
    pub prov_clusters: Vec<super::v1::ProvCluster>,
    /// CAPI machines of the custom clusters (`cluster.x-k8s.io`).
    #[serde(default)]
    pub machines: Vec<super::v1::Machine>,
    /// The registration ledger, keyed `<cluster>/<node>` (the cluster's id
    /// and requested hostname on RKE1, its name and node name on v1): how
    /// many nodes (RKE1, `/v3/connect/register`) or CAPI machines (v1,
    /// `/v3/connect/agent`) each node's registrations made. Rancher keeps
    /// no such count; the emulator keeps it in its data dir so the crash
    /// tests can check that no node was registered twice, even if the
    /// second one was removed since.
    #[serde(default)]
    pub registrations: BTreeMap<String, u32>,
    /// Every registration call, also those that only updated the node's
    /// existing node or machine (an installer run again with the node's
    /// kept system-agent id), by the same key.
    #[serde(default)]
    pub registration_calls: BTreeMap<String, u32>,
}

impl State {
    /// Counts one registration call of `node` in `cluster` in the ledger,
    /// and whether it made the node (or machine) rather than updating it.
    pub fn count_registration(&mut self, cluster: &str, node: &str, made: bool) {
        let key = format!("{cluster}/{node}");
        *self.registration_calls.entry(key.clone()).or_insert(0) += 1;
        if made {
            *self.registrations.entry(key).or_insert(0) += 1;
        }
    }
}

/// The registration commands of a token (2.6+: empty until server-url is set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    pub node_command: String,
    pub insecure_node_command: String,
    pub command: String,
    pub insecure_command: String,
    pub manifest_url: String,
}

impl Commands {
    /// A registration token's commands: the two node commands given, and
    /// the import commands Rancher derives from the token's manifest URL.
    pub fn new(node_command: String, insecure_node_command: String, server: &str, token: &str, cluster_id: &str) -> Commands {
        let manifest_url = format!("{server}/v3/import/{token}_{cluster_id}.yaml");
        Commands {
            node_command,
            insecure_node_command,
            command: format!("kubectl apply -f {manifest_url}"),
            insecure_command: format!("curl --insecure -sfL {manifest_url} | kubectl apply -f -"),
            manifest_url,
        }
    }
}

/// State plus the runtime facts that are not persisted.
#[derive(Debug, Clone)]
pub struct Model {
    pub state: State,
    /// The CA PEM, trimmed (the `cacerts` setting).
    pub cacerts: String,
    /// How long after registration a node shows up in `/v3/nodes`.
    pub node_ready_ms: u64,
    /// The Rancher line this emulator behaves as (`--rancher-version`).
    pub line: super::v1::Line,
    /// Controller delays and injected failures (`RMM_LOCAL_*`).
    pub knobs: super::v1::Knobs,
    /// When this process started serving (the start-up windows count from it).
    pub started_ms: u64,
    /// Per machine (`custom-…`): when its system-agent's service last
    /// checked in (`?watch=true` on its plan secret, every second while
    /// it runs). In memory only: a restarted server waits for the next.
    pub agents_seen: std::collections::BTreeMap<String, u64>,
}

fn new_id<F: Fn(&str) -> bool>(rng: &mut impl Rng, prefix: &str, taken: F) -> String {
    loop {
        let id = format!("{prefix}{}", random_string(rng, 5));
        if !taken(&id) {
            return id;
        }
    }
}

/// `validatePassword` of 2.6.3+: length (in runes), username, current password.
pub fn validate_password(
    username: &str,
    current: &str,
    new: &str,
    min_len: usize,
) -> Result<(), ApiError> {
    if new.chars().count() < min_len {
        return Err(ApiError::invalid_body(format!(
            "Password must be at least {min_len} characters"
        )));
    }
    if new == username {
        return Err(ApiError::invalid_body(
            "Password cannot be the same as username",
        ));
    }
    if new == current {
        return Err(ApiError::invalid_body(
            "The new password must not be the same as the current password",
        ));
    }
    Ok(())
}

impl Model {
    /// A model over `state`. If there is no user yet, the admin is created with
    /// `bootstrap_password`, or with a generated one, which is returned.
    pub fn open(
        mut state: State,
        cacerts: String,
        node_ready_ms: u64,
        bootstrap_password: Option<&str>,
        rng: &mut impl Rng,
        now: u64,
    ) -> (Model, Option<String>) {
        let mut generated = None;
        if state.users.is_empty() {
            let password = match bootstrap_password.filter(|p| !p.is_empty()) {
                Some(p) => p.to_string(),
                None => {
                    let p = random_string(rng, 54);
                    generated = Some(p.clone());
                    p
                }
            };
            let id = new_id(rng, "user-", |_| false);
            state.users.push(User {
                id,
                username: "admin".into(),
                display_name: "Default Admin".into(),
                must_change_password: generated.is_some() || password == "admin",
                password: PasswordHash::new(rng, &password),
                created_ms: now,
                uuid: random_uuid(rng),
            });
        }
        state.format = STATE_FORMAT;
        (
            Model {
                state,
                cacerts: cacerts.trim().to_string(),
                node_ready_ms,
                line: super::v1::Line::RKE1_LAST,
                knobs: super::v1::Knobs::default(),
                started_ms: now,
                agents_seen: std::collections::BTreeMap::new(),
            },
            generated,
        )
    }

    // ---- settings -------------------------------------------------------

    pub fn setting_default(name: &str) -> Option<&'static str> {
        SETTINGS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    /// `(value, default, source)` of a known setting.
    pub fn setting(&self, name: &str) -> Option<(String, &'static str, &'static str)> {
        let default = Self::setting_default(name)?;
        if name == "cacerts" {
            return Some((self.cacerts.clone(), default, "db"));
        }
        // what the running release fills in (§2.4: the KDM-derived
        // `rke2-default-version` / `k3s-default-version`)
        let derived = match name {
            "rke2-default-version" => Some(self.line.default_version(super::v1::Distro::Rke2)),
            "k3s-default-version" => Some(self.line.default_version(super::v1::Distro::K3s)),
            "server-version" => Some(self.line.version()),
            "agent-image" => Some(format!("rancher/rancher-agent:{}", self.line.version())),
            _ => None,
        };
        if let Some(v) = derived.filter(|_| self.state.settings.get(name).is_none_or(String::is_empty)) {
            return Some((v, default, "default"));
        }
        match self.state.settings.get(name).filter(|v| !v.is_empty()) {
            Some(v) => Some((v.clone(), default, "db")),
            None => Some((default.to_string(), default, "default")),
        }
    }

    fn setting_value(&self, name: &str) -> String {
        self.setting(name).map(|s| s.0).unwrap_or_default()
    }

    /// `PUT /v3/settings/<name>`.
    pub fn put_setting(&mut self, name: &str, value: Option<&str>) -> Result<(), ApiError> {
        if Self::setting_default(name).is_none() {
            return Err(ApiError::not_found(format!(
                "settings.management.cattle.io \"{name}\" not found"
            )));
        }
        if name == "cacerts" {
            return Err(ApiError::new(
                405,
                "MethodNotAllow",
                format!("{name} is readOnly"),
            ));
        }
        let value = value.ok_or_else(|| ApiError::server("value not found"))?;
        self.state
            .settings
            .insert(name.to_string(), value.to_string());
        Ok(())
    }

    fn password_min_length(&self) -> usize {
        self.setting_value("password-min-length")
            .trim()
            .parse()
            .unwrap_or(12)
    }

    // ---- users and tokens -----------------------------------------------

    pub fn user(&self, id: &str) -> Option<&User> {
        self.state.users.iter().find(|u| u.id == id)
    }

    fn new_token(&mut self, rng: &mut impl Rng, now: u64, token: Token) -> Token {
        let name = {
            let tokens = &self.state.tokens;
            new_id(rng, "token-", |id| tokens.iter().any(|t| t.name == id))
        };
        let token = Token {
            name,
            secret: random_string(rng, 54),
            uuid: random_uuid(rng),
            created_ms: now,
            ..token
        };
        self.state.tokens.push(token.clone());
        token
    }

    /// Local-provider login: a new session token, or 401 `authentication failed`.
    pub fn login(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        username: &str,
        password: &str,
        description: &str,
    ) -> Result<Token, ApiError> {
        let user = self
            .state
            .users
            .iter()
            .find(|u| u.username == username && u.password.verify(password))
            .ok_or_else(|| ApiError::unauthorized("authentication failed"))?;
        let template = Token {
            name: String::new(),
            secret: String::new(),
            user_id: user.id.clone(),
            is_derived: false,
            description: description.to_string(),
            ttl_ms: LOGIN_TTL_MS,
            cluster_id: None,
            created_ms: now,
            uuid: String::new(),
        };
        Ok(self.new_token(rng, now, template))
    }

    /// The token a bearer string `token-xxxxx:<secret>` stands for, if valid now.
    pub fn authenticate(&self, now: u64, bearer: &str) -> Option<&Token> {
        let (name, secret) = bearer.trim().split_once(':')?;
        self.state
            .tokens
            .iter()
            .find(|t| t.name == name && t.secret == secret && !t.expired(now))
            .filter(|t| self.user(&t.user_id).is_some())
    }

    /// `POST /v3/tokens`: a token derived from `from` (the caller's token).
    pub fn derive_token(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        from: &str,
        description: &str,
        ttl_ms: u64,
        cluster_id: Option<String>,
    ) -> Result<Token, ApiError> {
        let parent = self
            .state
            .tokens
            .iter()
            .find(|t| t.name == from)
            .ok_or_else(|| ApiError::unauthorized("No valid token cookie or auth header"))?;
        let ttl_ms = if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL_MS {
            MAX_TOKEN_TTL_MS
        } else {
            ttl_ms
        };
        // RMM_LOCAL_TOKEN_TTL_MS: a token that expires while the run goes on.
        let ttl_ms = self.knobs.token_ttl_ms.map_or(ttl_ms, |cap| ttl_ms.min(cap.max(1)));
        let template = Token {
            name: String::new(),
            secret: String::new(),
            user_id: parent.user_id.clone(),
            is_derived: true,
            description: description.to_string(),
            ttl_ms,
            cluster_id: cluster_id.filter(|c| !c.is_empty()),
            created_ms: now,
            uuid: String::new(),
        };
        Ok(self.new_token(rng, now, template))
    }

    /// `DELETE /v3/tokens/<id>` by the holder of `caller`.
    pub fn delete_token(&mut self, caller: &str, id: &str) -> Result<(), ApiError> {
        let caller = self.state.tokens.iter().find(|t| t.name == caller).cloned();
        let Some(caller) = caller else {
            return Err(ApiError::unauthorized(
                "No valid token cookie or auth header",
            ));
        };
        let Some(pos) = self
            .state
            .tokens
            .iter()
            .position(|t| t.name == id && t.user_id == caller.user_id)
        else {
            return Err(ApiError::not_found(format!("{id} not found")));
        };
        if caller.name == id && !caller.is_derived {
            return Err(ApiError::new(
                400,
                "ServerError",
                "Cannot delete token for current session. Use logout instead",
            ));
        }
        self.state.tokens.remove(pos);
        Ok(())
    }

    fn user_action_done(&mut self) {
        self.state
            .settings
            .insert("first-login".into(), "false".into());
    }

    /// `POST /v3/users?action=changepassword` for `user_id`, checks in the 2.6.3+ order.
    pub fn change_password(
        &mut self,
        rng: &mut impl Rng,
        user_id: &str,
        current: &str,
        new: &str,
    ) -> Result<(), ApiError> {
        if current.is_empty() {
            return Err(ApiError::invalid_body("must specify current password"));
        }
        if new.is_empty() {
            return Err(ApiError::invalid_body("invalid new password"));
        }
        let min = self.password_min_length();
        let user = self
            .user(user_id)
            .ok_or_else(|| ApiError::not_found("user not found"))?;
        validate_password(&user.username, current, new, min)?;
        if !user.password.verify(current) {
            return Err(ApiError::invalid_body("invalid current password"));
        }
        self.store_password(rng, user_id, new);
        Ok(())
    }

    /// Sets a (validated) password and ends the first-login state, as any
    /// user action does.
    fn store_password(&mut self, rng: &mut impl Rng, user_id: &str, new: &str) {
        let hash = PasswordHash::new(rng, new);
        let user = self.state.users.iter_mut().find(|u| u.id == user_id).expect("user exists");
        user.password = hash;
        user.must_change_password = false;
        self.user_action_done();
    }

    /// `POST /v3/users/<id>?action=setpassword` (no current password needed).
    pub fn set_password(
        &mut self,
        rng: &mut impl Rng,
        user_id: &str,
        new: &str,
    ) -> Result<(), ApiError> {
        let min = self.password_min_length();
        let user = self
            .user(user_id)
            .ok_or_else(|| ApiError::not_found(format!("users \"{user_id}\" not found")))?;
        if new.is_empty() {
            return Err(ApiError::invalid_body("invalid new password"));
        }
        validate_password(&user.username, "", new, min)?;
        self.store_password(rng, user_id, new);
        Ok(())
    }

    // ---- clusters ------------------------------------------------------

    pub fn cluster(&self, id: &str) -> Option<&Cluster> {
        self.state.clusters.iter().find(|c| c.id == id)
    }

    /// `POST /v3/clusters`: returns the new cluster's id. Like 2.6+, it also
    /// creates the cluster's `default-token` registration token.
    pub fn create_cluster(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        creator_id: &str,
        body: &Map<String, Value>,
    ) -> Result<String, ApiError> {
        let name = match body.get("name") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.trim(),
            Some(_) => return Err(ApiError::field("InvalidFormat", "name", "")),
        };
        if name.is_empty() {
            return Err(ApiError::field("MissingRequired", "Cluster name", ""));
        }
        if self
            .state
            .clusters
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(name))
        {
            return Err(ApiError::field("NotUnique", "Cluster name", ""));
        }
        // 2.15 deleted the v3 RKE1 field: norman drops it silently
        // (rancher-current.md §1.1).
        let dropped = |f: &str| f == "rancherKubernetesEngineConfig" && !self.line.has_rke1_field();
        let mut spec: Map<String, Value> = CLUSTER_SPEC_FIELDS
            .iter()
            .filter(|f| !dropped(f))
            .filter_map(|f| {
                body.get(*f)
                    .filter(|v| !v.is_null())
                    .map(|v| (f.to_string(), v.clone()))
            })
            .collect();
        if let Some(Value::Object(rke)) = spec.get_mut("rancherKubernetesEngineConfig") {
            let empty = rke
                .get("kubernetesVersion")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if empty {
                rke.insert(
                    "kubernetesVersion".into(),
                    Value::String(self.setting_value("k8s-version")),
                );
            }
        }
        let id = {
            let clusters = &self.state.clusters;
            new_id(rng, "c-", |id| clusters.iter().any(|c| c.id == id))
        };
        self.state.clusters.push(Cluster {
            id: id.clone(),
            name: name.to_string(),
            creator_id: creator_id.to_string(),
            created_ms: now,
            uuid: random_uuid(rng),
            spec,
        });
        self.add_registration_token(rng, now, &id, "default-token".into());
        Ok(id)
    }

    fn add_registration_token(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        cluster_id: &str,
        name: String,
    ) -> String {
        let rt = RegistrationToken {
            cluster_id: cluster_id.to_string(),
            name,
            token: random_string(rng, 54),
            created_ms: now,
            uuid: random_uuid(rng),
        };
        let id = rt.id();
        self.state.registration_tokens.push(rt);
        id
    }

    /// `POST /v3/clusterregistrationtokens`: returns `c-xxxxx:crt-xxxxx`.
    pub fn create_registration_token(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        cluster_id: Option<&str>,
    ) -> Result<String, ApiError> {
        let cluster_id = cluster_id
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ApiError::field("MissingRequired", "clusterId", ""))?;
        if self.cluster(cluster_id).is_none() && self.prov_by_mgmt(cluster_id).is_none() {
            return Err(ApiError::field("InvalidReference", "clusterId", ""));
        }
        let name = {
            let rts = &self.state.registration_tokens;
            new_id(rng, "crt-", |n| {
                rts.iter()
                    .any(|t| t.cluster_id == cluster_id && t.name == n)
            })
        };
        Ok(self.add_registration_token(rng, now, cluster_id, name))
    }

    pub fn registration_token(&self, id: &str) -> Option<&RegistrationToken> {
        self.state.registration_tokens.iter().find(|t| t.id() == id)
    }

    /// The commands the 2.6+ controller writes into a token's status: nothing
    /// until `server-url` is set.
    pub fn commands(&self, rt: &RegistrationToken) -> Commands {
        let server = root_url(&self.setting_value("server-url"));
        if server.is_empty() {
            return Commands::default();
        }
        // 2.12+ (and any v1 cluster): the system-agent installer.
        if !self.line.has_rke1() || self.prov_by_mgmt(&rt.cluster_id).is_some() {
            return self.system_agent_commands(rt, &server);
        }
        let checksum = if self.cacerts.is_empty() {
            String::new()
        } else {
            format!(
                " --ca-checksum {}",
                rmm_actors::ports::ca_checksum(&self.cacerts)
            )
        };
        let env_vars = self
            .cluster(&rt.cluster_id)
            .map(|c| agent_env_vars(c.spec.get("agentEnvVars")).iter().map(|(n, v)| format!("-e {n}={v}")).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let image = self.setting_value("agent-image");
        let node_command = format!(
            "sudo docker run -d --privileged --restart=unless-stopped --net=host \
             -v /etc/kubernetes:/etc/kubernetes -v /var/run:/var/run {env_vars} {image} \
             --server {server} --token {}{checksum}",
            rt.token
        );
        Commands::new(node_command, String::new(), &server, &rt.token, &rt.cluster_id)
    }

    // ---- nodes -----------------------------------------------------------

    /// What the tunnel server does when an agent connects: create the node, or
    /// update it if this hostname registered before. Returns the node id.
    pub fn register_node(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        token: &str,
        params: &RegisterParams,
    ) -> Result<String, ApiError> {
        let cluster_id = self
            .state
            .registration_tokens
            .iter()
            .find(|t| !token.is_empty() && t.token == token)
            .map(|t| t.cluster_id.clone())
            .filter(|c| self.cluster(c).is_some())
            .ok_or_else(|| ApiError::unauthorized("must authenticate"))?;
        let hostname = params.requested_hostname.trim();
        if hostname.is_empty() {
            return Err(ApiError::new(
                400,
                "InvalidBodyContent",
                "requestedHostname is required",
            ));
        }
        let cc = params.custom_config.clone().unwrap_or_default();
        let name = node_name(hostname);
        let mut roles = cc.roles.clone();
        for (on, role) in [
            (params.etcd, "etcd"),
            (params.control_plane, "controlplane"),
            (params.worker, "worker"),
        ] {
            if on && !roles.iter().any(|r| r == role) {
                roles.push(role.to_string());
            }
        }
        let has = |role: &str| roles.iter().any(|r| r == role);
        let (etcd, control_plane, worker) = (has("etcd"), has("controlplane"), has("worker"));
        // A node whose deletion is done is gone: registering again makes a new one.
        let (ready, gone) = (self.node_removal_ms(), now);
        self.state.nodes.retain(|n| !(n.cluster_id == cluster_id && n.name == name && n.deleting_ms.is_some_and(|at| gone >= at.saturating_add(ready))));
        let made = !self.state.nodes.iter().any(|n| n.cluster_id == cluster_id && n.name == name);
        self.state.count_registration(&cluster_id, hostname, made);
        let existing = self
            .state
            .nodes
            .iter_mut()
            .find(|n| n.cluster_id == cluster_id && n.name == name);
        match existing {
            Some(n) => {
                n.address = cc.address;
                n.internal_address = cc.internal_address;
                n.labels = cc.label;
                n.roles = roles;
                n.etcd = etcd;
                n.control_plane = control_plane;
                n.worker = worker;
                n.updated_ms = now;
                Ok(n.id())
            }
            None => {
                let node = Node {
                    cluster_id,
                    name,
                    requested_hostname: hostname.to_string(),
                    address: cc.address,
                    internal_address: cc.internal_address,
                    roles,
                    labels: cc.label,
                    etcd,
                    control_plane,
                    worker,
                    registered_ms: now,
                    updated_ms: now,
                    uuid: random_uuid(rng),
                    deleting_ms: None,
                };
                let id = node.id();
                self.state.nodes.push(node);
                Ok(id)
            }
        }
    }

    fn listed_at(&self, n: &Node) -> u64 {
        n.registered_ms.saturating_add(self.node_ready_ms)
    }

    /// The nodes `/v3/nodes` shows now (their agent has had time to come
    /// up; a deleted one until its removal is done).
    pub fn listed_nodes(&self, now: u64) -> impl Iterator<Item = &Node> {
        self.state
            .nodes
            .iter()
            .filter(move |n| self.listed_at(n) <= now && !self.node_gone(n, now))
    }

    /// Whether a deleted node's removal is done by `now`.
    pub fn node_gone(&self, n: &Node, now: u64) -> bool {
        n.deleting_ms.is_some_and(|at| now >= at.saturating_add(self.node_removal_ms()))
    }

    /// How long Rancher takes to let a deleted node go: as long as one
    /// takes to come up, and never no time at all.
    pub fn node_removal_ms(&self) -> u64 {
        self.node_ready_ms.max(200)
    }

    /// When the cluster became active: the moment the listed nodes first
    /// covered etcd, controlplane and worker. `None` while it is provisioning.
    pub fn cluster_active_since(&self, cluster_id: &str, now: u64) -> Option<u64> {
        let first = |pick: fn(&Node) -> bool| {
            self.listed_nodes(now)
                .filter(|n| n.cluster_id == cluster_id && pick(n))
                .map(|n| self.listed_at(n))
                .min()
        };
        let etcd = first(|n| n.etcd)?;
        let cp = first(|n| n.control_plane)?;
        let worker = first(|n| n.worker)?;
        Some(etcd.max(cp).max(worker))
    }
}

/// A cluster spec's `agentEnvVars` (`[{name, value}]`, in order) as pairs,
/// for the node commands the v3 and v1 tokens show.
pub fn agent_env_vars(vars: Option<&Value>) -> Vec<(String, String)> {
    vars.and_then(Value::as_array)
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    let name = v.get("name")?.as_str()?;
                    Some((name.to_string(), v.get("value").and_then(Value::as_str).unwrap_or("").to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn model(ready_ms: u64) -> (Model, StdRng) {
        let mut rng = StdRng::seed_from_u64(7);
        let (m, generated) = Model::open(
            State::default(),
            CA.into(),
            ready_ms,
            Some("bootstrap-pw"),
            &mut rng,
            1_000,
        );
        assert!(generated.is_none());
        (m, rng)
    }

    fn params(host: &str, etcd: bool, cp: bool, worker: bool) -> RegisterParams {
        RegisterParams {
            custom_config: Some(CustomConfig {
                address: "10.0.0.5".into(),
                internal_address: "10.0.0.5".into(),
                ..Default::default()
            }),
            etcd,
            control_plane: cp,
            worker,
            requested_hostname: host.into(),
        }
    }

    fn cluster_body(name: &str) -> Map<String, Value> {
        serde_json::json!({"name": name, "rancherKubernetesEngineConfig": {"kubernetesVersion": ""}})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn ids_have_the_rancher_shapes() {
        let mut rng = StdRng::seed_from_u64(1);
        let s = random_string(&mut rng, 54);
        assert_eq!(s.len(), 54);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        // md5("master01") = 1b0b0d0b...: check shape and determinism rather than a constant
        let n = node_name("master01");
        assert_eq!(n.len(), 2 + 12);
        assert!(n.starts_with("m-") && n[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(n, node_name("master01"));
        assert_ne!(n, node_name("master02"));
        assert_eq!(node_name("abc"), "m-900150983cd2");

        let (mut m, mut rng) = model(0);
        let user = m.state.users[0].id.clone();
        assert!(user.starts_with("user-") && user.len() == 10);
        let t = m
            .login(&mut rng, 2_000, "admin", "bootstrap-pw", "")
            .unwrap();
        assert!(t.name.starts_with("token-") && t.name.len() == 11);
        assert_eq!(t.secret.len(), 54);
        let c = m
            .create_cluster(&mut rng, 2_000, &user, &cluster_body("tiny"))
            .unwrap();
        assert!(
            c.starts_with("c-") && c.len() == 7 && c[2..].bytes().all(|b| ALPHABET.contains(&b))
        );
        let rt = m
            .create_registration_token(&mut rng, 2_000, Some(&c))
            .unwrap();
        assert!(rt.starts_with(&format!("{c}:crt-")) && rt.len() == c.len() + 1 + 9);
        assert!(m
            .registration_token(&format!("{c}:default-token"))
            .is_some());
        assert_eq!(m.registration_token(&rt).unwrap().token.len(), 54);
    }

    #[test]
    fn generated_bootstrap_password_only_at_first_creation() {
        let mut rng = StdRng::seed_from_u64(2);
        let (m, generated) = Model::open(State::default(), CA.into(), 0, None, &mut rng, 0);
        let pw = generated.unwrap();
        assert_eq!(pw.len(), 54);
        assert!(m.state.users[0].must_change_password);
        let (m2, again) = Model::open(
            m.state.clone(),
            CA.into(),
            0,
            Some("other-password"),
            &mut rng,
            0,
        );
        assert!(again.is_none());
        assert!(m2.state.users[0].password.verify(&pw));
        assert!(!m2.state.users[0].password.verify("other-password"));
    }

    #[test]
    fn login_and_tokens() {
        let (mut m, mut rng) = model(0);
        assert_eq!(
            m.login(&mut rng, 2_000, "admin", "nope", "").unwrap_err(),
            ApiError::unauthorized("authentication failed")
        );
        assert!(m
            .login(&mut rng, 2_000, "root", "bootstrap-pw", "")
            .is_err());
        let t = m
            .login(&mut rng, 2_000, "admin", "bootstrap-pw", "")
            .unwrap();
        assert_eq!(m.authenticate(2_000, &t.bearer()).unwrap().name, t.name);
        assert!(m
            .authenticate(2_000, &format!("{}:wrong", t.name))
            .is_none());
        assert!(
            m.authenticate(2_000 + LOGIN_TTL_MS, &t.bearer()).is_none(),
            "login tokens expire"
        );

        let d = m
            .derive_token(&mut rng, 3_000, &t.name, "rmm run 1", 0, None)
            .unwrap();
        assert!(d.is_derived);
        assert_eq!(d.ttl_ms, MAX_TOKEN_TTL_MS);
        assert_eq!(d.description, "rmm run 1");
        // a session cannot delete itself; a derived token can be deleted
        assert_eq!(m.delete_token(&t.name, &t.name).unwrap_err().status, 400);
        m.delete_token(&t.name, &d.name).unwrap();
        assert!(m.authenticate(3_000, &d.bearer()).is_none());
        assert_eq!(m.delete_token(&t.name, &d.name).unwrap_err().status, 404);
    }

    #[test]
    fn change_password_rules_in_order() {
        let (mut m, mut rng) = model(0);
        let uid = m.state.users[0].id.clone();
        let msg = |r: Result<(), ApiError>| {
            let e = r.unwrap_err();
            assert_eq!((e.status, e.code), (422, "InvalidBodyContent"));
            e.message
        };
        assert_eq!(
            msg(m.change_password(&mut rng, &uid, "", "x")),
            "must specify current password"
        );
        assert_eq!(
            msg(m.change_password(&mut rng, &uid, "bootstrap-pw", "")),
            "invalid new password"
        );
        // the length rule runs before the current password is checked
        assert_eq!(
            msg(m.change_password(&mut rng, &uid, "wrong", "short")),
            "Password must be at least 12 characters"
        );
        assert_eq!(
            msg(m.change_password(
                &mut rng,
                &uid,
                "wrong",
                "ünïcödé-1234".chars().take(11).collect::<String>().as_str()
            )),
            "Password must be at least 12 characters"
        );
        assert_eq!(
            msg(m.change_password(&mut rng, &uid, "bootstrap-pw", "bootstrap-pw")),
            "The new password must not be the same as the current password"
        );
        assert_eq!(
            msg(m.change_password(&mut rng, &uid, "wrong-current", "a-long-new-password")),
            "invalid current password"
        );
        assert_eq!(m.setting("first-login").unwrap().0, "true");
        // 12 runes, not bytes
        m.change_password(&mut rng, &uid, "bootstrap-pw", "ünïcödé-1234")
            .unwrap();
        assert!(m.state.users[0].password.verify("ünïcödé-1234"));
        assert_eq!(
            m.setting("first-login").unwrap(),
            ("false".to_string(), "true", "db")
        );
        // username rule, with a lower minimum
        m.put_setting("password-min-length", Some("2")).unwrap();
        assert_eq!(
            msg(m.change_password(&mut rng, &uid, "ünïcödé-1234", "admin")),
            "Password cannot be the same as username"
        );
    }

    #[test]
    fn settings() {
        let (mut m, _) = model(0);
        assert_eq!(
            m.setting("server-url").unwrap(),
            (String::new(), "", "default")
        );
        assert_eq!(m.setting("cacerts").unwrap().0, CA.trim());
        assert!(m.setting("nope").is_none());
        assert_eq!(
            m.put_setting("cacerts", Some("x")).unwrap_err().code,
            "MethodNotAllow"
        );
        assert_eq!(m.put_setting("nope", Some("x")).unwrap_err().status, 404);
        assert_eq!(m.put_setting("server-url", None).unwrap_err().status, 500);
        m.put_setting("server-url", Some("https://10.0.0.2"))
            .unwrap();
        assert_eq!(
            m.setting("server-url").unwrap(),
            ("https://10.0.0.2".to_string(), "", "db")
        );
        assert_eq!(
            root_url("https://10.0.0.2:8443/some/path"),
            "https://10.0.0.2:8443"
        );
    }

    #[test]
    fn clusters_names_are_unique_and_required() {
        let (mut m, mut rng) = model(0);
        m.create_cluster(&mut rng, 0, "u", &cluster_body("Tiny"))
            .unwrap();
        let e = m
            .create_cluster(&mut rng, 0, "u", &cluster_body("tINY"))
            .unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field_name.as_deref()),
            (422, "NotUnique", Some("Cluster name"))
        );
        let e = m
            .create_cluster(&mut rng, 0, "u", &cluster_body(" "))
            .unwrap_err();
        assert_eq!((e.status, e.code), (422, "MissingRequired"));
        let c = &m.state.clusters[0];
        assert_eq!(
            c.spec["rancherKubernetesEngineConfig"]["kubernetesVersion"],
            DEFAULT_K8S_VERSION
        );
        assert_eq!(
            m.create_registration_token(&mut rng, 0, Some("c-nope0"))
                .unwrap_err()
                .code,
            "InvalidReference"
        );
    }

    #[test]
    fn node_command_waits_for_server_url() {
        let (mut m, mut rng) = model(0);
        let c = m
            .create_cluster(&mut rng, 0, "u", &cluster_body("tiny"))
            .unwrap();
        let id = m.create_registration_token(&mut rng, 0, Some(&c)).unwrap();
        let rt = m.registration_token(&id).unwrap().clone();
        assert_eq!(m.commands(&rt), Commands::default());
        m.put_setting("server-url", Some("https://10.0.0.2/"))
            .unwrap();
        let cmds = m.commands(&rt);
        let sum = rmm_actors::ports::ca_checksum(CA.trim());
        assert_eq!(
            cmds.node_command,
            format!(
                "sudo docker run -d --privileged --restart=unless-stopped --net=host -v /etc/kubernetes:/etc/kubernetes \
                 -v /var/run:/var/run  rancher/rancher-agent:v2.11.3 --server https://10.0.0.2 --token {} --ca-checksum {sum}",
                rt.token
            )
        );
        assert_eq!(
            cmds.manifest_url,
            format!("https://10.0.0.2/v3/import/{}_{c}.yaml", rt.token)
        );
    }

    #[test]
    fn cluster_activates_once_listed_nodes_cover_all_roles() {
        let (mut m, mut rng) = model(500);
        let c = m
            .create_cluster(&mut rng, 0, "u", &cluster_body("tiny"))
            .unwrap();
        let token = m.state.registration_tokens[0].token.clone();
        assert_eq!(
            m.register_node(
                &mut rng,
                1_000,
                "bad",
                &params("master01", true, true, false)
            )
            .unwrap_err()
            .status,
            401
        );
        let master = m
            .register_node(
                &mut rng,
                1_000,
                &token,
                &params("master01", true, true, false),
            )
            .unwrap();
        assert_eq!(master, format!("{c}:{}", node_name("master01")));
        assert_eq!(
            m.listed_nodes(1_499).count(),
            0,
            "not listed before the agent is up"
        );
        assert_eq!(m.listed_nodes(1_500).count(), 1);
        assert_eq!(m.cluster_active_since(&c, 10_000), None, "no worker yet");
        m.register_node(
            &mut rng,
            2_000,
            &token,
            &params("worker01", false, false, true),
        )
        .unwrap();
        assert_eq!(m.cluster_active_since(&c, 2_499), None);
        assert_eq!(m.cluster_active_since(&c, 2_500), Some(2_500));
        // registering again updates, never duplicates, and keeps the first registration time
        let again = m
            .register_node(
                &mut rng,
                9_000,
                &token,
                &params("master01", true, true, false),
            )
            .unwrap();
        assert_eq!(again, master);
        assert_eq!(m.state.nodes.len(), 2);
        // ... which the registration ledger counts as a call, not a node made
        let key = |n: &str| format!("{c}/{n}");
        assert_eq!(m.state.registration_calls.get(&key("master01")), Some(&2));
        assert_eq!(m.state.registrations.get(&key("master01")), Some(&1));
        assert_eq!(m.state.registrations.get(&key("worker01")), Some(&1));
        assert_eq!(m.cluster_active_since(&c, 9_000), Some(2_500));
        // an all-roles node alone is enough
        let c2 = m
            .create_cluster(&mut rng, 0, "u", &cluster_body("solo"))
            .unwrap();
        let t2 = m
            .state
            .registration_tokens
            .iter()
            .find(|t| t.cluster_id == c2)
            .unwrap()
            .token
            .clone();
        let mut p = params("solo01", false, false, false);
        p.custom_config.as_mut().unwrap().roles =
            vec!["etcd".into(), "controlplane".into(), "worker".into()];
        m.register_node(&mut rng, 0, &t2, &p).unwrap();
        assert_eq!(m.cluster_active_since(&c2, 500), Some(500));
    }
}

