//! Rancher 2.12–2.15: RKE2/K3s custom clusters through the v1 (Steve) API,
//! the system-agent registration (`/v3/connect/agent`), CAPI machines and
//! the planner, all on the controllers' own clock.
//!
//! Every fact comes from `reference/rancher-current.md` (cited as §n);
//! where the sheet is silent the choice is said in a comment.
//!
//! Like the RKE1 side, nothing runs in the background: a controller's work
//! is a point in time computed from the stored timestamps, so a read at
//! `now` sees exactly what the controllers would have done by then, and a
//! restart from disk continues the same timeline.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::model::{random_string, random_uuid, ApiError, Commands, Model, RegistrationToken};
use super::render::rfc3339;

// ---- Rancher lines --------------------------------------------------------------

/// A Rancher minor line, 2.6 to 2.15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub minor: u32,
}

impl Line {
    /// The last line with RKE1 (§1.1).
    pub const RKE1_LAST: Line = Line { minor: 11 };
    /// The newest line the fact sheet covers (§1.2): the default.
    pub const NEWEST: Line = Line { minor: 15 };

    /// `2.15`, `v2.15`, `2.15.1` or `v2.15.1`.
    pub fn parse(s: &str) -> Result<Line, String> {
        let t = s.trim().trim_start_matches('v');
        let mut parts = t.split('.');
        let major = parts.next().and_then(|p| p.parse::<u32>().ok());
        let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
        match (major, minor) {
            (Some(2), Some(minor @ 6..=15)) => Ok(Line { minor }),
            _ => Err(format!("{s:?} is not a Rancher line the emulator knows (2.6 to 2.15)")),
        }
    }

    /// The line of an image tag, `rancher/rancher:v2.15.1` → 2.15.
    pub fn from_image(image: &str) -> Option<Line> {
        let no_digest = image.split('@').next().unwrap_or(image);
        let (_, tag) = no_digest.rsplit_once(':')?;
        if tag.contains('/') {
            return None;
        }
        Line::parse(tag.split('-').next().unwrap_or(tag)).ok()
    }

    /// The release it reports: the latest patch the fact sheet saw (§1.2);
    /// 2.11.3 is the release rmm's RKE1 path was built against.
    pub fn version(&self) -> String {
        match self.minor {
            11 => "v2.11.3".into(),
            12 => "v2.12.12".into(),
            13 => "v2.13.8".into(),
            14 => "v2.14.4".into(),
            15 => "v2.15.1".into(),
            m => format!("v2.{m}.0"),
        }
    }

    /// RKE1 provisioning (v3 `rancherKubernetesEngineConfig`, the
    /// rancher-agent and `/v3/connect/register`) exists up to 2.11 (§1.1).
    pub fn has_rke1(&self) -> bool {
        self.minor <= 11
    }
    /// The v3 field still exists (inert) up to 2.14; 2.15 deleted it (§1.1).
    pub fn has_rke1_field(&self) -> bool {
        self.minor <= 14
    }
    /// 2.12–2.14 refuse to start while an RKE1 cluster exists (§1.1).
    pub fn refuses_rke1_at_start(&self) -> bool {
        (12..=14).contains(&self.minor)
    }
    /// `POST /v1-public/login` from 2.13.0 (§2.2).
    pub fn has_v1_public_login(&self) -> bool {
        self.minor >= 13
    }

    /// Kubernetes minors the line offers. The chart caps are 2.12 `<1.34`,
    /// 2.13 `<1.35`, 2.14 `<1.36`, 2.15 `<1.37`, and 2.14 supports
    /// 1.33–1.35 (§1.2): three minors ending below the cap.
    pub fn k8s_minors(&self) -> std::ops::RangeInclusive<u32> {
        let hi = self.minor + 21;
        hi - 2..=hi
    }

    /// The versions its channel server offers for `distro`, oldest first.
    /// The patch levels are the emulator's own (the sheet gives only
    /// 2.15's embedded `v1.36.1+k3s1`, §3.1).
    pub fn offered(&self, distro: Distro) -> Vec<String> {
        let hi = *self.k8s_minors().end();
        self.k8s_minors()
            .map(|m| {
                let patch = match hi - m {
                    0 => 1,
                    1 => 4,
                    _ => 8,
                };
                match distro {
                    Distro::Rke2 => format!("v1.{m}.{patch}+rke2r1"),
                    Distro::K3s => format!("v1.{m}.{patch}+k3s1"),
                }
            })
            .collect()
    }

    /// `rke2-default-version` / `k3s-default-version` (§2.4): the newest.
    pub fn default_version(&self, distro: Distro) -> String {
        self.offered(distro).pop().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    Rke2,
    K3s,
}

impl Distro {
    /// The suffix of `kubernetesVersion` selects the distribution (§2.4).
    pub fn of_version(v: &str) -> Option<Distro> {
        if v.contains("+rke2") {
            Some(Distro::Rke2)
        } else if v.contains("+k3s") {
            Some(Distro::K3s)
        } else {
            None
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Distro::Rke2 => "rke2",
            Distro::K3s => "k3s",
        }
    }
}

// ---- knobs ----------------------------------------------------------------------

/// Controller delays and injected failures, from `RMM_LOCAL_*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Knobs {
    /// `RMM_LOCAL_CLUSTER_NAME_MS`: create → `status.clusterName`.
    pub cluster_name_ms: u64,
    /// `RMM_LOCAL_DEFAULT_TOKEN_MS`: `clusterName` → `default-token` exists.
    pub default_token_ms: u64,
    /// `RMM_LOCAL_PLANNER_MS`: one planner step (plan applied, probes, …).
    pub planner_ms: u64,
    /// `RMM_LOCAL_LOGIN_WINDOW_MS`: after it starts serving, `/ping`
    /// answers but logins fail for this long.
    pub login_window_ms: u64,
    /// `RMM_LOCAL_WEBHOOK_WINDOW_MS`: after it starts serving, the webhook
    /// is not ready for this long (creates refused, `/v1` reads fail).
    pub webhook_window_ms: u64,
    /// `RMM_LOCAL_CLUSTER_ERROR=MESSAGE`: once every role is registered,
    /// the cluster goes to an error with this message.
    pub cluster_error: Option<String>,
    /// `RMM_LOCAL_TOKEN_TTL_MS`: API tokens live at most this long.
    pub token_ttl_ms: Option<u64>,
    /// `RMM_LOCAL_CRT_TTL_MS`: on 2.13+ the `default-token` of a v1
    /// cluster rotates this often; the previous one stays valid for one
    /// more period (its grace period). §2.6: `spec.ttl` / `gracePeriod`
    /// from 2.13.8 / 2.14.4 / 2.15.0 (default 30 days; off here).
    pub crt_ttl_ms: Option<u64>,
    /// `RMM_LOCAL_MACHINE_ERROR=NODE:MESSAGE`: once the planner starts,
    /// that node's machine goes to `Failed` with this message.
    pub machine_error: Option<(String, String)>,
    /// `RMM_LOCAL_DELETE_MS`: a DELETE of a v1 cluster → its management
    /// cluster gone (half of it) → the v1 cluster gone (all of it).
    pub delete_ms: u64,
}

pub const DEFAULT_CLUSTER_NAME_MS: u64 = 300;
pub const DEFAULT_DEFAULT_TOKEN_MS: u64 = 300;
pub const DEFAULT_PLANNER_MS: u64 = 150;
pub const DEFAULT_LOGIN_WINDOW_MS: u64 = 300;
pub const DEFAULT_WEBHOOK_WINDOW_MS: u64 = 600;
pub const DEFAULT_DELETE_MS: u64 = 400;

impl Knobs {
    /// Small delays, so a default `rmm up` on the local world takes seconds.
    /// The start-up windows only on 2.12+ (the RKE1 line keeps its old,
    /// immediate behaviour, which the RKE1 suite was built on).
    pub fn defaults(line: Line) -> Knobs {
        let windows = !line.has_rke1();
        Knobs {
            cluster_name_ms: DEFAULT_CLUSTER_NAME_MS,
            default_token_ms: DEFAULT_DEFAULT_TOKEN_MS,
            planner_ms: DEFAULT_PLANNER_MS,
            login_window_ms: if windows { DEFAULT_LOGIN_WINDOW_MS } else { 0 },
            webhook_window_ms: if windows { DEFAULT_WEBHOOK_WINDOW_MS } else { 0 },
            cluster_error: None,
            token_ttl_ms: None,
            crt_ttl_ms: None,
            machine_error: None,
            delete_ms: DEFAULT_DELETE_MS,
        }
    }

    /// The defaults overridden by the environment.
    /// `RMM_LOCAL_SLOW_CONTROLLER_MS` is added to every controller delay.
    pub fn from_env(line: Line) -> anyhow::Result<Knobs> {
        Knobs::from_lookup(line, |name| std::env::var(name).ok())
    }

