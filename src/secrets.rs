//! `FileSecrets`: the `SecretStore` of a state dir. One JSON file, mode
//! 0600, replaced atomically (write, fsync, rename, fsync the dir) so a
//! crash leaves the old or the new version, never half of one.
//!
//! Nothing another user planted is trusted or written through: the temp
//! file has a name of this process's own (`secrets.json.tmp.PID.RANDOM`)
//! and is created with `O_EXCL | O_NOFOLLOW`, mode 0600 from the start;
//! `secrets.json` is read with `O_NOFOLLOW` and must be a file of ours
//! with no access for group or others (`state_dir::check_own_file`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rmm_actors::context::secret;
use rmm_actors::ports::{Secret, SecretStore};
use rmm_events::{Outcome, Role, RunState, SecretRef, Step};

use crate::state_dir::{check_own_file, create_private, open_nofollow, refusal, unique_name};

pub struct FileSecrets {
    path: PathBuf,
    cache: Mutex<BTreeMap<String, String>>,
}

impl FileSecrets {
    pub fn open(path: PathBuf) -> std::io::Result<FileSecrets> {
        let cache = match read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(FileSecrets { path, cache: Mutex::new(cache) })
    }

    /// Whether the secrets file exists (as anything: a symlink counts).
    pub fn file_exists(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok()
    }

    fn write(&self, map: &BTreeMap<String, String>) -> std::io::Result<()> {
        let name = self.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "secrets.json".into());
        let tmp = self.path.with_file_name(unique_name(&format!("{name}.tmp")));
        let written = (|| {
            let mut f = create_private(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(map).expect("a string map serializes"))?;
            f.sync_all()?;
            // rename replaces whatever is at the path (a symlink included)
            // without following it.
            fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The file's bytes, opened without following a symlink, refused unless
/// it is ours alone (one `rmm:`-ready message in the error).
fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
        Err(e) => return Err(std::io::Error::new(e.kind(), refusal(path, e))),
    };
    check_own_file(&file, path).map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// How a failed write of the secrets file begins (found again in a step's
/// failure by [`crate::engine::secrets_write_error`]).
pub const WRITE_FAILED: &str = "cannot write secrets file";

impl SecretStore for FileSecrets {
    fn get(&self, name: &str) -> Option<Secret> {
        self.cache.lock().expect("secrets lock").get(name).map(|v| Secret::new(v.clone()))
    }

    fn put(&self, name: &str, value: &Secret) -> Result<(), String> {
        let mut map = self.cache.lock().expect("secrets lock");
        let mut next = map.clone();
        next.insert(name.to_string(), value.expose().to_string());
        self.write(&next)
            .map_err(|e| format!("{WRITE_FAILED} {}: {e}", self.path.display()))?;
        *map = next;
        Ok(())
    }
}

/// The secrets a resume of `run` needs that the store no longer holds (or
/// holds with another value than the log's fingerprint), as the words a
/// user reads: "the admin password", …. Empty when nothing is lost.
///
/// What is needed follows from the log: the bootstrap password once the
/// server was started (until the admin password is changed), the admin
/// password once its change began (it was stored before the call), the
/// pinned CA once pinned, the API token once created, the node command
/// while a machine still has to run it. The login token is not listed: a
/// new one is made with the password.
pub fn lost_secrets(run: &RunState, store: &dyn SecretStore) -> Vec<&'static str> {
    let Some(rancher) = run.actor("rancher") else { return Vec::new() };
    let key = |name: &str| format!("{}/{name}", run.id);
    let present = |name: &str| store.get(&key(name)).is_some();
    let matches = |r: &SecretRef| store.get(&key(&r.name)).is_some_and(|s| s.fingerprint() == r.fingerprint);
    let mut lost = Vec::new();
    let started = |step: Step| rancher.step(step).is_some();
    if started(Step::StartServer) && !rancher.done(Step::ChangePassword) && !present(secret::BOOTSTRAP_PASSWORD) {
        lost.push("the bootstrap password");
    }
    let admin_ok = match rancher.outcome(Step::ChangePassword) {
        Some(Outcome::PasswordChanged { password }) => matches(password),
        // An existing Rancher's admin password was given, not made: a
        // resume takes it from RMM_RANCHER_PASSWORD / the file again.
        Some(Outcome::PasswordKept) => true,
        _ => !started(Step::ChangePassword) || present(secret::ADMIN_PASSWORD),
    };
    if !admin_ok {
        lost.push("the admin password");
    }
    // A server verified against the system's roots (empty cacerts) has no CA to keep.
    if matches!(rancher.outcome(Step::PinCa), Some(Outcome::CaPinned { .. })) && !present(secret::RANCHER_CA) {
        lost.push("the pinned CA");
    }
    // rke2/k3s: a lost or expired API token is made again after a new
    // login, and the node command is read fresh from Rancher before each
    // node (its token rotates), so neither is needed from the store.
    let v1 = run.plan.distribution.is_v1();
    if let Some(Outcome::ApiTokenCreated { token, .. }) = rancher.outcome(Step::CreateApiToken) {
        if !v1 && !matches(token) {
            lost.push("the API token");
        }
    }
    if let Some(Outcome::NodeCommandReady { command }) = rancher.outcome(Step::WaitNodeCommand) {
        let agents_left = run.machines().iter().any(|(name, role)| {
            *role != Role::Rancher && !run.actor(name).is_some_and(|a| a.done(Step::RunAgent))
        });
        if !v1 && agents_left && !matches(command) {
            lost.push("the node command");
        }
    }
    lost
}

#[cfg(test)]
mod lost_tests {
    use super::*;
    use rmm_events::{Distribution, Envelope, Event, History, Plan, RunKind, Via};
    use uuid::Uuid;

    #[derive(Default)]
    struct Mem(std::sync::Mutex<BTreeMap<String, Secret>>);
    impl SecretStore for Mem {
        fn get(&self, name: &str) -> Option<Secret> {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn put(&self, name: &str, value: &Secret) -> Result<(), String> {
            self.0.lock().unwrap().insert(name.into(), value.clone());
            Ok(())
        }
    }

    fn run(distribution: Distribution) -> RunState {
        let id = Uuid::now_v7();
        let plan = Plan { distribution, ..Plan::default() };
        let secret = |name: &str| SecretRef { name: name.into(), fingerprint: "000000000000".into() };
        let events = vec![
            ("coordinator", Event::RunStarted { kind: RunKind::Up, plan }),
            ("rancher", Event::StepSucceeded { step: Step::CreateApiToken, outcome: Outcome::ApiTokenCreated { token_id: "token-1".into(), token: secret("api-token") }, via: Via::Done }),
            ("rancher", Event::StepSucceeded { step: Step::WaitNodeCommand, outcome: Outcome::NodeCommandReady { command: secret("node-command") }, via: Via::Done }),
        ];
        let mut h = History::default();
        for (i, (actor, event)) in events.into_iter().enumerate() {
            h.apply(&Envelope { seq: i as u64 + 1, id: Uuid::now_v7(), run: id, attempt: 1, actor: actor.into(), cause: None, at_ms: 0, event });
        }
        h.latest().unwrap().clone()
    }

    #[test]
    fn on_rke2_a_lost_api_token_or_node_command_does_not_block_a_resume() {
        let store = Mem::default();
        assert_eq!(lost_secrets(&run(Distribution::Rke1), &store), vec!["the API token", "the node command"]);
        assert!(lost_secrets(&run(Distribution::Rke2), &store).is_empty());
    }
}
