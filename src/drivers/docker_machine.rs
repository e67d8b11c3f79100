//! The `docker-machine` driver: machines made by the `docker-machine` CLI
//! (0.16.2, or GitLab's fork) or by `rancher-machine` (Rancher's fork,
//! CLI-compatible), spawned as a process for every call. Facts:
//! reference/docker-machine.md ("ref") and reference/rancher-current.md
//! §4.2 ("rc").
//!
//! # Names, list and orphans
//! A machine `master01` of cluster `tinysetup` is the docker-machine
//! machine `tinysetup-master01`, so two clusters can share one storage
//! path; its node name in Rancher stays `master01`. docker-machine has no
//! labels, so after a create rmm writes the record `rmm-machine.json`
//! (`{"cluster", "machine", "role"}`) into the machine's own store
//! directory (`<storage>/machines/<name>/`, ref §5), which `rm` deletes
//! with the machine. `list` takes the machines `ls` gives whose name is
//! `<cluster>-<machine>` with a machine name that has no `-` in it (so
//! cluster `a` does not take cluster `a-b`'s machines) and whose record,
//! when there is one, names the cluster; a machine without a record is a
//! create cut short (rmm died before writing it) and is listed as ours.
//!
//! # Calls
//! Global flags go before the sub-command, every flag before the machine
//! name (ref §1). Every call has a deadline (`call_timeout_s`, and
//! `create_timeout_s` for `create`); a call past it is killed with its
//! process group. Standard input is closed unless rmm writes to it, so
//! `rm` never waits at its prompt (ref §3 rm), and `rm` is always `-f -y`.
//!
//! # Failure handling (ref §6)
//! * exit 3 from `create`: the pre-create check failed, nothing was made:
//!   permanent (the user fixes the environment and resumes);
//! * any other failed, killed or timed-out `create` leaves a half-registered
//!   machine: it is removed (`rm -f -y`) and the create is retried;
//! * `already exists` on create (≥0.13 `Docker machine "x" already
//!   exists`, ≤0.12 `Host already exists: "x"`): a running machine is
//!   adopted, anything else removed and created again;
//! * `status` of a missing machine: exit 1 with `does not exist` (0.16.2),
//!   exit 4 (rancher-machine): absent; `machine does not exist` (the VM is
//!   gone but the store entry is not), `Error`, `Timeout`: broken;
//!   `Stopped`, `Saved`, `Paused`: stopped, started again by `restart`,
//!   whose address is read anew (addresses change after a start, ref §6);
//!   the None state (an empty line, a VM still booting): creating.
//!
//! # Commands on a machine
//! `exec` is `ssh NAME sh -s` with the command on standard input, so a
//! node command (it carries a registration token) is never an argument on
//! this host or the machine. `ssh` does not pass the remote exit status
//! through (ref §3 ssh: any non-zero status is `exit status N` on stderr
//! and exit 1); the status is read back from that line when it is there.
//! The v1 steps judge a node command by what it did (registration, the
//! agent's unit), not by this status.
//!
//! # Rancher on the rancher machine
//! The real single-node Docker install (rancher-current.md §3) over `ssh`:
//! the bootstrap password goes to the machine as an env file written from
//! standard input with mode 0600 (`umask 077; cat > FILE`), the `docker
//! run` reads it with `--env-file` and the file is removed whatever the
//! run's outcome. Neither call has the password in its arguments.
//!
//! # Settings
//! `[docker_machine]` in `rmm.toml` ([`DockerMachineFile`]); `up` records
//! the resolved settings in `docker-machine.json` in the state dir, and
//! every later command of that state dir uses them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmm_actors::ports::{
    DriverError, ExecOutput, Machine, MachineDriver, MachineSpec, MachineState, ServerSpec, SERVER_CONTAINER,
};
use rmm_actors::steps::shell_quote;
use rmm_events::Role;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// The record rmm writes into each machine's store directory.
pub const RECORD_FILE: &str = "rmm-machine.json";
/// The settings file in the state dir.
pub const SETTINGS_FILE: &str = "docker-machine.json";
/// The env file on the rancher machine (in the ssh user's home).
const ENV_FILE: &str = ".rmm-rancher.env";

