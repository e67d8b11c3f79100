//! Errors of the pure core and the store.

/// Storage and decoding failures. These stop a run: the recovery path is
/// `rmm up --resume`, never carrying on with a log we cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record written by a newer rmm. Upgrade rmm to read this log.
    #[error("record format version {found} is newer than this rmm understands (max {max}); upgrade rmm", max = crate::codec::FORMAT_VERSION)]
    UnknownVersion { found: u8 },
    /// A record does not decode, or the chain does not match.
    #[error("{}{reason}", seq.map(|s| format!("seq {s}: ")).unwrap_or_default())]
    Corrupt { seq: Option<u64>, reason: String },
    /// The underlying store failed (disk full, I/O error).
    #[error("event store: {0}")]
    Store(String),
    /// The store cannot be trusted, for a reason the message says whole:
    /// its tail was cut (it ends before its head anchor), or sled found
    /// its data file damaged. Exit 5, like `Corrupt`.
    #[error("{0}")]
    Untrusted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
