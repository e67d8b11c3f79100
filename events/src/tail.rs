//! Reading what another process appends, without opening its store.
//!
//! sled locks its files, so a reader beside a running `rmm up` can only open
//! a copy of the store ([`SledLog::open_snapshot`](crate::SledLog::open_snapshot)),
//! which costs a copy of the whole store each time. But every append goes
//! first to the store's write-ahead file (see `store`), and that file holds
//! every record since the last checkpoint. [`WalTail`] reads it: given the
//! last record a reader has checked (its seq and chain hash), it returns the
//! records after it, each checked against the chain.
//!
//! # Cost
//! One read of the write-ahead file per call: at most [`CHECKPOINT_EVERY`]
//! records (~0.6 MB), usually a few kB, whatever the size of the log.
//!
//! # Caveats
//! A checkpoint empties the file. Records the reader had not seen by then
//! are only in sled: [`Tail::Lost`] says so, and the reader must go back to
//! the store (a fresh private copy: readers never open the store itself)
//! from its last checked record ([`SledLog::scan_after`](crate::SledLog::scan_after)).
//! The file is read while the writer appends to (and may empty) it, so a
//! frame cut short or torn is read as "not yet written": nothing is
//! concluded from it, and the next call reads it whole.
//!
//! [`CHECKPOINT_EVERY`]: crate::store::CHECKPOINT_EVERY

use std::path::{Path, PathBuf};

use crate::envelope::{chain_hash, Hash, Record};
use crate::store::{split_value, write_at, WAL};
use crate::{codec, Error, Result};

/// Reads the write-ahead file of the store in a directory.
#[derive(Debug, Clone)]
pub struct WalTail {
    path: PathBuf,
}

/// What the write-ahead file holds after a given record.
#[derive(Debug)]
pub enum Tail {
    /// These records follow it, in order, each checked against the chain
    /// (possibly none: nothing new since).
    Records(Vec<Record>),
    /// The file does not continue from that record: a checkpoint took
    /// records the reader has not seen into sled. Read them from the store.
    Lost,
}

impl WalTail {
    /// The write-ahead file of the store in `store_dir`.
    pub fn new(store_dir: &Path) -> WalTail {
        WalTail { path: store_dir.join(WAL) }
    }

    /// The records after the one with sequence number `seq` and chain hash
    /// `hash` (`0`, `GENESIS` for an empty log).
    ///
    /// An empty file is `Records([])`: it cannot tell a checkpoint that took
    /// unseen records from no news, so callers that care (a follower) also
    /// watch the store itself (see `rmm log --follow`).
    pub fn after(&self, seq: u64, hash: &Hash) -> Result<Tail> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::Records(Vec::new())),
            Err(e) => return Err(Error::Store(format!("read {WAL}: {e}"))),
        };
        // The frames of whole writes, up to the first that is not (yet) whole.
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some((values, next)) = write_at(&bytes, at) {
            frames.extend(values);
            at = next;
        }
        if frames.is_empty() {
            return Ok(Tail::Records(Vec::new()));
        }
        // Where the reader stands: its last record is in the file, or the
        // file starts right after it.
        let start = match frames.iter().position(|v| v.ends_with(hash)) {
            Some(i) => i + 1,
            None => {
                let (body, stored) = split_value(seq + 1, frames[0])?;
                if chain_hash(hash, body) != stored {
                    return Ok(Tail::Lost);
                }
                0
            }
        };
        let mut out = Vec::with_capacity(frames.len() - start);
        let (mut prev, mut expect) = (*hash, seq + 1);
        for value in &frames[start..] {
            let (body, stored) = split_value(expect, value)?;
            if chain_hash(&prev, body) != stored {
                // Read while the writer emptied and refilled the file: the
                // frames that follow are not the ones after ours.
                return Ok(if out.is_empty() { Tail::Lost } else { Tail::Records(out) });
            }
            let envelope = codec::decode(body).map_err(|e| match e {
                Error::Corrupt { reason, .. } => Error::Corrupt { seq: Some(expect), reason },
                other => other,
            })?;
            if envelope.seq != expect {
                return Err(Error::Corrupt {
                    seq: Some(expect),
                    reason: format!("record claims seq {} but follows seq {}", envelope.seq, expect - 1),
                });
            }
            out.push(Record { envelope, hash: stored });
            prev = stored;
            expect += 1;
        }
        Ok(Tail::Records(out))
    }
}
