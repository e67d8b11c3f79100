//! The desired run, carried inside `RunStarted` so the log is self-contained:
//! `up --resume`, `replay` and `status` never need the original `rmm.toml`.

use serde::{Deserialize, Serialize};

/// What one `rmm up` was asked to build. Validated by the binary's `plan`
/// module before it is recorded; the core trusts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Rancher cluster name (`tinysetup` by default); unique in Rancher.
    pub cluster_name: String,
    pub masters: u32,
    pub workers: u32,
    /// Machine driver name (`local`, later `docker-machine`, `docker`).
    pub driver: String,
    /// At most this many machine creations at once.
    pub parallel: u32,
    /// The Rancher server image, e.g. `rancher/rancher:v2.15.1`.
    pub rancher_image: String,
    /// `hex(sha256(cacerts + "\n"))` pinned up front by the user, if any.
    pub ca_checksum: Option<String>,
    pub timeouts: Timeouts,
    pub retry: Retry,
    /// How often waits poll the world, in milliseconds.
    pub poll_ms: u64,
    /// Which Kubernetes Rancher builds (since format version 3; a log of an
    /// older version is an RKE1 run, the only kind rmm made then).
    pub distribution: Distribution,
    /// The Kubernetes version asked for (`v1.35.1+rke2r1`); `None`: the
    /// server's own `rke2-default-version` / `k3s-default-version`
    /// (reference/rancher-current.md §2.4). Unused for RKE1.
    pub kubernetes_version: Option<String>,
    /// An existing Rancher to provision the nodes into (`--rancher-url`,
    /// since format version 4): no rancher machine is made, the server is
    /// never started, stopped or removed. `None`: rmm starts its own.
    #[serde(default)]
    pub rancher_url: Option<String>,
}

/// The Kubernetes distribution of the downstream cluster.
///
/// * `Rke2` / `K3s`: a custom cluster made through the v1 (Steve) API,
///   Rancher 2.6 and later, the only kind on 2.12+ (reference/rancher-current.md §1.3, §2).
/// * `Rke1`: a custom cluster made through the v3 API, Rancher 2.6–2.11
///   only (2.12 removed RKE1, §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Rke2,
    K3s,
    Rke1,
}

impl Distribution {
    pub const ALL: [Distribution; 3] = [Distribution::Rke2, Distribution::K3s, Distribution::Rke1];

    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Rke2 => "rke2",
            Distribution::K3s => "k3s",
            Distribution::Rke1 => "rke1",
        }
    }

    pub fn parse(s: &str) -> Option<Distribution> {
        Distribution::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Made through `/v1/provisioning.cattle.io.clusters` (rke2, k3s).
    pub fn is_v1(self) -> bool {
        !matches!(self, Distribution::Rke1)
    }

    /// The Rancher setting that holds the server's default version
    /// (`rke2-default-version`, `k3s-default-version`; §2.4).
    pub fn default_version_setting(self) -> Option<&'static str> {
        match self {
            Distribution::Rke2 => Some("rke2-default-version"),
            Distribution::K3s => Some("k3s-default-version"),
            Distribution::Rke1 => None,
        }
    }

    /// The suffix of this distribution's version strings (`+rke2r1`,
    /// `+k3s1`): "that suffix is what selects the distro" (§2.4).
    pub fn version_marker(self) -> Option<&'static str> {
        match self {
            Distribution::Rke2 => Some("+rke2"),
            Distribution::K3s => Some("+k3s"),
            Distribution::Rke1 => None,
        }
    }
}

/// Every wait has an end. Seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// `/ping` answering `pong` after the server container started.
    pub rancher_ready_s: u64,
    /// Login with the bootstrap password succeeding (admin user created).
    pub login_s: u64,
    /// The registration token's `nodeCommand` being filled in.
    pub node_command_s: u64,
    /// Rancher listing a node after its agent ran.
    pub node_listed_s: u64,
    /// A node, or the cluster, reaching `active`.
    pub active_s: u64,
    /// One machine creation.
    pub machine_create_s: u64,
}

/// Transient failures are retried with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Tries per step within one attempt (1 = no retry).
    pub max_tries: u32,
    /// First backoff; doubles per try, capped at 30 s.
    pub backoff_ms: u64,
}

/// The Rancher image rmm starts by default: a current verified tag
/// (issue 8; reference/rancher-current.md §1.1). RKE1 needs a 2.11 or
/// older image (`rancher/rancher:v2.11.3`): 2.12 removed it.
pub const DEFAULT_RANCHER_IMAGE: &str = "rancher/rancher:v2.15.1";

/// The distribution of a plan that does not name one (see
/// [`DEFAULT_RANCHER_IMAGE`]: the two go together).
pub const DEFAULT_DISTRIBUTION: Distribution = Distribution::Rke2;

/// The defaults `rmm.toml` documents: cluster `tinysetup`, 3 masters, 3
/// workers, the local driver, 8 creations at once.
impl Default for Plan {
    fn default() -> Self {
        Plan {
            cluster_name: "tinysetup".into(),
            masters: 3,
            workers: 3,
            driver: "local".into(),
            parallel: 8,
            rancher_image: DEFAULT_RANCHER_IMAGE.into(),
            ca_checksum: None,
            timeouts: Timeouts::default(),
            retry: Retry::default(),
            poll_ms: 50,
            distribution: DEFAULT_DISTRIBUTION,
            kubernetes_version: None,
            rancher_url: None,
        }
    }
}

impl Plan {
    /// Actor names of the nodes, masters first: `master01…`, `worker01…`.
    pub fn node_names(&self) -> Vec<(String, crate::Role)> {
        let masters = (1..=self.masters).map(|i| (format!("master{i:02}"), crate::Role::Master));
        let workers = (1..=self.workers).map(|i| (format!("worker{i:02}"), crate::Role::Worker));
        masters.chain(workers).collect()
    }

    /// Whether the run provisions into an existing Rancher (`--rancher-url`).
    pub fn existing_rancher(&self) -> bool {
        self.rancher_url.is_some()
    }

    /// Every actor of the run: `rancher` first (it owns the Rancher side:
    /// with `--rancher-url` it has no machine, only the API steps), then
    /// the nodes.
    pub fn machine_names(&self) -> Vec<(String, crate::Role)> {
        let mut all = vec![("rancher".to_string(), crate::Role::Rancher)];
        all.extend(self.node_names());
        all
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            rancher_ready_s: 600,
            login_s: 300,
            node_command_s: 300,
            node_listed_s: 600,
            active_s: 1800,
            machine_create_s: 900,
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry { max_tries: 4, backoff_ms: 250 }
    }
}
