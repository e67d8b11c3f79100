//! What `docker-machine ssh NAME -- COMMAND` runs, in the local world: a
//! small `docker` that knows the Rancher server image (the emulator, as a
//! detached process), the Rancher agent image (see `agent`) and `docker ps`.
//!
//! Output is docker's where it matters (ids on stdout, the name-conflict
//! message, exit codes 125/127), and never echoes the command: it carries
//! the bootstrap password and the registration token.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rand::Rng;
use rmm_actors::ports::ExecOutput;
use serde::{Deserialize, Serialize};

use super::supervisor::{self, RestartPolicy};
use super::{agent, write_atomic, HTTPS_PORT};

/// The machine a command runs on.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub rmm_exe: PathBuf,
    pub emulator_env: Vec<(String, String)>,
}

fn out(status: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> ExecOutput {
    ExecOutput { status, stdout: stdout.into(), stderr: stderr.into() }
}

/// A word of the command that may be shown in an error: not if it could be
/// a value (an assignment, or something long enough to be a token).
fn showable(word: &str) -> &str {
    if word.contains('=') || word.len() > 40 {
        "…"
    } else {
        word
    }
}

/// Runs one command line on `host`.
pub async fn exec(host: &Host, command: &str) -> ExecOutput {
    // the system-agent installer (RKE2/K3s nodes) and its service
    if agent::is_system_agent_command(command) {
        return agent::shell(host, command).await;
    }
    let words = match shell_words::split(command) {
        Ok(words) => words,
        Err(_) => return out(2, "", "bash: syntax error: unterminated quoted string\n"),
    };
    let mut args: &[String] = &words;
    if args.first().map(String::as_str) == Some("sudo") {
        args = &args[1..];
    }
    match args.first().map(String::as_str) {
        None => out(0, "", ""),
        Some("docker") => docker(host, &args[1..]).await,
        Some(other) => out(127, "", format!("bash: {}: command not found\n", showable(other))),
    }
}

async fn docker(host: &Host, args: &[String]) -> ExecOutput {
    match args.first().map(String::as_str) {
        Some("run") => run(host, &args[1..]).await,
        Some("ps") => ps(host, &args[1..]),
        Some("stop") => stop(host, &args[1..]).await,
        Some("rm") => rm(host, &args[1..]).await,
        Some(other) => {
            out(127, "", format!("docker: '{}' is not a docker command in the local world\n", showable(other)))
        }
        None => out(127, "", "docker: a command is needed (the local world knows run, ps, stop and rm)\n"),
    }
}

// ---------------------------------------------------------------- docker run

/// `docker run` flags that take no value.
const BOOL_FLAGS: &[&str] = &[
    "-d",
    "--detach",
    "--privileged",
    "--rm",
    "-i",
    "--interactive",
    "-t",
    "--tty",
    "--init",
    "--read-only",
    "-P",
    "--publish-all",
    "--no-healthcheck",
    "--oom-kill-disable",
    "-q",
    "--quiet",
    "--sig-proxy",
];

/// `docker run` flags that take a value (`--flag V` or `--flag=V`; short
/// ones also `-fV`).
const VALUE_FLAGS: &[&str] = &[
    "-p",
    "--publish",
    "-v",
    "--volume",
    "--name",
    "-e",
    "--env",
    "--env-file",
    "--restart",
    "--net",
    "--network",
    "-l",
    "--label",
    "--label-file",
    "-h",
    "--hostname",
    "-w",
    "--workdir",
    "--entrypoint",
    "-m",
    "--memory",
    "--cpus",
    "--cpu-shares",
    "--add-host",
    "--dns",
    "--dns-search",
    "--ulimit",
    "--security-opt",
    "--cap-add",
    "--cap-drop",
    "--tmpfs",
    "--device",
    "--mount",
    "--log-driver",
    "--log-opt",
    "--pull",
    "--platform",
    "-u",
    "--user",
    "--pid",
    "--ipc",
    "--shm-size",
    "--stop-signal",
    "--stop-timeout",
    "--health-cmd",
    "--expose",
    "--link",
    "--volumes-from",
    "--runtime",
    "--cgroupns",
    "--uts",
    "--userns",
    "--gpus",
    "--memory-swap",
];

/// A parsed `docker run`. Its `Debug` shows neither env values nor the
/// container's arguments (they hold passwords and tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub detach: bool,
    pub privileged: bool,
    pub name: Option<String>,
    /// `--restart` (docker's default is `no`).
    pub restart: RestartPolicy,
    pub env: Vec<(String, String)>,
    pub image: String,
    pub args: Vec<String>,
}

