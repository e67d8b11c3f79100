//! The RKE1 `rancher-agent` container, in the local world: what its
//! `run.sh` and first registration do (`reference/rancher-api.md` §4.4, §5).
//!
//! 1. `GET <server>/ping` and `GET <server>/v3/settings/cacerts` without
//!    verifying the certificate (`curl --insecure`);
//! 2. check `sha256(value + "\n")` against `--ca-checksum`;
//! 3. `POST <server>/v3/connect/register`, now trusting only that CA, with
//!    `X-API-Tunnel-Token: <token>` and `X-API-Tunnel-Params:
//!    base64(JSON)`.
//!
//! The real agent retries in the background after `docker run -d` has
//! returned; here the work is done before `docker run` returns, and a
//! failure is its exit status (1) with the reason on stderr.

use base64::Engine;
use rmm_actors::ports::{ca_checksum, CaTrust, RancherApi, Secret};
use serde_json::json;

use super::docker::Host;
use crate::rancher::{HttpRancher, DEFAULT_TIMEOUT};

/// The agent's flags, parsed as `run.sh` does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentFlags {
    pub server: Option<String>,
    pub token: Option<Secret>,
    pub ca_checksum: Option<String>,
    pub etcd: bool,
    pub controlplane: bool,
    pub worker: bool,
    pub node_name: Option<String>,
    pub address: Option<String>,
    pub internal_address: Option<String>,
    pub labels: Vec<String>,
    pub taints: Vec<String>,
    pub no_register: bool,
    pub only_write_certs: bool,
}

impl AgentFlags {
    /// `["etcd", "controlplane", "worker"]`, those given, in that order.
    pub fn roles(&self) -> Vec<&'static str> {
        [(self.etcd, "etcd"), (self.controlplane, "controlplane"), (self.worker, "worker")]
            .into_iter()
            .filter_map(|(on, r)| on.then_some(r))
            .collect()
    }
}

/// `run.sh`'s loop: short and long forms, a value in the next word, and
/// parsing stops at the first argument it does not know. `-a` is listed
/// twice there and `--all-roles` comes first, so `-a` means all roles and
/// `--address` only works spelled out.
pub fn parse(args: &[String]) -> AgentFlags {
    let mut f = AgentFlags::default();
    let mut i = 0;
    let value = |i: &mut usize| -> Option<String> {
        let v = args.get(*i).cloned();
        *i += 1;
        v.filter(|v| !v.is_empty())
    };
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        match arg {
            "-d" | "--debug" => {}
            "-s" | "--server" => f.server = value(&mut i),
            "-t" | "--token" => f.token = value(&mut i).map(Secret::new),
            "-c" | "--ca-checksum" => f.ca_checksum = value(&mut i),
            "-a" | "--all-roles" => {
                f.etcd = true;
                f.controlplane = true;
                f.worker = true;
            }
            "-e" | "--etcd" => f.etcd = true,
            "-w" | "--worker" => f.worker = true,
            "-p" | "--controlplane" => f.controlplane = true,
            "-r" | "--no-register" => f.no_register = true,
            "-n" | "--node-name" => f.node_name = value(&mut i),
            "--address" => f.address = value(&mut i),
            "-i" | "--internal-address" => f.internal_address = value(&mut i),
            "-l" | "--label" => f.labels.extend(value(&mut i)),
            "-o" | "--only-write-certs" => f.only_write_certs = true,
            "--taints" => f.taints.extend(value(&mut i)),
            _ => break,
        }
    }
    f
}

/// An address flag: a literal IP. (The real agent also takes an interface
/// name or a cloud keyword; the local world has neither.)
fn address(flag: &str, given: Option<&str>, host: &Host) -> Result<String, String> {
    match given {
        None => Ok(String::new()),
        Some(a) if a.parse::<std::net::IpAddr>().is_ok() => Ok(a.to_string()),
        Some(a) => Err(format!(
            "ERROR: {flag} {a} is not an IP address, and {} has no interface or metadata service of that name",
            host.name
        )),
    }
}

/// The JSON the agent sends in `X-API-Tunnel-Params`.
pub fn tunnel_params(flags: &AgentFlags, address: &str, internal_address: &str, hostname: &str) -> serde_json::Value {
    json!({
        "customConfig": {
            "address": address,
            "internalAddress": internal_address,
            "roles": flags.roles(),
        },
        "etcd": flags.etcd,
        "controlPlane": flags.controlplane,
        "worker": flags.worker,
        "requestedHostname": hostname,
    })
}

/// Does what the agent does; `Err` is the message for stderr (exit 1).
/// Nothing returned here contains the token.
pub async fn run(host: &Host, flags: &AgentFlags) -> Result<(), String> {
    let server = flags.server.as_deref().ok_or("ERROR: --server is a required option")?;
    let token = flags.token.as_ref().ok_or("ERROR: --token is a required option")?;
    // Without --address the agent uses the address of its default route:
    // the machine's own.
    let addr = address("--address", flags.address.as_deref(), host)?;
    let addr = if addr.is_empty() { host.ip.to_string() } else { addr };
    let internal = address("--internal-address", flags.internal_address.as_deref(), host)?;
    let hostname = flags.node_name.clone().unwrap_or_else(|| host.name.clone());

    let open = HttpRancher::with_timeout(server, CaTrust::Unverified, DEFAULT_TIMEOUT)
        .map_err(|e| format!("ERROR: --server {server}: {e}"))?;
    open.ping().await.map_err(|e| format!("ERROR: {server}/ping is not accessible ({e})"))?;
    let cacerts = open.cacerts().await.map_err(|e| {
        format!("ERROR: Value from {server}/v3/settings/cacerts does not look like an x509 certificate ({e})")
    })?;
    let Some(given) = flags.ca_checksum.as_deref() else {
        return Err(format!(
            "ERROR: {server}: x509: certificate signed by unknown authority (no --ca-checksum given to trust the server's CA)"
        ));
    };
    let actual = ca_checksum(&cacerts);
    if actual != given.to_ascii_lowercase() {
        return Err(format!(
            "ERROR: Configured cacerts checksum ({actual}) does not match given --ca-checksum ({given})"
        ));
    }
    if flags.no_register || flags.only_write_certs {
        return Ok(());
    }
    let pinned = HttpRancher::with_timeout(server, CaTrust::Pinned(cacerts), DEFAULT_TIMEOUT).map_err(|e| {
        format!("ERROR: Value from {server}/v3/settings/cacerts does not look like an x509 certificate ({e})")
    })?;
    let params = tunnel_params(flags, &addr, &internal, &hostname);
    let params = base64::engine::general_purpose::STANDARD.encode(params.to_string());
    pinned
        .register_node(token, &params)
        .await
        .map_err(|e| format!("ERROR: could not register node {hostname} with {server}: {e}"))?;
    tracing::info!(machine = %host.name, node = %hostname, roles = ?flags.roles(), "agent registered");
    Ok(())
}

// ---------------------------------------------------------------- system-agent

