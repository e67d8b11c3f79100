//! The ports: what the actors need from the world, as traits. Adapters live
//! in the `rmm` binary crate (`src/drivers/`, `src/rancher/`); the actors
//! never see reqwest, processes or files.
//!
//! Every port error says whether trying again can help ([`DriverError::is_retryable`],
//! [`ApiError::is_retryable`]): transient failures are recorded as
//! `StepFailed { retryable: true }` and retried with backoff; permanent ones
//! fail the run (a resume after fixing the cause continues it).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use rmm_events::Role;

/// A secret value (password, token, a command that embeds a token). Its
/// `Debug` and `Display` never show the value; use [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// First 12 hex digits of SHA-256: safe to log, enough to compare.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.0.as_bytes())[..6])
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{})", self.fingerprint())
    }
}

// ---------------------------------------------------------------- machines

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// Machine name, unique within the driver: `rancher`, `master01`, …
    pub name: String,
    /// The cluster this machine belongs to; `list` finds machines by it.
    pub cluster: String,
    pub role: Role,
}

/// What the driver says exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    /// The cluster label, when the driver knows it.
    pub cluster: Option<String>,
    pub state: MachineState,
    /// Address, once the machine has one.
    pub ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineState {
    Running,
    Stopped,
    /// Being created (by us, or by a process that died half-way).
    Creating,
    /// Broken: a failed or half-made create. Remove it and create again.
    Error(String),
}

/// Output of a command run on a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The driver or the machine could not be reached or failed in a way
    /// that may pass (a flaky provider, a timeout).
    /// Handling: retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help (bad configuration, quota, unknown machine).
    /// Handling: the run fails; the user fixes the cause and resumes.
    #[error("{0}")]
    Permanent(String),
}

impl DriverError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DriverError::Transient(_))
    }
}

/// The Rancher server to start on the rancher machine (the single-node
/// Docker install, reference/rancher-current.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub image: String,
    /// `CATTLE_BOOTSTRAP_PASSWORD`.
    pub bootstrap_password: Secret,
}

/// The container name of the Rancher server on a machine.
pub const SERVER_CONTAINER: &str = "rancher";

/// `docker run` of the single-node install (§3.2), typed into the machine.
pub fn docker_run_command(server: &ServerSpec) -> String {
    use crate::steps::shell_quote;
    format!(
        "docker run -d --name {SERVER_CONTAINER} --restart=unless-stopped --privileged -p 80:80 -p 443:443 \
         -v /opt/rancher:/var/lib/rancher -e {} {}",
        shell_quote(&format!("CATTLE_BOOTSTRAP_PASSWORD={}", server.bootstrap_password.expose())),
        shell_quote(&server.image)
    )
}

