//! Reading another process's appends from the write-ahead file
//! (`WalTail`), and continuing a checked chain from the store
//! (`SledLog::scan_after`, `scan_read_ahead`) — the read path of
//! `rmm log --follow`.

use rmm_events::store::CHECKPOINT_EVERY;
use rmm_events::{Envelope, Event, Hash, SledLog, Step, Tail, WalTail, GENESIS};
use uuid::Uuid;

fn env(i: u32) -> Envelope {
    Envelope {
        seq: 0,
        id: Uuid::now_v7(),
        run: Uuid::nil(),
        attempt: 1,
        actor: "master01".into(),
        cause: None,
        at_ms: 1_700_000_000_000 + i64::from(i),
        event: Event::StepStarted { step: Step::CreateMachine, try_no: i, detail: format!("d{i}") },
    }
}

fn open(dir: &std::path::Path) -> SledLog {
    SledLog::open(dir).unwrap_or_else(|_| panic!("open"))
}

fn records(tail: &WalTail, seq: u64, hash: &Hash) -> Vec<u64> {
    match tail.after(seq, hash).unwrap() {
        Tail::Records(r) => r.iter().map(|r| r.envelope.seq).collect(),
        Tail::Lost => panic!("lost after seq {seq}"),
    }
}

#[test]
fn the_tail_gives_the_records_after_the_last_one_seen_each_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let tail = WalTail::new(dir.path());
    assert_eq!(records(&tail, 0, &GENESIS), Vec::<u64>::new());
    let appended = log.append_batch((0..5).map(env).collect()).unwrap();
    assert_eq!(records(&tail, 0, &GENESIS), vec![1, 2, 3, 4, 5]);
    assert_eq!(records(&tail, 3, &appended[2].hash), vec![4, 5]);
    assert_eq!(records(&tail, 5, &appended[4].hash), Vec::<u64>::new());
    // A position the file does not continue from is not guessed at.
    assert!(matches!(tail.after(2, &[7u8; 32]).unwrap(), Tail::Lost));
}

#[test]
fn after_a_checkpoint_unseen_records_are_lost_to_the_tail_and_found_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let tail = WalTail::new(dir.path());
    let first = log.append_batch((0..3).map(env).collect()).unwrap();
    let seen = (3, first[2].hash);
    // The writer runs on past a checkpoint (which empties the file).
    let n = CHECKPOINT_EVERY as u32 + 10;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        log.append_batch(chunk.iter().map(|i| env(*i)).collect()).unwrap();
    }
    // Right after the checkpoint the file is empty: no news, as far as the
    // tail can tell (the follower also watches sled's file for this).
    assert_eq!(records(&tail, seen.0, &seen.1), Vec::<u64>::new());
    // Once the writer appends again, the gap shows.
    log.append(env(n)).unwrap();
    assert!(matches!(tail.after(seen.0, &seen.1).unwrap(), Tail::Lost));
    let n = n + 1;
    // From the store, the chain continues from the record seen.
    let rest: Vec<u64> = log.scan_after(seen.0, seen.1).map(|r| r.unwrap().envelope.seq).collect();
    assert_eq!(rest, (4..=3 + u64::from(n)).collect::<Vec<_>>());
    // From the wrong hash it does not.
    assert!(log.scan_after(seen.0, [1u8; 32]).next().unwrap().is_err());
}

#[test]
fn a_frame_still_being_written_is_read_as_not_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let tail = WalTail::new(dir.path());
    log.append_batch((0..2).map(env).collect()).unwrap();
    // Half a frame at the end: a write in progress.
    use std::io::Write;
    let mut wal = std::fs::OpenOptions::new().append(true).open(dir.path().join("journal.wal")).unwrap();
    wal.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    assert_eq!(records(&tail, 0, &GENESIS), vec![1, 2]);
}

#[test]
fn the_read_ahead_scan_gives_the_same_records_and_errors_as_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    for chunk in (0..5000u32).collect::<Vec<_>>().chunks(700) {
        log.append_batch(chunk.iter().map(|i| env(*i)).collect()).unwrap();
    }
    let plain: Vec<_> = log.scan(1).map(|r| r.unwrap()).collect();
    let ahead: Vec<_> = log.scan_read_ahead(1).map(|r| r.unwrap()).collect();
    assert_eq!(plain, ahead);
    let mut raw = log.raw(3001).unwrap().unwrap();
    raw[12] ^= 1;
    log.tamper(3001, Some(raw)).unwrap();
    let err = |mut s: rmm_events::store::Scan| s.find_map(Result::err).unwrap().to_string();
    assert_eq!(err(log.scan(1)), err(log.scan_read_ahead(1)));
    assert!(err(log.scan_read_ahead(1)).starts_with("seq 3001:"));
}