    /// [`Knobs::from_env`] over any lookup.
    pub fn from_lookup(line: Line, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Knobs> {
        let ms = |name: &str| -> anyhow::Result<Option<u64>> {
            match get(name) {
                Some(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number of milliseconds")),
                _ => Ok(None),
            }
        };
        let mut k = Knobs::defaults(line);
        let slow = ms("RMM_LOCAL_SLOW_CONTROLLER_MS")?.unwrap_or(0);
        k.cluster_name_ms = ms("RMM_LOCAL_CLUSTER_NAME_MS")?.unwrap_or(k.cluster_name_ms) + slow;
        k.default_token_ms = ms("RMM_LOCAL_DEFAULT_TOKEN_MS")?.unwrap_or(k.default_token_ms) + slow;
        k.planner_ms = ms("RMM_LOCAL_PLANNER_MS")?.unwrap_or(k.planner_ms) + slow;
        k.login_window_ms = ms("RMM_LOCAL_LOGIN_WINDOW_MS")?.unwrap_or(k.login_window_ms);
        k.webhook_window_ms = ms("RMM_LOCAL_WEBHOOK_WINDOW_MS")?.unwrap_or(k.webhook_window_ms);
        k.token_ttl_ms = ms("RMM_LOCAL_TOKEN_TTL_MS")?;
        k.delete_ms = ms("RMM_LOCAL_DELETE_MS")?.unwrap_or(k.delete_ms) + slow;
        k.crt_ttl_ms = ms("RMM_LOCAL_CRT_TTL_MS")?.filter(|t| *t > 0);
        k.cluster_error = get("RMM_LOCAL_CLUSTER_ERROR").filter(|v| !v.trim().is_empty());
        k.machine_error = get("RMM_LOCAL_MACHINE_ERROR")
            .and_then(|v| v.split_once(':').map(|(n, m)| (n.trim().to_string(), m.trim().to_string())))
            .filter(|(n, m)| !n.is_empty() && !m.is_empty());
        Ok(k)
    }
}

// ---- objects ---------------------------------------------------------------------

/// A `provisioning.cattle.io/v1` Cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvCluster {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created_ms: u64,
    pub generation: u64,
    /// `c-m-xxxxxxxx`, chosen at create, shown once the controller ran.
    pub mgmt_id: String,
    pub creator_id: String,
    pub spec: Value,
    pub labels: Map<String, Value>,
    pub annotations: Map<String, Value>,
    /// When a DELETE asked for its removal (`metadata.deletionTimestamp`).
    /// Rancher's remove handler then deletes the management cluster and
    /// lets the object go only once that is gone: neither is gone at once.
    #[serde(default)]
    pub deleting_ms: Option<u64>,
}

impl ProvCluster {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    pub fn k8s_version(&self) -> &str {
        self.spec.get("kubernetesVersion").and_then(Value::as_str).unwrap_or("")
    }
    fn custom(&self) -> bool {
        self.spec.get("rkeConfig").is_some_and(|r| !r.is_null())
    }
}

/// A CAPI Machine of a custom cluster (with its `CustomMachine`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// `custom-<12 hex>` (§2.8).
    pub name: String,
    pub namespace: String,
    /// The provisioning cluster's name.
    pub cluster: String,
    /// `X-Cattle-Id` of the system-agent that registered it.
    pub system_agent_id: String,
    pub node_name: String,
    pub address: String,
    pub internal_address: String,
    /// The TCP peer address the registration came from (what the server
    /// saw, not what the agent claims): shown as the annotation
    /// [`PEER_ANNOTATION`], so tests can tell each node registered from
    /// its own address.
    #[serde(default)]
    pub peer: String,
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    pub labels: BTreeMap<String, String>,
    pub registered_ms: u64,
    /// When its system-agent first read its plan secret.
    pub checked_in_ms: Option<u64>,
    /// The agent's credential (in the connection info's kubeconfig).
    pub plan_token: String,
    pub uid: String,
    /// When a DELETE asked for its removal (`metadata.deletionTimestamp`):
    /// it stays, phase `Deleting`, while its finalizer runs (CAPI drains
    /// and deletes the Kubernetes node), and is gone (404) `delete_ms`
    /// later. Kubernetes keeps an object with finalizers until they are
    /// done (https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/).
    #[serde(default)]
    pub deleting_ms: Option<u64>,
}

impl Machine {
    pub fn plan_secret(&self) -> String {
        format!("{}-machine-plan", self.name)
    }
}

/// How long a system-agent's service may go without checking in before
/// its machine is not Ready (the real node-monitor grace period is 40 s:
/// this is stricter). Not less than 10 s: the service checks in every
/// second, but on a loaded machine one check-in (a 5 s timeout) can take
/// seconds, and a Rancher that just came back answers slowly; a shorter
/// grace made a healthy cluster flap not-ready (the docker SIGKILL test).
pub const AGENT_GRACE_MS: u64 = 10_000;

/// What the installer sends to `/v3/connect/agent` (§2.7).
#[derive(Debug, Clone, Default)]
pub struct AgentHeaders {
    pub id: String,
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    pub node_name: String,
    pub address: String,
    pub internal_address: String,
    pub labels: Vec<String>,
    /// The connection's peer address (see [`Machine::peer`]).
    pub peer: String,
}

/// The emulator's own annotation on a CAPI machine: the address its
/// registration came from (not something real Rancher shows).
pub const PEER_ANNOTATION: &str = "emulator.rmm.io/registered-from";

// ---- messages -------------------------------------------------------------------

/// Planner messages (§2.8; `pkg/capr/planner/store.go`, `planner.go`).
pub const MSG_WAIT_ROLES: &str = "waiting for at least one control plane, etcd, and worker node to be registered";
pub const MSG_CHECK_IN: &str = "waiting for agent to check in and apply initial plan";
pub const MSG_PLAN: &str = "waiting for plan to be applied";
pub const MSG_CLUSTER_AGENT: &str = "waiting for cluster agent to connect";
pub const MSG_BOOTSTRAP_ETCD: &str = "waiting for bootstrap etcd to be available";
pub const MSG_ETCD: &str = "waiting for etcd to be available";
pub const MSG_CONTROL_PLANE: &str = "waiting for control plane to be available";
/// §2.7: an unoffered version is accepted and fails later in the planner.
pub const MSG_NO_RELEASE: &str = "could not find release data";

/// The webhook's error while it is not up (§2.1, §7.1; rancher#51273,
/// #41095): k8s `InternalError`, 500.
pub fn webhook_not_ready() -> ApiError {
    ApiError::new(
        500,
        "InternalError",
        "Internal error occurred: failed calling webhook \"rancher.cattle.io.clusters.provisioning.cattle.io\": \
         failed to call webhook: Post \"https://rancher-webhook.cattle-system.svc:443/v1/webhook/mutation/clusters.provisioning.cattle.io?timeout=10s\": \
         no endpoints available for service \"rancher-webhook\"",
    )
}

/// The name rule of rancher-webhook, text verbatim (§2.4).
pub const NAME_RULE: &str = "cluster name must be between 2 and 63 characters, must not begin with a hyphen, cannot be \"local\" nor of the form \"c-xxxxx\", and can only contain lowercase alphanumeric characters or ' - '";

