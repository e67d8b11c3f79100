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
    let log = SledLog::open(dir.path()).unwrap_or_else(|_| panic!("reopen"));
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
    let log = SledLog::open(dir.path()).unwrap_or_else(|_| panic!("reopen"));
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

#[test]
fn a_torn_last_record_is_dropped_and_the_log_continues_from_the_last_whole_one() {
    let (dir, last, _) = crashed_with(5);
    let wal = dir.path().join("journal.wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(len > 0, "records since the last checkpoint are in the write-ahead file");
    // Cut the last frame in half: a crash in the middle of its write.
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 20).unwrap();
    let mut log = SledLog::open(dir.path()).unwrap_or_else(|_| panic!("reopen"));
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
    let run = Uuid::now_v7();
    log.append_batch((0..60).map(|i| env(run, Event::StepStarted { step: Step::RunAgent, try_no: i, detail: "x".repeat(80) })).collect())
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
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
