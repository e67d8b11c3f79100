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
    // The data dir sits inside rmm's state dir: the temp file is a new one
    // of our own (`O_EXCL | O_NOFOLLOW`, 0600), never a planted symlink;
    // a stale one of an earlier crash is removed (unlink never follows).
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
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

#[cfg(test)]
mod symlink_tests {
    use super::*;

    /// A symlink planted at the temp name (the data dir is inside rmm's
    /// state dir) is never followed: the file it points to is untouched.
    #[test]
    fn a_symlink_at_the_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&victim, data.join(".state.json.tmp")).unwrap();
        let _ = write_atomic(&data, STATE_FILE, b"{\"secret\": 1}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        // A stale temp of an earlier crash does not block the write.
        let _ = fs::remove_file(data.join(".state.json.tmp"));
        fs::write(data.join(".state.json.tmp"), "stale").unwrap();
        write_atomic(&data, STATE_FILE, b"new").unwrap();
        assert_eq!(fs::read_to_string(data.join(STATE_FILE)).unwrap(), "new");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(data.join(STATE_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
