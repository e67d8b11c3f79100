//! `rmm replay [--to SEQ] [--json]`: fold the log (up to an event) with no
//! side effects and print the state of that event's run.

use std::io::Write;

use crate::error::{Error, Result};
use crate::state_dir::{fold_latest, StateDir};
use crate::view;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Stop after the event with this sequence number. [default: the last]
    #[arg(long)]
    pub to: Option<u64>,
    /// Print JSON, the shape of `status --json`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ReplayArgs, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let last = log.last_seq();
    if last == 0 {
        return Err(dir.no_run());
    }
    if let Some(to) = args.to {
        if to == 0 || to > last {
            return Err(Error::Config(format!("--to {to} is outside the log: it holds seq 1 to {last}")));
        }
    }
    let history = fold_latest(&log, args.to)?;
    // The run of the event replayed to (the last one folded).
    let run = history.latest();
    // A replay shows recorded state; a run still `running` at that point is shown so.
    let v = view::status_json(&history, run, true);
    let mut out = crate::cli::stdout();
    if args.json {
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(out, "state after seq {} of {last}:", args.to.unwrap_or(last));
        let _ = write!(out, "{}", view::status_text(&v));
    }
    Ok(())
}
