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
    /// The state dir as a user should read it: absolute.
    pub fn shown(&self) -> String {
        std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone()).display().to_string()
    }

    /// A log with no run in it: one line naming the directory, exit 3.
    pub fn no_run(&self) -> Error {
        Error::Refused(format!("no run in {} yet (start one with `rmm up`)", self.shown()))
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
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

    /// Creates the dir (owner-only) if needed, refuses one that is not
    /// ours alone ([`StateDir::check_private`]), and checks it is writable
    /// with a probe file of this process's own name (two `rmm up` started
    /// in the same instant must not remove each other's probe: the loser
    /// is to find the lock held, exit 4, not "not writable").
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::StateDir(format!("cannot create state dir {}: {e}", self.root.display())))?;
        self.check_private()?;
        // Writable? Find out now rather than half-way through a run.
        let probe = self.root.join(unique_name(".probe"));
        create_private(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| Error::StateDir(format!("state dir {} is not writable: {e}", self.root.display())))
    }

    /// Refuses a state dir that someone else could write into, as ssh does
    /// with `~/.ssh`: it must be a directory owned by the current user and
    /// not writable by its group or others. One line says how to fix it.
    /// (The dir itself may be reached through a symlink, like `~/.ssh`;
    /// nothing inside it is ever followed.)
    pub fn check_private(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.root.display();
        let meta = fs::metadata(&self.root)
            .map_err(|e| Error::StateDir(format!("cannot read state dir {dir}: {e}")))?;
        if !meta.is_dir() {
            return Err(Error::StateDir(format!("state dir {dir} is not a directory")));
        }
        let me = nix::unistd::geteuid().as_raw();
        let mode = meta.mode() & 0o7777;
        if meta.uid() != me {
            return Err(Error::StateDir(format!(
                "state dir {dir} is owned by uid {}, not by you (uid {me}): another user may have planted files in it; \
                 use a state dir of your own (`--state-dir DIR`), or remove this one (`rm -rf {}`) if no one uses it",
                meta.uid(),
                sh(&self.root)
            )));
        }
        if mode & 0o022 != 0 {
            let who = if mode & 0o002 != 0 { "others" } else { "its group" };
            return Err(Error::StateDir(format!(
                "state dir {dir} is writable by {who} (mode {mode:04o}): `chmod 700 {}`",
                sh(&self.root)
            )));
        }
        // The dirs rmm keeps inside must be its own, not symlinks planted
        // while the dir was open (the store and the world are opened by
        // path, by sled and the driver).
        for sub in [self.events(), self.world()] {
            let Ok(meta) = fs::symlink_metadata(&sub) else { continue };
            let p = sub.display();
            if meta.file_type().is_symlink() {
                return Err(Error::StateDir(format!("{p} is a symlink; rmm never follows one inside its state dir: remove it (`rm {}`)", sh(&sub))));
            }
            if !meta.is_dir() || meta.uid() != me {
                return Err(Error::StateDir(format!(
                    "{p} is not a directory of yours (uid {}): another user may have planted it; remove it (`rm -rf {}`)",
                    meta.uid(),
                    sh(&sub)
                )));
            }
        }
        Ok(())
    }

    /// Removes temp files left by rmm processes that died between creating
    /// and renaming or removing them (`.probe.PID.*`, `secrets.json.tmp.PID.*`):
    /// only those whose process is gone. Called by the lock's holder.
    fn sweep_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(".probe.").or_else(|| name.strip_prefix("secrets.json.tmp.")) else { continue };
            let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let alive = pid == std::process::id() as i32
                || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
                || Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Takes the writer's lock, or names the pid that holds it.
    ///
    /// The lock file is created with `O_EXCL`, and opened with
    /// `O_NOFOLLOW`: a symlink (or a hard link, or a file of another user)
    /// planted at its path is refused, never written through.
    pub fn lock(&self) -> Result<Lock> {
        self.check_private()?;
        let path = self.lock_path();
        let opened = match create_private_rw(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_NOFOLLOW).open(&path)
            }
            other => other,
        };
        let mut file = opened.map_err(|e| Error::StateDir(refusal(&path, e)))?;
        check_own_file(&file, &path)?;
        match try_past_stragglers(&mut file, |f| f.try_lock()) {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = holder_pid(&mut file);
                return Err(Error::Busy(format!(
                    "state dir {} is in use by another rmm (pid {}); wait for it or stop it",
                    self.root.display(),
                    pid.as_deref().unwrap_or("unknown")
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::StateDir(format!("cannot lock {}: {e}", path.display())))
            }
        }
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.sync_all();
        self.sweep_stale_temps();
        Ok(Lock { _file: file })
    }

    /// Whether another process holds the writer's lock now (a symlink at
    /// the lock's path is not followed: then no one holds it).
    pub fn locked_by_other(&self) -> Option<String> {
        let mut file = OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(self.lock_path()).ok()?;
        match try_past_stragglers(&mut file, |f| f.try_lock_shared()) {
            Ok(()) => None,
            Err(_) => {
                let mut pid = String::new();
                let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut pid));
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
                Err(OpenError::Other(e)) => {
                    // sled writes as it opens: a full disk is named with the
                    // store's path and the free space, like a failed append.
                    let text = e.to_string();
                    if text.contains("os error 28") {
                        let free = crate::engine::free_bytes(&self.events())
                            .map(|b| format!(" ({} free)", crate::engine::human_bytes(b)))
                            .unwrap_or_default();
                        return Err(Error::StateDir(format!(
                            "cannot open the event log {}: No space left on device{free}; nothing was recorded. Free space, then run the command again",
                            self.events().display()
                        )));
                    }
                    return Err(e.into());
                }
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
                return Err(self.no_run());
            }
            return Err(Error::Log(format!(
                "the event log {} is missing, but the state dir still holds {}: the log was deleted or moved; restore it from a backup",
                self.events().display(),
                others.join(" and ")
            )));
        }
        Ok(SledLog::open_snapshot_with_cache(&self.events(), Some(rmm_events::READER_CACHE_BYTES))?)
    }

    /// A log lost beside other state (secrets, the local world): exit 5,
    /// the same line `log` gives, with `then` (the way on for the caller's
    /// command) after it. `Ok` when the log is there or nothing else is.
    pub fn check_log_not_lost(&self, then: &str) -> Result<()> {
        if self.events().join("db").exists() || fs::symlink_metadata(self.events()).is_ok() {
            return Ok(());
        }
        // A planted symlink is no proof of a run (it is refused on its own
        // further on).
        let real = [self.secrets(), self.world()]
            .into_iter()
            .any(|p| fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink()));
        let others = self.state_besides_the_log();
        if !real || others.is_empty() {
            return Ok(());
        }
        Err(Error::Log(format!(
            "the event log {} is missing, but the state dir still holds {}: the log was deleted or moved; restore it from a backup{then}",
            self.events().display(),
            others.join(" and ")
        )))
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