fn valid_name(n: &str) -> bool {
    let c_form = n.len() == 7 && n.starts_with("c-");
    (2..=63).contains(&n.len())
        && !n.starts_with('-')
        && n != "local"
        && !c_form
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `v` + semver (the mutating webhook's shape check, §2.7).
fn version_shape(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else { return false };
    let core = rest.split(['+', '-']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

// ---- the timeline -------------------------------------------------------------------

/// One machine as the planner has it at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    /// CAPI phase: `Pending`, `Provisioning`, `Running` (§2.8).
    pub phase: &'static str,
    pub message: String,
    pub running_ms: Option<u64>,
}

/// A cluster as its controllers have it at `now`.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// `status.clusterName` is set.
    pub named: bool,
    pub message: String,
    pub error: Option<String>,
    /// Bootstrap done: `Provisioned=True`.
    pub provisioned: bool,
    pub ready: bool,
    pub ready_ms: Option<u64>,
    /// Index into `state.machines` → view.
    pub machines: Vec<(usize, MachineView)>,
}

fn probes(m: &Machine, distro: Distro) -> String {
    let mut p = vec![];
    if distro == Distro::Rke2 {
        p.push("calico");
    }
    if m.etcd {
        p.push("etcd");
    }
    if m.control_plane {
        p.extend(["kube-apiserver", "kube-controller-manager", "kube-scheduler"]);
    }
    p.push("kubelet");
    format!("waiting for probes: {}", p.join(", "))
}

impl Model {
    /// Whether `pc`'s management cluster is gone by `now` (it was deleted).
    pub fn mgmt_gone(&self, pc: &ProvCluster, now: u64) -> bool {
        pc.deleting_ms.is_some_and(|at| now >= at + self.knobs.delete_ms / 2)
    }

    /// Removes the v1 clusters whose deletion has finished by `now`, with
    /// their machines and registration tokens. `true` when any went.
    pub fn purge_deleted(&mut self, now: u64) -> bool {
        let delay = self.knobs.delete_ms;
        let gone: Vec<(String, String, String)> = self
            .state
            .prov_clusters
            .iter()
            .filter(|c| c.deleting_ms.is_some_and(|at| now >= at + delay))
            .map(|c| (c.namespace.clone(), c.name.clone(), c.mgmt_id.clone()))
            .collect();
        for (ns, name, mgmt) in &gone {
            self.state.prov_clusters.retain(|c| !(c.namespace == *ns && c.name == *name));
            self.state.machines.retain(|x| !(x.namespace == *ns && x.cluster == *name));
            self.state.registration_tokens.retain(|t| t.cluster_id != *mgmt);
        }
        !gone.is_empty()
    }

    /// Any deletion whose end is due by `now`.
    pub fn deletion_due(&self, now: u64) -> bool {
        let delay = self.knobs.delete_ms;
        self.state.prov_clusters.iter().any(|c| c.deleting_ms.is_some_and(|at| now >= at + delay))
    }

    pub fn prov(&self, ns: &str, name: &str) -> Option<&ProvCluster> {
        self.state.prov_clusters.iter().find(|c| c.namespace == ns && c.name == name)
    }

    /// The v1 cluster whose management cluster is `id` (even before the
    /// controller shows the name).
    pub fn prov_by_mgmt(&self, id: &str) -> Option<&ProvCluster> {
        self.state.prov_clusters.iter().find(|c| c.mgmt_id == id)
    }

    fn named_at(&self, pc: &ProvCluster) -> u64 {
        pc.created_ms + self.knobs.cluster_name_ms
    }

    /// The default-token's creation: after the management cluster exists.
    fn token_at(&self, pc: &ProvCluster) -> u64 {
        self.named_at(pc) + self.knobs.default_token_ms
    }

    /// A registration token as it is at `now`: rotated every
    /// `crt_ttl_ms` (v1 clusters, 2.13+), else as made.
    pub fn crt_at(&self, rt: &RegistrationToken, now: u64) -> RegistrationToken {
        let mut shown = rt.clone();
        if let Some(k) = self.crt_epoch(rt, now) {
            shown.token = rotated_token(&rt.token, k);
        }
        shown
    }

    fn crt_epoch(&self, rt: &RegistrationToken, now: u64) -> Option<u64> {
        let ttl = self.knobs.crt_ttl_ms?;
        if !self.line.has_v1_public_login() || self.prov_by_mgmt(&rt.cluster_id).is_none() {
            return None;
        }
        Some(now.saturating_sub(rt.created_ms) / ttl)
    }

    /// Does `token` register with `rt` at `now`: the current one, or the
    /// previous one within its grace period.
    fn crt_accepts(&self, rt: &RegistrationToken, token: &str, now: u64) -> bool {
        match self.crt_epoch(rt, now) {
            None => rt.token == token,
            Some(k) => rotated_token(&rt.token, k) == token || (k > 0 && rotated_token(&rt.token, k - 1) == token),
        }
    }

    /// `POST /v1/provisioning.cattle.io.clusters`. Returns its id.
    pub fn create_prov_cluster(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        creator_id: &str,
        body: &Value,
        ns_in_path: Option<&str>,
    ) -> Result<String, ApiError> {
        if now < self.started_ms + self.knobs.webhook_window_ms {
            return Err(webhook_not_ready());
        }
        let meta = body.get("metadata").cloned().unwrap_or(json!({}));
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .or(ns_in_path)
            .filter(|n| !n.is_empty())
            .unwrap_or("fleet-default")
            .to_string();
        if name.is_empty() {
            return Err(ApiError::new(422, "Invalid", "metadata.name: Required value: name is required"));
        }
        if !valid_name(&name) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("admission webhook \"rancher.cattle.io.clusters.provisioning.cattle.io\" denied the request: {NAME_RULE}"),
            ));
        }
        if self.prov(&ns, &name).is_some() {
            return Err(already_exists(&name));
        }
        let spec = body.get("spec").cloned().filter(Value::is_object).unwrap_or(json!({}));
        let version = spec.get("kubernetesVersion").and_then(Value::as_str).unwrap_or("");
        if !version.is_empty() && !version_shape(version) {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: admission webhook \"rancher.cattle.io.clusters.provisioning.cattle.io\" failed: {version:?} is not a valid semver version"),
            ));
        }
        let mgmt_id = loop {
            let id = format!("c-m-{}", random_string(rng, 8));
            if self.prov_by_mgmt(&id).is_none() {
                break id;
            }
        };
        let mut annotations = meta.get("annotations").and_then(Value::as_object).cloned().unwrap_or_default();
        // the webhook sets the creator (§2.4)
        annotations.insert("field.cattle.io/creatorId".into(), json!(creator_id));
        let pc = ProvCluster {
            namespace: ns,
            name,
            uid: random_uuid(rng),
            created_ms: now,
            generation: 1,
            mgmt_id: mgmt_id.clone(),
            creator_id: creator_id.to_string(),
            spec,
            labels: meta.get("labels").and_then(Value::as_object).cloned().unwrap_or_default(),
            annotations,
            deleting_ms: None,
        };
        let token_at = self.token_at(&pc);
        let id = pc.id();
        self.state.prov_clusters.push(pc);
        // The controller's `createToken()` (§2.6); it shows from `token_at` on.
        self.state.registration_tokens.push(RegistrationToken {
            cluster_id: mgmt_id,
            name: "default-token".into(),
            token: random_string(rng, 54),
            created_ms: token_at,
            uuid: random_uuid(rng),
        });
        Ok(id)
    }

    /// `nodeCommand` / `insecureNodeCommand` exactly as
    /// `clusterregistrationtoken/status.go` writes them (§2.6): a leading
    /// `<ENV>` (empty: a leading space) and `sudo <ENV> sh` (two spaces).
    pub fn system_agent_commands(&self, rt: &RegistrationToken, server: &str) -> Commands {
        let env = self
            .prov_by_mgmt(&rt.cluster_id)
            .map(|pc| {
                super::model::agent_env_vars(pc.spec.get("agentEnvVars")).iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect::<Vec<_>>().join(" ")
            })
            .unwrap_or_default();
        let checksum = if self.cacerts.is_empty() {
            String::new()
        } else {
            format!(" --ca-checksum {}", rmm_actors::ports::ca_checksum(&self.cacerts))
        };
        let tail = format!(
            "/system-agent-install.sh | sudo {env} sh -s - --server {server} --label 'cattle.io/os=linux' --token {}{checksum}",
            rt.token
        );
        Commands::new(
            format!("{env} curl -fL {server}{tail}"),
            format!("{env} curl --insecure -fL {server}{tail}"),
            server,
            &rt.token,
            &rt.cluster_id,
        )
    }

    /// `GET /v3/connect/agent` with a registration token: the configserver
    /// creates (or finds) the custom machine. Returns its index.
    pub fn connect_agent(
        &mut self,
        rng: &mut impl Rng,
        now: u64,
        token: &str,
        h: &AgentHeaders,
    ) -> Result<usize, ApiError> {
        let rt = self
            .state
            .registration_tokens
            .iter()
            .find(|t| !token.is_empty() && t.created_ms <= now && self.crt_accepts(t, token, now))
            .ok_or_else(|| ApiError::unauthorized("must authenticate"))?;
        let pc = self
            .prov_by_mgmt(&rt.cluster_id)
            .filter(|pc| pc.custom())
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("clusters.provisioning.cattle.io for \"{}\" not found", rt.cluster_id)))?;
        if h.id.trim().is_empty() {
            return Err(ApiError::new(400, "BadRequest", "missing X-Cattle-Id"));
        }
        // machineRequestSecretName: `custom-` + 12 hex of the agent's id (§2.8)
        let name = {
            use sha2::{Digest, Sha256};
            let d = hex::encode(Sha256::digest(h.id.trim().as_bytes()));
            format!("custom-{}", &d[..12])
        };
        let node_name = if h.node_name.is_empty() { name.clone() } else { h.node_name.to_lowercase() };
        let mut labels: BTreeMap<String, String> = h
            .labels
            .iter()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        // §2.8 labels; `rke.cattle.io/node-name` is `NodeNameLabel` of
        // rancher's `pkg/capr/common.go` (not in the sheet).
        labels.insert("cluster.x-k8s.io/cluster-name".into(), pc.name.clone());
        labels.insert("rke.cattle.io/node-name".into(), node_name.clone());
        for (on, l) in [
            (h.etcd, "rke.cattle.io/etcd-role"),
            (h.control_plane, "rke.cattle.io/control-plane-role"),
            (h.worker, "rke.cattle.io/worker-role"),
        ] {
            if on {
                labels.insert(l.into(), "true".into());
            }
        }
        let delay = self.knobs.delete_ms;
        self.state.machines.retain(|m| m.deleting_ms.is_none_or(|at| now < at + delay));
        let known = self.state.machines.iter().position(|m| m.name == name && m.namespace == pc.namespace);
        self.state.count_registration(&pc.name, &node_name, known.is_none());
        if let Some(i) = known {
            let m = &mut self.state.machines[i];
            m.address = h.address.clone();
            m.internal_address = h.internal_address.clone();
            m.peer = h.peer.clone();
            return Ok(i);
        }
        self.state.machines.push(Machine {
            name,
            namespace: pc.namespace.clone(),
            cluster: pc.name.clone(),
            system_agent_id: h.id.trim().to_string(),
            node_name,
            address: h.address.clone(),
            internal_address: h.internal_address.clone(),
            peer: h.peer.clone(),
            etcd: h.etcd,
            control_plane: h.control_plane,
            worker: h.worker,
            labels,
            registered_ms: now,
            checked_in_ms: None,
            plan_token: random_string(rng, 54),
            uid: random_uuid(rng),
            deleting_ms: None,
        });
        Ok(self.state.machines.len() - 1)
    }

    /// The system-agent reads its plan secret with its own credential:
    /// the machine has checked in. False if the credential is unknown.
    pub fn check_in(&mut self, now: u64, bearer: &str, secret: &str) -> bool {
        match self.state.machines.iter_mut().find(|m| m.plan_token == bearer && m.plan_secret() == secret) {
            Some(m) => {
                m.checked_in_ms.get_or_insert(now);
                true
            }
            None => false,
        }
    }

    /// The system-agent's service checked in (`?watch=true`, every second
    /// while it runs): it is there. False if the credential is unknown.
    pub fn agent_seen(&mut self, now: u64, bearer: &str, secret: &str) -> bool {
        let Some(m) = self.state.machines.iter().find(|m| m.plan_token == bearer && m.plan_secret() == secret) else { return false };
        self.agents_seen.insert(m.name.clone(), now);
        true
    }

    /// Since when machine `m`'s system-agent is away: its service checked
    /// in before (so it runs one) and has not for [`AGENT_GRACE_MS`].
    pub fn agent_lost(&self, m: &Machine, now: u64) -> Option<u64> {
        self.agents_seen.get(&m.name).map(|seen| seen + AGENT_GRACE_MS).filter(|lost| *lost <= now)
    }

    /// What the controllers and the planner have done for `pc` by `now`:
    /// the live machines as the planner has them, and the machines being
    /// deleted (phase `Deleting`) until their finalizer is done.
    pub fn view(&self, pc: &ProvCluster, now: u64) -> ClusterView {
        let mut v = self.live_view(pc, now);
        let delay = self.knobs.delete_ms;
        for (i, m) in self.state.machines.iter().enumerate() {
            if m.cluster == pc.name && m.namespace == pc.namespace && m.deleting_ms.is_some_and(|at| now < at + delay) {
                v.machines.push((i, MachineView { phase: "Deleting", message: "draining and deleting the node".into(), running_ms: None }));
            }
        }
        v
    }

    /// Machines whose deletion finished by `now` are gone for good.
    pub fn machine_gone(&self, m: &Machine, now: u64) -> bool {
        m.deleting_ms.is_some_and(|at| now >= at + self.knobs.delete_ms)
    }

    fn live_view(&self, pc: &ProvCluster, now: u64) -> ClusterView {
        let named = now >= self.named_at(pc);
        let idx: Vec<usize> = self
            .state
            .machines
            .iter()
            .enumerate()
            .filter(|(_, m)| m.cluster == pc.name && m.namespace == pc.namespace && m.registered_ms <= now && m.deleting_ms.is_none())
            .map(|(i, _)| i)
            .collect();
        let ms = |i: usize| &self.state.machines[i];
        let p = self.knobs.planner_ms;
        let mut v = ClusterView {
            named,
            message: String::new(),
            error: None,
            provisioned: false,
            ready: false,
            ready_ms: None,
            machines: vec![],
        };
        if !pc.custom() {
            v.message = MSG_CLUSTER_AGENT.into();
            return v;
        }
        // the planner starts once every role is registered (§2.7, §2.8)
        let first = |pick: fn(&Machine) -> bool| idx.iter().map(|&i| ms(i)).filter(|m| pick(m)).map(|m| m.registered_ms).min();
        let all = match (first(|m| m.etcd), first(|m| m.control_plane), first(|m| m.worker)) {
            (Some(a), Some(b), Some(c)) => Some(a.max(b).max(c)),
            _ => None,
        };
        let pending = |msg: &str| MachineView { phase: "Pending", message: msg.to_string(), running_ms: None };
        let Some(all) = all.filter(|&t| t <= now) else {
            v.message = MSG_WAIT_ROLES.into();
            v.machines = idx.iter().map(|&i| (i, pending(MSG_WAIT_ROLES))).collect();
            return v;
        };
        let version = pc.k8s_version();
        let distro = Distro::of_version(version);
        let offered = distro.is_some_and(|d| self.line.offered(d).iter().any(|o| o == version));
        let error = if !offered {
            Some(format!("{MSG_NO_RELEASE} for {version:?}"))
        } else {
            self.knobs.cluster_error.clone()
        };
        let distro = distro.unwrap_or(Distro::Rke2);
        if let Some(e) = error {
            v.message = e.clone();
            v.error = Some(e);
            v.machines = idx
                .iter()
                .map(|&i| (i, MachineView { phase: "Provisioning", message: MSG_PLAN.into(), running_ms: None }))
                .collect();
            return v;
        }
        // init node: the first registered etcd machine (§2.7 "picks the init node")
        let mut order = idx.clone();
        order.sort_by_key(|&i| (ms(i).registered_ms, ms(i).name.clone()));
        let init = *order.iter().find(|&&i| ms(i).etcd).expect("an etcd machine");
        let start = |i: usize| ms(i).checked_in_ms.map(|c| c.max(all));
        // two steps (plan applied, probes) from `from`
        let walk = |i: usize, from: u64, waiting: &str| -> MachineView {
            if now < from {
                return MachineView { phase: "Provisioning", message: waiting.into(), running_ms: None };
            }
            if now < from + p {
                return MachineView { phase: "Provisioning", message: MSG_PLAN.into(), running_ms: None };
            }
            if now < from + 2 * p {
                return MachineView { phase: "Provisioning", message: probes(ms(i), distro), running_ms: None };
            }
            MachineView { phase: "Running", message: String::new(), running_ms: Some(from + 2 * p) }
        };
        let stuck = || MachineView { phase: "Provisioning", message: MSG_CHECK_IN.into(), running_ms: None };
        let mut views: BTreeMap<usize, MachineView> = BTreeMap::new();
        let init_view = match start(init) {
            Some(s) => walk(init, s, MSG_PLAN),
            None => stuck(),
        };
        // when bootstrap etcd is there (the init node runs): `from + 2p`
        let init_done = start(init).map(|s| s + 2 * p);
        views.insert(init, init_view);
        for &i in order.iter().filter(|&&i| i != init && (ms(i).etcd || ms(i).control_plane)) {
            let wait = if ms(i).etcd { MSG_BOOTSTRAP_ETCD } else { MSG_ETCD };
            let view = match (start(i), init_done) {
                (None, _) => stuck(),
                (Some(s), Some(d)) => walk(i, s.max(d), wait),
                (Some(_), None) => MachineView { phase: "Provisioning", message: wait.into(), running_ms: None },
            };
            views.insert(i, view);
        }
        // workers wait for a control plane (its earliest finish, whether or not reached yet)
        let cp_done = order
            .iter()
            .filter(|&&i| ms(i).control_plane)
            .filter_map(|&i| {
                let s = start(i)?;
                Some(if i == init { s + 2 * p } else { s.max(init_done?) + 2 * p })
            })
            .min();
        for &i in order.iter().filter(|&&i| !(ms(i).etcd || ms(i).control_plane)) {
            let view = match (start(i), cp_done) {
                (None, _) => stuck(),
                (Some(s), Some(d)) => walk(i, s.max(d), MSG_CONTROL_PLANE),
                (Some(_), None) => MachineView { phase: "Provisioning", message: MSG_CONTROL_PLANE.into(), running_ms: None },
            };
            views.insert(i, view);
        }
        if let Some((node, message)) = &self.knobs.machine_error {
            for (i, mv) in views.iter_mut() {
                if ms(*i).node_name == *node {
                    *mv = MachineView { phase: "Failed", message: message.clone(), running_ms: None };
                }
            }
        }
        v.provisioned = views[&init].running_ms.is_some();
        let running_all = views.values().map(|m| m.running_ms).collect::<Option<Vec<u64>>>();
        v.message = match running_all.as_ref().and_then(|r| r.iter().max().copied()) {
            Some(t) if now >= t + p => {
                v.ready = true;
                v.ready_ms = Some(t + p);
                String::new()
            }
            Some(_) => MSG_CLUSTER_AGENT.into(),
            None => {
                let (i, mv) = order
                    .iter()
                    .map(|i| (*i, &views[i]))
                    .find(|(_, m)| m.running_ms.is_none())
                    .expect("a machine not running");
                let tier = if i == init {
                    "bootstrap"
                } else if ms(i).etcd {
                    "etcd"
                } else if ms(i).control_plane {
                    "control plane"
                } else {
                    "worker"
                };
                format!("configuring {tier} node(s) {}: {}", ms(i).name, mv.message)
            }
        };
        v.machines = views.into_iter().collect();
        v
    }
}

