//! The `ssh` driver: hosts that already exist, reached with OpenSSH's `ssh`.
//!
//! # What it does
//! * Machines are not created but **claimed**: `create` checks that the
//!   host named in `[[ssh.hosts]]` answers over SSH and has what its role
//!   needs (systemd on rke2/k3s nodes, Docker on rke1 nodes and on the
//!   rancher host), then writes a claim (`<state>/ssh/claims/<name>.json`).
//!   `inspect` and `list` read the claims; `remove` runs the distribution's
//!   uninstall scripts (whichever exist: rancher-system-agent, rke2, k3s),
//!   removes the Rancher server container on the rancher host, and drops
//!   the claim. It never deletes or powers off a host.
//! * **A claim on the host too**: "create" writes `~/.rmm/claim` on the
//!   host (of the user rmm logs in as, or root's under `sudo`): the
//!   cluster, the machine name and the state dir's identity (a random id
//!   kept in `<state>/ssh/identity.json`, and `user@host:/path` for
//!   people). It is made with `set -C` (O_EXCL), so of two state dirs
//!   claiming one host at once only one wins; a host claimed from another
//!   state dir is refused with one line naming it; one claimed by this
//!   state dir (a resume whose create was cut short) is adopted. "remove"
//!   deletes it after the uninstall scripts, only when it is this state
//!   dir's.
//! * **Host keys are pinned**: the first contact (the claim) records the
//!   host's key in rmm's own known-hosts file (`<state>/ssh/known_hosts`,
//!   `StrictHostKeyChecking=accept-new`); every later call uses
//!   `StrictHostKeyChecking=yes`, so a changed key refuses with one line.
//!   A user's `[ssh] known_hosts` file (or `~/.ssh/known_hosts`) is
//!   consulted too, as ssh does.
//! * **The client is OpenSSH**, so `~/.ssh/config`, agents, `ProxyJump` and
//!   known_hosts work as users expect; always `BatchMode=yes` (nothing
//!   prompts), a connect timeout and a timeout per call (the `ssh` process
//!   is killed when it passes).
//! * **Secrets travel on standard input**: the remote command is always
//!   `sh -c 'eval "$(cat)"'` (under `sudo -n` when configured), and the
//!   script comes on stdin. The node command's `--token` becomes
//!   `CATTLE_TOKEN` in the script's environment (the installer reads it),
//!   and the bootstrap password reaches `docker run` through an env file
//!   written from the script with mode 0600 and removed right after. No
//!   argument on either side carries them.
//! * `ssh` exits 255 for its own failures: a refused or dropped connection
//!   or a timeout is transient (retried, and a resume continues); a changed
//!   host key or a refused login is permanent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use rmm_actors::ports::{
    DriverError, ExecOutput, Machine, MachineDriver, MachineSpec, MachineState, ServerSpec, SERVER_CONTAINER,
};
use rmm_actors::steps::shell_quote;
use rmm_events::{Distribution, Role};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// The settings file in the state dir: `[ssh]` of the run's `rmm.toml`,
/// resolved, recorded by `up` and read by every later command.
pub const SETTINGS_FILE: &str = "ssh.json";

/// `[ssh]` in `rmm.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshFile {
    /// Defaults for every host.
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    pub sudo: Option<bool>,
    /// A known-hosts file of the user's own, consulted besides rmm's pins.
    pub known_hosts: Option<String>,
    /// The `ssh` binary (default `ssh` on the PATH).
    pub binary: Option<String>,
    /// More `ssh` arguments, e.g. `["-o", "ProxyJump=bastion"]`.
    #[serde(default)]
    pub options: Vec<String>,
    pub connect_timeout_s: Option<u64>,
    pub command_timeout_s: Option<u64>,
    /// The port Rancher's HTTPS answers on (443: the Docker install's `-p 443:443`).
    pub rancher_port: Option<u16>,
    #[serde(default)]
    pub hosts: Vec<HostFile>,
}

/// `[[ssh.hosts]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// The machine name (`rancher`, `master01`, `worker01` …).
    pub name: String,
    /// What `ssh` connects to: an address or a `~/.ssh/config` alias.
    pub address: String,
    /// The node's IP as Rancher and the other nodes see it; default: the
    /// address when it is an IP, else what it resolves to here.
    pub ip: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    pub sudo: Option<bool>,
}

/// One host, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub name: String,
    pub address: String,
    pub ip: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    /// Run every command under `sudo -n` (default: when the user is not root).
    pub sudo: bool,
}

/// `[ssh]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshConfig {
    pub binary: String,
    pub options: Vec<String>,
    pub known_hosts: Option<String>,
    pub connect_timeout_s: u64,
    pub command_timeout_s: u64,
    pub rancher_port: u16,
    pub hosts: Vec<HostConfig>,
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}