/// Creates and drives machines.
///
/// # Contract
/// * Names are unique per driver; `create` of a name that exists fails
///   (the actors `inspect` first, and on resume reconcile: running → adopt,
///   broken → `remove`, then create).
/// * `remove` of a machine that does not exist succeeds (idempotent).
/// * `exec` runs a shell command on the machine, like `docker-machine ssh`;
///   a non-zero exit is an `Ok(ExecOutput)` with that status, not an error.
/// * Nothing here may print secrets passed in `exec`'s command.
#[async_trait]
pub trait MachineDriver: Send + Sync + 'static {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError>;
    async fn inspect(&self, name: &str) -> Result<Option<Machine>, DriverError>;
    /// Every machine labelled with this cluster, known to the log or not.
    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, DriverError>;
    async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, DriverError>;
    async fn remove(&self, name: &str) -> Result<(), DriverError>;
    /// The port where a Rancher container started with `-p 443:443` on
    /// `machine` answers HTTPS. 443 on real machines.
    fn https_port(&self) -> u16 {
        443
    }
    /// Starts a stopped machine again and reads it anew (its address may
    /// have changed). `None`: this driver cannot; the caller removes the
    /// machine and creates it again.
    async fn restart(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let _ = name;
        Ok(None)
    }
    /// The fingerprint (`SHA256:…`) of the SSH host key `machine` showed on
    /// first contact, for a driver that pins host keys (ssh): the create
    /// step records it in the log (`Outcome::HostClaimed`). `None`: the
    /// driver pins none (this default).
    async fn host_key(&self, machine: &str) -> Result<Option<String>, DriverError> {
        let _ = machine;
        Ok(None)
    }
    /// The host keys the log recorded (machine → fingerprint, the latest
    /// per machine), handed to the driver before a command uses it: a
    /// driver that pins host keys refuses a host whose key is not the one
    /// the log holds, and names that one. Default: ignored.
    fn pin_host_keys(&self, recorded: &std::collections::BTreeMap<String, String>) {
        let _ = recorded;
    }
    /// Starts the Rancher server on `machine`. A machine driver types the
    /// single-node install's `docker run` into the machine (this default);
    /// a driver whose machines are containers creates the server's
    /// container itself. A non-zero status is a failed start, with docker's
    /// words on stderr (`… is already in use` when it exists).
    async fn start_server(&self, machine: &str, server: &ServerSpec) -> Result<ExecOutput, DriverError> {
        self.exec(machine, &docker_run_command(server)).await
    }
    /// The server container's state as `docker ps -a --format '{{.State}}'`
    /// gives it (`running`, `restarting`, `exited`, `created` …) on stdout,
    /// empty when there is none; a non-zero status when it cannot be read.
    async fn server_state(&self, machine: &str) -> Result<ExecOutput, DriverError> {
        self.exec(machine, &format!("docker ps -a --filter 'name=^{SERVER_CONTAINER}$' --format '{{{{.State}}}}'")).await
    }
    /// Removes the server container (not its data): `docker rm -f`.
    async fn remove_server(&self, machine: &str) -> Result<ExecOutput, DriverError> {
        self.exec(machine, &format!("docker rm -f {SERVER_CONTAINER}")).await
    }
    /// The URL rmm uses to reach the server whose `server-url` is `url`:
    /// the same URL, unless the driver publishes the server elsewhere (a
    /// container's port published on the host).
    fn api_url(&self, url: &str) -> String {
        url.to_string()
    }
    /// The CA (PEM) of the Rancher server on `machine`, read through the
    /// driver's own authenticated channel (the machine's filesystem in the
    /// local world; `docker exec` or `ssh` on real machines), never from the
    /// network. `None` when the driver has no such channel: the caller then
    /// falls back to trust on first use. A driver with such a channel that
    /// finds no CA yet (the server has not made it) returns a transient
    /// error: whoever answers meanwhile is not that server.
    async fn read_server_ca(&self, machine: &str) -> Result<Option<String>, DriverError> {
        let _ = machine;
        Ok(None)
    }
}

// ---------------------------------------------------------------- rancher

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No answer, a connection error, a timeout or a 5xx/503.
    /// Handling: retried with backoff (or, in a wait, polled again).
    #[error("Rancher unavailable: {0}")]
    Unavailable(String),
    /// The server answered with an error (4xx): `code` is norman's
    /// (`NotUnique`, `InvalidBodyContent`, `Unauthorized` …).
    /// Handling: the step decides (401 on login while Rancher starts is
    /// polled; most others are permanent).
    #[error("Rancher answered {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status { status: u16, code: Option<String>, message: String },
    /// The server's certificate does not chain to the pinned CA, or a
    /// credential was about to be sent without a pinned CA.
    /// Handling: permanent; never retried.
    #[error("TLS: {0}")]
    Tls(String),
    /// The answer did not have the expected shape. Handling: permanent.
    #[error("unexpected answer from Rancher: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Unavailable(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            ApiError::Tls(_) | ApiError::Decode(_) => false,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// `token-xxxxx`
    pub id: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `c-xxxxx`
    pub id: String,
    pub name: String,
    pub state: String,
    /// `yes` / `no` / `error`
    pub transitioning: String,
    pub transitioning_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    /// `c-xxxxx:crt-xxxxx` or `c-xxxxx:default-token`
    pub id: String,
    pub cluster_id: String,
    /// Empty until Rancher's controller fills it in (2.6+).
    pub node_command: Option<Secret>,
    /// The same command with `curl --insecure` for the script download
    /// only (reference/rancher-current.md §2.6). Empty until filled in.
    pub insecure_node_command: Option<Secret>,
}

/// `metadata.state` of a Steve object (reference/rancher-current.md §2.0):
/// `name` is a lower-cased summary (`active`, `running`, `provisioning` …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteveState {
    pub name: String,
    pub message: String,
    pub error: bool,
    pub transitioning: bool,
}