/// The `k`th rotation of a registration token (54 characters of the id
/// alphabet); the 0th is the token itself.
fn rotated_token(base: &str, k: u64) -> String {
    if k == 0 {
        return base.to_string();
    }
    use sha2::{Digest, Sha256};
    let mut out = String::new();
    let mut round = 0u32;
    while out.len() < 54 {
        let d = Sha256::digest(format!("{base}:{k}:{round}").as_bytes());
        out.extend(d.iter().map(|b| super::model::ALPHABET[*b as usize % super::model::ALPHABET.len()] as char));
        round += 1;
    }
    out.truncate(54);
    out
}

pub fn already_exists(name: &str) -> ApiError {
    ApiError::new(409, "AlreadyExists", format!("clusters.provisioning.cattle.io \"{name}\" already exists"))
}

// ---- rendering (Steve, §2.0) ------------------------------------------------------

fn state(name: &str, message: &str, error: bool, transitioning: bool) -> Value {
    json!({"name": name, "message": message, "error": error, "transitioning": transitioning})
}

fn cond(ty: &str, status: &str, reason: &str, message: &str, at: u64) -> Value {
    json!({"type": ty, "status": status, "reason": reason, "message": message,
           "lastUpdateTime": rfc3339(at), "lastTransitionTime": rfc3339(at)})
}

pub struct V1<'a> {
    pub model: &'a Model,
    pub base: String,
    pub now: u64,
}

/// What a v1 cluster being deleted waits for (the remove handler's
/// message; the wording is rmm's, the order Rancher's).
fn removing_message(model: &Model, pc: &ProvCluster, now: u64) -> Option<String> {
    pc.deleting_ms?;
    Some(if model.mgmt_gone(pc, now) {
        "removing finalizers".to_string()
    } else {
        format!("waiting for cluster [{}] to be removed", pc.mgmt_id)
    })
}

