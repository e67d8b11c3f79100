//! `FileSecrets`: the `SecretStore` of a state dir. One JSON file, mode
//! 0600, replaced atomically (write, fsync, rename, fsync the dir) so a
//! crash leaves the old or the new version, never half of one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use rmm_actors::ports::{Secret, SecretStore};

pub struct FileSecrets {
    path: PathBuf,
    cache: Mutex<BTreeMap<String, String>>,
}

impl FileSecrets {
    pub fn open(path: PathBuf) -> std::io::Result<FileSecrets> {
        let cache = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(FileSecrets { path, cache: Mutex::new(cache) })
    }

    fn write(&self, map: &BTreeMap<String, String>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(map).expect("a string map serializes"))?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl SecretStore for FileSecrets {
    fn get(&self, name: &str) -> Option<Secret> {
        self.cache.lock().expect("secrets lock").get(name).map(|v| Secret::new(v.clone()))
    }

    fn put(&self, name: &str, value: &Secret) -> Result<(), String> {
        let mut map = self.cache.lock().expect("secrets lock");
        let mut next = map.clone();
        next.insert(name.to_string(), value.expose().to_string());
        self.write(&next)
            .map_err(|e| format!("cannot write secrets file {}: {e}", self.path.display()))?;
        *map = next;
        Ok(())
    }
}
