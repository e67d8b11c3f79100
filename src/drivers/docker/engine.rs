//! The Engine API calls the driver makes, over `bollard` (0.21.1,
//! reference/rancher-current.md §5.3). A client is made per driver call
//! (`DOCKER_HOST` or the local socket, as the docker CLI does, then
//! `negotiate_version`: this machine's engine speaks API 1.41 and current
//! engines refuse old clients): a client is tied to the runtime it first
//! connected on, and rmm's commands use more than one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions, ListContainersOptionsBuilder,
    ListNetworksOptions, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptions,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use rand::Rng;
use rmm_actors::ports::{DriverError, ExecOutput, Machine, MachineState, Secret};
use tokio::io::AsyncWriteExt;

use super::{transient, LABEL_CLUSTER, LABEL_MACHINE};

/// Where the server container's entrypoint wrapper reads the password.
pub const PASSWORD_FILE: &str = "/run/rmm/bootstrap-password";

/// The wrapper around the image's own entrypoint and command.
const PASSWORD_WRAPPER: &str = "{ read -r CATTLE_BOOTSTRAP_PASSWORD || [ -n \"$CATTLE_BOOTSTRAP_PASSWORD\" ]; } < /run/rmm/bootstrap-password && export CATTLE_BOOTSTRAP_PASSWORD && exec \"$@\"";

/// The etcd data dirs, on tmpfs (Rancher's v2prov CI backs them with
/// memory "to avoid disk pressure … slow fsyncs", §6 item 1).
const ETCD_TMPFS: &[&str] = &["/var/lib/rancher/rke2/server/db", "/var/lib/rancher/k3s/server/db"];

/// What RKE2's Docker tests mount into a node (§6 item 3).
const NODE_BINDS: &[&str] = &["/lib/modules:/lib/modules:ro", "/sys/fs/bpf:/sys/fs/bpf", "/sys/fs/cgroup:/run/cilium/cgroupv2"];

/// Container create+start latencies and how many ran at once.
#[derive(Default)]
pub struct Stats {
    now: AtomicUsize,
    pub peak: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
    pub latencies_ms: Mutex<Vec<u64>>,
    pub total_ms: AtomicU64,
}

impl Stats {
    pub fn begin(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        tracing::info!(target: "rmm::docker", creating = n, "container create started");
        self.starts.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
    }
    pub fn end(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        let start = self.starts.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(s) = start {
            let ms = s.elapsed().as_millis() as u64;
            self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
            tracing::info!(target: "rmm::docker", create_start_ms = ms, "container created and started");
        }
    }
}

/// A container as the driver needs to see it.
pub struct Seen {
    pub status: String,
    pub labels: HashMap<String, String>,
    /// Its address on the cluster network (the first network otherwise).
    pub ip: Option<String>,
    pub user: String,
}

pub struct NodeSpec {
    /// Its fixed address on the network, if it has one.
    pub ip: Option<String>,
    pub container: String,
    pub hostname: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub network: String,
    pub memory_mib: u64,
    pub privileged: bool,
}

pub struct ServerContainer {
    /// `NAME=value` for the server (never a secret).
    pub env: Vec<String>,
    pub container: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub network: String,
    pub ip: String,
    pub volume: String,
    pub publish_address: String,
    pub publish_port: u16,
    pub privileged: bool,
    pub memory_mib: u64,
}

pub enum ServerError {
    /// The engine refused (no such image, the port is taken): the words
    /// `docker run` would print.
    Refused(String),
    Driver(DriverError),
}

impl From<DriverError> for ServerError {
    fn from(e: DriverError) -> Self {
        ServerError::Driver(e)
    }
}

/// `10.R.R.2` of `10.R.R.0/24`: the server's reserved address.
pub fn reserved_ip(subnet: &str) -> Result<String, DriverError> {
    host_ip(subnet, 2)
}

/// Host `n` of a /24 subnet.
pub fn host_ip(subnet: &str, n: u8) -> Result<String, DriverError> {
    let base = subnet.split('/').next().unwrap_or("");
    let ip: std::net::Ipv4Addr =
        base.parse().map_err(|_| DriverError::Permanent(format!("docker: the cluster network's subnet {subnet:?} is not IPv4")))?;
    let o = ip.octets();
    Ok(std::net::Ipv4Addr::new(o[0], o[1], o[2], n).to_string())
}

