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
    command.contains("system-agent-install.sh") || first == "systemctl" || first == "journalctl"
}

/// `curl … /system-agent-install.sh | sudo sh -s - …`, `systemctl status
/// rancher-system-agent`, `journalctl -u rancher-system-agent`.
pub async fn shell(host: &Host, command: &str) -> rmm_actors::ports::ExecOutput {
    if command.contains("system-agent-install.sh") {
        return install(host, command).await;
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
        Some("systemctl") if unit_named => match state.as_deref().map(str::trim) {
            None => exec_out(4, "", "Unit rancher-system-agent.service could not be found.\n"),
            Some(s) if words.contains(&"is-active") => exec_out(if s == "active" { 0 } else { 3 }, format!("{s}\n"), ""),
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
    let flags = parse(&args);
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
    say("[INFO]  Successfully downloaded Rancher connection information");
    say("[INFO]  systemd: Creating service file");
    say("[INFO]  Creating environment file /etc/systemd/system/rancher-system-agent.env");
    say("[INFO]  Enabling rancher-system-agent.service");
    say("[INFO]  Starting/restarting rancher-system-agent.service");
    let _ = std::fs::remove_file(agent_dir(host).join("journal"));
    journal(host, "Rancher System Agent version v0.15.0 is starting");
    // 4. the service checks in
    let kubeconfig = info["kubeConfig"].as_str().unwrap_or("");
    let plan_token = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap_or("").trim().to_string();
    let api = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or("").trim().to_string();
    let (ns, secret) = (info["namespace"].as_str().unwrap_or(""), info["secretName"].as_str().unwrap_or(""));
    if agent_fails(&node, &host.name) {
        journal(host, "[FATAL] error while connecting to Kubernetes cluster: the server has asked for the client to provide credentials");
        journal(host, "rancher-system-agent.service: Main process exited, code=exited, status=1/FAILURE");
        set_state(host, "failed");
        tracing::info!(machine = %host.name, node = %node, "system-agent service failed (RMM_LOCAL_AGENT_FAIL)");
        return exec_out(0, stdout, "");
    }
    let check = pinned.get(format!("{api}/api/v1/namespaces/{ns}/secrets/{secret}")).bearer_auth(&plan_token).send().await;
    match check {
        Ok(r) if r.status().is_success() => {
            journal(host, &format!("Starting remote watch of plans (secret {ns}/{secret})"));
            set_state(host, "active");
        }
        Ok(r) => {
            journal(host, &format!("[ERROR] error watching plan secret: {}", r.status()));
            set_state(host, "failed");
        }
        Err(e) => {
            journal(host, &format!("[ERROR] error watching plan secret: {e}"));
            set_state(host, "failed");
        }
    }
    tracing::info!(machine = %host.name, node = %node, roles = ?flags.roles(), "system-agent registered");
    exec_out(0, stdout, "")
}
