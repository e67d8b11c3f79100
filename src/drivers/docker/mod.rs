//! The `docker` driver: Rancher and every node as containers on a Docker
//! Engine, through the Engine API (`bollard`, pinned; only this module
//! uses it). Facts: reference/rancher-current.md §3 (the single-node
//! install), §5 (bollard 0.21), §6 (nodes as containers).
//!
//! # Objects
//! Everything carries the labels `io.rmm.cluster`, `io.rmm.machine` and
//! `io.rmm.role`, and is found by them (and by name):
//! * the network `rmm-<cluster>` (or `[docker] network`): a bridge with a
//!   /24 subnet rmm picks (`10.R.R.0/24`, one no other network of the
//!   engine uses). Every address is fixed: `.2` for the Rancher server, so
//!   its address (the `server-url` every agent dials) survives restarts
//!   and re-creates of its container; `masterNN` at `.10+NN`, `workerNN`
//!   at `.110+NN`, so a node started again keeps the address it registered
//!   with; the engine hands out `.224/27` to anything else;
//! * the **rancher machine**: that reserved address and the named volume
//!   `rmm-<cluster>-rancher-data` for `/var/lib/rancher`. It exists once
//!   both exist; `remove` removes the server container and the volume;
//! * the **Rancher server**: the container `rmm-<cluster>-rancher`, made
//!   by [`MachineDriver::start_server`] (not a `docker run` typed into a
//!   machine): `rancher_image` with its own entrypoint and command,
//!   `--restart unless-stopped`, `privileged`, the volume, 443 published
//!   on `publish_address:publish_port`;
//! * each **node**: the container `rmm-<cluster>-<machine>`, `node_image`
//!   with its own entrypoint and command, hostname = machine name, memory
//!   per role, `/lib/modules` read-only and the reference's mounts, tmpfs
//!   for the etcd data dirs.
//!
//! # The bootstrap password
//! The Docker install takes `CATTLE_BOOTSTRAP_PASSWORD` in the environment
//! (§3.3), which `docker inspect` shows to anyone who can reach the
//! engine. Here it never enters the container's configuration: it is
//! written into the created (not yet started) container as the file
//! `/run/rmm/bootstrap-password` (mode 0400) through the archive API, and
//! the container's entrypoint becomes `/bin/sh -c 'read -r
//! CATTLE_BOOTSTRAP_PASSWORD < FILE; export …; exec "$@"'` followed by the
//! image's own entrypoint and command, so the image starts as it would,
//! with the variable set in its process only. For the real
//! `rancher/rancher` image this needs `/bin/sh` in it (it has one); the
//! password stays readable inside the container (as in `/proc/1/environ`
//! of the real install), and Rancher itself keeps it in its
//! `bootstrap-secret` on the volume after the first start (§3.3).
//!
//! # Exec
//! `exec` creates an Engine exec of `sh -s` and writes the command to its
//! standard input, so the command (a node command carries the
//! registration token) is in no exec's or container's configuration;
//! stdout and stderr are captured and the exit code is read back. When the
//! image has no `sudo` and exec runs as root, `sudo` is dropped from the
//! command.
//!
//! # Settings
//! `[docker]` in `rmm.toml` ([`DockerConfig`]); `up` writes the resolved
//! settings (a free port for `publish_port = 0`) to `docker.json` in the
//! state dir, and every later command of that state dir uses them.

mod engine;
mod tar;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use rmm_actors::ports::{DriverError, ExecOutput, Machine, MachineDriver, MachineSpec, MachineState, ServerSpec};
use rmm_events::Role;
use serde::{Deserialize, Serialize};

pub use engine::Engine;

/// Label keys (issue 9).
pub const LABEL_CLUSTER: &str = "io.rmm.cluster";
pub const LABEL_MACHINE: &str = "io.rmm.machine";
pub const LABEL_ROLE: &str = "io.rmm.role";

/// The machine name of the Rancher server's machine (`Plan::machine_names`).
const RANCHER: &str = "rancher";

