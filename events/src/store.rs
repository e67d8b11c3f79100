//! The event store: sled 0.34.7 behind our own type, so it can be replaced.
//!
//! Keys are big-endian sequence numbers in the `events` tree; a value is the
//! encoded envelope (see `codec`) followed by its 32-byte chain hash.
//!
//! # Durability: a write-ahead file in front of sled
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither flushes
//! the disk's cache nor commits file metadata: a record "flushed" that way can
//! vanish in a power cut. So an append first goes to `journal.wal` in the
//! store's directory — frames of `[len u32][crc32 u32][value]`, one `write`
//! and one `fdatasync` per batch (group commit: everything the journal
//! thread has waiting shares that sync) — and only then into sled, without
//! a flush. Every [`CHECKPOINT_EVERY`] records (and when the store is closed)
//! sled is flushed *and* its data file `fdatasync`ed, after which the
//! write-ahead file is emptied. Opening the store replays the frames sled
//! does not have yet.
//!
//! A frame cut short at the end of the file — a crash while writing it — is
//! a torn tail, not tampering: it is dropped and the log continues from the
//! last whole record. A bad frame anywhere else is corruption and refused.
//!
//! # One writer
//! sled locks its files: a second process opening the same store fails at
//! once. Readers that run beside a writer use [`SledLog::open_snapshot`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::envelope::{chain_hash, Hash, Record, GENESIS};
use crate::{codec, Envelope, Error, Result};

const TREE: &str = "events";
pub(crate) const WAL: &str = "journal.wal";
/// The page cache readers ask for (see [`SledLog::open_with_cache`]).
pub const READER_CACHE_BYTES: u64 = 4 << 20;
/// Records between checkpoints (sled flush + fdatasync, then the
/// write-ahead file is emptied).
pub const CHECKPOINT_EVERY: u64 = 4096;