impl fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunSpec")
            .field("detach", &self.detach)
            .field("privileged", &self.privileged)
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("image", &self.image)
            .field("args", &format_args!("[{} args]", self.args.len()))
            .finish()
    }
}

/// Parses the arguments after `docker run`. The error is docker's usage
/// message (exit 125).
pub fn parse_run(args: &[String]) -> Result<RunSpec, String> {
    let mut spec = RunSpec {
        detach: false,
        privileged: false,
        name: None,
        restart: RestartPolicy::No,
        env: Vec::new(),
        image: String::new(),
        args: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            spec.image = checked_reference(arg)?;
            spec.args = args[i..].to_vec();
            return Ok(spec);
        }
        // --flag=value, -fvalue, -abc (booleans), --flag value
        let (flag, inline): (String, Option<String>) =
            if let Some((f, v)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
                (f.to_string(), Some(v.to_string()))
            } else if !arg.starts_with("--") && arg.len() > 2 {
                if !arg.is_char_boundary(2) {
                    return Err(format!("unknown shorthand flag in {}", showable(arg)));
                }
                let short = &arg[..2];
                if VALUE_FLAGS.contains(&short) {
                    (short.to_string(), Some(arg[2..].trim_start_matches('=').to_string()))
                } else if arg[1..].chars().all(|c| BOOL_FLAGS.contains(&format!("-{c}").as_str())) {
                    for c in arg[1..].chars() {
                        apply_bool(&mut spec, &format!("-{c}"), true);
                    }
                    continue;
                } else {
                    return Err(format!("unknown shorthand flag: '{}' in {}", &arg[1..2], showable(arg)));
                }
            } else {
                (arg.clone(), None)
            };
        if BOOL_FLAGS.contains(&flag.as_str()) {
            let on = match inline.as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(_) => return Err(format!("invalid argument for {flag}: not a boolean")),
            };
            apply_bool(&mut spec, &flag, on);
        } else if VALUE_FLAGS.contains(&flag.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => {
                    let v = args.get(i).cloned().ok_or_else(|| format!("flag needs an argument: {flag}"))?;
                    i += 1;
                    v
                }
            };
            match flag.as_str() {
                "--name" => spec.name = Some(value.trim_start_matches('/').to_string()),
                "--restart" => spec.restart = RestartPolicy::parse(&value)?,
                "-e" | "--env" => match value.split_once('=') {
                    Some((k, v)) => spec.env.push((k.to_string(), v.to_string())),
                    // `-e NAME`: the value comes from the caller's environment.
                    None => {
                        if let Ok(v) = std::env::var(&value) {
                            spec.env.push((value, v));
                        }
                    }
                },
                // docker reads the file client-side, relative to its own
                // working directory: `KEY=VALUE` lines, `KEY` alone takes
                // the caller's value, `#` comments and blank lines skipped
                // (docs.docker.com, `docker run --env-file`).
                "--env-file" => {
                    let text = fs::read_to_string(&value)
                        .map_err(|e| format!("open {}: {}", showable(&value), io_text(&e)))?;
                    for line in text.lines().map(str::trim_start) {
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        match line.split_once('=') {
                            Some((k, v)) => spec.env.push((k.to_string(), v.to_string())),
                            None => {
                                if let Ok(v) = std::env::var(line) {
                                    spec.env.push((line.to_string(), v));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        } else {
            return Err(format!("unknown flag: {}", showable(&flag)));
        }
    }
    // After `--`, the next word is the image.
    if let Some(image) = args.get(i) {
        spec.image = checked_reference(image)?;
        spec.args = args[i + 1..].to_vec();
        return Ok(spec);
    }
    Err("\"docker run\" requires at least 1 argument.".into())
}

/// An image reference as docker's grammar has it
/// (`[host[:port]/]name[/name…][:tag][@algo:hex]`, names lower-case); else
/// docker's `invalid reference format`.
fn checked_reference(image: &str) -> Result<String, String> {
    if valid_reference(image) {
        Ok(image.to_string())
    } else {
        Err("invalid reference format.".into())
    }
}

pub fn valid_reference(image: &str) -> bool {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo.chars().all(|c| c.is_ascii_alphanumeric() || "+.-_".contains(c))
                && !hex.is_empty()
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return false;
        }
    }
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let mut cs = t.chars();
        let first_ok = cs.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok || t.len() > 128 || !cs.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return false;
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        let host = parts.remove(0);
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)) {
            return false;
        }
    }
    !parts.is_empty()
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && p.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

