//! The journal: the single writer of the event log, on its own thread.
//!
//! Actors hand it envelopes and await the stored records. Whatever arrives
//! while a sync is in progress is written in the next batch with one
//! `fdatasync` (group commit), so several actors' events share one sync.
//!
//! # Guarantees
//! A record returned by [`Journal::append`] is durable (see
//! `rmm_events::SledLog::append_batch`). State in the actors only ever
//! applies returned records: it never runs ahead of the log.

use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use rmm_events::{Envelope, Record, SledLog};
use tokio::sync::oneshot;

use crate::crashpoint;

type Reply = oneshot::Sender<Result<Vec<Record>, String>>;

/// A cloneable handle to the journal thread.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<(Vec<Envelope>, Reply)>,
    failure: Arc<Mutex<Option<AppendFailure>>>,
}

/// The store's write-ahead file, in its directory (`events/`).
pub const WAL_FILE: &str = "journal.wal";

/// Why the log could not be written: the first failed append of the
/// process (every later one fails too: the store is poisoned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendFailure {
    /// The store's reason, e.g. `event store: write journal.wal: No space
    /// left on device (os error 28)`.
    pub reason: String,
    /// The OS error number the reason names, if any (`ENOSPC` is 28).
    pub os_error: Option<i32>,
    /// The last durable record: nothing after it was recorded, and nothing
    /// after it happened (an effect starts only once its intent is durable).
    pub last_seq: u64,
}

impl AppendFailure {
    pub fn new(error: &rmm_events::Error, last_seq: u64) -> AppendFailure {
        let reason = error.to_string();
        AppendFailure { os_error: os_error(&reason), reason, last_seq }
    }

    /// The disk (or quota) is full: `ENOSPC` or `EDQUOT`.
    pub fn disk_full(&self) -> bool {
        matches!(self.os_error, Some(28) | Some(122))
    }

    /// Whether the write-ahead file is what failed (else sled's own files).
    pub fn in_wal(&self) -> bool {
        self.reason.contains(WAL_FILE)
    }

    /// The OS's words for the error, without the `(os error N)` suffix;
    /// the whole reason when it carries no OS error.
    pub fn os_reason(&self) -> String {
        let Some(code) = self.os_error else { return self.reason.clone() };
        // sled shows the io::Error's Debug: take its message.
        if let Some(at) = self.reason.rfind("message: \"") {
            let rest = &self.reason[at + "message: \"".len()..];
            if let Some(end) = rest.find('"') {
                return rest[..end].to_string();
            }
        }
        let suffix = format!(" (os error {code})");
        let before = self.reason.rfind(&suffix).map(|i| &self.reason[..i]).unwrap_or(&self.reason);
        // `write journal.wal: No space left on device`: the last part.
        before.rsplit(": ").next().unwrap_or(before).to_string()
    }
}

/// The errno in a `std::io::Error`'s text (the store keeps only the
/// text): its `Display` is `<description> (os error <code>)`, its `Debug`
/// (which sled's errors show) `Os { code: <code>, kind: …, message: … }`.
fn os_error(text: &str) -> Option<i32> {
    let number_after = |marker: &str, end: char| -> Option<i32> {
        let at = text.rfind(marker)? + marker.len();
        let digits: String = text[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
        text[at + digits.len()..].starts_with(end).then(|| digits.parse().ok()).flatten()
    };
    number_after("(os error ", ')').or_else(|| number_after("Os { code: ", ','))
}

impl Journal {
    /// Starts the writer thread, which owns `log` until every handle is
    /// dropped; then `log` is closed.
    pub fn start(log: SledLog) -> (Journal, thread::JoinHandle<SledLog>) {
        let (tx, rx) = mpsc::channel::<(Vec<Envelope>, Reply)>();
        let failure = Arc::new(Mutex::new(None));
        let first_failure = failure.clone();
        let handle = thread::Builder::new()
            .name("rmm-journal".into())
            .spawn(move || writer(log, rx, first_failure))
            .expect("spawn the journal thread");
        (Journal { tx, failure }, handle)
    }

    /// The first append that failed, if any.
    pub fn failure(&self) -> Option<AppendFailure> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Appends envelopes (their `seq` is assigned here) and returns them
    /// once durable. An error means the log could not be written: stop.
    pub async fn append(&self, envelopes: Vec<Envelope>) -> Result<Vec<Record>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((envelopes, reply))
            .map_err(|_| "the journal has stopped".to_string())?;
        rx.await.map_err(|_| "the journal has stopped".to_string())?
    }
}

fn writer(
    mut log: SledLog,
    rx: mpsc::Receiver<(Vec<Envelope>, Reply)>,
    failure: Arc<Mutex<Option<AppendFailure>>>,
) -> SledLog {
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        while let Ok(more) = rx.try_recv() {
            requests.push(more);
        }
        let sizes: Vec<usize> = requests.iter().map(|(e, _)| e.len()).collect();
        let mut all: Vec<Envelope> = requests.iter_mut().flat_map(|(e, _)| std::mem::take(e)).collect();
        // A crash drill due inside this batch: write only up to it (the
        // crash point then aborts before anyone hears back).
        if let Some(left) = crashpoint::appends_before_crash() {
            if left > 0 && (left as usize) < all.len() {
                all.truncate(left as usize);
            }
        }
        let total = all.len() as u64;
        match log.append_batch(all) {
            Ok(mut records) => {
                crashpoint::appended(total);
                for ((_, reply), n) in requests.into_iter().zip(sizes) {
                    let rest = records.split_off(n);
                    let _ = reply.send(Ok(std::mem::replace(&mut records, rest)));
                }
            }
            Err(e) => {
                failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| AppendFailure::new(&e, log.last_seq()));
                for (_, reply) in requests {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_error_of_a_store_failure_is_read_from_its_text() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = rmm_events::Error::Store(format!("write journal.wal: {io}"));
        let f = AppendFailure::new(&e, 41);
        assert_eq!(f.os_error, Some(28));
        assert!(f.disk_full() && f.in_wal());
        assert_eq!(f.os_reason(), "No space left on device");
        let f = AppendFailure::new(&rmm_events::Error::Store("sled: a tree is broken".into()), 3);
        assert_eq!((f.os_error, f.disk_full(), f.in_wal()), (None, false, false));
        assert_eq!(f.os_reason(), "event store: sled: a tree is broken");
        assert_eq!(os_error("(os error 5"), None);
        assert_eq!(os_error("x (os error 5) y"), Some(5));
        let sled = rmm_events::Error::Store(format!("IO error: {:?}", std::io::Error::from_raw_os_error(28)));
        let f = AppendFailure::new(&sled, 9);
        assert_eq!((f.os_error, f.disk_full(), f.in_wal()), (Some(28), true, false));
        assert_eq!(f.os_reason(), "No space left on device");
    }
}