/// The append-only, hash-chained, durable event log.
pub struct SledLog {
    /// Set by a failed append: the write-ahead file may end in a half-written
    /// batch, so nothing more may be appended after it (the process stops;
    /// reopening drops the torn tail).
    poisoned: bool,
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    /// The write-ahead file (append-only between checkpoints).
    wal: File,
    /// Records in the write-ahead file not yet checkpointed into sled's file.
    unflushed: u64,
    /// `fdatasync` calls made, for tests of the durability contract.
    syncs: u64,
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
        Self::open_with_cache(dir, None)
    }

    /// [`SledLog::open`] with sled's page cache bounded to `cache_bytes`
    /// (`None`: sled's default, 1 GiB). Readers pass [`READER_CACHE_BYTES`]:
    /// a scan reads every page once, in key order, so a large cache only
    /// grows the process (a scan of a million records: ~315 MB resident,
    /// against ~70 MB with 4 MiB; measured in BENCHMARKS.md) without
    /// saving a read.
    pub fn open_with_cache(dir: &Path, cache_bytes: Option<u64>) -> Result<SledLog, OpenError> {
        // No background flusher: every append flushes and syncs itself, and
        // without that thread the store is closed as soon as it is dropped.
        let db = config(dir, cache_bytes).open().map_err(|e| match e {
            // sled reports its file lock as an Io error whose text names it.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") =>
            {
                OpenError::Locked
            }
            other => OpenError::Other(Error::Store(other.to_string())),
        })?;
        Self::from_db(db, dir, None, true).map_err(OpenError::Other)
    }

    /// Opens a private copy of a store that another process may be writing,
    /// for readers (`status`, `log`) that must not take the writer's lock.
    /// The copy is as of now; sled recovers its torn tail, if any, like after
    /// a crash.
    pub fn open_snapshot(dir: &Path) -> Result<SledLog> {
        Self::open_snapshot_with_cache(dir, None)
    }

    /// [`SledLog::open_snapshot`] with the page cache bounded as in
    /// [`SledLog::open_with_cache`].
    pub fn open_snapshot_with_cache(dir: &Path, cache_bytes: Option<u64>) -> Result<SledLog> {
        let snap = SnapshotDir::copy_of(dir)?;
        let db = config(&snap.0, cache_bytes).open().map_err(|e| Error::Store(e.to_string()))?;
        let path = snap.0.clone();
        Self::from_db(db, &path, Some(snap), false)
    }

    fn from_db(db: sled::Db, dir: &Path, snapshot: Option<SnapshotDir>, writer: bool) -> Result<SledLog> {
        let tree = db.open_tree(TREE).map_err(store_err)?;
        let data_file = File::open(dir.join("db")).map_err(|e| Error::Store(format!("open sled data file: {e}")))?;
        let wal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(dir.join(WAL))
            .map_err(|e| Error::Store(format!("open {WAL}: {e}")))?;
        if writer {
            // The files sled and we may just have created must survive too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::Store(format!("fsync {}: {e}", dir.display())))?;
        }
        let (last_seq, head) = match tree.last().map_err(store_err)? {
            None => (0, GENESIS),
            Some((k, v)) => {
                let seq = key_seq(&k)?;
                let (_, hash) = split_value(seq, &v)?;
                (seq, hash)
            }
        };
        let mut log = SledLog {
            poisoned: false,
            db,
            tree,
            data_file,
            wal,
            unflushed: 0,
            syncs: 0,
            last_seq,
            head,
            _snapshot: snapshot,
        };
        log.recover(writer)?;
        Ok(log)
    }

    /// Replays the write-ahead frames sled does not have, drops a torn last
    /// frame, and (for the writer) checkpoints.
    fn recover(&mut self, writer: bool) -> Result<()> {
        let mut bytes = Vec::new();
        (&self.wal).seek(SeekFrom::Start(0)).map_err(|e| Error::Store(format!("read {WAL}: {e}")))?;
        (&self.wal).read_to_end(&mut bytes).map_err(|e| Error::Store(format!("read {WAL}: {e}")))?;
        let frames = wal_frames(&bytes)?;
        let mut batch = sled::Batch::default();
        let mut replayed = 0u64;
        for value in frames.values {
            let (body, hash) = split_value(0, value)?;
            let seq = codec::decode(body)?.seq;
            if seq <= self.last_seq {
                continue; // already in sled
            }
            if seq != self.last_seq + 1 {
                return Err(Error::Corrupt {
                    seq: Some(self.last_seq + 1),
                    reason: format!("record missing (the write-ahead file continues at seq {seq})"),
                });
            }
            batch.insert(&seq.to_be_bytes(), value);
            self.last_seq = seq;
            self.head = hash;
            replayed += 1;
        }
        self.tree.apply_batch(batch).map_err(store_err)?;
        if frames.torn_at.is_some() || replayed > 0 {
            self.unflushed = replayed;
            if writer {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// Makes sled's own file durable (flush + `fdatasync`) and empties the
    /// write-ahead file, whose records sled now holds.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.db.flush().map_err(store_err)?;
        self.data_file.sync_data().map_err(|e| Error::Store(format!("fdatasync: {e}")))?;
        self.wal.set_len(0).map_err(|e| Error::Store(format!("truncate {WAL}: {e}")))?;
        self.wal.sync_all().map_err(|e| Error::Store(format!("fsync {WAL}: {e}")))?;
        self.syncs += 2;
        self.unflushed = 0;
        Ok(())
    }

    /// `fdatasync` calls so far (the durability contract, made observable).
    pub fn syncs(&self) -> u64 {
        self.syncs
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
    /// When this returns `Ok`, every record is on disk (written to the
    /// write-ahead file and `fdatasync`ed: one sync for the whole batch) and
    /// the chain continues from the previous head.
    /// # Caveats
    /// On `Err` the log may or may not contain a prefix of the batch; the
    /// caller must stop (the recovery path is `up --resume`, which re-reads
    /// the log).
    pub fn append_batch(&mut self, envelopes: Vec<Envelope>) -> Result<Vec<Record>> {
        if self.poisoned {
            return Err(Error::Store("an earlier append failed; reopen the store".into()));
        }
        let result = self.append_batch_inner(envelopes);
        self.poisoned = result.is_err();
        result
    }

    fn append_batch_inner(&mut self, envelopes: Vec<Envelope>) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(envelopes.len());
        let mut batch = sled::Batch::default();
        let mut frames = Vec::new();
        let (mut seq, mut head) = (self.last_seq, self.head);
        for mut envelope in envelopes {
            seq += 1;
            envelope.seq = seq;
            let body = codec::encode(&envelope);
            head = chain_hash(&head, &body);
            let mut value = body;
            value.extend_from_slice(&head);
            push_frame(&mut frames, &value);
            batch.insert(&seq.to_be_bytes(), value);
            out.push(Record { envelope, hash: head });
        }
        self.wal.write_all(&wal_write(&frames)).map_err(|e| Error::Store(format!("write {WAL}: {e}")))?;
        self.wal.sync_data().map_err(|e| Error::Store(format!("fdatasync {WAL}: {e}")))?;
        self.syncs += 1;
        self.tree.apply_batch(batch).map_err(store_err)?;
        self.unflushed += out.len() as u64;
        self.last_seq = seq;
        self.head = head;
        if self.unflushed >= CHECKPOINT_EVERY {
            self.checkpoint()?;
        }
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
            iter: Source::Sled(self.tree.iter()),
            expect_seq: 1,
            prev: GENESIS,
            from_seq,
            failed: false,
        }
    }

    /// Streams the records after `seq`, checking them as [`SledLog::scan`]
    /// does but continuing a chain already checked up to `seq`, whose hash
    /// is `prev` (`0, GENESIS` for the whole log). Costs only the records
    /// read: a follower that has verified the log up to `seq` does not read
    /// it again.
    pub fn scan_after(&self, seq: u64, prev: Hash) -> Scan {
        Scan {
            iter: Source::Sled(self.tree.range((seq + 1).to_be_bytes()..)),
            expect_seq: seq + 1,
            prev,
            from_seq: 0,
            failed: false,
        }
    }

    /// [`SledLog::scan`] with sled's own reading on a thread of its own,
    /// up to [`READ_AHEAD`] batches of records ahead of the checking.
    /// sled's iteration is most of the cost of a scan (~1.3 µs a record on
    /// a million, see BENCHMARKS.md); this way it overlaps with the chain
    /// check, the decoding and whatever the caller does with each record.
    /// Same records, same checks, same errors. Costs one thread and at most
    /// `READ_AHEAD` batches of values in memory; the thread ends when the
    /// scan is dropped.
    pub fn scan_read_ahead(&self, from_seq: u64) -> Scan {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let tree = self.tree.clone();
        let reader = std::thread::Builder::new().name("rmm-read-ahead".into()).spawn(move || {
            let mut batch = Vec::with_capacity(READ_AHEAD_BATCH);
            for item in tree.iter() {
                let failed = item.is_err();
                batch.push(item);
                if batch.len() == READ_AHEAD_BATCH || failed {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_AHEAD_BATCH));
                    if failed || tx.send(full).is_err() {
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
        });
        let iter = match reader {
            Ok(_) => Source::ReadAhead { rx, batch: Vec::new().into_iter() },
            // No thread to be had: read in line.
            Err(_) => Source::Sled(self.tree.iter()),
        };
        Scan { iter, expect_seq: 1, prev: GENESIS, from_seq, failed: false }
    }

    /// Reads the raw stored bytes of a record, for export and tests.
    pub fn raw(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(seq.to_be_bytes()).map_err(store_err)?.map(|v| v.to_vec()))
    }

    /// Overwrites the raw bytes of a record. Only for tamper tests and
    /// crash drills: it breaks the chain on purpose.
    #[doc(hidden)]
    pub fn tamper(&mut self, seq: u64, raw: Option<Vec<u8>>) -> Result<()> {
        self.checkpoint()?;
        match raw {
            Some(v) => self.tree.insert(seq.to_be_bytes(), v).map(drop),
            None => self.tree.remove(seq.to_be_bytes()).map(drop),
        }
        .map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        Ok(())
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        // A clean close leaves sled's file complete and the write-ahead
        // file empty (best effort: the write-ahead file stays the truth).
        if self._snapshot.is_none() && self.unflushed > 0 {
            let _ = self.checkpoint();
        }
    }
}

