//! The `local` driver: the embedded "local world", where machines are
//! directories and Rancher is the emulator running as a detached process.
//!
//! # Layout of a world
//! ```text
//! <world>/
//!   world.json              subnet 127.R1.R2.0 and the next host number
//!   fail-create.json        failures injected so far (RMM_LOCAL_FAIL_CREATE)
//!   created.json            completed creates per machine name (the world's
//!                           ledger: tests check nothing is created twice);
//!                           its write is what completes a create
//!   .lock                   flock: one writer of the world at a time
//!   machines/<name>/
//!     machine.json          name, cluster, role, state, ip, created
//!     containers/<id>.json  a "container": name, image, kind, pid
//!     containers/<id>.log   its stdout + stderr
//!     rancher/              the emulator's data dir (rancher machine)
//! ```
//!
//! # Guarantees
//! * Every file is written atomically (temp file, fsync, rename, fsync of
//!   the directory), so a crash leaves the old or the new version.
//! * A machine appears whole: its directory is built under a temporary
//!   name (`.new-<name>-*`) and renamed into `machines/`; `remove` renames
//!   it away first (`.gone-<name>-*`). A process killed half-way leaves
//!   such a directory: `inspect` reports the machine half-made (not
//!   absent), and the next create or remove (which hold the world's lock)
//!   deletes them.
//! * A create completes with one atomic write: the ledger's count for the
//!   name goes past the count the record noted when the create began
//!   (`ledger_base`). A record still `creating` whose create is in the
//!   ledger is running (the process died before it rewrote the record).
//! * Addresses: the world picks a random loopback subnet `127.R1.R2.0` on
//!   first use; a machine gets the lowest host number no existing machine
//!   has (addresses come from the machines that exist, and are reused
//!   once a machine is removed).
//! * Processes started on a machine (the emulator) run in their own
//!   process group, detached from rmm: like a VM, they outlive it.
//!   `remove` stops them (SIGTERM, then SIGKILL).
//!
//! # Knobs (environment, read by [`LocalConfig::from_env`])
//! * `RMM_LOCAL_CREATE_MS`: how long a create takes (default 0).
//! * `RMM_LOCAL_FAIL_CREATE=NAME:COUNT[,NAME:COUNT…]`: the first COUNT
//!   creates of NAME fail (counted in the world, across processes) and leave
//!   the machine in state `Error`, as docker-machine does.
//! * `RMM_LOCAL_RANCHER_BOOT_MS`, `RMM_LOCAL_NODE_READY_MS`: passed on to
//!   the emulator.

pub mod agent;
mod docker;
pub mod supervisor;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use rmm_actors::ports::{DriverError, ExecOutput, Machine, MachineDriver, MachineSpec, MachineState};
use rmm_events::Role;
use serde::{Deserialize, Serialize};

/// The port the emulator listens on, on each machine's own address.
pub const HTTPS_PORT: u16 = 8443;

/// Environment variables of the caller that the emulator gets.
pub const EMULATOR_PASSTHROUGH: &[&str] = &[
    "RMM_LOCAL_RANCHER_BOOT_MS",
    "RMM_LOCAL_NODE_READY_MS",
    "RUST_LOG",
    // the v1 controllers and injected failures (emulator::v1::Knobs)
    "RMM_LOCAL_CLUSTER_NAME_MS",
    "RMM_LOCAL_DEFAULT_TOKEN_MS",
    "RMM_LOCAL_PLANNER_MS",
    "RMM_LOCAL_SLOW_CONTROLLER_MS",
    "RMM_LOCAL_LOGIN_WINDOW_MS",
    "RMM_LOCAL_WEBHOOK_WINDOW_MS",
    "RMM_LOCAL_CLUSTER_ERROR",
    "RMM_LOCAL_TOKEN_TTL_MS",
    "RMM_LOCAL_MACHINE_ERROR",
    "RMM_LOCAL_CRT_TTL_MS",
];

