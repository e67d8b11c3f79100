//! `rmm log show SEQ` (or `rmm log --seq N --full`): one event in full and
//! the chain of its causes, back to the attempt that the user's command
//! started (whose `AttemptStarted` records the command line).
//!
//! Every event's `cause` is the id of an earlier event of its run, so the
//! chain is found walking back from SEQ, one record at a time, with no
//! index and no memory beyond the chain itself. On the way, every link of
//! the hash chain between the records read is checked (the first against
//! the stored hash of the record before it); `rmm log --verify` checks the
//! whole log.

use std::io::Write;

use rmm_events::{chain_hash, codec, Envelope, Event, Hash, SledLog, GENESIS};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::state_dir::StateDir;
use crate::view;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The event's sequence number.
    pub seq: u64,
    /// Print JSON: {"event", "causes": [newest first], "command"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(seq: u64, json: bool, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let last = log.last_seq();
    if last == 0 {
        return Err(dir.no_run());
    }
    if seq == 0 || seq > last {
        return Err(Error::Config(format!("seq {seq} is outside the log: it holds seq 1 to {last}")));
    }
    let mut back = Backwards::new(&log, seq);
    let (event, hash) = back.next()?.expect("seq is in the log");
    let mut causes: Vec<(Envelope, Hash)> = Vec::new();
    let mut current = event.clone();
    while !starts_attempt(&current) {
        let Some(want) = current.cause else { break };
        let found = loop {
            match back.next()? {
                Some((e, h)) if e.id == want => break (e, h),
                Some((e, _)) if matches!(e.event, Event::RunStarted { .. }) && e.run == current.run => {
                    return Err(cause_missing(&current, want));
                }
                Some(_) => continue,
                None => return Err(cause_missing(&current, want)),
            }
        };
        current = found.0.clone();
        causes.push(found);
    }
    back.check_below()?;
    // The command line: in the chain's `AttemptStarted`, or, for a chain
    // that ends at `RunStarted`, in the run's first attempt just after it.
    let command = match &current.event {
        Event::AttemptStarted { .. } => Some(current.clone()),
        Event::RunStarted { .. } => first_attempt(&log, &current)?,
        _ => None,
    };
    let mut out = crate::cli::stdout();
    let written = if json {
        let v = json!({
            "event": view::event_json(&event, &hash),
            "causes": causes.iter().map(|(e, h)| view::event_json(e, h)).collect::<Vec<Value>>(),
            "command": command.as_ref().and_then(command_line),
        });
        writeln!(out, "{v}")
    } else {
        write!(out, "{}", text(&event, &hash, &causes, command.as_ref(), back.lowest))
    };
    written.map_err(|e| Error::Other(format!("cannot write: {e}")))
}

fn starts_attempt(e: &Envelope) -> bool {
    matches!(e.event, Event::AttemptStarted { .. } | Event::RunStarted { .. })
}

fn cause_missing(e: &Envelope, want: Uuid) -> Error {
    Error::Log(format!(
        "the event log does not verify: seq {}: its cause {want} is not an earlier event of run {}",
        e.seq, e.run
    ))
}

fn command_line(e: &Envelope) -> Option<Value> {
    match &e.event {
        Event::AttemptStarted { command, .. } => Some(json!(command)),
        _ => None,
    }
}

fn first_attempt(log: &SledLog, run_started: &Envelope) -> Result<Option<Envelope>> {
    let Some(raw) = log.raw(run_started.seq + 1)? else { return Ok(None) };
    let e = codec::decode(&raw[..raw.len() - 32])?;
    Ok((e.run == run_started.run && matches!(e.event, Event::AttemptStarted { .. })).then_some(e))
}

