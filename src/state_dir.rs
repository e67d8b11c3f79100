//! The state dir (`.rmm/` by default): the lock, the event store, the
//! secrets file and the local world.
//!
//! ```text
//! .rmm/
//!   lock           flock'd by the one rmm that may write; holds its pid
//!   events/        the sled event store
//!   secrets.json   passwords, tokens, the node command (0600)
//!   world/         the local driver's machines and the emulator's data
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rmm_events::{History, OpenError, SledLog};

use crate::error::{Error, Result};

/// sled's page cache for the writer.
const WRITER_CACHE_BYTES: u64 = 16 << 20;

/// How long a writer waits for a reader to close the store.
pub const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

pub struct StateDir {
    pub root: PathBuf,
}

/// The writer's lock. Released when dropped (or when the process dies).
pub struct Lock {
    _file: File,
}

impl StateDir {
    /// `root` is made absolute: the local world hands paths under it to
    /// processes that run elsewhere (the emulator).
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root: absolute(&root) }
    }

    pub fn events(&self) -> PathBuf {
        self.root.join("events")
    }
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets.json")
    }
    pub fn world(&self) -> PathBuf {
        self.root.join("world")
    }
    fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn exists(&self) -> bool {
        self.events().exists()
    }

    /// Creates the dir (owner-only) if needed.
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::StateDir(format!("cannot create state dir {}: {e}", self.root.display())))?;
        // Writable? Find out now rather than half-way through a run.
        let probe = self.root.join(".probe");
        fs::write(&probe, b"")
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| Error::StateDir(format!("state dir {} is not writable: {e}", self.root.display())))
    }

    /// Takes the writer's lock, or names the pid that holds it.
    pub fn lock(&self) -> Result<Lock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(|e| Error::StateDir(format!("cannot open {}: {e}", self.lock_path().display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::Busy(format!(
                    "state dir {} is in use by another rmm (pid {}); wait for it or stop it",
                    self.root.display(),
                    if pid.is_empty() { "unknown" } else { pid }
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::StateDir(format!("cannot lock {}: {e}", self.lock_path().display())))
            }
        }
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.sync_all();
        Ok(Lock { _file: file })
    }

    /// Whether another process holds the writer's lock now.
    pub fn locked_by_other(&self) -> Option<String> {
        let mut file = File::open(self.lock_path()).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().to_string())
            }
        }
    }

    /// Opens the store for writing (the caller holds the lock).
    ///
    /// The caller holds the writer's lock, so only a reader (`status`,
    /// `log`, opened while no writer ran) can hold the store: readers are
    /// short, so this waits for it, up to [`READER_WAIT`].
    pub fn open_store(&self) -> Result<SledLog> {
        let deadline = std::time::Instant::now() + READER_WAIT;
        loop {
            // The writer reads the log once (to fold it) and then only
            // appends: a small page cache, not sled's 1 GiB default.
            match SledLog::open_with_cache(&self.events(), Some(WRITER_CACHE_BYTES)) {
                Ok(log) => return Ok(log),
                Err(OpenError::Locked) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(OpenError::Locked) => {
                    return Err(Error::Busy(format!(
                        "the event store in {} stayed open in another process (a reader such as `rmm status` or `rmm log`) for {}s",
                        self.root.display(),
                        READER_WAIT.as_secs()
                    )))
                }
                Err(OpenError::Other(e)) => return Err(e.into()),
            }
        }
    }

    /// Opens the store for reading, with a small page cache: readers
    /// stream the log once, and sled's default 1 GiB cache would only grow
    /// them.
    ///
    /// Readers never write: not the store (sled writes on every open, so a
    /// reader opens a private copy in the temp dir, whether a writer runs
    /// or not; see `rmm_events::store`), nor anything else in the state
    /// dir. A state dir on a read-only mount reads.
    ///
    /// A state dir that has other state (secrets, the local world) but no
    /// log lost its log: that is refused as a log that does not verify,
    /// not read as an empty one.
    pub fn open_store_for_reading(&self) -> Result<SledLog> {
        if !self.events().join("db").exists() {
            let others = self.state_besides_the_log();
            if others.is_empty() {
                return Err(Error::Refused(format!("no rmm state in {} (run `rmm up` first)", self.root.display())));
            }
            return Err(Error::Log(format!(
                "the event log {} is missing, but the state dir still holds {}: the log was deleted or moved; restore it from a backup",
                self.events().display(),
                others.join(" and ")
            )));
        }
        Ok(SledLog::open_snapshot_with_cache(&self.events(), Some(rmm_events::READER_CACHE_BYTES))?)
    }

    /// What the state dir holds that only a run makes: proof that a log
    /// existed.
    fn state_besides_the_log(&self) -> Vec<String> {
        [self.secrets(), self.world()]
            .into_iter()
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
            .collect()
    }
}

/// Reads and verifies the whole log (up to `upto`, if given), keeping only
/// what `status` and `replay` show: the latest run, and the latest `up` run
/// before it (the Rancher side of a `down`). Memory is bounded by those two
/// runs, not by the log (a million events may be thousands of runs), and
/// sled is read ahead on a thread of its own.
///
/// Runs are contiguous in the log (only the latest run is ever resumed);
/// an event of a run already dropped would be one of an earlier run that
/// neither command shows, and is skipped.
pub fn fold_latest(log: &SledLog, upto: Option<u64>) -> Result<History> {
    let mut history = History::default();
    for record in log.scan_read_ahead(1) {
        let record = record?;
        let e = &record.envelope;
        if let rmm_events::Event::RunStarted { .. } = e.event {
            // The new run becomes the latest: keep only the latest `up` before it.
            let keep = history.runs.iter().rposition(|r| r.kind == rmm_events::RunKind::Up);
            let mut i = 0;
            history.runs.retain(|_| {
                i += 1;
                Some(i - 1) == keep
            });
        } else if !history.runs.iter().any(|r| r.id == e.run) {
            continue;
        }
        history.apply(e);
        if Some(e.seq) == upto {
            break;
        }
    }
    Ok(history)
}

/// `path` made absolute, for messages and for the emulator's data dir.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
