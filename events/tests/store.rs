//! The store: appends are chained and durable, and any edit, loss or
//! reordering of a record is found by `scan`, naming the first bad seq.

use rmm_events::{codec, Envelope, Error, Event, Outcome, Plan, RunKind, SledLog, Step, Via};
use uuid::Uuid;

fn plan() -> Plan {
    Plan { poll_ms: 100, ..Plan::default() }
}

fn env(run: Uuid, event: Event) -> Envelope {
    Envelope { seq: 0, id: Uuid::now_v7(), run, attempt: 1, actor: "rancher".into(), cause: None, at_ms: 1_700_000_000_000, event }
}

fn filled(n: usize) -> (tempfile::TempDir, SledLog) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SledLog::open(dir.path()).unwrap_or_else(|_| panic!("open"));
    let run = Uuid::now_v7();
    log.append(env(run, Event::RunStarted { kind: RunKind::Up, plan: plan() })).unwrap();
    for i in 1..n {
        log.append(env(run, Event::StepStarted { step: Step::CreateMachine, try_no: i as u32, detail: format!("d{i}") }))
            .unwrap();
    }
    (dir, log)
}

fn first_error(log: &SledLog) -> Option<Error> {
    log.scan(1).find_map(Result::err)
}

#[test]
fn appends_get_contiguous_seqs_and_survive_reopening() {
    let (dir, log) = filled(5);
    assert_eq!(log.last_seq(), 5);
    let head = log.head();
    drop(log);
    let log = reopen(dir.path());
    assert_eq!((log.last_seq(), log.head()), (5, head));
    let seqs: Vec<u64> = log.scan(1).map(|r| r.unwrap().envelope.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_flipped_byte_is_found_at_its_seq() {
    let (_dir, mut log) = filled(5);
    let mut raw = log.raw(3).unwrap().unwrap();
    raw[10] ^= 0x01;
    log.tamper(3, Some(raw)).unwrap();
    let err = first_error(&log).expect("tampering is detected");
    assert!(err.to_string().starts_with("seq 3:"), "{err}");
}

#[test]
fn a_deleted_record_is_found() {
    let (_dir, mut log) = filled(5);
    log.tamper(2, None).unwrap();
    let err = first_error(&log).unwrap().to_string();
    assert!(err.contains("seq 2") && err.contains("missing"), "{err}");
}

#[test]
fn swapped_records_are_found() {
    let (_dir, mut log) = filled(5);
    let (a, b) = (log.raw(2).unwrap(), log.raw(4).unwrap());
    log.tamper(2, b).unwrap();
    log.tamper(4, a).unwrap();
    assert!(first_error(&log).unwrap().to_string().starts_with("seq 2:"));
}

#[test]
fn a_record_rewritten_with_its_own_hash_recomputed_breaks_the_chain_after_it() {
    // The forger re-encodes record 3 and recomputes *its* hash, but cannot
    // fix record 4's, which chains from the old one.
    let (_dir, mut log) = filled(5);
    let raw = log.raw(2).unwrap().unwrap();
    let prev: [u8; 32] = raw[raw.len() - 32..].try_into().unwrap();
    let r3 = log.raw(3).unwrap().unwrap();
    let mut e = codec::decode(&r3[..r3.len() - 32]).unwrap();
    e.actor = "forged".into();
    let body = codec::encode(&e);
    let mut value = body.clone();
    value.extend_from_slice(&rmm_events::chain_hash(&prev, &body));
    log.tamper(3, Some(value)).unwrap();
    let err = first_error(&log).unwrap().to_string();
    assert!(err.starts_with("seq 4:"), "{err}");
}

#[test]
fn every_event_kind_round_trips_through_the_codec() {
    let run = Uuid::now_v7();
    let events = vec![
        Event::RunStarted { kind: RunKind::Down, plan: plan() },
        Event::AttemptStarted { attempt: 2, command: "rmm up --resume".into(), pid: 7, rmm_version: "0.1.0".into(), user: "ops".into(), host: "box".into() },
        Event::StepStarted { step: Step::RunAgent, try_no: 1, detail: "roles worker".into() },
        Event::StepSucceeded { step: Step::CreateCluster, outcome: Outcome::ClusterCreated { cluster_id: "c-abcde".into() }, via: Via::Adopted },
        Event::StepFailed { step: Step::Login, try_no: 3, error: "401".into(), retryable: true },
        Event::JoinGranted { node: "master02".into() },
        Event::RunCompleted,
        Event::RunFailed { actor: "worker01".into(), step: Some(Step::CreateMachine), reason: "quota".into() },
        Event::AttemptInterrupted { reason: "SIGINT".into() },
    ];
    for event in events {
        let e = env(run, event);
        assert_eq!(codec::decode(&codec::encode(&e)).unwrap(), e);
    }
}

#[test]
fn a_record_from_a_newer_format_is_refused_by_version() {
    let mut bytes = codec::encode(&env(Uuid::now_v7(), Event::RunCompleted));
    bytes[0] = 9;
    let err = codec::decode(&bytes).unwrap_err();
    assert!(matches!(err, Error::UnknownVersion { found: 9 }));
    assert!(err.to_string().contains("version 9"));
}

/// Appends `n` records and "crashes": the files are taken as they are while
/// the store is still open (no checkpoint, no close), as a crash leaves them;
/// everything since the last checkpoint lives only in the write-ahead file.
fn crashed_with(n: usize) -> (tempfile::TempDir, u64, [u8; 32]) {
    let (dir, log) = filled(n);
    let (last, head) = (log.last_seq(), log.head());
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    drop(log);
    (copy, last, head)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn records_appended_before_a_crash_are_replayed_from_the_write_ahead_file() {
    let (dir, last, head) = crashed_with(6);
    let log = reopen(dir.path());
    assert_eq!((log.last_seq(), log.head()), (last, head));
    assert_eq!(log.scan(1).filter(|r| r.is_ok()).count(), 6);
}

#[test]
fn every_append_is_synced_before_it_returns_and_a_batch_shares_one_sync() {
    let (_dir, mut log) = filled(1);
    let run = Uuid::now_v7();
    let before = log.syncs();
    log.append(env(run, Event::RunCompleted)).unwrap();
    assert_eq!(log.syncs(), before + 1);
    log.append_batch((0..7).map(|_| env(run, Event::RunCompleted)).collect()).unwrap();
    assert_eq!(log.syncs(), before + 2, "group commit: one sync for the batch");
}

/// Like [`crashed_with`], but the crash is *during* the `n`-th append: its
/// write is in the write-ahead file (to be torn by the caller) and its head
/// anchor was not written yet (it is written only once the append is
/// durable), so the anchor file is the one from before it.
fn crashed_during_last(n: usize) -> (tempfile::TempDir, u64, [u8; 32]) {
    let (dir, mut log) = filled(n - 1);
    let anchor_before = std::fs::read(dir.path().join("head")).unwrap();
    log.append(env(Uuid::now_v7(), Event::RunCompleted)).unwrap();
    let (last, head) = (log.last_seq(), log.head());
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::write(copy.path().join("head"), anchor_before).unwrap();
    drop(log);
    (copy, last, head)
}

#[test]
fn a_torn_last_record_is_dropped_and_the_log_continues_from_the_last_whole_one() {
    let (dir, last, _) = crashed_during_last(5);
    let wal = dir.path().join("journal.wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(len > 0, "records since the last checkpoint are in the write-ahead file");
    // Cut the last frame in half: a crash in the middle of its write.
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 20).unwrap();
    let mut log = reopen(dir.path());
    assert_eq!(log.last_seq(), last - 1);
    assert!(log.scan(1).all(|r| r.is_ok()), "what remains verifies");
    let r = log.append(env(Uuid::now_v7(), Event::RunCompleted)).unwrap();
    assert_eq!(r.envelope.seq, last, "the log continues where the whole records end");
    assert!(log.scan(1).all(|r| r.is_ok()));
}

#[test]
fn damage_in_the_middle_of_the_write_ahead_file_is_refused_not_taken_for_a_torn_tail() {
    let (dir, _, _) = crashed_with(5);
    let wal = dir.path().join("journal.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[12] ^= 0xff;
    std::fs::write(&wal, bytes).unwrap();
    match SledLog::open(dir.path()) {
        Err(rmm_events::OpenError::Other(e)) => assert!(e.to_string().contains("damaged"), "{e}"),
        Err(rmm_events::OpenError::Locked) => panic!("locked"),
        Ok(_) => panic!("a damaged write-ahead file must be refused"),
    }
}

#[test]
fn a_last_write_torn_in_its_first_page_with_a_later_page_surviving_is_still_a_torn_tail() {
    // A power cut can keep any subset of an unsynced write's pages. Write a
    // big batch last, then lose its first page but keep the rest: valid
    // frames follow the damage, yet it is the last write, torn.
    let (dir, mut log) = filled(3);
    let before = log.last_seq();
    let wal = dir.path().join("journal.wal");
    let start = std::fs::metadata(&wal).unwrap().len() as usize;
    let anchor_before = std::fs::read(dir.path().join("head")).unwrap();
    let run = Uuid::now_v7();
    log.append_batch((0..60).map(|i| env(run, Event::StepStarted { step: Step::RunAgent, try_no: i, detail: "x".repeat(80) })).collect())
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    // The crash was during that write: its anchor was never written.
    std::fs::write(copy.path().join("head"), anchor_before).unwrap();
    drop(log);
    let wal = copy.path().join("journal.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() - start > 8192, "the last write spans pages");
    bytes[start..start + 4096].fill(0);
    std::fs::write(&wal, bytes).unwrap();
    let log = SledLog::open(copy.path()).unwrap_or_else(|_| panic!("a torn last write must not be refused"));
    assert_eq!(log.last_seq(), before);
    assert!(log.scan(1).all(|r| r.is_ok()));
}

/// A store of `n` records appended in batches of 500 (fast), closed.
fn closed_with(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SledLog::open(dir.path()).unwrap_or_else(|_| panic!("open"));
    let run = Uuid::now_v7();
    let mut left = n;
    while left > 0 {
        let k = left.min(500);
        log.append_batch((0..k).map(|i| env(run, Event::StepStarted { step: Step::RunAgent, try_no: i as u32, detail: "x".into() })).collect())
            .unwrap();
        left -= k;
    }
    drop(log);
    dir
}

/// `dir` opened again after its store was dropped, waiting out sled's I/O
/// threads as [`open_err`] does.
fn reopen(dir: &std::path::Path) -> SledLog {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledLog::open(dir) {
            Ok(log) => return log,
            Err(rmm_events::OpenError::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("reopen {}: {e:?}", dir.display()),
        }
    }
}

/// The refusal to open `dir`. A store dropped a moment ago may still be
/// held by one of sled's I/O threads finishing a write (seen once in CI:
/// `Locked` right after `drop`): waited for, as `StateDir::open_store`
/// waits, up to a deadline.
fn open_err(dir: &std::path::Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledLog::open(dir) {
            Err(rmm_events::OpenError::Other(e)) => return e.to_string(),
            Err(rmm_events::OpenError::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(rmm_events::OpenError::Locked) => panic!("still locked 10 s after the store was dropped"),
            Ok(log) => panic!("opened, ending at seq {}: must be refused", log.last_seq()),
        }
    }
}

/// A crash that tears nothing but a last write cut off by hand (or lost by
/// the storage) after its append returned: the chain alone cannot see it.
#[test]
fn a_log_cut_before_its_head_anchor_is_refused_naming_the_missing_seqs() {
    let (dir, mut log) = filled(3);
    let wal = dir.path().join("journal.wal");
    let before_last = std::fs::metadata(&wal).unwrap().len();
    let run = Uuid::now_v7();
    log.append_batch((0..2).map(|_| env(run, Event::RunCompleted)).collect()).unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    drop(log);
    // Drop the last whole write: records 4 and 5.
    std::fs::OpenOptions::new().write(true).open(copy.path().join("journal.wal")).unwrap().set_len(before_last).unwrap();
    let e = open_err(copy.path());
    assert!(e.contains("ends at seq 3") && e.contains("records 4..5 are missing"), "{e}");
    // Readers refuse it too, and leave it as it is.
    let snap = SledLog::open_snapshot(copy.path()).err().expect("a reader must refuse it too").to_string();
    assert!(snap.contains("records 4..5 are missing"), "{snap}");
    assert_eq!(std::fs::metadata(copy.path().join("journal.wal")).unwrap().len(), before_last);
}

#[test]
fn the_last_record_rewritten_with_its_hash_recomputed_is_refused_by_the_head_anchor() {
    let (dir, mut log) = filled(4);
    let value = log.raw(4).unwrap().unwrap();
    let prev = log.raw(3).unwrap().unwrap();
    let (body, _) = value.split_at(value.len() - 32);
    let mut envelope = codec::decode(body).unwrap();
    envelope.actor = "forged".into();
    let body = codec::encode(&envelope);
    let mut forged = body.clone();
    forged.extend_from_slice(&rmm_events::chain_hash(prev[prev.len() - 32..].try_into().unwrap(), &body));
    log.tamper(4, Some(forged)).unwrap();
    drop(log);
    let e = open_err(dir.path());
    assert!(e.contains("seq 4") && e.contains("rewritten"), "{e}");
}

#[test]
fn a_crash_between_the_write_ahead_sync_and_the_anchor_leaves_it_behind_which_is_accepted() {
    let (dir, mut log) = filled(3);
    let anchor_before = std::fs::read(dir.path().join("head")).unwrap();
    log.append(env(Uuid::now_v7(), Event::RunCompleted)).unwrap();
    let head = log.head();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::write(copy.path().join("head"), anchor_before).unwrap();
    drop(log);
    let log = SledLog::open(copy.path()).unwrap_or_else(|_| panic!("an anchor behind the log is allowed"));
    assert_eq!((log.last_seq(), log.head()), (4, head));
    assert_eq!(log.anchored().unwrap(), Some((4, head)), "the writer anchors what it found durable");
}

#[test]
fn a_store_from_before_anchors_opens_and_gets_one() {
    // A store an older rmm wrote: records of format 2 and no anchor file
    // (sled's own layout: key = big-endian seq, value = record ‖ chain hash).
    let dir = tempfile::tempdir().unwrap();
    let record = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v2/run_started.bin")).unwrap();
    assert_eq!(record[0], 2, "a format-2 record");
    let hash = rmm_events::chain_hash(&rmm_events::GENESIS, &record);
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("events").unwrap();
        tree.insert(1u64.to_be_bytes(), [record.as_slice(), hash.as_slice()].concat()).unwrap();
        db.flush().unwrap();
    }
    let log = reopen(dir.path());
    assert_eq!(log.anchored().unwrap(), Some((1, hash)), "and gets an anchor");
}

#[test]
fn a_head_anchor_removed_from_a_log_that_had_one_is_refused() {
    // Anchors came with format 3: a log of format-3 records had one from
    // its first append, so its loss hides whatever the tail lost.
    let (dir, log) = filled(3);
    drop(log);
    std::fs::remove_file(dir.path().join("head")).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("head anchor") && e.contains("missing") && e.contains("seq 1..3"), "{e}");
}

#[test]
fn damage_in_the_middle_of_the_write_ahead_file_names_the_seqs_it_hits() {
    let (dir, mut log) = filled(2);
    let wal = dir.path().join("journal.wal");
    let start = std::fs::metadata(&wal).unwrap().len() as usize;
    let run = Uuid::now_v7();
    log.append_batch((0..3).map(|_| env(run, Event::RunCompleted)).collect()).unwrap(); // 3..5
    log.append(env(run, Event::RunCompleted)).unwrap(); // 6
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    drop(log);
    let wal = copy.path().join("journal.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[start + 40] ^= 0xff;
    std::fs::write(&wal, bytes).unwrap();
    let e = open_err(copy.path());
    assert!(e.contains("seq 3") && e.contains("records 3..5") && e.contains("from seq 6") && !e.contains("byte"), "{e}");
}

/// A byte of sled's data file flipped, at several places: every one is
/// refused as damage (exit 5 in the CLI) naming the file, or as records
/// missing before the head anchor (sled reads its file up to the first bad
/// message and takes the rest for a torn end: without the anchor the log
/// would just be shorter). Never opened, never sled's own text, never a
/// panic (sled 0.34 panics on some damage).
#[test]
fn a_damaged_data_file_is_refused_naming_the_file_or_the_missing_seqs() {
    let dir = closed_with(6000);
    let db = dir.path().join("db");
    let bytes = std::fs::read(&db).unwrap();
    let (mut named, mut anchored) = (0, 0);
    for at in [100, bytes.len() / 10, bytes.len() / 3, bytes.len() / 2, bytes.len() * 2 / 3, bytes.len() - 3000] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let mut b = bytes.clone();
        b[at] ^= 0xff;
        std::fs::write(copy.path().join("db"), b).unwrap();
        let e = match SledLog::open_snapshot(copy.path()) {
            Ok(log) => match first_error(&log) {
                Some(e) => e,
                // A byte of space sled no longer uses: nothing lost.
                None if log.last_seq() == 6000 => continue,
                None => panic!("byte {at}: opened and verified with {} records", log.last_seq()),
            },
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(matches!(e, Error::Untrusted(_) | Error::Corrupt { .. }), "byte {at}: {e:?}");
        if text.contains(&copy.path().join("db").display().to_string()) && text.contains("damaged") {
            named += 1;
        } else if text.contains("head anchor") && text.contains("..6000 are missing") {
            anchored += 1;
        } else {
            panic!("byte {at}: {text}");
        }
    }
    assert!(named >= 1 && anchored >= 1, "both kinds of damage were hit: named the file {named}, caught by the anchor {anchored}");
}

/// sled writes a snapshot as `snap.<lsn>.generating` and renames it when
/// whole; a write that failed (a full disk, EIO) or a kill in between left
/// that file, and sled then took it for the latest snapshot and refused
/// the whole store as corrupted (every command exit 5, "db is damaged").
/// An unfinished snapshot is never one: the writer removes it, readers'
/// copies leave it out.
#[test]
fn an_unfinished_sled_snapshot_left_by_a_failed_write_does_not_make_the_store_unreadable() {
    let (dir, log) = filled(5);
    let head = log.head();
    drop(log);
    let snaps: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("snap."))
        .collect();
    // Newer than any snapshot there (sled picks the highest lsn).
    let unfinished = dir.path().join("snap.00000000FFFFFFFF.generating");
    std::fs::write(&unfinished, b"").unwrap();
    let reader = SledLog::open_snapshot(dir.path()).unwrap_or_else(|e| panic!("a reader's copy ({snaps:?}): {e}"));
    assert_eq!((reader.last_seq(), reader.head()), (5, head));
    assert!(first_error(&reader).is_none());
    drop(reader);
    assert!(unfinished.exists(), "a reader changes nothing in the store");
    let log = SledLog::open(dir.path()).unwrap_or_else(|_| panic!("the writer"));
    assert_eq!((log.last_seq(), log.head()), (5, head));
    assert!(first_error(&log).is_none());
    assert!(!unfinished.exists(), "the writer removed the unfinished snapshot");
}
