//! The event store: sled 0.34.7 behind our own type, so it can be replaced.
//!
//! Keys are big-endian sequence numbers in the `events` tree; a value is the
//! encoded envelope (see `codec`) followed by its 32-byte chain hash.
//!
//! # Durability
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither flushes
//! the disk's cache nor commits file metadata: a record "flushed" that way can
//! vanish in a power cut. [`SledLog::append_batch`] therefore also calls
//! `fdatasync` on sled's data file (fsync is per inode, so our own handle on
//! the file syncs sled's writes too). Appends that arrive together share one
//! sync (group commit).
//!
//! # One writer
//! sled locks its files: a second process opening the same store fails at
//! once. Readers that run beside a writer use [`SledLog::open_snapshot`].

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::envelope::{chain_hash, Hash, Record, GENESIS};
use crate::{codec, Envelope, Error, Result};

const TREE: &str = "events";

/// The append-only, hash-chained, durable event log.
pub struct SledLog {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    /// Sequence number of the last record (0 when empty).
    last_seq: u64,
    /// Chain hash of the last record (`GENESIS` when empty).
    head: Hash,
    /// Kept alive while a snapshot copy is open; removed on drop.
    _snapshot: Option<SnapshotDir>,
}

/// Why the store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process has the store open.
    Locked,
    Other(Error),
}

impl SledLog {
    /// Opens (or creates) the store in `dir`, exclusively.
    pub fn open(dir: &Path) -> Result<SledLog, OpenError> {
        // No background flusher: every append flushes and syncs itself, and
        // without that thread the store is closed as soon as it is dropped.
        let db = sled::Config::new().path(dir).flush_every_ms(None).open().map_err(|e| match e {
            // sled reports its file lock as an Io error whose text names it.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") =>
            {
                OpenError::Locked
            }
            other => OpenError::Other(Error::Store(other.to_string())),
        })?;
        Self::from_db(db, dir, None).map_err(OpenError::Other)
    }

    /// Opens a private copy of a store that another process may be writing,
    /// for readers (`status`, `log`) that must not take the writer's lock.
    /// The copy is as of now; sled recovers its torn tail, if any, like after
    /// a crash.
    pub fn open_snapshot(dir: &Path) -> Result<SledLog> {
        let snap = SnapshotDir::copy_of(dir)?;
        let db = sled::Config::new()
            .path(&snap.0)
            .flush_every_ms(None)
            .open()
            .map_err(|e| Error::Store(e.to_string()))?;
        let path = snap.0.clone();
        Self::from_db(db, &path, Some(snap))
    }

    fn from_db(db: sled::Db, dir: &Path, snapshot: Option<SnapshotDir>) -> Result<SledLog> {
        let tree = db.open_tree(TREE).map_err(store_err)?;
        let data_file = File::open(dir.join("db")).map_err(|e| Error::Store(format!("open sled data file: {e}")))?;
        let (last_seq, head) = match tree.last().map_err(store_err)? {
            None => (0, GENESIS),
            Some((k, v)) => {
                let seq = key_seq(&k)?;
                let (_, hash) = split_value(seq, &v)?;
                (seq, hash)
            }
        };
        Ok(SledLog { db, tree, data_file, last_seq, head, _snapshot: snapshot })
    }

