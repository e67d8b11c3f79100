//! The registry of clusters this user brought up (issue 11): one small
//! JSON file, `$XDG_STATE_HOME/rmm/clusters.json` (default
//! `~/.local/state/rmm/`), that `up` and `down` update and `rmm list`
//! reads. State stays per directory, as Terraform's does; the registry
//! only remembers where, so a state dir deleted by hand still shows (as
//! `state dir missing`) and its machines are not forgotten.
//!
//! Writes are crash-safe and tolerate concurrent `up`s in other dirs: an
//! exclusive `flock` on `clusters.lock` around read-modify-write, and the
//! new file written beside the old, fsynced and renamed over it (a crash
//! leaves the old or the new file, never half of one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// One cluster: where its state is, and how it stood at its last update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The state dir (absolute).
    pub dir: String,
    pub name: String,
    pub driver: String,
    /// `running`, `completed`, `failed`, `interrupted`, `down`, `down
    /// running`…: as the log left it at the last `up`/`down`.
    pub state: String,
    /// The Rancher URL, once known.
    pub url: Option<String>,
    /// When the entry was last written (RFC 3339).
    pub updated: String,
}

/// The registry's directory: `$XDG_STATE_HOME/rmm` (an absolute
/// `XDG_STATE_HOME` only, as the XDG Base Directory spec says), else
/// `$HOME/.local/state/rmm`. `None` without either.
pub fn dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Some(x.join("rmm"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute())?;
    Some(home.join(".local/state/rmm"))
}

fn file(dir: &Path) -> PathBuf {
    dir.join("clusters.json")
}

/// Reads the registry in `dir` (empty when there is none yet).
pub fn read_in(dir: &Path) -> Result<Vec<Entry>, String> {
    let path = file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Vec<Entry>>(&bytes).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Records `entry` (replacing the one of the same dir) in `dir`, under
/// the registry's lock, atomically.
pub fn record_in(dir: &Path, entry: Entry) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock_path = dir.join("clusters.lock");
    let lock = crate::drivers::local::open_lock_file(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let _held = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| format!("{}: {e}", lock_path.display()))?;
    let mut all: BTreeMap<String, Entry> = read_in(dir)?.into_iter().map(|e| (e.dir.clone(), e)).collect();
    all.insert(entry.dir.clone(), entry);
    let list: Vec<&Entry> = all.values().collect();
    let bytes = serde_json::to_vec_pretty(&list).expect("entries are JSON");
    crate::drivers::local::write_atomic(&file(dir), &bytes).map_err(|e| format!("{}: {e}", file(dir).display()))
}

/// Records how the run in `state_dir` stands now, read from its log. A
/// failure to update the registry never fails the command: one line on
/// stderr says what and why.
pub fn note(state_dir: &crate::state_dir::StateDir) {
    let Some(reg) = dir() else { return };
    let entry = match entry_of(state_dir) {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(e) => {
            crate::errln!("rmm: warning: the cluster registry was not updated ({e}); `rmm list` may show an older state");
            return;
        }
    };
    if let Err(e) = record_in(&reg, entry) {
        crate::errln!("rmm: warning: the cluster registry was not updated ({e}); `rmm list` may show an older state");
    }
}

/// Records `run` (just begun, so its attempt is running) for `state_dir`.
pub fn note_run(state_dir: &crate::state_dir::StateDir, run: &rmm_events::RunState, url: Option<&str>) {
    let Some(reg) = dir() else { return };
    if let Err(e) = record_in(&reg, entry(state_dir, run, url.map(str::to_string))) {
        crate::errln!("rmm: warning: the cluster registry was not updated ({e}); `rmm list` may show an older state");
    }
}

/// The cluster the registry remembers in `state_dir`, unless it was taken
/// down: read by the commands that find no log there (the dir was deleted
/// or moved, and its machines may still exist).
pub fn known_in(state_dir: &crate::state_dir::StateDir) -> Option<Entry> {
    let here = state_dir.root().display().to_string();
    read_in(&dir()?).ok()?.into_iter().find(|e| e.dir == here && e.state != "down")
}

/// `rmm down --cluster NAME` found no machine of the cluster the registry
/// remembers in `state_dir` (its log gone): nothing of it is left to track.
pub fn mark_down(state_dir: &crate::state_dir::StateDir, name: &str) {
    let Some(reg) = dir() else { return };
    let Some(mut e) = known_in(state_dir).filter(|e| e.name == name) else { return };
    e.state = "down".into();
    e.updated = rmm_events::rfc3339_ms(rmm_events::now_ms());
    if let Err(e) = record_in(&reg, e) {
        crate::errln!("rmm: warning: the cluster registry was not updated ({e}); `rmm list` may show an older state");
    }
}

/// The entry of `state_dir` as its log stands (`None` without a run).
fn entry_of(state_dir: &crate::state_dir::StateDir) -> Result<Option<Entry>, String> {
    let log = state_dir.open_store_for_reading().map_err(|e| e.to_string())?;
    let history = crate::state_dir::fold_latest(&log, None).map_err(|e| e.to_string())?;
    let Some(latest) = history.latest() else { return Ok(None) };
    let url = history.latest_up().and_then(|r| r.rancher_url()).map(str::to_string);
    Ok(Some(entry(state_dir, latest, url)))
}

fn entry(state_dir: &crate::state_dir::StateDir, latest: &rmm_events::RunState, url: Option<String>) -> Entry {
    let state = match latest.kind {
        rmm_events::RunKind::Up => latest.status.as_str().to_string(),
        rmm_events::RunKind::Down if latest.status == rmm_events::RunStatus::Completed => "down".to_string(),
        rmm_events::RunKind::Down => format!("down {}", latest.status.as_str()),
    };
    Entry {
        dir: state_dir.root().display().to_string(),
        name: latest.plan.cluster_name.clone(),
        driver: latest.plan.driver.clone(),
        state,
        url,
        updated: rmm_events::rfc3339_ms(rmm_events::now_ms()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &str, state: &str) -> Entry {
        Entry { dir: dir.into(), name: "c".into(), driver: "local".into(), state: state.into(), url: None, updated: "t".into() }
    }

    #[test]
    fn concurrent_writers_lose_no_entry_and_leave_whole_json() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = tmp.path().join("rmm");
        std::thread::scope(|s| {
            for i in 0..8 {
                let reg = reg.clone();
                s.spawn(move || {
                    for round in 0..10 {
                        record_in(&reg, entry(&format!("/d{i}"), &format!("r{round}"))).unwrap();
                    }
                });
            }
        });
        let all = read_in(&reg).unwrap();
        assert_eq!(all.len(), 8, "{all:?}");
        assert!(all.iter().all(|e| e.state == "r9"), "{all:?}");
        // No temp file left beside it.
        let names: Vec<String> = std::fs::read_dir(&reg).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
