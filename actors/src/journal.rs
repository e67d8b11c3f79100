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

use std::sync::mpsc;
use std::thread;

use rmm_events::{Envelope, Record, SledLog};
use tokio::sync::oneshot;

use crate::crashpoint;

type Reply = oneshot::Sender<Result<Vec<Record>, String>>;

/// A cloneable handle to the journal thread.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<(Vec<Envelope>, Reply)>,
}

impl Journal {
    /// Starts the writer thread, which owns `log` until every handle is
    /// dropped; then `log` is closed.
    pub fn start(log: SledLog) -> (Journal, thread::JoinHandle<SledLog>) {
        let (tx, rx) = mpsc::channel::<(Vec<Envelope>, Reply)>();
        let handle = thread::Builder::new()
            .name("rmm-journal".into())
            .spawn(move || writer(log, rx))
            .expect("spawn the journal thread");
        (Journal { tx }, handle)
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

fn writer(mut log: SledLog, rx: mpsc::Receiver<(Vec<Envelope>, Reply)>) -> SledLog {
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
                for (_, reply) in requests {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
    log
}