/// How the local world behaves; [`LocalConfig::from_env`] reads the knobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfig {
    /// How long `create` takes (`RMM_LOCAL_CREATE_MS`).
    pub create_delay: Duration,
    /// (machine name, how many creates fail) (`RMM_LOCAL_FAIL_CREATE`).
    pub fail_create: Vec<(String, u32)>,
    /// Added to the emulator's environment.
    pub emulator_env: Vec<(String, String)>,
}

impl LocalConfig {
    pub fn from_env() -> LocalConfig {
        let create_delay = std::env::var("RMM_LOCAL_CREATE_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        let fail_create = std::env::var("RMM_LOCAL_FAIL_CREATE").map(|v| parse_fail_create(&v)).unwrap_or_default();
        let emulator_env =
            EMULATOR_PASSTHROUGH.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
        LocalConfig { create_delay, fail_create, emulator_env }
    }
}

/// `NAME:COUNT[,NAME:COUNT…]`; `NAME` alone means one failure. Entries
/// that do not parse are skipped (with a warning).
pub fn parse_fail_create(spec: &str) -> Vec<(String, u32)> {
    spec.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|entry| {
            let (name, count) = match entry.rsplit_once(':') {
                Some((n, c)) => (n.trim(), c.trim().parse::<u32>().ok()),
                None => (entry, Some(1)),
            };
            match count {
                Some(c) if valid_name(name) => Some((name.to_string(), c)),
                _ => {
                    tracing::warn!(entry, "RMM_LOCAL_FAIL_CREATE: ignoring an entry that is not NAME:COUNT");
                    None
                }
            }
        })
        .collect()
}

/// The local world driver.
#[derive(Debug)]
pub struct LocalDriver {
    world: PathBuf,
    rmm_exe: PathBuf,
    config: LocalConfig,
}

impl LocalDriver {
    /// A world in `world_dir` (created on first use); `rmm_exe` is the rmm
    /// binary that serves the emulator (normally `std::env::current_exe()`).
    /// The knobs come from the environment.
    pub fn new(world_dir: PathBuf, rmm_exe: PathBuf) -> LocalDriver {
        Self::with_config(world_dir, rmm_exe, LocalConfig::from_env())
    }

    pub fn with_config(world_dir: PathBuf, rmm_exe: PathBuf, config: LocalConfig) -> LocalDriver {
        LocalDriver { world: world_dir, rmm_exe, config }
    }

    pub fn world_dir(&self) -> &Path {
        &self.world
    }

    fn machines_dir(&self) -> PathBuf {
        self.world.join("machines")
    }

