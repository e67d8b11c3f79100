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
//! # The head anchor
//! A hash chain cannot see its own last records go missing. So the writer
//! also keeps the head of the log (seq + chain hash) in a file of its own,
//! `head` beside the write-ahead file: two fixed-size slots in different
//! sectors, each `[magic][seq][hash][crc32]`, written in turn with `pwrite`
//! (no rename, no new inode) *after* the write-ahead file's `fdatasync`, so
//! the anchor is never ahead of what is durable: a crash between the two
//! leaves it behind (allowed), a torn slot leaves the other one. Opening a
//! log that ends before its anchor, or whose record at the anchor's seq
//! has another hash, is refused as tampering ([`Error::Untrusted`]).
//! See [`ANCHOR_SYNC_EACH`] for when the anchor itself is synced.
//!
//! # One writer, readers that never write
//! sled locks its files: a second process opening the same store fails at
//! once, and sled writes to its files on every open (recovery, its config,
//! snapshots). So readers never open the store itself: they open a private
//! copy ([`SledLog::open_snapshot`]) in the temp dir, which is removed when
//! they close it, and by the next reader if they were killed first.

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
    /// The store directory as the user knows it (not the reader's copy),
    /// for messages.
    origin: PathBuf,
    /// The head anchor file (`head`), open for writing: the writer only.
    anchor: Option<File>,
    /// Head anchor writes made, which picks the slot of the next one.
    anchor_writes: u64,
    /// Bytes of a torn last write in the write-ahead file, dropped on open.
    torn_tail: Option<u64>,
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
        remove_unfinished_snapshots(dir);
        // No background flusher: every append flushes and syncs itself, and
        // without that thread the store is closed as soon as it is dropped.
        let db = quietly(dir, || config(dir, cache_bytes).open()).map_err(OpenError::Other)?.map_err(|e| match e {
            // sled reports its file lock as an Io error whose text names it.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") =>
            {
                OpenError::Locked
            }
            other => OpenError::Other(sled_err(dir, other)),
        })?;
        quietly(dir, || Self::from_db(db, dir, None, true, dir)).and_then(|r| r).map_err(OpenError::Other)
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
    ///
    /// Never changes a byte of `dir`: the copy is made by reading, and
    /// sled opens (and recovers, and checkpoints) only the copy.
    pub fn open_snapshot_with_cache(dir: &Path, cache_bytes: Option<u64>) -> Result<SledLog> {
        let snap = SnapshotDir::copy_of(dir)?;
        let path = snap.store();
        let db = quietly(dir, || config(&path, cache_bytes).open())?.map_err(|e| sled_err(dir, e))?;
        let mut log = quietly(dir, || Self::from_db(db, &path, Some(snap), false, dir))??;
        log.origin = dir.to_path_buf();
        Ok(log)
    }

    fn from_db(db: sled::Db, dir: &Path, snapshot: Option<SnapshotDir>, writer: bool, origin: &Path) -> Result<SledLog> {
        let tree = db.open_tree(TREE).map_err(|e| sled_err(origin, e))?;
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
        let (last_seq, head) = match tree.last().map_err(|e| sled_err(origin, e))? {
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
            origin: origin.to_path_buf(),
            anchor: None,
            anchor_writes: 0,
            torn_tail: None,
        };
        let due = log.recover()?;
        let anchored = read_anchor(&dir.join(HEAD))?;
        log.check_anchor(anchored)?;
        if writer && due {
            log.checkpoint()?;
        }
        if writer {
            log.anchor = Some(open_anchor_file(&dir.join(HEAD))?);
            // The slot after the newest one, so the newest stays whole.
            log.anchor_writes = anchored.map_or(0, |a| a.slot + 1);
            if anchored.map(|a| a.seq) != Some(log.last_seq) {
                // A log from before anchors, or a crash between a write-ahead
                // sync and its anchor: anchor what is durable now.
                log.write_anchor(true)?;
            }
        }
        Ok(log)
    }

    /// Refuses a log that ends before its head anchor, or whose record at
    /// the anchor's seq is not the one anchored.
    fn check_anchor(&self, anchored: Option<Anchored>) -> Result<()> {
        let file = self.origin.join(HEAD);
        let Some(a) = anchored else { return self.check_unanchored(&file) };
        if a.seq > self.last_seq {
            let missing = if a.seq == self.last_seq + 1 {
                format!("record {} is missing", a.seq)
            } else {
                format!("records {}..{} are missing", self.last_seq + 1, a.seq)
            };
            return Err(Error::Untrusted(format!(
                "the log ends at seq {} but its head anchor ({}) says seq {}: {missing} (cut, deleted, or lost to damage)",
                self.last_seq,
                file.display(),
                a.seq
            )));
        }
        if a.seq == 0 {
            return Ok(());
        }
        let stored = self.tree.get(a.seq.to_be_bytes()).map_err(|e| sled_err(&self.origin, e))?;
        let matches = match &stored {
            Some(v) => split_value(a.seq, v).map(|(_, h)| h == a.hash).unwrap_or(false),
            None => false,
        };
        if !matches {
            return Err(Error::Untrusted(format!(
                "seq {}: the record is not the one its head anchor ({}) holds: it was rewritten or removed",
                a.seq,
                file.display()
            )));
        }
        Ok(())
    }

    /// A log with no head anchor is one from before anchors. Anchors came
    /// with record format 3, and a writer makes (and syncs) the anchor file
    /// before its first append: a last record of format 3 or later with no
    /// anchor means the anchor was removed, and with it whatever the tail
    /// lost cannot be told — refused, as a cut tail is.
    fn check_unanchored(&self, file: &Path) -> Result<()> {
        if self.last_seq == 0 {
            return Ok(());
        }
        let stored = self.tree.get(self.last_seq.to_be_bytes()).map_err(|e| sled_err(&self.origin, e))?;
        let format = match &stored {
            Some(v) => split_value(self.last_seq, v)?.0.first().copied().unwrap_or(0),
            None => 0,
        };
        if format >= ANCHORED_SINCE_FORMAT {
            return Err(Error::Untrusted(format!(
                "the head anchor ({}) is missing, but the log (seq 1..{}) was written by an rmm that keeps one: records after seq {} may have been cut",
                file.display(),
                self.last_seq,
                self.last_seq
            )));
        }
        Ok(())
    }

    /// Writes the head (seq + hash) into the next anchor slot; `sync`:
    /// `fdatasync` it too. Called only after the records are durable.
    fn write_anchor(&mut self, sync: bool) -> Result<()> {
        let Some(file) = &self.anchor else { return Ok(()) };
        let slot = self.anchor_writes % 2;
        let bytes = encode_anchor(self.last_seq, &self.head);
        let name = self.origin.join(HEAD);
        std::os::unix::fs::FileExt::write_all_at(file, &bytes, slot * ANCHOR_SLOT)
            .map_err(|e| Error::Store(format!("write {}: {e}", name.display())))?;
        if sync {
            file.sync_data().map_err(|e| Error::Store(format!("fdatasync {}: {e}", name.display())))?;
            self.syncs += 1;
        }
        self.anchor_writes += 1;
        Ok(())
    }

    /// Bytes of a torn last write found in the write-ahead file (a crash
    /// while writing it), which this open dropped; a writer's open also
    /// removes them, a reader's leaves them where they are.
    pub fn torn_tail(&self) -> Option<u64> {
        self.torn_tail
    }

    /// The head anchor as stored: `(seq, hash)` of the last record the
    /// writer anchored; `None` for a store without one (an older rmm).
    pub fn anchored(&self) -> Result<Option<(u64, Hash)>> {
        let dir = match &self._snapshot {
            Some(s) => s.store(),
            None => self.origin.clone(),
        };
        Ok(read_anchor(&dir.join(HEAD))?.map(|a| (a.seq, a.hash)))
    }

    /// Replays the write-ahead frames sled does not have and drops a torn
    /// last frame, in sled's memory only; `true`: a checkpoint is due (the
    /// writer makes it once the log is known to be whole).
    fn recover(&mut self) -> Result<bool> {
        let mut bytes = Vec::new();
        (&self.wal).seek(SeekFrom::Start(0)).map_err(|e| Error::Store(format!("read {WAL}: {e}")))?;
        (&self.wal).read_to_end(&mut bytes).map_err(|e| Error::Store(format!("read {WAL}: {e}")))?;
        let frames = wal_frames(&bytes);
        if let Some(damage) = frames.damaged {
            return Err(self.wal_damage(&frames.values, &bytes, damage));
        }
        self.torn_tail = frames.torn_at.map(|at| (bytes.len() - at) as u64);
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
        self.tree.apply_batch(batch).map_err(|e| sled_err(&self.origin, e))?;
        self.unflushed = replayed;
        Ok(frames.torn_at.is_some() || replayed > 0)
    }

    /// The error for damage in the write-ahead file with whole writes after
    /// it, naming the seqs it hits: the records after the last whole one
    /// before it, up to the first record of the next whole write.
    fn wal_damage(&self, before: &[&[u8]], bytes: &[u8], (at, next): (usize, usize)) -> Error {
        let seq_of = |v: &[u8]| split_value(0, v).ok().and_then(|(body, _)| codec::decode(body).ok()).map(|e| e.seq);
        let first = before.last().and_then(|v| seq_of(v)).unwrap_or(self.last_seq) + 1;
        let resumes = write_at(bytes, next).and_then(|(values, _)| values.first().and_then(|v| seq_of(v)));
        let hit = match resumes {
            Some(r) if r > first + 1 => format!("records {first}..{} do not check out", r - 1),
            Some(r) if r == first + 1 => format!("record {first} does not check out"),
            _ => "the write after it does not check out".to_string(),
        };
        let after = resumes.map(|r| format!("; whole records follow from seq {r}")).unwrap_or_default();
        let _ = at;
        Error::Corrupt {
            seq: Some(first),
            reason: format!(
                "{} is damaged here: {hit}{after} (damage followed by whole records is not a torn tail)",
                self.origin.join(WAL).display()
            ),
        }
    }

    /// Makes sled's own file durable (flush + `fdatasync`) and empties the
    /// write-ahead file, whose records sled now holds.
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(anchor) = &self.anchor {
            // The anchor may lag the log (see ANCHOR_SYNC_EACH); make it
            // durable at least as often as sled's own file.
            anchor.sync_data().map_err(|e| Error::Store(format!("fdatasync {}: {e}", self.origin.join(HEAD).display())))?;
        }
        self.db.flush().map_err(|e| sled_err(&self.origin, e))?;
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
        self.last_seq = seq;
        self.head = head;
        // Only now, with the records durable: the anchor is never ahead.
        self.write_anchor(ANCHOR_SYNC_EACH)?;
        self.tree.apply_batch(batch).map_err(|e| sled_err(&self.origin, e))?;
        self.unflushed += out.len() as u64;
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
            origin: self.origin.clone(),
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
            origin: self.origin.clone(),
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
            // sled panics on some damage instead of returning an error:
            // that ends the scan with the error it should have been.
            install_quiet_hook();
            QUIET.with(|q| q.set(true));
            let mut iter = tree.iter();
            let mut next = move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| iter.next()))
                    .unwrap_or(Some(Err(sled::Error::Corruption { at: None, bt: () })))
            };
            while let Some(item) = next() {
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
        Scan { iter, expect_seq: 1, prev: GENESIS, from_seq, failed: false, origin: self.origin.clone() }
    }

    /// Reads the raw stored bytes of a record, for export and tests.
    pub fn raw(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(seq.to_be_bytes()).map_err(|e| sled_err(&self.origin, e))?.map(|v| v.to_vec()))
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
        // Only a writer whose open completed: a refused log is left as found.
        if self._snapshot.is_none() && self.anchor.is_some() && self.unflushed > 0 {
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
    /// Damage with a whole write after it: where it starts, and where the
    /// next whole write does.
    damaged: Option<(usize, usize)>,
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
/// write); one with a whole write after it is damage (`damaged`).
fn wal_frames(bytes: &[u8]) -> Frames<'_> {
    let mut values = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match write_at(bytes, at) {
            Some((frames, next)) => {
                values.extend(frames);
                at = next;
            }
            None => {
                if let Some(next) = (at + 1..bytes.len()).find(|&j| write_at(bytes, j).is_some()) {
                    return Frames { values, torn_at: None, damaged: Some((at, next)) };
                }
                return Frames { values, torn_at: Some(at), damaged: None };
            }
        }
    }
    Frames { values, torn_at: None, damaged: None }
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
    /// The store directory as the user knows it, for messages.
    origin: PathBuf,
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
        let (k, v) = item.map_err(|e| sled_err(&self.origin, e))?;
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