fn apply_bool(spec: &mut RunSpec, flag: &str, on: bool) {
    match flag {
        "-d" | "--detach" => spec.detach = on,
        "--privileged" => spec.privileged = on,
        _ => {}
    }
}

/// What an image is, in the local world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `rancher/rancher`: the emulator.
    Server,
    /// `rancher/rancher-agent`: registers the node.
    Agent,
}

/// `[registry/]rancher/rancher[:tag][@digest]` → `Server`, and so on.
pub fn image_kind(image: &str) -> Option<Kind> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let repo = match no_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => no_digest,
    };
    let matches = |name: &str| repo == name || repo.ends_with(&format!("/{name}"));
    if matches("rancher/rancher") {
        Some(Kind::Server)
    } else if matches("rancher/rancher-agent") {
        Some(Kind::Agent)
    } else {
        None
    }
}

fn run_error(message: &str) -> ExecOutput {
    out(125, "", format!("docker: {message}\nSee 'docker run --help'.\n"))
}

async fn run(host: &Host, args: &[String]) -> ExecOutput {
    let spec = match parse_run(args) {
        Ok(spec) => spec,
        Err(e) => return run_error(&e),
    };
    let Some(kind) = image_kind(&spec.image) else {
        return run_error(&format!(
            "Error response from daemon: pull access denied for {}: the local world has only rancher/rancher and rancher/rancher-agent",
            showable(&spec.image)
        ));
    };
    match kind {
        Kind::Server => start_container(host, &spec, Kind::Server),
        Kind::Agent => {
            // The agent's work happens before its container is recorded: a
            // registration that fails leaves no container behind.
            let mut flags = agent::parse(&spec.args);
            // run.sh takes the token from CATTLE_TOKEN too (`-e CATTLE_TOKEN`).
            if flags.token.is_none() {
                flags.token = spec.env.iter().find(|(k, v)| k == "CATTLE_TOKEN" && !v.is_empty()).map(|(_, v)| rmm_actors::ports::Secret::new(v.clone()));
            }
            if let Err(conflict) = check_name_free(host, spec.name.as_deref()) {
                return conflict;
            }
            match agent::run(host, &flags).await {
                Ok(()) => start_container(host, &spec, Kind::Agent),
                Err(message) => out(1, "", format!("{message}\n")),
            }
        }
    }
}