    /// The directory of a machine (whether or not it exists).
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.machines_dir().join(name)
    }

    /// Takes the world's lock. Held only in synchronous code, never across
    /// an `.await`, so tasks sharing a thread cannot deadlock on it.
    fn lock(&self) -> Result<Flock<File>, DriverError> {
        create_private_dir(&self.world).map_err(|e| io_error("create the world directory", &e))?;
        let file = open_lock_file(&self.world.join(".lock"))
            .map_err(|e| io_error("open the world lock", &e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| DriverError::Transient(format!("lock the world: {e}")))
    }

    fn read_record(&self, name: &str) -> Result<Option<Result<MachineRecord, String>>, DriverError> {
        let dir = self.machine_dir(name);
        match fs::read(dir.join("machine.json")) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice::<MachineRecord>(&bytes).map_err(|e| format!("machine.json is corrupt: {e}")),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if dir.is_dir() {
                    Ok(Some(Err("half-made machine: no machine.json".into())))
                } else if let Some(staged) = self.creates_cut_short(name).into_iter().next() {
                    Ok(Some(Err(format!(
                        "half-made machine: a create was cut short (staging directory {})",
                        staged.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
                    ))))
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(io_error("read machine.json", &e)),
        }
    }

    fn read_machine(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let Some(record) = self.read_record(name)? else { return Ok(None) };
        Ok(Some(match record {
            Ok(record) => {
                let counted = self.ledger_count(name)?;
                record.to_machine(counted)
            }
            Err(why) => {
                // A staged machine still names its cluster.
                let cluster = self
                    .creates_cut_short(name)
                    .into_iter()
                    .find_map(|d| fs::read(d.join("machine.json")).ok())
                    .and_then(|b| serde_json::from_slice::<MachineRecord>(&b).ok())
                    .map(|r| r.cluster);
                Machine { name: name.to_string(), cluster, state: MachineState::Error(why), ip: None }
            }
        }))
    }

    /// `.new-*` and `.gone-*` directories under `machines/` (of `name`, or
    /// all): what creates and removes cut short leave behind.
    fn staging_dirs(&self, name: Option<&str>) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.machines_dir()) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_str()?.to_string();
                let rest = file.strip_prefix(".new-").or_else(|| file.strip_prefix(".gone-"))?;
                let (of, _suffix) = rest.rsplit_once('-')?;
                (name.is_none_or(|n| n == of) && valid_name(of)).then(|| e.path())
            })
            .collect()
    }

    /// `.new-<name>-*`: creates of `name` cut short. (A `.gone-*` is a
    /// remove that already took the machine out of the world.)
    fn creates_cut_short(&self, name: &str) -> Vec<PathBuf> {
        self.staging_dirs(Some(name))
            .into_iter()
            .filter(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".new-")))
            .collect()
    }

    /// Deletes leftovers of creates and removes cut short. Call with the
    /// world lock held: no create or remove is then half-way.
    fn clean_staging(&self, name: Option<&str>) {
        for dir in self.staging_dirs(name) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed what a create or remove cut short left"),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove a leftover staging directory"),
            }
        }
    }

    /// The ledger's count of completed creates of `name`.
    fn ledger_count(&self, name: &str) -> Result<u32, DriverError> {
        Ok(self.read_counts("created.json")?.get(name).copied().unwrap_or(0))
    }

    fn read_counts(&self, file: &str) -> Result<BTreeMap<String, u32>, DriverError> {
        match fs::read(self.world.join(file)) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_error(&format!("read {file}"), &e)),
        }
    }

    fn write_record(&self, record: &MachineRecord) -> Result<(), DriverError> {
        let bytes = serde_json::to_vec_pretty(record).expect("a machine record serialises");
        write_atomic(&self.machine_dir(&record.name).join("machine.json"), &bytes)
            .map_err(|e| io_error("write machine.json", &e))
    }

    /// Makes the machine appear, in state `Creating`, with a new address.
    fn begin_create(&self, spec: &MachineSpec) -> Result<MachineRecord, DriverError> {
        let _lock = self.lock()?;
        let dir = self.machine_dir(&spec.name);
        if dir.exists() {
            return Err(DriverError::Permanent(format!("Host already exists: \"{}\"", spec.name)));
        }
        self.clean_staging(None);
        let ip = self.allocate_ip()?;
        let ledger_base = Some(self.ledger_count(&spec.name)?);
        let created_ms = rmm_events::now_ms();
        let record = MachineRecord {
            name: spec.name.clone(),
            cluster: spec.cluster.clone(),
            role: spec.role,
            state: RecordState::Creating,
            error: None,
            ip: ip.to_string(),
            created: rmm_events::rfc3339_ms(created_ms),
            created_ms,
            ledger_base,
        };
        let machines = self.machines_dir();
        fs::create_dir_all(&machines).map_err(|e| io_error("create the machines directory", &e))?;
        let tmp = machines.join(format!(".new-{}-{:08x}", spec.name, rand::thread_rng().gen::<u32>()));
        let build = || -> io::Result<()> {
            fs::create_dir(&tmp)?;
            fs::create_dir(tmp.join("containers"))?;
            let bytes = serde_json::to_vec_pretty(&record).expect("a machine record serialises");
            write_atomic(&tmp.join("machine.json"), &bytes)?;
            fs::rename(&tmp, &dir)?;
            sync_dir(&machines)
        };
        build().map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            io_error("create the machine directory", &e)
        })?;
        Ok(record)
    }

    /// The lowest address of the world no existing machine has (its subnet
    /// is chosen on first use). Call with the world lock held, after
    /// [`Self::clean_staging`].
    fn allocate_ip(&self) -> Result<Ipv4Addr, DriverError> {
        let path = self.world.join("world.json");
        let world = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<WorldFile>(&bytes)
                .map_err(|e| DriverError::Permanent(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let world = WorldFile::new(pick_subnet());
                write_atomic(&path, &serde_json::to_vec_pretty(&world).expect("world.json serialises"))
                    .map_err(|e| io_error("write world.json", &e))?;
                world
            }
            Err(e) => return Err(io_error("read world.json", &e)),
        };
        let subnet: Ipv4Addr = world
            .subnet
            .parse()
            .map_err(|_| DriverError::Permanent(format!("{}: bad subnet {:?}", path.display(), world.subnet)))?;
        let [a, b, c, _] = subnet.octets();
        let mut taken = std::collections::BTreeSet::new();
        if let Ok(entries) = fs::read_dir(self.machines_dir()) {
            for entry in entries.flatten() {
                let Ok(bytes) = fs::read(entry.path().join("machine.json")) else { continue };
                if let Ok(record) = serde_json::from_slice::<MachineRecord>(&bytes) {
                    if let Ok(ip) = record.ip.parse::<Ipv4Addr>() {
                        taken.insert(ip.octets()[3]);
                    }
                }
            }
        }
        match (1..=254u8).find(|h| !taken.contains(h)) {
            Some(host) => Ok(Ipv4Addr::new(a, b, c, host)),
            None => Err(DriverError::Permanent(format!(
                "the local world in {} has no addresses left (254 machines exist)",
                self.world.display()
            ))),
        }
    }

    /// Counts one create of `name` against `RMM_LOCAL_FAIL_CREATE`; true
    /// when this create must fail. Call with the world lock held.
    fn injected_failure(&self, name: &str) -> Result<Option<String>, DriverError> {
        let Some(&(_, limit)) = self.config.fail_create.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let mut done = 0;
        let counted = self.bump_count("fail-create.json", name, |n| {
            done = n;
            n < limit
        })?;
        if !counted {
            return Ok(None);
        }
        Ok(Some(format!(
            "Error creating machine: Error in driver during machine creation: injected failure {} of {limit} (RMM_LOCAL_FAIL_CREATE)",
            done + 1
        )))
    }

    /// Adds one completed create of `name` to the world's ledger. Call with
    /// the world lock held.
    fn count_created(&self, name: &str) -> Result<(), DriverError> {
        self.bump_count("created.json", name, |_| true).map(drop)
    }

    /// Adds one to `name`'s count in the world file `file` (a JSON map of
    /// counts) when `admit(current count)` says so; tells whether it did.
    /// Call with the world lock held.
    fn bump_count(&self, file: &str, name: &str, admit: impl FnOnce(u32) -> bool) -> Result<bool, DriverError> {
        let path = self.world.join(file);
        let mut counts = self.read_counts(file)?;
        let count = counts.entry(name.to_string()).or_insert(0);
        if !admit(*count) {
            return Ok(false);
        }
        *count += 1;
        write_atomic(&path, &serde_json::to_vec_pretty(&counts).expect("counts serialise"))
            .map_err(|e| io_error(&format!("write {file}"), &e))?;
        Ok(true)
    }

    fn finish_create(&self, mut record: MachineRecord) -> Result<Machine, DriverError> {
        let _lock = self.lock()?;
        // Still the machine we began? (A remove may have run meanwhile.)
        match self.read_record(&record.name)? {
            Some(Ok(now)) if now.ip == record.ip && now.created_ms == record.created_ms => {}
            _ => {
                return Err(DriverError::Transient(format!(
                    "Error creating machine: machine \"{}\" was removed while it was being created",
                    record.name
                )))
            }
        }
        if let Some(why) = self.injected_failure(&record.name)? {
            record.state = RecordState::Error;
            record.error = Some(why.clone());
            self.write_record(&record)?;
            return Err(DriverError::Transient(why));
        }
        // The ledger's write completes the create (one atomic write): from
        // here on the record reads as running, whatever happens before it
        // is rewritten below.
        self.count_created(&record.name)?;
        crash_point_after_ledger(&record.name);
        record.state = RecordState::Running;
        self.write_record(&record)?;
        Ok(record.to_machine(self.ledger_count(&record.name)?))
    }

    /// Takes a machine out of the world: renamed away under the lock, then
    /// deleted. Returns false when it did not exist.
    fn unlink_machine(&self, name: &str) -> Result<bool, DriverError> {
        let trash = {
            let _lock = self.lock()?;
            let dir = self.machine_dir(name);
            if !dir.exists() {
                return Ok(false);
            }
            let machines = self.machines_dir();
            let trash = machines.join(format!(".gone-{name}-{:08x}", rand::thread_rng().gen::<u32>()));
            fs::rename(&dir, &trash).map_err(|e| io_error("remove the machine directory", &e))?;
            sync_dir(&machines).map_err(|e| io_error("sync the machines directory", &e))?;
            trash
        };
        if let Err(e) = fs::remove_dir_all(&trash) {
            tracing::warn!(dir = %trash.display(), error = %e, "could not delete a removed machine's files");
        }
        Ok(true)
    }

    fn host(&self, name: &str, ip: &str) -> Result<docker::Host, DriverError> {
        let ip =
            ip.parse().map_err(|_| DriverError::Permanent(format!("machine \"{name}\" has a bad address {ip:?}")))?;
        Ok(docker::Host {
            name: name.to_string(),
            ip,
            dir: self.machine_dir(name),
            rmm_exe: self.rmm_exe.clone(),
            emulator_env: self.config.emulator_env.clone(),
        })
    }
}