/// One entry of `status.conditions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub kind: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// A Steve (`/v1`) object: the fields rmm reads of a provisioning cluster,
/// a management cluster or a CAPI machine (§2.4, §2.8, §2.9). Fields an
/// object does not have are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteveObject {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub state: SteveState,
    pub conditions: Vec<Condition>,
    /// `status.ready` (provisioning cluster).
    pub ready: bool,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.clusterName` (provisioning cluster: `c-m-xxxxxxxx`).
    pub cluster_name: Option<String>,
    /// `status.phase` (CAPI machine: `Pending`, `Provisioning`, `Running` …).
    pub phase: Option<String>,
    /// `status.nodeRef.name` (CAPI machine).
    pub node_ref: Option<String>,
    /// `status.failureMessage` / `status.failureReason` (CAPI machine).
    pub failure: Option<String>,
}

impl SteveObject {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
    /// Whether condition `kind` is `True`.
    pub fn is_true(&self, kind: &str) -> bool {
        self.condition(kind).is_some_and(|c| c.status == "True")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `c-xxxxx:m-<md5(hostname)[:12]>`
    pub id: String,
    pub requested_hostname: String,
    pub state: String,
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    pub ip_address: Option<String>,
}

/// Rancher's v3 API, one server. `auth` is the bearer token
/// (`token-xxxxx:secret`).
///
/// # Contract
/// * An adapter made with [`CaTrust::Unverified`] only answers `ping` and
///   `cacerts` (they carry no credential); every other call fails with
///   [`ApiError::Tls`] before anything is sent.
/// * Errors never contain secrets.
#[async_trait]
pub trait RancherApi: Send + Sync {
    /// `GET /ping`: `Ok` only when the body is `pong`.
    async fn ping(&self) -> Result<(), ApiError>;
    /// `GET /v3/settings/cacerts` → `.value` (a PEM, no trailing newline).
    async fn cacerts(&self) -> Result<String, ApiError>;
    /// `POST /v3-public/localProviders/local?action=login` (201) → bearer token.
    async fn login(&self, username: &str, password: &Secret) -> Result<Secret, ApiError>;
    /// `POST /v3/users?action=changepassword` (200, empty body).
    async fn change_password(&self, auth: &Secret, current: &Secret, new: &Secret) -> Result<(), ApiError>;
    /// `POST /v3/token` (201) → (id, bearer token).
    async fn create_token(&self, auth: &Secret, description: &str) -> Result<(String, Secret), ApiError>;
    /// `GET /v3/tokens`
    async fn list_tokens(&self, auth: &Secret) -> Result<Vec<ApiToken>, ApiError>;
    /// `DELETE /v3/tokens/<id>`
    async fn delete_token(&self, auth: &Secret, id: &str) -> Result<(), ApiError>;
    /// `PUT /v3/settings/<name>`
    async fn set_setting(&self, auth: &Secret, name: &str, value: &str) -> Result<(), ApiError>;
    /// `POST /v3/cluster` (201). A duplicate name is 422 `NotUnique`.
    async fn create_cluster(&self, auth: &Secret, name: &str) -> Result<ClusterInfo, ApiError>;
    /// `GET /v3/clusters?name=<name>`
    async fn find_cluster(&self, auth: &Secret, name: &str) -> Result<Option<ClusterInfo>, ApiError>;
    /// `GET /v3/clusters/<id>`
    async fn get_cluster(&self, auth: &Secret, id: &str) -> Result<ClusterInfo, ApiError>;
    /// `GET /v3/clusterregistrationtokens?clusterId=<id>`
    async fn list_registration_tokens(&self, auth: &Secret, cluster_id: &str) -> Result<Vec<RegistrationToken>, ApiError>;
    /// `POST /v3/clusterregistrationtoken` (201)
    async fn create_registration_token(&self, auth: &Secret, cluster_id: &str) -> Result<RegistrationToken, ApiError>;
    /// `GET /v3/clusterregistrationtokens/<id>`
    async fn get_registration_token(&self, auth: &Secret, id: &str) -> Result<RegistrationToken, ApiError>;
    /// `GET /v3/nodes?clusterId=<id>`
    async fn list_nodes(&self, auth: &Secret, cluster_id: &str) -> Result<Vec<NodeInfo>, ApiError>;

    // ------------------------------------------ v1 (RKE2/K3s, reference/rancher-current.md §2)

    /// `GET /rancherversion` (no credential) → `Version` (`v2.15.1`).
    async fn rancher_version(&self) -> Result<String, ApiError>;
    /// `POST /v1-public/login` (201, 2.13+), falling back to the v3 login
    /// on 404 (§2.2, as terraform's `DoUserLogin`).
    async fn login_public(&self, username: &str, password: &Secret) -> Result<Secret, ApiError>;
    /// One round of the readiness reads of §2.1: `GET
    /// /v1/management.cattle.io.users` and `GET
    /// /v1/provisioning.cattle.io.clusters`, both 200.
    async fn v1_reads(&self, auth: &Secret) -> Result<(), ApiError>;
    /// `GET /v3/settings/<name>` → `.value` (may be empty).
    async fn get_setting(&self, auth: &Secret, name: &str) -> Result<String, ApiError>;
    /// `GET /v1-<distro>-release/releases` (`distro`: `rke2`, `k3s`): the
    /// versions this server offers (§2.4).
    async fn offered_versions(&self, auth: &Secret, distro: &str) -> Result<Vec<String>, ApiError>;
    /// `POST /v1/provisioning.cattle.io.clusters` (201) in `fleet-default`
    /// with `spec.rkeConfig` and `spec.kubernetesVersion` (§2.4), annotated
    /// [`RUN_ANNOTATION`]` = run` (so a cluster is known as this run's on a
    /// shared server). A name that exists is 409 `AlreadyExists`.
    async fn create_v1_cluster(&self, auth: &Secret, name: &str, kubernetes_version: &str, run: &str) -> Result<SteveObject, ApiError>;
    /// `DELETE /v1/provisioning.cattle.io.clusters/fleet-default/<name>`;
    /// idempotent: 404 counts as deleted. Rancher then removes the
    /// management cluster and the machines (asynchronously).
    async fn delete_v1_cluster(&self, auth: &Secret, name: &str) -> Result<(), ApiError>;
    /// `GET /v3/settings/<name>` → `.value` with no credential: only the
    /// public settings answer (`first-login`, `cacerts`; §2.1).
    async fn public_setting(&self, name: &str) -> Result<String, ApiError>;
    /// `GET /v1/provisioning.cattle.io.clusters/fleet-default/<name>`; 404 → `None`.
    async fn get_v1_cluster(&self, auth: &Secret, name: &str) -> Result<Option<SteveObject>, ApiError>;
    /// `GET /v1/management.cattle.io.clusters/<id>` (§2.9 item 3).
    async fn get_management_cluster(&self, auth: &Secret, id: &str) -> Result<SteveObject, ApiError>;
    /// `GET /v1/cluster.x-k8s.io.machines/fleet-default`, filtered (here,
    /// §8) on the label `cluster.x-k8s.io/cluster-name=<cluster>` (§2.8).
    async fn list_machines(&self, auth: &Secret, cluster: &str) -> Result<Vec<SteveObject>, ApiError>;

    // ------------------------------------------ scale down (issue 11)

    /// `DELETE /v1/cluster.x-k8s.io.machines/fleet-default/<name>`;
    /// idempotent: 404 counts as deleted. The machine then goes through its
    /// finalizers (CAPI drains and removes the Kubernetes node, Rancher
    /// the etcd member) and is gone (404) only after that. Deleting the
    /// CAPI machine is how Rancher means a custom node to be removed
    /// (rancher/rancher#43686, Oats87: "we intend for nodes to be deleted
    /// through trigger/removal of the CAPI `Machine` object").
    async fn delete_machine(&self, auth: &Secret, name: &str) -> Result<(), ApiError>;
    /// rke1: `DELETE /v3/nodes/<id>`; idempotent: 404 counts as deleted.
    /// The node goes `removing` until Rancher has cleaned it up.
    async fn delete_node(&self, auth: &Secret, id: &str) -> Result<(), ApiError>;
}