/// One `docker` at a time per machine.
fn lock_machine(dir: &Path) -> io::Result<Flock<File>> {
    let file =
        super::open_lock_file(&dir.join(".docker.lock"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
}

fn conflict(name: &str, id: &str) -> ExecOutput {
    run_error(&format!(
        "Error response from daemon: Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name."
    ))
}

fn check_name_free(host: &Host, name: Option<&str>) -> Result<(), ExecOutput> {
    let Some(name) = name else { return Ok(()) };
    match load_containers(&host.dir) {
        Ok(cs) => match cs.iter().find(|c| c.name == name && c.is_running()) {
            Some(c) => Err(conflict(name, &c.id)),
            None => Ok(()),
        },
        Err(e) => Err(run_error(&format!("Error response from daemon: {e}"))),
    }
}

fn start_container(host: &Host, spec: &RunSpec, kind: Kind) -> ExecOutput {
    match start_container_locked(host, spec, kind) {
        Ok(output) => output,
        Err(e) => run_error(&format!("Error response from daemon: {e}")),
    }
}

fn start_container_locked(host: &Host, spec: &RunSpec, kind: Kind) -> io::Result<ExecOutput> {
    let containers_dir = host.dir.join("containers");
    fs::create_dir_all(&containers_dir)?;
    let _lock = lock_machine(&host.dir)?;
    let containers = load_containers(&host.dir)?;
    let id = random_hex(32);
    let name = spec.name.clone().unwrap_or_else(|| match kind {
        Kind::Server => format!("rancher-{}", &id[..8]),
        Kind::Agent => format!("rancher-agent-{}", &id[..8]),
    });
    for old in containers.iter().filter(|c| c.name == name) {
        if old.is_running() {
            return Ok(conflict(&name, &old.id));
        }
        // A dead container of that name is replaced (its log stays).
        let _ = fs::remove_file(containers_dir.join(format!("{}.json", old.id)));
    }
    let created_ms = rmm_events::now_ms();
    let mut record = Container {
        id: id.clone(),
        name,
        image: spec.image.clone(),
        kind,
        pid: None,
        pid_start: None,
        exit_code: None,
        created: rmm_events::rfc3339_ms(created_ms),
        created_ms,
    };
    if kind == Kind::Server {
        if let Some(busy) = containers.iter().find(|c| c.kind == Kind::Server && c.is_running()) {
            return Ok(run_error(&format!(
                "Error response from daemon: driver failed programming external connectivity on endpoint {}: Bind for {}:{HTTPS_PORT} failed: port is already allocated",
                busy.name, host.ip
            )));
        }
        let log_path = containers_dir.join(format!("{id}.log"));
        if !spec.privileged {
            // What rancher/rancher ≥ 2.5 does without --privileged: the
            // container starts, prints this and exits.
            fs::write(
                &log_path,
                "ERROR: Rancher must be ran with the --privileged flag when running outside of Kubernetes\n",
            )?;
            record.exit_code = Some(1);
        } else {
            let record_path = containers_dir.join(format!("{id}.json"));
            let (pid, start) = spawn_emulator(host, spec, &log_path, &record_path)?;
            record.pid = Some(pid);
            record.pid_start = start;
        }
    }
    let bytes = serde_json::to_vec_pretty(&record).expect("a container record serialises");
    if let Err(e) = write_atomic(&containers_dir.join(format!("{id}.json")), &bytes) {
        // A process nobody knows about could never be stopped: stop it now.
        if let Some(pid) = record.pid {
            signal_group(pid, Signal::SIGKILL);
        }
        return Err(e);
    }
    Ok(out(0, format!("{id}\n"), ""))
}

/// Starts the Rancher server "container": `rmm emulator supervise`, which
/// runs `rmm emulator serve` for the machine under the container's restart
/// policy (see `supervisor`). It is a daemon of its own (own session,
/// stdin closed, output to the container's log, no other descriptor of
/// rmm's), with only the container's `-e` variables and the emulator knobs
/// in its environment. The password reaches it through the environment and
/// nowhere else. Returns the supervisor's pid: the container's.
fn spawn_emulator(host: &Host, spec: &RunSpec, log_path: &Path, record_path: &Path) -> io::Result<(i32, Option<u64>)> {
    let data_dir = host.dir.join("rancher");
    fs::create_dir_all(&data_dir)?;
    let log = super::new_private_file(log_path)?;
    let mut cmd = Command::new(&host.rmm_exe);
    cmd.arg("emulator")
        .arg("supervise")
        .arg("--container")
        .arg(record_path)
        .arg("--restart")
        .arg(spec.restart.as_string())
        .arg("--")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(format!("{}:{HTTPS_PORT}", host.ip))
        // the emulated line follows the image tag (rancher/rancher:v2.15.1
        // → 2.15); an untagged image gets the emulator's default
        .args(
            crate::emulator::Line::from_image(&spec.image)
                .map(|l| vec!["--rancher-version".to_string(), format!("2.{}", l.minor)])
                .unwrap_or_default(),
        )
        .current_dir(&host.dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(host.emulator_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // It makes itself a daemon first thing (own session, other descriptors
    // closed: std opens ours CLOEXEC, but a caller's may not be).
    let mut child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    // Reap it if it ends while we run (a zombie would look alive to
    // kill(pid, 0)); if rmm ends first, init adopts and reaps it.
    std::thread::Builder::new().name(format!("reap-{pid}")).spawn(move || {
        let _ = child.wait();
    })?;
    tracing::info!(machine = %host.name, pid, listen = %format!("{}:{HTTPS_PORT}", host.ip), "started the Rancher emulator");
    Ok((pid, proc_start(pid)))
}

// ---------------------------------------------------------------- docker ps

fn ps(host: &Host, args: &[String]) -> ExecOutput {
    let (mut quiet, mut all, mut no_trunc) = (false, false, false);
    let mut format: Option<String> = None;
    let mut filters: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        match arg {
            "-q" | "--quiet" => quiet = true,
            "-a" | "--all" => all = true,
            "--no-trunc" => no_trunc = true,
            "-f" | "--filter" => match args.get(i) {
                Some(v) => {
                    filters.push(v.clone());
                    i += 1;
                }
                None => return out(125, "", format!("flag needs an argument: {arg}\n")),
            },
            "--format" => match args.get(i) {
                Some(v) => {
                    format = Some(v.clone());
                    i += 1;
                }
                None => return out(125, "", "flag needs an argument: --format\n"),
            },
            _ if arg.starts_with("--format=") => format = Some(arg["--format=".len()..].to_string()),
            _ if arg.starts_with("--filter=") => filters.push(arg["--filter=".len()..].to_string()),
            _ if arg.starts_with("-f") && arg.len() > 2 => filters.push(arg[2..].trim_start_matches('=').to_string()),
            _ if arg.starts_with('-') && !arg.starts_with("--") && arg[1..].chars().all(|c| c == 'q' || c == 'a') => {
                quiet |= arg.contains('q');
                all |= arg.contains('a');
            }
            _ => return out(125, "", format!("unknown flag: {}\nSee 'docker ps --help'.\n", showable(arg))),
        }
    }
    let mut names = Vec::new();
    let mut ids = Vec::new();
    let mut ancestors = Vec::new();
    for f in &filters {
        match f.split_once('=') {
            Some(("name", v)) => names.push(v.to_string()),
            Some(("id", v)) => ids.push(v.to_string()),
            Some(("ancestor", v)) => ancestors.push(v.to_string()),
            _ => return out(1, "", format!("Error response from daemon: invalid filter '{}'\n", showable(f))),
        }
    }
    let mut containers = match load_containers(&host.dir) {
        Ok(cs) => cs,
        Err(e) => return out(1, "", format!("Error response from daemon: {e}\n")),
    };
    containers.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
    let containers_dir = host.dir.join("containers");
    let shown: Vec<(&Container, ContainerState)> = containers
        .iter()
        .map(|c| (c, c.state(&containers_dir)))
        .filter(|(_, state)| all || *state != ContainerState::Exited)
        .filter(|(c, _)| names.is_empty() || names.iter().any(|n| name_filter_matches(n, &c.name)))
        .filter(|(c, _)| ids.is_empty() || ids.iter().any(|p| c.id.starts_with(p.as_str())))
        .filter(|(c, _)| ancestors.is_empty() || ancestors.iter().any(|a| ancestor_matches(a, &c.image)))
        .collect();
    let id_of = |c: &Container| if no_trunc { c.id.clone() } else { c.id[..12].to_string() };
    let status_of = |c: &Container, state: ContainerState| match state {
        ContainerState::Running => "Up".to_string(),
        ContainerState::Restarting => format!("Restarting ({})", c.exit_code.unwrap_or(1)),
        ContainerState::Exited => format!("Exited ({})", c.exit_code.unwrap_or(255)),
    };
    let mut stdout = String::new();
    if !quiet && format.is_none() {
        stdout.push_str("CONTAINER ID   IMAGE   STATUS   NAMES\n");
    }
    for (c, state) in shown {
        if quiet {
            stdout.push_str(&id_of(c));
        } else if let Some(template) = &format {
            // Go templates, the fields people use.
            let line = template
                .replace("{{.ID}}", &id_of(c))
                .replace("{{.Names}}", &c.name)
                .replace("{{.Image}}", &c.image)
                .replace("{{.State}}", state.as_str())
                .replace("{{.Status}}", &status_of(c, state));
            stdout.push_str(&line);
        } else {
            stdout.push_str(&format!("{}   {}   {}   {}", id_of(c), c.image, status_of(c, state), c.name));
        }
        stdout.push('\n');
    }
    out(0, stdout, "")
}

// ---------------------------------------------------------------- docker stop, rm

/// The containers named (by name or id prefix) on the command line, or
/// docker's error for the first one that does not exist.
fn find_named<'a>(containers: &'a [Container], wanted: &str) -> Option<&'a Container> {
    let wanted = wanted.trim_start_matches('/');
    containers
        .iter()
        .filter(|c| c.name == wanted || (wanted.len() >= 3 && c.id.starts_with(wanted)))
        .max_by_key(|c| c.created_ms)
}

/// Waits until the process `pid` has ended, up to `wait`.
async fn wait_gone(pid: i32, start: Option<u64>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while process_alive(pid, start) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// `docker stop NAME…`: SIGTERM to the container (its supervisor stops the
/// emulator, waits up to 10 s, then kills it, and records the exit); the
/// restart policy does not bring it back.
async fn stop(host: &Host, args: &[String]) -> ExecOutput {
    let names = match named_args(args, "stop") {
        Ok(names) => names,
        Err(usage) => return usage,
    };
    let (mut stdout, mut stderr, mut status) = (String::new(), String::new(), 0);
    for name in names {
        let c = match lookup_named(host, name) {
            Ok(Some(c)) => c,
            Ok(None) => {
                stderr.push_str(&format!("Error response from daemon: No such container: {}\n", showable(name)));
                status = 1;
                continue;
            }
            Err(daemon) => return daemon,
        };
        match c.pid {
            Some(pid) if process_alive(pid, c.pid_start) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if !wait_gone(pid, c.pid_start, supervisor::STOP_GRACE + Duration::from_secs(2)).await {
                    signal_group(pid, Signal::SIGKILL);
                    wait_gone(pid, c.pid_start, Duration::from_secs(2)).await;
                    set_exit(&host.dir, &c.id, 137);
                }
            }
            _ if c.exit_code.is_none() => set_exit(&host.dir, &c.id, if c.pid.is_some() { 255 } else { 0 }),
            _ => {}
        }
        stdout.push_str(name);
        stdout.push('\n');
    }
    out(status, stdout, stderr)
}

/// The container names of `docker VERB [flags] NAME…`, or docker's usage
/// error when there is none.
fn named_args<'a>(args: &'a [String], verb: &str) -> Result<Vec<&'a String>, ExecOutput> {
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if names.is_empty() {
        return Err(out(1, "", format!("\"docker {verb}\" requires at least 1 argument.\n")));
    }
    Ok(names)
}

