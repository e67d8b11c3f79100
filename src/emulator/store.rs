//! Durable files in the data dir: written atomically (temp file, fsync,
//! rename, fsync of the directory), owner-only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};

use super::model::{State, STATE_FORMAT};

pub const STATE_FILE: &str = "state.json";

/// Replace `dir/name` with `bytes` so that a crash leaves either the old or
/// the new content.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// The saved state, or `None` on a fresh data dir.
pub fn load(dir: &Path) -> anyhow::Result<Option<State>> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: State =
        serde_json::from_slice(&bytes).with_context(|| format!("decoding {}", path.display()))?;
    if state.format > STATE_FORMAT {
        bail!(
            "{} has format {}, newer than this emulator's {STATE_FORMAT}",
            path.display(),
            state.format
        );
    }
    Ok(Some(state))
}

pub fn save(dir: &Path, state: &State) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).context("encoding state")?;
    write_atomic(dir, STATE_FILE, &bytes)
}