fn push_frame(out: &mut Vec<u8>, value: &[u8]) {
    let len = u32::try_from(value.len()).expect("a record is far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    out.extend_from_slice(value);
}

struct Frames<'a> {
    values: Vec<&'a [u8]>,
    /// Offset of a torn last frame, if the file ends inside one.
    torn_at: Option<usize>,
}

/// Marks the start of one write (one batch) in the write-ahead file.
const WRITE_MAGIC: u32 = 0x524d_4d57; // "RMMW"

/// One write of the write-ahead file: `[magic][len][crc32 of the frames]`
/// then the frames (`[len][crc32][value]` each). The write-level checksum
/// is what tells a torn tail from damage: a crash can tear only the last
/// write — in any of its pages, not just at its end — and a torn write
/// never checks out, while any *whole* write after damage proves the damage
/// is not a tear.
fn wal_write(frames: &[u8]) -> Vec<u8> {
    let len = u32::try_from(frames.len()).expect("a batch is far below 4 GiB");
    let mut out = Vec::with_capacity(12 + frames.len());
    out.extend_from_slice(&WRITE_MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(frames).to_le_bytes());
    out.extend_from_slice(frames);
    out
}

/// The frame values of a whole, checksummed write starting at `at`, and
/// where the next write starts.
pub(crate) fn write_at(bytes: &[u8], at: usize) -> Option<(Vec<&[u8]>, usize)> {
    let rest = bytes.get(at..)?;
    let word = |i: usize| rest.get(i..i + 4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")));
    if word(0)? != WRITE_MAGIC {
        return None;
    }
    let len = word(4)? as usize;
    let frames = rest.get(12..12usize.checked_add(len)?)?;
    if crc32fast::hash(frames) != word(8)? {
        return None;
    }
    let mut values = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let value = frame_at(frames, i)?;
        i += 8 + value.len();
        values.push(value);
    }
    Some((values, at + 12 + len))
}