/// The annotation that names the rmm run which made a v1 cluster.
pub const RUN_ANNOTATION: &str = "rmm/run";

/// Which certificates a Rancher client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaTrust {
    /// Any certificate, for `ping` and `cacerts` only (what the agent does
    /// with `curl --insecure` before it checks `--ca-checksum`).
    Unverified,
    /// Only this CA (PEM): the one whose checksum is recorded in the log.
    Pinned(String),
    /// The system's trust roots: a server whose `cacerts` setting is empty
    /// (a publicly trusted certificate: `--no-cacerts`, ACME;
    /// reference/rancher-current.md §3.2, §7 item 3). Verified, so
    /// credentials may be sent.
    SystemRoots,
}

/// What the v3 client says when `cacerts` is empty (see [`CaTrust::SystemRoots`]).
pub const EMPTY_CACERTS: &str = "the cacerts setting is empty";

/// Makes Rancher clients for a server URL (`https://IP[:port]`).
pub trait RancherConnector: Send + Sync + 'static {
    fn connect(&self, base_url: &str, trust: CaTrust) -> Result<Arc<dyn RancherApi>, ApiError>;
}

/// The CA checksum Rancher puts in `--ca-checksum`: lower-case hex of
/// SHA-256 of the `cacerts` value plus a newline (added only when missing).
pub fn ca_checksum(cacerts: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(cacerts.as_bytes());
    if !cacerts.ends_with('\n') {
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Where secrets live, apart from the log (owner-only file in the state
/// dir). Events reference them by name and fingerprint.
///
/// # Contract
/// `put` is durable when it returns (the write-ahead rule for a password
/// chosen before the call that sets it).
pub trait SecretStore: Send + Sync + 'static {
    fn get(&self, name: &str) -> Option<Secret>;
    fn put(&self, name: &str, value: &Secret) -> Result<(), String>;
}