/// sled's error, in our words: damage it finds (`Read corrupted data at
/// file offset None backtrace ()`) is a log that cannot be trusted, named
/// by its file; anything else is the store failing.
fn sled_err(origin: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Corruption { .. } => Error::Untrusted(format!(
            "{} is damaged: the event store cannot read its records back (sled found corrupted data)",
            origin.join("db").display()
        )),
        other => Error::Store(other.to_string()),
    }
}

/// Runs `f` (sled opening or reading the store), turning a panic into the
/// error it should have been: sled 0.34 panics on some damage to its data
/// file (`serialization.rs`: "tried to serialize") rather than returning
/// `Corruption`. The panic message is not printed: the error says it.
fn quietly<T>(origin: &Path, f: impl FnOnce() -> T) -> Result<T> {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|_| sled_err(origin, sled::Error::Corruption { at: None, bt: () }))
}

thread_local! {
    /// Set while this thread runs sled under [`quietly`]: its panics are
    /// turned into errors, so their message is not printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps the panic hook (once per process) so that panics of threads in
/// [`QUIET`] mode print nothing; every other panic prints as before.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
}

/// The first record format whose writers keep a head anchor.
const ANCHORED_SINCE_FORMAT: u8 = 3;

/// The head anchor file's name, in the store directory.
pub(crate) const HEAD: &str = "head";
/// Bytes between the anchor's two slots: each in a sector of its own.
const ANCHOR_SLOT: u64 = 512;
const ANCHOR_LEN: usize = 48;
const ANCHOR_MAGIC: u32 = 0x524d_4d48; // "RMMH"