/// A node's fixed host number on the cluster's /24: `masterNN` → 10 + NN,
/// `workerNN` → 110 + NN (NN ≤ 99), so a node keeps its address when its
/// container is started again (the address its registration and the log
/// name). Other names get one from the dynamic range (`.224/27`).
pub fn node_host(machine: &str) -> Option<u8> {
    let (base, n) = if let Some(n) = machine.strip_prefix("master") {
        (10u16, n)
    } else {
        (110u16, machine.strip_prefix("worker")?)
    };
    let n: u16 = n.parse().ok().filter(|n| (1..=99).contains(n))?;
    u8::try_from(base + n).ok()
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message_of(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// An engine error: a 4xx other than those handled is permanent (bad
/// configuration), anything else may pass.
fn driver_error(what: &str, e: bollard::errors::Error) -> DriverError {
    match status_of(&e) {
        Some(s) if (400..500).contains(&s) => DriverError::Permanent(format!("docker: {what}: {}", message_of(&e))),
        _ => transient(what, message_of(&e)),
    }
}

pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// `DOCKER_HOST` or the local socket, at the API version both speak.
    pub async fn connect() -> Result<Engine, DriverError> {
        let docker = Docker::connect_with_defaults().map_err(|e| DriverError::Permanent(format!("docker: {e}")))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| transient("no Docker Engine answers (DOCKER_HOST or /var/run/docker.sock)", e))?;
        Ok(Engine { docker })
    }

    pub async fn inspect(&self, name: &str) -> Result<Option<Seen>, DriverError> {
        let c = match self.docker.inspect_container(name, None::<InspectContainerOptions>).await {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(driver_error(&format!("inspecting {name}"), e)),
        };
        let status = c
            .state
            .as_ref()
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let networks = c.network_settings.and_then(|n| n.networks).unwrap_or_default();
        let ip = networks.values().filter_map(|e| e.ip_address.clone()).find(|ip| !ip.is_empty());
        Ok(Some(Seen { status, labels, ip, user: config.user.unwrap_or_default() }))
    }

    pub async fn runs_as_root(&self, container: &str) -> Result<bool, DriverError> {
        Ok(self.inspect(container).await?.is_some_and(|c| matches!(c.user.as_str(), "" | "root" | "0" | "0:0" | "root:root")))
    }

    /// A running container as a machine (its address re-read).
    pub async fn machine(&self, machine: &str, container: &str, _network: &str) -> Result<Machine, DriverError> {
        match self.inspect(container).await? {
            Some(c) if c.status == "running" => Ok(Machine {
                name: machine.to_string(),
                cluster: c.labels.get(LABEL_CLUSTER).cloned(),
                state: MachineState::Running,
                ip: c.ip,
            }),
            Some(c) => Err(DriverError::Transient(format!("docker: container {container} is {} after its start", c.status))),
            None => Err(DriverError::Transient(format!("docker: container {container} is gone after its start"))),
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), DriverError> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            // already started
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(driver_error(&format!("starting {name}"), e)),
        }
    }

    /// Removes a container (force; `volumes`: its anonymous volumes too).
    /// Absent is fine.
    pub async fn remove(&self, name: &str, volumes: bool) -> Result<(), DriverError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(volumes).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // "removal of container … is already in progress"
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(driver_error(&format!("removing {name}"), e)),
        }
    }

    /// The subnet of the cluster's network, if it exists (and is ours).
    pub async fn network_subnet(&self, name: &str, cluster: &str) -> Result<Option<String>, DriverError> {
        let n = match self.docker.inspect_network(name, None::<InspectNetworkOptions>).await {
            Ok(n) => n,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(driver_error(&format!("inspecting network {name}"), e)),
        };
        if n.labels.as_ref().and_then(|l| l.get(LABEL_CLUSTER)) != Some(&cluster.to_string()) {
            return Err(DriverError::Permanent(format!(
                "docker: a network named {name} exists and is not cluster {cluster}'s (set [docker] network to another name)"
            )));
        }
        Ok(n.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().find_map(|c| c.subnet))
    }

    /// Makes the network on a /24 no other network of the engine uses:
    /// `.2` is the server's, nodes have fixed addresses ([`node_host`]),
    /// the engine hands out `.224/27` to anything else. Returns the subnet.
    pub async fn create_network(&self, name: &str, labels: HashMap<String, String>) -> Result<String, DriverError> {
        let used: Vec<String> = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| driver_error("listing networks", e))?
            .into_iter()
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .filter_map(|c| c.subnet)
            .collect();
        let mut last = String::new();
        for _ in 0..32 {
            let (a, b) = {
                let mut rng = rand::thread_rng();
                (rng.gen_range(200..=254u8), rng.gen_range(0..=255u8))
            };
            let subnet = format!("10.{a}.{b}.0/24");
            if used.iter().any(|u| u.starts_with(&format!("10.{a}.{b}."))) {
                continue;
            }
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.clone()),
                        ip_range: Some(format!("10.{a}.{b}.224/27")),
                        gateway: Some(format!("10.{a}.{b}.1")),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => return Ok(subnet),
                // another subnet of the host overlaps: try another
                Err(e) if message_of(&e).contains("overlap") => last = message_of(&e),
                Err(e) => return Err(driver_error(&format!("creating network {name}"), e)),
            }
        }
        Err(DriverError::Permanent(format!("docker: no free 10.200-254.x.0/24 subnet for network {name}: {last}")))
    }

    /// Removes the network if it is ours; absent is fine.
    pub async fn remove_network(&self, name: &str, cluster: &str) -> Result<(), DriverError> {
        match self.network_subnet(name, cluster).await {
            Ok(Some(_)) | Ok(None) => {}
            Err(_) => return Ok(()), // not ours: left alone
        }
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(driver_error(&format!("removing network {name}"), e)),
        }
    }

    pub async fn create_volume(&self, name: &str, labels: HashMap<String, String>) -> Result<(), DriverError> {
        // Creating a volume that exists is a no-op for the engine.
        let req = VolumeCreateRequest { name: Some(name.to_string()), labels: Some(labels), ..Default::default() };
        self.docker.create_volume(req).await.map_err(|e| driver_error(&format!("creating volume {name}"), e))?;
        Ok(())
    }

    pub async fn volume_exists(&self, name: &str, cluster: &str) -> Result<bool, DriverError> {
        Ok(self.volumes(cluster).await?.iter().any(|(n, _)| n == name))
    }

    /// The cluster's volumes: (name, machine label).
    async fn volumes(&self, cluster: &str) -> Result<Vec<(String, String)>, DriverError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_CLUSTER}={cluster}")])]);
        let opts = ListVolumesOptionsBuilder::default().filters(&filters).build();
        let list = self.docker.list_volumes(Some(opts)).await.map_err(|e| driver_error("listing volumes", e))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| {
                let m = v.labels.get(LABEL_MACHINE).cloned().unwrap_or_default();
                (v.name, m)
            })
            .collect())
    }

    /// The machines the cluster's volumes belong to.
    pub async fn list_volumes(&self, cluster: &str) -> Result<Vec<String>, DriverError> {
        Ok(self.volumes(cluster).await?.into_iter().map(|(_, m)| m).filter(|m| !m.is_empty()).collect())
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), DriverError> {
        match self.docker.remove_volume(name, None::<RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(driver_error(&format!("removing volume {name}"), e)),
        }
    }

    /// Every container labelled with the cluster, any state.
    pub async fn list_containers(&self, cluster: &str) -> Result<Vec<Seen>, DriverError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_CLUSTER}={cluster}")])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| driver_error("listing containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let ip = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .unwrap_or_default()
                    .values()
                    .filter_map(|e| e.ip_address.clone())
                    .find(|ip| !ip.is_empty());
                Seen {
                    status: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    labels: c.labels.unwrap_or_default(),
                    ip,
                    user: String::new(),
                }
            })
            .collect())
    }

    fn endpoint(network: &str, alias: &str, ip: Option<&str>) -> NetworkingConfig {
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(vec![alias.to_string()]),
                    ipam_config: ip.map(|ip| EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
                    ..Default::default()
                },
            )])),
        }
    }

    fn memory(mib: u64) -> Option<i64> {
        (mib > 0).then_some((mib * 1024 * 1024) as i64)
    }

    /// Creates and starts a node container. A create cut short leaves a
    /// container in state `created`: `inspect` calls it half-made.
    pub async fn create_node(&self, n: &NodeSpec) -> Result<(), DriverError> {
        let body = ContainerCreateBody {
            image: Some(n.image.clone()),
            hostname: Some(n.hostname.clone()),
            labels: Some(n.labels.clone()),
            host_config: Some(HostConfig {
                privileged: Some(n.privileged),
                memory: Self::memory(n.memory_mib),
                binds: Some(NODE_BINDS.iter().map(|b| b.to_string()).collect()),
                tmpfs: Some(ETCD_TMPFS.iter().map(|p| (p.to_string(), String::new())).collect()),
                network_mode: Some(n.network.clone()),
                ..Default::default()
            }),
            networking_config: Some(Self::endpoint(&n.network, &n.hostname, n.ip.as_deref())),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&n.container).build();
        match self.docker.create_container(Some(opts), body).await {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {
                return Err(DriverError::Permanent(format!(
                    "docker: image {} is not on the engine ({}); pull it first (`docker pull {}`)",
                    n.image,
                    message_of(&e),
                    n.image
                )))
            }
            Err(e) => return Err(driver_error(&format!("creating container {}", n.container), e)),
        }
        self.start(&n.container).await
    }

    /// Creates the server container, puts the bootstrap password in it as
    /// a file, and starts it (see the module's doc).
    pub async fn create_server(&self, s: &ServerContainer, password: &Secret) -> Result<(), ServerError> {
        let image = match self.docker.inspect_image(&s.image).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(ServerError::Refused(format!("Unable to find image '{}' locally (pull it first: no image is pulled by rmm)", s.image)))
            }
            Err(e) => return Err(driver_error(&format!("inspecting image {}", s.image), e).into()),
        };
        let config = image.config.unwrap_or_default();
        let mut argv: Vec<String> = config.entrypoint.unwrap_or_default();
        argv.extend(config.cmd.unwrap_or_default());
        if argv.is_empty() {
            return Err(ServerError::Refused(format!("image {} has no entrypoint or command", s.image)));
        }
        let port = "443/tcp".to_string();
        let body = ContainerCreateBody {
            image: Some(s.image.clone()),
            hostname: Some("rancher".into()),
            labels: Some(s.labels.clone()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), PASSWORD_WRAPPER.into(), "rancher-entrypoint".into()]),
            cmd: Some(argv),
            env: Some(s.env.clone()),
            exposed_ports: Some(vec![port.clone()]),
            host_config: Some(HostConfig {
                privileged: Some(s.privileged),
                memory: Self::memory(s.memory_mib),
                binds: Some(vec![format!("{}:/var/lib/rancher", s.volume)]),
                restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::UNLESS_STOPPED), ..Default::default() }),
                port_bindings: Some(HashMap::from([(
                    port,
                    Some(vec![PortBinding { host_ip: Some(s.publish_address.clone()), host_port: Some(s.publish_port.to_string()) }]),
                )])),
                network_mode: Some(s.network.clone()),
                ..Default::default()
            }),
            networking_config: Some(Self::endpoint(&s.network, "rancher", Some(&s.ip))),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&s.container).build();
        if let Err(e) = self.docker.create_container(Some(opts), body).await {
            return Err(match status_of(&e) {
                Some(409) => ServerError::Refused(format!("Conflict. The container name \"/{}\" is already in use", s.container)),
                _ => driver_error(&format!("creating container {}", s.container), e).into(),
            });
        }
        let tar = super::tar::one_file(PASSWORD_FILE, format!("{}\n", password.expose()).as_bytes(), 0o400);
        let upload = UploadToContainerOptionsBuilder::default().path("/").build();
        if let Err(e) = self.docker.upload_to_container(&s.container, Some(upload), bollard::body_full(tar.into())).await {
            // Not started without its password: removed, made again next try.
            let _ = self.remove(&s.container, false).await;
            return Err(driver_error("writing the bootstrap password into the server container", e).into());
        }
        match self.docker.start_container(&s.container, None).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let why = message_of(&e);
                // A port taken by another process: the start fails, the
                // container stays `created` (removed by the next try).
                let _ = self.remove(&s.container, false).await;
                Err(ServerError::Refused(format!("Error response from daemon: {why}")))
            }
        }
    }

    /// `sh -s` with the command on standard input (never in the exec's
    /// configuration); stdout, stderr and the exit code.
    pub async fn exec(&self, container: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions::<String> {
                    cmd: Some(vec!["/bin/sh".into(), "-s".into()]),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| driver_error(&format!("exec in {container}"), e))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
            .await
            .map_err(|e| driver_error(&format!("exec in {container}"), e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        match started {
            StartExecResults::Attached { mut output, mut input } => {
                let script = format!("{command}\n");
                let writer = async move {
                    let _ = input.write_all(script.as_bytes()).await;
                    let _ = input.shutdown().await;
                };
                let reader = async {
                    while let Some(msg) = output.next().await {
                        match msg {
                            Ok(bollard::container::LogOutput::StdOut { message }) => stdout.extend_from_slice(&message),
                            Ok(bollard::container::LogOutput::StdErr { message }) => stderr.extend_from_slice(&message),
                            Ok(_) => {}
                            Err(e) => return Err(transient(&format!("exec in {container}"), e)),
                        }
                    }
                    Ok(())
                };
                let ((), read) = tokio::join!(writer, reader);
                read?;
            }
            StartExecResults::Detached => return Err(transient(&format!("exec in {container}"), "detached")),
        }
        let status = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| driver_error(&format!("exec in {container}"), e))?
            .exit_code
            .unwrap_or(-1) as i32;
        Ok(ExecOutput {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}