#[async_trait]
impl MachineDriver for LocalDriver {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError> {
        if !valid_name(&spec.name) {
            return Err(DriverError::Permanent(
                "Error creating machine: Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -".into(),
            ));
        }
        let record = self.begin_create(spec)?;
        if !self.config.create_delay.is_zero() {
            tokio::time::sleep(self.config.create_delay).await;
        }
        self.finish_create(record)
    }

    async fn inspect(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        if !valid_name(name) {
            return Ok(None);
        }
        self.read_machine(name)
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, DriverError> {
        let entries = match fs::read_dir(self.machines_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("list the machines", &e)),
        };
        let mut machines = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list the machines", &e))?;
            let Some(file) = entry.file_name().to_str().map(str::to_string) else { continue };
            // A create cut short (.new-NAME-*) is a half-made machine NAME,
            // unless NAME exists whole; a remove cut short (.gone-*) is not.
            let name = match file.strip_prefix(".new-").and_then(|r| r.rsplit_once('-')) {
                Some((of, _)) if valid_name(of) && !self.machine_dir(of).exists() => of.to_string(),
                _ if valid_name(&file) => file,
                _ => continue,
            };
            if machines.iter().any(|m: &Machine| m.name == name) {
                continue;
            }
            if let Some(m) = self.read_machine(&name)? {
                if m.cluster.as_deref() == Some(cluster) {
                    machines.push(m);
                }
            }
        }
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(machines)
    }

    async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let machine = if valid_name(name) { self.read_machine(name)? } else { None };
        let Some(machine) = machine else {
            return Err(DriverError::Permanent(format!("Host does not exist: \"{name}\"")));
        };
        let not_running = format!("Error: Cannot run SSH command: Host \"{name}\" is not running");
        let ip = match (&machine.state, machine.ip.as_deref()) {
            (MachineState::Running, Some(ip)) => ip.to_string(),
            (MachineState::Creating, _) => return Err(DriverError::Transient(not_running)),
            _ => return Err(DriverError::Permanent(not_running)),
        };
        let host = self.host(name, &ip)?;
        Ok(docker::exec(&host, command).await)
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        if !valid_name(name) {
            return Ok(());
        }
        if !self.staging_dirs(Some(name)).is_empty() {
            let _lock = self.lock()?;
            self.clean_staging(Some(name));
        }
        if !self.machine_dir(name).exists() {
            return Ok(());
        }
        docker::stop_all(&self.machine_dir(name)).await;
        self.unlink_machine(name)?;
        Ok(())
    }

    fn https_port(&self) -> u16 {
        HTTPS_PORT
    }

    /// The emulator's CA, read from the machine's own disk (its data dir):
    /// what `docker exec rancher cat …` would give on a real machine.
    async fn read_server_ca(&self, machine: &str) -> Result<Option<String>, DriverError> {
        if !valid_name(machine) {
            return Ok(None);
        }
        let path = self.machine_dir(machine).join("rancher").join(crate::emulator::CA_CERT_FILE);
        let not_yet = || {
            DriverError::Transient(format!(
                "the Rancher server on machine {machine} has not made its CA yet ({} is empty or absent)",
                path.display()
            ))
        };
        match fs::read_to_string(&path) {
            Ok(pem) if !pem.trim().is_empty() => Ok(Some(pem.trim().to_string())),
            Ok(_) => Err(not_yet()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_yet()),
            Err(e) => Err(io_error(&format!("read {}", path.display()), &e)),
        }
    }
}