/// The driver and its flags for one role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    pub driver: Option<String>,
    pub create_args: Option<Vec<String>>,
}

/// `[docker_machine]` as written (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerMachineFile {
    /// `docker-machine` (default) or `rancher-machine`, a name on PATH or a path.
    pub binary: Option<String>,
    /// `-s`: the store root (default: `MACHINE_STORAGE_PATH`, else `~/.docker/machine`).
    pub storage_path: Option<PathBuf>,
    /// The machine driver, default `virtualbox` (ref §1 `MACHINE_DRIVER`).
    pub driver: Option<String>,
    /// The driver's flags, before the machine name.
    pub create_args: Option<Vec<String>>,
    /// Where Rancher's `-p 443:443` answers (443 on real machines).
    pub https_port: Option<u16>,
    /// Deadline of every call but `create`, seconds (default 300: `start`
    /// waits up to 60 × 3 s for an address, ref §3).
    pub call_timeout_s: Option<u64>,
    /// Deadline of one `create` call, seconds (default 400: a create's
    /// waits are 60 × 3 s each, ref §3). A failed create is removed and
    /// made once more, so keep `[timeouts] machine_create_s` (900) above
    /// twice this.
    pub create_timeout_s: Option<u64>,
    pub rancher: Option<RoleFile>,
    pub master: Option<RoleFile>,
    pub worker: Option<RoleFile>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerMachineConfig {
    pub binary: String,
    pub storage_path: PathBuf,
    pub https_port: u16,
    pub call_timeout: Duration,
    pub create_timeout: Duration,
    /// (driver, create_args) for rancher, master, worker.
    pub roles: [(String, Vec<String>); 3],
}

impl DockerMachineFile {
    pub fn resolve(&self) -> Result<DockerMachineConfig, String> {
        let binary = self.binary.clone().unwrap_or_else(|| "docker-machine".into());
        if binary.trim().is_empty() {
            return Err("[docker_machine] binary is empty".into());
        }
        let storage_path = match &self.storage_path {
            Some(p) => p.clone(),
            None => match std::env::var_os("MACHINE_STORAGE_PATH").filter(|v| !v.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => {
                    let home = std::env::var_os("HOME").ok_or("[docker_machine] storage_path is not set and neither is HOME")?;
                    PathBuf::from(home).join(".docker").join("machine")
                }
            },
        };
        let driver = self.driver.clone().unwrap_or_else(|| "virtualbox".into());
        let args = self.create_args.clone().unwrap_or_default();
        let role = |r: &Option<RoleFile>| {
            let r = r.clone().unwrap_or_default();
            (r.driver.unwrap_or_else(|| driver.clone()), r.create_args.unwrap_or_else(|| args.clone()))
        };
        let roles = [role(&self.rancher), role(&self.master), role(&self.worker)];
        for (d, _) in &roles {
            if d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("[docker_machine] driver {d:?} is not a driver name"));
            }
        }
        Ok(DockerMachineConfig {
            binary,
            storage_path,
            https_port: self.https_port.unwrap_or(443),
            call_timeout: Duration::from_secs(self.call_timeout_s.unwrap_or(300).max(1)),
            create_timeout: Duration::from_secs(self.create_timeout_s.unwrap_or(400).max(1)),
            roles,
        })
    }
}

/// The settings a state dir's runs use: those recorded by the first `up`,
/// else `file` resolved (and recorded when `record`).
pub fn settings(state_dir: &Path, file: Option<&DockerMachineFile>, record: bool) -> Result<DockerMachineConfig, String> {
    let path = state_dir.join(SETTINGS_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()));
    }
    let cfg = file.cloned().unwrap_or_default().resolve()?;
    if record {
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(cfg)
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    cluster: String,
    machine: String,
    role: String,
}

/// What a call gave back.
#[derive(Debug)]
struct Call {
    /// `None`: killed at its deadline.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Call {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn words(&self) -> String {
        let e = self.stderr.trim();
        if e.is_empty() { self.stdout.trim().to_string() } else { e.to_string() }
    }
}