impl V1<'_> {
    fn links(&self, ty: &str, id: &str) -> Value {
        let this = format!("{}/v1/{ty}s/{id}", self.base);
        json!({"self": this, "update": this, "remove": this, "view": this})
    }

    pub fn prov_cluster(&self, pc: &ProvCluster) -> Value {
        let v = self.model.view(pc, self.now);
        let at = pc.created_ms;
        let (sname, err, trans) = match (&v.error, v.ready) {
            _ if pc.deleting_ms.is_some() => ("removing", false, true),
            (Some(_), _) => ("error", true, false),
            (None, true) => ("active", false, false),
            (None, false) if !v.named => ("provisioning", false, true),
            _ => ("updating", false, true),
        };
        let mut conds = vec![cond("Created", "True", "", "", at)];
        let mut status = json!({});
        if v.named {
            let when = at + self.model.knobs.cluster_name_ms;
            status = json!({
                "clusterName": pc.mgmt_id,
                "fleetWorkspaceName": pc.namespace,
                "clientSecretName": format!("{}-kubeconfig", pc.name),
                "observedGeneration": pc.generation,
                "agentDeployed": v.ready,
                "ready": v.ready,
            });
            let (pstat, preason, pmsg) = match (&v.error, v.provisioned) {
                (Some(e), _) => ("False", "Error", e.as_str()),
                (None, true) => ("True", "", ""),
                (None, false) => ("Unknown", "Waiting", v.message.as_str()),
            };
            conds.push(cond("Provisioned", pstat, preason, pmsg, when));
            let (rstat, rmsg) = match (&v.error, v.ready) {
                (Some(e), _) => ("False", e.as_str()),
                (None, true) => ("True", ""),
                (None, false) => ("False", v.message.as_str()),
            };
            conds.push(cond("Ready", rstat, if v.error.is_some() { "Error" } else { "" }, rmsg, v.ready_ms.unwrap_or(when)));
            conds.push(cond("Updated", if v.ready { "True" } else { "Unknown" }, "", if v.ready { "" } else { &v.message }, when));
        }
        status["conditions"] = Value::Array(conds);
        json!({
            "id": pc.id(),
            "type": "provisioning.cattle.io.cluster",
            "links": self.links("provisioning.cattle.io.cluster", &pc.id()),
            "apiVersion": "provisioning.cattle.io/v1",
            "kind": "Cluster",
            "metadata": {
                "name": pc.name, "namespace": pc.namespace, "uid": pc.uid,
                "generation": pc.generation, "resourceVersion": pc.created_ms.to_string(),
                "creationTimestamp": rfc3339(pc.created_ms),
                "labels": pc.labels, "annotations": pc.annotations,
                "state": state(sname, &removing_message(self.model, pc, self.now).unwrap_or_else(|| v.message.clone()), err, trans),
                "relationships": [], "fields": [pc.name, v.ready, pc.k8s_version()],
                "deletionTimestamp": pc.deleting_ms.map(rfc3339),
                "finalizers": if pc.deleting_ms.is_some() { json!(["wrangler.cattle.io/provisioning-cluster-remove"]) } else { json!([]) },
            },
            "spec": pc.spec,
            "status": status,
        })
    }

    /// `management.cattle.io.cluster` (v1 shape) of a v1 cluster.
    pub fn mgmt_cluster(&self, pc: &ProvCluster) -> Value {
        let v = self.model.view(pc, self.now);
        let at = pc.created_ms + self.model.knobs.cluster_name_ms;
        let (sname, err) = match (&v.error, v.ready) {
            (Some(_), _) => ("error", true),
            (None, true) => ("active", false),
            _ => ("provisioning", false),
        };
        let ready = if v.ready { "True" } else { "False" };
        let msg = v.error.clone().unwrap_or_else(|| v.message.clone());
        let distro = Distro::of_version(pc.k8s_version()).unwrap_or(Distro::Rke2).name();
        json!({
            "id": pc.mgmt_id,
            "type": "management.cattle.io.cluster",
            "links": self.links("management.cattle.io.cluster", &pc.mgmt_id),
            "apiVersion": "management.cattle.io/v3",
            "kind": "Cluster",
            "metadata": {
                "name": pc.mgmt_id, "uid": pc.uid, "generation": 1,
                "creationTimestamp": rfc3339(at),
                "annotations": {"provisioning.cattle.io/management-cluster-display-name": pc.name},
                "labels": {"provider.cattle.io": distro},
                "state": state(sname, &msg, err, !v.ready && !err),
                "relationships": [], "fields": [],
            },
            "spec": {"displayName": pc.name, "fleetWorkspaceName": pc.namespace, "internal": false},
            "status": {
                "driver": distro, "provider": distro,
                "conditions": [cond("Ready", ready, "", if v.ready { "" } else { &msg }, v.ready_ms.unwrap_or(at))],
            },
        })
    }

    /// The v3 (norman) shape of a v1 cluster's management cluster.
    pub fn v3_mgmt_cluster(&self, pc: &ProvCluster) -> Value {
        let v = self.model.view(pc, self.now);
        let at = pc.created_ms + self.model.knobs.cluster_name_ms;
        let distro = Distro::of_version(pc.k8s_version()).unwrap_or(Distro::Rke2).name();
        let this = format!("{}/v3/clusters/{}", self.base, pc.mgmt_id);
        let (state, trans, msg) = match (&v.error, v.ready) {
            (Some(e), _) => ("error", "error", e.clone()),
            (None, true) => ("active", "no", String::new()),
            _ => ("provisioning", "yes", v.message.clone()),
        };
        let ready = if v.ready { "True" } else { "False" };
        json!({
            "id": pc.mgmt_id, "type": "cluster", "baseType": "cluster",
            "name": pc.name, "creatorId": pc.creator_id, "internal": false,
            "created": rfc3339(at), "createdTS": at, "uuid": pc.uid,
            "driver": distro, "provider": distro, "fleetWorkspaceName": pc.namespace,
            "state": state, "transitioning": trans, "transitioningMessage": msg,
            "conditions": [cond("Ready", ready, "", if v.ready { "" } else { &v.message }, v.ready_ms.unwrap_or(at))],
            "labels": {"provider.cattle.io": distro}, "annotations": {},
            "actions": {"generateKubeconfig": format!("{this}?action=generateKubeconfig")},
            "links": {
                "self": this, "update": this, "remove": this,
                "nodes": format!("{}/v3/nodes?clusterId={}", self.base, pc.mgmt_id),
                "clusterRegistrationTokens": format!("{this}/clusterregistrationtokens"),
            },
        })
    }

    pub fn machine(&self, m: &Machine, view: &MachineView) -> Value {
        let id = format!("{}/{}", m.namespace, m.name);
        let running = view.running_ms.is_some();
        let at = view.running_ms.unwrap_or(m.registered_ms);
        // Its agent away (the node stopped): a running machine stays
        // `Running` with its `nodeRef`, as a CAPI machine does, and is not Ready, as
        // when its node goes NotReady; immediately, not after the real
        // node-monitor grace period (40 s): at least as strict.
        // (Also before it runs: its plan cannot be applied without it.)
        let lost = self
            .model
            .agent_lost(m, self.now)
            .map(|since| (since, format!("Node condition Ready is Unknown: the system-agent of node {} is not connected", m.node_name)));
        let mut status = json!({
            "phase": view.phase,
            "bootstrapReady": view.phase != "Pending",
            "infrastructureReady": true,
            "conditions": [
                cond("InfrastructureReady", "True", "", "", m.registered_ms),
                cond("PlanApplied", if running { "True" } else { "Unknown" }, "", if running { "" } else { &view.message }, at),
                cond("Reconciled", if running { "True" } else { "Unknown" }, "", if running { "" } else { &view.message }, at),
                match &lost {
                    Some((since, why)) => cond("Ready", "False", "NodeConditionsFailed", why, *since),
                    None => cond("Ready", if running { "True" } else { "False" }, if view.phase == "Failed" { "Error" } else { "" }, if running { "" } else { &view.message }, at),
                },
                match &lost {
                    Some((since, why)) => cond("NodeHealthy", "False", "NodeConditionsFailed", why, *since),
                    None => cond("NodeHealthy", if running { "True" } else { "Unknown" }, "", "", at),
                },
            ],
        });
        let addrs: Vec<Value> = [("ExternalIP", &m.address), ("InternalIP", &m.internal_address)]
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        status["addresses"] = json!(addrs);
        if running {
            status["nodeRef"] = json!({"apiVersion": "v1", "kind": "Node", "name": m.node_name});
        }
        json!({
            "id": id,
            "type": "cluster.x-k8s.io.machine",
            "links": self.links("cluster.x-k8s.io.machine", &id),
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Machine",
            "metadata": {
                "name": m.name, "namespace": m.namespace, "uid": m.uid, "generation": 1,
                "creationTimestamp": rfc3339(m.registered_ms),
                "labels": m.labels,
                "annotations": {"rke.cattle.io/node-name": m.node_name, PEER_ANNOTATION: m.peer},
                "state": state(&view.phase.to_lowercase(), &view.message, view.phase == "Failed", !running && view.phase != "Failed"),
                "relationships": [], "fields": [m.name, m.cluster, m.node_name, view.phase],
                "deletionTimestamp": m.deleting_ms.map(rfc3339),
                "finalizers": if m.deleting_ms.is_some() { json!(["machine.cluster.x-k8s.io"]) } else { json!([]) },
            },
            "spec": {
                "clusterName": m.cluster,
                "bootstrap": {"dataSecretName": format!("{}-machine-bootstrap", m.name)},
                "infrastructureRef": {"apiVersion": "rke.cattle.io/v1", "kind": "CustomMachine", "name": m.name},
            },
            "status": status,
        })
    }

    /// The v3 node of a machine that has a Kubernetes node (§2.8: in
    /// namespace `<c-m-id>`, annotated `cluster.x-k8s.io/machine`).
    pub fn v3_node(&self, pc: &ProvCluster, m: &Machine, view: &MachineView) -> Option<(String, Value)> {
        let at = view.running_ms?;
        let lost = self.model.agent_lost(m, self.now).is_some();
        let name = {
            use sha2::{Digest, Sha256};
            format!("m-{}", &hex::encode(Sha256::digest(m.name.as_bytes()))[..12])
        };
        let id = format!("{}:{name}", pc.mgmt_id);
        let this = format!("{}/v3/nodes/{id}", self.base);
        let internal = if m.internal_address.is_empty() { m.address.clone() } else { m.internal_address.clone() };
        Some((id.clone(), json!({
            "id": id, "type": "node", "baseType": "node", "name": "", "clusterId": pc.mgmt_id, "namespaceId": Value::Null,
            "created": rfc3339(m.registered_ms), "createdTS": m.registered_ms, "uuid": m.uid,
            "links": {"self": this, "update": this, "remove": this}, "actions": {},
            "labels": m.labels, "annotations": {"cluster.x-k8s.io/machine": m.name},
            "etcd": m.etcd, "controlPlane": m.control_plane, "worker": m.worker,
            "requestedHostname": m.node_name, "hostname": m.node_name, "nodeName": m.node_name,
            "ipAddress": internal, "externalIpAddress": m.address, "imported": false,
            "state": if lost { "unavailable" } else { "active" },
            "transitioning": if lost { "error" } else { "no" },
            "transitioningMessage": if lost { "Kubelet stopped posting node status." } else { "" },
            "conditions": [if lost { cond("Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", at) } else { cond("Ready", "True", "", "", at) }],
        })))
    }

    /// `management.cattle.io.clusterregistrationtoken` (v1 shape, §2.6).
    pub fn crt(&self, rt: &RegistrationToken) -> Value {
        let id = format!("{}/{}", rt.cluster_id, rt.name);
        let rt = &self.model.crt_at(rt, self.now);
        let c = self.model.commands(rt);
        json!({
            "id": id,
            "type": "management.cattle.io.clusterregistrationtoken",
            "links": self.links("management.cattle.io.clusterregistrationtoken", &id),
            "apiVersion": "management.cattle.io/v3",
            "kind": "ClusterRegistrationToken",
            "metadata": {"name": rt.name, "namespace": rt.cluster_id, "uid": rt.uuid,
                         "creationTimestamp": rfc3339(rt.created_ms),
                         "state": state("active", "", false, false), "relationships": [], "fields": []},
            "spec": {"clusterName": rt.cluster_id},
            "status": {
                "token": rt.token,
                "nodeCommand": c.node_command, "insecureNodeCommand": c.insecure_node_command,
                "windowsNodeCommand": "", "insecureWindowsNodeCommand": "",
                "command": c.command, "insecureCommand": c.insecure_command, "manifestUrl": c.manifest_url,
            },
        })
    }
}

