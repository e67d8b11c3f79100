//! `rmm report --html FILE`: the timeline and the event table of the log as
//! one self-contained HTML page (nothing is fetched when it is opened).

use std::io::Write;
use std::path::PathBuf;

use rmm_events::{Envelope, Event};

use crate::error::{Error, Result};
use crate::state_dir::StateDir;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Write the HTML report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// The run to report (its id, or a unique prefix of it). Default: the latest run.
    #[arg(long, value_name = "ID", conflicts_with = "all_runs")]
    pub run: Option<String>,
    /// Every run of the log.
    #[arg(long)]
    pub all_runs: bool,
}

pub fn run(args: ReportArgs, dir: &StateDir) -> Result<()> {
    let log = dir.open_store_for_reading()?;
    let mut events: Vec<Envelope> = Vec::new();
    for record in log.scan(1) {
        events.push(record?.envelope);
    }
    let events = select(events, args.run.as_deref(), args.all_runs)?;
    let html = crate::report::html_report(&events);
    let runs = {
        let mut ids: Vec<_> = events.iter().map(|e| e.run).collect();
        ids.dedup();
        ids.len()
    };
    if args.html.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        return match out.write_all(html.as_bytes()).and_then(|_| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Other(format!("cannot write: {e}"))),
            _ => Ok(()),
        };
    }
    write_atomically(&args.html, html.as_bytes())
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", args.html.display())))?;
    println!(
        "wrote {} ({} event{}, {} run{})",
        args.html.display(),
        events.len(),
        if events.len() == 1 { "" } else { "s" },
        runs,
        if runs == 1 { "" } else { "s" }
    );
    Ok(())
}

/// The events of the chosen run(s), in log order.
fn select(events: Vec<Envelope>, run: Option<&str>, all: bool) -> Result<Vec<Envelope>> {
    if all {
        return Ok(events);
    }
    let mut runs = Vec::new();
    for e in &events {
        if matches!(e.event, Event::RunStarted { .. }) && !runs.contains(&e.run) {
            runs.push(e.run);
        }
    }
    let chosen = match run {
        None => match runs.last() {
            Some(id) => *id,
            None => return Ok(events),
        },
        Some(want) => {
            let want = want.to_ascii_lowercase();
            let hits: Vec<_> = runs.iter().filter(|id| id.to_string().starts_with(&want)).collect();
            match hits.as_slice() {
                [one] => **one,
                [] => return Err(Error::Config(format!("--run {want}: no such run in the log ({} runs)", runs.len()))),
                _ => return Err(Error::Config(format!("--run {want}: {} runs start with it; give more of the id", hits.len()))),
            }
        }
    };
    Ok(events.into_iter().filter(|e| e.run == chosen).collect())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader never sees half a report.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