/// The pid written in the lock file by its holder. The holder writes it
/// just after taking the lock, so a process that lost the race for it by
/// microseconds may find the file still empty: it polls for the pid a
/// little while (a holder that never writes it stays `None`).
/// `lock` on the lock file; when it is held but the pid written in it is
/// dead, tries again for up to 2 s. The writer's lock is an `flock` on
/// the open file: a child the writer was starting (forked, not yet at its
/// `exec`, which closes the descriptor) holds it for a moment after the
/// writer itself is gone, e.g. killed or aborted mid-`spawn`. Seen on a
/// loaded machine: `rmm status` said `running` right after a crash.
fn try_past_stragglers(file: &mut File, lock: impl Fn(&File) -> Result<(), fs::TryLockError>) -> Result<(), fs::TryLockError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match lock(file) {
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline && holder_dead(file) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Whether the pid written in the lock file names no process (`kill(pid,
/// 0)` is ESRCH). An unreadable or empty file (a writer between its lock
/// and its write) counts as alive.
fn holder_dead(file: &mut File) -> bool {
    let mut pid = String::new();
    let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut pid));
    match pid.trim().parse::<i32>() {
        Ok(p) if p > 0 => nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None) == Err(nix::errno::Errno::ESRCH),
        _ => false,
    }
}

fn holder_pid(file: &mut File) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut pid = String::new();
        let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut pid));
        let pid = pid.trim();
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return Some(pid.to_string());
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A name no other process uses at the same time: `{prefix}.{pid}.{random}`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}.{}.{:016x}", std::process::id(), rand::random::<u64>())
}

/// Creates a new file, write-only, mode 0600 from the start, with
/// `O_EXCL | O_NOFOLLOW`: it fails if anything (a file, a symlink) is
/// already at `path`, so nothing planted there is ever written through.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

fn create_private_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// Opens an existing file for reading without following a symlink at
/// `path` (`ELOOP` then).
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// The message for a file of the state dir that cannot be opened: a
/// symlink (`ELOOP` from `O_NOFOLLOW`) is named as such.
pub fn refusal(path: &Path, e: std::io::Error) -> String {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        format!("{} is a symlink; rmm never follows one inside its state dir: remove it (`rm {}`)", path.display(), sh(path))
    } else {
        format!("cannot open {}: {e}", path.display())
    }
}

/// An opened file of the state dir must be a regular file of ours with no
/// other name (a hard link planted to a file outside would be written
/// through) and no access for group or others.
pub fn check_own_file(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|e| Error::StateDir(format!("cannot read {}: {e}", path.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    let p = path.display();
    if !meta.is_file() {
        return Err(Error::StateDir(format!("{p} is not a regular file: remove it")));
    }
    if meta.uid() != me {
        return Err(Error::StateDir(format!("{p} is owned by uid {}, not by you (uid {me}): remove it (`rm {}`)", meta.uid(), sh(path))));
    }
    if meta.nlink() != 1 {
        return Err(Error::StateDir(format!("{p} has {} hard links (one may point outside the state dir): remove it (`rm {}`)", meta.nlink(), sh(path))));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::StateDir(format!("{p} is open to group or others (mode {mode:04o}): `chmod 600 {}`", sh(path))));
    }
    Ok(())
}

/// `path` as a shell word, for the commands the messages suggest.
fn sh(path: &Path) -> String {
    shell_words::quote(&path.to_string_lossy()).into_owned()
}