/// The container called (or with the id prefix) `name`, read afresh; the
/// daemon's error when the records cannot be read.
fn lookup_named(host: &Host, name: &str) -> Result<Option<Container>, ExecOutput> {
    let containers = load_containers(&host.dir).map_err(|e| out(1, "", format!("Error response from daemon: {e}\n")))?;
    Ok(find_named(&containers, name).cloned())
}

fn set_exit(machine_dir: &Path, id: &str, code: i32) {
    let path = machine_dir.join("containers").join(format!("{id}.json"));
    let Ok(Ok(mut c)) = fs::read(&path).map(|b| serde_json::from_slice::<Container>(&b)) else { return };
    if c.exit_code.is_none() {
        c.exit_code = Some(code);
        let _ = write_atomic(&path, &serde_json::to_vec_pretty(&c).expect("a container record serialises"));
    }
}

/// `docker rm [-f] NAME…`: a running container only with `-f` (killed with
/// SIGKILL, as docker does); its record, log and child file go.
async fn rm(host: &Host, args: &[String]) -> ExecOutput {
    let force = args.iter().any(|a| a == "-f" || a == "--force");
    let names = match named_args(args, "rm") {
        Ok(names) => names,
        Err(usage) => return usage,
    };
    let (mut stdout, mut stderr, mut status) = (String::new(), String::new(), 0);
    let containers_dir = host.dir.join("containers");
    for name in names {
        let c = match lookup_named(host, name) {
            Ok(Some(c)) => c,
            Ok(None) => {
                stderr.push_str(&format!("Error response from daemon: No such container: {}\n", showable(name)));
                status = 1;
                continue;
            }
            Err(daemon) => return daemon,
        };
        if c.is_running() {
            if !force {
                stderr.push_str(&format!(
                    "Error response from daemon: cannot remove container \"/{}\": container is running: stop the container before removing or force remove\n",
                    c.name
                ));
                status = 1;
                continue;
            }
            if let Some(pid) = c.pid {
                signal_group(pid, Signal::SIGKILL);
                wait_gone(pid, c.pid_start, Duration::from_secs(5)).await;
            }
        }
        let _lock = match lock_machine(&host.dir) {
            Ok(l) => l,
            Err(e) => return out(1, "", format!("Error response from daemon: {e}\n")),
        };
        for ext in ["json", "child", "log"] {
            let _ = fs::remove_file(containers_dir.join(format!("{}.{ext}", c.id)));
        }
        stdout.push_str(name);
        stdout.push('\n');
    }
    out(status, stdout, stderr)
}