impl SshFile {
    pub fn resolve(&self) -> Result<SshConfig, String> {
        let mut hosts: Vec<HostConfig> = Vec::new();
        for h in &self.hosts {
            if !crate::drivers::local::valid_name(&h.name) {
                return Err(format!("[[ssh.hosts]] name {:?} is not a valid machine name", h.name));
            }
            if hosts.iter().any(|o| o.name == h.name) {
                return Err(format!("[[ssh.hosts]] names {:?} twice", h.name));
            }
            if h.address.trim().is_empty() || h.address.starts_with('-') || h.address.contains(char::is_whitespace) {
                return Err(format!("[[ssh.hosts]] {}: address {:?} is not a host", h.name, h.address));
            }
            let ip = match &h.ip {
                Some(ip) => ip.parse::<std::net::IpAddr>().map(|_| ip.clone()).map_err(|_| {
                    format!("[[ssh.hosts]] {}: ip {ip:?} is not an IP address", h.name)
                })?,
                None if h.address.parse::<std::net::IpAddr>().is_ok() => h.address.clone(),
                None => {
                    use std::net::ToSocketAddrs;
                    (h.address.as_str(), 22)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .map(|a| a.ip().to_string())
                        .ok_or_else(|| {
                            format!("[[ssh.hosts]] {}: cannot resolve {:?}; give its ip", h.name, h.address)
                        })?
                }
            };
            let user = h.user.clone().or_else(|| self.user.clone());
            let sudo = h.sudo.or(self.sudo).unwrap_or(user.as_deref().is_some_and(|u| u != "root"));
            hosts.push(HostConfig {
                name: h.name.clone(),
                address: h.address.clone(),
                ip,
                user,
                port: h.port.or(self.port),
                identity_file: h.identity_file.clone().or_else(|| self.identity_file.clone()).map(|p| expand_home(&p)),
                sudo,
            });
        }
        Ok(SshConfig {
            binary: self.binary.clone().unwrap_or_else(|| "ssh".into()),
            options: self.options.clone(),
            known_hosts: self.known_hosts.as_deref().map(expand_home),
            connect_timeout_s: self.connect_timeout_s.unwrap_or(10).max(1),
            command_timeout_s: self.command_timeout_s.unwrap_or(900).max(1),
            rancher_port: self.rancher_port.unwrap_or(443),
            hosts,
        })
    }
}