/// Runs `command` as the local world's machine `name` at `ip` whose files
/// are in `dir` would (`rmm emulator machine-exec`, for the docker-machine
/// test double's `ssh`): the emulator knobs come from the environment.
pub async fn exec_as_machine(name: &str, ip: Ipv4Addr, dir: PathBuf, command: &str) -> anyhow::Result<ExecOutput> {
    let rmm_exe = std::env::current_exe()?;
    let host = docker::Host {
        name: name.to_string(),
        ip,
        dir,
        rmm_exe,
        emulator_env: LocalConfig::from_env().emulator_env,
    };
    Ok(docker::exec(&host, command).await)
}

/// Stops every process of the machine whose files are in `dir`
/// (`rmm emulator machine-stop`).
pub async fn power_off(dir: &Path) {
    docker::stop_all(dir).await;
}

/// `rmm emulator host-docker -- ARGS`: `docker ARGS` of the local world on
/// the host described by `RMM_HOST_DIR` (its machine directory),
/// `RMM_HOST_IP` and `RMM_HOST_NAME`; prints docker's output and returns
/// its exit status.
pub async fn host_docker(args: &[String]) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let var = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} is not set"));
    let dir = PathBuf::from(var("RMM_HOST_DIR")?);
    fs::create_dir_all(dir.join("containers"))?;
    let host = docker::Host {
        name: var("RMM_HOST_NAME").unwrap_or_else(|_| "host".into()),
        ip: var("RMM_HOST_IP")?.parse().map_err(|_| anyhow::anyhow!("RMM_HOST_IP is not an IPv4 address"))?,
        dir,
        rmm_exe: std::env::current_exe()?,
        emulator_env: LocalConfig::from_env().emulator_env,
    };
    let mut words = vec!["docker".to_string()];
    words.extend(args.iter().cloned());
    let out = docker::exec(&host, &shell_words::join(&words)).await;
    std::io::stdout().write_all(out.stdout.as_bytes())?;
    std::io::stderr().write_all(out.stderr.as_bytes())?;
    Ok(out.status)
}