/// Splits the write-ahead file into frames. A write that does not check out
/// with no whole write after it is a torn tail (a crash inside the last
/// write); one with a whole write after it is corruption.
fn wal_frames(bytes: &[u8]) -> Result<Frames<'_>> {
    let mut values = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match write_at(bytes, at) {
            Some((frames, next)) => {
                values.extend(frames);
                at = next;
            }
            None => {
                if (at + 1..bytes.len()).any(|j| write_at(bytes, j).is_some()) {
                    return Err(Error::Corrupt {
                        seq: None,
                        reason: format!("write-ahead file damaged at byte {at}, with whole records after the damage"),
                    });
                }
                return Ok(Frames { values, torn_at: Some(at) });
            }
        }
    }
    Ok(Frames { values, torn_at: None })
}

/// The value of a whole, checksummed frame starting at `at`.
fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let rest = bytes.get(at..)?;
    let len = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
    let value = rest.get(8..8usize.checked_add(len)?)?;
    (len >= 33 && crc32fast::hash(value) == crc).then_some(value)
}

/// Batches [`SledLog::scan_read_ahead`] keeps ready, and their size.
pub const READ_AHEAD: usize = 8;
const READ_AHEAD_BATCH: usize = 1024;

type Item = sled::Result<(sled::IVec, sled::IVec)>;

/// Where a [`Scan`] gets its records from. One per scan: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    Sled(sled::Iter),
    /// Batches read by a thread of their own ([`SledLog::scan_read_ahead`]).
    ReadAhead { rx: std::sync::mpsc::Receiver<Vec<Item>>, batch: std::vec::IntoIter<Item> },
}

impl Iterator for Source {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        match self {
            Source::Sled(iter) => iter.next(),
            Source::ReadAhead { rx, batch } => loop {
                if let Some(item) = batch.next() {
                    return Some(item);
                }
                *batch = rx.recv().ok()?.into_iter();
            },
        }
    }
}

/// Iterator of [`SledLog::scan`].
pub struct Scan {
    iter: Source,
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
    fn check(&mut self, item: Item) -> Result<Record> {
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

pub(crate) fn split_value(seq: u64, v: &[u8]) -> Result<(&[u8], Hash)> {
    if v.len() < 33 {
        return Err(Error::Corrupt { seq: Some(seq), reason: "record too short".into() });
    }
    let (body, hash) = v.split_at(v.len() - 32);
    Ok((body, hash.try_into().expect("split_at leaves 32 bytes")))
}

fn config(path: &Path, cache_bytes: Option<u64>) -> sled::Config {
    let config = sled::Config::new().path(path).flush_every_ms(None);
    match cache_bytes {
        Some(bytes) => config.cache_capacity(bytes),
        None => config,
    }
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
        // Owner-only, like the state dir it copies.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&base)
            .map_err(|e| Error::Store(format!("copy store for reading: {e}")))?;
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
