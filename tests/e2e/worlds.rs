//! The worlds the resume proofs (the crash matrix, the seeded crash chains,
//! the SIGKILL chains) run on, one per driver: the local world (rke2 on
//! 2.15 or rke1 on 2.11, three masters and three workers), the
//! docker-machine test double (rancher-machine flavour) and OpenSSH hosts
//! (one sshd per host), both with one master and one worker on rke2, so
//! that a matrix over every crash point stays within the CI budget.
//!
//! Each world says where its evidence is: the emulator's registration
//! ledger on its rancher machine, and the world's ledger of completed
//! creates (the local world's `created.json`, the double's
//! `.double/created`; ssh hosts are claimed, not created).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::support::{Kind, RmmCmd, TestDir};

/// Which driver a proof runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Local(Kind),
    DockerMachine,
    Ssh,
}

/// A state dir with its `rmm.toml` for one driver, and the world it drives.
pub struct World {
    pub dir: TestDir,
    /// The sshd hosts (ssh only); their servers die with the world.
    hosts: Option<crate::ssh::Hosts>,
    /// Knobs every `rmm` call gets (the emulator's clock, latency).
    env: Vec<(String, String)>,
}

impl World {
    /// `None`: a tool the world needs is missing (SKIPPED was printed; a
    /// failure under CI=true instead).
    pub fn new(on: On) -> Option<World> {
        let (dir, hosts) = match on {
            On::Local(kind) => (TestDir::on(kind), None),
            On::DockerMachine => {
                let dir = TestDir::new();
                crate::docker_machine::write_config(&dir, "rancher-machine", "");
                // The local world's polling interval (a machine driver's
                // default is 2 s, which real machines need, the double not).
                let path = dir.tmp.path().join("rmm.toml");
                let toml = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, format!("poll_ms = 50\n{toml}")).unwrap();
                (dir, None)
            }
            On::Ssh => {
                let (dir, hosts) = crate::ssh::world("the ssh driver's resume proofs", &["rancher", "master01", "worker01"], 1, 1, "")?;
                (dir, Some(hosts))
            }
        };
        Some(World { dir, hosts, env: Vec::new() })
    }

    /// Knobs for the world: on every `rmm` call (the local world and the
    /// double's machines get them from rmm's environment), and in every
    /// session of the ssh hosts (sshd passes none on).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(hosts) = &self.hosts {
            hosts.set_env(env);
        }
    }

    /// `rmm ARGS` on this world's state dir, with its knobs.
    pub fn rmm(&self, args: &[&str]) -> RmmCmd {
        let mut cmd = self.dir.rmm(args);
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    /// (masters, workers).
    pub fn nodes(on: On) -> (usize, usize) {
        match on {
            On::Local(_) => (3, 3),
            On::DockerMachine | On::Ssh => (1, 1),
        }
    }

    /// The emulator's data dir: the Rancher container's volume on the
    /// rancher machine.
    pub fn rancher_data(dir: &TestDir, on: On) -> PathBuf {
        match on {
            On::Local(_) => dir.state().join("world/machines/rancher/rancher"),
            On::DockerMachine => {
                let full = format!("{}-rancher", crate::docker_machine::CLUSTER);
                crate::docker_machine::store(dir).join("machines").join(&full).join(&full).join("rancher")
            }
            On::Ssh => dir.tmp.path().join("hosts/rancher/machine/rancher"),
        }
    }

    /// Completed creates per machine, from the world's own ledger; `None`
    /// where machines are not created (ssh hosts are claimed).
    pub fn created(dir: &TestDir, on: On) -> Option<BTreeMap<String, u64>> {
        match on {
            On::Local(_) => {
                let v = crate::support::json(&std::fs::read(dir.state().join("world").join("created.json")).unwrap());
                Some(serde_json::from_value(v).unwrap())
            }
            On::DockerMachine => {
                let ledger = crate::docker_machine::store(dir).join(".double/created");
                let mut n = BTreeMap::new();
                for line in std::fs::read_to_string(&ledger).unwrap_or_default().lines().filter(|l| !l.is_empty()) {
                    *n.entry(line.to_string()).or_insert(0) += 1;
                }
                Some(n)
            }
            On::Ssh => None,
        }
    }
}