/// Whether every batch also `fdatasync`s the head anchor (a second device
/// flush per append), or only every checkpoint and close.
///
/// Off: the anchor is `pwrite`n after every batch's write-ahead sync, so it
/// is exact after any crash of the process (the page cache keeps it); after
/// a power cut it may lag by the batches since the last checkpoint — behind
/// is always allowed, and a write that was durable cannot be dropped by a
/// crash, only cut by hand. Measured in BENCHMARKS.md: syncing each time
/// costs a second device flush per append.
pub const ANCHOR_SYNC_EACH: bool = false;

/// One anchor slot as read back.
#[derive(Debug, Clone, Copy)]
struct Anchored {
    seq: u64,
    hash: Hash,
    slot: u64,
}

/// `[magic u32][seq u64][hash 32][crc32 of the first 44 bytes]`, little endian.
fn encode_anchor(seq: u64, hash: &Hash) -> [u8; ANCHOR_LEN] {
    let mut out = [0u8; ANCHOR_LEN];
    out[0..4].copy_from_slice(&ANCHOR_MAGIC.to_le_bytes());
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    out[12..44].copy_from_slice(hash);
    let crc = crc32fast::hash(&out[..44]);
    out[44..48].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_anchor(bytes: &[u8], slot: u64) -> Option<Anchored> {
    let b = bytes.get(..ANCHOR_LEN)?;
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != ANCHOR_MAGIC || word(44) != crc32fast::hash(&b[..44]) {
        return None;
    }
    Some(Anchored {
        seq: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
        hash: b[12..44].try_into().expect("32 bytes"),
        slot,
    })
}

/// The newest whole slot of the anchor file; `None` when there is no file
/// (a store from before anchors) or no whole slot (it was never written
/// whole: a crash during its first write).
fn read_anchor(path: &Path) -> Result<Option<Anchored>> {
    let bytes = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Store(format!("read {}: {e}", path.display()))),
        Ok(m) if !m.file_type().is_file() => {
            return Err(Error::Untrusted(format!("{} is not a regular file (rmm follows no links in its state dir)", path.display())))
        }
        Ok(_) => std::fs::read(path).map_err(|e| Error::Store(format!("read {}: {e}", path.display())))?,
    };
    let slots = [0, 1].map(|i| bytes.get((i * ANCHOR_SLOT) as usize..).and_then(|b| decode_anchor(b, i)));
    Ok(slots.into_iter().flatten().max_by_key(|a| a.seq))
}