fn text(event: &Envelope, hash: &Hash, causes: &[(Envelope, Hash)], command: Option<&Envelope>, checked_from: u64) -> String {
    let mut s = String::new();
    let data = serde_json::to_string_pretty(&view::event_data(&event.event)).unwrap_or_default();
    s += &format!("seq {}  {}  {}  attempt {}\n", event.seq, event.event.kind(), event.actor, event.attempt);
    s += &format!("  summary  {}\n", event.event.summary());
    s += &format!("  at       {}\n", event.at_rfc3339());
    s += &format!("  run      {}\n", event.run);
    s += &format!("  id       {}\n", event.id);
    match (&event.cause, causes.first()) {
        (Some(c), Some((e, _))) => s += &format!("  cause    {c} (seq {})\n", e.seq),
        (Some(c), None) => s += &format!("  cause    {c}\n"),
        (None, _) => s += "  cause    none (the run's first event)\n",
    }
    s += &format!("  hash     {}\n", hex::encode(hash));
    s += &format!("  data     {}\n", data.replace('\n', "\n           "));
    if !causes.is_empty() {
        s += "\ncaused by (newest first):\n";
        for (e, _) in causes {
            let mut line = Vec::new();
            super::text_line(&mut line, e);
            s += &String::from_utf8_lossy(&line);
            s.push('\n');
        }
    }
    match command.map(|c| &c.event) {
        Some(Event::AttemptStarted { attempt, command, pid, user, host, .. }) => {
            let who = match (user.is_empty(), host.is_empty()) {
                (false, false) => format!("{user}@{host}, "),
                (false, true) => format!("{user}, "),
                _ => String::new(),
            };
            s += &format!("\ncommand: {command}   (attempt {attempt}, {who}pid {pid})\n");
        }
        _ => s += "\ncommand: not recorded\n",
    }
    s += &format!("(hash links checked from seq {checked_from} to seq {}; `rmm log --verify` checks the whole log)\n", event.seq);
    s
}

/// Reads records from a seq downwards, checking each link of the hash
/// chain between consecutive records read.
struct Backwards<'a> {
    log: &'a SledLog,
    /// The next seq to read (0: done).
    next: u64,
    /// The last record read: its body and stored hash, to check against
    /// the hash of the record below it.
    above: Option<(u64, Vec<u8>, Hash)>,
    /// The lowest seq read.
    lowest: u64,
}

impl<'a> Backwards<'a> {
    fn new(log: &'a SledLog, seq: u64) -> Backwards<'a> {
        Backwards { log, next: seq, above: None, lowest: seq }
    }

    fn next(&mut self) -> Result<Option<(Envelope, Hash)>> {
        if self.next == 0 {
            return Ok(None);
        }
        let seq = self.next;
        let (body, hash) = self.read(seq)?;
        self.link(&hash)?;
        let e = codec::decode(&body).map_err(|e| match e {
            rmm_events::Error::Corrupt { reason, .. } => rmm_events::Error::Corrupt { seq: Some(seq), reason },
            other => other,
        })?;
        if e.seq != seq {
            return Err(Error::Log(format!("the event log does not verify: seq {seq}: record claims seq {}", e.seq)));
        }
        self.above = Some((seq, body, hash));
        self.lowest = seq;
        self.next = seq - 1;
        Ok(Some((e, hash)))
    }

    /// Checks the lowest record read against the one below it (or the
    /// chain's start).
    fn check_below(&mut self) -> Result<()> {
        let below = match self.next {
            0 => GENESIS,
            seq => self.read(seq)?.1,
        };
        self.link(&below)
    }

    fn link(&self, below: &Hash) -> Result<()> {
        match &self.above {
            Some((seq, body, hash)) if chain_hash(below, body) != *hash => Err(Error::Log(format!(
                "the event log does not verify: seq {seq}: hash chain broken: the record or one before it was altered, removed or reordered"
            ))),
            _ => Ok(()),
        }
    }

    fn read(&self, seq: u64) -> Result<(Vec<u8>, Hash)> {
        let raw = self
            .log
            .raw(seq)?
            .ok_or_else(|| Error::Log(format!("the event log does not verify: seq {seq}: record missing")))?;
        if raw.len() < 33 {
            return Err(Error::Log(format!("the event log does not verify: seq {seq}: record too short")));
        }
        let (body, hash) = raw.split_at(raw.len() - 32);
        Ok((body.to_vec(), hash.try_into().expect("32 bytes")))
    }
}