// ---------------------------------------------------------------- records

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorldFile {
    version: u32,
    /// `127.R1.R2.0`
    subnet: String,
    /// Unused since addresses come from the machines that exist (kept so
    /// older worlds still read).
    #[serde(default)]
    next_host: u32,
}

impl WorldFile {
    fn new(subnet: Ipv4Addr) -> WorldFile {
        WorldFile { version: 1, subnet: subnet.to_string(), next_host: 1 }
    }
}

/// A random loopback subnet `127.R1.R2.0` (R1 ≠ 0, so never 127.0.0.x)
/// whose first address is free on the emulator's port, if one is found.
fn pick_subnet() -> Ipv4Addr {
    let mut rng = rand::thread_rng();
    let mut candidate = Ipv4Addr::new(127, rng.gen_range(1..=254), rng.gen(), 0);
    for _ in 0..32 {
        let [a, b, c, _] = candidate.octets();
        match std::net::TcpListener::bind((Ipv4Addr::new(a, b, c, 1), HTTPS_PORT)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                candidate = Ipv4Addr::new(127, rng.gen_range(1..=254), rng.gen(), 0);
            }
            _ => break,
        }
    }
    candidate
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordState {
    Creating,
    Running,
    Stopped,
    Error,
}

/// `machine.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MachineRecord {
    name: String,
    cluster: String,
    role: Role,
    state: RecordState,
    /// Why the machine is in state `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Assigned when the create begins; reported once the machine runs.
    ip: String,
    created: String,
    created_ms: i64,
    /// The ledger's count of completed creates of this name when this
    /// create began: once the ledger holds more, this create completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ledger_base: Option<u32>,
}

