//! The envelope every event travels in, and the hash chain over them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Event;

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Global, gap-free position in the log, starting at 1.
    pub seq: u64,
    /// UUID v7 of this event.
    pub id: Uuid,
    /// The run this event belongs to (one `rmm up` or `rmm down` and its resumes).
    pub run: Uuid,
    /// 1 for the first process working on the run, +1 per resume.
    pub attempt: u32,
    /// `coordinator`, `rancher`, `master01`, … `worker03`.
    pub actor: String,
    /// The event that made this one happen (the message an actor handled
    /// carries that event's id). `None` only for a run's first events.
    pub cause: Option<Uuid>,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub event: Event,
}

/// SHA-256 of the previous record's hash followed by this record's bytes.
pub type Hash = [u8; 32];

/// The hash before the first record.
pub const GENESIS: Hash = [0u8; 32];

/// `H(prev ‖ encoded)`: any edit, loss or reordering of history changes
/// every later hash.
pub fn chain_hash(prev: &Hash, encoded: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(encoded);
    h.finalize().into()
}

/// An envelope as stored: decoded, with its chain hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub envelope: Envelope,
    pub hash: Hash,
}

impl Envelope {
    /// RFC 3339 with milliseconds, UTC.
    pub fn at_rfc3339(&self) -> String {
        rfc3339_ms(self.at_ms)
    }
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339_ms(at_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
