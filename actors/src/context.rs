//! What every actor of a run shares: ids, the plan, the journal, the ports,
//! the creation limit and the stop signal.

use std::sync::Arc;
use std::time::Duration;

use rmm_events::{now_ms, Envelope, Event, Plan};
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use crate::journal::Journal;
use crate::ports::{MachineDriver, RancherConnector, Secret, SecretStore};

pub struct RunCtx {
    pub run: Uuid,
    pub attempt: u32,
    pub plan: Plan,
    pub journal: Journal,
    pub driver: Arc<dyn MachineDriver>,
    pub connector: Arc<dyn RancherConnector>,
    pub secrets: Arc<dyn SecretStore>,
    /// Bounds machine creations at once (`--parallel`).
    pub create_slots: Arc<Semaphore>,
    /// Becomes `true` when the run must stop starting new work.
    pub stop: watch::Receiver<bool>,
    /// A `down` of a run on an existing Rancher: what that `up` run
    /// recorded, which the cluster's deletion needs. `None` otherwise.
    pub undo: Option<Undo>,
}

/// What the `up` run a `down` undoes established with an existing Rancher:
/// its secrets (the admin password, the API token, the pinned CA) are read
/// under its id, and its server is trusted as it recorded, never afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    /// The `up` run's id.
    pub run: Uuid,
    /// Its recorded trust: the pinned CA's checksum, `""` for the system's
    /// roots (empty `cacerts`); `None` when it never got that far.
    pub ca_trust: Option<String>,
    /// Its management cluster (`c-m-…`), when it was named.
    pub management_id: Option<String>,
}

/// Names of the secrets of a run (kept in the `SecretStore`, never in the log).
pub mod secret {
    pub const BOOTSTRAP_PASSWORD: &str = "bootstrap-password";
    pub const ADMIN_PASSWORD: &str = "admin-password";
    pub const LOGIN_TOKEN: &str = "login-token";
    pub const API_TOKEN: &str = "api-token";
    pub const NODE_COMMAND: &str = "node-command";
    /// Not a secret, but kept beside them: the pinned CA (PEM).
    pub const RANCHER_CA: &str = "rancher-ca";
    pub const ALL: &[&str] = &[BOOTSTRAP_PASSWORD, ADMIN_PASSWORD, LOGIN_TOKEN, API_TOKEN, NODE_COMMAND];
    /// Where the password of an existing Rancher comes from (the bootstrap
    /// or the admin password); it is stored as [`BOOTSTRAP_PASSWORD`], the
    /// password rmm logs in with first. Never a flag: a flag's value is on
    /// the command line, which `ps` shows and the log records.
    pub const PASSWORD_ENV: &str = "RMM_RANCHER_PASSWORD";
}

impl RunCtx {
    pub fn envelope(&self, actor: &str, cause: Option<Uuid>, event: Event) -> Envelope {
        Envelope {
            seq: 0,
            id: Uuid::now_v7(),
            run: self.run,
            attempt: self.attempt,
            actor: actor.to_string(),
            cause,
            at_ms: now_ms(),
            event,
        }
    }

    /// The store key of a secret of this run.
    pub fn secret_key(&self, name: &str) -> String {
        format!("{}/{name}", self.run)
    }

    /// A secret of this run; in a `down` that undoes an `up`, that run's
    /// when this one has none of its own (a new session token is this
    /// run's; the passwords and the API token are the `up` run's).
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets
            .get(&self.secret_key(name))
            .or_else(|| self.undo.as_ref().and_then(|u| self.secrets.get(&format!("{}/{name}", u.run))))
    }

    pub fn put_secret(&self, name: &str, value: &Secret) -> Result<(), String> {
        self.secrets.put(&self.secret_key(name), value)
    }

    /// Replaces every secret of this run found in `text` by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for name in secret::ALL {
            if let Some(s) = self.secret(name) {
                if !s.expose().is_empty() {
                    out = out.replace(s.expose(), "***");
                }
            }
        }
        // A node command embeds the registration token after `--token `.
        redact_flag(&out, "--token")
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits for a machine-creation slot; `None` when the run is told to
    /// stop first.
    pub async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            permit = self.create_slots.acquire() => permit.ok(),
        }
    }

    /// Sleeps, or returns `false` early when the run is told to stop.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

fn redact_flag(text: &str, flag: &str) -> String {
    let mut words: Vec<String> = text.split(' ').map(str::to_string).collect();
    for i in 0..words.len().saturating_sub(1) {
        if words[i] == flag {
            words[i + 1] = "***".into();
        }
    }
    words.join(" ")
}

/// A random password of `len` characters from letters and digits.
pub fn generate_password(len: usize) -> Secret {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    Secret::new((0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect::<String>())
}