/// The channel server's releases (§2.4 `GET /v1-rke2-release/releases`).
/// The sheet names the route, not the body: a Steve-like collection of
/// `{id, type: "release", version}`.
pub fn releases(line: Line, distro: Distro, base: &str) -> Value {
    let data: Vec<Value> = line
        .offered(distro)
        .into_iter()
        .map(|v| json!({"id": v, "type": "release", "version": v, "links": {}}))
        .collect();
    json!({"type": "collection", "resourceType": "release",
           "links": {"self": format!("{base}/v1-{}-release/releases", distro.name())}, "data": data})
}

pub fn channels(line: Line, distro: Distro, base: &str) -> Value {
    let latest = line.default_version(distro);
    let data = json!([{"id": "stable", "type": "channel", "name": "stable", "latest": latest, "links": {}},
                      {"id": "latest", "type": "channel", "name": "latest", "latest": latest, "links": {}}]);
    json!({"type": "collection", "resourceType": "channel",
           "links": {"self": format!("{base}/v1-{}-release/channels", distro.name())}, "data": data})
}

/// What `/system-agent-install.sh` serves: the header Rancher prepends
/// (§2.7: `STRICT_VERIFY`, `CATTLE_SERVER`, `CATTLE_CA_CHECKSUM`), then a
/// body in the real installer's order, as far as a node without systemd
/// allows: it reads `--server` and `--ca-checksum` from its arguments,
/// downloads `<server>/cacerts` and checks its sha256 (aborting under
/// strict verification with no checksum), then downloads the agent binary
/// from `CATTLE_AGENT_BINARY_BASE_URL` trusting only that CA, and hands
/// every argument to it. The binary is this emulator's own executable,
/// whose `emulator system-agent` mode does the registration on the wire
/// (`GET /v3/connect/agent` with the `X-Cattle-*` headers) and the
/// agent's first check-in (`drivers/local/agent.rs`). The local world does
/// not run this body: its machines run the same registration in-process.
pub fn install_script(model: &Model) -> String {
    let server = super::model::root_url(&model.setting("server-url").map(|s| s.0).unwrap_or_default());
    let sum = if model.cacerts.is_empty() { String::new() } else { rmm_actors::ports::ca_checksum(&model.cacerts) };
    format!(
        "#!/usr/bin/env sh\nSTRICT_VERIFY=\"true\"\nCATTLE_AGENT_BINARY_BASE_URL=\"{server}/assets\"\nCATTLE_SERVER=\"{server}\"\nCATTLE_CA_CHECKSUM=\"{sum}\"\n# rancher-system-agent installer (rmm emulator)\n{INSTALL_BODY}"
    )
}

/// The body of the served installer (see [`install_script`]).
const INSTALL_BODY: &str = r#"set -e
info() { echo "[INFO]  $*"; }
fatal() { echo "[FATAL]  $*" >&2; exit 1; }
for arg in "$@"; do
  case "$prev" in
    --server|-s) CATTLE_SERVER="$arg" ;;
    --ca-checksum|-c) CATTLE_CA_CHECKSUM="$arg" ;;
  esac
  prev="$arg"
done
[ -n "$CATTLE_SERVER" ] || fatal "Rancher server URL is required"
CATTLE_AGENT_VAR_DIR="${CATTLE_AGENT_VAR_DIR:-/var/lib/rancher/agent}"
CATTLE_AGENT_BIN_PREFIX="${CATTLE_AGENT_BIN_PREFIX:-/usr/local}"
mkdir -p "$CATTLE_AGENT_VAR_DIR" "$CATTLE_AGENT_BIN_PREFIX/bin"
ca="$CATTLE_AGENT_VAR_DIR/rancher-ca.pem"
curl --insecure -sfL -o "$ca" "$CATTLE_SERVER/cacerts" || fatal "000 received while downloading the CA certificate"
info "Successfully downloaded CA certificate"
if [ -n "$CATTLE_CA_CHECKSUM" ]; then
  actual="$(sha256sum "$ca")"
  actual="${actual%% *}"
  [ "$actual" = "$CATTLE_CA_CHECKSUM" ] || fatal "Configured cacerts checksum ($actual) does not match given --ca-checksum ($CATTLE_CA_CHECKSUM)"
elif [ "$STRICT_VERIFY" = "true" ]; then
  fatal "Aborting system-agent installation due to requested strict CA verification with no CA checksum provided"
fi
bin="$CATTLE_AGENT_BIN_PREFIX/bin/rancher-system-agent"
uninstall="$CATTLE_AGENT_BIN_PREFIX/bin/rancher-system-agent-uninstall.sh"
cat >"$uninstall" <<EOF
#!/bin/sh
# rancher-system-agent uninstaller (rmm emulator), as the real installer writes it
systemctl stop rancher-system-agent >/dev/null 2>&1 || true
systemctl disable rancher-system-agent >/dev/null 2>&1 || true
rm -f /etc/systemd/system/rancher-system-agent.service /etc/systemd/system/rancher-system-agent.env
rm -rf "$CATTLE_AGENT_VAR_DIR" /etc/rancher/agent
rm -f "$bin" "$uninstall"
EOF
chmod 0755 "$uninstall"
curl --cacert "$ca" -sfL -o "$bin.new" "$CATTLE_AGENT_BINARY_BASE_URL/rancher-system-agent-amd64" || fatal "downloading the rancher-system-agent binary failed"
chmod 0755 "$bin.new"
mv -f "$bin.new" "$bin"
info "Successfully downloaded the rancher-system-agent binary"
export STRICT_VERIFY CATTLE_SERVER CATTLE_CA_CHECKSUM
exec "$bin" emulator system-agent -- "$@"
"#;

/// The connection info `/v3/connect/agent` answers with: the agent's
/// kubeconfig and where its plan secret is. The sheet does not give it;
/// the field names are those of rancher's configserver.
pub fn connection_info(model: &Model, base: &str, m: &Machine) -> Value {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(format!("{}\n", model.cacerts));
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {base}/k8s/clusters/local\n  name: agent\ncontexts:\n- context:\n    cluster: agent\n    user: agent\n  name: agent\ncurrent-context: agent\nusers:\n- name: agent\n  user:\n    token: {}\n",
        m.plan_token
    );
    json!({"kubeConfig": kubeconfig, "namespace": m.namespace, "secretName": m.plan_secret()})
}