impl MachineRecord {
    /// `counted`: the ledger's count of completed creates of this name now.
    fn to_machine(&self, counted: u32) -> Machine {
        let completed = self.ledger_base.is_some_and(|base| counted > base);
        let (state, ip) = match self.state {
            RecordState::Creating if completed => (MachineState::Running, Some(self.ip.clone())),
            RecordState::Creating => (MachineState::Creating, None),
            RecordState::Running => (MachineState::Running, Some(self.ip.clone())),
            RecordState::Stopped => (MachineState::Stopped, Some(self.ip.clone())),
            RecordState::Error => {
                (MachineState::Error(self.error.clone().unwrap_or_else(|| "create failed".into())), None)
            }
        };
        Machine { name: self.name.clone(), cluster: Some(self.cluster.clone()), state, ip }
    }
}

// ---------------------------------------------------------------- helpers

/// `RMM_LOCAL_CRASH_AFTER_LEDGER=NAME` (a crash drill of the local world):
/// abort right after the ledger counted the create of NAME, before its
/// record is rewritten.
fn crash_point_after_ledger(name: &str) {
    if std::env::var("RMM_LOCAL_CRASH_AFTER_LEDGER").is_ok_and(|n| n == name) {
        crate::errln!("rmm: crash point RMM_LOCAL_CRASH_AFTER_LEDGER={name} reached; aborting");
        std::process::abort();
    }
}

/// docker-machine's rule for names (`^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$`), which
/// also keeps them safe as directory names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name.len() <= 64
}

fn io_error(what: &str, e: &io::Error) -> DriverError {
    DriverError::Transient(format!("local world: {what}: {e}"))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the
/// directory: after a crash the file is either the old or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp-{:08x}", rand::thread_rng().gen::<u32>()));
    let result = (|| {
        // Inside rmm's state dir: a new file of our own, owner-only from
        // the start, never through a symlink.
        let mut f = new_private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A new file (`O_EXCL | O_NOFOLLOW`, mode 0600).
pub(crate) fn new_private_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// A lock file, made owner-only if new; a symlink there is refused.
pub(crate) fn open_lock_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