/// The anchor file, for writing: created owner-only and exclusively if it
/// is not there, never through a symlink.
fn open_anchor_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| Error::Store(format!("open {}: {e}", path.display()));
    let existing = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path);
    match existing {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(err)?;
            if let Some(parent) = path.parent() {
                File::open(parent).and_then(|d| d.sync_all()).map_err(err)?;
            }
            Ok(f)
        }
        Err(e) => Err(err(e)),
    }
}

/// The name every reader's copy starts with, in the temp dir.
const SNAPSHOT_PREFIX: &str = "rmm-read-";
/// A copy whose owner lock is free and that is older than this is stale
/// even if its pid is alive again (a pid reused by another process).
const SNAPSHOT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A reader's private copy of a store: `$TMPDIR/rmm-read-<pid>-<uuid>/`,
/// holding `.owner` (locked with `flock` for as long as the copy is in use)
/// and `events/` (the copy). Removed on drop; a copy left by a reader that
/// was killed is removed by the next reader ([`clean_stale_snapshots`]).
struct SnapshotDir {
    base: PathBuf,
    _owner: File,
}

impl SnapshotDir {
    fn store(&self) -> PathBuf {
        self.base.join("events")
    }

    fn copy_of(dir: &Path) -> Result<SnapshotDir> {
        let tmp = std::env::temp_dir();
        clean_stale_snapshots(&tmp);
        let base = tmp.join(format!("{SNAPSHOT_PREFIX}{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()));
        let shown = base.display().to_string();
        let err = |e: std::io::Error| {
            Error::Store(format!("copy the store to {shown} for reading: {e} (readers read a copy; set TMPDIR to a directory with room)"))
        };
        // Owner-only, like the state dir it copies.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&base).map_err(err)?;
        // Blocking: another reader's sweep ([`clean_stale_snapshots`])
        // may hold a shared lock on this new `.owner` for the instant it
        // probes it; a `try_lock` failed on that (seen in CI, with many
        // readers at once). Nobody else ever holds it for longer.
        let owner = OpenOptions::new().write(true).create_new(true).open(base.join(".owner")).and_then(|f| {
            f.lock().map_err(std::io::Error::other)?;
            Ok(f)
        });
        let owner = match owner {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&base);
                return Err(err(e));
            }
        };
        let snap = SnapshotDir { base, _owner: owner };
        copy_store(dir, &snap.store()).map_err(|e| match e {
            CopyError::Io(e) => err(e),
            CopyError::Link(p) => Error::Untrusted(format!(
                "{} is a symlink: rmm follows no links in its state dir",
                p.display()
            )),
        })?;
        Ok(snap)
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Removes the copies in `tmp` left by readers that died before removing
/// their own: those whose `.owner` lock is free and whose pid is gone (or
/// that are older than [`SNAPSHOT_STALE_AFTER`]: the pid was reused). A
/// live reader holds its lock from the moment the copy exists, bar the
/// instant between making the directory and locking: the pid check covers
/// that. Best effort: a copy that cannot be removed (another user's) stays.
pub fn clean_stale_snapshots(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SNAPSHOT_PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let path = entry.path();
        let locked = match File::open(path.join(".owner")) {
            Ok(f) => f.try_lock_shared().is_err(),
            Err(_) => false,
        };
        if locked {
            continue;
        }
        let pid_alive = Path::new("/proc").join(pid.to_string()).exists();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > SNAPSHOT_STALE_AFTER);
        if !pid_alive || old {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

enum CopyError {
    Io(std::io::Error),
    Link(PathBuf),
}

impl From<std::io::Error> for CopyError {
    fn from(e: std::io::Error) -> Self {
        CopyError::Io(e)
    }
}

/// Copies a store directory beside a writer that may be appending and
/// checkpointing, only reading it. The order makes the copy a state the
/// writer passed through: the head anchor first (the anchor is written
/// after the records it names are durable, so it cannot be ahead of the
/// files copied after it), then the write-ahead file, then sled's files (a
/// checkpoint between the two empties the write-ahead file only once sled's
/// file holds its records, which it then does when copied).
/// sled writes a snapshot to `snap.<lsn>.generating` and renames it once
/// whole. One left behind (its write failed on a full disk or EIO, or the
/// process was killed in between) is never a snapshot, but sled 0.34 lists
/// it with the others (`Config::get_snapshot_files` leaves out only
/// `.in___motion`), takes it for the latest and refuses the whole store as
/// corrupted. Without it sled regenerates the snapshot from the log.
fn is_unfinished_snapshot(name: &str) -> bool {
    name.starts_with("snap.") && name.ends_with(".generating")
}

/// Removes unfinished snapshots (see [`is_unfinished_snapshot`]) before
/// the writer opens the store. Best effort: one that cannot be removed is
/// reported by sled as before.
fn remove_unfinished_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_unfinished_snapshot) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn copy_store(from: &Path, to: &Path) -> Result<(), CopyError> {
    std::fs::create_dir_all(to)?;
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(from)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    let rank = |n: &std::ffi::OsString| match n.to_str() {
        Some(HEAD) => 0,
        Some(WAL) => 1,
        Some("db") => 2,
        _ => 3,
    };
    names.sort_by_key(rank);
    names.retain(|n| !n.to_str().is_some_and(is_unfinished_snapshot));
    for name in names {
        let source = from.join(&name);
        let target = to.join(&name);
        let meta = match std::fs::symlink_metadata(&source) {
            Ok(m) => m,
            // Removed by the writer since the listing (a sled snapshot file).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if meta.file_type().is_symlink() {
            return Err(CopyError::Link(source));
        } else if meta.is_dir() {
            copy_store(&source, &target)?;
        } else if meta.is_file() {
            match std::fs::copy(&source, &target) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