/// The settings a state dir's runs use: those recorded by `up` (when
/// `record`, `file` resolved is recorded first).
pub fn settings(state_dir: &Path, file: Option<&SshFile>, record: bool) -> Result<SshConfig, String> {
    let path = state_dir.join(SETTINGS_FILE);
    if record {
        let cfg = file.cloned().unwrap_or_default().resolve()?;
        record_settings(state_dir, &cfg)?;
        return Ok(cfg);
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => file.cloned().unwrap_or_default().resolve(),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Records `cfg` as the settings of the state dir's run (atomically: a
/// crash leaves the old file or the new one).
pub fn record_settings(state_dir: &Path, cfg: &SshConfig) -> Result<(), String> {
    let path = state_dir.join(SETTINGS_FILE);
    let text = serde_json::to_vec_pretty(cfg).map_err(|e| e.to_string())?;
    crate::drivers::local::write_atomic(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The settings a scale of a completed run goes on with (issue 11): the
/// recorded ones (`recorded`, from the run's first `up` or its last scale)
/// merged with rmm.toml's (`file`), never replaced by them:
/// * a machine of the new plan the run holds (`live`: claimed, not
///   removed) keeps its recorded host; rmm.toml must give it the same
///   address, ip, port and user (rmm cannot move a node: refused, one line
///   naming the machine and `rmm down`); its other keys stay the recorded;
/// * a machine of the new plan the run does not hold (new, or removed by
///   an earlier scale and now back) is taken from rmm.toml;
/// * a machine the run holds that the new plan drops keeps its recorded
///   host until its removal is recorded: the removal (uninstall scripts,
///   the claim) runs on it, also in a resume after a crash, when rmm.toml
///   no longer names it;
/// * a recorded host the run no longer holds is dropped.
///
/// `[ssh]`'s own settings (binary, options, known_hosts, timeouts,
/// rancher_port) stay the recorded ones: the hosts the run holds are
/// reached as they were.
pub fn merge_for_scale(recorded: &SshConfig, file: &SshConfig, planned: &[String], live: &[String]) -> Result<SshConfig, String> {
    let mut hosts = Vec::new();
    for name in planned {
        let given = file.hosts.iter().find(|h| &h.name == name);
        let kept = recorded.hosts.iter().find(|h| &h.name == name).filter(|_| live.contains(name));
        match (kept, given) {
            (Some(old), Some(new)) => {
                let port = |h: &HostConfig| h.port.unwrap_or(22).to_string();
                let user = |h: &HostConfig| h.user.clone().unwrap_or_else(|| "ssh's default".into());
                let fields: [(&str, String, String); 4] = [
                    ("address", new.address.clone(), old.address.clone()),
                    ("ip", new.ip.clone(), old.ip.clone()),
                    ("port", port(new), port(old)),
                    ("user", user(new), user(old)),
                ];
                let changed: Vec<String> = fields
                    .iter()
                    .filter(|(_, new, old)| new != old)
                    .map(|(what, new, old)| format!("{what} {new} (it was claimed with {old})"))
                    .collect();
                if !changed.is_empty() {
                    return Err(format!(
                        "driver ssh: rmm.toml gives {name} {}; rmm cannot move a node: put its [[ssh.hosts]] entry back as it was, or remove the cluster with `rmm down`, then `rmm up` makes it anew",
                        changed.join(", ")
                    ));
                }
                hosts.push(old.clone());
            }
            (Some(old), None) => hosts.push(old.clone()),
            (None, Some(new)) => hosts.push(new.clone()),
            (None, None) => return Err(format!("driver ssh: rmm.toml has no [[ssh.hosts]] entry for {name}")),
        }
    }
    for old in &recorded.hosts {
        if !planned.contains(&old.name) && live.contains(&old.name) {
            hosts.push(old.clone());
        }
    }
    Ok(SshConfig { hosts, ..recorded.clone() })
}

/// Checks that `[[ssh.hosts]]` names every machine of the plan: masters +
/// workers + the rancher host, or (`existing_rancher`: `rancher_url` is
/// set) masters + workers only.
pub fn check_hosts(cfg: &SshConfig, machines: &[String], existing_rancher: bool) -> Result<(), String> {
    let rule = if existing_rancher {
        "masters + workers; rancher_url is set, so no rancher host"
    } else {
        "masters + workers + 1"
    };
    let missing: Vec<&str> =
        machines.iter().filter(|m| !cfg.hosts.iter().any(|h| &h.name == *m)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(format!(
            "driver ssh: rmm.toml has no [[ssh.hosts]] entry for {} ({} hosts given, {} machines planned: {rule})",
            missing.join(", "),
            cfg.hosts.len(),
            machines.len()
        ));
    }
    let extra: Vec<&str> =
        cfg.hosts.iter().filter(|h| !machines.contains(&h.name)).map(|h| h.name.as_str()).collect();
    if !extra.is_empty() {
        return Err(format!(
            "driver ssh: [[ssh.hosts]] {} not in the plan ({} machines planned: {rule}); change masters/workers or the hosts",
            extra.join(", "),
            machines.len()
        ));
    }
    Ok(())
}

/// A claim: this state dir uses the host as machine `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    name: String,
    cluster: String,
    role: Role,
    address: String,
    ip: String,
    claimed: String,
    /// The pinned host key's fingerprint (`SHA256:…`), when rmm's
    /// known-hosts file has it under the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_key: Option<String>,
}

/// Who claims hosts: this state dir (`<state>/ssh/identity.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    /// Random, made once per state dir: what a claim is compared by.
    id: String,
    /// `user@host:/absolute/state/dir`, for the refusal's words.
    place: String,
}

/// The claim file on a host (in the login's home; root's under sudo).
const HOST_CLAIM: &str = "$HOME/.rmm/claim";

/// The driver for one state dir.
pub struct SshDriver {
    cfg: SshConfig,
    distribution: Distribution,
    dir: PathBuf,
    /// machine → the host key fingerprint the log recorded on first
    /// contact (`Outcome::HostClaimed`), handed over by
    /// [`MachineDriver::pin_host_keys`]; a claim made by this process adds
    /// its own.
    recorded: std::sync::Mutex<BTreeMap<String, String>>,
    /// This state dir's identity, read (or made) once.
    identity: std::sync::Mutex<Option<Identity>>,
}

/// Where the uninstall scripts are (the installers' defaults; rke2 goes
/// to /opt/rke2 where /usr/local is read-only).
const UNINSTALL_SCRIPTS: &[&str] = &[
    "/usr/local/bin/rancher-system-agent-uninstall.sh",
    "/usr/local/bin/rke2-uninstall.sh",
    "/opt/rke2/bin/rke2-uninstall.sh",
    "/usr/local/bin/k3s-uninstall.sh",
    "/usr/local/bin/k3s-agent-uninstall.sh",
];

impl SshDriver {
    /// `state_dir`: the run's state dir (claims and pins live in `ssh/`).
    pub fn new(cfg: SshConfig, distribution: Distribution, state_dir: &Path) -> SshDriver {
        SshDriver { cfg, distribution, dir: state_dir.join("ssh"), recorded: Default::default(), identity: Default::default() }
    }

    fn host(&self, name: &str) -> Result<&HostConfig, DriverError> {
        self.cfg.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            DriverError::Permanent(format!("driver ssh: rmm.toml has no [[ssh.hosts]] entry named {name:?}"))
        })
    }

    fn pins(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    fn claim_path(&self, name: &str) -> PathBuf {
        self.dir.join("claims").join(format!("{name}.json"))
    }

    fn read_claim(&self, name: &str) -> Result<Option<Claim>, DriverError> {
        if !crate::drivers::local::valid_name(name) {
            return Ok(None);
        }
        match std::fs::read(self.claim_path(name)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DriverError::Permanent(format!("ssh: claim of {name} is corrupt: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::Transient(format!("ssh: read the claim of {name}: {e}"))),
        }
    }

    /// The `ssh` argv (without the remote command).
    fn argv(&self, host: &HostConfig, first_contact: bool) -> Vec<String> {
        let mut known = vec![self.pins().to_string_lossy().to_string()];
        match &self.cfg.known_hosts {
            Some(file) => known.push(file.clone()),
            None => {
                if let Ok(home) = std::env::var("HOME") {
                    known.push(format!("{home}/.ssh/known_hosts"));
                }
            }
        }
        let mut a: Vec<String> = vec!["-T".into()];
        let mut opt = |o: String| {
            a.push("-o".into());
            a.push(o);
        };
        opt("BatchMode=yes".into());
        opt(format!("ConnectTimeout={}", self.cfg.connect_timeout_s));
        opt("ServerAliveInterval=5".into());
        opt("ServerAliveCountMax=3".into());
        opt(format!("StrictHostKeyChecking={}", if first_contact { "accept-new" } else { "yes" }));
        opt(format!("UserKnownHostsFile={}", known.join(" ")));
        opt("LogLevel=ERROR".into());
        if let Some(id) = &host.identity_file {
            a.push("-i".into());
            a.push(id.clone());
            a.push("-o".into());
            a.push("IdentitiesOnly=yes".into());
        }
        if let Some(port) = host.port {
            a.push("-p".into());
            a.push(port.to_string());
        }
        if let Some(user) = &host.user {
            a.push("-l".into());
            a.push(user.clone());
        }
        a.extend(self.cfg.options.iter().cloned());
        a.push("--".into());
        a.push(host.address.clone());
        a
    }

    /// This state dir's identity (made on first use; under a lock, so
    /// claims made at once carry the same one).
    fn identity(&self) -> Result<Identity, DriverError> {
        let mut held = self.identity.lock().expect("not poisoned");
        if let Some(id) = held.as_ref() {
            return Ok(id.clone());
        }
        let path = self.dir.join("identity.json");
        let id = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DriverError::Permanent(format!("ssh: {} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = crate::state_dir::absolute(self.dir.parent().unwrap_or(&self.dir));
                let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "?".into());
                let machine = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "?".into());
                let id = Identity { id: uuid::Uuid::now_v7().to_string(), place: format!("{user}@{machine}:{}", state.display()) };
                std::fs::create_dir_all(&self.dir)
                    .map_err(|e| DriverError::Transient(format!("ssh: {}: {e}", self.dir.display())))?;
                crate::drivers::local::write_atomic(&path, &serde_json::to_vec_pretty(&id).expect("an identity serialises"))
                    .map_err(|e| DriverError::Transient(format!("ssh: write {}: {e}", path.display())))?;
                id
            }
            Err(e) => return Err(DriverError::Transient(format!("ssh: read {}: {e}", path.display()))),
        };
        *held = Some(id.clone());
        Ok(id)
    }

    /// Writes this state dir's claim on `host` as machine `spec.name`, or
    /// finds it there already; another state dir's claim refuses.
    async fn claim_host(&self, host: &HostConfig, spec: &MachineSpec) -> Result<(), DriverError> {
        let me = self.identity()?;
        let body = format!(
            "id={}\nstate_dir={}\ncluster={}\nmachine={}\nclaimed={}\n",
            me.id,
            me.place,
            spec.cluster,
            spec.name,
            rmm_events::rfc3339_ms(rmm_events::now_ms())
        );
        // `set -C`: the file is made with O_EXCL, so two claims at once
        // cannot both win; then what is there is printed, ours or not.
        let script = format!(
            "f={HOST_CLAIM}\nmkdir -p \"$(dirname \"$f\")\" || exit 1\nif [ ! -e \"$f\" ]; then (umask 077; set -C; printf %s {body} > \"$f\") 2>/dev/null; fi\nsed 's/^/rmm-claim /' \"$f\"\n",
            body = shell_quote(&body)
        );
        let out = self.run(host, &script, false).await?;
        let field = |k: &str| {
            out.stdout.lines().find_map(|l| l.trim().strip_prefix("rmm-claim ").and_then(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string))
        };
        match field("id") {
            Some(id) if id == me.id => Ok(()),
            Some(_) => Err(DriverError::Permanent(format!(
                "ssh: host {} ({}) is claimed by cluster {} (machine {}) of the state dir {} since {}; release it there (rmm down), or delete ~/.rmm/claim on the host if that state dir is gone",
                host.name,
                host.address,
                field("cluster").unwrap_or_else(|| "?".into()),
                field("machine").unwrap_or_else(|| "?".into()),
                field("state_dir").unwrap_or_else(|| "?".into()),
                field("claimed").unwrap_or_else(|| "?".into()),
            ))),
            None => Err(DriverError::Transient(format!(
                "ssh: could not write the claim on {} ({}): exit {}: {}",
                host.name,
                host.address,
                out.status,
                last_line(&out.stderr)
            ))),
        }
    }

    fn recorded(&self, name: &str) -> Option<String> {
        self.recorded.lock().expect("not poisoned").get(name).cloned()
    }

    /// The pin of `host` in rmm's known-hosts file checked against the
    /// log's: the same key, or (the file lost its line) the line restored
    /// from the host when the key it offers has the log's fingerprint. A
    /// key that is not the log's refuses, naming both.
    async fn check_pin(&self, host: &HostConfig) -> Result<(), DriverError> {
        let Some(recorded) = self.recorded(&host.name) else { return Ok(()) };
        let at = format!("{} ({})", host.name, host.address);
        match self.pinned_fingerprint(host).await {
            Some(pinned) if pinned == recorded => Ok(()),
            Some(pinned) => Err(DriverError::Permanent(format!(
                "ssh: the host key pinned for {at} in {} is {pinned}, not {recorded}, the one rmm's log recorded on first contact; restore the file, or release the host (rmm down) and claim it anew",
                self.pins().display()
            ))),
            None => {
                // Ask the host for its key through ssh itself (so
                // ~/.ssh/config and ProxyJump apply), into a file of its
                // own; `true` is all it runs, and nothing secret is sent.
                let scratch = self.dir.join(format!(".scan-{}", host.name));
                let _ = std::fs::remove_file(&scratch);
                let mut argv = self.argv(host, true);
                for a in argv.iter_mut() {
                    if a.starts_with("UserKnownHostsFile=") {
                        *a = format!("UserKnownHostsFile={}", scratch.display());
                    }
                }
                let out = tokio::process::Command::new(&self.cfg.binary)
                    .args(&argv)
                    .arg("true")
                    .stdin(Stdio::null())
                    .output();
                let out = tokio::time::timeout(Duration::from_secs(self.cfg.connect_timeout_s + 10), out)
                    .await
                    .map_err(|_| DriverError::Transient(format!("ssh: {at}: no answer while reading its host key")))?
                    .map_err(|e| DriverError::Transient(format!("ssh {}: {e}", host.name)))?;
                let seen = self.fingerprint_in(host, &scratch).await;
                let line = std::fs::read_to_string(&scratch).unwrap_or_default();
                let _ = std::fs::remove_file(&scratch);
                match seen {
                    Some(seen) if seen == recorded => {
                        use std::io::Write as _;
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(self.pins())
                            .map_err(|e| DriverError::Transient(format!("ssh: {}: {e}", self.pins().display())))?;
                        f.write_all(line.as_bytes())
                            .and_then(|()| f.sync_all())
                            .map_err(|e| DriverError::Transient(format!("ssh: {}: {e}", self.pins().display())))?;
                        tracing::info!(machine = %host.name, host_key = %recorded, "restored the host's pin from the log");
                        Ok(())
                    }
                    Some(seen) => Err(DriverError::Permanent(format!(
                        "ssh: the host key of {at} is {seen}, not {recorded}, the one rmm's log recorded on first contact; if the host was reinstalled, release it (rmm down) and claim it anew"
                    ))),
                    None => Err(self.classify(host, &String::from_utf8_lossy(&out.stderr)).unwrap_or_else(|| {
                        DriverError::Transient(format!("ssh: {at}: could not read its host key"))
                    })),
                }
            }
        }
    }

    /// Runs `script` on `host` (sent on stdin; the remote command carries
    /// nothing of it).
    async fn run(&self, host: &HostConfig, script: &str, first_contact: bool) -> Result<ExecOutput, DriverError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| DriverError::Transient(format!("ssh: {}: {e}", self.dir.display())))?;
        if !first_contact {
            self.check_pin(host).await?;
        }
        let remote = if host.sudo { r#"sudo -n sh -c 'eval "$(cat)"'"# } else { r#"sh -c 'eval "$(cat)"'"# };
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.args(self.argv(host, first_contact))
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            DriverError::Permanent(format!("ssh: cannot run {:?}: {e} (install openssh-client)", self.cfg.binary))
        })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let script = script.to_string();
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(script.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        let limit = Duration::from_secs(self.cfg.command_timeout_s);
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(DriverError::Transient(format!("ssh {}: {e}", host.name))),
            Err(_) => {
                return Err(DriverError::Transient(format!(
                    "ssh: {} ({}) did not finish within {}s; the call was killed",
                    host.name, host.address, self.cfg.command_timeout_s
                )))
            }
        };
        let _ = feed.await;
        let status = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if status == 255 {
            if let Some(e) = self.classify(host, &stderr) {
                return Err(e);
            }
        }
        Ok(ExecOutput { status, stdout, stderr })
    }

    /// `ssh`'s own failures (exit 255) as driver errors; `None`: the remote
    /// command itself exited 255.
    fn classify(&self, host: &HostConfig, stderr: &str) -> Option<DriverError> {
        let at = format!("{} ({})", host.name, host.address);
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || stderr.contains("Host key verification failed")
        {
            if let Some(recorded) = self.recorded(&host.name) {
                return Some(DriverError::Permanent(format!(
                    "ssh: the host key of {at} is not {recorded}, the one rmm's log recorded on first contact (pinned in {}); if the host was reinstalled, delete its line there and run again",
                    self.pins().display()
                )));
            }
            return Some(DriverError::Permanent(format!(
                "ssh: the host key of {at} is not the one rmm pinned on first contact (in {}); if the host was reinstalled, delete its line there and run again",
                self.pins().display()
            )));
        }
        if stderr.contains("Permission denied") {
            return Some(DriverError::Permanent(format!(
                "ssh: {at} refused the login ({}); check user and identity_file in [ssh]",
                last_line(stderr)
            )));
        }
        if stderr.contains("Could not resolve hostname") {
            return Some(DriverError::Permanent(format!("ssh: {at}: {}", last_line(stderr))));
        }
        let transient = [
            "Connection refused",
            "Connection timed out",
            "timed out",
            "closed by remote host",
            "Connection closed",
            "Connection reset",
            "Broken pipe",
            "No route to host",
            "Network is unreachable",
            "kex_exchange_identification",
            "Timeout, server",
        ];
        if stderr.is_empty() || transient.iter().any(|t| stderr.contains(t)) {
            let why = if stderr.trim().is_empty() { "the connection ended" } else { last_line(stderr) };
            return Some(DriverError::Transient(format!("ssh: {at}: {why}")));
        }
        None
    }

    /// `ssh-keygen -l -F` of the host in rmm's pins: its key's fingerprint.
    async fn pinned_fingerprint(&self, host: &HostConfig) -> Option<String> {
        self.fingerprint_in(host, &self.pins()).await
    }

    /// `ssh-keygen -l -F` of the host in the known-hosts file `file`.
    async fn fingerprint_in(&self, host: &HostConfig, file: &Path) -> Option<String> {
        let entry = match host.port {
            Some(p) if p != 22 => format!("[{}]:{p}", host.address),
            _ => host.address.clone(),
        };
        let out = tokio::process::Command::new("ssh-keygen")
            .arg("-l")
            .arg("-F")
            .arg(&entry)
            .arg("-f")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let prints: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("SHA256:")))
            .collect();
        (!prints.is_empty()).then(|| prints.join(","))
    }

    fn machine(&self, claim: &Claim) -> Machine {
        Machine {
            name: claim.name.clone(),
            cluster: Some(claim.cluster.clone()),
            state: MachineState::Running,
            ip: Some(claim.ip.clone()),
        }
    }

    /// The command as it runs on a host that runs it as root: no `sudo`
    /// inside (the whole script is under `sudo -n` when configured, and
    /// sudo would drop `CATTLE_TOKEN`), and `--token X` moved into the
    /// script's environment.
    fn prepare(&self, host: &HostConfig, command: &str) -> String {
        let as_root = host.sudo || host.user.as_deref().is_none_or(|u| u == "root");
        let mut command = if as_root { without_sudo(command) } else { command.to_string() };
        let mut prefix = String::new();
        // The system-agent installer (rke2/k3s) and the rke1 agent's run.sh
        // both read CATTLE_TOKEN; `docker run -e CATTLE_TOKEN` (no value)
        // hands the script's to the agent container.
        let installer = command.contains("system-agent-install.sh");
        let rke1_agent = command.contains("docker run ") && command.contains("rancher-agent");
        if let Some((before, token, after)) = split_token(&command).filter(|_| installer || rke1_agent) {
            prefix = format!("CATTLE_TOKEN={}\nexport CATTLE_TOKEN\n", shell_quote(token));
            command = format!("{before}{after}");
            if rke1_agent {
                command = command.replacen("docker run ", "docker run -e CATTLE_TOKEN ", 1);
            }
        }
        format!("{prefix}{command}\n")
    }
}