/// Where the local machine keeps what the system-agent installer writes
/// (the real one: `/etc/rancher/agent`, the unit file and its journal).
fn agent_dir(host: &Host) -> std::path::PathBuf {
    host.dir.join("rancher-system-agent")
}

fn exec_out(status: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> rmm_actors::ports::ExecOutput {
    rmm_actors::ports::ExecOutput { status, stdout: stdout.into(), stderr: stderr.into() }
}

/// Is this command line for [`shell`]: the installer pipeline, or a look
/// at the agent's service?
pub fn is_system_agent_command(command: &str) -> bool {
    let first = command.split_whitespace().find(|w| *w != "sudo").unwrap_or("");
    command.contains("system-agent-install.sh")
        || first == "systemctl"
        || first == "journalctl"
        || (first == "test" && command.contains(AGENT_UNIT))
}

/// The unit file the installer writes (rancher-current.md §2.7). On the
/// local machine it exists once the installer got as far as creating it:
/// when the service has a state.
const AGENT_UNIT: &str = "/etc/systemd/system/rancher-system-agent.service";

/// `curl … /system-agent-install.sh | sudo sh -s - …`, `systemctl status
/// rancher-system-agent`, `journalctl -u rancher-system-agent`, `test -f
/// /etc/systemd/system/rancher-system-agent.service [&& echo WORD]`.
pub async fn shell(host: &Host, command: &str) -> rmm_actors::ports::ExecOutput {
    if command.contains("system-agent-install.sh") {
        return install(host, command).await;
    }
    start_service(host).await;
    if command.split_whitespace().find(|w| *w != "sudo") == Some("test") {
        return test_unit(host, command);
    }
    let words = match shell_words::split(command) {
        Ok(w) => w,
        Err(_) => return exec_out(2, "", "bash: syntax error: unterminated quoted string\n"),
    };
    let words: Vec<&str> = words.iter().map(String::as_str).filter(|w| *w != "sudo").collect();
    let unit_named = words.iter().any(|w| w.trim_end_matches(".service") == "rancher-system-agent");
    let state = std::fs::read_to_string(agent_dir(host).join("state")).ok();
    let log = std::fs::read_to_string(agent_dir(host).join("journal")).unwrap_or_default();
    match words.first().copied() {
        // systemd shows a unit it does not know as not-found, and exits 0
        Some("systemctl") if unit_named && state.is_none() && words.contains(&"show") => {
            exec_out(0, "NRestarts=0\nLoadState=not-found\nActiveState=inactive\n", "")
        }
        Some("systemctl") if unit_named => match state.as_deref().map(str::trim) {
            None => exec_out(4, "", "Unit rancher-system-agent.service could not be found.\n"),
            Some(s) if words.contains(&"is-active") => exec_out(if s == "active" { 0 } else { 3 }, format!("{s}\n"), ""),
            // `systemctl show -p LoadState -p ActiveState -p NRestarts`: a
            // service here never restarts (a failed one stays `failed`)
            Some(s) if words.contains(&"show") => {
                exec_out(0, format!("NRestarts=0\nLoadState=loaded\nActiveState={s}\n"), "")
            }
            Some(s) => {
                let active = if s == "active" { "active (running)" } else { "failed (Result: exit-code)" };
                let tail: String = log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().map(|l| format!("{l}\n")).collect();
                exec_out(
                    if s == "active" { 0 } else { 3 },
                    format!("● rancher-system-agent.service - Rancher System Agent\n     Loaded: loaded (/etc/systemd/system/rancher-system-agent.service; enabled)\n     Active: {active}\n\n{tail}"),
                    "",
                )
            }
        },
        Some("journalctl") if unit_named => {
            let n = words
                .iter()
                .position(|w| *w == "-n" || *w == "--lines")
                .and_then(|i| words.get(i + 1))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            if log.is_empty() {
                return exec_out(0, "-- No entries --\n", "");
            }
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(n)..];
            exec_out(0, tail.iter().map(|l| format!("{l}\n")).collect::<String>(), "")
        }
        Some(other) => exec_out(127, "", format!("bash: {other}: command not found in the local world\n")),
        None => exec_out(0, "", ""),
    }
}

/// `test -f <unit> [&& echo WORD]`: whether the installer wrote the unit.
fn test_unit(host: &Host, command: &str) -> rmm_actors::ports::ExecOutput {
    let Ok(words) = shell_words::split(command) else {
        return exec_out(2, "", "bash: syntax error: unterminated quoted string\n");
    };
    let words: Vec<&str> = words.iter().map(String::as_str).filter(|w| *w != "sudo").collect();
    let echo = match words.as_slice() {
        ["test", "-f", AGENT_UNIT] => None,
        ["test", "-f", AGENT_UNIT, "&&", "echo", word] => Some(*word),
        _ => return exec_out(127, "", "bash: only `test -f <the agent's unit> [&& echo WORD]` is known in the local world\n"),
    };
    if !agent_dir(host).join("state").exists() {
        return exec_out(1, "", "");
    }
    exec_out(0, echo.map(|w| format!("{w}\n")).unwrap_or_default(), "")
}

fn journal(host: &Host, line: &str) {
    use std::io::Write;
    let dir = agent_dir(host);
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("journal")) {
        let _ = writeln!(f, "{} {} rancher-system-agent[1]: {line}", rmm_events::rfc3339_ms(rmm_events::now_ms()), host.name);
    }
}

fn set_state(host: &Host, state: &str) {
    let dir = agent_dir(host);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("state"), format!("{state}\n"));
}

/// The agent's id (`X-Cattle-Id`): made once per machine and kept.
fn cattle_id(host: &Host) -> String {
    let path = agent_dir(host).join("id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return id.trim().to_string();
        }
    }
    let id = super::docker::random_hex(32);
    let _ = std::fs::create_dir_all(agent_dir(host));
    let _ = std::fs::write(&path, &id);
    id
}

/// Is `node` named by `RMM_LOCAL_AGENT_FAIL` (`NAME[,NAME…]` or `*`): its
/// agent service starts and dies before it checks in.
fn agent_fails(node: &str, machine: &str) -> bool {
    std::env::var("RMM_LOCAL_AGENT_FAIL")
        .map(|v| v.split(',').map(str::trim).any(|n| n == "*" || n == node || n == machine))
        .unwrap_or(false)
}

fn http(trust: Option<&str>) -> Result<reqwest::Client, String> {
    let b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).tls_built_in_root_certs(false);
    let b = match trust {
        None => b.danger_accept_invalid_certs(true),
        Some(pem) => b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?),
    };
    b.build().map_err(|e| e.to_string())
}

/// curl's words for a failed transfer.
fn curl_error(url: &str, e: &reqwest::Error) -> String {
    let host = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or("");
    let text = format!("{e:?}");
    if text.contains("certificate") || text.contains("Certificate") || text.contains("UnknownIssuer") {
        "curl: (60) SSL certificate problem: unable to get local issuer certificate\nMore details here: https://curl.se/docs/sslcerts.html\n".to_string()
    } else if e.is_timeout() {
        format!("curl: (28) Failed to connect to {host}: Connection timed out\n")
    } else {
        format!("curl: (7) Failed to connect to {host}: Connection refused\n")
    }
}

