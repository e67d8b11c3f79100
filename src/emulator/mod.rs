//! The Rancher API emulator of the local world (`rmm emulator serve`).
//!
//! It stands for **Rancher v2.11.3** running as the single-node Docker install
//! (`docker run -d --privileged -p 80:80 -p 443:443 rancher/rancher:v2.11.3`),
//! with an **RKE1 custom cluster**, and behaves as every release from 2.6.3 to
//! 2.11 does for the calls rmm makes (facts: `reference/rancher-api.md`):
//!
//! * HTTPS only, with a self-signed CA kept in the data dir; `/ping` and
//!   `/healthz` answer `pong`; `/cacerts` gives the PEM plus a newline.
//! * Bootstrap password: `CATTLE_BOOTSTRAP_PASSWORD`, or 54 generated
//!   characters logged as `Bootstrap Password: …`; used only when the admin
//!   user is first created. New passwords need 12 runes
//!   (`password-min-length`). Login answers 201, changepassword 200 with an
//!   empty body, and sets `first-login` to `false`.
//! * The auth filter (Bearer, Basic, `R_SESS` cookie) with its own 401 shape;
//!   norman errors, collections, filters and `X-Api-Schemas`; type segments
//!   singular or plural in any case; norman's CSRF check for browser-like
//!   requests and its form-body trap.
//! * Clusters start `provisioning` and get their `default-token`; registration
//!   tokens have empty commands in the POST response, and on reads until
//!   `server-url` is set (the 2.6+ controller). Agents register through
//!   `/v3/connect/register`; a node is listed `RMM_LOCAL_NODE_READY_MS` after
//!   registering, and the cluster is `active` once the listed nodes cover
//!   etcd, controlplane and worker (state is computed on read).
//!
//! `--rancher-version` picks the line (default 2.15): from 2.12 the RKE1
//! path is gone and the v1 side (`v1`: RKE2/K3s custom clusters, the
//! system-agent's `/v3/connect/agent`, CAPI machines, the planner, the
//! controllers' delays and the `RMM_LOCAL_*` failures) is what a run uses;
//! `/v1-public/login` from 2.13 (`reference/rancher-current.md`).
//!
//! Layout: [`model`] (pure state and rules), `render` (JSON shapes), `http`
//! (routing and the auth filter), `store` (atomic files), `tls` (CA and cert).

/// One line of the server's log on stdout. A log that cannot be written
/// (the machine's disk is full, stdout closed) is dropped, as a server's
/// logger does: `println!` panicked, and every request of a server whose
/// disk was full got no answer at all (not even `/ping`).
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod http;
pub mod model;
mod render;
mod store;
mod tls;
mod v1;
pub use v1::{Knobs, Line};

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::{rngs::StdRng, SeedableRng};