/// `c-m-` plus 8 characters of the id alphabet (§2.5).
#[cfg(test)]
pub fn is_mgmt_id(id: &str) -> bool {
    id.len() == 12 && id.starts_with("c-m-") && id[4..].bytes().all(|b| super::model::ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::model::State;
    use rand::{rngs::StdRng, SeedableRng};

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn model(line: Line, knobs: Knobs) -> (Model, StdRng) {
        let mut rng = StdRng::seed_from_u64(3);
        let (mut m, _) = Model::open(State::default(), CA.into(), 0, Some("pw"), &mut rng, 0);
        m.line = line;
        m.knobs = knobs;
        m.started_ms = 0;
        (m, rng)
    }

    fn knobs() -> Knobs {
        Knobs { cluster_name_ms: 100, default_token_ms: 100, planner_ms: 10, ..Default::default() }
    }

    fn body(name: &str, version: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "fleet-default"},
               "spec": {"kubernetesVersion": version, "rkeConfig": {}}})
    }

    fn agent(id: &str, node: &str, etcd: bool, cp: bool, worker: bool) -> AgentHeaders {
        AgentHeaders {
            id: id.into(),
            etcd,
            control_plane: cp,
            worker,
            node_name: node.into(),
            address: "10.0.0.9".into(),
            ..Default::default()
        }
    }

    #[test]
    fn lines_and_versions() {
        assert_eq!(Line::parse("2.15").unwrap(), Line { minor: 15 });
        assert_eq!(Line::parse("v2.12.12").unwrap(), Line { minor: 12 });
        assert!(Line::parse("2.16").is_err() && Line::parse("3.0").is_err() && Line::parse("x").is_err());
        assert_eq!(Line::from_image("rancher/rancher:v2.11.3"), Some(Line::RKE1_LAST));
        assert_eq!(Line::from_image("registry.example:5000/rancher/rancher:v2.15.1"), Some(Line::NEWEST));
        assert_eq!(Line::from_image("rancher/rancher"), None);
        assert_eq!(Line::from_image("rancher/rancher:latest"), None);
        assert_eq!(Line::NEWEST.version(), "v2.15.1");
        assert!(Line::RKE1_LAST.has_rke1() && !Line { minor: 12 }.has_rke1());
        assert!(!Line { minor: 12 }.has_v1_public_login() && Line { minor: 13 }.has_v1_public_login());
        // 2.15 offers 1.34–1.36, its embedded k3s is v1.36.1+k3s1 (§3.1)
        assert_eq!(Line::NEWEST.default_version(Distro::K3s), "v1.36.1+k3s1");
        assert_eq!(Line::NEWEST.offered(Distro::Rke2), vec!["v1.34.8+rke2r1", "v1.35.4+rke2r1", "v1.36.1+rke2r1"]);
        assert_eq!(Line { minor: 12 }.default_version(Distro::Rke2), "v1.33.1+rke2r1");
        assert_eq!(Distro::of_version("v1.36.1+k3s1"), Some(Distro::K3s));
        // the settings a client reads the default version from (§2.4)
        let (m, _) = model(Line::NEWEST, knobs());
        assert_eq!(m.setting("rke2-default-version").unwrap().0, "v1.36.1+rke2r1");
        assert_eq!(m.setting("k3s-default-version").unwrap().0, "v1.36.1+k3s1");
        assert_eq!(m.setting("server-version").unwrap().0, "v2.15.1");
        let (m, _) = model(Line::RKE1_LAST, knobs());
        assert_eq!(m.setting("server-version").unwrap().0, "v2.11.3");
        assert_eq!(m.setting("agent-image").unwrap().0, "rancher/rancher-agent:v2.11.3");
    }

    #[test]
    fn knobs_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        };
        // defaults: small delays; the start-up windows only from 2.12
        let k = Knobs::from_lookup(Line::NEWEST, env(&[])).unwrap();
        assert_eq!((k.cluster_name_ms, k.default_token_ms, k.planner_ms), (300, 300, 150));
        assert_eq!((k.login_window_ms, k.webhook_window_ms), (300, 600));
        let k = Knobs::from_lookup(Line::RKE1_LAST, env(&[])).unwrap();
        assert_eq!((k.login_window_ms, k.webhook_window_ms), (0, 0));
        // a slow controller adds to each delay
        let k = Knobs::from_lookup(
            Line::NEWEST,
            env(&[
                ("RMM_LOCAL_SLOW_CONTROLLER_MS", "5000"),
                ("RMM_LOCAL_PLANNER_MS", "10"),
                ("RMM_LOCAL_CLUSTER_ERROR", "boom"),
                ("RMM_LOCAL_TOKEN_TTL_MS", "2000"),
                ("RMM_LOCAL_WEBHOOK_WINDOW_MS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!((k.cluster_name_ms, k.default_token_ms, k.planner_ms), (5300, 5300, 5010));
        assert_eq!(k.delete_ms, 5400, "deletion is a controller's work too");
        assert_eq!((k.cluster_error.as_deref(), k.token_ttl_ms, k.webhook_window_ms), (Some("boom"), Some(2000), 0));
        let e = Knobs::from_lookup(Line::NEWEST, env(&[("RMM_LOCAL_PLANNER_MS", "soon")])).unwrap_err();
        assert_eq!(e.to_string(), "RMM_LOCAL_PLANNER_MS=\"soon\" is not a number of milliseconds");
    }

    #[test]
    fn create_rules() {
        let (mut m, mut rng) = model(Line::NEWEST, knobs());
        let id = m.create_prov_cluster(&mut rng, 0, "user-x", &body("rmm-demo", "v1.36.1+rke2r1"), None).unwrap();
        assert_eq!(id, "fleet-default/rmm-demo");
        let e = m.create_prov_cluster(&mut rng, 0, "user-x", &body("rmm-demo", "v1.36.1+rke2r1"), None).unwrap_err();
        assert_eq!((e.status, e.code, e.message.as_str()), (409, "AlreadyExists", "clusters.provisioning.cattle.io \"rmm-demo\" already exists"));
        for bad in ["Upper", "-x", "local", "c-abcde", "a", "under_score"] {
            let e = m.create_prov_cluster(&mut rng, 0, "u", &body(bad, "v1.36.1+rke2r1"), None).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.ends_with(NAME_RULE));
        }
        let e = m.create_prov_cluster(&mut rng, 0, "u", &body("bad-version", "1.36"), None).unwrap_err();
        assert_eq!(e.status, 500);
        // an unoffered version is accepted (§2.7) …
        m.create_prov_cluster(&mut rng, 0, "old", &body("old", "v1.20.1+rke2r1"), None).unwrap();
        // … and the webhook window refuses everything
        m.knobs.webhook_window_ms = 1_000;
        m.started_ms = 5_000;
        assert_eq!(m.create_prov_cluster(&mut rng, 5_999, "u", &body("later", "v1.36.1+rke2r1"), None).unwrap_err(), webhook_not_ready());
        m.create_prov_cluster(&mut rng, 6_000, "u", &body("later", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "rmm-demo").unwrap();
        assert!(is_mgmt_id(&pc.mgmt_id), "{}", pc.mgmt_id);
        assert_eq!(pc.annotations["field.cattle.io/creatorId"], "user-x");
    }

    #[test]
    fn a_deleted_cluster_goes_through_its_finalizer_management_cluster_first() {
        let (mut m, mut rng) = model(Line::NEWEST, Knobs { delete_ms: 400, ..knobs() });
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        m.state.prov_clusters[0].deleting_ms = Some(1_000);
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        // still there, management cluster too, until half the delay
        assert!(!m.mgmt_gone(&pc, 1_199) && m.mgmt_gone(&pc, 1_200));
        assert!(!m.deletion_due(1_399) && !m.purge_deleted(1_399));
        assert!(m.prov("fleet-default", "c1").is_some(), "the v1 object waits for its finalizer");
        let v = V1 { model: &m, base: "https://x".into(), now: 1_100 }.prov_cluster(&pc);
        assert_eq!(v["metadata"]["state"]["name"], "removing");
        assert!(v["metadata"]["deletionTimestamp"].is_string(), "{v}");
        assert!(v["metadata"]["state"]["message"].as_str().unwrap().contains(&pc.mgmt_id));
        // then it goes, with its registration token
        assert!(m.deletion_due(1_400) && m.purge_deleted(1_400));
        assert!(m.prov("fleet-default", "c1").is_none());
        assert!(!m.state.registration_tokens.iter().any(|t| t.cluster_id == pc.mgmt_id));
    }

    #[test]
    fn controllers_and_commands_on_their_clock() {
        let (mut m, mut rng) = model(Line::NEWEST, knobs());
        m.create_prov_cluster(&mut rng, 1_000, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        assert!(!m.view(&pc, 1_099).named);
        assert!(m.view(&pc, 1_100).named);
        let rt = m.state.registration_tokens.iter().find(|t| t.cluster_id == pc.mgmt_id).unwrap().clone();
        assert_eq!((rt.name.as_str(), rt.created_ms), ("default-token", 1_200));
        // a token not yet created does not register anything
        assert_eq!(m.connect_agent(&mut rng, 1_199, &rt.token, &agent("a", "n", true, true, true)).unwrap_err().status, 401);
        // no server-url: no commands (§2.3)
        assert_eq!(m.commands(&rt), Commands::default());
        m.put_setting("server-url", Some("https://10.0.0.2/x")).unwrap();
        let c = m.commands(&rt);
        let sum = rmm_actors::ports::ca_checksum(CA.trim());
        let tail = format!(
            "/system-agent-install.sh | sudo  sh -s - --server https://10.0.0.2 --label 'cattle.io/os=linux' --token {} --ca-checksum {sum}",
            rt.token
        );
        assert_eq!(c.node_command, format!(" curl -fL https://10.0.0.2{tail}"));
        assert_eq!(c.insecure_node_command, format!(" curl --insecure -fL https://10.0.0.2{tail}"));
    }

    /// The planner's walk, with its messages, for 3 etcd+cp and 3 workers.
    #[test]
    fn a_deleted_machine_is_deleting_until_its_finalizer_is_done_then_gone() {
        let (mut m, mut rng) = model(Line::NEWEST, Knobs { delete_ms: 400, ..knobs() });
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        let token = m.state.registration_tokens[0].token.clone();
        m.connect_agent(&mut rng, 1_000, &token, &agent("cp", "cp-1", true, true, false)).unwrap();
        m.connect_agent(&mut rng, 1_000, &token, &agent("w1", "w-1", false, false, true)).unwrap();
        m.state.machines[1].deleting_ms = Some(5_000);
        let phase = |m: &Model, now: u64| m.view(&pc, now).machines.iter().find(|(i, _)| *i == 1).map(|(_, mv)| mv.phase);
        // Not gone at once: Deleting while the finalizer runs, and out of the planner's count.
        assert_eq!(phase(&m, 5_000), Some("Deleting"));
        assert_eq!(phase(&m, 5_399), Some("Deleting"));
        assert_eq!(m.view(&pc, 5_000).message, MSG_WAIT_ROLES, "a machine being deleted is no worker any more");
        assert!(!m.machine_gone(&m.state.machines[1], 5_399));
        // Then gone: not listed, and its id free for a new machine.
        assert_eq!(phase(&m, 5_400), None);
        assert!(m.machine_gone(&m.state.machines[1], 5_400));
        m.connect_agent(&mut rng, 6_000, &token, &agent("w1", "w-1", false, false, true)).unwrap();
        assert_eq!(m.state.machines.len(), 2);
        assert_eq!(m.state.machines[1].deleting_ms, None, "a new machine, not the deleted one back");
        assert_eq!(m.state.registrations.get("c1/w-1"), Some(&2), "the ledger counts it as made again");
    }

    #[test]
    fn planner_walks_machines_with_the_real_messages() {
        let (mut m, mut rng) = model(Line::NEWEST, knobs());
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        let token = m.state.registration_tokens[0].token.clone();
        let mut t = 1_000;
        for i in 1..=3 {
            m.connect_agent(&mut rng, t, &token, &agent(&format!("cp{i}"), &format!("cp-{i}"), true, true, false)).unwrap();
            t += 1;
        }
        let v = m.view(&pc, t);
        assert_eq!(v.message, MSG_WAIT_ROLES);
        assert!(v.machines.iter().all(|(_, mv)| mv.phase == "Pending" && mv.message == MSG_WAIT_ROLES));
        // the machines check in (their agents read their plans)
        for i in 0..3 {
            let (tok, sec) = (m.state.machines[i].plan_token.clone(), m.state.machines[i].plan_secret());
            assert!(m.check_in(t, &tok, &sec));
        }
        assert!(!m.check_in(t, "wrong", "x"));
        for i in 1..=3 {
            m.connect_agent(&mut rng, 2_000, &token, &agent(&format!("w{i}"), &format!("w-{i}"), false, false, true)).unwrap();
        }
        // re-registering the same agent id gives the same machine
        m.connect_agent(&mut rng, 2_000, &token, &agent("w1", "w-1", false, false, true)).unwrap();
        assert_eq!(m.state.machines.len(), 6);
        // ... which the registration ledger counts as a call, not a machine made
        assert_eq!(m.state.registration_calls.get("c1/w-1"), Some(&2));
        assert_eq!(m.state.registrations.get("c1/w-1"), Some(&1));
        assert_eq!(m.state.registrations.get("c1/cp-1"), Some(&1));
        assert_eq!(m.state.registrations.len(), 6);
        for i in 3..6 {
            let (tok, sec) = (m.state.machines[i].plan_token.clone(), m.state.machines[i].plan_secret());
            m.check_in(2_000, &tok, &sec);
        }
        let init = m.state.machines[0].name.clone();
        let msg = |now: u64, i: usize| {
            let v = m.view(&pc, now);
            v.machines.iter().find(|(j, _)| *j == i).unwrap().1.clone()
        };
        // every role registered at 2000: the init node applies its plan, the others wait
        assert_eq!(m.view(&pc, 2_000).message, format!("configuring bootstrap node(s) {init}: {MSG_PLAN}"));
        assert_eq!(msg(2_000, 0).phase, "Provisioning");
        assert_eq!(msg(2_000, 1).message, MSG_BOOTSTRAP_ETCD);
        assert_eq!(msg(2_000, 3).message, MSG_CONTROL_PLANE);
        assert_eq!(
            msg(2_010, 0).message,
            "waiting for probes: calico, etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet"
        );
        assert_eq!(msg(2_020, 0).phase, "Running");
        assert!(m.view(&pc, 2_020).provisioned);
        assert_eq!(msg(2_020, 1).message, MSG_PLAN);
        assert_eq!(msg(2_020, 3).message, MSG_PLAN);
        assert_eq!(msg(2_030, 3).message, "waiting for probes: calico, kubelet");
        let v = m.view(&pc, 2_040);
        assert!(v.machines.iter().all(|(_, mv)| mv.phase == "Running"));
        assert_eq!(v.message, MSG_CLUSTER_AGENT);
        assert!(!v.ready);
        let v = m.view(&pc, 2_050);
        assert!(v.ready && v.error.is_none());
        assert_eq!(v.ready_ms, Some(2_050));
    }

    #[test]
    fn the_registration_ledger_counts_a_second_machine_of_a_node() {
        let (mut m, mut rng) = model(Line::NEWEST, knobs());
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let token = m.state.registration_tokens[0].token.clone();
        m.connect_agent(&mut rng, 1_000, &token, &agent("a", "n-1", true, true, true)).unwrap();
        // the installer run again on the node (its kept id): the same machine
        m.connect_agent(&mut rng, 1_000, &token, &agent("a", "n-1", true, true, true)).unwrap();
        assert_eq!((m.state.registrations["c1/n-1"], m.state.registration_calls["c1/n-1"]), (1, 2));
        // a node that lost its id registers again: a second machine for it
        m.connect_agent(&mut rng, 1_000, &token, &agent("b", "n-1", true, true, true)).unwrap();
        assert_eq!(m.state.machines.len(), 2);
        assert_eq!((m.state.registrations["c1/n-1"], m.state.registration_calls["c1/n-1"]), (2, 3));
    }

    #[test]
    fn a_machine_whose_agent_never_checks_in_stays_provisioning() {
        let (mut m, mut rng) = model(Line::NEWEST, knobs());
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        let token = m.state.registration_tokens[0].token.clone();
        m.connect_agent(&mut rng, 1_000, &token, &agent("a", "all-1", true, true, true)).unwrap();
        let v = m.view(&pc, 60_000);
        assert_eq!(v.machines[0].1, MachineView { phase: "Provisioning", message: MSG_CHECK_IN.into(), running_ms: None });
        assert_eq!(v.message, format!("configuring bootstrap node(s) {}: {MSG_CHECK_IN}", m.state.machines[0].name));
        assert!(!v.ready);
    }

    #[test]
    fn errors_end_in_an_error_state_with_the_message() {
        // an unoffered version: accepted, then the planner fails (§2.7)
        let (mut m, mut rng) = model(Line { minor: 12 }, knobs());
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        let token = m.state.registration_tokens[0].token.clone();
        m.connect_agent(&mut rng, 1_000, &token, &agent("a", "all-1", true, true, true)).unwrap();
        let v = m.view(&pc, 1_000);
        assert_eq!(v.error.as_deref(), Some("could not find release data for \"v1.36.1+rke2r1\""));
        // RMM_LOCAL_CLUSTER_ERROR
        let mut k = knobs();
        k.cluster_error = Some("etcd join failed: boom".into());
        let (mut m, mut rng) = model(Line::NEWEST, k);
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+k3s1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        let token = m.state.registration_tokens[0].token.clone();
        m.connect_agent(&mut rng, 1_000, &token, &agent("a", "all-1", true, true, true)).unwrap();
        assert_eq!(m.view(&pc, 999).error, None);
        let v = m.view(&pc, 1_000);
        assert_eq!(v.error.as_deref(), Some("etcd join failed: boom"));
        let shown = V1 { model: &m, base: "https://x".into(), now: 1_000 }.prov_cluster(&pc);
        assert_eq!(shown["metadata"]["state"]["name"], "error");
        assert_eq!(shown["metadata"]["state"]["error"], true);
        assert_eq!(shown["metadata"]["state"]["message"], "etcd join failed: boom");
        let ready = shown["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!((ready["status"].as_str(), ready["message"].as_str()), (Some("False"), Some("etcd join failed: boom")));
    }

    #[test]
    fn machine_error_knob_fails_that_machine_with_its_message() {
        let mut k = knobs();
        k.machine_error = Some(("w-1".into(), "kubelet did not start".into()));
        let (mut m, mut rng) = model(Line::NEWEST, k);
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let pc = m.prov("fleet-default", "c1").unwrap().clone();
        let token = m.state.registration_tokens[0].token.clone();
        m.connect_agent(&mut rng, 1_000, &token, &agent("a", "cp-1", true, true, false)).unwrap();
        m.connect_agent(&mut rng, 1_000, &token, &agent("b", "w-1", false, false, true)).unwrap();
        for i in 0..2 {
            let (t, s) = (m.state.machines[i].plan_token.clone(), m.state.machines[i].plan_secret());
            m.check_in(1_000, &t, &s);
        }
        let v = m.view(&pc, 9_000);
        assert_eq!(v.machines[1].1, MachineView { phase: "Failed", message: "kubelet did not start".into(), running_ms: None });
        assert_eq!(v.machines[0].1.phase, "Running");
        assert!(!v.ready);
        let shown = V1 { model: &m, base: "https://x".into(), now: 9_000 }.machine(&m.state.machines[1], &v.machines[1].1);
        assert_eq!(shown["metadata"]["state"], json!({"name": "failed", "message": "kubelet did not start", "error": true, "transitioning": false}));
        assert_eq!(shown["status"]["phase"], "Failed");
    }

    #[test]
    fn default_token_rotates_with_a_grace_period() {
        let mut k = knobs();
        k.crt_ttl_ms = Some(1_000);
        let (mut m, mut rng) = model(Line::NEWEST, k);
        m.put_setting("server-url", Some("https://10.0.0.2")).unwrap();
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.36.1+rke2r1"), None).unwrap();
        let rt = m.state.registration_tokens[0].clone(); // made at 200
        let t0 = m.crt_at(&rt, 200).token;
        assert_eq!(t0, rt.token);
        let t1 = m.crt_at(&rt, 1_200).token;
        assert_ne!(t1, t0);
        assert_eq!(t1.len(), 54);
        assert!(m.commands(&m.crt_at(&rt, 1_200)).node_command.contains(&format!("--token {t1} ")));
        // the previous token still works during its grace period, then not
        m.connect_agent(&mut rng, 1_500, &t0, &agent("a", "n1", true, true, true)).unwrap();
        m.connect_agent(&mut rng, 1_500, &t1, &agent("b", "n2", true, true, true)).unwrap();
        assert_eq!(m.connect_agent(&mut rng, 2_200, &t0, &agent("c", "n3", true, true, true)).unwrap_err().status, 401);
        m.connect_agent(&mut rng, 2_200, &t1, &agent("c", "n3", true, true, true)).unwrap();
        // before 2.13 there is no rotation
        let mut k = knobs();
        k.crt_ttl_ms = Some(1_000);
        let (mut m, mut rng) = model(Line { minor: 12 }, k);
        m.create_prov_cluster(&mut rng, 0, "u", &body("c1", "v1.33.1+rke2r1"), None).unwrap();
        let rt = m.state.registration_tokens[0].clone();
        assert_eq!(m.crt_at(&rt, 99_000).token, rt.token);
    }

    #[test]
    fn token_ttl_knob_caps_api_tokens() {
        let mut k = knobs();
        k.token_ttl_ms = Some(500);
        let (mut m, mut rng) = model(Line::NEWEST, k);
        let login = m.login(&mut rng, 0, "admin", "pw", "").unwrap();
        let t = m.derive_token(&mut rng, 100, &login.name, "rmm", 0, None).unwrap();
        assert_eq!(t.ttl_ms, 500);
        assert!(m.authenticate(599, &t.bearer()).is_some());
        assert!(m.authenticate(600, &t.bearer()).is_none());
    }
}