/// What `curl -fL <server>/system-agent-install.sh | sudo sh -s - ARGS`
/// does on a node (rancher-current.md §2.7):
///
/// 1. curl downloads the script (`--insecure` skips verification; without
///    it the node must trust Rancher's CA, which a fresh local machine does
///    not). If curl fails, `sh` runs an empty script and the pipeline
///    **exits 0**: the exit status proves nothing.
/// 2. the installer downloads `<server>/cacerts` and checks its sha256
///    against `--ca-checksum` (or the served script's `CATTLE_CA_CHECKSUM`);
/// 3. `GET <server>/v3/connect/agent` with the bearer token and
///    `X-Cattle-Id`, `X-Cattle-Role-Etcd`, `X-Cattle-Role-Control-Plane`,
///    `X-Cattle-Role-Worker`, `X-Cattle-Node-Name`, `X-Cattle-Address`,
///    `X-Cattle-Internal-Address`, `X-Cattle-Labels`: this registers the
///    machine;
/// 4. installs and starts `rancher-system-agent.service`, which checks in
///    by reading its plan secret with the connection info's credential.
///
/// `RMM_LOCAL_AGENT_FAIL` makes step 4's service die: the installer still
/// exits 0. Nothing printed contains the token.
pub async fn install(host: &Host, command: &str) -> rmm_actors::ports::ExecOutput {
    let Some((left, right)) = command.split_once('|') else {
        return exec_out(2, "", "bash: the installer is run as `curl … | sh -s - …`\n");
    };
    let (Ok(lw), Ok(rw)) = (shell_words::split(left), shell_words::split(right)) else {
        return exec_out(2, "", "bash: syntax error: unterminated quoted string\n");
    };
    let is_env = |w: &str| !w.starts_with('-') && w.contains('=');
    let mut lw = lw.iter().map(String::as_str).skip_while(|w| is_env(w));
    if lw.next() != Some("curl") {
        return exec_out(127, "", "bash: the installer pipeline must start with curl\n");
    }
    let mut insecure = false;
    let mut url = None;
    let lw: Vec<&str> = lw.collect();
    let mut i = 0;
    while i < lw.len() {
        match lw[i] {
            "--insecure" | "-k" => insecure = true,
            "--retry" | "--retry-delay" | "--retry-max-time" | "--connect-timeout" | "-m" | "--max-time" => i += 1,
            w if w.starts_with("-") && !w.starts_with("--") && w.contains('k') => insecure = true,
            w if w.starts_with("http://") || w.starts_with("https://") => url = Some(w.to_string()),
            _ => {}
        }
        i += 1;
    }
    let Some(url) = url else { return exec_out(2, "", "curl: no URL specified!\n") };
    let rw: Vec<String> =
        rw.into_iter().skip_while(|w| w == "sudo" || is_env(w)).collect();
    if rw.first().map(String::as_str) != Some("sh") {
        return exec_out(127, "", "bash: the installer is run by sh\n");
    }
    let args: Vec<String> = rw.into_iter().skip(1).skip_while(|w| w == "-s" || w == "-").collect();

    // 1. curl (only the pipeline's last command sets its status)
    let script = match http(if insecure { None } else { Some("") }) {
        Ok(c) => match c.get(&url).send().await.and_then(|r| r.error_for_status()) {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => return exec_out(0, "", curl_error(&url, &e)),
        },
        // no trust at all: what a fresh node's curl has for a private CA
        Err(_) => return exec_out(0, "", "curl: (60) SSL certificate problem: unable to get local issuer certificate\n"),
    };
    let header = |name: &str| {
        script.lines().find_map(|l| l.strip_prefix(&format!("{name}=")).map(|v| v.trim_matches('"').to_string()))
    };
    register(host, &parse(&args), header).await
}

/// Steps 2–4 of [`install`]: what the installer does once it runs, with
/// the served script's header values from `header` (`CATTLE_SERVER`,
/// `CATTLE_CA_CHECKSUM`, `STRICT_VERIFY`).
pub async fn register(host: &Host, flags: &AgentFlags, header: impl Fn(&str) -> Option<String>) -> rmm_actors::ports::ExecOutput {
    let mut stdout = String::new();
    let mut say = |l: &str| {
        stdout.push_str(l);
        stdout.push('\n');
    };
    let server = flags.server.clone().or_else(|| header("CATTLE_SERVER")).unwrap_or_default();
    let Some(token) = flags.token.clone() else {
        return exec_out(1, stdout, "[FATAL]  Token is required\n");
    };
    if server.is_empty() {
        return exec_out(1, stdout, "[FATAL]  Rancher server URL is required\n");
    }
    for l in &flags.labels {
        say(&format!("[INFO]  Label: {l}"));
    }
    for r in flags.roles() {
        say(&format!("[INFO]  Role requested: {r}"));
    }
    say("[INFO]  Using default agent configuration directory /etc/rancher/agent");
    say("[INFO]  Using default agent var directory /var/lib/rancher/agent");
    // 2. the CA
    let open = match http(None) {
        Ok(c) => c,
        Err(e) => return exec_out(1, stdout, format!("[FATAL]  {e}\n")),
    };
    let cacerts = match open.get(format!("{server}/cacerts")).send().await.and_then(|r| r.error_for_status()) {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return exec_out(1, stdout, format!("[ERROR]  000 received while downloading the CA certificate ({e})\n")),
    };
    say("[INFO]  Successfully downloaded CA certificate");
    let given = flags.ca_checksum.clone().or_else(|| header("CATTLE_CA_CHECKSUM")).filter(|s| !s.is_empty());
    let actual = ca_checksum(&cacerts);
    match &given {
        Some(g) if !g.eq_ignore_ascii_case(&actual) => {
            return exec_out(
                1,
                stdout,
                format!("[ERROR]  Configured cacerts checksum ({actual}) does not match given --ca-checksum ({g})\n[ERROR]  Please check if the correct certificate is configured at {server}/cacerts\n"),
            )
        }
        Some(_) => say(&format!("[INFO]  Value from {server}/cacerts is an x509 certificate")),
        None if header("STRICT_VERIFY").as_deref() == Some("true") => {
            return exec_out(1, stdout, "[FATAL]  Aborting system-agent installation due to requested strict CA verification with no CA checksum provided\n")
        }
        None => {}
    }
    // 3. the connection information, which registers the machine
    let addr = match address("--address", flags.address.as_deref(), host) {
        Ok(a) if a.is_empty() => host.ip.to_string(),
        Ok(a) => a,
        Err(e) => return exec_out(1, stdout, format!("{e}\n")),
    };
    let internal = match address("--internal-address", flags.internal_address.as_deref(), host) {
        Ok(a) => a,
        Err(e) => return exec_out(1, stdout, format!("{e}\n")),
    };
    let node = flags.node_name.clone().unwrap_or_else(|| host.name.clone());
    let pinned = match http(Some(&cacerts)) {
        Ok(c) => c,
        Err(e) => return exec_out(1, stdout, format!("[FATAL]  {server}/cacerts is not an x509 certificate ({e})\n")),
    };
    let id = cattle_id(host);
    let b = |on: bool| if on { "true" } else { "false" };
    let resp = pinned
        .get(format!("{server}/v3/connect/agent"))
        .bearer_auth(token.expose())
        .header("X-Cattle-Id", &id)
        .header("X-Cattle-Role-Etcd", b(flags.etcd))
        .header("X-Cattle-Role-Control-Plane", b(flags.controlplane))
        .header("X-Cattle-Role-Worker", b(flags.worker))
        .header("X-Cattle-Node-Name", &node)
        .header("X-Cattle-Address", &addr)
        .header("X-Cattle-Internal-Address", &internal)
        .header("X-Cattle-Labels", flags.labels.join(","))
        .header("X-Cattle-Taints", flags.taints.join(","))
        .send()
        .await;
    let info: serde_json::Value = match resp {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(v) => v,
            Err(e) => return exec_out(1, stdout, format!("[FATAL]  Rancher connection information is not valid ({e})\n")),
        },
        Ok(r) => {
            return exec_out(1, stdout, format!("[FATAL]  {} received while downloading Rancher connection information\n", r.status().as_u16()))
        }
        Err(e) => return exec_out(1, stdout, format!("[FATAL]  000 received while downloading Rancher connection information ({e})\n")),
    };
    crash_point("RMM_LOCAL_CRASH_AFTER_REGISTER", &node);
    say("[INFO]  Successfully downloaded Rancher connection information");
    say("[INFO]  systemd: Creating service file");
    say("[INFO]  Creating environment file /etc/systemd/system/rancher-system-agent.env");
    say("[INFO]  Enabling rancher-system-agent.service");
    say("[INFO]  Starting/restarting rancher-system-agent.service");
    let _ = std::fs::remove_file(agent_dir(host).join("journal"));
    // what the installer leaves on the node for the service (the real one:
    // /var/lib/rancher/agent/rancher2_connection_info.json and the CA)
    let saved = json!({"connectionInfo": info, "ca": cacerts, "node": node});
    if let Err(e) = write_private(&agent_dir(host).join("connection-info.json"), saved.to_string().as_bytes()) {
        return exec_out(1, stdout, format!("[FATAL]  writing the connection information: {e}\n"));
    }
    set_state(host, "activating");
    crash_point("RMM_LOCAL_CRASH_BEFORE_CHECK_IN", &node);
    // 4. systemd starts the service, which checks in
    start_service(host).await;
    tracing::info!(machine = %host.name, node = %node, roles = ?flags.roles(), "system-agent registered");
    exec_out(0, stdout, "")
}