/// `rancher/systemd-node` at the tag Rancher's v2prov CI and RKE2's Docker
/// tests use (reference/rancher-current.md §6 items 1 and 3).
pub const DEFAULT_NODE_IMAGE: &str = "rancher/systemd-node:v0.0.8";

/// `[docker]` of `rmm.toml`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    pub node_image: String,
    /// Every container of the cluster (real Rancher and RKE2 need it).
    pub privileged: bool,
    pub publish_address: String,
    /// 0 in `rmm.toml`: a free port, chosen when the run starts.
    pub publish_port: u16,
    /// Default `rmm-<cluster>`.
    pub network: Option<String>,
    /// Memory limits per role, MiB (RKE2's Docker tests: 3 GiB servers,
    /// 2 GiB agents, §6 item 3); 0 = no limit. Rancher's: none by default.
    pub master_memory_mib: u64,
    pub worker_memory_mib: u64,
    pub rancher_memory_mib: u64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            node_image: DEFAULT_NODE_IMAGE.into(),
            privileged: true,
            publish_address: "127.0.0.1".into(),
            publish_port: 0,
            network: None,
            master_memory_mib: 3072,
            worker_memory_mib: 2048,
            rancher_memory_mib: 0,
        }
    }
}

/// `[docker]` as written (every key optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFile {
    pub node_image: Option<String>,
    pub privileged: Option<bool>,
    pub publish_address: Option<String>,
    pub publish_port: Option<u16>,
    pub network: Option<String>,
    pub master_memory_mib: Option<u64>,
    pub worker_memory_mib: Option<u64>,
    pub rancher_memory_mib: Option<u64>,
}

impl DockerFile {
    pub fn resolve(&self) -> Result<DockerConfig, String> {
        let d = DockerConfig::default();
        let publish_address = self.publish_address.clone().unwrap_or(d.publish_address);
        if publish_address.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("[docker] publish_address {publish_address:?} is not an IP address"));
        }
        if let Some(n) = &self.network {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
                return Err(format!("[docker] network {n:?} is not a valid network name"));
            }
        }
        Ok(DockerConfig {
            node_image: self.node_image.clone().unwrap_or(d.node_image),
            privileged: self.privileged.unwrap_or(d.privileged),
            publish_address,
            publish_port: self.publish_port.unwrap_or(d.publish_port),
            network: self.network.clone(),
            master_memory_mib: self.master_memory_mib.unwrap_or(d.master_memory_mib),
            worker_memory_mib: self.worker_memory_mib.unwrap_or(d.worker_memory_mib),
            rancher_memory_mib: self.rancher_memory_mib.unwrap_or(d.rancher_memory_mib),
        })
    }
}

/// The settings file in the state dir.
pub const SETTINGS_FILE: &str = "docker.json";

/// The Rancher server's address on the cluster network, recorded in the
/// state dir once the network exists: [`DockerDriver::api_url`] knows its
/// own server by it.
pub const SERVER_ADDRESS_FILE: &str = "docker-server-address";

/// The settings a state dir's runs use: those recorded by the first `up`,
/// else `file` resolved, with a free port picked for `publish_port = 0`
/// and recorded (when `record`).
pub fn settings(state_dir: &Path, file: Option<&DockerFile>, record: bool) -> Result<DockerConfig, String> {
    let path = state_dir.join(SETTINGS_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()));
    }
    let mut cfg = file.cloned().unwrap_or_default().resolve()?;
    if record {
        if cfg.publish_port == 0 {
            let l = std::net::TcpListener::bind((cfg.publish_address.as_str(), 0))
                .map_err(|e| format!("no free port on {}: {e}", cfg.publish_address))?;
            cfg.publish_port = l.local_addr().map_err(|e| e.to_string())?.port();
        }
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(cfg)
}

