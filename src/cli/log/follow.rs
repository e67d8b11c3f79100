//! `rmm log --follow`: print the run's events as another process appends
//! them, until the run ends (`RunCompleted`, `RunFailed`,
//! `AttemptInterrupted`, or its process gone without one: a crash), then
//! exit 0. Ctrl-C stops it too.
//!
//! # Read path, and what it costs
//! sled admits one process, so beside a running `up` the log can only be
//! opened as a copy (`SledLog::open_snapshot`: a copy of the whole store).
//! The follower pays that copy **once**, to print what is already there.
//! From then on it reads the store's write-ahead file
//! (`rmm_events::WalTail`), which holds every record appended since the last
//! checkpoint — at most 4096 records, usually a few kB — every 100 ms, and
//! checks each new record against the chain from the last one it printed.
//! It goes back to the store (a fresh copy: readers never open the store
//! itself, see `StateDir::open_store_for_reading`) only when a checkpoint emptied the file of
//! records it had not seen yet: at most once per 4096 records, and when the
//! writer closes the store. So following costs O(new records) per poll, not
//! O(log), and nothing the follower prints skips the chain check.

use std::time::{Duration, SystemTime};

use rmm_events::{Event, Hash, Record, Tail, WalTail, GENESIS};
use uuid::Uuid;

use super::filter::{latest_run, Filter, Runs};
use super::{LogArgs, Printer};
use crate::error::Result;
use crate::state_dir::StateDir;

const POLL: Duration = Duration::from_millis(100);

pub fn run(args: &LogArgs, dir: &StateDir) -> Result<()> {
    if !dir.exists() {
        crate::errln!("rmm: waiting for a run to start in {} (Ctrl-C to stop)", dir.root.display());
        while !dir.exists() {
            std::thread::sleep(POLL);
        }
        // The writer is creating the store right now: let it finish.
        std::thread::sleep(POLL * 5);
    }
    let store_stamp_then = store_stamp(dir);
    let log = dir.open_store_for_reading()?;
    let filter = Filter::new(args, &log)?;
    let target = match filter.runs {
        Runs::One(id) => Some(id),
        Runs::All => latest_run(&log)?,
        Runs::FirstToCome => None,
    };
    let mut f = Follower {
        tail: WalTail::new(&dir.events()),
        seq: 0,
        hash: GENESIS,
        store_stamp: store_stamp_then,
        target,
        ended: false,
        printer: Printer::new(args.json, filter),
    };
    // What is there already, printed as it is read.
    for record in log.scan_read_ahead(1) {
        if !f.take(&record?)? {
            return Ok(());
        }
    }
    drop(log);
    loop {
        if !f.printer.flush()? {
            return Ok(());
        }
        if f.ended {
            f.say_if_nothing_matched();
            return Ok(());
        }
        let writer_alive = dir.locked_by_other().is_some();
        let records = match f.tail.after(f.seq, &f.hash)? {
            Tail::Records(records) if !records.is_empty() => records,
            Tail::Records(_) if store_stamp(dir) == f.store_stamp => Vec::new(),
            // A checkpoint moved records not seen yet into sled (or the
            // writer closed the store): read them from there.
            _ => f.catch_up_from_store(dir)?,
        };
        if !f.take_all(&records)? {
            return Ok(());
        }
        if !writer_alive && !f.ended {
            // No process writes: all it wrote is in the store by now.
            let records = f.catch_up_from_store(dir)?;
            if !f.take_all(&records)? || !f.printer.flush()? {
                return Ok(());
            }
            if !f.ended && f.target.is_some() {
                f.say_if_nothing_matched();
                crate::errln!("rmm: no process is working on the run and it has not ended (crashed?); `rmm up --resume` continues it");
                return Ok(());
            }
        }
        if !f.ended {
            std::thread::sleep(POLL);
        }
    }
}

struct Follower {
    tail: WalTail,
    /// The last record read and checked.
    seq: u64,
    hash: Hash,
    /// sled's data file as of the last read from the store: when it changes
    /// while the write-ahead file is empty, a checkpoint happened.
    store_stamp: Option<(u64, SystemTime)>,
    /// The run followed: the latest (or `--run`); in a log that was empty,
    /// the first run to come.
    target: Option<Uuid>,
    /// Whether the followed run has ended: its last event ends an attempt.
    ended: bool,
    printer: Printer,
}

impl Follower {
    /// Prints a record if selected, and tracks whether the run ended.
    /// `Ok(false)`: stdout is closed.
    fn take(&mut self, record: &Record) -> Result<bool> {
        let e = &record.envelope;
        self.seq = e.seq;
        self.hash = record.hash;
        if self.target.is_none() && matches!(e.event, Event::RunStarted { .. }) {
            self.target = Some(e.run);
            if self.printer.filter.runs == Runs::FirstToCome {
                self.printer.filter.runs = Runs::One(e.run);
            }
        }
        if Some(e.run) == self.target {
            match e.event {
                Event::RunCompleted | Event::RunFailed { .. } | Event::AttemptInterrupted { .. } => self.ended = true,
                Event::AttemptStarted { .. } | Event::RunStarted { .. } => self.ended = false,
                _ => {}
            }
        } else if self.target.is_some() && matches!(e.event, Event::RunStarted { .. }) {
            // A newer run began: the followed one is over.
            self.ended = true;
        }
        self.printer.print(e, &record.hash)
    }

    /// The followed run is over and the filter selected none of its
    /// events: said on stderr, as `rmm log` without `--follow` says it.
    fn say_if_nothing_matched(&self) {
        if self.printer.printed == 0 {
            super::nothing_matched(self.seq);
        }
    }

    fn take_all(&mut self, records: &[Record]) -> Result<bool> {
        for record in records {
            if !self.take(record)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The records after the last one read, from the store itself.
    fn catch_up_from_store(&mut self, dir: &StateDir) -> Result<Vec<Record>> {
        self.store_stamp = store_stamp(dir);
        let log = dir.open_store_for_reading()?;
        let records = log.scan_after(self.seq, self.hash).collect::<rmm_events::Result<Vec<_>>>()?;
        Ok(records)
    }
}

/// Size and modification time of sled's data file.
fn store_stamp(dir: &StateDir) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(dir.events().join("db")).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}