/// `rmm emulator …`
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    #[command(subcommand)]
    pub command: EmulatorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EmulatorCommand {
    /// Serve the Rancher v3 API over HTTPS until killed.
    Serve {
        /// Where the emulator keeps its state (survives restarts).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// IP:PORT to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Extra subject alternative names (IP or DNS) for the server certificate.
        #[arg(long = "tls-san")]
        tls_san: Vec<String>,
        /// The Rancher line to behave as: 2.6 to 2.15 (2.11 is the last
        /// with RKE1; 2.13 adds /v1-public/login). A tag such as v2.15.1
        /// works too.
        #[arg(long = "rancher-version", default_value = "2.15", value_parser = parse_line)]
        rancher_version: Line,
    },
    /// Run `rmm emulator serve ARGS` as a container with a restart policy,
    /// detached (started by the local world's `docker run`).
    Supervise {
        /// The container's record (`containers/<id>.json`).
        #[arg(long)]
        container: std::path::PathBuf,
        /// `no`, `always`, `unless-stopped`, `on-failure[:N]`.
        #[arg(long, default_value = "no")]
        restart: String,
        /// The arguments of `rmm emulator serve`.
        #[arg(last = true)]
        serve: Vec<String>,
    },
    /// The system-agent installer's work on a node (register through
    /// `/v3/connect/agent`, first check-in): what the served install
    /// script runs as the downloaded agent binary.
    #[command(hide = true)]
    SystemAgent(SystemAgentArgs),
    /// The system-agent's service, as the unit the installer writes runs
    /// it: holds a watch of its plan secret open (reconnecting) for good.
    #[command(hide = true)]
    SystemAgentService,
    /// Runs the command line on standard input as the local world's
    /// machine NAME (its directory DIR, its address IP) would: the
    /// local world's `docker` and system-agent. The docker-machine test
    /// double's `ssh` uses it; the command (it may carry a token) is never
    /// an argument.
    #[command(hide = true)]
    MachineExec {
        #[arg(long)]
        name: String,
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Stops every process of the local-world machine whose files are in
    /// DIR, as they die with a VM powered off or deleted (the
    /// docker-machine test double's `stop`, `kill` and `rm`).
    #[command(hide = true)]
    MachineStop {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// The local world's `docker` (run, ps, stop, rm of the Rancher and
    /// agent images) as a command on a host of its own: the machine's
    /// directory in `RMM_HOST_DIR`, its address in `RMM_HOST_IP`. The ssh
    /// driver's tests put it on their hosts' PATH as `docker`.
    #[command(hide = true)]
    HostDocker(SystemAgentArgs),
}

/// What the emulator's served install script runs on a node as the
/// downloaded agent binary (`drivers/local/agent.rs` `system_agent_main`).
#[derive(Debug, clap::Args)]
pub struct SystemAgentArgs {
    /// The installer's arguments (`--server … --token … --etcd …`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

fn parse_line(s: &str) -> Result<Line, String> {
    Line::parse(s)
}

/// The CA certificate's file in the emulator's data dir.
pub const CA_CERT_FILE: &str = tls::CA_CERT;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2021/09/08 12:00:00`, the prefix of Rancher's log lines.
pub(crate) fn log_time(ms: u64) -> String {
    render::rfc3339(ms)
        .replace('-', "/")
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn env_ms(name: &str) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number of milliseconds")),
        _ => Ok(0),
    }
}

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    /// Port 0 picks a free port (see [`Running::addr`]).
    pub listen: SocketAddr,
    /// `CATTLE_BOOTSTRAP_PASSWORD`: used only if the admin user does not exist yet.
    pub bootstrap_password: Option<String>,
    /// `RMM_LOCAL_NODE_READY_MS`.
    pub node_ready: Duration,
    /// Extra certificate SANs besides the listen IP, 127.0.0.1 and localhost.
    pub tls_sans: Vec<String>,
    /// `--rancher-version`.
    pub rancher_version: Line,
    /// Controller delays and injected failures (`RMM_LOCAL_*`).
    pub knobs: Knobs,
}

/// An emulator whose state and CA are loaded but which does not listen yet.
pub struct Emulator {
    app: Arc<http::App>,
    ca: tls::Ca,
    opts: ServeOptions,
    /// The bootstrap password, if it was generated by this `open`.
    pub generated_password: Option<String>,
}

impl Emulator {
    /// Load (or create) the CA and the state in `opts.data_dir`.
    pub fn open(opts: ServeOptions) -> anyhow::Result<Emulator> {
        let dir = &opts.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", dir.display()))?;
        }
        let ca = tls::Ca::load_or_create(dir)?;
        let loaded = store::load(dir)?;
        let fresh = loaded.is_none();
        let mut rng = StdRng::from_entropy();
        let (model, generated) = model::Model::open(
            loaded.unwrap_or_default(),
            ca.cert_pem.clone(),
            opts.node_ready.as_millis() as u64,
            opts.bootstrap_password.as_deref(),
            &mut rng,
            now_ms(),
        );
        let (mut model, generated) = (model, generated);
        model.line = opts.rancher_version;
        model.knobs = opts.knobs.clone();
        // 2.12–2.14 refuse to start while RKE1 clusters exist (§1.1
        // `validateRKE1Resources`); the message is the chart hook's.
        if model.line.refuses_rke1_at_start()
            && model.state.clusters.iter().any(|c| c.spec.contains_key("rancherKubernetesEngineConfig"))
        {
            anyhow::bail!(
                "Rancher v2.12+ does not support RKE1. Detected RKE1-related resources. Please migrate these clusters to RKE2 or K3s, or delete the related resources. More info: https://www.suse.com/c/rke-end-of-life-by-july-2025-replatform-to-rke2-or-k3s"
            );
        }
        if fresh || generated.is_some() {
            store::save(dir, &model.state)?;
        }
        let app = Arc::new(http::App {
            cacerts_file: format!("{}\n", model.cacerts),
            inner: Mutex::new(http::Inner { model, rng }),
            data_dir: dir.clone(),
            default_host: opts.listen.to_string(),
        });
        Ok(Emulator {
            app,
            ca,
            opts,
            generated_password: generated,
        })
    }

    /// The CA certificate (PEM) clients should trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Print what Rancher prints at first start when it generated the password.
    pub fn print_banner(&self) {
        if let Some(pw) = &self.generated_password {
            let t = log_time(now_ms());
            let host = match self.opts.listen.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            log_line!("{t} [INFO] ");
            log_line!("{t} [INFO] -----------------------------------------");
            log_line!("{t} [INFO] Welcome to Rancher");
            log_line!("{t} [INFO] A bootstrap password has been generated for your admin user.");
            log_line!("{t} [INFO] ");
            log_line!("{t} [INFO] Bootstrap Password: {pw}");
            log_line!("{t} [INFO] ");
            log_line!(
                "{t} [INFO] Use https://{host}/dashboard/?setup={pw} to complete setup in the UI"
            );
            log_line!("{t} [INFO] -----------------------------------------");
            log_line!("{t} [INFO] ");
        }
    }

    /// Bind and serve in the background (on the current tokio runtime).
    pub fn serve(self) -> anyhow::Result<Running> {
        let listener = std::net::TcpListener::bind(self.opts.listen)
            .with_context(|| format!("listening on {}", self.opts.listen))?;
        let addr = listener.local_addr()?;
        let mut sans = vec![];
        if !addr.ip().is_unspecified() {
            sans.push(addr.ip().to_string());
        } else {
            // 0.0.0.0: every address of the host, which a container cannot
            // know in advance.
            sans.extend(host_addresses().into_iter().map(|ip| ip.to_string()));
        }
        // Rancher's own static SANs (rancher/rancher `pkg/tls/tls.go`
        // `readConfig`: localhost, 127.0.0.1, rancher.cattle-system and the
        // host interface's address).
        for s in ["127.0.0.1", "localhost", "rancher.cattle-system"]
            .map(String::from)
            .into_iter()
            .chain(self.opts.tls_sans.iter().cloned())
        {
            if !sans.contains(&s) {
                sans.push(s);
            }
        }
        let config = self.ca.server_config(&sans)?;
        let handle = axum_server::Handle::new();
        // TCP_NODELAY, as Go's net/http (so Rancher) sets on every
        // connection: without it a response written in two TLS records
        // waits for the client's delayed ACK, ~40 ms a request.
        let tls = axum_server::tls_rustls::RustlsAcceptor::new(axum_server::tls_rustls::RustlsConfig::from_config(config))
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        let server = axum_server::Server::from_tcp(listener).acceptor(tls).handle(handle.clone());
        self.app.inner.lock().unwrap_or_else(|p| p.into_inner()).model.started_ms = now_ms();
        let router = http::router(self.app.clone());
        let task = tokio::spawn(async move { server.serve(router.into_make_service_with_connect_info::<SocketAddr>()).await });
        log_line!(
            "{} [INFO] Rancher {} API emulator listening on https://{addr}",
            log_time(now_ms()),
            self.opts.rancher_version.version()
        );
        Ok(Running {
            addr,
            ca_pem: self.ca.cert_pem.clone(),
            handle,
            task,
        })
    }
}

/// A serving emulator.
pub struct Running {
    addr: SocketAddr,
    ca_pem: String,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `https://IP:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// Stop listening, let requests in flight finish (up to 1 s), and wait.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
        self.task
            .await
            .context("emulator task")?
            .context("emulator server")?;
        Ok(())
    }
}

/// Open the data dir and serve: [`Emulator::open`] + banner + [`Emulator::serve`].
pub async fn start(opts: ServeOptions) -> anyhow::Result<Running> {
    let emulator = Emulator::open(opts)?;
    emulator.print_banner();
    emulator.serve()
}

/// `rmm emulator serve`: blocks until SIGTERM or SIGINT.
pub fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (data_dir, listen, tls_san, line) = match args.command {
        EmulatorCommand::Serve { data_dir, listen, tls_san, rancher_version } => {
            (data_dir, listen, tls_san, rancher_version)
        }
        EmulatorCommand::Supervise { container, restart, serve } => {
            let policy = crate::drivers::local::supervisor::RestartPolicy::parse(&restart).map_err(anyhow::Error::msg)?;
            return crate::drivers::local::supervisor::run(container, policy, serve);
        }
        EmulatorCommand::MachineExec { name, ip, dir } => {
            use std::io::{Read, Write};
            let mut command = String::new();
            std::io::stdin().read_to_string(&mut command).context("reading the command from standard input")?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
            let out = runtime.block_on(crate::drivers::local::exec_as_machine(&name, ip, dir, command.trim()))?;
            let _ = std::io::stdout().write_all(out.stdout.as_bytes());
            let _ = std::io::stderr().write_all(out.stderr.as_bytes());
            std::process::exit(out.status);
        }
        EmulatorCommand::MachineStop { dir } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
            runtime.block_on(crate::drivers::local::power_off(&dir));
            return Ok(());
        }
        EmulatorCommand::HostDocker(a) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
            let status = runtime.block_on(crate::drivers::local::host_docker(&a.args))?;
            std::process::exit(status);
        }
        EmulatorCommand::SystemAgentService => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
            let status = runtime.block_on(crate::drivers::local::agent::system_agent_service());
            std::process::exit(status);
        }
        EmulatorCommand::SystemAgent(a) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
            let status = runtime.block_on(crate::drivers::local::agent::system_agent_main(&a.args));
            std::process::exit(status);
        }
    };
    crate::drivers::local::supervisor::die_with_supervisor()?;
    let boot = Duration::from_millis(env_ms("RMM_LOCAL_RANCHER_BOOT_MS")?);
    let opts = ServeOptions {
        data_dir,
        listen,
        bootstrap_password: std::env::var("CATTLE_BOOTSTRAP_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
        node_ready: Duration::from_millis(env_ms("RMM_LOCAL_NODE_READY_MS")?),
        tls_sans: tls_san,
        rancher_version: line,
        knobs: Knobs::from_env(line)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let emulator = Emulator::open(opts)?;
        emulator.print_banner();
        // a booting Rancher: connection refused until it listens
        tokio::select! {
            _ = tokio::time::sleep(boot.saturating_sub(started.elapsed())) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        let mut running = emulator.serve()?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            r = &mut running.task => {
                r.context("emulator task")?.context("emulator server")?;
                anyhow::bail!("the emulator stopped serving");
            }
        }
        running.shutdown().await
    })
}

/// The host's own addresses: IPv4 from `/proc/net/fib_trie` (the `/32
/// host LOCAL` entries), IPv6 from `/proc/net/if_inet6`, plus loopback.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<std::net::Ipv4Addr> = None;
        for line in trie.lines() {
            let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
            if let Ok(ip) = t.parse::<std::net::Ipv4Addr>() {
                last = Some(ip);
            } else if t.starts_with("/32 host LOCAL") {
                if let Some(ip) = last {
                    if !out.contains(&IpAddr::V4(ip)) {
                        out.push(IpAddr::V4(ip));
                    }
                }
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else { continue };
            if let Ok(bits) = u128::from_str_radix(hex, 16) {
                let ip = IpAddr::V6(std::net::Ipv6Addr::from(bits));
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}