/// The driver for one cluster.
pub struct DockerDriver {
    cluster: String,
    cfg: DockerConfig,
    /// The Rancher server's address on the cluster network, once known.
    rancher_ip: Mutex<Option<String>>,
    /// Serialises network creation (an engine of API 1.41 accepts two
    /// networks of one name when created at once).
    network_lock: tokio::sync::Mutex<()>,
    /// This process made (or looked for) the network to put machines on:
    /// it never removes it.
    made_network: std::sync::atomic::AtomicBool,
    /// Per container: does its image have `sudo`, and does exec run as root.
    sudo: Mutex<HashMap<String, (bool, bool)>>,
    /// Create+start latencies and concurrency (for the benchmark).
    pub stats: engine::Stats,
    state_dir: PathBuf,
}

fn transient(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Transient(format!("docker: {what}: {e}"))
}

fn exec_out(status: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> ExecOutput {
    ExecOutput { status, stdout: stdout.into(), stderr: stderr.into() }
}

impl DockerDriver {
    pub fn new(cluster: &str, cfg: DockerConfig, state_dir: &Path) -> DockerDriver {
        let recorded = std::fs::read_to_string(state_dir.join(SERVER_ADDRESS_FILE)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        DockerDriver {
            cluster: cluster.to_string(),
            cfg,
            rancher_ip: Mutex::new(recorded),
            network_lock: tokio::sync::Mutex::new(()),
            made_network: std::sync::atomic::AtomicBool::new(false),
            sudo: Mutex::new(HashMap::new()),
            stats: engine::Stats::default(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn network(&self) -> String {
        self.cfg.network.clone().unwrap_or_else(|| format!("rmm-{}", self.cluster))
    }

    fn container(&self, machine: &str) -> String {
        format!("rmm-{}-{machine}", self.cluster)
    }

    /// The server container (on the rancher machine).
    fn server_container(&self) -> String {
        format!("rmm-{}-{RANCHER}", self.cluster)
    }

    fn volume(&self) -> String {
        format!("rmm-{}-{RANCHER}-data", self.cluster)
    }

    fn labels(&self, machine: &str, role: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_CLUSTER.to_string(), self.cluster.clone()),
            (LABEL_MACHINE.to_string(), machine.to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
        ])
    }

    /// Remembers the server's address on the cluster network, and records
    /// it in the state dir ([`SERVER_ADDRESS_FILE`]) the first time, so
    /// that every later process of this state dir (`status`,
    /// `credentials`, `kubeconfig`, `down`) knows its own server exactly.
    fn remember_rancher_ip(&self, ip: &str) -> Result<(), DriverError> {
        let mut known = self.rancher_ip.lock().unwrap_or_else(|p| p.into_inner());
        if known.as_deref() == Some(ip) {
            return Ok(());
        }
        let path = self.state_dir.join(SERVER_ADDRESS_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{ip}\n"))
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| DriverError::Permanent(format!("cannot write {}: {e}", path.display())))?;
        *known = Some(ip.to_string());
        Ok(())
    }

    /// The network (made if missing) and the server's reserved address.
    async fn ensure_network(&self, e: &Engine) -> Result<String, DriverError> {
        let _one = self.network_lock.lock().await;
        self.made_network.store(true, std::sync::atomic::Ordering::SeqCst);
        let name = self.network();
        let ip = match e.network_subnet(&name, &self.cluster).await? {
            Some(subnet) => engine::reserved_ip(&subnet)?,
            None => {
                let subnet = e.create_network(&name, self.labels("", "network")).await?;
                engine::reserved_ip(&subnet)?
            }
        };
        self.remember_rancher_ip(&ip)?;
        Ok(ip)
    }

    fn memory_mib(&self, role: Role) -> u64 {
        match role {
            Role::Master => self.cfg.master_memory_mib,
            Role::Worker => self.cfg.worker_memory_mib,
            Role::Rancher => self.cfg.rancher_memory_mib,
        }
    }

    /// The rancher machine: the reserved address and the data volume.
    async fn rancher_machine(&self, e: &Engine) -> Result<Option<Machine>, DriverError> {
        let Some(subnet) = e.network_subnet(&self.network(), &self.cluster).await? else { return Ok(None) };
        if !e.volume_exists(&self.volume(), &self.cluster).await? {
            return Ok(None);
        }
        let ip = engine::reserved_ip(&subnet)?;
        self.remember_rancher_ip(&ip)?;
        Ok(Some(Machine { name: RANCHER.into(), cluster: Some(self.cluster.clone()), state: MachineState::Running, ip: Some(ip) }))
    }

    /// Drops `sudo` words from a command run as root where there is none.
    fn without_sudo(command: &str) -> String {
        let mut out = String::with_capacity(command.len());
        let mut rest = command;
        while let Some(i) = rest.find("sudo") {
            let before_ok = i == 0 || rest[..i].ends_with([' ', '\t', '|', ';', '&', '(']);
            let after = &rest[i + 4..];
            let after_ok = after.starts_with([' ', '\t']);
            out.push_str(&rest[..i]);
            if before_ok && after_ok {
                // the word and the blank after it
                rest = &after[1..];
            } else {
                out.push_str("sudo");
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }

    async fn sudo_facts(&self, e: &Engine, container: &str) -> Result<(bool, bool), DriverError> {
        if let Some(f) = self.sudo.lock().unwrap_or_else(|p| p.into_inner()).get(container) {
            return Ok(*f);
        }
        let root = e.runs_as_root(container).await?;
        let probe = e.exec(container, "command -v sudo >/dev/null 2>&1 && echo yes || echo no").await?;
        let facts = (probe.stdout.trim() == "yes", root);
        self.sudo.lock().unwrap_or_else(|p| p.into_inner()).insert(container.to_string(), facts);
        Ok(facts)
    }
}

#[async_trait]
impl MachineDriver for DockerDriver {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError> {
        let e = Engine::connect().await?;
        let net_ip = self.ensure_network(&e).await?;
        if spec.role == Role::Rancher {
            e.create_volume(&self.volume(), self.labels(&spec.name, spec.role.as_str())).await?;
            return Ok(Machine { name: spec.name.clone(), cluster: Some(self.cluster.clone()), state: MachineState::Running, ip: Some(net_ip) });
        }
        let name = self.container(&spec.name);
        // Found by name and label: running → adopted; stopped → started
        // again (its address re-read); half-made → removed, made again.
        if let Some(c) = e.inspect(&name).await? {
            if c.labels.get(LABEL_CLUSTER) != Some(&self.cluster) {
                return Err(DriverError::Permanent(format!("a container named {name} exists and is not cluster {}'s", self.cluster)));
            }
            match c.status.as_str() {
                "running" | "restarting" => return e.machine(&spec.name, &name, &self.network()).await,
                "exited" | "paused" => {
                    e.start(&name).await?;
                    return e.machine(&spec.name, &name, &self.network()).await;
                }
                _ => e.remove(&name, true).await?,
            }
        }
        let subnet = e.network_subnet(&self.network(), &self.cluster).await?.unwrap_or_default();
        let ip = match engine::node_host(&spec.name) {
            Some(n) => Some(engine::host_ip(&subnet, n)?),
            None => None,
        };
        let node = engine::NodeSpec {
            ip,
            container: name.clone(),
            hostname: spec.name.clone(),
            image: self.cfg.node_image.clone(),
            labels: self.labels(&spec.name, spec.role.as_str()),
            network: self.network(),
            memory_mib: self.memory_mib(spec.role),
            privileged: self.cfg.privileged,
        };
        self.stats.begin();
        let made = e.create_node(&node).await;
        self.stats.end();
        made?;
        e.machine(&spec.name, &name, &self.network()).await
    }

    async fn inspect(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let e = Engine::connect().await?;
        if name == RANCHER {
            return self.rancher_machine(&e).await;
        }
        let container = self.container(name);
        let Some(c) = e.inspect(&container).await? else { return Ok(None) };
        let state = match c.status.as_str() {
            "running" | "restarting" => MachineState::Running,
            "exited" | "paused" => MachineState::Stopped,
            // made, never started (a create cut short): half-made
            "created" => MachineState::Creating,
            other => MachineState::Error(format!("container {container} is {other}")),
        };
        Ok(Some(Machine { name: name.to_string(), cluster: c.labels.get(LABEL_CLUSTER).cloned(), state, ip: c.ip }))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, DriverError> {
        let e = Engine::connect().await?;
        let mut out: Vec<Machine> = Vec::new();
        for c in e.list_containers(cluster).await? {
            let Some(machine) = c.labels.get(LABEL_MACHINE).cloned() else { continue };
            if out.iter().any(|m| m.name == machine) {
                continue;
            }
            let state = if c.status == "running" { MachineState::Running } else { MachineState::Stopped };
            out.push(Machine { name: machine, cluster: Some(cluster.to_string()), state, ip: c.ip });
        }
        for v in e.list_volumes(cluster).await? {
            if !out.iter().any(|m| m.name == v) {
                out.push(Machine { name: v, cluster: Some(cluster.to_string()), state: MachineState::Running, ip: None });
            }
        }
        Ok(out)
    }

    async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let e = Engine::connect().await?;
        let container = if name == RANCHER { self.server_container() } else { self.container(name) };
        match e.inspect(&container).await? {
            Some(c) if c.status == "running" => {}
            // A node stopped behind rmm's back (`docker kill`): started
            // again; its address is fixed, so the one on record holds.
            Some(c) if name != RANCHER && engine::node_host(name).is_some() && matches!(c.status.as_str(), "exited" | "paused")
                && c.labels.get(LABEL_CLUSTER) == Some(&self.cluster) =>
            {
                tracing::warn!(machine = name, state = %c.status, "the node's container was not running: started it again");
                e.start(&container).await?;
            }
            Some(c) => return Err(DriverError::Transient(format!("machine {name}: container {container} is {}", c.status))),
            None => return Err(DriverError::Permanent(format!("machine {name}: no container {container}"))),
        }
        let (has_sudo, root) = self.sudo_facts(&e, &container).await?;
        let command = if !has_sudo && root { Self::without_sudo(command) } else { command.to_string() };
        e.exec(&container, &command).await
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        let e = Engine::connect().await?;
        if name == RANCHER {
            e.remove(&self.server_container(), false).await?;
            e.remove_volume(&self.volume()).await?;
        } else {
            e.remove(&self.container(name), true).await?;
        }
        // The last machine of the cluster takes the network with it, in a
        // process that only removes (`down`): an `up` removes a broken
        // machine to make it again, on a network the others use or are
        // about to. Checked under the lock, after this container is gone,
        // so of two removals that end together the later one sees both gone.
        if !self.made_network.load(std::sync::atomic::Ordering::SeqCst) {
            let _one = self.network_lock.lock().await;
            if e.list_containers(&self.cluster).await?.is_empty() {
                e.remove_network(&self.network(), &self.cluster).await?;
            }
        }
        Ok(())
    }

    /// A stopped node container of this cluster: started again, its
    /// address read anew (the engine may give it another).
    async fn restart(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        if name == RANCHER {
            return Ok(None);
        }
        let e = Engine::connect().await?;
        let container = self.container(name);
        match e.inspect(&container).await? {
            Some(c) if c.labels.get(LABEL_CLUSTER) == Some(&self.cluster) && matches!(c.status.as_str(), "exited" | "paused") => {
                e.start(&container).await?;
                Ok(Some(e.machine(name, &container, &self.network()).await?))
            }
            _ => Ok(None),
        }
    }

    async fn start_server(&self, machine: &str, server: &ServerSpec) -> Result<ExecOutput, DriverError> {
        debug_assert_eq!(machine, RANCHER);
        let e = Engine::connect().await?;
        let ip = self.ensure_network(&e).await?;
        e.create_volume(&self.volume(), self.labels(RANCHER, Role::Rancher.as_str())).await?;
        let name = self.server_container();
        if e.inspect(&name).await?.is_some() {
            return Ok(exec_out(125, "", format!("docker: Error response from daemon: Conflict. The container name \"/{name}\" is already in use.\n")));
        }
        // The emulator's knobs (`RMM_LOCAL_*`, test images only), when set:
        // configuration through the environment, as the Docker install takes it.
        let env = crate::drivers::local::EMULATOR_PASSTHROUGH
            .iter()
            .filter(|k| k.starts_with("RMM_LOCAL_"))
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
            .collect();
        let spec = engine::ServerContainer {
            env,
            container: name,
            image: server.image.clone(),
            labels: self.labels(RANCHER, Role::Rancher.as_str()),
            network: self.network(),
            ip,
            volume: self.volume(),
            publish_address: self.cfg.publish_address.clone(),
            publish_port: self.cfg.publish_port,
            privileged: self.cfg.privileged,
            memory_mib: self.cfg.rancher_memory_mib,
        };
        self.stats.begin();
        let made = e.create_server(&spec, &server.bootstrap_password).await;
        self.stats.end();
        match made {
            Ok(()) => Ok(exec_out(0, "", "")),
            Err(engine::ServerError::Refused(why)) => Ok(exec_out(125, "", format!("docker: {why}\n"))),
            Err(engine::ServerError::Driver(e)) => Err(e),
        }
    }

    async fn server_state(&self, _machine: &str) -> Result<ExecOutput, DriverError> {
        let e = Engine::connect().await?;
        Ok(match e.inspect(&self.server_container()).await? {
            Some(c) => exec_out(0, format!("{}\n", c.status), ""),
            None => exec_out(0, "", ""),
        })
    }

    async fn remove_server(&self, _machine: &str) -> Result<ExecOutput, DriverError> {
        let e = Engine::connect().await?;
        e.remove(&self.server_container(), false).await?;
        Ok(exec_out(0, "", ""))
    }

    /// rmm reaches the server through its published port; the address on
    /// the cluster network (the `server-url`) is for nodes and pods.
    fn api_url(&self, url: &str) -> String {
        let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or("");
        // Ours: exactly the server address recorded for this state dir (by
        // this process or the `up` before it); any other server (an
        // existing Rancher) is reached where it is.
        let ours = self.rancher_ip.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match ours.as_deref() == Some(host) {
            false => url.to_string(),
            true => {
                let addr = match self.cfg.publish_address.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(a)) => format!("[{a}]"),
                    Ok(a) if a.is_unspecified() => "127.0.0.1".to_string(),
                    _ => self.cfg.publish_address.clone(),
                };
                format!("https://{addr}:{}", self.cfg.publish_port)
            }
        }
    }

    /// The CA the server serves with, read inside its container through
    /// the Engine's exec API (never from the network):
    /// [`SERVER_CA_COMMAND`]. A server that has not made it yet (its
    /// embedded Kubernetes not up, the secret not there) is a transient
    /// error: whoever answers meanwhile is not known to be that server.
    async fn read_server_ca(&self, _machine: &str) -> Result<Option<String>, DriverError> {
        use base64::Engine as _;
        let e = Engine::connect().await?;
        let container = self.server_container();
        let not_yet = |why: String| DriverError::Transient(format!("the Rancher server has not made its CA yet ({why})"));
        match e.inspect(&container).await? {
            Some(c) if c.status == "running" => {}
            Some(c) => return Err(not_yet(format!("container {container} is {}", c.status))),
            None => return Err(not_yet(format!("no container {container}"))),
        }
        let out = e.exec(&container, SERVER_CA_COMMAND).await?;
        if out.status != 0 {
            let why = out.stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("no output").to_string();
            return Err(not_yet(format!("kubectl exited {}: {why}", out.status)));
        }
        let pem = base64::engine::general_purpose::STANDARD
            .decode(out.stdout.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|p| p.contains("-----BEGIN CERTIFICATE-----"))
            .ok_or_else(|| not_yet("the tls-rancher secret holds no PEM certificate".into()))?;
        Ok(Some(pem.trim().to_string()))
    }
}

/// How the server's CA is read inside the Rancher container. Rancher's
/// Docker install makes its CA with dynamiclistener and keeps it in the
/// secret `cattle-system/tls-rancher` of its embedded k3s
/// (rancher/rancher `pkg/tls/tls.go`: `readConfig` names it, `CAName:
/// "tls-rancher"`, `CANamespace: "cattle-system"`; `SetupListener` loads or
/// makes it with `kubernetes.LoadOrGenCA` and sets the `cacerts` setting to
/// it), under the key `tls.crt` (rancher/dynamiclistener
/// `storage/kubernetes/ca.go`). The image has `kubectl` (a link to k3s)
/// and `/root/.kube/config` pointing at the embedded k3s
/// (rancher/rancher `package/Dockerfile`). rmm's docker driver mounts no
/// certificate of the user's (`/etc/rancher/ssl/cacerts.pem`, §3.2), so
/// that secret is the CA served. The test Rancher image answers the same
/// query from the emulator's CA file (tests/e2e/docker/images.rs).
pub const SERVER_CA_COMMAND: &str = "kubectl -n cattle-system get secret tls-rancher -o 'jsonpath={.data.tls\\.crt}'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_is_dropped_only_as_a_word() {
        assert_eq!(
            DockerDriver::without_sudo(" curl --insecure -fL https://x/system-agent-install.sh | sudo  sh -s - --server https://x"),
            " curl --insecure -fL https://x/system-agent-install.sh |  sh -s - --server https://x"
        );
        assert_eq!(DockerDriver::without_sudo("sudo systemctl status a"), "systemctl status a");
        assert_eq!(DockerDriver::without_sudo("echo pseudo sudoers"), "echo pseudo sudoers");
    }

    #[test]
    fn only_our_server_is_reached_through_the_published_port() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DockerConfig { publish_port: 4443, ..DockerConfig::default() };
        let d = DockerDriver::new("c", cfg.clone(), dir.path());
        assert_eq!(d.api_url("https://10.231.4.2"), "https://10.231.4.2", "no address recorded: not known to be ours");
        assert_eq!(d.api_url("https://rancher.example.com"), "https://rancher.example.com");
        d.remember_rancher_ip("10.231.4.2").unwrap();
        assert_eq!(d.api_url("https://10.231.4.2"), "https://127.0.0.1:4443");
        assert_eq!(d.api_url("https://10.231.9.2"), "https://10.231.9.2", "another server of the same shape is not ours");
        // A later process of the state dir (status, credentials) knows it too.
        let later = DockerDriver::new("c", cfg, dir.path());
        assert_eq!(later.api_url("https://10.231.4.2:443/v3"), "https://127.0.0.1:4443");
    }

    #[test]
    fn settings_resolve_and_validate() {
        let d = DockerFile::default().resolve().unwrap();
        assert_eq!(d, DockerConfig::default());
        assert!(DockerFile { publish_address: Some("nope".into()), ..Default::default() }.resolve().is_err());
        assert!(DockerFile { network: Some("a b".into()), ..Default::default() }.resolve().is_err());
    }

    #[test]
    fn port_zero_is_a_free_port_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = settings(dir.path(), None, true).unwrap();
        assert_ne!(a.publish_port, 0);
        let b = settings(dir.path(), Some(&DockerFile { publish_port: Some(1), ..Default::default() }), true).unwrap();
        assert_eq!(a, b, "the recorded settings win");
    }
}

#[cfg(test)]
mod address_tests {
    use super::engine::{host_ip, node_host, reserved_ip};

    #[test]
    fn every_node_of_a_plan_has_its_own_fixed_address_apart_from_the_servers_and_the_dynamic_range() {
        let mut seen = std::collections::BTreeSet::from([2u8]);
        for i in 1..=99 {
            for name in [format!("master{i:02}"), format!("worker{i:02}")] {
                let n = node_host(&name).unwrap();
                assert!(n > 2 && n < 224, "{name}: {n}");
                assert!(seen.insert(n), "{name}: {n} twice");
            }
        }
        assert_eq!(node_host("rancher"), None);
        assert_eq!(node_host("master100"), None);
        assert_eq!(reserved_ip("10.201.7.0/24").unwrap(), "10.201.7.2");
        assert_eq!(host_ip("10.201.7.0/24", node_host("worker01").unwrap()).unwrap(), "10.201.7.111");
    }
}