/// Crash drills of the local world (rmm killed while the installer runs
/// on node NAME): `RMM_LOCAL_CRASH_AFTER_REGISTER=NAME` aborts right after
/// Rancher answered the registration call, before the unit exists;
/// `RMM_LOCAL_CRASH_BEFORE_CHECK_IN=NAME` right after the unit exists,
/// before its service checked in.
fn crash_point(var: &str, node: &str) {
    if std::env::var(var).is_ok_and(|n| n == node) {
        crate::errln!("rmm: crash point {var}={node} reached; aborting");
        std::process::abort();
    }
}

/// `rancher-system-agent emulator system-agent -- ARGS`: what the served
/// install script runs on a node that is a real (container) host, after it
/// downloaded this binary as the agent (`emulator::v1::install_script`).
/// It registers as [`register`] does, with the header values from the
/// environment the script exported, keeps its files under
/// `/var/lib/rancher/agent`, and writes the unit file the real installer
/// writes (rmm looks for it before running the installer again). The node
/// has no systemd: the service's first check-in runs here, before it
/// returns. Prints the installer's lines; returns its exit status.
pub async fn system_agent_main(args: &[String]) -> i32 {
    use std::io::Write;
    let mut flags = parse(args);
    // The real installer takes the token from `CATTLE_TOKEN` as well as
    // from `--token` (the ssh driver passes it so: never in an argv).
    if flags.token.is_none() {
        flags.token = std::env::var("CATTLE_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret::new);
    }
    let server = flags.server.clone().or_else(|| std::env::var("CATTLE_SERVER").ok()).unwrap_or_default();
    let name = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node".into());
    let ip = flags
        .address
        .as_deref()
        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .or_else(|| own_address(&server))
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    let var = std::env::var("CATTLE_AGENT_VAR_DIR").unwrap_or_else(|_| "/var/lib/rancher/agent".into());
    let host = Host { name, ip, dir: var.into(), rmm_exe: std::env::current_exe().unwrap_or_default(), emulator_env: vec![] };
    let out = register(&host, &flags, |name| std::env::var(name).ok()).await;
    if out.status == 0 {
        let unit = std::path::Path::new(SYSTEMD_UNIT);
        let written = unit.parent().map(std::fs::create_dir_all).unwrap_or(Ok(())).and_then(|()| {
            std::fs::write(unit, format!("[Unit]\nDescription=Rancher System Agent (rmm emulator)\n[Service]\nEnvironment=CATTLE_AGENT_VAR_DIR={}\nExecStart=/usr/local/bin/rancher-system-agent emulator system-agent-service\nRestart=always\nRestartSec=1\n[Install]\nWantedBy=multi-user.target\n", host.dir.display()))
        });
        if let Err(e) = written {
            let _ = writeln!(crate::cli::stderr(), "[FATAL]  writing {SYSTEMD_UNIT}: {e}");
            return 1;
        }
    }
    let _ = crate::cli::stdout().write_all(out.stdout.as_bytes());
    let _ = crate::cli::stderr().write_all(out.stderr.as_bytes());
    out.status
}

/// `rancher-system-agent emulator system-agent-service`: the unit's
/// service, as an init (systemd on a real node; the test node image's init
/// here) runs it: with the connection information the installer saved, it
/// checks in every second for as long as it runs (the real agent holds a
/// watch of its plan secret, reference/rancher-current.md §2.7), so
/// Rancher's side (the emulator) sees it go when the node stops. Tries
/// again every second while the server does not answer; never returns.
pub async fn system_agent_service() -> i32 {
    let var = std::env::var("CATTLE_AGENT_VAR_DIR").unwrap_or_else(|_| "/var/lib/rancher/agent".into());
    let saved_at = std::path::Path::new(&var).join("rancher-system-agent").join("connection-info.json");
    loop {
        if let Err(e) = watch_once(&saved_at).await {
            use std::io::Write as _;
            let _ = writeln!(crate::cli::stderr(), "[ERROR] watching the plan secret: {e}");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn watch_once(saved_at: &std::path::Path) -> Result<(), String> {
    let saved = std::fs::read_to_string(saved_at).map_err(|e| format!("{}: {e}", saved_at.display()))?;
    let saved: serde_json::Value = serde_json::from_str(&saved).map_err(|e| e.to_string())?;
    let info = &saved["connectionInfo"];
    let kubeconfig = info["kubeConfig"].as_str().unwrap_or("");
    let token = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap_or("").trim().to_string();
    let api = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or("").trim().to_string();
    let (ns, secret) = (info["namespace"].as_str().unwrap_or(""), info["secretName"].as_str().unwrap_or(""));
    let ca = saved["ca"].as_str().unwrap_or("");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| e.to_string())?)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    // A check-in every second, for as long as the service runs (the real
    // agent holds a watch of its plan secret; a poll stands for it here,
    // so that the server notices an agent that went away without relying
    // on a dead peer's connection being closed).
    let mut said = false;
    loop {
        client
            .get(format!("{api}/api/v1/namespaces/{ns}/secrets/{secret}?watch=true"))
            .bearer_auth(&token)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        if !said {
            use std::io::Write as _;
            let _ = writeln!(crate::cli::stdout(), "Starting remote watch of plans (secret {ns}/{secret})");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The unit file the real installer writes (§2.7).
const SYSTEMD_UNIT: &str = "/etc/systemd/system/rancher-system-agent.service";

/// This host's address on the route to `server` (`https://IP[:port]/…`):
/// what `--address` defaults to.
fn own_address(server: &str) -> Option<std::net::Ipv4Addr> {
    let hostport = server.split("://").nth(1)?.split('/').next()?;
    let target = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:443") };
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(target).ok()?;
    match sock.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// systemd starting `rancher-system-agent.service`: it reads its plan
/// secret with the connection info's credential (that is its check-in).
/// A service left `activating` (rmm died between the installer's
/// registration and this) is started by the machine's next command, as
/// systemd would have started it on its own.
async fn start_service(host: &Host) {
    let dir = agent_dir(host);
    if std::fs::read_to_string(dir.join("state")).map(|s| s.trim() != "activating").unwrap_or(true) {
        return;
    }
    let Ok(saved) = std::fs::read_to_string(dir.join("connection-info.json")) else { return };
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap_or_default();
    let info = &saved["connectionInfo"];
    let node = saved["node"].as_str().unwrap_or("");
    journal(host, "Rancher System Agent version v0.15.0 is starting");
    let kubeconfig = info["kubeConfig"].as_str().unwrap_or("");
    let plan_token = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap_or("").trim().to_string();
    let api = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or("").trim().to_string();
    let (ns, secret) = (info["namespace"].as_str().unwrap_or(""), info["secretName"].as_str().unwrap_or(""));
    if agent_fails(node, &host.name) {
        journal(host, "[FATAL] error while connecting to Kubernetes cluster: the server has asked for the client to provide credentials");
        journal(host, "rancher-system-agent.service: Main process exited, code=exited, status=1/FAILURE");
        set_state(host, "failed");
        tracing::info!(machine = %host.name, node = %node, "system-agent service failed (RMM_LOCAL_AGENT_FAIL)");
        return;
    }
    let client = match http(Some(saved["ca"].as_str().unwrap_or(""))) {
        Ok(c) => c,
        Err(e) => {
            journal(host, &format!("[FATAL] the CA in the connection information is not usable: {e}"));
            set_state(host, "failed");
            return;
        }
    };
    match client.get(format!("{api}/api/v1/namespaces/{ns}/secrets/{secret}")).bearer_auth(&plan_token).send().await {
        Ok(r) if r.status().is_success() => {
            journal(host, &format!("Starting remote watch of plans (secret {ns}/{secret})"));
            set_state(host, "active");
        }
        // systemd keeps restarting it; the next command on the machine tries again
        Ok(r) => journal(host, &format!("[ERROR] error watching plan secret: {}", r.status())),
        Err(e) => journal(host, &format!("[ERROR] error watching plan secret: {e}")),
    }
}

#[cfg(test)]
mod wire_tests {
    //! The v1 flow against an in-process emulator over real HTTPS, with
    //! nodes registered by the installer's wire protocol.

    use std::time::{Duration, Instant};

    use reqwest::Client;
    use serde_json::{json, Value};

    use super::*;
    use crate::emulator::{start, Knobs, Line, ServeOptions};

    const PW: &str = "bootstrap-password-1";

    fn client(ca: &str) -> Client {
        Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .build()
            .unwrap()
    }

    fn knobs() -> Knobs {
        Knobs { cluster_name_ms: 150, default_token_ms: 150, planner_ms: 120, ..Knobs::default() }
    }

    async fn serve(dir: &std::path::Path, line: Line, knobs: Knobs) -> crate::emulator::Running {
        start(ServeOptions {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            bootstrap_password: Some(PW.into()),
            node_ready: Duration::ZERO,
            tls_sans: vec![],
            rancher_version: line,
            knobs,
        })
        .await
        .unwrap()
    }

    async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        let t = r.text().await.unwrap();
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    /// Poll `f` every 20 ms until it gives `Some`, for at most 20 s.
    async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn host(root: &std::path::Path, name: &str) -> Host {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Host { name: name.into(), ip: "127.0.0.1".parse().unwrap(), dir, rmm_exe: "/bin/false".into(), emulator_env: vec![] }
    }

    /// Login (v1-public), an API token, server-url. Returns the bearer.
    async fn setup(c: &Client, url: &str) -> String {
        let (s, body) = send(c.post(format!("{url}/v1-public/login")).json(&json!({
            "type": "localProvider", "username": "admin", "password": PW, "description": "rmm"}))).await;
        assert_eq!(s, 201, "{body}");
        // 2.13+: the cut-down body (rancher-api.md §2.2)
        let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["baseType", "expiresAt", "id", "token", "type"]);
        let login = body["token"].as_str().unwrap().to_string();
        let (s, tok) = send(c.post(format!("{url}/v3/tokens")).bearer_auth(&login).json(&json!({"description": "rmm"}))).await;
        assert_eq!(s, 201);
        let bearer = tok["token"].as_str().unwrap().to_string();
        let (s, _) = send(c.put(format!("{url}/v3/settings/server-url")).bearer_auth(&bearer).json(&json!({"value": url}))).await;
        assert_eq!(s, 200);
        bearer
    }

    async fn create(c: &Client, url: &str, bearer: &str, name: &str, version: &str) -> (u16, Value) {
        send(c.post(format!("{url}/v1/provisioning.cattle.io.clusters")).bearer_auth(bearer).json(&json!({
            "apiVersion": "provisioning.cattle.io/v1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": "fleet-default"},
            "spec": {"kubernetesVersion": version, "rkeConfig": {}}}))).await
    }

    /// clusterName, then default-token's insecureNodeCommand.
    async fn node_command(c: &Client, url: &str, bearer: &str, name: &str) -> (String, String) {
        let mgmt = until("status.clusterName", || async {
            let (_, v) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters/fleet-default/{name}")).bearer_auth(bearer)).await;
            v["status"]["clusterName"].as_str().filter(|s| !s.is_empty()).map(String::from)
        })
        .await;
        assert!(mgmt.starts_with("c-m-") && mgmt.len() == 12, "{mgmt}");
        let cmd = until("default-token's nodeCommand", || async {
            let (s, v) = send(c.get(format!("{url}/v1/management.cattle.io.clusterregistrationtokens/{mgmt}/default-token")).bearer_auth(bearer)).await;
            (s == 200).then(|| v["status"]["insecureNodeCommand"].as_str().filter(|s| !s.is_empty()).map(String::from)).flatten()
        })
        .await;
        (mgmt, cmd)
    }

    fn roles(cp: bool) -> &'static str {
        if cp { "--etcd --controlplane" } else { "--worker" }
    }

    async fn machines(c: &Client, url: &str, bearer: &str) -> Vec<Value> {
        let (s, v) = send(c.get(format!("{url}/v1/cluster.x-k8s.io.machines/fleet-default")).bearer_auth(bearer)).await;
        assert_eq!(s, 200);
        v["data"].as_array().unwrap().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn v1_cluster_to_ready_with_six_nodes_over_the_agent_wire() {
        let dir = tempfile::tempdir().unwrap();
        // planner steps long enough that polling sees each phase even on a busy machine
        let running = serve(&dir.path().join("rancher"), Line::NEWEST, Knobs { planner_ms: 500, ..knobs() }).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        let (_, v) = send(c.get(format!("{url}/rancherversion"))).await;
        assert_eq!(v["Version"], "v2.15.1");
        let bearer = setup(&c, &url).await;
        let (s, created) = create(&c, &url, &bearer, "rmm-demo", "v1.36.1+rke2r1").await;
        assert_eq!(s, 201, "{created}");
        assert_eq!(created["id"], "fleet-default/rmm-demo");
        assert!(created["status"]["clusterName"].is_null(), "the controller has not run yet");
        let (s, dup) = create(&c, &url, &bearer, "rmm-demo", "v1.36.1+rke2r1").await;
        assert_eq!((s, dup["code"].as_str(), dup["status"].as_u64()), (409, Some("AlreadyExists"), Some(409)));
        let (mgmt, cmd) = node_command(&c, &url, &bearer, "rmm-demo").await;
        assert!(cmd.starts_with(&format!(" curl --insecure -fL {url}/system-agent-install.sh | sudo  sh -s - --server {url} --label 'cattle.io/os=linux' --token ")), "{cmd}");
        // the secure command fails at curl on a node that does not trust the CA, and exits 0 anyway (§2.7)
        let (_, crt) = send(c.get(format!("{url}/v3/clusterregistrationtokens/{mgmt}:default-token")).bearer_auth(&bearer)).await;
        let secure = crt["nodeCommand"].as_str().unwrap().to_string();
        let out = install(&host(dir.path(), "untrusting"), &format!("{secure} --worker --node-name nobody")).await;
        assert_eq!(out.status, 0);
        assert!(out.stderr.starts_with("curl: (60)"), "{}", out.stderr);
        assert!(machines(&c, &url, &bearer).await.is_empty());
        // three etcd+controlplane nodes: nothing starts before a worker is registered
        let mut messages = std::collections::BTreeSet::new();
        for i in 1..=3 {
            let h = host(dir.path(), &format!("cp{i}"));
            let out = install(&h, &format!("{cmd} {} --node-name rmm-cp-{i} --address 127.0.0.{i} --internal-address 127.0.0.{i}", roles(true))).await;
            assert_eq!(out.status, 0, "{out:?}");
            assert!(!out.stdout.contains(crt["token"].as_str().unwrap()) && !out.stderr.contains(crt["token"].as_str().unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ms = machines(&c, &url, &bearer).await;
        assert_eq!(ms.len(), 3);
        for m in &ms {
            assert_eq!(m["status"]["phase"], "Pending");
            assert_eq!(m["metadata"]["state"]["message"], "waiting for at least one control plane, etcd, and worker node to be registered");
        }
        for i in 1..=3 {
            let h = host(dir.path(), &format!("w{i}"));
            let out = install(&h, &format!("{cmd} {} --node-name rmm-w-{i} --address 127.0.1.{i} --internal-address 127.0.1.{i}", roles(false))).await;
            assert_eq!(out.status, 0, "{out:?}");
            if i == 1 {
                // every role is registered: the planner is on the bootstrap node
                // (its first step lasts 500 ms from the registration just made)
                let (_, v) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters/fleet-default/rmm-demo")).bearer_auth(&bearer)).await;
                messages.insert(v["metadata"]["state"]["message"].as_str().unwrap_or("").to_string());
            }
        }
        // running the installer again on a node does not make a second machine
        install(&host(dir.path(), "w1"), &format!("{cmd} --worker --node-name rmm-w-1 --address 127.0.1.1 --internal-address 127.0.1.1")).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let cluster = loop {
            let (_, v) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters/fleet-default/rmm-demo")).bearer_auth(&bearer)).await;
            messages.insert(v["metadata"]["state"]["message"].as_str().unwrap_or("").to_string());
            for m in machines(&c, &url, &bearer).await {
                messages.insert(m["metadata"]["state"]["message"].as_str().unwrap_or("").to_string());
            }
            if v["status"]["ready"] == true {
                break v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for the cluster to be ready: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // ready as Rancher's own tests define it (§2.9)
        assert_eq!(cluster["status"]["observedGeneration"], cluster["metadata"]["generation"]);
        let cond = |ty: &str| cluster["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == ty).unwrap()["status"].clone();
        assert_eq!((cond("Ready"), cond("Provisioned")), (json!("True"), json!("True")));
        assert_eq!(cluster["metadata"]["state"]["name"], "active");
        let (_, mc) = send(c.get(format!("{url}/v1/management.cattle.io.clusters/{mgmt}")).bearer_auth(&bearer)).await;
        assert_eq!(mc["status"]["conditions"][0], json!({"type": "Ready", "status": "True", "reason": "", "message": "",
            "lastUpdateTime": mc["status"]["conditions"][0]["lastUpdateTime"], "lastTransitionTime": mc["status"]["conditions"][0]["lastTransitionTime"]}));
        let (_, v3) = send(c.get(format!("{url}/v3/clusters/{mgmt}")).bearer_auth(&bearer)).await;
        assert_eq!((v3["state"].as_str(), v3["driver"].as_str()), (Some("active"), Some("rke2")));
        let ms = machines(&c, &url, &bearer).await;
        assert_eq!(ms.len(), 6);
        let mut seen = vec![];
        for m in &ms {
            assert_eq!(m["status"]["phase"], "Running");
            assert_eq!(m["metadata"]["state"]["name"], "running");
            let node = m["metadata"]["labels"]["rke.cattle.io/node-name"].as_str().unwrap();
            assert_eq!(m["status"]["nodeRef"]["name"], node);
            assert_eq!(m["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"], "rmm-demo");
            assert!(m["metadata"]["name"].as_str().unwrap().starts_with("custom-"));
            let cp = m["metadata"]["labels"]["rke.cattle.io/control-plane-role"] == "true";
            let etcd = m["metadata"]["labels"]["rke.cattle.io/etcd-role"] == "true";
            let worker = m["metadata"]["labels"]["rke.cattle.io/worker-role"] == "true";
            assert_eq!((cp, etcd, worker), if node.starts_with("rmm-cp") { (true, true, false) } else { (false, false, true) }, "{node}");
            seen.push(node.to_string());
        }
        seen.sort();
        assert_eq!(seen, ["rmm-cp-1", "rmm-cp-2", "rmm-cp-3", "rmm-w-1", "rmm-w-2", "rmm-w-3"]);
        // the planner's messages showed on the way (§2.8; their exact
        // sequence is the model test's, polling here only samples it)
        assert!(messages.iter().any(|m| m.starts_with("configuring bootstrap node(s) custom-")), "{messages:?}");
        let planner: Vec<&String> = messages.iter().filter(|m| m.starts_with("waiting for") || m.starts_with("configuring")).collect();
        assert!(planner.len() >= 3, "{messages:?}");
        // the node's evidence
        let st = shell(&host(dir.path(), "cp1"), "sudo systemctl status rancher-system-agent").await;
        assert_eq!(st.status, 0);
        assert!(st.stdout.contains("Active: active (running)"));
        // kubeconfig (§2.10)
        let (s, kc) = send(c.post(format!("{url}/v3/clusters/{mgmt}?action=generateKubeconfig")).bearer_auth(&bearer)).await;
        assert_eq!(s, 200);
        assert!(kc["config"].as_str().unwrap().contains(&format!("server: \"{url}/k8s/clusters/{mgmt}\"")));
        // v3 nodes of the machines (§2.8)
        let (_, nodes) = send(c.get(format!("{url}/v3/nodes?clusterId={mgmt}")).bearer_auth(&bearer)).await;
        let nodes = nodes["data"].as_array().unwrap();
        assert_eq!(nodes.len(), 6);
        assert!(nodes.iter().all(|n| n["state"] == "active" && n["annotations"]["cluster.x-k8s.io/machine"].as_str().unwrap().starts_with("custom-")));
        // machines by label (§2.8)
        let (_, v) = send(c.get(format!("{url}/v1/cluster.x-k8s.io.machines/fleet-default?labelSelector=cluster.x-k8s.io/cluster-name=rmm-demo,rke.cattle.io/worker-role=true")).bearer_auth(&bearer)).await;
        assert_eq!(v["data"].as_array().unwrap().len(), 3);
        let (_, v) = send(c.get(format!("{url}/v1/cluster.x-k8s.io.machines?labelSelector=cluster.x-k8s.io/cluster-name=other")).bearer_auth(&bearer)).await;
        assert_eq!(v["data"].as_array().unwrap().len(), 0);
        // delete (§2.10): the v1 cluster, its management cluster and machines go
        let r = c.delete(format!("{url}/v1/provisioning.cattle.io.clusters/fleet-default/rmm-demo")).bearer_auth(&bearer).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let (s, e) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters/fleet-default/rmm-demo")).bearer_auth(&bearer)).await;
        assert_eq!((s, e["code"].as_str()), (404, Some("NotFound")));
        assert_eq!(send(c.get(format!("{url}/v3/clusters/{mgmt}")).bearer_auth(&bearer)).await.0, 404);
        assert!(machines(&c, &url, &bearer).await.is_empty());
        running.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_agent_installs_exits_0_and_never_checks_in() {
        let dir = tempfile::tempdir().unwrap();
        let running = serve(&dir.path().join("rancher"), Line::NEWEST, knobs()).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        let bearer = setup(&c, &url).await;
        assert_eq!(create(&c, &url, &bearer, "c1", "v1.36.1+k3s1").await.0, 201);
        let (_, cmd) = node_command(&c, &url, &bearer, "c1").await;
        // SAFETY of the env change: only this test reads RMM_LOCAL_AGENT_FAIL
        std::env::set_var("RMM_LOCAL_AGENT_FAIL", "doomed-1");
        let h = host(dir.path(), "doomed");
        let out = install(&h, &format!("{cmd} --etcd --controlplane --worker --node-name doomed-1 --address 127.0.0.1")).await;
        std::env::remove_var("RMM_LOCAL_AGENT_FAIL");
        assert_eq!(out.status, 0, "the installer itself succeeds");
        let st = shell(&h, "systemctl status rancher-system-agent.service").await;
        assert_eq!(st.status, 3);
        assert!(st.stdout.contains("failed") && st.stdout.contains("status=1/FAILURE"), "{}", st.stdout);
        let j = shell(&h, "journalctl -u rancher-system-agent -n 1 --no-pager").await;
        assert_eq!(j.stdout.lines().count(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let ms = machines(&c, &url, &bearer).await;
        assert_eq!(ms.len(), 1, "registered");
        assert_eq!(ms[0]["metadata"]["labels"]["rke.cattle.io/node-name"], "doomed-1");
        assert_eq!(ms[0]["status"]["phase"], "Provisioning");
        assert_eq!(ms[0]["metadata"]["state"]["message"], "waiting for agent to check in and apply initial plan");
        // rmm died between the registration and the service's start: the
        // machine's next command starts it (as systemd would) and it checks in
        let late = host(dir.path(), "late");
        let ca = c.get(format!("{url}/cacerts")).send().await.unwrap().text().await.unwrap();
        let token = cmd.split_whitespace().skip_while(|w| *w != "--token").nth(1).unwrap().to_string();
        let (s, info) = send(
            http(Some(&ca)).unwrap().get(format!("{url}/v3/connect/agent")).bearer_auth(&token)
                .header("X-Cattle-Id", "late-agent").header("X-Cattle-Role-Worker", "true")
                .header("X-Cattle-Node-Name", "late-1").header("X-Cattle-Address", "127.0.0.1"),
        )
        .await;
        assert_eq!(s, 200, "{info}");
        write_private(&agent_dir(&late).join("connection-info.json"), json!({"connectionInfo": info, "ca": ca, "node": "late-1"}).to_string().as_bytes())
            .unwrap_or_else(|_| {
                std::fs::create_dir_all(agent_dir(&late)).unwrap();
                write_private(&agent_dir(&late).join("connection-info.json"), json!({"connectionInfo": info, "ca": ca, "node": "late-1"}).to_string().as_bytes()).unwrap()
            });
        set_state(&late, "activating");
        let late_message = |ms: Vec<Value>| {
            ms.into_iter().find(|m| m["metadata"]["labels"]["rke.cattle.io/node-name"] == "late-1").unwrap()["metadata"]["state"]["message"].clone()
        };
        assert_eq!(late_message(machines(&c, &url, &bearer).await), "waiting for agent to check in and apply initial plan");
        let st = shell(&late, "sudo systemctl is-active rancher-system-agent").await;
        assert_eq!((st.status, st.stdout.as_str()), (0, "active\n"));
        // checked in: now it waits for the (stuck) init node's control plane
        assert_eq!(late_message(machines(&c, &url, &bearer).await), "waiting for control plane to be available");
        // a node that never ran the installer has no unit
        assert_eq!(shell(&host(dir.path(), "fresh"), "systemctl status rancher-system-agent").await.status, 4);
        // a wrong checksum stops the installer (exit 1, §7.3)
        let bad = cmd.replace("--ca-checksum ", "--ca-checksum 00");
        let out = install(&host(dir.path(), "bad"), &format!("{bad} --worker")).await;
        assert_eq!(out.status, 1);
        assert!(out.stderr.contains("does not match given --ca-checksum"), "{}", out.stderr);
        running.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_error_knob_shows_an_error_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = knobs();
        k.cluster_error = Some("injected: etcd snapshot restore failed".into());
        let running = serve(&dir.path().join("rancher"), Line::NEWEST, k).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        let bearer = setup(&c, &url).await;
        assert_eq!(create(&c, &url, &bearer, "c1", "v1.36.1+rke2r1").await.0, 201);
        let (_, cmd) = node_command(&c, &url, &bearer, "c1").await;
        let out = install(&host(dir.path(), "n1"), &format!("{cmd} --etcd --controlplane --worker --node-name n1")).await;
        assert_eq!(out.status, 0);
        let state = until("the error", || async {
            let (_, v) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters/fleet-default/c1")).bearer_auth(&bearer)).await;
            (v["metadata"]["state"]["error"] == true).then(|| v["metadata"]["state"].clone())
        })
        .await;
        assert_eq!(state["message"], "injected: etcd snapshot restore failed");
        running.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_up_windows_then_token_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = knobs();
        k.login_window_ms = 1_500;
        k.webhook_window_ms = 3_000;
        k.token_ttl_ms = Some(1_000);
        let running = serve(&dir.path().join("rancher"), Line::NEWEST, k).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        // /ping answers at once, login does not yet
        let ping = c.get(format!("{url}/ping")).send().await.unwrap();
        assert_eq!(ping.status(), 200);
        let body = json!({"type": "localProvider", "username": "admin", "password": PW});
        let (s, e) = send(c.post(format!("{url}/v1-public/login")).json(&body)).await;
        assert_eq!((s, e["code"].as_str()), (503, Some("ServiceUnavailable")));
        let login = until("login", || async {
            let (s, v) = send(c.post(format!("{url}/v1-public/login")).json(&body)).await;
            (s == 201).then(|| v["token"].as_str().unwrap().to_string())
        })
        .await;
        // the webhook is not up yet: reads 503, creates refused with its error (§2.1, rancher#51273)
        let (s, _) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters")).bearer_auth(&login)).await;
        assert_eq!(s, 503);
        let (s, e) = create(&c, &url, &login, "early", "v1.36.1+rke2r1").await;
        assert_eq!(s, 500);
        assert!(e["message"].as_str().unwrap().contains("failed calling webhook \"rancher.cattle.io.clusters.provisioning.cattle.io\""), "{e}");
        until("the webhook", || async {
            let (s, _) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters")).bearer_auth(&login)).await;
            (s == 200).then_some(())
        })
        .await;
        assert!(!std::fs::read_to_string(dir.path().join("rancher/state.json")).unwrap().contains("early"));
        // an API token that expires (RMM_LOCAL_TOKEN_TTL_MS): 401 afterwards
        let (_, t) = send(c.post(format!("{url}/v3/tokens")).bearer_auth(&login).json(&json!({"description": "rmm"}))).await;
        let api = t["token"].as_str().unwrap().to_string();
        assert_eq!(t["ttl"], 1_000);
        assert_eq!(send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters")).bearer_auth(&api)).await.0, 200);
        let body = until("the token to expire", || async {
            let (s, v) = send(c.get(format!("{url}/v1/provisioning.cattle.io.clusters")).bearer_auth(&api)).await;
            (s == 401).then_some(v)
        })
        .await;
        assert_eq!(body, json!({"type": "error", "status": "401", "message": "Unauthorized 401: must authenticate"}));
        running.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_lines() {
        let dir = tempfile::tempdir().unwrap();
        // 2.12: no /v1-public/login, RKE1 gone (register 404), the CRT writes the system-agent command
        let running = serve(&dir.path().join("r12"), Line { minor: 12 }, knobs()).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        let (_, v) = send(c.get(format!("{url}/rancherversion"))).await;
        assert_eq!(v["Version"], "v2.12.12");
        let body = json!({"type": "localProvider", "username": "admin", "password": PW});
        let r = c.post(format!("{url}/v1-public/login")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let (s, tok) = send(c.post(format!("{url}/v3-public/localProviders/local?action=login")).json(&body)).await;
        assert_eq!(s, 201);
        assert_eq!(tok["type"], "token");
        assert!(tok.get("userId").is_some(), "the full v3 token before 2.13");
        let bearer = tok["token"].as_str().unwrap().to_string();
        assert_eq!(c.get(format!("{url}/v3/connect/register")).send().await.unwrap().status(), 404);
        let (_, rel) = send(c.get(format!("{url}/v1-rke2-release/releases"))).await;
        let offered: Vec<&str> = rel["data"].as_array().unwrap().iter().map(|r| r["version"].as_str().unwrap()).collect();
        assert_eq!(offered, ["v1.31.8+rke2r1", "v1.32.4+rke2r1", "v1.33.1+rke2r1"]);
        // an RKE1 cluster through v3 is accepted and never provisions
        let (s, cl) = send(c.post(format!("{url}/v3/clusters")).bearer_auth(&bearer)
            .json(&json!({"name": "old", "rancherKubernetesEngineConfig": {}}))).await;
        assert_eq!(s, 201);
        let cid = cl["id"].as_str().unwrap().to_string();
        running.shutdown().await.unwrap();
        // … and 2.12–2.14 refuse to start while it exists (§1.1)
        let again = crate::emulator::Emulator::open(ServeOptions {
            data_dir: dir.path().join("r12"),
            listen: "127.0.0.1:0".parse().unwrap(),
            bootstrap_password: None,
            node_ready: Duration::ZERO,
            tls_sans: vec![],
            rancher_version: Line { minor: 12 },
            knobs: knobs(),
        });
        let err = again.err().expect("refused");
        assert!(err.to_string().contains("does not support RKE1"), "{err} ({cid})");
        // 2.11: the RKE1 agent path is there, /v1-public/login is not
        let running = serve(&dir.path().join("r11"), Line::RKE1_LAST, knobs()).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        assert_eq!(c.post(format!("{url}/v1-public/login")).json(&body).send().await.unwrap().status(), 404);
        assert_eq!(c.get(format!("{url}/v3/connect/register")).send().await.unwrap().status(), 401);
        running.shutdown().await.unwrap();
        // 2.15: the v3 RKE1 field is dropped silently
        let running = serve(&dir.path().join("r15"), Line::NEWEST, knobs()).await;
        let (url, c) = (running.url(), client(running.ca_pem()));
        let (_, tok) = send(c.post(format!("{url}/v3-public/localProviders/local?action=login")).json(&body)).await;
        let bearer = tok["token"].as_str().unwrap().to_string();
        let (s, cl) = send(c.post(format!("{url}/v3/clusters")).bearer_auth(&bearer)
            .json(&json!({"name": "old", "rancherKubernetesEngineConfig": {"kubernetesVersion": "v1.32.5-rancher1-1"}}))).await;
        assert_eq!(s, 201);
        assert!(cl.get("rancherKubernetesEngineConfig").is_none(), "{cl}");
        running.shutdown().await.unwrap();
    }
}
