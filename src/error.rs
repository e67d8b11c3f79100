//! `rmm::Error`: every failure a user can hit, with its exit code. Printed
//! as one line on stderr by `main`.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success |
//! | 1    | the run failed (a step failed for good); fix the cause, then `rmm up --resume` |
//! | 2    | usage or configuration error (bad flag, bad `rmm.toml`, unwritable state dir) |
//! | 3    | refused by the run state (an unfinished run exists; nothing to resume) |
//! | 4    | the state dir is in use by another rmm process (its pid is named) |
//! | 5    | the event log fails verification or cannot be read (the first bad seq is named) |
//! | 130  | interrupted (Ctrl-C / SIGTERM); `rmm up --resume` continues |
//!
//! Also exit 2 (`Error::StateDir`, or `cli::finish`): a state dir owned by
//! another user or writable by group or others (the line gives the
//! `chmod`); a symlink, hard link or foreign file at the lock or
//! `secrets.json`; secrets the log records as stored but lost from
//! `secrets.json` (`up --resume` names them; `rmm down` still works); a
//! failed write to stdout (`rmm: cannot write to stdout: …`) or to stderr
//! (silent). A closed stdout pipe is not an error: quiet, exit 0.

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step failed for good; the log has the cause.
    #[error("{0}")]
    RunFailed(String),
    /// Bad flags, `rmm.toml` keys or values.
    #[error("{0}")]
    Config(String),
    /// The state dir cannot be created or written.
    #[error("{0}")]
    StateDir(String),
    /// The log's runs do not allow this command now.
    #[error("{0}")]
    Refused(String),
    /// Another rmm holds the state dir.
    #[error("{0}")]
    Busy(String),
    /// The log does not verify or decode.
    #[error("{0}")]
    Log(String),
    /// Stopped by a signal; resumable.
    #[error("{0}")]
    Interrupted(String),
    /// Anything else (I/O while reading the world, the driver failing at
    /// `status --refresh` …).
    #[error("{0}")]
    Other(String),
    /// `rmm plan` found changes: exit 2 with nothing more said (the plan
    /// is on stdout), as `terraform plan -detailed-exitcode`.
    #[error("")]
    PlanChanges,
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Error::RunFailed(_) | Error::Other(_) => 1,
            Error::Config(_) | Error::StateDir(_) | Error::PlanChanges => 2,
            Error::Refused(_) => 3,
            Error::Busy(_) => 4,
            Error::Log(_) => 5,
            Error::Interrupted(_) => 130,
        })
    }
}

impl From<rmm_events::Error> for Error {
    fn from(e: rmm_events::Error) -> Self {
        match e {
            rmm_events::Error::Store(s) => Error::StateDir(format!("event store: {s}")),
            other => Error::Log(format!("the event log does not verify: {other}")),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