/// docker's `ancestor=` filter: the image, with or without its tag.
fn ancestor_matches(filter: &str, image: &str) -> bool {
    image == filter || image.split_once(':').is_some_and(|(repo, _)| repo == filter)
}

/// docker's `name=` filter is an unanchored regular expression; this
/// supports the forms people use: a literal, `^…`, `…$`, `^/…$`.
pub fn name_filter_matches(pattern: &str, name: &str) -> bool {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, pattern),
    };
    let (end, lit) = match rest.strip_suffix('$') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let lit = if start { lit.strip_prefix('/').unwrap_or(lit) } else { lit };
    match (start, end) {
        (true, true) => name == lit,
        (true, false) => name.starts_with(lit),
        (false, true) => name.ends_with(lit),
        (false, false) => name.contains(lit.trim_start_matches('/')),
    }
}

// ---------------------------------------------------------------- containers

/// `containers/<id>.json`. Holds no secret: no env values, no arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub kind: Kind,
    /// The process (the emulator); agents have none.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Its start time (clock ticks since boot, `/proc/<pid>/stat` field
    /// 22): a recycled pid has another.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Set when the container exited without a process to watch.
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub created: String,
    pub created_ms: i64,
}

/// `docker ps`'s `{{.State}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// Its process exited and the restart policy will start it again.
    Restarting,
    Exited,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Running => "running",
            ContainerState::Restarting => "restarting",
            ContainerState::Exited => "exited",
        }
    }
}