fn last_line(text: &str) -> &str {
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("")
}

/// `sudo` at the start of the command or of a pipeline stage removed.
fn without_sudo(command: &str) -> String {
    let mut out = String::new();
    let mut rest = command;
    let mut at_start = true;
    while !rest.is_empty() {
        if at_start {
            let trimmed = rest.trim_start();
            out.push_str(&rest[..rest.len() - trimmed.len()]);
            rest = trimmed;
            if let Some(r) = rest.strip_prefix("sudo ") {
                rest = r.trim_start();
            }
            at_start = false;
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
        if c == '|' || c == ';' || c == '&' {
            at_start = true;
        }
    }
    out
}

/// `(before, token, after)` of the first ` --token X` in `command`.
fn split_token(command: &str) -> Option<(&str, &str, &str)> {
    let at = command.find(" --token ")?;
    let value_start = at + " --token ".len();
    let rest = &command[value_start..];
    let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let token = &rest[..len];
    if token.is_empty() || token.starts_with('\'') || token.starts_with('"') {
        return None;
    }
    Some((&command[..at], token, &command[value_start + len..]))
}

/// What the probe prints. systemd: booted with it (`/run/systemd/system`,
/// as `sd_booted()` checks) and `systemctl` answers.
const PROBE: &str = r#"echo "rmm-probe uid=$(id -u)"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && systemctl --version >/dev/null 2>&1; then echo "rmm-probe systemd=yes"; else echo "rmm-probe systemd=no"; fi
if command -v docker >/dev/null 2>&1 && docker ps -q >/dev/null 2>&1; then echo "rmm-probe docker=yes"; else echo "rmm-probe docker=no"; fi
"#;

#[async_trait]
impl MachineDriver for SshDriver {
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, DriverError> {
        let host = self.host(&spec.name)?.clone();
        if self.read_claim(&spec.name)?.is_some() {
            return Err(DriverError::Permanent(format!("Host already exists: \"{}\"", spec.name)));
        }
        // First contact: pins the host key (accept-new).
        let out = self.run(&host, PROBE, true).await?;
        if out.status != 0 {
            return Err(DriverError::Transient(format!(
                "ssh: the probe of {} exited {}: {}",
                host.name,
                out.status,
                last_line(&out.stderr)
            )));
        }
        let has = |what: &str| out.stdout.lines().any(|l| l.trim() == format!("rmm-probe {what}=yes"));
        let needs_docker = spec.role == Role::Rancher || self.distribution == Distribution::Rke1;
        if needs_docker && !has("docker") {
            return Err(DriverError::Permanent(format!(
                "ssh: host {} ({}) has no working docker, which the {} needs (install Docker Engine there)",
                host.name,
                host.address,
                if spec.role == Role::Rancher { "Rancher server" } else { "rke1 node" }
            )));
        }
        if spec.role != Role::Rancher && self.distribution != Distribution::Rke1 && !has("systemd") {
            return Err(DriverError::Permanent(format!(
                "ssh: host {} ({}) has no systemd, which {} nodes need (RancherOS and boot2docker do not work)",
                host.name,
                host.address,
                self.distribution.as_str()
            )));
        }
        // The first contact pinned the key: this call is checked against it.
        if let Some(key) = self.pinned_fingerprint(&host).await {
            self.recorded.lock().expect("not poisoned").insert(spec.name.clone(), key);
        }
        self.claim_host(&host, spec).await?;
        let claim = Claim {
            name: spec.name.clone(),
            cluster: spec.cluster.clone(),
            role: spec.role,
            address: host.address.clone(),
            ip: host.ip.clone(),
            claimed: rmm_events::rfc3339_ms(rmm_events::now_ms()),
            host_key: self.pinned_fingerprint(&host).await,
        };
        let path = self.claim_path(&spec.name);
        let parent = path.parent().expect("claims dir");
        std::fs::create_dir_all(parent).map_err(|e| DriverError::Transient(format!("ssh: {}: {e}", parent.display())))?;
        let bytes = serde_json::to_vec_pretty(&claim).expect("a claim serialises");
        crate::drivers::local::write_atomic(&path, &bytes)
            .map_err(|e| DriverError::Transient(format!("ssh: write {}: {e}", path.display())))?;
        tracing::info!(machine = %spec.name, address = %host.address, host_key = claim.host_key.as_deref().unwrap_or("?"), "claimed the host (its key is pinned)");
        if let Some(key) = &claim.host_key {
            self.recorded.lock().expect("not poisoned").insert(spec.name.clone(), key.clone());
        }
        Ok(self.machine(&claim))
    }

    /// A claimed host as it answers now (one `ssh … true`): `Running`
    /// when it does; `Stopped` when it does not answer (refused, timed
    /// out, dropped: powered off or rebooting); `Error` when it answers but
    /// refuses rmm (a host key that is not the pinned one, a refused
    /// login), with that one line.
    async fn inspect(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let Some(claim) = self.read_claim(name)? else { return Ok(None) };
        let mut machine = self.machine(&claim);
        let host = self.host(name)?.clone();
        match self.run(&host, "true\n", false).await {
            Ok(_) => {}
            Err(DriverError::Transient(why)) => {
                tracing::info!(machine = %name, %why, "the host does not answer");
                machine.state = MachineState::Stopped;
            }
            Err(DriverError::Permanent(why)) => machine.state = MachineState::Error(why),
        }
        Ok(Some(machine))
    }

    /// rmm cannot power a host on: a stopped host is "started again" when
    /// it answers again (a reboot that ended); its address is the
    /// configured one. One that still does not answer is a transient
    /// error that says so.
    async fn restart(&self, name: &str) -> Result<Option<Machine>, DriverError> {
        let Some(claim) = self.read_claim(name)? else { return Ok(None) };
        let host = self.host(name)?.clone();
        self.run(&host, "true\n", false).await.map_err(|e| match e {
            DriverError::Transient(why) => DriverError::Transient(format!(
                "{why} (rmm cannot power a host on: start it, then `rmm up --resume`)"
            )),
            permanent => permanent,
        })?;
        Ok(Some(self.machine(&claim)))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, DriverError> {
        let mut out = BTreeMap::new();
        let dir = self.dir.join("claims");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DriverError::Transient(format!("ssh: {}: {e}", dir.display()))),
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            let Some(name) = file.strip_suffix(".json") else { continue };
            if let Some(claim) = self.read_claim(name)? {
                if claim.cluster == cluster {
                    out.insert(claim.name.clone(), self.machine(&claim));
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, DriverError> {
        let host = self.host(name)?.clone();
        if self.read_claim(name)?.is_none() {
            return Err(DriverError::Permanent(format!("Host does not exist: \"{name}\" (not claimed)")));
        }
        self.run(&host, &self.prepare(&host, command), false).await
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        let Some(claim) = self.read_claim(name)? else { return Ok(()) };
        let host = self.host(name)?.clone();
        let mut script = String::from("set +e\n");
        if claim.role == Role::Rancher {
            script.push_str(&format!("docker rm -f {SERVER_CONTAINER} >/dev/null 2>&1\n"));
        }
        for s in UNINSTALL_SCRIPTS {
            script.push_str(&format!(
                "if [ -x {s} ]; then echo \"rmm: running {s}\"; {s} || echo \"rmm: {s} exited $?\" >&2; fi\n"
            ));
        }
        // Then the host is released: the claim goes, if it is ours.
        let me = self.identity()?;
        script.push_str(&format!(
            "f={HOST_CLAIM}\nif [ -f \"$f\" ] && grep -qx {} \"$f\"; then rm -f \"$f\"; echo \"rmm: released the host\"; fi\n",
            shell_quote(&format!("id={}", me.id))
        ));
        script.push_str("exit 0\n");
        let out = self.run(&host, &script, false).await?;
        tracing::info!(machine = %name, output = %out.stdout.trim(), "released the host");
        std::fs::remove_file(self.claim_path(name))
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(|e| DriverError::Transient(format!("ssh: drop the claim of {name}: {e}")))?;
        Ok(())
    }

    fn https_port(&self) -> u16 {
        self.cfg.rancher_port
    }

    /// The key fingerprint the claim saw on first contact, for the log.
    async fn host_key(&self, machine: &str) -> Result<Option<String>, DriverError> {
        Ok(self.read_claim(machine)?.and_then(|c| c.host_key))
    }

    fn pin_host_keys(&self, recorded: &BTreeMap<String, String>) {
        self.recorded.lock().expect("not poisoned").extend(recorded.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The single-node install's `docker run`, with the bootstrap password
    /// in an env file written from the script (stdin) with mode 0600 and
    /// removed once docker has read it: on no command line of either side.
    async fn start_server(&self, machine: &str, server: &ServerSpec) -> Result<ExecOutput, DriverError> {
        let host = self.host(machine)?.clone();
        let script = format!(
            "umask 077\nf=$(mktemp)\nprintf 'CATTLE_BOOTSTRAP_PASSWORD=%s\\n' {pw} >\"$f\"\n\
             docker run -d --name {SERVER_CONTAINER} --restart=unless-stopped --privileged -p 80:80 -p 443:443 \
             -v /opt/rancher:/var/lib/rancher --env-file \"$f\" {image}\ns=$?\nrm -f \"$f\"\nexit $s\n",
            pw = shell_quote(server.bootstrap_password.expose()),
            image = shell_quote(&server.image)
        );
        self.run(&host, &script, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_is_dropped_at_command_positions_only() {
        assert_eq!(without_sudo("curl -fL x | sudo  sh -s - --a sudo"), "curl -fL x | sh -s - --a sudo");
        assert_eq!(without_sudo("sudo docker ps"), "docker ps");
    }

    #[test]
    fn the_token_moves_out_of_the_command() {
        let (b, t, a) = split_token("curl x | sh -s - --server s --token abc123 --ca-checksum c").unwrap();
        assert_eq!((b, t, a), ("curl x | sh -s - --server s", "abc123", " --ca-checksum c"));
        assert!(split_token("docker ps").is_none());
    }

    /// The README's complete example is a valid rmm.toml whose hosts match its plan.
    #[test]
    fn the_readme_example_parses_and_matches_its_plan() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("(`driver = \"ssh\"`)").expect("the ssh section")..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let file: crate::config::ConfigFile = toml::from_str(example).unwrap();
        let cfg = file.ssh.resolve().unwrap();
        let plan = file.plan(&Default::default()).unwrap();
        let names: Vec<String> = plan.machine_names().into_iter().map(|(n, _)| n).collect();
        check_hosts(&cfg, &names, false).unwrap();
        assert_eq!(plan.driver, "ssh");
        let w2 = cfg.hosts.iter().find(|h| h.name == "worker02").unwrap();
        assert_eq!((w2.address.as_str(), w2.ip.as_str(), w2.sudo), ("node-w2", "10.0.0.22", true));
    }

    fn hosts(toml_text: &str) -> SshConfig {
        toml::from_str::<SshFile>(toml_text).unwrap().resolve().unwrap()
    }

    fn names(cfg: &SshConfig) -> Vec<&str> {
        cfg.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_scale_merges_the_recorded_hosts_with_the_new_ones_and_refuses_a_moved_one() {
        let recorded = hosts(
            "user = \"ubuntu\"\ncommand_timeout_s = 60\n[[hosts]]\nname = \"rancher\"\naddress = \"10.0.0.10\"\n[[hosts]]\nname = \"master01\"\naddress = \"10.0.0.11\"\nsudo = false\n[[hosts]]\nname = \"worker01\"\naddress = \"10.0.0.21\"\n[[hosts]]\nname = \"worker02\"\naddress = \"10.0.0.22\"\n[[hosts]]\nname = \"worker03\"\naddress = \"10.0.0.23\"\n",
        );
        // rmm.toml now: worker02 and worker03 gone, worker04 new; master01's
        // sudo and [ssh]'s timeout changed (not a move: the recorded stay).
        let file = hosts(
            "user = \"ubuntu\"\ncommand_timeout_s = 5\n[[hosts]]\nname = \"rancher\"\naddress = \"10.0.0.10\"\n[[hosts]]\nname = \"master01\"\naddress = \"10.0.0.11\"\n[[hosts]]\nname = \"worker01\"\naddress = \"10.0.0.21\"\n[[hosts]]\nname = \"worker04\"\naddress = \"10.0.0.24\"\n",
        );
        let planned = strings(&["rancher", "master01", "worker01", "worker04"]);
        // worker03's removal is recorded already (an earlier scale): dropped.
        let live = strings(&["rancher", "master01", "worker01", "worker02"]);
        let merged = merge_for_scale(&recorded, &file, &planned, &live).unwrap();
        assert_eq!(names(&merged), ["rancher", "master01", "worker01", "worker04", "worker02"]);
        assert!(!merged.hosts[1].sudo, "a kept host keeps its recorded settings");
        assert_eq!(merged.command_timeout_s, 60, "[ssh]'s own settings stay the recorded");
        assert_eq!(merged.hosts[3], file.hosts[3], "a new host is rmm.toml's");
        assert_eq!(merged.hosts[4], recorded.hosts[3], "a host being removed keeps its recorded settings");
        // A host removed earlier and back: rmm.toml's, even at another address.
        let back = hosts("[[hosts]]\nname = \"rancher\"\naddress = \"10.0.0.10\"\nuser = \"ubuntu\"\n[[hosts]]\nname = \"worker03\"\naddress = \"10.0.0.99\"\n");
        let merged = merge_for_scale(&recorded, &back, &strings(&["rancher", "worker03"]), &strings(&["rancher"])).unwrap();
        assert_eq!(merged.hosts[1].address, "10.0.0.99");
        // A kept machine moved (address, port or user): one line naming it and `rmm down`.
        for (from, to, says) in [
            ("address = \"10.0.0.21\"", "address = \"10.0.0.31\"", "worker01 address 10.0.0.31 (it was claimed with 10.0.0.21), ip 10.0.0.31 (it was claimed with 10.0.0.21)"),
            ("name = \"worker01\"\naddress = \"10.0.0.21\"", "name = \"worker01\"\naddress = \"10.0.0.21\"\nport = 2222", "worker01 port 2222 (it was claimed with 22)"),
            ("name = \"master01\"\naddress = \"10.0.0.11\"", "name = \"master01\"\naddress = \"10.0.0.11\"\nuser = \"root\"", "master01 user root (it was claimed with ubuntu)"),
        ] {
            let moved = hosts(
                &"user = \"ubuntu\"\n[[hosts]]\nname = \"rancher\"\naddress = \"10.0.0.10\"\n[[hosts]]\nname = \"master01\"\naddress = \"10.0.0.11\"\n[[hosts]]\nname = \"worker01\"\naddress = \"10.0.0.21\"\n[[hosts]]\nname = \"worker04\"\naddress = \"10.0.0.24\"\n".replace(from, to),
            );
            let e = merge_for_scale(&recorded, &moved, &planned, &live).unwrap_err();
            assert!(e.contains(says) && e.contains("cannot move a node") && e.contains("`rmm down`") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn hosts_resolve_with_defaults_and_sudo_for_non_root() {
        let file: SshFile = toml::from_str(
            "user = \"ubuntu\"\nport = 2222\n[[hosts]]\nname = \"master01\"\naddress = \"10.0.0.5\"\n[[hosts]]\nname = \"rancher\"\naddress = \"10.0.0.4\"\nuser = \"root\"\n",
        )
        .unwrap();
        let cfg = file.resolve().unwrap();
        assert_eq!(cfg.hosts[0].ip, "10.0.0.5");
        assert!(cfg.hosts[0].sudo);
        assert!(!cfg.hosts[1].sudo);
        assert_eq!(cfg.hosts[1].port, Some(2222));
        assert_eq!(cfg.rancher_port, 443);
        let err = check_hosts(&cfg, &["rancher".into(), "master01".into(), "worker01".into()], false).unwrap_err();
        assert!(err.contains("worker01"), "{err}");
        // With rancher_url, the rancher host is one too many.
        let err = check_hosts(&cfg, &["master01".into()], true).unwrap_err();
        assert!(err.contains("rancher not in the plan") && err.contains("no rancher host"), "{err}");
    }
}
