//! `rmm log [--json]`: one line per event.

use std::io::Write;

use crate::error::{Error, Result};
use crate::state_dir::StateDir;
use crate::view;

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// One JSON object per line: seq, id, run, attempt, actor, kind, cause, at, data, hash.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LogArgs, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for record in log.scan(1) {
        let record = record?;
        let e = &record.envelope;
        let line = if args.json {
            writeln!(out, "{}", view::event_json(e, &record.hash))
        } else {
            writeln!(out, "{:>6} {} a{} {:<11} {:<18} {}", e.seq, e.at_rfc3339(), e.attempt, e.actor, e.event.kind(), e.event.summary())
        };
        if let Err(err) = line {
            // A closed pipe (`rmm log | head`) is not an error.
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Error::Other(format!("cannot write: {err}")));
        }
    }
    match out.flush() {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Other(format!("cannot write: {err}"))),
        _ => Ok(()),
    }
}
