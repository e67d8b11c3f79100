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