impl Container {
    /// Running, restarting (its supervisor waits to start the emulator
    /// again) or exited.
    pub fn state(&self, containers_dir: &Path) -> ContainerState {
        if !self.is_running() {
            return ContainerState::Exited;
        }
        match (self.kind, self.pid) {
            // No child file yet: the supervisor is starting it.
            (Kind::Server, Some(_)) => match supervisor::read_child(&containers_dir.join(format!("{}.json", self.id))) {
                Some(child) if !process_alive(child.pid, child.start) => ContainerState::Restarting,
                _ => ContainerState::Running,
            },
            _ => ContainerState::Running,
        }
    }

    pub fn is_running(&self) -> bool {
        if self.exit_code.is_some() {
            return false;
        }
        match (self.kind, self.pid) {
            (_, Some(pid)) => process_alive(pid, self.pid_start),
            (Kind::Agent, None) => true,
            (Kind::Server, None) => false,
        }
    }
}

pub fn load_containers(machine_dir: &Path) -> io::Result<Vec<Container>> {
    let dir = machine_dir.join("containers");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut containers = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let is_record = path.extension().is_some_and(|x| x == "json")
            && !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if !is_record {
            continue;
        }
        match fs::read(&path).map(|b| serde_json::from_slice::<Container>(&b)) {
            Ok(Ok(c)) => containers.push(c),
            Ok(Err(e)) => tracing::warn!(file = %path.display(), error = %e, "skipping a corrupt container record"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(containers)
}

/// Pids of live processes whose command line mentions `dir` (Linux /proc).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.to_string_lossy());
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Stops every process started on the machine: SIGTERM to each process
/// group, up to 5 s for them to end, then SIGKILL.
pub async fn stop_all(machine_dir: &Path) {
    let containers = load_containers(machine_dir).unwrap_or_default();
    let mut procs: Vec<(i32, Option<u64>)> = containers
        .iter()
        .filter_map(|c| c.pid.map(|p| (p, c.pid_start)))
        .filter(|&(pid, start)| process_alive(pid, start))
        .collect();
    // A process started on the machine whose record was never written (rmm
    // killed between the spawn and the record) is still the machine's: its
    // command line names the machine's directory, as a VM's processes die
    // with the VM.
    for pid in processes_naming(machine_dir) {
        if !procs.iter().any(|&(p, _)| p == pid) {
            procs.push((pid, proc_stat(pid).map(|(_, start)| start)));
        }
    }
    if procs.is_empty() {
        return;
    }
    for &(pid, _) in &procs {
        signal_group(pid, Signal::SIGTERM);
    }
    for (signal, wait) in [(Some(Signal::SIGKILL), Duration::from_secs(5)), (None, Duration::from_secs(2))] {
        let deadline = Instant::now() + wait;
        while procs.iter().any(|&(p, s)| process_alive(p, s)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let left: Vec<_> = procs.iter().filter(|&&(p, s)| process_alive(p, s)).collect();
        if left.is_empty() {
            return;
        }
        match signal {
            Some(sig) => left.iter().for_each(|&&(pid, _)| signal_group(pid, sig)),
            None => tracing::warn!(machine = %machine_dir.display(), "processes still alive after SIGKILL"),
        }
    }
}

fn signal_group(pid: i32, signal: Signal) {
    // The emulator leads its own group (process_group(0)): signal the group,
    // or the process alone if the group is gone.
    if killpg(Pid::from_raw(pid), signal).is_err() {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Is `pid` alive and still the process we started? A zombie is not alive;
/// a pid with another start time is somebody else's.
pub fn process_alive(pid: i32, start: Option<u64>) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match proc_stat(pid) {
        Some((state, started)) => !matches!(state, 'Z' | 'X') && start.is_none_or(|s| s == started),
        // No /proc/<pid> although kill says it exists: it just ended, or
        // there is no procfs (then trust kill).
        None => !Path::new("/proc/self/stat").exists(),
    }
}

/// A process's start time (clock ticks since boot), to tell it from a
/// later process with the same pid.
pub fn proc_start(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// (state, start time) from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes).map(|_| format!("{:02x}", rng.gen::<u8>())).collect()
}

/// `no such file or directory`, as Go prints it.
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