/// SIGKILL to a call's process group when dropped, unless it ended.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pg), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// ref §2: the machine is not in the store (≥0.13 and ≤0.12 texts).
fn is_absent(text: &str) -> bool {
    text.contains("does not exist. Use") || text.contains("Host does not exist:")
}

/// ref §6: the store entry is there but its VM is not (`machine does not
/// exist`), or its `config.json` cannot be loaded: a half-made machine.
fn is_half_made(text: &str) -> bool {
    text.contains("machine does not exist")
        || (text.contains("config.json") && text.contains("no such file or directory"))
        || text.contains("Error getting migrated host")
}

/// The driver for one cluster.
pub struct DockerMachineDriver {
    cluster: String,
    cfg: DockerMachineConfig,
}

impl DockerMachineDriver {
    pub fn new(cluster: &str, cfg: DockerMachineConfig) -> DockerMachineDriver {
        DockerMachineDriver { cluster: cluster.to_string(), cfg }
    }

    /// `tinysetup-master01`.
    pub fn full_name(&self, machine: &str) -> String {
        format!("{}-{machine}", self.cluster)
    }

    fn machine_dir(&self, full: &str) -> PathBuf {
        self.cfg.storage_path.join("machines").join(full)
    }

    /// Runs the CLI with `args` (global flags are added), `input` on its
    /// standard input (closed when `None`), killed with its process group
    /// at `deadline`.
    async fn call(&self, args: &[&str], input: Option<&[u8]>, deadline: Duration) -> Result<Call, DriverError> {
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.arg("-s")
            .arg(&self.cfg.storage_path)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            DriverError::Permanent(format!("cannot run {} ({e}); set [docker_machine] binary in rmm.toml", self.cfg.binary))
        })?;
        // Killed with its whole group when this call is dropped (the
        // step's own deadline, `[timeouts] machine_create_s`) or times out.
        let mut group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            let bytes = bytes.to_vec();
            tokio::spawn(async move {
                let _ = stdin.write_all(&bytes).await;
                let _ = stdin.shutdown().await;
            });
        }
        match tokio::time::timeout(deadline, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                group.0 = None;
                Ok(Call {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
            Ok(Err(e)) => Err(DriverError::Transient(format!("{} {}: {e}", self.cfg.binary, args[0]))),
            // The child is dropped (killed); its group goes too (a driver
            // plugin, ssh, a shell's sleep), by the guard.
            Err(_) => Ok(Call { code: None, stdout: String::new(), stderr: String::new() }),
        }
    }

    fn timed_out(&self, what: &str, deadline: Duration) -> String {
        format!("{} {what} did not end within {}s and was killed", self.cfg.binary, deadline.as_secs())
    }

    async fn rm(&self, full: &str) -> Result<(), DriverError> {
        let c = self.call(&["rm", "-f", "-y", full], None, self.cfg.call_timeout).await?;
        match c.code {
            // `rm -f` exits 0 even when it reports errors (ref §3 rm); the
            // store directory is what must be gone.
            Some(0) if !self.machine_dir(full).exists() => Ok(()),
            Some(0) => Err(DriverError::Transient(format!("{} rm -f -y {full} left {}", self.cfg.binary, self.machine_dir(full).display()))),
            Some(_) if is_absent(&c.words()) => Ok(()),
            Some(_) => Err(DriverError::Transient(format!("{} rm {full}: {}", self.cfg.binary, c.words()))),
            None => Err(DriverError::Transient(self.timed_out(&format!("rm {full}"), self.cfg.call_timeout))),
        }
    }

    fn write_record(&self, spec: &MachineSpec) -> Result<(), DriverError> {
        let full = self.full_name(&spec.name);
        let rec = Record { cluster: spec.cluster.clone(), machine: spec.name.clone(), role: role_str(spec.role).into() };
        let path = self.machine_dir(&full).join(RECORD_FILE);
        let text = serde_json::to_vec_pretty(&rec).expect("a record serialises");
        crate::drivers::local::write_atomic(&path, &text)
            .map_err(|e| DriverError::Transient(format!("cannot write {}: {e}", path.display())))
    }

    fn read_record(&self, full: &str) -> Option<Record> {
        let text = std::fs::read(self.machine_dir(full).join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The machine as `status` and `ip` give it.
    async fn observe(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let full = self.full_name(name);
        let c = self.call(&["status", &full], None, self.cfg.call_timeout).await?;
        let cluster = self.read_record(&full).map(|r| r.cluster).or_else(|| Some(self.cluster.clone()));
        let machine = |state, ip| Machine { name: name.to_string(), cluster: cluster.clone(), state, ip };
        let state = match c.code {
            // rc §4.2: rancher-machine's `status` exits 4 for a missing machine.
            Some(4) => return Ok(None),
            Some(0) => c.stdout.trim().to_string(),
            Some(_) if is_absent(&c.words()) => return Ok(None),
            // VM gone, config unreadable: a half-made machine (ref §6).
            Some(_) if is_half_made(&c.words()) => return Ok(Some(machine(MachineState::Error(c.words()), None))),
            // Any other driver error (`error getting state for host x:
            // <err>`, ref §3 status: a cloud API that did not answer …)
            // says nothing about the machine: not knowing is not broken,
            // and a broken machine is removed.
            Some(_) => return Err(DriverError::Transient(format!("{} status {full}: {}", self.cfg.binary, c.words()))),
            None => return Err(DriverError::Transient(self.timed_out(&format!("status {full}"), self.cfg.call_timeout))),
        };
        Ok(Some(match state.as_str() {
            "Running" => {
                let ip = self.call(&["ip", &full], None, self.cfg.call_timeout).await?;
                match ip.code {
                    Some(0) => machine(MachineState::Running, ip.stdout.lines().next().map(|l| l.trim().to_string())),
                    // ref §3 ip: `Error getting IP address: Host is not running` while it boots.
                    _ => machine(MachineState::Creating, None),
                }
            }
            // ref §4: None (an empty line) = VirtualBox starting; cloud drivers say Starting.
            "" | "Starting" => machine(MachineState::Creating, None),
            // `start` starts all of these again (ref §3 start: from
            // Stopped, Saved and Paused; a cloud VM Stopping ends Stopped).
            "Stopped" | "Saved" | "Paused" | "Stopping" => machine(MachineState::Stopped, None),
            // `Error`; `Timeout` (ref §6: a VM whose SSH never came up):
            // broken, removed and made again.
            other => machine(MachineState::Error(format!("docker-machine state {other}")), None),
        }))
    }

    /// Polls until the machine runs with an address, up to the call deadline.
    async fn wait_running(&self, name: &str) -> Result<Machine, DriverError> {
        let until = Instant::now() + self.cfg.call_timeout;
        loop {
            match self.observe(name).await? {
                Some(m) if m.state == MachineState::Running && m.ip.is_some() => return Ok(m),
                Some(m) if matches!(m.state, MachineState::Error(_)) => {
                    return Err(DriverError::Transient(format!("machine {name} is broken: {:?}", m.state)))
                }
                None => return Err(DriverError::Transient(format!("machine {name} vanished"))),
                _ if Instant::now() >= until => {
                    return Err(DriverError::Transient(format!("machine {name} did not get an address in time")))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn create_once(&self, spec: &MachineSpec) -> Result<Result<Machine, String>, DriverError> {
        let full = self.full_name(&spec.name);
        let (driver, args) = &self.cfg.roles[role_index(spec.role)];
        let mut argv: Vec<&str> = vec!["create", "-d", driver];
        argv.extend(args.iter().map(String::as_str));
        argv.push(&full);
        let c = self.call(&argv, None, self.cfg.create_timeout).await?;
        match c.code {
            Some(0) => {
                self.write_record(spec)?;
                Ok(Ok(self.wait_running(&spec.name).await?))
            }
            // ref §1: exit 3 = the pre-create check failed; nothing was made.
            Some(3) => Err(DriverError::Permanent(format!(
                "{} create {full}: {} (fix the machine driver's environment, then `rmm up --resume`)",
                self.cfg.binary,
                c.words()
            ))),
            Some(_) => Ok(Err(c.words())),
            None => Ok(Err(self.timed_out(&format!("create {full}"), self.cfg.create_timeout))),
        }
    }
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Rancher => 0,
        Role::Master => 1,
        Role::Worker => 2,
    }
}

fn role_str(role: Role) -> &'static str {
    ["rancher", "master", "worker"][role_index(role)]
}

/// `exit status N` (ref §3 ssh), the last such line of stderr.
fn ssh_status(stderr: &str) -> Option<i32> {
    stderr.lines().rev().find_map(|l| l.trim().strip_prefix("exit status ").and_then(|n| n.trim().parse().ok()))
}

#[async_trait]
impl MachineDriver for DockerMachineDriver {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError> {
        let full = self.full_name(&spec.name);
        let mut first = self.create_once(spec).await?;
        if let Err(words) = &first {
            if words.contains("already exists") {
                // Made by a try whose outcome was lost: adopt it when it
                // runs; else it is half-made.
                if let Some(m) = self.observe(&spec.name).await? {
                    if m.state == MachineState::Running && m.ip.is_some() {
                        self.write_record(spec)?;
                        return Ok(m);
                    }
                }
            }
            // ref §6: no rollback; `rm -f -y`, then create again.
            tracing::warn!(machine = %full, error = %words, "create failed; removing the half-made machine and creating it again");
            self.rm(&full).await?;
            first = self.create_once(spec).await?;
        }
        match first {
            Ok(m) => Ok(m),
            Err(words) => {
                self.rm(&full).await?;
                Err(DriverError::Transient(format!("{} create {full}: {words} (the half-made machine was removed)", self.cfg.binary)))
            }
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        self.observe(name).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, DriverError> {
        let prefix = format!("{cluster}-");
        let c = self.call(&["ls", "--format", "{{.Name}}"], None, self.cfg.call_timeout).await?;
        if !c.ok() {
            return Err(DriverError::Transient(format!("{} ls: {}", self.cfg.binary, c.words())));
        }
        // `ls` hides nothing without -q (ref §3 ls), but a dir whose config
        // cannot load is listed too: read the store as well.
        let mut names: Vec<String> = c.stdout.lines().map(|l| l.trim().to_string()).collect();
        if let Ok(rd) = std::fs::read_dir(self.cfg.storage_path.join("machines")) {
            names.extend(rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)));
        }
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for full in names {
            let Some(machine) = full.strip_prefix(&prefix) else { continue };
            if machine.is_empty() || machine.contains('-') || full.starts_with('.') {
                continue;
            }
            if let Some(r) = self.read_record(&full) {
                if r.cluster != cluster {
                    continue;
                }
            }
            let scoped = DockerMachineDriver { cluster: cluster.to_string(), cfg: self.cfg.clone() };
            if let Some(m) = scoped.observe(machine).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let full = self.full_name(name);
        let c = self.call(&["ssh", &full, "sh", "-s"], Some(command.as_bytes()), self.cfg.call_timeout).await?;
        match c.code {
            Some(0) => Ok(ExecOutput { status: 0, stdout: c.stdout, stderr: c.stderr }),
            Some(_) if c.stderr.contains("Cannot run SSH command") => Err(DriverError::Transient(c.words())),
            Some(_) if is_absent(&c.words()) => Err(DriverError::Permanent(c.words())),
            Some(code) => {
                let status = ssh_status(&c.stderr).unwrap_or(code);
                // 255 is ssh's own failure (ref §3 ssh, §6): the command may not have run.
                if status == 255 {
                    return Err(DriverError::Transient(format!("ssh to {full} failed: {}", c.words())));
                }
                Ok(ExecOutput { status, stdout: c.stdout, stderr: c.stderr })
            }
            None => Err(DriverError::Transient(self.timed_out(&format!("ssh {full}"), self.cfg.call_timeout))),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        self.rm(&self.full_name(name)).await
    }

    fn https_port(&self) -> u16 {
        self.cfg.https_port
    }

    async fn restart(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let full = self.full_name(name);
        let c = self.call(&["start", &full], None, self.cfg.call_timeout).await?;
        match c.code {
            Some(0) => {}
            Some(_) if c.words().contains("is already running") => {}
            // The VM is gone (ref §6: `start` → `machine does not exist`):
            // it cannot be started; the caller removes it and makes it anew.
            Some(_) if is_absent(&c.words()) || is_half_made(&c.words()) => return Ok(None),
            Some(_) => return Err(DriverError::Transient(format!("{} start {full}: {}", self.cfg.binary, c.words()))),
            None => return Err(DriverError::Transient(self.timed_out(&format!("start {full}"), self.cfg.call_timeout))),
        }
        // "Started machines may have new IP addresses" (ref §3): read it anew.
        Ok(Some(self.wait_running(name).await?))
    }

    async fn start_server(&self, machine: &str, server: &ServerSpec) -> Result<ExecOutput, DriverError> {
        let full = self.full_name(machine);
        // 1. The env file, from standard input, mode 0600.
        let secret = format!("CATTLE_BOOTSTRAP_PASSWORD={}\n", server.bootstrap_password.expose());
        let write = format!("umask 077 && cat > {ENV_FILE}");
        let c = self.call(&["ssh", &full, &write], Some(secret.as_bytes()), self.cfg.call_timeout).await?;
        if !c.ok() {
            let stderr = format!("writing {ENV_FILE}: {}", c.words());
            return Ok(ExecOutput { status: 1, stdout: c.stdout, stderr });
        }
        // 2. The single-node install (rancher-current.md §3.2), then the file goes.
        let run = format!(
            "sudo docker run -d --name {SERVER_CONTAINER} --restart=unless-stopped --privileged -p 80:80 -p 443:443 \
             -v /opt/rancher:/var/lib/rancher --env-file {ENV_FILE} {}; rc=$?; rm -f {ENV_FILE}; exit $rc",
            shell_quote(&server.image)
        );
        let c = self.call(&["ssh", &full, &run], None, self.cfg.call_timeout).await?;
        match c.code {
            Some(0) => Ok(ExecOutput { status: 0, stdout: c.stdout, stderr: c.stderr }),
            Some(code) => Ok(ExecOutput { status: ssh_status(&c.stderr).unwrap_or(code), stdout: c.stdout, stderr: c.stderr }),
            None => Err(DriverError::Transient(self.timed_out(&format!("ssh {full}"), self.cfg.call_timeout))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_status_is_read_from_the_last_exit_status_line() {
        assert_eq!(ssh_status("boom\nexit status 3\n"), Some(3));
        assert_eq!(ssh_status("Process exited with status 2"), None);
    }

    #[test]
    fn per_role_tables_override_the_defaults() {
        let f: DockerMachineFile = toml::from_str(
            "driver = \"amazonec2\"\ncreate_args = [\"--amazonec2-instance-type\", \"t3.medium\"]\n\
             storage_path = \"/s\"\n[master]\ncreate_args = [\"--amazonec2-instance-type\", \"t3.xlarge\"]\n",
        )
        .unwrap();
        let c = f.resolve().unwrap();
        assert_eq!(c.binary, "docker-machine");
        assert_eq!(c.roles[0].1[1], "t3.medium");
        assert_eq!(c.roles[1], ("amazonec2".to_string(), vec!["--amazonec2-instance-type".into(), "t3.xlarge".into()]));
        assert_eq!(c.roles[2].0, "amazonec2");
        assert!(toml::from_str::<DockerMachineFile>("drvier = \"x\"").is_err());
    }

    #[test]
    fn the_example_file_has_the_docker_machine_keys_and_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rmm.toml.example");
        let file = crate::config::ConfigFile::load(&path, true).unwrap();
        let c = file.docker_machine.resolve().unwrap();
        assert_eq!((c.binary.as_str(), c.https_port, c.roles[1].0.as_str()), ("docker-machine", 443, "virtualbox"));
        assert_eq!(c.create_timeout, Duration::from_secs(400));
    }

    #[test]
    fn absent_is_told_by_the_store_texts_not_by_the_vm_text() {
        assert!(is_absent("Docker machine \"x\" does not exist. Use \"docker-machine ls\" to list machines."));
        assert!(is_absent("Host does not exist: \"x\""));
        assert!(!is_absent("error getting state for host x: machine does not exist"));
    }

    // The driver against the test double (tests/docker-machine-double),
    // whose machines are local. The knobs are set per call through the
    // double's files, not the environment (tests run in parallel).

    fn driver(store: &Path, flavour: &str, call_timeout_s: u64) -> DockerMachineDriver {
        // These tests run no local-world command (docker, the agent) on
        // the machines; the e2e tests do, with the real binary.
        std::env::set_var("DM_DOUBLE_RMM", "/bin/false");
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker-machine-double").join(flavour);
        let file = DockerMachineFile {
            binary: Some(binary.display().to_string()),
            storage_path: Some(store.to_path_buf()),
            call_timeout_s: Some(call_timeout_s),
            ..Default::default()
        };
        DockerMachineDriver::new("c", file.resolve().unwrap())
    }

    fn spec(name: &str) -> MachineSpec {
        MachineSpec { name: name.into(), cluster: "c".into(), role: Role::Worker }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn double(store: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut c = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker-machine-double/docker-machine"));
        c.arg("-s").arg(store).args(args).stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    #[test]
    fn already_exists_adopts_a_running_machine_and_remakes_a_half_made_one() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "docker-machine", 30);
        rt().block_on(async {
            // running, made outside this call (a try whose outcome was lost)
            assert!(double(tmp.path(), &["create", "c-w1"], &[]).status.success());
            let m = d.create(&spec("w1")).await.unwrap();
            assert_eq!(m.state, MachineState::Running);
            assert!(tmp.path().join("machines/c-w1").join(RECORD_FILE).exists());
            // half-made: registered, VM never made
            let half = double(tmp.path(), &["create", "c-w2"], &[("DM_DOUBLE_FAIL_CREATE", "c-w2")]);
            assert_eq!(half.status.code(), Some(1));
            assert!(matches!(d.inspect("w2").await.unwrap().unwrap().state, MachineState::Error(_)));
            let m = d.create(&spec("w2")).await.unwrap();
            assert_eq!(m.state, MachineState::Running);
            assert!(m.ip.is_some());
            // list: from the prefix, both ours; another cluster's is not.
            assert!(double(tmp.path(), &["create", "c-x-w1"], &[]).status.success());
            let names: Vec<String> = d.list("c").await.unwrap().into_iter().map(|m| m.name).collect();
            assert_eq!(names, vec!["w1", "w2"]);
            d.remove("w1").await.unwrap();
            d.remove("w1").await.unwrap();
            assert!(d.inspect("w1").await.unwrap().is_none());
        });
    }

    #[test]
    fn rancher_machine_status_4_is_absent_and_its_rm_of_a_missing_host_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "rancher-machine", 30);
        rt().block_on(async {
            assert!(d.inspect("nope").await.unwrap().is_none());
            d.remove("nope").await.unwrap();
        });
    }

    #[test]
    fn exec_reads_the_status_back_refuses_a_stopped_machine_and_is_killed_at_its_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "docker-machine", 2);
        rt().block_on(async {
            d.create(&spec("w1")).await.unwrap();
            let out = d.exec("w1", "echo hi; exit 3").await.unwrap();
            assert_eq!((out.status, out.stdout.trim()), (3, "hi"));
            let started = Instant::now();
            let err = d.exec("w1", "sleep 30").await.unwrap_err();
            assert!(err.is_retryable() && err.to_string().contains("was killed"), "{err}");
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(double(tmp.path(), &["stop", "c-w1"], &[]).status.success());
            assert_eq!(d.inspect("w1").await.unwrap().unwrap().state, MachineState::Stopped);
            let err = d.exec("w1", "true").await.unwrap_err();
            assert!(err.to_string().contains("is not running"), "{err}");
            let m = d.restart("w1").await.unwrap().unwrap();
            assert_eq!(m.state, MachineState::Running);
            d.remove("w1").await.unwrap();
        });
    }

    /// `binary` wrapped so that its calls get `env` (knobs for one test's
    /// store only; tests run side by side).
    fn wrapped(dir: &Path, flavour: &str, env: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let wrapper = dir.join(format!("dm-{}", env.len()));
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker-machine-double").join(flavour);
        std::fs::write(&wrapper, format!("#!/bin/sh\n{env} exec {} \"$@\"\n", real.display())).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        wrapper.display().to_string()
    }

    /// ref §4 and §6, state by state: what `inspect` makes of each, and
    /// `restart` (`start`, then `ip` until the booting VM has an address,
    /// which is read anew: it changes across a start).
    #[test]
    fn inspect_maps_every_state_and_restart_starts_a_saved_paused_or_stopped_machine_at_its_new_address() {
        for flavour in ["docker-machine", "rancher-machine"] {
            let tmp = tempfile::tempdir().unwrap();
            let store = tmp.path().join("store");
            let mut d = driver(&store, flavour, 30);
            // After a start, two state queries see the VM still booting
            // (`status` an empty line, `ip` "Host is not running").
            d.cfg.binary = wrapped(tmp.path(), flavour, "DM_DOUBLE_BOOT_POLLS=2");
            let vm = store.join("machines/c-w1/c-w1");
            rt().block_on(async {
                let first = d.create(&spec("w1")).await.unwrap();
                let mut ip = first.ip.clone().unwrap();
                // VirtualBox's saved, paused and poweroff (a `stop`) are all
                // Stopped to rmm, and started again.
                for how in ["saved", "paused", "stop"] {
                    if how == "stop" {
                        assert!(double(&store, &["stop", "c-w1"], &[]).status.success());
                    } else {
                        std::fs::write(vm.join("state"), how).unwrap();
                    }
                    let seen = d.inspect("w1").await.unwrap().unwrap();
                    assert_eq!((seen.state, seen.ip), (MachineState::Stopped, None), "{flavour} {how}");
                    let m = d.restart("w1").await.unwrap().expect("started again");
                    assert_eq!(m.state, MachineState::Running, "{flavour} {how}");
                    let now = m.ip.unwrap();
                    assert_ne!(now, ip, "{flavour} {how}: the address is read anew");
                    assert_eq!(std::fs::read_to_string(vm.join("ip")).unwrap().trim(), now);
                    ip = now;
                }
                // Booting (VirtualBox's None state): creating, not broken.
                std::fs::write(vm.join("state"), "starting").unwrap();
                std::fs::write(vm.join("boot-polls"), "5").unwrap();
                assert_eq!(d.inspect("w1").await.unwrap().unwrap().state, MachineState::Creating);
                std::fs::write(vm.join("state"), "running").unwrap();
                // A driver error that says nothing about the VM: transient,
                // never "broken" (a broken machine is removed).
                let mut flaky = driver(&store, flavour, 30);
                flaky.cfg.binary = wrapped(tmp.path(), flavour, "DM_DOUBLE_STATUS_ERROR='RequestError: send request failed'");
                let err = flaky.inspect("w1").await.unwrap_err();
                assert!(err.is_retryable() && err.to_string().contains("send request failed"), "{err}");
                // The VM gone under its store entry (ref §6): broken; it
                // cannot be started, so restart says so (None: remake it).
                std::fs::remove_dir_all(&vm).unwrap();
                assert!(matches!(d.inspect("w1").await.unwrap().unwrap().state, MachineState::Error(_)));
                assert_eq!(d.restart("w1").await.unwrap(), None);
                d.remove("w1").await.unwrap();
                assert!(d.inspect("w1").await.unwrap().is_none());
            });
        }
    }

    #[test]
    fn a_failed_pre_create_check_is_permanent_and_makes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path()).unwrap();
        // The knob for this store only: a wrapper that sets it.
        let wrapper = tmp.path().join("dm");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nDM_DOUBLE_PRECREATE_FAIL='VBoxManage not found' exec {} \"$@\"\n",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker-machine-double/docker-machine").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut d = driver(&tmp.path().join("store"), "docker-machine", 30);
        d.cfg.binary = wrapper.display().to_string();
        let err = rt().block_on(d.create(&spec("w1"))).unwrap_err();
        assert!(!err.is_retryable() && err.to_string().contains("pre-create check"), "{err}");
        assert!(!tmp.path().join("store/machines/c-w1").exists());
    }
}