    /// Sequence number of the last record; 0 for an empty log.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Chain hash of the last record.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Appends envelopes in order, assigning their sequence numbers, and
    /// returns the stored records.
    ///
    /// # Guarantees
    /// When this returns `Ok`, every record is on disk (sled flush +
    /// `fdatasync`) and the chain continues from the previous head.
    /// # Caveats
    /// On `Err` the log may or may not contain a prefix of the batch; the
    /// caller must stop (the recovery path is `up --resume`, which re-reads
    /// the log).
    pub fn append_batch(&mut self, envelopes: Vec<Envelope>) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(envelopes.len());
        let mut batch = sled::Batch::default();
        let (mut seq, mut head) = (self.last_seq, self.head);
        for mut envelope in envelopes {
            seq += 1;
            envelope.seq = seq;
            let body = codec::encode(&envelope);
            head = chain_hash(&head, &body);
            let mut value = body;
            value.extend_from_slice(&head);
            batch.insert(&seq.to_be_bytes(), value);
            out.push(Record { envelope, hash: head });
        }
        self.tree.apply_batch(batch).map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        self.data_file
            .sync_data()
            .map_err(|e| Error::Store(format!("fdatasync: {e}")))?;
        self.last_seq = seq;
        self.head = head;
        Ok(out)
    }

    /// Appends one envelope; see [`SledLog::append_batch`].
    pub fn append(&mut self, envelope: Envelope) -> Result<Record> {
        Ok(self.append_batch(vec![envelope])?.remove(0))
    }

    /// Streams every record from `from_seq` on, checking as it goes that
    /// sequence numbers are contiguous, every record decodes, and the hash
    /// chain holds (from the start of the log: the chain needs the hash of
    /// the record before `from_seq`). Stops at the first bad record.
    pub fn scan(&self, from_seq: u64) -> Scan {
        Scan {
            iter: self.tree.iter(),
            expect_seq: 1,
            prev: GENESIS,
            from_seq,
            failed: false,
        }
    }

    /// Reads the raw stored bytes of a record, for export and tests.
    pub fn raw(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(seq.to_be_bytes()).map_err(store_err)?.map(|v| v.to_vec()))
    }

    /// Overwrites the raw bytes of a record. Only for tamper tests and
    /// crash drills: it breaks the chain on purpose.
    #[doc(hidden)]
    pub fn tamper(&mut self, seq: u64, raw: Option<Vec<u8>>) -> Result<()> {
        match raw {
            Some(v) => self.tree.insert(seq.to_be_bytes(), v).map(drop),
            None => self.tree.remove(seq.to_be_bytes()).map(drop),
        }
        .map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        Ok(())
    }
}

/// Iterator of [`SledLog::scan`].
pub struct Scan {
    iter: sled::Iter,
    expect_seq: u64,
    prev: Hash,
    from_seq: u64,
    failed: bool,
}

impl Iterator for Scan {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let item = self.iter.next()?;
            let result = self.check(item);
            match result {
                Ok(record) if record.envelope.seq < self.from_seq => continue,
                Ok(record) => return Some(Ok(record)),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Scan {
    fn check(&mut self, item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Record> {
        let (k, v) = item.map_err(store_err)?;
        let seq = key_seq(&k)?;
        let expect = self.expect_seq;
        if seq != expect {
            return Err(Error::Corrupt {
                seq: Some(expect),
                reason: if seq > expect {
                    format!("record missing (next stored record is seq {seq})")
                } else {
                    format!("record out of order (found seq {seq})")
                },
            });
        }
        let (body, hash) = split_value(seq, &v)?;
        if chain_hash(&self.prev, body) != hash {
            return Err(Error::Corrupt {
                seq: Some(seq),
                reason: "hash chain broken: the record or one before it was altered, removed or reordered".into(),
            });
        }
        let envelope = codec::decode(body).map_err(|e| match e {
            Error::Corrupt { reason, .. } => Error::Corrupt { seq: Some(seq), reason },
            other => other,
        })?;
        if envelope.seq != seq {
            return Err(Error::Corrupt {
                seq: Some(seq),
                reason: format!("record claims seq {} but is stored at {seq}", envelope.seq),
            });
        }
        self.expect_seq += 1;
        self.prev = hash;
        Ok(Record { envelope, hash })
    }
}

fn key_seq(k: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| Error::Corrupt {
        seq: None,
        reason: format!("bad key of {} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn split_value(seq: u64, v: &[u8]) -> Result<(&[u8], Hash)> {
    if v.len() < 33 {
        return Err(Error::Corrupt { seq: Some(seq), reason: "record too short".into() });
    }
    let (body, hash) = v.split_at(v.len() - 32);
    Ok((body, hash.try_into().expect("split_at leaves 32 bytes")))
}

fn store_err(e: sled::Error) -> Error {
    Error::Store(e.to_string())
}

/// A temporary copy of a store directory, removed on drop.
struct SnapshotDir(PathBuf);

impl SnapshotDir {
    fn copy_of(dir: &Path) -> Result<SnapshotDir> {
        let base = std::env::temp_dir().join(format!(
            "rmm-read-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        copy_dir(dir, &base).map_err(|e| Error::Store(format!("copy store for reading: {e}")))?;
        Ok(SnapshotDir(base))
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
